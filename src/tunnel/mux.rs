//! What a session's streams share: the outgoing queues, the message and stream ids, and the table of
//! open streams. The session's I/O loop drains the queues and feeds the table; each
//! [`TunnelStream`](super::stream::TunnelStream) sends through it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, TryAcquireError};

use super::buffer::{Closed, StreamShared, Tempo};
use super::codec::MessageType;

/// Outgoing messages queued per session before writers wait: enough to keep the socket busy, few
/// enough that a Pause from the peer stops what we send within about a window (a message is at
/// most 64 KiB).
const OUTGOING_QUEUE: usize = 16;

/// What a session's writer drains, shared with the [`Mux`] that fills it: data and errors in order
/// on a bounded queue (writers wait for room, first come first served), and Pause/Resume on an
/// unbounded one, enqueued under the stream's lock so they reach the peer in the order they were
/// decided. (Decided under the lock but queued after it, a Resume could overtake its Pause and
/// leave the peer paused for good.) Pause/Resume go first.
///
/// Not tokio's bounded channel: that allocates a block of 32 slots and its own shared state up
/// front (about 1.5 KiB), and this queue is in every idle tunnel; here an empty queue holds no
/// allocation (docs/SCALE.md).
pub struct Queues {
    queued: Mutex<Queued>,
    /// Free places on the data queue; closed when the session's writer is gone.
    room: Semaphore,
    /// The writer waits on it.
    ready: Notify,
}

#[derive(Default)]
struct Queued {
    flow: VecDeque<Bytes>,
    data: VecDeque<Bytes>,
}

/// A place taken on the data queue, for one message.
pub struct Permit<'a> {
    queues: &'a Queues,
}

impl Permit<'_> {
    pub fn send(self, message: Bytes) {
        self.queues.push_data(message);
        std::mem::forget(self);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.queues.room.add_permits(1);
    }
}

impl Queues {
    fn new() -> Self {
        Self {
            queued: Mutex::default(),
            room: Semaphore::new(OUTGOING_QUEUE),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queued> {
        crate::support::lock(&self.queued)
    }

    /// Queues a message on a place taken from `room`.
    fn push_data(&self, message: Bytes) {
        self.lock().data.push_back(message);
        self.ready.notify_one();
    }

    fn push_flow(&self, message: Bytes) {
        // Nobody will send it: the writer is gone.
        if self.room.is_closed() {
            return;
        }
        self.lock().flow.push_back(message);
        self.ready.notify_one();
    }

    /// Waits for a place on the data queue; `None` once the writer is gone.
    pub async fn reserve(&self) -> Option<Permit<'_>> {
        self.room.acquire().await.ok()?.forget();
        Some(Permit { queues: self })
    }

    /// A place on the data queue if one is free now.
    fn try_reserve(&self) -> Result<Permit<'_>, TryAcquireError> {
        self.room.try_acquire()?.forget();
        Ok(Permit { queues: self })
    }

    /// Queues a message, waiting for room; dropped if the writer is gone.
    pub async fn send(&self, message: Bytes) {
        if let Some(permit) = self.reserve().await {
            permit.send(message);
        }
    }

    /// The next message, Pause/Resume first.
    pub fn try_pop(&self) -> Option<Bytes> {
        self.try_pop_flow().or_else(|| self.try_pop_data())
    }

    pub(super) fn try_pop_flow(&self) -> Option<Bytes> {
        self.lock().flow.pop_front()
    }

    pub(super) fn try_pop_data(&self) -> Option<Bytes> {
        let message = self.lock().data.pop_front()?;
        self.room.add_permits(1);
        Some(message)
    }

    /// Waits for the next message.
    pub async fn pop(&self) -> Bytes {
        loop {
            if let Some(message) = self.try_pop() {
                return message;
            }
            // Idle: give back what a burst made the queues grow to.
            {
                let mut queued = self.lock();
                if queued.flow.is_empty() && queued.data.is_empty() {
                    *queued = Queued::default();
                }
            }
            // A push after the check leaves a permit, so this wakes.
            self.ready.notified().await;
        }
    }

    /// The writer is gone: waiting and later senders give up, and what is queued is dropped.
    fn close(&self) {
        self.room.close();
        *self.lock() = Queued::default();
    }
}

/// A place on the data queue taken by polling, for a stream's `poll_write`: held until `send`,
/// given back if dropped unused.
pub struct PollPermit {
    queues: Arc<Queues>,
    waiting: Option<Pin<Box<dyn Future<Output = bool> + Send>>>,
    held: bool,
}

/// The session's writer is gone.
#[derive(Debug)]
pub struct WriterGone;

impl PollPermit {
    pub fn new(queues: Arc<Queues>) -> Self {
        Self {
            queues,
            waiting: None,
            held: false,
        }
    }

    /// Ready when a place is held.
    pub fn poll_reserve(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriterGone>> {
        if self.held {
            return Poll::Ready(Ok(()));
        }
        let waiting = match &mut self.waiting {
            Some(waiting) => waiting,
            None => {
                match self.queues.room.try_acquire() {
                    Ok(place) => {
                        place.forget();
                        self.held = true;
                        return Poll::Ready(Ok(()));
                    }
                    Err(TryAcquireError::Closed) => return Poll::Ready(Err(WriterGone)),
                    Err(TryAcquireError::NoPermits) => {}
                }
                // Full: wait in line (a box only while waiting).
                let queues = self.queues.clone();
                self.waiting.insert(Box::pin(async move {
                    let place = queues.room.acquire().await;
                    place.map(|place| place.forget()).is_ok()
                }))
            }
        };
        let taken = ready!(waiting.as_mut().poll(cx));
        self.waiting = None;
        self.held = taken;
        Poll::Ready(if taken { Ok(()) } else { Err(WriterGone) })
    }

    /// Queues `message` on the place held (after `poll_reserve`).
    pub fn send(&mut self, message: Bytes) -> Result<(), WriterGone> {
        if !std::mem::take(&mut self.held) {
            return Err(WriterGone);
        }
        self.queues.push_data(message);
        Ok(())
    }
}

impl Drop for PollPermit {
    fn drop(&mut self) {
        if self.held {
            self.queues.room.add_permits(1);
        }
    }
}

/// The session writer's end of its [`Queues`]: closes them when dropped, as a channel's receiver.
pub struct Outgoing {
    queues: Arc<Queues>,
}

impl std::ops::Deref for Outgoing {
    type Target = Queues;
    fn deref(&self) -> &Queues {
        &self.queues
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.queues.close();
    }
}

pub struct Mux {
    /// The tunnel's round trip, for the streams' flow control.
    pub tempo: Tempo,
    /// A Pause or Resume was queued since the session's reader last looked.
    flow_queued: std::sync::atomic::AtomicBool,
    queues: Arc<Queues>,
    streams: Mutex<HashMap<i64, Arc<StreamShared>>>,
    next_conn_id: AtomicI64,
    next_message_id: AtomicI64,
}

impl Mux {
    /// A mux, and the receivers its session's writer drains.
    pub fn new(first_message_id: i64) -> (Self, Outgoing) {
        let queues = Arc::new(Queues::new());
        let mux = Self {
            tempo: Tempo::default(),
            flow_queued: std::sync::atomic::AtomicBool::new(false),
            queues: queues.clone(),
            streams: Mutex::new(HashMap::new()),
            next_conn_id: AtomicI64::new(1),
            next_message_id: AtomicI64::new(first_message_id),
        };
        let outgoing = Outgoing { queues };
        (mux, outgoing)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i64, Arc<StreamShared>>> {
        crate::support::lock(&self.streams)
    }

    /// The queues, for a stream's writes.
    pub fn queues(&self) -> Arc<Queues> {
        self.queues.clone()
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
        self.queues
            .send(self.message(conn_id, kind, &payload))
            .await;
    }

    /// Waits for room in the queue (for a Connect: given up, it leaves nothing behind).
    pub async fn reserve(&self) -> Option<Permit<'_>> {
        self.queues.reserve().await
    }

    /// Queues a message from synchronous code: at once if there is room, else from a task.
    pub fn send_soon(&self, conn_id: i64, kind: MessageType, payload: Bytes) {
        let message = self.message(conn_id, kind, &payload);
        match self.queues.try_reserve() {
            Ok(permit) => permit.send(message),
            Err(TryAcquireError::Closed) => {}
            Err(TryAcquireError::NoPermits) => {
                let queues = self.queues.clone();
                tokio::spawn(async move { queues.send(message).await });
            }
        }
    }

    /// Queues a Pause or Resume. Callers hold the stream's lock, which orders them (see
    /// [`Queues`]).
    pub fn send_flow(&self, conn_id: i64, kind: MessageType) {
        self.queues.push_flow(self.message(conn_id, kind, &[]));
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn message(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[tokio::test]
    async fn an_idle_queue_holds_no_allocation() {
        let (mux, outgoing) = Mux::new(1);
        for n in 0..10 {
            mux.send(1, MessageType::Data, message(n)).await;
        }
        mux.send_flow(1, MessageType::Pause);
        assert!(outgoing.lock().data.capacity() >= 10);
        for _ in 0..11 {
            outgoing.pop().await;
        }
        // Nothing is left: the writer waits, and gives the burst's room back first.
        let waited = tokio::time::timeout(Duration::from_millis(20), outgoing.pop()).await;
        assert!(waited.is_err(), "nothing was queued");
        let queued = outgoing.lock();
        assert_eq!((queued.data.capacity(), queued.flow.capacity()), (0, 0));
    }

    #[tokio::test]
    async fn data_waits_for_room_and_pause_resume_go_first() {
        let (mux, outgoing) = Mux::new(1);
        for n in 0..OUTGOING_QUEUE as u8 {
            mux.reserve().await.expect("room").send(message(n));
        }
        let full = tokio::time::timeout(Duration::from_millis(20), mux.reserve())
            .await
            .is_err();
        assert!(full, "the 17th message waits");
        let late = std::sync::Arc::new(mux);
        let sender = late.clone();
        let waiting =
            tokio::spawn(async move { sender.send(1, MessageType::Data, message(99)).await });
        late.send_flow(1, MessageType::Resume);
        let first = outgoing.try_pop().expect("queued");
        assert_eq!(
            crate::tunnel::codec::Message::decode(first).unwrap().kind,
            MessageType::Resume
        );
        assert_eq!(
            outgoing.try_pop_data().map(|m| m[m.len() - 1]),
            Some(0),
            "data in order"
        );
        waiting.await.unwrap();
        let mut rest = Vec::new();
        while let Some(m) = outgoing.try_pop_data() {
            rest.push(m[m.len() - 1]);
        }
        let expected: Vec<u8> = (1..OUTGOING_QUEUE as u8).chain([99]).collect();
        assert_eq!(
            rest, expected,
            "the waiting message went in after the others"
        );
    }

    #[tokio::test]
    async fn a_place_taken_and_not_used_is_given_back() {
        let (mux, outgoing) = Mux::new(1);
        let mut permits: Vec<_> = (0..OUTGOING_QUEUE)
            .map(|_| PollPermit::new(mux.queues()))
            .collect();
        for permit in &mut permits {
            std::future::poll_fn(|cx| permit.poll_reserve(cx))
                .await
                .unwrap();
        }
        assert!(mux.queues.try_reserve().is_err(), "every place is held");
        permits.pop();
        mux.reserve()
            .await
            .expect("the dropped place")
            .send(message(1));
        assert_eq!(outgoing.try_pop_data().map(|m| m[m.len() - 1]), Some(1));
        let mut permit = PollPermit::new(mux.queues());
        let mut waiting = std::pin::pin!(std::future::poll_fn(|cx| permit.poll_reserve(cx)));
        assert!(
            futures_util::poll!(waiting.as_mut()).is_ready(),
            "the popped message's place"
        );
    }

    #[tokio::test]
    async fn without_its_writer_the_queue_takes_nothing() {
        let (mux, outgoing) = Mux::new(1);
        for n in 0..OUTGOING_QUEUE as u8 {
            mux.send(1, MessageType::Data, message(n)).await;
        }
        let mux = std::sync::Arc::new(mux);
        let sender = mux.clone();
        let waiting = tokio::spawn(async move { sender.reserve().await.is_none() });
        let mut permit = PollPermit::new(mux.queues());
        let mut polled = std::pin::pin!(std::future::poll_fn(|cx| permit.poll_reserve(cx)));
        assert!(futures_util::poll!(polled.as_mut()).is_pending());
        let queues = mux.queues();
        drop(outgoing);
        assert!(waiting.await.unwrap(), "a waiting sender gives up");
        assert!(polled.await.is_err(), "a waiting stream gives up");
        assert!(mux.reserve().await.is_none());
        mux.send_soon(1, MessageType::Error, message(1));
        mux.send_flow(1, MessageType::Resume);
        assert!(
            queues.try_pop().is_none(),
            "what was queued is dropped, nothing more is taken"
        );
    }
}
