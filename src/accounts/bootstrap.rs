//! The bootstrap password and the welcome banner, as Rancher has them: a generated password is kept
//! (as Rancher keeps it in its `bootstrap-secret`) until first login completes, so the banner can
//! show it at every start until then, and a start that fails after printing it loses nothing.
//! `corral reset-password` sets a new admin password from outside the server.

use std::sync::Arc;

use super::state::Records;
use super::{FIRST_LOGIN, ResetError};
use crate::secrets::{TOKEN_LENGTH, hash_password, random_token};
use crate::store::{Backend, Key, StoreError, create_once};

/// Where a generated bootstrap password is kept (Rancher's `cattle-system/bootstrap-secret`).
pub const BOOTSTRAP: Key = Key::secret("bootstrap-password", "cattle-system/bootstrap-secret");

/// The kept bootstrap password, if there is one.
pub fn kept(store: &dyn Backend) -> Option<String> {
    let (bytes, _) = store.read(&BOOTSTRAP).ok()??;
    let password = String::from_utf8(bytes).ok()?.trim().to_string();
    (!password.is_empty()).then_some(password)
}

/// Keeps a generated bootstrap password (0600) until first login, unless one is kept already: the
/// password kept afterwards (ours, or that of a replica that started first).
pub fn keep(store: &dyn Backend, password: &str) -> Result<String, StoreError> {
    let kept = create_once(store, &BOOTSTRAP, password.as_bytes())?;
    Ok(String::from_utf8_lossy(&kept).trim().to_string())
}

/// First login is done (or the password was reset): the bootstrap password is no longer kept.
pub fn forget(store: &dyn Backend) -> Result<(), StoreError> {
    store.delete(&BOOTSTRAP)
}

/// Rancher's welcome banner, one log line per line: with the password while a generated one is
/// kept, else only where to go.
pub fn log_banner(banner_url: &str, generated: Option<&str>) {
    let lines: Vec<String> = match generated {
        Some(password) => vec![
            "A bootstrap password has been generated for your admin user.".into(),
            String::new(),
            format!("Bootstrap Password: {password}"),
            String::new(),
            format!("Use {banner_url}/dashboard/?setup={password} to complete setup in the UI"),
        ],
        None => vec![format!(
            "Use {banner_url}/dashboard/ to complete setup in the UI"
        )],
    };
    tracing::info!("");
    tracing::info!("-----------------------------------------");
    tracing::info!("Welcome to Rancher");
    for line in lines {
        tracing::info!("{line}");
    }
    tracing::info!("-----------------------------------------");
    tracing::info!("");
}

/// What `corral reset-password` did: the admin's id and its new password.
pub struct Reset {
    pub user_id: String,
    pub password: String,
}

/// Sets a new, generated password for `admin` and revokes its login tokens (sessions, API tokens,
/// kubeconfigs): whoever knew the old password may hold one. The password's new version is what
/// revokes them, at once, wherever they are checked — a running server (or every replica) included,
/// and logins that were checking the old password when this ran; the tokens are then deleted.
pub fn reset_password(store: Arc<dyn Backend>) -> Result<Reset, ResetError> {
    let (records, existed) = Records::open(store.clone())?;
    if !existed {
        return Err(ResetError::NoSetup);
    }
    let admin = records.user_named("admin")?.ok_or(ResetError::NoAdmin)?;
    let user_id = admin.value.id;
    let password = random_token(TOKEN_LENGTH);
    let hash = hash_password(&password);
    records
        .users
        .update(&user_id, |user| {
            user.password_hash = hash.clone();
            user.must_change_password = true;
            user.password_version += 1;
            Ok::<_, ResetError>(())
        })?
        .ok_or(ResetError::NoAdmin)?;
    records.revoke_tokens(&user_id, None)?;
    // The setup page asks for a new password again only while first login is not done.
    records.change_setting(FIRST_LOGIN, |stored| {
        Ok::<_, ResetError>((stored.is_none().then(|| "true".to_string()), ()))
    })?;
    forget(store.as_ref()).map_err(ResetError::Bootstrap)?;
    Ok(Reset { user_id, password })
}
