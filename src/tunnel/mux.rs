//! What a session's streams share: the outgoing queues, the message and stream ids, and the table of
//! open streams. The session's I/O loop drains the queues and feeds the table; each
//! [`TunnelStream`](super::stream::TunnelStream) sends through it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::buffer::{Closed, StreamShared, Tempo};
use super::codec::MessageType;

/// Outgoing messages queued per session before writers wait: enough to keep the socket busy, few
/// enough that a Pause from the peer stops what we send within about a window (a message is at
/// most 64 KiB).
const OUTGOING_QUEUE: usize = 16;

/// What a session's writer drains: data and errors in order on a bounded queue (so writers wait
/// for room), and Pause/Resume on an unbounded one, enqueued under the stream's lock so they reach
/// the peer in the order they were decided. (Decided under the lock but queued after it, a Resume
/// could overtake its Pause and leave the peer paused for good.)
pub struct Outgoing {
    pub(super) data: mpsc::Receiver<Bytes>,
    pub(super) flow: Arc<FlowQueue>,
}

/// The Pause/Resume queue: unbounded, as few are ever waiting (one per stream at most between
/// two writes), and unlike a channel it allocates nothing until used — it is in every idle tunnel.
#[derive(Default)]
pub struct FlowQueue {
    queued: Mutex<VecDeque<Bytes>>,
    ready: tokio::sync::Notify,
}

impl FlowQueue {
    fn push(&self, message: Bytes) {
        crate::support::lock(&self.queued).push_back(message);
        self.ready.notify_one();
    }

    /// The next queued message, if any.
    pub fn try_pop(&self) -> Option<Bytes> {
        crate::support::lock(&self.queued).pop_front()
    }

    /// Waits for the next message.
    pub async fn pop(&self) -> Bytes {
        loop {
            if let Some(message) = self.try_pop() {
                return message;
            }
            // A push after the check leaves a permit, so this wakes.
            self.ready.notified().await;
        }
    }
}

pub struct Mux {
    /// The tunnel's round trip, for the streams' flow control.
    pub tempo: Tempo,
    /// A Pause or Resume was queued since the session's reader last looked.
    flow_queued: std::sync::atomic::AtomicBool,
    out: mpsc::Sender<Bytes>,
    flow: Arc<FlowQueue>,
    streams: Mutex<HashMap<i64, Arc<StreamShared>>>,
    next_conn_id: AtomicI64,
    next_message_id: AtomicI64,
}

impl Mux {
    /// A mux, and the receivers its session's writer drains.
    pub fn new(first_message_id: i64) -> (Self, Outgoing) {
        let (out, data) = mpsc::channel(OUTGOING_QUEUE);
        let flow = Arc::new(FlowQueue::default());
        let mux = Self {
            tempo: Tempo::default(),
            flow_queued: std::sync::atomic::AtomicBool::new(false),
            out,
            flow: flow.clone(),
            streams: Mutex::new(HashMap::new()),
            next_conn_id: AtomicI64::new(1),
            next_message_id: AtomicI64::new(first_message_id),
        };
        let outgoing = Outgoing { data, flow };
        (mux, outgoing)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i64, Arc<StreamShared>>> {
        crate::support::lock(&self.streams)
    }

    pub fn sender(&self) -> mpsc::Sender<Bytes> {
        self.out.clone()
    }

    /// remotedialer's per-process message counter; receivers ignore it.
    pub fn next_message_id(&self) -> i64 {
        self.next_message_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The next stream id a server end opens (2, 3, … as remotedialer).
    pub fn next_conn_id(&self) -> i64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Encodes a message with the next message id.
    pub fn message(&self, conn_id: i64, kind: MessageType, payload: &[u8]) -> Bytes {
        super::codec::encode(self.next_message_id(), conn_id, kind, payload)
    }

    /// Queues a message, waiting for room.
    pub async fn send(&self, conn_id: i64, kind: MessageType, payload: Bytes) {
        let _ = self.out.send(self.message(conn_id, kind, &payload)).await;
    }

    /// Waits for room in the queue (for a Connect: given up, it leaves nothing behind).
    pub async fn reserve(&self) -> Option<mpsc::Permit<'_, Bytes>> {
        self.out.reserve().await.ok()
    }

    /// Queues a message from synchronous code: at once if there is room, else from a task.
    pub fn send_soon(&self, conn_id: i64, kind: MessageType, payload: Bytes) {
        let message = self.message(conn_id, kind, &payload);
        if let Err(mpsc::error::TrySendError::Full(message)) = self.out.try_send(message) {
            let out = self.out.clone();
            tokio::spawn(async move { out.send(message).await });
        }
    }

    /// Queues a Pause or Resume. Callers hold the stream's lock, which orders them (see [`Outgoing`]).
    pub fn send_flow(&self, conn_id: i64, kind: MessageType) {
        self.flow.push(self.message(conn_id, kind, &[]));
        self.flow_queued.store(true, Ordering::Release);
    }

    /// Whether a Pause or Resume was queued since the last call: the session's reader then lets
    /// its writer send it before reading on (a Pause sent late lets more Data in).
    pub fn take_flow_queued(&self) -> bool {
        self.flow_queued.swap(false, Ordering::AcqRel)
    }

    /// A new stream in the table.
    pub fn insert(&self, conn_id: i64) -> Arc<StreamShared> {
        let shared = StreamShared::new(conn_id);
        self.lock().insert(conn_id, shared.clone());
        shared
    }

    pub fn get(&self, conn_id: i64) -> Option<Arc<StreamShared>> {
        self.lock().get(&conn_id).cloned()
    }

    /// Takes a stream out of the table (it was closed).
    pub fn remove(&self, conn_id: i64) -> Option<Arc<StreamShared>> {
        self.lock().remove(&conn_id)
    }

    /// Every open stream's id (for SyncConnections).
    pub fn ids(&self) -> Vec<i64> {
        self.lock().keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Closes every stream with `how`, emptying the table.
    pub fn close_all(&self, how: &Closed) {
        let streams: Vec<_> = self.lock().drain().map(|(_, s)| s).collect();
        for stream in streams {
            stream.close(how.clone());
        }
    }

    /// Closes the streams older than `grace` that `listed` does not name, without sending Error
    /// (remotedialer's SyncConnections rule).
    pub fn prune_unlisted(&self, listed: &[i64], grace: Duration) {
        let mut streams = self.lock();
        let stale: Vec<i64> = streams
            .iter()
            .filter(|(id, s)| !listed.contains(id) && s.opened.elapsed() > grace)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(stream) = streams.remove(&id) {
                stream.close(Closed::Error("sync from client".into()));
            }
        }
    }
}
