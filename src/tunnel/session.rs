//! A tunnel session: one WebSocket carrying many streams, on either end.
//!
//! The server end opens streams (Connect, ids 2, 3, … as remotedialer) and answers pings; the client
//! end (an agent) dials what Connect asks for, pings every 5 s and reports its streams every 60 s.
//! Both ends drop the tunnel after 60 s without a ping (server) or pong (client), whatever the session
//! is doing meanwhile, and after 60 s of a write the peer does not take: a peer that stops reading
//! cannot hold a session (and the dials waiting on it) for ever. A malformed message, a text message
//! or a Connect to the server ends this tunnel only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::buffer::{Closed, LateAnswer};
use super::codec::{Message, MessageType, decode_sync, encode_sync};
pub use super::connection::SessionError;
pub use super::connection::WebSocket;
use super::connection::{self, CLOSE_TIMEOUT, Incoming};
use super::mux::Mux;
pub use super::mux::Outgoing;
use super::stream::TunnelStream;

/// A client pings this often.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// Without a ping (server) or pong (client) for this long, the tunnel is dead.
pub const PING_WAIT: Duration = Duration::from_secs(60);
/// A write the peer does not take within this long ends the tunnel (remotedialer's write deadline
/// is the ping wait too).
pub const WRITE_TIMEOUT: Duration = PING_WAIT;
/// A client reports its streams this often.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(60);
/// Streams younger than this are not pruned by SyncConnections: the client may not have seen their
/// Connect yet when it sent the list.
const SYNC_GRACE: Duration = Duration::from_secs(5);

/// Which end of the tunnel this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// A byte stream a client dials for a Connect.
pub trait Dialed: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Dialed for T {}

/// What a client end does with the server's Connects: which it allows, and how it serves one (the
/// usual way, `tunnel::dial::dial_and_relay`, is what a plain `Fn(proto, address) -> bool` rule
/// does).
pub trait Connector: Send + Sync + 'static {
    /// Whether the server may make this client dial `proto`/`address`.
    fn allows(&self, proto: &str, address: &str) -> bool;

    /// Serves an allowed Connect on its stream.
    fn serve(&self, proto: String, address: String, stream: TunnelStream) -> Serving;
}

/// What serving one Connect is: a task of its own.
pub type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub struct Session {
    role: Role,
    /// Who this session is for (a cluster id on the server; `client` on an agent).
    client_key: String,
    /// Random per session, as remotedialer's; 0 on the client side.
    session_key: i64,
    /// The queues, ids and stream table the streams share.
    mux: Arc<Mux>,
    cancel: CancellationToken,
    /// Client end: what the server's Connects may reach, and how they are served.
    connector: Option<Arc<dyn Connector>>,
    /// A peer replica's session: the client keys it announced.
    announced: Option<Announced>,
}

/// Most client sessions one peer may announce (a bound on what a peer gone wrong can make us keep).
const MAX_ANNOUNCED: usize = 200_000;
/// Most sessions of one client key a peer may announce.
const MAX_SESSIONS_PER_KEY: usize = 64;

/// What a peer announced with AddClient/RemoveClient: its client sessions by key, oldest first —
/// the order in which the peer's own sessions serve dials (the oldest live one), so a replica
/// relaying through it knows which session its dial will take.
struct Announced {
    clients: std::sync::Mutex<HashMap<String, Vec<i64>>>,
    /// Woken on every AddClient, for dials waiting for a route.
    added: Arc<tokio::sync::Notify>,
}

impl Session {
    /// A session and the receiver its writer drains (passed to [`Session::run`]).
    pub fn new(
        role: Role,
        client_key: &str,
        connector: Option<Arc<dyn Connector>>,
    ) -> (Arc<Self>, Outgoing) {
        Self::build(role, client_key, connector, None)
    }

    /// The server end of a session a peer replica opened: it takes AddClient/RemoveClient, and
    /// wakes `added` when a client key is announced.
    pub fn new_peer(peer_id: &str, added: Arc<tokio::sync::Notify>) -> (Arc<Self>, Outgoing) {
        let announced = Announced {
            clients: Default::default(),
            added,
        };
        Self::build(Role::Server, peer_id, None, Some(announced))
    }

    fn build(
        role: Role,
        client_key: &str,
        connector: Option<Arc<dyn Connector>>,
        announced: Option<Announced>,
    ) -> (Arc<Self>, Outgoing) {
        let mut rng = rand::rng();
        let session_key = match role {
            Role::Server => rng.random_range(1..i64::MAX),
            Role::Client => 0,
        };
        let (mux, outgoing) = Mux::new(rng.random_range(0..i64::MAX / 2));
        let session = Arc::new(Self {
            role,
            client_key: client_key.to_string(),
            session_key,
            mux: Arc::new(mux),
            cancel: CancellationToken::new(),
            connector,
            announced,
        });
        (session, outgoing)
    }

    /// Whether this peer's session announced a client session for `key`.
    pub fn advertises(&self, key: &str) -> bool {
        self.announced
            .as_ref()
            .is_some_and(|a| crate::support::lock(&a.clients).contains_key(key))
    }

    /// The session keys this peer's session announced for `key`, oldest first.
    pub fn announced_sessions(&self, key: &str) -> Vec<i64> {
        self.announced.as_ref().map_or_else(Vec::new, |a| {
            crate::support::lock(&a.clients)
                .get(key)
                .cloned()
                .unwrap_or_default()
        })
    }

    /// Client end of a peer session: tells the other replica that a client session for `key` came
    /// (`added`) or went here.
    pub async fn announce(&self, added: bool, key: &str, session_key: i64) {
        let kind = if added {
            MessageType::AddClient
        } else {
            MessageType::RemoveClient
        };
        let payload = Bytes::from(format!("{key}/{session_key}"));
        self.mux.send(0, kind, payload).await;
    }

    pub fn client_key(&self) -> &str {
        &self.client_key
    }

    pub fn session_key(&self) -> i64 {
        self.session_key
    }

    /// A stream in the table, as a byte stream.
    fn register(&self, conn_id: i64) -> TunnelStream {
        TunnelStream::new(self.mux.insert(conn_id), self.mux.clone())
    }

    /// Server side: opens a stream to `proto`/`address` through the client. There is no
    /// acknowledgement: a failed dial arrives later as an error on the stream. Waits while the
    /// session's queue is full (a peer that reads slowly, or not at all); the caller bounds that wait,
    /// and a wait given up registers nothing.
    pub async fn open_stream(
        self: &Arc<Self>,
        proto: &str,
        address: &str,
    ) -> std::io::Result<TunnelStream> {
        let permit = tokio::select! {
            permit = self.mux.reserve() => permit.ok_or_else(disconnected)?,
            _ = self.cancel.cancelled() => return Err(disconnected()),
        };
        let conn_id = self.mux.next_conn_id();
        let stream = self.register(conn_id);
        permit.send(self.mux.message(
            conn_id,
            MessageType::Connect,
            format!("{proto}/{address}").as_bytes(),
        ));
        Ok(stream)
    }

    #[cfg(test)]
    pub fn describe_stream(&self, conn_id: i64) -> String {
        self.mux
            .get(conn_id)
            .map_or("gone".into(), |s| s.describe())
    }

    /// Number of open streams.
    pub fn stream_count(&self) -> usize {
        self.mux.len()
    }

    pub fn is_closed(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Ends the session: every stream fails with `tunnel disconnect`.
    pub fn close(&self) {
        self.cancel.cancel();
        self.mux
            .close_all(&Closed::Error("tunnel disconnect".into()));
    }

    /// Runs the session over `ws` until either end stops; then closes it.
    pub fn run<S>(
        self: &Arc<Self>,
        ws: WebSocket<S>,
        outgoing: Outgoing,
    ) -> impl Future<Output = Result<(), SessionError>> + use<S>
    where
        S: AsyncRead + AsyncWrite,
    {
        // Split here and moved into a block: an async fn keeps its arguments for its whole life
        // beside what it makes of them, and every idle session's task would carry `ws` and a copy
        // of its halves.
        let (mut reader, mut writer) = connection::split(ws, WRITE_TIMEOUT);
        let session = self.clone();
        async move {
            let pongs = writer.pongs();
            let client = session.role == Role::Client;
            // When our last ping went: its pong gives the tunnel's round trip (for flow control).
            // Both ends ping: a server's pings are answered by any WebSocket peer, and only a
            // client's keep the session alive (remotedialer's rule).
            let ping_sent = std::sync::Mutex::new(None::<Instant>);
            let writing = async {
                let mut ping = tokio::time::interval(PING_INTERVAL);
                let mut sync =
                    tokio::time::interval_at(Instant::now() + SYNC_INTERVAL, SYNC_INTERVAL);
                loop {
                    let message = tokio::select! {
                        bytes = outgoing.pop() => Some(bytes),
                        // Closed here (shutdown): tell the peer, briefly, before the socket goes.
                        _ = session.cancel.cancelled() => {
                            writer.close().await;
                            return Ok(());
                        }
                        () = pongs.wait() => {
                            writer.pong();
                            None
                        }
                        _ = ping.tick() => {
                            writer.ping();
                            *crate::support::lock(&ping_sent) = Some(Instant::now());
                            None
                        }
                        _ = sync.tick(), if client => Some(session.sync_message()),
                    };
                    // One deadline for the frame and whatever is batched with it: a peer that does
                    // not take our writes for WRITE_TIMEOUT ends the session.
                    let deadline = Instant::now() + WRITE_TIMEOUT;
                    if let Some(bytes) = message {
                        writer.feed(bytes, deadline).await?;
                    }
                    // Batch whatever else is queued into the same flush: fewer TLS records and
                    // syscalls.
                    while let Some(bytes) = outgoing.try_pop() {
                        writer.feed(bytes, deadline).await?;
                    }
                    writer.flush(deadline).await?;
                }
            };
            let reading = async {
                // The liveness deadline covers handling a message too: handling can wait for room
                // in the outgoing queue, and no ping is read meanwhile.
                let mut deadline = Instant::now() + PING_WAIT;
                let silent = || SessionError::Silent {
                    waiting_for: if client { "pong" } else { "ping" },
                    after: PING_WAIT,
                };
                loop {
                    let next = tokio::time::timeout_at(deadline, reader.next())
                        .await
                        .map_err(|_| silent())??;
                    match next {
                        Incoming::Message(message) => {
                            // Data for an open stream is delivered here; the rest may wait, and
                            // its state is boxed so that an idle session's task does not carry it.
                            if let Some(message) = session.deliver(message) {
                                tokio::time::timeout_at(
                                    deadline,
                                    Box::pin(session.dispatch(message)),
                                )
                                .await
                                .map_err(|_| silent())??;
                            }
                            if session.mux.take_flow_queued() {
                                tokio::task::yield_now().await;
                            }
                        }
                        Incoming::Ping if !client => deadline = Instant::now() + PING_WAIT,
                        Incoming::Pong => {
                            if let Some(sent) = crate::support::lock(&ping_sent).take() {
                                session.mux.tempo.measured(sent.elapsed());
                            }
                            if client {
                                deadline = Instant::now() + PING_WAIT;
                            }
                        }
                        Incoming::End => return Ok(()),
                        Incoming::Ping => {}
                    }
                }
            };
            let result = tokio::select! {
                // A peer that went away while we wrote ends the session as a close does.
                result = writing => match result {
                    Err(SessionError::PeerGone) => Ok(()),
                    other => other,
                },
                result = reading => result,
                // The writer sends the close frame; a writer stuck on a peer that does not read is not
                // waited for longer than that.
                _ = async {
                    session.cancel.cancelled().await;
                    tokio::time::sleep(CLOSE_TIMEOUT).await;
                } => Ok(()),
            };
            session.close();
            result
        }
    }

    fn sync_message(&self) -> Bytes {
        let ids = self.mux.ids();
        self.mux
            .message(0, MessageType::SyncConnections, &encode_sync(&ids))
    }

    /// Delivers Data for an open stream, which needs no wait; any other message is handed back,
    /// for [`Session::dispatch`].
    fn deliver(&self, message: Message) -> Option<Message> {
        if message.kind != MessageType::Data {
            return Some(message);
        }
        let Some(stream) = self.mux.get(message.conn_id) else {
            return Some(message);
        };
        let conn_id = message.conn_id;
        stream.push(message.payload, || {
            self.mux.send_flow(conn_id, MessageType::Pause)
        });
        None
    }

    async fn dispatch(self: &Arc<Self>, message: Message) -> Result<(), SessionError> {
        let conn_id = message.conn_id;
        match message.kind {
            // Handed back: no such stream.
            MessageType::Data => {
                if self.deliver(message).is_some() {
                    let text = format!(
                        "connection not found {}/{}/{conn_id}",
                        self.client_key, self.session_key
                    );
                    self.mux
                        .send(conn_id, MessageType::Error, Bytes::from(text))
                        .await;
                }
            }
            MessageType::Connect => match self.role {
                Role::Server => return Err(SessionError::ConnectNotAllowed),
                Role::Client => self.client_connect(conn_id, &message.text()).await,
            },
            MessageType::Error => {
                let removed = self.mux.remove(conn_id);
                if let Some(stream) = removed {
                    stream.close(Closed::from_text(&message.text()));
                    // remotedialer's close path always answers with an Error of its own.
                    self.mux
                        .send(conn_id, MessageType::Error, message.payload)
                        .await;
                }
            }
            MessageType::Pause | MessageType::Resume => {
                if let Some(stream) = self.mux.get(conn_id) {
                    let held = message.kind == MessageType::Pause;
                    let late =
                        stream.set_held(held, || self.mux.send_flow(conn_id, MessageType::Resume));
                    if let Some(late) = late {
                        self.answer_later(&stream, late);
                    }
                }
            }
            MessageType::AddClient | MessageType::RemoveClient => {
                if let Some(announced) = &self.announced {
                    announced.apply(message.kind == MessageType::AddClient, &message.text());
                }
            }
            MessageType::SyncConnections if self.role == Role::Server => {
                let listed = decode_sync(&message.payload)?;
                self.mux.prune_unlisted(&listed, SYNC_GRACE);
            }
            _ => tracing::trace!("ignoring tunnel message type {:?}", message.kind),
        }
        Ok(())
    }

    /// Answers a hold the peer has not ended itself by `late.at`, if it is still on then (see
    /// [`super::buffer`]): a task per such hold, gone with the stream or the session.
    fn answer_later(&self, stream: &Arc<super::buffer::StreamShared>, late: LateAnswer) {
        let (stream, mux) = (Arc::downgrade(stream), Arc::downgrade(&self.mux));
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(late.at) => {}
                _ = cancel.cancelled() => return,
            }
            if let (Some(stream), Some(mux)) = (stream.upgrade(), mux.upgrade()) {
                let conn_id = stream.conn_id;
                stream.answer_late(late, || mux.send_flow(conn_id, MessageType::Resume));
            }
        });
    }

    /// Client side: serves what the server asks for, if the connector allows it.
    async fn client_connect(self: &Arc<Self>, conn_id: i64, payload: &str) {
        let Some((proto, address)) = payload.split_once('/') else {
            let text = Bytes::from(format!("invalid connect payload {payload:?}"));
            return self.mux.send(conn_id, MessageType::Error, text).await;
        };
        let connector = self
            .connector
            .as_ref()
            .filter(|connector| connector.allows(proto, address));
        let Some(connector) = connector else {
            tracing::warn!("refused to dial {proto}/{address}: not allowed");
            let text = Bytes::from(format!("connect not allowed: {proto}/{address}"));
            return self.mux.send(conn_id, MessageType::Error, text).await;
        };
        let stream = self.register(conn_id);
        tokio::spawn(connector.serve(proto.to_string(), address.to_string(), stream));
    }
}

impl Announced {
    /// Applies `"<clientKey>/<sessionKey>"` (the key may hold `/`: the session key is after the last).
    fn apply(&self, added: bool, payload: &str) {
        let Some((key, session_key)) = payload.rsplit_once('/') else {
            return;
        };
        let Ok(session_key) = session_key.parse::<i64>() else {
            return;
        };
        let mut clients = crate::support::lock(&self.clients);
        if added {
            if clients.len() < MAX_ANNOUNCED || clients.contains_key(key) {
                let sessions = clients.entry(key.to_string()).or_default();
                if sessions.len() < MAX_SESSIONS_PER_KEY && !sessions.contains(&session_key) {
                    sessions.push(session_key);
                }
            }
            drop(clients);
            self.added.notify_waiters();
        } else if let Some(sessions) = clients.get_mut(key) {
            sessions.retain(|s| *s != session_key);
            if sessions.is_empty() {
                clients.remove(key);
            }
        }
    }
}

fn disconnected() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "tunnel disconnect")
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

    fn allow_all() -> Arc<dyn Connector> {
        Arc::new(|_: &str, _: &str| true)
    }

    /// A server and a client session joined by an in-memory WebSocket.
    async fn pair(policy: Arc<dyn Connector>) -> (Arc<Session>, Arc<Session>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server_ws = WebSocket::server(a, Bytes::new());
        let client_ws = WebSocket::client(b, Bytes::new());
        let (server, server_rx) = Session::new(Role::Server, "c-test", None);
        let (client, client_rx) = Session::new(Role::Client, "client", Some(policy));
        let (s, c) = (server.clone(), client.clone());
        tokio::spawn(async move { s.run(server_ws, server_rx).await });
        tokio::spawn(async move { c.run(client_ws, client_rx).await });
        (server, client)
    }

    async fn echo_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn eventually(check: impl Fn() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached within 2 s");
    }

    #[tokio::test]
    async fn streams_relay_bytes_and_close_on_both_ends() {
        let (server, client) = pair(allow_all()).await;
        let echo = echo_server().await;
        let mut stream = server.open_stream("tcp", &echo.to_string()).await.unwrap();
        assert_eq!(
            stream.conn_id(),
            2,
            "the first stream of a session is 2, as in remotedialer"
        );
        stream.write_all(b"hello through the tunnel").await.unwrap();
        let mut buf = [0u8; 24];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello through the tunnel");
        eventually(|| client.stream_count() == 1).await;
        drop(stream);
        eventually(|| server.stream_count() == 0 && client.stream_count() == 0).await;
    }

    #[tokio::test]
    async fn a_refused_connect_fails_only_that_stream() {
        let echo = echo_server().await;
        let allowed = echo.to_string();
        let (server, _client) =
            pair(Arc::new(move |p: &str, a: &str| p == "tcp" && a == allowed)).await;
        let mut refused = server.open_stream("tcp", "127.0.0.1:1").await.unwrap();
        let mut buf = [0u8; 1];
        let err = refused.read(&mut buf).await.unwrap_err();
        assert!(err.to_string().contains("connect not allowed"), "{err}");
        let mut ok = server.open_stream("tcp", &echo.to_string()).await.unwrap();
        ok.write_all(b"x").await.unwrap();
        ok.read_exact(&mut buf).await.unwrap();
        assert!(!server.is_closed());
    }

    #[tokio::test]
    async fn a_failed_dial_reaches_the_reader() {
        let (server, _client) = pair(allow_all()).await;
        let mut stream = server.open_stream("tcp", "127.0.0.1:1").await.unwrap();
        let mut buf = [0u8; 1];
        let err = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "dial tcp 127.0.0.1:1: connect: connection refused"
        );
    }

    #[tokio::test]
    async fn losing_the_tunnel_fails_streams_with_tunnel_disconnect() {
        let (server, client) = pair(allow_all()).await;
        let echo = echo_server().await;
        let mut stream = server.open_stream("tcp", &echo.to_string()).await.unwrap();
        client.close();
        let mut buf = [0u8; 1];
        let err = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(err.to_string(), "tunnel disconnect");
        eventually(|| server.is_closed()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn sync_prunes_only_unlisted_streams_past_the_grace_period() {
        let (server, _outgoing) = Session::new(Role::Server, "c-test", None);
        let mut old = server.open_stream("tcp", "10.0.0.1:1").await.unwrap();
        let listed = server.open_stream("tcp", "10.0.0.1:2").await.unwrap();
        tokio::time::advance(SYNC_GRACE + Duration::from_secs(1)).await;
        let young = server.open_stream("tcp", "10.0.0.1:3").await.unwrap();
        server.mux.prune_unlisted(&[listed.conn_id()], SYNC_GRACE);
        let mut buf = [0u8; 1];
        assert_eq!(
            old.read(&mut buf).await.unwrap_err().to_string(),
            "sync from client"
        );
        assert_eq!(
            server.stream_count(),
            2,
            "the listed and the young stream stay"
        );
        drop((listed, young));
    }

    /// Two corral ends keep each other alive past the ping wait: the server answers the client's
    /// pings, and only pongs keep a client's session (remotedialer's rule).
    #[tokio::test(start_paused = true)]
    async fn answered_pings_keep_both_ends_alive() {
        let (server, client) = pair(allow_all()).await;
        tokio::time::sleep(PING_WAIT * 3).await;
        assert!(!client.is_closed(), "the client saw no pong");
        assert!(!server.is_closed());
    }

    /// Another implementation's ping is answered with its payload, as its read deadline needs.
    #[tokio::test]
    async fn a_peers_ping_is_answered_with_its_payload() {
        use futures_util::StreamExt;
        let (a, b) = tokio::io::duplex(1 << 16);
        let (server, rx) = Session::new(Role::Server, "c-test", None);
        let running = server.clone();
        tokio::spawn(async move { running.run(WebSocket::server(a, Bytes::new()), rx).await });
        let mut peer =
            tokio_tungstenite::WebSocketStream::from_raw_socket(b, WsRole::Client, None).await;
        peer.send(WsMessage::Ping(Bytes::from_static(b"keep")))
            .await
            .unwrap();
        let answer = async {
            loop {
                match peer.next().await.unwrap().unwrap() {
                    WsMessage::Pong(payload) => return payload,
                    // The server's own ping, which tungstenite answers.
                    WsMessage::Ping(_) => continue,
                    other => panic!("{other:?}"),
                }
            }
        };
        let payload = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("no pong");
        assert_eq!(&payload[..], b"keep");
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_drops_a_client_that_never_pings() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server_ws = WebSocket::server(a, Bytes::new());
        let _silent_client =
            tokio_tungstenite::WebSocketStream::from_raw_socket(b, WsRole::Client, None).await;
        let (server, rx) = Session::new(Role::Server, "c-test", None);
        let result = server.run(server_ws, rx).await;
        assert!(
            result
                .unwrap_err()
                .to_string()
                .starts_with("no ping for 60s")
        );
    }

    /// A peer that floods Data for unknown streams, then neither reads nor pings: the Errors the
    /// server owes it fill the pipe, the server's writer and then its reader wait on it — and the
    /// session still ends by the deadlines, while a dial meanwhile waits only as long as its caller
    /// lets it and leaves nothing behind.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_cannot_hold_the_session() {
        let (a, b) = tokio::io::duplex(8 * 1024);
        let server_ws = WebSocket::server(a, Bytes::new());
        let mut peer =
            tokio_tungstenite::WebSocketStream::from_raw_socket(b, WsRole::Client, None).await;
        let (server, rx) = Session::new(Role::Server, "c-stuck", None);
        tokio::spawn(async move {
            for i in 0..100_000 {
                let message = super::super::codec::encode(i, 1000 + i, MessageType::Data, b"x");
                if peer.feed(WsMessage::Binary(message)).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await;
            drop(peer);
        });
        let started = Instant::now();
        let running = server.clone();
        let session = tokio::spawn(async move { running.run(server_ws, rx).await });

        tokio::time::sleep(Duration::from_secs(10)).await;
        let open = tokio::time::timeout(
            Duration::from_secs(1),
            server.open_stream("tcp", "10.43.0.1:443"),
        )
        .await;
        assert!(open.is_err(), "no room in the queue: the dial waits");
        assert_eq!(
            server.stream_count(),
            0,
            "a dial given up registers nothing"
        );

        let ended = tokio::time::timeout(Duration::from_secs(300), session)
            .await
            .expect("the session ends")
            .unwrap();
        assert!(ended.is_err(), "{ended:?}");
        assert!(
            started.elapsed() <= PING_WAIT + Duration::from_secs(1),
            "ended after {:?}",
            started.elapsed()
        );
        let after = server.open_stream("tcp", "10.43.0.1:443").await;
        assert!(after.is_err(), "a dial on an ended session fails at once");
    }

    /// A Pause from a peer whose writer is busy is answered with Resume (waking a Go writer its own
    /// Pause put to sleep) and holds our writes; after the probe delay a message's worth goes, twice
    /// as much after each quiet of a few round trips, and past a window our writes go on. Paused
    /// back after the probe: answered again, and the next probe waits twice as long. A Pause from an idle peer
    /// waits for its own Resume, which is answered once; unanswered, it is answered after
    /// `ANSWER_AFTER`. While we pause the peer (our buffer full) nothing is answered, and draining
    /// our buffer sends the Resume and ends the hold.
    #[tokio::test(start_paused = true)]
    async fn pauses_are_answered_as_the_peers_writer_needs() {
        use super::super::buffer::{ANSWER_AFTER, MAX_BUFFER, PROBE_AFTER, QUIET_MAX};
        let (server, mut outgoing) = Session::new(Role::Server, "c-test", None);
        let mut stream = server.open_stream("tcp", "10.0.0.1:1").await.unwrap();
        let conn_id = stream.conn_id();
        let connect = outgoing.pop().await;
        assert_eq!(Message::decode(connect).unwrap().kind, MessageType::Connect);
        let flow = |kind| Message::new(0, conn_id, kind, Bytes::new());
        let data = |bytes: &'static [u8]| {
            Message::new(0, conn_id, MessageType::Data, Bytes::from_static(bytes))
        };
        let sent_flow = |outgoing: &mut Outgoing| {
            outgoing
                .try_pop_flow()
                .map(|m| Message::decode(m).unwrap().kind)
        };
        let sent_data = |outgoing: &mut Outgoing| {
            let mut count = 0;
            while outgoing.try_pop_data().is_some() {
                count += 1;
            }
            count
        };
        let mut received = vec![0u8; 1];

        // A busy peer's Pause: answered; the writer waits for the probe, which goes alone.
        server.dispatch(data(b"a")).await.unwrap();
        stream.read_exact(&mut received).await.unwrap();
        server.dispatch(flow(MessageType::Pause)).await.unwrap();
        assert_eq!(
            sent_flow(&mut outgoing),
            Some(MessageType::Resume),
            "answered"
        );
        let started = Instant::now();
        stream.write_all(b"probe").await.unwrap();
        assert_eq!(started.elapsed(), PROBE_AFTER, "the probe");
        assert_eq!(sent_data(&mut outgoing), 1);
        // Paused back: answered, the next probe twice as late.
        server.dispatch(flow(MessageType::Pause)).await.unwrap();
        assert_eq!(sent_flow(&mut outgoing), Some(MessageType::Resume));
        let started = Instant::now();
        stream.write_all(b"probe").await.unwrap();
        assert_eq!(started.elapsed(), PROBE_AFTER * 2);
        // The probe's allowance (64 KiB) goes at once; each quiet after (no round trip measured
        // here: the longest) doubles it; past a window, the hold ends. Messages are 64 KiB.
        let message = vec![0u8; 64 * 1024];
        let started = Instant::now();
        let mut messages = sent_data(&mut outgoing);
        for stage in 0..6u32 {
            for _ in 0..2usize.pow(stage) {
                stream.write_all(&message).await.unwrap();
                messages += sent_data(&mut outgoing);
            }
            assert_eq!(started.elapsed(), QUIET_MAX * stage, "stage {stage}");
        }
        stream.write_all(b"free").await.unwrap();
        assert_eq!(
            started.elapsed(),
            QUIET_MAX * 6,
            "the last quiet ends the hold"
        );
        stream.write_all(b"free").await.unwrap();
        assert_eq!(started.elapsed(), QUIET_MAX * 6, "then free");
        messages += sent_data(&mut outgoing);
        assert_eq!(messages, 1 + 63 + 2, "the second probe, the ramp, two more");

        // An idle peer's Pause waits for its own Resume, answered once.
        tokio::time::sleep(Duration::from_secs(5)).await;
        server.dispatch(flow(MessageType::Pause)).await.unwrap();
        assert_eq!(
            sent_flow(&mut outgoing),
            None,
            "its reader drains on its own"
        );
        let held = tokio::time::timeout(ANSWER_AFTER / 2, stream.write_all(b"x")).await;
        assert!(held.is_err(), "held");
        server.dispatch(flow(MessageType::Resume)).await.unwrap();
        assert_eq!(
            sent_flow(&mut outgoing),
            Some(MessageType::Resume),
            "wakes its writer"
        );
        stream.write_all(b"x").await.unwrap();
        server.dispatch(flow(MessageType::Resume)).await.unwrap();
        assert_eq!(
            sent_flow(&mut outgoing),
            None,
            "a Resume alone is not answered"
        );
        // Unanswered for ANSWER_AFTER: answered, then probed.
        tokio::time::sleep(Duration::from_secs(5)).await;
        server.dispatch(flow(MessageType::Pause)).await.unwrap();
        let started = Instant::now();
        stream.write_all(b"x").await.unwrap();
        assert_eq!(started.elapsed(), ANSWER_AFTER + PROBE_AFTER);
        assert_eq!(sent_flow(&mut outgoing), Some(MessageType::Resume));
        server.dispatch(flow(MessageType::Resume)).await.unwrap();
        let _ = sent_data(&mut outgoing);

        // Our buffer full: we pause the peer; its Pause is not answered; our reader draining sends
        // the Resume and ends the hold.
        let chunk = Bytes::from(vec![0u8; 64 * 1024]);
        for _ in 0..=(MAX_BUFFER / chunk.len()) {
            let data = Message::new(0, conn_id, MessageType::Data, chunk.clone());
            server.dispatch(data).await.unwrap();
        }
        assert_eq!(
            sent_flow(&mut outgoing),
            Some(MessageType::Pause),
            "over the limit"
        );
        server.dispatch(flow(MessageType::Pause)).await.unwrap();
        assert_eq!(sent_flow(&mut outgoing), None, "we want its writer asleep");
        let (mut reader, mut writer) = tokio::io::split(stream);
        let held = tokio::time::timeout(ANSWER_AFTER * 2, writer.write_all(b"x")).await;
        assert!(held.is_err(), "held, and no late answer");
        assert_eq!(sent_flow(&mut outgoing), None);
        let mut sink = vec![0u8; MAX_BUFFER];
        reader.read_exact(&mut sink).await.unwrap();
        assert_eq!(
            sent_flow(&mut outgoing),
            Some(MessageType::Resume),
            "drained"
        );
        let started = Instant::now();
        writer.write_all(b"x").await.unwrap();
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "the drain ended the hold"
        );
    }

    /// Hands each stream the client end is asked to open to the test.
    struct Handover(tokio::sync::mpsc::UnboundedSender<TunnelStream>);

    impl Connector for Handover {
        fn allows(&self, _: &str, _: &str) -> bool {
            true
        }

        fn serve(&self, _: String, _: String, stream: TunnelStream) -> Serving {
            let _ = self.0.send(stream);
            Box::pin(async {})
        }
    }

    /// Two corral ends, 64 MiB each way on one stream, each reader stopping once for a while (one
    /// for two seconds): both finish, and neither end ever holds more than a few windows (the Pause
    /// threshold and what was in flight when it paused) — however long its reader stops.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_corral_ends_keep_within_their_windows_whatever_their_readers_do() {
        use super::super::buffer::MAX_BUFFER;
        use std::sync::atomic::{AtomicUsize, Ordering};
        const TOTAL: usize = 64 << 20;
        const CHUNK: usize = 32 * 1024;
        let (handover, mut handed) = tokio::sync::mpsc::unbounded_channel();
        let (server, client) = pair(Arc::new(Handover(handover))).await;
        let ours = server.open_stream("tcp", "10.0.0.1:1").await.unwrap();
        let theirs = handed.recv().await.unwrap();
        let buffers = [
            server.mux.get(ours.conn_id()).unwrap(),
            client.mux.get(theirs.conn_id()).unwrap(),
        ];
        let most = Arc::new(AtomicUsize::new(0));
        let watched = most.clone();
        let monitor = tokio::spawn(async move {
            loop {
                for buffer in &buffers {
                    watched.fetch_max(buffer.buffered(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let transfer = |stream: TunnelStream, stall: Duration| async move {
            let (mut reader, mut writer) = tokio::io::split(stream);
            let writing = async {
                let chunk = vec![7u8; CHUNK];
                for _ in 0..TOTAL / CHUNK {
                    writer.write_all(&chunk).await.unwrap();
                }
            };
            let reading = async {
                let (mut received, mut stalled) = (0, false);
                let mut buf = vec![0u8; CHUNK];
                while received < TOTAL {
                    let n = reader.read(&mut buf).await.unwrap();
                    assert!(n > 0, "EOF at {received}");
                    received += n;
                    if !stalled && received > TOTAL / 3 {
                        stalled = true;
                        tokio::time::sleep(stall).await;
                    }
                }
            };
            tokio::join!(writing, reading);
        };
        let both = async {
            tokio::join!(
                transfer(ours, Duration::from_secs(2)),
                transfer(theirs, Duration::from_millis(300))
            )
        };
        tokio::time::timeout(Duration::from_secs(60), both)
            .await
            .expect("both directions finish");
        monitor.abort();
        let most = most.load(Ordering::Relaxed);
        eprintln!("the most either end held: {} KiB", most / 1024);
        assert!(most < MAX_BUFFER * 3, "{most} bytes held");
    }

    #[tokio::test]
    async fn pause_is_requested_once_above_the_buffer_limit() {
        use super::super::buffer::{MAX_BUFFER, RESUME_BELOW, StreamShared};
        let shared = StreamShared::new(2);
        let chunk = Bytes::from(vec![0u8; 64 * 1024]);
        let mut pauses = 0;
        for _ in 0..(MAX_BUFFER / chunk.len() + 2) {
            shared.push(chunk.clone(), || pauses += 1);
        }
        assert_eq!(pauses, 1, "one Pause, once over {MAX_BUFFER} bytes");
        assert!(shared.buffered() > MAX_BUFFER && RESUME_BELOW < MAX_BUFFER);
    }
}
