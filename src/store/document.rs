//! A typed document on a [`Backend`]: read, update, watch.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::backend::{Backend, Key, StoreError, Version};

/// Compare-and-swap attempts before an update gives up (each one lost to another writer).
const ATTEMPTS: usize = 8;

/// One JSON document, cached in memory, changed only through [`Document::update`].
pub struct Document<T> {
    backend: Arc<dyn Backend>,
    key: Key,
    cached: Mutex<Cached<T>>,
    /// Every new value, for whoever watches (an update here, or a change read from the store).
    changes: watch::Sender<Arc<T>>,
}

struct Cached<T> {
    value: Arc<T>,
    /// `None`: nothing stored yet.
    version: Option<Version>,
}

impl<T> Document<T>
where
    T: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static,
{
    /// Opens the document `key`; the value is `T::default()` when nothing is stored yet, which the
    /// boolean says (a first start).
    pub fn open(backend: Arc<dyn Backend>, key: Key) -> Result<(Self, bool), StoreError> {
        let (value, version) = load::<T>(backend.as_ref(), &key)?;
        let existed = version.is_some();
        Ok((Self::holding(backend, key, value, version), existed))
    }

    fn holding(backend: Arc<dyn Backend>, key: Key, value: T, version: Option<Version>) -> Self {
        let value = Arc::new(value);
        let (changes, _) = watch::channel(value.clone());
        Self {
            backend,
            key,
            cached: Mutex::new(Cached { value, version }),
            changes,
        }
    }

    /// As [`Document::open`], but a stored value that does not parse (an older format, a damaged
    /// file) is logged and replaced at the first update instead of refusing the start: for documents
    /// that can be made again (certificates), never for accounts.
    pub fn open_or_replace(
        backend: Arc<dyn Backend>,
        key: Key,
    ) -> Result<(Self, bool), StoreError> {
        match Self::open(backend.clone(), key.clone()) {
            Err(e @ StoreError::Unreadable { .. }) => {
                tracing::warn!("{e}; making it again");
                let version = backend.version(&key)?;
                Ok((Self::holding(backend, key, T::default(), version), false))
            }
            opened => opened,
        }
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    fn lock(&self) -> MutexGuard<'_, Cached<T>> {
        crate::support::lock(&self.cached)
    }

    /// The current value, re-read first if another writer changed it.
    pub fn read(&self) -> Arc<T> {
        let mut cached = self.lock();
        self.refresh(&mut cached);
        cached.value.clone()
    }

    fn refresh(&self, cached: &mut Cached<T>) {
        let stored = match self.backend.version(&self.key) {
            Ok(stored) => stored,
            Err(e) => return tracing::warn!("keeping {} in memory: {e}", self.key.name),
        };
        if stored.is_none() || stored == cached.version {
            return;
        }
        match load(self.backend.as_ref(), &self.key) {
            Ok((value, version)) => {
                tracing::info!("{} changed in the store; reloaded it", self.key.name);
                cached.value = Arc::new(value);
                cached.version = version;
                self.changes.send_replace(cached.value.clone());
            }
            Err(e) => tracing::warn!("keeping {} in memory: {e}", self.key.name),
        }
    }

    /// Applies `change` to a copy of the newest value and stores it; the result is current only once
    /// stored. Lost to another writer, the change is applied again to what that writer stored.
    pub fn update<R, E: From<StoreError>>(
        &self,
        mut change: impl FnMut(&mut T) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut cached = self.lock();
        for _ in 0..ATTEMPTS {
            self.refresh(&mut cached);
            let mut next = (*cached.value).clone();
            let result = change(&mut next)?;
            let bytes = serde_json::to_vec_pretty(&next).expect("documents serialize");
            match self.backend.write(&self.key, &bytes, cached.version) {
                Ok(version) => {
                    cached.value = Arc::new(next);
                    cached.version = Some(version);
                    self.changes.send_replace(cached.value.clone());
                    return Ok(result);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict(self.key.name.to_string()).into())
    }

    /// Every value from now on, newest first.
    pub fn watch(&self) -> watch::Receiver<Arc<T>> {
        self.changes.subscribe()
    }
}

fn load<T: DeserializeOwned + Default>(
    backend: &dyn Backend,
    key: &Key,
) -> Result<(T, Option<Version>), StoreError> {
    match backend.read(key)? {
        None => Ok((T::default(), None)),
        Some((bytes, version)) => {
            let value =
                serde_json::from_slice(&bytes).map_err(|source| StoreError::Unreadable {
                    location: backend.location(key),
                    source,
                })?;
            Ok((value, Some(version)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DataDir, FileBackend};
    use std::collections::BTreeMap;

    type Settings = BTreeMap<String, String>;
    const KEY: Key = Key::secret("settings.json", "test/settings");

    fn set(document: &Document<Settings>, key: &str, value: &str) {
        document
            .update(|settings| {
                settings.insert(key.into(), value.into());
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    /// Two handles on one data directory (two processes): each sees the other's writes, and
    /// neither's write loses the other's.
    #[test]
    fn writers_see_each_other_and_lose_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let backend = || Arc::new(FileBackend::new(dir.clone())) as Arc<dyn Backend>;
        let (server, existed) = Document::<Settings>::open(backend(), KEY).unwrap();
        assert!(!existed);
        let (other, _) = Document::<Settings>::open(backend(), KEY).unwrap();
        let mut watching = server.watch();
        set(&server, "a", "1");
        set(&other, "b", "2");
        assert_eq!(server.read().get("b").map(String::as_str), Some("2"));
        set(&server, "c", "3");
        let (reopened, existed) = Document::<Settings>::open(backend(), KEY).unwrap();
        assert!(existed);
        let keys: Vec<_> = reopened.read().keys().cloned().collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert!(watching.has_changed().unwrap());
        assert_eq!(watching.borrow_and_update().len(), 3);
    }

    /// A failed change leaves the document as it was, in memory and on disk.
    #[test]
    fn a_refused_change_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let (document, _) =
            Document::<Settings>::open(Arc::new(FileBackend::new(dir.clone())), KEY).unwrap();
        set(&document, "a", "1");
        let refused: Result<(), StoreError> = document.update(|settings| {
            settings.insert("b".into(), "2".into());
            Err(StoreError::Conflict("test".into()))
        });
        assert!(refused.is_err());
        assert_eq!(document.read().len(), 1);
        let stored = std::fs::read_to_string(dir.root().join("settings.json")).unwrap();
        assert!(!stored.contains("\"b\""));
    }

    /// A damaged document stops `open` (accounts are never silently replaced); `open_or_replace`
    /// starts from the default and its first update replaces the damaged file.
    #[test]
    fn a_damaged_document_is_refused_or_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        std::fs::write(dir.root().join("settings.json"), "{ not json").unwrap();
        let backend = || Arc::new(FileBackend::new(dir.clone())) as Arc<dyn Backend>;
        let refused = Document::<Settings>::open(backend(), KEY).err().unwrap();
        assert!(
            matches!(refused, StoreError::Unreadable { .. }),
            "{refused}"
        );
        let (document, existed) = Document::<Settings>::open_or_replace(backend(), KEY).unwrap();
        assert!(!existed);
        set(&document, "a", "1");
        let (reopened, existed) = Document::<Settings>::open(backend(), KEY).unwrap();
        assert!(existed);
        assert_eq!(reopened.read().get("a").map(String::as_str), Some("1"));
    }
}
