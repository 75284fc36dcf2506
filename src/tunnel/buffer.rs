//! One stream's receive buffer and flow-control state, shared by the session that feeds it and the
//! [`TunnelStream`](super::stream::TunnelStream) that reads and writes it.
//!
//! Incoming Data is buffered per stream. Past `MAX_BUFFER` buffered bytes the session asks the peer to
//! Pause; once a reader drains it below `MAX_BUFFER / 8` it sends Resume (remotedialer's thresholds).
//! A Pause from the peer holds this side's writes. There is no half-close: an Error message (`EOF`
//! for a graceful end) closes both directions.
//!
//! A Go peer (remotedialer, `shared/spec/tunnel-protocol.md` §1.5) keeps one `paused` flag per
//! stream for both directions and sends Pause and Resume synchronously; its writer sleeps while the
//! flag is set and is woken only by a Pause or Resume *from us*. Its own Pause therefore puts its own
//! writer to sleep, and its Resume (sent when its reader drains) clears the flag without waking it.
//! An agent relaying to a target that answers what it reads (remotedialer's `pipe` to `cat`, an
//! echo, an exec shell) then stops for good: its reader waits for the target, the target for the
//! agent's writer, the writer for us. So, per stream:
//! - **We pause the peer** when our buffer passes `MAX_BUFFER` — or `RESUME_BELOW` already, when
//!   our reader has taken nothing for [`READER_STALLED`] (a client that stopped reading does not get
//!   a window's worth held for it; one that reads gets the whole window) — and say so again to a peer that
//!   goes on sending: at once when its Data comes after a pause of its own (a probe, below), and for
//!   every further half window otherwise (what was in flight when it paused is not a reason).
//!   Draining below `RESUME_BELOW` sends Resume, which also ends a hold of ours (a Go peer's one
//!   flag is clear now).
//! - **The peer pauses us**: our writes wait. If we are pausing it too, its writer should sleep and
//!   our drain will wake it. Otherwise:
//!   - if its writer was busy (Data from it within [`ACTIVE_WINDOW`]), it is asleep now and may be
//!     what its reader waits for: we answer at once with Resume, which wakes it and clears the Go
//!     flag. The flag clear, a Go peer will not say when its buffer has room, so after
//!     [`PROBE_AFTER`] one message goes as a probe: a peer still full pauses us again (answered the
//!     same way; the next probe waits twice as long), one that stays quiet for a few round trips
//!     has room, and our writes go on. Its buffer grows by a probe at a time, never a stream at a
//!     time;
//!   - if it was idle, its reader drains on its own: we wait for its Resume (answered with one
//!     Resume, which wakes a writer its own Pause put to sleep). Should it not come within
//!     [`ANSWER_AFTER`], we answer and probe as above.
//! - **The peer resumes us**: our writes go on.
//!
//! A Resume of ours answers only a Pause or a Resume of the peer's (once per hold), and a Resume is
//! never answered by corral: two corral ends cannot keep answering each other.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// remotedialer's `MaxBuffer`: Pause is sent above this many buffered bytes.
pub const MAX_BUFFER: usize = 1 << 21;
/// Resume is sent once the buffer drains below this.
pub const RESUME_BELOW: usize = MAX_BUFFER / 8;
/// A hold's first probe goes this long after the peer's Pause (each further one twice as long).
pub const PROBE_AFTER: Duration = Duration::from_millis(50);
/// Data after a gap this long, while we pause the peer, is a probe of its: we pause it again.
const PROBE_GAP: Duration = Duration::from_millis(5);
/// A reader that has taken nothing for this long has stalled: the peer is paused sooner.
pub const READER_STALLED: Duration = Duration::from_millis(50);
/// A probe's first allowance: one message of the largest size.
const PROBE_BYTES: usize = 64 * 1024;
/// A peer that sent us Data this recently before pausing us has a busy writer.
pub const ACTIVE_WINDOW: Duration = Duration::from_millis(500);
/// How long an idle peer's own Resume is waited for before we answer its Pause ourselves.
pub const ANSWER_AFTER: Duration = Duration::from_millis(200);
/// A probe's quiet, in round trips of the tunnel (see [`Tempo`]), and its bounds.
const QUIET_ROUND_TRIPS: u32 = 4;
pub const QUIET_MIN: Duration = Duration::from_millis(5);
pub const QUIET_MAX: Duration = Duration::from_millis(250);
/// Doublings of [`PROBE_AFTER`] at most (about 15 hours).
const MAX_DOUBLINGS: u32 = 20;

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

/// The tunnel's round trip (WebSocket ping to pong), which sizes a probe's quiet: a peer that
/// would pause us again has done so a few round trips after our probe. Until measured, the
/// longest quiet.
#[derive(Debug, Default)]
pub struct Tempo {
    /// Microseconds; 0 until measured.
    round_trip_us: std::sync::atomic::AtomicU64,
}

impl Tempo {
    /// A ping's round trip.
    pub fn measured(&self, round_trip: Duration) {
        let micros = u64::try_from(round_trip.as_micros()).unwrap_or(u64::MAX);
        self.round_trip_us
            .store(micros.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// How long a probe waits for a Pause back.
    pub fn quiet(&self) -> Duration {
        match self
            .round_trip_us
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => QUIET_MAX,
            micros => {
                (Duration::from_micros(micros) * QUIET_ROUND_TRIPS).clamp(QUIET_MIN, QUIET_MAX)
            }
        }
    }
}

/// What [`StreamShared::check_writable`] found.
pub enum Writable {
    Yes,
    /// Held by the peer; look again at `until` if it is set (a probe due, or a probe's quiet over).
    Held {
        until: Option<Instant>,
    },
    Closed(io::Error),
}

/// The peer asked us to pause.
#[derive(Debug)]
struct Hold {
    /// Counts the holds, for a timer planned for one of them.
    id: u64,
    stage: Stage,
    /// Probes the peer paused again: each next one waits twice as long.
    failed: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Unanswered: waiting for the peer's own Resume (or our drain, when we pause it too).
    Waiting,
    /// Answered: the probe may start then.
    ProbeDue(Instant),
    /// Probing: `left` bytes may go now; once they have, quiet for a while after `last`, twice
    /// `allowed` may go; past a window, the hold ends.
    Probing {
        allowed: usize,
        left: usize,
        last: Option<Instant>,
    },
}

/// A hold still unanswered, to be answered at `at` if it still is (see [`StreamShared::answer_late`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LateAnswer {
    pub at: Instant,
    hold: u64,
}

fn probe_delay(failed: u32) -> Duration {
    PROBE_AFTER * 2u32.pow(failed.min(MAX_DOUBLINGS))
}

#[derive(Default)]
pub(super) struct BufferState {
    buffer: VecDeque<Bytes>,
    buffered: usize,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    closed: Option<Closed>,
    /// We asked the peer to pause and have not resumed it since; how much we held when we last
    /// said so.
    paused_peer: Option<usize>,
    hold: Option<Hold>,
    holds: u64,
    /// When the peer last sent Data.
    peer_data_at: Option<Instant>,
    /// When our reader last took data (or the buffer was last empty).
    taken_at: Option<Instant>,
}

impl BufferState {
    /// Ends the peer's hold on our writes.
    fn release(&mut self) {
        self.hold = None;
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }

    /// Answers the hold (our Resume, sent by the caller): a probe is due after the delay, and a
    /// writer waiting looks again when.
    fn answered(hold: &mut Hold, now: Instant, writer: &mut Option<Waker>) {
        hold.stage = Stage::ProbeDue(now + probe_delay(hold.failed));
        if let Some(waker) = writer.take() {
            waker.wake();
        }
    }
}

/// The state a session and a stream share.
pub struct StreamShared {
    pub conn_id: i64,
    /// When the stream was opened: SyncConnections spares young streams (see `Session`).
    pub opened: Instant,
    state: Mutex<BufferState>,
}

impl StreamShared {
    pub fn new(conn_id: i64) -> Arc<Self> {
        crate::metrics::metrics().tunnel_streams.inc();
        Arc::new(Self {
            conn_id,
            opened: Instant::now(),
            state: Mutex::new(BufferState::default()),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, BufferState> {
        crate::support::lock(&self.state)
    }

    /// Buffers incoming data; calls `pause` (under the stream's lock) when the peer should now be
    /// asked to Pause — first over the limit, and again while data keeps coming over it (see the
    /// module's rules).
    pub fn push(&self, data: Bytes, pause: impl FnOnce()) {
        let mut state = self.lock();
        if state.closed.is_some() || data.is_empty() {
            return;
        }
        let metrics = crate::metrics::metrics();
        metrics.tunnel_bytes_in.inc_by(data.len() as u64);
        metrics.tunnel_buffered.add(data.len() as i64);
        let now = Instant::now();
        let after_a_gap = state
            .peer_data_at
            .is_none_or(|at| now.duration_since(at) >= PROBE_GAP);
        state.peer_data_at = Some(now);
        if state.buffered == 0 {
            state.taken_at = Some(now);
        }
        state.buffered += data.len();
        state.buffer.push_back(data);
        if let Some(waker) = state.read_waker.take() {
            waker.wake();
        }
        let stalled = state
            .taken_at
            .is_some_and(|at| now.duration_since(at) >= READER_STALLED);
        let limit = if stalled { RESUME_BELOW } else { MAX_BUFFER };
        if state.buffered > limit {
            let due = match state.paused_peer {
                None => true,
                Some(held) => after_a_gap || state.buffered >= held + MAX_BUFFER / 2,
            };
            if due {
                state.paused_peer = Some(state.buffered);
                pause();
            }
        }
    }

    /// Pause (`held`) or Resume from the peer; calls `resume` (under the stream's lock) when the
    /// peer should get a Resume back (see the module's rules). Returns when an unanswered hold is
    /// to be answered anyway, if it is still on then (for [`StreamShared::answer_late`]).
    pub fn set_held(&self, held: bool, resume: impl FnOnce()) -> Option<LateAnswer> {
        let mut state = self.lock();
        let now = Instant::now();
        let pausing_peer = state.paused_peer.is_some();
        if !held {
            let unanswered = state
                .hold
                .as_ref()
                .is_some_and(|hold| hold.stage == Stage::Waiting);
            state.release();
            // Its Resume cleared its flag without waking a writer its own Pause put to sleep.
            if unanswered && !pausing_peer {
                resume();
            }
            return None;
        }
        let busy = state
            .peer_data_at
            .is_some_and(|at| now.duration_since(at) < ACTIVE_WINDOW);
        let state = &mut *state;
        match &mut state.hold {
            None => {
                state.holds += 1;
                let mut hold = Hold {
                    id: state.holds,
                    stage: Stage::Waiting,
                    failed: 0,
                };
                let late = match (pausing_peer, busy) {
                    // Its writer should sleep: our drain wakes it.
                    (true, _) => None,
                    (false, true) => {
                        BufferState::answered(&mut hold, now, &mut state.write_waker);
                        resume();
                        None
                    }
                    (false, false) => Some(LateAnswer {
                        at: now + ANSWER_AFTER,
                        hold: hold.id,
                    }),
                };
                state.hold = Some(hold);
                late
            }
            Some(hold) => {
                match hold.stage {
                    // Full again while we probe: answered again. A peer that took nothing since
                    // our first probe message waits twice as long for the next probe (its reader
                    // may have stopped); one that took more is alive, and gets the first delay.
                    Stage::Probing { allowed, .. } => {
                        hold.failed = match allowed > PROBE_BYTES {
                            true => 0,
                            false => hold.failed + 1,
                        };
                        if pausing_peer {
                            // Its writer should sleep now: our drain's Resume (or its own) ends
                            // this hold.
                            hold.stage = Stage::Waiting;
                        } else {
                            BufferState::answered(hold, now, &mut state.write_waker);
                            resume();
                        }
                    }
                    // A Go peer pauses only with its flag clear (our answer cleared it): its writer
                    // is asleep again.
                    Stage::ProbeDue(_) if !pausing_peer => resume(),
                    Stage::ProbeDue(_) | Stage::Waiting => {}
                }
                None
            }
        }
    }

    /// Answers an unanswered hold that is still on (see [`LateAnswer`]): calls `resume` (under the
    /// lock) and the hold goes on to its probe.
    pub fn answer_late(&self, late: LateAnswer, resume: impl FnOnce()) {
        let mut state = self.lock();
        if state.closed.is_some() || state.paused_peer.is_some() {
            return;
        }
        let state = &mut *state;
        if let Some(hold) = &mut state.hold
            && hold.id == late.hold
            && hold.stage == Stage::Waiting
        {
            BufferState::answered(hold, Instant::now(), &mut state.write_waker);
            resume();
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
            state.taken_at = Some(Instant::now());
            crate::metrics::metrics()
                .tunnel_buffered
                .sub(chunk.len() as i64);
            if state.paused_peer.is_some() && state.buffered < RESUME_BELOW {
                state.paused_peer = None;
                // Our Resume clears a Go peer's one flag, so it will not resume us: stop holding
                // (as the Go peer itself would); a peer still full pauses us again.
                state.release();
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

    /// Whether our side may write a message now: `Yes`, `Closed`, or `Held` by the peer's Pause
    /// (the waker is kept; `until` says when a probe is due or a probe's `quiet` ends the hold).
    pub fn check_writable(&self, cx: &Context<'_>, quiet: Duration) -> Writable {
        let mut state = self.lock();
        if let Some(closed) = &state.closed {
            let reason = match closed {
                Closed::Eof => "stream closed".to_string(),
                Closed::Error(e) => e.clone(),
            };
            return Writable::Closed(io::Error::new(io::ErrorKind::BrokenPipe, reason));
        }
        let now = Instant::now();
        let Some(hold) = &mut state.hold else {
            return Writable::Yes;
        };
        let until = match hold.stage {
            Stage::Waiting => None,
            Stage::ProbeDue(at) if now >= at => {
                hold.stage = Stage::Probing {
                    allowed: PROBE_BYTES,
                    left: PROBE_BYTES,
                    last: None,
                };
                return Writable::Yes;
            }
            Stage::ProbeDue(at) => Some(at),
            Stage::Probing { left, .. } if left > 0 => return Writable::Yes,
            Stage::Probing { allowed, last, .. } => {
                let quiet_over = last.map_or(now, |at| at + quiet);
                if now < quiet_over {
                    Some(quiet_over)
                } else if allowed * 2 > MAX_BUFFER {
                    state.release();
                    return Writable::Yes;
                } else {
                    hold.stage = Stage::Probing {
                        allowed: allowed * 2,
                        left: allowed * 2,
                        last,
                    };
                    return Writable::Yes;
                }
            }
        };
        state.write_waker = Some(cx.waker().clone());
        Writable::Held { until }
    }

    /// `bytes` of ours were queued: during an answered hold, they are the probe's.
    pub fn sent(&self, bytes: usize) {
        let mut state = self.lock();
        let now = Instant::now();
        let state = &mut *state;
        if let Some(Hold {
            stage: Stage::Probing { left, last, .. },
            ..
        }) = &mut state.hold
        {
            *left = left.saturating_sub(bytes);
            *last = Some(now);
        }
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
            "buffered {} paused_peer {} hold {:?} writer_waiting {}",
            s.buffered,
            s.paused_peer.is_some(),
            s.hold,
            s.write_waker.is_some()
        )
    }
}

impl Drop for StreamShared {
    fn drop(&mut self) {
        let metrics = crate::metrics::metrics();
        metrics.tunnel_streams.dec();
        metrics.tunnel_buffered.sub(self.buffered() as i64);
    }
}
