//! Tokens (`shared/spec/norman-api.md` §5): login sessions, kubeconfig tokens and API keys, each
//! `<name>:<secret>` with only a hash of the secret kept; who a presented token belongs to; listing
//! and deleting a user's own; and the sweep that deletes those that can no longer be used.
//!
//! Lifetimes come from the settings: a session lives `auth-user-session-ttl-minutes`; an API key
//! what it asked for and a kubeconfig token `kubeconfig-default-token-ttl-minutes`, both clamped to
//! `auth-token-max-ttl-minutes` (0 there: no maximum).

use super::settings::{KUBECONFIG_TOKEN_TTL, SESSION_TTL, TOKEN_MAX_TTL};
use super::state::{Token, TokenKind};
use super::{AccountError, Accounts, Caller, MAX_TOKENS, SWEEP_EVERY};
use crate::secrets::{self, hash_token_secret, random_suffix, random_token, same_hash};
use crate::store::StoreError;
use crate::support::unix_now;

/// A token as made: `token` is `name:secret`, shown once and never stored.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub view: TokenView,
}

impl IssuedToken {
    pub fn name(&self) -> &str {
        &self.view.name
    }
}

/// A token as the API shows it (never its secret).
#[derive(Debug, Clone)]
pub struct TokenView {
    pub name: String,
    pub user_id: String,
    pub kind: TokenKind,
    pub description: String,
    pub created: i64,
    /// Unix seconds; 0: never.
    pub expires_at: i64,
    pub ttl_ms: i64,
    pub cluster_id: String,
}

impl TokenView {
    fn of(token: &Token) -> Self {
        Self {
            name: token.name.clone(),
            user_id: token.user_id.clone(),
            kind: token.kind,
            description: token.description.clone(),
            created: token.created,
            expires_at: token.expires_at,
            ttl_ms: token.ttl_ms(),
            cluster_id: token.cluster_id.clone(),
        }
    }

    /// Everything but a session is derived from another token (`isDerived`).
    pub fn derived(&self) -> bool {
        self.kind != TokenKind::Session
    }

    pub fn expired(&self) -> bool {
        self.expires_at != 0 && self.expires_at <= unix_now()
    }
}

/// Which tokens each user has, by name: what `GET /v3/tokens` reads instead of every token.
#[derive(Default)]
pub(super) struct TokenIndex {
    by_user: std::collections::HashMap<String, std::collections::BTreeSet<String>>,
    user_of: std::collections::HashMap<String, String>,
}

impl TokenIndex {
    fn add(&mut self, user_id: &str, name: &str) {
        self.by_user
            .entry(user_id.to_string())
            .or_default()
            .insert(name.to_string());
        self.user_of.insert(name.to_string(), user_id.to_string());
    }

    fn remove(&mut self, name: &str) {
        if let Some(user) = self.user_of.remove(name)
            && let Some(names) = self.by_user.get_mut(&user)
        {
            names.remove(name);
            if names.is_empty() {
                self.by_user.remove(&user);
            }
        }
    }

    fn names_of(&self, user_id: &str) -> Vec<String> {
        self.by_user
            .get(user_id)
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What a new token is.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    pub kind: TokenKind,
    pub description: String,
    /// Milliseconds; 0: never (before clamping).
    pub ttl_ms: i64,
    pub cluster_id: String,
}

/// Rancher's clamp: no TTL or one over the maximum gets the maximum; with no maximum (0), what
/// was asked (0: never).
pub fn clamp_ttl(requested_ms: i64, max_minutes: i64) -> i64 {
    if max_minutes <= 0 {
        return requested_ms.max(0);
    }
    let max = max_minutes.saturating_mul(60_000);
    if requested_ms <= 0 || requested_ms > max {
        max
    } else {
        requested_ms
    }
}

/// `kubeconfig-<user>` (`.<cluster>` for one cluster) then five random characters, no dash:
/// Rancher's generateName.
fn kubeconfig_name(user_id: &str, cluster_id: &str) -> String {
    match cluster_id {
        "" => format!("kubeconfig-{user_id}{}", random_suffix()),
        cluster => format!("kubeconfig-{user_id}.{cluster}{}", random_suffix()),
    }
}

impl Accounts {
    /// A login's session for `user_id` under password version `version`.
    pub(super) fn issue_session(
        &self,
        user_id: &str,
        version: u64,
        description: &str,
    ) -> Result<IssuedToken, AccountError> {
        let minutes = self.setting_number(SESSION_TTL).max(1);
        let request = TokenRequest {
            kind: TokenKind::Session,
            description: description.to_string(),
            ttl_ms: minutes.saturating_mul(60_000),
            cluster_id: String::new(),
        };
        self.issue_for(user_id, version, request)
    }

    /// A token derived from the caller's: an API key (its TTL clamped), or a kubeconfig token
    /// (the kubeconfig TTL, clamped).
    pub fn issue_token(
        &self,
        user_id: &str,
        request: TokenRequest,
    ) -> Result<IssuedToken, AccountError> {
        let max = self.setting_number(TOKEN_MAX_TTL);
        let ttl_ms = match request.kind {
            TokenKind::Kubeconfig => clamp_ttl(
                self.setting_number(KUBECONFIG_TOKEN_TTL)
                    .saturating_mul(60_000),
                max,
            ),
            _ => clamp_ttl(request.ttl_ms, max),
        };
        let user = self
            .records
            .users
            .get(user_id)?
            .ok_or(AccountError::AuthenticationFailed)?;
        self.issue_for(
            user_id,
            user.value.password_version,
            TokenRequest { ttl_ms, ..request },
        )
    }

    /// A new token for `user_id` under password version `version`; refused when the password is
    /// no longer that version once the token is stored (it is then removed again).
    pub(super) fn issue_for(
        &self,
        user_id: &str,
        version: u64,
        request: TokenRequest,
    ) -> Result<IssuedToken, AccountError> {
        let name = || match request.kind {
            TokenKind::Kubeconfig => kubeconfig_name(user_id, &request.cluster_id),
            _ => format!("token-{}", random_suffix()),
        };
        let secret = random_token(secrets::TOKEN_LENGTH);
        let created = unix_now();
        let expires_at = match request.ttl_ms {
            0 => 0,
            ttl => created.saturating_add((ttl + 999) / 1000),
        };
        let made = Token {
            name: String::new(),
            secret_hash: hash_token_secret(&secret),
            user_id: user_id.to_string(),
            created,
            expires_at,
            password_version: version,
            kind: request.kind,
            description: request.description.clone(),
            ttl_ms: request.ttl_ms,
            cluster_id: request.cluster_id.clone(),
        };
        let (name, token) = self.records.tokens.create_generated(name, |name| Token {
            name: name.to_string(),
            ..made.clone()
        })?;
        self.token_index_add(user_id, &name);
        // Checked after the write: a reset that lands before it is seen here; one that lands after
        // makes the token invalid anyway (its version is old).
        if !self.current_version_is(user_id, version)? {
            self.records.tokens.delete(&name)?;
            return Err(AccountError::PasswordChanged);
        }
        self.sweep_soon(1);
        Ok(IssuedToken {
            token: format!("{name}:{secret}"),
            view: TokenView::of(&token),
        })
    }

    fn current_version_is(&self, user_id: &str, version: u64) -> Result<bool, StoreError> {
        let user = self.records.users.get(user_id)?;
        Ok(user.is_some_and(|u| u.value.password_version == version))
    }

    /// The caller a `token-name:secret` string belongs to, if it is valid: unexpired, issued under
    /// its user's current password, its user enabled, and — for a token of one cluster — used for
    /// that cluster (`cluster`: the one the request's URL names).
    pub fn authenticate(&self, presented: &str, cluster: Option<&str>) -> Option<Caller> {
        let (name, secret) = presented.split_once(':')?;
        let hash = hash_token_secret(secret);
        let token = self.records.tokens.get(name).ok()??.value;
        if !same_hash(&token.secret_hash, &hash) || token.expired(unix_now()) {
            return None;
        }
        if !token.cluster_id.is_empty() && cluster != Some(token.cluster_id.as_str()) {
            return None;
        }
        let user = self.records.users.get(&token.user_id).ok()??.value;
        if user.password_version != token.password_version || !user.enabled {
            return None;
        }
        Some(Caller {
            user_id: user.id,
            username: user.username,
            token_name: token.name,
            derived: token.kind != TokenKind::Session,
        })
    }

    /// `user_id`'s tokens that can still be used: those the token index names for it, each read.
    pub fn tokens_of(&self, user_id: &str) -> Result<Vec<TokenView>, AccountError> {
        let version = self
            .records
            .users
            .get(user_id)?
            .map(|u| u.value.password_version);
        let mut views = Vec::new();
        for name in self.token_names_of(user_id)? {
            let Some(token) = self.records.tokens.get(&name)? else {
                continue;
            };
            let token = token.value;
            if token.user_id == user_id && Some(token.password_version) == version {
                views.push(TokenView::of(&token));
            }
        }
        views.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(views)
    }

    /// `user_id`'s token `name`; another user's is not found.
    pub fn token_of(&self, user_id: &str, name: &str) -> Result<TokenView, AccountError> {
        let not_found = || AccountError::TokenNotFound(name.to_string());
        let token = self.records.tokens.get(name)?.ok_or_else(not_found)?.value;
        let version = self
            .records
            .users
            .get(user_id)?
            .map(|u| u.value.password_version);
        if token.user_id != user_id || Some(token.password_version) != version {
            return Err(not_found());
        }
        Ok(TokenView::of(&token))
    }

    /// The names of `user_id`'s tokens (and maybe of some since deleted), from the token index:
    /// built from every token when there is none, then kept as tokens come and go.
    fn token_names_of(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        if let Some(index) = crate::support::lock(&self.token_index).as_ref() {
            return Ok(index.names_of(user_id));
        }
        let mut index = TokenIndex::default();
        for (name, token) in self.records.tokens.list()? {
            index.add(&token.value.user_id, &name);
        }
        let names = index.names_of(user_id);
        *crate::support::lock(&self.token_index) = Some(index);
        Ok(names)
    }

    fn token_index_add(&self, user_id: &str, name: &str) {
        if let Some(index) = crate::support::lock(&self.token_index).as_mut() {
            index.add(user_id, name);
        }
    }

    fn token_index_remove(&self, name: &str) {
        if let Some(index) = crate::support::lock(&self.token_index).as_mut() {
            index.remove(name);
        }
    }

    /// Forgets the token index (rebuilt at its next use), after changes to many tokens.
    pub(super) fn token_index_reset(&self) {
        *crate::support::lock(&self.token_index) = None;
    }

    /// Follows token `name` after another writer changed it: added to the index if it exists.
    pub(super) fn token_changed(&self, name: &str) {
        match self.records.tokens.get(name) {
            Ok(Some(token)) => self.token_index_add(&token.value.user_id, name),
            Ok(None) => self.token_index_remove(name),
            Err(_) => self.token_index_reset(),
        }
    }

    /// Deletes the caller's token `name`; the session making the request is refused (logout ends
    /// it).
    pub fn delete_token(&self, caller: &Caller, name: &str) -> Result<(), AccountError> {
        self.token_of(&caller.user_id, name)?;
        if name == caller.token_name && !caller.derived {
            return Err(AccountError::CurrentSession);
        }
        self.records.tokens.delete(name)?;
        self.token_index_remove(name);
        Ok(())
    }

    /// Ends the caller's own token.
    pub fn logout(&self, caller: &Caller) -> Result<(), AccountError> {
        self.records.tokens.delete(&caller.token_name)?;
        self.token_index_remove(&caller.token_name);
        tracing::info!("user {} logged out", caller.username);
        Ok(())
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
                !t.value.expired(now)
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
            self.token_index_remove(name);
        }
        crate::support::lock(&self.sweep).tokens = usable.len();
        if !doomed.is_empty() {
            tracing::debug!("deleted {} unusable token(s)", doomed.len());
        }
        Ok(doomed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_clamped_as_rancher_does() {
        let day = 24 * 60;
        assert_eq!(clamp_ttl(0, 129_600), 129_600 * 60_000);
        assert_eq!(clamp_ttl(-5, 129_600), 129_600 * 60_000);
        assert_eq!(clamp_ttl(60_000, 129_600), 60_000);
        assert_eq!(clamp_ttl(i64::MAX, day), day * 60_000);
        assert_eq!(clamp_ttl(0, 0), 0, "no maximum: never expires");
        assert_eq!(clamp_ttl(5_000, 0), 5_000);
    }

    #[test]
    fn kubeconfig_tokens_are_named_as_rancher_names_them() {
        let name = kubeconfig_name("u-abcde", "");
        assert!(
            name.starts_with("kubeconfig-u-abcde") && name.len() == 23,
            "{name}"
        );
        let scoped = kubeconfig_name("u-abcde", "c-xyz12");
        assert!(scoped.starts_with("kubeconfig-u-abcde.c-xyz12"), "{scoped}");
    }
}
