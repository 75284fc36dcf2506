//! Global roles and their bindings (`shared/spec/norman-api.md` §7): Rancher's builtin roles with
//! their rules at the level corral enforces, custom roles, and the bindings that give a user a
//! role. What a caller may do in `/v3` is the union of the rules of its bound roles
//! ([`Accounts::grants`]), plus `get` on its own user (Rancher's per-user role).
//!
//! Builtin roles live in the code, so an upgrade brings their rules up to date; the store keeps
//! only what may change of them (`newUserDefault`), and custom roles and bindings, one key each.

use super::state::{GlobalRoleBinding, Reindex, StoredRole};
use super::{AccountError, Accounts, Caller};
use crate::rbac::{Grants, MANAGEMENT, PolicyRule, Request};
use crate::secrets::random_suffix;
use crate::support::unix_now;

/// Most custom global roles kept.
pub const MAX_CUSTOM_ROLES: usize = 1_000;
/// Most global role bindings kept.
pub const MAX_BINDINGS: usize = 100_000;
/// Most rules in one role, and entries in one of a rule's lists.
const MAX_RULES: usize = 100;
const MAX_RULE_ENTRIES: usize = 100;

/// The webhook that refuses global role changes, as Rancher's answers name it.
const ROLE_WEBHOOK: &str = "rancher.cattle.io.globalroles.management.cattle.io";
const BINDING_WEBHOOK: &str = "rancher.cattle.io.globalrolebindings.management.cattle.io";
const USER_WEBHOOK: &str = "rancher.cattle.io.users.management.cattle.io";

/// A global role as the API shows it.
#[derive(Debug, Clone)]
pub struct GlobalRoleView {
    pub id: String,
    pub display_name: String,
    pub description: String,
    pub rules: Vec<PolicyRule>,
    pub new_user_default: bool,
    pub builtin: bool,
    pub inherited_cluster_roles: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    pub creator_id: String,
}

/// What a new custom role, or a change to one, says.
#[derive(Debug, Clone, Default)]
pub struct RoleSpec {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub rules: Option<Vec<PolicyRule>>,
    pub new_user_default: Option<bool>,
    pub inherited_cluster_roles: Option<Vec<String>>,
}

/// Whom a new binding binds: exactly one of a user and a group.
#[derive(Debug, Clone, Default)]
pub struct BindingSpec {
    pub global_role_id: String,
    pub user_id: Option<String>,
    pub group_principal_id: Option<String>,
    pub user_principal_id: Option<String>,
}

fn mgmt(resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule::new(&[MANAGEMENT], resources, verbs)
}

const READ: &[&str] = &["get", "list", "watch"];

/// Rancher v2.11's builtin global roles, with the rules corral enforces (management resources;
/// other groups as Rancher writes them, for clients that read the rules).
fn builtin_roles() -> Vec<GlobalRoleView> {
    let user_base = vec![
        mgmt(&["settings", "features"], READ),
        mgmt(&["preferences"], &["*"]),
        PolicyRule::new(&["ext.cattle.io"], &["useractivities"], &["get", "create"]),
        mgmt(&["rancherusernotifications"], READ),
    ];
    let mut user = user_base.clone();
    user.extend([
        mgmt(&["principals", "roletemplates"], READ),
        mgmt(&["clusters"], &["create"]),
        PolicyRule::new(&["provisioning.cattle.io"], &["clusters"], &["create"]),
        mgmt(&["nodedrivers", "kontainerdrivers"], READ),
        mgmt(&["nodetemplates", "fleetworkspaces"], &["create"]),
        PolicyRule::new(&["catalog.cattle.io"], &["clusterrepos"], READ),
        mgmt(
            &[
                "podsecurityadmissionconfigurationtemplates",
                "rkek8ssystemimages",
                "rkek8sserviceoptions",
                "rkeaddons",
            ],
            READ,
        ),
        PolicyRule::new(&[""], &["secrets"], &["create"]),
    ]);
    let role = |id: &str, name: &str, rules: Vec<PolicyRule>| GlobalRoleView {
        id: id.into(),
        display_name: name.into(),
        description: String::new(),
        rules,
        new_user_default: id == "user",
        builtin: true,
        inherited_cluster_roles: Vec::new(),
        created: 0,
        creator_id: String::new(),
    };
    vec![
        role(
            "admin",
            "Admin",
            vec![
                PolicyRule::new(&["*"], &["*"], &["*"]),
                PolicyRule::urls(&["*"], &["*"]),
            ],
        ),
        role("user", "User", user),
        role("user-base", "User Base", user_base),
        role(
            "clusters-create",
            "Create Clusters",
            vec![
                mgmt(&["clusters"], &["create"]),
                PolicyRule::new(&["provisioning.cattle.io"], &["clusters"], &["create"]),
                mgmt(
                    &["nodedrivers", "kontainerdrivers", "clustertemplates"],
                    READ,
                ),
            ],
        ),
        role(
            "settings-manage",
            "Manage Settings",
            vec![mgmt(&["settings"], &["*"])],
        ),
        role(
            "features-manage",
            "Manage Features",
            vec![mgmt(&["features"], &["get", "list", "watch", "update"])],
        ),
        role(
            "authn-manage",
            "Manage Authentication",
            vec![mgmt(&["authconfigs"], &["get", "list", "watch", "update"])],
        ),
        role(
            "users-manage",
            "Manage Users",
            vec![
                mgmt(&["users", "globalrolebindings"], &["*"]),
                mgmt(&["globalroles"], READ),
            ],
        ),
        role(
            "roles-manage",
            "Manage Roles",
            vec![mgmt(&["roletemplates"], &["*"])],
        ),
        role(
            "nodedrivers-manage",
            "Manage Node Drivers",
            vec![mgmt(&["nodedrivers"], &["*"])],
        ),
        role(
            "kontainerdrivers-manage",
            "Manage Cluster Drivers",
            vec![mgmt(&["kontainerdrivers"], &["*"])],
        ),
        role(
            "clustertemplates-create",
            "Create RKE Templates",
            vec![mgmt(&["clustertemplates"], &["create"])],
        ),
        role(
            "clustertemplaterevisions-create",
            "Create RKE Template Revisions",
            vec![mgmt(&["clustertemplaterevisions"], &["create"])],
        ),
        role(
            "view-rancher-metrics",
            "View Rancher Metrics",
            vec![PolicyRule::urls(&["/metrics"], &["get"])],
        ),
    ]
}

/// Checks a role's rules against corral's bounds.
pub(super) fn check_rules(rules: &[PolicyRule]) -> Result<(), AccountError> {
    let too_long = |list: &[String]| {
        list.len() > MAX_RULE_ENTRIES || list.iter().any(|entry| entry.len() > 253)
    };
    let bad = rules.len() > MAX_RULES
        || rules.iter().any(|rule| {
            too_long(&rule.api_groups)
                || too_long(&rule.resources)
                || too_long(&rule.verbs)
                || too_long(&rule.resource_names)
                || too_long(&rule.non_resource_urls)
        });
    if bad {
        return Err(AccountError::InvalidValue(format!(
            "a role holds at most {MAX_RULES} rules of at most {MAX_RULE_ENTRIES} entries each"
        )));
    }
    Ok(())
}

impl Accounts {
    /// Every global role: the builtin ones (with a stored `newUserDefault`), then the custom ones.
    pub fn global_roles(&self) -> Result<Vec<GlobalRoleView>, AccountError> {
        let stored = self.records.roles.list()?;
        let mut roles = builtin_roles();
        for role in &mut roles {
            role.created = self.created();
            if let Some((_, kept)) = stored.iter().find(|(id, _)| *id == role.id) {
                role.new_user_default = kept.value.new_user_default;
            }
        }
        let builtin = |id: &str| roles.iter().any(|r| r.id == id);
        let custom: Vec<GlobalRoleView> = stored
            .iter()
            .filter(|(id, _)| !builtin(id))
            .map(|(_, role)| role.value.view())
            .collect();
        roles.extend(custom);
        Ok(roles)
    }

    pub fn global_role(&self, id: &str) -> Result<GlobalRoleView, AccountError> {
        self.global_roles()?
            .into_iter()
            .find(|role| role.id == id)
            .ok_or_else(|| AccountError::RoleNotFound(id.to_string()))
    }

    /// Creates a custom role; the caller must hold every rule it grants (Rancher's webhook).
    pub fn create_global_role(
        &self,
        caller: &Caller,
        spec: RoleSpec,
    ) -> Result<GlobalRoleView, AccountError> {
        let rules = spec.rules.unwrap_or_default();
        check_rules(&rules)?;
        let id = format!("gr-{}", random_suffix());
        let may_escalate = Request::management("escalate", "globalroles", Some(&id));
        let object = ("globalroles", id.as_str());
        self.refuse_escalation(caller, ROLE_WEBHOOK, object, Some(may_escalate), &rules)?;
        if self.records.roles.list()?.len() >= MAX_CUSTOM_ROLES {
            return Err(AccountError::TooMany("global roles", MAX_CUSTOM_ROLES));
        }
        let template = StoredRole {
            id: String::new(),
            display_name: spec.display_name.unwrap_or_default(),
            description: spec.description.unwrap_or_default(),
            rules,
            new_user_default: spec.new_user_default.unwrap_or(false),
            inherited_cluster_roles: spec.inherited_cluster_roles.unwrap_or_default(),
            created: unix_now(),
            creator_id: caller.user_id.clone(),
        };
        let (id, role) =
            self.records
                .roles
                .create_generated(super::names_from(id, "gr-".into()), |id| StoredRole {
                    id: id.to_string(),
                    ..template.clone()
                })?;
        self.reindex(Reindex::Roles);
        tracing::info!("global role {id} created by {}", caller.username);
        Ok(role.view())
    }

    /// Changes a role. Of a builtin role only `newUserDefault` changes; the rest is dropped
    /// without a word, as Rancher does.
    pub fn update_global_role(
        &self,
        caller: &Caller,
        id: &str,
        spec: RoleSpec,
    ) -> Result<GlobalRoleView, AccountError> {
        let current = self.global_role(id)?;
        if current.builtin {
            let Some(new_user_default) = spec.new_user_default else {
                return Ok(current);
            };
            self.records.roles.update_or_create::<AccountError>(
                id,
                || StoredRole::of(&current),
                |kept| kept.new_user_default = new_user_default,
            )?;
            self.reindex(Reindex::Roles);
            return self.global_role(id);
        }
        if let Some(rules) = &spec.rules {
            check_rules(rules)?;
            let may_escalate = Request::management("escalate", "globalroles", Some(id));
            let object = ("globalroles", id);
            self.refuse_escalation(caller, ROLE_WEBHOOK, object, Some(may_escalate), rules)?;
        }
        let updated = self
            .records
            .roles
            .update(id, |role| {
                if let Some(name) = &spec.display_name {
                    role.display_name = name.clone();
                }
                if let Some(description) = &spec.description {
                    role.description = description.clone();
                }
                if let Some(rules) = &spec.rules {
                    role.rules = rules.clone();
                }
                if let Some(default) = spec.new_user_default {
                    role.new_user_default = default;
                }
                if let Some(inherited) = &spec.inherited_cluster_roles {
                    role.inherited_cluster_roles = inherited.clone();
                }
                Ok::<_, AccountError>(role.view())
            })?
            .ok_or_else(|| AccountError::RoleNotFound(id.to_string()))?;
        self.reindex(Reindex::Roles);
        Ok(updated)
    }

    /// Deletes a custom role and every binding to it (Rancher's owner reference does that).
    pub fn delete_global_role(&self, caller: &Caller, id: &str) -> Result<(), AccountError> {
        let role = self.global_role(id)?;
        if role.builtin {
            return Err(AccountError::BuiltinRoleDelete);
        }
        let unbound =
            (self.records.bindings).delete_where(|_, binding| binding.global_role_id == id)?;
        self.records.roles.delete(id)?;
        self.reindex(Reindex::Everything);
        tracing::info!(
            "global role {id} deleted by {} with {unbound} binding(s)",
            caller.username
        );
        Ok(())
    }

    pub fn global_role_bindings(&self) -> Result<Vec<GlobalRoleBinding>, AccountError> {
        Ok(self
            .records
            .bindings
            .list()?
            .into_iter()
            .map(|(_, b)| b.value)
            .collect())
    }

    pub fn global_role_binding(&self, id: &str) -> Result<GlobalRoleBinding, AccountError> {
        self.records
            .bindings
            .get(id)?
            .map(|b| b.value)
            .ok_or_else(|| AccountError::BindingNotFound(id.to_string()))
    }

    /// Binds a user or a group to a role, with the checks of norman's store and Rancher's webhook:
    /// exactly one subject, an existing role, an existing user, and no rule the caller lacks.
    pub fn create_global_role_binding(
        &self,
        caller: &Caller,
        spec: BindingSpec,
    ) -> Result<GlobalRoleBinding, AccountError> {
        let given = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        if given(&spec.user_id) == given(&spec.group_principal_id) {
            return Err(AccountError::BindingSubject);
        }
        let role = self.global_role(&spec.global_role_id)?;
        let id = format!("grb-{}", random_suffix());
        if let Some(user_id) = spec.user_id.as_deref().filter(|s| !s.is_empty())
            && self.records.users.get(user_id)?.is_none()
        {
            return Err(AccountError::Webhook {
                webhook: BINDING_WEBHOOK,
                message: format!(
                    "globalrolebindings.management.cattle.io \"{id}\" is invalid: user \"{user_id}\" not found"
                ),
            });
        }
        // Binding a role needs `bind` on it, or holding every rule it grants (Rancher's webhook).
        let may_bind = Request::management("bind", "globalroles", Some(&role.id));
        let object = ("globalrolebindings", id.as_str());
        self.refuse_escalation(caller, BINDING_WEBHOOK, object, Some(may_bind), &role.rules)?;
        if self.with_index(|index| index.global_binding_count())? >= MAX_BINDINGS {
            return Err(AccountError::TooMany("global role bindings", MAX_BINDINGS));
        }
        let template = GlobalRoleBinding {
            id: String::new(),
            global_role_id: role.id,
            user_id: spec.user_id.unwrap_or_default(),
            group_principal_id: spec.group_principal_id.unwrap_or_default(),
            user_principal_id: spec.user_principal_id.unwrap_or_default(),
            created: unix_now(),
            creator_id: caller.user_id.clone(),
        };
        let (id, binding) =
            self.records
                .bindings
                .create_generated(super::names_from(id, "grb-".into()), |id| {
                    GlobalRoleBinding {
                        id: id.to_string(),
                        ..template.clone()
                    }
                })?;
        self.reindex(Reindex::GlobalBinding(id));
        tracing::info!(
            "global role {} bound to {}{} by {}",
            binding.global_role_id,
            binding.user_id,
            binding.group_principal_id,
            caller.username
        );
        Ok(binding)
    }

    pub fn delete_global_role_binding(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(), AccountError> {
        let binding = self.global_role_binding(id)?;
        self.records.bindings.delete(id)?;
        self.reindex(Reindex::GlobalBinding(id.to_string()));
        tracing::info!(
            "global role binding {id} ({} of {}) deleted by {}",
            binding.global_role_id,
            binding.user_id,
            caller.username
        );
        Ok(())
    }

    /// Binds the first admin to `admin` (once: a data directory of an earlier version, or a new one).
    pub(super) fn bind_first_admin(&self) -> Result<(), AccountError> {
        let state = self.settings();
        if state.admin_bound || state.admin_id.is_empty() {
            return Ok(());
        }
        // Named after the admin, so replicas starting at once make one binding.
        let suffix = state.admin_id.trim_start_matches("user-");
        let id = format!("globalrolebinding-{suffix}");
        let binding = GlobalRoleBinding {
            id: id.clone(),
            global_role_id: "admin".into(),
            user_id: state.admin_id.clone(),
            group_principal_id: String::new(),
            user_principal_id: format!("local://{}", state.admin_id),
            created: unix_now(),
            creator_id: String::new(),
        };
        self.records.bindings.create_once(&id, &binding)?;
        self.records.settings.update(|state| {
            state.admin_bound = true;
            Ok::<_, AccountError>(())
        })?;
        self.reindex(Reindex::GlobalBinding(id));
        Ok(())
    }

    /// What `user_id` may do: the rules of every role bound to it, and `get` on its own user.
    pub fn grants(&self, user_id: &str) -> Result<Grants, AccountError> {
        let mut rules = vec![mgmt(&["users"], &["get"]).named(&[user_id])];
        self.with_index(|index| {
            for bound in index.roles_of(user_id) {
                if let Some(role) = index.roles.iter().find(|r| r.id == *bound) {
                    rules.extend(role.rules.iter().cloned());
                }
            }
        })?;
        Ok(Grants::new(rules))
    }

    /// Rancher's user webhook: changing, deleting or setting the password of another user needs
    /// every rule that user holds (a user manager cannot take over an admin).
    pub(super) fn refuse_user_takeover(
        &self,
        caller: &Caller,
        target: &str,
    ) -> Result<(), AccountError> {
        if target == caller.user_id {
            return Ok(());
        }
        let theirs = self.grants(target)?;
        // No verb exempts from this one: `*` on users (a user manager's) is not the admin's rules.
        self.refuse_escalation(
            caller,
            USER_WEBHOOK,
            ("users", target),
            None,
            theirs.rules(),
        )
    }

    /// Rancher's webhook: nobody grants (in a role, or by binding one) a rule they do not hold.
    /// `object` (resource, name) names what is written, for the message; a caller whose rules
    /// grant `exempt` (`escalate` on the role, `bind` on the bound role: admins' do) is not checked.
    fn refuse_escalation(
        &self,
        caller: &Caller,
        webhook: &'static str,
        (resource, name): (&str, &str),
        exempt: Option<Request<'_>>,
        rules: &[PolicyRule],
    ) -> Result<(), AccountError> {
        let held = self.grants(&caller.user_id)?;
        if exempt.is_some_and(|exempt| held.allows(&exempt)) {
            return Ok(());
        }
        let Some(missing) = missing_rules(&held, rules) else {
            return Ok(());
        };
        Err(AccountError::Escalation {
            webhook,
            message: format!(
                "{resource}.{MANAGEMENT} \"{name}\" is forbidden: user \"{}\" (groups=[\"system:authenticated\" \"system:cattle:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{missing}",
                caller.user_id,
            ),
        })
    }
}

/// The rules of `rules` that `held` does not cover, one a line as Kubernetes' escalation message
/// prints them; `None` when it covers them all.
pub(super) fn missing_rules(held: &Grants, rules: &[PolicyRule]) -> Option<String> {
    let missing: Vec<String> = rules
        .iter()
        .filter_map(|r| held.uncovered(r))
        .map(|r| describe_rule(&r))
        .collect();
    (!missing.is_empty()).then(|| missing.join("\n"))
}

/// A rule as Kubernetes' escalation message prints it.
fn describe_rule(rule: &PolicyRule) -> String {
    let list = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
        format!("[{}]", quoted.join(" "))
    };
    if rule.non_resource_urls.is_empty() {
        format!(
            "{{APIGroups:{}, Resources:{}, Verbs:{}}}",
            list(&rule.api_groups),
            list(&rule.resources),
            list(&rule.verbs)
        )
    } else {
        format!(
            "{{NonResourceURLs:{}, Verbs:{}}}",
            list(&rule.non_resource_urls),
            list(&rule.verbs)
        )
    }
}

impl StoredRole {
    fn view(&self) -> GlobalRoleView {
        GlobalRoleView {
            id: self.id.clone(),
            display_name: self.display_name.clone(),
            description: self.description.clone(),
            rules: self.rules.clone(),
            new_user_default: self.new_user_default,
            builtin: false,
            inherited_cluster_roles: self.inherited_cluster_roles.clone(),
            created: self.created,
            creator_id: self.creator_id.clone(),
        }
    }

    /// What the store keeps of a builtin role: its id and `newUserDefault`.
    fn of(role: &GlobalRoleView) -> Self {
        Self {
            id: role.id.clone(),
            display_name: String::new(),
            description: String::new(),
            rules: Vec::new(),
            new_user_default: role.new_user_default,
            inherited_cluster_roles: Vec::new(),
            created: unix_now(),
            creator_id: String::new(),
        }
    }
}
