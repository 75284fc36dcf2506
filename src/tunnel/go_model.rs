//! A model of a Go remotedialer peer's flow control, for tests: one `paused` flag per stream for both
//! directions (`back_pressure.go`), a read buffer that asks for Pause above `MaxBuffer` and calls
//! Resume after a read that leaves it under `MaxBuffer/8` (`readbuffer.go`), and a writer that
//! sleeps while the flag is set and is woken only by a Pause, Resume or close from the other side —
//! never by its own Resume. That last quirk is what leaves a Go peer's writer asleep for good unless
//! the other side sends something.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::buffer::{MAX_BUFFER, RESUME_BELOW};
use super::codec::{Message, MessageType, encode};

/// One stream of the Go peer.
pub struct GoConn {
    conn_id: i64,
    state: Mutex<GoState>,
    /// backPressure's `sync.Cond`: broadcast by OnPause, OnResume and Close only.
    back_pressure: Notify,
    /// readBuffer's `sync.Cond`: broadcast when data arrives or the stream closes.
    readable: Notify,
    out: mpsc::UnboundedSender<Bytes>,
    /// Pause messages this peer sent.
    pub pauses_sent: std::sync::atomic::AtomicUsize,
    /// Pause messages this peer received.
    pub pauses_received: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct GoState {
    buffer: VecDeque<u8>,
    paused: bool,
    closed: bool,
}

impl GoConn {
    fn send(&self, kind: MessageType, payload: &[u8]) {
        let _ = self.out.send(encode(0, self.conn_id, kind, payload));
    }

    /// `readBuffer.Offer`: append, wake readers, and `backPressure.Pause` above the limit.
    fn offer(&self, data: &[u8]) {
        let mut state = self.state.lock().unwrap();
        state.buffer.extend(data);
        self.readable.notify_waiters();
        if state.buffer.len() > MAX_BUFFER && !state.paused {
            self.send(MessageType::Pause, &[]);
            self.pauses_sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            state.paused = true;
        }
    }

    /// `OnPause` / `OnResume`: set the one flag and broadcast.
    fn on_flow(&self, paused: bool) {
        if paused {
            self.pauses_received
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.state.lock().unwrap().paused = paused;
        self.back_pressure.notify_waiters();
    }

    fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.back_pressure.notify_waiters();
        self.readable.notify_waiters();
    }

    /// `connection.Write`: `backPressure.Wait` (a cond wait: only a broadcast wakes it), then send.
    pub async fn write(&self, data: &[u8]) {
        loop {
            let woken = self.back_pressure.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let state = self.state.lock().unwrap();
                if state.closed || !state.paused {
                    break;
                }
            }
            woken.await;
        }
        self.send(MessageType::Data, data);
    }

    /// `readBuffer.Read`: wait for data, take up to `max` bytes, then `backPressure.Resume` when the
    /// buffer is under the limit — which clears the flag without waking this peer's writer.
    pub async fn read(&self, max: usize) -> Option<Vec<u8>> {
        loop {
            let woken = self.readable.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let mut state = self.state.lock().unwrap();
                if !state.buffer.is_empty() {
                    let n = max.min(state.buffer.len());
                    let taken: Vec<u8> = state.buffer.drain(..n).collect();
                    if state.buffer.len() < RESUME_BELOW && state.paused {
                        self.send(MessageType::Resume, &[]);
                        state.paused = false;
                    }
                    return Some(taken);
                }
                if state.closed {
                    return None;
                }
            }
            woken.await;
        }
    }
}

/// Runs a Go-model client session over `ws`; each Connect from the server is handed to `on_connect`.
pub async fn run_client<S>(ws: WebSocketStream<S>, on_connect: mpsc::UnboundedSender<Arc<GoConn>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    let (out, mut out_rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if sink.send(WsMessage::Binary(bytes)).await.is_err() {
                return;
            }
        }
    });
    let mut ping = tokio::time::interval(Duration::from_secs(5));
    let mut conns = std::collections::HashMap::<i64, Arc<GoConn>>::new();
    loop {
        let frame = tokio::select! {
            frame = incoming.next() => frame,
            _ = ping.tick() => continue,
        };
        let Some(Ok(WsMessage::Binary(bytes))) = frame else {
            break;
        };
        let Ok(message) = Message::decode(bytes) else {
            break;
        };
        let conn = conns.get(&message.conn_id).cloned();
        match (message.kind, conn) {
            (MessageType::Connect, _) => {
                let conn = Arc::new(GoConn {
                    conn_id: message.conn_id,
                    state: Mutex::new(GoState::default()),
                    back_pressure: Notify::new(),
                    readable: Notify::new(),
                    out: out.clone(),
                    pauses_sent: Default::default(),
                    pauses_received: Default::default(),
                });
                conns.insert(message.conn_id, conn.clone());
                let _ = on_connect.send(conn);
            }
            (MessageType::Data, Some(conn)) => conn.offer(&message.payload),
            (MessageType::Pause, Some(conn)) => conn.on_flow(true),
            (MessageType::Resume, Some(conn)) => conn.on_flow(false),
            (MessageType::Error, Some(conn)) => conn.close(),
            _ => {}
        }
    }
    for conn in conns.values() {
        conn.close();
    }
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::session::{Role, Session};
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

    const CHUNK: usize = 32 * 1024;

    fn pattern(offset: usize, len: usize) -> Vec<u8> {
        (offset..offset + len).map(|i| (i % 251) as u8).collect()
    }

    /// 64 MiB each way on one stream between corral (the server end) and a Go-model agent, with both
    /// readers slower than both writers so that each side pauses the other many times. A side that
    /// leaves the Go peer's writer asleep stalls the transfer for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_directions_complete_with_a_go_peers_single_paused_flag() {
        const TOTAL: usize = 64 << 20;
        let (a, b) = tokio::io::duplex(1 << 20);
        let server_ws = WebSocketStream::from_raw_socket(a, WsRole::Server, None).await;
        let client_ws = WebSocketStream::from_raw_socket(b, WsRole::Client, None).await;
        let (server, outgoing) = Session::new(Role::Server, "c-go", None);
        let running = server.clone();
        tokio::spawn(async move { running.run(server_ws, outgoing).await });
        let (connects, mut connected) = mpsc::unbounded_channel();
        tokio::spawn(run_client(client_ws, connects));

        let stream = server.open_stream("tcp", "10.43.0.1:443").await.unwrap();
        let go = connected.recv().await.unwrap();
        let (mut corral_read, mut corral_write) = tokio::io::split(stream);

        let transfer = async {
            let go_writes = async {
                for offset in (0..TOTAL).step_by(CHUNK) {
                    go.write(&pattern(offset, CHUNK)).await;
                }
            };
            let go_reads = async {
                let mut received = 0;
                while received < TOTAL {
                    let chunk = go.read(CHUNK).await.expect("stream open");
                    assert_eq!(chunk, pattern(received, chunk.len()), "at {received}");
                    received += chunk.len();
                    if received % (4 << 20) < CHUNK {
                        tokio::time::sleep(Duration::from_millis(15)).await;
                    }
                }
            };
            let corral_writes = async {
                for offset in (0..TOTAL).step_by(CHUNK) {
                    corral_write
                        .write_all(&pattern(offset, CHUNK))
                        .await
                        .unwrap();
                }
            };
            let corral_reads = async {
                let mut received = 0;
                let mut buf = vec![0u8; CHUNK];
                while received < TOTAL {
                    let n = corral_read.read(&mut buf).await.unwrap();
                    assert!(n > 0, "EOF at {received}");
                    assert_eq!(buf[..n], pattern(received, n), "at {received}");
                    received += n;
                    if received % (4 << 20) < n {
                        tokio::time::sleep(Duration::from_millis(15)).await;
                    }
                }
            };
            tokio::join!(go_writes, go_reads, corral_writes, corral_reads);
        };
        if tokio::time::timeout(Duration::from_secs(30), transfer)
            .await
            .is_err()
        {
            let go_state = {
                let st = go.state.lock().unwrap();
                format!(
                    "buffer {} paused {} closed {}",
                    st.buffer.len(),
                    st.paused,
                    st.closed
                )
            };
            panic!(
                "stuck: go [{go_state}] corral [{}]",
                server.describe_stream(go.conn_id)
            );
        }
        assert!(
            go.pauses_sent.load(Ordering::Relaxed) > 0,
            "the Go peer paused corral at least once (else this proves nothing)"
        );
        assert!(
            go.pauses_received.load(Ordering::Relaxed) > 0,
            "corral paused the Go peer at least once"
        );
    }
}
