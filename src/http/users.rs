//! `POST /v3/users?action=changepassword`: `{currentPassword, newPassword}`; ends first login.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{Response, StatusCode};
use serde::Deserialize;

use super::auth::Authenticated;
use super::login::ActionQuery;
use super::{AppState, NormanJson, json_response, norman_error, setup_error};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangePassword {
    current_password: String,
    new_password: String,
}

pub async fn action(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    Query(query): Query<ActionQuery>,
    NormanJson(input): NormanJson<ChangePassword>,
) -> Response<Body> {
    if query.action() != Some("changepassword") {
        return norman_error(StatusCode::BAD_REQUEST, "InvalidAction", "invalid action");
    }
    match state
        .setup
        .change_password(&caller, &input.current_password, &input.new_password)
        .await
    {
        Ok(()) => json_response(StatusCode::OK, &serde_json::json!({})),
        Err(e) => setup_error(&e),
    }
}
