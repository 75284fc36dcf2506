//! Bring-your-own certificates: the chain and key from files, served exactly as given, and served
//! anew when the files change (a rotation) without a restart or a dropped connection.
//!
//! The files are checked every [`RELOAD_EVERY`]. A new pair that does not load (a half-written file, a
//! key of another certificate) keeps the current certificate, and the reason is logged once.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::source::CertSource;
use super::template::{Served, serve_files};
use crate::support::{lock, unix_now};

/// Why a certificate and key could not be served.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unreadable certificate PEM ({0})")]
    CertificatePem(rustls::pki_types::pem::Error),
    #[error("no certificate in the chain")]
    NoCertificate,
    #[error("unreadable certificate ({0})")]
    Certificate(crate::pki::inspect::UnreadableCertificate),
    #[error("no private key ({0})")]
    Key(rustls::pki_types::pem::Error),
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    #[error("cannot serve the certificate: {0}")]
    Serve(rustls::Error),
    #[error("{source} (certificate {}, key {})", cert.display(), key.display())]
    InFiles {
        source: Box<FilesError>,
        cert: PathBuf,
        key: PathBuf,
    },
}

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
    pub fn load(cert: &Path, key: &Path, resumption: bool) -> Result<Self, FilesError> {
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

    /// Serves the files anew if they changed since last read; keeps the current certificate if the
    /// new pair does not load.
    fn reload_if_changed(&self) {
        let now = stamp(&self.cert, &self.key);
        {
            let mut seen = lock(&self.stamp);
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

/// Reads and checks a chain and its key; an expired certificate is logged, not refused (as Rancher).
fn load_pair(cert: &Path, key: &Path, resumption: bool) -> Result<Served, FilesError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| FilesError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let served =
        parse_pair(&read(cert)?, &read(key)?, resumption).map_err(|e| FilesError::InFiles {
            source: Box::new(e),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })?;
    if served.not_after < unix_now() {
        tracing::warn!(
            "the certificate in {} has expired: clients will refuse it",
            cert.display()
        );
    }
    Ok(served)
}

/// A chain (leaf first) and its private key, as PEM, checked and ready to serve.
pub fn parse_pair(
    chain_pem: &[u8],
    key_pem: &[u8],
    resumption: bool,
) -> Result<Served, FilesError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(FilesError::CertificatePem)?;
    let leaf = chain.first().ok_or(FilesError::NoCertificate)?;
    let (_, not_after) = crate::pki::inspect::validity(leaf).map_err(FilesError::Certificate)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(FilesError::Key)?;
    serve_files(chain, key, not_after, resumption).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => FilesError::KeyMismatch,
        other => FilesError::Serve(other),
    })
}

impl CertSource for ByoCert {
    fn ready(&self, _: Option<&str>, _: IpAddr) -> Option<Arc<ServerConfig>> {
        Some(self.current.load().config.clone())
    }

    fn choose(&self, _: Option<&str>, _: IpAddr, _: IpAddr) -> Arc<Served> {
        self.current()
    }

    fn current_leaf(&self) -> CertificateDer<'static> {
        self.current().leaf().clone()
    }

    /// Checks the files every [`RELOAD_EVERY`] for as long as the process runs.
    fn start(self: Arc<Self>) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(RELOAD_EVERY);
            loop {
                every.tick().await;
                self.reload_if_changed();
            }
        });
    }

    fn files_chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        Some(self.current().chain().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads_and_a_stray_key_is_named() {
        let (cert, key) = pair(&["byo.lab.test"]);
        let served = parse_pair(cert.as_bytes(), key.as_bytes(), false).unwrap();
        assert_eq!(served.chain().len(), 1);
        let (_, other_key) = pair(&["other.lab.test"]);
        let stray = parse_pair(cert.as_bytes(), other_key.as_bytes(), false).unwrap_err();
        assert_eq!(
            stray.to_string(),
            "the private key does not match the certificate"
        );
        assert!(parse_pair(b"", key.as_bytes(), false).is_err());
        assert!(parse_pair(cert.as_bytes(), b"not a key", false).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_files_are_refused_without_panic(cert: Vec<u8>, key: Vec<u8>, pem_body in "[A-Za-z0-9+/=\n]{0,200}") {
            let _ = parse_pair(&cert, &key, false);
            let wrapped = format!("-----BEGIN CERTIFICATE-----\n{pem_body}\n-----END CERTIFICATE-----\n");
            let key_pem = format!("-----BEGIN PRIVATE KEY-----\n{pem_body}\n-----END PRIVATE KEY-----\n");
            prop_assert!(parse_pair(wrapped.as_bytes(), key_pem.as_bytes(), false).is_err());
        }
    }
}
