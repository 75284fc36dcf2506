//! The composition root: data directory → CA → leaf factory → certificate service → accounts →
//! HTTP application → listeners; and the way back down on shutdown.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::ClientHello;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounts::{AccountError, Accounts, PinError, Pinning, StagedPin};
use crate::ca_bundle::CaBundle;
use crate::certs::{CertError, CertService, PendingPin};
use crate::clusters::Clusters;
use crate::config::tls::{CacertsError, read_cacerts};
use crate::config::{Cacerts, Config, StoreSettings, TlsTermination};
use crate::http::{AppState, HttpApp, TunnelLimits};
use crate::net::{Listener, SelectConfig, Transport};
use crate::pki::{CaError, CertificateAuthority, LeafFactory, SubjectName, ca_checksum};
use crate::replicas::Replicas;
use crate::store::{Backend, DataDir, FileBackend, StoreError};
use crate::tunnel::TunnelRegistry;

/// A started server: its listeners are running on the runtime until [`RunningServer::shutdown`].
pub struct RunningServer {
    pub https: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub checksum: String,
    /// Fired to stop accepting and to ask open connections to finish.
    shutdown: CancellationToken,
    /// Every connection's task, to wait for on shutdown.
    connections: TaskTracker,
    tunnels: Arc<TunnelRegistry>,
}

impl RunningServer {
    /// Stops accepting; lets the requests in flight finish, for up to `grace` (through the tunnels,
    /// which stay open meanwhile); then closes the tunnels, whose agents see a close and reconnect to
    /// the next start. State is written as it changes, so there is nothing left to flush.
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        self.connections.close();
        tracing::info!(
            "shutting down: listeners stopped, waiting up to {grace:?} for {} connection(s)",
            self.connections.len()
        );
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "{} connection(s) still open after {grace:?}; leaving them",
                self.connections.len()
            );
        }
        let closed = self.tunnels.close_all();
        tracing::info!("{closed} tunnel(s) closed");
        // Each session sends its close frame within a second.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.tunnels.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The certificate service as the listeners ask it for a config.
struct Selector(Arc<CertService>);

impl SelectConfig for Selector {
    fn select(&self, hello: &ClientHello<'_>, local: IpAddr, peer: IpAddr) -> Arc<ServerConfig> {
        self.0.select_for_hello(hello, local, peer)
    }
}

/// The certificate service as accounts pin it.
struct Pins(Arc<CertService>);

impl Pinning for Pins {
    fn stage<'a>(
        &'a self,
        host: &SubjectName,
    ) -> Result<Option<Box<dyn StagedPin + 'a>>, PinError> {
        Ok(self
            .0
            .stage_pin(host)?
            .map(|pending| Box::new(pending) as Box<dyn StagedPin + 'a>))
    }
}

impl StagedPin for PendingPin {
    fn commit(self: Box<Self>) {
        PendingPin::commit(*self)
    }
}

/// Why corral could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use data directory {}: {source}", path.display())]
    DataDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Cacerts(#[from] CacertsError),
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error(transparent)]
    Accounts(#[from] AccountError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("lab_faults: {0}")]
    Lab(#[from] crate::lab::RegistryError),
    #[error("invalid lab_faults: {0}")]
    LabFault(#[from] crate::lab::FaultError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("--store {0:?}: this corral was built without etcd; build it with `--features etcd`")]
    NoEtcd(String),
}

/// How often a CA near its end is mentioned in the log again.
const CA_EXPIRY_CHECK: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Publishes when the CA expires (`corral_ca_expiry_timestamp_seconds`) and warns in the log, at
/// start and then daily, once it is within 30 days of its end or past it.
fn watch_ca_expiry(bundle: Arc<CaBundle>) {
    crate::metrics::metrics()
        .ca_expiry
        .set(bundle.current().ca.not_after().unix_timestamp());
    let warn = move || {
        let now = time::OffsetDateTime::now_utc();
        if let Some(warning) = bundle.current().ca.expiry_warning(now) {
            tracing::warn!("{warning}");
        }
    };
    warn();
    tokio::spawn(async move {
        let mut daily = tokio::time::interval(CA_EXPIRY_CHECK);
        daily.tick().await;
        loop {
            daily.tick().await;
            warn();
        }
    });
}

/// Loads or creates all state and starts every listener. Errors are fatal start-up errors.
pub async fn start(config: &Config) -> Result<RunningServer, StartError> {
    let dir = DataDir::open(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let store = open_backend(config.store.as_ref(), &dir)?;
    let (ca, created) = match config.store {
        None => CertificateAuthority::load_or_create(&dir, config.ca_profile)?,
        Some(_) => CertificateAuthority::load_or_create_in(store.clone(), config.ca_profile)?,
    };
    let verb = if created { "Created" } else { "Loaded" };
    tracing::info!("{verb} CA {} from {}", ca.subject(), dir.root().display());
    let ca = Arc::new(ca);
    let factory = LeafFactory::new(store.as_ref(), ca.clone(), config.cert_expiration_days)?;
    let faults = crate::lab::Faults::start(store.clone());
    let certs = Arc::new(CertService::new(
        config,
        store.clone(),
        &dir,
        factory,
        faults.clone(),
    )?);
    certs.start_background();
    let bundle = CaBundle::open(config, ca.clone(), store.clone(), &dir, certs.clone())?;
    watch_ca_expiry(bundle.clone());
    let setting = bundle.current().setting.clone();
    let checksum = bundle.current().checksum.clone();
    if checksum.is_empty() {
        tracing::info!("/cacerts is empty: clients verify the certificate with their own roots");
    } else {
        tracing::info!("CA checksum: {checksum}");
    }
    // Peers prove themselves replicas by a certificate from this CA (or the distributed bundle).
    let peer_roots = format!("{}\n{}", ca.cacerts(), setting.value);
    for table in &config.lab_faults {
        // Start-up work, before anything listens: an RSA key made here blocks nobody.
        let spec = crate::lab::FaultSpec::parse(table)?;
        certs.prepare_fault(&spec.what)?;
        faults.add(spec)?;
    }
    if let Some(chain) = certs.files_chain()
        && let Err(reason) = crate::pki::chain_check::signed_by(&chain, &setting.value)
    {
        tracing::warn!("{reason}");
    }
    // Bound before setup, so that a port in use stops the start before the admin and its banner
    // exist, and the banner can name the port really bound (with --https-port 0).
    let mut bound = Vec::new();
    for ip in &config.bind {
        bound.push((
            bind(*ip, config.https_port).await?,
            bind(*ip, config.http_port).await?,
        ));
    }
    let https_port = bound
        .first()
        .and_then(|(https, _)| https.local_addr().ok())
        .map_or(config.https_port, |addr| addr.port());
    let accounts = Accounts::open(
        store.clone(),
        config.bootstrap_password.clone().map(|s| s.0),
        config.server_url.clone(),
        Arc::new(Pins(certs.clone())),
        &banner_url(config, https_port),
    )?;
    let accounts = Arc::new(accounts);
    accounts.follow_store();
    let shutdown = CancellationToken::new();
    let tunnels = Arc::new(TunnelRegistry::new());
    let replicas = join_replicas(config, store.clone(), https_port)?;
    if let Some(replicas) = &replicas {
        let served_by = certs.clone();
        let served: crate::peering::ServedLeaf = Arc::new(move || served_by.current_leaf());
        let verifier = Arc::new(crate::peering::PeerVerifier::new(
            peer_roots.as_bytes(),
            served,
        ));
        crate::peering::start(
            replicas.clone(),
            tunnels.clone(),
            verifier,
            shutdown.clone(),
        );
    }
    let clusters = Arc::new(Clusters::open(
        store.clone(),
        replicas.as_ref().map(|r| r.id()),
    )?);
    clusters.follow_store();
    if let Some(replicas) = &replicas {
        sweep_agent_sessions(clusters.clone(), replicas.clone(), shutdown.clone());
        close_deleted_clusters(clusters.clone(), tunnels.clone(), shutdown.clone());
    }
    let max_connections = crate::net::connection_cap(config.max_connections);
    let app = HttpApp::new(Arc::new(AppState {
        ca: bundle.clone(),
        accounts: accounts.clone(),
        certs: certs.clone(),
        clusters,
        tunnels: tunnels.clone(),
        tunnel_limits: TunnelLimits {
            per_key: config.max_tunnels_per_cluster,
            slots: Arc::new(tokio::sync::Semaphore::new(crate::net::tunnel_cap(
                max_connections,
            ))),
        },
        replicas,
        agent_wait: config.agent_wait,
        https_port,
        access_log: config.access_log,
        downstream: Default::default(),
        faults,
    }))
    .with_shutdown(shutdown.clone());
    let tls = match config.tls.termination {
        TlsTermination::Corral => Transport::Tls {
            selector: Arc::new(Selector(certs)),
            handshake_timeout: config.handshake_timeout,
        },
        // The proxy in front terminates TLS: both ports speak plain HTTP.
        TlsTermination::External => Transport::Plain,
    };

    let limit = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut server = RunningServer {
        https: Vec::new(),
        http: Vec::new(),
        checksum,
        shutdown,
        connections: TaskTracker::new(),
        tunnels,
    };
    for (https, http) in bound {
        for (listener, scheme, transport, addrs) in [
            (https, "https", tls.clone(), &mut server.https),
            (http, "http", Transport::Plain, &mut server.http),
        ] {
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                addr: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
                source,
            })?;
            match (scheme, &transport) {
                ("https", Transport::Plain) => tracing::info!(
                    "Listening on https://{addr} (plain HTTP: TLS is terminated by the proxy in front)"
                ),
                _ => tracing::info!("Listening on {scheme}://{addr}"),
            }
            addrs.push(addr);
            let listener = Listener::new(listener, transport, app.clone(), limit.clone());
            let (shutdown, connections) = (server.shutdown.clone(), server.connections.clone());
            tokio::spawn(listener.run(shutdown, connections));
        }
    }
    Ok(server)
}

/// With a shared store: registers this replica (see [`crate::replicas`]) under the address its
/// peers reach it at.
fn join_replicas(
    config: &Config,
    store: Arc<dyn Backend>,
    https_port: u16,
) -> Result<Option<Arc<Replicas>>, StartError> {
    let id = match &config.advertise_address {
        Some(address) => address.clone(),
        None => {
            let ip = match config.bind.first() {
                Some(ip) if !ip.is_unspecified() => *ip,
                _ => IpAddr::from(Ipv4Addr::LOCALHOST),
            };
            SocketAddr::new(ip, https_port).to_string()
        }
    };
    let shared = config.peer_token.as_ref().map(|t| t.0.as_str());
    let Some(replicas) = Replicas::join(store, &id, shared)? else {
        return Ok(None);
    };
    tracing::info!("replica {id}: peers reach this replica there (--advertise-address)");
    Ok(Some(Arc::new(replicas)))
}

/// How often a replica deletes what agent sessions that are gone advertised.
const AGENT_SESSION_SWEEP: Duration = Duration::from_secs(60);

/// Deletes, at start and then every [`AGENT_SESSION_SWEEP`], what agent sessions of replicas that
/// are gone (or of this replica before it restarted) advertised, and the registration tokens and
/// nodes of clusters another replica deleted while they were being written.
fn sweep_agent_sessions(clusters: Arc<Clusters>, replicas: Arc<Replicas>, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let (clusters, replicas) = (clusters.clone(), replicas.clone());
            let swept = tokio::task::spawn_blocking(move || {
                let live = replicas.others();
                let orphans = clusters.sweep_orphans()?;
                let sessions =
                    clusters.sweep_agent_sessions(|id| live.iter().any(|r| r.id == id))?;
                Ok::<_, crate::store::StoreError>(orphans + sessions)
            })
            .await;
            match swept {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::debug!("deleted {n} key(s) of ended sessions or clusters"),
                Ok(Err(e)) => tracing::debug!("agent sessions and orphans not swept: {e}"),
                Err(_) => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(AGENT_SESSION_SWEEP) => {}
            }
        }
    });
}

/// How often a replica looks for tunnels of clusters another replica deleted.
const DELETED_CLUSTER_CHECK: Duration = Duration::from_secs(2);

/// Ends, every [`DELETED_CLUSTER_CHECK`], this replica's tunnels of clusters that are gone: a
/// cluster deleted through another replica (which can only end its own) loses its agents here too.
/// Reading the clusters costs a version check on the store's watched cache.
fn close_deleted_clusters(
    clusters: Arc<Clusters>,
    tunnels: Arc<TunnelRegistry>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(DELETED_CLUSTER_CHECK) => {}
            }
            let (clusters, tunnels) = (clusters.clone(), tunnels.clone());
            let _ = tokio::task::spawn_blocking(move || {
                let known = clusters.ids();
                let gone: std::collections::BTreeSet<String> = tunnels
                    .local_keys()
                    .into_iter()
                    .filter_map(|key| key.split(':').next().map(str::to_string))
                    .filter(|cluster| !known.contains(cluster))
                    .collect();
                for cluster in gone {
                    let closed = tunnels.close_cluster(&cluster);
                    tracing::info!("cluster {cluster} was deleted: ended its {closed} tunnel(s)");
                }
            })
            .await;
        }
    });
}

/// The store: the data directory, or etcd when `store` says so.
pub fn open_backend(
    store: Option<&StoreSettings>,
    dir: &DataDir,
) -> Result<Arc<dyn Backend>, StartError> {
    let Some(settings) = store else {
        return Ok(Arc::new(FileBackend::new(dir.clone())));
    };
    #[cfg(feature = "etcd")]
    {
        use crate::store::etcd::{EtcdBackend, EtcdTls, EtcdUrl};
        let tls = EtcdTls {
            ca: settings.ca.clone(),
            cert: settings.cert.clone(),
            key: settings.key.clone(),
        };
        // What every agent advertised: each replica reads what it relays to when it does.
        const UNCACHED: &[&str] = &[crate::clusters::AGENT_SESSIONS.prefix];
        let url = EtcdUrl::parse(&settings.url)?;
        let backend: Arc<dyn Backend> =
            EtcdBackend::connect(&url, &tls, settings.compaction, UNCACHED)?;
        Ok(backend)
    }
    #[cfg(not(feature = "etcd"))]
    Err(StartError::NoEtcd(settings.url.clone()))
}

/// Where the welcome banner sends the admin: server-url if set, else the default-route IP (as
/// Rancher), else localhost; with the HTTPS port bound when it is not 443.
fn banner_url(config: &Config, https_port: u16) -> String {
    if let Some(url) = &config.server_url {
        return url.to_string();
    }
    // HA: the install's hostname is where the admin goes (through the balancer, on 443).
    if let Some(hostname) = &config.hostname {
        return format!("https://{hostname}");
    }
    let host = match crate::certs::default_route_ip() {
        Some(IpAddr::V6(ip)) => format!("[{ip}]"),
        Some(ip) => ip.to_string(),
        None => "localhost".into(),
    };
    match https_port {
        443 => format!("https://{host}"),
        port => format!("https://{host}:{port}"),
    }
}

/// Binds `ip:port`. `::` is bound dual-stack (IPv4 clients arrive as mapped addresses); where the host
/// has no IPv6 at all, it falls back to `0.0.0.0`.
async fn bind(ip: IpAddr, port: u16) -> Result<TcpListener, StartError> {
    let unspecified_v6 = ip.is_ipv6() && ip.is_unspecified();
    let addr = SocketAddr::new(ip, port);
    match bind_socket(addr, unspecified_v6) {
        Ok(listener) => Ok(listener),
        Err(e) if unspecified_v6 && e.kind() == io::ErrorKind::AddrNotAvailable => {
            tracing::warn!("IPv6 is unavailable ({e}); listening on IPv4 only");
            let addr = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
            bind_socket(addr, false).map_err(|source| StartError::Bind { addr, source })
        }
        Err(source) => Err(StartError::Bind { addr, source }),
    }
}

fn bind_socket(addr: SocketAddr, dual_stack: bool) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    crate::net::set_connection_options(&socket)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Why `corral ca checksum` has no checksum to print.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("no CA in {0} yet: `corral serve` creates it on first start")]
    NoCa(String),
    #[error(transparent)]
    Store(#[from] Box<StartError>),
    #[error(transparent)]
    Cacerts(#[from] CacertsError),
}

/// The checksum of what `/cacerts` serves with `config` (`None` when it serves nothing), as the
/// server computes it at start, without creating anything.
pub fn served_checksum(config: &Config) -> Result<Option<String>, ChecksumError> {
    let value = match &config.tls.cacerts {
        Cacerts::Generated => {
            let dir = DataDir::existing(&config.data_dir);
            return stored_checksum(&dir, config.store.as_ref()).map(Some);
        }
        Cacerts::File(path) => read_cacerts(path)?,
        Cacerts::Empty => return Ok(None),
    };
    Ok(Some(ca_checksum(&value)).filter(|sum| !sum.is_empty()))
}

/// Where `corral healthcheck` finds the server that `config` describes: `/healthz` on 127.0.0.1 at
/// its HTTPS port, in plain HTTP when a proxy in front terminates TLS.
pub fn health_url(config: &Config) -> String {
    let scheme = match config.tls.termination {
        TlsTermination::Corral => "https",
        TlsTermination::External => "http",
    };
    format!("{scheme}://127.0.0.1:{}/healthz", config.https_port)
}

/// The checksum of the CA in `dir` (or in `store`), without creating anything.
pub fn stored_checksum(
    dir: &DataDir,
    store: Option<&StoreSettings>,
) -> Result<String, ChecksumError> {
    let ca = match store {
        None => CertificateAuthority::load(dir)?,
        Some(_) => CertificateAuthority::load_in(open_backend(store, dir).map_err(Box::new)?)?,
    };
    match ca {
        Some(ca) if store.is_none() => {
            let files = crate::store::FileBackend::new(dir.clone());
            Ok(ca_checksum(&crate::ca_bundle::stored_value(&ca, &files)))
        }
        Some(ca) => Ok(ca_checksum(ca.cacerts())),
        None => Err(ChecksumError::NoCa(match store {
            Some(settings) => settings.url.clone(),
            None => dir.root().display().to_string(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The accept path no longer sets these per connection: it relies on Linux copying them from the
    /// listening socket. If that ever stops holding, this fails.
    #[tokio::test]
    async fn accepted_sockets_have_nodelay_and_keepalive() {
        let listener = bind_socket("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let socket = socket2::SockRef::from(&accepted);
        assert!(socket.tcp_nodelay().unwrap(), "TCP_NODELAY");
        assert!(socket.keepalive().unwrap(), "SO_KEEPALIVE");
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(180)
        );
    }
}
