//! A certificate for a set of names, kept in the store: `shared` mode's single certificate whose SAN
//! list accumulates every learned name (dynamiclistener's way), and the certificate pinned to
//! server-url.
//!
//! Readers load the current certificate lock-free; a new name takes the write lock, re-signs with the
//! same key, stores names and certificate together (one document), then publishes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::CertError;
use super::admission::Refusal;
use super::minter::Minter;
use super::template::Served;
use crate::pki::ca::pem_encode_certificate;
use crate::pki::{MintedLeaf, SubjectName};
use crate::store::{Backend, Document, Key, StoreError};
use crate::support::{lock, unix_now};

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

/// The stored form: names and certificate written together, so they always agree.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredCert {
    names: Vec<String>,
    certificate: String,
}

impl StoredCert {
    fn of(names: &BTreeSet<SubjectName>, leaf: &CertificateDer<'_>) -> Self {
        Self {
            names: names.iter().map(SubjectName::as_text).collect(),
            certificate: pem_encode_certificate(leaf),
        }
    }
}

pub struct PersistedCert {
    current: ArcSwap<CertState>,
    /// Serialises re-signing, so two new names cannot each publish a certificate missing the other.
    write_lock: Mutex<()>,
    /// Set once the certificate is pinned: no name is ever added again (checked under the lock).
    frozen: AtomicBool,
    document: Document<StoredCert>,
    max_names: usize,
}

/// Whether names stored before join the names asked for when restoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// Shared mode: the stored names are names learned before; keep them all.
    Accumulate,
    /// The pinned certificate: exactly the names asked for. A stored certificate for other names
    /// (left by an earlier host, or by a write the setting never followed) is replaced, never merged.
    Exactly,
}

/// A certificate with one more name, made but not served: see [`PersistedCert::commit_prepared`].
/// It holds no lock; what was learned in between is not lost (the commit signs again).
pub struct PreparedName {
    /// What was served when it was made.
    base: Arc<CertState>,
    next: CertState,
}

impl PersistedCert {
    /// Restores the names and certificate stored under `key` (see [`Restore`] for how the stored
    /// names count); re-signs only when the stored certificate does not carry exactly these names
    /// from this CA and key, or is expiring. Stores nothing: `true` when the certificate was minted
    /// now and is not stored yet (see [`PersistedCert::persist_current`]).
    pub fn load_or_mint(
        store: Arc<dyn Backend>,
        key: Key,
        initial: Vec<SubjectName>,
        restore: Restore,
        minter: &Minter,
        max_names: usize,
    ) -> Result<(Self, bool), CertError> {
        let (document, existed) = Document::<StoredCert>::open_or_replace(store, key.clone())?;
        let stored = existed.then(|| document.read());
        let mut names: BTreeSet<SubjectName> = initial.into_iter().collect();
        let stored_names: BTreeSet<SubjectName> = stored
            .iter()
            .flat_map(|s| &s.names)
            .filter_map(|n| SubjectName::parse(n).ok())
            .collect();
        if restore == Restore::Accumulate {
            names.extend(stored_names.iter().cloned());
        } else if stored.is_some() && stored_names != names {
            tracing::info!("{} is for other names; making a new certificate", key.name);
        }
        let reusable = stored
            .filter(|_| stored_names == names)
            .and_then(|s| CertificateDer::from_pem_slice(s.certificate.as_bytes()).ok())
            .and_then(|der| Some((minter.factory().issued_here(&der)?, der)))
            .map(|(not_after, der)| MintedLeaf { der, not_after })
            .filter(|leaf| leaf.not_after.unix_timestamp() - unix_now() > minter.renew_window());
        let (served, fresh) = match reusable {
            Some(leaf) => (Arc::new(minter.template().serve(leaf)?), false),
            None => (
                minter.mint(&names.iter().cloned().collect::<Vec<_>>())?,
                true,
            ),
        };
        let cert = Self {
            current: ArcSwap::from_pointee(CertState { names, served }),
            write_lock: Mutex::new(()),
            frozen: AtomicBool::new(false),
            document,
            max_names,
        };
        Ok((cert, fresh))
    }

    pub fn current(&self) -> Arc<CertState> {
        self.current.load_full()
    }

    /// What the log calls this certificate: where it is kept.
    pub fn name(&self) -> &str {
        &self.document.key().name
    }

    /// Stores the current names and certificate.
    pub fn persist_current(&self) -> Result<(), StoreError> {
        let current = self.current();
        self.store(&current)
    }

    fn store(&self, state: &CertState) -> Result<(), StoreError> {
        let stored = StoredCert::of(&state.names, state.leaf());
        self.document.update(|value| {
            *value = stored.clone();
            Ok::<_, StoreError>(())
        })
    }

    /// No name is added from now on.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Release);
    }

    /// Adds `name` if it is new and within the caps: re-sign, store, publish.
    pub fn add(&self, name: SubjectName, minter: &Minter) -> Result<(), Refusal> {
        let _guard = lock(&self.write_lock);
        let current = self.current();
        if current.names.contains(&name) {
            return Ok(());
        }
        if self.frozen.load(Ordering::Acquire) {
            return Err(Refusal::Capacity);
        }
        let san_bytes: usize = current.names.iter().map(|n| n.as_text().len()).sum();
        if current.names.len() >= self.max_names || san_bytes + name.as_text().len() > MAX_SAN_BYTES
        {
            return Err(Refusal::Capacity);
        }
        let next = with_name(&current, name.clone(), minter)?;
        self.store(&next).map_err(CertError::from)?;
        self.current.store(Arc::new(next));
        tracing::info!("added {name} to {}", self.name());
        Ok(())
    }

    /// The certificate with `name` added whatever the caps (server-url's host), signed but not
    /// served; `None` when it has the name already.
    pub fn prepare_add(
        &self,
        name: SubjectName,
        minter: &Minter,
    ) -> Result<Option<PreparedName>, CertError> {
        let base = self.current();
        if base.names.contains(&name) {
            return Ok(None);
        }
        let next = with_name(&base, name, minter)?;
        Ok(Some(PreparedName { base, next }))
    }

    /// Stores and serves a prepared certificate. If a name was learned since it was prepared, the
    /// certificate is signed again with every name; if that fails, the prepared one is served (it
    /// has the name that matters). Served even when it cannot be stored: the error says so.
    pub fn commit_prepared(
        &self,
        prepared: PreparedName,
        minter: &Minter,
    ) -> Result<(), StoreError> {
        let _guard = lock(&self.write_lock);
        let current = self.current();
        let mut next = prepared.next;
        if !Arc::ptr_eq(&current, &prepared.base) {
            let mut names = current.names.clone();
            names.extend(next.names.iter().cloned());
            match minter.mint(&names.iter().cloned().collect::<Vec<_>>()) {
                Ok(served) => next = CertState { names, served },
                Err(e) => tracing::warn!(
                    "cannot sign {} again with the names learned meanwhile ({e}); serving it without them",
                    self.name()
                ),
            }
        }
        let stored = self.store(&next);
        self.current.store(Arc::new(next));
        stored
    }

    /// Replicas sharing the store (shared mode): another replica stored the certificate. Names it
    /// has that this one lacks are taken (its certificate served when it carries exactly the union,
    /// else signed again); names this one has that the stored one lacks are stored again with the
    /// union. Every write is a union, so the replicas converge on one set of names.
    pub fn merge_stored(&self, minter: &Minter) {
        if self.frozen.load(Ordering::Acquire) {
            return;
        }
        let _guard = lock(&self.write_lock);
        let stored = self.document.read();
        let stored_names: BTreeSet<SubjectName> = stored
            .names
            .iter()
            .filter_map(|n| SubjectName::parse(n).ok())
            .collect();
        let current = self.current();
        if stored_names == current.names {
            return;
        }
        let mut names = current.names.clone();
        for name in &stored_names {
            let san_bytes: usize = names.iter().map(|n| n.as_text().len()).sum();
            if names.len() >= self.max_names || san_bytes + name.as_text().len() > MAX_SAN_BYTES {
                break;
            }
            names.insert(name.clone());
        }
        // The stored certificate, if it is the union already and ours to serve.
        let reusable = (names == stored_names)
            .then(|| CertificateDer::from_pem_slice(stored.certificate.as_bytes()).ok())
            .flatten()
            .and_then(|der| Some((minter.factory().issued_here(&der)?, der)))
            .map(|(not_after, der)| MintedLeaf { der, not_after })
            .filter(|leaf| leaf.not_after.unix_timestamp() - unix_now() > minter.renew_window())
            .and_then(|leaf| minter.template().serve(leaf).ok());
        let next = match reusable {
            Some(served) => CertState {
                names,
                served: Arc::new(served),
            },
            None => match minter.mint(&names.iter().cloned().collect::<Vec<_>>()) {
                Ok(served) => CertState { names, served },
                Err(e) => return tracing::warn!("cannot merge {}: {e}", self.name()),
            },
        };
        if next.names != stored_names
            && let Err(e) = self.store(&next)
        {
            tracing::warn!("cannot store the merged {}: {e}", self.name());
        }
        tracing::info!(
            "{} now has {} names (merged with another replica's)",
            self.name(),
            next.names.len()
        );
        self.current.store(Arc::new(next));
    }

    /// Re-signs the same names when the certificate is within the renewal window.
    pub fn renew_if_expiring(&self, minter: &Minter) {
        if !minter.expiring(&self.current()) {
            return;
        }
        let _guard = lock(&self.write_lock);
        let current = self.current();
        if !minter.expiring(&current) {
            return;
        }
        let names: Vec<_> = current.names.iter().cloned().collect();
        let renewed = minter.mint(&names).and_then(|served| {
            let next = CertState {
                names: current.names.clone(),
                served,
            };
            self.store(&next)?;
            Ok(next)
        });
        match renewed {
            Ok(next) => {
                self.current.store(Arc::new(next));
                tracing::info!("renewed the certificate in {}", self.name());
            }
            Err(e) => tracing::error!("cannot renew the certificate in {}: {e}", self.name()),
        }
    }
}

/// `current`'s names and `name`, signed.
fn with_name(
    current: &CertState,
    name: SubjectName,
    minter: &Minter,
) -> Result<CertState, CertError> {
    let mut names = current.names.clone();
    names.insert(name);
    let served = minter.mint(&names.iter().cloned().collect::<Vec<_>>())?;
    Ok(CertState { names, served })
}
