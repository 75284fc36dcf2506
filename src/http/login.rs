//! `/v3-public` (`shared/spec/norman-api.md` §1.7, §5.3): the enabled auth providers (the local one)
//! and its `login` action — `responseType` `json` (201, the token), `cookie` (`R_SESS`, empty 200)
//! or `kubeconfig[_<cluster>]` (a kubeconfig token) — and the dashboard's `POST /v1-public/login`.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request, Response, header};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::auth::SESSION_COOKIE;
use super::norman::{Answer, Call, TypeHandler, error_response, read_body, respond_answer};
use super::tokens::{issued_resource, token_schema};
use super::{AppState, ConnInfo, account_error};
use crate::accounts::{AccountError, LoginToken};
use crate::api::input::parse_object;
use crate::api::schema::{Action, GET, V3_PUBLIC};
use crate::api::urls::Urls;
use crate::api::{ApiError, Field, Resource, Schema};

/// A login body, as the local provider reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginInput {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    response_type: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// The local provider, as `/v3-public/authProviders` and `/v3-public/localProviders/local` show it.
fn local_provider(urls: &Urls) -> Resource {
    let mut provider = Resource::new("local")
        .with("logoutAllSupported", false)
        .with("logoutAllEnabled", false)
        .with("logoutAllForced", false);
    provider.type_name = Some("localProvider");
    // Listed under authProviders, it links and acts as a localProvider.
    let url = urls.at("/v3-public/localProviders/local");
    provider
        .fields
        .insert("links".into(), json!({ "self": url }));
    provider.fields.insert(
        "actions".into(),
        json!({ "login": format!("{url}?action=login") }),
    );
    provider
}

fn provider_fields(schema: Schema) -> Schema {
    schema
        .field("logoutAllSupported", Field::boolean())
        .field("logoutAllEnabled", Field::boolean())
        .field("logoutAllForced", Field::boolean())
}

/// `/v3-public/authProviders`: the enabled providers.
pub struct AuthProviders;

#[async_trait]
impl TypeHandler for AuthProviders {
    fn schemas(&self) -> Vec<Schema> {
        vec![provider_fields(
            Schema::new("authProvider").methods(&[GET], &[GET]),
        )]
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        let mut local = local_provider(call.urls);
        local.raw = true;
        Ok(vec![local])
    }
}

/// `/v3-public/localProviders/local` and its `login` action.
pub struct LocalProvider;

#[async_trait]
impl TypeHandler for LocalProvider {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            provider_fields(
                Schema::new("localProvider")
                    .base_type("authProvider")
                    .methods(&[], &[GET])
                    .resource_action(
                        "login",
                        Action {
                            input: Some("basicLogin"),
                            output: Some("token"),
                        },
                    ),
            ),
            Schema::new("basicLogin")
                .field("username", Field::string().create().required())
                .field("password", Field::string().create().required())
                .field("description", Field::string().create().required())
                .field("responseType", Field::string().create().required())
                .field("ttl", Field::int().create()),
            token_schema(),
        ]
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        let mut local = local_provider(call.urls);
        local.fields.remove("links");
        local.fields.remove("actions");
        Ok(vec![local])
    }

    async fn action(
        &self,
        call: &Call<'_>,
        id: Option<&str>,
        name: &str,
        input: Map<String, Value>,
    ) -> Result<Answer, ApiError> {
        if (id, name) != (Some("local"), "login") {
            return Err(ApiError::invalid_action(name));
        }
        let input: LoginInput =
            serde_json::from_value(Value::Object(input)).map_err(|_| ApiError::invalid_body(""))?;
        let client = call.conn.map(|c| c.peer.ip());
        login(
            call.state,
            client,
            input,
            call.urls.base().starts_with("https:"),
        )
        .await
    }
}

/// Logs in and answers as Rancher's local provider does.
async fn login(
    state: &AppState,
    client: Option<std::net::IpAddr>,
    input: LoginInput,
    secure: bool,
) -> Result<Answer, ApiError> {
    let response_type = input.response_type.as_deref().unwrap_or("json");
    let description = input.description.as_deref().unwrap_or_default();
    let wanted = match response_type.strip_prefix("kubeconfig") {
        Some(rest) => LoginToken::Kubeconfig {
            cluster_id: rest.strip_prefix('_').unwrap_or_default(),
        },
        None => LoginToken::Session { description },
    };
    let client = client.unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let issued = match state
        .accounts
        .login(&input.username, &input.password, client, wanted)
        .await
    {
        Ok(issued) => issued,
        Err(e) => {
            tracing::info!("failed login for {:?} from {client}: {e}", input.username);
            return Err(match e {
                AccountError::AuthenticationFailed | AccountError::PasswordChanged => {
                    ApiError::new(
                        axum::http::StatusCode::UNAUTHORIZED,
                        "Unauthorized",
                        "authentication failed",
                    )
                }
                other => account_error(&other),
            });
        }
    };
    if response_type == "cookie" {
        let secure = if secure { "; Secure" } else { "" };
        let cookie = format!(
            "{SESSION_COOKIE}={}; Path=/; HttpOnly{secure}",
            issued.token
        );
        let mut response = Response::new(Body::empty());
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        return Ok(Answer::Raw(response));
    }
    let user = state.accounts.user(&issued.view.user_id).ok();
    Ok(Answer::created(
        "token",
        issued_resource(&issued, user.as_ref()),
    ))
}

/// `POST /v1-public/login` (the dashboard's login): `{type: "localProvider", username, password}`.
pub async fn v1_public(
    State(state): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    req: Request<Body>,
) -> Response<Body> {
    let urls = Urls::from_request(req.headers(), conn.secure);
    let (parts, body) = req.into_parts();
    let answer = async {
        let body = parse_object(&read_body(&parts.headers, body).await?)?;
        let input: LoginInput =
            serde_json::from_value(Value::Object(body)).map_err(|_| ApiError::invalid_body(""))?;
        match input.kind.as_deref() {
            Some("localProvider") | None => {}
            Some(other) => {
                return Err(ApiError::invalid_body(format!(
                    "unsupported auth provider type {other:?}"
                )));
            }
        }
        login(&state, Some(conn.peer.ip()), input, conn.secure).await
    }
    .await;
    match answer {
        Ok(answer) => respond_answer(&urls, &V3_PUBLIC, answer),
        Err(e) => error_response(&urls, &V3_PUBLIC, &e),
    }
}
