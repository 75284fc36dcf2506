//! `/v3/settings/cacerts`: norman's JSON view of the `cacerts` setting, readable without login.
//! Other methods need a login, which corral does not have yet: they get norman's 401.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, Request, Response, StatusCode, header};
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use super::{CaSetting, request_scheme, text_response};

/// norman's fixed `Expires` date.
const NORMAN_EXPIRES: &str = "Wed 24 Feb 1982 18:42:00 GMT";

pub async fn cacerts(State(ca): State<Arc<CaSetting>>, req: Request<Body>) -> Response<Body> {
    if req.method() != Method::GET {
        return norman_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "must authenticate",
        );
    }
    let base = format!("{}://{}", request_scheme(&req), request_host(&req));
    let customized = !ca.value.is_empty();
    // serde_json's map is ordered, so keys come out sorted as Go's encoder writes them.
    let body = json!({
        "baseType": "setting",
        "created": ca.created.format(&Rfc3339).unwrap_or_default(),
        "createdTS": ca.created.unix_timestamp() * 1000,
        "creatorId": null,
        "customized": customized,
        "default": "",
        "id": "cacerts",
        "links": { "self": format!("{base}/v3/settings/cacerts") },
        "name": "cacerts",
        "source": if customized { "db" } else { "default" },
        "type": "setting",
        "uuid": ca.uuid,
        "value": ca.value,
    });
    let mut response = text_response(StatusCode::OK, "application/json", format!("{body}\n"));
    let headers = response.headers_mut();
    headers.insert(
        header::EXPIRES,
        header::HeaderValue::from_static(NORMAN_EXPIRES),
    );
    if let Ok(schemas) = format!("{base}/v3/schemas").parse() {
        headers.insert("x-api-schemas", schemas);
    }
    response
}

fn request_host<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
}

/// norman's error body.
pub(crate) fn norman_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = json!({
        "baseType": "error",
        "code": code,
        "message": message,
        "status": status.as_u16(),
        "type": "error",
    });
    text_response(status, "application/json", format!("{body}\n"))
}
