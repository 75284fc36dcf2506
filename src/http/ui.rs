//! The web page at `/` and `/dashboard/`: setup before, status after. One static page embedded in
//! the binary, which drives the same API as scripts do, plus a public status document it reads.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Response, StatusCode};
use serde_json::json;

use super::{AppState, json_response, text_response};
use crate::accounts::SERVER_URL;
use crate::pki::inspect::summarize;

const PAGE: &str = include_str!("ui.html");

pub async fn page() -> Response<Body> {
    text_response(StatusCode::OK, "text/html; charset=utf-8", PAGE)
}

/// A small mark for browser tabs (browsers ask for `/favicon.ico` whatever the page says).
const FAVICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="6" fill="#10243e"/><path d="M7 9h18M7 16h18M7 23h18M10 6v20M22 6v20" stroke="#a9bdd6" stroke-width="2.5" stroke-linecap="round"/></svg>"##;

pub async fn favicon() -> Response<Body> {
    text_response(StatusCode::OK, "image/svg+xml", FAVICON)
}

/// A lab fault as the page lists it.
fn fault_summary(fault: &crate::lab::Fault) -> serde_json::Value {
    use crate::lab::What;
    let (what, target) = match &fault.what {
        What::Certificate(cert) => (
            cert.scenario.name().to_string(),
            cert.name.clone().unwrap_or_else(|| "every name".into()),
        ),
        What::Tunnel(tunnel) => (
            format!("{} ({:?})", tunnel.toxic.name(), tunnel.direction).to_lowercase(),
            // The page is public: which cluster is for the API (admins) to say.
            match tunnel.cluster {
                Some(_) => "one cluster".to_string(),
                None => "every cluster".to_string(),
            },
        ),
    };
    json!({
        "id": fault.id,
        "kind": fault.kind(),
        "what": what,
        "target": target,
        "expires": fault.expires_ms.and_then(|ms| crate::support::rfc3339(ms.div_euclid(1000))),
    })
}

/// `/corral/status`: what the page shows. Everything here is public anyway (the certificate is in
/// every handshake, the checksum is derived from `/cacerts`).
pub async fn status(State(state): State<Arc<AppState>>) -> Response<Body> {
    let (server_url, source) = state
        .accounts
        .setting(SERVER_URL)
        .map(|(value, source)| (value, source.as_str()))
        .unwrap_or_default();
    let ca = state.ca.current();
    let body = json!({
        "firstLogin": state.accounts.first_login(),
        // Whether the bootstrap password was generated (it is in the server log) or chosen.
        "bootstrapPasswordGenerated": state.accounts.bootstrap_password_generated(),
        "serverUrl": server_url,
        "serverUrlSource": source,
        "pinned": !server_url.is_empty(),
        "caChecksum": ca.checksum,
        "certificate": summarize(&state.certs.current_leaf()),
        "caExpires": ca
            .ca
            .not_after()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        // Set within 30 days of the CA's end and past it.
        "caWarning": ca.ca.expiry_warning(time::OffsetDateTime::now_utc()),
        // What every client can observe anyway (a tunnel fault's cluster is not named);
        // clearing them takes the admin's password.
        "labFaults": state.faults.list(crate::support::unix_now_ms()).iter().map(|fault| fault_summary(fault)).collect::<Vec<_>>(),
    });
    json_response(StatusCode::OK, &body)
}
