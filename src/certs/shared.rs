//! `shared` mode (classic Rancher, dynamiclistener's way): one leaf whose SAN list grows with every
//! accepted name — the local address and the SNI of each connection, and the IP `Host` of requests
//! from non-browsers — re-signed with the same key and kept in the store.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;

use super::CertError;
use super::admission::{Admission, Refusal};
use super::minter::{Minter, default_route_ip};
use super::persisted::{PersistedCert, Restore};
use super::source::{CertSource, PinPlan};
use super::template::Served;
use crate::pki::SubjectName;
use crate::store::{Backend, Changes, Key};
use crate::support::authority_host;

/// Where the shared certificate and its names are kept.
pub const SHARED: Key = Key::public("shared-cert.json", "cattle-system/serving-cert");

pub struct Shared {
    store: Arc<dyn Backend>,
    cert: Arc<PersistedCert>,
    minter: Arc<Minter>,
    admission: Arc<Admission>,
}

impl Shared {
    /// Restores the stored certificate and its names, or mints one for dynamiclistener's initial names.
    pub fn open(
        store: Arc<dyn Backend>,
        max_names: usize,
        minter: Arc<Minter>,
        admission: Arc<Admission>,
    ) -> Result<Self, CertError> {
        let (cert, fresh) = PersistedCert::load_or_mint(
            store.clone(),
            SHARED,
            initial_names(),
            Restore::Accumulate,
            &minter,
            max_names,
        )?;
        if fresh {
            cert.persist_current()?;
        }
        Ok(Self {
            store,
            cert: Arc::new(cert),
            minter,
            admission,
        })
    }

    fn learn(&self, name: SubjectName, client: IpAddr) -> Result<(), Refusal> {
        if self.cert.current().names.contains(&name) {
            return Ok(());
        }
        self.admission.check_rate(client)?;
        self.cert.add(name, &self.minter)
    }
}

impl CertSource for Shared {
    /// The certificate, if it already has the local IP and the SNI (nothing to learn).
    fn ready(&self, sni: Option<&str>, local_ip: IpAddr) -> Option<Arc<ServerConfig>> {
        let current = self.cert.current();
        let knows = |name: &SubjectName| current.names.contains(name);
        let sni_known = match sni {
            Some(sni) => SubjectName::parse(sni).is_ok_and(|name| knows(&name)),
            None => true,
        };
        (sni_known && knows(&SubjectName::ip(local_ip)) && !self.minter.expiring(&current))
            .then(|| current.served.config.clone())
    }

    /// The local address and the SNI are learned into the one certificate, if allowed.
    fn choose(&self, sni: Option<&str>, local_ip: IpAddr, client: IpAddr) -> Arc<Served> {
        let served = "the shared certificate without it";
        if let Err(refusal) = self.learn(SubjectName::ip(local_ip), client) {
            self.admission
                .log_refusal("local address", &refusal, served);
        }
        if let Some(sni) = sni
            && let Err(refusal) = self
                .admission
                .admit(SubjectName::parse(sni))
                .and_then(|name| self.learn(name, client))
        {
            self.admission.log_refusal("SNI", &refusal, served);
        }
        self.cert.renew_if_expiring(&self.minter);
        self.cert.current().served.clone()
    }

    fn current_leaf(&self) -> CertificateDer<'static> {
        self.cert.current().leaf().clone()
    }

    /// On a store shared with other replicas: takes the names they learn (and gives them ours).
    fn start(self: Arc<Self>) {
        let Some(mut changes) = Changes::of(self.store.as_ref(), |path| path == SHARED.path) else {
            return;
        };
        let shared = Arc::downgrade(&self);
        tokio::spawn(async move {
            while changes.next().await.is_some() {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                shared.cert.merge_stored(&shared.minter);
            }
        });
    }

    fn held(&self) -> usize {
        self.cert.current().names.len()
    }

    fn prepare_pin(&self, host: &SubjectName) -> Result<Option<PinPlan>, CertError> {
        let prepared = self.cert.prepare_add(host.clone(), &self.minter)?;
        Ok(Some(PinPlan::Shared {
            cert: self.cert.clone(),
            prepared,
        }))
    }

    /// dynamiclistener's `Host`-header rule: an IP `Host` from a non-browser client is learned like a
    /// name. Browsers (`mozilla` in the User-Agent) never add names this way.
    fn learn_host(&self, host: &str, user_agent: Option<&str>, client: IpAddr) {
        let browser = |ua: &str| {
            ua.as_bytes()
                .windows(b"mozilla".len())
                .any(|w| w.eq_ignore_ascii_case(b"mozilla"))
        };
        if user_agent.is_some_and(browser) {
            return;
        }
        if let Some(host) = authority_host(host)
            && let Ok(name @ SubjectName::Ip(_)) = SubjectName::parse(host)
        {
            let _ = self
                .admission
                .admit(Ok(name))
                .and_then(|name| self.learn(name, client));
        }
    }
}

/// dynamiclistener's initial SANs on Rancher's `:443` listener.
fn initial_names() -> Vec<SubjectName> {
    let mut names = vec![
        SubjectName::Dns("localhost".into()),
        SubjectName::Dns("rancher.cattle-system".into()),
        SubjectName::ip([127, 0, 0, 1].into()),
    ];
    names.extend(default_route_ip().map(SubjectName::ip));
    names
}
