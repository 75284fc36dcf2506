//! The replicas of one installation on a shared store (etcd): each one registers itself under a
//! lease — its id (the address other replicas reach it at) and the hash of its peer token — and goes
//! away from the list when its lease expires. This is what Rancher HA gets from the Endpoints of its
//! peer Service and the shared service-account token; here each replica has a token of its own,
//! random per process, and only its hash is stored, so the store never holds a usable token.
//!
//! For installs that mix in Rancher's own (Go) peers, which all present one shared token and accept
//! whoever presents it, `CORRAL_PEER_TOKEN` gives every replica that token instead: a replica then
//! presents it, and accepts any peer that presents it, registered or not, as Rancher does.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secrets::{TOKEN_LENGTH, hash_token_secret, random_token, same_hash};
use crate::store::{Backend, Changes, LeaseGuard, StoreError};

/// Where replicas register, under the store's prefix (`/corral/corral/replicas/<id>`).
pub const REPLICAS_PREFIX: &str = "corral/replicas/";
/// How long a replica stays listed after its last renewal (it renews every third of this).
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// A replica as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// `HOST:PORT` where the other replicas reach its HTTPS port; its peer id.
    pub id: String,
    /// SHA-256 of the token it presents as a peer (`X-API-Tunnel-Token`).
    #[serde(rename = "tokenHash")]
    pub token_hash: String,
}

/// This replica's membership.
pub struct Replicas {
    store: Arc<dyn Backend>,
    id: String,
    token: String,
    /// Whether `token` is the installation's shared token (`CORRAL_PEER_TOKEN`).
    shared: bool,
    _lease: LeaseGuard,
}

impl Replicas {
    /// Registers this replica as `id` (`HOST:PORT`), with the installation's `shared` peer token or
    /// one of its own. `None` when the store keeps no leases (the data directory: a single replica).
    pub fn join(
        store: Arc<dyn Backend>,
        id: &str,
        shared: Option<&str>,
    ) -> Result<Option<Self>, StoreError> {
        let token = shared.map_or_else(|| random_token(TOKEN_LENGTH), str::to_string);
        let entry = Replica {
            id: id.to_string(),
            token_hash: hash_token_secret(&token),
        };
        let bytes = serde_json::to_vec(&entry).expect("a replica serializes");
        let path = format!("{REPLICAS_PREFIX}{}", path_segment(id));
        let Some(lease) = store.keep_alive(&path, &bytes, LEASE_TTL)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            store,
            id: id.to_string(),
            token,
            shared: shared.is_some(),
            _lease: lease,
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The token this replica presents to its peers.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Every other registered replica.
    pub fn others(&self) -> Vec<Replica> {
        self.store
            .list(REPLICAS_PREFIX)
            .into_iter()
            .filter_map(|(_, bytes)| serde_json::from_slice::<Replica>(&bytes).ok())
            .filter(|replica| replica.id != self.id)
            .collect()
    }

    /// Whether `id` is another registered replica and `token` is its peer token — or, with a
    /// shared token, whether `token` is it (any other peer id, as Rancher's peers accept).
    pub fn authenticates(&self, id: &str, token: &str) -> bool {
        let hash = hash_token_secret(token);
        if self.shared {
            return !id.is_empty()
                && id != self.id
                && same_hash(&hash_token_secret(&self.token), &hash);
        }
        self.others()
            .iter()
            .any(|replica| replica.id == id && same_hash(&replica.token_hash, &hash))
    }

    /// Replicas coming and going in the store (`None`: the store does not tell).
    pub fn changes(&self) -> Option<Changes> {
        Changes::of(self.store.as_ref(), |path| {
            path.starts_with(REPLICAS_PREFIX)
        })
    }
}

/// An id as one store path segment (`[` `]` `:` of IPv6 addresses are fine; `/` is not).
fn path_segment(id: &str) -> String {
    id.replace('/', "%2F")
}
