//! HA mode (`--hostname`, helm's `--set hostname=`): every replica serves one certificate for the
//! install's hostname, as Rancher HA's ingress serves the `tls-rancher-ingress` secret that
//! cert-manager issues from Rancher's CA. The certificate is kept in the store under that name
//! (`tls.crt`, `tls.key`, `ca.crt`, as the secret has them) and served from memory; a replica that
//! sees it change in the store serves the new one. Exactly one replica — the one holding the renewer
//! lease — re-issues it when it nears expiry (cert-manager's job); the others only follow. Nothing is
//! minted per name and server-url pins nothing: the certificate is fixed at install.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use super::CertError;
use super::minter::Minter;
use super::source::CertSource;
use super::template::Served;
use crate::config::HostnameCertificate;
use crate::pki::ca::pem_encode_certificate;
use crate::pki::{MintedLeaf, SubjectName};
use crate::store::{Backend, Changes, Key, Leadership, StoreError, Version};

/// Where the HA certificate is kept (Rancher's `cattle-system/tls-rancher-ingress`).
pub const INGRESS: Key = Key::secret(
    "tls-rancher-ingress.json",
    "cattle-system/tls-rancher-ingress",
);
/// The lease the renewing replica holds.
const RENEWER: &str = "corral/ingress-renewer";
const RENEWER_TTL: Duration = Duration::from_secs(10);
/// How often the renewer looks at the expiry.
const RENEW_CHECK: Duration = Duration::from_secs(5);

/// The secret's data, as a kubernetes.io/tls secret from cert-manager has it.
#[derive(Debug, Serialize, Deserialize)]
struct IngressSecret {
    #[serde(rename = "tls.crt")]
    tls_crt: String,
    #[serde(rename = "tls.key")]
    tls_key: String,
    #[serde(rename = "ca.crt")]
    ca_crt: String,
}

/// cert-manager's defaults for a Certificate: 90 days, renewed 30 days before its end.
const CERT_MANAGER_LIFETIME: time::Duration = time::Duration::days(90);
const CERT_MANAGER_RENEW_BEFORE: i64 = 30 * 86_400;

pub struct Ingress {
    hostname: SubjectName,
    /// How the certificate is made and renewed.
    profile: HostnameCertificate,
    served: ArcSwap<Served>,
    /// The stored version `served` came from (`None`: not stored, e.g. the store was away).
    version: std::sync::Mutex<Option<Version>>,
    store: Arc<dyn Backend>,
    minter: Arc<Minter>,
    /// `None` when the store has no leases (one process: it renews).
    leadership: Option<Leadership>,
}

/// What the store holds for the HA certificate.
enum Stored {
    Absent,
    /// Issued by this CA for the leaf key, for the hostname: served as is.
    Usable(Arc<Served>, Version),
    /// Something else (another CA, another name, unreadable): replaced.
    Unusable(Version),
}

impl Ingress {
    /// The stored certificate for `hostname`, or one issued now and stored (of replicas starting at
    /// once, the first to store wins and the others serve its certificate).
    pub fn open(
        hostname: SubjectName,
        profile: HostnameCertificate,
        store: Arc<dyn Backend>,
        minter: Arc<Minter>,
        replica: &str,
    ) -> Result<Self, CertError> {
        let leadership = store.campaign(RENEWER, replica, RENEWER_TTL)?;
        let ingress = Self {
            hostname,
            profile,
            served: ArcSwap::new(minter.fallback()),
            version: std::sync::Mutex::new(None),
            store,
            minter,
            leadership,
        };
        for _ in 0..8 {
            let expected = match ingress.stored() {
                Stored::Usable(served, version) => {
                    ingress.adopt(served, version);
                    return Ok(ingress);
                }
                Stored::Absent => None,
                Stored::Unusable(version) => Some(version),
            };
            match ingress.issue(expected) {
                Ok(()) => return Ok(ingress),
                Err(CertError::Store(StoreError::Conflict(_))) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(INGRESS.name.to_string()).into())
    }

    fn stored(&self) -> Stored {
        let Ok(Some((bytes, version))) = self.store.read(&INGRESS) else {
            return Stored::Absent;
        };
        match self.parse(&bytes) {
            Some(served) => Stored::Usable(served, version),
            None => Stored::Unusable(version),
        }
    }

    /// A stored secret, if its certificate is ours to serve: our CA, exactly the hostname, and the
    /// profile's key (the shared leaf key; for cert-manager's, the secret's own, which must not be
    /// the shared one). A certificate of the other profile is replaced.
    fn parse(&self, bytes: &[u8]) -> Option<Arc<Served>> {
        let secret: IngressSecret = serde_json::from_slice(bytes).ok()?;
        let der = CertificateDer::from_pem_slice(secret.tls_crt.as_bytes()).ok()?;
        let names = crate::pki::inspect::summarize(&der)?.sans;
        if names != [format!("DNS:{}", self.hostname.as_text())] {
            return None;
        }
        let factory = self.minter.factory();
        let template = self.minter.template();
        let served = match self.profile {
            HostnameCertificate::Rancher => {
                let not_after = factory.issued_here(&der)?;
                template.serve(MintedLeaf { der, not_after }).ok()?
            }
            HostnameCertificate::CertManager => {
                let not_after = factory.issued_by_ca(&der)?;
                if factory.issued_here(&der).is_some() {
                    return None;
                }
                let key = PrivateKeyDer::from_pem_slice(secret.tls_key.as_bytes()).ok()?;
                template
                    .serve_with_key(MintedLeaf { der, not_after }, key)
                    .ok()?
            }
        };
        Some(Arc::new(served))
    }

    fn adopt(&self, served: Arc<Served>, version: Version) {
        self.served.store(served);
        *crate::support::lock(&self.version) = Some(version);
    }

    /// Issues a certificate for the hostname and stores it if the stored version is still
    /// `expected`; serves it once stored.
    fn issue(&self, expected: Option<Version>) -> Result<(), CertError> {
        let names = std::slice::from_ref(&self.hostname);
        let factory = self.minter.factory();
        let (served, key_pem) = match self.profile {
            HostnameCertificate::Rancher => (self.minter.mint(names)?, factory.key_pem()),
            HostnameCertificate::CertManager => {
                let (leaf, key) = factory.mint_with_own_key(names, CERT_MANAGER_LIFETIME)?;
                let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
                let served = self.minter.template().serve_with_key(leaf, der)?;
                (Arc::new(served), key.serialize_pem())
            }
        };
        let ca = pem_encode_certificate(factory.ca().der());
        let secret = IngressSecret {
            tls_crt: format!("{}\n{ca}\n", pem_encode_certificate(served.leaf())),
            tls_key: key_pem,
            ca_crt: format!("{ca}\n"),
        };
        let bytes = serde_json::to_vec(&secret).expect("a secret serializes");
        let version = self.store.write(&INGRESS, &bytes, expected)?;
        self.adopt(served, version);
        Ok(())
    }

    /// Serves what the store holds now, if it changed and is usable.
    fn follow(&self) {
        if let Stored::Usable(served, version) = self.stored()
            && *crate::support::lock(&self.version) != Some(version)
        {
            tracing::info!(
                "serving the stored certificate for {} (tls-rancher-ingress)",
                self.hostname
            );
            self.adopt(served, version);
        }
    }

    /// The renewer re-issues the certificate once it is within the renewal window.
    fn renew_if_due(&self) {
        if !self.leadership.as_ref().is_none_or(Leadership::is_leader) {
            return;
        }
        let due = match self.profile {
            HostnameCertificate::Rancher => self.minter.expiring(&self.served.load()),
            HostnameCertificate::CertManager => self
                .served
                .load()
                .expires_within(crate::support::unix_now(), CERT_MANAGER_RENEW_BEFORE),
        };
        if !due {
            return;
        }
        let expected = *crate::support::lock(&self.version);
        match self.issue(expected) {
            Ok(()) => tracing::info!(
                "renewed the certificate for {} (tls-rancher-ingress)",
                self.hostname
            ),
            Err(CertError::Store(StoreError::Conflict(_))) => self.follow(),
            Err(e) => tracing::warn!("cannot renew the certificate for {}: {e}", self.hostname),
        }
    }
}

impl CertSource for Ingress {
    fn ready(&self, _sni: Option<&str>, _local_ip: IpAddr) -> Option<Arc<ServerConfig>> {
        Some(self.served.load().config.clone())
    }

    fn choose(&self, _sni: Option<&str>, _local_ip: IpAddr, _client: IpAddr) -> Arc<Served> {
        self.served.load_full()
    }

    fn current_leaf(&self) -> CertificateDer<'static> {
        self.served.load().leaf().clone()
    }

    /// Follows the stored certificate and, on the renewer, renews it.
    fn start(self: Arc<Self>) {
        let ingress = Arc::downgrade(&self);
        let mut changes = Changes::of(self.store.as_ref(), |path| path == INGRESS.path);
        tokio::spawn(async move {
            loop {
                let changed = tokio::select! {
                    _ = Changes::next_or_never(&mut changes) => true,
                    _ = tokio::time::sleep(RENEW_CHECK) => false,
                };
                let Some(ingress) = ingress.upgrade() else {
                    return;
                };
                ingress.follow();
                // Renewal runs on the timer only: a renewal is itself a change.
                if !changed {
                    ingress.renew_if_due();
                }
            }
        });
    }
}
