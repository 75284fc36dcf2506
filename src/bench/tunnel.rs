//! `corral bench tunnel`: the tunnel's cost, measured in one process on loopback. A bulk transfer
//! through a tunnel (TLS WebSocket, server session → client session → target) against the same
//! transfer over a direct TLS connection, and how fast streams open through the tunnel. With
//! `--server`, a running deployment instead (`deployment`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::BenchError;
use super::loopback::{connect_tls, drain, median, mib_per_s, self_signed, write_zeros};
use crate::tunnel::{Role, Session, websocket};

#[derive(Debug, clap::Args)]
pub struct TunnelArgs {
    /// Size of the bulk transfer, MiB.
    #[arg(long, default_value_t = 256)]
    pub megabytes: usize,
    /// Transfers of each kind, alternating; the median is reported (loopback timings are noisy).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Streams to open, one after another.
    #[arg(long, default_value_t = 2000)]
    pub streams: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Measure a running corral instead: requests through its cluster proxy to a connected agent
    /// (and, with --node, a bulk download through a node agent's tunnel).
    #[arg(long, value_name = "URL", requires_all = ["token", "cluster"])]
    pub server: Option<String>,
    /// An API token of that server (`token-xxxxx:secret`).
    #[arg(
        long,
        env = "CORRAL_TOKEN",
        hide_env_values = true,
        requires = "server"
    )]
    pub token: Option<String>,
    /// The cluster whose agent is connected.
    #[arg(long, requires = "server")]
    pub cluster: Option<String>,
    /// A node (`m-…`) of that cluster whose node agent is connected on this machine: the bulk
    /// download goes through it.
    #[arg(long, requires = "server")]
    pub node: Option<String>,
    /// Verify the server against this CA (its /cacerts).
    #[arg(
        long,
        conflicts_with = "insecure",
        value_name = "FILE",
        requires = "server"
    )]
    pub ca: Option<std::path::PathBuf>,
    /// Do not verify the server's certificate.
    #[arg(long, requires = "server")]
    pub insecure: bool,
}

#[derive(Serialize)]
pub struct TunnelReport {
    pub megabytes: usize,
    pub direct_tls_mib_per_s: f64,
    pub tunnel_mib_per_s: f64,
    /// Tunnel throughput over direct throughput (1.0 = no cost).
    pub ratio: f64,
    pub stream_opens_per_s: f64,
}

pub async fn run(args: TunnelArgs) -> Result<String, BenchError> {
    if let (Some(server), Some(token), Some(cluster)) = (&args.server, &args.token, &args.cluster) {
        let report = super::deployment::run(super::deployment::Deployment {
            server: server.clone(),
            token: token.clone(),
            cluster: cluster.clone(),
            node: args.node.clone(),
            ca: args.ca.clone(),
            insecure: args.insecure,
            requests: args.streams,
            megabytes: args.megabytes,
            rounds: args.rounds,
        })
        .await?;
        return Ok(match args.json {
            true => serde_json::to_string_pretty(&report).unwrap_or_default(),
            false => report.text(),
        });
    }
    let bytes = args.megabytes << 20;
    let (server_tls, _) = self_signed()?;
    let source = spawn_server(None, move |mut s| async move {
        write_zeros(&mut s, bytes).await
    })
    .await?;
    let echo = spawn_server(None, |mut s| async move {
        let mut byte = [0u8; 1];
        while s.read_exact(&mut byte).await.is_ok() && s.write_all(&byte).await.is_ok() {}
    })
    .await?;
    let direct = spawn_server(Some(server_tls.clone()), move |mut s| async move {
        write_zeros(&mut s, bytes).await
    })
    .await?;
    // The tunnel: a TLS WebSocket between a server and a client session.
    let server = tunnel_pair(server_tls).await?;

    let (mut direct_rates, mut tunnel_rates) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds.max(1) {
        // Baseline: the same bytes over one direct TLS connection.
        let started = Instant::now();
        let mut tls = connect_tls(direct).await?;
        let got = drain(&mut tls).await;
        direct_rates.push(mib_per_s(got, started));
        let started = Instant::now();
        let mut stream = server.open_stream("tcp", &source.to_string()).await?;
        let got_tunnel = drain(&mut stream).await;
        tunnel_rates.push(mib_per_s(got_tunnel, started));
        if got != bytes || got_tunnel != bytes {
            return Err(BenchError::ShortTransfer {
                direct: got,
                tunnel: got_tunnel,
                expected: bytes,
            });
        }
    }
    let (direct_rate, tunnel_rate) = (median(&mut direct_rates), median(&mut tunnel_rates));

    let started = Instant::now();
    for _ in 0..args.streams {
        let mut stream = server.open_stream("tcp", &echo.to_string()).await?;
        let mut byte = [7u8; 1];
        stream.write_all(&byte).await?;
        stream.read_exact(&mut byte).await?;
    }
    let opens = args.streams as f64 / started.elapsed().as_secs_f64();
    let report = TunnelReport {
        megabytes: args.megabytes,
        direct_tls_mib_per_s: direct_rate,
        tunnel_mib_per_s: tunnel_rate,
        ratio: tunnel_rate / direct_rate,
        stream_opens_per_s: opens,
    };
    Ok(match args.json {
        true => serde_json::to_string_pretty(&report).unwrap_or_default(),
        false => format!(
            "bulk {} MiB: direct TLS {:.0} MiB/s, through the tunnel {:.0} MiB/s (ratio {:.2}, medians)\nstream opens through the tunnel: {:.0}/s\n",
            report.megabytes,
            report.direct_tls_mib_per_s,
            report.tunnel_mib_per_s,
            report.ratio,
            report.stream_opens_per_s
        ),
    })
}

/// A loopback server running `serve` on each connection (over TLS when `tls` is given).
async fn spawn_server<F, Fut>(
    tls: Option<Arc<rustls::ServerConfig>>,
    serve: F,
) -> Result<SocketAddr, BenchError>
where
    F: Fn(Box<dyn crate::tunnel::session::Dialed>) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let (tls, serve) = (tls.clone(), serve.clone());
            tokio::spawn(async move {
                match tls {
                    Some(config) => {
                        if let Ok(stream) =
                            tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                        {
                            serve(Box::new(stream)).await;
                        }
                    }
                    None => serve(Box::new(tcp)).await,
                }
            });
        }
    });
    Ok(addr)
}

/// A server session and a client session joined by a TLS WebSocket on loopback.
async fn tunnel_pair(server_tls: Arc<rustls::ServerConfig>) -> Result<Arc<Session>, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (server, server_rx) = Session::new(Role::Server, "bench", None);
    let server_side = server.clone();
    let server_rx_slot = Arc::new(std::sync::Mutex::new(Some(server_rx)));
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let Ok(tls) = tokio_rustls::TlsAcceptor::from(server_tls)
            .accept(tcp)
            .await
        else {
            return;
        };
        // The server half of the handshake, as the HTTP server does it.
        let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
            let server = server_side.clone();
            let server_rx = server_rx_slot.lock().ok().and_then(|mut rx| rx.take());
            let mut req = req.map(axum::body::Body::new);
            async move {
                let (response, on_upgrade) = match websocket::upgrade(&mut req) {
                    Ok(upgrade) => upgrade,
                    Err((status, text)) => {
                        let mut refused = hyper::Response::new(axum::body::Body::from(text));
                        *refused.status_mut() = status;
                        return Ok::<_, std::convert::Infallible>(refused);
                    }
                };
                if let Some(server_rx) = server_rx {
                    tokio::spawn(async move {
                        if let Ok(ws) = websocket::accept(on_upgrade).await {
                            let _ = server.run(ws, server_rx).await;
                        }
                    });
                }
                Ok(response)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
            .with_upgrades()
            .await;
    });
    let tls = connect_tls(addr).await?;
    let ws = websocket::connect(tls, &addr.to_string(), "/v3/connect", &[]).await?;
    let (client, client_rx) = Session::new(
        Role::Client,
        "client",
        Some(Arc::new(|_: &str, _: &str| true)),
    );
    tokio::spawn(async move { client.run(ws, client_rx).await });
    Ok(server)
}
