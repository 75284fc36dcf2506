//! `/cacerts`: the CA PEM plus one newline, `Content-Type: text/plain` exactly, any method, no login.
//! Empty (200, no body) when there is no CA to distribute.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Response, StatusCode};

use super::{AppState, text_response};
use crate::pki::cacerts_body;

pub async fn cacerts(State(state): State<Arc<AppState>>) -> Response<Body> {
    text_response(
        StatusCode::OK,
        "text/plain",
        cacerts_body(&state.ca.current().setting.value),
    )
}
