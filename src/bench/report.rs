//! Latency recording (an HDR histogram, microseconds) and the final report, as text or JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Results of one run.
pub struct Recorder {
    histogram: Histogram<u64>,
    pub ok: u64,
    /// Completed with a certificate for another name (the server refused the name).
    pub fallback: u64,
    pub failures: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            // 1 µs to 60 s at 3 significant digits.
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            ok: 0,
            fallback: 0,
            failures: BTreeMap::new(),
        }
    }
}

#[derive(Serialize)]
pub struct Report {
    pub ok: u64,
    pub fallback: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub seconds: f64,
    pub rate_per_second: f64,
    pub latency_us: Latency,
}

#[derive(Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Recorder {
    pub fn success(&mut self, latency: Duration) {
        self.ok += 1;
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 60_000_000);
        let _ = self.histogram.record(micros);
    }

    pub fn fallback(&mut self) {
        self.fallback += 1;
    }

    pub fn failure(&mut self, kind: &str) {
        *self.failures.entry(kind.to_string()).or_default() += 1;
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    pub fn p99(&self) -> u64 {
        self.histogram.value_at_quantile(0.99)
    }

    pub fn report(&self, elapsed: Duration) -> Report {
        let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
        let q = |quantile| self.histogram.value_at_quantile(quantile);
        Report {
            ok: self.ok,
            fallback: self.fallback,
            failed: self.failed(),
            failures: self.failures.clone(),
            seconds,
            rate_per_second: self.ok as f64 / seconds,
            latency_us: Latency {
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                p999: q(0.999),
                max: self.histogram.max(),
            },
        }
    }
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = format!(
            "ok {}  fallback {}  failed {}  in {:.2} s  ({:.0}/s)\nlatency µs: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
            self.ok,
            self.fallback,
            self.failed,
            self.seconds,
            self.rate_per_second,
            self.latency_us.p50,
            self.latency_us.p90,
            self.latency_us.p99,
            self.latency_us.p999,
            self.latency_us.max
        );
        for (kind, count) in &self.failures {
            out.push_str(&format!("  {count} × {kind}\n"));
        }
        out
    }
}
