//! What the accounts service keeps: users, login tokens (hashed) and settings, as one document of the
//! store (`setup.json`, the name it has always had in the data directory).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::Key;

/// Where the accounts document is kept; it holds password and token hashes.
pub const ACCOUNTS: Key = Key::secret("setup.json", "corral/accounts");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub must_change_password: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    pub name: String,
    pub secret_hash: String,
    pub user_id: String,
    pub created: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountState {
    /// When the state was first created (unix seconds): the settings' `created`.
    pub created: i64,
    pub users: Vec<User>,
    pub tokens: Vec<Token>,
    /// Settings set through the API (`server-url`, `first-login`).
    pub settings: BTreeMap<String, String>,
}
