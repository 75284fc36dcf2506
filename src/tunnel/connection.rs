//! The websocket under a session, as the tunnel protocol sees it (mini-redis's `Connection`): the
//! reader yields [`Incoming`] frames — messages decoded, pings, pongs, the end — and the writer takes
//! messages and pings with a deadline. A peer that simply went away (a reset, a close without the
//! closing handshake) is an end, not an error; anything else is a [`SessionError`].

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use super::codec::{DecodeError, Message};

/// How long a closing session waits to hand its close frame to the peer.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a session ended other than by either end closing it.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("write: {0}")]
    Write(WsError),
    #[error("write: the peer took nothing for {0:?}")]
    WriteStalled(Duration),
    #[error("no {waiting_for} for {after:?}")]
    Silent {
        waiting_for: &'static str,
        after: Duration,
    },
    #[error("read: {0}")]
    Read(WsError),
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
    Ping,
    Pong,
    /// The peer closed, or went away.
    End,
}

pub struct FrameReader<S> {
    frames: SplitStream<WebSocketStream<S>>,
}

pub struct FrameWriter<S> {
    sink: SplitSink<WebSocketStream<S>, WsMessage>,
    /// What the writes' deadlines are, for the error that says one passed.
    write_timeout: Duration,
}

/// The two halves of a session's websocket, whose writes are given `write_timeout` each.
pub fn split<S>(ws: WebSocketStream<S>, write_timeout: Duration) -> (FrameReader<S>, FrameWriter<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (sink, frames) = ws.split();
    let writer = FrameWriter {
        sink,
        write_timeout,
    };
    (FrameReader { frames }, writer)
}

impl<S: AsyncRead + AsyncWrite + Unpin> FrameReader<S> {
    /// The next frame that means something to the protocol.
    pub async fn next(&mut self) -> Result<Incoming, SessionError> {
        loop {
            let frame = match self.frames.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(e)) if peer_went_away(&e) => return Ok(Incoming::End),
                Some(Err(e)) => return Err(SessionError::Read(e)),
                None => return Ok(Incoming::End),
            };
            return match frame {
                WsMessage::Binary(bytes) => Ok(Incoming::Message(Message::decode(bytes)?)),
                WsMessage::Text(_) => Err(SessionError::TextFrame),
                WsMessage::Ping(_) => Ok(Incoming::Ping),
                WsMessage::Pong(_) => Ok(Incoming::Pong),
                WsMessage::Close(_) => Ok(Incoming::End),
                WsMessage::Frame(_) => continue,
            };
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FrameWriter<S> {
    /// Queues an encoded message, by `deadline`.
    pub async fn feed(&mut self, message: Bytes, deadline: Instant) -> Result<(), SessionError> {
        let feed = self.sink.feed(WsMessage::Binary(message));
        written(
            tokio::time::timeout_at(deadline, feed).await,
            self.write_timeout,
        )
    }

    /// Queues a ping, by `deadline`.
    pub async fn ping(&mut self, deadline: Instant) -> Result<(), SessionError> {
        let ping = WsMessage::Ping(Bytes::new());
        let feed = self.sink.feed(ping);
        written(
            tokio::time::timeout_at(deadline, feed).await,
            self.write_timeout,
        )
    }

    /// Sends everything queued, by `deadline`.
    pub async fn flush(&mut self, deadline: Instant) -> Result<(), SessionError> {
        let flush = self.sink.flush();
        written(
            tokio::time::timeout_at(deadline, flush).await,
            self.write_timeout,
        )
    }

    /// Tells the peer the session is closing, within [`CLOSE_TIMEOUT`]; best effort.
    pub async fn close(&mut self) {
        let close = self.sink.send(WsMessage::Close(None));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
    }
}

fn written<E>(
    result: Result<Result<(), WsError>, E>,
    write_timeout: Duration,
) -> Result<(), SessionError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if peer_went_away(&e) => Err(SessionError::PeerGone),
        Ok(Err(e)) => Err(SessionError::Write(e)),
        Err(_) => Err(SessionError::WriteStalled(write_timeout)),
    }
}

/// Whether a websocket error only says that the peer is gone (a reset, a close without the closing
/// handshake): the session ends as if it had closed.
fn peer_went_away(error: &WsError) -> bool {
    use std::io::ErrorKind;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match error {
        WsError::ConnectionClosed | WsError::AlreadyClosed => true,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => true,
        WsError::Io(e) => matches!(
            e.kind(),
            ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}
