//! A persisted certificate for a set of names: `shared` mode's single certificate whose SAN list
//! accumulates every learned name (dynamiclistener's way), and the certificate pinned to server-url.
//!
//! Readers load the current certificate lock-free; a new name takes the write lock, re-signs with the
//! same key, persists names and certificate together (one atomic file), then publishes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::resolver::Refusal;
use super::served::{Served, TlsSettings, unix_now};
use crate::pki::ca::pem_encode_certificate;
use crate::pki::{LeafFactory, MintedLeaf, SubjectName};
use crate::state::{PUBLIC_MODE, read_optional, write_atomic};

/// Above this much SAN text a certificate grows past what some clients accept (the k3s SAN-stuffing
/// advisory): further names are refused whatever `max-names` says.
const MAX_SAN_BYTES: usize = 32 * 1024;

/// The names and the certificate that carries them.
#[derive(Debug)]
pub struct CertState {
    pub names: BTreeSet<SubjectName>,
    pub served: Arc<Served>,
}

impl std::ops::Deref for CertState {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.served
    }
}

/// The on-disk form: names and certificate written together, so they always agree.
#[derive(Serialize, Deserialize)]
struct Stored {
    names: Vec<String>,
    certificate: String,
}

pub struct PersistedCert {
    current: ArcSwap<CertState>,
    /// Serialises re-signing, so two new names cannot each publish a certificate missing the other.
    write_lock: Mutex<()>,
    path: PathBuf,
    max_names: usize,
}

impl PersistedCert {
    /// Restores the names and certificate stored at `path`, adding `initial` names; re-signs only when
    /// the stored certificate does not carry exactly these names from this CA and key, or is expiring.
    pub fn restore(
        path: PathBuf,
        initial: Vec<SubjectName>,
        factory: &LeafFactory,
        tls: &TlsSettings,
        max_names: usize,
        renew_window: i64,
    ) -> Result<Self, String> {
        let stored = read_optional(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .and_then(|bytes| match serde_json::from_slice::<Stored>(&bytes) {
                Ok(stored) => Some(stored),
                Err(e) => {
                    tracing::warn!(
                        "{} is unreadable ({e}); starting a new certificate",
                        path.display()
                    );
                    None
                }
            });
        let mut names: BTreeSet<SubjectName> = initial.into_iter().collect();
        let stored_names: BTreeSet<SubjectName> = stored
            .iter()
            .flat_map(|s| &s.names)
            .filter_map(|n| SubjectName::parse(n).ok())
            .collect();
        names.extend(stored_names.iter().cloned());
        let reusable = stored
            .filter(|_| stored_names == names)
            .and_then(|s| CertificateDer::from_pem_slice(s.certificate.as_bytes()).ok())
            .and_then(|der| Some((factory.issued_here(&der)?, der)))
            .map(|(not_after, der)| MintedLeaf { der, not_after })
            .filter(|leaf| leaf.not_after.unix_timestamp() - unix_now() > renew_window);
        let leaf = match reusable {
            Some(leaf) => leaf,
            None => {
                let list: Vec<_> = names.iter().cloned().collect();
                let leaf = factory.mint(&list).map_err(|e| e.to_string())?;
                persist(&path, &names, &leaf.der)?;
                leaf
            }
        };
        let served = Arc::new(tls.serve(leaf).map_err(|e| e.to_string())?);
        Ok(Self {
            current: ArcSwap::from_pointee(CertState { names, served }),
            write_lock: Mutex::new(()),
            path,
            max_names,
        })
    }

    pub fn current(&self) -> Arc<CertState> {
        self.current.load_full()
    }

    /// Adds `name` (if new, and within the caps unless `capped` is false): re-sign through `mint`,
    /// persist, publish.
    pub fn add(
        &self,
        name: SubjectName,
        capped: bool,
        mint: impl FnOnce(&[SubjectName]) -> Result<Arc<Served>, Refusal>,
    ) -> Result<(), Refusal> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current();
        if current.names.contains(&name) {
            return Ok(());
        }
        let san_bytes: usize = current.names.iter().map(|n| n.as_text().len()).sum();
        let full = current.names.len() >= self.max_names
            || san_bytes + name.as_text().len() > MAX_SAN_BYTES;
        if capped && full {
            return Err(Refusal::Capacity);
        }
        let mut names = current.names.clone();
        names.insert(name.clone());
        self.publish(names, mint)?;
        tracing::info!("added {name} to {}", self.path.display());
        Ok(())
    }

    /// Re-signs the same names when the certificate is within the renewal window.
    pub fn renew_if_expiring(
        &self,
        renew_window: i64,
        mint: impl FnOnce(&[SubjectName]) -> Result<Arc<Served>, Refusal>,
    ) {
        if !self.current().expires_within(unix_now(), renew_window) {
            return;
        }
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current();
        if current.expires_within(unix_now(), renew_window) {
            match self.publish(current.names.clone(), mint) {
                Ok(()) => tracing::info!("renewed the certificate in {}", self.path.display()),
                Err(e) => tracing::error!(
                    "cannot renew the certificate in {}: {e}",
                    self.path.display()
                ),
            }
        }
    }

    fn publish(
        &self,
        names: BTreeSet<SubjectName>,
        mint: impl FnOnce(&[SubjectName]) -> Result<Arc<Served>, Refusal>,
    ) -> Result<(), Refusal> {
        let list: Vec<_> = names.iter().cloned().collect();
        let served = mint(&list)?;
        persist(&self.path, &names, served.leaf()).map_err(Refusal::MintFailed)?;
        self.current.store(Arc::new(CertState { names, served }));
        Ok(())
    }
}

fn persist(
    path: &Path,
    names: &BTreeSet<SubjectName>,
    leaf: &CertificateDer<'_>,
) -> Result<(), String> {
    let stored = Stored {
        names: names.iter().map(SubjectName::as_text).collect(),
        certificate: pem_encode_certificate(leaf),
    };
    let json = serde_json::to_vec_pretty(&stored).map_err(|e| e.to_string())?;
    write_atomic(path, &json, PUBLIC_MODE)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
