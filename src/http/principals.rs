//! `/v3/principals` (`shared/spec/norman-api.md` §6.7): the caller's own principal (local users
//! have no groups), and `search` over the local users by name.

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::account_error;
use super::norman::{Answer, Call, TypeHandler};
use crate::accounts::UserView;
use crate::api::input::text;
use crate::api::schema::{Action, GET};
use crate::api::{ApiError, Field, Resource, Schema};

pub struct Principals;

/// Most principals a search answers.
const SEARCH_LIMIT: usize = 100;

fn principal(user: &UserView, me: bool) -> Resource {
    let name = match user.display_name.as_str() {
        "" => user.username.as_str(),
        name => name,
    };
    Resource::new(user.principal_id())
        .with("name", name)
        .with("loginName", user.username.as_str())
        .with("displayName", name)
        .with("principalType", "user")
        .with("provider", "local")
        .with("me", me)
        .with("memberOf", false)
        .with("profilePicture", "")
        .with("profileURL", "")
}

#[async_trait]
impl TypeHandler for Principals {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            Schema::new("principal")
                .methods(&[GET], &[GET])
                .field("name", Field::string())
                .field("loginName", Field::string())
                .field("displayName", Field::string())
                .field("principalType", Field::one_of(&["user", "group"]))
                .field("provider", Field::string())
                .field("me", Field::boolean())
                .field("memberOf", Field::boolean())
                .field("profilePicture", Field::string())
                .field("profileURL", Field::string())
                .collection_action(
                    "search",
                    Action {
                        input: Some("searchPrincipalsInput"),
                        output: Some("collection"),
                    },
                ),
            Schema::new("searchPrincipalsInput")
                .field("name", Field::string().create().required())
                .field("principalType", Field::one_of(&["user", "group"]).create()),
        ]
    }

    /// The caller's own principal.
    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        let caller = call.caller()?;
        let me = call
            .state
            .accounts
            .user(&caller.user_id)
            .map_err(|e| account_error(&e))?;
        Ok(vec![principal(&me, true)])
    }

    /// A local user's principal, by its id (`local://u-…`).
    async fn get(&self, call: &Call<'_>, id: &str) -> Result<Resource, ApiError> {
        let caller = call.caller()?;
        let not_found = || ApiError::not_found(format!("{id} not found"));
        let user_id = id.strip_prefix("local://").ok_or_else(not_found)?;
        let user = call.state.accounts.user(user_id).map_err(|_| not_found())?;
        Ok(principal(&user, user.id == caller.user_id))
    }

    /// Users whose username or name starts with `name` (case-insensitive); no groups exist.
    async fn action(
        &self,
        call: &Call<'_>,
        _: Option<&str>,
        name: &str,
        input: Map<String, Value>,
    ) -> Result<Answer, ApiError> {
        if name != "search" {
            return Err(ApiError::invalid_action(name));
        }
        let caller = call.caller()?;
        let wanted = text(&input, "name").to_lowercase();
        if text(&input, "principalType") == "group" {
            return Ok(Answer::Collection("principal", Vec::new()));
        }
        let found = call
            .state
            .accounts
            .users_list()
            .map_err(|e| account_error(&e))?
            .into_iter()
            .filter(|u| {
                u.username.to_lowercase().starts_with(&wanted)
                    || u.display_name.to_lowercase().starts_with(&wanted)
            })
            .take(SEARCH_LIMIT)
            .map(|u| principal(&u, u.id == caller.user_id))
            .collect();
        Ok(Answer::Collection("principal", found))
    }
}
