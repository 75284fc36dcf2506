//! `/v3/globalRoles` and `/v3/globalRoleBindings` (`shared/spec/norman-api.md` §7): Rancher's
//! builtin roles (only `newUserDefault` changes; none is deleted), custom roles, and the bindings
//! that give users their rights in `/v3`.

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::account_error;
use super::norman::{Answer, Call, TypeHandler};
use crate::accounts::{BindingSpec, GlobalRoleBinding, GlobalRoleView, RoleSpec};
use crate::api::resource::date;
use crate::api::schema::{DELETE, GET, POST, PUT};
use crate::api::{ApiError, Field, Resource, Schema};
use crate::rbac::PolicyRule;

pub struct GlobalRoles;
pub struct GlobalRoleBindings;

/// A field of Kubernetes policy rules (role rules).
pub(super) fn rule_list() -> Field {
    Field::objects("policyRule")
}

/// The rules of a body's field `name`, if it has one; 422 `InvalidFormat` when they are not
/// Kubernetes policy rules.
pub(super) fn rules_in(
    input: &Map<String, Value>,
    name: &str,
) -> Result<Option<Vec<PolicyRule>>, ApiError> {
    input
        .get(name)
        .map(|value| {
            serde_json::from_value::<Vec<PolicyRule>>(value.clone())
                .map_err(|_| ApiError::field("InvalidFormat", name))
        })
        .transpose()
}

/// The strings of a body's array field `name`, if it has one.
pub(super) fn strings_in(input: &Map<String, Value>, name: &str) -> Option<Vec<String>> {
    input.get(name).map(|value| {
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item.as_str().map(str::to_string))
            .collect()
    })
}

/// A reference that may be unset: `null` when empty, as norman writes it.
pub(super) fn optional(value: &str) -> Value {
    match value {
        "" => Value::Null,
        value => value.into(),
    }
}

fn role_resource(role: &GlobalRoleView) -> Resource {
    let resource = Resource::new(&role.id)
        .with("name", role.display_name.as_str())
        .with("description", role.description.as_str())
        .with("rules", json!(role.rules))
        .with("newUserDefault", role.new_user_default)
        .with("builtin", role.builtin)
        .with("inheritedClusterRoles", json!(role.inherited_cluster_roles))
        .with("status", json!({"summary": "Completed", "conditions": []}))
        .with("state", "active")
        .with("created", date(role.created))
        .with("creatorId", optional(&role.creator_id))
        .with("labels", json!({}))
        .with("annotations", json!({}));
    // Rancher leaves `remove` out of builtin roles.
    match role.builtin {
        true => resource.without_link("remove"),
        false => resource,
    }
}

fn binding_resource(binding: &GlobalRoleBinding) -> Resource {
    Resource::new(&binding.id)
        .with("globalRoleId", binding.global_role_id.as_str())
        .with("userId", optional(&binding.user_id))
        .with("groupPrincipalId", optional(&binding.group_principal_id))
        .with("userPrincipalId", optional(&binding.user_principal_id))
        .with("status", json!({"summary": "Completed", "conditions": []}))
        .with("state", "active")
        .with("created", date(binding.created))
        .with("creatorId", optional(&binding.creator_id))
        .with("labels", json!({}))
        .with("annotations", json!({}))
}

/// What a role body says; `rules` must be Kubernetes policy rules.
fn role_spec(input: &Map<String, Value>) -> Result<RoleSpec, ApiError> {
    let text = |name: &str| input.get(name).and_then(Value::as_str).map(str::to_string);
    Ok(RoleSpec {
        display_name: text("name"),
        description: text("description"),
        rules: rules_in(input, "rules")?,
        new_user_default: input.get("newUserDefault").and_then(Value::as_bool),
        inherited_cluster_roles: strings_in(input, "inheritedClusterRoles"),
    })
}

#[async_trait]
impl TypeHandler for GlobalRoles {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            Schema::new("globalRole")
                .methods(&[GET, POST], &[GET, PUT, DELETE])
                .field(
                    "name",
                    Field::string().writable().required().max_length(256),
                )
                .field("description", Field::string().writable().max_length(1024))
                .field("rules", rule_list().writable())
                .field("newUserDefault", Field::boolean().writable().required())
                .field("builtin", Field::boolean())
                .field(
                    "inheritedClusterRoles",
                    Field::references("roleTemplate").writable(),
                )
                .field("status", Field::json())
                .object_meta()
                .status_summary(),
            Schema::new("policyRule")
                .field("apiGroups", Field::strings().writable())
                .field("nonResourceURLs", Field::strings().writable())
                .field("resourceNames", Field::strings().writable())
                .field("resources", Field::strings().writable())
                .field("verbs", Field::strings().writable()),
        ]
    }

    fn rbac_resource(&self) -> Option<&'static str> {
        Some("globalroles")
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        let roles = call
            .state
            .accounts
            .global_roles()
            .map_err(|e| account_error(&e))?;
        Ok(roles.iter().map(role_resource).collect())
    }

    async fn get(&self, call: &Call<'_>, id: &str) -> Result<Resource, ApiError> {
        let role = call
            .state
            .accounts
            .global_role(id)
            .map_err(|e| account_error(&e))?;
        Ok(role_resource(&role))
    }

    async fn create(&self, call: &Call<'_>, input: Map<String, Value>) -> Result<Answer, ApiError> {
        let caller = call.caller()?;
        let role = call
            .state
            .accounts
            .create_global_role(caller, role_spec(&input)?)
            .map_err(|e| account_error(&e))?;
        Ok(Answer::created("globalRole", role_resource(&role)))
    }

    async fn update(
        &self,
        call: &Call<'_>,
        id: &str,
        input: Map<String, Value>,
    ) -> Result<Resource, ApiError> {
        let caller = call.caller()?;
        let role = call
            .state
            .accounts
            .update_global_role(caller, id, role_spec(&input)?)
            .map_err(|e| account_error(&e))?;
        Ok(role_resource(&role))
    }

    async fn delete(&self, call: &Call<'_>, id: &str) -> Result<Answer, ApiError> {
        let caller = call.caller()?;
        let accounts = &call.state.accounts;
        let role = accounts.global_role(id).map_err(|e| account_error(&e))?;
        accounts
            .delete_global_role(caller, id)
            .map_err(|e| account_error(&e))?;
        Ok(Answer::ok("globalRole", role_resource(&role)))
    }
}

#[async_trait]
impl TypeHandler for GlobalRoleBindings {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            Schema::new("globalRoleBinding")
                .methods(&[GET, POST], &[GET, PUT, DELETE])
                .field(
                    "globalRoleId",
                    Field::reference("globalRole").create().required(),
                )
                .field("userId", Field::reference("user").create().nullable())
                .field(
                    "groupPrincipalId",
                    Field::reference("principal").create().nullable(),
                )
                .field(
                    "userPrincipalId",
                    Field::reference("principal").create().nullable(),
                )
                .field("status", Field::json())
                .object_meta()
                .status_summary(),
        ]
    }

    fn rbac_resource(&self) -> Option<&'static str> {
        Some("globalrolebindings")
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        let bindings = call
            .state
            .accounts
            .global_role_bindings()
            .map_err(|e| account_error(&e))?;
        Ok(bindings.iter().map(binding_resource).collect())
    }

    async fn get(&self, call: &Call<'_>, id: &str) -> Result<Resource, ApiError> {
        let binding = call
            .state
            .accounts
            .global_role_binding(id)
            .map_err(|e| account_error(&e))?;
        Ok(binding_resource(&binding))
    }

    async fn create(&self, call: &Call<'_>, input: Map<String, Value>) -> Result<Answer, ApiError> {
        let caller = call.caller()?;
        let text = |name: &str| input.get(name).and_then(Value::as_str).map(str::to_string);
        let spec = BindingSpec {
            global_role_id: text("globalRoleId").unwrap_or_default(),
            user_id: text("userId"),
            group_principal_id: text("groupPrincipalId"),
            user_principal_id: text("userPrincipalId"),
        };
        let binding = call
            .state
            .accounts
            .create_global_role_binding(caller, spec)
            .map_err(|e| account_error(&e))?;
        Ok(Answer::created(
            "globalRoleBinding",
            binding_resource(&binding),
        ))
    }

    /// Nothing of a binding changes: its references are fixed, and corral keeps no labels.
    async fn update(
        &self,
        call: &Call<'_>,
        id: &str,
        _: Map<String, Value>,
    ) -> Result<Resource, ApiError> {
        self.get(call, id).await
    }

    async fn delete(&self, call: &Call<'_>, id: &str) -> Result<Answer, ApiError> {
        let caller = call.caller()?;
        let accounts = &call.state.accounts;
        let binding = accounts
            .global_role_binding(id)
            .map_err(|e| account_error(&e))?;
        accounts
            .delete_global_role_binding(caller, id)
            .map_err(|e| account_error(&e))?;
        Ok(Answer::ok("globalRoleBinding", binding_resource(&binding)))
    }
}
