//! Kubernetes RBAC rules, as Rancher's global roles and role templates carry them, and the one
//! question asked of them: may this subject do this verb on this resource (of this name)? Used for
//! `/v3` (the caller's global rules) and, by the simulated downstream cluster, for its own RBAC.
//! Rules only grant; there is no deny, as in Kubernetes.

use serde::{Deserialize, Serialize};

/// Rancher's API group for everything `/v3` serves.
pub const MANAGEMENT: &str = "management.cattle.io";

/// One Kubernetes `PolicyRule`: every listed verb on every listed resource of every listed group
/// (`*` matches all), limited to `resource_names` when there are any; or, for paths outside the
/// resources, `non_resource_urls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

fn matches(list: &[String], wanted: &str) -> bool {
    list.iter().any(|item| item == "*" || item == wanted)
}

impl PolicyRule {
    /// `verbs` on `resources` of `groups` (a rule as the builtin roles write them).
    pub fn new(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Self {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        Self {
            api_groups: owned(groups),
            resources: owned(resources),
            verbs: owned(verbs),
            ..Self::default()
        }
    }

    /// The same rule for `names` only.
    pub fn named(mut self, names: &[&str]) -> Self {
        self.resource_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `verbs` on the paths `urls` (`*` for all).
    pub fn urls(urls: &[&str], verbs: &[&str]) -> Self {
        Self {
            non_resource_urls: urls.iter().map(|s| s.to_string()).collect(),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            ..Self::default()
        }
    }

    /// Whether this rule lets `request` through.
    pub fn allows(&self, request: &Request<'_>) -> bool {
        if !self.non_resource_urls.is_empty() || !matches(&self.verbs, request.verb) {
            return false;
        }
        if !matches(&self.api_groups, request.group) || !matches(&self.resources, request.resource)
        {
            return false;
        }
        // A rule for some names grants nothing on the collection (list, create without a name).
        self.resource_names.is_empty()
            || request
                .name
                .is_some_and(|name| self.resource_names.iter().any(|n| n == name))
    }

    /// Whether this rule grants `verb` on the non-resource path `path` (`/healthz`, `/version`).
    pub fn allows_url(&self, verb: &str, path: &str) -> bool {
        matches(&self.verbs, verb)
            && self.non_resource_urls.iter().any(|url| {
                url == "*"
                    || url == path
                    || url
                        .strip_suffix('*')
                        .is_some_and(|prefix| path.starts_with(prefix))
            })
    }
}

/// A question put to the rules: `verb` on `resource` of `group`, object `name` if there is one.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub name: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// `verb` on Rancher's management `resource` (`users`, `settings`, …).
    pub fn management(verb: &'a str, resource: &'a str, name: Option<&'a str>) -> Self {
        Self {
            verb,
            group: MANAGEMENT,
            resource,
            name,
        }
    }
}

/// What a subject may do: the union of its rules.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    rules: Vec<PolicyRule>,
}

impl Grants {
    pub fn new(rules: Vec<PolicyRule>) -> Self {
        Self { rules }
    }

    pub fn rules(&self) -> &[PolicyRule] {
        &self.rules
    }

    pub fn allows(&self, request: &Request<'_>) -> bool {
        self.rules.iter().any(|rule| rule.allows(request))
    }

    pub fn allows_url(&self, verb: &str, path: &str) -> bool {
        self.rules.iter().any(|rule| rule.allows_url(verb, path))
    }

    /// The parts of `rule` these grants do not cover: what granting it would escalate (the rule
    /// as the webhook names it), `None` when it is covered. Wildcards in `rule` are covered only
    /// by wildcards held.
    pub fn uncovered(&self, rule: &PolicyRule) -> Option<PolicyRule> {
        let held = |verb: &str, group: &str, resource: &str, name: Option<&str>| {
            self.rules.iter().any(|own| {
                own.non_resource_urls.is_empty()
                    && matches(&own.verbs, verb)
                    && matches(&own.api_groups, group)
                    && matches(&own.resources, resource)
                    && (own.resource_names.is_empty()
                        || name.is_some_and(|n| own.resource_names.iter().any(|o| o == n)))
            })
        };
        let covered = if rule.non_resource_urls.is_empty() {
            let names: Vec<Option<&str>> = match rule.resource_names.is_empty() {
                true => vec![None],
                false => rule
                    .resource_names
                    .iter()
                    .map(|n| Some(n.as_str()))
                    .collect(),
            };
            rule.verbs.iter().all(|verb| {
                rule.api_groups.iter().all(|group| {
                    rule.resources
                        .iter()
                        .all(|resource| names.iter().all(|name| held(verb, group, resource, *name)))
                })
            })
        } else {
            rule.verbs.iter().all(|verb| {
                rule.non_resource_urls.iter().all(|url| {
                    self.rules.iter().any(|own| {
                        matches(&own.verbs, verb)
                            && own.non_resource_urls.iter().any(|o| o == "*" || o == url)
                    })
                })
            })
        };
        (!covered).then(|| rule.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(resource: &str, name: Option<&str>) -> Request<'static> {
        let resource: &'static str = Box::leak(resource.to_string().into_boxed_str());
        let name = name.map(|n| &*Box::leak(n.to_string().into_boxed_str()));
        Request::management("get", resource, name)
    }

    #[test]
    fn wildcards_groups_resources_and_names_match_as_kubernetes_does() {
        let admin = Grants::new(vec![PolicyRule::new(&["*"], &["*"], &["*"])]);
        assert!(admin.allows(&get("users", Some("u-abcde"))));
        let reader = Grants::new(vec![PolicyRule::new(
            &[MANAGEMENT],
            &["settings"],
            &["get", "list"],
        )]);
        assert!(reader.allows(&get("settings", None)));
        assert!(!reader.allows(&Request::management("update", "settings", Some("x"))));
        assert!(!reader.allows(&get("users", None)));
        assert!(!reader.allows(&Request {
            group: "",
            ..get("settings", None)
        }));
        let own = Grants::new(vec![
            PolicyRule::new(&[MANAGEMENT], &["users"], &["get"]).named(&["u-me"]),
        ]);
        assert!(own.allows(&get("users", Some("u-me"))));
        assert!(!own.allows(&get("users", Some("u-other"))));
        assert!(
            !own.allows(&get("users", None)),
            "a named rule lists nothing"
        );
    }

    #[test]
    fn non_resource_urls_match_paths_and_prefixes() {
        let rule = PolicyRule::urls(&["/healthz", "/api*"], &["get"]);
        assert!(rule.allows_url("get", "/healthz"));
        assert!(rule.allows_url("get", "/api/v1"));
        assert!(!rule.allows_url("post", "/healthz"));
        assert!(!rule.allows_url("get", "/version"));
        assert!(!rule.allows(&get("healthz", None)));
    }

    #[test]
    fn a_rule_is_covered_only_by_what_is_held() {
        let manager = Grants::new(vec![
            PolicyRule::new(&[MANAGEMENT], &["settings"], &["*"]),
            PolicyRule::new(&[MANAGEMENT], &["features"], &["get", "list"]),
        ]);
        let within = PolicyRule::new(&[MANAGEMENT], &["settings", "features"], &["get"]);
        assert_eq!(manager.uncovered(&within), None);
        let beyond = PolicyRule::new(&[MANAGEMENT], &["features"], &["update"]);
        assert_eq!(manager.uncovered(&beyond), Some(beyond.clone()));
        let wildcard = PolicyRule::new(&[MANAGEMENT], &["*"], &["get"]);
        assert!(manager.uncovered(&wildcard).is_some(), "* needs * held");
        let admin = Grants::new(vec![PolicyRule::new(&["*"], &["*"], &["*"])]);
        assert_eq!(admin.uncovered(&wildcard), None);
        let url = PolicyRule::urls(&["/metrics"], &["get"]);
        assert!(admin.uncovered(&url).is_some());
        let everything = Grants::new(vec![PolicyRule::urls(&["*"], &["*"])]);
        assert_eq!(everything.uncovered(&url), None);
    }
}
