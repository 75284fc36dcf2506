//! The TLS an agent answers for the cluster API it advertises, when that API does not speak TLS
//! itself: a plain-HTTP target (the agent relays the plaintext) or a simulated cluster (the agent
//! serves the API). Rancher, and corral, always speak TLS to the advertised address through the
//! tunnel and refuse an agent that sends no `caCert`; so the agent makes a CA when it starts, sends it
//! as `caCert`, and answers the handshake with a certificate from it for the advertised host.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::tunnel::TunnelStream;
use crate::tunnel::dial::dial;

/// How long the server gets to complete its TLS handshake through the tunnel.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the agent could not answer TLS for its API.
#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    #[error("--address {0:?} needs a port")]
    NoPort(String),
    #[error("cannot make the agent's CA: {0}")]
    Ca(#[from] rcgen::Error),
    #[error("cannot serve the agent's certificate: {0}")]
    Serve(#[from] rustls::Error),
}

/// A CA of the agent's own and the acceptor that presents a certificate from it.
pub struct ApiTls {
    /// The CA, PEM: what the agent advertises as `caCert`.
    ca_pem: String,
    acceptor: TlsAcceptor,
}

impl ApiTls {
    /// A new CA, and a certificate from it for the host of `address` (`host:port`).
    pub fn new(address: &str) -> Result<Self, ApiTlsError> {
        let (host, _) = crate::support::split_host_port(address)
            .ok_or_else(|| ApiTlsError::NoPort(address.into()))?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "corral-agent-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        // A host that is an IP literal becomes an IP SAN, anything else a DNS name.
        let leaf_key = KeyPair::generate()?;
        let leaf = CertificateParams::new(vec![host.to_string()])?.signed_by(&leaf_key, &issuer)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_no_client_auth().with_single_cert(
                    vec![leaf.der().clone(), ca_cert.der().clone()],
                    PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
                )
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            ca_pem: ca_cert.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Completes the TLS handshake the server opens on `stream`; `None` (logged) when it fails.
    pub async fn accept(&self, stream: TunnelStream) -> Option<TlsStream<TunnelStream>> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                tracing::debug!("TLS from the server through the tunnel: {e}");
                None
            }
            Err(_) => {
                tracing::debug!("TLS from the server through the tunnel timed out");
                None
            }
        }
    }
}

/// A plain-HTTP target behind the advertised address: the agent answers the TLS, relays plaintext.
pub struct TlsTerminator {
    tls: ApiTls,
    /// The advertised address, dialed in plain TCP for each stream.
    address: String,
}

impl TlsTerminator {
    pub fn new(address: &str) -> Result<Self, ApiTlsError> {
        Ok(Self {
            tls: ApiTls::new(address)?,
            address: address.to_string(),
        })
    }

    pub fn ca_pem(&self) -> &str {
        self.tls.ca_pem()
    }

    /// Whether a Connect for `proto`/`address` is one this terminator answers.
    pub fn answers(&self, proto: &str, address: &str) -> bool {
        proto == "tcp" && address == self.address
    }

    /// Dials the target, answers the server's TLS on `stream`, relays plaintext both ways.
    pub async fn serve(self: Arc<Self>, stream: TunnelStream) {
        let mut target = match dial("tcp", &self.address).await {
            Ok(target) => target,
            Err(e) => return stream.fail(&e.to_string()),
        };
        if let Some(mut tls) = self.tls.accept(stream).await {
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut target).await;
        }
    }
}
