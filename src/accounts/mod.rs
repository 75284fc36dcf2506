//! First-start setup and the accounts behind the API: the bootstrap password and `admin` user, login
//! tokens, password changes, and the settings setup writes (`server-url`, `first-login`).
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
mod password_gate;

mod state;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::Quota;

use crate::limits::ClientLimiter;
use crate::pki::SubjectName;
pub use crate::pki::{ServerUrl, ServerUrlError};
use crate::secrets::{
    self, hash_password, hash_token_secret, random_suffix, random_token, same_hash,
};
use crate::store::{Backend, Changes, StoreError, Stored};
use crate::support::unix_now;
use password_gate::{Busy, PasswordGate};
use state::{ACCOUNTS, Records, Token, User};

/// Rancher's `password-min-length`.
pub const PASSWORD_MIN_LENGTH: usize = 12;
/// Rancher's `auth-user-session-ttl-minutes` (960).
const SESSION_TTL_SECS: i64 = 960 * 60;
/// Most login tokens kept; the oldest go first.
const MAX_TOKENS: usize = 10_000;
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
    /// Over the per-client rate or the per-user backoff; retry after the duration.
    #[error("too many failed login attempts; try again later")]
    TooManyAttempts(Duration),
    /// Every password slot stayed busy (see `PasswordGate`); retry shortly.
    #[error("too many password checks at once; try again shortly")]
    Busy,
    #[error("invalid current password")]
    InvalidCurrentPassword,
    #[error("password must be at least {PASSWORD_MIN_LENGTH} characters")]
    PasswordTooShort,
    #[error("new password must not be the same as current password")]
    SamePassword,
    /// A setting's value that is not valid, and why.
    #[error("{0}")]
    InvalidValue(String),
    #[error(transparent)]
    InvalidServerUrl(#[from] ServerUrlError),
    #[error("server-url is already {current}: the hostname cannot be changed after installation")]
    ServerUrlLocked { current: String },
    #[error("{0} is readOnly because its value is from environment variable")]
    ReadOnlyFromEnv(&'static str),
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

/// A token handed out by login. `token` is `name:secret`, shown once and never stored.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub name: String,
    pub token: String,
    pub user_id: String,
    pub created: i64,
    pub expires_at: i64,
    pub description: String,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub username: String,
    pub token_name: String,
}

/// The accounts service.
pub struct Accounts {
    records: Records,
    store: Arc<dyn Backend>,
    /// `server-url` from `--server-url` / `CATTLE_SERVER_URL`: pinned from boot, read-only.
    env_server_url: Option<ServerUrl>,
    pins: Arc<dyn Pinning>,
    login_limiter: ClientLimiter,
    login_backoff: backoff::LoginBackoff,
    /// Bounds the argon2 work running at once: logins, password changes.
    passwords: PasswordGate,
    /// When unusable tokens were last deleted, and about how many tokens there are since.
    sweep: std::sync::Mutex<Sweep>,
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
        };
        // Also when a start stopped between settling the admin's id and writing the admin.
        if first_start || accounts.records.user_named("admin")?.is_none() {
            accounts.create_admin(bootstrap_password)?;
        }
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

    /// With a store other writers share (replicas on etcd): a change another replica makes takes
    /// effect here as it happens — above all server-url, which pins this replica's certificates too.
    pub fn follow_store(self: &Arc<Self>) {
        let Some(mut changes) = Changes::of(self.store.as_ref(), |path| path == ACCOUNTS.path)
        else {
            return;
        };
        let accounts = Arc::downgrade(self);
        tokio::spawn(async move {
            while changes.next().await.is_some() {
                let Some(accounts) = accounts.upgrade() else {
                    return;
                };
                accounts.pin_to_stored_server_url();
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
        let id = self.records.settings.update(|state| {
            if state.admin_id.is_empty() {
                state.admin_id = format!("user-{}", random_suffix());
            }
            if state.created == 0 {
                state.created = unix_now();
                state.settings.insert(FIRST_LOGIN.into(), "true".into());
            }
            Ok::<_, AccountError>(state.admin_id.clone())
        })?;
        let admin = User {
            id: id.clone(),
            username: "admin".into(),
            display_name: "Default Admin".into(),
            password_hash: hash_password(&password),
            must_change_password: generated || password == "admin",
            password_version: 0,
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
    ) -> Result<IssuedToken, AccountError> {
        self.login_limiter
            .check(client)
            .map_err(AccountError::TooManyAttempts)?;
        let Some(user) = self.records.user_named(username)? else {
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
        // Issued for the password version just checked: if it changed meanwhile, no token.
        self.issue_for(&user.id, user.password_version, SESSION_TTL_SECS)
            .map_err(|e| match e {
                AccountError::PasswordChanged => AccountError::AuthenticationFailed,
                other => other,
            })
    }

    /// A new token for `user_id`, valid for `ttl_secs` (kubeconfigs), under the current password.
    pub fn issue_token(&self, user_id: &str, ttl_secs: i64) -> Result<IssuedToken, AccountError> {
        let user = self
            .records
            .users
            .get(user_id)?
            .ok_or(AccountError::AuthenticationFailed)?;
        self.issue_for(user_id, user.value.password_version, ttl_secs)
    }

    /// A new token for `user_id` under password version `version`; refused when the password is no
    /// longer that version once the token is stored (it is then removed again).
    fn issue_for(
        &self,
        user_id: &str,
        version: u64,
        ttl_secs: i64,
    ) -> Result<IssuedToken, AccountError> {
        let name = format!("token-{}", random_suffix());
        let secret = random_token(secrets::TOKEN_LENGTH);
        let created = unix_now();
        let token = Token {
            name: name.clone(),
            secret_hash: hash_token_secret(&secret),
            user_id: user_id.to_string(),
            created,
            expires_at: created + ttl_secs,
            password_version: version,
        };
        self.records.tokens.create(&name, &token)?;
        // Checked after the write: a reset that lands before it is seen here; one that lands after
        // makes the token invalid anyway (its version is old).
        if !self.current_version_is(user_id, version)? {
            self.records.tokens.delete(&name)?;
            return Err(AccountError::PasswordChanged);
        }
        self.sweep_soon(1);
        Ok(IssuedToken {
            token: format!("{name}:{secret}"),
            name,
            user_id: user_id.to_string(),
            created,
            expires_at: token.expires_at,
            description: String::new(),
        })
    }

    fn current_version_is(&self, user_id: &str, version: u64) -> Result<bool, StoreError> {
        let user = self.records.users.get(user_id)?;
        Ok(user.is_some_and(|u| u.value.password_version == version))
    }

    /// The caller a `token-name:secret` string belongs to, if it is valid: unexpired, and issued
    /// under its user's current password.
    pub fn authenticate(&self, presented: &str) -> Option<Caller> {
        let (name, secret) = presented.split_once(':')?;
        let hash = hash_token_secret(secret);
        let token = self.records.tokens.get(name).ok()??.value;
        if !same_hash(&token.secret_hash, &hash) || token.expires_at <= unix_now() {
            return None;
        }
        let user = self.records.users.get(&token.user_id).ok()??.value;
        if user.password_version != token.password_version {
            return None;
        }
        Some(Caller {
            user_id: user.id,
            username: user.username,
            token_name: token.name,
        })
    }

    /// Deletes, in the background and at most every [`SWEEP_EVERY`], the tokens that can no longer
    /// be used; at once when about [`MAX_TOKENS`] are kept. `issued` tokens were just added.
    fn sweep_soon(&self, issued: usize) {
        let due = {
            let mut sweep = crate::support::lock(&self.sweep);
            sweep.tokens += issued;
            let due = sweep.tokens >= MAX_TOKENS
                || sweep.last.is_none_or(|at| at.elapsed() >= SWEEP_EVERY);
            if due {
                sweep.last = Some(tokio::time::Instant::now());
            }
            due
        };
        if due && let Err(e) = self.sweep_tokens() {
            tracing::warn!("cannot delete unusable tokens: {e}");
        }
    }

    /// Deletes every token that is expired, was issued under an old password or for a user that is
    /// gone, and the oldest beyond [`MAX_TOKENS`]. Replicas may sweep at once: a delete of what is
    /// gone already is nothing.
    pub fn sweep_tokens(&self) -> Result<usize, StoreError> {
        let now = unix_now();
        let versions: std::collections::HashMap<String, u64> = self
            .records
            .users
            .list()?
            .into_iter()
            .map(|(id, user)| (id, user.value.password_version))
            .collect();
        let (mut usable, unusable): (Vec<_>, Vec<_>) =
            self.records.tokens.list()?.into_iter().partition(|(_, t)| {
                t.value.expires_at > now
                    && versions.get(&t.value.user_id) == Some(&t.value.password_version)
            });
        usable.sort_by_key(|(_, t)| t.value.created);
        let excess = usable.len().saturating_sub(MAX_TOKENS);
        let doomed: Vec<String> = unusable
            .into_iter()
            .chain(usable.drain(..excess))
            .map(|(name, _)| name)
            .collect();
        for name in &doomed {
            self.records.tokens.delete(name)?;
        }
        crate::support::lock(&self.sweep).tokens = usable.len();
        if !doomed.is_empty() {
            tracing::debug!("deleted {} unusable token(s)", doomed.len());
        }
        Ok(doomed.len())
    }

    /// Changes the caller's password (`currentPassword` must match) and ends first login.
    pub async fn change_password(
        &self,
        caller: &Caller,
        current: &str,
        new: &str,
    ) -> Result<(), AccountError> {
        if new.chars().count() < PASSWORD_MIN_LENGTH {
            return Err(AccountError::PasswordTooShort);
        }
        if new == current {
            return Err(AccountError::SamePassword);
        }
        let Stored { value: user, .. } = self
            .records
            .users
            .get(&caller.user_id)?
            .ok_or(AccountError::AuthenticationFailed)?;
        if !self.passwords.verify(current, &user.password_hash).await? {
            return Err(AccountError::InvalidCurrentPassword);
        }
        let new_hash = self.passwords.hash(new).await?;
        let version = self
            .records
            .users
            .update(&caller.user_id, |stored| {
                if stored.password_version != user.password_version {
                    // Changed concurrently: the current password checked above is no longer current.
                    return Err(AccountError::InvalidCurrentPassword);
                }
                stored.password_hash = new_hash.clone();
                stored.must_change_password = false;
                stored.password_version += 1;
                Ok(stored.password_version)
            })?
            .ok_or(AccountError::AuthenticationFailed)?;
        // The session that changed it goes on (as Rancher's UI expects after first login); every
        // other token of the user was opened with the old password and is revoked.
        self.records.tokens.update(&caller.token_name, |token| {
            token.password_version = version;
            Ok::<_, AccountError>(())
        })?;
        let revoked = self
            .records
            .revoke_tokens(&caller.user_id, Some(&caller.token_name))?;
        self.records.settings.update(|next| {
            next.settings.insert(FIRST_LOGIN.into(), "false".into());
            Ok::<_, AccountError>(())
        })?;
        self.first_login_done();
        tracing::info!(
            "password changed for user {}; {revoked} other token(s) revoked",
            caller.username
        );
        Ok(())
    }

    /// Whether a generated bootstrap password is still kept (first login not done yet).
    pub fn bootstrap_password_generated(&self) -> bool {
        bootstrap::kept(self.store.as_ref()).is_some()
    }

    /// Whether the admin still has to complete first login.
    pub fn first_login(&self) -> bool {
        self.settings()
            .settings
            .get(FIRST_LOGIN)
            .is_none_or(|v| v == "true")
    }

    /// A setting's value and source, for the settings endpoints. `None` for settings corral lacks.
    pub fn setting(&self, name: &str) -> Option<(String, Source)> {
        match name {
            SERVER_URL => Some(
                match (
                    &self.env_server_url,
                    self.settings().settings.get(SERVER_URL),
                ) {
                    (Some(url), _) => (url.to_string(), Source::Env),
                    (None, Some(value)) => (value.clone(), Source::Db),
                    (None, None) => (String::new(), Source::Default),
                },
            ),
            FIRST_LOGIN => Some(match self.settings().settings.get(FIRST_LOGIN) {
                Some(value) => (value.clone(), Source::Db),
                None => ("true".into(), Source::Default),
            }),
            _ => None,
        }
    }

    /// The effective server-url, if any.
    pub fn server_url_value(&self) -> Option<ServerUrl> {
        if let Some(url) = &self.env_server_url {
            return Some(url.clone());
        }
        let stored = self.settings().settings.get(SERVER_URL).cloned()?;
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
            return Err(AccountError::ReadOnlyFromEnv(SERVER_URL));
        }
        let url = ServerUrl::parse(raw)?;
        // The document is locked across pinning, so concurrent attempts are ordered and exactly one
        // first value wins. All or nothing: the pinned certificate is made first but served only once
        // the setting is saved; when the save fails (or loses to another writer, and the change is
        // applied again) it is dropped and clients keep what they had.
        let (url, pending) = self.records.settings.update(|next| {
            let current = next
                .settings
                .get(SERVER_URL)
                .and_then(|v| ServerUrl::parse(v).ok());
            let pending = match current {
                Some(current) if current.host() != url.host() => {
                    return Err(AccountError::ServerUrlLocked {
                        current: current.to_string(),
                    });
                }
                Some(current) if current == url => return Ok((current, None)),
                Some(_) => None,
                None => self.pins.stage(url.host()).map_err(AccountError::Pinning)?,
            };
            next.settings.insert(SERVER_URL.into(), url.to_string());
            Ok((url.clone(), pending))
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
        self.records.settings.update(|next| {
            next.settings.insert(FIRST_LOGIN.into(), value.into());
            Ok::<_, AccountError>(())
        })?;
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

/// A valid argon2id hash of a password nobody knows, checked when the username does not exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0cwMjmh/+Gl0WkLz5Y8vaHxZ0eTcSxUgjoFBt4r5TdI";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DataDir, FileBackend};

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
            .login("admin", "a-bootstrap-password", client)
            .await
            .unwrap();
        assert!(accounts.authenticate(&before.token).is_some());
        let admin = admin_id(&accounts);
        let checked_version = accounts.records.users.get(&admin).unwrap().unwrap().value;
        let other = Arc::new(FileBackend::new(DataDir::open(tmp.path()).unwrap()));
        let reset = bootstrap::reset_password(other).unwrap();
        assert!(
            accounts.authenticate(&before.token).is_none(),
            "issued before"
        );
        // A login that checked the old password before the reset, storing its token after it.
        let late = accounts.issue_for(&admin, checked_version.password_version, 3600);
        assert!(
            matches!(late, Err(AccountError::PasswordChanged)),
            "{late:?}"
        );
        assert!(
            accounts.records.tokens.list().unwrap().is_empty(),
            "nothing kept"
        );
        let after = accounts
            .login("admin", &reset.password, client)
            .await
            .unwrap();
        assert!(accounts.authenticate(&after.token).is_some());
    }

    /// changepassword keeps the session that made the change and revokes the user's others.
    #[tokio::test]
    async fn a_password_change_keeps_its_own_session_only() {
        let (_tmp, accounts) = setup();
        let client = IpAddr::from([192, 0, 2, 1]);
        let mine = accounts
            .login("admin", "a-bootstrap-password", client)
            .await
            .unwrap();
        let other = accounts
            .login("admin", "a-bootstrap-password", client)
            .await
            .unwrap();
        let caller = accounts.authenticate(&mine.token).unwrap();
        accounts
            .change_password(&caller, "a-bootstrap-password", "a-new-long-password")
            .await
            .unwrap();
        assert!(accounts.authenticate(&mine.token).is_some());
        assert!(accounts.authenticate(&other.token).is_none());
        assert!(
            accounts.records.tokens.get(&other.name).unwrap().is_none(),
            "deleted"
        );
        let old = accounts
            .login("admin", "a-bootstrap-password", client)
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
        let live = accounts.issue_token(&admin, 3600).unwrap();
        let stale = |name: &str, expires_at: i64, password_version: u64| Token {
            name: name.into(),
            secret_hash: String::new(),
            user_id: admin.clone(),
            created: 1,
            expires_at,
            password_version,
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
        assert_eq!(left, [live.name]);
    }

    /// One IPv6 host owns a /64: cycling through its addresses does not buy more attempts.
    #[tokio::test]
    async fn logins_from_one_ipv6_prefix_share_one_budget() {
        let (_tmp, setup) = setup();
        let address = |i: u16| IpAddr::from([0xfd00, 0, 0, 1, 0, 0, 0, i]);
        for i in 0..LOGIN_BURST as u16 {
            let refused = setup
                .login("nobody", "guess", address(i))
                .await
                .unwrap_err();
            assert!(
                matches!(refused, AccountError::AuthenticationFailed),
                "{refused:?}"
            );
        }
        let refused = setup
            .login("nobody", "guess", address(999))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, AccountError::TooManyAttempts(_)),
            "{refused:?}"
        );
        let other_prefix = IpAddr::from([0xfd00, 0, 0, 2, 0, 0, 0, 1]);
        let refused = setup
            .login("nobody", "guess", other_prefix)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, AccountError::AuthenticationFailed),
            "{refused:?}"
        );
    }
}
