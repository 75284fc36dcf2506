//! Downstream clusters and their registration tokens, as `/v3/clusters` and
//! `/v3/clusterregistrationtokens` manage them. One JSON document, rewritten atomically; tokens are
//! kept only as SHA-256 hashes, so a token is shown once, when it is created.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::setup::secrets::{
    TOKEN_LENGTH, hash_token_secret, random_suffix, random_token, same_hash,
};
use crate::state::{DataDir, SECRET_MODE, read_optional, write_atomic};

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
pub struct NewToken {
    pub id: String,
    pub cluster_id: String,
    pub token: String,
    pub created: i64,
}

#[derive(Debug)]
pub enum ClusterError {
    NotFound(String),
    Invalid(String),
    Storage(String),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterError::NotFound(id) => write!(f, "cluster {id} not found"),
            ClusterError::Invalid(reason) => f.write_str(reason),
            ClusterError::Storage(reason) => write!(f, "cannot save clusters: {reason}"),
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Document {
    clusters: Vec<Cluster>,
}

pub struct Clusters {
    path: PathBuf,
    doc: Mutex<Document>,
}

impl Clusters {
    pub fn open(dir: &DataDir) -> Result<Self, String> {
        let path = dir.clusters();
        let doc = match read_optional(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{} is unreadable ({e}); restore it or move it away",
                    path.display()
                )
            })?,
            None => Document::default(),
        };
        Ok(Self {
            path,
            doc: Mutex::new(doc),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Document> {
        self.doc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to a copy, saves it, then makes it current: a failed save changes nothing.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Document) -> Result<T, ClusterError>,
    ) -> Result<T, ClusterError> {
        let mut doc = self.lock();
        let mut next = Document {
            clusters: doc.clusters.clone(),
        };
        let result = change(&mut next)?;
        let json =
            serde_json::to_vec_pretty(&next).map_err(|e| ClusterError::Storage(e.to_string()))?;
        write_atomic(&self.path, &json, SECRET_MODE)
            .map_err(|e| ClusterError::Storage(e.to_string()))?;
        *doc = next;
        Ok(result)
    }

    pub fn create(&self, name: &str) -> Result<Cluster, ClusterError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 253 {
            return Err(ClusterError::Invalid(
                "name must be 1 to 253 characters".into(),
            ));
        }
        self.update(|doc| {
            if doc.clusters.len() >= MAX_CLUSTERS {
                return Err(ClusterError::Invalid(format!(
                    "at most {MAX_CLUSTERS} clusters"
                )));
            }
            let cluster = Cluster {
                id: format!("c-{}", random_suffix()),
                name: name.to_string(),
                created: now(),
                tokens: Vec::new(),
            };
            doc.clusters.push(cluster.clone());
            Ok(cluster)
        })
    }

    pub fn list(&self) -> Vec<Cluster> {
        self.lock().clusters.clone()
    }

    pub fn get(&self, id: &str) -> Option<Cluster> {
        self.lock().clusters.iter().find(|c| c.id == id).cloned()
    }

    /// A new registration token for `cluster_id`.
    pub fn create_token(&self, cluster_id: &str) -> Result<NewToken, ClusterError> {
        let token = random_token(TOKEN_LENGTH);
        let created = now();
        let id = format!("crt-{}", random_suffix());
        self.update(|doc| {
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
            Ok(())
        })?;
        Ok(NewToken {
            id,
            cluster_id: cluster_id.to_string(),
            token,
            created,
        })
    }

    /// The cluster a registration token belongs to.
    pub fn find_by_token(&self, token: &str) -> Option<Cluster> {
        let hash = hash_token_secret(token);
        let doc = self.lock();
        doc.clusters
            .iter()
            .find(|c| c.tokens.iter().any(|t| same_hash(&t.hash, &hash)))
            .cloned()
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_hashed_and_found() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let clusters = Clusters::open(&dir).unwrap();
        let cluster = clusters.create("lab").unwrap();
        assert!(cluster.id.starts_with("c-"));
        let token = clusters.create_token(&cluster.id).unwrap();
        assert_eq!(clusters.find_by_token(&token.token).unwrap().id, cluster.id);
        assert!(clusters.find_by_token("nope").is_none());
        let stored = std::fs::read_to_string(dir.clusters()).unwrap();
        assert!(!stored.contains(&token.token));
        let reopened = Clusters::open(&dir).unwrap();
        assert_eq!(reopened.find_by_token(&token.token).unwrap().id, cluster.id);
        assert!(matches!(
            clusters.create_token("c-none"),
            Err(ClusterError::NotFound(_))
        ));
    }
}
