//! The cluster proxy: `/k8s/clusters/<id>/…` forwarded through the cluster's tunnel to the API
//! address its agent advertised, TLS-verified with the CA the agent sent, presenting the agent's
//! token instead of the caller's. Bodies stream both ways; upgrades (websocket, SPDY for `kubectl
//! exec`) are spliced through.
//!
//! Everything until the cluster API has answered the TLS handshake — the agent connecting, room in
//! its tunnel for the Connect, the round trip through it — shares one wait (`--agent-wait`): an agent
//! that is gone or stuck costs the caller that long at most.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use base64::Engine;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use crate::clusters::{ClusterParams, Clusters};
use crate::tunnel::{TunnelRegistry, TunnelStream};

/// Headers that belong to one hop and are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Why the proxy could not reach a cluster's API through its tunnel (a 502 says so).
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("{0}")]
    Stream(std::io::Error),
    #[error("the agent's caCert is not base64: {0}")]
    CaNotBase64(base64::DecodeError),
    #[error(transparent)]
    Ca(#[from] crate::client::ClientError),
    #[error("bad address {0}")]
    Address(String),
    #[error("TLS to {address} failed: {source}")]
    Tls {
        address: String,
        source: std::io::Error,
    },
}

/// Why a request cannot be forwarded as it is (a 400 says so).
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("bad path: {0}")]
    Path(#[from] axum::http::uri::InvalidUri),
    #[error("{0}")]
    Header(#[from] axum::http::header::InvalidHeaderValue),
    #[error("{0}")]
    HeaderName(#[from] axum::http::header::InvalidHeaderName),
}

/// The path and query to send upstream: what follows the proxy's prefix (`/` when nothing does),
/// with the caller's query.
pub fn upstream_target(rest: &str, query: Option<&str>) -> String {
    let path = if rest.is_empty() { "/" } else { rest };
    match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    }
}

/// A path segment percent-decoded, as the router reads path parameters (`None`: not UTF-8).
pub fn decode_segment(raw: &str) -> Option<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

/// The most the proxy's HTTP client reads ahead of its caller from the cluster.
const UPSTREAM_READ_BUFFER: usize = 64 * 1024;

/// How often the proxy looks again for what a peer's agent advertised.
const PARAMS_POLL: Duration = Duration::from_millis(50);

/// Forwards `req` to `path_and_query` on `cluster_id`'s API, waiting up to `wait` for its agent.
pub async fn forward(
    registry: &TunnelRegistry,
    clusters: &Clusters,
    cluster_id: &str,
    wait: Duration,
    req: Request<Body>,
    path_and_query: &str,
    impersonate: Option<&Impersonation>,
) -> Response<Body> {
    let deadline = tokio::time::Instant::now() + wait;
    let disconnected = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster agent disconnected",
        )
    };
    // A dial relayed by a peer takes that peer's oldest session for the cluster; if it ended just
    // as this replica chose whose params to use, the dial meets another agent's certificate: the
    // routes then differ, and the request is tried once more with the new route.
    let mut retried = false;
    let (io, params) = loop {
        let Some(route) = registry.wait_for(cluster_id, wait).await else {
            return disconnected();
        };
        let sessions = route.sessions();
        // What the agent advertised on the session the dial takes: from this replica's own tunnel,
        // or as saved by the replica that holds it (which can arrive just after that replica's
        // announcement: waited for, within the same deadline).
        let params = loop {
            if let Some(params) = clusters.agent_params(cluster_id, &sessions) {
                break params;
            }
            if tokio::time::Instant::now() >= deadline {
                return disconnected();
            }
            tokio::time::sleep(PARAMS_POLL).await;
        };
        let what = format!("cluster {cluster_id}");
        let opening = async {
            let stream = route
                .open_stream("tcp", &params.address)
                .await
                .map_err(ProxyError::Stream)?;
            tls_to_target(stream, &params).await
        };
        match open_within(deadline, wait, &what, opening).await {
            Ok(io) => break (io, params),
            Err(response) => {
                let moved = registry.route(cluster_id).map(|r| r.sessions()) != Some(sessions);
                if retried || !moved {
                    return response;
                }
                retried = true;
            }
        }
    };
    let upstream = Upstream {
        host: &params.address,
        bearer: Some(&params.token),
        what: format!("cluster {cluster_id}"),
        impersonate,
    };
    exchange(io, req, path_and_query, upstream).await
}

/// Forwards `req`, as plain HTTP, to `address` reached through the tunnel of the node agent `key`
/// (`<cluster>:<node>`), waiting up to `wait` for it: how a lab user reaches something on a node.
pub async fn forward_to_node(
    registry: &TunnelRegistry,
    key: &str,
    address: &str,
    wait: Duration,
    req: Request<Body>,
    path_and_query: &str,
) -> Response<Body> {
    let deadline = tokio::time::Instant::now() + wait;
    let Some(route) = registry.wait_for(key, wait).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "node agent disconnected");
    };
    let what = format!("node {key}");
    let io = match open_within(deadline, wait, &what, route.open_stream("tcp", address)).await {
        Ok(io) => io,
        Err(response) => return response,
    };
    let upstream = Upstream {
        host: address,
        bearer: None,
        what,
        impersonate: None,
    };
    exchange(io, req, path_and_query, upstream).await
}

/// Opens the connection to the target through a tunnel by `deadline` (the `wait` that began at the
/// request): `502` naming `what` when it fails, `503` when the agent does not answer in time.
async fn open_within<T, E: std::fmt::Display>(
    deadline: tokio::time::Instant,
    wait: Duration,
    what: &str,
    opening: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Response<Body>> {
    match tokio::time::timeout_at(deadline, opening).await {
        Ok(Ok(io)) => Ok(io),
        Ok(Err(e)) => Err(error(StatusCode::BAD_GATEWAY, &format!("{what}: {e}"))),
        Err(_) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "{what}: the agent did not answer within {}s",
                wait.as_secs()
            ),
        )),
    }
}

/// Where a proxied request goes: its `Host`, the bearer token that replaces the caller's (a
/// cluster's service account; none for a node's plain service), and what to name in errors.
struct Upstream<'a> {
    host: &'a str,
    bearer: Option<&'a str>,
    what: String,
    /// Who the cluster should take the request to be from (Rancher's impersonation headers).
    impersonate: Option<&'a Impersonation>,
}

/// Who a proxied request is from, for the cluster's RBAC: Rancher sends `Impersonate-User`, one
/// `Impersonate-Group` per group and `Impersonate-Extra-<key>` per extra beside the service
/// account's token.
#[derive(Debug, Clone, Default)]
pub struct Impersonation {
    pub user: String,
    pub groups: Vec<String>,
    pub extras: Vec<(String, String)>,
}

/// One request over `io` (a stream through a tunnel), upgrades (exec, watch over WebSocket)
/// included.
async fn exchange<IO>(
    io: IO,
    mut req: Request<Body>,
    path_and_query: &str,
    upstream: Upstream<'_>,
) -> Response<Body>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // hyper says "connection error"; what went wrong is further down (a failed dial through the
    // tunnel arrives as the stream's error, in Go's words): that is what the caller sees.
    let bad_gateway = |e: &hyper::Error| {
        let cause = root_cause(e);
        error(
            StatusCode::BAD_GATEWAY,
            &format!("{}: {cause}", upstream.what),
        )
    };
    let (mut sender, connection) = match hyper::client::conn::http1::Builder::new()
        // hyper reads ahead up to ~400 KiB by default; what the caller has not taken yet
        // stays in the tunnel instead, whose flow control holds the agent back.
        .max_buf_size(UPSTREAM_READ_BUFFER)
        .handshake::<_, Body>(TokioIo::new(io))
        .await
    {
        Ok(pair) => pair,
        Err(e) => return bad_gateway(&e),
    };
    tokio::spawn(connection.with_upgrades());

    let upgrading = is_upgrade(req.headers());
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    // An upgraded exchange (exec, port-forward) keeps its connection's place while it lasts.
    let slot = req.extensions().get::<super::ConnectionSlot>().cloned();
    let caller = req.extensions().get::<super::ConnInfo>().copied();
    let outgoing = match outgoing_request(req, path_and_query, &upstream, upgrading) {
        Ok(outgoing) => outgoing,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let mut response = match sender.send_request(outgoing).await {
        Ok(response) => response,
        Err(e) => return bad_gateway(&e),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let target_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(client), Ok(target)) = (client_upgrade.await, target_upgrade.await) {
                splice(TokioIo::new(client), TokioIo::new(target), caller).await;
            }
            drop(slot);
        });
        return response.map(|_| Body::empty());
    }
    strip_hop_by_hop(response.headers_mut(), false);
    response.map(Body::new)
}

/// How long a spliced exchange goes on after its caller left (closed or reset its connection):
/// what was on its way may still get through.
const LEAVING_GRACE: Duration = Duration::from_secs(5);
/// How long the caller's bytes may wait for room toward the cluster (an agent that keeps the
/// stream paused: a target that reads nothing) before the exchange is given up — the tunnel's own
/// write deadline. A caller that left while its bytes waited cannot say so: its close waits behind
/// them.
const STALLED_WRITE: Duration = crate::tunnel::session::WRITE_TIMEOUT;

/// Bytes both ways between an upgraded caller and the cluster, until either side ends. A caller
/// that leaves visibly (its connection closed where nothing waits, or reset) ends the splice within
/// [`LEAVING_GRACE`]; bytes that have waited [`STALLED_WRITE`] for room toward the cluster end it
/// too. Either way the stream toward the agent ends and its buffers go, as a Go proxy closes both
/// connections.
async fn splice<C, T>(mut client: C, target: T, caller: Option<super::ConnInfo>)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut target = WriteWatch::new(target);
    let waiting_since = target.waiting_since.clone();
    let left = async {
        match caller {
            Some(caller) => {
                let _ = crate::net::peer_left(&caller).await;
                tokio::time::sleep(LEAVING_GRACE).await;
            }
            None => std::future::pending().await,
        }
    };
    let stalled = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let since = *crate::support::lock(&waiting_since);
            if since.is_some_and(|at| at.elapsed() >= STALLED_WRITE) {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut target) => {}
        _ = left => tracing::debug!("the caller of a spliced exchange left: ending it"),
        _ = stalled => tracing::info!(
            "a spliced exchange waited {}s for room toward the cluster: ending it",
            STALLED_WRITE.as_secs()
        ),
    }
}

/// A stream whose writes are watched: since when one has been waiting (`None` while they go).
struct WriteWatch<T> {
    inner: T,
    waiting_since: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl<T> WriteWatch<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            waiting_since: Arc::default(),
        }
    }

    fn note<R>(&self, poll: &std::task::Poll<R>) {
        let mut since = crate::support::lock(&self.waiting_since);
        match poll {
            std::task::Poll::Pending => {
                since.get_or_insert_with(tokio::time::Instant::now);
            }
            std::task::Poll::Ready(_) => *since = None,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteWatch<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteWatch<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&poll);
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&poll);
        poll
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn outgoing_request(
    req: Request<Body>,
    path_and_query: &str,
    upstream: &Upstream<'_>,
    upgrading: bool,
) -> Result<Request<Body>, RequestError> {
    let (mut parts, body) = req.into_parts();
    parts.uri = path_and_query.parse::<Uri>()?;
    parts.version = axum::http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrading);
    let headers = &mut parts.headers;
    // The caller's corral credentials stay here; who the caller is to the cluster (impersonation,
    // an authenticating proxy's X-Remote-* headers) is not the caller's to say.
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::COOKIE);
    let claimed: Vec<_> = headers
        .keys()
        .filter(|k| {
            let name = k.as_str();
            // Every X-Remote-* (an authenticating proxy's user, groups, uid, extras, and whatever
            // a front proxy may add next), every Impersonate-*.
            name.starts_with("impersonate-") || name.starts_with("x-remote-")
        })
        .cloned()
        .collect();
    for name in claimed {
        headers.remove(name);
    }
    if let Some(token) = upstream.bearer {
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"))?;
        headers.insert(header::AUTHORIZATION, bearer);
    }
    if let Some(who) = upstream.impersonate {
        headers.insert("impersonate-user", HeaderValue::from_str(&who.user)?);
        for group in &who.groups {
            headers.append("impersonate-group", HeaderValue::from_str(group)?);
        }
        for (key, value) in &who.extras {
            let name =
                axum::http::HeaderName::from_bytes(format!("impersonate-extra-{key}").as_bytes())?;
            headers.append(name, header_value(value)?);
        }
    }
    let host = HeaderValue::from_str(upstream.host)?;
    headers.insert(header::HOST, host);
    Ok(Request::from_parts(parts, body))
}

/// A header value from any text: UTF-8 goes as it is (Go's server writes a username so), control
/// characters, which no header may hold, and `%` percent-encoded.
fn header_value(text: &str) -> Result<HeaderValue, axum::http::header::InvalidHeaderValue> {
    let mut safe = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{0}'..='\u{1f}' | '\u{7f}' | '%' => safe.push_str(&format!("%{:02X}", c as u32)),
            c => safe.push(c),
        }
    }
    HeaderValue::from_bytes(safe.as_bytes())
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        })
}

/// Removes the headers that belong to one hop: the fixed list, and every header the `Connection`
/// header names (RFC 9110 §7.6.1). An upgrade keeps `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in named.iter().map(String::as_str).chain(HOP_BY_HOP) {
        let upgrade_header = name == "connection" || name == "upgrade";
        if keep_upgrade && upgrade_header {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// TLS to the cluster API inside the tunnel, trusting only the CA its agent advertised.
async fn tls_to_target(
    stream: TunnelStream,
    params: &ClusterParams,
) -> Result<tokio_rustls::client::TlsStream<TunnelStream>, ProxyError> {
    let pem = base64::engine::general_purpose::STANDARD
        .decode(params.ca_cert.trim())
        .map_err(ProxyError::CaNotBase64)?;
    let tls = crate::client::tls_trusting(&pem, &[b"http/1.1"])?;
    let host = crate::support::authority_host(&params.address)
        .ok_or_else(|| ProxyError::Address(params.address.clone()))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| ProxyError::Address(format!("{host}: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::clone(&tls))
        .connect(name, stream)
        .await
        .map_err(|source| ProxyError::Tls {
            address: params.address.clone(),
            source,
        })
}

/// The innermost error under `error` (its own text when it has no source).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

fn error(status: StatusCode, text: &str) -> Response<Body> {
    super::text_response(status, "text/plain; charset=utf-8", format!("{text}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_username_makes_a_header_value() {
        for (name, sent) in [
            ("alice", "alice"),
            ("jürgen", "jürgen"),
            ("a\r\nX-Evil: 1", "a%0D%0AX-Evil: 1"),
            ("100%", "100%25"),
        ] {
            let value = header_value(name).unwrap();
            assert_eq!(value.as_bytes(), sent.as_bytes(), "{name:?}");
        }
    }

    #[test]
    fn hop_by_hop_and_identity_headers_stay_with_the_caller() {
        let req = Request::builder()
            .uri("/k8s/clusters/c-x/api")
            .header("connection", "keep-alive, X-Secret-Hop")
            .header("x-secret-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-remote-user", "admin")
            .header("x-remote-group", "system:masters")
            .header("x-remote-extra-scopes", "all")
            .header("x-remote-uid", "0")
            .header("X-Remote-Anything", "else")
            .header("impersonate-user", "admin")
            .header("authorization", "Bearer caller")
            .header("accept", "application/json")
            .body(Body::empty())
            .unwrap();
        let upstream = Upstream {
            host: "10.43.0.1:443",
            bearer: Some("sa"),
            what: "cluster c-test".into(),
            impersonate: None,
        };
        let out = outgoing_request(req, "/api", &upstream, false).unwrap();
        let names: Vec<_> = out.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["accept", "authorization", "host"],
            "{:?}",
            out.headers()
        );
        assert_eq!(out.headers()["authorization"], "Bearer sa");
        assert_eq!(out.headers()["host"], "10.43.0.1:443");
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_headers_only() {
        let req = Request::builder()
            .header("connection", "Upgrade, X-Hop")
            .header("upgrade", "websocket")
            .header("x-hop", "1")
            .header("sec-websocket-key", "k")
            .body(Body::empty())
            .unwrap();
        let upstream = Upstream {
            host: "a:1",
            bearer: None,
            what: "node c-test:m-0".into(),
            impersonate: None,
        };
        let out = outgoing_request(req, "/ws", &upstream, true).unwrap();
        assert_eq!(out.headers()["upgrade"], "websocket");
        assert_eq!(out.headers()["connection"], "Upgrade");
        assert!(!out.headers().contains_key("x-hop"));
        assert!(out.headers().contains_key("sec-websocket-key"));
    }

    /// Bytes from the caller that wait for room toward the cluster (it reads nothing) end the
    /// splice after the stalled-write time, though nothing else happens.
    #[tokio::test(start_paused = true)]
    async fn a_splice_whose_bytes_wait_too_long_ends() {
        use tokio::io::AsyncWriteExt;
        let (client, mut caller) = tokio::io::duplex(64 * 1024);
        let (target, _cluster_never_reads) = tokio::io::duplex(64 * 1024);
        let started = tokio::time::Instant::now();
        let splicing = tokio::spawn(splice(client, target, None));
        tokio::spawn(async move {
            let chunk = vec![0u8; 64 * 1024];
            while caller.write_all(&chunk).await.is_ok() {}
        });
        splicing.await.unwrap();
        let took = started.elapsed();
        assert!(
            took >= STALLED_WRITE && took <= STALLED_WRITE + Duration::from_secs(2),
            "{took:?}"
        );
    }
}
