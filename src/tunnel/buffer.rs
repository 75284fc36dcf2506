//! One stream's receive buffer and flow-control state, shared by the session that feeds it and the
//! [`TunnelStream`](super::stream::TunnelStream) that reads and writes it.
//!
//! Incoming Data is buffered per stream. Past `MAX_BUFFER` buffered bytes the session asks the peer to
//! Pause; once a reader drains it below `MAX_BUFFER / 8` it sends Resume (remotedialer's thresholds).
//! A Pause from the peer holds this side's writes until Resume. There is no half-close: an Error
//! message (`EOF` for a graceful end) closes both directions.
//!
//! Go peers keep one paused flag per stream for both directions, and their own Resume does not wake
//! their writer: a Go writer held by that flag sleeps until a Pause or Resume *from us* arrives, and a
//! Resume from us also clears a pause the Go peer asked of us. So:
//! - once the peer paused us and our own buffer has drained, we send Resume and stop holding our
//!   writes, as a Go peer would through its shared flag;
//! - a Resume from the peer, when it had paused us or we had paused it, is answered with one Resume,
//!   to wake a writer its own Resume left asleep;
//! - a Pause that arrives within [`CROSSING_WINDOW`] of a Resume of ours may have been sent before
//!   our Resume reached the peer, which then cleared the Go peer's memory of it: it will never resume
//!   us. Held by such a Pause with nothing left to read, we resume ourselves after [`NUDGE_AFTER`],
//!   doubling for each further nudge, at most [`MAX_NUDGES`] times before the peer resumes us (a peer
//!   that really stopped reading gets at most that many queues of data more). Any other Pause holds
//!   our writes until the peer resumes us.
//!
//! These messages are advisory to a peer that keeps the directions apart (corral itself): it pauses
//! again on its next buffer overflow.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

/// remotedialer's `MaxBuffer`: Pause is sent above this many buffered bytes.
pub const MAX_BUFFER: usize = 1 << 21;
/// Resume is sent once the buffer drains below this.
pub const RESUME_BELOW: usize = MAX_BUFFER / 8;
/// A writer held this long by a Pause that may have crossed our Resume, with our own buffer drained,
/// resumes itself; twice as long after each such nudge (see above).
pub const NUDGE_AFTER: Duration = Duration::from_secs(1);
/// Nudges at most, until the peer resumes us.
pub const MAX_NUDGES: u32 = 6;
/// A Pause arriving this soon after a Resume of ours may have been sent before it reached the peer.
pub const CROSSING_WINDOW: Duration = Duration::from_secs(5);

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

/// What [`StreamShared::check_writable`] found.
pub enum Writable {
    Yes,
    Held {
        nudge_at: Option<tokio::time::Instant>,
    },
    Closed(io::Error),
}

#[derive(Default)]
pub(super) struct BufferState {
    buffer: VecDeque<Bytes>,
    buffered: usize,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    closed: Option<Closed>,
    /// We asked the peer to pause.
    paused_peer: bool,
    /// The peer asked us to pause.
    held_by_peer: bool,
    /// The peer paused us and we have not sent Resume since: a Go peer's writer may be asleep.
    owe_resume: bool,
    /// When the peer paused us (the hold that is on).
    held_since: Option<tokio::time::Instant>,
    /// When we last sent Resume.
    resumed_at: Option<tokio::time::Instant>,
    /// The Pause holding us arrived within `CROSSING_WINDOW` of a Resume of ours.
    pause_may_be_void: bool,
    /// Nudges since the peer last resumed us.
    nudges: u32,
}

impl BufferState {
    /// Records a Resume of ours (the caller sends it, under the lock).
    fn resumed(&mut self) {
        self.paused_peer = false;
        self.resumed_at = Some(tokio::time::Instant::now());
    }

    /// Stops holding our writes.
    fn release(&mut self) {
        self.held_by_peer = false;
        self.owe_resume = false;
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }

    /// When a writer held now may resume itself, if it may.
    fn nudge_at(&self) -> Option<tokio::time::Instant> {
        let eligible = self.held_by_peer
            && self.owe_resume
            && self.pause_may_be_void
            && self.nudges < MAX_NUDGES
            && self.buffered < RESUME_BELOW;
        let held_since = self.held_since.filter(|_| eligible)?;
        Some(held_since + NUDGE_AFTER * 2u32.pow(self.nudges))
    }
}

/// The state a session and a stream share.
pub struct StreamShared {
    pub conn_id: i64,
    /// When the stream was opened: SyncConnections spares young streams (see `Session`).
    pub opened: tokio::time::Instant,
    state: Mutex<BufferState>,
}

impl StreamShared {
    pub fn new(conn_id: i64) -> Arc<Self> {
        crate::metrics::metrics().tunnel_streams.inc();
        Arc::new(Self {
            conn_id,
            opened: tokio::time::Instant::now(),
            state: Mutex::new(BufferState::default()),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, BufferState> {
        crate::support::lock(&self.state)
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

    /// Pause (`held`) or Resume from the peer; calls `resume` (under the stream's lock) when the peer
    /// should now get a Resume of ours.
    pub fn set_held(&self, held: bool, resume: impl FnOnce()) {
        let mut state = self.lock();
        if held {
            let now = tokio::time::Instant::now();
            if !state.held_by_peer {
                state.held_since = Some(now);
            }
            state.held_by_peer = true;
            state.owe_resume = true;
            state.pause_may_be_void = state
                .resumed_at
                .is_some_and(|at| now.duration_since(at) < CROSSING_WINDOW);
            return;
        }
        // A Go peer's Resume clears its one flag: our own Pause no longer holds it (we ask again if
        // our buffer is still full), and a writer of its that the flag held sleeps until we send
        // something.
        if state.owe_resume || state.paused_peer {
            state.resumed();
            resume();
        }
        state.nudges = 0;
        state.release();
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

    /// Takes up to `max` buffered bytes (one received chunk at most, without copying), or `None` at
    /// a graceful end. Calls `resume` (under the lock) when the peer should now get Resume.
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        max: usize,
        resume: impl FnOnce(),
    ) -> Poll<io::Result<Option<Bytes>>> {
        let mut state = self.lock();
        if let Some(front) = state.buffer.front_mut() {
            let chunk = front.split_to(front.len().min(max));
            if front.is_empty() {
                state.buffer.pop_front();
            }
            state.buffered -= chunk.len();
            if (state.paused_peer || state.owe_resume) && state.buffered < RESUME_BELOW {
                if state.owe_resume {
                    // Our Resume clears a Go peer's one flag, so it will never resume us: stop
                    // holding (as the Go peer itself would).
                    state.release();
                }
                state.resumed();
                resume();
            }
            return Poll::Ready(Ok(Some(chunk)));
        }
        match &state.closed {
            Some(Closed::Eof) => Poll::Ready(Ok(None)),
            Some(Closed::Error(e)) => Poll::Ready(Err(io::Error::other(e.clone()))),
            None => {
                state.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Whether our side may write now: `Yes`, `Closed`, or `Held` by the peer's Pause (the waker is
    /// kept, and `nudge_at` says when a hold that may be void ends by itself; see the module's
    /// comment). A due nudge releases the hold and calls `resume` (under the lock).
    pub fn check_writable(&self, cx: &Context<'_>, resume: impl FnOnce()) -> Writable {
        let mut state = self.lock();
        if let Some(closed) = &state.closed {
            let reason = match closed {
                Closed::Eof => "stream closed".to_string(),
                Closed::Error(e) => e.clone(),
            };
            return Writable::Closed(io::Error::new(io::ErrorKind::BrokenPipe, reason));
        }
        if !state.held_by_peer {
            return Writable::Yes;
        }
        let nudge_at = state.nudge_at();
        if nudge_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
            state.nudges += 1;
            state.release();
            state.resumed();
            resume();
            return Writable::Yes;
        }
        state.write_waker = Some(cx.waker().clone());
        Writable::Held { nudge_at }
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    pub fn buffered(&self) -> usize {
        self.lock().buffered
    }

    #[cfg(test)]
    pub fn describe(&self) -> String {
        let s = self.lock();
        format!(
            "buffered {} held {} paused_peer {} owe {} writer_waiting {}",
            s.buffered,
            s.held_by_peer,
            s.paused_peer,
            s.owe_resume,
            s.write_waker.is_some()
        )
    }
}

impl Drop for StreamShared {
    fn drop(&mut self) {
        crate::metrics::metrics().tunnel_streams.dec();
    }
}
