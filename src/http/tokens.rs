//! `/v3/tokens` (`shared/spec/norman-api.md` §5.2): the caller's own tokens — list, get, create
//! (an API key: `token-xxxxx:<key>`, shown once), delete — and `logout`. Another user's tokens are
//! not found, even for an admin; the session making a request cannot delete itself (logout does).

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{HeaderValue, Response, header};
use serde_json::{Map, Value, json};

use super::account_error;
use super::auth::SESSION_COOKIE;
use super::norman::{Answer, Call, TypeHandler};
use crate::accounts::{Caller, IssuedToken, TokenKind, TokenRequest, TokenView, UserView};
use crate::api::input::text;
use crate::api::resource::date;
use crate::api::schema::{Action, DELETE, GET, POST, PUT};
use crate::api::{ApiError, Field, Resource, Schema};

pub struct Tokens;

/// The `token` schema's fields (also the output of `/v3-public`'s login).
pub fn token_schema() -> Schema {
    Schema::new("token")
        .field("name", Field::string())
        .field("token", Field::string().write_only())
        .field("ttl", Field::int().create())
        .field("expiresAt", Field::string())
        .field("expired", Field::boolean())
        .field("current", Field::boolean())
        .field("isDerived", Field::boolean())
        .field("enabled", Field::boolean().default(true.into()))
        .field("authProvider", Field::string())
        .field("userId", Field::reference("user"))
        .field("description", Field::string().create())
        .field("lastUsedAt", Field::date().nullable())
        .field("clusterId", Field::reference("cluster").create().nullable())
        .field("userPrincipal", Field::reference("principal"))
        .field("groupPrincipals", Field::references("principal"))
        .field("providerInfo", Field::string_map())
        .object_meta()
}

/// Rancher stores the whole principal in `userPrincipal` and norman prints it as Go map text.
fn principal_text(user: &UserView) -> String {
    format!(
        "map[displayName:{} loginName:{} me:true metadata:map[creationTimestamp:<nil> name:{}] principalType:user provider:local]",
        user.display_name,
        user.username,
        user.principal_id()
    )
}

/// A token as the API writes it. `fresh`: the response that made it (`expiresAt` is then still
/// empty in Rancher, but for kubeconfig tokens).
pub fn token_resource(
    token: &TokenView,
    user: Option<&UserView>,
    caller: Option<&Caller>,
    fresh: bool,
) -> Resource {
    let mut labels = Map::new();
    labels.insert(
        "authn.management.cattle.io/token-userId".into(),
        token.user_id.clone().into(),
    );
    match token.kind {
        TokenKind::Session => {
            labels.insert("authn.management.cattle.io/kind".into(), "session".into());
        }
        TokenKind::Kubeconfig => {
            labels.insert(
                "authn.management.cattle.io/kind".into(),
                "kubeconfig".into(),
            );
        }
        TokenKind::ApiKey => {}
    }
    let expires_at = match (
        token.expires_at,
        fresh && token.kind != TokenKind::Kubeconfig,
    ) {
        (0, _) | (_, true) => Value::String(String::new()),
        (at, false) => date(at),
    };
    let current = caller.is_some_and(|c| c.token_name == token.name) && !token.derived();
    let cluster = match token.cluster_id.as_str() {
        "" => Value::Null,
        id => id.into(),
    };
    Resource::new(&token.name)
        .with("name", token.name.as_str())
        .with("ttl", token.ttl_ms)
        .with("expiresAt", expires_at)
        .with("expired", token.expired())
        .with("current", current)
        .with("isDerived", token.derived())
        .with("enabled", true)
        .with("authProvider", "local")
        .with("userId", token.user_id.as_str())
        .with("description", token.description.as_str())
        .with("lastUsedAt", Value::Null)
        .with("clusterId", cluster)
        .with(
            "userPrincipal",
            user.map(principal_text).unwrap_or_default(),
        )
        .with("groupPrincipals", json!([]))
        .with("providerInfo", json!({}))
        .with("labels", Value::Object(labels))
        .with("annotations", json!({}))
        .with("created", date(token.created))
        .with("creatorId", Value::Null)
}

/// A token just made: with its `token` (`name:key`), shown this once.
pub fn issued_resource(issued: &IssuedToken, user: Option<&UserView>) -> Resource {
    token_resource(&issued.view, user, None, true).with("token", issued.token.as_str())
}

/// `Set-Cookie` values that expire the session and CSRF cookies, as Rancher's logout sends them.
fn expired_cookies(secure: bool) -> [String; 2] {
    let secure = if secure { "; Secure" } else { "" };
    [SESSION_COOKIE, "CSRF"].map(|name| {
        format!(
            "{name}=; Path=/; Expires=Wed, 10 Feb 1982 23:00:00 GMT; Max-Age=0; HttpOnly{secure}"
        )
    })
}

#[async_trait]
impl TypeHandler for Tokens {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            token_schema()
                // PUT is advertised, as Rancher does, and reaches no store.
                .methods(&[GET, POST], &[GET, PUT, DELETE])
                .collection_action("logout", Action::default()),
        ]
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        let caller = call.caller()?;
        let accounts = &call.state.accounts;
        let user = accounts.user(&caller.user_id).ok();
        Ok(accounts
            .tokens_of(&caller.user_id)
            .map_err(|e| account_error(&e))?
            .iter()
            .map(|t| token_resource(t, user.as_ref(), Some(caller), false))
            .collect())
    }

    async fn get(&self, call: &Call<'_>, id: &str) -> Result<Resource, ApiError> {
        let caller = call.caller()?;
        let accounts = &call.state.accounts;
        let token = accounts
            .token_of(&caller.user_id, id)
            .map_err(|e| account_error(&e))?;
        let user = accounts.user(&caller.user_id).ok();
        Ok(token_resource(&token, user.as_ref(), Some(caller), false))
    }

    async fn create(&self, call: &Call<'_>, input: Map<String, Value>) -> Result<Answer, ApiError> {
        let caller = call.caller()?;
        let owned = |name: &str| text(&input, name).to_string();
        let request = TokenRequest {
            kind: TokenKind::ApiKey,
            description: owned("description"),
            ttl_ms: input.get("ttl").and_then(Value::as_i64).unwrap_or(0),
            cluster_id: owned("clusterId"),
        };
        let accounts = &call.state.accounts;
        let issued = accounts
            .issue_token(&caller.user_id, request)
            .map_err(|e| account_error(&e))?;
        let user = accounts.user(&caller.user_id).ok();
        Ok(Answer::created(
            "token",
            issued_resource(&issued, user.as_ref()),
        ))
    }

    async fn update(
        &self,
        _: &Call<'_>,
        _: &str,
        _: Map<String, Value>,
    ) -> Result<Resource, ApiError> {
        Err(ApiError::not_found("no store found"))
    }

    async fn delete(&self, call: &Call<'_>, id: &str) -> Result<Answer, ApiError> {
        let caller = call.caller()?;
        call.state
            .accounts
            .delete_token(caller, id)
            .map_err(|e| account_error(&e))?;
        Ok(Answer::NoContent)
    }

    async fn action(
        &self,
        call: &Call<'_>,
        _: Option<&str>,
        name: &str,
        _: Map<String, Value>,
    ) -> Result<Answer, ApiError> {
        if name != "logout" {
            return Err(ApiError::invalid_action(name));
        }
        let caller = call.caller()?;
        call.state
            .accounts
            .logout(caller)
            .map_err(|e| account_error(&e))?;
        let secure = call.urls.base().starts_with("https:");
        let mut response = Response::new(Body::empty());
        for cookie in expired_cookies(secure) {
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
        }
        Ok(Answer::Raw(response))
    }
}
