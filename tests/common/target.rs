//! A stand-in for a downstream cluster's API server, on loopback: HTTPS with a CA made here (or plain
//! HTTP), answering `/version` like Kubernetes and offering a large body, a hanging request and a
//! WebSocket echo for the tunnel tests. Requests must carry the expected bearer token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;

pub const SA_TOKEN: &str = "downstream-service-account-token";
pub const VERSION_JSON: &str = r#"{"major":"1","minor":"31","gitVersion":"v1.31.4","gitCommit":"a78aa47129b8539636eb86a9d00e31b2720fe06b","gitTreeState":"clean","buildDate":"2024-12-10T18:36:14Z","goVersion":"go1.22.9","compiler":"gc","platform":"linux/amd64"}"#;

type Body = BoxBody<Bytes, Infallible>;

/// A CA and a leaf for 127.0.0.1 it signed, for the target's TLS; it can issue more leaves.
pub struct TestPki {
    pub ca_pem: String,
    pub leaf_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub leaf_key: rustls::pki_types::PrivateKeyDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf as PEM files hold it.
pub struct IssuedPem {
    pub cert: String,
    pub key: String,
}

impl TestPki {
    pub fn new(cn: &str) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, cn);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            leaf_chain: vec![leaf.der().clone(), ca_cert.der().clone()],
            leaf_key: rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            issuer,
        }
    }

    /// A new leaf for `names` (each a fresh serial and key), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> IssuedPem {
        self.issue_with(names, |_| {})
    }

    /// [`TestPki::issue`] with the parameters adjusted first (validity, extensions).
    pub fn issue_with(
        &self,
        names: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> IssuedPem {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        IssuedPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.leaf_chain.clone(), self.leaf_key.clone_key())
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// Starts a server on 127.0.0.1 with `handler`, over TLS when `tls` is given.
pub async fn serve<F, Fut>(tls: Option<Arc<rustls::ServerConfig>>, handler: F) -> SocketAddr
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (tls, handler) = (tls.clone(), handler.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(config) => {
                        if let Ok(stream) =
                            tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                        {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        }
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(tcp), service)
                            .with_upgrades()
                            .await;
                    }
                }
            });
        }
    });
    addr
}

pub fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

/// The fake Kubernetes API: `/version`, `/big?bytes=N` (streamed), `/watch?bytes=N` (streamed at
/// about 3 MB/s, as a chatty watch), `/slow?ms=N` (answers after N ms),
/// `/hang` (never answers), `/ws` (WebSocket echo), `/stall` (an upgrade that then neither reads
/// nor writes, as a stuck exec), `/headers` (the request's header names and its path, as JSON).
/// Every request needs `Authorization: Bearer SA_TOKEN`.
pub async fn kube_api(mut req: Request<hyper::body::Incoming>) -> Response<Body> {
    let expected = format!("Bearer {SA_TOKEN}");
    if req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        return full(
            StatusCode::UNAUTHORIZED,
            r#"{"kind":"Status","message":"Unauthorized","code":401}"#,
        );
    }
    match req.uri().path() {
        "/version" => full(StatusCode::OK, VERSION_JSON),
        "/headers" => {
            let names: Vec<&str> = req.headers().iter().map(|(k, _)| k.as_str()).collect();
            full(
                StatusCode::OK,
                serde_json::json!({ "headers": names, "uri": req.uri().to_string() }).to_string(),
            )
        }
        "/big" => {
            let total: usize = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("bytes="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1 << 20);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let chunks = (0..total.div_ceil(chunk.len())).map(move |i| {
                let len = chunk.len().min(total - i * chunk.len());
                Ok::<_, Infallible>(Frame::data(chunk.slice(..len)))
            });
            let body = StreamBody::new(futures_util::stream::iter(chunks));
            Response::new(BodyExt::boxed(body))
        }
        "/watch" => {
            // A chatty watch: 16 KiB events every 5 ms (about 3 MB/s) until `bytes` are sent.
            let total: usize = query_number(&req, "bytes").unwrap_or(1 << 20);
            let event = Bytes::from(vec![b'w'; 16 * 1024]);
            let events = futures_util::stream::unfold(0usize, move |sent| {
                let event = event.clone();
                async move {
                    if sent >= total {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let len = event.len().min(total - sent);
                    Some((
                        Ok::<_, Infallible>(Frame::data(event.slice(..len))),
                        sent + len,
                    ))
                }
            });
            Response::new(BodyExt::boxed(StreamBody::new(events)))
        }
        "/slow" => {
            let millis: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(millis)).await;
            full(StatusCode::OK, "slow")
        }
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(120)).await;
            full(StatusCode::OK, "late")
        }
        "/ws" => {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .unwrap()
                .as_bytes()
                .to_vec();
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let upgraded = upgrade.await.unwrap();
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        let _ = ws.send(message).await;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "websocket")
                .header("connection", "Upgrade")
                .header(
                    "sec-websocket-accept",
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key),
                )
                .body(Full::new(Bytes::new()).boxed())
                .unwrap()
        }
        "/stall" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    tokio::time::sleep(Duration::from_secs(120)).await;
                    drop(upgraded);
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "corral-stall")
                .header("connection", "Upgrade")
                .body(Full::new(Bytes::new()).boxed())
                .unwrap()
        }
        other => full(
            StatusCode::NOT_FOUND,
            format!(r#"{{"kind":"Status","code":404,"message":"no {other}"}}"#),
        ),
    }
}

/// The number `name=N` in a request's query.
fn query_number<B>(req: &Request<B>, name: &str) -> Option<usize> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        if key == name {
            value.parse().ok()
        } else {
            None
        }
    })
}
