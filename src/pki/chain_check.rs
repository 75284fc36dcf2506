//! Whether a bring-your-own chain is signed by the CA that `/cacerts` distributes. Rancher starts
//! either way, but agents that verify with `/cacerts` will refuse the server: worth a warning.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, RootCertStore};

/// Why a chain does not lead to the CA in cacerts.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("cacerts holds no usable CA certificate")]
    NoUsableCa,
    #[error("cannot check the chain: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    #[error("the served certificate is unreadable: {0}")]
    Leaf(#[from] super::inspect::UnreadableCertificate),
    #[error(
        "the served certificate chain is not signed by the CA in cacerts ({0}): agents that verify with /cacerts will refuse it"
    )]
    NotSigned(rustls::Error),
}

/// `Ok` if `chain` (leaf first) leads to a certificate in `cacerts_pem`, or if there is no cacerts to
/// check against; `Err` says why not.
pub fn signed_by(chain: &[CertificateDer<'static>], cacerts_pem: &str) -> Result<(), ChainError> {
    if cacerts_pem.trim().is_empty() || chain.is_empty() {
        return Ok(());
    }
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cacerts_pem.as_bytes()).flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(ChainError::NoUsableCa);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
    // Checked at a moment the leaf is valid: expiry is reported on its own, and names do not matter.
    let (not_before, _) = super::inspect::validity(&chain[0])?;
    let moment = UnixTime::since_unix_epoch(Duration::from_secs(not_before.max(0) as u64 + 1));
    let name = ServerName::try_from("corral.invalid").expect("a valid name");
    match verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], moment) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => Ok(()),
        Err(e) => Err(ChainError::NotSigned(e)),
    }
}
