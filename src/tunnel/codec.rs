//! rancher/remotedialer's message format: one WebSocket binary message per tunnel message.
//!
//! ```text
//! id (varint) | connID (varint) | type (varint) | [deadline (varint), Data and Connect only] | payload
//! ```
//!
//! Every varint is Go's signed zigzag varint (`binary.PutVarint`): 1 is written `0x02`. The deadline
//! is a legacy field: senders always write 15000 (ms), receivers read and ignore it. The payload runs
//! to the end of the WebSocket message.

use bytes::{BufMut, Bytes, BytesMut};

/// The deadline every current remotedialer writes on Data and Connect (ms).
pub const LEGACY_DEADLINE_MS: i64 = 15_000;
/// Go's varints are at most 10 bytes.
const MAX_VARINT_LEN: usize = 10;

/// The message types of remotedialer, 1 to 8; anything else is kept as `Unknown` and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Data,
    Connect,
    Error,
    AddClient,
    RemoveClient,
    Pause,
    Resume,
    SyncConnections,
    Unknown(i64),
}

impl MessageType {
    fn from_code(code: i64) -> Self {
        match code {
            1 => Self::Data,
            2 => Self::Connect,
            3 => Self::Error,
            4 => Self::AddClient,
            5 => Self::RemoveClient,
            6 => Self::Pause,
            7 => Self::Resume,
            8 => Self::SyncConnections,
            other => Self::Unknown(other),
        }
    }

    pub fn code(self) -> i64 {
        match self {
            Self::Data => 1,
            Self::Connect => 2,
            Self::Error => 3,
            Self::AddClient => 4,
            Self::RemoveClient => 5,
            Self::Pause => 6,
            Self::Resume => 7,
            Self::SyncConnections => 8,
            Self::Unknown(code) => code,
        }
    }

    /// Data and Connect carry the legacy deadline field.
    fn has_deadline(self) -> bool {
        matches!(self, Self::Data | Self::Connect)
    }
}

/// One tunnel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// A per-process counter; receivers ignore it.
    pub id: i64,
    /// The stream this message belongs to; 0 for session-level messages.
    pub conn_id: i64,
    pub kind: MessageType,
    pub payload: Bytes,
}

/// Why bytes are not a tunnel message. Any of these ends the tunnel that sent them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated message: no {0}")]
    Truncated(&'static str),
    #[error("malformed varint in {0}")]
    VarintOverflow(&'static str),
}

impl Message {
    pub fn new(id: i64, conn_id: i64, kind: MessageType, payload: impl Into<Bytes>) -> Self {
        Self {
            id,
            conn_id,
            kind,
            payload: payload.into(),
        }
    }

    /// The WebSocket message body.
    pub fn encode(&self) -> Bytes {
        encode(self.id, self.conn_id, self.kind, &self.payload)
    }

    /// Parses a WebSocket message body. The payload shares `bytes` (no copy).
    pub fn decode(bytes: Bytes) -> Result<Self, DecodeError> {
        let mut at = 0;
        let id = read_varint(&bytes, &mut at, "id")?;
        let conn_id = read_varint(&bytes, &mut at, "connID")?;
        let kind = MessageType::from_code(read_varint(&bytes, &mut at, "type")?);
        if kind.has_deadline() {
            read_varint(&bytes, &mut at, "deadline")?;
        }
        Ok(Self {
            id,
            conn_id,
            kind,
            payload: bytes.slice(at..),
        })
    }

    /// The payload as text (Connect addresses, Error texts), lossily.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Encodes a message straight from its parts: the payload is copied once, into the message.
pub fn encode(id: i64, conn_id: i64, kind: MessageType, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_ROOM + payload.len());
    put_header(&mut out, id, conn_id, kind);
    out.put_slice(payload);
    out.freeze()
}

/// Room a Data payload buffer keeps in front for its header (see [`data_message_in_place`]).
pub const HEADER_ROOM: usize = 4 * MAX_VARINT_LEN;

/// A Data message whose payload was read into `buffer[HEADER_ROOM..]`: the header is written just in
/// front of the payload, so a bulk relay never copies its bytes.
pub fn data_message_in_place(id: i64, conn_id: i64, mut buffer: BytesMut) -> Bytes {
    let mut header = [0u8; HEADER_ROOM];
    let mut unused = &mut header[..];
    put_header(&mut unused, id, conn_id, MessageType::Data);
    let len = HEADER_ROOM - unused.len();
    let start = HEADER_ROOM - len;
    buffer[start..HEADER_ROOM].copy_from_slice(&header[..len]);
    buffer.freeze().slice(start..)
}

/// The header fields in order: id, connID, type, and the legacy deadline for Data and Connect.
fn put_header(out: &mut impl BufMut, id: i64, conn_id: i64, kind: MessageType) {
    put_varint(out, id);
    put_varint(out, conn_id);
    put_varint(out, kind.code());
    if kind.has_deadline() {
        put_varint(out, LEGACY_DEADLINE_MS);
    }
}

/// Go's `PutVarint`: zigzag, then base-128 little-endian groups.
pub fn put_varint(out: &mut impl BufMut, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.put_u8((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.put_u8(zigzag as u8);
}

/// Go's `ReadVarint`, advancing `at`.
fn read_varint(bytes: &[u8], at: &mut usize, field: &'static str) -> Result<i64, DecodeError> {
    let mut value: u64 = 0;
    for (i, shift) in (0..MAX_VARINT_LEN).zip((0..).step_by(7)) {
        let Some(&byte) = bytes.get(*at + i) else {
            return Err(DecodeError::Truncated(field));
        };
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            return Err(DecodeError::VarintOverflow(field));
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            *at += i + 1;
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err(DecodeError::VarintOverflow(field))
}

/// SyncConnections payload: the active stream ids, ascending, each a little-endian u64.
pub fn encode_sync(ids: &[i64]) -> Bytes {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    let mut out = BytesMut::with_capacity(8 * sorted.len());
    for id in sorted {
        out.put_u64_le(id as u64);
    }
    out.freeze()
}

/// Parses a SyncConnections payload; its length must be a multiple of 8.
pub fn decode_sync(payload: &[u8]) -> Result<Vec<i64>, DecodeError> {
    if !payload.len().is_multiple_of(8) {
        return Err(DecodeError::Truncated("whole connection id"));
    }
    Ok(payload
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as i64)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The worked examples of the protocol reference, byte for byte.
    #[test]
    fn reference_byte_examples() {
        let cases = [
            (
                Message::new(1, 2, MessageType::Connect, &b"tcp/10.43.0.1:443"[..]),
                "02 04 04 b0 ea 01 74 63 70 2f 31 30 2e 34 33 2e 30 2e 31 3a 34 34 33",
            ),
            (
                Message::new(5, 2, MessageType::Data, &b"hi"[..]),
                "0a 04 02 b0 ea 01 68 69",
            ),
            (
                Message::new(6, 2, MessageType::Error, &b"EOF"[..]),
                "0c 04 06 45 4f 46",
            ),
            (
                Message::new(7, 2, MessageType::Pause, Bytes::new()),
                "0e 04 0c",
            ),
            (
                Message::new(8, 0, MessageType::SyncConnections, encode_sync(&[3, 2])),
                "10 00 10 02 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00",
            ),
            (
                Message::new(9, 0, MessageType::AddClient, &b"c-abc/123"[..]),
                "12 00 08 63 2d 61 62 63 2f 31 32 33",
            ),
        ];
        for (message, expected) in cases {
            let encoded = message.encode();
            assert_eq!(hex(&encoded), expected, "{message:?}");
            assert_eq!(Message::decode(encoded).unwrap(), message);
        }
    }

    #[test]
    fn unknown_types_decode_and_missing_deadline_fails() {
        let unknown = Message::decode(Bytes::from_static(&[0x02, 0x00, 0x62, 0xff])).unwrap();
        assert_eq!(unknown.kind, MessageType::Unknown(49));
        // A Data message without its deadline field is malformed.
        assert_eq!(
            Message::decode(Bytes::from_static(&[0x0a, 0x04, 0x02])),
            Err(DecodeError::Truncated("deadline"))
        );
        assert!(Message::decode(Bytes::from_static(&[0x80])).is_err());
        assert!(Message::decode(Bytes::from_static(&[0xff; 11])).is_err());
        assert!(decode_sync(&[1, 2, 3]).is_err());
    }

    proptest! {
        #[test]
        fn messages_round_trip(id: i64, conn_id: i64, code in 0i64..20, payload: Vec<u8>) {
            let message = Message::new(id, conn_id, MessageType::from_code(code), payload);
            prop_assert_eq!(Message::decode(message.encode()).unwrap(), message);
        }

        #[test]
        fn in_place_data_matches_encode(id: i64, conn_id: i64, payload: Vec<u8>) {
            let mut buffer = BytesMut::zeroed(HEADER_ROOM);
            buffer.extend_from_slice(&payload);
            let in_place = data_message_in_place(id, conn_id, buffer);
            prop_assert_eq!(in_place, encode(id, conn_id, MessageType::Data, &payload));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let _ = Message::decode(Bytes::from(bytes));
        }

        #[test]
        fn sync_lists_round_trip(ids: Vec<i64>) {
            let mut expected = ids.clone();
            expected.sort_unstable();
            prop_assert_eq!(decode_sync(&encode_sync(&ids)).unwrap(), expected);
        }
    }
}
