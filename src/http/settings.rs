//! `/v3/settings`: Rancher's settings (`shared/spec/norman-api.md` §9). Seven are readable without
//! login; `cacerts` is read-only and holds the CA that `/cacerts` serves; one set by the
//! environment is read-only too; `server-url` pins the certificates when first set.

use async_trait::async_trait;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::account_error;
use super::norman::{Answer, Call, TypeHandler};
use crate::accounts::settings::{CACERTS, is_public};
use crate::accounts::{SettingView, Source};
use crate::api::input::text;
use crate::api::resource::date;
use crate::api::schema::{DELETE, GET, POST, PUT};
use crate::api::{ApiError, Field, Resource, Schema};

pub struct Settings;

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "settings.management.cattle.io \"{name}\" not found"
    ))
}

/// The setting as the API shows it: `cacerts` from the CA this server distributes.
fn view(call: &Call<'_>, name: &str) -> Option<(SettingView, OffsetDateTime)> {
    let state = call.state;
    if name == CACERTS {
        let setting = state.ca.current().setting.clone();
        let value = setting.value;
        let source = if value.is_empty() {
            Source::Default
        } else {
            Source::Db
        };
        let view = SettingView {
            name: CACERTS.into(),
            value,
            default: String::new(),
            source,
        };
        return Some((view, setting.created));
    }
    let created = OffsetDateTime::from_unix_timestamp(state.accounts.created())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    Some((state.accounts.setting_view(name)?, created))
}

fn resource(setting: &SettingView, created: OffsetDateTime) -> Resource {
    let mut resource = Resource::new(&setting.name)
        .with("name", setting.name.as_str())
        .with("value", setting.value.as_str())
        .with("default", setting.default.as_str())
        .with("customized", setting.customized())
        .with("source", setting.source.as_str())
        .with("created", date(created.unix_timestamp()))
        .with("creatorId", Value::Null)
        .with("uuid", uuid_for(&setting.name, created));
    // Read-only settings offer no update (Rancher's formatter drops the link).
    if setting.name == CACERTS || setting.source == Source::Env {
        resource = resource.without_link("update");
    }
    if setting.name == CACERTS {
        resource = resource.without_link("remove");
    }
    resource
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

/// `value` of a body, as Rancher's setting store reads it.
fn value_of(input: &Map<String, Value>) -> Result<&str, ApiError> {
    match input.get("value") {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(ApiError::server_error("value not string")),
        None => Err(ApiError::server_error("value not found")),
    }
}

#[async_trait]
impl TypeHandler for Settings {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            Schema::new("setting")
                .methods(&[GET, POST], &[GET, PUT, DELETE])
                .field("name", Field::string().create().required())
                .field("value", Field::string().writable().required())
                .field("default", Field::string())
                .field("customized", Field::boolean())
                .field("source", Field::one_of(&["db", "default", "env"]))
                .object_meta(),
        ]
    }

    fn public_read(&self, id: Option<&str>) -> bool {
        id.is_some_and(is_public)
    }

    fn rbac_resource(&self) -> Option<&'static str> {
        Some("settings")
    }

    /// The public settings are read by anyone; the rest as the caller's rules say.
    fn allows(&self, call: &Call<'_>, verb: &str, id: Option<&str>) -> Result<bool, ApiError> {
        if verb == "get" && id.is_some_and(is_public) {
            return Ok(true);
        }
        match call.caller {
            Some(_) => call.may(verb, "settings", id),
            None => Ok(true),
        }
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        Ok(call
            .state
            .accounts
            .settings_list()
            .iter()
            .filter_map(|s| view(call, &s.name))
            .map(|(setting, created)| resource(&setting, created))
            .collect())
    }

    async fn get(&self, call: &Call<'_>, id: &str) -> Result<Resource, ApiError> {
        let (setting, created) = view(call, id).ok_or_else(|| not_found(id))?;
        Ok(resource(&setting, created))
    }

    async fn create(&self, call: &Call<'_>, input: Map<String, Value>) -> Result<Answer, ApiError> {
        let name = text(&input, "name");
        if name == CACERTS {
            return Err(ApiError::refused("cacerts is readOnly"));
        }
        // A setting is a Kubernetes object in Rancher: its name follows the object-name rule.
        if !crate::api::input::is_dns_subdomain(name) {
            return Err(crate::api::input::invalid_object_name("name", name));
        }
        let setting = call
            .state
            .accounts
            .create_setting(name, value_of(&input)?)
            .map_err(|e| account_error(&e))?;
        let (setting, created) = view(call, &setting.name).ok_or_else(|| not_found(name))?;
        Ok(Answer::created("setting", resource(&setting, created)))
    }

    async fn update(
        &self,
        call: &Call<'_>,
        id: &str,
        input: Map<String, Value>,
    ) -> Result<Resource, ApiError> {
        if id == CACERTS {
            return Err(ApiError::refused("cacerts is readOnly"));
        }
        call.state
            .accounts
            .update_setting(id, value_of(&input)?)
            .map_err(|e| account_error(&e))?;
        self.get(call, id).await
    }

    async fn delete(&self, call: &Call<'_>, id: &str) -> Result<Answer, ApiError> {
        if id == CACERTS {
            return Err(ApiError::refused("Cannot delete readOnly setting cacerts."));
        }
        let before = self.get(call, id).await?;
        call.state
            .accounts
            .delete_setting(id)
            .map_err(|e| account_error(&e))?;
        Ok(Answer::ok("setting", before))
    }
}
