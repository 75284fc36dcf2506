//! Certificates broken on purpose, for lab scenarios: each one a leaf for a name that a client
//! must refuse for exactly one reason (or, for the RSA and size cases, accept while it costs more).
//! The other CAs they need (an untrusted root, an intermediate of the CA) are made once per kit.

use std::fmt;
use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, RsaKeySize,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::factory::leaf_params;
use super::{LeafFactory, SubjectName, dn_value, random_serial};

/// The name a `wrong-host` leaf is for (`.invalid` is reserved: it can never be the name asked).
pub const WRONG_HOST: &str = "wrong.host.invalid";

/// How many names a `many-sans` leaf carries.
pub const MANY_SANS: usize = 1000;

/// The certificate cases, named as badssl.com's hosts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Valid from 31 days ago until yesterday.
    Expired,
    /// Valid from tomorrow.
    NotYetValid,
    /// For `wrong.host.invalid` only.
    WrongHost,
    /// The leaf signs itself; no CA in the chain.
    SelfSigned,
    /// Signed by another CA (sent along), which nobody trusts.
    UntrustedRoot,
    /// Signed by an intermediate of the CA that is not sent.
    IncompleteChain,
    /// The name in the subject's CN only, no subjectAltName.
    NoSan,
    Rsa2048,
    Rsa4096,
    /// The name and 999 more in the subjectAltName.
    ManySans,
    /// Valid when first served, for a short lifetime: it expires while clients use it.
    ShortLived,
}

impl Scenario {
    pub const ALL: [Scenario; 11] = [
        Scenario::Expired,
        Scenario::NotYetValid,
        Scenario::WrongHost,
        Scenario::SelfSigned,
        Scenario::UntrustedRoot,
        Scenario::IncompleteChain,
        Scenario::NoSan,
        Scenario::Rsa2048,
        Scenario::Rsa4096,
        Scenario::ManySans,
        Scenario::ShortLived,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Expired => "expired",
            Scenario::NotYetValid => "not-yet-valid",
            Scenario::WrongHost => "wrong-host",
            Scenario::SelfSigned => "self-signed",
            Scenario::UntrustedRoot => "untrusted-root",
            Scenario::IncompleteChain => "incomplete-chain",
            Scenario::NoSan => "no-san",
            Scenario::Rsa2048 => "rsa-2048",
            Scenario::Rsa4096 => "rsa-4096",
            Scenario::ManySans => "many-sans",
            Scenario::ShortLived => "short-lived",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == text)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scenario's certificate: the chain to send, leaf first, and the leaf's key.
pub struct ScenarioCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_after: OffsetDateTime,
}

/// What the scenarios share for one CA: keys and CAs are made on first use (an RSA-4096 key takes
/// a second or more), leaves per name.
#[derive(Default)]
pub struct ScenarioKit {
    untrusted_root: OnceLock<Result<Authority, rcgen::Error>>,
    intermediate: OnceLock<Result<Authority, rcgen::Error>>,
    rsa_2048: OnceLock<Result<KeyPair, rcgen::Error>>,
    rsa_4096: OnceLock<Result<KeyPair, rcgen::Error>>,
}

/// A CA of the kit's own: its certificate and what signs with it.
struct Authority {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl ScenarioKit {
    /// Makes what `scenario` needs beyond a leaf (keys, CAs), so that the first handshake does
    /// not wait for it.
    pub fn prepare(&self, factory: &LeafFactory, scenario: Scenario) -> Result<(), rcgen::Error> {
        match scenario {
            Scenario::UntrustedRoot => self.untrusted_root().map(drop),
            Scenario::IncompleteChain => self.intermediate(factory).map(drop),
            Scenario::Rsa2048 | Scenario::Rsa4096 => self.rsa(scenario).map(drop),
            _ => Ok(()),
        }
    }

    /// The leaf `scenario` serves to a client that asked for `name`, signed now (`lifetime`: how
    /// long a `short-lived` leaf lasts from now).
    pub fn leaf(
        &self,
        factory: &LeafFactory,
        scenario: Scenario,
        name: &SubjectName,
        lifetime: Duration,
    ) -> Result<ScenarioCert, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        let ca = factory.ca();
        let normal = (
            (now - Duration::hours(1)).max(ca.not_before()),
            now + Duration::days(365),
        );
        let names = std::slice::from_ref(name);
        let ecdsa = || KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (key, params) = match scenario {
            Scenario::Expired => {
                let key = ecdsa()?;
                let window = (now - Duration::days(31), now - Duration::days(1));
                let params = leaf_params(names, &key, window.0, window.1)?;
                (key, params)
            }
            Scenario::NotYetValid => {
                let key = ecdsa()?;
                let window = (now + Duration::days(1), now + Duration::days(366));
                let params = leaf_params(names, &key, window.0, window.1)?;
                (key, params)
            }
            Scenario::WrongHost => {
                let key = ecdsa()?;
                let wrong = [SubjectName::Dns(WRONG_HOST.into())];
                let params = leaf_params(&wrong, &key, normal.0, normal.1)?;
                (key, params)
            }
            Scenario::SelfSigned => {
                let key = ecdsa()?;
                let params = leaf_params(names, &key, normal.0, normal.1)?;
                let der = params.self_signed(&key)?.der().clone();
                return Ok(scenario_cert(vec![der], &key, params.not_after));
            }
            Scenario::UntrustedRoot => {
                let key = ecdsa()?;
                let params = leaf_params(names, &key, normal.0, normal.1)?;
                let root = self.untrusted_root()?;
                let der = params.signed_by(&key, &root.issuer)?.der().clone();
                let chain = vec![der, root.der.clone()];
                return Ok(scenario_cert(chain, &key, params.not_after));
            }
            Scenario::IncompleteChain => {
                let key = ecdsa()?;
                let params = leaf_params(names, &key, normal.0, normal.1)?;
                let intermediate = self.intermediate(factory)?;
                let der = params.signed_by(&key, &intermediate.issuer)?.der().clone();
                return Ok(scenario_cert(vec![der], &key, params.not_after));
            }
            Scenario::NoSan => {
                let key = ecdsa()?;
                let mut params = leaf_params(&[], &key, normal.0, normal.1)?;
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, dn_value(&name.as_text()));
                params.distinguished_name = dn;
                (key, params)
            }
            Scenario::Rsa2048 | Scenario::Rsa4096 => {
                let shared = self.rsa(scenario)?;
                let key = KeyPair::from_pkcs8_der_and_sign_algo(
                    &PrivatePkcs8KeyDer::from(shared.serialize_der()),
                    &rcgen::PKCS_RSA_SHA256,
                )?;
                let params = leaf_params(names, &key, normal.0, normal.1)?;
                (key, params)
            }
            Scenario::ShortLived => {
                let key = ecdsa()?;
                let params = leaf_params(names, &key, normal.0, now + lifetime)?;
                (key, params)
            }
            Scenario::ManySans => {
                let key = ecdsa()?;
                let mut many = vec![name.clone()];
                many.extend(
                    (1..MANY_SANS).map(|i| SubjectName::Dns(format!("san-{i}.many-sans.invalid"))),
                );
                let params = leaf_params(&many, &key, normal.0, normal.1)?;
                (key, params)
            }
        };
        let der = params.signed_by(&key, ca.issuer())?.der().clone();
        let chain = vec![der, CertificateDer::from(ca.der().to_vec())];
        Ok(scenario_cert(chain, &key, params.not_after))
    }

    fn untrusted_root(&self) -> Result<&Authority, rcgen::Error> {
        let made = self
            .untrusted_root
            .get_or_init(|| authority("corral-untrusted-root", None));
        made.as_ref().map_err(Clone::clone)
    }

    fn intermediate(&self, factory: &LeafFactory) -> Result<&Authority, rcgen::Error> {
        let made = self
            .intermediate
            .get_or_init(|| authority("corral-intermediate", Some(factory)));
        made.as_ref().map_err(Clone::clone)
    }

    fn rsa(&self, scenario: Scenario) -> Result<&KeyPair, rcgen::Error> {
        let (cell, size) = match scenario {
            Scenario::Rsa4096 => (&self.rsa_4096, RsaKeySize::_4096),
            _ => (&self.rsa_2048, RsaKeySize::_2048),
        };
        let made = cell.get_or_init(|| KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size));
        made.as_ref().map_err(Clone::clone)
    }
}

/// A CA named `name`: self-signed, or signed by `factory`'s CA (an intermediate).
fn authority(name: &str, parent: Option<&LeafFactory>) -> Result<Authority, rcgen::Error> {
    let now = OffsetDateTime::now_utc();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, dn_value("corral-lab"));
    dn.push(DnType::CommonName, dn_value(name));
    params.distinguished_name = dn;
    params.serial_number = Some(random_serial());
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    params.key_identifier_method = super::key_identifier(key.public_key_raw());
    let cert = match parent {
        None => {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.self_signed(&key)?
        }
        Some(factory) => {
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.not_before = params.not_before.max(factory.ca().not_before());
            params.use_authority_key_identifier_extension = true;
            params.signed_by(&key, factory.ca().issuer())?
        }
    };
    let der = cert.der().clone();
    Ok(Authority {
        issuer: Issuer::new(params, key),
        der,
    })
}

fn scenario_cert(
    chain: Vec<CertificateDer<'static>>,
    key: &KeyPair,
    not_after: OffsetDateTime,
) -> ScenarioCert {
    ScenarioCert {
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        not_after,
    }
}
