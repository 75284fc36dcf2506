//! Prometheus metrics, served at `/metrics`: handshakes, minting, names refused, the certificate
//! cache, tunnels, and the process itself. One process-wide registry, so every layer can count
//! without threading a handle through.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// TLS handshakes by result: `ok`, `timeout`, `error` (children resolved once, for the hot path).
    pub handshakes_ok: IntCounter,
    pub handshakes_timeout: IntCounter,
    pub handshakes_error: IntCounter,
    /// Certificates signed (new names, renewals, shared-mode re-signs, pins).
    pub minted: IntCounter,
    pub mint_seconds: Histogram,
    /// Certificates held by the per-host cache, or names in the shared certificate.
    pub cache_entries: IntGauge,
    /// Names that got the default certificate, by reason.
    pub names_refused: IntCounterVec,
    pub tunnel_sessions: IntGauge,
    pub tunnel_streams: IntGauge,
    /// Bytes received through tunnels that their streams' readers have not taken yet.
    pub tunnel_buffered: IntGauge,
    /// Payload bytes relayed through tunnels: `in` (received), `out` (sent).
    pub tunnel_bytes_in: IntCounter,
    pub tunnel_bytes_out: IntCounter,
    /// Password hashes checked (argon2 runs for logins and password changes, unknown users' dummy
    /// checks included): what login backoff bounds.
    pub password_checks: IntCounter,
    /// When the CA that signs corral's certificates expires (unix seconds); alert on it nearing
    /// `time()`, as on cert-manager's `certmanager_certificate_expiration_timestamp_seconds`.
    pub ca_expiry: IntGauge,
    /// Lab faults active now, by kind (`certificate`).
    pub lab_faults_active: IntGaugeVec,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let handshakes = IntCounterVec::new(
        Opts::new("corral_tls_handshakes_total", "TLS handshakes by result"),
        &["result"],
    )?;
    let tunnel_bytes = IntCounterVec::new(
        Opts::new(
            "corral_tunnel_bytes_total",
            "Payload bytes relayed through tunnels",
        ),
        &["direction"],
    )?;
    registry.register(Box::new(handshakes.clone()))?;
    registry.register(Box::new(tunnel_bytes.clone()))?;
    let metrics = Metrics {
        handshakes_ok: handshakes.with_label_values(&["ok"]),
        handshakes_timeout: handshakes.with_label_values(&["timeout"]),
        handshakes_error: handshakes.with_label_values(&["error"]),
        minted: IntCounter::new("corral_certificates_minted_total", "Certificates signed")?,
        mint_seconds: Histogram::with_opts(
            HistogramOpts::new(
                "corral_mint_duration_seconds",
                "Time to sign a certificate and prepare it for serving",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
            ]),
        )?,
        cache_entries: IntGauge::new(
            "corral_certificate_cache_entries",
            "Names with a certificate of their own",
        )?,
        names_refused: IntCounterVec::new(
            Opts::new(
                "corral_names_refused_total",
                "Names served the default certificate, by reason",
            ),
            &["reason"],
        )?,
        tunnel_sessions: IntGauge::new("corral_tunnel_sessions", "Open agent tunnel sessions")?,
        tunnel_streams: IntGauge::new("corral_tunnel_streams", "Open streams inside tunnels")?,
        tunnel_buffered: IntGauge::new(
            "corral_tunnel_buffered_bytes",
            "Bytes received through tunnels and not read yet",
        )?,
        tunnel_bytes_in: tunnel_bytes.with_label_values(&["in"]),
        tunnel_bytes_out: tunnel_bytes.with_label_values(&["out"]),
        password_checks: IntCounter::new(
            "corral_password_checks_total",
            "Password hashes checked (logins, password changes)",
        )?,
        ca_expiry: IntGauge::new(
            "corral_ca_expiry_timestamp_seconds",
            "When the CA that signs corral's certificates expires (unix seconds)",
        )?,
        lab_faults_active: IntGaugeVec::new(
            Opts::new("corral_lab_faults_active", "Lab faults active now, by kind"),
            &["kind"],
        )?,
        registry,
    };
    let r = &metrics.registry;
    r.register(Box::new(metrics.minted.clone()))?;
    r.register(Box::new(metrics.mint_seconds.clone()))?;
    r.register(Box::new(metrics.cache_entries.clone()))?;
    r.register(Box::new(metrics.names_refused.clone()))?;
    r.register(Box::new(metrics.tunnel_sessions.clone()))?;
    r.register(Box::new(metrics.tunnel_streams.clone()))?;
    r.register(Box::new(metrics.tunnel_buffered.clone()))?;
    r.register(Box::new(metrics.password_checks.clone()))?;
    r.register(Box::new(metrics.ca_expiry.clone()))?;
    r.register(Box::new(metrics.lab_faults_active.clone()))?;
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(metrics)
}

static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| build().expect("metric definitions are valid"));

pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The text exposition of every metric.
pub fn render() -> String {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
