//! `/v3/users` (`shared/spec/norman-api.md` §6): the users, read side (`?username=`, `?me=true`),
//! `changepassword` for the caller and `setpassword` for an admin. Creating, updating and deleting
//! users is not served yet (the schema does not offer it).

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::account_error;
use super::norman::{Answer, Call, TypeHandler};
use crate::accounts::{AccountError, UserView};
use crate::api::input::text;
use crate::api::resource::date;
use crate::api::schema::{Action, GET};
use crate::api::{ApiError, Field, Resource, Schema};

pub struct Users;

fn resource(user: &UserView, caller_id: Option<&str>) -> Resource {
    Resource::new(&user.id)
        .with("name", user.display_name.as_str())
        .with("username", user.username.as_str())
        .with("description", user.description.as_str())
        .with("enabled", user.enabled)
        .with("mustChangePassword", user.must_change_password)
        .with("principalIds", json!([user.principal_id()]))
        .with("me", caller_id == Some(user.id.as_str()))
        .with("conditions", json!([]))
        .with("state", if user.enabled { "active" } else { "inactive" })
        .with("transitioning", "no")
        .with("transitioningMessage", "")
        .with("created", date(user.created))
        .with("creatorId", Value::Null)
        .with("labels", json!({}))
        .with("annotations", json!({}))
}

#[async_trait]
impl TypeHandler for Users {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            Schema::new("user")
                .methods(&[GET], &[GET])
                .field("name", Field::string())
                .field("username", Field::string())
                .field("password", Field::password().create().write_only())
                .field("description", Field::string())
                .field("enabled", Field::boolean().default(true.into()))
                .field("mustChangePassword", Field::boolean())
                .field(
                    "principalIds",
                    Field::of(crate::api::schema::FieldType::Array(Box::new(
                        crate::api::schema::FieldType::Reference("principal"),
                    ))),
                )
                .field("me", Field::boolean())
                .field("conditions", Field::json())
                .object_meta()
                .status_summary()
                .resource_action(
                    "setpassword",
                    Action {
                        input: Some("setPasswordInput"),
                        output: Some("user"),
                    },
                )
                .collection_action(
                    "changepassword",
                    Action {
                        input: Some("changePasswordInput"),
                        output: None,
                    },
                ),
            Schema::new("changePasswordInput")
                .field("currentPassword", Field::string().create().required())
                .field("newPassword", Field::string().create().required()),
            Schema::new("setPasswordInput")
                .field("newPassword", Field::string().create().required()),
        ]
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        let caller = call.caller()?;
        Ok(call
            .state
            .accounts
            .users_list()
            .map_err(|e| account_error(&e))?
            .iter()
            .map(|u| resource(u, Some(&caller.user_id)))
            .collect())
    }

    async fn get(&self, call: &Call<'_>, id: &str) -> Result<Resource, ApiError> {
        let caller = call.caller()?;
        let user = call
            .state
            .accounts
            .user(id)
            .map_err(|e| account_error(&e))?;
        Ok(resource(&user, Some(&caller.user_id)))
    }

    async fn action(
        &self,
        call: &Call<'_>,
        id: Option<&str>,
        name: &str,
        input: Map<String, Value>,
    ) -> Result<Answer, ApiError> {
        let caller = call.caller()?;
        let accounts = &call.state.accounts;
        match (name, id) {
            ("changepassword", None) => {
                accounts
                    .change_password(
                        caller,
                        text(&input, "currentPassword"),
                        text(&input, "newPassword"),
                    )
                    .await
                    .map_err(|e| account_error(&e))?;
                Ok(Answer::Empty)
            }
            ("setpassword", Some(id)) => {
                let user = accounts
                    .set_password(caller, id, text(&input, "newPassword"))
                    .await
                    .map_err(|e| match e {
                        AccountError::NoNewPassword => ApiError::server_error("Invalid password"),
                        other => account_error(&other),
                    })?;
                Ok(Answer::ok("user", resource(&user, Some(&caller.user_id))))
            }
            _ => Err(ApiError::invalid_action(name)),
        }
    }
}
