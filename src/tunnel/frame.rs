//! WebSocket frames (RFC 6455 §5) as tunnels use them: the header's encoding and parsing, masking,
//! and the rules a received frame must follow. No I/O here; `connection` reads and writes them.

use bytes::{BufMut, Bytes, BytesMut};

/// Opcodes (RFC 6455 §5.2).
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The longest header: 2 bytes, an 8-byte length and a 4-byte mask key.
pub const MAX_HEADER: usize = 14;
/// Control frames carry at most this much (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Why a received frame breaks the protocol. Each ends the tunnel it came on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("websocket: reserved bits set (no extension was negotiated)")]
    ReservedBits,
    #[error("websocket: unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("websocket: control frame fragmented or longer than 125 bytes")]
    BadControlFrame,
    #[error("websocket: a client's frame must be masked")]
    Unmasked,
    #[error("websocket: a server's frame must not be masked")]
    Masked,
    #[error("websocket: message of {size} bytes or more is longer than the {max} allowed")]
    TooLong { size: u64, max: usize },
    #[error("websocket: continuation frame without a message to continue")]
    StrayContinuation,
    #[error("websocket: new message before the previous one ended")]
    Interleaved,
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub len: usize,
}

/// How many header bytes the frame starting with `first_two` has.
pub fn header_len(first_two: [u8; 2]) -> usize {
    let extended = match first_two[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if first_two[1] & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// Parses a complete header (`header_len` bytes), checking what can be checked from it alone:
/// reserved bits, opcode, control-frame rules, masking for `from_client`, and `max` payload.
pub fn parse(head: &[u8], from_client: bool, max: usize) -> Result<Header, FrameError> {
    let (b0, b1) = (head[0], head[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let mut at = 2;
    let len = match b1 & 0x7F {
        126 => {
            at += 2;
            u64::from(u16::from_be_bytes([head[2], head[3]]))
        }
        127 => {
            at += 8;
            u64::from_be_bytes(head[2..10].try_into().expect("8 bytes"))
        }
        short => u64::from(short),
    };
    let masked = b1 & 0x80 != 0;
    let mask = masked.then(|| head[at..at + 4].try_into().expect("4 bytes"));
    match (from_client, masked) {
        (true, false) => return Err(FrameError::Unmasked),
        (false, true) => return Err(FrameError::Masked),
        _ => {}
    }
    match opcode {
        CONTINUATION | TEXT | BINARY => {}
        CLOSE | PING | PONG => {
            if !fin || len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(FrameError::BadControlFrame);
            }
        }
        other => return Err(FrameError::UnknownOpcode(other)),
    }
    if len > max as u64 {
        return Err(FrameError::TooLong { size: len, max });
    }
    Ok(Header {
        fin,
        opcode,
        mask,
        len: len as usize,
    })
}

/// Appends the header of a final frame of `opcode` carrying `len` bytes, masked with `mask` if given.
pub fn encode_header(out: &mut BytesMut, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.put_u8(0x80 | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => out.put_u8(mask_bit | len as u8),
        126..=0xFFFF => {
            out.put_u8(mask_bit | 126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(mask_bit | 127);
            out.put_u64(len as u64);
        }
    }
    if let Some(key) = mask {
        out.put_slice(&key);
    }
}

/// XORs `data` with the mask key (applying it twice restores the data). Eight bytes at a time:
/// the key repeats every four, so the phases line up.
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// `payload` masked with `key`: in place when nothing else holds it, else in a copy.
pub fn masked(payload: Bytes, key: [u8; 4]) -> Bytes {
    let mut owned = payload
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    apply_mask(&mut owned, key);
    owned.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: u8, len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_header(&mut out, opcode, len, mask);
        out.to_vec()
    }

    #[test]
    fn headers_round_trip_at_each_length_form() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 16 << 20] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let head = header(BINARY, len, mask);
                assert_eq!(head.len(), header_len([head[0], head[1]]), "{len}");
                let parsed = parse(&head, mask.is_some(), 16 << 20).unwrap();
                assert_eq!(
                    parsed,
                    Header {
                        fin: true,
                        opcode: BINARY,
                        mask,
                        len
                    }
                );
            }
        }
    }

    #[test]
    fn known_bytes_match_rfc_6455_examples() {
        // RFC 6455 §5.7: a masked "Hello" from a client, and a 256-byte unmasked binary message.
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let head = parse(&hello[..6], true, 1024).unwrap();
        assert_eq!((head.opcode, head.len), (TEXT, 5));
        let mut payload = hello[6..].to_vec();
        apply_mask(&mut payload, head.mask.unwrap());
        assert_eq!(payload, b"Hello");
        assert_eq!(header(BINARY, 256, None), [0x82, 0x7E, 0x01, 0x00]);
    }

    #[test]
    fn broken_frames_are_refused() {
        assert_eq!(
            parse(&header(PING, 126, Some([0; 4])), true, 1 << 20),
            Err(FrameError::BadControlFrame),
            "a ping longer than 125 bytes"
        );
        assert_eq!(
            parse(&[0x09, 0x80, 0, 0, 0, 0], true, 1 << 20),
            Err(FrameError::BadControlFrame),
            "a fragmented ping"
        );
        assert_eq!(
            parse(&[0xC2, 0x80, 0, 0, 0, 0], true, 1 << 20),
            Err(FrameError::ReservedBits)
        );
        assert_eq!(
            parse(&[0x83, 0x80, 0, 0, 0, 0], true, 1 << 20),
            Err(FrameError::UnknownOpcode(3))
        );
        assert_eq!(
            parse(&[0x82, 0x01], true, 1 << 20),
            Err(FrameError::Unmasked)
        );
        assert_eq!(
            parse(&[0x82, 0x81, 0, 0, 0, 0], false, 1 << 20),
            Err(FrameError::Masked)
        );
        let huge = header(BINARY, (1 << 20) + 1, None);
        assert_eq!(
            parse(&huge, false, 1 << 20),
            Err(FrameError::TooLong {
                size: (1 << 20) + 1,
                max: 1 << 20
            })
        );
        let mut absurd = vec![0x82, 0x7F];
        absurd.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            parse(&absurd, false, 1 << 20),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn masking_twice_restores_every_length_and_matches_bytewise_xor() {
        let key = [0xA1, 0x02, 0xF3, 0x44];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut once = data.clone();
            apply_mask(&mut once, key);
            let expected: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(once, expected, "{len}");
            apply_mask(&mut once, key);
            assert_eq!(once, data);
        }
        let shared = Bytes::from_static(b"abcdefgh");
        let keep = shared.clone();
        assert_eq!(
            masked(masked(shared, key), key),
            keep,
            "a shared payload is copied"
        );
    }
}
