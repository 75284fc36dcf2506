//! Minting leaf certificates signed by the CA.
//!
//! Every leaf is signed for one shared key pair (persisted as `leaf.key`), as dynamiclistener reuses its
//! serving key: a mint then costs one ECDSA signature, not a key generation.

use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ca::BACKDATE;
use super::{CaError, CertificateAuthority, SubjectName, dn_value, random_serial};
use crate::store::{Backend, Key, create_once};

/// Where the shared leaf key is kept.
pub const LEAF_KEY: Key = Key::secret("leaf.key", "corral/leaf-key");

/// A freshly signed leaf.
#[derive(Debug, Clone)]
pub struct MintedLeaf {
    pub der: CertificateDer<'static>,
    pub not_after: OffsetDateTime,
}

/// Signs leaves for the shared leaf key with the CA.
pub struct LeafFactory {
    ca: Arc<CertificateAuthority>,
    key: KeyPair,
    lifetime: Duration,
}

impl LeafFactory {
    /// A factory whose leaves live `lifetime_days`, using the leaf key kept in `store` (made if
    /// absent).
    pub fn new(
        store: &dyn Backend,
        ca: Arc<CertificateAuthority>,
        lifetime_days: u32,
    ) -> Result<Self, CaError> {
        let key = load_or_create_leaf_key(store)?;
        Ok(Self {
            ca,
            key,
            lifetime: Duration::days(i64::from(lifetime_days)),
        })
    }

    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// The shared leaf private key as PEM (for a stored secret's `tls.key`).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The shared leaf private key, for rustls.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// Signs a leaf for `names` (`CN=dynamic, O=dynamic`, serverAuth, SKI/AKI, random serial),
    /// valid from an hour ago (never before the CA) for the configured lifetime.
    pub fn mint(&self, names: &[SubjectName]) -> Result<MintedLeaf, rcgen::Error> {
        self.sign(names, &self.key, self.lifetime)
    }

    /// Signs a leaf for `names` with a new P-256 key of its own, valid for `lifetime`: the
    /// certificate cert-manager issues for an ingress. The leaf and its key.
    pub fn mint_with_own_key(
        &self,
        names: &[SubjectName],
        lifetime: Duration,
    ) -> Result<(MintedLeaf, KeyPair), rcgen::Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let leaf = self.sign(names, &key, lifetime)?;
        Ok((leaf, key))
    }

    fn sign(
        &self,
        names: &[SubjectName],
        key: &KeyPair,
        lifetime: Duration,
    ) -> Result<MintedLeaf, rcgen::Error> {
        let not_before = (OffsetDateTime::now_utc() - BACKDATE).max(self.ca.not_before());
        let params = leaf_params(names, key, not_before, not_before + lifetime)?;
        let cert = params.signed_by(key, self.ca.issuer())?;
        Ok(MintedLeaf {
            der: cert.der().clone(),
            not_after: params.not_after,
        })
    }
}

/// A leaf's parameters as corral signs every leaf: `CN=dynamic, O=dynamic`, `names` as its
/// subjectAltName, serverAuth, SKI/AKI, a random serial, valid from `not_before` to `not_after`.
pub(crate) fn leaf_params(
    names: &[SubjectName],
    key: &KeyPair,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, dn_value("dynamic"));
    dn.push(DnType::CommonName, dn_value("dynamic"));
    params.distinguished_name = dn;
    params.subject_alt_names = names.iter().map(san).collect::<Result<_, _>>()?;
    params.serial_number = Some(random_serial());
    params.not_before = not_before;
    params.not_after = not_after;
    // ExplicitNoCa writes basicConstraints CA:FALSE and, with it, the SubjectKeyIdentifier.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = super::key_identifier(key.public_key_raw());
    Ok(params)
}

impl LeafFactory {
    /// If `der` names this factory's CA as its issuer, its expiry (whatever its key: the
    /// cert-manager profile's leaves have their own).
    pub fn issued_by_ca(&self, der: &[u8]) -> Option<OffsetDateTime> {
        let (_, leaf) = X509Certificate::from_der(der).ok()?;
        let (_, ca) = X509Certificate::from_der(self.ca.der()).ok()?;
        let not_after = leaf.validity().not_after.timestamp();
        signed_by(&leaf, &ca)
            .then(|| OffsetDateTime::from_unix_timestamp(not_after).ok())
            .flatten()
    }

    /// If `der` is a leaf this factory could have made (same CA, same leaf key), its expiry.
    /// Used to reuse a stored certificate after a restart instead of re-signing it.
    pub fn issued_here(&self, der: &[u8]) -> Option<OffsetDateTime> {
        let (_, leaf) = X509Certificate::from_der(der).ok()?;
        let (_, ca) = X509Certificate::from_der(self.ca.der()).ok()?;
        let same_issuer = signed_by(&leaf, &ca);
        let same_key =
            leaf.public_key().subject_public_key.data.as_ref() == self.key.public_key_raw();
        let not_after = leaf.validity().not_after.timestamp();
        (same_issuer && same_key)
            .then(|| OffsetDateTime::from_unix_timestamp(not_after).ok())
            .flatten()
    }
}

/// Whether `ca` issued `leaf`: the issuer's name, and the authority key identifier naming the
/// CA's key. The name alone is not enough: a rotated CA keeps its predecessor's name.
fn signed_by(leaf: &X509Certificate<'_>, ca: &X509Certificate<'_>) -> bool {
    use x509_parser::extensions::ParsedExtension;
    let key_ids = |cert: &X509Certificate<'_>| {
        let mut aki = None;
        let mut ski = None;
        for extension in cert.iter_extensions() {
            match extension.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(id) => {
                    aki = id.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(id.0.to_vec()),
                _ => {}
            }
        }
        (aki, ski)
    };
    let (leaf_aki, _) = key_ids(leaf);
    let (_, ca_ski) = key_ids(ca);
    leaf.issuer().as_raw() == ca.subject().as_raw() && (leaf_aki.is_none() || leaf_aki == ca_ski)
}

fn san(name: &SubjectName) -> Result<SanType, rcgen::Error> {
    Ok(match name {
        SubjectName::Dns(dns) => SanType::DnsName(dns.as_str().try_into()?),
        SubjectName::Ip(ip) => SanType::IpAddress(*ip),
    })
}

/// The leaf key is not pinned by anyone (leaves are re-signed freely), so an unreadable one is
/// replaced with a warning rather than stopping the server.
fn load_or_create_leaf_key(store: &dyn Backend) -> Result<KeyPair, CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
    let pem = key.serialize_pem();
    // Ours, or that of a replica that started first.
    let kept = create_once(store, &LEAF_KEY, pem.as_bytes())?;
    if let Some(Ok(kept)) = std::str::from_utf8(&kept).ok().map(KeyPair::from_pem) {
        return Ok(kept);
    }
    tracing::warn!(
        "{} is unreadable; generating a new leaf key",
        store.location(&LEAF_KEY)
    );
    let version = store.version(&LEAF_KEY)?;
    store.write(&LEAF_KEY, pem.as_bytes(), version)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CaProfile;
    use crate::store::{DataDir, FileBackend};

    #[test]
    fn leaf_carries_names_and_is_backdated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let (ca, _) = CertificateAuthority::load_or_create(&dir, CaProfile::Cattle).unwrap();
        let store = FileBackend::new(dir.clone());
        let factory = LeafFactory::new(&store, Arc::new(ca), 365).unwrap();
        let names = [
            SubjectName::parse("alpha.lab.test").unwrap(),
            SubjectName::parse("127.0.0.7").unwrap(),
        ];
        let leaf = factory.mint(&names).unwrap();
        let (_, cert) = X509Certificate::from_der(&leaf.der).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(sans.general_names.len(), 2);
        let not_before = cert.validity().not_before.timestamp();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            now - not_before >= 3590,
            "not backdated: {}",
            now - not_before
        );
        let days = (cert.validity().not_after.timestamp() - not_before) / 86400;
        assert_eq!(days, 365);
        assert!(cert.serial.bits() > 64);
    }

    /// A rotated CA keeps its predecessor's name and the leaf key stays: a leaf of the old CA is
    /// not one the new CA's factory made (it would be served again after a rotation).
    #[test]
    fn a_leaf_of_a_rotated_out_ca_is_not_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let (old, _) = CertificateAuthority::load_or_create(&dir, CaProfile::Cattle).unwrap();
        let store = FileBackend::new(dir.clone());
        let old_factory = LeafFactory::new(&store, Arc::new(old), 365).unwrap();
        let leaf = old_factory
            .mint(&[SubjectName::parse("a.lab.test").unwrap()])
            .unwrap();
        assert!(old_factory.issued_here(&leaf.der).is_some());
        let new = CertificateAuthority::rotate(&dir, CaProfile::Cattle).unwrap();
        let new_factory = LeafFactory::new(&store, Arc::new(new), 365).unwrap();
        assert_eq!(new_factory.issued_here(&leaf.der), None);
        assert_eq!(new_factory.issued_by_ca(&leaf.der), None);
    }

    /// Key identifiers by RFC 5280 method 1 (SHA-1 of the subjectPublicKey bits), for the CA and the
    /// leaf, and the leaf's AKI names the CA's SKI.
    #[test]
    fn key_identifiers_are_rfc_5280_method_1() {
        use sha1::Digest;
        use x509_parser::extensions::ParsedExtension;
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let (ca, _) = CertificateAuthority::load_or_create(&dir, CaProfile::Cattle).unwrap();
        let ca_der = ca.der().to_vec();
        let store = FileBackend::new(dir.clone());
        let factory = LeafFactory::new(&store, Arc::new(ca), 365).unwrap();
        let leaf = factory
            .mint(&[SubjectName::parse("a.lab.test").unwrap()])
            .unwrap();
        let ski = |der: &[u8]| {
            let (_, cert) = X509Certificate::from_der(der).unwrap();
            let method_1 = sha1::Sha1::digest(cert.public_key().subject_public_key.data.as_ref());
            let ski = cert
                .iter_extensions()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                    _ => None,
                });
            (ski.expect("an SKI"), method_1.to_vec())
        };
        let (ca_ski, ca_method_1) = ski(&ca_der);
        assert_eq!(ca_ski, ca_method_1);
        let (leaf_ski, leaf_method_1) = ski(&leaf.der);
        assert_eq!(leaf_ski, leaf_method_1);
        let (_, cert) = X509Certificate::from_der(&leaf.der).unwrap();
        let aki = cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            });
        assert_eq!(aki, Some(ca_ski));
    }
}
