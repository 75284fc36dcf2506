//! One multiplexed stream of a tunnel session, as a byte stream (`AsyncRead + AsyncWrite`): reads
//! come from its [`StreamShared`] buffer, writes go to the session's outgoing queue through the
//! [`Mux`]. There is no half-close: an Error message (`EOF` for a graceful end) closes both
//! directions.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::buffer::{Closed, StreamShared, Writable};
use super::codec::{HEADER_ROOM, MessageType, data_message_in_place};
use super::mux::{Mux, PollPermit};

/// Largest Data payload written at once. Go peers write at most 32 KiB but read any size; 64 KiB
/// messages halve the per-message cost of bulk transfers.
const MAX_DATA: usize = 64 * 1024;

/// A tunnel stream as a byte stream. Dropping it closes the stream (Error `EOF` to the peer).
pub struct TunnelStream {
    shared: Arc<StreamShared>,
    mux: Arc<Mux>,
    sender: PollPermit,
    /// Wakes a writer held by the peer when a probe falls due (see [`super::buffer`]).
    probe: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TunnelStream {
    pub(super) fn new(shared: Arc<StreamShared>, mux: Arc<Mux>) -> Self {
        let sender = PollPermit::new(mux.queues());
        Self {
            shared,
            mux,
            sender,
            probe: None,
        }
    }

    pub fn conn_id(&self) -> i64 {
        self.shared.conn_id
    }

    /// What the peer sent that is not read yet.
    pub fn buffered(&self) -> usize {
        self.shared.buffered()
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
        self.mux.remove(self.shared.conn_id);
        self.mux.send_soon(
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
        let conn_id = self.shared.conn_id;
        let mux = &self.mux;
        let resume = || mux.send_flow(conn_id, MessageType::Resume);
        let taken = ready!(self.shared.poll_take(cx, buf.remaining(), resume))?;
        if let Some(chunk) = taken {
            buf.put_slice(&chunk);
        }
        Poll::Ready(Ok(()))
    }
}

impl TunnelStream {
    /// Ready when a Data message may be queued: the stream is open, the peer has not paused it, and
    /// the session's queue has room (reserved for the next `send_item`).
    fn poll_send_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let until = match self.shared.check_writable(cx, self.mux.tempo.quiet()) {
                Writable::Yes => break,
                Writable::Closed(e) => return Poll::Ready(Err(e)),
                Writable::Held { until: None } => return Poll::Pending,
                Writable::Held { until: Some(at) } => at,
            };
            let probe = self
                .probe
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
            if probe.deadline() != until {
                probe.as_mut().reset(until);
            }
            if probe.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        ready!(self.sender.poll_reserve(cx)).map_err(|_| disconnected())?;
        Poll::Ready(Ok(()))
    }

    /// Queues an encoded Data message carrying `payload_len` bytes (after `poll_send_ready`).
    fn send_data(&mut self, message: Bytes, payload_len: usize) -> io::Result<()> {
        self.sender.send(message).map_err(|_| disconnected())?;
        self.shared.sent(payload_len);
        crate::metrics::metrics()
            .tunnel_bytes_out
            .inc_by(payload_len as u64);
        Ok(())
    }

    /// Relays `target` (a connection dialed for this stream) and the stream both ways until both
    /// directions end, like `copy_bidirectional`. Target bytes are read straight into Data messages.
    pub async fn relay<T: AsyncRead + AsyncWrite + Unpin>(mut self, target: T) {
        let (mut target_read, mut target_write) = tokio::io::split(target);
        let (shared, mux) = (self.shared.clone(), self.mux.clone());
        let downstream = async {
            let conn_id = shared.conn_id;
            let take = || {
                poll_fn(|cx| {
                    let resume = || mux.send_flow(conn_id, MessageType::Resume);
                    shared.poll_take(cx, usize::MAX, resume)
                })
            };
            while let Ok(Some(chunk)) = take().await {
                if target_write.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = target_write.shutdown().await;
        };
        let upstream = async {
            let _ = self.send_from(&mut target_read).await;
            self.finish(Closed::Eof, "EOF");
        };
        tokio::join!(downstream, upstream);
    }

    /// Sends everything `source` yields as Data, each read landing in its message's own buffer.
    async fn send_from<R: AsyncRead + Unpin>(&mut self, source: &mut R) -> io::Result<()> {
        loop {
            let mut buffer = BytesMut::with_capacity(HEADER_ROOM + MAX_DATA);
            buffer.put_bytes(0, HEADER_ROOM);
            let read = source.read_buf(&mut (&mut buffer).limit(MAX_DATA)).await?;
            if read == 0 {
                return Ok(());
            }
            poll_fn(|cx| self.poll_send_ready(cx)).await?;
            let id = self.mux.next_message_id();
            let message = data_message_in_place(id, self.shared.conn_id, buffer);
            self.send_data(message, read)?;
        }
    }
}

fn disconnected() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "tunnel disconnect")
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_send_ready(cx))?;
        let n = buf.len().min(MAX_DATA);
        let message = self
            .mux
            .message(self.shared.conn_id, MessageType::Data, &buf[..n]);
        self.send_data(message, n)?;
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
