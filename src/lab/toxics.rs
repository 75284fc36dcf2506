//! toxiproxy's toxics on an agent's tunnel: [`ToxicIo`] wraps the tunnel's byte stream (the
//! WebSocket under the remotedialer session) and applies, on every read and write, the tunnel
//! faults active for its cluster at that moment — so faults added or removed at runtime act on
//! tunnels already open. Writes are `downstream` (toward the cluster), reads `upstream`. With no
//! fault active it costs one atomic load per read or write.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::fault::{Direction, Toxic, What};
use super::registry::Faults;
use crate::support::unix_now_ms;

/// How often held data looks again whether its toxic is gone (timeout, which has no end of its own).
const RECHECK: Duration = Duration::from_millis(100);

/// The most a read takes from the tunnel at once while a toxic holds data.
const HOLD_CHUNK: usize = 16 * 1024;

/// Whether a read error only says the peer is gone.
fn is_an_end(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Waits in `slot`'s timer (reset to `at` if it was set for another time) until `at`; `Ready`,
/// and the slot empty, once it has passed.
fn wait_until(slot: &mut Option<Pin<Box<Sleep>>>, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
    let sleep = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
    if sleep.deadline() != at {
        sleep.as_mut().reset(at);
    }
    ready!(sleep.as_mut().poll(cx));
    *slot = None;
    Poll::Ready(())
}

/// The most data latency holds on its way out (a socket buffer's worth).
const MAX_DELAYED: usize = 1 << 20;

/// What the caller does to make the connection's close a TCP reset (SO_LINGER 0).
pub type ResetOnClose = Box<dyn Fn() + Send + Sync>;

pub struct ToxicIo<T> {
    inner: T,
    faults: Arc<Faults>,
    /// The tunnel's client key: `<cluster>` or `<cluster>:<node>`.
    key: String,
    reset_on_close: Option<ResetOnClose>,
    /// Woken at every change of the faults: a reader waiting for data wakes to apply a new
    /// toxic (a reset, a hold) at once.
    change: Arc<futures_util::task::AtomicWaker>,
    /// What faults did to this tunnel; none until faults exist (every tunnel has a `ToxicIo`, and
    /// most never see a fault: this keeps an idle tunnel's a few words).
    toxicity: Option<Box<Toxicity>>,
}

#[derive(Default)]
struct Toxicity {
    /// Per fault: whether this tunnel got it (toxicity, decided once) and when it first saw it.
    seen: HashMap<String, (bool, Instant)>,
    down: Flow,
    up: Flow,
    up_held: Vec<u8>,
    up_held_at: usize,
    /// A timer that wakes the reader for a deadline (reset-peer, timeout) without data.
    deadline: Option<Pin<Box<Sleep>>>,
    closing: Option<Pin<Box<Sleep>>>,
    /// When a slow-closed end of stream may be told, and how it ended (`None`: cleanly).
    eof_at: Option<Instant>,
    end: Option<io::ErrorKind>,
    reset: bool,
    /// Data written under latency, with when it may leave.
    delayed: std::collections::VecDeque<(Instant, Vec<u8>)>,
    delayed_bytes: usize,
    delay_timer: Option<Pin<Box<Sleep>>>,
}

/// One direction's state.
#[derive(Default)]
struct Flow {
    /// What this direction waits for before it goes on (latency, pacing, a re-check).
    wait: Option<Pin<Box<Sleep>>>,
    /// When the data in hand has served its latency.
    latency_until: Option<Instant>,
    /// When the next bytes may pass (bandwidth, slicer).
    next_at: Option<Instant>,
    /// Bytes passed, for limit-data.
    passed: u64,
}

/// The toxics of one direction, folded together.
#[derive(Default)]
struct Plan {
    latency: Option<Duration>,
    rate_kbps: Option<u64>,
    slice: Option<(usize, Duration)>,
    limit: Option<u64>,
    /// Data held; the tunnel closed when the instant is given and passed.
    hold: Option<Option<Instant>>,
    reset_at: Option<Instant>,
    down: bool,
    slow_close: Option<Duration>,
}

impl<T> ToxicIo<T> {
    pub fn new(
        inner: T,
        faults: Arc<Faults>,
        key: String,
        reset_on_close: Option<ResetOnClose>,
    ) -> Self {
        let change = faults.watch();
        Self {
            change,
            inner,
            faults,
            key,
            reset_on_close,
            toxicity: None,
        }
    }

    fn toxicity(&mut self) -> &mut Toxicity {
        self.toxicity.get_or_insert_default()
    }

    /// The toxics active now for this tunnel in `direction`; `None` when there are none at all.
    fn plan(&mut self, direction: Direction) -> Option<Plan> {
        let faults = self.faults.snapshot();
        if faults.is_empty() && self.toxicity.as_ref().is_none_or(|t| t.seen.is_empty()) {
            return None;
        }
        let key = &self.key;
        let toxicity = self.toxicity.get_or_insert_default();
        let now_ms = unix_now_ms();
        let now = Instant::now();
        toxicity
            .seen
            .retain(|id, _| faults.iter().any(|f| f.id == *id && !f.expired(now_ms)));
        let mut plan = Plan::default();
        let mut any = false;
        for fault in faults.iter() {
            let What::Tunnel(tunnel) = &fault.what else {
                continue;
            };
            if fault.expired(now_ms) || !tunnel.applies_to(key, direction) {
                continue;
            }
            let (applies, since) = *toxicity.seen.entry(fault.id.clone()).or_insert_with(|| {
                let applies = rand::rng().random_bool(tunnel.toxicity.clamp(0.0, 1.0));
                (applies, now)
            });
            if !applies {
                continue;
            }
            any = true;
            let ms = |ms: u64| Duration::from_millis(ms);
            match &tunnel.toxic {
                Toxic::Latency {
                    latency_ms,
                    jitter_ms,
                } => {
                    let jitter = *jitter_ms as i64;
                    let spread = match jitter {
                        0 => 0,
                        j => rand::rng().random_range(-j..=j),
                    };
                    let delay = (*latency_ms as i64 + spread).max(0) as u64;
                    plan.latency = Some(plan.latency.unwrap_or_default() + ms(delay));
                }
                Toxic::Bandwidth { rate_kbps } => {
                    plan.rate_kbps = Some(plan.rate_kbps.map_or(*rate_kbps, |r| r.min(*rate_kbps)))
                }
                Toxic::SlowClose { delay_ms } => plan.slow_close = Some(ms(*delay_ms)),
                Toxic::Timeout { timeout_ms } => {
                    plan.hold = Some((*timeout_ms > 0).then(|| since + ms(*timeout_ms)))
                }
                Toxic::ResetPeer { timeout_ms } => plan.reset_at = Some(since + ms(*timeout_ms)),
                Toxic::Slicer {
                    average_size,
                    size_variation,
                    delay_us,
                } => {
                    let variation = (*size_variation).min(average_size.saturating_sub(1));
                    let size = rand::rng()
                        .random_range(average_size - variation..=average_size + variation);
                    let delay = Duration::from_micros(*delay_us);
                    plan.slice = Some((size.max(1) as usize, delay));
                }
                Toxic::LimitData { bytes } => {
                    plan.limit = Some(plan.limit.map_or(*bytes, |b| b.min(*bytes)))
                }
                Toxic::Down => plan.down = true,
            }
        }
        any.then_some(plan)
    }

    /// Ends the tunnel with a TCP reset: the socket closes with SO_LINGER 0 once the session lets go.
    fn reset(&mut self) -> io::Error {
        if !self.toxicity().reset {
            self.toxicity().reset = true;
            if let Some(reset) = &self.reset_on_close {
                reset();
            }
        }
        io::Error::new(io::ErrorKind::ConnectionReset, "reset by a lab toxic")
    }

    /// Whether data may move at all: an error that ends the tunnel, a hold, or go.
    fn open(
        &mut self,
        plan: &Plan,
        cx: &mut Context<'_>,
        direction: Direction,
    ) -> Poll<io::Result<()>> {
        let now = Instant::now();
        if self.toxicity().reset || plan.down || plan.reset_at.is_some_and(|at| at <= now) {
            return Poll::Ready(Err(self.reset()));
        }
        // A deadline to come wakes this direction even if no data does.
        let deadline = [plan.reset_at, plan.hold.flatten()]
            .into_iter()
            .flatten()
            .min();
        if let Some(at) = deadline {
            let _ = wait_until(&mut self.toxicity().deadline, at, cx);
        }
        let toxicity = self.toxicity();
        let flow = match direction {
            Direction::Upstream => &mut toxicity.up,
            _ => &mut toxicity.down,
        };
        if let Some(limit) = plan.limit
            && flow.passed >= limit
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by a lab toxic (limit-data)",
            )));
        }
        if let Some(close_at) = plan.hold {
            if close_at.is_some_and(|at| at <= now) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "closed by a lab toxic (timeout)",
                )));
            }
            // No data passes; look again soon (the toxic may be removed).
            let sleep = flow
                .wait
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(RECHECK)));
            if sleep.as_mut().poll(cx).is_ready() {
                flow.wait = None;
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    /// Waits out what delays the data in hand: pacing, then latency.
    fn pace(&mut self, plan: &Plan, cx: &mut Context<'_>, direction: Direction) -> Poll<()> {
        let toxicity = self.toxicity();
        let flow = match direction {
            Direction::Upstream => &mut toxicity.up,
            _ => &mut toxicity.down,
        };
        if let Some(latency) = plan.latency.filter(|l| !l.is_zero())
            && flow.latency_until.is_none()
        {
            flow.latency_until = Some(Instant::now() + latency);
        }
        let until = [flow.next_at, flow.latency_until]
            .into_iter()
            .flatten()
            .max();
        match until.filter(|at| *at > Instant::now()) {
            Some(at) => wait_until(&mut flow.wait, at, cx),
            None => {
                flow.wait = None;
                Poll::Ready(())
            }
        }
    }
}

impl Plan {
    /// The most that may pass in one go.
    fn chunk(&self, flow: &Flow, wanted: usize) -> usize {
        let mut chunk = wanted;
        if let Some((size, _)) = self.slice {
            chunk = chunk.min(size);
        }
        if let Some(rate) = self.rate_kbps {
            // A tenth of a second's worth at a time keeps the rate smooth.
            chunk = chunk.min((rate as usize * 100).max(1));
        }
        if let Some(limit) = self.limit {
            chunk = chunk.min(limit.saturating_sub(flow.passed).max(1) as usize);
        }
        chunk.max(1)
    }

    /// Records `n` bytes passed: when the next may.
    fn passed(&self, flow: &mut Flow, n: usize) {
        flow.passed += n as u64;
        flow.latency_until = None;
        let now = Instant::now();
        let mut next = now;
        if let Some(rate) = self.rate_kbps {
            next += Duration::from_secs_f64(n as f64 / (rate as f64 * 1000.0));
        }
        if let Some((_, delay)) = self.slice {
            next += delay;
        }
        flow.next_at = (next > now).then_some(next);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ToxicIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // A change of faults wakes the reader (which otherwise waits for data) to look again.
        this.change.register(cx.waker());
        let Some(plan) = this.plan(Direction::Upstream) else {
            if let Some(toxicity) = this.toxicity.as_deref_mut()
                && toxicity.up_held_at < toxicity.up_held.len()
            {
                toxicity.deliver(buf, usize::MAX);
                return Poll::Ready(Ok(()));
            }
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        ready!(this.open(&plan, cx, Direction::Upstream))?;
        let inner = &mut this.inner;
        let toxicity = this.toxicity.get_or_insert_default();
        // Data is taken from the tunnel, then waits out its toxics before it is handed on.
        if toxicity.up_held_at >= toxicity.up_held.len() {
            // An end already seen is not read again while slow-close delays it.
            let filled = match toxicity.eof_at {
                Some(_) => Ok(()),
                None => ready!(toxicity.fill(inner, cx)),
            };
            let ended = match &filled {
                Ok(()) => toxicity.up_held.is_empty(),
                Err(e) => is_an_end(e),
            };
            if ended {
                // The end of the stream (a peer gone without TLS's goodbye is one too);
                // slow-close makes it take that long to be noticed.
                if let Some(delay) = plan.slow_close {
                    if toxicity.eof_at.is_none() {
                        toxicity.end = filled.as_ref().err().map(io::Error::kind);
                        toxicity.eof_at = Some(Instant::now() + delay);
                    }
                    let at = toxicity.eof_at.unwrap_or_else(Instant::now);
                    ready!(wait_until(&mut toxicity.up.wait, at, cx));
                    return Poll::Ready(toxicity.end.map_or(Ok(()), |kind| Err(kind.into())));
                }
            }
            filled?;
            if toxicity.up_held.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
        ready!(this.pace(&plan, cx, Direction::Upstream));
        let toxicity = this.toxicity();
        let chunk = plan.chunk(&toxicity.up, buf.remaining());
        let n = toxicity.deliver(buf, chunk);
        plan.passed(&mut toxicity.up, n);
        Poll::Ready(Ok(()))
    }
}

impl Toxicity {
    /// Reads what the tunnel has into the held buffer (empty at the end of the stream).
    fn fill<T: AsyncRead + Unpin>(
        &mut self,
        inner: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.up_held.resize(HOLD_CHUNK, 0);
        self.up_held_at = 0;
        let mut read = ReadBuf::new(&mut self.up_held);
        let polled = Pin::new(inner).poll_read(cx, &mut read);
        let n = read.filled().len();
        self.up_held.truncate(n);
        if polled.is_pending() {
            self.up_held.clear();
        }
        polled
    }

    /// Hands on at most `chunk` held bytes; how many it did.
    fn deliver(&mut self, buf: &mut ReadBuf<'_>, chunk: usize) -> usize {
        let held = &self.up_held[self.up_held_at..];
        let n = held.len().min(buf.remaining()).min(chunk);
        buf.put_slice(&held[..n]);
        self.up_held_at += n;
        if self.up_held_at >= self.up_held.len() {
            self.up_held.clear();
            self.up_held_at = 0;
        }
        n
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ToxicIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let plan = this.plan(Direction::Downstream);
        let Some(plan) = plan else {
            // What latency delayed goes first.
            ready!(this.drain(cx))?;
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        ready!(this.open(&plan, cx, Direction::Downstream))?;
        let latency = plan.latency.unwrap_or_default();
        if !latency.is_zero() || !this.toxicity().delayed.is_empty() {
            // Latency delays the data, not the writer: it is queued with the time it may leave,
            // as a link's propagation delay does (the queue bounded, as a socket buffer is).
            if this.toxicity().delayed_bytes >= MAX_DELAYED {
                ready!(this.drain(cx))?;
            }
            let toxicity = this.toxicity();
            let chunk = plan.chunk(&toxicity.down, buf.len());
            let leaves = Instant::now() + latency;
            toxicity.delayed.push_back((leaves, buf[..chunk].to_vec()));
            toxicity.delayed_bytes += chunk;
            plan.passed(&mut toxicity.down, chunk);
            let _ = this.drain(cx)?;
            return Poll::Ready(Ok(chunk));
        }
        ready!(this.pace(&plan, cx, Direction::Downstream));
        let chunk = plan.chunk(&this.toxicity().down, buf.len());
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..chunk]))?;
        plan.passed(&mut this.toxicity().down, n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.was_reset() {
            return Poll::Ready(Err(self.reset()));
        }
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // A reset connection says goodbye by RST alone: no TLS close_notify, no FIN before it.
        if this.was_reset() {
            return Poll::Ready(Err(this.reset()));
        }
        let slow = [Direction::Downstream, Direction::Upstream]
            .into_iter()
            .filter_map(|d| this.plan(d).and_then(|p| p.slow_close))
            .max();
        if let Some(delay) = slow {
            let sleep = this
                .toxicity()
                .closing
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
        }
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T> ToxicIo<T> {
    fn was_reset(&self) -> bool {
        self.toxicity.as_ref().is_some_and(|t| t.reset)
    }
}

impl<T: AsyncWrite + Unpin> ToxicIo<T> {
    /// Writes out the delayed data whose time has come; `Pending` until all of it has left.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(toxicity) = self.toxicity.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        while let Some((leaves, data)) = toxicity.delayed.front_mut() {
            let leaves = *leaves;
            if leaves > Instant::now() {
                ready!(wait_until(&mut toxicity.delay_timer, leaves, cx));
                continue;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, data))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            toxicity.delayed_bytes -= n;
            if n == data.len() {
                toxicity.delayed.pop_front();
            } else {
                data.drain(..n);
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::FaultSpec;
    use crate::store::{DataDir, FileBackend};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn faults() -> (tempfile::TempDir, Arc<Faults>) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(FileBackend::new(DataDir::open(tmp.path()).unwrap()));
        (tmp, Arc::new(Faults::new(store)))
    }

    fn add(faults: &Faults, body: serde_json::Value) -> String {
        let spec = FaultSpec::parse(body.as_object().unwrap()).unwrap();
        faults.add(spec).unwrap().id.clone()
    }

    /// corral's end wrapped, the agent's end plain.
    fn tunnel(
        faults: &Arc<Faults>,
        key: &str,
    ) -> (ToxicIo<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (ours, theirs) = duplex(1 << 20);
        (ToxicIo::new(ours, faults.clone(), key.into(), None), theirs)
    }

    /// Every agent's tunnel has a `ToxicIo`: without faults it moves data and keeps no state of
    /// the toxics (their buffers and timers are hundreds of bytes per idle tunnel).
    #[tokio::test]
    async fn a_tunnel_without_faults_keeps_no_toxic_state() {
        let (_tmp, faults) = faults();
        let (mut ours, mut theirs) = tunnel(&faults, "c-1");
        ours.write_all(b"down").await.unwrap();
        ours.flush().await.unwrap();
        theirs.write_all(b"up").await.unwrap();
        let mut buf = [0u8; 4];
        theirs.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"down");
        ours.read_exact(&mut buf[..2]).await.unwrap();
        assert_eq!(&buf[..2], b"up");
        assert!(ours.toxicity.is_none());
        // A fault for another cluster: looked at, and this tunnel's data still passes.
        add(
            &faults,
            json!({"kind": "tunnel", "cluster": "c-2", "toxic": "down"}),
        );
        ours.write_all(b"more").await.unwrap();
        theirs.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"more");
    }

    #[tokio::test]
    async fn latency_delays_each_direction_it_is_set_for() {
        let (_tmp, faults) = faults();
        add(
            &faults,
            json!({"kind": "tunnel", "toxic": "latency", "cluster": "c-1",
            "direction": "downstream", "latency": "200ms"}),
        );
        let (mut ours, mut theirs) = tunnel(&faults, "c-1");
        let started = Instant::now();
        // Writes are not held up (the data is): a second write follows at once.
        ours.write_all(b"pi").await.unwrap();
        ours.write_all(b"ng").await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(100));
        ours.flush().await.unwrap();
        let mut got = [0; 4];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        // Upstream is untouched.
        let started = Instant::now();
        theirs.write_all(b"pong").await.unwrap();
        ours.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        assert!(started.elapsed() < Duration::from_millis(150));
        // Another cluster's tunnel is untouched.
        let (mut other, mut agent) = tunnel(&faults, "c-2:node-1");
        let started = Instant::now();
        other.write_all(b"ping").await.unwrap();
        agent.read_exact(&mut got).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(150));
    }

    #[tokio::test]
    async fn bandwidth_paces_and_slicer_cuts() {
        let (_tmp, faults) = faults();
        let rate = add(
            &faults,
            json!({"kind": "tunnel", "toxic": "bandwidth", "rate": 20,
            "direction": "upstream"}),
        );
        let (mut ours, mut theirs) = tunnel(&faults, "c-1");
        let data = vec![7u8; 8000];
        theirs.write_all(&data).await.unwrap();
        let started = Instant::now();
        let mut got = vec![0; 8000];
        ours.read_exact(&mut got).await.unwrap();
        // 8 KB at 20 KB/s: about 0.4 s (the first chunk passes at once).
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(got, data);
        faults.remove(&rate).unwrap();
        add(
            &faults,
            json!({"kind": "tunnel", "toxic": "slicer", "average_size": 10,
            "direction": "downstream"}),
        );
        let n = ours.write(&[1u8; 100]).await.unwrap();
        assert_eq!(n, 10, "one slice per write");
    }

    #[tokio::test]
    async fn timeout_holds_data_until_removed_or_closes() {
        let (_tmp, faults) = faults();
        let hold = add(
            &faults,
            json!({"kind": "tunnel", "toxic": "timeout", "timeout": "0s"}),
        );
        let (mut ours, mut theirs) = tunnel(&faults, "c-1");
        theirs.write_all(b"held").await.unwrap();
        let mut got = [0; 4];
        let early =
            tokio::time::timeout(Duration::from_millis(300), ours.read_exact(&mut got)).await;
        assert!(early.is_err(), "nothing passes while the toxic holds");
        faults.remove(&hold).unwrap();
        tokio::time::timeout(Duration::from_secs(2), ours.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"held", "and nothing was lost");
        add(
            &faults,
            json!({"kind": "tunnel", "toxic": "timeout", "timeout": "200ms"}),
        );
        let closed = tokio::time::timeout(Duration::from_secs(2), ours.read(&mut got))
            .await
            .unwrap();
        assert_eq!(closed.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn reset_limit_and_down_end_the_tunnel() {
        let (_tmp, faults) = faults();
        let reset = add(
            &faults,
            json!({"kind": "tunnel", "toxic": "reset-peer", "timeout": "100ms"}),
        );
        let (ours, _theirs) = duplex(1 << 16);
        let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = asked.clone();
        let mut ours = ToxicIo::new(
            ours,
            faults.clone(),
            "c-1".into(),
            Some(Box::new(move || {
                flag.store(true, std::sync::atomic::Ordering::SeqCst)
            })),
        );
        let mut got = [0; 4];
        let ended = tokio::time::timeout(Duration::from_secs(2), ours.read(&mut got))
            .await
            .unwrap();
        assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        assert!(
            asked.load(std::sync::atomic::Ordering::SeqCst),
            "the socket resets on close"
        );
        faults.remove(&reset).unwrap();

        add(
            &faults,
            json!({"kind": "tunnel", "toxic": "limit-data", "bytes": 6,
            "direction": "downstream"}),
        );
        let (mut ours, mut theirs) = tunnel(&faults, "c-1");
        ours.write_all(b"123456").await.unwrap();
        let refused = ours.write_all(b"7").await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionAborted);
        let mut six = [0; 6];
        theirs.read_exact(&mut six).await.unwrap();

        add(
            &faults,
            json!({"kind": "tunnel", "toxic": "down", "cluster": "c-9"}),
        );
        let (mut down, _agent) = tunnel(&faults, "c-9");
        assert_eq!(
            down.write(b"x").await.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
    }

    #[tokio::test]
    async fn toxicity_zero_never_applies_and_slow_close_waits() {
        let (_tmp, faults) = faults();
        add(
            &faults,
            json!({"kind": "tunnel", "toxic": "down", "toxicity": 0.0}),
        );
        let (mut ours, mut theirs) = tunnel(&faults, "c-1");
        ours.write_all(b"fine").await.unwrap();
        let mut got = [0; 4];
        theirs.read_exact(&mut got).await.unwrap();
        add(
            &faults,
            json!({"kind": "tunnel", "toxic": "slow-close", "delay": "200ms"}),
        );
        let started = Instant::now();
        ours.shutdown().await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
