//! The websocket under a session, framed here on the TLS stream (mini-redis's `Connection`): the
//! reader yields [`Incoming`] frames — messages decoded, pings, pongs, the end — and the writer takes
//! messages and pings with a deadline. A peer that simply went away (a reset, an end of stream
//! without the closing handshake) is an end, not an error; anything else is a [`SessionError`].
//!
//! Why not tungstenite's stream: it copies every payload into its write buffer (and masks it
//! there), reads through a read buffer it keeps for the tunnel's whole life, and zero-fills that
//! buffer on each read. Here a payload is read into its own exactly-sized buffer and handed on,
//! an idle tunnel holds no buffer at all, and a large payload goes to TLS as it is (a vectored
//! write, masked in place on a client). See docs/PERFORMANCE.md.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::codec::{DecodeError, Message};
use super::frame::{self, FrameError, Header};

/// How long a closing session waits to hand its close frame to the peer.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest tunnel message accepted. Agents send Data of at most 32 KiB; SyncConnections lists 8 bytes
/// per stream. 16 MiB carries every real agent's traffic and bounds what a hostile one can make us hold.
pub const MAX_MESSAGE: usize = 16 << 20;

/// Frames are queued until this much is waiting, then written; a flush writes the rest.
const WRITE_BATCH: usize = 32 * 1024;
/// A payload up to this size is copied behind its header (one buffer); a larger one is written
/// from where it is, beside its header.
const COPY_BELOW: usize = 1024;
/// Buffers handed to one vectored write.
const MAX_SLICES: usize = 64;
/// Room made for a payload at a time: a peer that announces a 16 MiB frame and sends nothing gets
/// no 16 MiB allocation for it. Above the largest Data message (64 KiB and its header), so those
/// are read into one allocation.
const RESERVE_STEP: usize = 256 * 1024;

/// Why a session ended other than by either end closing it.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("write: {0}")]
    Write(io::Error),
    #[error("write: the peer took nothing for {0:?}")]
    WriteStalled(Duration),
    #[error("no {waiting_for} for {after:?}")]
    Silent {
        waiting_for: &'static str,
        after: Duration,
    },
    #[error("read: {0}")]
    Read(io::Error),
    #[error("{0}")]
    Protocol(#[from] FrameError),
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("wrong websocket message type")]
    TextFrame,
    #[error("connect not allowed")]
    ConnectNotAllowed,
    /// The peer went away while we wrote: ends the session as a close does.
    #[error("the peer went away")]
    PeerGone,
}

/// What the reader yields.
pub enum Incoming {
    Message(Message),
    /// A ping; its pong is already queued for the writer.
    Ping,
    Pong,
    /// The peer closed, or went away.
    End,
}

/// A websocket after its handshake: the byte stream, which end we are, and what the handshake read
/// past its end (frames the peer sent straight after it).
pub struct WebSocket<S> {
    io: S,
    server: bool,
    read_ahead: Bytes,
}

impl<S> WebSocket<S> {
    /// The server end: the peer's frames must be masked, ours are not.
    pub fn server(io: S, read_ahead: Bytes) -> Self {
        Self {
            io,
            server: true,
            read_ahead,
        }
    }

    /// The client end: our frames are masked, the peer's must not be.
    pub fn client(io: S, read_ahead: Bytes) -> Self {
        Self {
            io,
            server: false,
            read_ahead,
        }
    }
}

/// The payload of the last ping read, waiting for the writer to answer it (RFC 6455 §5.5.3 allows
/// answering only the most recent), so a ping flood holds one payload, not a queue.
#[derive(Default)]
pub struct PongDue {
    payload: Mutex<Option<Bytes>>,
    due: Notify,
}

impl PongDue {
    /// Ready when a pong is due.
    pub async fn wait(&self) {
        self.due.notified().await;
    }
}

pub struct FrameReader<S> {
    io: ReadHalf<S>,
    read_ahead: Bytes,
    from_client: bool,
    /// The header being read, and how much of it has arrived.
    head: [u8; frame::MAX_HEADER],
    head_filled: usize,
    /// The frame whose payload is being read, and where that payload starts in its buffer.
    frame: Option<(Header, usize)>,
    /// The data message being assembled (empty, and without an allocation, between messages).
    body: BytesMut,
    /// A fragmented message is in progress in `body`.
    fragmented: bool,
    /// A control frame's payload.
    control: BytesMut,
    pongs: Arc<PongDue>,
}

pub struct FrameWriter<S> {
    io: WriteHalf<S>,
    masked: bool,
    /// Frames written as separate buffers in one vectored write; without it, one buffer each.
    vectored: bool,
    queue: VecDeque<Bytes>,
    queued: usize,
    /// What the writes' deadlines are, for the error that says one passed.
    write_timeout: Duration,
    pongs: Arc<PongDue>,
}

/// The two halves of a session's websocket, whose writes are given `write_timeout` each.
pub fn split<S>(ws: WebSocket<S>, write_timeout: Duration) -> (FrameReader<S>, FrameWriter<S>)
where
    S: AsyncRead + AsyncWrite,
{
    let vectored = ws.io.is_write_vectored();
    let (read, write) = tokio::io::split(ws.io);
    let pongs = Arc::new(PongDue::default());
    let reader = FrameReader {
        io: read,
        read_ahead: ws.read_ahead,
        from_client: ws.server,
        head: [0; frame::MAX_HEADER],
        head_filled: 0,
        frame: None,
        body: BytesMut::new(),
        fragmented: false,
        control: BytesMut::new(),
        pongs: pongs.clone(),
    };
    let writer = FrameWriter {
        io: write,
        masked: !ws.server,
        vectored,
        queue: VecDeque::new(),
        queued: 0,
        write_timeout,
        pongs,
    };
    (reader, writer)
}

/// Reads what is there (at most `dst`'s room), the handshake's read-ahead first. 0 is the end.
async fn read_some<S: AsyncRead>(
    io: &mut ReadHalf<S>,
    read_ahead: &mut Bytes,
    dst: &mut impl BufMut,
) -> io::Result<usize> {
    if read_ahead.is_empty() {
        return io.read_buf(dst).await;
    }
    let n = read_ahead.len().min(dst.remaining_mut());
    dst.put_slice(&read_ahead[..n]);
    read_ahead.advance(n);
    Ok(n)
}

impl<S: AsyncRead + AsyncWrite> FrameReader<S> {
    /// The next frame that means something to the protocol. Cancel-safe: what was read stays.
    pub async fn next(&mut self) -> Result<Incoming, SessionError> {
        match self.next_frame().await {
            Err(SessionError::Read(e)) if peer_went_away(&e) => {
                // A reset is rare in normal running (a balancer, a lab's reset-peer toxic): said.
                if e.kind() == io::ErrorKind::ConnectionReset {
                    tracing::info!("the tunnel's connection was reset: {e}");
                }
                Ok(Incoming::End)
            }
            other => other,
        }
    }

    async fn next_frame(&mut self) -> Result<Incoming, SessionError> {
        loop {
            if self.frame.is_none() {
                let Some(header) = self.read_header().await? else {
                    return Ok(Incoming::End);
                };
                self.begin(header)?;
            }
            let (header, start) = self.frame.expect("a frame is being read");
            let control = is_control(header.opcode);
            let buffer = if control {
                &mut self.control
            } else {
                &mut self.body
            };
            while buffer.len() - start < header.len {
                let want = header.len - (buffer.len() - start);
                if buffer.capacity() == buffer.len() {
                    buffer.reserve(want.min(RESERVE_STEP));
                }
                let read = read_some(&mut self.io, &mut self.read_ahead, &mut buffer.limit(want))
                    .await
                    .map_err(SessionError::Read)?;
                if read == 0 {
                    return Ok(Incoming::End);
                }
            }
            self.frame = None;
            if let Some(key) = header.mask {
                frame::apply_mask(&mut buffer[start..], key);
            }
            match header.opcode {
                frame::PING => {
                    let payload = std::mem::take(&mut self.control).freeze();
                    *crate::support::lock(&self.pongs.payload) = Some(payload);
                    self.pongs.due.notify_one();
                    return Ok(Incoming::Ping);
                }
                frame::PONG => return Ok(Incoming::Pong),
                frame::CLOSE => return Ok(Incoming::End),
                _ if !header.fin => self.fragmented = true,
                _ => {
                    self.fragmented = false;
                    let payload = std::mem::take(&mut self.body).freeze();
                    return Ok(Incoming::Message(Message::decode(payload)?));
                }
            }
        }
    }

    /// Reads a whole header; `None` at the end of the stream.
    async fn read_header(&mut self) -> Result<Option<Header>, SessionError> {
        loop {
            let need = match self.head_filled {
                0 | 1 => 2,
                _ => frame::header_len([self.head[0], self.head[1]]),
            };
            if self.head_filled == need {
                break;
            }
            let mut room = &mut self.head[self.head_filled..need];
            let read = read_some(&mut self.io, &mut self.read_ahead, &mut room)
                .await
                .map_err(SessionError::Read)?;
            if read == 0 {
                return Ok(None);
            }
            self.head_filled += read;
        }
        let filled = std::mem::take(&mut self.head_filled);
        let max = MAX_MESSAGE.saturating_sub(self.body.len());
        Ok(Some(frame::parse(
            &self.head[..filled],
            self.from_client,
            max,
        )?))
    }

    /// Checks a frame against the message in progress and makes room for its payload.
    fn begin(&mut self, header: Header) -> Result<(), SessionError> {
        let start = match header.opcode {
            frame::TEXT => return Err(SessionError::TextFrame),
            frame::CONTINUATION if !self.fragmented => Err(FrameError::StrayContinuation)?,
            frame::BINARY if self.fragmented => Err(FrameError::Interleaved)?,
            frame::BINARY | frame::CONTINUATION => {
                self.body.reserve(header.len.min(RESERVE_STEP));
                self.body.len()
            }
            _ => {
                self.control.clear();
                self.control.reserve(header.len);
                0
            }
        };
        self.frame = Some((header, start));
        Ok(())
    }
}

fn is_control(opcode: u8) -> bool {
    opcode & 0x8 != 0
}

impl<S: AsyncRead + AsyncWrite> FrameWriter<S> {
    /// What signals that the reader saw a ping ([`FrameWriter::pong`] answers it).
    pub fn pongs(&self) -> Arc<PongDue> {
        self.pongs.clone()
    }

    /// Queues an encoded message, by `deadline`.
    pub async fn feed(&mut self, message: Bytes, deadline: Instant) -> Result<(), SessionError> {
        self.queue_frame(frame::BINARY, message);
        if self.queued < WRITE_BATCH {
            return Ok(());
        }
        let timeout = self.write_timeout;
        written(
            tokio::time::timeout_at(deadline, self.write_queued()).await,
            timeout,
        )
    }

    /// Queues a ping.
    pub fn ping(&mut self) {
        self.queue_frame(frame::PING, Bytes::new());
    }

    /// Queues the pong for the last ping read, if one is due.
    pub fn pong(&mut self) {
        let payload = crate::support::lock(&self.pongs.payload).take();
        if let Some(payload) = payload {
            self.queue_frame(frame::PONG, payload);
        }
    }

    /// Sends everything queued, by `deadline`.
    pub async fn flush(&mut self, deadline: Instant) -> Result<(), SessionError> {
        let timeout = self.write_timeout;
        let flush = async {
            self.write_queued().await?;
            self.io.flush().await
        };
        written(tokio::time::timeout_at(deadline, flush).await, timeout)
    }

    /// Tells the peer the session is closing, within [`CLOSE_TIMEOUT`]; best effort.
    pub async fn close(&mut self) {
        self.queue_frame(frame::CLOSE, Bytes::new());
        let _ = self.flush(Instant::now() + CLOSE_TIMEOUT).await;
    }

    fn queue_frame(&mut self, opcode: u8, payload: Bytes) {
        let key = self.masked.then(rand::random::<[u8; 4]>);
        let payload = match key {
            Some(key) if !payload.is_empty() => frame::masked(payload, key),
            _ => payload,
        };
        let separate = self.vectored && payload.len() >= COPY_BELOW;
        let room = frame::MAX_HEADER + if separate { 0 } else { payload.len() };
        let mut head = BytesMut::with_capacity(room);
        frame::encode_header(&mut head, opcode, payload.len(), key);
        self.queued += head.len() + payload.len();
        if separate {
            self.queue.push_back(head.freeze());
            self.queue.push_back(payload);
        } else {
            head.put_slice(&payload);
            self.queue.push_back(head.freeze());
        }
    }

    /// Writes every queued buffer.
    async fn write_queued(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write_queued(cx)).await
    }

    /// Writes queued buffers until none is left. The slices handed to the write live only during a
    /// poll: kept across an await, they would make every session's task 1 KiB larger.
    fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = self.queue.len().min(MAX_SLICES);
            for (slice, buffer) in slices.iter_mut().zip(&self.queue) {
                *slice = IoSlice::new(buffer);
            }
            let mut written =
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queued -= written;
            while written > 0 {
                let front = self.queue.front_mut().expect("written from the queue");
                if written < front.len() {
                    front.advance(written);
                    break;
                }
                written -= front.len();
                self.queue.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}

fn written<E>(
    result: Result<io::Result<()>, E>,
    write_timeout: Duration,
) -> Result<(), SessionError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if peer_went_away(&e) => Err(SessionError::PeerGone),
        Ok(Err(e)) => Err(SessionError::Write(e)),
        Err(_) => Err(SessionError::WriteStalled(write_timeout)),
    }
}

/// Whether an I/O error only says that the peer is gone (a reset, an end without the closing
/// handshake): the session ends as if it had closed.
fn peer_went_away(error: &io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::NotConnected
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::codec::{MessageType, encode};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};

    /// Bounds a step of a test: a framing bug makes it fail, not hang.
    async fn soon<T>(step: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), step)
            .await
            .expect("no answer within 10 s")
    }

    /// Our server end, and tungstenite's client end (an independent implementation) on a pipe.
    async fn server_and_peer() -> (
        FrameReader<tokio::io::DuplexStream>,
        FrameWriter<tokio::io::DuplexStream>,
        tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (reader, writer) = split(WebSocket::server(a, Bytes::new()), Duration::from_secs(5));
        let config = WebSocketConfig::default().max_frame_size(None);
        let peer =
            tokio_tungstenite::WebSocketStream::from_raw_socket(b, WsRole::Client, Some(config))
                .await;
        (reader, writer, peer)
    }

    fn fragment(payload: &[u8], opcode: OpCode, last: bool) -> WsMessage {
        let mut frame = Frame::message(payload.to_vec(), opcode, last);
        *frame.header_mut() = FrameHeader {
            is_final: last,
            opcode,
            ..FrameHeader::default()
        };
        WsMessage::Frame(frame)
    }

    #[tokio::test]
    async fn a_message_in_fragments_with_a_ping_between_arrives_whole_and_the_ping_is_answered() {
        let (mut reader, mut writer, mut peer) = server_and_peer().await;
        // As gorilla's client writes a message longer than its 4 KiB buffer: in 4 KiB frames.
        let payload: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let message = encode(7, 3, MessageType::Data, &payload);
        let chunks: Vec<&[u8]> = message.chunks(4096).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let opcode = match i {
                0 => OpCode::Data(Data::Binary),
                _ => OpCode::Data(Data::Continue),
            };
            peer.feed(fragment(chunk, opcode, i + 1 == chunks.len()))
                .await
                .unwrap();
            if i == 3 {
                peer.feed(WsMessage::Ping(Bytes::from_static(b"mid")))
                    .await
                    .unwrap();
            }
        }
        peer.flush().await.unwrap();
        assert!(matches!(soon(reader.next()).await.unwrap(), Incoming::Ping));
        let Incoming::Message(got) = soon(reader.next()).await.unwrap() else {
            panic!("not a message")
        };
        assert_eq!((got.conn_id, got.kind), (3, MessageType::Data));
        assert_eq!(&got.payload[..], &payload[..]);

        writer.pong();
        writer
            .feed(
                encode(8, 3, MessageType::Data, b"back"),
                Instant::now() + Duration::from_secs(5),
            )
            .await
            .unwrap();
        writer
            .flush(Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            soon(peer.next()).await.unwrap().unwrap(),
            WsMessage::Pong(Bytes::from_static(b"mid"))
        );
        let WsMessage::Binary(back) = soon(peer.next()).await.unwrap().unwrap() else {
            panic!("not binary")
        };
        assert_eq!(&Message::decode(back).unwrap().payload[..], b"back");
    }

    /// A stream that takes at most `step` bytes a call, as a socket under pressure does (a batch
    /// goes out over many calls, split inside buffers), and says whether it takes vectored writes.
    struct Trickle {
        inner: tokio::io::DuplexStream,
        step: usize,
        vectored: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let step = self.step.min(buf.len());
            Pin::new(&mut self.inner).poll_write(cx, &buf[..step])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<io::Result<usize>> {
            let gathered: Vec<u8> = bufs
                .iter()
                .flat_map(|b| b.iter().copied())
                .take(self.step)
                .collect();
            Pin::new(&mut self.inner).poll_write(cx, &gathered)
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Frames of every size class, batched and flushed at once, arrive whole and in order: with
    /// large payloads written beside their headers (vectored) or each frame as one buffer, taken
    /// all at once or a little at a time.
    #[tokio::test]
    async fn large_and_small_writes_in_one_batch_arrive_in_order() {
        for (step, vectored) in [(usize::MAX, true), (1000, true), (1000, false)] {
            let (inner, theirs) = tokio::io::duplex(1 << 20);
            let ours = Trickle {
                inner,
                step,
                vectored,
            };
            batch_arrives_in_order(ours, theirs, vectored).await;
        }
    }

    async fn batch_arrives_in_order<S: AsyncRead + AsyncWrite>(
        ours: S,
        theirs: tokio::io::DuplexStream,
        vectored: bool,
    ) {
        let (_reader, mut writer) = split(
            WebSocket::server(ours, Bytes::new()),
            Duration::from_secs(5),
        );
        assert_eq!(writer.vectored, vectored);
        let config = WebSocketConfig::default().max_frame_size(None);
        let mut peer = tokio_tungstenite::WebSocketStream::from_raw_socket(
            theirs,
            WsRole::Client,
            Some(config),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let sizes = [1usize, 70_000, 5, 200_000, 1023, 1024, 0];
        for (i, size) in sizes.iter().enumerate() {
            let body = vec![i as u8; *size];
            writer
                .feed(encode(i as i64, 2, MessageType::Data, &body), deadline)
                .await
                .unwrap();
        }
        writer.ping();
        writer.flush(deadline).await.unwrap();
        for (i, size) in sizes.iter().enumerate() {
            let WsMessage::Binary(bytes) = soon(peer.next()).await.unwrap().unwrap() else {
                panic!("not binary")
            };
            let message = Message::decode(bytes).unwrap();
            assert_eq!(message.payload.len(), *size);
            assert!(message.payload.iter().all(|b| *b == i as u8));
        }
        assert!(matches!(
            soon(peer.next()).await.unwrap().unwrap(),
            WsMessage::Ping(_)
        ));
    }

    #[tokio::test]
    async fn protocol_breaches_end_the_read_with_their_reason() {
        // A client's unmasked frame, a stray continuation, an oversized header, a text message.
        let unmasked = vec![0x82, 0x01, 0x00];
        let stray = vec![0x80, 0x80, 1, 2, 3, 4];
        let mut oversized = vec![0x82, 0xFF];
        oversized.extend_from_slice(&((MAX_MESSAGE as u64) + 1).to_be_bytes());
        oversized.extend_from_slice(&[0; 4]);
        let text = vec![0x81, 0x80, 1, 2, 3, 4];
        for (bytes, expected) in [
            (unmasked, "websocket: a client's frame must be masked"),
            (
                stray,
                "websocket: continuation frame without a message to continue",
            ),
            (
                oversized,
                "websocket: message of 16777217 bytes or more is longer than the 16777216 allowed",
            ),
            (text, "wrong websocket message type"),
        ] {
            let (a, mut b) = tokio::io::duplex(1024);
            let (mut reader, _writer) =
                split(WebSocket::server(a, Bytes::new()), Duration::from_secs(5));
            b.write_all(&bytes).await.unwrap();
            let error = match soon(reader.next()).await {
                Err(e) => e.to_string(),
                Ok(_) => "accepted".into(),
            };
            assert_eq!(error, expected);
        }
    }

    #[tokio::test]
    async fn a_frame_cut_short_or_a_reset_is_an_end_and_read_ahead_is_read_first() {
        let (a, mut b) = tokio::io::duplex(1024);
        // Half a header is handed over by the handshake, the rest follows on the stream.
        let whole = {
            let mut out = BytesMut::new();
            let payload = encode(1, 2, MessageType::Data, b"hi");
            frame::encode_header(&mut out, frame::BINARY, payload.len(), None);
            out.put_slice(&payload);
            out.freeze()
        };
        let (mut reader, _writer) = split(
            WebSocket::client(a, whole.slice(..1)),
            Duration::from_secs(5),
        );
        b.write_all(&whole[1..]).await.unwrap();
        b.write_all(&[0x82, 0x7E, 0x01]).await.unwrap();
        drop(b);
        let Incoming::Message(first) = soon(reader.next()).await.unwrap() else {
            panic!("not a message")
        };
        assert_eq!(&first.payload[..], b"hi");
        assert!(matches!(soon(reader.next()).await.unwrap(), Incoming::End));
    }

    #[tokio::test]
    async fn an_announced_frame_gets_room_only_as_its_bytes_arrive() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let (mut reader, _writer) =
            split(WebSocket::server(a, Bytes::new()), Duration::from_secs(5));
        let mut head = BytesMut::new();
        frame::encode_header(&mut head, frame::BINARY, MAX_MESSAGE, Some([0; 4]));
        b.write_all(&head).await.unwrap();
        b.write_all(&[0u8; 100_000]).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(200), reader.next()).await;
        assert!(waited.is_err(), "the frame is not complete");
        assert_eq!(reader.body.len(), 100_000, "what arrived is kept");
        assert!(
            reader.body.capacity() < 1 << 20,
            "{} bytes reserved for 100,000 received",
            reader.body.capacity()
        );
    }
}
