//! `POST /v3/users?action=changepassword`: `{currentPassword, newPassword}`; ends first login.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{Response, StatusCode};
use serde::Deserialize;

use super::auth::Authenticated;
use super::login::ActionQuery;
use super::{AppState, NormanJson, account_error, json_response, norman_error};

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
        .accounts
        .change_password(&caller, &input.current_password, &input.new_password)
        .await
    {
        Ok(()) => json_response(StatusCode::OK, &serde_json::json!({})),
        Err(e) => account_error(&e),
    }
}
