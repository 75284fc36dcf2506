//! A model of a Go remotedialer peer (v0.4–v0.6), for tests — exactly the six rules of
//! `shared/spec/tunnel-protocol.md` §1.5, with Go's blocking:
//! 1. Pause from the other side: `paused = true`, wake every writer.
//! 2. Resume from the other side: `paused = false`, wake every writer.
//! 3. Data appended and more than `MaxBuffer` buffered: if not `paused`, send Pause and set it — no
//!    wake-up.
//! 4. An application read that leaves less than `MaxBuffer/8`: if `paused`, send Resume and clear it
//!    — no wake-up.
//! 5. A writer waits while `paused`, re-checking only when woken (rules 1, 2, close) — never by its
//!    own Resume.
//! 6. Rules 3 and 4 write their message *synchronously, holding the stream's lock*: rule 3 from the
//!    session's only reading task, which therefore stops reading the websocket while that write
//!    cannot complete; every write (Data, Pause, Resume, pings) goes through one connection lock, so a
//!    Data write that waits for the socket holds all of them back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::buffer::{MAX_BUFFER, RESUME_BELOW};
use super::codec::{Message, MessageType, encode};

/// The peer's connection: one write at a time, waited for (Go's `wsConn` mutex around a blocking
/// write). The writer task takes the next message only once the last one is on the socket.
#[derive(Clone)]
struct Wire(mpsc::Sender<WsMessage>);

impl Wire {
    async fn send(&self, conn_id: i64, kind: MessageType, payload: &[u8]) {
        let message = WsMessage::Binary(encode(0, conn_id, kind, payload));
        let _ = self.0.send(message).await;
    }
}

/// One stream of the Go peer.
pub struct GoConn {
    conn_id: i64,
    /// readBuffer's and backPressure's locks, as one: held across the synchronous Pause and Resume
    /// writes (rule 6).
    state: Mutex<GoState>,
    /// backPressure's `sync.Cond`: broadcast by OnPause, OnResume and Close only.
    back_pressure: Notify,
    /// readBuffer's `sync.Cond`: broadcast when data arrives or the stream closes.
    readable: Notify,
    wire: Wire,
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
    /// `readBuffer.Offer`: append, wake readers, and `backPressure.Pause` above the limit (rule 3),
    /// writing the Pause before returning.
    async fn offer(&self, data: &[u8]) {
        let mut state = self.state.lock().await;
        state.buffer.extend(data);
        self.readable.notify_waiters();
        if state.buffer.len() > MAX_BUFFER && !state.paused {
            self.wire.send(self.conn_id, MessageType::Pause, &[]).await;
            self.pauses_sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            state.paused = true;
        }
    }

    /// `OnPause` / `OnResume` (rules 1 and 2): set the one flag and broadcast.
    async fn on_flow(&self, paused: bool) {
        if paused {
            self.pauses_received
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.state.lock().await.paused = paused;
        self.back_pressure.notify_waiters();
    }

    async fn close(&self) {
        self.state.lock().await.closed = true;
        self.back_pressure.notify_waiters();
        self.readable.notify_waiters();
    }

    /// `connection.Write`: `backPressure.Wait` (a cond wait: only a broadcast wakes it, rule 5),
    /// then the Data message, written through the connection's one lock.
    pub async fn write(&self, data: &[u8]) {
        loop {
            let woken = self.back_pressure.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let state = self.state.lock().await;
                if state.closed || !state.paused {
                    break;
                }
            }
            woken.await;
        }
        self.wire.send(self.conn_id, MessageType::Data, data).await;
    }

    /// `readBuffer.Read`: wait for data, take up to `max` bytes, then `backPressure.Resume` when the
    /// buffer is under the limit (rule 4) — which clears the flag without waking this peer's writer.
    pub async fn read(&self, max: usize) -> Option<Vec<u8>> {
        loop {
            let woken = self.readable.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let mut state = self.state.lock().await;
                if !state.buffer.is_empty() {
                    let n = max.min(state.buffer.len());
                    let taken: Vec<u8> = state.buffer.drain(..n).collect();
                    if state.buffer.len() < RESUME_BELOW && state.paused {
                        self.wire.send(self.conn_id, MessageType::Resume, &[]).await;
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

    #[cfg(test)]
    pub async fn describe(&self) -> String {
        let state = self.state.lock().await;
        format!(
            "buffer {} paused {} closed {}",
            state.buffer.len(),
            state.paused,
            state.closed
        )
    }
}

/// Runs a Go-model client session over `ws`; each Connect from the server is handed to `on_connect`.
/// One task reads the websocket and handles each message before the next (remotedialer's
/// `serveMessage`); it pings every 5 s through the same connection lock.
pub async fn run_client<S>(ws: WebSocketStream<S>, on_connect: mpsc::UnboundedSender<Arc<GoConn>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    let (out, mut out_rx) = mpsc::channel::<WsMessage>(1);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
    });
    let wire = Wire(out);
    let pinger = {
        let wire = wire.clone();
        tokio::spawn(async move {
            let mut ping = tokio::time::interval(Duration::from_secs(5));
            loop {
                ping.tick().await;
                // A ping takes the connection lock as any write does.
                if wire.0.send(WsMessage::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut conns = std::collections::HashMap::<i64, Arc<GoConn>>::new();
    while let Some(Ok(frame)) = incoming.next().await {
        let WsMessage::Binary(bytes) = frame else {
            continue;
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
                    wire: wire.clone(),
                    pauses_sent: Default::default(),
                    pauses_received: Default::default(),
                });
                conns.insert(message.conn_id, conn.clone());
                let _ = on_connect.send(conn);
            }
            (MessageType::Data, Some(conn)) => conn.offer(&message.payload).await,
            (MessageType::Pause, Some(conn)) => conn.on_flow(true).await,
            (MessageType::Resume, Some(conn)) => conn.on_flow(false).await,
            (MessageType::Error, Some(conn)) => {
                conn.close().await;
                conns.remove(&message.conn_id);
            }
            _ => {}
        }
    }
    for conn in conns.values() {
        conn.close().await;
    }
    pinger.abort();
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

    /// corral's server session and a Go-model agent joined by a socket of `buffer` bytes, and one
    /// stream opened between them: corral's end, and the Go end.
    async fn corral_and_go(
        buffer: usize,
    ) -> (
        Arc<Session>,
        Arc<GoConn>,
        crate::tunnel::stream::TunnelStream,
    ) {
        let (a, b) = tokio::io::duplex(buffer);
        let server_ws = crate::tunnel::session::WebSocket::server(a, Bytes::new());
        let client_ws = WebSocketStream::from_raw_socket(b, WsRole::Client, None).await;
        let (server, outgoing) = Session::new(Role::Server, "c-go", None);
        let running = server.clone();
        tokio::spawn(async move { running.run(server_ws, outgoing).await });
        let (connects, mut connected) = mpsc::unbounded_channel();
        tokio::spawn(run_client(client_ws, connects));
        let stream = server.open_stream("tcp", "10.43.0.1:443").await.unwrap();
        let go = connected.recv().await.unwrap();
        (server, go, stream)
    }

    fn pattern(offset: usize, len: usize) -> Vec<u8> {
        (offset..offset + len).map(|i| (i % 251) as u8).collect()
    }

    /// 64 MiB each way on one stream between corral (the server end) and a Go-model agent, with both
    /// readers slower than both writers so that each side pauses the other many times. A side that
    /// leaves the Go peer's writer asleep stalls the transfer for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_directions_complete_with_a_go_peers_single_paused_flag() {
        const TOTAL: usize = 64 << 20;
        let (server, go, stream) = corral_and_go(1 << 20).await;
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
            let go_state = go.describe().await;
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

    /// The Go side as an agent relays to an echo server (remotedialer's `pipe`: one goroutine
    /// copies the stream to the target, one the target to the stream), through a small socket
    /// buffer, so its reads and writes hold each other up; corral's side writes and reads at once,
    /// its reader stalling now and then; the socket between them is small. Several pacings.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_echoing_go_agent_and_a_stalling_reader_never_stall_the_stream() {
        use rand::{Rng, SeedableRng};
        const TOTAL: usize = 64 << 20;
        for seed in 0..4u64 {
            let (server, go, stream) = corral_and_go(64 * 1024).await;
            let (mut corral_read, mut corral_write) = tokio::io::split(stream);
            // The echo server's socket: what the agent copied to it and it has not echoed back.
            let (to_target, mut from_agent) = mpsc::channel::<Vec<u8>>(8);
            let transfer = async {
                let agent_to_target = async {
                    let mut received = 0;
                    while received < TOTAL {
                        let chunk = go.read(CHUNK).await.expect("stream open");
                        received += chunk.len();
                        to_target.send(chunk).await.unwrap();
                    }
                    // The echo server has everything: it ends once it has sent it back.
                    drop(to_target);
                };
                let target_to_agent = async {
                    while let Some(chunk) = from_agent.recv().await {
                        go.write(&chunk).await;
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
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                    let mut received = 0;
                    let mut buf = vec![0u8; CHUNK];
                    while received < TOTAL {
                        let n = corral_read.read(&mut buf).await.unwrap();
                        assert!(n > 0, "EOF at {received}");
                        assert_eq!(buf[..n], pattern(received, n), "at {received}");
                        received += n;
                        if rng.random_ratio(1, 64) {
                            let stall = rng.random_range(1..40);
                            tokio::time::sleep(Duration::from_millis(stall)).await;
                        }
                    }
                };
                tokio::join!(
                    agent_to_target,
                    target_to_agent,
                    corral_writes,
                    corral_reads
                );
            };
            let started = std::time::Instant::now();
            let finished = tokio::time::timeout(Duration::from_secs(60), transfer).await;
            eprintln!(
                "seed {seed}: {:?}, go paused corral {} times, corral paused go {} times",
                started.elapsed(),
                go.pauses_sent.load(Ordering::Relaxed),
                go.pauses_received.load(Ordering::Relaxed)
            );
            if finished.is_err() {
                panic!(
                    "seed {seed} stuck: go [{}] corral [{}]",
                    go.describe().await,
                    server.describe_stream(go.conn_id)
                );
            }
            server.close();
        }
    }
}
