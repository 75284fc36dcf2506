//! A persisted certificate for a set of names: `shared` mode's single certificate whose SAN list
//! accumulates every learned name (dynamiclistener's way), and the certificate pinned to server-url.
//!
//! Readers load the current certificate lock-free; a new name takes the write lock, re-signs with the
//! same key, persists names and certificate together (one atomic file), then publishes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::resolver::Refusal;
use super::served::{Served, TlsSettings, unix_now};
use crate::pki::ca::pem_encode_certificate;
use crate::pki::{LeafFactory, MintedLeaf, SubjectName};
use crate::store::{PUBLIC_MODE, read_optional, write_atomic};

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
    /// Set once the certificate is pinned: no name is ever added again (checked under the lock).
    frozen: AtomicBool,
    path: PathBuf,
    max_names: usize,
}

/// Whether names stored on disk join the names asked for when restoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// Shared mode: the stored names are names learned before; keep them all.
    Accumulate,
    /// The pinned certificate: exactly the names asked for. A stored file for other names (left by
    /// an earlier host, or by a write the setting never followed) is replaced, never merged.
    Exactly,
}

/// A certificate made but not yet served: [`Staged::publish`] serves it. Holds the write lock, so
/// nothing is re-signed in between.
pub struct Staged<'a> {
    cert: &'a PersistedCert,
    _guard: MutexGuard<'a, ()>,
    names: BTreeSet<SubjectName>,
    served: Arc<Served>,
    /// Whether it differs from what is served now (a new name was added).
    changed: bool,
}

impl PersistedCert {
    /// Restores the names and certificate stored at `path` (see [`Restore`] for how the stored names
    /// count); re-signs only when the stored certificate does not carry exactly these names from this
    /// CA and key, or is expiring. Writes nothing: `true` when the certificate was minted now and is
    /// not on disk yet (see [`PersistedCert::persist_current`]).
    pub fn load_or_mint(
        path: PathBuf,
        initial: Vec<SubjectName>,
        restore: Restore,
        factory: &LeafFactory,
        tls: &TlsSettings,
        max_names: usize,
        renew_window: i64,
    ) -> Result<(Self, bool), String> {
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
        if restore == Restore::Accumulate {
            names.extend(stored_names.iter().cloned());
        } else if stored.is_some() && stored_names != names {
            tracing::info!(
                "{} is for other names; making a new certificate",
                path.display()
            );
        }
        let reusable = stored
            .filter(|_| stored_names == names)
            .and_then(|s| CertificateDer::from_pem_slice(s.certificate.as_bytes()).ok())
            .and_then(|der| Some((factory.issued_here(&der)?, der)))
            .map(|(not_after, der)| MintedLeaf { der, not_after })
            .filter(|leaf| leaf.not_after.unix_timestamp() - unix_now() > renew_window);
        let (leaf, fresh) = match reusable {
            Some(leaf) => (leaf, false),
            None => {
                let list: Vec<_> = names.iter().cloned().collect();
                (factory.mint(&list).map_err(|e| e.to_string())?, true)
            }
        };
        let served = Arc::new(tls.serve(leaf).map_err(|e| e.to_string())?);
        let cert = Self {
            current: ArcSwap::from_pointee(CertState { names, served }),
            write_lock: Mutex::new(()),
            frozen: AtomicBool::new(false),
            path,
            max_names,
        };
        Ok((cert, fresh))
    }

    pub fn current(&self) -> Arc<CertState> {
        self.current.load_full()
    }

    /// Writes the current names and certificate to disk.
    pub fn persist_current(&self) -> Result<(), String> {
        let current = self.current();
        persist(&self.path, &current.names, current.leaf())
    }

    /// No name is added from now on.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Release);
    }

    /// Adds `name` (if new, and within the caps unless `capped` is false): re-sign through `mint`,
    /// persist, publish.
    pub fn add(
        &self,
        name: SubjectName,
        capped: bool,
        mint: impl FnOnce(&[SubjectName]) -> Result<Arc<Served>, Refusal>,
    ) -> Result<(), Refusal> {
        let staged = self.stage_add(name.clone(), capped, mint)?;
        if !staged.changed {
            return Ok(());
        }
        staged.persist().map_err(Refusal::MintFailed)?;
        staged.publish();
        tracing::info!("added {name} to {}", self.path.display());
        Ok(())
    }

    /// The certificate with `name` added, re-signed but not served yet (unchanged if it has the name).
    pub fn stage_add(
        &self,
        name: SubjectName,
        capped: bool,
        mint: impl FnOnce(&[SubjectName]) -> Result<Arc<Served>, Refusal>,
    ) -> Result<Staged<'_>, Refusal> {
        let guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current();
        let unchanged = |guard| Staged {
            cert: self,
            _guard: guard,
            names: current.names.clone(),
            served: current.served.clone(),
            changed: false,
        };
        if current.names.contains(&name) {
            return Ok(unchanged(guard));
        }
        if capped && self.frozen.load(Ordering::Acquire) {
            return Err(Refusal::Capacity);
        }
        let san_bytes: usize = current.names.iter().map(|n| n.as_text().len()).sum();
        let full = current.names.len() >= self.max_names
            || san_bytes + name.as_text().len() > MAX_SAN_BYTES;
        if capped && full {
            return Err(Refusal::Capacity);
        }
        let mut names = current.names.clone();
        names.insert(name);
        let list: Vec<_> = names.iter().cloned().collect();
        let served = mint(&list)?;
        Ok(Staged {
            cert: self,
            _guard: guard,
            names,
            served,
            changed: true,
        })
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
        if !current.expires_within(unix_now(), renew_window) {
            return;
        }
        let renewed = mint(&current.names.iter().cloned().collect::<Vec<_>>()).and_then(|served| {
            persist(&self.path, &current.names, served.leaf()).map_err(Refusal::MintFailed)?;
            Ok(served)
        });
        match renewed {
            Ok(served) => {
                self.current.store(Arc::new(CertState {
                    names: current.names.clone(),
                    served,
                }));
                tracing::info!("renewed the certificate in {}", self.path.display());
            }
            Err(e) => tracing::error!(
                "cannot renew the certificate in {}: {e}",
                self.path.display()
            ),
        }
    }
}

impl Staged<'_> {
    /// Writes the staged names and certificate to disk (not served yet).
    pub fn persist(&self) -> Result<(), String> {
        if !self.changed {
            return Ok(());
        }
        persist(&self.cert.path, &self.names, self.served.leaf())
    }

    /// Serves the staged certificate from the next handshake on.
    pub fn publish(self) {
        if self.changed {
            self.cert.current.store(Arc::new(CertState {
                names: self.names,
                served: self.served,
            }));
        }
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
