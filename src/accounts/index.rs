//! Who is bound to what and who is called what, read from the store once per generation of who may
//! do what ([`Accounts::rbac_generation`]) rather than per request: a request's authorization then
//! costs what its caller is bound to, whatever the number of users and bindings, and a login finds
//! its user without reading every user.

use std::collections::HashMap;
use std::sync::Arc;

use super::role_templates::RoleTemplateView;
use super::roles::GlobalRoleView;
use super::state::ClusterRoleTemplateBinding;
use super::{AccountError, Accounts};
use crate::rbac::{Grants, Request};

pub(super) struct AccessIndex {
    generation: u64,
    pub roles: Vec<GlobalRoleView>,
    pub templates: Vec<RoleTemplateView>,
    /// The global roles bound to each user.
    pub roles_of: HashMap<String, Vec<String>>,
    /// Users bound to a global role that grants everything (`admin`).
    pub admins: Vec<String>,
    pub cluster_bindings_of: HashMap<String, Vec<ClusterRoleTemplateBinding>>,
    pub cluster_bindings_in: HashMap<String, Vec<ClusterRoleTemplateBinding>>,
    /// User ids by username.
    pub user_ids: HashMap<String, String>,
}

impl Accounts {
    /// The index for the current generation, read from the store when that changed.
    pub(super) fn index(&self) -> Result<Arc<AccessIndex>, AccountError> {
        let generation = self.rbac_generation();
        if let Some(index) = crate::support::lock(&self.index).as_ref()
            && index.generation == generation
        {
            return Ok(index.clone());
        }
        let index = Arc::new(self.read_index(generation)?);
        *crate::support::lock(&self.index) = Some(index.clone());
        Ok(index)
    }

    fn read_index(&self, generation: u64) -> Result<AccessIndex, AccountError> {
        let roles = self.global_roles()?;
        let templates = self.role_templates()?;
        let everything = Request {
            verb: "*",
            group: "*",
            resource: "*",
            name: None,
        };
        let mut roles_of: HashMap<String, Vec<String>> = HashMap::new();
        let mut admins = Vec::new();
        for (_, binding) in self.records.bindings.list()? {
            let binding = binding.value;
            if binding.user_id.is_empty() {
                continue;
            }
            let grants_all = roles.iter().any(|role| {
                role.id == binding.global_role_id
                    && Grants::new(role.rules.clone()).allows(&everything)
            });
            if grants_all && !admins.contains(&binding.user_id) {
                admins.push(binding.user_id.clone());
            }
            roles_of
                .entry(binding.user_id)
                .or_default()
                .push(binding.global_role_id);
        }
        let mut cluster_bindings_of: HashMap<String, Vec<ClusterRoleTemplateBinding>> =
            HashMap::new();
        let mut cluster_bindings_in: HashMap<String, Vec<ClusterRoleTemplateBinding>> =
            HashMap::new();
        for (_, binding) in self.records.cluster_bindings.list()? {
            let binding = binding.value;
            cluster_bindings_in
                .entry(binding.cluster_id.clone())
                .or_default()
                .push(binding.clone());
            if !binding.user_id.is_empty() {
                cluster_bindings_of
                    .entry(binding.user_id.clone())
                    .or_default()
                    .push(binding);
            }
        }
        let user_ids = self
            .records
            .users
            .list()?
            .into_iter()
            .map(|(id, user)| (user.value.username, id))
            .collect();
        Ok(AccessIndex {
            generation,
            roles,
            templates,
            roles_of,
            admins,
            cluster_bindings_of,
            cluster_bindings_in,
            user_ids,
        })
    }
}
