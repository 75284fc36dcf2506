//! The transport, top to bottom: accept → ClientHello → certificate → handshake → the handler.
//!
//! The accept loop ([`Listener`]) only accepts and spawns; each connection runs on its own task and its
//! errors end only that connection. The certificate is chosen after the ClientHello is read (by a
//! [`SelectConfig`]), because the choice depends on both the SNI and the local address the client
//! reached. What runs on the connection after that is the [`Handler`]'s business: this module knows
//! nothing of HTTP. A listener stops accepting when its shutdown signal fires.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::ClientHello;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pki::ACME_TLS_ALPN;

/// TCP keep-alive idle time, as Rancher's listener sets it.
const TCP_KEEPALIVE: Duration = Duration::from_secs(180);

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub secure: bool,
    /// The connection's socket, for [`peer_left`] (valid while the connection lives).
    socket: std::os::fd::RawFd,
}

impl ConnInfo {
    pub fn new(local: SocketAddr, peer: SocketAddr, secure: bool, socket: &TcpStream) -> Self {
        use std::os::fd::AsRawFd;
        Self {
            local,
            peer,
            secure,
            socket: socket.as_raw_fd(),
        }
    }
}

/// Resolves once the peer of the connection `info` describes has closed it or reset it — seen on
/// the socket itself, even while what it sent is still unread (a splice waiting for room toward
/// the agent reads nothing). The caller must hold the connection meanwhile: its socket is watched
/// through a duplicate of it.
pub async fn peer_left(info: &ConnInfo) -> io::Result<()> {
    use std::os::fd::BorrowedFd;
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;
    // SAFETY: the caller holds the connection, which owns the socket, for as long as this runs.
    let borrowed = unsafe { BorrowedFd::borrow_raw(info.socket) };
    let duplicate = borrowed.try_clone_to_owned()?;
    // SAFETY: `duplicate` is an open descriptor this `AsyncFd` owns, and no one else closes it.
    let watched = unsafe { AsyncFd::register_with_interest(duplicate, Interest::READABLE) }?;
    loop {
        let mut ready = watched.readable().await?;
        if ready.ready().is_read_closed() || ready.ready().is_error() {
            return Ok(());
        }
        ready.clear_ready();
    }
}

/// Makes the close of the connection `info` describes a TCP reset (SO_LINGER 0): a lab's
/// reset-peer toxic. The caller must hold the connection meanwhile.
pub fn reset_on_close(info: &ConnInfo) {
    use std::os::fd::BorrowedFd;
    // SAFETY: the caller holds the connection, which owns the socket, while this runs.
    let borrowed = unsafe { BorrowedFd::borrow_raw(info.socket) };
    if let Err(e) = socket2::SockRef::from(&borrowed).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(
            "cannot make the connection from {} reset on close: {e}",
            info.peer
        );
    }
}

/// The application protocol a TLS connection negotiated (ALPN), or plain HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// A connection's place among the `--max-connections`. The connection's task holds it, and so does
/// whatever the connection becomes after an HTTP upgrade (an agent's tunnel, a spliced `kubectl
/// exec`): those outlive the HTTP exchange but hold the same socket, so they count too. The place
/// is given back when the last holder lets go.
#[derive(Clone)]
pub struct ConnectionSlot {
    _permit: Arc<OwnedSemaphorePermit>,
}

impl ConnectionSlot {
    pub fn new(permit: OwnedSemaphorePermit) -> Self {
        Self {
            _permit: Arc::new(permit),
        }
    }
}

/// A byte stream a handler serves.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// What a listener hands each accepted (and, over TLS, handshaken) connection to.
pub trait Handler: Clone + Send + Sync + 'static {
    /// Serves one connection; `slot` is its place among the open connections, to be kept by
    /// anything that goes on with the connection after this returns.
    fn serve(
        &self,
        io: impl Io,
        info: ConnInfo,
        protocol: Protocol,
        slot: ConnectionSlot,
    ) -> impl Future<Output = ()> + Send;
}

/// Chooses the TLS server config for a ClientHello from `peer` to `local`.
pub trait SelectConfig: Send + Sync + 'static {
    fn select(&self, hello: &ClientHello<'_>, local: IpAddr, peer: IpAddr) -> Arc<ServerConfig>;
}

/// Open files kept free below the process's limit for everything but connections: the listeners,
/// etcd's clients, peer dials, the data directory's writes, ACME.
const MIN_FILES_HEADROOM: u64 = 64;

/// Raises the open-files soft limit to the hard limit (as Go programs do at start); the limit now.
pub fn raise_open_files_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// How many connections may be open at once: `configured`, or fewer when the open-files limit
/// would not leave room for everything else (an eighth of it, at least [`MIN_FILES_HEADROOM`]),
/// so that accepting never fails with "too many open files".
pub fn connection_cap(configured: usize) -> usize {
    let Some(limit) = raise_open_files_limit() else {
        return configured;
    };
    let headroom = (limit / 8).max(MIN_FILES_HEADROOM);
    let room = usize::try_from(limit.saturating_sub(headroom).max(1)).unwrap_or(usize::MAX);
    if configured <= room {
        return configured;
    }
    tracing::warn!(
        "the open-files limit is {limit}: at most {room} connections at once, not {configured} \
         (--max-connections); raise it (ulimit -n, LimitNOFILE) for more"
    );
    room
}

/// How many of `connections` tunnels may hold: all but a tenth, kept for API calls and health
/// checks, which then always find room.
pub fn tunnel_cap(connections: usize) -> usize {
    connections.saturating_sub((connections / 10).max(1)).max(1)
}

/// Sets the options every connection needs (no Nagle delay, keep-alive) on the listening socket.
/// Linux copies them to each accepted socket, so the accept path makes no `setsockopt` calls: three
/// fewer system calls per handshake. Elsewhere they are set again on each connection.
pub fn set_connection_options(socket: &socket2::Socket) -> io::Result<()> {
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE))
}

/// What a listener does with each accepted connection before its handler.
#[derive(Clone)]
pub enum Transport {
    /// TLS, with the config the selector picks for each ClientHello.
    Tls {
        selector: Arc<dyn SelectConfig>,
        handshake_timeout: Duration,
    },
    /// Plain TCP (the redirecting HTTP port; both ports behind a TLS-terminating proxy).
    Plain,
}

/// An accept loop on one socket.
pub struct Listener<H: Handler> {
    listener: TcpListener,
    /// The listener's own address when it is bound to one IP: then every connection's local address
    /// is known without a `getsockname` call.
    bound: Option<SocketAddr>,
    transport: Transport,
    handler: H,
    /// Caps open connections across all listeners, upgraded ones included (see [`ConnectionSlot`]):
    /// when it is exhausted, new clients wait in the kernel's accept queue instead of taking memory
    /// and file descriptors.
    limit: Arc<Semaphore>,
}

impl<H: Handler> Listener<H> {
    pub fn new(
        listener: TcpListener,
        transport: Transport,
        handler: H,
        limit: Arc<Semaphore>,
    ) -> Self {
        let bound = listener
            .local_addr()
            .ok()
            .filter(|addr| !addr.ip().is_unspecified());
        Self {
            listener,
            bound,
            transport,
            handler,
            limit,
        }
    }

    /// Accepts until `shutdown` fires; every connection's task is tracked by `connections`, so the
    /// caller can wait for them. Transient accept errors (e.g. out of file descriptors) back off
    /// and retry.
    pub async fn run(self, shutdown: CancellationToken, connections: TaskTracker) {
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = shutdown.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(5);
            // Taken after the accept, so that an idle listener holds no place; while none is free
            // this listener accepts nothing more (the rest wait in the kernel's queue).
            let permit = tokio::select! {
                permit = self.limit.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                _ = shutdown.cancelled() => return,
            };
            let (transport, handler) = (self.transport.clone(), self.handler.clone());
            let bound = self.bound;
            let slot = ConnectionSlot::new(permit);
            connections.spawn(async move {
                if let Err(e) =
                    handle_connection(stream, peer, bound, transport, handler, slot).await
                {
                    tracing::debug!("connection from {peer}: {e}");
                }
            });
        }
    }
}

/// One accepted connection; `bound` is the listener's address when it is bound to one IP.
async fn handle_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    bound: Option<SocketAddr>,
    transport: Transport,
    handler: H,
    slot: ConnectionSlot,
) -> io::Result<()> {
    let local = match bound {
        Some(addr) => addr,
        None => stream.local_addr()?,
    };
    #[cfg(not(target_os = "linux"))]
    set_connection_options(&socket2::SockRef::from(&stream))?;
    match transport {
        Transport::Plain => {
            let info = ConnInfo::new(local, peer, false, &stream);
            handler.serve(stream, info, Protocol::Http1, slot).await;
        }
        Transport::Tls {
            selector,
            handshake_timeout,
        } => {
            let metrics = crate::metrics::metrics();
            let info = ConnInfo::new(local, peer, true, &stream);
            let handshaking = handshake(stream, local, peer, selector.as_ref());
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
            match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => handler.serve(tls, info, Protocol::Http2, slot).await,
                // A TLS-ALPN-01 validator only looks at the certificate.
                Some(ACME_TLS_ALPN) => {
                    let mut tls = tls;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                }
                _ => handler.serve(tls, info, Protocol::Http1, slot).await,
            }
        }
    }
    Ok(())
}

/// Reads the ClientHello, picks the config for it, completes the handshake.
async fn handshake(
    stream: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    selector: &dyn SelectConfig,
) -> io::Result<TlsStream<TcpStream>> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let config = selector.select(&start.client_hello(), local.ip(), peer.ip());
    start.into_stream(config).await
}
