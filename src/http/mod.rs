//! HTTP: Rancher's endpoints, one file each, behind Rancher's common response headers; and the plain
//! HTTP port's redirect rules in front of them.

mod access_log;
mod acme_challenge;
mod auth;
mod auth_configs;
mod cacerts;
mod cluster_proxy;
mod clusters;
mod connect;
pub mod downstream_rbac;
mod faults;
mod features;
mod global_roles;
mod health;
mod k8s;
mod lab_ca;
mod login;
mod nodes;
pub mod norman;
mod principals;
mod redirect;
mod role_templates;
mod settings;
mod tokens;
mod ui;
mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, Response, StatusCode, header};
use axum::routing::{any, get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::accounts::{AccountError, Accounts};
use crate::api::ApiError;
use crate::certs::CertService;
use crate::store::StoreError;
use norman::TypeHandler;

/// A client has this long to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request body the API reads (logins, settings, passwords are tiny).
const MAX_API_BODY: usize = 64 * 1024;
/// Request line and headers at most: a larger head gets 431. hyper's read buffer is capped at the
/// same size (its own default is ~400 KiB), which bounds memory but lets heads of up to about 112
/// KiB through, so the head is also measured once parsed.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Facts about the connection a request arrived on, available to handlers as an extension (with
/// its [`ConnectionSlot`], which an upgrade keeps).
pub use crate::net::{ConnInfo, ConnectionSlot};

/// Everything the handlers read.
pub struct AppState {
    /// The CA and what `/cacerts` distributes (replaced by a rotation).
    pub ca: Arc<crate::ca_bundle::CaBundle>,
    pub accounts: Arc<Accounts>,
    pub certs: Arc<CertService>,
    pub clusters: Arc<crate::clusters::Clusters>,
    pub tunnels: Arc<crate::tunnel::TunnelRegistry>,
    pub tunnel_limits: TunnelLimits,
    /// This replica's membership when replicas share a store: who may open peer sessions.
    pub replicas: Option<Arc<crate::replicas::Replicas>>,
    /// How long the cluster proxy waits for an absent agent before answering 503.
    pub agent_wait: Duration,
    /// The HTTPS port bound: where the HTTP port sends clients that reached corral's own HTTP port.
    pub https_port: u16,
    /// Whether each request is logged (`--access-log`).
    pub access_log: bool,
    /// What each downstream cluster was told of its users.
    pub downstream: downstream_rbac::DownstreamSync,
    /// The lab faults active now.
    pub faults: Arc<crate::lab::Faults>,
}

/// How many tunnels (agents' and peers') this server holds.
pub struct TunnelLimits {
    /// Per client key (a cluster, a node) or peer, at once; `None`: no limit.
    pub per_key: Option<usize>,
    /// All together: the connections less a share kept for everything else.
    pub slots: Arc<tokio::sync::Semaphore>,
}

/// Drives `connection` to its end; on shutdown it is asked to finish gracefully (the request in
/// flight is answered, then it closes) and still driven to its end.
async fn until_shutdown<C, T>(
    mut connection: std::pin::Pin<&mut C>,
    shutdown: &CancellationToken,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) -> T
where
    C: std::future::Future<Output = T>,
{
    tokio::select! {
        served = connection.as_mut() => served,
        _ = shutdown.cancelled() => {
            graceful(connection.as_mut());
            connection.await
        }
    }
}

/// The HTTP application shared by every connection.
#[derive(Clone)]
pub struct HttpApp {
    router: Router,
    certs: Arc<CertService>,
    https_port: u16,
    /// Fired on shutdown: connections finish the request in flight and close.
    shutdown: CancellationToken,
}

impl HttpApp {
    pub fn new(state: Arc<AppState>) -> Self {
        let (certs, https_port) = (state.certs.clone(), state.https_port);
        let router = Router::new()
            .route("/ping", any(health::ping))
            .route("/healthz", any(health::healthz))
            .route("/healthz/ping", any(health::healthz_ping))
            .route("/version", get(health::version))
            .route("/metrics", get(health::metrics))
            .route("/cacerts", any(cacerts::cacerts))
            .route(
                "/.well-known/acme-challenge/{token}",
                get(acme_challenge::answer),
            )
            .route("/v1-public/login", post(login::v1_public))
            .route("/v3", any(norman::dispatch))
            .route("/v3/", any(norman::dispatch))
            .route("/v3/{*rest}", any(norman::dispatch))
            .route("/v3-public", any(norman::dispatch))
            .route("/v3-public/", any(norman::dispatch))
            .route("/v3-public/{*rest}", any(norman::dispatch))
            .route("/v3/connect", any(connect::connect))
            .route("/v3/connect/register", any(connect::connect))
            .route("/v3/import/{file}", get(clusters::import))
            .route("/v3/nodes/{id}/proxy/{*rest}", any(nodes::proxy))
            .route("/k8s/clusters/{id}", any(k8s::cluster_proxy))
            .route("/k8s/clusters/{id}/", any(k8s::cluster_proxy))
            .route("/k8s/clusters/{id}/{*rest}", any(k8s::cluster_proxy))
            .route("/", get(root))
            .route("/dashboard", get(ui::page))
            .route("/dashboard/", get(ui::page))
            .route("/dashboard/{*rest}", get(ui::page))
            .route("/corral/status", get(ui::status))
            .route("/favicon.ico", get(ui::favicon))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(MAX_API_BODY))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::rancher_headers,
            ))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                access_log::log_requests,
            ))
            .with_state(state);
        Self {
            router,
            certs,
            https_port,
            shutdown: CancellationToken::new(),
        }
    }

    /// Connections close gracefully once `shutdown` fires.
    pub fn with_shutdown(self, shutdown: CancellationToken) -> Self {
        Self { shutdown, ..self }
    }

    /// Every request of one connection, handed to the app with what is known of the connection.
    fn service(
        &self,
        info: ConnInfo,
        slot: ConnectionSlot,
    ) -> impl hyper::service::Service<
        Request<hyper::body::Incoming>,
        Response = Response<Body>,
        Error = std::convert::Infallible,
        Future = impl Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send + use<>,
    > + Clone
    + Send
    + use<> {
        let app = self.clone();
        hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            let app = app.clone();
            req.extensions_mut().insert(slot.clone());
            async move { Ok(app.handle(req, info).await) }
        })
    }

    /// Serves HTTP/1.1 on one connection until it closes (or is upgraded: what it becomes keeps
    /// `slot`).
    pub async fn serve<IO>(&self, io: IO, info: ConnInfo, slot: ConnectionSlot)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let connection = hyper::server::conn::http1::Builder::new()
            .title_case_headers(true)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES)
            .serve_connection(TokioIo::new(io), self.service(info, slot))
            .with_upgrades();
        tokio::pin!(connection);
        let served = until_shutdown(connection, &self.shutdown, |c| c.graceful_shutdown()).await;
        if let Err(e) = served {
            tracing::debug!("HTTP connection from {}: {e}", info.peer);
        }
    }

    /// Serves HTTP/2 on one connection (clients that chose `h2` by ALPN: bring-your-own mode only).
    pub async fn serve_h2<IO>(&self, io: IO, info: ConnInfo, slot: ConnectionSlot)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .serve_connection(TokioIo::new(io), self.service(info, slot));
        tokio::pin!(connection);
        let served = until_shutdown(connection, &self.shutdown, |c| c.graceful_shutdown()).await;
        if let Err(e) = served {
            tracing::debug!("HTTP/2 connection from {}: {e}", info.peer);
        }
    }

    async fn handle(
        &self,
        mut req: Request<hyper::body::Incoming>,
        info: ConnInfo,
    ) -> Response<Body> {
        if head_size(&req) > MAX_HEADER_BYTES {
            return text_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "text/plain; charset=utf-8",
                "431 Request Header Fields Too Large\n",
            );
        }
        if !info.secure && !redirect::passes_through(&req) {
            let own = redirect::OwnPorts {
                http: info.local.port(),
                https: self.https_port,
            };
            return redirect::respond(&req, own);
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
            self.certs
                .learn_from_host_header(host, agent, info.peer.ip());
        }
        req.extensions_mut().insert(info);
        match self.router.clone().oneshot(req.map(Body::new)).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// The size of a request's head as sent in HTTP/1.1: request line, header lines, blank line.
fn head_size<B>(req: &Request<B>) -> usize {
    const LINE_ENDS: usize = 2;
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| {
            a.as_str().len() + uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        });
    let request_line = req.method().as_str().len() + 1 + target + " HTTP/1.1".len();
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + LINE_ENDS)
        .sum();
    request_line + LINE_ENDS + headers + LINE_ENDS
}

impl crate::net::Handler for HttpApp {
    async fn serve(
        &self,
        io: impl crate::net::Io,
        info: ConnInfo,
        protocol: crate::net::Protocol,
        slot: ConnectionSlot,
    ) {
        match protocol {
            crate::net::Protocol::Http1 => HttpApp::serve(self, io, info, slot).await,
            crate::net::Protocol::Http2 => self.serve_h2(io, info, slot).await,
        }
    }
}

/// Go's `http.NotFound`.
async fn not_found() -> Response<Body> {
    not_found_page()
}

fn not_found_page() -> Response<Body> {
    text_response(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        "404 page not found\n",
    )
}

/// `GET /`: a browser gets the setup and status page; any other client norman's API roots.
async fn root(req: Request<Body>) -> Response<Body> {
    if norman::from_browser(req.headers()) {
        return ui::page().await;
    }
    let secure = req.extensions().get::<ConnInfo>().is_some_and(|c| c.secure);
    norman::roots(req.headers(), secure).await
}

/// The types `/v3` serves, each declared once by its handler.
fn handlers_v3() -> Vec<Arc<dyn TypeHandler>> {
    vec![
        Arc::new(clusters::Clusters),
        Arc::new(clusters::RegistrationTokens),
        Arc::new(nodes::Nodes),
        Arc::new(settings::Settings),
        Arc::new(features::Features),
        Arc::new(users::Users),
        Arc::new(principals::Principals),
        Arc::new(global_roles::GlobalRoles),
        Arc::new(global_roles::GlobalRoleBindings),
        Arc::new(role_templates::RoleTemplates),
        Arc::new(role_templates::ClusterRoleTemplateBindings),
        Arc::new(tokens::Tokens),
        Arc::new(auth_configs::AuthConfigs),
    ]
}

/// The types `/v3-public` serves.
fn handlers_v3_public() -> Vec<Arc<dyn TypeHandler>> {
    vec![
        Arc::new(login::AuthProviders),
        Arc::new(login::LocalProvider),
    ]
}

/// corral's own types (`/v3/corral`).
fn handlers_v3_corral() -> Vec<Arc<dyn TypeHandler>> {
    vec![Arc::new(faults::LabFaults), Arc::new(lab_ca::LabCa)]
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

/// norman's error body, for the routes outside the norman dispatcher (the node proxy).
pub(crate) fn norman_error(
    status: StatusCode,
    code: &'static str,
    message: &str,
) -> Response<Body> {
    let error = ApiError::new(status, code, message);
    json_response(status, &error.body())
}

/// An API error as a norman body, outside the norman dispatcher.
pub(crate) fn norman_error_of(error: &ApiError) -> Response<Body> {
    json_response(error.status, &error.body())
}

/// Compact JSON with a trailing newline, as Go's `json.Encoder` writes it.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    text_response(status, "application/json", format!("{body}\n"))
}

/// A store that cannot be written: 503 when it cannot be reached (what to do, not the transport's
/// error chain), 409 when another writer won, else a server error.
pub(crate) fn store_error(error: &StoreError) -> ApiError {
    match error {
        StoreError::Unavailable(detail) => {
            tracing::warn!("store unavailable: {detail}");
            ApiError::store_unavailable()
        }
        StoreError::Conflict(_) => ApiError::conflict(
            "the object was changed by another request at the same time; try again",
        ),
        StoreError::InvalidId(id) => ApiError::not_found(format!("{id} not found")),
        // The file system's own words (`No space left on device`) say what to do.
        other => ApiError::server_error(format!("cannot save state: {other}")),
    }
}

/// Rancher's status, code and text for each refusal of the accounts service.
pub(crate) fn account_error(error: &AccountError) -> ApiError {
    use StatusCode as S;
    let message = error.to_string();
    let api = match error {
        AccountError::AuthenticationFailed | AccountError::PasswordChanged => {
            ApiError::new(S::UNAUTHORIZED, "Unauthorized", message)
        }
        AccountError::UserDisabled => ApiError::permission_denied(message),
        AccountError::TooManyAttempts(_) => {
            ApiError::new(S::TOO_MANY_REQUESTS, "TooManyRequests", message)
        }
        AccountError::Busy => ApiError::new(S::SERVICE_UNAVAILABLE, "ServiceUnavailable", message),
        AccountError::InvalidCurrentPassword
        | AccountError::NoCurrentPassword
        | AccountError::NoNewPassword
        | AccountError::PasswordTooShort(_)
        | AccountError::PasswordIsUsername
        | AccountError::SamePassword
        | AccountError::InvalidValue(_)
        | AccountError::SettingsFull
        | AccountError::InvalidServerUrl(_)
        | AccountError::FeatureLocked(_) => ApiError::invalid_body(message),
        AccountError::ServerUrlLocked { .. } => ApiError::conflict(message),
        AccountError::UsernameMissing | AccountError::PasswordMissing => {
            ApiError::server_error(message)
        }
        AccountError::UsernameTaken => {
            ApiError::new(S::UNPROCESSABLE_ENTITY, "NotUnique", message).on_field("username")
        }
        AccountError::CannotDeactivateSelf | AccountError::CannotDeleteSelf => {
            ApiError::new(S::UNPROCESSABLE_ENTITY, "InvalidAction", message)
        }
        AccountError::TooMany(..) => {
            ApiError::new(S::UNPROCESSABLE_ENTITY, "MaxLimitExceeded", message)
        }
        AccountError::RoleNotFound(_) | AccountError::BindingNotFound(_) => {
            ApiError::not_found(message)
        }
        AccountError::BuiltinRoleDelete | AccountError::BuiltinTemplateDelete => {
            ApiError::permission_denied(message)
        }
        AccountError::TemplateNotFound(_) | AccountError::ClusterBindingNotFound(_) => {
            ApiError::not_found(message)
        }
        AccountError::TemplateLookup(_) => ApiError::server_error(message),
        AccountError::TemplateInherited { .. } => ApiError::conflict(message),
        AccountError::NoRoleTemplateId => {
            ApiError::new(S::UNPROCESSABLE_ENTITY, "MissingRequired", message)
        }
        AccountError::TemplateLocked => {
            ApiError::new(S::UNPROCESSABLE_ENTITY, "InvalidState", message)
        }
        AccountError::WrongContext(_) | AccountError::ClusterBindingSubject => {
            ApiError::invalid_body(message)
        }
        AccountError::BindingSubject => ApiError::invalid_body(message),
        AccountError::Escalation { .. } => ApiError::new(S::FORBIDDEN, "Forbidden", message),
        AccountError::Webhook { .. } => ApiError::new(S::BAD_REQUEST, "BadRequest", message),
        AccountError::ReadOnlyFromEnv(_) => ApiError::refused(message),
        AccountError::UserNotFound(id) => {
            ApiError::not_found(format!("users.management.cattle.io \"{id}\" not found"))
        }
        AccountError::TokenNotFound(_)
        | AccountError::SettingNotFound(_)
        | AccountError::FeatureNotFound(_) => ApiError::not_found(message),
        AccountError::SettingExists(_) => ApiError::already_exists(message),
        // The token API labels every other status ServerError.
        AccountError::CurrentSession => ApiError::new(S::BAD_REQUEST, "ServerError", message),
        AccountError::Storage(e) => store_error(e),
        AccountError::Load(_) | AccountError::Bootstrap(_) | AccountError::Pinning(_) => {
            tracing::error!("{message}");
            ApiError::server_error(message)
        }
    };
    match error.retry_after() {
        // Whole seconds, rounded up: a client that waits this long is not refused again at once.
        Some(wait) => api.retry_after(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
        None => api,
    }
}

#[cfg(test)]
mod body_tests {
    use crate::api::input::{Op, admit, parse_object};
    use proptest::prelude::*;

    /// A body through what the dispatcher does with it: parsed, then admitted against every
    /// schema the API serves, for a create and an update.
    fn parse_all(bytes: &[u8]) {
        let Ok(body) = parse_object(bytes) else {
            return;
        };
        let registry = &super::norman::api().registry;
        for version in registry.versions() {
            for schema in registry.schemas(version) {
                let _ = admit(schema, Op::Create, body.clone());
                let _ = admit(schema, Op::Update, body.clone());
            }
        }
    }

    proptest! {
        #[test]
        fn any_body_is_parsed_or_refused_without_panic(bytes: Vec<u8>, text in "\\PC*") {
            parse_all(&bytes);
            parse_all(text.as_bytes());
        }

        #[test]
        fn json_shaped_bodies_never_panic(value in any_json()) {
            parse_all(value.to_string().as_bytes());
        }
    }

    /// JSON documents with the API's field names at any depth and type.
    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let key = prop_oneof![
            Just("username".to_string()),
            Just("password".to_string()),
            Just("value".to_string()),
            Just("name".to_string()),
            Just("clusterId".to_string()),
            Just("currentPassword".to_string()),
            Just("newPassword".to_string()),
            Just("labels".to_string()),
            Just("ttl".to_string()),
            "[a-z]{1,8}",
        ];
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            proptest::arbitrary::any::<bool>().prop_map(serde_json::Value::from),
            proptest::arbitrary::any::<f64>().prop_map(serde_json::Value::from),
            "\\PC{0,20}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
