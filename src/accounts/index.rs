//! Who is bound to what and who is called what, kept in memory: read from the store once, then
//! kept up to date object by object as this replica writes and as the store's watch reports other
//! replicas' writes. A request's authorization then costs what its caller is bound to, a login
//! finds its user by name, and a write costs what it changed, whatever the number of users and
//! bindings.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::role_templates::{DownstreamBinding, DownstreamRbac, RoleTemplateView};
use super::roles::GlobalRoleView;
use super::state::{ClusterRoleTemplateBinding, GlobalRoleBinding, Reindex};
use super::{AccountError, Accounts};
use crate::rbac::{Grants, Request};

#[derive(Default)]
pub(super) struct AccessIndex {
    pub roles: Vec<GlobalRoleView>,
    pub templates: Vec<RoleTemplateView>,
    global_bindings: HashMap<String, GlobalRoleBinding>,
    /// Each user's global role bindings: binding id → role id.
    roles_of: HashMap<String, BTreeMap<String, String>>,
    /// Users bound to a global role that grants everything (`admin`).
    pub admins: BTreeSet<String>,
    cluster_bindings: HashMap<String, ClusterRoleTemplateBinding>,
    cluster_bindings_of: HashMap<String, BTreeSet<String>>,
    cluster_bindings_in: HashMap<String, BTreeSet<String>>,
    /// User ids by username, and usernames by id.
    user_ids: HashMap<String, String>,
    usernames: HashMap<String, String>,
}

impl AccessIndex {
    pub fn user_id(&self, username: &str) -> Option<&String> {
        self.user_ids.get(username)
    }

    pub fn user_count(&self) -> usize {
        self.usernames.len()
    }

    pub fn global_binding_count(&self) -> usize {
        self.global_bindings.len()
    }

    pub fn cluster_binding_count(&self) -> usize {
        self.cluster_bindings.len()
    }

    /// The ids of the global roles bound to `user_id`.
    pub fn roles_of(&self, user_id: &str) -> impl Iterator<Item = &String> {
        self.roles_of
            .get(user_id)
            .into_iter()
            .flat_map(|b| b.values())
    }

    pub fn cluster_bindings_of(
        &self,
        user_id: &str,
    ) -> impl Iterator<Item = &ClusterRoleTemplateBinding> {
        self.ids_to_bindings(self.cluster_bindings_of.get(user_id))
    }

    pub fn cluster_bindings_in(
        &self,
        cluster_id: &str,
    ) -> impl Iterator<Item = &ClusterRoleTemplateBinding> {
        self.ids_to_bindings(self.cluster_bindings_in.get(cluster_id))
    }

    fn ids_to_bindings<'a>(
        &'a self,
        ids: Option<&'a BTreeSet<String>>,
    ) -> impl Iterator<Item = &'a ClusterRoleTemplateBinding> {
        ids.into_iter()
            .flatten()
            .filter_map(|id| self.cluster_bindings.get(id))
    }

    fn set_user(&mut self, id: &str, username: Option<String>) {
        if let Some(old) = self.usernames.remove(id) {
            self.user_ids.remove(&old);
        }
        if let Some(username) = username {
            self.user_ids.insert(username.clone(), id.to_string());
            self.usernames.insert(id.to_string(), username);
        }
    }

    fn set_global_binding(&mut self, id: &str, binding: Option<GlobalRoleBinding>) {
        if let Some(old) = self.global_bindings.remove(id)
            && let Some(bound) = self.roles_of.get_mut(&old.user_id)
        {
            bound.remove(id);
            if bound.is_empty() {
                self.roles_of.remove(&old.user_id);
            }
            self.admin_status(&old.user_id);
        }
        if let Some(binding) = binding {
            let user = binding.user_id.clone();
            if !user.is_empty() {
                self.roles_of
                    .entry(user.clone())
                    .or_default()
                    .insert(id.to_string(), binding.global_role_id.clone());
            }
            self.global_bindings.insert(id.to_string(), binding);
            self.admin_status(&user);
        }
    }

    fn set_cluster_binding(&mut self, id: &str, binding: Option<ClusterRoleTemplateBinding>) {
        if let Some(old) = self.cluster_bindings.remove(id) {
            for (map, key) in [
                (&mut self.cluster_bindings_of, &old.user_id),
                (&mut self.cluster_bindings_in, &old.cluster_id),
            ] {
                if let Some(ids) = map.get_mut(key) {
                    ids.remove(id);
                    if ids.is_empty() {
                        map.remove(key);
                    }
                }
            }
        }
        if let Some(binding) = binding {
            if !binding.user_id.is_empty() {
                self.cluster_bindings_of
                    .entry(binding.user_id.clone())
                    .or_default()
                    .insert(id.to_string());
            }
            self.cluster_bindings_in
                .entry(binding.cluster_id.clone())
                .or_default()
                .insert(id.to_string());
            self.cluster_bindings.insert(id.to_string(), binding);
        }
    }

    /// What cluster `cluster_id` must hold downstream for its users (see [`DownstreamRbac`]).
    pub fn downstream(&self, cluster_id: &str) -> Result<DownstreamRbac, AccountError> {
        let index = self;
        let mut wanted = DownstreamRbac::default();
        for binding in index.cluster_bindings_in(cluster_id) {
            if binding.user_id.is_empty() {
                continue;
            }
            let template = index
                .templates
                .iter()
                .find(|t| t.id == binding.role_template_id);
            let Some(template) = template else {
                continue;
            };
            if !template.external && !wanted.roles.iter().any(|(name, _)| *name == template.id) {
                let rules = Accounts::template_rules(&index.templates, &template.id)?;
                wanted.roles.push((template.id.clone(), rules));
            }
            let name = binding
                .id
                .split_once(':')
                .map_or(binding.id.as_str(), |(_, n)| n);
            wanted.bindings.push(DownstreamBinding {
                name: name.to_string(),
                user: binding.user_id.clone(),
                role: template.id.clone(),
            });
        }
        for admin in &index.admins {
            wanted.bindings.push(DownstreamBinding {
                name: format!("globaladmin-{admin}"),
                user: admin.clone(),
                role: "cluster-admin".into(),
            });
        }
        Ok(wanted)
    }

    /// Whether `user` is bound to a role that grants everything, from its bindings now.
    fn admin_status(&mut self, user: &str) {
        let everything = Request {
            verb: "*",
            group: "*",
            resource: "*",
            name: None,
        };
        let admin = self.roles_of(user).any(|bound| {
            self.roles.iter().any(|role| {
                role.id == *bound && Grants::new(role.rules.clone()).allows(&everything)
            })
        });
        match admin {
            true => self.admins.insert(user.to_string()),
            false => self.admins.remove(user),
        };
    }
}

impl Accounts {
    /// Runs `read` on the index, reading it from the store first when there is none.
    pub(super) fn with_index<R>(
        &self,
        read: impl FnOnce(&AccessIndex) -> R,
    ) -> Result<R, AccountError> {
        let mut index = crate::support::lock(&self.index);
        if index.is_none() {
            *index = Some(self.read_index()?);
        }
        Ok(read(index.as_ref().expect("just read")))
    }

    /// Reads what changed into the index (after it was written, here or elsewhere).
    pub(super) fn reindex(&self, change: Reindex) {
        let mut guard = crate::support::lock(&self.index);
        let Some(index) = guard.as_mut() else {
            return;
        };
        let applied = match &change {
            Reindex::User(id) => self.records.users.get(id).map(|user| {
                index.set_user(id, user.map(|u| u.value.username));
            }),
            Reindex::GlobalBinding(id) => self.records.bindings.get(id).map(|binding| {
                index.set_global_binding(id, binding.map(|b| b.value));
            }),
            Reindex::ClusterBinding(id) => self.records.cluster_bindings.get(id).map(|binding| {
                index.set_cluster_binding(id, binding.map(|b| b.value));
            }),
            Reindex::Roles => match self.global_roles() {
                Ok(roles) => {
                    index.roles = roles;
                    let users: Vec<String> = index.roles_of.keys().cloned().collect();
                    for user in users {
                        index.admin_status(&user);
                    }
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!("cannot read the global roles again: {e}");
                    *guard = None;
                    return;
                }
            },
            Reindex::Templates => match self.role_templates() {
                Ok(templates) => {
                    index.templates = templates;
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!("cannot read the role templates again: {e}");
                    *guard = None;
                    return;
                }
            },
            Reindex::Everything => {
                *guard = None;
                return;
            }
        };
        // Not readable now: read everything again when next needed.
        if let Err(e) = applied {
            tracing::warn!("cannot follow {change:?}: {e}");
            *guard = None;
        }
    }

    fn read_index(&self) -> Result<AccessIndex, AccountError> {
        let mut index = AccessIndex {
            roles: self.global_roles()?,
            templates: self.role_templates()?,
            ..AccessIndex::default()
        };
        for (id, user) in self.records.users.list()? {
            index.set_user(&id, Some(user.value.username));
        }
        for (id, binding) in self.records.bindings.list()? {
            index.set_global_binding(&id, Some(binding.value));
        }
        for (id, binding) in self.records.cluster_bindings.list()? {
            index.set_cluster_binding(&id, Some(binding.value));
        }
        Ok(index)
    }
}
