//! Downstream clusters, their registration tokens and nodes, as `/v3/clusters`,
//! `/v3/clusterregistrationtokens` and `/v3/nodes` show them. One store key per cluster, per token
//! and per node (a write costs what it changed, however many there are), clusters and tokens read
//! from memory; tokens are kept only as SHA-256 hashes, so a token is shown once, when it is
//! created.

mod params;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

pub use params::{AgentParams, ClusterParams, CustomConfig, NodeParams, ParamsError};

use crate::secrets::{TOKEN_LENGTH, hash_token_secret, random_suffix, random_token, same_hash};
use crate::store::{Backend, Changes, Collection, Key, Kind, StoreError, kind};
use crate::support::unix_now;

/// Where each cluster is kept: one key each.
pub const CLUSTER_OBJECTS: Kind = kind!("clusters", secret);

/// Where each registration token's hash is kept: `<cluster>:<token>`, as Rancher names them.
pub const REGISTRATION_TOKENS: Kind = kind!("clusterregistrationtokens", secret);

/// Where each node is kept: `<cluster>:<node>`.
pub const NODES: Kind = kind!("nodes", secret);

/// The one document every cluster was kept in before (etcd takes at most 1.5 MiB in one write:
/// about 6,000 clusters): moved to a key each by the first start that finds it.
pub const LEGACY_CLUSTERS: Key = Key::secret("clusters.json", "corral/clusters");

/// Most clusters one installation keeps (a bound on what an admin script gone wrong can create):
/// twice the 10,000 `benches/scale.sh` runs with.
const MAX_CLUSTERS: usize = 20_000;
/// Most nodes kept per cluster.
const MAX_NODES_PER_CLUSTER: usize = 1_000;
/// Most registration tokens per cluster; the oldest go first.
const MAX_TOKENS_PER_CLUSTER: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub id: String,
    pub name: String,
    pub created: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A cluster as an earlier version kept it, its registration tokens and nodes inside (in its key,
/// or in the one document before that): read to move them to keys of their own.
#[derive(Debug, Serialize, Deserialize)]
struct EmbeddingCluster {
    #[serde(flatten)]
    cluster: Cluster,
    #[serde(default)]
    tokens: Vec<StoredToken>,
    #[serde(default)]
    nodes: Vec<Node>,
}

/// What a cluster agent advertised on one tunnel session (Rancher's `status.apiEndpoint`,
/// `status.caCert` and service-account token), kept for the other replicas while the session lives:
/// a replica proxying through a peer uses what the session its dial takes advertised (two agents of
/// one cluster, or one that reconnected, may advertise other CAs and tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advertised {
    pub session: i64,
    /// The replica holding the session: when it is gone, so is the session.
    #[serde(default)]
    pub replica: String,
    #[serde(flatten)]
    pub params: ClusterParams,
}

/// On a store shared by replicas, what each agent session advertised: `<cluster>:<session>`.
pub const AGENT_SESSIONS: Kind = kind!("cluster-agents", secret);

/// A node of a cluster, as its node agent advertised it (cattle-node-agent; Rancher creates the node
/// on register).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `m-` + 12 hex digits (see [`NodeParams::node_id`]).
    pub id: String,
    pub cluster_id: String,
    pub requested_hostname: String,
    pub address: String,
    pub internal_address: String,
    pub etcd: bool,
    pub control_plane: bool,
    pub worker: bool,
    pub created: i64,
}

impl Node {
    /// The node's tunnel client key and API id: `<cluster>:<node>`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.cluster_id, self.id)
    }
}

/// What an agent advertised that is not saved yet.
#[derive(Debug, Clone)]
enum Unsaved {
    Cluster(String, Advertised),
    Node(Node),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredToken {
    /// `crt-` and five random characters.
    id: String,
    /// Empty in what an earlier version kept inside the cluster.
    #[serde(default)]
    cluster_id: String,
    hash: String,
    /// Seconds since the epoch, as listed.
    created: i64,
    /// Microseconds since the epoch: which of a cluster's tokens are the oldest, when more than
    /// [`MAX_TOKENS_PER_CLUSTER`] push them out (many are made within a second).
    #[serde(default)]
    created_micros: i64,
}

impl StoredToken {
    /// Its id in the store and the API: `<cluster>:<token>`.
    fn key(&self) -> String {
        format!("{}:{}", self.cluster_id, self.id)
    }

    fn listed(&self) -> RegistrationToken {
        RegistrationToken {
            id: self.id.clone(),
            cluster_id: self.cluster_id.clone(),
            created: self.created,
        }
    }
}

/// A registration token as listed: its secret is not kept, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationToken {
    pub id: String,
    pub cluster_id: String,
    pub created: i64,
}

/// What an update of a cluster changes (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct ClusterChange {
    pub name: Option<String>,
    pub description: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A cluster's description holds at most this many bytes.
const MAX_DESCRIPTION: usize = 1024;
/// Labels a cluster holds at most; each as Kubernetes bounds them (key ≤ 317 bytes: a 253-byte
/// prefix, `/`, a 63-byte name; value ≤ 63).
const MAX_LABELS: usize = 64;
/// Bytes of annotation keys and values a cluster holds at most. Kubernetes allows 256 KiB per
/// object; every replica keeps every cluster in memory here, so a cluster gets far less.
const MAX_ANNOTATION_BYTES: usize = 4096;

impl ClusterChange {
    /// Sets what the change gives of the description, labels and annotations.
    fn apply_details(&self, cluster: &mut Cluster) {
        if let Some(description) = &self.description {
            cluster.description = description.clone();
        }
        if let Some(labels) = &self.labels {
            cluster.labels = labels.clone();
        }
        if let Some(annotations) = &self.annotations {
            cluster.annotations = annotations.clone();
        }
    }

    /// Refuses what would let one cluster grow without bound.
    pub fn check_bounds(&self) -> Result<(), ClusterError> {
        let invalid = |what: String| Err(ClusterError::Invalid(what));
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION)
        {
            return invalid(format!(
                "description must be at most {MAX_DESCRIPTION} bytes"
            ));
        }
        if let Some(labels) = &self.labels {
            if labels.len() > MAX_LABELS {
                return invalid(format!("at most {MAX_LABELS} labels"));
            }
            if let Some((key, _)) = labels.iter().find(|(k, v)| k.len() > 317 || v.len() > 63) {
                return invalid(format!(
                    "label {key:?}: a label's key must be at most 317 bytes and its value at most 63"
                ));
            }
        }
        let annotation_bytes = self
            .annotations
            .as_ref()
            .map_or(0, |a| a.iter().map(|(k, v)| k.len() + v.len()).sum());
        if annotation_bytes > MAX_ANNOTATION_BYTES {
            return invalid(format!(
                "annotations must hold at most {MAX_ANNOTATION_BYTES} bytes of keys and values"
            ));
        }
        Ok(())
    }
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
    #[error("clusters.management.cattle.io \"{0}\" not found")]
    NotFound(String),
    #[error("clusterregistrationtokens.management.cattle.io \"{0}\" not found")]
    TokenNotFound(String),
    /// A request that is not valid, and why.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot save clusters: {0}")]
    Storage(#[from] StoreError),
}

#[derive(Debug, Deserialize)]
struct ClusterList {
    clusters: Vec<EmbeddingCluster>,
}

pub struct Clusters {
    objects: Collection<Cluster>,
    tokens: Collection<StoredToken>,
    node_objects: Collection<Node>,
    /// Every cluster and registration token, as written here or seen changed on the store: reads
    /// parse nothing.
    cache: RwLock<Cached>,
    /// On a store with dynamic paths (etcd), what agent sessions advertised is one key each
    /// ([`AGENT_SESSIONS`]); on the data directory it is not kept (one server: it holds every
    /// session itself).
    store: Arc<dyn Backend>,
    agent_sessions: Collection<Advertised>,
    /// This replica's id, on a store shared by replicas.
    replica: String,
    /// What agents connected to this replica advertised, by cluster id and session: used at once,
    /// saved soon, forgotten when the session ends.
    advertised: DashMap<(String, i64), ClusterParams>,
    /// Nodes whose agents connected to this replica, by `<cluster>:<node>`: listed at once.
    nodes_seen: DashMap<String, Node>,
    /// What agents advertised that is not saved yet, by client key (saved together, by one task
    /// at a time).
    unsaved: std::sync::Mutex<HashMap<String, Unsaved>>,
    saving: AtomicBool,
}

/// How long a save of advertised params waits for others to batch with.
const SAVE_BATCH_WAIT: Duration = Duration::from_millis(100);
/// How long a save that failed (the store away) waits before it tries again: at first, and at most
/// (doubling in between, so that an outage is not logged every second).
const SAVE_RETRY_FIRST: Duration = Duration::from_secs(1);
const SAVE_RETRY_MAX: Duration = Duration::from_secs(30);

impl Clusters {
    /// The clusters on `store`; `replica` is this replica's id when replicas share it.
    pub fn open(store: Arc<dyn Backend>, replica: Option<&str>) -> Result<Self, StoreError> {
        let clusters = Self {
            objects: Collection::new(store.clone(), CLUSTER_OBJECTS),
            tokens: Collection::new(store.clone(), REGISTRATION_TOKENS),
            node_objects: Collection::new(store.clone(), NODES),
            cache: RwLock::new(Cached::default()),
            agent_sessions: Collection::new(store.clone(), AGENT_SESSIONS),
            replica: replica.unwrap_or_default().to_string(),
            store,
            advertised: DashMap::new(),
            nodes_seen: DashMap::new(),
            unsaved: Default::default(),
            saving: AtomicBool::new(false),
        };
        clusters.move_embedded()?;
        clusters.reload()?;
        clusters.sweep_orphans()?;
        Ok(clusters)
    }

    /// Follows the clusters other replicas change, for as long as these clusters last.
    pub fn follow_store(self: &Arc<Self>) {
        let Some(mut changes) = Changes::of(self.store.as_ref(), |path| {
            path.starts_with(CLUSTER_OBJECTS.prefix) || path.starts_with(REGISTRATION_TOKENS.prefix)
        }) else {
            return;
        };
        let clusters = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(path) = changes.next_path().await {
                let Some(clusters) = clusters.upgrade() else {
                    return;
                };
                let path = path.unwrap_or_default();
                let refreshed = match (
                    CLUSTER_OBJECTS.id_of(&path),
                    REGISTRATION_TOKENS.id_of(&path),
                ) {
                    (Some(id), _) => clusters.refresh(id),
                    (_, Some(key)) => clusters.refresh_token(key),
                    // Lagged: everything again.
                    _ => clusters.reload(),
                };
                if let Err(e) = refreshed {
                    tracing::warn!("clusters: cannot read a change: {e}");
                }
            }
        });
    }

    /// Reads every cluster and registration token again.
    fn reload(&self) -> Result<(), StoreError> {
        let mut all = Cached::default();
        for (_, stored) in self.objects.list()? {
            all.insert(stored.value);
        }
        for (_, stored) in self.tokens.list()? {
            all.insert_token(stored.value);
        }
        *self.cached_mut() = all;
        Ok(())
    }

    /// Reads registration token `key` again (gone: forgotten).
    fn refresh_token(&self, key: &str) -> Result<(), StoreError> {
        let stored = self.tokens.get(key)?;
        let mut cache = self.cached_mut();
        match stored {
            Some(stored) => cache.insert_token(stored.value),
            None => cache.remove_token(key),
        }
        Ok(())
    }

    /// Reads cluster `id` again (gone: forgotten).
    fn refresh(&self, id: &str) -> Result<(), StoreError> {
        match self.objects.get(id)? {
            Some(stored) => self.remember(stored.value),
            None => self.forget(id),
        }
        Ok(())
    }

    fn remember(&self, cluster: Cluster) {
        let mut cache = self.cached_mut();
        cache.insert(cluster);
    }

    fn forget(&self, id: &str) {
        let mut cache = self.cached_mut();
        cache.remove(id);
    }

    fn cached(&self) -> std::sync::RwLockReadGuard<'_, Cached> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn cached_mut(&self) -> std::sync::RwLockWriteGuard<'_, Cached> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to stored cluster `id` (compare-and-swap) and remembers the result.
    fn change<R>(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Cluster) -> Result<R, ClusterError>,
    ) -> Result<R, ClusterError> {
        let mut changed = None;
        let result = self
            .objects
            .update(id, |cluster| {
                let result = change(cluster)?;
                changed = Some(cluster.clone());
                Ok::<_, ClusterError>(result)
            })?
            .ok_or_else(|| ClusterError::NotFound(id.to_string()))?;
        if let Some(cluster) = changed {
            self.remember(cluster);
        }
        Ok(result)
    }

    /// What `cluster_id`'s agent advertised on the session a dial takes, the first of `sessions`
    /// (oldest first, as the route lists them): from an agent connected here, else as saved by the
    /// replica holding it. `None` until that session's is known.
    pub fn agent_params(&self, cluster_id: &str, sessions: &[i64]) -> Option<ClusterParams> {
        self.agent_params_many(&[(cluster_id, sessions)]).pop()?
    }

    /// [`Clusters::agent_params`] of many clusters (each with the sessions of its route), in as few
    /// requests to the store as it can (a list of thousands of clusters).
    pub fn agent_params_many(&self, wanted: &[(&str, &[i64])]) -> Vec<Option<ClusterParams>> {
        let mut found: Vec<Option<ClusterParams>> = wanted
            .iter()
            .map(|(cluster_id, sessions)| {
                let session = *sessions.first()?;
                let here = self.advertised.get(&(cluster_id.to_string(), session))?;
                Some(here.clone())
            })
            .collect();
        if !self.store.has_paths() {
            return found;
        }
        let (positions, ids): (Vec<usize>, Vec<String>) = wanted
            .iter()
            .enumerate()
            .filter(|(i, _)| found[*i].is_none())
            .filter_map(|(i, (cluster_id, sessions))| {
                Some((i, session_id(cluster_id, *sessions.first()?)))
            })
            .unzip();
        match self.agent_sessions.get_many(&ids) {
            Ok(saved) => {
                for (i, saved) in positions.into_iter().zip(saved) {
                    found[i] = saved.map(|s| s.params);
                }
            }
            Err(e) => tracing::warn!("cannot read what agents advertised: {e}"),
        }
        found
    }

    /// An agent of `cluster_id` connected here, on tunnel session `session`, advertising `params`:
    /// used at once, and for the other replicas saved (in the background, batched, retried while
    /// the store is away) until the session ends.
    pub fn record_agent(self: &Arc<Self>, cluster_id: &str, session: i64, params: ClusterParams) {
        self.advertised
            .insert((cluster_id.to_string(), session), params.clone());
        if !self.store.has_paths() {
            return;
        }
        let advertised = Advertised {
            session,
            replica: self.replica.clone(),
            params,
        };
        self.save_soon(
            session_id(cluster_id, session),
            Unsaved::Cluster(cluster_id.to_string(), advertised),
        );
    }

    /// The tunnel session `session` of `cluster_id`'s agent ended here: what it advertised is
    /// forgotten, here and in the store.
    pub fn forget_agent(&self, cluster_id: &str, session: i64) {
        self.advertised.remove(&(cluster_id.to_string(), session));
        if !self.store.has_paths() {
            return;
        }
        let id = session_id(cluster_id, session);
        crate::support::lock(&self.unsaved).remove(&id);
        if let Err(e) = self.agent_sessions.delete(&id) {
            tracing::debug!("what session {id} advertised stays until the next sweep: {e}");
        }
    }

    /// Deletes what sessions advertised that no longer exist: sessions of replicas that are gone
    /// (`live` says which are registered), this replica's own sessions from before it restarted,
    /// and what an earlier version kept one key per cluster.
    pub fn sweep_agent_sessions(&self, live: impl Fn(&str) -> bool) -> Result<usize, StoreError> {
        if !self.store.has_paths() {
            return Ok(0);
        }
        // Read a page at a time (every tunnel of every replica has one): only the doomed ids stay.
        let mut doomed = Vec::new();
        self.agent_sessions.for_each_page(|page| {
            for (id, saved) in page {
                let gone = match id.split_once(':') {
                    None => true,
                    Some((cluster, _)) if saved.value.replica == self.replica => !self
                        .advertised
                        .contains_key(&(cluster.to_string(), saved.value.session)),
                    Some(_) => !live(&saved.value.replica),
                };
                if gone {
                    doomed.push(id);
                }
            }
            Ok(())
        })?;
        for id in &doomed {
            self.agent_sessions.delete(id)?;
        }
        Ok(doomed.len())
    }

    /// A node agent of `cluster_id` connected here advertising `params` (Rancher creates or updates
    /// the node on register): listed at once, saved in the background as [`Clusters::record_agent`]
    /// saves. Returns the node.
    pub fn record_node(self: &Arc<Self>, cluster_id: &str, params: &NodeParams) -> Node {
        let custom = params.custom_config.clone().unwrap_or_default();
        let id = params.node_id();
        // As seen here first: a node agent reconnecting reads nothing from the store.
        let stored = self.node(cluster_id, &id);
        let node = Node {
            created: stored.as_ref().map_or_else(unix_now, |n| n.created),
            id,
            cluster_id: cluster_id.to_string(),
            requested_hostname: params.requested_hostname.clone(),
            address: custom.address,
            internal_address: custom.internal_address,
            etcd: params.etcd,
            control_plane: params.control_plane,
            worker: params.worker,
        };
        self.nodes_seen.insert(node.key(), node.clone());
        if stored.as_ref() != Some(&node) {
            self.save_soon(node.key(), Unsaved::Node(node.clone()));
        }
        node
    }

    fn stored_node(&self, cluster_id: &str, node_id: &str) -> Option<Node> {
        let stored = self.node_objects.get(&format!("{cluster_id}:{node_id}"));
        Some(stored.ok()??.value)
    }

    /// The node `node_id` of `cluster_id`: as seen here, else as saved.
    pub fn node(&self, cluster_id: &str, node_id: &str) -> Option<Node> {
        let seen = self.nodes_seen.get(&format!("{cluster_id}:{node_id}"));
        seen.map(|n| n.clone())
            .or_else(|| self.stored_node(cluster_id, node_id))
    }

    /// The nodes of `cluster_id` as saved (by any replica).
    fn stored_nodes(&self, cluster_id: &str) -> Vec<Node> {
        match self.node_objects.list_prefixed(&format!("{cluster_id}:")) {
            Ok(nodes) => nodes.into_iter().map(|(_, n)| n.value).collect(),
            Err(e) => {
                tracing::warn!("cannot read the nodes of {cluster_id}: {e}");
                Vec::new()
            }
        }
    }

    /// The nodes of `cluster_id`: as saved, and those seen here since.
    pub fn nodes(&self, cluster_id: &str) -> Vec<Node> {
        let mut nodes: HashMap<String, Node> = self
            .stored_nodes(cluster_id)
            .into_iter()
            .map(|n| (n.key(), n))
            .collect();
        for seen in self.nodes_seen.iter() {
            if seen.cluster_id == cluster_id {
                nodes.insert(seen.key().clone(), seen.value().clone());
            }
        }
        let mut nodes: Vec<Node> = nodes.into_values().collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes
    }

    fn save_soon(self: &Arc<Self>, key: String, unsaved: Unsaved) {
        crate::support::lock(&self.unsaved).insert(key, unsaved);
        if !self.saving.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().save_advertised());
        }
    }

    async fn save_advertised(self: Arc<Self>) {
        let mut retry = SAVE_RETRY_FIRST;
        loop {
            tokio::time::sleep(SAVE_BATCH_WAIT).await;
            let batch = std::mem::take(&mut *crate::support::lock(&self.unsaved));
            if batch.is_empty() {
                self.saving.store(false, Ordering::Release);
                // A record made between the take and the flag: save it too.
                if crate::support::lock(&self.unsaved).is_empty()
                    || self.saving.swap(true, Ordering::AcqRel)
                {
                    return;
                }
                continue;
            }
            if let Err(e) = self.save_each(&batch) {
                tracing::warn!(
                    "cannot save what {} agent(s) advertised (retrying in {retry:?}): {e}",
                    batch.len()
                );
                {
                    let mut unsaved = crate::support::lock(&self.unsaved);
                    for (key, pending) in batch {
                        unsaved.entry(key).or_insert(pending);
                    }
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(SAVE_RETRY_MAX);
                continue;
            }
            retry = SAVE_RETRY_FIRST;
        }
    }

    /// Saves a batch one key per object: a failed key fails the batch, which is retried.
    fn save_each(&self, batch: &HashMap<String, Unsaved>) -> Result<(), StoreError> {
        for unsaved in batch.values() {
            match unsaved {
                Unsaved::Cluster(cluster_id, advertised) => {
                    // The session may have ended while this waited: then nothing is saved.
                    let live = (cluster_id.clone(), advertised.session);
                    if !self.advertised.contains_key(&live) {
                        continue;
                    }
                    let id = session_id(cluster_id, advertised.session);
                    self.agent_sessions.create_once(&id, advertised)?;
                }
                Unsaved::Node(node) => {
                    // Its cluster deleted meanwhile: nothing to keep it for.
                    if self.get(&node.cluster_id).is_none() {
                        continue;
                    }
                    let known = self.node_objects.get(&node.key())?.is_some();
                    if !known && self.stored_nodes(&node.cluster_id).len() >= MAX_NODES_PER_CLUSTER
                    {
                        tracing::warn!(
                            "cluster {} has {MAX_NODES_PER_CLUSTER} nodes: {} is not kept",
                            node.cluster_id,
                            node.id
                        );
                        continue;
                    }
                    self.node_objects.change(&node.key(), |stored| {
                        let changed = stored != Some(node);
                        Ok::<_, StoreError>((changed.then(|| node.clone()), ()))
                    })?;
                }
            }
        }
        Ok(())
    }

    /// A new cluster named as `change` says (its id when it gives no name or an empty one), with
    /// the rest of `change`: one write.
    pub fn create(&self, change: &ClusterChange) -> Result<Cluster, ClusterError> {
        let name = change.name.as_deref().unwrap_or_default().trim();
        if !fits_name(name) {
            return Err(ClusterError::Invalid(
                "name must be at most 253 characters, none of them control characters".into(),
            ));
        }
        change.check_bounds()?;
        if self.cached().clusters.len() >= MAX_CLUSTERS {
            return Err(ClusterError::Invalid(format!(
                "at most {MAX_CLUSTERS} clusters"
            )));
        }
        // Five random characters collide now and then among thousands of clusters: another is drawn.
        let (_, cluster) = self.objects.create_generated(
            || format!("c-{}", random_suffix()),
            |id| {
                let mut cluster = Cluster {
                    name: if name.is_empty() {
                        id.to_string()
                    } else {
                        name.to_string()
                    },
                    id: id.to_string(),
                    created: unix_now(),
                    description: String::new(),
                    labels: BTreeMap::new(),
                    annotations: BTreeMap::new(),
                };
                change.apply_details(&mut cluster);
                cluster
            },
        )?;
        self.remember(cluster.clone());
        Ok(cluster)
    }

    /// Changes a cluster's name, description, labels or annotations.
    pub fn update(&self, id: &str, change: ClusterChange) -> Result<Cluster, ClusterError> {
        if let Some(name) = &change.name
            && (name.trim().is_empty() || !fits_name(name))
        {
            return Err(ClusterError::Invalid(
                "name must be 1 to 253 characters, none of them control characters".into(),
            ));
        }
        change.check_bounds()?;
        self.change(id, |cluster| {
            if let Some(name) = &change.name {
                cluster.name = name.trim().to_string();
            }
            change.apply_details(cluster);
            Ok(cluster.clone())
        })
    }

    /// Deletes a cluster with its registration tokens (its agents are refused from now on), what
    /// its agents advertised and its nodes. The caller ends its tunnels.
    pub fn delete(&self, id: &str) -> Result<Cluster, ClusterError> {
        let removed = self
            .objects
            .get(id)?
            .ok_or_else(|| ClusterError::NotFound(id.to_string()))?
            .value;
        // The cluster first: its tokens stop counting at once (a token counts only while its
        // cluster is there), and a token or node written meanwhile is swept as an orphan.
        self.objects.delete(id)?;
        self.forget(id);
        self.advertised.retain(|(cluster, _), _| cluster != id);
        self.nodes_seen.retain(|_, node| node.cluster_id != id);
        let prefix = format!("{id}:");
        crate::support::lock(&self.unsaved).retain(|key, _| key != id && !key.starts_with(&prefix));
        for (key, _) in self.tokens.list_prefixed(&prefix)? {
            self.delete_token_key(&key)?;
        }
        for (key, _) in self.node_objects.list_prefixed(&prefix)? {
            self.node_objects.delete(&key)?;
        }
        if self.store.has_paths() {
            for (session, _) in self.agent_sessions.list_prefixed(&prefix)? {
                self.agent_sessions.delete(&session)?;
            }
        }
        Ok(removed)
    }

    /// The registration tokens of `cluster_id`, oldest first.
    pub fn tokens(&self, cluster_id: &str) -> Vec<RegistrationToken> {
        let cached = self.cached();
        if !cached.clusters.contains_key(cluster_id) {
            return Vec::new();
        }
        cached
            .tokens_of(cluster_id)
            .iter()
            .map(|t| t.listed())
            .collect()
    }

    /// Every registration token, by cluster (oldest cluster first), oldest first.
    pub fn all_tokens(&self) -> Vec<RegistrationToken> {
        let clusters = self.list();
        let cached = self.cached();
        clusters
            .iter()
            .flat_map(|c| cached.tokens_of(&c.id))
            .map(|t| t.listed())
            .collect()
    }

    /// Deletes registration token `token_id` of `cluster_id`: agents presenting it are refused.
    pub fn delete_token(&self, cluster_id: &str, token_id: &str) -> Result<(), ClusterError> {
        let key = format!("{cluster_id}:{token_id}");
        if self.get(cluster_id).is_none() || self.tokens.get(&key)?.is_none() {
            return Err(ClusterError::TokenNotFound(key));
        }
        Ok(self.delete_token_key(&key)?)
    }

    fn delete_token_key(&self, key: &str) -> Result<(), StoreError> {
        self.tokens.delete(key)?;
        let mut cache = self.cached_mut();
        cache.remove_token(key);
        Ok(())
    }

    /// The ids of every cluster, read at once.
    pub fn ids(&self) -> std::collections::HashSet<String> {
        self.cached().clusters.keys().cloned().collect()
    }

    /// Every cluster, oldest first.
    pub fn list(&self) -> Vec<Cluster> {
        let cached = self.cached();
        let mut all: Vec<Cluster> = cached.clusters.values().map(|c| (**c).clone()).collect();
        drop(cached);
        all.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        all
    }

    pub fn get(&self, id: &str) -> Option<Cluster> {
        self.cached().clusters.get(id).map(|c| (**c).clone())
    }

    /// A new registration token for `cluster_id`: one write (and one delete per token pushed out
    /// past [`MAX_TOKENS_PER_CLUSTER`], the oldest first).
    pub fn create_token(&self, cluster_id: &str) -> Result<IssuedRegistrationToken, ClusterError> {
        let not_found = || ClusterError::NotFound(cluster_id.to_string());
        if self.objects.get(cluster_id)?.is_none() {
            return Err(not_found());
        }
        let token = random_token(TOKEN_LENGTH);
        let hash = hash_token_secret(&token);
        let created_micros = crate::support::unix_now_micros();
        let (_, stored) = self.tokens.create_generated(
            || format!("{cluster_id}:crt-{}", random_suffix()),
            |key| StoredToken {
                id: key[cluster_id.len() + 1..].to_string(),
                cluster_id: cluster_id.to_string(),
                hash: hash.clone(),
                created: created_micros / 1_000_000,
                created_micros,
            },
        )?;
        let excess = {
            let mut cache = self.cached_mut();
            cache.insert_token(stored.clone());
            let mine = cache.tokens_of(cluster_id);
            let excess = mine.len().saturating_sub(MAX_TOKENS_PER_CLUSTER);
            mine[..excess].iter().map(|t| t.key()).collect::<Vec<_>>()
        };
        for key in excess {
            self.delete_token_key(&key)?;
        }
        // Deleted meanwhile, after it listed its tokens: this one goes too.
        if self.objects.get(cluster_id)?.is_none() {
            self.delete_token_key(&stored.key())?;
            return Err(not_found());
        }
        Ok(IssuedRegistrationToken {
            id: stored.id,
            cluster_id: cluster_id.to_string(),
            token,
            created: stored.created,
        })
    }

    /// The cluster a registration token belongs to: found by the token's hash, one lookup
    /// however many clusters there are (an agent's every connect asks). The lookup's time depends
    /// on the SHA-256 of what was presented, which tells nothing of any token; the match is then
    /// compared in constant time.
    pub fn find_by_token(&self, token: &str) -> Option<Cluster> {
        let hash = hash_token_secret(token);
        let cached = self.cached();
        let stored = cached.tokens.get(cached.by_token_hash.get(&hash)?)?;
        if !same_hash(&stored.hash, &hash) {
            return None;
        }
        let cluster = cached.clusters.get(&stored.cluster_id)?;
        Some((**cluster).clone())
    }

    /// Moves what an earlier version kept inside the clusters to keys of their own, once, losing
    /// nothing, and says so in the log: the one document every cluster was in, then the
    /// registration tokens and nodes inside each cluster's key. Each token and node is written
    /// (one already there is kept) before what held it is rewritten or deleted, so a start cut
    /// short moves them again.
    fn move_embedded(&self) -> Result<(), StoreError> {
        let store = self.store.as_ref();
        if let Some((bytes, _)) = store.read(&LEGACY_CLUSTERS)? {
            let legacy: ClusterList =
                serde_json::from_slice(&bytes).map_err(|source| StoreError::Unreadable {
                    location: store.location(&LEGACY_CLUSTERS),
                    source,
                })?;
            for embedding in &legacy.clusters {
                self.keep_embedded(embedding)?;
                let cluster = &embedding.cluster;
                self.objects.create_once(&cluster.id, cluster)?;
            }
            store.delete(&LEGACY_CLUSTERS)?;
            tracing::info!(
                "moved {} cluster(s) from {} to a key each",
                legacy.clusters.len(),
                store.location(&LEGACY_CLUSTERS)
            );
        }
        let embedding = Collection::<EmbeddingCluster>::new(self.store.clone(), CLUSTER_OBJECTS);
        let (mut clusters, mut tokens, mut nodes) = (0, 0, 0);
        for (id, stored) in embedding.list()? {
            let held = &stored.value;
            if held.tokens.is_empty() && held.nodes.is_empty() {
                continue;
            }
            self.keep_embedded(held)?;
            // Rewritten without them; a writer that came between wrote it without them already.
            match self.objects.write(&id, &held.cluster, Some(stored.version)) {
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
            (clusters, tokens, nodes) = (
                clusters + 1,
                tokens + held.tokens.len(),
                nodes + held.nodes.len(),
            );
        }
        if clusters > 0 {
            tracing::info!(
                "moved {tokens} registration token(s) and {nodes} node(s) of {clusters} cluster(s) \
                 out of their cluster's key, to a key each"
            );
        }
        Ok(())
    }

    /// Writes the tokens and nodes `embedding` holds to keys of their own (one there is kept).
    fn keep_embedded(&self, embedding: &EmbeddingCluster) -> Result<(), StoreError> {
        let cluster_id = &embedding.cluster.id;
        for (position, token) in embedding.tokens.iter().enumerate() {
            let token = StoredToken {
                cluster_id: cluster_id.clone(),
                // Their order was their place in the list: kept, within the second they carry.
                created_micros: token.created * 1_000_000 + position as i64,
                ..token.clone()
            };
            self.tokens.create_once(&token.key(), &token)?;
        }
        for node in &embedding.nodes {
            self.node_objects.create_once(&node.key(), node)?;
        }
        Ok(())
    }

    /// Whether cluster `id` is gone: not in memory, nor on the store (memory may not have seen
    /// another replica's create yet).
    fn cluster_gone(&self, id: &str) -> Result<bool, StoreError> {
        let known = self.cached().clusters.contains_key(id);
        Ok(!known && self.objects.get(id)?.is_none())
    }

    /// Deletes registration tokens and nodes whose cluster is gone (deleted while one was being
    /// written, on another replica or before a crash); how many went.
    pub fn sweep_orphans(&self) -> Result<usize, StoreError> {
        let mut swept = 0;
        let orphan_tokens: Vec<(String, String)> = {
            let cached = self.cached();
            cached
                .tokens
                .iter()
                .filter(|(_, t)| !cached.clusters.contains_key(&t.cluster_id))
                .map(|(key, t)| (key.clone(), t.cluster_id.clone()))
                .collect()
        };
        for (key, cluster_id) in orphan_tokens {
            if self.cluster_gone(&cluster_id)? {
                self.delete_token_key(&key)?;
                swept += 1;
            }
        }
        for (key, node) in self.node_objects.list()? {
            if self.cluster_gone(&node.value.cluster_id)? {
                self.node_objects.delete(&key)?;
                swept += 1;
            }
        }
        if swept > 0 {
            tracing::info!("deleted {swept} registration token(s) and node(s) of deleted clusters");
        }
        Ok(swept)
    }
}

/// The clusters and registration tokens in memory, and each token's key by its hash.
#[derive(Default)]
struct Cached {
    clusters: BTreeMap<String, Arc<Cluster>>,
    /// By `<cluster>:<token>`: a cluster's are a range.
    tokens: BTreeMap<String, StoredToken>,
    by_token_hash: HashMap<String, String>,
}

impl Cached {
    fn insert(&mut self, cluster: Cluster) {
        self.clusters.insert(cluster.id.clone(), Arc::new(cluster));
    }

    /// Its tokens stay until their keys go (deleted with it): until then its id finds none.
    fn remove(&mut self, id: &str) {
        self.clusters.remove(id);
    }

    fn insert_token(&mut self, token: StoredToken) {
        let key = token.key();
        self.remove_token(&key);
        self.by_token_hash.insert(token.hash.clone(), key.clone());
        self.tokens.insert(key, token);
    }

    fn remove_token(&mut self, key: &str) {
        let Some(old) = self.tokens.remove(key) else {
            return;
        };
        if self.by_token_hash.get(&old.hash).is_some_and(|k| k == key) {
            self.by_token_hash.remove(&old.hash);
        }
    }

    /// The tokens of `cluster_id`, oldest first.
    fn tokens_of(&self, cluster_id: &str) -> Vec<&StoredToken> {
        let prefix = format!("{cluster_id}:");
        let mut tokens: Vec<&StoredToken> = self
            .tokens
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(key, _)| key.starts_with(&prefix))
            .map(|(_, token)| token)
            .collect();
        tokens.sort_by(|a, b| (a.created_micros, &a.id).cmp(&(b.created_micros, &b.id)));
        tokens
    }
}

/// Whether a cluster name fits: at most 253 bytes, no control characters.
fn fits_name(name: &str) -> bool {
    name.len() <= 253 && !name.chars().any(char::is_control)
}

/// The id of what session `session` of `cluster_id` advertised.
fn session_id(cluster_id: &str, session: i64) -> String {
    format!("{cluster_id}:{session}")
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
        let clusters = Clusters::open(store(), None).unwrap();
        let named = ClusterChange {
            name: Some("lab".into()),
            ..ClusterChange::default()
        };
        let cluster = clusters.create(&named).unwrap();
        assert!(cluster.id.starts_with("c-"));
        let token = clusters.create_token(&cluster.id).unwrap();
        assert_eq!(clusters.find_by_token(&token.token).unwrap().id, cluster.id);
        assert!(clusters.find_by_token("nope").is_none());
        // A key of its own, holding the hash and not the token.
        let file = tmp
            .path()
            .join("clusterregistrationtokens")
            .join(format!("{}:{}.json", cluster.id, token.id));
        let stored = std::fs::read_to_string(file).unwrap();
        assert!(
            stored.contains(&hash_token_secret(&token.token)) && !stored.contains(&token.token)
        );
        let cluster_file = tmp.path().join(format!("clusters/{}.json", cluster.id));
        assert!(
            !std::fs::read_to_string(cluster_file)
                .unwrap()
                .contains("crt-")
        );
        let reopened = Clusters::open(store(), None).unwrap();
        assert_eq!(reopened.find_by_token(&token.token).unwrap().id, cluster.id);
        assert!(matches!(
            clusters.create_token("c-none"),
            Err(ClusterError::NotFound(_))
        ));
    }

    /// The token index follows every way a token stops counting: deleted, pushed out by newer
    /// ones (at most 100 a cluster), its cluster deleted; another cluster's tokens stay found.
    #[test]
    fn tokens_that_went_are_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let clusters = Clusters::open(Arc::new(FileBackend::new(dir)), None).unwrap();
        let (one, two) = (
            clusters.create(&ClusterChange::default()).unwrap(),
            clusters.create(&ClusterChange::default()).unwrap(),
        );
        let deleted = clusters.create_token(&one.id).unwrap();
        clusters.delete_token(&one.id, &deleted.id).unwrap();
        assert!(clusters.find_by_token(&deleted.token).is_none());
        let oldest = clusters.create_token(&one.id).unwrap();
        let newest: Vec<_> = (0..MAX_TOKENS_PER_CLUSTER)
            .map(|_| clusters.create_token(&one.id).unwrap())
            .collect();
        assert!(
            clusters.find_by_token(&oldest.token).is_none(),
            "pushed out"
        );
        assert_eq!(clusters.find_by_token(&newest[0].token).unwrap().id, one.id);
        let other = clusters.create_token(&two.id).unwrap();
        clusters.delete(&one.id).unwrap();
        assert!(clusters.find_by_token(&newest[99].token).is_none());
        assert_eq!(clusters.find_by_token(&other.token).unwrap().id, two.id);
    }

    /// The one document of before moves to a key per cluster at the first start, losing nothing
    /// (tokens and nodes included), and is gone after; a second start changes nothing.
    #[test]
    fn the_clusters_document_moves_to_a_key_each() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let store = Arc::new(FileBackend::new(dir.clone())) as Arc<dyn Backend>;
        let secret = "legacy-registration-token";
        let legacy = serde_json::json!({"clusters": [
            {"id": "c-aaaaa", "name": "one", "created": 1, "tokens": [
                {"id": "crt-aaaaa", "hash": hash_token_secret(secret), "created": 1}]},
            {"id": "c-bbbbb", "name": "two", "created": 2, "labels": {"env": "lab"}, "tokens": [],
             "nodes": [{"id": "m-0123456789ab", "clusterId": "c-bbbbb", "requestedHostname": "n1",
                "address": "10.0.0.1", "internalAddress": "", "etcd": false, "controlPlane": false,
                "worker": true, "created": 3}]}
        ]});
        let bytes = serde_json::to_vec(&legacy).unwrap();
        store.write(&LEGACY_CLUSTERS, &bytes, None).unwrap();
        let clusters = Clusters::open(store.clone(), None).unwrap();
        let names: Vec<String> = clusters.list().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["one", "two"]);
        assert_eq!(clusters.find_by_token(secret).unwrap().id, "c-aaaaa");
        assert_eq!(clusters.get("c-bbbbb").unwrap().labels["env"], "lab");
        assert_eq!(clusters.nodes("c-bbbbb").len(), 1);
        assert!(
            store.read(&LEGACY_CLUSTERS).unwrap().is_none(),
            "the document is gone"
        );
        assert!(tmp.path().join("clusters/c-aaaaa.json").exists());
        assert!(
            tmp.path()
                .join("clusterregistrationtokens/c-aaaaa:crt-aaaaa.json")
                .exists()
        );
        assert!(
            tmp.path()
                .join("nodes/c-bbbbb:m-0123456789ab.json")
                .exists()
        );
        // A later token writes its own key alone.
        let clusters_dir = snapshot(&tmp.path().join("clusters"));
        clusters.create_token("c-aaaaa").unwrap();
        assert_eq!(snapshot(&tmp.path().join("clusters")), clusters_dir);
        let again = Clusters::open(store, None).unwrap();
        assert_eq!(again.list().len(), 2);
        assert_eq!(again.tokens("c-aaaaa").len(), 2);
    }

    /// Every file of `dir` with its bytes.
    fn snapshot(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect()
    }

    /// The keys an earlier version wrote (each cluster's registration tokens and nodes inside it)
    /// move to a key per token and per node at the first start, in their order, losing nothing;
    /// deleting the cluster then deletes them, and a token or node whose cluster is gone (a crash
    /// between the two) is swept at the next start.
    #[test]
    fn tokens_and_nodes_move_out_of_their_cluster() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let store = Arc::new(FileBackend::new(dir.clone())) as Arc<dyn Backend>;
        let secrets = ["embedded-token-one", "embedded-token-two"];
        let embedded = serde_json::json!({"id": "c-embed", "name": "embedded", "created": 5,
            "tokens": [
                {"id": "crt-zzzzz", "hash": hash_token_secret(secrets[0]), "created": 7},
                {"id": "crt-aaaaa", "hash": hash_token_secret(secrets[1]), "created": 7}],
            "nodes": [{"id": "m-0123456789ab", "clusterId": "c-embed", "requestedHostname": "n1",
                "address": "10.0.0.1", "internalAddress": "", "etcd": true, "controlPlane": true,
                "worker": true, "created": 8}]});
        let key = CLUSTER_OBJECTS.key("c-embed").unwrap();
        store
            .write(&key, &serde_json::to_vec(&embedded).unwrap(), None)
            .unwrap();
        let clusters = Clusters::open(store.clone(), None).unwrap();
        for secret in secrets {
            assert_eq!(clusters.find_by_token(secret).unwrap().id, "c-embed");
        }
        let ids: Vec<String> = clusters
            .tokens("c-embed")
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["crt-zzzzz", "crt-aaaaa"], "their order kept");
        assert_eq!(clusters.nodes("c-embed")[0].requested_hostname, "n1");
        let rewritten = std::fs::read_to_string(tmp.path().join("clusters/c-embed.json")).unwrap();
        assert!(
            !rewritten.contains("crt-") && !rewritten.contains("m-0123"),
            "{rewritten}"
        );
        assert_eq!(clusters.get("c-embed").unwrap().name, "embedded");

        // A token and a node left by a crash after their cluster went.
        let orphan = StoredToken {
            id: "crt-orphn".into(),
            cluster_id: "c-gone1".into(),
            hash: hash_token_secret("orphan"),
            created: 1,
            created_micros: 1,
        };
        clusters.tokens.create(&orphan.key(), &orphan).unwrap();
        let mut node = clusters.nodes("c-embed")[0].clone();
        node.cluster_id = "c-gone1".into();
        clusters.node_objects.create(&node.key(), &node).unwrap();
        clusters.delete("c-embed").unwrap();
        let left = |kind: &str| std::fs::read_dir(tmp.path().join(kind)).unwrap().count();
        assert_eq!((left("clusterregistrationtokens"), left("nodes")), (1, 1));
        let again = Clusters::open(store, None).unwrap();
        assert!(again.find_by_token("orphan").is_none());
        assert_eq!((left("clusterregistrationtokens"), left("nodes")), (0, 0));
    }
}
