//! `/v3/settings/<name>`: norman's view of Rancher settings.
//!
//! `cacerts` and `first-login` are readable without login (as in Rancher); every other read, and
//! every write, needs a login. `cacerts` is read-only; `server-url` pins certificates when first set.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, State};
use axum::http::{Method, Request, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::auth::Authenticated;
use super::{AppState, NormanJson, account_error, base_url, json_response, norman_error};
use crate::accounts::{FIRST_LOGIN, SERVER_URL, Source};

/// norman's fixed `Expires` date.
const NORMAN_EXPIRES: &str = "Wed 24 Feb 1982 18:42:00 GMT";
/// Settings anyone may read.
const PUBLIC_SETTINGS: [&str; 2] = ["cacerts", FIRST_LOGIN];

/// One setting as the API shows it.
struct Setting {
    name: String,
    value: String,
    default: &'static str,
    source: Source,
    created: OffsetDateTime,
}

#[derive(Deserialize)]
pub struct SettingInput {
    value: String,
}

pub async fn setting(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request<Body>,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let base = base_url(&parts.headers, &parts.extensions);
    let public_read = parts.method == Method::GET && PUBLIC_SETTINGS.contains(&name.as_str());
    if !public_read
        && let Err(rejection) = Authenticated::from_request_parts(&mut parts, &state).await
    {
        return rejection;
    }
    let method = parts.method.clone();
    if method == Method::GET {
        return match lookup(&state, &name) {
            Some(setting) => setting_response(&setting, &base),
            None => not_found(&name),
        };
    }
    if method != Method::PUT {
        return norman_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed",
        );
    }
    let req = Request::from_parts(parts, body);
    let NormanJson(input) = match NormanJson::<SettingInput>::from_request(req, &state).await {
        Ok(input) => input,
        Err(rejection) => return rejection,
    };
    let result = match name.as_str() {
        "cacerts" => {
            return norman_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "cacerts is readOnly",
            );
        }
        SERVER_URL => state.accounts.set_server_url(&input.value).map(drop),
        FIRST_LOGIN => state.accounts.set_first_login(&input.value),
        _ => return not_found(&name),
    };
    match result.map(|()| lookup(&state, &name)) {
        Ok(Some(setting)) => setting_response(&setting, &base),
        Ok(None) => not_found(&name),
        Err(e) => account_error(&e),
    }
}

fn not_found(name: &str) -> Response<Body> {
    norman_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("setting {name} not found"),
    )
}

fn lookup(state: &AppState, name: &str) -> Option<Setting> {
    if name == "cacerts" {
        let value = state.cacerts.value.clone();
        let source = if value.is_empty() {
            Source::Default
        } else {
            Source::Db
        };
        return Some(Setting {
            name: name.into(),
            value,
            default: "",
            source,
            created: state.cacerts.created,
        });
    }
    let (value, source) = state.accounts.setting(name)?;
    Some(Setting {
        name: name.into(),
        value,
        default: if name == FIRST_LOGIN { "true" } else { "" },
        source,
        created: OffsetDateTime::from_unix_timestamp(state.accounts.created())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
    })
}

/// norman's JSON for a setting (keys sorted, as Go's encoder writes maps) with its headers.
fn setting_response(setting: &Setting, base: &str) -> Response<Body> {
    let uuid = uuid_for(&setting.name, setting.created);
    let body = json!({
        "baseType": "setting",
        "created": setting.created.format(&Rfc3339).unwrap_or_default(),
        "createdTS": setting.created.unix_timestamp() * 1000,
        "creatorId": null,
        "customized": setting.value != setting.default,
        "default": setting.default,
        "id": setting.name,
        "links": { "self": format!("{base}/v3/settings/{}", setting.name) },
        "name": setting.name,
        "source": setting.source.as_str(),
        "type": "setting",
        "uuid": uuid,
        "value": setting.value,
    });
    let mut response = json_response(StatusCode::OK, &body);
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

/// A stable UUID-shaped id for a setting object.
fn uuid_for(name: &str, created: OffsetDateTime) -> String {
    let digest = hex::encode(Sha256::digest(format!(
        "{name}@{}",
        created.unix_timestamp()
    )));
    format!(
        "{}-{}-{}-{}-{}",
        &digest[0..8],
        &digest[8..12],
        &digest[12..16],
        &digest[16..20],
        &digest[20..32]
    )
}
