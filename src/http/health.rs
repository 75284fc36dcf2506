//! `/ping` and `/healthz`, as Rancher's steve health handler and Kubernetes' healthz install them.

use axum::body::Body;
use axum::extract::RawQuery;
use axum::http::{Response, StatusCode};

use super::text_response;

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
