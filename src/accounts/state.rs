//! What the accounts service keeps: users, login tokens (hashed), settings, roles and bindings, one
//! store value each, and what setup settles once (when, the admin's id) in one small document
//! (`setup.json`, the name it has always had in the data directory). Earlier versions kept the
//! users, tokens and settings in that document too; they are moved out the first time it is opened.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::store::{Backend, Collection, Document, Key, Kind, StoreError, Stored, kind};

/// Where the settings document is kept.
pub const ACCOUNTS: Key = Key::secret("setup.json", "corral/accounts");
/// Users: `users/<id>.json`, `corral/users/<id>`; they hold password hashes.
pub const USERS: Kind = kind!("users", secret);
/// Login tokens: `tokens/<name>.json`, `corral/tokens/<name>`; they hold token hashes.
pub const TOKENS: Kind = kind!("tokens", secret);

/// Settings' stored values: `settings/<id>.json`, `corral/settings/<id>` (see [`setting_id`]).
pub const SETTINGS: Kind = kind!("settings", secret);

/// A setting's stored value (built-in ones set through the API, and those created there).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSetting {
    pub name: String,
    pub value: String,
}

/// The store id of setting `name`: the name itself, or for one no store id can be (longer than
/// 128 bytes; Kubernetes names reach 253) `h-` and its SHA-256.
pub fn setting_id(name: &str) -> String {
    match SETTINGS.key(name) {
        Some(_) => name.to_string(),
        None => format!("h-{}", crate::secrets::hash_token_secret(name)),
    }
}

/// Custom global roles, and what may change of a builtin one (`newUserDefault`).
pub const GLOBAL_ROLES: Kind = kind!("globalroles", public);
/// Global role bindings.
pub const GLOBAL_ROLE_BINDINGS: Kind = kind!("globalrolebindings", public);

/// Custom role templates, and what may change of a builtin one.
pub const ROLE_TEMPLATES: Kind = kind!("roletemplates", public);
/// Cluster role template bindings (`<cluster>:crtb-…`).
pub const CLUSTER_BINDINGS: Kind = kind!("clusterroletemplatebindings", public);

/// What changed, for the index to read again.
#[derive(Debug, Clone)]
pub(super) enum Reindex {
    User(String),
    GlobalBinding(String),
    ClusterBinding(String),
    /// A global role (the roles are few: all are read again).
    Roles,
    /// A role template (likewise).
    Templates,
    /// Many objects at once, or a change too large to follow: the index is read again whole.
    Everything,
}

impl Reindex {
    /// What a changed store path is, if it is one the index follows.
    pub(super) fn of_path(path: &str) -> Option<Self> {
        let id = |kind: &Kind| kind.id_of(path).map(str::to_string);
        if let Some(user) = id(&USERS) {
            return Some(Self::User(user));
        }
        if let Some(binding) = id(&GLOBAL_ROLE_BINDINGS) {
            return Some(Self::GlobalBinding(binding));
        }
        if let Some(binding) = id(&CLUSTER_BINDINGS) {
            return Some(Self::ClusterBinding(binding));
        }
        if path.starts_with(GLOBAL_ROLES.prefix) {
            return Some(Self::Roles);
        }
        if path.starts_with(ROLE_TEMPLATES.prefix) {
            return Some(Self::Templates);
        }
        None
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub must_change_password: bool,
    /// Counts the password's changes. A token is issued for one version and is valid only while
    /// the password is still that version: a reset ends every session opened with the old one,
    /// including logins that were still checking it.
    #[serde(default)]
    pub password_version: u64,
    /// A disabled user cannot log in, and its tokens stop working.
    #[serde(default = "enabled")]
    pub enabled: bool,
    #[serde(default)]
    pub description: String,
    /// Unix seconds; 0 for users of versions that did not keep it.
    #[serde(default)]
    pub created: i64,
}

fn enabled() -> bool {
    true
}

/// A custom global role as stored; of a builtin one, only `new_user_default` counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRole {
    pub id: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub rules: Vec<crate::rbac::PolicyRule>,
    #[serde(default)]
    pub new_user_default: bool,
    #[serde(default)]
    pub inherited_cluster_roles: Vec<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub creator_id: String,
}

/// A custom role template as stored; of a builtin one, only `locked` and the creator defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRoleTemplate {
    pub id: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub description: String,
    pub context: String,
    #[serde(default)]
    pub rules: Vec<crate::rbac::PolicyRule>,
    #[serde(default)]
    pub hidden: bool,
    #[serde(default)]
    pub locked: bool,
    #[serde(default)]
    pub administrative: bool,
    #[serde(default)]
    pub cluster_creator_default: bool,
    #[serde(default)]
    pub project_creator_default: bool,
    #[serde(default)]
    pub role_template_ids: Vec<String>,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub creator_id: String,
}

/// A role template bound to a user or a group in one cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRoleTemplateBinding {
    pub id: String,
    pub cluster_id: String,
    pub role_template_id: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub user_principal_id: String,
    #[serde(default)]
    pub group_id: String,
    #[serde(default)]
    pub group_principal_id: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub creator_id: String,
}

/// A global role bound to a user (`user_id`) or a group (`group_principal_id`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalRoleBinding {
    pub id: String,
    pub global_role_id: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub group_principal_id: String,
    #[serde(default)]
    pub user_principal_id: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub creator_id: String,
}

/// What a token is for; Rancher's `authn.management.cattle.io/kind` label, and `isDerived`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TokenKind {
    /// A login's session.
    #[default]
    Session,
    /// Made for a kubeconfig (`generateKubeconfig`, login with `responseType: kubeconfig`).
    Kubeconfig,
    /// An API key (`POST /v3/tokens`).
    ApiKey,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    pub name: String,
    pub secret_hash: String,
    pub user_id: String,
    pub created: i64,
    pub expires_at: i64,
    /// The user's password version this token was issued for (see [`User::password_version`]).
    #[serde(default)]
    pub password_version: u64,
    #[serde(default)]
    pub kind: TokenKind,
    #[serde(default)]
    pub description: String,
    /// Milliseconds; 0: never expires (`expires_at` is then 0 too). Tokens of earlier versions
    /// did not keep it: their lifetime is `expires_at - created`.
    #[serde(default)]
    pub ttl_ms: i64,
    /// Set: the token is valid only for this cluster's proxy (`/k8s/clusters/<id>`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
}

impl Token {
    /// Whether the token has expired at `now` (unix seconds).
    pub fn expired(&self, now: i64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }

    /// Its lifetime in milliseconds (0: never expires).
    pub fn ttl_ms(&self) -> i64 {
        match (self.ttl_ms, self.expires_at) {
            (0, 0) => 0,
            (0, expires) => (expires - self.created).max(0) * 1000,
            (ttl, _) => ttl,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountState {
    /// When the state was first created (unix seconds): the settings' `created`.
    pub created: i64,
    /// Where earlier versions kept the settings' values; emptied when the document is opened.
    #[serde(
        default,
        rename = "settings",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    legacy_settings: BTreeMap<String, String>,
    /// Feature flags set through the API (`spec.value`); the others have their default.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub features: BTreeMap<String, bool>,
    /// The id of the `admin` created on the first start (settled here before it is created).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub admin_id: String,
    /// The first admin was bound to the `admin` global role (once; earlier versions had no roles).
    #[serde(default)]
    pub admin_bound: bool,
    /// Where earlier versions kept the users and tokens; emptied when the document is opened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    users: Vec<User>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tokens: Vec<Token>,
}

/// Everything the accounts keep, on one store.
pub struct Records {
    pub settings: Document<AccountState>,
    pub setting_values: Collection<StoredSetting>,
    pub users: Collection<User>,
    pub tokens: Collection<Token>,
    pub roles: Collection<StoredRole>,
    pub bindings: Collection<GlobalRoleBinding>,
    pub templates: Collection<StoredRoleTemplate>,
    pub cluster_bindings: Collection<ClusterRoleTemplateBinding>,
}

impl Records {
    /// Opens the accounts on `store`; `false` when nothing was stored yet (a first start). Users
    /// and tokens an earlier version kept in the settings document are moved to their own keys
    /// first, once: each object is written before the document lets go of it, so a start that
    /// stops half way loses nothing and the next one finishes the move.
    pub fn open(store: Arc<dyn Backend>) -> Result<(Self, bool), StoreError> {
        let (settings, existed) = Document::<AccountState>::open(store.clone(), ACCOUNTS)?;
        let records = Self {
            settings,
            setting_values: Collection::new(store.clone(), SETTINGS),
            users: Collection::new(store.clone(), USERS),
            tokens: Collection::new(store.clone(), TOKENS),
            roles: Collection::new(store.clone(), GLOBAL_ROLES),
            bindings: Collection::new(store.clone(), GLOBAL_ROLE_BINDINGS),
            templates: Collection::new(store.clone(), ROLE_TEMPLATES),
            cluster_bindings: Collection::new(store, CLUSTER_BINDINGS),
        };
        records.move_out_of_the_document()?;
        Ok((records, existed))
    }

    fn move_out_of_the_document(&self) -> Result<(), StoreError> {
        let old = self.settings.read();
        if old.users.is_empty() && old.tokens.is_empty() && old.legacy_settings.is_empty() {
            return Ok(());
        }
        for user in &old.users {
            self.users.create_once(&user.id, user)?;
        }
        for token in &old.tokens {
            self.tokens.create_once(&token.name, token)?;
        }
        for (name, value) in &old.legacy_settings {
            let setting = StoredSetting {
                name: name.clone(),
                value: value.clone(),
            };
            self.setting_values
                .create_once(&setting_id(name), &setting)?;
        }
        self.settings.update(|state| {
            state.users.clear();
            state.tokens.clear();
            state.legacy_settings.clear();
            Ok::<_, StoreError>(())
        })?;
        tracing::info!(
            "moved {} user(s), {} token(s) and {} setting(s) out of {} into keys of their own ({}, {}, {})",
            old.users.len(),
            old.tokens.len(),
            old.legacy_settings.len(),
            ACCOUNTS.name,
            USERS.dir,
            TOKENS.dir,
            SETTINGS.dir
        );
        Ok(())
    }

    /// Setting `name`'s stored value, if it has one.
    pub fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .setting_values
            .get(&setting_id(name))?
            .map(|stored| stored.value.value))
    }

    /// Every stored setting's value, by name.
    pub fn stored_settings(&self) -> Result<BTreeMap<String, String>, StoreError> {
        Ok(self
            .setting_values
            .list()?
            .into_iter()
            .map(|(_, stored)| (stored.value.name, stored.value.value))
            .collect())
    }

    /// Applies `change` to setting `name`'s stored value (`None`: none stored) and stores the value
    /// it gives (`None`: left as it is), compare-and-swap, retried from the newest value when
    /// another writer came first (what an attempt returned is dropped then).
    pub fn change_setting<R, E: From<StoreError>>(
        &self,
        name: &str,
        mut change: impl FnMut(Option<&str>) -> Result<(Option<String>, R), E>,
    ) -> Result<R, E> {
        self.setting_values.change(&setting_id(name), |stored| {
            let current = stored.map(|s| s.value.as_str());
            let (value, result) = change(current)?;
            let setting =
                value
                    .filter(|v| Some(v.as_str()) != current)
                    .map(|value| StoredSetting {
                        name: name.to_string(),
                        value,
                    });
            Ok((setting, result))
        })
    }

    /// Stores `value` for setting `name`.
    pub fn put_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.change_setting(name, |_| Ok::<_, StoreError>((Some(value.to_string()), ())))
    }

    /// The user called `username`.
    pub fn user_named(&self, username: &str) -> Result<Option<Stored<User>>, StoreError> {
        Ok(self
            .users
            .list()?
            .into_iter()
            .map(|(_, user)| user)
            .find(|user| user.value.username == username))
    }

    /// Removes `user_id`'s tokens but `keep`; how many went. (The caller resets the token index.)
    pub fn revoke_tokens(&self, user_id: &str, keep: Option<&str>) -> Result<usize, StoreError> {
        self.tokens
            .delete_where(|name, token| token.user_id == user_id && Some(name) != keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DataDir, FileBackend};

    /// A data directory of an earlier version (users and tokens inside setup.json) opens with both
    /// moved out, unchanged, and a second open finds nothing left to move.
    #[test]
    fn users_and_tokens_move_out_of_an_old_setup_document() {
        let tmp = tempfile::tempdir().unwrap();
        let old = serde_json::json!({
            "created": 1700000000,
            "users": [{"id": "user-abcde", "username": "admin", "displayName": "Default Admin",
                       "passwordHash": "$argon2id$x", "mustChangePassword": false}],
            "tokens": [{"name": "token-fghjk", "secretHash": "00", "userId": "user-abcde",
                        "created": 1700000000, "expiresAt": 4000000000i64}],
            "settings": {"first-login": "false"}
        });
        std::fs::write(tmp.path().join("setup.json"), old.to_string()).unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let store = || Arc::new(FileBackend::new(dir.clone())) as Arc<dyn Backend>;
        let (records, existed) = Records::open(store()).unwrap();
        assert!(existed);
        let admin = records.user_named("admin").unwrap().unwrap().value;
        assert_eq!(admin.id, "user-abcde");
        assert_eq!(admin.password_version, 0);
        let token = records.tokens.get("token-fghjk").unwrap().unwrap().value;
        assert_eq!(token.user_id, "user-abcde");
        let document = std::fs::read_to_string(tmp.path().join("setup.json")).unwrap();
        assert!(
            !document.contains("token-fghjk") && !document.contains("argon2"),
            "{document}"
        );
        assert!(!document.contains("first-login"), "{document}");
        assert_eq!(
            records.setting("first-login").unwrap().as_deref(),
            Some("false")
        );
        assert!(tmp.path().join("settings/first-login.json").exists());
        assert!(tmp.path().join("users/user-abcde.json").exists());
        let (again, _) = Records::open(store()).unwrap();
        assert_eq!(again.tokens.list().unwrap().len(), 1);
    }
}
