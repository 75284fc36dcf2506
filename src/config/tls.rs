//! Which of Rancher's TLS set-ups corral reproduces, decided from the flags and the ssl directory
//! (Rancher's `/etc/rancher/ssl` layout: `cert.pem`, `key.pem`, `cacerts.pem`), with Rancher's
//! start-up errors word for word.
//!
//! Flags win over files in the directory. The rules are Rancher's `readConfig`:
//! - a certificate and key (bring-your-own) need exactly one of `cacerts` and `--no-cacerts`;
//! - only one of certificate and key is an error;
//! - otherwise corral mints its own, and `cacerts` (if given) is what `/cacerts` distributes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Rancher's error when only one of `cert.pem` and `key.pem` is there.
pub const ONE_OF_CERT_AND_KEY: &str = "invalid SSL configuration found, please set both certificate file and certificate key file (one is missing)";

/// Rancher's error for a certificate with both or neither of `cacerts.pem` and `--no-cacerts`.
pub const CACERTS_OR_NO_CACERTS: &str = "invalid SSL configuration found, please set cacerts when using self signed certificates or use --no-cacerts when using certificates from a recognized Certificate Authority, do not use both at the same time";

/// Who terminates TLS on the HTTPS port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TlsTermination {
    /// corral: its own certificates, or the files given.
    Corral,
    /// A proxy in front (ingress, load balancer): corral serves plain HTTP on both ports.
    External,
}

/// Which certificate `--hostname` serves: the one Rancher's chart makes by default, or the one
/// cert-manager issues for `tls-rancher-ingress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum HostnameCertificate {
    /// Signed for the shared leaf key, `--cert-expiration-days` long, renewed `--rotate-days`
    /// before its end (as corral's other leaves).
    Rancher,
    /// cert-manager's defaults: 90 days, a key of its own, renewed 30 days before its end.
    CertManager,
}

/// The certificate corral serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertOrigin {
    /// Minted by corral's CA (per-host or shared).
    Minted,
    /// Bring-your-own: the chain and key from these files, served as given.
    Files { cert: PathBuf, key: PathBuf },
    /// From an ACME server (Let's Encrypt) for these domains.
    Acme(AcmeSettings),
}

/// How the ACME server checks that corral answers for a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum AcmeChallenge {
    /// A token under `/.well-known/acme-challenge/` on the HTTP port (port 80 of the domain).
    #[value(name = "http-01")]
    #[serde(rename = "http-01")]
    Http01,
    /// A special certificate for ALPN `acme-tls/1` on the HTTPS port (port 443 of the domain).
    #[value(name = "tls-alpn-01")]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// Where and for what corral asks an ACME server for its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub domains: Vec<String>,
    pub directory: String,
    pub challenge: AcmeChallenge,
    /// A CA to trust for the directory's own HTTPS (a private ACME server such as pebble).
    pub ca_cert: Option<PathBuf>,
}

/// What `/cacerts` distributes (and so what agents verify).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cacerts {
    /// corral's own CA.
    Generated,
    /// The trimmed contents of this file (it may be a bundle).
    File(PathBuf),
    /// Nothing: the certificate is from a CA clients already trust.
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSetup {
    pub termination: TlsTermination,
    pub origin: CertOrigin,
    pub cacerts: Cacerts,
}

/// What the user gave (over the embedded defaults); `None` means "not given" (the ssl directory may
/// still provide it).
#[derive(Debug)]
pub struct TlsInputs {
    pub termination: TlsTermination,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub cacerts: Option<PathBuf>,
    pub no_cacerts: bool,
    pub ssl_dir: PathBuf,
    pub acme_domains: Vec<String>,
    pub acme_directory: String,
    pub acme_challenge: AcmeChallenge,
    pub acme_ca_cert: Option<PathBuf>,
}

/// A TLS set-up corral (or Rancher) refuses to start with; the texts are Rancher's where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsSetupError {
    #[error("--acme-domain needs corral to terminate TLS, not --tls external")]
    AcmeBehindProxy,
    #[error("--tls external serves plain HTTP: --tls-cert and --tls-key belong on the proxy")]
    FilesBehindProxy,
    #[error("{CACERTS_OR_NO_CACERTS}")]
    CacertsOrNoCacerts,
    #[error("{ONE_OF_CERT_AND_KEY}")]
    OneOfCertAndKey,
}

impl TlsInputs {
    /// Decides the set-up.
    pub fn resolve(self) -> Result<TlsSetup, TlsSetupError> {
        let dir = self.ssl_dir;
        let in_dir = |name: &str| Some(dir.join(name)).filter(|p| p.exists());
        let termination = self.termination;
        // Rancher checks ACME first; it forces an empty cacerts.
        if !self.acme_domains.is_empty() {
            if termination == TlsTermination::External {
                return Err(TlsSetupError::AcmeBehindProxy);
            }
            return Ok(TlsSetup {
                termination,
                origin: CertOrigin::Acme(AcmeSettings {
                    domains: self.acme_domains,
                    directory: self.acme_directory,
                    challenge: self.acme_challenge,
                    ca_cert: self.acme_ca_cert,
                }),
                cacerts: Cacerts::Empty,
            });
        }
        let cacerts_file = self.cacerts.or_else(|| in_dir("cacerts.pem"));
        if termination == TlsTermination::External {
            if self.cert.is_some() || self.key.is_some() {
                return Err(TlsSetupError::FilesBehindProxy);
            }
            return Ok(TlsSetup {
                termination,
                origin: CertOrigin::Minted,
                cacerts: optional_cacerts(cacerts_file, self.no_cacerts)?.unwrap_or(Cacerts::Empty),
            });
        }
        let cert = self.cert.or_else(|| in_dir("cert.pem"));
        let key = self.key.or_else(|| in_dir("key.pem"));
        let (origin, cacerts) = match (cert, key) {
            (Some(cert), Some(key)) => {
                let cacerts = match (cacerts_file, self.no_cacerts) {
                    (Some(file), false) => Cacerts::File(file),
                    (None, true) => Cacerts::Empty,
                    _ => return Err(TlsSetupError::CacertsOrNoCacerts),
                };
                (CertOrigin::Files { cert, key }, cacerts)
            }
            (Some(_), None) | (None, Some(_)) => return Err(TlsSetupError::OneOfCertAndKey),
            (None, None) => (
                CertOrigin::Minted,
                optional_cacerts(cacerts_file, self.no_cacerts)?.unwrap_or(Cacerts::Generated),
            ),
        };
        Ok(TlsSetup {
            termination,
            origin,
            cacerts,
        })
    }
}

/// `cacerts` for set-ups where it is optional: a file, `--no-cacerts`, or neither (`None`).
fn optional_cacerts(
    file: Option<PathBuf>,
    no_cacerts: bool,
) -> Result<Option<Cacerts>, TlsSetupError> {
    match (file, no_cacerts) {
        (Some(_), true) => Err(TlsSetupError::CacertsOrNoCacerts),
        (Some(file), false) => Ok(Some(Cacerts::File(file))),
        (None, true) => Ok(Some(Cacerts::Empty)),
        (None, false) => Ok(None),
    }
}

/// The `cacerts` value from a file: its contents with surrounding whitespace trimmed, as Rancher's
/// `strings.TrimSpace`.
pub fn read_cacerts(path: &Path) -> Result<String, CacertsError> {
    let text = std::fs::read_to_string(path).map_err(|source| CacertsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(CacertsError::NoCertificate(path.to_path_buf()));
    }
    Ok(text.trim().to_string())
}

/// Why a `cacerts` file cannot be distributed.
#[derive(Debug, thiserror::Error)]
pub enum CacertsError {
    #[error("cannot read cacerts {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in files {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        dir
    }

    /// The embedded defaults' inputs, with the ssl directory `dir`.
    fn inputs(dir: &Path, no_cacerts: bool) -> TlsInputs {
        let mut settings = crate::config::ServeArgs::embedded_defaults();
        settings.ssl_dir = Some(dir.into());
        settings.no_cacerts = no_cacerts;
        settings.tls_inputs()
    }

    fn resolve(files: &[&str], no_cacerts: bool) -> Result<TlsSetup, TlsSetupError> {
        let dir = dir_with(files);
        inputs(dir.path(), no_cacerts).resolve()
    }

    #[test]
    fn rancher_layout_rules() {
        let byo = resolve(&["cert.pem", "key.pem", "cacerts.pem"], false).unwrap();
        assert!(matches!(byo.origin, CertOrigin::Files { .. }));
        assert!(matches!(byo.cacerts, Cacerts::File(_)));
        let public = resolve(&["cert.pem", "key.pem"], true).unwrap();
        assert_eq!(public.cacerts, Cacerts::Empty);
        for (files, no_cacerts) in [
            (&["cert.pem", "key.pem"][..], false),
            (&["cert.pem", "key.pem", "cacerts.pem"][..], true),
        ] {
            assert_eq!(
                resolve(files, no_cacerts),
                Err(TlsSetupError::CacertsOrNoCacerts)
            );
        }
        for files in [&["cert.pem"][..], &["key.pem", "cacerts.pem"][..]] {
            assert_eq!(resolve(files, false), Err(TlsSetupError::OneOfCertAndKey));
        }
        // Only cacerts.pem: corral's own certificates, the given CA distributed.
        let only_ca = resolve(&["cacerts.pem"], false).unwrap();
        assert_eq!(
            (only_ca.origin, matches!(only_ca.cacerts, Cacerts::File(_))),
            (CertOrigin::Minted, true)
        );
        assert_eq!(resolve(&[], false).unwrap().cacerts, Cacerts::Generated);
        assert_eq!(resolve(&[], true).unwrap().cacerts, Cacerts::Empty);
    }

    #[test]
    fn external_termination() {
        let dir = dir_with(&["cacerts.pem"]);
        let external = |dir: &Path, no_cacerts| {
            TlsInputs {
                termination: TlsTermination::External,
                ..inputs(dir, no_cacerts)
            }
            .resolve()
        };
        assert!(matches!(
            external(dir.path(), false).unwrap().cacerts,
            Cacerts::File(_)
        ));
        assert_eq!(
            external(dir.path(), true),
            Err(TlsSetupError::CacertsOrNoCacerts)
        );
        let bare = external(Path::new("/nonexistent"), false);
        assert_eq!(bare.unwrap().cacerts, Cacerts::Empty);
    }
}
