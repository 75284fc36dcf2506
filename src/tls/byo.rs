//! Bring-your-own certificates: the chain and key from files, served exactly as given, and served
//! anew when the files change (a rotation) without a restart or a dropped connection.
//!
//! The files are checked every [`RELOAD_EVERY`]. A new pair that does not load (a half-written file, a
//! key of another certificate) keeps the current certificate, and the reason is logged once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::served::{Served, serve_files, unix_now};

/// How often the files are looked at for a rotation.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The certificate from `cert` and `key`, kept current.
pub struct ByoCert {
    cert: PathBuf,
    key: PathBuf,
    resumption: bool,
    current: ArcSwap<Served>,
    /// What the files looked like when last read, loaded or not.
    stamp: Mutex<Option<Stamp>>,
}

/// Modification time and length of both files: a change in either means a new read.
type Stamp = [(SystemTime, u64); 2];

impl ByoCert {
    /// Loads the files; an unusable pair is a start-up error. Warnings (an expired certificate) are
    /// logged: Rancher starts with them too.
    pub fn load(cert: &Path, key: &Path, resumption: bool) -> Result<Self, String> {
        let stamp = stamp(cert, key);
        let served = load_pair(cert, key, resumption)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            resumption,
            current: ArcSwap::from_pointee(served),
            stamp: Mutex::new(stamp),
        })
    }

    pub fn current(&self) -> Arc<Served> {
        self.current.load_full()
    }

    /// The certificate chain as served.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current().chain().to_vec()
    }

    /// Checks the files every [`RELOAD_EVERY`] for as long as the process runs.
    pub fn watch(self: Arc<Self>) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(RELOAD_EVERY);
            loop {
                every.tick().await;
                self.reload_if_changed();
            }
        });
    }

    /// Serves the files anew if they changed since last read; keeps the current certificate if the
    /// new pair does not load.
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.cert, &self.key);
        {
            let mut seen = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return;
            }
            *seen = now;
        }
        match load_pair(&self.cert, &self.key, self.resumption) {
            Ok(served) => {
                self.current.store(Arc::new(served));
                tracing::info!("serving the new certificate from {}", self.cert.display());
            }
            Err(e) => tracing::warn!("keeping the current certificate: {e}"),
        }
    }
}

fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    let one = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    Some([one(cert)?, one(key)?])
}

/// Reads and checks a chain and its key.
fn load_pair(cert: &Path, key: &Path, resumption: bool) -> Result<Served, String> {
    let chain = read_chain(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("no private key in {} ({e})", key.display()))?;
    let (_, not_after) = crate::pki::inspect::validity(&chain[0])
        .map_err(|e| format!("cannot read the certificate in {}: {e}", cert.display()))?;
    if not_after < unix_now() {
        tracing::warn!(
            "the certificate in {} has expired: clients will refuse it",
            cert.display()
        );
    }
    serve_files(chain, key_der, not_after, resumption).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "the private key in {} does not match the certificate in {}",
            key.display(),
            cert.display()
        ),
        other => format!("cannot serve {}: {other}", cert.display()),
    })
}

/// Every certificate in a PEM file, leaf first.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {} ({e})", path.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(chain)
}
