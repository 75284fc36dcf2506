//! Who is calling (`shared/spec/norman-api.md` §5.1): `Authorization: Bearer <name>:<key>`, `Basic`
//! with the token name as user and its key as password (an API key's access and secret key), or —
//! only without an `Authorization` header — the `R_SESS` cookie. A token made for one cluster is
//! good only for that cluster's proxy.
//!
//! Also the middleware in front of everything: Rancher's common headers (`X-Api-Cattle-Auth` says
//! whether the caller was authenticated), and the websocket Origin rule (§12): a browser's upgrade
//! from another origin is refused.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use axum::middleware::Next;
use base64::Engine;

use super::AppState;
use super::norman::{from_browser, must_authenticate};
use crate::accounts::Caller;

/// The session cookie Rancher sets.
pub const SESSION_COOKIE: &str = "R_SESS";

/// The credential a request presents (`<name>:<key>`), if any; borrowed unless it was encoded.
fn presented_credential(headers: &HeaderMap) -> Option<Cow<'_, str>> {
    if let Some(authorization) = headers.get(header::AUTHORIZATION) {
        let value = authorization.to_str().ok()?.trim();
        let (scheme, rest) = value.split_once(' ')?;
        let rest = rest.trim();
        return if scheme.eq_ignore_ascii_case("bearer") {
            Some(Cow::Borrowed(rest))
        } else if scheme.eq_ignore_ascii_case("basic") {
            // Rancher decodes the URL-safe alphabet; for its token characters both are the same.
            let engines = [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::URL_SAFE,
            ];
            let decoded = engines.iter().find_map(|e| e.decode(rest).ok())?;
            String::from_utf8(decoded).ok().map(Cow::Owned)
        } else {
            None
        };
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .map(Cow::Borrowed)
}

/// The cluster a request's URL is for (`/k8s/clusters/<id>/…`), as a cluster-scoped token is
/// checked against it.
fn cluster_in_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/k8s/clusters/")?;
    rest.split('/').next().filter(|id| !id.is_empty())
}

/// An authenticated caller, or the authentication filter's 401 `must authenticate`.
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
            .ok_or_else(must_authenticate)
    }
}

/// Rancher's headers on every response from its handler chain.
/// It authenticates the request once and leaves the caller in its extensions for [`Authenticated`].
pub async fn rancher_headers(
    State(state): State<Arc<AppState>>,
    mut req: Request<Body>,
    next: Next,
) -> Response<Body> {
    if let Some(refused) = foreign_origin_upgrade(req.headers()) {
        return refused;
    }
    let cluster = cluster_in_path(req.uri().path());
    let caller = presented_credential(req.headers())
        .and_then(|credential| state.accounts.authenticate(&credential, cluster));
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

/// The body Rancher v2.11 writes: Go's default encoding of norman's error struct, not a norman
/// body, and (its Content-Type header set too late) sent as plain text.
const ORIGIN_REFUSED: &str = r#"{"Code":{"Code":"PermissionDenied","Status":403},"Message":"origin not allowed","Cause":null,"FieldName":""}"#;

/// A browser's upgrade whose every `Origin` names another host than the request's `Host`: 403.
/// Other clients (kubectl, agents) and requests without `Origin` pass.
fn foreign_origin_upgrade(headers: &HeaderMap) -> Option<Response<Body>> {
    let upgrade = crate::support::header_has_token(headers, header::CONNECTION, "upgrade");
    if !upgrade || !from_browser(headers) {
        return None;
    }
    let origins: Vec<&str> = headers
        .get_all(header::ORIGIN)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok())?;
    let same = origins.iter().any(|origin| {
        url::Url::parse(origin)
            .ok()
            .is_some_and(|url| authority(&url).eq_ignore_ascii_case(host))
    });
    if same {
        return None;
    }
    Some(super::text_response(
        StatusCode::FORBIDDEN,
        "text/plain; charset=utf-8",
        format!("{ORIGIN_REFUSED}\n"),
    ))
}

/// `host[:port]` of a URL as it was written (Go's `url.Host`).
fn authority(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn credentials_come_from_bearer_basic_or_the_cookie_without_authorization() {
        let bearer = headers(&[("authorization", "Bearer token-abc:xyz")]);
        assert_eq!(
            presented_credential(&bearer).as_deref(),
            Some("token-abc:xyz")
        );
        // "token-abc:xyz" in base64.
        let basic = headers(&[("authorization", "basic dG9rZW4tYWJjOnh5eg==")]);
        assert_eq!(
            presented_credential(&basic).as_deref(),
            Some("token-abc:xyz")
        );
        let cookie = headers(&[("cookie", "CSRF=1; R_SESS=token-abc:xyz")]);
        assert_eq!(
            presented_credential(&cookie).as_deref(),
            Some("token-abc:xyz")
        );
        let both = headers(&[
            ("authorization", "Digest x"),
            ("cookie", "R_SESS=token-abc:xyz"),
        ]);
        assert_eq!(
            presented_credential(&both),
            None,
            "Authorization wins, even a useless one"
        );
        assert_eq!(cluster_in_path("/k8s/clusters/c-x/api"), Some("c-x"));
        assert_eq!(cluster_in_path("/v3/clusters/c-x"), None);
    }

    #[test]
    fn only_a_browsers_upgrade_from_another_origin_is_refused() {
        let base = [
            ("connection", "keep-alive, Upgrade"),
            ("user-agent", "Mozilla/5.0"),
            ("host", "rancher.lab:8443"),
        ];
        let with = |origin: &'static str| {
            let mut h = headers(&base);
            h.append("origin", HeaderValue::from_static(origin));
            foreign_origin_upgrade(&h)
        };
        let refused = with("https://evil.lab").unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(with("https://rancher.lab:8443").is_none());
        assert!(
            with("https://rancher.lab").is_some(),
            "host:port compared as written"
        );
        assert!(
            foreign_origin_upgrade(&headers(&base)).is_none(),
            "no Origin"
        );
        let kubectl = headers(&[
            ("connection", "Upgrade"),
            ("user-agent", "kubectl/v1.31"),
            ("host", "rancher.lab"),
            ("origin", "https://evil.lab"),
        ]);
        assert!(foreign_origin_upgrade(&kubectl).is_none());
    }
}
