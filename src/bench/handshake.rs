//! `corral bench handshake`: TLS handshakes against a server, closed-loop (`--concurrency` workers
//! back to back) or open-loop (`--rate`, latency measured from each connection's scheduled start so
//! a slow server cannot hide queueing: no coordinated omission). `--unique-sni` sends a new name per
//! connection, which no common load generator does.
//!
//! Every handshake is checked to have been answered with a certificate for the name it sent (also
//! with `--insecure`): a server that refuses names (a mint rate, an allow-list) serves its default
//! certificate instead, and a run that counted those as successes would measure the wrong thing.
//! They are counted as `fallback`, apart from failures; either makes the exit status non-zero unless
//! `--allow-fallback` (fallbacks only).

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

use super::report::Recorder;
use super::{BenchError, parse_duration};
use crate::client::{Trust, classic_provider, tls_client};
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
    /// Verify the server against this CA.
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
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 even when some handshakes got a certificate for another name (a pinned server, a
    /// server over its mint rate); failures still make the exit status 1.
    #[arg(long)]
    pub allow_fallback: bool,
}

/// Port 8443 when the target names none.
const DEFAULT_PORT: u16 = 8443;

/// What the workers share.
struct Plan {
    addr: SocketAddr,
    connector: TlsConnector,
    names: NameSource,
    request: Option<String>,
    host_header: String,
    timeout: Duration,
    deadline: Option<Instant>,
    count: Option<u64>,
    started: AtomicU64,
    recorder: Mutex<Recorder>,
    ok: AtomicU64,
    fallback: AtomicU64,
    failed: AtomicU64,
}

/// How one connection went.
enum Outcome {
    Ok,
    /// Completed, with a certificate that does not cover the name sent.
    Fallback,
    /// Failed; the kind, without names, so that failures group.
    Failed(String),
}

/// A finished run: the report, and whether it counts as a success for the exit status.
pub struct Finished {
    pub text: String,
    pub success: bool,
}

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
}

pub async fn run(args: HandshakeArgs) -> Result<Finished, BenchError> {
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
    let names = match (&args.sni, &args.unique_sni) {
        (Some(sni), _) => NameSource::Fixed(server_name(sni)?),
        (None, Some(suffix)) => {
            server_name(&format!("x-0.{suffix}")).map_err(|e| BenchError::UniqueSni {
                suffix: suffix.clone(),
                source: Box::new(e),
            })?;
            NameSource::Unique {
                run: crate::secrets::random_suffix(),
                suffix: suffix.clone(),
            }
        }
        (None, None) if args.no_sni || host.parse::<std::net::IpAddr>().is_ok() => {
            NameSource::Fixed(ServerName::IpAddress(addr.ip().into()))
        }
        (None, None) => NameSource::Fixed(server_name(host)?),
    };
    let plan = Arc::new(Plan {
        addr,
        connector: TlsConnector::from(client_config(&args)?),
        names,
        host_header: target.clone(),
        request: args.request.clone(),
        timeout: args.timeout,
        deadline: match (args.duration, args.count) {
            (Some(d), _) => Some(Instant::now() + d),
            (None, Some(_)) => None,
            (None, None) => Some(Instant::now() + Duration::from_secs(10)),
        },
        count: args.count,
        started: AtomicU64::new(0),
        recorder: Mutex::new(Recorder::default()),
        ok: AtomicU64::new(0),
        fallback: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let began = Instant::now();
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(progress(plan.clone(), began)));
    match args.rate {
        Some(rate) if rate > 0.0 => open_loop(plan.clone(), rate, args.concurrency.max(1)).await,
        _ => closed_loop(plan.clone(), args.concurrency.max(1)).await,
    }
    let elapsed = began.elapsed();
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let report = lock(&plan.recorder).report(elapsed);
    let success = report.failed == 0 && (args.allow_fallback || report.fallback == 0);
    let mut text = match args.json {
        true => serde_json::to_string_pretty(&report).unwrap_or_default(),
        false => report.text(),
    };
    if report.fallback > 0 && !args.json {
        text.push_str(&format!(
            "{} handshake(s) got a certificate for another name: the server refused the name \
             (for corral: --mint-rate 0 --mint-rate-per-client 0 lifts its rate limits){}\n",
            report.fallback,
            if args.allow_fallback {
                ""
            } else {
                "; --allow-fallback accepts this"
            }
        ));
    }
    Ok(Finished { text, success })
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

fn client_config(args: &HandshakeArgs) -> Result<Arc<ClientConfig>, BenchError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match args.tls {
        TlsVersion::V12 => &[&rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
        TlsVersion::Any => rustls::DEFAULT_VERSIONS,
    };
    let pem;
    let trust = match &args.ca {
        Some(path) => {
            pem = std::fs::read(path).map_err(|source| BenchError::Read {
                path: path.clone(),
                source,
            })?;
            Trust::Pem(&pem)
        }
        None if args.insecure => Trust::Anything,
        None => return Err(BenchError::NoTrust),
    };
    let mut config = (*tls_client(classic_provider(), trust, &[b"http/1.1"], versions)?).clone();
    config.resumption = match args.resumption {
        Toggle::On => Resumption::in_memory_sessions(1024),
        Toggle::Off => Resumption::disabled(),
    };
    Ok(Arc::new(config))
}

/// Claims the next connection number, or `None` when the run is over.
fn next(plan: &Plan) -> Option<u64> {
    if plan.deadline.is_some_and(|d| Instant::now() >= d) {
        return None;
    }
    let n = plan.started.fetch_add(1, Ordering::Relaxed);
    plan.count.is_none_or(|c| n < c).then_some(n)
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

async fn open_loop(plan: Arc<Plan>, rate: f64, in_flight: usize) {
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let began = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0u32.. {
        let scheduled = began + interval * i;
        tokio::time::sleep_until(scheduled).await;
        let Some(n) = next(&plan) else { break };
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let plan = plan.clone();
        set.spawn(async move {
            let result = one(&plan, n).await;
            record(&plan, scheduled.into_std(), result);
            drop(permit);
        });
        while set.try_join_next().is_some() {}
    }
    while set.join_next().await.is_some() {}
}

fn record(plan: &Plan, started: Instant, outcome: Outcome) {
    let mut recorder = lock(&plan.recorder);
    match outcome {
        Outcome::Ok => {
            recorder.success(started.elapsed());
            plan.ok.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Fallback => {
            recorder.fallback();
            plan.fallback.fetch_add(1, Ordering::Relaxed);
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
        let covered = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .is_some_and(|leaf| covers(leaf, &name));
        if !covered {
            return Err(Outcome::Fallback);
        }
        if let Some(path) = &plan.request {
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
        Ok(())
    };
    match tokio::time::timeout(plan.timeout, work).await {
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(outcome)) => outcome,
        Err(_) => Outcome::Failed("timeout".into()),
    }
}

/// A handshake error as a kind that groups: a certificate for another name (with `--ca`) is a
/// fallback; other errors lose what varies per connection.
fn classify_tls_error(error: &std::io::Error) -> Outcome {
    use rustls::{CertificateError, Error};
    match error.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => Outcome::Fallback,
        Some(Error::InvalidCertificate(other)) => {
            let variant = format!("{other:?}");
            let variant = variant.split([' ', '(', '{']).next().unwrap_or_default();
            Outcome::Failed(format!("tls: invalid certificate: {variant}"))
        }
        Some(Error::AlertReceived(alert)) => Outcome::Failed(format!("tls: alert {alert:?}")),
        Some(other) => Outcome::Failed(format!("tls: {other}")),
        None => Outcome::Failed(format!("tls: {}", error.kind())),
    }
}

/// Whether `leaf` has a SAN for `name` (a DNS name, `*.` wildcards over one label; or an IP).
fn covers(leaf: &rustls::pki_types::CertificateDer<'_>, name: &ServerName<'_>) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return false;
    };
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
        let name = |n: &str| ServerName::try_from(n.to_string()).unwrap();
        assert!(covers(&leaf, &name("A.lab.test")));
        assert!(covers(&leaf, &name("x.w.lab.test")));
        assert!(!covers(&leaf, &name("x.y.w.lab.test")), "one label only");
        assert!(!covers(&leaf, &name("b.lab.test")));
        assert!(covers(&leaf, &name("127.0.0.1")));
        assert!(!covers(&leaf, &name("127.0.0.2")));
    }
}
