//! Why a certificate could not be made, loaded or kept.

use std::path::PathBuf;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot sign the certificate: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("cannot serve the certificate: {0}")]
    Serve(#[from] rustls::Error),
    #[error("cannot keep the certificate: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Files(#[from] super::files::FilesError),
    #[error(transparent)]
    Acme(#[from] super::acme::AcmeError),
    #[error(
        "corral's CA signs none of the certificates served (bring-your-own, ACME) or replicas share it (--hostname): rotate it where it is made"
    )]
    NotRotatable,
    #[error("cannot use {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
