//! The HTTPS front end, top to bottom: accept → ClientHello → name → certificate → handshake → HTTP.
//!
//! The accept loop ([`Listener`]) only accepts and spawns; each connection runs on its own task and its
//! errors end only that connection. The certificate is chosen after the ClientHello is read, because
//! the choice depends on both the SNI and the local address the client reached.

pub mod acme;
pub mod byo;
pub mod persisted;
pub mod resolver;
pub mod served;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::http::{ConnInfo, HttpApp};
use acme::ACME_TLS_ALPN;
pub use resolver::CertResolver;

/// TCP keep-alive idle time, as Rancher's listener sets it.
const TCP_KEEPALIVE: Duration = Duration::from_secs(180);

/// Sets the options every connection needs (no Nagle delay, keep-alive) on the listening socket.
/// Linux copies them to each accepted socket, so the accept path makes no `setsockopt` calls: three
/// fewer system calls per handshake. Elsewhere they are set again on each connection.
pub fn set_connection_options(socket: &socket2::Socket) -> io::Result<()> {
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE))
}

/// What a listener does with each accepted connection.
#[derive(Clone)]
pub enum Termination {
    /// TLS with certificates from the resolver, then HTTP.
    Tls {
        resolver: Arc<CertResolver>,
        handshake_timeout: Duration,
    },
    /// Plain HTTP (the redirecting HTTP port).
    Plain,
}

/// An accept loop on one socket.
pub struct Listener {
    listener: TcpListener,
    /// The listener's own address when it is bound to one IP: then every connection's local address
    /// is known without a `getsockname` call.
    bound: Option<SocketAddr>,
    termination: Termination,
    app: HttpApp,
    /// Caps open connections across all listeners: when it is exhausted, new clients wait in the
    /// kernel's accept queue instead of taking memory and file descriptors.
    limit: Arc<Semaphore>,
}

impl Listener {
    pub fn new(
        listener: TcpListener,
        termination: Termination,
        app: HttpApp,
        limit: Arc<Semaphore>,
    ) -> Self {
        let bound = listener
            .local_addr()
            .ok()
            .filter(|addr| !addr.ip().is_unspecified());
        Self {
            listener,
            bound,
            termination,
            app,
            limit,
        }
    }

    /// Accepts forever. Transient accept errors (e.g. out of file descriptors) back off and retry.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(5);
        loop {
            let Ok(permit) = self.limit.clone().acquire_owned().await else {
                return;
            };
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let (termination, app) = (self.termination.clone(), self.app.clone());
                    let bound = self.bound;
                    tokio::spawn(async move {
                        if let Err(e) =
                            handle_connection(stream, peer, bound, termination, app).await
                        {
                            tracing::debug!("connection from {peer}: {e}");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// One accepted connection; `bound` is the listener's address when it is bound to one IP.
async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    bound: Option<SocketAddr>,
    termination: Termination,
    app: HttpApp,
) -> io::Result<()> {
    let local = match bound {
        Some(addr) => addr,
        None => stream.local_addr()?,
    };
    #[cfg(not(target_os = "linux"))]
    set_connection_options(&socket2::SockRef::from(&stream))?;
    match termination {
        Termination::Plain => {
            let info = ConnInfo::new(local, peer, false);
            app.serve(stream, info).await;
        }
        Termination::Tls {
            resolver,
            handshake_timeout,
        } => {
            let metrics = crate::metrics::metrics();
            let handshaking = handshake(stream, local, peer, &resolver);
            let tls = match tokio::time::timeout(handshake_timeout, handshaking).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    metrics.handshakes_error.inc();
                    return Err(e);
                }
                Err(_) => {
                    metrics.handshakes_timeout.inc();
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    ));
                }
            };
            metrics.handshakes_ok.inc();
            let info = ConnInfo::new(local, peer, true);
            match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => app.serve_h2(tls, info).await,
                // A TLS-ALPN-01 validator only looks at the certificate.
                Some(ACME_TLS_ALPN) => {
                    let mut tls = tls;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                }
                _ => app.serve(tls, info).await,
            }
        }
    }
    Ok(())
}

/// Reads the ClientHello, picks the certificate for its SNI (or the local IP), completes the handshake.
async fn handshake(
    stream: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    resolver: &Arc<CertResolver>,
) -> io::Result<TlsStream<TcpStream>> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let config = resolver.select_for_hello(&start.client_hello(), local.ip(), peer.ip());
    start.into_stream(config).await
}
