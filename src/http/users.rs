//! `/v3/users` (`shared/spec/norman-api.md` §6): local users — create, update, delete, filters
//! (`?username=`, `?me=true`), `changepassword` for the caller and `setpassword` for whoever may
//! update users. The dispatcher applies the caller's rules: without rights on `users`, a caller
//! sees only itself.

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::account_error;
use super::norman::{Answer, Call, TypeHandler};
use crate::accounts::{AccountError, NewUser, UserChange, UserView};
use crate::api::input::text;
use crate::api::resource::date;
use crate::api::schema::{Action, DELETE, GET, POST, PUT};
use crate::api::{ApiError, Field, Resource, Schema};

pub struct Users;

/// Longest username or display name, and description, taken.
const MAX_NAME: u64 = 256;
const MAX_DESCRIPTION: u64 = 1024;

fn flag(input: &Map<String, Value>, name: &str) -> Option<bool> {
    input.get(name).and_then(Value::as_bool)
}

fn owned(input: &Map<String, Value>, name: &str) -> Option<String> {
    input.get(name).and_then(Value::as_str).map(str::to_string)
}

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
                .methods(&[GET, POST], &[GET, PUT, DELETE])
                .field("name", Field::string().writable().max_length(MAX_NAME))
                .field("username", Field::string().create().max_length(MAX_NAME))
                .field("password", Field::password().create().write_only())
                .field(
                    "description",
                    Field::string().writable().max_length(MAX_DESCRIPTION),
                )
                .field("enabled", Field::boolean().writable().default(true.into()))
                .field("mustChangePassword", Field::boolean().writable())
                .field("principalIds", Field::references("principal"))
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

    fn rbac_resource(&self) -> Option<&'static str> {
        Some("users")
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        let caller = call.caller()?;
        let accounts = &call.state.accounts;
        // A caller whose rules name no users but itself sees only itself: read that one user,
        // not every user to filter them all out.
        if !call.may("list", "users", None)? && !call.may("get", "users", None)? {
            let me = accounts
                .user(&caller.user_id)
                .map_err(|e| account_error(&e))?;
            return Ok(vec![resource(&me, Some(&caller.user_id))]);
        }
        Ok(accounts
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

    async fn create(&self, call: &Call<'_>, input: Map<String, Value>) -> Result<Answer, ApiError> {
        let caller = call.caller()?;
        let new = NewUser {
            username: owned(&input, "username"),
            password: owned(&input, "password"),
            display_name: text(&input, "name").to_string(),
            description: text(&input, "description").to_string(),
            enabled: flag(&input, "enabled").unwrap_or(true),
            must_change_password: flag(&input, "mustChangePassword").unwrap_or(false),
        };
        let user = call
            .state
            .accounts
            .create_user(caller, new)
            .await
            .map_err(|e| account_error(&e))?;
        Ok(Answer::created(
            "user",
            resource(&user, Some(&caller.user_id)),
        ))
    }

    async fn update(
        &self,
        call: &Call<'_>,
        id: &str,
        input: Map<String, Value>,
    ) -> Result<Resource, ApiError> {
        let caller = call.caller()?;
        let change = UserChange {
            display_name: owned(&input, "name"),
            description: owned(&input, "description"),
            enabled: flag(&input, "enabled"),
            must_change_password: flag(&input, "mustChangePassword"),
        };
        let user = call
            .state
            .accounts
            .update_user(caller, id, change)
            .map_err(|e| account_error(&e))?;
        Ok(resource(&user, Some(&caller.user_id)))
    }

    async fn delete(&self, call: &Call<'_>, id: &str) -> Result<Answer, ApiError> {
        let caller = call.caller()?;
        let accounts = &call.state.accounts;
        let user = accounts.user(id).map_err(|e| account_error(&e))?;
        accounts
            .delete_user(caller, id)
            .map_err(|e| account_error(&e))?;
        Ok(Answer::ok("user", resource(&user, Some(&caller.user_id))))
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
