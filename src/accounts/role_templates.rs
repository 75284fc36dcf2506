//! Role templates and cluster role template bindings (`shared/spec/norman-api.md` §8): what a
//! user may do in one cluster. Builtin templates live in the code (only `locked` and the creator
//! defaults of one are stored); custom templates and bindings are one store key each.
//!
//! A binding gives its user, in its cluster, the template's rules (with those of the templates it
//! inherits) and `get` on the cluster itself: management rules decide `/v3` (the cluster, its
//! nodes, tokens and bindings), the others what the downstream cluster allows the user when the
//! proxy impersonates it.

use std::collections::HashMap;

use super::state::{ClusterRoleTemplateBinding, Reindex, StoredRoleTemplate};
use super::{AccountError, Accounts, Caller};
use crate::rbac::{Grants, MANAGEMENT, PolicyRule, Request};
use crate::secrets::random_suffix;
use crate::support::unix_now;

/// Most custom role templates kept.
pub const MAX_CUSTOM_TEMPLATES: usize = 1_000;
/// Most cluster role template bindings kept.
pub const MAX_CLUSTER_BINDINGS: usize = 200_000;
/// How deep inheritance is followed (Rancher's templates go two or three levels).
const MAX_INHERITANCE: usize = 16;

const CRTB_WEBHOOK: &str = "rancher.cattle.io.clusterroletemplatebindings.management.cattle.io";

/// A role template as the API shows it.
#[derive(Debug, Clone)]
pub struct RoleTemplateView {
    pub id: String,
    pub display_name: String,
    pub description: String,
    /// `cluster` or `project`.
    pub context: String,
    pub rules: Vec<PolicyRule>,
    pub builtin: bool,
    /// Its rules are those of the downstream ClusterRole of its name (`cluster-admin`, `view`…).
    pub external: bool,
    pub hidden: bool,
    pub locked: bool,
    pub administrative: bool,
    pub cluster_creator_default: bool,
    pub project_creator_default: bool,
    pub role_template_ids: Vec<String>,
    pub created: i64,
    pub creator_id: String,
}

/// What a new custom template, or a change to one, says (`Some` is set).
#[derive(Debug, Clone, Default)]
pub struct TemplateSpec {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub context: Option<String>,
    pub rules: Option<Vec<PolicyRule>>,
    pub hidden: Option<bool>,
    pub locked: Option<bool>,
    pub administrative: Option<bool>,
    pub cluster_creator_default: Option<bool>,
    pub project_creator_default: Option<bool>,
    pub role_template_ids: Option<Vec<String>>,
}

/// Whom a new cluster binding binds, and to what.
#[derive(Debug, Clone, Default)]
pub struct ClusterBindingSpec {
    pub cluster_id: String,
    /// `None`: not a string (Rancher's first check).
    pub role_template_id: Option<String>,
    pub user_id: Option<String>,
    pub user_principal_id: Option<String>,
    pub group_id: Option<String>,
    pub group_principal_id: Option<String>,
}

const READ: &[&str] = &["get", "list", "watch"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule::new(groups, resources, verbs)
}

fn mgmt(resources: &[&str], verbs: &[&str]) -> PolicyRule {
    rule(&[MANAGEMENT], resources, verbs)
}

/// Rancher v2.11's builtin role templates, with their rules as corral enforces them.
fn builtin_templates() -> Vec<RoleTemplateView> {
    let template = |id: &str, name: &str, context: &str, rules: Vec<PolicyRule>| RoleTemplateView {
        id: id.into(),
        display_name: name.into(),
        description: String::new(),
        context: context.into(),
        rules,
        builtin: true,
        external: false,
        hidden: false,
        locked: false,
        administrative: false,
        cluster_creator_default: false,
        project_creator_default: false,
        role_template_ids: Vec::new(),
        created: 0,
        creator_id: String::new(),
    };
    let everything = vec![
        rule(&["*"], &["*"], &["*"]),
        PolicyRule::urls(&["*"], &["*"]),
    ];
    let external = |id: &str, name: &str, context: &str, rules: Vec<PolicyRule>| RoleTemplateView {
        external: true,
        ..template(id, name, context, rules)
    };
    let pair = |base: &str, name: &str, context: &str, groups: &[&str], resources: &[&str]| {
        [
            template(
                &format!("{base}-manage"),
                &format!("Manage {name}"),
                context,
                vec![rule(groups, resources, &["*"])],
            ),
            template(
                &format!("{base}-view"),
                &format!("View {name}"),
                context,
                vec![rule(groups, resources, READ)],
            ),
        ]
    };
    let mut templates = vec![
        RoleTemplateView {
            administrative: true,
            cluster_creator_default: true,
            ..template(
                "cluster-owner",
                "Cluster Owner",
                "cluster",
                everything.clone(),
            )
        },
        template(
            "cluster-member",
            "Cluster Member",
            "cluster",
            vec![
                mgmt(&["clusterroletemplatebindings"], READ),
                mgmt(&["projects"], &["create"]),
                mgmt(&["nodes", "nodepools"], READ),
                mgmt(&["clusterevents"], READ),
                rule(&[""], &["nodes", "persistentvolumes", "events"], READ),
                rule(&["storage.k8s.io"], &["storageclasses"], READ),
                rule(&["apiregistration.k8s.io"], &["apiservices"], READ),
                rule(&["metrics.k8s.io"], &["pods", "nodes"], READ),
            ],
        ),
        external(
            "cluster-admin",
            "Cluster Admin",
            "cluster",
            everything.clone(),
        ),
        template(
            "projects-create",
            "Create Projects",
            "cluster",
            vec![mgmt(&["projects"], &["create"])],
        ),
        template(
            "projects-view",
            "View All Projects",
            "cluster",
            vec![
                mgmt(&["projects"], READ),
                rule(&[""], &["namespaces"], READ),
            ],
        ),
        template(
            "nodes-manage",
            "Manage Nodes",
            "cluster",
            vec![
                mgmt(&["nodes", "nodepools"], &["*"]),
                rule(&[""], &["nodes"], &["*"]),
            ],
        ),
        template(
            "nodes-view",
            "View Nodes",
            "cluster",
            vec![
                mgmt(&["nodes", "nodepools"], READ),
                rule(&[""], &["nodes"], READ),
            ],
        ),
        template(
            "storage-manage",
            "Manage Storage",
            "cluster",
            vec![
                rule(
                    &[""],
                    &["persistentvolumes", "persistentvolumeclaims"],
                    &["*"],
                ),
                rule(&["storage.k8s.io"], &["storageclasses"], &["*"]),
            ],
        ),
        template(
            "backups-manage",
            "Manage Cluster Backups",
            "cluster",
            vec![mgmt(&["etcdbackups"], &["*"])],
        ),
        template(
            "navlinks-manage",
            "Manage Navlinks",
            "cluster",
            vec![rule(&["ui.cattle.io"], &["navlinks"], &["*"])],
        ),
    ];
    templates.extend(pair(
        "clusterroletemplatebindings",
        "Cluster Members",
        "cluster",
        &[MANAGEMENT],
        &["clusterroletemplatebindings"],
    ));
    templates.extend(pair(
        "clustercatalogs",
        "Cluster Catalogs",
        "cluster",
        &["catalog.cattle.io"],
        &["clusterrepos"],
    ));
    // Project context: corral serves no projects, but clients list these and bindings name them.
    let workloads = &[
        "pods",
        "deployments",
        "statefulsets",
        "daemonsets",
        "jobs",
        "cronjobs",
    ];
    templates.extend([
        RoleTemplateView {
            project_creator_default: true,
            ..template(
                "project-owner",
                "Project Owner",
                "project",
                everything.clone(),
            )
        },
        template(
            "project-member",
            "Project Member",
            "project",
            vec![rule(&["", "apps", "batch"], workloads, &["*"])],
        ),
        template(
            "read-only",
            "Read-only",
            "project",
            vec![rule(&["", "apps", "batch"], workloads, READ)],
        ),
        external("admin", "Kubernetes admin", "project", everything.clone()),
        external(
            "edit",
            "Kubernetes edit",
            "project",
            vec![rule(&["*"], &["*"], &["*"])],
        ),
        external(
            "view",
            "Kubernetes view",
            "project",
            vec![rule(&["*"], &["*"], READ)],
        ),
        template(
            "create-ns",
            "Create Namespaces",
            "project",
            vec![rule(&[""], &["namespaces"], &["create"])],
        ),
        template(
            "monitoring-ui-view",
            "View Monitoring",
            "project",
            vec![rule(&[""], &["services/proxy"], &["get"])],
        ),
        template(
            "navlinks-view",
            "View Navlinks",
            "project",
            vec![rule(&["ui.cattle.io"], &["navlinks"], READ)],
        ),
        template(
            "project-monitoring-readonly",
            "Project Monitoring View Role",
            "project",
            vec![rule(&["monitoring.coreos.com"], &["*"], READ)],
        ),
    ]);
    for (base, name, groups, resources) in [
        (
            "workloads",
            "Workloads",
            &["", "apps", "batch"][..],
            &workloads[..],
        ),
        (
            "ingress",
            "Ingress",
            &["networking.k8s.io"][..],
            &["ingresses"][..],
        ),
        (
            "services",
            "Services",
            &[""][..],
            &["services", "endpoints"][..],
        ),
        ("secrets", "Secrets", &[""][..], &["secrets"][..]),
        ("configmaps", "Config Maps", &[""][..], &["configmaps"][..]),
        (
            "persistentvolumeclaims",
            "Volumes",
            &[""][..],
            &["persistentvolumeclaims"][..],
        ),
        (
            "serviceaccounts",
            "Service Accounts",
            &[""][..],
            &["serviceaccounts"][..],
        ),
        (
            "projectroletemplatebindings",
            "Project Members",
            &[MANAGEMENT][..],
            &["projectroletemplatebindings"][..],
        ),
    ] {
        templates.extend(pair(base, name, "project", groups, resources));
    }
    templates
}

/// Checks a custom template: a known context, `administrative` only in a cluster.
fn check_template(context: &str, administrative: bool) -> Result<(), AccountError> {
    if context != "cluster" && context != "project" {
        return Err(AccountError::InvalidValue(format!(
            "context must be cluster or project, not {context:?}"
        )));
    }
    if administrative && context != "cluster" {
        return Err(AccountError::InvalidValue(
            "Only cluster roles can be administrative".into(),
        ));
    }
    Ok(())
}

/// What a downstream cluster must hold so that the users corral's proxy impersonates there get
/// what they are bound to: a ClusterRole per template in use (an external one names a role the
/// cluster has), a ClusterRoleBinding per cluster binding, and `cluster-admin` for every global
/// admin (Rancher's `globaladmin-<user>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DownstreamRbac {
    /// Roles to write: name and rules.
    pub roles: Vec<(String, Vec<PolicyRule>)>,
    pub bindings: Vec<DownstreamBinding>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DownstreamBinding {
    pub name: String,
    pub user: String,
    pub role: String,
}

/// What one user may do per cluster, from its cluster role template bindings.
#[derive(Debug, Clone, Default)]
pub struct ClusterGrants {
    by_cluster: HashMap<String, Grants>,
}

impl ClusterGrants {
    /// What the user may do in `cluster` (nothing when it is bound to nothing there).
    pub fn in_cluster(&self, cluster: &str) -> Option<&Grants> {
        self.by_cluster.get(cluster)
    }

    /// The clusters the user is bound in.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        self.by_cluster.keys().map(String::as_str)
    }
}

impl Accounts {
    /// Every role template: the builtin ones (with what is stored of them), then the custom ones.
    pub fn role_templates(&self) -> Result<Vec<RoleTemplateView>, AccountError> {
        let stored = self.records.templates.list()?;
        let mut templates = builtin_templates();
        for template in &mut templates {
            template.created = self.created();
            if let Some((_, kept)) = stored.iter().find(|(id, _)| *id == template.id) {
                template.locked = kept.value.locked;
                template.cluster_creator_default = kept.value.cluster_creator_default;
                template.project_creator_default = kept.value.project_creator_default;
            }
        }
        let builtin: Vec<String> = templates.iter().map(|t| t.id.clone()).collect();
        templates.extend(
            stored
                .iter()
                .filter(|(id, _)| !builtin.contains(id))
                .map(|(_, t)| t.value.view()),
        );
        Ok(templates)
    }

    pub fn role_template(&self, id: &str) -> Result<RoleTemplateView, AccountError> {
        self.role_templates()?
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| AccountError::TemplateNotFound(id.to_string()))
    }

    /// The rules of `id` and of every template it inherits, each once.
    pub(super) fn template_rules(
        templates: &[RoleTemplateView],
        id: &str,
    ) -> Result<Vec<PolicyRule>, AccountError> {
        let mut rules = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        let mut next = vec![id];
        while let Some(current) = next.pop() {
            if seen.contains(&current) {
                continue;
            }
            if seen.len() >= MAX_INHERITANCE {
                break;
            }
            seen.push(current);
            let template = templates
                .iter()
                .find(|t| t.id == current)
                .ok_or_else(|| AccountError::TemplateNotFound(current.to_string()))?;
            rules.extend(template.rules.iter().cloned());
            next.extend(template.role_template_ids.iter().map(String::as_str));
        }
        Ok(rules)
    }

    pub fn create_role_template(
        &self,
        caller: &Caller,
        spec: TemplateSpec,
    ) -> Result<RoleTemplateView, AccountError> {
        let context = spec.context.clone().unwrap_or_else(|| "cluster".into());
        check_template(&context, spec.administrative.unwrap_or(false))?;
        let rules = spec.rules.clone().unwrap_or_default();
        super::roles::check_rules(&rules)?;
        let inherited = spec.role_template_ids.clone().unwrap_or_default();
        for parent in &inherited {
            self.role_template(parent)?;
        }
        if self.records.templates.list()?.len() >= MAX_CUSTOM_TEMPLATES {
            return Err(AccountError::TooMany(
                "role templates",
                MAX_CUSTOM_TEMPLATES,
            ));
        }
        let made = StoredRoleTemplate {
            id: String::new(),
            display_name: spec.display_name.unwrap_or_default(),
            description: spec.description.unwrap_or_default(),
            context,
            rules,
            hidden: spec.hidden.unwrap_or(false),
            locked: spec.locked.unwrap_or(false),
            administrative: spec.administrative.unwrap_or(false),
            cluster_creator_default: spec.cluster_creator_default.unwrap_or(false),
            project_creator_default: spec.project_creator_default.unwrap_or(false),
            role_template_ids: inherited,
            created: unix_now(),
            creator_id: caller.user_id.clone(),
        };
        let (id, template) = self.records.templates.create_generated(
            || format!("rt-{}", random_suffix()),
            |id| StoredRoleTemplate {
                id: id.to_string(),
                ..made.clone()
            },
        )?;
        self.reindex(Reindex::Templates);
        tracing::info!("role template {id} created by {}", caller.username);
        Ok(template.view())
    }

    /// Changes a template; of a builtin one only `locked` and the creator defaults change.
    pub fn update_role_template(
        &self,
        caller: &Caller,
        id: &str,
        spec: TemplateSpec,
    ) -> Result<RoleTemplateView, AccountError> {
        let current = self.role_template(id)?;
        if current.builtin {
            self.records.templates.update_or_create::<AccountError>(
                id,
                || StoredRoleTemplate::of(&current),
                |kept| {
                    if let Some(locked) = spec.locked {
                        kept.locked = locked;
                    }
                    if let Some(default) = spec.cluster_creator_default {
                        kept.cluster_creator_default = default;
                    }
                    if let Some(default) = spec.project_creator_default {
                        kept.project_creator_default = default;
                    }
                },
            )?;
            self.reindex(Reindex::Templates);
            tracing::info!("builtin role template {id} updated by {}", caller.username);
            return self.role_template(id);
        }
        let context = spec.context.clone().unwrap_or(current.context.clone());
        check_template(
            &context,
            spec.administrative.unwrap_or(current.administrative),
        )?;
        if let Some(rules) = &spec.rules {
            super::roles::check_rules(rules)?;
        }
        if let Some(inherited) = &spec.role_template_ids {
            for parent in inherited {
                if parent == id {
                    return Err(AccountError::InvalidValue(
                        "a role template cannot inherit from itself".into(),
                    ));
                }
                self.role_template(parent)?;
            }
        }
        let updated = self
            .records
            .templates
            .update(id, |t| {
                let set = |field: &mut String, value: &Option<String>| {
                    if let Some(value) = value {
                        *field = value.clone();
                    }
                };
                set(&mut t.display_name, &spec.display_name);
                set(&mut t.description, &spec.description);
                t.context = context.clone();
                if let Some(rules) = &spec.rules {
                    t.rules = rules.clone();
                }
                let flag = |field: &mut bool, value: Option<bool>| {
                    if let Some(value) = value {
                        *field = value;
                    }
                };
                flag(&mut t.hidden, spec.hidden);
                flag(&mut t.locked, spec.locked);
                flag(&mut t.administrative, spec.administrative);
                flag(&mut t.cluster_creator_default, spec.cluster_creator_default);
                flag(&mut t.project_creator_default, spec.project_creator_default);
                if let Some(inherited) = &spec.role_template_ids {
                    t.role_template_ids = inherited.clone();
                }
                Ok::<_, AccountError>(t.view())
            })?
            .ok_or_else(|| AccountError::TemplateNotFound(id.to_string()))?;
        self.reindex(Reindex::Templates);
        Ok(updated)
    }

    /// Deletes a custom template nobody inherits from.
    pub fn delete_role_template(&self, caller: &Caller, id: &str) -> Result<(), AccountError> {
        let templates = self.role_templates()?;
        let template = templates
            .iter()
            .find(|t| t.id == id)
            .ok_or_else(|| AccountError::TemplateNotFound(id.to_string()))?;
        if template.builtin {
            return Err(AccountError::BuiltinTemplateDelete);
        }
        if let Some(heir) = templates
            .iter()
            .find(|t| t.role_template_ids.iter().any(|p| p == id))
        {
            return Err(AccountError::TemplateInherited {
                id: id.to_string(),
                by: heir.id.clone(),
            });
        }
        self.records.templates.delete(id)?;
        self.reindex(Reindex::Templates);
        tracing::info!("role template {id} deleted by {}", caller.username);
        Ok(())
    }

    pub fn cluster_role_template_bindings(
        &self,
    ) -> Result<Vec<ClusterRoleTemplateBinding>, AccountError> {
        Ok(self
            .records
            .cluster_bindings
            .list()?
            .into_iter()
            .map(|(_, b)| b.value)
            .collect())
    }

    pub fn cluster_role_template_binding(
        &self,
        id: &str,
    ) -> Result<ClusterRoleTemplateBinding, AccountError> {
        self.records
            .cluster_bindings
            .get(id)?
            .map(|b| b.value)
            .ok_or_else(|| AccountError::ClusterBindingNotFound(id.to_string()))
    }

    /// Binds a user (or group) in a cluster, with norman's checks in Rancher's order, then the
    /// webhook's: nobody grants, in a cluster, rules it does not hold there.
    pub fn create_cluster_role_template_binding(
        &self,
        caller: &Caller,
        spec: ClusterBindingSpec,
    ) -> Result<ClusterRoleTemplateBinding, AccountError> {
        let template_id = spec
            .role_template_id
            .clone()
            .ok_or(AccountError::NoRoleTemplateId)?;
        let templates = self.role_templates()?;
        let template = templates
            .iter()
            .find(|t| t.id == template_id)
            .ok_or_else(|| AccountError::TemplateLookup(template_id.clone()))?;
        if template.locked {
            return Err(AccountError::TemplateLocked);
        }
        if template.context != "cluster" {
            return Err(AccountError::WrongContext(template.context.clone()));
        }
        let given = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        let user = given(&spec.user_id) || given(&spec.user_principal_id);
        let group = given(&spec.group_id) || given(&spec.group_principal_id);
        if user == group {
            return Err(AccountError::ClusterBindingSubject);
        }
        if let Some(user_id) = spec.user_id.as_deref().filter(|s| !s.is_empty())
            && self.records.users.get(user_id)?.is_none()
        {
            return Err(AccountError::Webhook {
                webhook: CRTB_WEBHOOK,
                message: format!("user \"{user_id}\" not found"),
            });
        }
        let rules = Self::template_rules(&templates, &template_id)?;
        let cluster = spec.cluster_id.clone();
        self.refuse_escalation_in(caller, &cluster, &template_id, &rules)?;
        if self.with_index(|index| index.cluster_binding_count())? >= MAX_CLUSTER_BINDINGS {
            return Err(AccountError::TooMany(
                "cluster role template bindings",
                MAX_CLUSTER_BINDINGS,
            ));
        }
        let made = ClusterRoleTemplateBinding {
            id: String::new(),
            cluster_id: cluster.clone(),
            role_template_id: template_id,
            user_id: spec.user_id.unwrap_or_default(),
            user_principal_id: spec.user_principal_id.unwrap_or_default(),
            group_id: spec.group_id.unwrap_or_default(),
            group_principal_id: spec.group_principal_id.unwrap_or_default(),
            created: unix_now(),
            creator_id: caller.user_id.clone(),
        };
        let (id, binding) = self.records.cluster_bindings.create_generated(
            || format!("{cluster}:crtb-{}", random_suffix()),
            |id| ClusterRoleTemplateBinding {
                id: id.to_string(),
                ..made.clone()
            },
        )?;
        self.reindex(Reindex::ClusterBinding(id));
        tracing::info!(
            "{} bound as {} in cluster {} by {}",
            binding.user_id,
            binding.role_template_id,
            binding.cluster_id,
            caller.username
        );
        Ok(binding)
    }

    pub fn delete_cluster_role_template_binding(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(), AccountError> {
        let binding = self.cluster_role_template_binding(id)?;
        self.records.cluster_bindings.delete(id)?;
        self.reindex(Reindex::ClusterBinding(id.to_string()));
        tracing::info!(
            "{} unbound as {} in cluster {} by {}",
            binding.user_id,
            binding.role_template_id,
            binding.cluster_id,
            caller.username
        );
        Ok(())
    }

    /// The creator of a cluster gets every template with `clusterCreatorDefault` there
    /// (`cluster-owner`), as Rancher's `creator-cluster-owner` binding.
    pub fn bind_cluster_creator(
        &self,
        cluster_id: &str,
        creator: &str,
    ) -> Result<(), AccountError> {
        for template in self.role_templates()? {
            if !template.cluster_creator_default || template.context != "cluster" {
                continue;
            }
            let id = format!("{cluster_id}:creator-{}", template.id);
            let binding = ClusterRoleTemplateBinding {
                id: id.clone(),
                cluster_id: cluster_id.to_string(),
                role_template_id: template.id.clone(),
                user_id: creator.to_string(),
                user_principal_id: format!("local://{creator}"),
                group_id: String::new(),
                group_principal_id: String::new(),
                created: unix_now(),
                creator_id: creator.to_string(),
            };
            self.records.cluster_bindings.create_once(&id, &binding)?;
            self.reindex(Reindex::ClusterBinding(id));
        }
        Ok(())
    }

    /// Deletes every binding in a deleted cluster; how many went.
    pub fn forget_cluster(&self, cluster_id: &str) -> Result<usize, AccountError> {
        let gone = (self.records.cluster_bindings)
            .delete_where(|_, binding| binding.cluster_id == cluster_id)?;
        self.reindex(Reindex::Everything);
        Ok(gone)
    }

    /// What `user_id` may do in each cluster it is bound in: its templates' rules and `get` on
    /// the cluster.
    pub fn cluster_grants(&self, user_id: &str) -> Result<ClusterGrants, AccountError> {
        let mut rules: HashMap<String, Vec<PolicyRule>> = HashMap::new();
        self.with_index(|index| {
            for binding in index.cluster_bindings_of(user_id) {
                let own = rules.entry(binding.cluster_id.clone()).or_insert_with(|| {
                    vec![mgmt(&["clusters"], &["get"]).named(&[binding.cluster_id.as_str()])]
                });
                // A binding to a template since deleted grants nothing more.
                let template = &binding.role_template_id;
                if let Ok(found) = Self::template_rules(&index.templates, template) {
                    own.extend(found);
                }
            }
        })?;
        let by_cluster = rules
            .into_iter()
            .map(|(cluster, rules)| (cluster, Grants::new(rules)))
            .collect();
        Ok(ClusterGrants { by_cluster })
    }

    /// What cluster `cluster_id` must hold downstream for its users (see [`DownstreamRbac`]).
    pub fn downstream_rbac(&self, cluster_id: &str) -> Result<DownstreamRbac, AccountError> {
        self.with_index(|index| index.downstream(cluster_id))?
    }

    /// Whether `user_id` may do `request`: by its global rules, or by what it is bound to in
    /// `cluster`.
    pub fn may(
        &self,
        user_id: &str,
        cluster: &str,
        request: &Request<'_>,
    ) -> Result<bool, AccountError> {
        if self.grants(user_id)?.allows(request) {
            return Ok(true);
        }
        let local = self.cluster_grants(user_id)?;
        Ok(local
            .in_cluster(cluster)
            .is_some_and(|grants| grants.allows(request)))
    }

    /// The webhook's escalation check in one cluster: the caller's global rules and its rules
    /// there together must hold every rule granted.
    fn refuse_escalation_in(
        &self,
        caller: &Caller,
        cluster: &str,
        template: &str,
        rules: &[PolicyRule],
    ) -> Result<(), AccountError> {
        let global = self.grants(&caller.user_id)?;
        // `bind` on the template (admins have it) exempts from the check, as in Rancher's webhook.
        if global.allows(&Request::management(
            "bind",
            "roletemplates",
            Some(template),
        )) {
            return Ok(());
        }
        let local = self.cluster_grants(&caller.user_id)?;
        let mut held = global.rules().to_vec();
        if let Some(there) = local.in_cluster(cluster) {
            held.extend(there.rules().iter().cloned());
        }
        let Some(missing) = super::roles::missing_rules(&Grants::new(held), rules) else {
            return Ok(());
        };
        Err(AccountError::Escalation {
            webhook: CRTB_WEBHOOK,
            message: format!(
                "user \"{}\" is attempting to grant RBAC permissions not currently held in cluster {cluster}:\n{missing}",
                caller.user_id,
            ),
        })
    }
}

impl StoredRoleTemplate {
    fn view(&self) -> RoleTemplateView {
        RoleTemplateView {
            id: self.id.clone(),
            display_name: self.display_name.clone(),
            description: self.description.clone(),
            context: self.context.clone(),
            rules: self.rules.clone(),
            builtin: false,
            external: false,
            hidden: self.hidden,
            locked: self.locked,
            administrative: self.administrative,
            cluster_creator_default: self.cluster_creator_default,
            project_creator_default: self.project_creator_default,
            role_template_ids: self.role_template_ids.clone(),
            created: self.created,
            creator_id: self.creator_id.clone(),
        }
    }

    /// What the store keeps of a builtin template: `locked` and the creator defaults.
    fn of(template: &RoleTemplateView) -> Self {
        Self {
            id: template.id.clone(),
            display_name: String::new(),
            description: String::new(),
            context: template.context.clone(),
            rules: Vec::new(),
            hidden: false,
            locked: template.locked,
            administrative: false,
            cluster_creator_default: template.cluster_creator_default,
            project_creator_default: template.project_creator_default,
            role_template_ids: Vec::new(),
            created: unix_now(),
            creator_id: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_templates_are_unique_and_inherit_only_what_exists() {
        let templates = builtin_templates();
        let mut ids: Vec<&str> = templates.iter().map(|t| t.id.as_str()).collect();
        ids.sort();
        let before = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), before, "duplicate ids");
        for id in [
            "cluster-owner",
            "cluster-member",
            "project-owner",
            "view",
            "create-ns",
        ] {
            assert!(ids.contains(&id), "{id}");
        }
        let owner = Accounts::template_rules(&templates, "cluster-owner").unwrap();
        assert!(Grants::new(owner).allows(&Request {
            verb: "create",
            group: "",
            resource: "namespaces",
            name: None
        }));
        let member = Grants::new(Accounts::template_rules(&templates, "cluster-member").unwrap());
        let core = |verb, resource| Request {
            verb,
            group: "",
            resource,
            name: None,
        };
        assert!(member.allows(&core("list", "nodes")));
        assert!(!member.allows(&core("create", "namespaces")));
    }
}
