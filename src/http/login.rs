//! Login: `POST /v3-public/localProviders/local?action=login` and `POST /v1-public/login`.
//! `responseType: "cookie"` sets `R_SESS`; otherwise 201 with the token object.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use super::auth::SESSION_COOKIE;
use super::{AppState, ConnInfo, NormanJson, account_error, json_response, norman_error};
use crate::accounts::IssuedToken;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginInput {
    #[serde(rename = "type")]
    kind: Option<String>,
    username: String,
    password: String,
    #[serde(default)]
    response_type: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// The `?action=` of a norman action request.
#[derive(Deserialize)]
pub struct ActionQuery {
    action: Option<String>,
}

impl ActionQuery {
    pub fn action(&self) -> Option<&str> {
        self.action.as_deref()
    }
}

pub async fn v3_public(
    State(state): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    Query(query): Query<ActionQuery>,
    NormanJson(input): NormanJson<LoginInput>,
) -> Response<Body> {
    if query.action() != Some("login") {
        return norman_error(StatusCode::BAD_REQUEST, "InvalidAction", "invalid action");
    }
    login(&state, conn, input).await
}

pub async fn v1_public(
    State(state): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    NormanJson(input): NormanJson<LoginInput>,
) -> Response<Body> {
    match input.kind.as_deref() {
        Some("localProvider") | None => login(&state, conn, input).await,
        Some(other) => norman_error(
            StatusCode::BAD_REQUEST,
            "InvalidBodyContent",
            &format!("unsupported auth provider type {other:?}"),
        ),
    }
}

async fn login(state: &AppState, conn: ConnInfo, input: LoginInput) -> Response<Body> {
    let issued = match state
        .accounts
        .login(&input.username, &input.password, conn.peer.ip())
        .await
    {
        Ok(issued) => issued,
        Err(e) => {
            tracing::info!(
                "failed login for {:?} from {}: {e}",
                input.username,
                conn.peer.ip()
            );
            return account_error(&e);
        }
    };
    let issued = IssuedToken {
        description: input.description.unwrap_or_default(),
        ..issued
    };
    if input.response_type.as_deref() == Some("cookie") {
        let cookie = format!(
            "{SESSION_COOKIE}={}; Path=/; HttpOnly; Secure; SameSite=Lax",
            issued.token
        );
        let mut response = Response::new(Body::empty());
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        return response;
    }
    json_response(StatusCode::CREATED, &token_object(&issued))
}

fn token_object(token: &IssuedToken) -> serde_json::Value {
    let rfc3339 = |unix: i64| {
        time::OffsetDateTime::from_unix_timestamp(unix)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default()
    };
    json!({
        "authProvider": "local",
        "baseType": "token",
        "created": rfc3339(token.created),
        "createdTS": token.created * 1000,
        "current": false,
        "description": token.description,
        "enabled": true,
        "expired": false,
        "expiresAt": rfc3339(token.expires_at),
        "id": token.name,
        "isDerived": false,
        "name": token.name,
        "token": token.token,
        "ttl": (token.expires_at - token.created) * 1000,
        "type": "token",
        "userId": token.user_id,
        "userPrincipal": format!("local://{}", token.user_id),
    })
}
