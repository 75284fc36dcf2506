//! A certificate ready to serve: the leaf, and the rustls `ServerConfig` that presents it; and the
//! template every minted certificate's config is cloned from.
//!
//! Building a `ServerConfig` is done once per minted leaf, not per connection: the accept path only
//! clones an `Arc`. Everything configs have in common (provider, key, session cache, ALPN) is shared.

use std::sync::Arc;

use super::CertError;
use crate::pki::{LeafFactory, MintedLeaf};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::{ServerConfig, version};

/// Sessions remembered for TLS 1.3 resumption, shared by every certificate.
const SESSION_CACHE_SIZE: usize = 4096;

/// A leaf and the config that serves it.
#[derive(Debug)]
pub struct Served {
    pub config: Arc<ServerConfig>,
    /// The chain and key the config serves (the only copy of the leaf).
    certified: Arc<CertifiedKey>,
    /// Unix seconds after which the leaf is no longer valid.
    pub not_after: i64,
}

impl Served {
    /// The leaf certificate served.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.certified.cert[0]
    }

    /// The whole chain served, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The chain and key, as a certificate resolver hands them to rustls.
    pub fn certified(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// Whether the leaf expires within `window_secs` from `now` (unix seconds) and must be re-minted.
    pub fn expires_within(&self, now: i64, window_secs: i64) -> bool {
        self.not_after - now <= window_secs
    }
}

/// The parts every minted certificate's `ServerConfig` shares, kept as a template that each new
/// certificate clones (cheaper than building and validating a config per mint).
pub struct ConfigTemplate {
    template: ServerConfig,
    key: Arc<dyn SigningKey>,
    ca: CertificateDer<'static>,
}

impl ConfigTemplate {
    /// The template for leaves from `factory`: TLS 1.2 and 1.3 with aws-lc-rs, ALPN `http/1.1` only (as
    /// Rancher's dynamic listener), the chain leaf + CA, resumption on or off.
    pub fn new(factory: &LeafFactory, resumption: bool) -> Result<Self, rustls::Error> {
        let provider = Arc::new(server_provider());
        let key = provider.key_provider.load_private_key(factory.key_der())?;
        // Leaked once per process so that every chain borrows the CA instead of copying it.
        let ca_bytes: &'static [u8] = Box::leak(factory.ca().der().to_vec().into_boxed_slice());
        Ok(Self {
            template: base_config(provider, resumption, &[b"http/1.1"])?,
            key,
            ca: CertificateDer::from(ca_bytes),
        })
    }

    /// A config that leaves the choice of certificate to `resolver`, called during the handshake.
    pub fn deferred(&self, resolver: Arc<dyn ResolvesServerCert>) -> Arc<ServerConfig> {
        let mut config = self.template.clone();
        config.cert_resolver = resolver;
        Arc::new(config)
    }

    /// Whether a handshake with this hello can complete with a minted certificate: an ALPN protocol
    /// (if the client offers any), a cipher suite, a signature scheme for the leaf key and a key
    /// exchange group (if the client lists them) in common. The protocol version rustls checks
    /// before it asks for a certificate.
    pub fn can_complete(&self, hello: &ClientHello<'_>) -> bool {
        let provider = self.template.crypto_provider();
        let ours = &self.template.alpn_protocols;
        let alpn = hello
            .alpn()
            .is_none_or(|mut offered| offered.any(|p| ours.iter().any(|o| o == p)));
        let suite = provider
            .cipher_suites
            .iter()
            .any(|s| hello.cipher_suites().contains(&s.suite()));
        let signature = self.key.choose_scheme(hello.signature_schemes()).is_some();
        let group = hello.named_groups().is_none_or(|offered| {
            provider
                .kx_groups
                .iter()
                .any(|g| offered.contains(&g.name()))
        });
        alpn && suite && signature && group
    }

    /// Wraps a minted leaf into a servable certificate.
    pub fn serve(&self, leaf: MintedLeaf) -> Result<Served, rustls::Error> {
        self.serve_signed(leaf, self.key.clone())
    }

    /// Wraps a leaf of a key of its own (`--hostname-certificate cert-manager`) into a servable
    /// certificate; the key must be the leaf's.
    pub fn serve_with_key(
        &self,
        leaf: MintedLeaf,
        key: PrivateKeyDer<'static>,
    ) -> Result<Served, rustls::Error> {
        let served = self.serve_signed(leaf, self.load_key(key)?)?;
        served.certified.keys_match()?;
        Ok(served)
    }

    /// A config serving `chain` (leaf first) with `key`, the leaf's, as given: a lab scenario's
    /// certificate, whose chain is not the usual leaf + CA.
    pub fn serve_chain(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let certified = Arc::new(CertifiedKey::new(chain, self.load_key(key)?));
        certified.keys_match()?;
        Ok(self.serving(certified))
    }

    fn load_key(&self, key: PrivateKeyDer<'static>) -> Result<Arc<dyn SigningKey>, rustls::Error> {
        let provider = self.template.crypto_provider();
        provider.key_provider.load_private_key(key)
    }

    /// The template serving `certified` to every client.
    fn serving(&self, certified: Arc<CertifiedKey>) -> Arc<ServerConfig> {
        let mut config = self.template.clone();
        config.cert_resolver = Arc::new(SingleCertAndKey::from(certified));
        Arc::new(config)
    }

    fn serve_signed(
        &self,
        leaf: MintedLeaf,
        key: Arc<dyn SigningKey>,
    ) -> Result<Served, rustls::Error> {
        let chain = vec![leaf.der, self.ca.clone()];
        let certified = Arc::new(CertifiedKey::new(chain, key));
        Ok(Served {
            config: self.serving(certified.clone()),
            certified,
            not_after: leaf.not_after.unix_timestamp(),
        })
    }
}

/// A bring-your-own chain and key, served as given; ALPN offers `h2` and `http/1.1` (Rancher enables
/// HTTP/2 outside the dynamic listener).
pub fn serve_files(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_after: i64,
    resumption: bool,
) -> Result<Served, rustls::Error> {
    let (config, certified) = single_cert_config(chain, key, resumption, &[b"h2", b"http/1.1"])?;
    certified.keys_match()?;
    Ok(Served {
        config,
        certified,
        not_after,
    })
}

/// TLS-ALPN-01 (RFC 8737): a self-signed certificate for `domain` carrying the critical
/// acmeIdentifier extension (`digest`: SHA-256 of the key authorization), for ALPN `acme-tls/1` only.
pub fn alpn_challenge_config(
    domain: &str,
    digest: impl AsRef<[u8]>,
) -> Result<Arc<ServerConfig>, CertError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let cert = params.self_signed(&key)?;
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let (config, _) = single_cert_config(vec![cert.der().clone()], key, false, &[b"acme-tls/1"])?;
    Ok(config)
}

/// A config that serves one given chain and key with `alpn`. The key is not checked against the
/// certificate here: webpki's parse behind `keys_match` refuses the critical acmeIdentifier
/// extension of a TLS-ALPN-01 certificate.
fn single_cert_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    resumption: bool,
    alpn: &[&[u8]],
) -> Result<(Arc<ServerConfig>, Arc<CertifiedKey>), rustls::Error> {
    let provider = Arc::new(server_provider());
    let key = provider.key_provider.load_private_key(key)?;
    let certified = Arc::new(CertifiedKey::new(chain, key));
    let mut config = base_config(provider, resumption, alpn)?;
    config.cert_resolver = Arc::new(SingleCertAndKey::from(certified.clone()));
    Ok((Arc::new(config), certified))
}

/// TLS 1.3 and 1.2, the server's suite order, `alpn`, and resumption on or off.
fn base_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    resumption: bool,
    alpn: &[&[u8]],
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.ignore_client_order = true;
    if resumption {
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    } else {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(config)
}

/// The template's placeholder: every real config gets its own certificate.
#[derive(Debug)]
struct NoCertificate;

impl rustls::server::ResolvesServerCert for NoCertificate {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

/// aws-lc-rs with AES-128-GCM-SHA256 preferred (the server chooses, as Go's crypto/tls does with
/// AES hardware): it is as strong in practice and avoids SHA-384's key schedule, which costs more than
/// the ECDSA signature on CPUs without SHA-512 instructions. The same suites are offered either way.
fn server_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::aws_lc_rs::cipher_suite::*;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    provider
}
