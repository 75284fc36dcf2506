//! Which certificate a connection gets, and when a new one is minted.
//!
//! The decision uses what the ClientHello says (SNI) and the local address the client reached:
//! - `per-host`: each accepted name (or, without SNI, the local IP) has its own leaf, minted on first
//!   contact under the name policy (allow-list, `mint-rate` overall and per client) and cached. The
//!   cache holds at most `max-names` leaves and admits by frequency (moka's TinyLFU), so a flood of
//!   one-time names cannot push out the names clients really use;
//! - `shared`: one leaf whose SAN list grows with every accepted name, re-signed with the same key.
//!
//! A refused name never fails the handshake: the client gets the certificate for the local IP, or,
//! when that is refused too, the fallback certificate made at start.
//!
//! Once server-url is set the resolver is pinned: every client gets one certificate for its host
//! whatever it sends, and nothing is learned or minted any more (renewal aside).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moka::sync::Cache;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::acme::{ACME_TLS_ALPN, AcmeCert};
use super::byo::ByoCert;
use super::persisted::{PersistedCert, Restore, Staged};
use super::served::{Served, TlsSettings, unix_now};
use crate::config::{CertMode, Config, Served as ServedCert};
use crate::limits::ClientLimiter;
use crate::pki::{AllowList, LeafFactory, NameError, SubjectName};
use crate::store::DataDir;

/// Why a name did not get a certificate of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Invalid(NameError),
    NotAllowed,
    Capacity,
    RateLimited,
    ClientRateLimited,
    MintFailed(String),
}

impl Refusal {
    /// The `reason` label of `corral_names_refused_total`.
    fn label(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) => "invalid",
            Refusal::NotAllowed => "not_allowed",
            Refusal::Capacity => "capacity",
            Refusal::RateLimited => "rate",
            Refusal::ClientRateLimited => "client_rate",
            Refusal::MintFailed(_) => "mint_failed",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Invalid(e) => write!(f, "invalid name: {e}"),
            Refusal::NotAllowed => f.write_str("not in allowed-names"),
            Refusal::Capacity => f.write_str("max-names reached"),
            Refusal::RateLimited => f.write_str("mint-rate exceeded"),
            Refusal::ClientRateLimited => f.write_str("mint-rate-per-client exceeded"),
            Refusal::MintFailed(e) => write!(f, "minting failed: {e}"),
        }
    }
}

/// Mints, caches and selects certificates for connections.
pub struct CertResolver {
    factory: LeafFactory,
    tls: TlsSettings,
    allowed: AllowList,
    mint_limiter: Option<DefaultDirectRateLimiter>,
    /// Mints per client (an IPv4 address or an IPv6 /64), so one client cannot use up `mint_limiter`.
    client_mint_limiter: Option<ClientLimiter>,
    /// Refusals are logged at most this often, so a flood cannot flood the log too.
    refusal_log_limiter: DefaultDirectRateLimiter,
    /// Leaves expiring within this many seconds are re-minted on their next use.
    renew_window: i64,
    /// Served when nothing better is allowed: localhost, loopback and the default-route IP.
    fallback: ArcSwap<Served>,
    strategy: Strategy,
    /// Set once, when server-url is: the certificate every client gets from then on.
    pinned: OnceLock<Pin>,
    /// Where the pinned certificate of `per-host` mode is kept.
    pinned_path: std::path::PathBuf,
}

/// The certificate choice for a hello whose certificate does not exist yet, made by rustls through
/// [`ResolvesServerCert`] once it has checked the hello's protocol version.
struct DeferredChoice {
    resolver: Arc<CertResolver>,
    sni: Option<String>,
    local_ip: IpAddr,
    client: IpAddr,
}

impl std::fmt::Debug for DeferredChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredChoice")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for DeferredChoice {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let resolver = &self.resolver;
        // A hello that cannot complete (no protocol, suite, signature scheme or group in common)
        // gets the fallback certificate, which exists already; rustls then refuses the hello.
        let served = match resolver.tls.can_complete(&hello) {
            true => resolver.choose(self.sni.as_deref(), self.local_ip, self.client),
            false => resolver.fallback(),
        };
        Some(served.certified().clone())
    }
}

/// A pin made but not served yet (see [`CertResolver::stage_pin`]).
pub struct PendingPin<'a> {
    resolver: &'a CertResolver,
    host: SubjectName,
    staged: StagedPin<'a>,
}

enum StagedPin<'a> {
    /// `per-host` mode: the certificate for the host alone; `fresh` when it is not on disk yet.
    Own { cert: PersistedCert, fresh: bool },
    /// `shared` mode: the shared certificate with the host added.
    Shared(Staged<'a>),
}

impl PendingPin<'_> {
    /// Serves the pinned certificate from the next handshake on, then stores it. The caller has
    /// saved server-url already: that is the record. A certificate that cannot be stored is still
    /// served (it matches the setting) and is made again from the setting at the next start.
    pub fn commit(self) {
        let resolver = self.resolver;
        let stored = match self.staged {
            StagedPin::Own { cert, fresh } => {
                let stored = if fresh {
                    cert.persist_current()
                } else {
                    Ok(())
                };
                let _ = resolver.pinned.set(Pin::Own(cert));
                // Nothing else is ever served again: free the per-host cache.
                if let Strategy::PerHost(certs) = &resolver.strategy {
                    certs.invalidate_all();
                }
                stored
            }
            StagedPin::Shared(staged) => {
                let stored = staged.persist();
                staged.publish();
                if let Strategy::Shared(shared) = &resolver.strategy {
                    shared.freeze();
                }
                let _ = resolver.pinned.set(Pin::Shared);
                stored
            }
        };
        if let Err(e) = stored {
            tracing::warn!(
                "cannot store the pinned certificate ({e}); it is served, and made again from server-url at the next start"
            );
        }
        tracing::info!(
            "pinned to {}: every client now gets one certificate",
            self.host
        );
    }
}

enum Pin {
    /// `per-host` mode: a certificate for the server-url host alone.
    Own(PersistedCert),
    /// `shared` mode (classic Rancher): the shared certificate, with the host added, frozen.
    Shared,
}

enum Strategy {
    PerHost(Cache<SubjectName, Arc<Served>>),
    Shared(PersistedCert),
    /// Bring-your-own files: served to everyone, never minted, never pinned.
    Files(Arc<ByoCert>),
    /// From an ACME server: served to everyone once obtained (the fallback until then).
    Acme(Arc<AcmeCert>),
}

fn per_second(rate: Option<u32>) -> Option<Quota> {
    rate.and_then(NonZeroU32::new).map(Quota::per_second)
}

impl CertResolver {
    pub fn new(config: &Config, dir: &DataDir, factory: LeafFactory) -> Result<Self, String> {
        let tls = TlsSettings::new(&factory, config.session_tickets).map_err(|e| e.to_string())?;
        let fallback = Self::mint_with(&factory, &tls, &fallback_names())?;
        let strategy = match (&config.tls.served, config.cert_mode) {
            (ServedCert::Files { cert, key }, _) => {
                Strategy::Files(Arc::new(ByoCert::load(cert, key, config.session_tickets)?))
            }
            (ServedCert::Acme(settings), _) => Strategy::Acme(Arc::new(AcmeCert::new(
                settings.clone(),
                dir.root(),
                config.session_tickets,
            )?)),
            (ServedCert::Minted, CertMode::PerHost) => {
                Strategy::PerHost(Cache::new(config.max_names.try_into().unwrap_or(u64::MAX)))
            }
            (ServedCert::Minted, CertMode::Shared) => {
                let (shared, fresh) = PersistedCert::load_or_mint(
                    dir.shared_cert(),
                    initial_shared_names(),
                    Restore::Accumulate,
                    &factory,
                    &tls,
                    config.max_names,
                    i64::from(config.rotate_days) * 86_400,
                )?;
                if fresh {
                    shared.persist_current()?;
                }
                Strategy::Shared(shared)
            }
        };
        Ok(Self {
            factory,
            tls,
            allowed: config.allowed_names.clone(),
            mint_limiter: per_second(config.mint_rate).map(RateLimiter::direct),
            client_mint_limiter: per_second(config.mint_rate_per_client).map(ClientLimiter::new),
            refusal_log_limiter: RateLimiter::direct(Quota::per_second(NonZeroU32::MIN)),
            renew_window: i64::from(config.rotate_days) * 86_400,
            fallback: ArcSwap::from_pointee(fallback),
            strategy,
            pinned: OnceLock::new(),
            pinned_path: dir.pinned_cert(),
        })
    }

    /// Starts what runs beside the listeners (needs the runtime, so not in `new`): the watch for a
    /// rotation of bring-your-own files, or the ACME client.
    pub fn start_background(&self) {
        match &self.strategy {
            Strategy::Files(files) => files.clone().watch(),
            Strategy::Acme(acme) => acme.clone().run(),
            _ => {}
        }
    }

    /// ACME mode: the key authorization for an HTTP-01 token being validated.
    pub fn acme_challenge(&self, token: &str) -> Option<String> {
        match &self.strategy {
            Strategy::Acme(acme) => acme.challenge(token),
            _ => None,
        }
    }

    /// Bring-your-own mode: the chain served.
    pub fn files_chain(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        match &self.strategy {
            Strategy::Files(files) => Some(files.chain()),
            _ => None,
        }
    }

    fn mint_with(
        factory: &LeafFactory,
        tls: &TlsSettings,
        names: &[SubjectName],
    ) -> Result<Served, String> {
        let leaf = factory.mint(names).map_err(|e| e.to_string())?;
        tls.serve(leaf).map_err(|e| e.to_string())
    }

    /// The server config for a ClientHello from `client` to `local_ip`: in ACME mode a TLS-ALPN-01
    /// validator gets its challenge certificate; everyone else what [`CertResolver::select`] picks.
    pub fn select_for_hello(
        self: &Arc<Self>,
        hello: &rustls::server::ClientHello<'_>,
        local_ip: IpAddr,
        client: IpAddr,
    ) -> Arc<ServerConfig> {
        let sni = hello.server_name();
        if let Strategy::Acme(acme) = &self.strategy
            && let Some(name) = sni
            && hello
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
            && let Some(config) = acme.alpn_challenge(&name.to_ascii_lowercase())
        {
            return config;
        }
        self.select(sni, local_ip, client)
    }

    /// The server config for a connection from `client` that sent `sni` (if any) to `local_ip`.
    ///
    /// When the certificate it needs exists (a cached name, a name the shared certificate has, the
    /// pin) the config is returned at once. Otherwise the choice — which may mint, learn a name or
    /// log a refusal — is deferred into the handshake ([`DeferredChoice`]): rustls makes it only after
    /// it has accepted the hello's protocol version, and it is made only when the rest of the hello
    /// can complete with a minted certificate. A hello that will be refused never mints.
    pub fn select(
        self: &Arc<Self>,
        sni: Option<&str>,
        local_ip: IpAddr,
        client: IpAddr,
    ) -> Arc<ServerConfig> {
        let ready = match &self.strategy {
            Strategy::Files(files) => Some(files.current().config.clone()),
            Strategy::Acme(acme) => Some(self.acme_or_fallback(acme).config.clone()),
            Strategy::PerHost(certs) => self
                .pinned_served()
                .or_else(|| self.cached_per_host(certs, sni, local_ip))
                .map(|served| served.config.clone()),
            Strategy::Shared(shared) => self
                .pinned_served()
                .or_else(|| self.shared_if_known(shared, sni, local_ip))
                .map(|served| served.config.clone()),
        };
        ready.unwrap_or_else(|| {
            self.tls.deferred(Arc::new(DeferredChoice {
                resolver: self.clone(),
                sni: sni.map(str::to_string),
                local_ip,
                client,
            }))
        })
    }

    /// The certificate for a connection, minting or learning names as needed (what [`select`]
    /// defers to the handshake).
    ///
    /// [`select`]: CertResolver::select
    pub fn choose(&self, sni: Option<&str>, local_ip: IpAddr, client: IpAddr) -> Arc<Served> {
        let requested = || sni.map(SubjectName::parse);
        let local = SubjectName::ip(local_ip);
        match &self.strategy {
            Strategy::Files(files) => files.current(),
            Strategy::Acme(acme) => self.acme_or_fallback(acme),
            Strategy::PerHost(_) => self
                .pinned_served()
                .unwrap_or_else(|| self.choose_per_host(requested(), local, client)),
            Strategy::Shared(shared) => self
                .pinned_served()
                .unwrap_or_else(|| self.choose_shared(shared, requested(), local, client)),
        }
    }

    /// Per-host mode: the cached, unexpired leaf for the SNI (or, without SNI, the local IP), if any.
    fn cached_per_host(
        &self,
        certs: &Cache<SubjectName, Arc<Served>>,
        sni: Option<&str>,
        local_ip: IpAddr,
    ) -> Option<Arc<Served>> {
        let name = match sni {
            Some(sni) => SubjectName::parse(sni)
                .ok()
                .filter(|name| self.allowed.allows(name))?,
            None => SubjectName::ip(local_ip),
        };
        certs
            .get(&name)
            .filter(|served| !served.expires_within(unix_now(), self.renew_window))
    }

    /// Shared mode: the certificate, if it already has the local IP and the SNI (nothing to learn).
    fn shared_if_known(
        &self,
        shared: &PersistedCert,
        sni: Option<&str>,
        local_ip: IpAddr,
    ) -> Option<Arc<Served>> {
        let current = shared.current();
        let knows = |name: &SubjectName| current.names.contains(name);
        let sni_known = match sni {
            Some(sni) => SubjectName::parse(sni).is_ok_and(|name| knows(&name)),
            None => true,
        };
        (sni_known
            && knows(&SubjectName::ip(local_ip))
            && !current.expires_within(unix_now(), self.renew_window))
        .then(|| current.served.clone())
    }

    /// ACME mode: the obtained certificate, or the fallback until there is one.
    fn acme_or_fallback(&self, acme: &AcmeCert) -> Arc<Served> {
        acme.current().unwrap_or_else(|| self.fallback())
    }

    /// Once pinned, the one certificate every client gets (renewed when it nears expiry).
    fn pinned_served(&self) -> Option<Arc<Served>> {
        let cert = self.pinned_cert(self.pinned.get()?);
        cert.renew_if_expiring(self.renew_window, |names| self.mint(names));
        Some(cert.current().served.clone())
    }

    /// Shared mode: the local address and the SNI are learned into the one certificate, if allowed.
    fn choose_shared(
        &self,
        shared: &PersistedCert,
        requested: Option<Result<SubjectName, NameError>>,
        local: SubjectName,
        client: IpAddr,
    ) -> Arc<Served> {
        let served = "the shared certificate without it";
        if let Err(refusal) = self.learn_shared(shared, local, client) {
            self.log_refusal("local address", &refusal, served);
        }
        if let Some(name) = requested
            && let Err(refusal) = self
                .admit(name)
                .and_then(|n| self.learn_shared(shared, n, client))
        {
            self.log_refusal("SNI", &refusal, served);
        }
        shared.renew_if_expiring(self.renew_window, |names| self.mint(names));
        shared.current().served.clone()
    }

    /// Certificates held for clients: the per-host cache's entries, or the shared certificate's
    /// names (for `corral_certificate_cache_entries`, computed when scraped).
    pub fn cached_names(&self) -> usize {
        match &self.strategy {
            Strategy::PerHost(certs) => {
                // moka counts lazily: settle its books first (a scrape can afford it).
                certs.run_pending_tasks();
                certs.entry_count().try_into().unwrap_or(usize::MAX)
            }
            Strategy::Shared(shared) => shared.current().names.len(),
            Strategy::Files(_) | Strategy::Acme(_) => 0,
        }
    }

    /// dynamiclistener's `Host`-header rule (shared mode): an IP `Host` from a non-browser client is
    /// learned like a name. Browsers (`mozilla` in the User-Agent) never add names this way.
    pub fn learn_from_host_header(&self, host: &str, user_agent: Option<&str>, client: IpAddr) {
        let Strategy::Shared(shared) = &self.strategy else {
            return;
        };
        if self.pinned.get().is_some() {
            return;
        }
        let browser = |ua: &str| {
            ua.as_bytes()
                .windows(b"mozilla".len())
                .any(|w| w.eq_ignore_ascii_case(b"mozilla"))
        };
        if user_agent.is_some_and(browser) {
            return;
        }
        if let Ok(name @ SubjectName::Ip(_)) = SubjectName::parse(host_without_port(host)) {
            let _ = self
                .admit(Ok(name))
                .and_then(|n| self.learn_shared(shared, n, client));
        }
    }

    fn choose_per_host(
        &self,
        requested: Option<Result<SubjectName, NameError>>,
        local: SubjectName,
        client: IpAddr,
    ) -> Arc<Served> {
        let mut refused_sni = None;
        if let Some(requested) = requested {
            match self
                .admit(requested)
                .and_then(|name| self.per_host(name, client))
            {
                Ok(served) => return served,
                Err(refusal) => refused_sni = Some(refusal),
            }
        }
        let (served, what) = match self.per_host(local.clone(), client) {
            Ok(served) => (served, format!("the certificate for {local}")),
            Err(refusal) => {
                let what = FALLBACK_DESCRIPTION.to_string();
                self.log_refusal("local address", &refusal, &what);
                (self.fallback(), what)
            }
        };
        if let Some(refusal) = refused_sni {
            self.log_refusal("SNI", &refusal, &what);
        }
        served
    }

    /// The checks a name passes before it may get a certificate: valid, and on the allow-list.
    fn admit(&self, name: Result<SubjectName, NameError>) -> Result<SubjectName, Refusal> {
        let name = name.map_err(Refusal::Invalid)?;
        match self.allowed.allows(&name) {
            true => Ok(name),
            false => Err(Refusal::NotAllowed),
        }
    }

    /// The per-host leaf for `name`: cached, renewed when expiring, or minted once (concurrent first
    /// handshakes for one name wait for the same mint). The cache decides whether a new leaf stays.
    fn per_host(&self, name: SubjectName, client: IpAddr) -> Result<Arc<Served>, Refusal> {
        let Strategy::PerHost(certs) = &self.strategy else {
            unreachable!("per_host is only called in per-host mode");
        };
        if let Some(served) = certs.get(&name) {
            if !served.expires_within(unix_now(), self.renew_window) {
                return Ok(served);
            }
            let renewed = self.mint(std::slice::from_ref(&name))?;
            tracing::info!("renewed certificate for {name}");
            certs.insert(name, renewed.clone());
            return Ok(renewed);
        }
        let minted = certs
            .try_get_with_by_ref(&name, || {
                self.check_rate(client)?;
                let minted = self.mint(std::slice::from_ref(&name))?;
                tracing::info!("minted certificate for {name}");
                Ok(minted)
            })
            .map_err(|refusal: Arc<Refusal>| (*refusal).clone())?;
        Ok(minted)
    }

    fn learn_shared(
        &self,
        shared: &PersistedCert,
        name: SubjectName,
        client: IpAddr,
    ) -> Result<(), Refusal> {
        if shared.current().names.contains(&name) {
            return Ok(());
        }
        self.check_rate(client)?;
        shared.add(name, true, |names| self.mint(names))?;
        Ok(())
    }

    /// Pins the server to one certificate for `host` (server-url's host), for good: at start, when
    /// server-url is already set. Pinning again is a no-op; the caller guarantees the host never
    /// changes.
    pub fn pin(&self, host: &SubjectName) -> Result<(), String> {
        if let Some(pending) = self.stage_pin(host)? {
            pending.commit();
        }
        Ok(())
    }

    /// The certificate pinning to `host` will serve, made but not served: the caller saves
    /// server-url, then [`PendingPin::commit`]s. Dropped instead (the save failed), nothing changes,
    /// so the setting and the served certificate always agree. `None` when there is nothing to pin:
    /// already pinned, or bring-your-own and ACME certificates, which every client gets anyway.
    pub fn stage_pin(&self, host: &SubjectName) -> Result<Option<PendingPin<'_>>, String> {
        if self.pinned.get().is_some() {
            return Ok(None);
        }
        let staged = match &self.strategy {
            Strategy::Files(_) | Strategy::Acme(_) => return Ok(None),
            Strategy::PerHost(_) => {
                let (cert, fresh) = PersistedCert::load_or_mint(
                    self.pinned_path.clone(),
                    vec![host.clone()],
                    Restore::Exactly,
                    &self.factory,
                    &self.tls,
                    1,
                    self.renew_window,
                )?;
                StagedPin::Own { cert, fresh }
            }
            Strategy::Shared(shared) => StagedPin::Shared(
                shared
                    .stage_add(host.clone(), false, |names| self.mint(names))
                    .map_err(|e| e.to_string())?,
            ),
        };
        Ok(Some(PendingPin {
            resolver: self,
            host: host.clone(),
            staged,
        }))
    }

    fn pinned_cert<'a>(&'a self, pin: &'a Pin) -> &'a PersistedCert {
        match (pin, &self.strategy) {
            (Pin::Own(cert), _) | (Pin::Shared, Strategy::Shared(cert)) => cert,
            (Pin::Shared, _) => unreachable!("a shared pin needs shared mode"),
        }
    }

    /// The leaf a no-SNI client of 127.0.0.1 gets: once pinned, the one every client gets.
    pub fn current_leaf(&self) -> rustls::pki_types::CertificateDer<'static> {
        match (self.pinned.get(), &self.strategy) {
            (Some(pin), _) => self.pinned_cert(pin).current().leaf().clone(),
            (_, Strategy::Files(files)) => files.current().leaf().clone(),
            (_, Strategy::Acme(acme)) => self.acme_or_fallback(acme).leaf().clone(),
            (None, Strategy::Shared(shared)) => shared.current().leaf().clone(),
            (None, Strategy::PerHost(_)) => {
                let loopback = IpAddr::from([127, 0, 0, 1]);
                self.per_host(SubjectName::ip(loopback), loopback)
                    .unwrap_or_else(|_| self.fallback())
                    .leaf()
                    .clone()
            }
        }
    }

    /// Spends one mint from `client`'s budget and then from the global one.
    fn check_rate(&self, client: IpAddr) -> Result<(), Refusal> {
        if let Some(limiter) = &self.client_mint_limiter
            && !limiter.allow(client)
        {
            return Err(Refusal::ClientRateLimited);
        }
        match &self.mint_limiter {
            Some(limiter) if limiter.check().is_err() => Err(Refusal::RateLimited),
            _ => Ok(()),
        }
    }

    fn mint(&self, names: &[SubjectName]) -> Result<Arc<Served>, Refusal> {
        let metrics = crate::metrics::metrics();
        let timer = metrics.mint_seconds.start_timer();
        let served = Self::mint_with(&self.factory, &self.tls, names)
            .map(Arc::new)
            .map_err(Refusal::MintFailed)?;
        timer.observe_duration();
        metrics.minted.inc();
        Ok(served)
    }

    fn fallback(&self) -> Arc<Served> {
        let current = self.fallback.load_full();
        if current.expires_within(unix_now(), self.renew_window)
            && let Ok(renewed) = self.mint(&fallback_names())
        {
            self.fallback.store(renewed.clone());
            return renewed;
        }
        current
    }

    /// Counts a refusal and logs it (at most once a second), with what is served instead.
    fn log_refusal(&self, source: &str, refusal: &Refusal, served: &str) {
        crate::metrics::metrics()
            .names_refused
            .with_label_values(&[refusal.label()])
            .inc();
        if self.refusal_log_limiter.check().is_ok() {
            tracing::warn!(
                "{source} refused ({refusal}); serving {served} (further refusals within a second are not logged)"
            );
        }
    }
}

/// How the log names the fallback certificate.
const FALLBACK_DESCRIPTION: &str =
    "the fallback certificate (localhost, 127.0.0.1, ::1 and the default-route IP)";

/// The fallback certificate's names: the server's own addresses.
fn fallback_names() -> Vec<SubjectName> {
    let mut names = vec![
        SubjectName::Dns("localhost".into()),
        SubjectName::ip([127, 0, 0, 1].into()),
        SubjectName::ip(std::net::Ipv6Addr::LOCALHOST.into()),
    ];
    names.extend(default_route_ip().map(SubjectName::ip));
    names
}

/// dynamiclistener's initial SANs on Rancher's `:443` listener.
fn initial_shared_names() -> Vec<SubjectName> {
    let mut names = vec![
        SubjectName::Dns("localhost".into()),
        SubjectName::Dns("rancher.cattle-system".into()),
        SubjectName::ip([127, 0, 0, 1].into()),
    ];
    names.extend(default_route_ip().map(SubjectName::ip));
    names
}

/// The IP of the default-route interface, as Kubernetes' `ChooseHostInterface` picks it.
pub fn default_route_ip() -> Option<IpAddr> {
    local_ip_address::local_ip().ok()
}

/// `host[:port]` or `[v6]:port` → the host part.
pub fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ports() {
        assert_eq!(host_without_port("a.test:8443"), "a.test");
        assert_eq!(host_without_port("[::1]:8443"), "::1");
        assert_eq!(host_without_port("::1"), "::1");
        assert_eq!(host_without_port("10.0.0.1"), "10.0.0.1");
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;
    use crate::config::ServeArgs;
    use crate::pki::{CaProfile, CertificateAuthority};

    fn resolver(mode: CertMode) -> (tempfile::TempDir, CertResolver) {
        resolver_with(ServeArgs {
            cert_mode: Some(mode),
            ..ServeArgs::default()
        })
    }

    fn resolver_with(args: ServeArgs) -> (tempfile::TempDir, CertResolver) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let config = Config::resolve(ServeArgs {
            data_dir: Some(tmp.path().into()),
            cert_expiration_days: Some(30),
            ..args
        })
        .unwrap();
        let (ca, _) = CertificateAuthority::load_or_create(&dir, CaProfile::Cattle).unwrap();
        let factory = LeafFactory::new(&dir, Arc::new(ca), 30).unwrap();
        (tmp, CertResolver::new(&config, &dir, factory).unwrap())
    }

    #[test]
    fn expiring_leaves_are_reminted_on_next_use() {
        for mode in [CertMode::PerHost, CertMode::Shared] {
            let (_tmp, mut resolver) = resolver(mode);
            let local: IpAddr = [127, 0, 0, 1].into();
            let first = resolver.choose(Some("a.lab.test"), local, local);
            assert!(
                Arc::ptr_eq(&first, &resolver.choose(Some("a.lab.test"), local, local)),
                "cached"
            );
            // A 31-day window makes the 30-day leaf "expiring".
            resolver.renew_window = 31 * 86_400;
            let renewed = resolver.choose(Some("a.lab.test"), local, local);
            assert!(!Arc::ptr_eq(&first, &renewed), "{mode:?}: re-minted");
            resolver.renew_window = 7 * 86_400;
            assert!(Arc::ptr_eq(
                &renewed,
                &resolver.choose(Some("a.lab.test"), local, local)
            ));
        }
    }

    /// A flood of one-time names, with the name in use untouched meanwhile: a plain LRU or FIFO
    /// cache would evict it; the TinyLFU cache keeps its leaf.
    #[test]
    fn one_time_names_do_not_evict_a_name_in_use() {
        let (_tmp, resolver) = resolver_with(ServeArgs {
            max_names: Some(50),
            mint_rate: Some(0),
            mint_rate_per_client: Some(0),
            ..ServeArgs::default()
        });
        let local: IpAddr = [127, 0, 0, 1].into();
        let select = |name: &str| resolver.choose(Some(name), local, local);
        // A full cache first (moka counts frequencies once it is half full), then one name used often.
        for i in 0..50 {
            select(&format!("fill{i}.lab.test"));
        }
        for _ in 0..20 {
            select("app.lab.test");
        }
        resolver.cached_names();
        let kept = select("app.lab.test");
        for i in 0..500 {
            select(&format!("flood{i}.lab.test"));
        }
        assert!(resolver.cached_names() <= 50);
        assert!(Arc::ptr_eq(&kept, &select("app.lab.test")), "evicted");
    }
}
