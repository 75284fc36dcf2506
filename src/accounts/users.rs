//! Users as the API shows them, and their passwords: Rancher's rules (`password-min-length`, not
//! the username, not the current one), `changepassword` for the caller and `setpassword` for an
//! admin (`shared/spec/norman-api.md` §6). A new password ends every session opened with the old
//! one, but the caller's own.

use super::settings::PASSWORD_MIN;
use super::state::{Reindex, User};
use super::{AccountError, Accounts, Caller, FIRST_LOGIN};
use crate::secrets::random_suffix;
use crate::store::Stored;
use crate::support::unix_now;

/// Most users kept.
pub const MAX_USERS: usize = 100_000;

/// A new user (`POST /v3/users`): username and password are required, but norman does not say so
/// (Rancher's store refuses them missing with a server error).
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub username: Option<String>,
    pub password: Option<String>,
    pub display_name: String,
    pub description: String,
    pub enabled: bool,
    pub must_change_password: bool,
}

/// A change to a user (`PUT /v3/users/<id>`): what is `Some` changes.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub must_change_password: Option<bool>,
}

/// A user as the API shows it (never its password).
#[derive(Debug, Clone)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub description: String,
    pub enabled: bool,
    pub must_change_password: bool,
    /// Unix seconds.
    pub created: i64,
}

impl UserView {
    /// Its principal: `local://<id>`.
    pub fn principal_id(&self) -> String {
        format!("local://{}", self.id)
    }
}

impl Accounts {
    fn view(&self, user: super::state::User) -> UserView {
        let created = match user.created {
            0 => self.created(),
            at => at,
        };
        UserView {
            id: user.id,
            username: user.username,
            display_name: user.display_name,
            description: user.description,
            enabled: user.enabled,
            must_change_password: user.must_change_password,
            created,
        }
    }

    pub fn users_list(&self) -> Result<Vec<UserView>, AccountError> {
        Ok(self
            .records
            .users
            .list()?
            .into_iter()
            .map(|(_, user)| self.view(user.value))
            .collect())
    }

    pub fn user(&self, id: &str) -> Result<UserView, AccountError> {
        let user = self
            .records
            .users
            .get(id)?
            .ok_or_else(|| AccountError::UserNotFound(id.to_string()))?;
        Ok(self.view(user.value))
    }

    /// Creates a local user, with Rancher's checks in its order: a username, a password, the
    /// password rules, a username nobody has. No global role is bound (Rancher binds none on
    /// `POST /v3/users`; the client binds one next).
    pub async fn create_user(
        &self,
        caller: &Caller,
        new: NewUser,
    ) -> Result<UserView, AccountError> {
        let username = new.username.filter(|u| !u.is_empty());
        let username = username.ok_or(AccountError::UsernameMissing)?;
        let password = new.password.filter(|p| !p.is_empty());
        let password = password.ok_or(AccountError::PasswordMissing)?;
        self.check_new_password(&username, &password)?;
        let taken = |accounts: &Self| {
            accounts.with_index(|index| (index.user_id(&username).is_some(), index.user_count()))
        };
        if taken(self)?.0 {
            return Err(AccountError::UsernameTaken);
        }
        let password_hash = self.passwords.hash(&password).await?;
        // One create at a time here, so two of the same username cannot both pass the check.
        // (Replicas creating one username at once can: Rancher's check is a cache's too.)
        let _one = crate::support::lock(&self.user_writes);
        let (exists, users) = taken(self)?;
        if exists {
            return Err(AccountError::UsernameTaken);
        }
        if users >= MAX_USERS {
            return Err(AccountError::TooMany("users", MAX_USERS));
        }
        let template = User {
            id: String::new(),
            username,
            display_name: new.display_name,
            password_hash,
            must_change_password: new.must_change_password,
            password_version: 0,
            enabled: new.enabled,
            description: new.description,
            created: unix_now(),
        };
        let (id, user) = self.records.users.create_generated(
            || format!("u-{}", random_suffix()),
            |id| User {
                id: id.to_string(),
                ..template.clone()
            },
        )?;
        self.reindex(Reindex::User(id.clone()));
        tracing::info!(
            "user {id} ({}) created by {}",
            user.username,
            caller.username
        );
        Ok(self.view(user))
    }

    /// Changes a user's name, description, `enabled` and `mustChangePassword`. Nobody disables
    /// themselves; a disabled user's tokens stop working at once (they are checked against it).
    pub fn update_user(
        &self,
        caller: &Caller,
        id: &str,
        change: UserChange,
    ) -> Result<UserView, AccountError> {
        if id == caller.user_id && change.enabled == Some(false) {
            return Err(AccountError::CannotDeactivateSelf);
        }
        self.user(id)?;
        self.refuse_user_takeover(caller, id)?;
        let user = self
            .records
            .users
            .update(id, |user| {
                if let Some(name) = &change.display_name {
                    user.display_name = name.clone();
                }
                if let Some(description) = &change.description {
                    user.description = description.clone();
                }
                if let Some(enabled) = change.enabled {
                    user.enabled = enabled;
                }
                if let Some(must) = change.must_change_password {
                    user.must_change_password = must;
                }
                Ok::<_, AccountError>(user.clone())
            })?
            .ok_or_else(|| AccountError::UserNotFound(id.to_string()))?;
        if change.enabled.is_some() {
            let state = if user.enabled { "enabled" } else { "disabled" };
            tracing::info!("user {id} {state} by {}", caller.username);
        }
        Ok(self.view(user))
    }

    /// Deletes a user with its tokens and role bindings, global and cluster. Nobody deletes
    /// themselves.
    pub fn delete_user(&self, caller: &Caller, id: &str) -> Result<(), AccountError> {
        if id == caller.user_id {
            return Err(AccountError::CannotDeleteSelf);
        }
        self.user(id)?;
        self.refuse_user_takeover(caller, id)?;
        // The user first: its tokens stop working at once, whatever happens to the rest.
        self.records.users.delete(id)?;
        let revoked = self.records.revoke_tokens(id, None)?;
        self.token_index_reset();
        let unbound = (self.records.bindings).delete_where(|_, binding| binding.user_id == id)?;
        // Its cluster bindings too (Rancher's cleanup): left, they would bind a later user who
        // drew the same id.
        let unbound = unbound
            + (self.records.cluster_bindings).delete_where(|_, binding| binding.user_id == id)?;
        self.reindex(Reindex::Everything);
        tracing::info!(
            "user {id} deleted by {} with {revoked} token(s) and {unbound} role binding(s)",
            caller.username
        );
        Ok(())
    }

    /// The shortest password allowed (`password-min-length`).
    pub fn password_min_length(&self) -> i64 {
        self.setting_number(PASSWORD_MIN).max(1)
    }

    /// Rancher's rules for a new password of `username`.
    fn check_new_password(&self, username: &str, new: &str) -> Result<(), AccountError> {
        let min = self.password_min_length();
        if (new.chars().count() as i64) < min {
            return Err(AccountError::PasswordTooShort(min));
        }
        if new == username {
            return Err(AccountError::PasswordIsUsername);
        }
        Ok(())
    }

    /// Changes the caller's password (`current` must match) and ends first login. The rules are
    /// checked before the current password, as Rancher does.
    pub async fn change_password(
        &self,
        caller: &Caller,
        current: &str,
        new: &str,
    ) -> Result<(), AccountError> {
        if current.is_empty() {
            return Err(AccountError::NoCurrentPassword);
        }
        if new.is_empty() {
            return Err(AccountError::NoNewPassword);
        }
        self.check_new_password(&caller.username, new)?;
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
        self.replace_password(caller, &user.id, user.password_version, new_hash)
            .map_err(|e| match e {
                // Changed concurrently: the current password checked above is no longer current.
                AccountError::PasswordChanged => AccountError::InvalidCurrentPassword,
                other => other,
            })?;
        Ok(())
    }

    /// An admin sets `user_id`'s password.
    pub async fn set_password(
        &self,
        caller: &Caller,
        user_id: &str,
        new: &str,
    ) -> Result<UserView, AccountError> {
        if new.is_empty() {
            return Err(AccountError::NoNewPassword);
        }
        let user = self.user(user_id)?;
        self.refuse_user_takeover(caller, user_id)?;
        self.check_new_password(&user.username, new)?;
        let version = self
            .records
            .users
            .get(user_id)?
            .ok_or_else(|| AccountError::UserNotFound(user_id.to_string()))?
            .value
            .password_version;
        let new_hash = self.passwords.hash(new).await?;
        self.replace_password(caller, user_id, version, new_hash)?;
        self.user(user_id)
    }

    /// Stores `new_hash` as `user_id`'s password if its password is still version `version`, and
    /// ends every other session of the old one (the caller's own, if it is that user's, goes on:
    /// Rancher's UI goes on after first login). First login is over.
    fn replace_password(
        &self,
        caller: &Caller,
        user_id: &str,
        version: u64,
        new_hash: String,
    ) -> Result<(), AccountError> {
        let new_version = self
            .records
            .users
            .update(user_id, |stored| {
                if stored.password_version != version {
                    return Err(AccountError::PasswordChanged);
                }
                stored.password_hash = new_hash.clone();
                stored.must_change_password = false;
                stored.password_version += 1;
                Ok(stored.password_version)
            })?
            .ok_or_else(|| AccountError::UserNotFound(user_id.to_string()))?;
        let keep = (caller.user_id == user_id).then_some(caller.token_name.as_str());
        if let Some(own) = keep {
            self.records.tokens.update(own, |token| {
                token.password_version = new_version;
                Ok::<_, AccountError>(())
            })?;
        }
        let revoked = self.records.revoke_tokens(user_id, keep)?;
        self.token_index_reset();
        self.records.put_setting(FIRST_LOGIN, "false")?;
        self.first_login_done();
        tracing::info!(
            "password of user {user_id} changed by {}; {revoked} other token(s) revoked",
            caller.username
        );
        Ok(())
    }
}
