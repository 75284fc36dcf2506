//! `GET /.well-known/acme-challenge/<token>`: the HTTP-01 answer while an ACME order is validated.
//! Served on both ports; the HTTP port lets `/.well-known/` through without redirecting.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Response, StatusCode};

use super::{AppState, text_response};

pub async fn answer(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
) -> Response<Body> {
    match state.certs.acme_challenge(&token) {
        Some(key_authorization) => text_response(StatusCode::OK, "text/plain", key_authorization),
        None => text_response(StatusCode::NOT_FOUND, "text/plain", "no such challenge\n"),
    }
}
