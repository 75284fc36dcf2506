//! A small HTTPS client for corral's own commands (`corral agent`, `corral kubeconfig`): one request
//! per connection over rustls, either verifying against given roots or, like `curl --insecure`, not.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long one request may take, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body read.
const MAX_BODY: usize = 16 << 20;

/// Why a command's request to corral failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {0:?}: {1}")]
    InvalidUrl(String, url::ParseError),
    #[error("invalid URL {0:?}: the scheme must be https")]
    NotHttps(String),
    #[error("invalid URL {0:?}: no host")]
    NoHost(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{method} {path}: timed out")]
    Timeout { method: String, path: String },
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
    #[error("{method} {path}: {source}")]
    Exchange {
        method: String,
        path: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("bad CA PEM: {0}")]
    Pem(rustls::pki_types::pem::Error),
    #[error("bad CA certificate: {0}")]
    CaCertificate(rustls::Error),
    #[error("no CA certificate in the PEM")]
    NoCa,
    #[error("no system root certificates ({0}): install ca-certificates, or set SSL_CERT_FILE")]
    NoSystemRoots(String),
    #[error("{0}")]
    Tls(#[from] rustls::Error),
}

/// Where a command reaches corral's API and as whom: `--server`, `--token`, and how the server
/// is verified (`--cacert`, or `--insecure`).
#[derive(Debug, Clone, clap::Args)]
pub struct ApiTarget {
    /// The corral server.
    #[arg(
        long,
        env = "CATTLE_SERVER",
        default_value = "https://127.0.0.1:8443",
        value_name = "URL"
    )]
    pub server: String,
    /// A login token or API key (`token-xxxxx:secret`).
    #[arg(
        long,
        env = "CORRAL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: String,
    /// Verify the server against this CA file (e.g. saved from /cacerts).
    #[arg(long, value_name = "FILE", required_unless_present = "insecure")]
    pub cacert: Option<std::path::PathBuf>,
    /// Do not verify the server's certificate.
    #[arg(long)]
    pub insecure: bool,
}

/// Why a call to corral's API got no answer it could use.
#[derive(Debug, thiserror::Error)]
pub enum ApiCallError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("unexpected answer ({status}): {source}")]
    Unexpected {
        status: StatusCode,
        source: serde_json::Error,
    },
    /// norman's error: its status and message.
    #[error("{status}: {message}")]
    Refused { status: StatusCode, message: String },
}

impl ApiTarget {
    fn tls(&self) -> Result<Arc<ClientConfig>, ApiCallError> {
        match &self.cacert {
            Some(path) if !self.insecure => {
                let pem = std::fs::read(path).map_err(|source| ApiCallError::Read {
                    path: path.clone(),
                    source,
                })?;
                Ok(tls_trusting(&pem, &[b"http/1.1"])?)
            }
            _ => Ok(tls_insecure(&[b"http/1.1"])),
        }
    }

    /// One call with the token: the JSON answer of a success (`null` for an empty body), norman's
    /// message of a refusal.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ApiCallError> {
        let target = Target::parse(&self.server)?;
        let bearer = format!("Bearer {}", self.token);
        let mut headers = Vec::new();
        if !self.token.is_empty() {
            headers.push(("authorization", bearer.as_str()));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let (status, bytes) = target
            .request(
                self.tls()?,
                method,
                path,
                &headers,
                body.map(|b| b.to_string()),
            )
            .await?;
        let json: serde_json::Value = match bytes.is_empty() {
            true => serde_json::Value::Null,
            false => serde_json::from_slice(&bytes)
                .map_err(|source| ApiCallError::Unexpected { status, source })?,
        };
        if !status.is_success() {
            let message = json["message"].as_str().unwrap_or("no message").to_string();
            return Err(ApiCallError::Refused { status, message });
        }
        Ok(json)
    }

    /// A GET of `path` as text (`/cacerts`), without the token.
    pub async fn text(&self, path: &str) -> Result<String, ApiCallError> {
        let target = Target::parse(&self.server)?;
        let (status, bytes) = target.request(self.tls()?, "GET", path, &[], None).await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match status.is_success() {
            true => Ok(text),
            false => Err(ApiCallError::Refused {
                status,
                message: text,
            }),
        }
    }
}

/// Why `corral healthcheck` failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("invalid --url {0:?}: {1}")]
    InvalidUrl(String, url::ParseError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{url} answered {status}")]
    Unhealthy { url: String, status: StatusCode },
}

/// `corral healthcheck`: a GET of `url` (`https://`, without verifying the certificate: the check
/// runs beside the server; or `http://`, behind a proxy that terminates TLS), successful when the
/// answer is.
pub async fn healthcheck(url: &str) -> Result<(), HealthError> {
    let parsed = url::Url::parse(url).map_err(|e| HealthError::InvalidUrl(url.into(), e))?;
    let authority = &parsed[url::Position::BeforeHost..url::Position::AfterPort];
    let target = Target::parse(&format!("https://{authority}"))?;
    let status = match parsed.scheme() {
        "http" => {
            let port = parsed.port_or_known_default().unwrap_or(80);
            let target = Target { port, ..target };
            tokio::time::timeout(REQUEST_TIMEOUT, plain_get(&target, parsed.path()))
                .await
                .map_err(|_| ClientError::Timeout {
                    method: "GET".into(),
                    path: parsed.path().into(),
                })??
        }
        _ => {
            let insecure = tls_insecure(&[b"http/1.1"]);
            let (status, _) = target
                .request(insecure, "GET", parsed.path(), &[], None)
                .await?;
            status
        }
    };
    match status.is_success() {
        true => Ok(()),
        false => Err(HealthError::Unhealthy {
            url: url.into(),
            status,
        }),
    }
}

/// A TCP connection to `authority`, its failure naming it.
async fn connect_tcp(authority: &str) -> Result<TcpStream, ConnectError> {
    TcpStream::connect(authority)
        .await
        .map_err(|source| ConnectError::Tcp {
            authority: authority.to_string(),
            source,
        })
}

/// One plain-HTTP GET of `path` on `target`; its status.
async fn plain_get(target: &Target, path: &str) -> Result<StatusCode, ClientError> {
    let authority = target.authority();
    let tcp = connect_tcp(&authority).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let request = Request::builder()
        .uri(path)
        .header(hyper::header::HOST, authority)
        .body(Full::new(Bytes::new()))?;
    Ok(sender.send_request(request).await?.status())
}

/// A parsed `https://host[:port]` base URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(base: &str) -> Result<Self, ClientError> {
        let url = url::Url::parse(base).map_err(|e| ClientError::InvalidUrl(base.into(), e))?;
        if url.scheme() != "https" {
            return Err(ClientError::NotHttps(base.into()));
        }
        let host = url
            .host_str()
            .ok_or_else(|| ClientError::NoHost(base.into()))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Self {
            host,
            port: url.port_or_known_default().unwrap_or(443),
        })
    }

    /// `host:port`, with IPv6 brackets, for the Host header and socket address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn server_name(&self) -> Result<ServerName<'static>, ConnectError> {
        ServerName::try_from(self.host.clone())
            .map_err(|source| ConnectError::ServerName(self.host.clone(), source))
    }

    /// Opens a TLS connection with `tls`.
    pub async fn connect(
        &self,
        tls: Arc<ClientConfig>,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
        self.handshake(tls).await
    }

    /// Opens a TLS connection with `tls`, telling a certificate for another name from other failures.
    pub async fn handshake(
        &self,
        tls: Arc<ClientConfig>,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
        let authority = self.authority();
        let tcp = connect_tcp(&authority).await?;
        // Small tunnel messages must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let name = self.server_name()?;
        TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| match name_mismatch(&e) {
                Some((expected, presented)) => ConnectError::NameMismatch {
                    expected,
                    presented,
                },
                None => ConnectError::Tls {
                    authority,
                    source: e,
                },
            })
    }

    /// One request; returns the status and body.
    pub async fn request(
        &self,
        tls: Arc<ClientConfig>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.request_inner(tls, method, path, headers, body),
        )
        .await
        .map_err(|_| ClientError::Timeout {
            method: method.into(),
            path: path.into(),
        })?
    }

    async fn request_inner(
        &self,
        tls: Arc<ClientConfig>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let exchange = |source| ClientError::Exchange {
            method: method.into(),
            path: path.into(),
            source,
        };
        let stream = self.connect(tls).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.authority());
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| exchange(e.into()))?;
        let status = response.status();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_BODY);
        let bytes = limited.collect().await.map_err(exchange)?.to_bytes();
        Ok((status, bytes))
    }
}

/// Why a TLS connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The certificate verified but names other hosts than the one connected to.
    #[error(
        "name mismatch: the certificate is for {}, not {expected}",
        match presented.is_empty() {
            true => "no name".to_string(),
            false => presented.join(", "),
        }
    )]
    NameMismatch {
        expected: String,
        presented: Vec<String>,
    },
    #[error("cannot connect to {authority}: {source}")]
    Tcp {
        authority: String,
        source: std::io::Error,
    },
    #[error("invalid server name {0}: {1}")]
    ServerName(String, rustls::pki_types::InvalidDnsNameError),
    #[error("TLS with {authority} failed: {source}")]
    Tls {
        authority: String,
        source: std::io::Error,
    },
}

/// The names of a certificate refused for another name: `(expected, presented)`.
fn name_mismatch(error: &std::io::Error) -> Option<(String, Vec<String>)> {
    use rustls::{CertificateError, Error};
    let Error::InvalidCertificate(CertificateError::NotValidForNameContext {
        expected,
        presented,
    }) = error.get_ref()?.downcast_ref::<Error>()?
    else {
        return None;
    };
    // webpki presents names as `DnsName("a.test")` or `IpAddress(…)`: keep what is quoted.
    let bare = |name: &String| match name.split_once('"') {
        Some((_, rest)) => rest.trim_end_matches(['"', ')']).to_string(),
        None => name.clone(),
    };
    Some((
        expected.to_str().into_owned(),
        presented.iter().map(bare).collect(),
    ))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// aws-lc-rs with only the classical key exchanges (X25519, then P-256): what the handshake
/// benchmark offers, so every server is measured on the same key exchange (nginx with OpenSSL 3.0
/// has no post-quantum hybrid).
pub fn classic_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::kx_group;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1];
    Arc::new(provider)
}

/// What a client trusts.
pub enum Trust<'a> {
    /// Only the certificates in this PEM (a CA bundle).
    Pem(&'a [u8]),
    /// Any certificate, as `curl --insecure`: only for fetching what is verified another way (the CA,
    /// checked against its checksum) or for load tests. Handshake signatures are still checked.
    Anything,
}

/// A client config with the given trust, ALPN and TLS versions.
pub fn tls_client(
    provider: Arc<CryptoProvider>,
    trust: Trust<'_>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, ClientError> {
    let builder =
        ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let mut config = match trust {
        Trust::Pem(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(cert.map_err(ClientError::Pem)?)
                    .map_err(ClientError::CaCertificate)?;
            }
            if roots.is_empty() {
                return Err(ClientError::NoCa);
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Anything => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// TLS whose server certificates `verifier` decides on (handshake signatures checked as usual).
pub fn tls_verified_by(
    verifier: Arc<dyn ServerCertVerifier>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, ClientError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The signature algorithms corral's TLS clients verify with.
pub fn signature_algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// TLS trusting the system's roots (the platform's store; `SSL_CERT_FILE` and `SSL_CERT_DIR` when
/// set), as a Go client without a CA of its own does.
pub fn tls_system(alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, ClientError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(ClientError::NoSystemRoots(
            found
                .errors
                .first()
                .map_or_else(|| "none found".to_string(), |e| e.to_string()),
        ));
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// TLS trusting only the certificates in `pem`.
pub fn tls_trusting(pem: &[u8], alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, ClientError> {
    tls_client(provider(), Trust::Pem(pem), alpn, rustls::DEFAULT_VERSIONS)
}

/// TLS accepting any certificate (see [`Trust::Anything`]).
pub fn tls_insecure(alpn: &[&[u8]]) -> Arc<ClientConfig> {
    tls_client(provider(), Trust::Anything, alpn, rustls::DEFAULT_VERSIONS)
        .expect("default versions are supported")
}

#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
