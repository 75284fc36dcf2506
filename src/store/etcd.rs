//! The store on etcd (v3 API), for replicas that share one installation.
//!
//! Every value lives under one prefix (`/corral/` + [`Key::path`]), readable with
//! `etcdctl get --prefix /corral/`. Reads never leave the process: the whole prefix is loaded at
//! start and kept current by a watch, so a handshake or a request never waits for etcd, and a
//! replica keeps serving what it has while etcd is away. The exception are the prefixes the caller
//! names uncached: values one per tunnel of every replica (what each agent advertised), which a
//! replica needs only for the few tunnels it relays to, are read from etcd when asked for, so that
//! a replica's memory grows with the tunnels it holds, not with every tunnel of the installation.
//! Writes are transactions on the key's revision (compare-and-swap): of replicas writing at once,
//! one wins and the others see a conflict, re-read and try again (see `Document::update`).
//!
//! Each member has a client of its own and a request goes to the member that answered last; one
//! that fails or does not answer within [`ATTEMPT_TIMEOUT`] sends it to the next (as Go's clientv3
//! fails over), so a dead member costs one attempt, not the write. A write whose answer was lost may
//! have been applied: the next member then sees a failed comparison and a value equal to ours, which
//! counts as written. When no member answers, the request fails with [`StoreError::Unavailable`].
//!
//! etcd's client is asynchronous and the [`Backend`] trait is not: the client runs on a runtime of
//! its own, on its own thread, and a write waits for its answer (off the async workers, through
//! `block_in_place`, when called from one).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::backend::{
    Backend, Key, Kind, Leadership, LeaseGuard, Listed, PageSink, StoreError, Version,
};

/// How long one member may take to answer before the request goes to the next.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// The first and the longest wait before watching again after the watch broke.
const REWATCH_FIRST: Duration = Duration::from_millis(200);
const REWATCH_MAX: Duration = Duration::from_secs(5);
/// The prefix every value is kept under.
pub const PREFIX: &str = "/corral/";
/// How often etcd's history is compacted by default: kube-apiserver's `--etcd-compaction-interval`.
pub const COMPACTION_INTERVAL: Duration = Duration::from_secs(300);
/// Where replicas agree on who compacts (kube-apiserver's `compact_rev_key`): its version counts
/// the compactions, its value is the revision compacted to.
const COMPACTION_KEY: &str = "/corral/compact-revision";

/// Where etcd is: `etcd://HOST:PORT[,HOST:PORT…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    pub endpoints: Vec<String>,
}

impl EtcdUrl {
    pub fn parse(raw: &str) -> Result<Self, StoreError> {
        let invalid =
            || StoreError::Unavailable(format!("{raw:?} is not etcd://HOST:PORT[,HOST:PORT…]"));
        let list = raw.trim().strip_prefix("etcd://").ok_or_else(invalid)?;
        let endpoints: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| match crate::support::split_host_port(e) {
                Some(_) => Ok(e.to_string()),
                None => Err(invalid()),
            })
            .collect::<Result<_, _>>()?;
        if endpoints.is_empty() {
            return Err(invalid());
        }
        Ok(Self { endpoints })
    }
}

/// TLS to etcd: the CA that signed its certificate, and a client certificate and key (PEM files).
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl EtcdTls {
    fn enabled(&self) -> bool {
        self.ca.is_some() || self.cert.is_some()
    }

    fn options(&self) -> Result<TlsOptions, StoreError> {
        let read = |path: &std::path::PathBuf| {
            std::fs::read(path).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })
        };
        let mut options = TlsOptions::new();
        if let Some(ca) = &self.ca {
            options = options.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            options = options.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(options)
    }
}

/// A value as last seen: its bytes and etcd's revision of its last change.
struct Entry {
    bytes: Vec<u8>,
    revision: i64,
}

impl Entry {
    fn of(kv: &KeyValue) -> Self {
        Self {
            bytes: kv.value().to_vec(),
            revision: kv.mod_revision(),
        }
    }
}

/// Values of `kind` read from etcd, by path, as [`Backend::list_kind`] lists them.
fn listed(kind: &Kind, values: Vec<(String, Entry)>) -> Listed {
    values
        .into_iter()
        .filter_map(|(path, entry)| {
            let id = kind.id_of(&path)?.to_string();
            Some((id, entry.bytes, revision_version(entry.revision)))
        })
        .collect()
}

/// One client per member, and the member that answered last (where requests go first).
#[derive(Clone)]
struct Members {
    clients: Arc<[Client]>,
    current: Arc<AtomicUsize>,
}

impl Members {
    /// Runs `op` on the current member's client, then on the others in turn while they fail, each
    /// within [`ATTEMPT_TIMEOUT`].
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let count = self.clients.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last_error = String::new();
        for step in 0..count {
            let index = (first + step) % count;
            match tokio::time::timeout(ATTEMPT_TIMEOUT, op(self.clients[index].clone())).await {
                Ok(Ok(value)) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
            }
        }
        Err(StoreError::Unavailable(format!(
            "no etcd member answered (last: {last_error})"
        )))
    }

    /// The client of the member that answered last.
    fn current(&self) -> Client {
        self.clients[self.current.load(Ordering::Relaxed) % self.clients.len()].clone()
    }
}

pub struct EtcdBackend {
    members: Members,
    runtime: Handle,
    /// Every value under the prefix (but the uncached ones), by path (ordered: a kind is a range),
    /// as of the last event seen.
    cache: RwLock<BTreeMap<String, Entry>>,
    /// Path prefixes kept out of the cache: read from etcd when asked for.
    uncached: &'static [&'static str],
    /// Who follows which changes: each its own channel, sent only the paths it wants.
    followers: std::sync::Mutex<Vec<Follower>>,
}

/// One [`Backend::changes`] receiver's filter and channel.
struct Follower {
    wanted: fn(&str) -> bool,
    sender: broadcast::Sender<String>,
}

/// Values read per request when the whole prefix is loaded. corral's values are a few KB at most (a
/// cluster with full labels and annotations about 8 KB; all settings together at most 1 MiB), so a
/// page stays below gRPC's 4 MiB.
const RESYNC_PAGE: i64 = 100;

/// The end of [`PREFIX`]'s range: the first key past every key that starts with it.
fn prefix_end() -> Vec<u8> {
    range_end(PREFIX.as_bytes())
}

/// The first key past every key that starts with `prefix` (which ends in `/`).
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Gets sent in one transaction by [`Backend::read_many`]: etcd takes at most 128 operations in
/// one (`--max-txn-ops`).
const READS_PER_TXN: usize = 64;

/// Changes queued per follower before it lags (and then reads everything it follows again).
const FOLLOWER_QUEUE: usize = 256;

impl EtcdBackend {
    /// Connects, loads every value under the prefix (but those under an `uncached` path prefix,
    /// which are read from etcd when asked for) and starts following changes; with a `compaction`
    /// interval, keeps etcd's history that short (see [`compact`]). Fails when no member answers.
    pub fn connect(
        url: &EtcdUrl,
        tls: &EtcdTls,
        compaction: Option<Duration>,
        uncached: &'static [&'static str],
    ) -> Result<Arc<Self>, StoreError> {
        let runtime = client_runtime()?;
        let scheme = if tls.enabled() { "https" } else { "http" };
        let endpoints: Vec<String> = url
            .endpoints
            .iter()
            .map(|authority| format!("{scheme}://{authority}"))
            .collect();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(ATTEMPT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        if tls.enabled() {
            options = options.with_tls(tls.options()?);
        }
        let clients = runtime
            .block_on_elsewhere(async move {
                let mut clients = Vec::new();
                for endpoint in endpoints {
                    // Connecting is lazy: a member that is down now is tried when a request needs it.
                    let client = Client::connect([endpoint], Some(options.clone())).await;
                    clients.push(client.map_err(|e| {
                        StoreError::Unavailable(format!("cannot make etcd's client: {e}"))
                    })?);
                }
                Ok::<_, StoreError>(clients)
            })
            .ok_or_else(|| StoreError::Unavailable("etcd's client stopped".into()))??;
        let members = Members {
            clients: clients.into(),
            current: Arc::new(AtomicUsize::new(0)),
        };
        let backend = Arc::new(Self {
            members,
            runtime,
            cache: RwLock::new(BTreeMap::new()),
            uncached,
            followers: Default::default(),
        });
        let revision = backend.resync()?;
        let follower = Arc::downgrade(&backend);
        backend.runtime.spawn(follow(follower, revision));
        if let Some(interval) = compaction.filter(|i| !i.is_zero()) {
            let members = Arc::downgrade(&backend.members.clients);
            let current = backend.members.current.clone();
            backend
                .runtime
                .spawn(compact_every(members, current, interval));
        }
        tracing::info!(
            "store: etcd at {} ({} values under {PREFIX})",
            url.endpoints.join(", "),
            backend.read_cache().len()
        );
        Ok(backend)
    }

    /// Runs a request (bounded by the members' attempts) on the client's runtime and waits for it.
    fn wait_on<T, F>(&self, request: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.runtime
            .block_on_elsewhere(request)
            .unwrap_or_else(|| Err(StoreError::Unavailable("etcd's client stopped".into())))
    }

    /// Whether `path` is read from etcd when asked for, not kept.
    fn is_uncached(&self, path: &str) -> bool {
        self.uncached.iter().any(|prefix| path.starts_with(prefix))
    }

    /// The value at `path` as etcd has it now, with its revision (an uncached path).
    fn get_now(&self, path: &str) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        let full = format!("{PREFIX}{path}");
        let response = self.request(move |client| {
            let full = full.clone();
            async move { client.kv_client().get(full, None).await }
        })?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), revision_version(kv.mod_revision()))))
    }

    /// Every value whose path starts with `path_prefix`, as etcd has it now, by path (an uncached
    /// prefix): see [`EtcdBackend::range_pages`].
    fn range_now(&self, path_prefix: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        let mut found = Vec::new();
        self.prefix_pages(path_prefix, &mut |page| {
            found.extend(page);
            Ok(())
        })?;
        Ok(found)
    }

    /// [`EtcdBackend::range_pages`] of the values whose path starts with `path_prefix`.
    fn prefix_pages(
        &self,
        path_prefix: &str,
        each: &mut dyn FnMut(Vec<(String, Entry)>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let start = format!("{PREFIX}{path_prefix}").into_bytes();
        let end = range_end(&start);
        self.range_pages(start, end, &mut 0, each)
    }

    /// Hands `each` the values of `[start, end)`, by path, one page of [`RESYNC_PAGE`] at a time,
    /// all at revision `at` (0: the current one, set from the first answer, so that several ranges
    /// can be read at one revision): what `each` keeps is what stays in memory.
    fn range_pages(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        at: &mut i64,
        each: &mut dyn FnMut(Vec<(String, Entry)>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut from = start;
        loop {
            let response = self.get_page(from.clone(), end.clone(), *at)?;
            if *at == 0 {
                *at = response.header().map_or(0, |h| h.revision());
            }
            let page = response
                .kvs()
                .iter()
                .filter_map(|kv| Some((path_of(kv.key())?, Entry::of(kv))));
            each(page.collect())?;
            match (response.more(), response.kvs().last()) {
                (true, Some(last)) => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(()),
            }
        }
    }

    /// At most [`RESYNC_PAGE`] values of `[start, end)`, at revision `at` (0: the current one).
    fn get_page(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        at: i64,
    ) -> Result<etcd_client::GetResponse, StoreError> {
        self.request(move |client| {
            let (start, end) = (start.clone(), end.clone());
            let mut options = GetOptions::new().with_range(end).with_limit(RESYNC_PAGE);
            if at > 0 {
                options = options.with_revision(at);
            }
            async move { client.kv_client().get(start, Some(options)).await }
        })
    }

    /// Runs `op` on the members (see [`Members::call`]) and waits for its answer.
    fn request<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let members = self.members.clone();
        self.wait_on(async move { members.call(op).await })
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the whole prefix, replaces the cache with it and announces what changed; returns the
    /// revision it is current as of. Read in pages of [`RESYNC_PAGE`] values at one revision: the
    /// whole prefix in one answer passes gRPC's 4 MiB limit past about 7,000 clusters, and a
    /// replica could then neither start nor catch up after a broken watch.
    fn resync(&self) -> Result<i64, StoreError> {
        let mut fresh = BTreeMap::new();
        let mut revision = 0;
        // The ranges watched are those cached: the uncached ones are not read.
        for (start, end) in watched_ranges(self.uncached) {
            self.range_pages(start, end, &mut revision, &mut |page| {
                fresh.extend(page);
                Ok(())
            })?;
        }
        let changed: Vec<String> = {
            let mut cache = self.write_cache();
            // A value this replica wrote after the snapshot's revision (while the pages were read)
            // is newer than the snapshot: it stays.
            for (path, entry) in cache.iter() {
                if entry.revision > revision {
                    fresh.insert(
                        path.clone(),
                        Entry {
                            bytes: entry.bytes.clone(),
                            revision: entry.revision,
                        },
                    );
                }
            }
            let changed = fresh
                .iter()
                .filter(|(path, e)| cache.get(*path).is_none_or(|c| c.revision != e.revision))
                .map(|(path, _)| path.clone())
                .chain(cache.keys().filter(|p| !fresh.contains_key(*p)).cloned())
                .collect();
            *cache = fresh;
            changed
        };
        for path in changed {
            self.announce(path);
        }
        Ok(revision)
    }

    /// Applies one watched change, unless the cache has seen it (or a later one) already or does
    /// not keep its path.
    fn apply(&self, path: String, entry: Option<Entry>, revision: i64) {
        if self.is_uncached(&path) {
            return;
        }
        {
            let mut cache = self.write_cache();
            if cache.get(&path).is_some_and(|c| c.revision >= revision) {
                return;
            }
            match entry {
                Some(entry) => cache.insert(path.clone(), entry),
                None => cache.remove(&path),
            };
        }
        self.announce(path);
    }

    /// Tells the followers that want `path` of its change (and forgets those that stopped).
    fn announce(&self, path: String) {
        let mut followers = crate::support::lock(&self.followers);
        followers.retain(|f| f.sender.receiver_count() > 0);
        for follower in followers.iter().filter(|f| (f.wanted)(&path)) {
            let _ = follower.sender.send(path.clone());
        }
    }
}

/// Keeps etcd's history bounded as kube-apiserver does for its etcd: every `interval`, the history
/// older than the revision seen one interval ago is compacted, so watches (which resume from at
/// most a few seconds back) never need what is dropped, and etcd's space stays what the live values
/// take. Every replica runs this; a transaction on [`COMPACTION_KEY`]'s version lets one of them
/// compact per interval. Runs while the backend lives (`members` upgrades).
async fn compact_every(
    members: std::sync::Weak<[Client]>,
    current: Arc<AtomicUsize>,
    interval: Duration,
) {
    let (mut seen_version, mut last_revision) = (0i64, 0i64);
    loop {
        tokio::time::sleep(interval).await;
        let Some(clients) = members.upgrade() else {
            return;
        };
        let members = Members {
            clients,
            current: current.clone(),
        };
        match compact(&members, seen_version, last_revision).await {
            Ok((version, revision)) => (seen_version, last_revision) = (version, revision),
            Err(e) => tracing::debug!("store: compaction skipped: {e}"),
        }
    }
}

/// One round of [`compact_every`]: claims this interval's compaction (the key's version is still
/// `seen_version`) and compacts to `revision`, the revision seen one interval ago; returns the
/// key's version and etcd's revision now, for the next round.
async fn compact(
    members: &Members,
    seen_version: i64,
    revision: i64,
) -> Result<(i64, i64), StoreError> {
    let claim = Txn::new()
        .when(vec![Compare::version(
            COMPACTION_KEY,
            CompareOp::Equal,
            seen_version,
        )])
        .and_then(vec![TxnOp::put(COMPACTION_KEY, revision.to_string(), None)])
        .or_else(vec![TxnOp::get(COMPACTION_KEY, None)]);
    let response = members
        .call(|client| {
            let claim = claim.clone();
            async move { client.kv_client().txn(claim).await }
        })
        .await?;
    let now = response.header().map_or(0, |h| h.revision());
    if !response.succeeded() {
        // Another replica compacted this interval: follow its count.
        let version = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.version()),
                _ => None,
            })
            .unwrap_or(seen_version);
        return Ok((version, now));
    }
    if revision > 0 {
        let compacted = members
            .call(|client| async move { client.kv_client().compact(revision, None).await })
            .await;
        match compacted {
            Ok(_) => tracing::debug!("store: etcd history compacted to revision {revision}"),
            // Compacted past it already (by hand, or etcd's own --auto-compaction): fine.
            Err(e) if e.to_string().contains("compacted") => {}
            Err(e) => return Err(e),
        }
    }
    Ok((seen_version + 1, now))
}

/// Follows every change under the prefix from `revision` on, for as long as the backend lives;
/// after a broken watch (etcd away, a compaction) it loads everything again and watches on.
async fn follow(backend: std::sync::Weak<EtcdBackend>, mut revision: i64) {
    let mut wait = REWATCH_FIRST;
    loop {
        let Some(strong) = backend.upgrade() else {
            return;
        };
        let mut watcher = strong.members.current().watch_client();
        let mut ranges = watched_ranges(strong.uncached).into_iter();
        drop(strong);
        let options = |end: Vec<u8>| {
            WatchOptions::new()
                .with_range(end)
                .with_start_revision(revision + 1)
        };
        // Everything uncached: nothing to follow.
        let Some((start, end)) = ranges.next() else {
            return;
        };
        let watched = match watcher.watch(start, Some(options(end))).await {
            Ok(mut stream) => {
                // The other ranges, on the same stream: one watch per range of the prefix.
                let mut more = Ok(());
                for (start, end) in ranges {
                    more = more.and(stream.watch(start, Some(options(end))).await);
                }
                more.map(|()| stream)
            }
            Err(e) => Err(e),
        };
        match watched {
            Ok(mut stream) => loop {
                let message = stream.message().await;
                let Some(backend) = backend.upgrade() else {
                    return;
                };
                let response = match message {
                    Ok(Some(response)) => response,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("store: the etcd watch broke ({e}); watching again");
                        break;
                    }
                };
                if response.canceled() || response.compact_revision() > 0 {
                    break;
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Some(path) = path_of(kv.key()) else {
                        continue;
                    };
                    let entry = (event.event_type() == EventType::Put).then(|| Entry::of(kv));
                    backend.apply(path, entry, kv.mod_revision());
                    revision = revision.max(kv.mod_revision());
                }
                wait = REWATCH_FIRST;
            },
            Err(e) => tracing::warn!("store: cannot watch etcd ({e}); retrying in {wait:?}"),
        }
        // Whatever happened while not watching is read whole, then watched from there (not from
        // the last revision seen: of several ranges, one may have been behind another).
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(REWATCH_MAX);
            let Some(strong) = backend.upgrade() else {
                return;
            };
            if let Ok(current) = strong.resync() {
                revision = current;
                break;
            }
        }
    }
}

/// The key ranges watched, `[start, end)`: the prefix but its uncached parts, whose changes would
/// not be kept (thousands of agents connecting would otherwise send each replica every agent's
/// advertised parameters, to be dropped).
fn watched_ranges(uncached: &[&str]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut cold: Vec<Vec<u8>> = uncached
        .iter()
        .map(|prefix| format!("{PREFIX}{prefix}").into_bytes())
        .collect();
    cold.sort();
    let mut ranges = Vec::new();
    let mut start = PREFIX.as_bytes().to_vec();
    for prefix in cold {
        if prefix > start {
            ranges.push((start.clone(), prefix.clone()));
        }
        start = start.max(range_end(&prefix));
    }
    if start < prefix_end() {
        ranges.push((start, prefix_end()));
    }
    ranges
}

impl Backend for EtcdBackend {
    fn read(&self, key: &Key) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        if self.is_uncached(&key.path) {
            return self.get_now(&key.path);
        }
        Ok(self
            .read_cache()
            .get(key.path.as_ref())
            .map(|e| (e.bytes.clone(), revision_version(e.revision))))
    }

    fn version(&self, key: &Key) -> Result<Option<Version>, StoreError> {
        if self.is_uncached(&key.path) {
            return Ok(self.get_now(&key.path)?.map(|(_, version)| version));
        }
        Ok(self
            .read_cache()
            .get(key.path.as_ref())
            .map(|e| revision_version(e.revision)))
    }

    fn location(&self, key: &Key) -> String {
        format!("etcd {PREFIX}{}", key.path)
    }

    fn write(
        &self,
        key: &Key,
        bytes: &[u8],
        expected: Option<Version>,
    ) -> Result<Version, StoreError> {
        let full = format!("{PREFIX}{}", key.path);
        let compare = match expected {
            Some(version) => {
                Compare::mod_revision(full.clone(), CompareOp::Equal, version_revision(version))
            }
            None => Compare::create_revision(full.clone(), CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when(vec![compare])
            .and_then(vec![TxnOp::put(full.clone(), bytes.to_vec(), None)])
            .or_else(vec![TxnOp::get(full, None)]);
        let response = self.request(move |client| {
            let txn = txn.clone();
            async move { client.kv_client().txn(txn).await }
        })?;
        let revision = response.header().map_or(0, |h| h.revision());
        if response.succeeded() {
            self.apply(
                key.path.to_string(),
                Some(Entry {
                    bytes: bytes.to_vec(),
                    revision,
                }),
                revision,
            );
            return Ok(revision_version(revision));
        }
        // Lost to another writer: take what it wrote now, so the retry starts from there. What is
        // there may be our own value, from an attempt whose answer was lost: then it is written.
        for op in response.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                if let Some(kv) = get.kvs().first()
                    && kv.value() == bytes
                {
                    let revision = kv.mod_revision();
                    let entry = Entry {
                        bytes: bytes.to_vec(),
                        revision,
                    };
                    self.apply(key.path.to_string(), Some(entry), revision);
                    return Ok(revision_version(revision));
                }
                match get.kvs().first() {
                    Some(kv) => {
                        self.apply(key.path.to_string(), Some(Entry::of(kv)), kv.mod_revision())
                    }
                    None => self.apply(key.path.to_string(), None, revision),
                }
            }
        }
        Err(StoreError::Conflict(key.name.to_string()))
    }

    fn delete(&self, key: &Key) -> Result<(), StoreError> {
        self.delete_path(&key.path)
    }

    fn delete_path(&self, path: &str) -> Result<(), StoreError> {
        let full = format!("{PREFIX}{path}");
        let response = self.request(move |client| {
            let full = full.clone();
            async move { client.kv_client().delete(full, None).await }
        })?;
        let revision = response.header().map_or(0, |h| h.revision());
        self.apply(path.to_string(), None, revision);
        Ok(())
    }

    fn list_kind(&self, kind: &Kind, id_prefix: &str) -> Result<Listed, StoreError> {
        let start = format!("{}{id_prefix}", kind.prefix);
        if self.is_uncached(&start) {
            return Ok(listed(kind, self.range_now(&start)?));
        }
        Ok(self
            .read_cache()
            .range::<str, _>((
                std::ops::Bound::Included(start.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(path, _)| path.starts_with(&start))
            .filter_map(|(path, entry)| {
                let id = kind.id_of(path)?;
                Some((
                    id.to_string(),
                    entry.bytes.clone(),
                    revision_version(entry.revision),
                ))
            })
            .collect())
    }

    fn list_kind_pages(&self, kind: &Kind, each: &mut PageSink<'_>) -> Result<(), StoreError> {
        if !self.is_uncached(kind.prefix) {
            return each(self.list_kind(kind, "")?);
        }
        self.prefix_pages(kind.prefix, &mut |page| each(listed(kind, page)))
    }

    fn read_many(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut found: Vec<Option<Vec<u8>>> = {
            let cache = self.read_cache();
            let cached = |key: &Key| cache.get(key.path.as_ref()).map(|e| e.bytes.clone());
            keys.iter().map(cached).collect()
        };
        let asked: Vec<usize> = (0..keys.len())
            .filter(|&i| self.is_uncached(&keys[i].path))
            .collect();
        for chunk in asked.chunks(READS_PER_TXN) {
            let gets = chunk
                .iter()
                .map(|&i| TxnOp::get(format!("{PREFIX}{}", keys[i].path), None))
                .collect::<Vec<_>>();
            let txn = Txn::new().and_then(gets);
            let response = self.request(move |client| {
                let txn = txn.clone();
                async move { client.kv_client().txn(txn).await }
            })?;
            for (&i, op) in chunk.iter().zip(response.op_responses()) {
                if let TxnOpResponse::Get(get) = op {
                    found[i] = get.kvs().first().map(|kv| kv.value().to_vec());
                }
            }
        }
        Ok(found)
    }

    fn changes(&self, wanted: fn(&str) -> bool) -> Option<broadcast::Receiver<String>> {
        let (sender, receiver) = broadcast::channel(FOLLOWER_QUEUE);
        crate::support::lock(&self.followers).push(Follower { wanted, sender });
        Some(receiver)
    }

    fn has_paths(&self) -> bool {
        true
    }

    fn put_path(&self, path: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let full = format!("{PREFIX}{path}");
        let value = bytes.to_vec();
        let response = self.request(move |client| {
            let (full, value) = (full.clone(), value.clone());
            async move { client.kv_client().put(full, value, None).await }
        })?;
        let revision = response.header().map_or(0, |h| h.revision());
        let entry = Entry {
            bytes: bytes.to_vec(),
            revision,
        };
        self.apply(path.to_string(), Some(entry), revision);
        Ok(())
    }

    fn read_path(&self, path: &str) -> Option<Vec<u8>> {
        self.read_cache().get(path).map(|e| e.bytes.clone())
    }

    fn list(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.read_cache()
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(path, _)| path.starts_with(prefix))
            .map(|(path, entry)| (path.clone(), entry.bytes.clone()))
            .collect()
    }

    fn keep_alive(
        &self,
        path: &str,
        bytes: &[u8],
        ttl: Duration,
    ) -> Result<Option<LeaseGuard>, StoreError> {
        let stop = CancellationToken::new();
        let lease = Leased {
            members: self.members.clone(),
            key: format!("{PREFIX}{path}"),
            bytes: bytes.to_vec(),
            ttl_secs: ttl.as_secs().max(2) as i64,
            leading: None,
        };
        self.runtime.spawn(lease.keep(stop.clone()));
        Ok(Some(LeaseGuard::new(stop)))
    }

    fn campaign(
        &self,
        path: &str,
        id: &str,
        ttl: Duration,
    ) -> Result<Option<Leadership>, StoreError> {
        let stop = CancellationToken::new();
        let leading = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lease = Leased {
            members: self.members.clone(),
            key: format!("{PREFIX}{path}"),
            bytes: id.as_bytes().to_vec(),
            ttl_secs: ttl.as_secs().max(2) as i64,
            leading: Some(leading.clone()),
        };
        self.runtime.spawn(lease.keep(stop.clone()));
        Ok(Some(Leadership::new(leading, LeaseGuard::new(stop))))
    }
}

/// A value kept under an etcd lease: granted, put, renewed every third of its TTL; granted and put
/// again when the lease was lost (etcd away for longer than the TTL); revoked when stopped. With
/// `leading`, a campaign: the value is put only where there is none (another holder's lease has to
/// expire first), and `leading` tells whether ours is there.
struct Leased {
    members: Members,
    key: String,
    bytes: Vec<u8>,
    ttl_secs: i64,
    leading: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Leased {
    async fn keep(self, stop: CancellationToken) {
        let renew_every = Duration::from_secs((self.ttl_secs as u64 / 3).max(1));
        let mut lease = None;
        loop {
            self.set_leading(lease.is_some());
            let id = match lease {
                Some(id) => id,
                None => match self.grant_and_put().await {
                    Ok(Some(id)) => id,
                    // Held by another: try again when its lease may have gone.
                    Ok(None) => {
                        if sleep_or_stop(&stop, renew_every).await {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!("store: cannot keep {}: {e}", self.key);
                        if sleep_or_stop(&stop, Duration::from_secs(1)).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            if lease.is_none() && self.leading.is_some() {
                tracing::info!("store: this replica now holds {}", self.key);
            }
            lease = Some(id);
            self.set_leading(true);
            if sleep_or_stop(&stop, renew_every).await {
                let _ = self
                    .members
                    .call(|client| async move { client.lease_client().revoke(id).await })
                    .await;
                return;
            }
            let renewed = self
                .members
                .call(|client| async move {
                    let (mut keeper, mut answers) = client.lease_client().keep_alive(id).await?;
                    keeper.keep_alive().await?;
                    Ok(answers.message().await?.map_or(0, |a| a.ttl()))
                })
                .await;
            match renewed {
                Ok(ttl) if ttl > 0 => {}
                // Expired (etcd was away too long) or etcd away now: start over with a new lease.
                Ok(_) | Err(_) => lease = None,
            }
        }
    }

    fn set_leading(&self, leading: bool) {
        if let Some(flag) = &self.leading {
            flag.store(leading, Ordering::Release);
        }
    }

    /// A new lease with the value under it; `None` when campaigning and another holds the key.
    async fn grant_and_put(&self) -> Result<Option<i64>, StoreError> {
        let ttl = self.ttl_secs;
        let id = self
            .members
            .call(|client| async move { client.lease_client().grant(ttl, None).await })
            .await?
            .id();
        let (key, bytes) = (&self.key, &self.bytes);
        let only_if_absent = self.leading.is_some();
        let put = self
            .members
            .call(|client| async move {
                let put = TxnOp::put(
                    key.clone(),
                    bytes.clone(),
                    Some(PutOptions::new().with_lease(id)),
                );
                let txn = match only_if_absent {
                    true => Txn::new()
                        .when(vec![Compare::create_revision(
                            key.clone(),
                            CompareOp::Equal,
                            0,
                        )])
                        .and_then(vec![put]),
                    false => Txn::new().and_then(vec![put]),
                };
                client.kv_client().txn(txn).await
            })
            .await?;
        if put.succeeded() {
            return Ok(Some(id));
        }
        let _ = self
            .members
            .call(|client| async move { client.lease_client().revoke(id).await })
            .await;
        Ok(None)
    }
}

/// Sleeps for `wait` unless stopped first; whether it was stopped.
async fn sleep_or_stop(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

fn revision_version(revision: i64) -> Version {
    Version::from_raw(revision as u128)
}

fn version_revision(version: Version) -> i64 {
    version.raw() as i64
}

/// The path under the prefix of an etcd key; `None` for keys outside it.
fn path_of(key: &[u8]) -> Option<String> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(PREFIX)
        .map(str::to_string)
}

/// A single-threaded runtime on a thread of its own, for etcd's client.
fn client_runtime() -> Result<Handle, StoreError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("corral-etcd")
        .enable_all()
        .on_thread_park(crate::support::thread_idle)
        .build()
        .map_err(|e| StoreError::Unavailable(format!("cannot start etcd's client: {e}")))?;
    let handle = runtime.handle().clone();
    // The runtime lives as long as the process: its thread parks on a future that never ends.
    std::thread::Builder::new()
        .name("corral-etcd-runtime".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .map_err(|e| StoreError::Unavailable(format!("cannot start etcd's client: {e}")))?;
    Ok(handle)
}

/// Runs `future` on the client's runtime and waits for its answer (off the async workers when
/// called from one): `None` when the runtime is gone.
trait BlockOnElsewhere {
    fn block_on_elsewhere<T, F>(&self, future: F) -> Option<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static;
}

impl BlockOnElsewhere for Handle {
    fn block_on_elsewhere<T, F>(&self, future: F) -> Option<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let (answer, answered) = std::sync::mpsc::channel();
        self.spawn(async move {
            let _ = answer.send(future.await);
        });
        let wait = || answered.recv().ok();
        match Handle::try_current() {
            Ok(current) if current.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watch covers the whole prefix but the uncached parts, however they are given.
    #[test]
    fn watched_ranges_leave_out_the_uncached_prefixes() {
        let bytes = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            watched_ranges(&[]),
            [(bytes("/corral/"), bytes("/corral0"))]
        );
        assert_eq!(
            watched_ranges(&["corral/b/", "corral/a/"]),
            [
                (bytes("/corral/"), bytes("/corral/corral/a/")),
                (bytes("/corral/corral/a0"), bytes("/corral/corral/b/")),
                (bytes("/corral/corral/b0"), bytes("/corral0")),
            ]
        );
        // Nested, or everything: no empty or reversed range.
        assert_eq!(
            watched_ranges(&["corral/", "corral/a/"]),
            [
                (bytes("/corral/"), bytes("/corral/corral/")),
                (bytes("/corral/corral0"), bytes("/corral0"))
            ]
        );
        assert!(watched_ranges(&["", "corral/"]).is_empty());
    }
}
