//! `per-host` mode: each accepted name (or, without SNI, the local IP) has its own leaf, minted on
//! first contact under the admission rules and cached. The cache holds at most `max-names` leaves and
//! admits by frequency (moka's TinyLFU), so a flood of one-time names cannot push out the names
//! clients really use. A refused name never fails the handshake: the client gets the certificate for
//! the local IP or, when that is refused too, the fallback certificate.

use std::net::IpAddr;
use std::sync::Arc;

use moka::sync::Cache;
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;

use super::CertError;
use super::admission::{Admission, Refusal};
use super::minter::{FALLBACK_DESCRIPTION, Minter};
use super::persisted::{PersistedCert, Restore};
use super::source::{CertSource, PinPlan};
use super::template::Served;
use crate::pki::{NameError, SubjectName};
use crate::store::{Backend, Key};

/// Where the certificate pinned to server-url's host is kept.
pub const PINNED: Key = Key::public("pinned-cert.json", "corral/pinned-cert");

pub struct PerHost {
    leaves: Cache<SubjectName, Arc<Served>>,
    minter: Arc<Minter>,
    admission: Arc<Admission>,
    store: Arc<dyn Backend>,
}

impl PerHost {
    pub fn new(
        max_names: usize,
        minter: Arc<Minter>,
        admission: Arc<Admission>,
        store: Arc<dyn Backend>,
    ) -> Self {
        Self {
            leaves: Cache::new(max_names.try_into().unwrap_or(u64::MAX)),
            minter,
            admission,
            store,
        }
    }

    /// The leaf for `name`: cached, renewed when expiring, or minted once (concurrent first
    /// handshakes for one name wait for the same mint). The cache decides whether a new leaf stays.
    fn leaf(&self, name: SubjectName, client: IpAddr) -> Result<Arc<Served>, Refusal> {
        if let Some(served) = self.leaves.get(&name) {
            if !self.minter.expiring(&served) {
                return Ok(served);
            }
            let renewed = self.minter.mint(std::slice::from_ref(&name))?;
            tracing::info!("renewed certificate for {name}");
            self.leaves.insert(name, renewed.clone());
            return Ok(renewed);
        }
        self.leaves
            .try_get_with_by_ref(&name, || {
                self.admission.check_rate(client)?;
                let minted = self.minter.mint(std::slice::from_ref(&name))?;
                tracing::info!("minted certificate for {name}");
                Ok(minted)
            })
            .map_err(|refusal: Arc<Refusal>| (*refusal).clone())
    }

    fn requested(
        &self,
        requested: Option<Result<SubjectName, NameError>>,
        client: IpAddr,
    ) -> Option<Result<Arc<Served>, Refusal>> {
        let name = requested?;
        Some(
            self.admission
                .admit(name)
                .and_then(|name| self.leaf(name, client)),
        )
    }
}

impl CertSource for PerHost {
    fn ready(&self, sni: Option<&str>, local_ip: IpAddr) -> Option<Arc<ServerConfig>> {
        let name = match sni {
            Some(sni) => SubjectName::parse(sni)
                .ok()
                .filter(|name| self.admission.allows(name))?,
            None => SubjectName::ip(local_ip),
        };
        self.leaves
            .get(&name)
            .filter(|served| !self.minter.expiring(served))
            .map(|served| served.config.clone())
    }

    fn choose(&self, sni: Option<&str>, local_ip: IpAddr, client: IpAddr) -> Arc<Served> {
        let refused_sni = match self.requested(sni.map(SubjectName::parse), client) {
            Some(Ok(served)) => return served,
            Some(Err(refusal)) => Some(refusal),
            None => None,
        };
        let local = SubjectName::ip(local_ip);
        let (served, what) = match self.leaf(local.clone(), client) {
            Ok(served) => (served, format!("the certificate for {local}")),
            Err(refusal) => {
                let what = FALLBACK_DESCRIPTION.to_string();
                self.admission.log_refusal("local address", &refusal, &what);
                (self.minter.fallback(), what)
            }
        };
        if let Some(refusal) = refused_sni {
            self.admission.log_refusal("SNI", &refusal, &what);
        }
        served
    }

    fn current_leaf(&self) -> CertificateDer<'static> {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        self.leaf(SubjectName::ip(loopback), loopback)
            .unwrap_or_else(|_| self.minter.fallback())
            .leaf()
            .clone()
    }

    fn held(&self) -> usize {
        // moka counts lazily: settle its books first (a scrape can afford it).
        self.leaves.run_pending_tasks();
        self.leaves.entry_count().try_into().unwrap_or(usize::MAX)
    }

    fn prepare_pin(&self, host: &SubjectName) -> Result<Option<PinPlan>, CertError> {
        let (cert, fresh) = PersistedCert::load_or_mint(
            self.store.clone(),
            PINNED,
            vec![host.clone()],
            Restore::Exactly,
            &self.minter,
            1,
        )?;
        Ok(Some(PinPlan::Own {
            cert: Arc::new(cert),
            fresh,
        }))
    }
}
