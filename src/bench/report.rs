//! What a handshake run records (HDR histograms in microseconds: one for handshakes answered for
//! the name sent, one for fallbacks) and the report: the run's inputs, every completed handshake
//! timed, how the handshakes went (full or resumed, what was negotiated), what a fallback was
//! served, whether an open loop kept its rate, and the server's CPU time when asked. As text or JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Distinct certificates a report describes for fallbacks, at most (a server serves one or two).
const SERVED_INSTEAD_KINDS: usize = 8;

/// Results of one run.
pub struct Recorder {
    ok: Histogram<u64>,
    fallback: Histogram<u64>,
    failures: BTreeMap<String, u64>,
    full: u64,
    resumed: u64,
    /// Few distinct values in a run: a list, searched.
    negotiated: Vec<(Negotiated, u64)>,
    served_instead: BTreeMap<String, u64>,
}

/// What a connection negotiated: version, cipher suite and key-exchange group (none when
/// resumed). Kept as rustls's values and written out only in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    version: Option<rustls::ProtocolVersion>,
    suite: Option<rustls::CipherSuite>,
    group: Option<rustls::NamedGroup>,
}

impl Negotiated {
    pub fn of(connection: &rustls::ClientConnection) -> Self {
        Self {
            version: connection.protocol_version(),
            suite: connection.negotiated_cipher_suite().map(|s| s.suite()),
            group: connection.negotiated_key_exchange_group().map(|g| g.name()),
        }
    }

    /// `TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519`.
    fn text(&self) -> String {
        let version = self.version.map(|v| format!("{v:?}")).unwrap_or_default();
        let suite = self.suite.map(|s| format!("{s:?}")).unwrap_or_default();
        let group = self
            .group
            .map_or_else(|| "(resumed)".into(), |g| format!("{g:?}"));
        format!("{version} {suite} {group}")
    }
}

/// Counts one more `value` in a list of few distinct values.
pub fn tally<T: PartialEq>(counts: &mut Vec<(T, u64)>, value: T) {
    match counts.iter_mut().find(|(seen, _)| *seen == value) {
        Some((_, count)) => *count += 1,
        None => counts.push((value, 1)),
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            ok: histogram(),
            fallback: histogram(),
            failures: BTreeMap::new(),
            full: 0,
            resumed: 0,
            negotiated: Vec::new(),
            served_instead: BTreeMap::new(),
        }
    }
}

/// How one completed handshake went.
pub struct Completed {
    pub latency: Duration,
    pub resumed: bool,
    pub negotiated: Negotiated,
    /// For a fallback, the certificate served instead (subject, SANs, issuer).
    pub served_instead: Option<String>,
}

fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, 60_000_000)
}

impl Recorder {
    pub fn completed(&mut self, handshake: Completed) {
        match &handshake.served_instead {
            None => {
                let _ = self.ok.record(micros(handshake.latency));
            }
            Some(served) => {
                let _ = self.fallback.record(micros(handshake.latency));
                let kinds = self.served_instead.len();
                match self.served_instead.get_mut(served) {
                    Some(count) => *count += 1,
                    None if kinds < SERVED_INSTEAD_KINDS => {
                        self.served_instead.insert(served.clone(), 1);
                    }
                    None => *self.served_instead.entry("others".into()).or_default() += 1,
                }
            }
        }
        match handshake.resumed {
            true => self.resumed += 1,
            false => self.full += 1,
        }
        tally(&mut self.negotiated, handshake.negotiated);
    }

    pub fn failure(&mut self, kind: &str) {
        *self.failures.entry(kind.to_string()).or_default() += 1;
    }

    pub fn p99(&self) -> u64 {
        self.ok.value_at_quantile(0.99)
    }

    pub fn report(&self, elapsed: Duration) -> Report {
        let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
        let (ok, fallback) = (self.ok.len(), self.fallback.len());
        Report {
            inputs: None,
            version: env!("CARGO_PKG_VERSION"),
            ok,
            fallback,
            failed: self.failures.values().sum(),
            failures: self.failures.clone(),
            seconds,
            rate_per_second: ok as f64 / seconds,
            fallback_per_second: fallback as f64 / seconds,
            latency_us: Latency::of(&self.ok),
            fallback_latency_us: Latency::of(&self.fallback),
            full: self.full,
            resumed: self.resumed,
            negotiated: self
                .negotiated
                .iter()
                .map(|(negotiated, count)| (negotiated.text(), *count))
                .collect(),
            signature_schemes: BTreeMap::new(),
            served_instead: self.served_instead.clone(),
            open_loop: None,
            server: None,
        }
    }
}

/// What the run was asked to do, so that a report can be compared with another later.
#[derive(Debug, Clone, Serialize)]
pub struct Inputs {
    pub target: String,
    /// `name:<SNI>`, `unique:<suffix>`, `ip` (no SNI).
    pub sni: String,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub duration_s: Option<f64>,
    pub count: Option<u64>,
    pub warmup_s: f64,
    pub tls: String,
    pub resumption: bool,
    /// `ca:<file>` or `insecure`.
    pub verify: String,
    pub request: Option<String>,
    pub timeout_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub inputs: Option<Inputs>,
    /// corral's version.
    pub version: &'static str,
    /// Handshakes answered with a certificate for the name sent.
    pub ok: u64,
    /// Handshakes completed with a certificate for another name.
    pub fallback: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub seconds: f64,
    pub rate_per_second: f64,
    pub fallback_per_second: f64,
    pub latency_us: Latency,
    pub fallback_latency_us: Latency,
    pub full: u64,
    pub resumed: u64,
    pub negotiated: BTreeMap<String, u64>,
    pub signature_schemes: BTreeMap<String, u64>,
    pub served_instead: BTreeMap<String, u64>,
    pub open_loop: Option<OpenLoop>,
    pub server: Option<ServerCpu>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        let q = |quantile| histogram.value_at_quantile(quantile);
        Self {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: histogram.max(),
        }
    }

    fn text(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

/// Whether an open loop started what it scheduled.
#[derive(Debug, Serialize)]
pub struct OpenLoop {
    pub rate: f64,
    /// Connections due by the end of the run at that rate.
    pub scheduled: u64,
    pub started: u64,
    /// Started at least 99% of what was scheduled.
    pub reached: bool,
}

/// The server's CPU time over the measured run (from `/proc/<pid>/stat`).
#[derive(Debug, Serialize)]
pub struct ServerCpu {
    pub pid: u32,
    pub cpu_seconds: f64,
    /// Per completed handshake, fallbacks included.
    pub cpu_us_per_handshake: f64,
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = format!(
            "ok {}  fallback {}  failed {}  in {:.2} s  ({:.0}/s)\n",
            self.ok, self.fallback, self.failed, self.seconds, self.rate_per_second
        );
        if self.ok > 0 {
            out.push_str(&format!("latency µs: {}\n", self.latency_us.text()));
        }
        if self.fallback > 0 {
            out.push_str(&format!(
                "fallback: {:.0}/s  latency µs: {}\n",
                self.fallback_per_second,
                self.fallback_latency_us.text()
            ));
        }
        if self.full + self.resumed > 0 {
            let negotiated: Vec<String> = self
                .negotiated
                .iter()
                .map(|(what, n)| format!("{what} ×{n}"))
                .collect();
            let schemes: Vec<String> = self
                .signature_schemes
                .iter()
                .map(|(what, n)| format!("{what} ×{n}"))
                .collect();
            out.push_str(&format!(
                "full {}  resumed {}  {}{}{}\n",
                self.full,
                self.resumed,
                negotiated.join(", "),
                if schemes.is_empty() { "" } else { "  signed " },
                schemes.join(", ")
            ));
        }
        if let Some(open) = &self.open_loop {
            out.push_str(&format!(
                "rate {:.0}/s: scheduled {}, started {}{}\n",
                open.rate,
                open.scheduled,
                open.started,
                if open.reached {
                    ""
                } else {
                    "  — NOT REACHED: raise --concurrency (connections in flight), or the server or \
                     this client is saturated"
                }
            ));
        }
        if let Some(server) = &self.server {
            out.push_str(&format!(
                "server (pid {}): {:.0} µs CPU per handshake ({:.2} s)\n",
                server.pid, server.cpu_us_per_handshake, server.cpu_seconds
            ));
        }
        for (kind, count) in &self.failures {
            out.push_str(&format!("  {count} × {kind}\n"));
        }
        out
    }
}
