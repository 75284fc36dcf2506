//! Which certificate a connection gets, and when a new one is minted.
//!
//! The decision uses what the ClientHello says (SNI) and the local address the client reached:
//! - `per-host`: each accepted name (or, without SNI, the local IP) has its own leaf, minted on first
//!   contact under the name policy (allow-list, `max-names`, `mint-rate`) and cached;
//! - `shared`: one leaf whose SAN list grows with every accepted name, re-signed with the same key.
//!
//! A refused name never fails the handshake: the client gets the certificate for the local IP, or,
//! when that is refused too, the fallback certificate made at start.
//!
//! Once server-url is set the resolver is pinned: every client gets one certificate for its host
//! whatever it sends, and nothing is learned or minted any more (renewal aside).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rustls::ServerConfig;

use super::persisted::PersistedCert;
use super::served::{Served, TlsSettings, unix_now};
use crate::config::{CertMode, Config};
use crate::pki::{AllowList, LeafFactory, NameError, SubjectName};
use crate::state::DataDir;

/// Why a name did not get a certificate of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Invalid(NameError),
    NotAllowed,
    Capacity,
    RateLimited,
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
            Refusal::MintFailed(e) => write!(f, "minting failed: {e}"),
        }
    }
}

/// Mints, caches and selects certificates for connections.
pub struct CertResolver {
    factory: LeafFactory,
    tls: TlsSettings,
    allowed: AllowList,
    max_names: usize,
    mint_limiter: Option<DefaultDirectRateLimiter>,
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

enum Pin {
    /// `per-host` mode: a certificate for the server-url host alone.
    Own(PersistedCert),
    /// `shared` mode (classic Rancher): the shared certificate, with the host added, frozen.
    Shared,
}

enum Strategy {
    PerHost {
        certs: DashMap<SubjectName, Arc<Served>>,
        /// Entries in `certs`, kept apart because `DashMap::len` locks every shard.
        count: AtomicUsize,
    },
    Shared(PersistedCert),
}

impl CertResolver {
    pub fn new(config: &Config, dir: &DataDir, factory: LeafFactory) -> Result<Self, String> {
        let tls = TlsSettings::new(&factory, config.session_tickets).map_err(|e| e.to_string())?;
        let fallback = Self::mint_with(&factory, &tls, &fallback_names())?;
        let strategy = match config.cert_mode {
            CertMode::PerHost => Strategy::PerHost {
                certs: DashMap::new(),
                count: AtomicUsize::new(0),
            },
            CertMode::Shared => Strategy::Shared(PersistedCert::restore(
                dir.shared_cert(),
                initial_shared_names(),
                &factory,
                &tls,
                config.max_names,
                i64::from(config.rotate_days) * 86_400,
            )?),
        };
        Ok(Self {
            factory,
            tls,
            allowed: config.allowed_names.clone(),
            max_names: config.max_names,
            mint_limiter: config
                .mint_rate
                .and_then(NonZeroU32::new)
                .map(|rate| RateLimiter::direct(Quota::per_second(rate))),
            refusal_log_limiter: RateLimiter::direct(Quota::per_second(NonZeroU32::MIN)),
            renew_window: i64::from(config.rotate_days) * 86_400,
            fallback: ArcSwap::from_pointee(fallback),
            strategy,
            pinned: OnceLock::new(),
            pinned_path: dir.pinned_cert(),
        })
    }

    fn mint_with(
        factory: &LeafFactory,
        tls: &TlsSettings,
        names: &[SubjectName],
    ) -> Result<Served, String> {
        let leaf = factory.mint(names).map_err(|e| e.to_string())?;
        tls.serve(leaf).map_err(|e| e.to_string())
    }

    /// The server config for a connection that sent `sni` (if any) to `local_ip`.
    pub fn select(&self, sni: Option<&str>, local_ip: IpAddr) -> Arc<ServerConfig> {
        if let Some(pin) = self.pinned.get() {
            let cert = self.pinned_cert(pin);
            cert.renew_if_expiring(self.renew_window, |names| self.mint(names));
            return cert.current().config.clone();
        }
        let local = SubjectName::ip(local_ip);
        let requested = sni.map(SubjectName::parse);
        match &self.strategy {
            Strategy::PerHost { .. } => self.select_per_host(requested, local),
            Strategy::Shared(shared) => {
                if let Err(refusal) = self.learn_shared(shared, local) {
                    self.log_refusal("local address", &refusal);
                }
                if let Some(name) = requested
                    && let Err(refusal) =
                        self.admit(name).and_then(|n| self.learn_shared(shared, n))
                {
                    self.log_refusal("SNI", &refusal);
                }
                shared.renew_if_expiring(self.renew_window, |names| self.mint(names));
                shared.current().config.clone()
            }
        }
    }

    /// dynamiclistener's `Host`-header rule (shared mode): an IP `Host` from a non-browser client is
    /// learned like a name. Browsers (`mozilla` in the User-Agent) never add names this way.
    pub fn learn_from_host_header(&self, host: &str, user_agent: Option<&str>) {
        let Strategy::Shared(shared) = &self.strategy else {
            return;
        };
        if self.pinned.get().is_some() {
            return;
        }
        if user_agent.is_some_and(|ua| ua.to_ascii_lowercase().contains("mozilla")) {
            return;
        }
        if let Ok(name @ SubjectName::Ip(_)) = SubjectName::parse(host_without_port(host)) {
            let _ = self
                .admit(Ok(name))
                .and_then(|n| self.learn_shared(shared, n));
        }
    }

    fn select_per_host(
        &self,
        requested: Option<Result<SubjectName, NameError>>,
        local: SubjectName,
    ) -> Arc<ServerConfig> {
        if let Some(requested) = requested {
            match self.admit(requested).and_then(|name| self.per_host(name)) {
                Ok(served) => return served.config.clone(),
                Err(refusal) => self.log_refusal("SNI", &refusal),
            }
        }
        match self.per_host(local) {
            Ok(served) => served.config.clone(),
            Err(refusal) => {
                self.log_refusal("local address", &refusal);
                self.fallback().config.clone()
            }
        }
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
    /// handshakes for one name wait on the map entry, so exactly one of them mints).
    fn per_host(&self, name: SubjectName) -> Result<Arc<Served>, Refusal> {
        let Strategy::PerHost { certs, count } = &self.strategy else {
            unreachable!("per_host is only called in per-host mode");
        };
        let now = unix_now();
        if let Some(served) = certs.get(&name)
            && !served.expires_within(now, self.renew_window)
        {
            return Ok(served.clone());
        }
        match certs.entry(name) {
            Entry::Occupied(mut entry) => {
                if entry.get().expires_within(now, self.renew_window) {
                    let renewed = self.mint(std::slice::from_ref(entry.key()))?;
                    tracing::info!("renewed certificate for {}", entry.key());
                    entry.insert(renewed);
                }
                Ok(entry.get().clone())
            }
            Entry::Vacant(entry) => {
                self.check_rate()?;
                count
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < self.max_names).then_some(n + 1)
                    })
                    .map_err(|_| Refusal::Capacity)?;
                let minted = self
                    .mint(std::slice::from_ref(entry.key()))
                    .inspect_err(|_| {
                        count.fetch_sub(1, Ordering::AcqRel);
                    })?;
                tracing::info!("minted certificate for {}", entry.key());
                crate::metrics::metrics().cache_entries.inc();
                Ok(entry.insert(minted).clone())
            }
        }
    }

    fn learn_shared(&self, shared: &PersistedCert, name: SubjectName) -> Result<(), Refusal> {
        if shared.current().names.contains(&name) {
            return Ok(());
        }
        self.check_rate()?;
        shared.add(name, true, |names| self.mint(names))?;
        crate::metrics::metrics()
            .cache_entries
            .set(shared.current().names.len() as i64);
        Ok(())
    }

    /// Pins the server to one certificate for `host` (server-url's host), for good. Pinning again is a
    /// no-op; the caller guarantees the host never changes.
    pub fn pin(&self, host: &SubjectName) -> Result<(), String> {
        if self.pinned.get().is_some() {
            return Ok(());
        }
        let pin = match &self.strategy {
            Strategy::PerHost { certs, count } => {
                let cert = PersistedCert::restore(
                    self.pinned_path.clone(),
                    vec![host.clone()],
                    &self.factory,
                    &self.tls,
                    1,
                    self.renew_window,
                )?;
                // Nothing else is ever served again: free the per-host cache.
                certs.clear();
                count.store(0, Ordering::Release);
                crate::metrics::metrics().cache_entries.set(0);
                Pin::Own(cert)
            }
            Strategy::Shared(shared) => {
                shared
                    .add(host.clone(), false, |names| self.mint(names))
                    .map_err(|e| e.to_string())?;
                Pin::Shared
            }
        };
        let _ = self.pinned.set(pin);
        tracing::info!("pinned to {host}: every client now gets one certificate");
        Ok(())
    }

    fn pinned_cert<'a>(&'a self, pin: &'a Pin) -> &'a PersistedCert {
        match (pin, &self.strategy) {
            (Pin::Own(cert), _) | (Pin::Shared, Strategy::Shared(cert)) => cert,
            (Pin::Shared, Strategy::PerHost { .. }) => {
                unreachable!("a shared pin needs shared mode")
            }
        }
    }

    /// The leaf a no-SNI client of 127.0.0.1 gets: once pinned, the one every client gets.
    pub fn current_leaf(&self) -> rustls::pki_types::CertificateDer<'static> {
        match (self.pinned.get(), &self.strategy) {
            (Some(pin), _) => self.pinned_cert(pin).current().leaf().clone(),
            (None, Strategy::Shared(shared)) => shared.current().leaf().clone(),
            (None, Strategy::PerHost { .. }) => self
                .per_host(SubjectName::ip([127, 0, 0, 1].into()))
                .unwrap_or_else(|_| self.fallback())
                .leaf()
                .clone(),
        }
    }

    fn check_rate(&self) -> Result<(), Refusal> {
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

    fn log_refusal(&self, source: &str, refusal: &Refusal) {
        crate::metrics::metrics()
            .names_refused
            .with_label_values(&[refusal.label()])
            .inc();
        if self.refusal_log_limiter.check().is_ok() {
            tracing::warn!(
                "{source} refused ({refusal}); serving the default certificate (further refusals within a second are not logged)"
            );
        }
    }
}

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
mod renewal_tests {
    use super::*;
    use crate::config::ServeArgs;
    use crate::pki::{CaProfile, CertificateAuthority};

    fn resolver(mode: CertMode) -> (tempfile::TempDir, CertResolver) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let config = Config::resolve(ServeArgs {
            data_dir: Some(tmp.path().into()),
            cert_mode: Some(mode),
            cert_expiration_days: Some(30),
            ..ServeArgs::default()
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
            let first = resolver.select(Some("a.lab.test"), local);
            assert!(
                Arc::ptr_eq(&first, &resolver.select(Some("a.lab.test"), local)),
                "cached"
            );
            // A 31-day window makes the 30-day leaf "expiring".
            resolver.renew_window = 31 * 86_400;
            let renewed = resolver.select(Some("a.lab.test"), local);
            assert!(!Arc::ptr_eq(&first, &renewed), "{mode:?}: re-minted");
            resolver.renew_window = 7 * 86_400;
            assert!(Arc::ptr_eq(
                &renewed,
                &resolver.select(Some("a.lab.test"), local)
            ));
        }
    }
}
