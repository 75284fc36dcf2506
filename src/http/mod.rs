//! HTTP: Rancher's endpoints, one file each, behind Rancher's common response headers; and the plain
//! HTTP port's redirect rules in front of them.

mod cacerts;
mod health;
mod redirect;
mod settings;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::routing::any;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

use crate::tls::CertResolver;

/// A client has this long to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Facts about the connection a request arrived on, available to handlers as an extension.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// Whether the request came over TLS.
    pub secure: bool,
}

impl ConnInfo {
    pub fn new(local: SocketAddr, peer: SocketAddr, secure: bool) -> Self {
        Self {
            local,
            peer,
            secure,
        }
    }
}

/// What the endpoints read: the `cacerts` setting and when it was created.
pub struct CaSetting {
    /// The trimmed PEM (empty when there is no CA to distribute).
    pub value: String,
    pub created: time::OffsetDateTime,
    /// A stable id for the setting object, derived from its value.
    pub uuid: String,
}

/// The HTTP application shared by every connection.
#[derive(Clone)]
pub struct HttpApp {
    router: Router,
    resolver: Arc<CertResolver>,
}

impl HttpApp {
    pub fn new(cacerts: Arc<CaSetting>, resolver: Arc<CertResolver>) -> Self {
        let router = Router::new()
            .route("/ping", any(health::ping))
            .route("/healthz", any(health::healthz))
            .route("/healthz/ping", any(health::healthz_ping))
            .route("/cacerts", any(cacerts::cacerts))
            .route("/v3/settings/cacerts", any(settings::cacerts))
            .fallback(not_found)
            .layer(axum::middleware::map_response(rancher_headers))
            .with_state(cacerts);
        Self { router, resolver }
    }

    /// Serves HTTP/1.1 on one connection until it closes.
    pub async fn serve<IO>(&self, io: IO, info: ConnInfo)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(app.handle(req, info).await) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .title_case_headers(true)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await;
        if let Err(e) = served {
            tracing::debug!("HTTP connection from {}: {e}", info.peer);
        }
    }

    async fn handle(
        &self,
        mut req: Request<hyper::body::Incoming>,
        info: ConnInfo,
    ) -> Response<Body> {
        if !info.secure && !redirect::passes_through(&req) {
            return redirect::respond(&req);
        }
        if let Some(host) = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            let agent = req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|h| h.to_str().ok());
            self.resolver.learn_from_host_header(host, agent);
        }
        req.extensions_mut().insert(info);
        match self.router.clone().oneshot(req.map(Body::new)).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// Headers Rancher's handler chain puts on every response.
async fn rancher_headers(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert("x-api-cattle-auth", HeaderValue::from_static("false"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    response
}

/// Go's `http.NotFound`.
async fn not_found() -> Response<Body> {
    text_response(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        "404 page not found\n",
    )
}

/// A response with a fixed content type and body.
pub(crate) fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Body>,
) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .expect("static headers are valid")
}

/// `https` when the request is secure (TLS, or a terminating proxy says so), else `http`.
pub(crate) fn request_scheme<B>(req: &Request<B>) -> &'static str {
    let secure = req.extensions().get::<ConnInfo>().is_some_and(|i| i.secure);
    let forwarded = req
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|p| p == "https" || p == "wss");
    if secure || forwarded { "https" } else { "http" }
}
