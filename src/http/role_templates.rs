//! `/v3/roleTemplates` and `/v3/clusterRoleTemplateBindings` (`shared/spec/norman-api.md` §8):
//! what a user may do in one cluster. A binding is made in a cluster that exists, by someone who
//! may bind there and holds what the template grants.

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::account_error;
use super::global_roles::{optional, rule_list, rules_in, strings_in};
use super::norman::{Answer, Call, Scope, TypeHandler};
use crate::accounts::{
    ClusterBindingSpec, ClusterRoleTemplateBinding, RoleTemplateView, TemplateSpec,
};
use crate::api::resource::date;
use crate::api::schema::{DELETE, GET, POST, PUT};
use crate::api::{ApiError, Field, Resource, Schema};

pub struct RoleTemplates;
pub struct ClusterRoleTemplateBindings;

fn template_resource(template: &RoleTemplateView) -> Resource {
    let resource = Resource::new(&template.id)
        .with("name", template.display_name.as_str())
        .with("description", template.description.as_str())
        .with("context", template.context.as_str())
        .with("rules", json!(template.rules))
        .with("builtin", template.builtin)
        .with("external", template.external)
        .with("hidden", template.hidden)
        .with("locked", template.locked)
        .with("administrative", template.administrative)
        .with("clusterCreatorDefault", template.cluster_creator_default)
        .with("projectCreatorDefault", template.project_creator_default)
        .with("roleTemplateIds", json!(template.role_template_ids))
        .with("state", "active")
        .with("created", date(template.created))
        .with("creatorId", optional(&template.creator_id))
        .with("labels", json!({}))
        .with("annotations", json!({}));
    match template.builtin {
        true => resource.without_link("remove"),
        false => resource,
    }
}

fn binding_resource(binding: &ClusterRoleTemplateBinding) -> Resource {
    let name = binding
        .id
        .split_once(':')
        .map_or(binding.id.as_str(), |(_, n)| n);
    Resource::new(&binding.id)
        .with("name", name)
        .with("namespaceId", binding.cluster_id.as_str())
        .with("clusterId", binding.cluster_id.as_str())
        .with("roleTemplateId", binding.role_template_id.as_str())
        .with("userId", optional(&binding.user_id))
        .with("userPrincipalId", optional(&binding.user_principal_id))
        .with("groupId", optional(&binding.group_id))
        .with("groupPrincipalId", optional(&binding.group_principal_id))
        .with("status", json!({"summary": "Completed", "conditions": []}))
        .with("state", "active")
        .with("created", date(binding.created))
        .with("creatorId", optional(&binding.creator_id))
        .with("labels", json!({}))
        .with("annotations", json!({}))
}

fn template_spec(input: &Map<String, Value>) -> Result<TemplateSpec, ApiError> {
    let text = |name: &str| input.get(name).and_then(Value::as_str).map(str::to_string);
    let flag = |name: &str| input.get(name).and_then(Value::as_bool);
    Ok(TemplateSpec {
        display_name: text("name"),
        description: text("description"),
        context: text("context"),
        rules: rules_in(input, "rules")?,
        hidden: flag("hidden"),
        locked: flag("locked"),
        administrative: flag("administrative"),
        cluster_creator_default: flag("clusterCreatorDefault"),
        project_creator_default: flag("projectCreatorDefault"),
        role_template_ids: strings_in(input, "roleTemplateIds"),
    })
}

#[async_trait]
impl TypeHandler for RoleTemplates {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            Schema::new("roleTemplate")
                .methods(&[GET, POST], &[GET, PUT, DELETE])
                .field(
                    "name",
                    Field::string().writable().required().max_length(256),
                )
                .field("description", Field::string().writable().max_length(1024))
                .field(
                    "context",
                    Field::one_of(&["cluster", "project"])
                        .writable()
                        .default("cluster".into()),
                )
                .field("rules", rule_list().writable())
                .field("externalRules", rule_list().writable())
                .field("builtin", Field::boolean())
                .field("external", Field::boolean().writable())
                .field("hidden", Field::boolean().writable())
                .field("locked", Field::boolean().writable())
                .field("administrative", Field::boolean().writable())
                .field(
                    "clusterCreatorDefault",
                    Field::boolean().writable().required(),
                )
                .field(
                    "projectCreatorDefault",
                    Field::boolean().writable().required(),
                )
                .field(
                    "roleTemplateIds",
                    Field::references("roleTemplate").writable(),
                )
                .object_meta()
                .status_summary(),
        ]
    }

    fn rbac_resource(&self) -> Option<&'static str> {
        Some("roletemplates")
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        let templates = call
            .state
            .accounts
            .role_templates()
            .map_err(|e| account_error(&e))?;
        Ok(templates.iter().map(template_resource).collect())
    }

    async fn get(&self, call: &Call<'_>, id: &str) -> Result<Resource, ApiError> {
        let template = call
            .state
            .accounts
            .role_template(id)
            .map_err(|e| account_error(&e))?;
        Ok(template_resource(&template))
    }

    async fn create(&self, call: &Call<'_>, input: Map<String, Value>) -> Result<Answer, ApiError> {
        let template = call
            .state
            .accounts
            .create_role_template(call.caller()?, template_spec(&input)?)
            .map_err(|e| account_error(&e))?;
        Ok(Answer::created(
            "roleTemplate",
            template_resource(&template),
        ))
    }

    async fn update(
        &self,
        call: &Call<'_>,
        id: &str,
        input: Map<String, Value>,
    ) -> Result<Resource, ApiError> {
        let template = call
            .state
            .accounts
            .update_role_template(call.caller()?, id, template_spec(&input)?)
            .map_err(|e| account_error(&e))?;
        Ok(template_resource(&template))
    }

    async fn delete(&self, call: &Call<'_>, id: &str) -> Result<Answer, ApiError> {
        let accounts = &call.state.accounts;
        let template = accounts.role_template(id).map_err(|e| account_error(&e))?;
        accounts
            .delete_role_template(call.caller()?, id)
            .map_err(|e| account_error(&e))?;
        Ok(Answer::ok("roleTemplate", template_resource(&template)))
    }
}

#[async_trait]
impl TypeHandler for ClusterRoleTemplateBindings {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            Schema::new("clusterRoleTemplateBinding")
                .methods(&[GET, POST], &[GET, PUT, DELETE])
                .field("name", Field::string())
                .field("namespaceId", Field::string())
                .field("clusterId", Field::reference("cluster").create().required())
                .field("roleTemplateId", Field::reference("roleTemplate").create())
                .field("userId", Field::reference("user").create().nullable())
                .field(
                    "userPrincipalId",
                    Field::reference("principal").create().nullable(),
                )
                .field("groupId", Field::reference("group").create().nullable())
                .field(
                    "groupPrincipalId",
                    Field::reference("principal").create().nullable(),
                )
                .field("status", Field::json())
                .object_meta()
                .status_summary(),
        ]
    }

    fn rbac_resource(&self) -> Option<&'static str> {
        Some("clusterroletemplatebindings")
    }

    fn scope(&self) -> Scope {
        Scope::InCluster
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        let bindings = call
            .state
            .accounts
            .cluster_role_template_bindings()
            .map_err(|e| account_error(&e))?;
        Ok(bindings.iter().map(binding_resource).collect())
    }

    async fn get(&self, call: &Call<'_>, id: &str) -> Result<Resource, ApiError> {
        let binding = call
            .state
            .accounts
            .cluster_role_template_binding(id)
            .map_err(|e| account_error(&e))?;
        Ok(binding_resource(&binding))
    }

    async fn create(&self, call: &Call<'_>, input: Map<String, Value>) -> Result<Answer, ApiError> {
        let text = |name: &str| input.get(name).and_then(Value::as_str).map(str::to_string);
        let cluster_id = text("clusterId").unwrap_or_default();
        call.require_in_cluster(
            &cluster_id,
            "create",
            "clusterroletemplatebindings",
            "clusterRoleTemplateBinding",
        )?;
        // The binding lives in the cluster's namespace: no cluster, no namespace.
        if call.state.clusters.get(&cluster_id).is_none() {
            return Err(ApiError::not_found(format!(
                "namespaces \"{cluster_id}\" not found"
            )));
        }
        let spec = ClusterBindingSpec {
            cluster_id,
            role_template_id: text("roleTemplateId"),
            user_id: text("userId"),
            user_principal_id: text("userPrincipalId"),
            group_id: text("groupId"),
            group_principal_id: text("groupPrincipalId"),
        };
        let binding = call
            .state
            .accounts
            .create_cluster_role_template_binding(call.caller()?, spec)
            .map_err(|e| account_error(&e))?;
        Ok(Answer::created(
            "clusterRoleTemplateBinding",
            binding_resource(&binding),
        ))
    }

    /// Nothing of a binding changes: every reference is fixed.
    async fn update(
        &self,
        call: &Call<'_>,
        id: &str,
        _: Map<String, Value>,
    ) -> Result<Resource, ApiError> {
        self.get(call, id).await
    }

    async fn delete(&self, call: &Call<'_>, id: &str) -> Result<Answer, ApiError> {
        let accounts = &call.state.accounts;
        let binding = accounts
            .cluster_role_template_binding(id)
            .map_err(|e| account_error(&e))?;
        accounts
            .delete_cluster_role_template_binding(call.caller()?, id)
            .map_err(|e| account_error(&e))?;
        Ok(Answer::ok(
            "clusterRoleTemplateBinding",
            binding_resource(&binding),
        ))
    }
}
