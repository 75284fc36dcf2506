//! First-start setup and the accounts behind the API: the bootstrap password and `admin` user,
//! users, tokens ([`tokens`]), password changes, Rancher's settings ([`settings`]) and feature
//! flags ([`features`]).
//!
//! Users and tokens are one store value each, settings one small document ([`state`]). Passwords
//! are stored as argon2id hashes and tokens as SHA-256 hashes; neither is ever logged. A token is
//! valid only for the password version it was issued under, so changing or resetting a password
//! ends every session opened with the old one at once, on every replica — logins still checking
//! the old password included.
//! Setting `server-url` pins the certificates to its host, for good, through [`Pinning`]: a trait
//! defined here and implemented by the certificate service, so accounts know nothing of TLS.

mod backoff;
pub mod bootstrap;
pub mod features;
mod index;
mod password_gate;
mod role_templates;
mod roles;
pub mod settings;
mod state;
mod tokens;
mod users;

pub use features::FeatureView;
pub use role_templates::{
    ClusterBindingSpec, ClusterGrants, DownstreamRbac, RoleTemplateView, TemplateSpec,
};
pub use roles::{BindingSpec, GlobalRoleView, RoleSpec};
pub use settings::SettingView;
pub use state::TokenKind;
pub use state::{ClusterRoleTemplateBinding, GlobalRoleBinding};
pub use tokens::{IssuedToken, TokenRequest, TokenView, clamp_ttl};
pub use users::{NewUser, UserChange, UserView};

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::Quota;

use crate::limits::ClientLimiter;
use crate::pki::SubjectName;
pub use crate::pki::{ServerUrl, ServerUrlError};
use crate::secrets::{self, hash_password, random_suffix, random_token};
use crate::store::{Backend, Changes, StoreError};
use crate::support::unix_now;
use password_gate::{Busy, PasswordGate};
use state::{Records, Reindex, User};

/// Most tokens kept (sessions, kubeconfig tokens, API keys of every user); the oldest go first.
const MAX_TOKENS: usize = 100_000;
/// How often tokens that can no longer be used (expired, or issued for an old password) are
/// deleted from the store, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Login attempts per client: a burst of 10, then one every 3 s.
const LOGIN_BURST: u32 = 10;
const LOGIN_PER_MINUTE: u32 = 20;

pub const SERVER_URL: &str = "server-url";
pub const FIRST_LOGIN: &str = "first-login";

/// Why an accounts operation was refused; the HTTP layer maps each to Rancher's status and text.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("authentication failed")]
    AuthenticationFailed,
    /// The password was right, but the user is disabled.
    #[error("Permission Denied")]
    UserDisabled,
    /// Over the per-client rate or the per-user backoff; retry after the duration.
    #[error("too many failed login attempts; try again later")]
    TooManyAttempts(Duration),
    /// Every password slot stayed busy (see `PasswordGate`); retry shortly.
    #[error("too many password checks at once; try again shortly")]
    Busy,
    #[error("invalid current password")]
    InvalidCurrentPassword,
    #[error("must specify current password")]
    NoCurrentPassword,
    #[error("invalid new password")]
    NoNewPassword,
    /// Shorter than `password-min-length` (the number).
    #[error("Password must be at least {0} characters")]
    PasswordTooShort(i64),
    #[error("Password cannot be the same as username")]
    PasswordIsUsername,
    #[error("The new password must not be the same as the current password")]
    SamePassword,
    #[error("user {0} not found")]
    UserNotFound(String),
    #[error("{0} not found")]
    TokenNotFound(String),
    /// Deleting the session that makes the request (Rancher: logout does that).
    #[error("Cannot delete token for current session. Use logout instead")]
    CurrentSession,
    #[error("settings.management.cattle.io \"{0}\" not found")]
    SettingNotFound(String),
    #[error("settings.management.cattle.io \"{0}\" already exists")]
    SettingExists(String),
    /// The stored settings would pass their bounds (count or bytes).
    #[error(
        "the settings are full: at most {} created settings and {} KiB of names and values; delete some first",
        settings::MAX_CREATED_SETTINGS,
        settings::MAX_SETTINGS_BYTES / 1024
    )]
    SettingsFull,
    #[error("features.management.cattle.io \"{0}\" not found")]
    FeatureNotFound(String),
    /// A feature whose value is locked (`status.lockedValue`).
    #[error("feature flag cannot be changed from current value: {0}")]
    FeatureLocked(bool),
    /// A setting's value that is not valid, and why.
    #[error("{0}")]
    InvalidValue(String),
    #[error(transparent)]
    InvalidServerUrl(#[from] ServerUrlError),
    #[error("server-url is already {current}: the hostname cannot be changed after installation")]
    ServerUrlLocked { current: String },
    #[error("{0} is readOnly because its value is from environment variable")]
    ReadOnlyFromEnv(String),
    #[error("cannot save state: {0}")]
    Storage(#[from] StoreError),
    #[error("cannot load the accounts: {0}")]
    Load(#[source] StoreError),
    #[error("cannot keep the bootstrap password: {0}")]
    Bootstrap(#[source] StoreError),
    #[error("cannot pin the certificate: {0}")]
    Pinning(#[source] PinError),
    /// The user's password changed while this login checked the old one.
    #[error("authentication failed")]
    PasswordChanged,
    #[error("invalid username")]
    UsernameMissing,
    #[error("invalid password")]
    PasswordMissing,
    #[error("Username is already in use.")]
    UsernameTaken,
    #[error("You cannot deactivate yourself")]
    CannotDeactivateSelf,
    #[error("You cannot delete yourself")]
    CannotDeleteSelf,
    /// More objects of a kind than corral keeps (the kind, the bound).
    #[error("at most {1} {0} are kept; delete some first")]
    TooMany(&'static str, usize),
    #[error("globalroles.management.cattle.io \"{0}\" not found")]
    RoleNotFound(String),
    #[error("globalrolebindings.management.cattle.io \"{0}\" not found")]
    BindingNotFound(String),
    #[error("cannot delete builtin global roles")]
    BuiltinRoleDelete,
    #[error("must contain field [groupPrincipalId] OR field [userId]")]
    BindingSubject,
    /// Rancher's webhook refused a grant the caller does not hold (403 `Forbidden`).
    #[error("admission webhook \"{webhook}\" denied the request: {message}")]
    Escalation {
        webhook: &'static str,
        message: String,
    },
    #[error("roletemplates.management.cattle.io \"{0}\" not found")]
    TemplateNotFound(String),
    /// A binding names a template that cannot be read (Rancher: a server error).
    #[error("Error getting role template: roletemplates.management.cattle.io \"{0}\" not found")]
    TemplateLookup(String),
    #[error("cannot delete builtin role templates")]
    BuiltinTemplateDelete,
    #[error("roletemplate [{id}] cannot be deleted because roletemplate [{by}] inherits from it")]
    TemplateInherited { id: String, by: String },
    #[error("clusterroletemplatebindings.management.cattle.io \"{0}\" not found")]
    ClusterBindingNotFound(String),
    #[error("Request does not have a valid roleTemplateId")]
    NoRoleTemplateId,
    #[error("Role is locked and cannot be assigned")]
    TemplateLocked,
    /// A cluster binding of a template of another context (the context).
    #[error("Cannot reference context [{0}] from [cluster] context")]
    WrongContext(String),
    #[error(
        "must target a user [userId]/[userPrincipalId] OR a group [groupId]/[groupPrincipalId]"
    )]
    ClusterBindingSubject,
    /// Rancher's webhook refused the object (400 `BadRequest`).
    #[error("admission webhook \"{webhook}\" denied the request: {message}")]
    Webhook {
        webhook: &'static str,
        message: String,
    },
}

impl AccountError {
    /// How long a refused caller should wait before trying again (`Retry-After`), if it should.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AccountError::TooManyAttempts(wait) => Some(*wait),
            AccountError::Busy | AccountError::Storage(StoreError::Unavailable(_)) => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }
}

impl From<Busy> for AccountError {
    fn from(_: Busy) -> Self {
        AccountError::Busy
    }
}

/// Why the certificates could not be pinned, from whoever implements [`Pinning`].
pub type PinError = Box<dyn std::error::Error + Send + Sync>;

/// What pinning to server-url's host does to the certificates served.
pub trait Pinning: Send + Sync {
    /// The certificate pinning to `host` will serve, made but not served yet; `None` when there is
    /// nothing to pin (already pinned, or certificates that are not minted).
    fn stage<'a>(&'a self, host: &SubjectName)
    -> Result<Option<Box<dyn StagedPin + 'a>>, PinError>;
}

/// A pin made but not served: [`StagedPin::commit`] serves it (once server-url is saved); dropped,
/// nothing changes.
pub trait StagedPin {
    fn commit(self: Box<Self>);
}

/// Why `corral reset-password` could not reset the admin's password.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("no admin in this data directory yet: `corral serve` creates it on first start")]
    NoSetup,
    #[error("setup.json has no admin user")]
    NoAdmin,
    #[error("cannot reset the password: {0}")]
    Storage(#[from] StoreError),
    #[error("cannot remove the kept bootstrap password: {0}")]
    Bootstrap(#[source] StoreError),
}

/// Where a setting's value comes from, as norman reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    Db,
    Env,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Db => "db",
            Source::Env => "env",
        }
    }
}

/// The token a login asks for (its `responseType`).
#[derive(Debug, Clone, Copy)]
pub enum LoginToken<'a> {
    /// `json` or `cookie`: a session.
    Session { description: &'a str },
    /// `kubeconfig` (`cluster_id` empty) or `kubeconfig_<cluster>`.
    Kubeconfig { cluster_id: &'a str },
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub username: String,
    pub token_name: String,
    /// The token is an API key or kubeconfig token, not a login's session.
    pub derived: bool,
}

/// The accounts service.
pub struct Accounts {
    records: Records,
    store: Arc<dyn Backend>,
    /// `server-url` from `--server-url` / `CATTLE_SERVER_URL`: pinned from boot, read-only.
    env_server_url: Option<ServerUrl>,
    /// Other settings the environment sets (`CATTLE_<NAME>`): read-only.
    env_settings: std::collections::HashMap<&'static str, String>,
    pins: Arc<dyn Pinning>,
    login_limiter: ClientLimiter,
    login_backoff: backoff::LoginBackoff,
    /// Bounds the argon2 work running at once: logins, password changes.
    passwords: PasswordGate,
    /// When unusable tokens were last deleted, and about how many tokens there are since.
    sweep: std::sync::Mutex<Sweep>,
    /// Held while a user is created: one username check and create at a time.
    user_writes: std::sync::Mutex<()>,
    /// Who is bound to what and who is called what; `None` until first needed, or after a change
    /// too large to follow.
    index: std::sync::Mutex<Option<index::AccessIndex>>,
    /// Each user's tokens by name; `None` until first needed, or after a change too large to follow.
    token_index: std::sync::Mutex<Option<tokens::TokenIndex>>,
}

/// The token sweep's bookkeeping.
struct Sweep {
    last: Option<tokio::time::Instant>,
    tokens: usize,
}

impl Accounts {
    /// Loads the accounts from `store`, creating the `admin` user on first start, and pins the
    /// certificates if a server-url is known. `banner_url` is where the log tells the admin to go.
    pub fn open(
        store: Arc<dyn Backend>,
        bootstrap_password: Option<String>,
        env_server_url: Option<ServerUrl>,
        pins: Arc<dyn Pinning>,
        banner_url: &str,
    ) -> Result<Self, AccountError> {
        let (records, existed) = Records::open(store.clone()).map_err(AccountError::Load)?;
        let first_start = !existed;
        let accounts = Self {
            records,
            store,
            env_server_url,
            env_settings: settings::from_environment(),
            pins,
            login_limiter: ClientLimiter::new(
                Quota::per_minute(NonZeroU32::new(LOGIN_PER_MINUTE).unwrap())
                    .allow_burst(NonZeroU32::new(LOGIN_BURST).unwrap()),
            ),
            login_backoff: backoff::LoginBackoff::default(),
            passwords: PasswordGate::default(),
            sweep: std::sync::Mutex::new(Sweep {
                last: None,
                tokens: 0,
            }),
            user_writes: std::sync::Mutex::new(()),
            index: std::sync::Mutex::new(None),
            token_index: std::sync::Mutex::new(None),
        };
        // Also when a start stopped between settling the admin's id and writing the admin.
        if first_start || accounts.records.user_named("admin")?.is_none() {
            accounts.create_admin(bootstrap_password)?;
        }
        accounts.bind_first_admin()?;
        if accounts.first_login() {
            bootstrap::log_banner(
                banner_url,
                bootstrap::kept(accounts.store.as_ref()).as_deref(),
            );
        }
        if let Some(url) = accounts.server_url_value()
            && let Some(staged) = accounts
                .pins
                .stage(url.host())
                .map_err(AccountError::Pinning)?
        {
            staged.commit();
        }
        Ok(accounts)
    }

    /// With a store other writers share (replicas on etcd), follows what other replicas change:
    /// server-url (which pins this replica's certificates too), who may do what (what was derived
    /// from it is read again), and tokens (for the token index).
    pub fn follow_store(self: &Arc<Self>) {
        self.follow(
            |path| state::SETTINGS.id_of(path) == Some(SERVER_URL),
            |accounts, _| accounts.pin_to_stored_server_url(),
        );
        self.follow(
            |path| Reindex::of_path(path).is_some(),
            |accounts, path| {
                accounts.reindex(
                    path.and_then(Reindex::of_path)
                        .unwrap_or(Reindex::Everything),
                )
            },
        );
        self.follow(
            |path| path.starts_with(state::TOKENS.prefix),
            |accounts, path| match path.and_then(|p| state::TOKENS.id_of(p)) {
                Some(name) => accounts.token_changed(name),
                None => accounts.token_index_reset(),
            },
        );
    }

    /// Calls `changed` with each changed path `wanted` accepts (`None`: a burst too large to
    /// follow, which may have held any), for as long as the accounts and the store last.
    fn follow(self: &Arc<Self>, wanted: fn(&str) -> bool, changed: fn(&Accounts, Option<&str>)) {
        let Some(mut changes) = Changes::of(self.store.as_ref(), wanted) else {
            return;
        };
        let accounts = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(path) = changes.next_path().await {
                let Some(accounts) = accounts.upgrade() else {
                    return;
                };
                changed(&accounts, path.as_deref());
            }
        });
    }

    /// Pins the certificates to server-url's host if it is set and they are not pinned yet.
    fn pin_to_stored_server_url(&self) {
        let Some(url) = self.server_url_value() else {
            return;
        };
        match self.pins.stage(url.host()) {
            Ok(Some(staged)) => staged.commit(),
            Ok(None) => {}
            Err(e) => tracing::warn!("server-url is {url}, but pinning failed: {e}"),
        }
    }

    /// Creates `admin` on a first start, with the bootstrap password: one kept by an earlier start
    /// that did not finish (it wins, as Rancher's bootstrap secret does), else `CATTLE_BOOTSTRAP_PASSWORD`,
    /// else a generated one. A generated password is kept (0600) before the admin is written, so a
    /// start that fails after this point loses nothing; replicas starting at once on one store keep
    /// one password and create one admin.
    fn create_admin(&self, bootstrap_password: Option<String>) -> Result<(), AccountError> {
        let store = self.store.as_ref();
        let password = match (bootstrap::kept(store), bootstrap_password) {
            (Some(kept), _) => kept,
            (None, Some(given)) if !given.is_empty() => given,
            (None, _) => bootstrap::keep(store, &random_token(secrets::TOKEN_LENGTH))
                .map_err(AccountError::Bootstrap)?,
        };
        let generated = bootstrap::kept(store).is_some();
        // The admin's id is settled in the settings document first: replicas starting at once
        // agree on one (the first write wins) and so create one admin.
        let (id, first) = self.records.settings.update(|state| {
            if state.admin_id.is_empty() {
                state.admin_id = format!("user-{}", random_suffix());
            }
            // (Re)made: bound to `admin` next (a deleted admin lost its binding with it).
            state.admin_bound = false;
            let first = state.created == 0;
            if first {
                state.created = unix_now();
            }
            Ok::<_, AccountError>((state.admin_id.clone(), first))
        })?;
        if first {
            self.records.put_setting(FIRST_LOGIN, "true")?;
        }
        let admin = User {
            id: id.clone(),
            username: "admin".into(),
            display_name: "Default Admin".into(),
            password_hash: hash_password(&password),
            must_change_password: generated || password == "admin",
            password_version: 0,
            enabled: true,
            description: String::new(),
            created: unix_now(),
        };
        match self.records.users.create(&id, &admin) {
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn settings(&self) -> Arc<state::AccountState> {
        self.records.settings.read()
    }

    /// Checks a username and password and issues a session token. Attempts are rate-limited per
    /// client (address, or IPv6 /64); the password check runs off the async workers, through the
    /// password gate (argon2 is deliberately slow and memory-hungry).
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client: IpAddr,
        wanted: LoginToken<'_>,
    ) -> Result<IssuedToken, AccountError> {
        self.login_limiter
            .check(client)
            .map_err(AccountError::TooManyAttempts)?;
        let id = self.with_index(|index| index.user_id(username).cloned())?;
        let user = match id {
            Some(id) => self.records.users.get(&id)?,
            None => None,
        };
        let Some(user) = user else {
            // The same work, and the same wait for the gate, as a real check: usernames cannot be
            // probed by timing.
            self.passwords.verify(password, DUMMY_HASH).await?;
            return Err(AccountError::AuthenticationFailed);
        };
        let user = user.value;
        let attempt = self
            .login_backoff
            .begin(&user.id, user.password_version, client)
            .map_err(AccountError::TooManyAttempts)?;
        if !self.passwords.verify(password, &user.password_hash).await? {
            attempt.failed();
            return Err(AccountError::AuthenticationFailed);
        }
        attempt.succeeded();
        if !user.enabled {
            return Err(AccountError::UserDisabled);
        }
        // Issued for the password version just checked: if it changed meanwhile, no token.
        let issued = match wanted {
            LoginToken::Session { description } => {
                self.issue_session(&user.id, user.password_version, description)
            }
            LoginToken::Kubeconfig { cluster_id } => {
                let max = self.setting_number(settings::TOKEN_MAX_TTL);
                let kubeconfig = self.setting_number(settings::KUBECONFIG_TOKEN_TTL);
                let request = TokenRequest {
                    kind: TokenKind::Kubeconfig,
                    ttl_ms: clamp_ttl(kubeconfig.saturating_mul(60_000), max),
                    cluster_id: cluster_id.to_string(),
                    ..TokenRequest::default()
                };
                self.issue_for(&user.id, user.password_version, request)
            }
        };
        issued.map_err(|e| match e {
            AccountError::PasswordChanged => AccountError::AuthenticationFailed,
            other => other,
        })
    }

    /// Whether a generated bootstrap password is still kept (first login not done yet).
    pub fn bootstrap_password_generated(&self) -> bool {
        bootstrap::kept(self.store.as_ref()).is_some()
    }

    /// Whether the admin still has to complete first login.
    pub fn first_login(&self) -> bool {
        match self.records.setting(FIRST_LOGIN) {
            Ok(value) => value.is_none_or(|v| v == "true"),
            Err(e) => {
                tracing::warn!("cannot read {FIRST_LOGIN}: {e}");
                true
            }
        }
    }

    /// The effective server-url, if any.
    pub fn server_url_value(&self) -> Option<ServerUrl> {
        if let Some(url) = &self.env_server_url {
            return Some(url.clone());
        }
        let stored = self.records.setting(SERVER_URL).ok()??;
        ServerUrl::parse(&stored).ok()
    }

    /// When setup state was created (unix seconds).
    pub fn created(&self) -> i64 {
        self.settings().created
    }

    /// Sets server-url. The first value pins certificates to its host; the same value again is a
    /// no-op; another host is refused, as is any change when the value comes from the environment.
    pub fn set_server_url(&self, raw: &str) -> Result<ServerUrl, AccountError> {
        if self.env_server_url.is_some() {
            return Err(AccountError::ReadOnlyFromEnv(SERVER_URL.to_string()));
        }
        let url = ServerUrl::parse(raw)?;
        // The setting is written compare-and-swap, so of concurrent attempts exactly one first value
        // wins. All or nothing: the pinned certificate is made first but served only once the
        // setting is saved; when the save fails (or loses to another writer, and the change is
        // applied again) it is dropped and clients keep what they had.
        let (url, pending) = self.records.change_setting(SERVER_URL, |stored| {
            let current = stored.and_then(|v| ServerUrl::parse(v).ok());
            let pending = match current {
                Some(current) if current.host() != url.host() => {
                    return Err(AccountError::ServerUrlLocked {
                        current: current.to_string(),
                    });
                }
                Some(current) if current == url => return Ok((None, (current, None))),
                Some(_) => None,
                None => self.pins.stage(url.host()).map_err(AccountError::Pinning)?,
            };
            Ok((Some(url.to_string()), (url.clone(), pending)))
        })?;
        if let Some(pending) = pending {
            pending.commit();
        }
        tracing::info!("server-url set to {url}");
        Ok(url)
    }

    /// Sets first-login explicitly (the UI does so when no password change is needed).
    pub fn set_first_login(&self, value: &str) -> Result<(), AccountError> {
        if value != "true" && value != "false" {
            return Err(AccountError::InvalidValue(format!(
                "first-login must be \"true\" or \"false\", not {value:?}"
            )));
        }
        self.records.put_setting(FIRST_LOGIN, value)?;
        if value == "false" {
            self.first_login_done();
        }
        Ok(())
    }

    /// First login is complete: the bootstrap password is no longer kept.
    fn first_login_done(&self) {
        if let Err(e) = bootstrap::forget(self.store.as_ref()) {
            tracing::warn!("cannot remove the kept bootstrap password: {e}");
        }
    }
}

/// Ids for [`crate::store::Collection::create_generated`]: `first` (already named in what was
/// checked), then `<prefix>` and five random characters, as Rancher's generateName.
fn names_from(first: String, prefix: String) -> impl Fn() -> String {
    let first = std::cell::Cell::new(Some(first));
    move || {
        first
            .take()
            .unwrap_or_else(|| format!("{prefix}{}", random_suffix()))
    }
}

/// A valid argon2id hash of a password nobody knows, checked when the username does not exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0cwMjmh/+Gl0WkLz5Y8vaHxZ0eTcSxUgjoFBt4r5TdI";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DataDir, FileBackend};

    const SESSION: LoginToken<'static> = LoginToken::Session { description: "" };

    /// Certificates that never pin (the tests here are about accounts).
    struct NoPins;

    impl Pinning for NoPins {
        fn stage<'a>(
            &'a self,
            _: &SubjectName,
        ) -> Result<Option<Box<dyn StagedPin + 'a>>, PinError> {
            Ok(None)
        }
    }

    fn setup() -> (tempfile::TempDir, Accounts) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let setup = Accounts::open(
            Arc::new(FileBackend::new(dir.clone())),
            Some("a-bootstrap-password".into()),
            None,
            Arc::new(NoPins),
            "https://localhost",
        )
        .unwrap();
        (tmp, setup)
    }

    fn admin_id(accounts: &Accounts) -> String {
        accounts
            .records
            .user_named("admin")
            .unwrap()
            .unwrap()
            .value
            .id
    }

    /// A reset (here from another process, `corral reset-password`) ends every token of the old
    /// password: those issued before it, and those of logins that checked the old password before
    /// the reset and are stored after it.
    #[tokio::test]
    async fn no_token_of_the_old_password_outlives_a_reset() {
        let (tmp, accounts) = setup();
        let client = IpAddr::from([192, 0, 2, 1]);
        let before = accounts
            .login("admin", "a-bootstrap-password", client, SESSION)
            .await
            .unwrap();
        assert!(accounts.authenticate(&before.token, None).is_some());
        let admin = admin_id(&accounts);
        let checked_version = accounts.records.users.get(&admin).unwrap().unwrap().value;
        let other = Arc::new(FileBackend::new(DataDir::open(tmp.path()).unwrap()));
        let reset = bootstrap::reset_password(other).unwrap();
        assert!(
            accounts.authenticate(&before.token, None).is_none(),
            "issued before"
        );
        // A login that checked the old password before the reset, storing its token after it.
        let late = accounts.issue_for(
            &admin,
            checked_version.password_version,
            TokenRequest {
                ttl_ms: 3_600_000,
                ..TokenRequest::default()
            },
        );
        assert!(
            matches!(late, Err(AccountError::PasswordChanged)),
            "{late:?}"
        );
        assert!(
            accounts.records.tokens.list().unwrap().is_empty(),
            "nothing kept"
        );
        let after = accounts
            .login("admin", &reset.password, client, SESSION)
            .await
            .unwrap();
        assert!(accounts.authenticate(&after.token, None).is_some());
    }

    /// changepassword keeps the session that made the change and revokes the user's others.
    #[tokio::test]
    async fn a_password_change_keeps_its_own_session_only() {
        let (_tmp, accounts) = setup();
        let client = IpAddr::from([192, 0, 2, 1]);
        let mine = accounts
            .login("admin", "a-bootstrap-password", client, SESSION)
            .await
            .unwrap();
        let other = accounts
            .login("admin", "a-bootstrap-password", client, SESSION)
            .await
            .unwrap();
        let caller = accounts.authenticate(&mine.token, None).unwrap();
        accounts
            .change_password(&caller, "a-bootstrap-password", "a-new-long-password")
            .await
            .unwrap();
        assert!(accounts.authenticate(&mine.token, None).is_some());
        assert!(accounts.authenticate(&other.token, None).is_none());
        assert!(
            accounts.records.tokens.get(other.name()).unwrap().is_none(),
            "deleted"
        );
        let old = accounts
            .login("admin", "a-bootstrap-password", client, SESSION)
            .await;
        assert!(
            matches!(old, Err(AccountError::AuthenticationFailed)),
            "{old:?}"
        );
    }

    /// Expired tokens and tokens of an old password are deleted by the sweep; usable ones stay.
    #[tokio::test]
    async fn the_sweep_deletes_what_can_no_longer_be_used() {
        let (_tmp, accounts) = setup();
        let admin = admin_id(&accounts);
        let live = accounts
            .issue_token(
                &admin,
                TokenRequest {
                    kind: TokenKind::ApiKey,
                    ttl_ms: 3_600_000,
                    ..TokenRequest::default()
                },
            )
            .unwrap();
        let stale = |name: &str, expires_at: i64, password_version: u64| state::Token {
            name: name.into(),
            secret_hash: String::new(),
            user_id: admin.clone(),
            created: 1,
            expires_at,
            password_version,
            kind: TokenKind::Session,
            description: String::new(),
            ttl_ms: 0,
            cluster_id: String::new(),
        };
        let tokens = &accounts.records.tokens;
        tokens
            .create("token-expir", &stale("token-expir", 2, 0))
            .unwrap();
        tokens
            .create("token-oldpw", &stale("token-oldpw", i64::MAX, 7))
            .unwrap();
        assert_eq!(accounts.sweep_tokens().unwrap(), 2);
        let left: Vec<String> = tokens.list().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(left, [live.name().to_string()]);
    }

    /// One IPv6 host owns a /64: cycling through its addresses does not buy more attempts.
    #[tokio::test]
    async fn logins_from_one_ipv6_prefix_share_one_budget() {
        let (_tmp, setup) = setup();
        let address = |i: u16| IpAddr::from([0xfd00, 0, 0, 1, 0, 0, 0, i]);
        for i in 0..LOGIN_BURST as u16 {
            let refused = setup
                .login("nobody", "guess", address(i), SESSION)
                .await
                .unwrap_err();
            assert!(
                matches!(refused, AccountError::AuthenticationFailed),
                "{refused:?}"
            );
        }
        let refused = setup
            .login("nobody", "guess", address(999), SESSION)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, AccountError::TooManyAttempts(_)),
            "{refused:?}"
        );
        let other_prefix = IpAddr::from([0xfd00, 0, 0, 2, 0, 0, 0, 1]);
        let refused = setup
            .login("nobody", "guess", other_prefix, SESSION)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, AccountError::AuthenticationFailed),
            "{refused:?}"
        );
    }
}
