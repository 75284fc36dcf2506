//! What corral distributes as its CA — the `cacerts` setting, `/cacerts` and the checksum agents
//! verify — and a lab's CA rotation: a new CA signs every certificate from the next handshake on,
//! the old one stays in the bundle for `keepOld` (or leaves at once), and the checksum changes as
//! it does when a Rancher admin replaces a private CA.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::certs::{CertError, CertService};
use crate::config::Config;
use crate::config::tls::{Cacerts, CacertsError, read_cacerts};
use crate::pki::{CaError, CaProfile, CertificateAuthority, LeafFactory, ca_checksum};
use crate::store::{Backend, DataDir, Key, StoreError, put};
use crate::support::{lock, unix_now};

/// The CA a rotation replaced, while it stays in the bundle.
const PREVIOUS: Key = Key::public("ca-previous.json", "corral/ca-previous");

/// The `cacerts` setting as served.
#[derive(Debug, Clone)]
pub struct CaSetting {
    /// The trimmed PEM (empty when there is no CA to distribute); a bundle while a rotated-out CA
    /// is kept.
    pub value: String,
    pub created: time::OffsetDateTime,
}

/// What is distributed now.
#[derive(Debug)]
pub struct Distributed {
    /// The CA that signs corral's certificates.
    pub ca: Arc<CertificateAuthority>,
    pub setting: CaSetting,
    /// SHA-256 of `/cacerts`' body, as agents compute it; empty without a CA.
    pub checksum: String,
    /// The rotated-out CA still in the bundle, and until when (unix seconds).
    pub previous: Option<Previous>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Previous {
    /// The old CA's PEM, trimmed.
    pub pem: String,
    /// Unix seconds after which it leaves the bundle.
    pub until: i64,
}

/// Why a rotation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("{0}")]
    NotHere(&'static str),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct CaBundle {
    current: ArcSwap<Distributed>,
    /// Where the CA lives and how a new one is made; `None` when it cannot be rotated here.
    rotation: Option<Rotation>,
    /// One rotation at a time.
    rotating: std::sync::Mutex<()>,
}

struct Rotation {
    dir: DataDir,
    profile: CaProfile,
    store: Arc<dyn Backend>,
    certs: Arc<CertService>,
    leaf_days: u32,
}

impl CaBundle {
    /// What `config` distributes with `ca`, and a rotation kept from before a restart (dropped once
    /// its time has passed). Rotation works with the data directory and a CA corral made, where
    /// `certs` can serve a new CA's certificates: decided here, once, so that a rotation refused is
    /// refused before anything is written.
    pub fn open(
        config: &Config,
        ca: Arc<CertificateAuthority>,
        store: Arc<dyn Backend>,
        dir: &DataDir,
        certs: Arc<CertService>,
    ) -> Result<Arc<Self>, CacertsError> {
        let source = config.tls.cacerts.clone();
        let rotatable =
            config.store.is_none() && matches!(source, Cacerts::Generated) && certs.rotatable();
        let rotation = rotatable.then(|| Rotation {
            dir: dir.clone(),
            profile: config.ca_profile,
            store: store.clone(),
            certs,
            leaf_days: config.cert_expiration_days,
        });
        let previous = match &rotation {
            Some(_) => read_previous(store.as_ref()).filter(|p| p.until > unix_now()),
            None => None,
        };
        let distributed = distributed(&source, ca, previous)?;
        let bundle = Arc::new(Self {
            current: ArcSwap::from_pointee(distributed),
            rotation,
            rotating: std::sync::Mutex::new(()),
        });
        if let Some(previous) = &bundle.current().previous {
            drop_previous_at(Arc::downgrade(&bundle), previous.until);
        }
        Ok(bundle)
    }

    pub fn current(&self) -> Arc<Distributed> {
        self.current.load_full()
    }

    /// Rotates the CA now: a new CA signs every certificate from the next handshake on; the old
    /// one stays in the bundle for `keep_old` (zero: it leaves at once). Both changes the
    /// checksum. Call off the runtime's workers (it writes and signs).
    pub fn rotate(self: &Arc<Self>, keep_old: Duration) -> Result<Arc<Distributed>, RotationError> {
        let rotation = self.rotation.as_ref().ok_or(RotationError::NotHere(
            "this corral's CA cannot be rotated here: it must be corral's own (not a cacerts file, \
             ACME or --no-cacerts), kept in the data directory (replicas on etcd rotate it \
             nowhere yet) and sign what is served per name (not --hostname's one certificate)",
        ))?;
        let _one = lock(&self.rotating);
        let old = self.current();
        let ca = Arc::new(CertificateAuthority::rotate(
            &rotation.dir,
            rotation.profile,
        )?);
        let factory = LeafFactory::new(rotation.store.as_ref(), ca.clone(), rotation.leaf_days)?;
        rotation.certs.rotate_ca(factory)?;
        let previous = (!keep_old.is_zero()).then(|| Previous {
            pem: old.ca.cacerts().to_string(),
            until: unix_now().saturating_add(keep_old.as_secs().max(1) as i64),
        });
        match &previous {
            Some(previous) => {
                let bytes = serde_json::to_vec(previous).expect("serializes");
                put(rotation.store.as_ref(), &PREVIOUS, &bytes)?;
            }
            None => rotation.store.delete(&PREVIOUS)?,
        }
        let next = Arc::new(
            distributed(&Cacerts::Generated, ca.clone(), previous.clone())
                .expect("a generated CA needs no file"),
        );
        self.current.store(next.clone());
        crate::metrics::metrics()
            .ca_expiry
            .set(ca.not_after().unix_timestamp());
        tracing::info!(
            "CA rotated: {} now signs every certificate; CA checksum: {}",
            ca.subject(),
            next.checksum
        );
        match &previous {
            Some(previous) => {
                tracing::info!(
                    "the previous CA ({}) stays in /cacerts until {}",
                    old.ca.subject(),
                    crate::support::rfc3339(previous.until).unwrap_or_default()
                );
                drop_previous_at(Arc::downgrade(self), previous.until);
            }
            None => tracing::info!("the previous CA ({}) left /cacerts", old.ca.subject()),
        }
        Ok(next)
    }

    /// Takes the rotated-out CA out of the bundle, if it is the one due at `until`.
    fn drop_previous(&self, until: i64) {
        let Some(rotation) = &self.rotation else {
            return;
        };
        let _one = lock(&self.rotating);
        let current = self.current();
        if current.previous.as_ref().map(|p| p.until) != Some(until) {
            return;
        }
        if let Err(e) = rotation.store.delete(&PREVIOUS) {
            tracing::warn!("cannot forget the previous CA: {e}");
        }
        let next = distributed(&Cacerts::Generated, current.ca.clone(), None)
            .expect("a generated CA needs no file");
        tracing::info!(
            "the previous CA left /cacerts; CA checksum: {}",
            next.checksum
        );
        self.current.store(Arc::new(next));
    }
}

/// Waits until `until`, then drops the previous CA (unless a later rotation replaced it).
fn drop_previous_at(bundle: Weak<CaBundle>, until: i64) {
    tokio::spawn(async move {
        let wait = (until - unix_now()).max(0) as u64;
        tokio::time::sleep(Duration::from_secs(wait)).await;
        if let Some(bundle) = bundle.upgrade() {
            bundle.drop_previous(until);
        }
    });
}

/// What `/cacerts` serves for corral's own CA `ca` kept in `store` (with a rotated-out CA still
/// kept), for `corral ca checksum`.
pub fn stored_value(ca: &CertificateAuthority, store: &dyn Backend) -> String {
    let previous = read_previous(store).filter(|p| p.until > unix_now());
    with_previous(ca.cacerts().to_string(), previous.as_ref())
}

/// The bundle: `value`, then the rotated-out CA while it is kept.
fn with_previous(value: String, previous: Option<&Previous>) -> String {
    match previous {
        Some(previous) => format!("{value}\n{}", previous.pem),
        None => value,
    }
}

fn read_previous(store: &dyn Backend) -> Option<Previous> {
    let (bytes, _) = store.read(&PREVIOUS).ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// The setting and checksum for `ca` (or the configured file), with `previous` after it.
fn distributed(
    source: &Cacerts,
    ca: Arc<CertificateAuthority>,
    previous: Option<Previous>,
) -> Result<Distributed, CacertsError> {
    let created = ca.not_before() + crate::pki::ca::BACKDATE;
    let value = match source {
        Cacerts::Generated => ca.cacerts().to_string(),
        Cacerts::File(path) => read_cacerts(path)?,
        Cacerts::Empty => String::new(),
    };
    let value = with_previous(value, previous.as_ref());
    Ok(Distributed {
        checksum: ca_checksum(&value),
        setting: CaSetting { value, created },
        ca,
        previous,
    })
}
