//! The faults active now, as every reader sees them: one snapshot swapped whole on each change, so
//! the handshake path reads it without a lock.
//!
//! A fault lives as long as the process that made it: in memory on the data directory; on a
//! shared store under an etcd lease that this process keeps alive, so that the other replicas
//! serve it too and nothing of it outlives the replica (`nothing survives a restart`). A fault
//! ends when its ttl passes, when it is removed (from any replica), or with its replica.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::task::AtomicWaker;

use super::fault::{Fault, FaultSpec};
use crate::store::{Backend, Changes, LeaseGuard};
use crate::support::{lock, unix_now_ms};

/// Where faults are kept on a shared store, one key each.
const PREFIX: &str = "corral/lab-faults/";

/// How long a replica's faults outlive it on a shared store (the lease's ttl).
const LEASE_TTL: Duration = Duration::from_secs(10);

/// At most this many faults at once: each one is looked at by every handshake.
pub const MAX_FAULTS: usize = 256;

/// Why a fault cannot be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("at most {MAX_FAULTS} faults may be active at once")]
    Full,
    #[error("fault {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

pub struct Faults {
    store: Arc<dyn Backend>,
    /// What readers see: the faults not removed, sorted by id. Expired ones stay until the sweep
    /// removes them; readers check [`Fault::expired`] themselves.
    active: ArcSwap<Vec<Arc<Fault>>>,
    state: Mutex<State>,
    /// The tunnels to wake on every change, so that one waiting for data looks at its toxics
    /// again (registered once per tunnel; a wake costs the tunnel's reader nothing).
    watchers: Mutex<Vec<Weak<AtomicWaker>>>,
    /// Counts the changes, for [`Faults::changed`].
    version: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Every fault known, by id.
    known: BTreeMap<String, Arc<Fault>>,
    /// The faults this process made, and the leases that keep them on a shared store. `seen`
    /// once the store has listed the fault: gone from a later listing, it was removed elsewhere.
    own: BTreeMap<String, Own>,
    /// Adds past their check of [`MAX_FAULTS`] and not yet in `known` (writing to the store):
    /// they count against the bound, or adds racing each other would each pass it.
    adding: usize,
}

/// An add's place under [`MAX_FAULTS`] while it writes to the store; given back if it fails.
struct Adding<'a>(&'a Mutex<State>);

impl Adding<'_> {
    /// The fault is in `known` now (under the same lock): the place is its own.
    fn done(self, state: &mut State) {
        state.adding -= 1;
        std::mem::forget(self);
    }
}

impl Drop for Adding<'_> {
    fn drop(&mut self) {
        lock(self.0).adding -= 1;
    }
}

struct Own {
    _lease: Option<LeaseGuard>,
    seen: bool,
}

impl Faults {
    /// The registry, following the store's changes (other replicas' faults) and sweeping expired
    /// faults while the runtime runs. Call from within the runtime.
    pub fn start(store: Arc<dyn Backend>) -> Arc<Self> {
        let faults = Arc::new(Self::new(store));
        faults.publish(&lock(&faults.state), None);
        faults.reload();
        tokio::spawn(follow(Arc::downgrade(&faults)));
        tokio::spawn(sweep(Arc::downgrade(&faults)));
        faults
    }

    /// The registry alone, neither following the store nor sweeping (what [`Faults::start`]
    /// adds): for tests.
    pub fn new(store: Arc<dyn Backend>) -> Self {
        Self {
            store,
            active: ArcSwap::from_pointee(Vec::new()),
            state: Mutex::new(State::default()),
            watchers: Mutex::new(Vec::new()),
            version: AtomicU64::new(0),
        }
    }

    /// The faults now, for the handshake path: a snapshot, read without a lock.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Vec<Arc<Fault>>>> {
        self.active.load()
    }

    /// Every fault not over at `now_ms`.
    pub fn list(&self, now_ms: i64) -> Vec<Arc<Fault>> {
        self.active
            .load()
            .iter()
            .filter(|f| !f.expired(now_ms))
            .cloned()
            .collect()
    }

    /// Whether a `down` toxic applies to the tunnels of client key `key` now (toxicity aside: a
    /// link is down or not).
    pub fn tunnel_down(&self, key: &str) -> bool {
        let faults = self.active.load();
        if faults.is_empty() {
            return false;
        }
        let now_ms = unix_now_ms();
        faults.iter().any(|fault| match &fault.what {
            super::fault::What::Tunnel(tunnel) => {
                !fault.expired(now_ms)
                    && tunnel.toxic == super::fault::Toxic::Down
                    && tunnel.toxicity > 0.0
                    && tunnel.covers(key)
            }
            _ => false,
        })
    }

    /// Adds a fault as `spec` asks, with a new id; it is served from the next handshake on here,
    /// and on the other replicas once the store has told them.
    pub fn add(&self, spec: FaultSpec) -> Result<Arc<Fault>, RegistryError> {
        let now_ms = unix_now_ms();
        let (id, adding) = {
            let mut state = lock(&self.state);
            let active = state.known.values().filter(|f| !f.expired(now_ms)).count();
            if active + state.adding >= MAX_FAULTS {
                return Err(RegistryError::Full);
            }
            state.adding += 1;
            let adding = Adding(&self.state);
            let id = loop {
                let id = format!("fault-{}", crate::secrets::random_suffix());
                if !state.known.contains_key(&id) {
                    break id;
                }
            };
            (id, adding)
        };
        let fault = Arc::new(Fault {
            created: now_ms / 1000,
            expires_ms: spec
                .ttl
                .map(|ttl| now_ms.saturating_add(ttl.as_millis() as i64)),
            id: id.clone(),
            what: spec.what,
        });
        let lease = match self.store.has_paths() {
            true => {
                let bytes = serde_json::to_vec(&*fault).expect("faults serialize");
                self.store
                    .keep_alive(&format!("{PREFIX}{id}"), &bytes, LEASE_TTL)?
            }
            false => None,
        };
        // Not held across the store's write above: readers of the state (the store's follower)
        // do not wait for etcd.
        let mut state = lock(&self.state);
        adding.done(&mut state);
        state.own.insert(
            id.clone(),
            Own {
                _lease: lease,
                seen: false,
            },
        );
        state.known.insert(id, fault.clone());
        self.publish(&state, None);
        Ok(fault)
    }

    /// Removes fault `id`, whoever made it.
    pub fn remove(&self, id: &str) -> Result<Arc<Fault>, RegistryError> {
        let mut state = lock(&self.state);
        let fault = state
            .known
            .remove(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        // Dropping our lease deletes the key; another replica's key is deleted here, and that
        // replica drops its lease when it sees the deletion.
        if state.own.remove(id).is_none() && self.store.has_paths() {
            self.store.delete_path(&format!("{PREFIX}{id}"))?;
        }
        self.publish(&state, Some("removed"));
        Ok(fault)
    }

    /// Reads the shared store's faults again (after a change another replica made).
    fn reload(&self) {
        if !self.store.has_paths() {
            return;
        }
        let stored: BTreeMap<String, Arc<Fault>> = self
            .store
            .list(PREFIX)
            .into_iter()
            .filter_map(|(_, bytes)| serde_json::from_slice::<Fault>(&bytes).ok())
            .map(|fault| (fault.id.clone(), Arc::new(fault)))
            .collect();
        let mut state = lock(&self.state);
        let State { known, own, .. } = &mut *state;
        // Ours that the store listed once and no longer does were removed on another replica.
        own.retain(|id, own| {
            let listed = stored.contains_key(id);
            let removed = own.seen && !listed;
            own.seen |= listed;
            !removed
        });
        let mut next = stored;
        for id in own.keys() {
            if let Some(fault) = known.get(id) {
                next.entry(id.clone()).or_insert_with(|| fault.clone());
            }
        }
        *known = next;
        self.publish(&state, Some("removed"));
    }

    /// Drops the faults whose ttl has passed; the next expiry, if any.
    fn sweep_expired(&self) -> Option<i64> {
        let now_ms = unix_now_ms();
        let mut state = lock(&self.state);
        let State { known, own, .. } = &mut *state;
        let before = known.len();
        known.retain(|id, fault| {
            // Another replica's fault is removed by that replica; it is only hidden here.
            let over = fault.expired(now_ms) && own.contains_key(id);
            if over {
                own.remove(id);
            }
            !over
        });
        if known.len() != before {
            self.publish(&state, Some("expired"));
        }
        state.known.values().filter_map(|f| f.expires_ms).min()
    }

    /// Swaps the readers' snapshot for `state`'s faults, logging those that started and ended
    /// (`ended`: why) and counting them in `/metrics`.
    fn publish(&self, state: &State, ended: Option<&str>) {
        let previous = self.active.load_full();
        let next: Vec<Arc<Fault>> = state.known.values().cloned().collect();
        for fault in &next {
            if !previous.iter().any(|p| p.id == fault.id) {
                tracing::info!("lab fault {} started: {fault}", fault.id);
            }
        }
        for fault in previous.iter() {
            if !next.iter().any(|n| n.id == fault.id) {
                let why = match fault.expired(unix_now_ms()) {
                    true => "expired",
                    false => ended.unwrap_or("removed"),
                };
                tracing::info!("lab fault {} ended ({why}): {fault}", fault.id);
            }
        }
        let gauge = &crate::metrics::metrics().lab_faults_active;
        for kind in super::fault::KINDS {
            let count = next.iter().filter(|f| f.kind() == kind).count();
            gauge.with_label_values(&[kind]).set(count as i64);
        }
        self.active.store(Arc::new(next));
        self.version.fetch_add(1, Ordering::AcqRel);
        lock(&self.watchers).retain(|watcher| match watcher.upgrade() {
            Some(waker) => {
                waker.wake();
                true
            }
            None => false,
        });
    }

    /// Waits, woken through `change` (from [`Faults::watch`]), until the faults change after the
    /// version `seen` (0: any there are now); the version now.
    pub async fn changed(&self, change: &AtomicWaker, seen: u64) -> u64 {
        std::future::poll_fn(|cx| {
            // Registered before the version is read: a change in between still wakes this.
            change.register(cx.waker());
            match self.version.load(Ordering::Acquire) {
                now if now != seen => std::task::Poll::Ready(now),
                _ => std::task::Poll::Pending,
            }
        })
        .await
    }

    /// A waker woken at every change of the faults, for as long as the caller keeps it.
    pub fn watch(&self) -> Arc<AtomicWaker> {
        let waker = Arc::new(AtomicWaker::new());
        let mut watchers = lock(&self.watchers);
        // Gone tunnels are dropped now and then (and at every change), not at every new one.
        if watchers.len() % 1024 == 1023 {
            watchers.retain(|w| w.strong_count() > 0);
        }
        watchers.push(Arc::downgrade(&waker));
        waker
    }
}

/// Follows the shared store's changes to faults, for as long as the registry lives.
async fn follow(faults: Weak<Faults>) {
    let Some(store) = faults.upgrade().map(|f| f.store.clone()) else {
        return;
    };
    let Some(mut changes) = Changes::of(store.as_ref(), |path| path.starts_with(PREFIX)) else {
        return;
    };
    drop(store);
    while changes.next().await.is_some() {
        match faults.upgrade() {
            Some(faults) => faults.reload(),
            None => return,
        }
    }
}

/// Ends faults when their ttl passes: wakes at the next expiry, or every few seconds to see new
/// ones (a fault made later with a shorter ttl is ended within that).
async fn sweep(faults: Weak<Faults>) {
    const AT_MOST: i64 = 1000;
    loop {
        let next = match faults.upgrade() {
            Some(faults) => faults.sweep_expired(),
            None => return,
        };
        let wait_ms = next.map_or(AT_MOST, |at| (at - unix_now_ms()).clamp(10, AT_MOST));
        tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::fault::{CertificateFault, Scenario, What};
    use crate::store::{DataDir, FileBackend, Key, Kind, StoreError, Version};

    fn spec(ttl: Option<Duration>) -> FaultSpec {
        FaultSpec {
            what: What::Certificate(CertificateFault {
                scenario: Scenario::Expired,
                name: Some("exp.lab.test".into()),
                lifetime_ms: None,
            }),
            ttl,
        }
    }

    #[test]
    fn faults_are_added_listed_removed_and_expire() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(FileBackend::new(DataDir::open(tmp.path()).unwrap()));
        let faults = Faults::new(store);
        let files = || std::fs::read_dir(tmp.path()).unwrap().count();
        let before = files();
        let kept = faults.add(spec(None)).unwrap();
        let brief = faults.add(spec(Some(Duration::from_millis(1)))).unwrap();
        assert_eq!(faults.snapshot().len(), 2);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            faults.list(unix_now_ms()).len(),
            1,
            "the expired one is hidden"
        );
        assert_eq!(faults.sweep_expired(), None);
        assert_eq!(faults.snapshot().len(), 1, "and swept");
        assert!(matches!(
            faults.remove(&brief.id),
            Err(RegistryError::NotFound(_))
        ));
        faults.remove(&kept.id).unwrap();
        assert!(faults.snapshot().is_empty());
        // Nothing was written to the data directory: faults end with the process.
        assert_eq!(files(), before);
    }

    /// A shared store whose leases take a while to make once `slow` (etcd's round trips, drawn
    /// out), and cannot be made while `down`.
    struct SlowLeases {
        file: FileBackend,
        slow: std::sync::atomic::AtomicBool,
        down: std::sync::atomic::AtomicBool,
    }

    impl Backend for SlowLeases {
        fn read(&self, key: &Key) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
            self.file.read(key)
        }
        fn version(&self, key: &Key) -> Result<Option<Version>, StoreError> {
            self.file.version(key)
        }
        fn location(&self, key: &Key) -> String {
            self.file.location(key)
        }
        fn write(
            &self,
            key: &Key,
            bytes: &[u8],
            expected: Option<Version>,
        ) -> Result<Version, StoreError> {
            self.file.write(key, bytes, expected)
        }
        fn delete(&self, key: &Key) -> Result<(), StoreError> {
            self.file.delete(key)
        }
        fn list_kind(
            &self,
            kind: &Kind,
            id_prefix: &str,
        ) -> Result<Vec<(String, Vec<u8>, Version)>, StoreError> {
            self.file.list_kind(kind, id_prefix)
        }
        fn has_paths(&self) -> bool {
            true
        }
        fn keep_alive(
            &self,
            _path: &str,
            _bytes: &[u8],
            _ttl: Duration,
        ) -> Result<Option<crate::store::LeaseGuard>, StoreError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(StoreError::Unavailable("down".into()));
            }
            if self.slow.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(30));
            }
            Ok(None)
        }
    }

    /// Adds racing each other keep to the bound: each writes to the store between its check and
    /// its insert, and every one in that window used to pass.
    #[test]
    fn racing_adds_keep_to_the_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let file = FileBackend::new(DataDir::open(tmp.path()).unwrap());
        let store = Arc::new(SlowLeases {
            file,
            slow: false.into(),
            down: false.into(),
        });
        let faults = Faults::new(store.clone());
        for _ in 0..MAX_FAULTS - 1 {
            faults.add(spec(None)).unwrap();
        }
        store.slow.store(true, Ordering::Relaxed);
        let added = std::thread::scope(|scope| {
            let racing: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| faults.add(spec(None)).is_ok()))
                .collect();
            racing
                .into_iter()
                .map(|r| r.join().unwrap())
                .filter(|added| *added)
                .count()
        });
        assert_eq!(added, 1);
        assert_eq!(faults.list(unix_now_ms()).len(), MAX_FAULTS);
        // An add the store refuses gives its place back.
        let first = faults.list(unix_now_ms())[0].id.clone();
        faults.remove(&first).unwrap();
        store.down.store(true, Ordering::Relaxed);
        let refused = faults.add(spec(None));
        assert!(matches!(refused, Err(RegistryError::Store(_))));
        store.down.store(false, Ordering::Relaxed);
        assert!(faults.add(spec(None)).is_ok());
    }

    #[test]
    fn the_number_of_faults_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(FileBackend::new(DataDir::open(tmp.path()).unwrap()));
        let faults = Faults::new(store);
        for _ in 0..MAX_FAULTS {
            faults.add(spec(None)).unwrap();
        }
        assert!(matches!(faults.add(spec(None)), Err(RegistryError::Full)));
    }
}
