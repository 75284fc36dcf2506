//! The certificate authority: created once on first start, persisted, and reused forever, so that the
//! CA checksum agents pin never changes. A CA that exists but cannot be read is an error, never a
//! reason to make a new one.

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use serde::{Deserialize, Serialize};

use super::{dn_value, random_serial};
use crate::store::{
    Backend, DataDir, Document, Key, PUBLIC_MODE, SECRET_MODE, read_optional, write_atomic,
};

/// Where a distributed store keeps the CA: certificate and key together, in one value, as Rancher's
/// `cattle-system/tls-rancher` secret has them.
pub const CA_SECRET: Key = Key::secret("tls-rancher.json", "cattle-system/tls-rancher");

/// The CA as [`CA_SECRET`] keeps it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CaSecret {
    #[serde(rename = "tls.crt")]
    cert: String,
    #[serde(rename = "tls.key")]
    key: String,
}

/// CA lifetime: ten years, as dynamiclistener and Rancher ≤ 2.3 both use.
const CA_LIFETIME: Duration = Duration::days(3650);
/// Certificates start an hour in the past so a client whose clock lags never sees "not yet valid".
pub const BACKDATE: Duration = Duration::hours(1);

/// Which naming the CA is created with. Only matters on first start: an existing CA is kept as is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum CaProfile {
    /// `CN=cattle-ca, O=the-ranch`, as Rancher 2.x documented it.
    Cattle,
    /// `CN=dynamiclistener-ca@<unix>, O=dynamiclistener-org`, as Rancher ≥ 2.6.8 creates it.
    Dynamiclistener,
}

impl CaProfile {
    fn subject(self, now: OffsetDateTime) -> (String, String) {
        match self {
            CaProfile::Cattle => ("the-ranch".into(), "cattle-ca".into()),
            CaProfile::Dynamiclistener => (
                "dynamiclistener-org".into(),
                format!("dynamiclistener-ca@{}", now.unix_timestamp()),
            ),
        }
    }
}

/// corral will not make a new CA over a broken one: agents verify the checksum of this one.
const KEEP: &str = "corral will not create a new CA over it, because that would change the CA \
     checksum agents verify; restore the file, or move ca.crt and ca.key away to start over";

/// Why the CA could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot access {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA in {} is unusable: {reason}; {KEEP}", path.display())]
    Corrupt { path: PathBuf, reason: Unusable },
    #[error(
        "the CA certificate {} exists but its key {} does not; {KEEP}",
        cert.display(),
        key.display()
    )]
    MissingKey { cert: PathBuf, key: PathBuf },
    #[error("cannot generate the CA: {0}")]
    Generate(rcgen::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What is wrong with a stored CA certificate or key.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("not text")]
    NotText,
    #[error("not a private key ({0})")]
    NotAKey(rcgen::Error),
    #[error("no PEM certificate ({0})")]
    NoPem(rustls::pki_types::pem::Error),
    #[error("not X.509 ({0})")]
    NotX509(x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("the certificate is not a CA (basicConstraints CA:TRUE missing)")]
    NotCa,
    #[error("ca.key does not match ca.crt")]
    KeyMismatch,
    #[error("{0}")]
    Date(time::error::ComponentRange),
    #[error("cannot sign with it ({0})")]
    CannotSign(rcgen::Error),
}

/// The loaded CA: its certificate as served, and what is needed to sign leaves with it.
pub struct CertificateAuthority {
    der: CertificateDer<'static>,
    /// The PEM, whitespace-trimmed: the `cacerts` setting value.
    pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    subject: String,
}

/// How long before its end the CA is said to be near it (log, status page).
pub const CA_WARN_BEFORE: time::Duration = time::Duration::days(30);

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the CA from `dir`, or creates and persists one if there is none.
    /// Returns the CA and whether it was created now.
    pub fn load_or_create(dir: &DataDir, profile: CaProfile) -> Result<(Self, bool), CaError> {
        if let Some(ca) = Self::load(dir)? {
            return Ok((ca, false));
        }
        let ca = Self::create(dir, profile)?;
        Ok((ca, true))
    }

    /// Loads an existing CA. `Ok(None)` when there is no CA certificate yet.
    ///
    /// A key without a certificate is an interrupted first start (the key is written first), so it
    /// counts as "no CA": nothing was ever served from it.
    pub fn load(dir: &DataDir) -> Result<Option<Self>, CaError> {
        Self::finish_rotation(dir)?;
        let (cert_path, key_path) = (dir.ca_cert(), dir.ca_key());
        let Some(cert_pem) = read(&cert_path)? else {
            return Ok(None);
        };
        let Some(key_pem) = read(&key_path)? else {
            return Err(CaError::MissingKey {
                cert: cert_path,
                key: key_path,
            });
        };
        Self::from_pems(&cert_pem, &cert_path, key_pem, &key_path).map(Some)
    }

    /// The CA kept in a distributed store ([`CA_SECRET`]), or a new one stored there if there is
    /// none. Replicas starting at once on an empty store store one CA, and all load it: the
    /// compare-and-swap lets only the first write in. Returns the CA and whether this call made it.
    /// The CA kept in `store`, if there is one (creates nothing).
    pub fn load_in(store: std::sync::Arc<dyn Backend>) -> Result<Option<Self>, CaError> {
        let location = PathBuf::from(store.location(&CA_SECRET));
        let Some((bytes, _)) = store.read(&CA_SECRET)? else {
            return Ok(None);
        };
        let secret: CaSecret = serde_json::from_slice(&bytes).map_err(|source| {
            crate::store::StoreError::Unreadable {
                location: location.display().to_string(),
                source,
            }
        })?;
        Self::from_pems(
            secret.cert.as_bytes(),
            &location,
            secret.key.into_bytes(),
            &location,
        )
        .map(Some)
    }

    pub fn load_or_create_in(
        store: std::sync::Arc<dyn Backend>,
        profile: CaProfile,
    ) -> Result<(Self, bool), CaError> {
        let location = PathBuf::from(store.location(&CA_SECRET));
        let (document, _) = Document::<CaSecret>::open(store, CA_SECRET)?;
        let mut stored = document.read();
        let mut created = false;
        if stored.cert.is_empty() {
            let (cert, key) = Self::generate(profile)?;
            let ours = CaSecret {
                cert: cert.pem(),
                key: key.serialize_pem(),
            };
            stored = document.update(|secret| {
                created = secret.cert.is_empty();
                if created {
                    *secret = ours.clone();
                }
                Ok::<_, CaError>(std::sync::Arc::new(secret.clone()))
            })?;
        }
        let ca = Self::from_pems(
            stored.cert.as_bytes(),
            &location,
            stored.key.clone().into_bytes(),
            &location,
        )?;
        Ok((ca, created))
    }

    /// Replaces the CA in `dir` with a new one of `profile` (a lab's CA rotation). The new key and
    /// certificate are written together in one file first, so that a crash at any instant leaves
    /// the old CA or the new one, never the new key beside the old certificate.
    pub fn rotate(dir: &DataDir, profile: CaProfile) -> Result<Self, CaError> {
        let (cert, key) = Self::generate(profile)?;
        let both = format!("{}{}", key.serialize_pem(), cert.pem());
        persist(&dir.ca_rotated(), both.as_bytes(), SECRET_MODE)?;
        Self::finish_rotation(dir)?;
        Self::load(dir)?.ok_or_else(|| CaError::MissingKey {
            cert: dir.ca_cert(),
            key: dir.ca_key(),
        })
    }

    /// Finishes a rotation cut short: `ca.rotated.pem`'s key and certificate replace `ca.key` and
    /// `ca.crt`, then it is removed.
    fn finish_rotation(dir: &DataDir) -> Result<(), CaError> {
        let path = dir.ca_rotated();
        let Some(both) = read(&path)? else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&both);
        let split = text
            .find("-----BEGIN CERTIFICATE-----")
            .ok_or(CaError::Corrupt {
                path: path.clone(),
                reason: Unusable::NotText,
            })?;
        let (key_pem, cert_pem) = text.split_at(split);
        // Checked as a pair before either file is touched.
        Self::from_pems(
            cert_pem.as_bytes(),
            &path,
            key_pem.as_bytes().to_vec(),
            &path,
        )?;
        persist(&dir.ca_key(), key_pem.as_bytes(), SECRET_MODE)?;
        persist(&dir.ca_cert(), cert_pem.as_bytes(), PUBLIC_MODE)?;
        std::fs::remove_file(&path).map_err(|source| CaError::Io { path, source })
    }

    /// A CA from its certificate and key, PEM; the paths name them in errors.
    fn from_pems(
        cert_pem: &[u8],
        cert_path: &Path,
        key_pem: Vec<u8>,
        key_path: &Path,
    ) -> Result<Self, CaError> {
        let corrupt = |path: &Path, reason: Unusable| CaError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let key_text =
            String::from_utf8(key_pem).map_err(|_| corrupt(key_path, Unusable::NotText))?;
        let key =
            KeyPair::from_pem(&key_text).map_err(|e| corrupt(key_path, Unusable::NotAKey(e)))?;
        let der = CertificateDer::from_pem_slice(cert_pem)
            .map_err(|e| corrupt(cert_path, Unusable::NoPem(e)))?;
        let details = inspect(&der, &key).map_err(|reason| corrupt(cert_path, reason))?;
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| corrupt(cert_path, Unusable::CannotSign(e)))?;
        Ok(Self::assemble(der, issuer, details))
    }

    /// A new self-signed CA certificate and its key (`profile`'s names, ten years, P-256).
    fn generate(profile: CaProfile) -> Result<(rcgen::Certificate, KeyPair), CaError> {
        let now = OffsetDateTime::now_utc();
        let (organization, common_name) = profile.subject(now);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // Go's pkix order: O before CN.
        dn.push(DnType::OrganizationName, dn_value(&organization));
        dn.push(DnType::CommonName, dn_value(&common_name));
        params.distinguished_name = dn;
        params.serial_number = Some(random_serial());
        params.not_before = now - BACKDATE;
        params.not_after = params.not_before + CA_LIFETIME;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
        params.key_identifier_method = super::key_identifier(key.public_key_raw());
        let cert = params.self_signed(&key).map_err(CaError::Generate)?;
        Ok((cert, key))
    }

    fn create(dir: &DataDir, profile: CaProfile) -> Result<Self, CaError> {
        let (cert, key) = Self::generate(profile)?;
        // Key first: a crash between the two writes leaves a key without a certificate, which `load`
        // treats as "no CA yet", never a certificate whose key is lost.
        persist(&dir.ca_key(), key.serialize_pem().as_bytes(), SECRET_MODE)?;
        persist(&dir.ca_cert(), cert.pem().as_bytes(), PUBLIC_MODE)?;
        Self::from_pems(
            cert.pem().as_bytes(),
            &dir.ca_cert(),
            key.serialize_pem().into_bytes(),
            &dir.ca_key(),
        )
    }

    fn assemble(
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
        d: Details,
    ) -> Self {
        let pem = pem_encode_certificate(&der);
        Self {
            der,
            pem,
            issuer,
            not_before: d.not_before,
            not_after: d.not_after,
            subject: d.subject,
        }
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The `cacerts` setting: the CA PEM with surrounding whitespace trimmed.
    pub fn cacerts(&self) -> &str {
        &self.pem
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// What to tell the admin when the CA is within [`CA_WARN_BEFORE`] of its end or past it
    /// (`None` otherwise): every certificate it signed stops verifying then.
    pub fn expiry_warning(&self, now: OffsetDateTime) -> Option<String> {
        let date = self
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let left = self.not_after - now;
        if left <= time::Duration::ZERO {
            return Some(format!(
                "the CA ({}) expired on {date}: clients and agents that verify this server against it refuse its certificates",
                self.subject
            ));
        }
        (left < CA_WARN_BEFORE).then(|| {
            format!(
                "the CA ({}) expires on {date}, in {} day(s): every certificate it signed stops verifying then, and agents refuse to connect; replace it before (a new CA changes the CA checksum agents verify)",
                self.subject,
                left.whole_days()
            )
        })
    }

    /// The subject as Go prints it, e.g. `CN=cattle-ca,O=the-ranch`.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// What `load` checks in a stored CA certificate, and keeps.
struct Details {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    subject: String,
}

fn inspect(der: &CertificateDer<'_>, key: &KeyPair) -> Result<Details, Unusable> {
    let (_, cert) = X509Certificate::from_der(der).map_err(Unusable::NotX509)?;
    if !cert.is_ca() {
        return Err(Unusable::NotCa);
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(Unusable::KeyMismatch);
    }
    let date = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(Unusable::Date)
    };
    Ok(Details {
        not_before: date(cert.validity().not_before)?,
        not_after: date(cert.validity().not_after)?,
        subject: go_style_name(cert.subject()),
    })
}

/// Formats a name the way Go's `pkix.Name.String()` does: most specific first, comma separated.
pub(crate) fn go_style_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        attr.as_str().unwrap_or("?").to_string()
    };
    let common_names = name.iter_common_name().map(|a| format!("CN={}", text(a)));
    let organizations = name.iter_organization().map(|a| format!("O={}", text(a)));
    common_names
        .chain(organizations)
        .collect::<Vec<_>>()
        .join(",")
}

/// PEM of one certificate with LF line endings, without a trailing newline (the trimmed `cacerts`
/// form).
pub fn pem_encode_certificate(der: &CertificateDer<'_>) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    let encoded = pem::encode_config(&pem::Pem::new("CERTIFICATE", der.as_ref()), config);
    encoded.trim_end().to_string()
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, CaError> {
    read_optional(path).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn persist(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    write_atomic(path, contents, mode).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rotation replaces the CA; one cut short after its commit point is finished by the next
    /// load, and one cut short before it leaves the old CA.
    #[test]
    fn a_rotation_is_all_or_nothing() {
        let (_tmp, dir) = data_dir();
        let (old, _) = CertificateAuthority::load_or_create(&dir, CaProfile::Cattle).unwrap();
        let new = CertificateAuthority::rotate(&dir, CaProfile::Cattle).unwrap();
        assert_ne!(old.cacerts(), new.cacerts());
        assert!(!dir.ca_rotated().exists());
        let loaded = CertificateAuthority::load(&dir).unwrap().unwrap();
        assert_eq!(loaded.cacerts(), new.cacerts());
        // Cut short after the commit point: the rotated file alone.
        let (cert, key) = CertificateAuthority::generate(CaProfile::Cattle).unwrap();
        let both = format!("{}{}", key.serialize_pem(), cert.pem());
        std::fs::write(dir.ca_rotated(), &both).unwrap();
        let finished = CertificateAuthority::load(&dir).unwrap().unwrap();
        assert_eq!(finished.cacerts(), cert.pem().trim());
        assert!(!dir.ca_rotated().exists());
        // Cut short while writing it: a torn file is refused, the CA files untouched.
        std::fs::write(dir.ca_rotated(), &both[..both.len() / 2]).unwrap();
        assert!(CertificateAuthority::load(&dir).is_err());
        assert_eq!(std::fs::read_to_string(dir.ca_cert()).unwrap(), cert.pem());
    }

    fn data_dir() -> (tempfile::TempDir, DataDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(&tmp.path().join("data")).unwrap();
        (tmp, dir)
    }

    /// Replicas starting at once on one empty store: one CA is made, and every replica loads it.
    #[test]
    fn replicas_starting_at_once_agree_on_one_ca() {
        let (_tmp, dir) = data_dir();
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let store = std::sync::Arc::new(crate::store::FileBackend::new(dir));
                    CertificateAuthority::load_or_create_in(store, CaProfile::Cattle).unwrap()
                })
            })
            .collect();
        let cas: Vec<_> = starts.into_iter().map(|s| s.join().unwrap()).collect();
        assert_eq!(cas.iter().filter(|(_, created)| *created).count(), 1);
        assert!(cas.iter().all(|(ca, _)| ca.cacerts() == cas[0].0.cacerts()));
    }

    #[test]
    fn created_once_then_reused() {
        let (_tmp, dir) = data_dir();
        let (first, created) =
            CertificateAuthority::load_or_create(&dir, CaProfile::Cattle).unwrap();
        assert!(created);
        assert_eq!(first.subject(), "CN=cattle-ca,O=the-ranch");
        let (again, created) =
            CertificateAuthority::load_or_create(&dir, CaProfile::Dynamiclistener).unwrap();
        assert!(!created);
        assert_eq!(first.cacerts(), again.cacerts());
    }

    #[test]
    fn dynamiclistener_profile_naming() {
        let (_tmp, dir) = data_dir();
        let (ca, _) =
            CertificateAuthority::load_or_create(&dir, CaProfile::Dynamiclistener).unwrap();
        assert!(
            ca.subject().starts_with("CN=dynamiclistener-ca@"),
            "{}",
            ca.subject()
        );
        assert!(ca.subject().ends_with(",O=dynamiclistener-org"));
    }

    #[test]
    fn corrupt_or_orphaned_ca_is_an_error() {
        let (_tmp, dir) = data_dir();
        CertificateAuthority::load_or_create(&dir, CaProfile::Cattle).unwrap();
        std::fs::write(dir.ca_cert(), "garbage").unwrap();
        let err = CertificateAuthority::load(&dir).unwrap_err();
        assert!(err.to_string().contains("unusable"), "{err}");
        std::fs::remove_file(dir.ca_key()).unwrap();
        let err = CertificateAuthority::load(&dir).unwrap_err();
        assert!(matches!(err, CaError::MissingKey { .. }), "{err}");
    }

    #[test]
    fn key_without_certificate_is_an_interrupted_start() {
        let (_tmp, dir) = data_dir();
        std::fs::write(dir.ca_key(), "half-written").unwrap();
        assert!(CertificateAuthority::load(&dir).unwrap().is_none());
    }

    #[test]
    fn mismatched_key_is_refused() {
        let (_tmp, dir) = data_dir();
        CertificateAuthority::load_or_create(&dir, CaProfile::Cattle).unwrap();
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(dir.ca_key(), other.serialize_pem()).unwrap();
        let err = CertificateAuthority::load(&dir).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }
}
