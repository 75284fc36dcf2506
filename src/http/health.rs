//! `/ping`, `/healthz`, `/version` and `/metrics`; the first three as Rancher's steve health handler, Kubernetes' healthz and
//! Rancher's version handler answer them.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{Response, StatusCode};

use super::{AppState, text_response};

const TEXT: &str = "text/plain; charset=utf-8";

/// `/ping`: any method, `pong` without a newline.
pub async fn ping() -> Response<Body> {
    text_response(StatusCode::OK, TEXT, "pong")
}

/// `/healthz`: `ok`, or the check list with `?verbose`.
pub async fn healthz(RawQuery(query): RawQuery) -> Response<Body> {
    let verbose = query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "verbose" || kv.starts_with("verbose="))
    });
    let body = if verbose {
        "[+]ping ok\nhealthz check passed\n"
    } else {
        "ok"
    };
    text_response(StatusCode::OK, TEXT, body)
}

/// `/healthz/ping`: the single check.
pub async fn healthz_ping() -> Response<Body> {
    text_response(StatusCode::OK, TEXT, "ok")
}

/// `/version`: the server's version, in Rancher's shape. (`kubectl get --raw /version` with a cluster
/// kubeconfig lands here: kubectl sends raw paths from the host's root, not under the cluster prefix.)
pub async fn version() -> Response<Body> {
    let body = serde_json::json!({
        "Version": concat!("corral-v", env!("CARGO_PKG_VERSION")),
        "GitCommit": "unknown",
        "RancherPrime": "false",
    });
    super::json_response(StatusCode::OK, &body)
}

/// `/metrics`: Prometheus text exposition.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response<Body> {
    let cached = state.certs.cached_names();
    crate::metrics::metrics()
        .cache_entries
        .set(cached.try_into().unwrap_or(i64::MAX));
    text_response(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        crate::metrics::render(),
    )
}
