//! `/v3/features`: Rancher's feature flags (`shared/spec/norman-api.md` §10.1). Everyone logged in
//! reads them; an admin sets `value`; none can be created or deleted.

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::account_error;
use super::norman::{Answer, Call, TypeHandler};
use crate::accounts::FeatureView;
use crate::api::resource::date;
use crate::api::schema::{DELETE, GET, POST, PUT};
use crate::api::{ApiError, Field, Resource, Schema};

pub struct Features;

fn resource(call: &Call<'_>, feature: &FeatureView) -> Resource {
    let flag = &feature.flag;
    let locked = if flag.locked {
        Value::Bool(flag.default)
    } else {
        Value::Null
    };
    Resource::new(flag.name)
        .with("name", flag.name)
        .with("value", feature.effective())
        .with(
            "status",
            json!({
                "dynamic": flag.dynamic,
                "default": flag.default,
                "description": flag.description,
                "lockedValue": locked,
            }),
        )
        .with("created", date(call.state.accounts.created()))
        .with("creatorId", Value::Null)
}

#[async_trait]
impl TypeHandler for Features {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            Schema::new("feature")
                .methods(&[GET, POST], &[GET, PUT, DELETE])
                .field("name", Field::string())
                .field("value", Field::boolean().writable().nullable())
                .field("status", Field::object("featureStatus"))
                .object_meta(),
            Schema::new("featureStatus")
                .field("dynamic", Field::boolean())
                .field("default", Field::boolean())
                .field("description", Field::string())
                .field("lockedValue", Field::boolean().nullable()),
        ]
    }

    fn rbac_resource(&self) -> Option<&'static str> {
        Some("features")
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        Ok(call
            .state
            .accounts
            .features()
            .iter()
            .map(|f| resource(call, f))
            .collect())
    }

    async fn get(&self, call: &Call<'_>, id: &str) -> Result<Resource, ApiError> {
        let feature = call
            .state
            .accounts
            .feature(id)
            .map_err(|e| account_error(&e))?;
        Ok(resource(call, &feature))
    }

    async fn create(&self, _: &Call<'_>, _: Map<String, Value>) -> Result<Answer, ApiError> {
        Err(ApiError::refused("cannot create new features"))
    }

    async fn update(
        &self,
        call: &Call<'_>,
        id: &str,
        input: Map<String, Value>,
    ) -> Result<Resource, ApiError> {
        let value = match input.get("value") {
            Some(Value::Bool(value)) => *value,
            Some(_) => return Err(ApiError::invalid_body("feature value must be a bool")),
            None => return Err(ApiError::invalid_body("must contain value")),
        };
        let feature = call
            .state
            .accounts
            .set_feature(id, value)
            .map_err(|e| account_error(&e))?;
        Ok(resource(call, &feature))
    }

    async fn delete(&self, _: &Call<'_>, _: &str) -> Result<Answer, ApiError> {
        Err(ApiError::refused("cannot delete features"))
    }
}
