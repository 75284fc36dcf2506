//! Who is calling: a login token from `Authorization: Bearer token-…:…` or the `R_SESS` cookie.
//! Also the middleware that puts Rancher's common headers on every response, whose
//! `X-Api-Cattle-Auth` says whether the caller was authenticated.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use axum::middleware::Next;

use super::{AppState, norman_error};
use crate::accounts::Caller;

/// The session cookie Rancher sets.
pub const SESSION_COOKIE: &str = "R_SESS";

/// The token a request presents, if any.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
    })
}

/// An authenticated caller, or norman's 401 `must authenticate`.
pub struct Authenticated(pub Caller);

impl FromRequestParts<Arc<AppState>> for Authenticated {
    type Rejection = Response<Body>;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        // `rancher_headers` authenticated the request already; its result is in the extensions.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(Authenticated)
            .ok_or_else(|| {
                norman_error(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "must authenticate",
                )
            })
    }
}

/// Rancher's headers on every response from its handler chain.
/// It authenticates the request once and leaves the caller in its extensions for [`Authenticated`].
pub async fn rancher_headers(
    State(state): State<Arc<AppState>>,
    mut req: Request<Body>,
    next: Next,
) -> Response<Body> {
    let caller = presented_token(req.headers()).and_then(|t| state.accounts.authenticate(t));
    let authed = caller.is_some();
    if let Some(caller) = &caller {
        req.extensions_mut().insert(caller.clone());
    }
    let mut response = next.run(req).await;
    // Who it was, for the access log around this layer.
    if let Some(caller) = caller {
        response.extensions_mut().insert(caller);
    }
    let headers = response.headers_mut();
    let auth = if authed { "true" } else { "false" };
    headers.insert("x-api-cattle-auth", HeaderValue::from_static(auth));
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
