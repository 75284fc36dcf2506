//! The access log (`--access-log`, off by default), as Rancher's API audit log at level 1: one line
//! per request with its method, path, status, duration, client address and user — the request's
//! metadata only, never a secret. The path is logged without its query (which may carry a
//! bootstrap password, `?setup=…`) but for norman's `action`, and a registration token in a path
//! (`/v3/import/<token>_<cluster>.yaml`) is left out.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, Response, Uri};
use axum::middleware::Next;

use super::{AppState, ConnInfo};
use crate::accounts::Caller;

/// Where the log lines go (`CORRAL_LOG=corral::access=info` selects them alone).
const TARGET: &str = "corral::access";

/// Logs each request once it is answered, when the access log is on.
pub async fn log_requests(
    State(state): State<Arc<AppState>>,
    req: Request<Body>,
    next: Next,
) -> Response<Body> {
    if !state.access_log {
        return next.run(req).await;
    }
    let started = tokio::time::Instant::now();
    let method = req.method().clone();
    let path = loggable_path(req.uri());
    let client = req.extensions().get::<ConnInfo>().map_or_else(
        || "-".to_string(),
        |info| info.peer.ip().to_canonical().to_string(),
    );
    let response = next.run(req).await;
    let user = response
        .extensions()
        .get::<Caller>()
        .map_or("-", |caller| caller.username.as_str());
    tracing::info!(
        target: TARGET,
        "{method} {path} {} {:.1}ms client={client} user={user}",
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    response
}

/// `uri`'s path as it may be logged: no query but `action`, no registration token.
fn loggable_path(uri: &Uri) -> String {
    let path = uri.path();
    let path = match path.strip_prefix("/v3/import/") {
        Some(_) => "/v3/import/…",
        None => path,
    };
    let action = uri.query().and_then(|query| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == "action")
            .map(|(_, value)| value)
            .filter(|value| value.bytes().all(|b| b.is_ascii_alphanumeric()))
    });
    match action {
        Some(action) => format!("{path}?action={action}"),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_logged_without_secrets() {
        let cases = [
            (
                "/v3/clusters/c-abc?action=generateKubeconfig",
                "/v3/clusters/c-abc?action=generateKubeconfig",
            ),
            ("/dashboard/?setup=the-bootstrap-password", "/dashboard/"),
            ("/v3/import/sometoken_c-abc.yaml", "/v3/import/…"),
            (
                "/v3-public/localProviders/local?action=login&x=1",
                "/v3-public/localProviders/local?action=login",
            ),
            ("/v3/settings/x?action=%0aforged", "/v3/settings/x"),
        ];
        for (raw, logged) in cases {
            assert_eq!(loggable_path(&raw.parse().unwrap()), logged, "{raw}");
        }
    }
}
