//! Rancher's settings (`shared/spec/norman-api.md` §9): the ones corral knows with their defaults,
//! and any an admin creates. Stored values live in the settings document; a built-in setting with
//! no stored value has its default; `CATTLE_<NAME>` in the environment overrides a built-in one
//! (read-only then). Some govern corral itself: `server-url` (pins the certificates),
//! `first-login`, the token lifetimes and `password-min-length`.

use std::collections::{BTreeMap, HashMap};

use super::state::{StoredSetting, setting_id};
use super::{AccountError, Accounts, FIRST_LOGIN, SERVER_URL, Source};
use crate::store::StoreError;

/// A built-in setting.
#[derive(Debug, Clone, Copy)]
pub struct Definition {
    pub name: &'static str,
    pub default: &'static str,
    /// Readable without login (Rancher's seven, less none).
    pub public: bool,
}

const fn def(name: &'static str, default: &'static str) -> Definition {
    Definition {
        name,
        default,
        public: false,
    }
}

const fn public(name: &'static str, default: &'static str) -> Definition {
    Definition {
        name,
        default,
        public: true,
    }
}

pub const CACERTS: &str = "cacerts";
pub const TOKEN_MAX_TTL: &str = "auth-token-max-ttl-minutes";
pub const SESSION_TTL: &str = "auth-user-session-ttl-minutes";
pub const KUBECONFIG_TOKEN_TTL: &str = "kubeconfig-default-token-ttl-minutes";
pub const PASSWORD_MIN: &str = "password-min-length";
pub const AGENT_IMAGE: &str = "agent-image";

/// The image the import manifest deploys, unless `agent-image` says otherwise.
pub const DEFAULT_AGENT_IMAGE: &str = "rancher/rancher-agent:v2.11.0";

/// Rancher v2.11's settings that clients read (the spec's list); about 140 exist in Rancher.
pub const CATALOG: &[Definition] = &[
    def(TOKEN_MAX_TTL, "129600"),
    def(SESSION_TTL, "960"),
    def("auth-user-session-idle-ttl-minutes", "960"),
    def("auth-user-info-max-age-seconds", "3600"),
    def("auth-user-info-resync-cron", "0 0 * * *"),
    def(KUBECONFIG_TOKEN_TTL, "43200"),
    def("kubeconfig-generate-token", "true"),
    def(PASSWORD_MIN, "12"),
    public(FIRST_LOGIN, "true"),
    def("disable-inactive-user-after", ""),
    def("delete-inactive-user-after", ""),
    def("user-last-login-default", ""),
    def("user-retention-cron", ""),
    def("user-retention-dry-run", "false"),
    def(SERVER_URL, ""),
    public(CACERTS, ""),
    def("internal-server-url", ""),
    def("internal-cacerts", ""),
    def("install-uuid", ""),
    def("system-default-registry", ""),
    def("k8s-version", ""),
    def("server-version", "dev"),
    def(AGENT_IMAGE, DEFAULT_AGENT_IMAGE),
    def("agent-tls-mode", "strict"),
    def("tls-min-version", "1.2"),
    def("ingress-ip-domain", "sslip.io"),
    def("hide-local-cluster", "false"),
    def("api-ui-version", "1.1.11"),
    public("ui-pl", "rancher"),
    public("ui-banners", "{}"),
    public("ui-default-landing", "vue"),
    def("ui-preferred", "vue"),
    def("ui-offline-preferred", "dynamic"),
    def(
        "ui-index",
        "https://releases.rancher.com/ui/release-2.11/index.html",
    ),
    def(
        "ui-dashboard-index",
        "https://releases.rancher.com/dashboard/release-2.11/index.html",
    ),
    def("ui-community-links", "true"),
    public("ui-brand", ""),
    public("ui-issues", ""),
    def("ui-primary-color", ""),
    def("ui-link-color", ""),
    def("ui-favicon", ""),
    def("eula-agreed", ""),
];

/// The built-in setting `name`.
pub fn definition(name: &str) -> Option<&'static Definition> {
    CATALOG.iter().find(|d| d.name == name)
}

/// Whether `name` may be read without login.
pub fn is_public(name: &str) -> bool {
    definition(name).is_some_and(|d| d.public)
}

/// The environment variable that overrides a setting: `CATTLE_` and the name, uppercased, `_`
/// for `-`.
pub fn env_name(name: &str) -> String {
    format!("CATTLE_{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// The built-in settings the environment sets (`server-url` excepted: it is pinned through
/// `--server-url`).
pub(super) fn from_environment() -> HashMap<&'static str, String> {
    CATALOG
        .iter()
        .filter(|d| d.name != SERVER_URL && d.name != CACERTS)
        .filter_map(|d| Some((d.name, std::env::var(env_name(d.name)).ok()?)))
        .collect()
}

/// A setting as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingView {
    pub name: String,
    pub value: String,
    pub default: String,
    pub source: Source,
}

impl SettingView {
    pub fn customized(&self) -> bool {
        self.source == Source::Db
    }
}

/// Why a value cannot be stored for `name` (the two Rancher checks).
fn validate(name: &str, value: &str) -> Result<(), AccountError> {
    match name {
        "auth-user-info-max-age-seconds" => value.parse::<i64>().map(drop).map_err(|_| {
            AccountError::InvalidValue(format!(
                "strconv.ParseInt: parsing {value:?}: invalid syntax"
            ))
        }),
        "auth-user-info-resync-cron" if value.split_whitespace().count() != 5 => {
            Err(AccountError::InvalidValue(format!(
                "expected exactly 5 fields, found {}: [{value}]",
                value.split_whitespace().count()
            )))
        }
        _ => Ok(()),
    }
}

impl Accounts {
    /// Every setting: the built-in ones (`cacerts` with an empty value: the HTTP layer knows the
    /// CA) and those created through the API.
    pub fn settings_list(&self) -> Vec<SettingView> {
        let stored = self.records.stored_settings().unwrap_or_else(|e| {
            tracing::warn!("cannot read the settings: {e}");
            BTreeMap::new()
        });
        let builtin = CATALOG
            .iter()
            .filter_map(|d| self.view_of(d.name, stored.get(d.name)));
        let created = stored
            .iter()
            .filter(|(name, _)| definition(name).is_none())
            .filter_map(|(name, value)| self.view_of(name, Some(value)));
        builtin.chain(created).collect()
    }

    /// One setting, if it exists.
    pub fn setting_view(&self, name: &str) -> Option<SettingView> {
        let stored = self.records.setting(name).unwrap_or_else(|e| {
            tracing::warn!("cannot read setting {name}: {e}");
            None
        });
        self.view_of(name, stored.as_ref())
    }

    /// Setting `name` with its stored `value` (if any) and the environment's.
    fn view_of(&self, name: &str, value: Option<&String>) -> Option<SettingView> {
        let default = match definition(name) {
            Some(d) => d.default,
            None if value.is_some() => "",
            None => return None,
        };
        let (value, source) = if name == SERVER_URL {
            match (&self.env_server_url, value) {
                (Some(url), _) => (url.to_string(), Source::Env),
                (None, Some(v)) if !v.is_empty() => (v.clone(), Source::Db),
                _ => (default.to_string(), Source::Default),
            }
        } else if let Some(env) = self.env_settings.get(name) {
            (env.clone(), Source::Env)
        } else {
            match value {
                Some(v) if !v.is_empty() => (v.clone(), Source::Db),
                _ => (default.to_string(), Source::Default),
            }
        };
        Some(SettingView {
            name: name.to_string(),
            value,
            default: default.to_string(),
            source,
        })
    }

    /// A setting's value and source (`None` for one that does not exist).
    pub fn setting(&self, name: &str) -> Option<(String, Source)> {
        self.setting_view(name).map(|v| (v.value, v.source))
    }

    /// A setting read as a whole number, its default when it does not parse.
    pub fn setting_number(&self, name: &str) -> i64 {
        let parse = |v: &str| v.trim().parse::<i64>().ok();
        self.setting(name)
            .and_then(|(v, _)| parse(&v))
            .or_else(|| parse(definition(name)?.default))
            .unwrap_or(0)
    }

    /// Creates a setting that does not exist yet (built-in ones always exist), while the stored
    /// settings stay within [`MAX_CREATED_SETTINGS`] and [`MAX_SETTINGS_BYTES`].
    pub fn create_setting(&self, name: &str, value: &str) -> Result<SettingView, AccountError> {
        if name.is_empty() || name.len() > 253 || name.chars().any(char::is_control) {
            return Err(AccountError::InvalidValue(format!(
                "invalid setting name {name:?}"
            )));
        }
        validate(name, value)?;
        let exists = || AccountError::SettingExists(name.to_string());
        if definition(name).is_some() {
            return Err(exists());
        }
        let mut stored = self.records.stored_settings()?;
        if stored.contains_key(name) {
            return Err(exists());
        }
        let created = stored.keys().filter(|n| definition(n).is_none()).count();
        if created >= MAX_CREATED_SETTINGS {
            return Err(AccountError::SettingsFull);
        }
        stored.insert(name.to_string(), value.to_string());
        within_budget(&stored)?;
        let setting = StoredSetting {
            name: name.to_string(),
            value: value.to_string(),
        };
        match self
            .records
            .setting_values
            .create(&setting_id(name), &setting)
        {
            Ok(_) => {}
            Err(StoreError::Conflict(_)) => return Err(exists()),
            Err(e) => return Err(e.into()),
        }
        self.setting_view(name)
            .ok_or_else(|| AccountError::SettingNotFound(name.to_string()))
    }

    /// Sets a setting's value: `server-url` and `first-login` by their own rules; one from the
    /// environment is read-only.
    pub fn update_setting(&self, name: &str, value: &str) -> Result<SettingView, AccountError> {
        let missing = || AccountError::SettingNotFound(name.to_string());
        let current = self.setting_view(name).ok_or_else(missing)?;
        if current.source == Source::Env {
            return Err(AccountError::ReadOnlyFromEnv(name.to_string()));
        }
        match name {
            SERVER_URL => drop(self.set_server_url(value)?),
            FIRST_LOGIN => self.set_first_login(value)?,
            _ => {
                validate(name, value)?;
                let builtin = definition(name).is_some();
                let mut stored = self.records.stored_settings()?;
                if !builtin && !stored.contains_key(name) {
                    return Err(missing());
                }
                stored.insert(name.to_string(), value.to_string());
                within_budget(&stored)?;
                self.records.change_setting(name, |current| match current {
                    None if !builtin => Err(missing()),
                    _ => Ok((Some(value.to_string()), ())),
                })?;
            }
        }
        self.setting_view(name).ok_or_else(missing)
    }

    /// Deletes a created setting; a built-in one goes back to its default (Rancher recreates it
    /// with its default at its next start). server-url, once pinned, stays.
    pub fn delete_setting(&self, name: &str) -> Result<(), AccountError> {
        let current = self
            .setting_view(name)
            .ok_or_else(|| AccountError::SettingNotFound(name.to_string()))?;
        if current.source == Source::Env {
            return Err(AccountError::ReadOnlyFromEnv(name.to_string()));
        }
        if name == SERVER_URL && current.source == Source::Db {
            return Err(AccountError::ServerUrlLocked {
                current: current.value,
            });
        }
        self.records.setting_values.delete(&setting_id(name))?;
        Ok(())
    }
}

/// Settings an admin may create besides the built-in ones.
pub const MAX_CREATED_SETTINGS: usize = 1000;
/// Bytes of names and values the stored settings hold at most (each is a key of its own: this bounds
/// what every replica keeps of them in memory).
pub const MAX_SETTINGS_BYTES: usize = 1 << 20;

/// Refuses a change that would make the stored settings larger than [`MAX_SETTINGS_BYTES`].
fn within_budget(
    settings: &std::collections::BTreeMap<String, String>,
) -> Result<(), AccountError> {
    let bytes: usize = settings.iter().map(|(n, v)| n.len() + v.len()).sum();
    match bytes > MAX_SETTINGS_BYTES {
        true => Err(AccountError::SettingsFull),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_names_each_setting_once_and_marks_rancher_public_ones() {
        let mut names: Vec<&str> = CATALOG.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len());
        let public: Vec<&str> = CATALOG
            .iter()
            .filter(|d| d.public)
            .map(|d| d.name)
            .collect();
        assert_eq!(
            public,
            [
                FIRST_LOGIN,
                CACERTS,
                "ui-pl",
                "ui-banners",
                "ui-default-landing",
                "ui-brand",
                "ui-issues"
            ]
        );
        assert_eq!(
            env_name("auth-token-max-ttl-minutes"),
            "CATTLE_AUTH_TOKEN_MAX_TTL_MINUTES"
        );
    }

    #[test]
    fn rancher_checks_two_values() {
        assert!(validate("auth-user-info-max-age-seconds", "60").is_ok());
        assert!(validate("auth-user-info-max-age-seconds", "x").is_err());
        assert!(validate("auth-user-info-resync-cron", "0 0 * * *").is_ok());
        assert!(validate("auth-user-info-resync-cron", "daily").is_err());
        assert!(validate("ui-pl", "anything").is_ok());
    }
}
