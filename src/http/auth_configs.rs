//! `/v3/authConfigs`: Rancher's authentication providers (`shared/spec/norman-api.md` §10.2).
//! corral has the local provider only: it is enabled; every other provider is listed, disabled,
//! and cannot be configured here (their PUT and actions are not offered).

use async_trait::async_trait;
use serde_json::Value;

use super::norman::{Call, TypeHandler};
use crate::api::resource::date;
use crate::api::schema::GET;
use crate::api::{ApiError, Field, Resource, Schema};

pub struct AuthConfigs;

/// Rancher's providers: the config's id and its type.
const PROVIDERS: &[(&str, &str)] = &[
    ("local", "localConfig"),
    ("github", "githubConfig"),
    ("activedirectory", "activeDirectoryConfig"),
    ("azuread", "azureADConfig"),
    ("openldap", "openLdapConfig"),
    ("freeipa", "freeIpaConfig"),
    ("ping", "pingConfig"),
    ("adfs", "adfsConfig"),
    ("keycloak", "keyCloakConfig"),
    ("okta", "oktaConfig"),
    ("shibboleth", "shibbolethConfig"),
    ("googleoauth", "googleOauthConfig"),
    ("oidc", "oidcConfig"),
    ("keycloakoidc", "keyCloakOIDCConfig"),
    ("genericoidc", "genericOIDCConfig"),
    ("cognito", "cognitoConfig"),
];

/// The fields every provider config has.
fn config_fields(schema: Schema) -> Schema {
    schema
        .field("name", Field::string())
        .field("enabled", Field::boolean())
        .field(
            "accessMode",
            Field::one_of(&["required", "restricted", "unrestricted"]),
        )
        .field("allowedPrincipalIds", Field::strings())
        .field("status", Field::json())
        .object_meta()
}

#[async_trait]
impl TypeHandler for AuthConfigs {
    fn schemas(&self) -> Vec<Schema> {
        let collection = config_fields(Schema::new("authConfig").methods(&[GET], &[GET]));
        let providers = PROVIDERS.iter().map(|(_, type_name)| {
            config_fields(
                Schema::new(type_name)
                    .base_type("authConfig")
                    .methods(&[], &[GET]),
            )
        });
        std::iter::once(collection).chain(providers).collect()
    }

    fn rbac_resource(&self) -> Option<&'static str> {
        Some("authconfigs")
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        let created = date(call.state.accounts.created());
        Ok(PROVIDERS
            .iter()
            .map(|(id, type_name)| {
                let local = *id == "local";
                let mut config = Resource::new(*id)
                    .with("name", *id)
                    .with("enabled", local)
                    .with("accessMode", "unrestricted")
                    .with("allowedPrincipalIds", Value::Array(Vec::new()))
                    .with("created", created.clone())
                    .with("creatorId", Value::Null);
                config.type_name = Some(type_name);
                config
            })
            .collect())
    }

    async fn get(&self, call: &Call<'_>, id: &str) -> Result<Resource, ApiError> {
        self.list(call)
            .await?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "authconfigs.management.cattle.io \"{id}\" not found"
                ))
            })
    }
}
