//! The simulated cluster's RBAC, as kube-apiserver applies it: ClusterRoles and
//! ClusterRoleBindings (stored as sent, with the defaults every cluster starts with), who a
//! request is (the service account, or the user it impersonates), what it asks
//! (`verb` on `resource` of `group`, or a path), and kube-apiserver's 403 when no bound rule
//! grants it. `SelfSubjectAccessReview` and `SelfSubjectRulesReview` answer `kubectl auth can-i`.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::rbac::{Grants, PolicyRule, Request};

/// Objects of each kind one simulated cluster holds at most.
pub const MAX_OBJECTS: usize = 10_000;
/// Rules in one ClusterRole, at most.
const MAX_RULES: usize = 200;
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// The service account corral presents: everything, and impersonation.
pub const SERVICE_ACCOUNT: &str = "system:serviceaccount:cattle-system:cattle";

/// Who a request is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// The service account, or the user it impersonates (`Impersonate-User`, each
    /// `Impersonate-Group`); an impersonated user is also `system:authenticated`.
    pub fn of(headers: &HeaderMap) -> Self {
        let values = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        match values("impersonate-user").into_iter().next() {
            Some(user) => {
                let mut groups = values("impersonate-group");
                if !groups.iter().any(|g| g == "system:authenticated") {
                    groups.push("system:authenticated".into());
                }
                groups.truncate(64);
                Self { user, groups }
            }
            None => Self {
                user: SERVICE_ACCOUNT.into(),
                groups: vec![
                    "system:serviceaccounts".into(),
                    "system:serviceaccounts:cattle-system".into(),
                    "system:authenticated".into(),
                    "system:masters".into(),
                ],
            },
        }
    }
}

/// What a request asks, as the authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Resource {
        verb: String,
        group: String,
        resource: String,
        name: Option<String>,
        namespace: Option<String>,
    },
    Path {
        verb: String,
        path: String,
    },
}

impl Attributes {
    /// Reads a request's path as kube-apiserver's request-info resolver does.
    pub fn of(method: &Method, path: &str, query: Option<&str>) -> Self {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", "v1", rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => {
                return Self::Path {
                    verb: method.as_str().to_ascii_lowercase(),
                    path: path.to_string(),
                };
            }
        };
        let (namespace, rest) = match rest {
            ["namespaces", namespace, resource, rest @ ..] => (
                Some(namespace.to_string()),
                [&[*resource][..], rest].concat(),
            ),
            other => (None, other.to_vec()),
        };
        let Some(resource) = rest.first() else {
            return Self::Path {
                verb: method.as_str().to_ascii_lowercase(),
                path: path.to_string(),
            };
        };
        // Without a namespace segment, `namespaces/<name>` is the namespace itself.
        let (resource, name) = (resource.to_string(), rest.get(1).map(|n| n.to_string()));
        let watching = query.is_some_and(|q| {
            q.split('&')
                .any(|pair| pair == "watch=true" || pair == "watch=1")
        });
        let verb = match (method.as_str(), name.is_some()) {
            ("GET" | "HEAD", _) if watching => "watch",
            ("GET" | "HEAD", true) => "get",
            ("GET" | "HEAD", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            (other, _) => {
                return Self::Path {
                    verb: other.to_ascii_lowercase(),
                    path: path.to_string(),
                };
            }
        };
        Self::Resource {
            verb: verb.into(),
            group: group.to_string(),
            resource,
            name,
            namespace,
        }
    }

    /// kube-apiserver's words for a refusal of this request to `user`.
    pub fn forbidden(&self, user: &str) -> String {
        match self {
            Self::Resource {
                verb,
                group,
                resource,
                name,
                namespace,
            } => {
                let object = match name {
                    Some(name) => format!("{resource} \"{name}\""),
                    None => resource.clone(),
                };
                let scope = match namespace {
                    Some(ns) => format!("in the namespace \"{ns}\""),
                    None => "at the cluster scope".into(),
                };
                format!(
                    "{object} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"
                )
            }
            Self::Path { verb, path } => {
                format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\"")
            }
        }
    }
}

/// A binding's subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// One stored object: its metadata as sent (name, labels, annotations) and its content.
#[derive(Debug, Clone)]
struct Stored<T> {
    labels: BTreeMap<String, String>,
    uid: String,
    created: String,
    resource_version: u64,
    content: T,
}

impl<T> Stored<T> {
    fn metadata(&self, name: &str) -> Value {
        json!({
            "name": name,
            "uid": self.uid,
            "resourceVersion": self.resource_version.to_string(),
            "creationTimestamp": self.created,
            "labels": self.labels,
        })
    }
}

#[derive(Debug, Clone)]
struct Binding {
    subjects: Vec<Subject>,
    role: String,
}

/// Which of the two kinds a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ClusterRoles,
    ClusterRoleBindings,
}

impl Kind {
    pub fn from_path(segment: &str) -> Option<Self> {
        match segment {
            "clusterroles" => Some(Self::ClusterRoles),
            "clusterrolebindings" => Some(Self::ClusterRoleBindings),
            _ => None,
        }
    }

    pub fn resource(self) -> &'static str {
        match self {
            Self::ClusterRoles => "clusterroles",
            Self::ClusterRoleBindings => "clusterrolebindings",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::ClusterRoles => "ClusterRole",
            Self::ClusterRoleBindings => "ClusterRoleBinding",
        }
    }
}

/// Why a write was refused: kube-apiserver's status code, reason and message.
#[derive(Debug)]
pub struct Refusal {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: u16, reason: &'static str, message: String) -> Self {
        Self {
            code,
            reason,
            message,
        }
    }
}

/// The cluster's ClusterRoles and ClusterRoleBindings.
pub struct Rbac {
    roles: BTreeMap<String, Stored<Vec<PolicyRule>>>,
    bindings: BTreeMap<String, Stored<Binding>>,
    version: u64,
}

const READ: &[&str] = &["get", "list", "watch"];

impl Rbac {
    /// What every cluster starts with: `cluster-admin` for `system:masters`, `admin`, `edit` and
    /// `view`, and the discovery and self-review rights of every authenticated user.
    pub fn new(created: &str, uid: impl Fn() -> String) -> Self {
        let mut rbac = Self {
            roles: BTreeMap::new(),
            bindings: BTreeMap::new(),
            version: 0,
        };
        let all = || PolicyRule::new(&["*"], &["*"], &["*"]);
        let defaults: [(&str, Vec<PolicyRule>); 6] = [
            (
                "cluster-admin",
                vec![all(), PolicyRule::urls(&["*"], &["*"])],
            ),
            ("admin", vec![all()]),
            ("edit", vec![all()]),
            ("view", vec![PolicyRule::new(&["*"], &["*"], READ)]),
            (
                "system:basic-user",
                vec![PolicyRule::new(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                )],
            ),
            (
                "system:discovery",
                vec![PolicyRule::urls(
                    &[
                        "/api",
                        "/api/*",
                        "/apis",
                        "/apis/*",
                        "/version",
                        "/version/",
                        "/healthz",
                        "/livez",
                        "/readyz",
                        "/openapi",
                        "/openapi/*",
                    ],
                    &["get"],
                )],
            ),
        ];
        let labels = BTreeMap::from([(
            "kubernetes.io/bootstrapping".to_string(),
            "rbac-defaults".to_string(),
        )]);
        for (name, rules) in defaults {
            rbac.version += 1;
            let stored = Stored {
                labels: labels.clone(),
                uid: uid(),
                created: created.to_string(),
                resource_version: rbac.version,
                content: rules,
            };
            rbac.roles.insert(name.to_string(), stored);
        }
        for (name, role, group) in [
            ("cluster-admin", "cluster-admin", "system:masters"),
            (
                "system:basic-user",
                "system:basic-user",
                "system:authenticated",
            ),
            (
                "system:discovery",
                "system:discovery",
                "system:authenticated",
            ),
        ] {
            rbac.version += 1;
            let binding = Binding {
                subjects: vec![Subject {
                    kind: "Group".into(),
                    name: group.into(),
                    api_group: RBAC_GROUP.into(),
                    namespace: String::new(),
                }],
                role: role.into(),
            };
            let stored = Stored {
                labels: labels.clone(),
                uid: uid(),
                created: created.to_string(),
                resource_version: rbac.version,
                content: binding,
            };
            rbac.bindings.insert(name.to_string(), stored);
        }
        rbac
    }

    /// The rules bound to `who`.
    pub fn grants(&self, who: &Identity) -> Grants {
        let mut rules = Vec::new();
        for binding in self.bindings.values() {
            let bound = binding
                .content
                .subjects
                .iter()
                .any(|s| match s.kind.as_str() {
                    "User" => s.name == who.user,
                    "Group" => who.groups.contains(&s.name),
                    "ServiceAccount" => {
                        format!("system:serviceaccount:{}:{}", s.namespace, s.name) == who.user
                    }
                    _ => false,
                });
            if bound && let Some(role) = self.roles.get(&binding.content.role) {
                rules.extend(role.content.iter().cloned());
            }
        }
        Grants::new(rules)
    }

    /// Whether `who` may do what `attributes` ask.
    pub fn allows(&self, who: &Identity, attributes: &Attributes) -> bool {
        let grants = self.grants(who);
        match attributes {
            Attributes::Resource {
                verb,
                group,
                resource,
                name,
                ..
            } => grants.allows(&Request {
                verb,
                group,
                resource,
                name: name.as_deref(),
            }),
            Attributes::Path { verb, path } => grants.allows_url(verb, path),
        }
    }

    fn object(&self, kind: Kind, name: &str) -> Option<Value> {
        let header = json!({"apiVersion": format!("{RBAC_GROUP}/v1"), "kind": kind.kind()});
        let mut object = header;
        match kind {
            Kind::ClusterRoles => {
                let role = self.roles.get(name)?;
                object["metadata"] = role.metadata(name);
                object["rules"] = json!(role.content);
            }
            Kind::ClusterRoleBindings => {
                let binding = self.bindings.get(name)?;
                object["metadata"] = binding.metadata(name);
                object["subjects"] = json!(binding.content.subjects);
                object["roleRef"] = json!({
                    "apiGroup": RBAC_GROUP,
                    "kind": "ClusterRole",
                    "name": binding.content.role,
                });
            }
        }
        Some(object)
    }

    pub fn get(&self, kind: Kind, name: &str) -> Result<Value, Refusal> {
        self.object(kind, name).ok_or_else(|| not_found(kind, name))
    }

    /// The objects whose labels match `selector` (`k=v`, `k!=v`, `k`, comma-separated).
    pub fn list(&self, kind: Kind, selector: &str) -> Value {
        let names: Vec<&String> = match kind {
            Kind::ClusterRoles => self.roles.keys().collect(),
            Kind::ClusterRoleBindings => self.bindings.keys().collect(),
        };
        let labels_of = |name: &str| match kind {
            Kind::ClusterRoles => self.roles.get(name).map(|r| &r.labels),
            Kind::ClusterRoleBindings => self.bindings.get(name).map(|b| &b.labels),
        };
        let items: Vec<Value> = names
            .into_iter()
            .filter(|name| labels_of(name).is_some_and(|labels| selects(selector, labels)))
            .filter_map(|name| self.object(kind, name))
            .collect();
        json!({
            "apiVersion": format!("{RBAC_GROUP}/v1"),
            "kind": format!("{}List", kind.kind()),
            "metadata": {"resourceVersion": self.version.to_string()},
            "items": items,
        })
    }

    /// Creates (`path_name` `None`) or replaces (the object named in the path) an object from its
    /// JSON.
    pub fn write(
        &mut self,
        kind: Kind,
        path_name: Option<&str>,
        body: &Value,
        created: &str,
        uid: String,
    ) -> Result<Value, Refusal> {
        let name = body["metadata"]["name"].as_str().unwrap_or_default();
        let invalid = |message: String| {
            Refusal::new(
                422,
                "Invalid",
                format!("{} \"{name}\" is invalid: {message}", kind.kind()),
            )
        };
        if name.is_empty() || name.len() > 253 {
            return Err(invalid(
                "metadata.name: Required value: name is required".into(),
            ));
        }
        if path_name.is_some_and(|p| p != name) {
            return Err(Refusal::new(
                400,
                "BadRequest",
                "the name of the object does not match the name on the URL".into(),
            ));
        }
        let labels: BTreeMap<String, String> = body["metadata"]["labels"]
            .as_object()
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .take(64)
                    .collect()
            })
            .unwrap_or_default();
        let replacing = path_name.is_some();
        let exists = match kind {
            Kind::ClusterRoles => self.roles.contains_key(name),
            Kind::ClusterRoleBindings => self.bindings.contains_key(name),
        };
        match (replacing, exists) {
            (false, true) => {
                return Err(Refusal::new(
                    409,
                    "AlreadyExists",
                    format!("{}.{RBAC_GROUP} \"{name}\" already exists", kind.resource()),
                ));
            }
            (true, false) => return Err(not_found(kind, name)),
            _ => {}
        }
        let count = match kind {
            Kind::ClusterRoles => self.roles.len(),
            Kind::ClusterRoleBindings => self.bindings.len(),
        };
        if !exists && count >= MAX_OBJECTS {
            return Err(Refusal::new(
                403,
                "Forbidden",
                format!(
                    "{}.{RBAC_GROUP} \"{name}\" is forbidden: a simulated cluster holds at most {MAX_OBJECTS}",
                    kind.resource()
                ),
            ));
        }
        self.version += 1;
        let version = self.version;
        match kind {
            Kind::ClusterRoles => {
                let rules: Vec<PolicyRule> = serde_json::from_value(body["rules"].clone())
                    .map_err(|e| invalid(format!("rules: {e}")))?;
                if rules.len() > MAX_RULES {
                    return Err(invalid(format!("rules: at most {MAX_RULES}")));
                }
                let (uid, created) = match self.roles.get(name) {
                    Some(old) => (old.uid.clone(), old.created.clone()),
                    None => (uid, created.to_string()),
                };
                self.roles.insert(
                    name.to_string(),
                    Stored {
                        labels,
                        uid,
                        created,
                        resource_version: version,
                        content: rules,
                    },
                );
            }
            Kind::ClusterRoleBindings => {
                let subjects: Vec<Subject> =
                    serde_json::from_value(body["subjects"].clone()).unwrap_or_default();
                let role = body["roleRef"]["name"].as_str().unwrap_or_default();
                if body["roleRef"]["kind"].as_str() != Some("ClusterRole") || role.is_empty() {
                    return Err(invalid(
                        "roleRef.kind: Unsupported value: only ClusterRole is served here".into(),
                    ));
                }
                if let Some(old) = self.bindings.get(name)
                    && old.content.role != role
                {
                    return Err(invalid(
                        "roleRef: Invalid value: cannot change roleRef".into(),
                    ));
                }
                let (uid, created) = match self.bindings.get(name) {
                    Some(old) => (old.uid.clone(), old.created.clone()),
                    None => (uid, created.to_string()),
                };
                let binding = Binding {
                    subjects: subjects.into_iter().take(64).collect(),
                    role: role.to_string(),
                };
                self.bindings.insert(
                    name.to_string(),
                    Stored {
                        labels,
                        uid,
                        created,
                        resource_version: version,
                        content: binding,
                    },
                );
            }
        }
        self.get(kind, name)
    }

    pub fn delete(&mut self, kind: Kind, name: &str) -> Result<Value, Refusal> {
        let object = self.get(kind, name)?;
        match kind {
            Kind::ClusterRoles => self.roles.remove(name).map(|_| ()),
            Kind::ClusterRoleBindings => self.bindings.remove(name).map(|_| ()),
        };
        self.version += 1;
        Ok(object)
    }
}

fn not_found(kind: Kind, name: &str) -> Refusal {
    Refusal::new(
        404,
        "NotFound",
        format!("{}.{RBAC_GROUP} \"{name}\" not found", kind.resource()),
    )
}

/// Whether `labels` match a label selector of equality terms.
fn selects(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|term| !term.is_empty())
        .all(|term| {
            if let Some((key, value)) = term.split_once("!=") {
                labels.get(key.trim()) != Some(&value.trim().to_string())
            } else if let Some((key, value)) = term.split_once('=') {
                let value = value.trim_start_matches('=').trim();
                labels.get(key.trim()).map(String::as_str) == Some(value)
            } else {
                labels.contains_key(term)
            }
        })
}

/// A SelfSubjectAccessReview's answer for `who`.
pub fn access_review(rbac: &Rbac, who: &Identity, review: &Value) -> Value {
    let spec = &review["spec"];
    let attributes = if let Some(resource) = spec["resourceAttributes"].as_object() {
        let text = |k: &str| resource.get(k).and_then(Value::as_str).unwrap_or_default();
        Attributes::Resource {
            verb: text("verb").to_string(),
            group: text("group").to_string(),
            resource: text("resource").to_string(),
            name: Some(text("name"))
                .filter(|n| !n.is_empty())
                .map(str::to_string),
            namespace: Some(text("namespace"))
                .filter(|n| !n.is_empty())
                .map(str::to_string),
        }
    } else {
        let path = spec["nonResourceAttributes"]["path"]
            .as_str()
            .unwrap_or("/");
        let verb = spec["nonResourceAttributes"]["verb"]
            .as_str()
            .unwrap_or("get");
        Attributes::Path {
            verb: verb.into(),
            path: path.into(),
        }
    };
    let allowed = rbac.allows(who, &attributes);
    let mut status = json!({"allowed": allowed});
    if allowed {
        status["reason"] = "RBAC: allowed by ClusterRoleBinding".into();
    }
    json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    })
}

/// A SelfSubjectRulesReview's answer for `who`: every rule bound to it.
pub fn rules_review(rbac: &Rbac, who: &Identity, review: &Value) -> Value {
    let grants = rbac.grants(who);
    let rule_json = |r: &PolicyRule| {
        json!({
            "verbs": r.verbs,
            "apiGroups": r.api_groups,
            "resources": r.resources,
            "resourceNames": r.resource_names,
        })
    };
    let resource_rules: Vec<Value> = grants
        .rules()
        .iter()
        .filter(|r| r.non_resource_urls.is_empty())
        .map(rule_json)
        .collect();
    let non_resource_rules: Vec<Value> = grants
        .rules()
        .iter()
        .filter(|r| !r.non_resource_urls.is_empty())
        .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
        .collect();
    json!({
        "kind": "SelfSubjectRulesReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": review["spec"],
        "status": {
            "resourceRules": resource_rules,
            "nonResourceRules": non_resource_rules,
            "incomplete": false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rbac() -> Rbac {
        Rbac::new("2026-01-01T00:00:00Z", || "uid".into())
    }

    fn user(name: &str) -> Identity {
        Identity {
            user: name.into(),
            groups: vec!["system:authenticated".into()],
        }
    }

    #[test]
    fn paths_read_as_the_apiserver_reads_them() {
        let get = Method::GET;
        assert_eq!(
            Attributes::of(&Method::POST, "/api/v1/namespaces", None),
            Attributes::Resource {
                verb: "create".into(),
                group: "".into(),
                resource: "namespaces".into(),
                name: None,
                namespace: None
            }
        );
        assert_eq!(
            Attributes::of(&get, "/api/v1/namespaces/lab", None),
            Attributes::Resource {
                verb: "get".into(),
                group: "".into(),
                resource: "namespaces".into(),
                name: Some("lab".into()),
                namespace: None
            }
        );
        let pods = Attributes::of(&get, "/api/v1/namespaces/lab/pods", Some("watch=true"));
        assert_eq!(
            pods,
            Attributes::Resource {
                verb: "watch".into(),
                group: "".into(),
                resource: "pods".into(),
                name: None,
                namespace: Some("lab".into())
            }
        );
        assert_eq!(
            pods.forbidden("u-x"),
            "pods is forbidden: User \"u-x\" cannot watch resource \"pods\" in API group \"\" in the namespace \"lab\""
        );
        let roles = Attributes::of(
            &Method::DELETE,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/x",
            None,
        );
        assert_eq!(
            roles.forbidden("u-x"),
            "clusterroles \"x\" is forbidden: User \"u-x\" cannot delete resource \"clusterroles\" in API group \"rbac.authorization.k8s.io\" at the cluster scope"
        );
        assert!(matches!(
            Attributes::of(&get, "/version", None),
            Attributes::Path { .. }
        ));
    }

    #[test]
    fn a_bound_role_grants_and_nothing_else_does() {
        let mut rbac = rbac();
        let member = user("u-member");
        let create_ns = Attributes::of(&Method::POST, "/api/v1/namespaces", None);
        let list_nodes = Attributes::of(&Method::GET, "/api/v1/nodes", None);
        assert!(!rbac.allows(&member, &list_nodes));
        assert!(rbac.allows(&member, &Attributes::of(&Method::GET, "/version", None)));
        let role = json!({"metadata": {"name": "cluster-member"},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]});
        rbac.write(Kind::ClusterRoles, None, &role, "now", "u1".into())
            .unwrap();
        let binding = json!({"metadata": {"name": "b", "labels": {"cattle.io/creator": "norman"}},
            "subjects": [{"kind": "User", "apiGroup": RBAC_GROUP, "name": "u-member"}],
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "cluster-member"}});
        rbac.write(
            Kind::ClusterRoleBindings,
            None,
            &binding,
            "now",
            "u2".into(),
        )
        .unwrap();
        assert!(rbac.allows(&member, &list_nodes));
        assert!(!rbac.allows(&member, &create_ns));
        assert!(!rbac.allows(&user("u-other"), &list_nodes));
        let listed = rbac.list(Kind::ClusterRoleBindings, "cattle.io/creator=norman");
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
        let again = rbac.write(
            Kind::ClusterRoleBindings,
            None,
            &binding,
            "now",
            "u3".into(),
        );
        assert_eq!(again.unwrap_err().code, 409);
        rbac.delete(Kind::ClusterRoleBindings, "b").unwrap();
        assert!(!rbac.allows(&member, &list_nodes));
        let sa = Identity::of(&HeaderMap::new());
        assert!(
            rbac.allows(&sa, &create_ns),
            "the service account is cluster-admin"
        );
    }
}
