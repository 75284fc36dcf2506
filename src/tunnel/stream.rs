//! One multiplexed stream of a tunnel session, as a byte stream (`AsyncRead + AsyncWrite`).
//!
//! Incoming Data is buffered per stream. Past `MAX_BUFFER` buffered bytes the session asks the peer to
//! Pause; once a reader drains it below `MAX_BUFFER / 8` it sends Resume (remotedialer's thresholds).
//! A Pause from the peer holds this side's writes until Resume. There is no half-close: an Error
//! message (`EOF` for a graceful end) closes both directions.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::PollSender;

use super::codec::MessageType;
use super::session::Session;

/// remotedialer's `MaxBuffer`: Pause is sent above this many buffered bytes.
pub const MAX_BUFFER: usize = 1 << 21;
/// Resume is sent once the buffer drains below this.
pub const RESUME_BELOW: usize = MAX_BUFFER / 8;
/// Largest Data payload written at once. Go peers write at most 32 KiB but read any size; 64 KiB
/// messages halve the per-message cost of bulk transfers.
const MAX_DATA: usize = 64 * 1024;

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    Eof,
    Error(String),
}

impl Closed {
    /// The Error text for a received message: `EOF` is a graceful end.
    pub fn from_text(text: &str) -> Self {
        if text == "EOF" {
            Closed::Eof
        } else {
            Closed::Error(text.to_string())
        }
    }
}

#[derive(Default)]
struct State {
    buffer: VecDeque<Bytes>,
    buffered: usize,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    closed: Option<Closed>,
    /// We asked the peer to pause.
    paused_peer: bool,
    /// The peer asked us to pause.
    held_by_peer: bool,
}

/// The state a session and a stream share.
pub struct StreamShared {
    pub conn_id: i64,
    /// When the stream was opened: SyncConnections spares young streams (see `Session`).
    pub opened: tokio::time::Instant,
    state: Mutex<State>,
}

impl StreamShared {
    pub fn new(conn_id: i64) -> Arc<Self> {
        crate::metrics::metrics().tunnel_streams.inc();
        Arc::new(Self {
            conn_id,
            opened: tokio::time::Instant::now(),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Buffers incoming data; calls `pause` (under the stream's lock) when the peer should now be asked
    /// to Pause.
    pub fn push(&self, data: Bytes, pause: impl FnOnce()) {
        let mut state = self.lock();
        if state.closed.is_some() || data.is_empty() {
            return;
        }
        crate::metrics::metrics()
            .tunnel_bytes_in
            .inc_by(data.len() as u64);
        state.buffered += data.len();
        state.buffer.push_back(data);
        if let Some(waker) = state.read_waker.take() {
            waker.wake();
        }
        if state.buffered > MAX_BUFFER && !state.paused_peer {
            state.paused_peer = true;
            pause();
        }
    }

    /// Pause or Resume from the peer.
    pub fn set_held(&self, held: bool) {
        let mut state = self.lock();
        state.held_by_peer = held;
        if !held && let Some(waker) = state.write_waker.take() {
            waker.wake();
        }
    }

    /// Ends the stream; readers drain what is buffered, then see `how`.
    pub fn close(&self, how: Closed) {
        let mut state = self.lock();
        if state.closed.is_none() {
            state.closed = Some(how);
        }
        for waker in [state.read_waker.take(), state.write_waker.take()]
            .into_iter()
            .flatten()
        {
            waker.wake();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    pub fn buffered(&self) -> usize {
        self.lock().buffered
    }
}

impl Drop for StreamShared {
    fn drop(&mut self) {
        crate::metrics::metrics().tunnel_streams.dec();
    }
}

/// A tunnel stream as a byte stream. Dropping it closes the stream (Error `EOF` to the peer).
pub struct TunnelStream {
    shared: Arc<StreamShared>,
    session: Arc<Session>,
    sender: PollSender<Bytes>,
}

impl TunnelStream {
    pub(crate) fn new(shared: Arc<StreamShared>, session: Arc<Session>) -> Self {
        let sender = PollSender::new(session.sender());
        Self {
            shared,
            session,
            sender,
        }
    }

    pub fn conn_id(&self) -> i64 {
        self.shared.conn_id
    }

    /// Ends the stream with an error the peer sees (e.g. a failed dial).
    pub fn fail(&self, text: &str) {
        self.finish(Closed::Error(text.to_string()), text);
    }

    fn finish(&self, how: Closed, text: &str) {
        if self.shared.is_closed() {
            return;
        }
        self.shared.close(how);
        self.session.forget(self.shared.conn_id);
        self.session.send_soon(
            self.shared.conn_id,
            MessageType::Error,
            Bytes::from(text.to_string()),
        );
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        if let Some(front) = state.buffer.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                state.buffer.pop_front();
            }
            state.buffered -= n;
            if state.paused_peer && state.buffered < RESUME_BELOW {
                state.paused_peer = false;
                self.session
                    .send_flow(self.shared.conn_id, MessageType::Resume);
            }
            return Poll::Ready(Ok(()));
        }
        match &state.closed {
            Some(Closed::Eof) => Poll::Ready(Ok(())),
            Some(Closed::Error(e)) => Poll::Ready(Err(io::Error::other(e.clone()))),
            None => {
                state.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        {
            let mut state = self.shared.lock();
            if let Some(closed) = &state.closed {
                let reason = match closed {
                    Closed::Eof => "stream closed".to_string(),
                    Closed::Error(e) => e.clone(),
                };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, reason)));
            }
            if state.held_by_peer {
                state.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        let broken = |_| io::Error::new(io::ErrorKind::BrokenPipe, "tunnel disconnect");
        ready!(self.sender.poll_reserve(cx)).map_err(broken)?;
        let n = buf.len().min(MAX_DATA);
        let message = self
            .session
            .message(self.shared.conn_id, MessageType::Data, &buf[..n]);
        self.sender.send_item(message).map_err(broken)?;
        crate::metrics::metrics().tunnel_bytes_out.inc_by(n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.finish(Closed::Eof, "EOF");
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        self.finish(Closed::Eof, "EOF");
    }
}
