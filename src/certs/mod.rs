//! Which certificate a ClientHello gets — no sockets here. The [`CertService`] asks one
//! [`CertSource`] per strategy (per-host leaves, the shared certificate, bring-your-own files, ACME)
//! until server-url pins it; from then on every client gets one certificate, whatever it sends.
//! Learning and pinned are the service's two stages, swapped atomically: a pin can only be made from
//! a source that has one to offer, and is never undone.
//!
//! The hot path is straight: load the stage, ask the source for a config that exists already, done.
//! Anything that may mint, learn a name or log a refusal is deferred into the handshake
//! ([`DeferredChoice`]): rustls makes it only after it has accepted the hello's protocol version, and
//! it is made only when the rest of the hello can complete with a minted certificate. A hello that
//! will be refused never mints.

pub mod acme;
mod admission;
mod error;
pub mod files;
mod ingress;
mod lab;
mod minter;
mod per_host;
mod persisted;
mod shared;
mod source;
pub mod template;

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use admission::Refusal;
pub use error::CertError;
pub use ingress::INGRESS;
pub use minter::default_route_ip;
pub use source::CertSource;

use admission::Admission;
use minter::Minter;
use persisted::PersistedCert;
use source::PinPlan;
use template::{ConfigTemplate, Served};

use crate::config::{CertMode, CertOrigin, Config};
use crate::pki::{ACME_TLS_ALPN, LeafFactory, SubjectName};
use crate::store::{Backend, DataDir};

/// Mints, caches and selects certificates for connections.
pub struct CertService {
    /// What the current CA signs; replaced whole when the CA is rotated.
    current: ArcSwap<Generation>,
    /// How to build a generation again for a new CA; `None` where corral's CA signs nothing
    /// served (bring-your-own, ACME) or replicas share it (`--hostname`).
    rebuild: Option<Rebuild>,
    /// The lab faults, whose certificates each generation prepares.
    faults: Arc<crate::lab::Faults>,
}

/// Everything made from one CA: the stage, the minter that signs with it, lab scenarios.
struct Generation {
    stage: ArcSwap<Stage>,
    minter: Arc<Minter>,
    /// Lab certificate scenarios, laid over the stage.
    lab: lab::LabCerts,
}

struct Rebuild {
    config: Config,
    store: Arc<dyn Backend>,
    dir: DataDir,
}

enum Stage {
    /// Before server-url is set: the configured source chooses, learning and minting names.
    Learning(Arc<dyn CertSource>),
    /// Once it is: one certificate for every client (renewed when it nears expiry).
    Pinned(Pinned),
}

struct Pinned {
    cert: Arc<PersistedCert>,
    minter: Arc<Minter>,
    /// server-url's host, which a new CA's generation is pinned to again.
    host: SubjectName,
}

impl Pinned {
    fn served(&self) -> Arc<Served> {
        self.cert.renew_if_expiring(&self.minter);
        self.cert.current().served.clone()
    }
}

impl CertService {
    /// The service for `config`'s certificates: sources that keep state keep it in `store`
    /// (bring-your-own files and ACME's files live in `dir`).
    pub fn new(
        config: &Config,
        store: Arc<dyn Backend>,
        dir: &DataDir,
        factory: LeafFactory,
        faults: Arc<crate::lab::Faults>,
    ) -> Result<Self, CertError> {
        let generation = Generation::build(config, store.clone(), dir, factory, faults.clone())?;
        let rebuild = (matches!(config.tls.origin, CertOrigin::Minted)
            && config.hostname.is_none())
        .then(|| Rebuild {
            config: config.clone(),
            store,
            dir: dir.clone(),
        });
        Ok(Self {
            current: ArcSwap::from_pointee(generation),
            rebuild,
            faults,
        })
    }

    /// Whether [`CertService::rotate_ca`] can serve a new CA's certificates.
    pub fn rotatable(&self) -> bool {
        self.rebuild.is_some()
    }

    /// Serves certificates of `factory`'s CA from the next handshake on (a CA rotation): a new
    /// generation, pinned to the same host if the old one was; names are minted again as clients
    /// come. [`CertError::NotRotatable`] where corral's CA signs nothing served.
    pub fn rotate_ca(&self, factory: LeafFactory) -> Result<(), CertError> {
        let rebuild = self.rebuild.as_ref().ok_or(CertError::NotRotatable)?;
        let next = Arc::new(Generation::build(
            &rebuild.config,
            rebuild.store.clone(),
            &rebuild.dir,
            factory,
            self.faults.clone(),
        )?);
        // The active faults' keys and CAs, for the new CA, before its first handshake.
        next.prepare_faults(&self.faults);
        let pinned_to = match &**self.current.load().stage.load() {
            Stage::Pinned(pinned) => Some(pinned.host.clone()),
            Stage::Learning(_) => None,
        };
        if let Some(host) = pinned_to
            && let Some(source) = next.learning()
            && let Some(plan) = source.prepare_pin(&host)?
        {
            PendingPin {
                generation: next.clone(),
                host,
                plan,
            }
            .commit();
        }
        self.current.store(next);
        Ok(())
    }
}

impl Generation {
    /// Makes what the active certificate faults need (see [`CertService::prepare_fault`]); one
    /// that cannot be made is logged and left to its first handshake.
    fn prepare_faults(&self, faults: &crate::lab::Faults) {
        let active = faults.list(crate::support::unix_now_ms());
        self.lab.prepare_faults(&self.minter, &active);
    }

    fn build(
        config: &Config,
        store: Arc<dyn Backend>,
        dir: &DataDir,
        factory: LeafFactory,
        faults: Arc<crate::lab::Faults>,
    ) -> Result<Self, CertError> {
        let template = ConfigTemplate::new(&factory, config.session_tickets)?;
        let renew_window = i64::from(config.rotate_days) * 86_400;
        let minter = Arc::new(Minter::new(factory, template, renew_window)?);
        let admission = || {
            Arc::new(Admission::new(
                config.allowed_names.clone(),
                config.mint_rate,
                config.mint_rate_per_client,
            ))
        };
        let source: Arc<dyn CertSource> = match (&config.tls.origin, config.cert_mode) {
            (CertOrigin::Files { cert, key }, _) => {
                Arc::new(files::ByoCert::load(cert, key, config.session_tickets)?)
            }
            (CertOrigin::Acme(settings), _) => Arc::new(acme::AcmeCert::new(
                settings.clone(),
                dir.root(),
                store.clone(),
                config.session_tickets,
                minter.clone(),
            )?),
            (CertOrigin::Minted, _) if config.hostname.is_some() => {
                let hostname = config.hostname.clone().expect("checked");
                let replica = crate::secrets::random_suffix();
                Arc::new(ingress::Ingress::open(
                    hostname,
                    config.hostname_certificate,
                    store,
                    minter.clone(),
                    &replica,
                )?)
            }
            (CertOrigin::Minted, CertMode::PerHost) => Arc::new(per_host::PerHost::new(
                config.max_names,
                minter.clone(),
                admission(),
                store,
            )),
            (CertOrigin::Minted, CertMode::Shared) => Arc::new(shared::Shared::open(
                store,
                config.max_names,
                minter.clone(),
                admission(),
            )?),
        };
        Ok(Self {
            stage: ArcSwap::from_pointee(Stage::Learning(source)),
            minter,
            lab: lab::LabCerts::new(faults),
        })
    }

    /// The source while learning; `None` once pinned.
    fn learning(&self) -> Option<Arc<dyn CertSource>> {
        match &**self.stage.load() {
            Stage::Learning(source) => Some(source.clone()),
            Stage::Pinned(_) => None,
        }
    }
}

impl CertService {
    /// The source while learning; `None` once pinned.
    fn learning(&self) -> Option<Arc<dyn CertSource>> {
        self.current.load().learning()
    }

    /// Starts what runs beside the listeners (needs the runtime, so not in `new`): the watch for a
    /// rotation of bring-your-own files, or the ACME client; and the preparation of lab faults'
    /// certificates as faults appear (made on another replica too), off the workers.
    pub fn start_background(self: &Arc<Self>) {
        if let Some(source) = self.learning() {
            source.start();
        }
        let service = Arc::downgrade(self);
        let (faults, change) = (self.faults.clone(), self.faults.watch());
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                seen = faults.changed(&change, seen).await;
                let Some(service) = service.upgrade() else {
                    return;
                };
                let faults = faults.clone();
                let prepared = tokio::task::spawn_blocking(move || {
                    service.current.load().prepare_faults(&faults)
                });
                if prepared.await.is_err() {
                    return;
                }
            }
        });
    }

    /// ACME mode: the key authorization for an HTTP-01 token being validated.
    pub fn acme_challenge(&self, token: &str) -> Option<String> {
        self.learning()?.acme_challenge(token)
    }

    /// Bring-your-own mode: the chain served.
    pub fn files_chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.learning()?.files_chain()
    }

    /// The server config for a ClientHello from `client` to `local_ip`: in ACME mode a TLS-ALPN-01
    /// validator gets its challenge certificate; everyone else what [`CertService::select`] picks.
    pub fn select_for_hello(
        self: &Arc<Self>,
        hello: &ClientHello<'_>,
        local_ip: IpAddr,
        client: IpAddr,
    ) -> Arc<ServerConfig> {
        let sni = hello.server_name();
        if let Some(name) = sni
            && hello
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
            && let Some(config) = self
                .learning()
                .and_then(|source| source.alpn_challenge(&name.to_ascii_lowercase()))
        {
            return config;
        }
        self.select(sni, local_ip, client)
    }

    /// The server config for a connection from `client` that sent `sni` (if any) to `local_ip`:
    /// at once when the certificate it needs exists, else deferred into the handshake.
    pub fn select(
        self: &Arc<Self>,
        sni: Option<&str>,
        local_ip: IpAddr,
        client: IpAddr,
    ) -> Arc<ServerConfig> {
        let generation = self.current.load();
        if let Some(scenario) = generation.lab.select(&generation.minter, sni, local_ip) {
            return scenario;
        }
        let ready = match &**generation.stage.load() {
            Stage::Learning(source) => source.ready(sni, local_ip),
            Stage::Pinned(pinned) => Some(pinned.served().config.clone()),
        };
        ready.unwrap_or_else(|| {
            generation
                .minter
                .template()
                .deferred(Arc::new(DeferredChoice {
                    service: self.clone(),
                    sni: sni.map(str::to_string),
                    local_ip,
                    client,
                }))
        })
    }

    /// The certificate for a connection, minting or learning names as needed (what
    /// [`CertService::select`] defers to the handshake).
    pub fn choose(&self, sni: Option<&str>, local_ip: IpAddr, client: IpAddr) -> Arc<Served> {
        match &**self.current.load().stage.load() {
            Stage::Learning(source) => source.choose(sni, local_ip, client),
            Stage::Pinned(pinned) => pinned.served(),
        }
    }

    /// Makes what a lab fault doing `what` needs ahead of its first handshake (keys, CAs); slow
    /// for RSA keys, so called off the runtime's workers.
    pub fn prepare_fault(&self, what: &crate::lab::What) -> Result<(), CertError> {
        let generation = self.current.load();
        generation
            .lab
            .prepare(&generation.minter, what)
            .map_err(CertError::from)
    }

    /// Certificates held for clients: the per-host cache's entries, or the shared certificate's
    /// names (for `corral_certificate_cache_entries`, computed when scraped).
    pub fn cached_names(&self) -> usize {
        self.learning().map_or(0, |source| source.held())
    }

    /// A request's `Host` header, from `client`: shared mode learns some (dynamiclistener's rule).
    pub fn learn_from_host_header(&self, host: &str, user_agent: Option<&str>, client: IpAddr) {
        if let Some(source) = self.learning() {
            source.learn_host(host, user_agent, client);
        }
    }

    /// The leaf a no-SNI client of 127.0.0.1 gets: once pinned, the one every client gets.
    pub fn current_leaf(&self) -> CertificateDer<'static> {
        match &**self.current.load().stage.load() {
            Stage::Learning(source) => source.current_leaf(),
            Stage::Pinned(pinned) => pinned.served().leaf().clone(),
        }
    }

    /// The certificate pinning to `host` (server-url's host) will serve, made but not served: the
    /// caller saves server-url, then [`PendingPin::commit`]s. Dropped instead (the save failed),
    /// nothing changes, so the setting and the served certificate always agree. `None` when there is
    /// nothing to pin: already pinned, or bring-your-own and ACME certificates, which every client
    /// gets anyway.
    pub fn stage_pin(&self, host: &SubjectName) -> Result<Option<PendingPin>, CertError> {
        let generation = self.current.load_full();
        let Some(source) = generation.learning() else {
            return Ok(None);
        };
        Ok(source.prepare_pin(host)?.map(|plan| PendingPin {
            generation,
            host: host.clone(),
            plan,
        }))
    }
}

/// A pin made but not served yet (see [`CertService::stage_pin`]).
pub struct PendingPin {
    generation: Arc<Generation>,
    host: SubjectName,
    plan: PinPlan,
}

impl PendingPin {
    /// Serves the pinned certificate from the next handshake on, then stores it. The caller has
    /// saved server-url already: that is the record. A certificate that cannot be stored is still
    /// served (it matches the setting) and is made again from the setting at the next start.
    pub fn commit(self) {
        let minter = &self.generation.minter;
        let (cert, stored) = match self.plan {
            PinPlan::Own { cert, fresh } => {
                let stored = if fresh {
                    cert.persist_current()
                } else {
                    Ok(())
                };
                (cert, stored)
            }
            PinPlan::Shared { cert, prepared } => {
                let stored = match prepared {
                    Some(prepared) => cert.commit_prepared(prepared, minter),
                    None => Ok(()),
                };
                cert.freeze();
                (cert, stored)
            }
        };
        // The learning source goes with this swap (the per-host cache is freed once the handshakes
        // still using it are done): nothing else is ever served again.
        self.generation.stage.store(Arc::new(Stage::Pinned(Pinned {
            cert,
            minter: minter.clone(),
            host: self.host.clone(),
        })));
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

/// The certificate choice for a hello whose certificate does not exist yet, made by rustls through
/// [`ResolvesServerCert`] once it has checked the hello's protocol version.
struct DeferredChoice {
    service: Arc<CertService>,
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
        let service = &self.service;
        let minter = service.current.load().minter.clone();
        // A hello that cannot complete (no protocol, suite, signature scheme or group in common)
        // gets the fallback certificate, which exists already; rustls then refuses the hello.
        let served = match minter.template().can_complete(&hello) {
            true => service.choose(self.sni.as_deref(), self.local_ip, self.client),
            false => minter.fallback(),
        };
        Some(served.certified().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeArgs;
    use crate::pki::{CaProfile, CertificateAuthority};
    use crate::store::FileBackend;

    fn service(mode: CertMode) -> (tempfile::TempDir, CertService) {
        service_with(ServeArgs {
            cert_mode: Some(mode),
            ..ServeArgs::default()
        })
    }

    fn service_with(args: ServeArgs) -> (tempfile::TempDir, CertService) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let config = Config::resolve(ServeArgs {
            data_dir: Some(tmp.path().into()),
            cert_expiration_days: Some(30),
            ..args
        })
        .unwrap();
        let (ca, _) = CertificateAuthority::load_or_create(&dir, CaProfile::Cattle).unwrap();
        let store = Arc::new(FileBackend::new(dir.clone()));
        let factory = LeafFactory::new(store.as_ref(), Arc::new(ca), 30).unwrap();
        let faults = Arc::new(crate::lab::Faults::new(store.clone()));
        (
            tmp,
            CertService::new(&config, store, &dir, factory, faults).unwrap(),
        )
    }

    #[test]
    fn expiring_leaves_are_reminted_on_next_use() {
        for mode in [CertMode::PerHost, CertMode::Shared] {
            let (_tmp, service) = service(mode);
            let local: IpAddr = [127, 0, 0, 1].into();
            let first = service.choose(Some("a.lab.test"), local, local);
            assert!(
                Arc::ptr_eq(&first, &service.choose(Some("a.lab.test"), local, local)),
                "cached"
            );
            // A 31-day window makes the 30-day leaf "expiring".
            service.current.load().minter.set_renew_window(31 * 86_400);
            let renewed = service.choose(Some("a.lab.test"), local, local);
            assert!(!Arc::ptr_eq(&first, &renewed), "{mode:?}: re-minted");
            service.current.load().minter.set_renew_window(7 * 86_400);
            assert!(Arc::ptr_eq(
                &renewed,
                &service.choose(Some("a.lab.test"), local, local)
            ));
        }
    }

    /// A flood of one-time names, with the name in use untouched meanwhile: a plain LRU or FIFO
    /// cache would evict it; the TinyLFU cache keeps its leaf.
    #[test]
    fn one_time_names_do_not_evict_a_name_in_use() {
        let (_tmp, service) = service_with(ServeArgs {
            max_names: Some(50),
            mint_rate: Some(0),
            mint_rate_per_client: Some(0),
            ..ServeArgs::default()
        });
        let local: IpAddr = [127, 0, 0, 1].into();
        let select = |name: &str| service.choose(Some(name), local, local);
        // A full cache first (moka counts frequencies once it is half full), then one name used often.
        for i in 0..50 {
            select(&format!("fill{i}.lab.test"));
        }
        for _ in 0..20 {
            select("app.lab.test");
        }
        service.cached_names();
        let kept = select("app.lab.test");
        for i in 0..500 {
            select(&format!("flood{i}.lab.test"));
        }
        assert!(service.cached_names() <= 50);
        assert!(Arc::ptr_eq(&kept, &select("app.lab.test")), "evicted");
    }

    /// Shared mode: a name learned between staging the pin and committing it is in the pinned
    /// certificate (the commit signs again), and nothing is learned once pinned.
    #[test]
    fn a_shared_pin_keeps_names_learned_while_it_was_staged() {
        let (_tmp, service) = service(CertMode::Shared);
        let local: IpAddr = [127, 0, 0, 1].into();
        let host = SubjectName::parse("rancher.lab.test").unwrap();
        let pending = service.stage_pin(&host).unwrap().expect("a pin to make");
        service.choose(Some("meanwhile.lab.test"), local, local);
        pending.commit();
        let pinned = service.choose(Some("late.lab.test"), local, local);
        let names = crate::pki::inspect::summarize(pinned.leaf()).unwrap().sans;
        assert!(
            names.contains(&"DNS:rancher.lab.test".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"DNS:meanwhile.lab.test".to_string()),
            "{names:?}"
        );
        assert!(
            !names.contains(&"DNS:late.lab.test".to_string()),
            "{names:?}"
        );
        assert!(service.stage_pin(&host).unwrap().is_none(), "pinned once");
    }
}
