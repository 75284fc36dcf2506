//! `corral bench handshake`: TLS handshakes against a server, closed-loop (`--concurrency` workers
//! back to back) or open-loop (`--rate`, latency measured from each connection's scheduled start so
//! a slow server cannot hide queueing: no coordinated omission). `--unique-sni` sends a new name per
//! connection, which no common load generator does.

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

use super::parse_duration;
use super::report::Recorder;
use crate::client::{Trust, classic_provider, tls_client};
use crate::config::Toggle;

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
    /// Server to connect to.
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "HOST:PORT")]
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
}

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
    failed: AtomicU64,
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

pub async fn run(args: HandshakeArgs) -> Result<String, String> {
    let addr = args
        .target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", args.target))?
        .next()
        .ok_or_else(|| format!("no address for {}", args.target))?;
    let host = args
        .target
        .rsplit_once(':')
        .map_or(args.target.as_str(), |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let names = match (&args.sni, &args.unique_sni) {
        (Some(sni), _) => NameSource::Fixed(server_name(sni)?),
        (None, Some(suffix)) => {
            server_name(&format!("x-0.{suffix}"))
                .map_err(|e| format!("--unique-sni {suffix:?}: {e}"))?;
            NameSource::Unique {
                run: crate::setup::secrets::random_suffix(),
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
        host_header: args.target.clone(),
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
    let report = plan
        .recorder
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .report(elapsed);
    Ok(match args.json {
        true => serde_json::to_string_pretty(&report).unwrap_or_default(),
        false => report.text(),
    })
}

fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string()).map_err(|e| format!("invalid server name {name:?}: {e}"))
}

fn client_config(args: &HandshakeArgs) -> Result<Arc<ClientConfig>, String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match args.tls {
        TlsVersion::V12 => &[&rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
        TlsVersion::Any => rustls::DEFAULT_VERSIONS,
    };
    let pem;
    let trust = match &args.ca {
        Some(path) => {
            pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Trust::Pem(&pem)
        }
        None if args.insecure => Trust::Anything,
        None => return Err("pass --ca FILE or --insecure".into()),
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

fn record(plan: &Plan, started: Instant, result: Result<(), String>) {
    let mut recorder = plan.recorder.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(()) => {
            recorder.success(started.elapsed());
            plan.ok.fetch_add(1, Ordering::Relaxed);
        }
        Err(kind) => {
            recorder.failure(&kind);
            plan.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One connection: TCP, TLS handshake, optionally one request; `Err` names the kind of failure.
async fn one(plan: &Plan, n: u64) -> Result<(), String> {
    let work = async {
        let tcp = TcpStream::connect(plan.addr)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        let _ = tcp.set_nodelay(true);
        let mut tls = plan
            .connector
            .connect(plan.names.name(n), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        if let Some(path) = &plan.request {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                plan.host_header
            );
            tls.write_all(request.as_bytes())
                .await
                .map_err(|e| format!("write: {}", e.kind()))?;
            let mut head = [0u8; 16];
            let read = tls
                .read(&mut head)
                .await
                .map_err(|e| format!("read: {}", e.kind()))?;
            let status = std::str::from_utf8(&head[..read]).unwrap_or_default();
            if !status.starts_with("HTTP/1.1 200") {
                return Err(format!(
                    "http: {}",
                    status.get(9..12).unwrap_or("no status")
                ));
            }
        }
        let _ = tls.shutdown().await;
        Ok(())
    };
    tokio::time::timeout(plan.timeout, work)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

async fn progress(plan: Arc<Plan>, began: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (ok, failed) = (
            plan.ok.load(Ordering::Relaxed),
            plan.failed.load(Ordering::Relaxed),
        );
        let elapsed = began.elapsed().as_secs_f64();
        let p99 = plan
            .recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .p99();
        eprint!(
            "\r{elapsed:6.1}s  ok {ok}  failed {failed}  {:.0}/s  p99 {p99} µs   ",
            ok as f64 / elapsed
        );
    }
}
