//! The server's tunnel sessions, by client key (a cluster id, or `<cluster>:<node>`), and the routes
//! dials take through them. With several sessions for one key the oldest serves dials, as in
//! remotedialer. Replicas peer with each other (remotedialer's peering, used by Rancher HA): a peer's
//! session announces the client keys it holds (AddClient/RemoveClient), and a key with no session
//! here is reached through the peer that holds it, with the `<key>::<proto>` Connect prefix.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, broadcast};

use super::connection::WebSocket;
use super::session::{Role, Session};
use super::stream::TunnelStream;

/// A client session came or went here: what this replica announces to its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    Added { key: String, session_key: i64 },
    Removed { key: String, session_key: i64 },
}

/// How a dial reaches a client key: its own session here, or a peer that holds one.
#[derive(Clone)]
pub struct Route {
    session: Arc<Session>,
    /// `Some(key)` when the dial is relayed by a peer: the Connect names the key.
    relayed_for: Option<String>,
}

impl Route {
    /// Opens a stream to `proto`/`address` at the client (see [`Session::open_stream`]).
    pub async fn open_stream(&self, proto: &str, address: &str) -> std::io::Result<TunnelStream> {
        match &self.relayed_for {
            Some(key) => {
                self.session
                    .open_stream(&format!("{key}::{proto}"), address)
                    .await
            }
            None => self.session.open_stream(proto, address).await,
        }
    }

    /// The agent sessions this route reaches: this replica's own, or those the peer announced.
    pub fn sessions(&self) -> Vec<i64> {
        match &self.relayed_for {
            Some(key) => self.session.announced_sessions(key),
            None => vec![self.session.session_key()],
        }
    }
}

/// Live sessions: agents' by client key, peers' by peer id.
pub struct TunnelRegistry {
    clients: Mutex<HashMap<String, Vec<Arc<Session>>>>,
    peers: Mutex<HashMap<String, Vec<Arc<Session>>>>,
    /// Sessions per key (client key or peer id), counted from before the upgrade to their end:
    /// what bounds how many one registration token can open.
    reserved: Arc<Mutex<HashMap<String, usize>>>,
    /// Woken whenever a route may have appeared (a session added, a peer's announcement), for
    /// dials waiting on an agent.
    added: Arc<Notify>,
    events: broadcast::Sender<ClientEvent>,
}

impl Default for TunnelRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// Sessions by key, under one lock.
type Table = HashMap<String, Vec<Arc<Session>>>;

impl TunnelRegistry {
    pub fn new() -> Self {
        Self {
            clients: Mutex::default(),
            peers: Mutex::default(),
            reserved: Arc::default(),
            added: Arc::new(Notify::new()),
            events: broadcast::channel(4096).0,
        }
    }

    /// A place for one more session of `key`, if it has fewer than `max` (counting those being
    /// opened); the place is held until the reservation is dropped.
    pub fn reserve(&self, key: &str, max: usize) -> Option<Reservation> {
        let mut reserved = crate::support::lock(&self.reserved);
        let count = reserved.entry(key.to_string()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Reservation {
            key: key.to_string(),
            reserved: self.reserved.clone(),
        })
    }

    fn clients(&self) -> MutexGuard<'_, Table> {
        crate::support::lock(&self.clients)
    }

    fn peers(&self) -> MutexGuard<'_, Table> {
        crate::support::lock(&self.peers)
    }

    /// Runs an agent's server session for `key` over `ws` until it ends; `started` is told its
    /// session key before any dial can take it. Returns the session key. (Not an async fn: what is
    /// done before the session runs is done here, so that every idle tunnel's task does not carry
    /// `ws` and `started` beside the session.)
    pub fn serve<S, F>(
        self: &Arc<Self>,
        key: String,
        ws: WebSocket<S>,
        started: F,
    ) -> impl Future<Output = i64> + use<S, F>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: FnOnce(i64),
    {
        let (session, outgoing) = Session::new(Role::Server, &key, None);
        let session_key = session.session_key();
        started(session_key);
        add(&mut self.clients(), &key, &session);
        let _ = self.events.send(ClientEvent::Added {
            key: key.to_string(),
            session_key,
        });
        self.added.notify_waiters();
        crate::metrics::metrics().tunnel_sessions.inc();
        tracing::info!("tunnel for {key} connected (session {session_key})");
        let running = session.run(ws, outgoing);
        let registry = self.clone();
        // A combinator, not an async block: awaiting `running` in a block would move it into a
        // second slot of the block's state, twice its size in every tunnel's task.
        running.map(move |result| {
            remove(&mut registry.clients(), &key, &session);
            let _ = registry.events.send(ClientEvent::Removed {
                key: key.clone(),
                session_key,
            });
            crate::metrics::metrics().tunnel_sessions.dec();
            match result {
                Ok(()) => tracing::info!("tunnel for {key} closed"),
                Err(e) => tracing::warn!("tunnel for {key} ended: {e}"),
            }
            session_key
        })
    }

    /// Runs the session a peer replica opened to us, over `ws`, until it ends. The peer announces
    /// the keys it holds on it; dials for them go through it.
    pub async fn serve_peer<S>(&self, peer_id: &str, ws: WebSocket<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (session, outgoing) = Session::new_peer(peer_id, self.added.clone());
        add(&mut self.peers(), peer_id, &session);
        tracing::info!("peer {peer_id} connected");
        let result = session.run(ws, outgoing).await;
        remove(&mut self.peers(), peer_id, &session);
        match result {
            Ok(()) => tracing::info!("peer {peer_id} closed"),
            Err(e) => tracing::warn!("peer {peer_id} ended: {e}"),
        }
    }

    /// The session of this replica that serves dials for `key` (the oldest live one).
    pub fn local(&self, key: &str) -> Option<Arc<Session>> {
        let clients = self.clients();
        clients.get(key)?.iter().find(|s| !s.is_closed()).cloned()
    }

    /// How a dial reaches `key`: a session here, else a peer that announced it.
    pub fn route(&self, key: &str) -> Option<Route> {
        if let Some(session) = self.local(key) {
            return Some(Route {
                session,
                relayed_for: None,
            });
        }
        let peers = self.peers();
        let session = peers
            .values()
            .flatten()
            .find(|s| !s.is_closed() && s.advertises(key))?;
        Some(Route {
            session: session.clone(),
            relayed_for: Some(key.to_string()),
        })
    }

    /// Like [`route`](Self::route), waiting up to `limit` for an agent to connect (here or at a
    /// peer).
    pub async fn wait_for(&self, key: &str, limit: Duration) -> Option<Route> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let added = self.added.notified();
            if let Some(found) = self.route(key) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return self.route(key);
            }
        }
    }

    /// The client sessions of this replica, as peers are told about them on connecting.
    pub fn local_clients(&self) -> Vec<(String, i64)> {
        self.clients()
            .iter()
            .flat_map(|(key, list)| list.iter().map(|s| (key.clone(), s.session_key())))
            .collect()
    }

    /// Client sessions added and removed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ClientEvent> {
        self.events.subscribe()
    }

    /// Ends every session (shutdown); returns how many agents' sessions there were.
    pub fn close_all(&self) -> usize {
        let clients: Vec<Arc<Session>> = self.clients().values().flatten().cloned().collect();
        let peers: Vec<Arc<Session>> = self.peers().values().flatten().cloned().collect();
        for session in clients.iter().chain(&peers) {
            session.close();
        }
        clients.len()
    }

    /// Ends this replica's sessions of cluster `cluster_id` and of its nodes (`<cluster>:<node>`),
    /// as when the cluster is deleted; returns how many there were.
    pub fn close_cluster(&self, cluster_id: &str) -> usize {
        let node_prefix = format!("{cluster_id}:");
        let doomed: Vec<Arc<Session>> = self
            .clients()
            .iter()
            .filter(|(key, _)| *key == cluster_id || key.starts_with(&node_prefix))
            .flat_map(|(_, list)| list.iter().cloned())
            .collect();
        for session in &doomed {
            session.close();
        }
        doomed.len()
    }

    /// The client keys of this replica's sessions.
    pub fn local_keys(&self) -> Vec<String> {
        self.clients().keys().cloned().collect()
    }

    /// Sessions still running (agents' and peers').
    pub fn session_count(&self) -> usize {
        let count = |table: &Table| table.values().map(Vec::len).sum::<usize>();
        count(&self.clients()) + count(&self.peers())
    }

    /// Whether dials for `key` have a way, here or through a peer.
    pub fn is_connected(&self, key: &str) -> bool {
        self.route(key).is_some()
    }
}

/// One session's place among its key's (see [`TunnelRegistry::reserve`]).
pub struct Reservation {
    key: String,
    reserved: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut reserved = crate::support::lock(&self.reserved);
        if let Some(count) = reserved.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                reserved.remove(&self.key);
            }
        }
    }
}

fn add(table: &mut Table, key: &str, session: &Arc<Session>) {
    table
        .entry(key.to_string())
        .or_default()
        .push(session.clone());
}

fn remove(table: &mut Table, key: &str, session: &Arc<Session>) {
    if let Some(list) = table.get_mut(key) {
        list.retain(|s| !Arc::ptr_eq(s, session));
        if list.is_empty() {
            table.remove(key);
        }
    }
}
