//! `corral bench handshake`: TLS handshakes against a server, closed-loop (`--concurrency` workers
//! back to back) or open-loop (`--rate`, latency measured from each connection's scheduled start so
//! a slow server cannot hide queueing: no coordinated omission; a rate the run could not keep is
//! reported and fails it). `--unique-sni` sends a new name per connection, which no common load
//! generator does.
//!
//! Every handshake is checked to have been answered with a certificate for the name it sent (also
//! with `--insecure`): a server that refuses names (a mint rate, an allow-list) or holds one
//! certificate (pinned) serves another instead, and a run that counted those as successes would
//! measure the wrong thing. They are counted, timed and described as `fallback`, apart from
//! failures; either makes the exit status non-zero unless `--allow-fallback` (fallbacks only).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use x509_parser::certificate::X509Certificate;

use super::report::{Completed, Inputs, Negotiated, OpenLoop, Recorder, ServerCpu};
use super::verify::{BenchVerifier, certificate_error_in_words};
use super::{BenchError, parse_duration};
use crate::client::classic_provider;
use crate::config::Toggle;
use crate::support::lock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsVersion {
    #[value(name = "1.2")]
    V12,
    #[value(name = "1.3")]
    V13,
    Any,
}

#[derive(Debug, clap::Args)]
pub struct HandshakeArgs {
    /// Server to connect to; the port is 8443 when omitted.
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "HOST[:PORT]")]
    pub target: String,
    /// SNI to send on every connection [default: the target host when it is a name].
    #[arg(long, conflicts_with_all = ["unique_sni", "no_sni"], value_name = "NAME")]
    pub sni: Option<String>,
    /// A new SNI per connection: `<run>-<n>.<SUFFIX>`.
    #[arg(long, conflicts_with = "no_sni", value_name = "SUFFIX")]
    pub unique_sni: Option<String>,
    /// Send no SNI (the server answers for the IP connected to).
    #[arg(long)]
    pub no_sni: bool,
    /// Connections in flight at most.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// How long to run [default: 10s unless --count is given].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How many connections to make.
    #[arg(long)]
    pub count: Option<u64>,
    /// Open loop: start this many connections per second, whatever the server does.
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
    /// Run this long first, the same way, and count none of it.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Verify the server against the certificates in this file: CAs, or the server's own
    /// certificate (trusted directly, as curl --cacert does).
    #[arg(long, conflicts_with = "insecure", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Do not verify the server's certificate (signatures are still checked).
    #[arg(long)]
    pub insecure: bool,
    /// Resume sessions (tickets or session ids) across connections.
    #[arg(long, value_enum, default_value = "off")]
    pub resumption: Toggle,
    /// After the handshake, GET this path and expect 200.
    #[arg(long, value_name = "PATH")]
    pub request: Option<String>,
    /// TLS version to offer.
    #[arg(long, value_enum, default_value = "any")]
    pub tls: TlsVersion,
    /// Per-connection time limit.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Report the server's CPU time per handshake (Linux, read from /proc/PID/stat).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 even when some handshakes got a certificate for another name (a pinned server, a
    /// server over its mint rate); failures still make the exit status 1.
    #[arg(long)]
    pub allow_fallback: bool,
    /// Exit 0 even when an open loop started fewer connections than --rate scheduled.
    #[arg(long)]
    pub allow_below_rate: bool,
}

/// Port 8443 when the target names none.
const DEFAULT_PORT: u16 = 8443;

/// An open loop that starts fewer than this share of what it scheduled did not keep its rate.
const RATE_KEPT: f64 = 0.99;

/// What the workers of one phase (warm-up or measured) share.
struct Plan {
    addr: SocketAddr,
    connector: TlsConnector,
    names: NameSource,
    request: Option<String>,
    host_header: String,
    timeout: Duration,
    /// With `--resumption on`: read what the server sends after the handshake (its tickets).
    read_tickets: bool,
    deadline: Option<Instant>,
    count: Option<u64>,
    /// Connection numbers claimed (one more than were started, at the end).
    claimed: AtomicU64,
    /// Connections started.
    started: AtomicU64,
    recorder: Mutex<Recorder>,
    ok: AtomicU64,
    fallback: AtomicU64,
    failed: AtomicU64,
}

/// How one connection went.
enum Outcome {
    /// Completed: a fallback when `served_instead` is set.
    Completed {
        resumed: bool,
        negotiated: Negotiated,
        served_instead: Option<String>,
    },
    /// Failed; the kind, without names, so that failures group.
    Failed(String),
}

/// A finished run: the report, and whether it counts as a success for the exit status.
pub struct Finished {
    pub text: String,
    pub success: bool,
}

#[derive(Clone)]
enum NameSource {
    Fixed(ServerName<'static>),
    Unique { run: String, suffix: String },
}

impl NameSource {
    fn name(&self, n: u64) -> ServerName<'static> {
        match self {
            NameSource::Fixed(name) => name.clone(),
            NameSource::Unique { run, suffix } => {
                // The suffix was checked at start, and the prefix is letters, digits and `-`.
                ServerName::try_from(format!("{run}-{n}.{suffix}"))
                    .unwrap_or_else(|_| ServerName::try_from("invalid.test").unwrap())
            }
        }
    }

    /// The same source for another phase: new unique names, the same fixed one.
    fn another_run(&self) -> Self {
        match self {
            NameSource::Fixed(name) => NameSource::Fixed(name.clone()),
            NameSource::Unique { suffix, .. } => NameSource::Unique {
                run: crate::secrets::random_suffix(),
                suffix: suffix.clone(),
            },
        }
    }
}

pub async fn run(args: HandshakeArgs) -> Result<Finished, BenchError> {
    if args.count == Some(0) {
        return Err(BenchError::Zero("--count"));
    }
    if args.duration == Some(Duration::ZERO) {
        return Err(BenchError::Zero("--duration"));
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(BenchError::Zero("--rate"));
    }
    let target = with_port(&args.target);
    let addr = target
        .to_socket_addrs()
        .map_err(|source| BenchError::Resolve {
            target: target.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| BenchError::NoAddress(target.clone()))?;
    let host = crate::support::authority_host(&target).unwrap_or(&target);
    let (names, sni) = match (&args.sni, &args.unique_sni) {
        (Some(sni), _) => (NameSource::Fixed(server_name(sni)?), format!("name:{sni}")),
        (None, Some(suffix)) => {
            server_name(&format!("x-0.{suffix}")).map_err(|e| BenchError::UniqueSni {
                suffix: suffix.clone(),
                source: Box::new(e),
            })?;
            let names = NameSource::Unique {
                run: crate::secrets::random_suffix(),
                suffix: suffix.clone(),
            };
            (names, format!("unique:{suffix}"))
        }
        (None, None) if args.no_sni || host.parse::<std::net::IpAddr>().is_ok() => (
            NameSource::Fixed(ServerName::IpAddress(addr.ip().into())),
            "ip".to_string(),
        ),
        (None, None) => (
            NameSource::Fixed(server_name(host)?),
            format!("name:{host}"),
        ),
    };
    let (config, verifier) = client_config(&args)?;
    let connector = TlsConnector::from(config);
    let phase = |names: NameSource, duration: Option<Duration>, count: Option<u64>| {
        Arc::new(Plan {
            addr,
            connector: connector.clone(),
            names,
            host_header: target.clone(),
            request: args.request.clone(),
            timeout: args.timeout,
            read_tickets: args.resumption == Toggle::On,
            deadline: match (duration, count) {
                (Some(d), _) => Some(Instant::now() + d),
                (None, Some(_)) => None,
                (None, None) => Some(Instant::now() + Duration::from_secs(10)),
            },
            count,
            claimed: AtomicU64::new(0),
            started: AtomicU64::new(0),
            recorder: Mutex::new(Recorder::default()),
            ok: AtomicU64::new(0),
            fallback: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    };
    let concurrency = args.concurrency.max(1);
    if !args.warmup.is_zero() {
        let warmup = phase(names.another_run(), Some(args.warmup), None);
        drive(warmup, args.rate, concurrency).await;
    }
    let schemes_before = verifier.schemes();
    let cpu_before = args.server_pid.map(cpu_seconds).transpose()?;
    let plan = phase(names, args.duration, args.count);
    let began = Instant::now();
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(progress(plan.clone(), began)));
    let launched = drive(plan.clone(), args.rate, concurrency).await;
    let elapsed = began.elapsed();
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let mut report = lock(&plan.recorder).report(elapsed);
    report.signature_schemes = since(verifier.schemes(), &schemes_before);
    let started = plan.started.load(Ordering::Relaxed);
    report.open_loop = args.rate.zip(launched).map(|(rate, launched)| {
        // What was due: until the deadline; with --count alone (every connection starts in the
        // end, late or not), until the last one started.
        let window = match plan.deadline {
            Some(_) => launched.stopped.as_secs_f64(),
            None => launched.last_start.as_secs_f64(),
        };
        let scheduled = (rate * window).floor() as u64 + u64::from(plan.deadline.is_none());
        OpenLoop {
            rate,
            scheduled,
            started,
            // One slot of slack for the timer's jitter.
            reached: (started + 1) as f64 >= RATE_KEPT * scheduled as f64,
        }
    });
    if let (Some(pid), Some(before)) = (args.server_pid, cpu_before) {
        let cpu = cpu_seconds(pid)? - before;
        let completed = (report.ok + report.fallback).max(1);
        report.server = Some(ServerCpu {
            pid,
            cpu_seconds: cpu,
            cpu_us_per_handshake: cpu * 1e6 / completed as f64,
        });
    }
    report.inputs = Some(Inputs {
        target: target.clone(),
        sni,
        concurrency,
        rate: args.rate,
        duration_s: args.duration.map(|d| d.as_secs_f64()),
        count: args.count,
        warmup_s: args.warmup.as_secs_f64(),
        tls: format!("{:?}", args.tls),
        resumption: args.resumption == Toggle::On,
        verify: match &args.ca {
            Some(ca) => format!("ca:{}", ca.display()),
            None => "insecure".into(),
        },
        request: args.request.clone(),
        timeout_s: args.timeout.as_secs_f64(),
    });
    let rate_kept = report.open_loop.as_ref().is_none_or(|o| o.reached);
    let success = report.failed == 0
        && (args.allow_fallback || report.fallback == 0)
        && (args.allow_below_rate || rate_kept);
    let mut text = match args.json {
        true => serde_json::to_string_pretty(&report).unwrap_or_default(),
        false => report.text(),
    };
    if report.fallback > 0 && !args.json {
        let served: Vec<String> = report
            .served_instead
            .iter()
            .map(|(what, n)| format!("{what} (×{n})"))
            .collect();
        text.push_str(&format!(
            "{} handshake(s) got a certificate that does not cover the name sent; the server served \
             {}. A server with one certificate does this (corral once server-url is pinned, nginx), \
             and corral over its mint rate (--mint-rate 0 --mint-rate-per-client 0 lifts it){}\n",
            report.fallback,
            served.join("; "),
            if args.allow_fallback {
                ""
            } else {
                "; --allow-fallback accepts this"
            }
        ));
    }
    if !rate_kept && !args.json && !args.allow_below_rate {
        text.push_str("--allow-below-rate accepts a rate not kept\n");
    }
    Ok(Finished { text, success })
}

/// Runs one phase to its end, open loop (which says how its starts went) or closed loop.
async fn drive(plan: Arc<Plan>, rate: Option<f64>, concurrency: usize) -> Option<Launched> {
    match rate {
        Some(rate) => Some(open_loop(plan, rate, concurrency).await),
        None => {
            closed_loop(plan, concurrency).await;
            None
        }
    }
}

/// How an open loop's starts went, from its beginning.
struct Launched {
    /// When it stopped starting connections (the deadline, or the count reached).
    stopped: Duration,
    /// When it started the last one.
    last_start: Duration,
}

/// `after` less `before`, per key.
fn since(after: BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .into_iter()
        .map(|(k, v)| {
            let earlier = before.get(&k).copied().unwrap_or(0);
            (k, v - earlier)
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// A process's user and system CPU time so far, in seconds, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|source| BenchError::Read {
        path: path.clone().into(),
        source,
    })?;
    // Fields after the command name (which may hold spaces), closed by the last `)`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // utime and stime are fields 14 and 15 of stat(5); here 11 and 12.
    let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
        return Err(BenchError::ProcStat(path));
    };
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((user + system) as f64 / per_second)
}

/// `host[:port]`, with port 8443 when none is given (`127.0.0.1`, `[::1]`, `rancher.lab.test`).
fn with_port(target: &str) -> String {
    let has_port = crate::support::split_host_port(target).is_some();
    match (has_port, target.contains(':') && !target.starts_with('[')) {
        (true, _) => target.to_string(),
        (false, true) => format!("[{target}]:{DEFAULT_PORT}"),
        (false, false) => format!("{target}:{DEFAULT_PORT}"),
    }
}

fn server_name(name: &str) -> Result<ServerName<'static>, BenchError> {
    ServerName::try_from(name.to_string()).map_err(|source| BenchError::ServerName {
        name: name.into(),
        source,
    })
}

fn client_config(
    args: &HandshakeArgs,
) -> Result<(Arc<ClientConfig>, Arc<BenchVerifier>), BenchError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match args.tls {
        TlsVersion::V12 => &[&rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
        TlsVersion::Any => rustls::DEFAULT_VERSIONS,
    };
    let pem = super::trusted_pem(args.ca.as_deref(), args.insecure)?;
    let provider = classic_provider();
    let verifier = Arc::new(
        BenchVerifier::new(provider.clone(), pem.as_deref()).map_err(|reason| BenchError::Ca {
            path: args.ca.clone().unwrap_or_default(),
            reason,
        })?,
    );
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = match args.resumption {
        Toggle::On => Resumption::in_memory_sessions(1024),
        Toggle::Off => Resumption::disabled(),
    };
    Ok((Arc::new(config), verifier))
}

/// Claims the next connection number, or `None` when the phase is over.
fn next(plan: &Plan) -> Option<u64> {
    if plan.deadline.is_some_and(|d| Instant::now() >= d) {
        return None;
    }
    let n = plan.claimed.fetch_add(1, Ordering::Relaxed);
    let go = plan.count.is_none_or(|c| n < c);
    if go {
        plan.started.fetch_add(1, Ordering::Relaxed);
    }
    go.then_some(n)
}

async fn closed_loop(plan: Arc<Plan>, workers: usize) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let plan = plan.clone();
        set.spawn(async move {
            while let Some(n) = next(&plan) {
                let started = Instant::now();
                let result = one(&plan, n).await;
                record(&plan, started, result);
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// Starts a connection every 1/`rate` s (waiting for one of `in_flight` slots when all are busy,
/// which makes later ones late: their latency counts from when they were due).
async fn open_loop(plan: Arc<Plan>, rate: f64, in_flight: usize) -> Launched {
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let began = tokio::time::Instant::now();
    let mut last_start = Duration::ZERO;
    let mut set = tokio::task::JoinSet::new();
    for i in 0u32.. {
        let scheduled = began + interval * i;
        tokio::time::sleep_until(scheduled).await;
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let Some(n) = next(&plan) else { break };
        last_start = began.elapsed();
        let plan = plan.clone();
        set.spawn(async move {
            let result = one(&plan, n).await;
            record(&plan, scheduled.into_std(), result);
            drop(permit);
        });
        while set.try_join_next().is_some() {}
    }
    let stopped = began.elapsed();
    while set.join_next().await.is_some() {}
    Launched {
        stopped,
        last_start,
    }
}

fn record(plan: &Plan, started: Instant, outcome: Outcome) {
    let latency = started.elapsed();
    let mut recorder = lock(&plan.recorder);
    match outcome {
        Outcome::Completed {
            resumed,
            negotiated,
            served_instead,
        } => {
            let counter = match served_instead {
                None => &plan.ok,
                Some(_) => &plan.fallback,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            recorder.completed(Completed {
                latency,
                resumed,
                negotiated,
                served_instead,
            });
        }
        Outcome::Failed(kind) => {
            recorder.failure(&kind);
            plan.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One connection: TCP, TLS handshake, the name check, optionally one request.
async fn one(plan: &Plan, n: u64) -> Outcome {
    let name = plan.names.name(n);
    let work = async {
        let tcp = TcpStream::connect(plan.addr)
            .await
            .map_err(|e| Outcome::Failed(format!("connect: {}", e.kind())))?;
        let _ = tcp.set_nodelay(true);
        let mut tls = plan
            .connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| classify_tls_error(&e))?;
        let connection = tls.get_ref().1;
        let leaf = connection
            .peer_certificates()
            .and_then(|chain| chain.first());
        let served_instead = match leaf {
            Some(leaf) => served_instead(leaf, &name),
            None => Some("no certificate".into()),
        };
        let resumed = connection.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let negotiated = Negotiated::of(connection);
        if served_instead.is_none()
            && let Some(path) = &plan.request
        {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                plan.host_header
            );
            let failed =
                |what: &str, e: std::io::Error| Outcome::Failed(format!("{what}: {}", e.kind()));
            tls.write_all(request.as_bytes())
                .await
                .map_err(|e| failed("write", e))?;
            let mut head = [0u8; 16];
            let read = tls.read(&mut head).await.map_err(|e| failed("read", e))?;
            let status = std::str::from_utf8(&head[..read]).unwrap_or_default();
            if !status.starts_with("HTTP/1.1 200") {
                return Err(Outcome::Failed(format!(
                    "http: {}",
                    status.get(9..12).unwrap_or("no status")
                )));
            }
        }
        let _ = tls.shutdown().await;
        if plan.read_tickets {
            // TLS 1.3 tickets come after the handshake: read them (to the server's close) so
            // that the next connection can resume.
            let mut rest = [0u8; 512];
            while matches!(tls.read(&mut rest).await, Ok(n) if n > 0) {}
        }
        Ok(Outcome::Completed {
            resumed,
            negotiated,
            served_instead,
        })
    };
    match tokio::time::timeout(plan.timeout, work).await {
        Ok(Ok(outcome)) | Ok(Err(outcome)) => outcome,
        Err(_) => Outcome::Failed("timeout".into()),
    }
}

/// `None` when `leaf` has a SAN for `name`; otherwise the certificate, as a user recognises it.
fn served_instead(leaf: &[u8], name: &ServerName<'_>) -> Option<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return Some("an unparsable certificate".into());
    };
    (!covers(&cert, name)).then(|| describe(&cert))
}

/// A certificate as a user recognises it: subject, SANs, issuer.
fn describe(cert: &X509Certificate<'_>) -> String {
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|sans| {
            sans.value
                .general_names
                .iter()
                .map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(dns) => format!("DNS:{dns}"),
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => ip_text(bytes),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "subject {}, SANs [{}], issuer {}",
        cert.subject(),
        sans.join(", "),
        cert.issuer()
    )
}

/// An IP SAN as OpenSSL prints it: `IP:127.0.0.1`.
fn ip_text(bytes: &[u8]) -> String {
    let ip = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).map(std::net::IpAddr::from).ok(),
        16 => <[u8; 16]>::try_from(bytes).map(std::net::IpAddr::from).ok(),
        _ => None,
    };
    ip.map_or_else(|| "IP:?".into(), |ip| format!("IP:{ip}"))
}

/// A handshake error as a kind that groups, in words; what varies per connection is left out.
fn classify_tls_error(error: &std::io::Error) -> Outcome {
    use rustls::Error;
    match error.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(reason)) => Outcome::Failed(format!(
            "tls: certificate refused: {}",
            certificate_error_in_words(reason)
        )),
        Some(Error::AlertReceived(alert)) => Outcome::Failed(format!("tls: alert {alert:?}")),
        Some(other) => Outcome::Failed(format!("tls: {other}")),
        None => Outcome::Failed(format!("tls: {}", error.kind())),
    }
}

/// Whether `cert` has a SAN for `name` (a DNS name, `*.` wildcards over one label; or an IP).
fn covers(cert: &X509Certificate<'_>, name: &ServerName<'_>) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(sans)) = cert.subject_alternative_name() else {
        return false;
    };
    sans.value
        .general_names
        .iter()
        .any(|san| match (san, name) {
            (GeneralName::DNSName(san), ServerName::DnsName(dns)) => {
                let wanted = dns.as_ref();
                san.eq_ignore_ascii_case(wanted)
                    || san.strip_prefix("*.").is_some_and(|parent| {
                        wanted
                            .split_once('.')
                            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(parent))
                    })
            }
            (GeneralName::IPAddress(bytes), ServerName::IpAddress(ip)) => {
                let ip = std::net::IpAddr::from(*ip);
                match ip {
                    std::net::IpAddr::V4(v4) => *bytes == v4.octets(),
                    std::net::IpAddr::V6(v6) => *bytes == v6.octets(),
                }
            }
            _ => false,
        })
}

async fn progress(plan: Arc<Plan>, began: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (ok, fallback, failed) = (
            plan.ok.load(Ordering::Relaxed),
            plan.fallback.load(Ordering::Relaxed),
            plan.failed.load(Ordering::Relaxed),
        );
        let elapsed = began.elapsed().as_secs_f64();
        let p99 = lock(&plan.recorder).p99();
        eprint!(
            "\r{elapsed:6.1}s  ok {ok}  fallback {fallback}  failed {failed}  {:.0}/s  p99 {p99} µs   ",
            ok as f64 / elapsed
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_without_a_port_gets_8443() {
        assert_eq!(with_port("127.0.0.1"), "127.0.0.1:8443");
        assert_eq!(with_port("127.0.0.1:9443"), "127.0.0.1:9443");
        assert_eq!(with_port("rancher.lab.test"), "rancher.lab.test:8443");
        assert_eq!(with_port("[::1]:9443"), "[::1]:9443");
        assert_eq!(with_port("[::1]"), "[::1]:8443");
        assert_eq!(with_port("::1"), "[::1]:8443");
    }

    #[test]
    fn a_leaf_covers_its_names_only() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![
            "a.lab.test".to_string(),
            "*.w.lab.test".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        let leaf = params.self_signed(&key).unwrap().der().clone();
        let covers = |n: &str| served_instead(&leaf, &ServerName::try_from(n).unwrap()).is_none();
        assert!(covers("A.lab.test"));
        assert!(covers("x.w.lab.test"));
        assert!(!covers("x.y.w.lab.test"), "one label only");
        assert!(!covers("b.lab.test"));
        assert!(covers("127.0.0.1"));
        assert!(!covers("127.0.0.2"));
    }
}
