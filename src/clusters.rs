//! Downstream clusters and their registration tokens, as `/v3/clusters` and
//! `/v3/clusterregistrationtokens` manage them. One document of the store; tokens are kept only as
//! SHA-256 hashes, so a token is shown once, when it is created.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::secrets::{TOKEN_LENGTH, hash_token_secret, random_suffix, random_token, same_hash};
use crate::store::{Backend, Document, Key, StoreError};
use crate::support::unix_now;

/// Where the clusters are kept; it holds registration-token hashes.
pub const CLUSTERS: Key = Key::secret("clusters.json", "corral/clusters");

/// Most clusters one server keeps (a bound on what an admin script gone wrong can create).
const MAX_CLUSTERS: usize = 10_000;
/// Most registration tokens per cluster; the oldest go first.
const MAX_TOKENS_PER_CLUSTER: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub id: String,
    pub name: String,
    pub created: i64,
    tokens: Vec<StoredToken>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredToken {
    id: String,
    hash: String,
    created: i64,
}

/// A registration token as created: the secret is here once and nowhere else.
#[derive(Debug, Clone)]
pub struct IssuedRegistrationToken {
    pub id: String,
    pub cluster_id: String,
    pub token: String,
    pub created: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster {0} not found")]
    NotFound(String),
    /// A request that is not valid, and why.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot save clusters: {0}")]
    Storage(#[from] StoreError),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ClusterList {
    clusters: Vec<Cluster>,
}

pub struct Clusters {
    document: Document<ClusterList>,
}

impl Clusters {
    pub fn open(store: Arc<dyn Backend>) -> Result<Self, StoreError> {
        let (document, _) = Document::open(store, CLUSTERS)?;
        Ok(Self { document })
    }

    fn read(&self) -> Arc<ClusterList> {
        self.document.read()
    }

    pub fn create(&self, name: &str) -> Result<Cluster, ClusterError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 253 {
            return Err(ClusterError::Invalid(
                "name must be 1 to 253 characters".into(),
            ));
        }
        self.document.update(|doc| {
            if doc.clusters.len() >= MAX_CLUSTERS {
                return Err(ClusterError::Invalid(format!(
                    "at most {MAX_CLUSTERS} clusters"
                )));
            }
            let cluster = Cluster {
                id: format!("c-{}", random_suffix()),
                name: name.to_string(),
                created: unix_now(),
                tokens: Vec::new(),
            };
            doc.clusters.push(cluster.clone());
            Ok(cluster)
        })
    }

    pub fn list(&self) -> Vec<Cluster> {
        self.read().clusters.clone()
    }

    pub fn get(&self, id: &str) -> Option<Cluster> {
        self.read().clusters.iter().find(|c| c.id == id).cloned()
    }

    /// A new registration token for `cluster_id`.
    pub fn create_token(&self, cluster_id: &str) -> Result<IssuedRegistrationToken, ClusterError> {
        let token = random_token(TOKEN_LENGTH);
        let created = unix_now();
        let id = format!("crt-{}", random_suffix());
        self.document.update(|doc| {
            let cluster = doc
                .clusters
                .iter_mut()
                .find(|c| c.id == cluster_id)
                .ok_or_else(|| ClusterError::NotFound(cluster_id.to_string()))?;
            cluster.tokens.push(StoredToken {
                id: id.clone(),
                hash: hash_token_secret(&token),
                created,
            });
            let excess = cluster.tokens.len().saturating_sub(MAX_TOKENS_PER_CLUSTER);
            cluster.tokens.drain(..excess);
            Ok::<_, ClusterError>(())
        })?;
        Ok(IssuedRegistrationToken {
            id,
            cluster_id: cluster_id.to_string(),
            token,
            created,
        })
    }

    /// The cluster a registration token belongs to.
    pub fn find_by_token(&self, token: &str) -> Option<Cluster> {
        let hash = hash_token_secret(token);
        self.read()
            .clusters
            .iter()
            .find(|c| c.tokens.iter().any(|t| same_hash(&t.hash, &hash)))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DataDir, FileBackend};

    #[test]
    fn tokens_are_hashed_and_found() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let store = || Arc::new(FileBackend::new(dir.clone())) as Arc<dyn Backend>;
        let clusters = Clusters::open(store()).unwrap();
        let cluster = clusters.create("lab").unwrap();
        assert!(cluster.id.starts_with("c-"));
        let token = clusters.create_token(&cluster.id).unwrap();
        assert_eq!(clusters.find_by_token(&token.token).unwrap().id, cluster.id);
        assert!(clusters.find_by_token("nope").is_none());
        let stored = std::fs::read_to_string(dir.clusters()).unwrap();
        assert!(!stored.contains(&token.token));
        let reopened = Clusters::open(store()).unwrap();
        assert_eq!(reopened.find_by_token(&token.token).unwrap().id, cluster.id);
        assert!(matches!(
            clusters.create_token("c-none"),
            Err(ClusterError::NotFound(_))
        ));
    }
}
