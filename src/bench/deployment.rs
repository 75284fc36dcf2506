//! `corral bench tunnel --server URL …`: the tunnel as a deployment has it — a running corral and a
//! connected agent — rather than two sessions in one process. Requests through the cluster proxy
//! (`/k8s/clusters/<id>/version`: a stream opened through the tunnel and a TLS handshake with the
//! cluster's API at its end, per request) against `/ping` on the same connection (the same HTTPS
//! path without the tunnel); with `--node`, a bulk download through the node proxy from a server
//! this command starts on loopback against the same bytes from a TLS server directly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::BenchError;
use crate::client::{Target, Trust, classic_provider, tls_client};

/// What a deployment run measures with.
pub struct Deployment {
    pub server: String,
    pub token: String,
    pub cluster: String,
    pub node: Option<String>,
    pub ca: Option<PathBuf>,
    pub insecure: bool,
    pub requests: usize,
    pub megabytes: usize,
    pub rounds: usize,
}

#[derive(Debug, Serialize)]
pub struct DeploymentReport {
    pub server: String,
    pub cluster: String,
    pub requests: usize,
    /// `/ping` over one kept-alive HTTPS connection: the baseline.
    pub ping_per_s: f64,
    pub ping_latency_us: Percentiles,
    /// `/k8s/clusters/<id>/version` over the same kind of connection.
    pub proxied_per_s: f64,
    pub proxied_latency_us: Percentiles,
    /// Proxied over ping (1.0 = the tunnel costs nothing).
    pub proxied_ratio: f64,
    pub bulk: Option<Bulk>,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
}

#[derive(Debug, Serialize)]
pub struct Bulk {
    pub node: String,
    pub megabytes: usize,
    pub direct_tls_mib_per_s: f64,
    pub node_proxy_mib_per_s: f64,
    pub ratio: f64,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

pub async fn run(args: Deployment) -> Result<DeploymentReport, BenchError> {
    let target = Target::parse(&args.server)?;
    let pem = super::trusted_pem(args.ca.as_deref(), args.insecure)?;
    let trust = pem.as_deref().map_or(Trust::Anything, Trust::Pem);
    let tls = tls_client(
        classic_provider(),
        trust,
        &[b"http/1.1"],
        rustls::DEFAULT_VERSIONS,
    )?;
    let auth = format!("Bearer {}", args.token);
    let mut sender = connect(&target, tls.clone()).await?;
    let requests = args.requests.max(1);

    let version = format!("/k8s/clusters/{}/version", args.cluster);
    // One of each first: a missing agent or a wrong token is an error, not a slow figure.
    fetch(&mut sender, &target, "/ping", &auth).await?;
    fetch(&mut sender, &target, &version, &auth).await?;
    let (ping_per_s, ping_latency_us) =
        sequential(&mut sender, &target, "/ping", &auth, requests).await?;
    let (proxied_per_s, proxied_latency_us) =
        sequential(&mut sender, &target, &version, &auth, requests).await?;

    let bulk = match &args.node {
        Some(node) => Some(bulk(&args, &target, tls, &auth, node).await?),
        None => None,
    };
    Ok(DeploymentReport {
        server: args.server.clone(),
        cluster: args.cluster.clone(),
        requests,
        ping_per_s,
        ping_latency_us,
        proxied_per_s,
        proxied_latency_us,
        proxied_ratio: proxied_per_s / ping_per_s,
        bulk,
    })
}

impl DeploymentReport {
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} requests each on one connection to {}:\n  /ping: {:.0}/s (p50 {} µs, p99 {} µs)\n  \
             through the tunnel to cluster {}: {:.0}/s (p50 {} µs, p99 {} µs), ratio {:.2}\n",
            self.requests,
            self.server,
            self.ping_per_s,
            self.ping_latency_us.p50,
            self.ping_latency_us.p99,
            self.cluster,
            self.proxied_per_s,
            self.proxied_latency_us.p50,
            self.proxied_latency_us.p99,
            self.proxied_ratio
        );
        if let Some(bulk) = &self.bulk {
            out.push_str(&format!(
                "bulk {} MiB: direct TLS {:.0} MiB/s, through node {}'s tunnel {:.0} MiB/s (ratio {:.2}, medians)\n",
                bulk.megabytes,
                bulk.direct_tls_mib_per_s,
                bulk.node,
                bulk.node_proxy_mib_per_s,
                bulk.ratio
            ));
        }
        out
    }
}

async fn connect(target: &Target, tls: Arc<rustls::ClientConfig>) -> Result<Sender, BenchError> {
    let stream = target
        .connect(tls)
        .await
        .map_err(crate::client::ClientError::from)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| BenchError::Http(e.to_string()))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One GET on `sender`; its body's length, or an error naming the status.
async fn fetch(
    sender: &mut Sender,
    target: &Target,
    path: &str,
    auth: &str,
) -> Result<usize, BenchError> {
    let request = Request::get(path)
        .header(hyper::header::HOST, target.authority())
        .header(hyper::header::AUTHORIZATION, auth)
        .body(Empty::new())
        .map_err(|e| BenchError::Http(e.to_string()))?;
    sender
        .ready()
        .await
        .map_err(|e| BenchError::Http(e.to_string()))?;
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .map_err(|_| BenchError::Http(format!("GET {path}: no answer in 30 s")))?
        .map_err(|e| BenchError::Http(format!("GET {path}: {e}")))?;
    let status = response.status();
    let mut body = response.into_body();
    let mut length = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BenchError::Http(format!("GET {path}: {e}")))?;
        length += frame.data_ref().map_or(0, Bytes::len);
    }
    if !status.is_success() {
        return Err(BenchError::Http(format!("GET {path}: {status}")));
    }
    Ok(length)
}

/// `count` GETs of `path` one after another: the rate, and latency percentiles.
async fn sequential(
    sender: &mut Sender,
    target: &Target,
    path: &str,
    auth: &str,
    count: usize,
) -> Result<(f64, Percentiles), BenchError> {
    let mut latencies = Vec::with_capacity(count);
    let began = Instant::now();
    for _ in 0..count {
        let started = Instant::now();
        fetch(sender, target, path, auth).await?;
        latencies.push(started.elapsed().as_micros() as u64);
    }
    let rate = count as f64 / began.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Ok((
        rate,
        Percentiles {
            p50: at(0.5),
            p99: at(0.99),
        },
    ))
}

/// The same bytes from a loopback server through node `node`'s tunnel and from a TLS server
/// directly, alternating; medians.
async fn bulk(
    args: &Deployment,
    target: &Target,
    tls: Arc<rustls::ClientConfig>,
    auth: &str,
    node: &str,
) -> Result<Bulk, BenchError> {
    let bytes = args.megabytes.max(1) << 20;
    let plain = serve_bytes(None, bytes).await?;
    let (server_tls, _) = super::loopback::self_signed()?;
    let direct = serve_bytes(Some(server_tls), bytes).await?;
    let through = format!("/v3/nodes/{}:{node}/proxy/{plain}/bulk", args.cluster);
    let (mut direct_rates, mut proxied_rates) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds.max(1) {
        let started = Instant::now();
        let mut stream = super::loopback::connect_tls(direct).await?;
        stream
            .write_all(b"GET /bulk HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await?;
        let got = super::loopback::drain(&mut stream).await;
        direct_rates.push(super::loopback::mib_per_s(got, started));

        let mut sender = connect(target, tls.clone()).await?;
        let started = Instant::now();
        let got_proxied = fetch(&mut sender, target, &through, auth).await?;
        proxied_rates.push(super::loopback::mib_per_s(got_proxied, started));
        if got_proxied != bytes || got < bytes {
            return Err(BenchError::ShortTransfer {
                direct: got,
                tunnel: got_proxied,
                expected: bytes,
            });
        }
    }
    let direct_rate = super::loopback::median(&mut direct_rates);
    let proxied_rate = super::loopback::median(&mut proxied_rates);
    Ok(Bulk {
        node: node.to_string(),
        megabytes: args.megabytes.max(1),
        direct_tls_mib_per_s: direct_rate,
        node_proxy_mib_per_s: proxied_rate,
        ratio: proxied_rate / direct_rate,
    })
}

/// A loopback HTTP server (over TLS when `tls` is given) answering every request with `bytes`
/// zeros; its address.
async fn serve_bytes(
    tls: Option<Arc<rustls::ServerConfig>>,
    bytes: usize,
) -> Result<std::net::SocketAddr, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                let mut stream: Box<dyn crate::tunnel::session::Dialed> = match tls {
                    Some(config) => {
                        match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                            Ok(stream) => Box::new(stream),
                            Err(_) => return,
                        }
                    }
                    None => Box::new(tcp),
                };
                // The request head, then the answer (the request is small and read whole).
                let mut head = [0u8; 4096];
                if stream.read(&mut head).await.unwrap_or(0) == 0 {
                    return;
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {bytes}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                );
                if stream.write_all(answer.as_bytes()).await.is_ok() {
                    super::loopback::write_zeros(&mut stream, bytes).await;
                }
            });
        }
    });
    Ok(addr)
}
