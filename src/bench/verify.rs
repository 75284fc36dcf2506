//! How `corral bench handshake` decides on a server's certificate. The name is not checked here:
//! every completed handshake is then checked against the name it sent (`covers`), so that a
//! certificate for another name is a fallback, timed and described, with `--ca` as with
//! `--insecure`. With `--ca`, the chain is verified as curl and OpenSSL verify it: through a CA in
//! the file, or the server's certificate itself in the file (a self-signed server certificate
//! trusted directly, which webpki alone refuses when it says CA:TRUE). The signature schemes the
//! server signed with are counted for the report.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

use super::report::tally;
use crate::support::lock;

/// The bench's verifier; see the module's documentation.
#[derive(Debug)]
pub struct BenchVerifier {
    provider: Arc<CryptoProvider>,
    /// Chains to the certificates of `--ca`; `None` with `--insecure`, or when none of them can be
    /// an anchor.
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// The certificates of `--ca`, each trusted as a server certificate too; empty: `--insecure`.
    direct: Vec<CertificateDer<'static>>,
    /// How many handshakes the server signed with each scheme.
    /// Signatures verified, per scheme (a handful in a run: a list, searched; named in `schemes`).
    schemes: Mutex<Vec<(SignatureScheme, u64)>>,
}

impl BenchVerifier {
    /// A verifier of chains to the certificates in `ca_pem`, or of nothing (`None`, `--insecure`).
    pub fn new(provider: Arc<CryptoProvider>, ca_pem: Option<&[u8]>) -> Result<Self, String> {
        let Some(pem) = ca_pem else {
            return Ok(Self {
                provider,
                chain: None,
                direct: Vec::new(),
                schemes: Mutex::default(),
            });
        };
        let mut roots = rustls::RootCertStore::empty();
        let mut direct = Vec::new();
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(pem) {
            let cert: CertificateDer<'static> = cert.map_err(|e| format!("bad PEM: {e}"))?;
            // A server certificate that cannot be an anchor (an odd extension) is still trusted
            // directly.
            let _ = roots.add(cert.clone());
            direct.push(cert);
        }
        if direct.is_empty() {
            return Err("no certificate in it".into());
        }
        let chain = if roots.is_empty() {
            None
        } else {
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| e.to_string())?;
            Some(verifier)
        };
        Ok(Self {
            provider,
            chain,
            direct,
            schemes: Mutex::default(),
        })
    }

    /// Signature schemes the server signed handshakes with, and how often.
    pub fn schemes(&self) -> BTreeMap<String, u64> {
        lock(&self.schemes)
            .iter()
            .map(|(scheme, count)| (format!("{scheme:?}"), *count))
            .collect()
    }

    /// Counts a signature that verified.
    fn counted(
        &self,
        scheme: SignatureScheme,
        valid: Result<HandshakeSignatureValid, Error>,
    ) -> Result<HandshakeSignatureValid, Error> {
        if valid.is_ok() {
            tally(&mut lock(&self.schemes), scheme);
        }
        valid
    }

    /// Whether certificates are verified at all (`--ca`, not `--insecure`).
    fn verifying(&self) -> bool {
        !self.direct.is_empty()
    }
}

impl ServerCertVerifier for BenchVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if !self.verifying() {
            return Ok(ServerCertVerified::assertion());
        }
        let chained = match &self.chain {
            Some(chain) => {
                chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
            None => Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
        };
        match chained {
            Ok(verified) => Ok(verified),
            // The chain was verified before the name: the name is checked after the handshake.
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(error)
                if self
                    .direct
                    .iter()
                    .any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                directly_trusted(end_entity, now).map_err(|_| error)
            }
            Err(error) => Err(error),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        let valid = rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms);
        self.counted(dss.scheme, valid)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        let valid = rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms);
        self.counted(dss.scheme, valid)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A certificate the user trusts as itself: only its validity period is left to check (its
/// signature by itself proves nothing more, as OpenSSL's partial-chain trust does not check it).
fn directly_trusted(cert: &CertificateDer<'_>, now: UnixTime) -> Result<ServerCertVerified, Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let validity = parsed.validity();
    if now < validity.not_before.timestamp() {
        return Err(Error::InvalidCertificate(CertificateError::NotValidYet));
    }
    if now > validity.not_after.timestamp() {
        return Err(Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(ServerCertVerified::assertion())
}

/// Why the server's certificate was refused, in words a user can act on.
pub fn certificate_error_in_words(error: &CertificateError) -> String {
    use CertificateError as E;
    match error {
        E::UnknownIssuer => "issued by a CA that is not in --ca".into(),
        E::Expired | E::ExpiredContext { .. } => "expired".into(),
        E::NotValidYet | E::NotValidYetContext { .. } => "not valid yet".into(),
        E::BadEncoding => "not a well-formed certificate".into(),
        E::BadSignature => "its signature does not verify".into(),
        E::Revoked => "revoked".into(),
        E::UnsupportedSignatureAlgorithmContext { .. } => {
            "signed with an algorithm this client does not support".into()
        }
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => {
            "not for TLS servers (its extended key usage)".into()
        }
        E::Other(other) => match other.to_string().as_str() {
            "CaUsedAsEndEntity" => {
                "a CA certificate (CA:TRUE) served as the server's own, and not itself in --ca"
                    .into()
            }
            "EndEntityUsedAsCa" => "a server certificate used as a CA in the chain".into(),
            "PathLenConstraintViolated" => "the chain is longer than a CA allows".into(),
            "RequiredEkuNotFound" => "not for TLS servers (its extended key usage)".into(),
            text => text.to_string(),
        },
        other => format!("{other:?}")
            .split([' ', '(', '{'])
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn self_signed(is_ca: bool, names: &[&str]) -> (String, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if is_ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        // A subject of its own: rcgen's default one would name every test certificate alike, and
        // a verifier would take one for the issuer of another.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("{} {}", names[0], rand::random::<u32>()),
        );
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), cert.der().clone())
    }

    fn verify(
        verifier: &BenchVerifier,
        cert: &CertificateDer<'_>,
        name: &str,
    ) -> Result<(), Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn a_self_signed_ca_certificate_in_ca_is_trusted_directly() {
        let (pem, der) = self_signed(true, &["nginx.lab.test"]);
        let verifier = BenchVerifier::new(provider(), Some(pem.as_bytes())).unwrap();
        assert!(verify(&verifier, &der, "nginx.lab.test").is_ok());
        // The name is checked after the handshake, not here.
        assert!(verify(&verifier, &der, "other.lab.test").is_ok());
        // Another self-signed certificate is not.
        let (_, stranger) = self_signed(true, &["nginx.lab.test"]);
        let refused = verify(&verifier, &stranger, "nginx.lab.test").unwrap_err();
        let Error::InvalidCertificate(reason) = refused else {
            panic!("{refused:?}")
        };
        assert!(!certificate_error_in_words(&reason).is_empty());
    }

    #[test]
    fn a_leaf_of_a_ca_in_ca_verifies_and_a_stranger_is_refused_in_words() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "bench test CA");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["leaf.lab.test".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let verifier = BenchVerifier::new(provider(), Some(ca_pem.as_bytes())).unwrap();
        assert!(verify(&verifier, leaf.der(), "leaf.lab.test").is_ok());

        let (_, stranger) = self_signed(false, &["leaf.lab.test"]);
        let Err(Error::InvalidCertificate(reason)) = verify(&verifier, &stranger, "leaf.lab.test")
        else {
            panic!("refused")
        };
        assert_eq!(
            certificate_error_in_words(&reason),
            "issued by a CA that is not in --ca"
        );
        assert!(BenchVerifier::new(provider(), Some(b"nothing")).is_err());
    }
}
