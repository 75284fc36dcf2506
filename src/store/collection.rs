//! The objects of one [`Kind`], one store value each: a write costs what the object holds, whatever
//! the number of objects (a login writes its token, not every token). Reads go to the backend each
//! time: etcd's are answered from its watched cache, the data directory's cost a `stat` and, when the
//! file changed, a read (so `corral reset-password`, another process, is seen at once).

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::backend::{Backend, Key, Kind, Listed, StoreError, Version};

/// Compare-and-swap attempts before an update gives up (each one lost to another writer).
const ATTEMPTS: usize = 8;

/// An object as stored, with the version its next compare-and-swap must name.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    pub value: T,
    pub version: Version,
}

pub struct Collection<T> {
    backend: Arc<dyn Backend>,
    kind: Kind,
    _objects: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Collection<T> {
    pub fn new(backend: Arc<dyn Backend>, kind: Kind) -> Self {
        Self {
            backend,
            kind,
            _objects: PhantomData,
        }
    }

    fn key(&self, id: &str) -> Result<Key, StoreError> {
        self.kind
            .key(id)
            .ok_or_else(|| StoreError::InvalidId(id.to_string()))
    }

    fn parse(&self, key: &Key, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Unreadable {
            location: self.backend.location(key),
            source,
        })
    }

    /// Object `id`; `None` when there is none (or `id` cannot name one).
    pub fn get(&self, id: &str) -> Result<Option<Stored<T>>, StoreError> {
        let Some(key) = self.kind.key(id) else {
            return Ok(None);
        };
        match self.backend.read(&key)? {
            None => Ok(None),
            Some((bytes, version)) => Ok(Some(Stored {
                value: self.parse(&key, &bytes)?,
                version,
            })),
        }
    }

    /// Objects `ids`, in their order (`None`: there is none, `id` names none, or it does not
    /// parse), in as few requests to the store as it can.
    pub fn get_many(&self, ids: &[String]) -> Result<Vec<Option<T>>, StoreError> {
        let keys: Vec<Option<Key>> = ids.iter().map(|id| self.kind.key(id)).collect();
        let valid: Vec<Key> = keys.iter().flatten().cloned().collect();
        let mut read = self.backend.read_many(&valid)?.into_iter();
        Ok(keys
            .iter()
            .map(|key| {
                let key = key.as_ref()?;
                let bytes = read.next()??;
                self.parse(key, &bytes)
                    .map_err(|e| tracing::warn!("{e}"))
                    .ok()
            })
            .collect())
    }

    /// Every object (as [`Collection::list`]), handed to `each` a page at a time: from a store that
    /// reads them from its server, only what `each` keeps stays in memory.
    pub fn for_each_page(
        &self,
        mut each: impl FnMut(Vec<(String, Stored<T>)>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.backend
            .list_kind_pages(&self.kind, &mut |page| each(self.parsed(page)))
    }

    /// Every object, by id. One that does not parse is left out, with a warning naming where it is.
    pub fn list(&self) -> Result<Vec<(String, Stored<T>)>, StoreError> {
        self.list_prefixed("")
    }

    /// The objects whose id starts with `id_prefix`, by id (as [`Collection::list`]).
    pub fn list_prefixed(&self, id_prefix: &str) -> Result<Vec<(String, Stored<T>)>, StoreError> {
        Ok(self.parsed(self.backend.list_kind(&self.kind, id_prefix)?))
    }

    /// Listed objects parsed; one that does not parse is left out, with a warning naming where it is.
    fn parsed(&self, listed: Listed) -> Vec<(String, Stored<T>)> {
        let mut objects = Vec::with_capacity(listed.len());
        for (id, bytes, version) in listed {
            let Some(key) = self.kind.key(&id) else {
                continue;
            };
            match self.parse(&key, &bytes) {
                Ok(value) => objects.push((id, Stored { value, version })),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        objects
    }

    /// Stores a new object; [`StoreError::Conflict`] when `id` exists already.
    pub fn create(&self, id: &str, value: &T) -> Result<Version, StoreError> {
        self.write(id, value, None)
    }

    /// Stores a new object unless `id` exists already, which is kept (moving what an earlier
    /// version kept elsewhere, again after a start cut short; replicas making one object at once).
    pub fn create_once(&self, id: &str, value: &T) -> Result<(), StoreError> {
        match self.create(id, value) {
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stores a new object under a generated id (`generate`, e.g. `grb-` and five random
    /// characters, as Rancher's generateName), trying another id when one is taken: among
    /// thousands of objects, five characters collide now and then. `make` builds the object for
    /// its id; the id and the object stored are returned.
    pub fn create_generated(
        &self,
        generate: impl Fn() -> String,
        make: impl Fn(&str) -> T,
    ) -> Result<(String, T), StoreError> {
        let mut last = StoreError::Conflict(String::new());
        for _ in 0..ATTEMPTS {
            let id = generate();
            let value = make(&id);
            match self.create(&id, &value) {
                Ok(_) => return Ok((id, value)),
                Err(StoreError::Conflict(taken)) => last = StoreError::Conflict(taken),
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Stores `value` if the stored version is still `expected` (`None`: no object yet).
    pub fn write(
        &self,
        id: &str,
        value: &T,
        expected: Option<Version>,
    ) -> Result<Version, StoreError> {
        let bytes = serde_json::to_vec(value).expect("objects serialize");
        self.backend.write(&self.key(id)?, &bytes, expected)
    }

    /// Applies `change` to the newest stored object `id` and stores it (compare-and-swap, retried
    /// when another writer came first); `None` when there is no such object.
    pub fn update<R, E: From<StoreError>>(
        &self,
        id: &str,
        mut change: impl FnMut(&mut T) -> Result<R, E>,
    ) -> Result<Option<R>, E> {
        for _ in 0..ATTEMPTS {
            let Some(Stored { mut value, version }) = self.get(id)? else {
                return Ok(None);
            };
            let result = change(&mut value)?;
            match self.write(id, &value, Some(version)) {
                Ok(_) => return Ok(Some(result)),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict(id.to_string()).into())
    }

    /// Applies `change` to object `id` as stored (`None`: there is none) and stores the object it
    /// gives (`None`: nothing to write), compare-and-swap: a create or an update that loses to
    /// another writer is tried again from what that writer stored (what the lost attempt returned
    /// is dropped).
    pub fn change<R, E: From<StoreError>>(
        &self,
        id: &str,
        mut change: impl FnMut(Option<&T>) -> Result<(Option<T>, R), E>,
    ) -> Result<R, E> {
        for _ in 0..ATTEMPTS {
            let stored = self.get(id)?;
            let (value, result) = change(stored.as_ref().map(|s| &s.value))?;
            let Some(value) = value else {
                return Ok(result);
            };
            match self.write(id, &value, stored.map(|s| s.version)) {
                Ok(_) => return Ok(result),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict(id.to_string()).into())
    }

    /// Applies `change` to object `id`, made from `absent` first when there is none (see
    /// [`Collection::change`]).
    pub fn update_or_create<E: From<StoreError>>(
        &self,
        id: &str,
        absent: impl Fn() -> T,
        mut change: impl FnMut(&mut T),
    ) -> Result<(), E>
    where
        T: Clone,
    {
        self.change(id, |stored| {
            let mut value = stored.cloned().unwrap_or_else(&absent);
            change(&mut value);
            Ok((Some(value), ()))
        })
    }

    /// Removes every object `doomed` picks (by id and value); how many went.
    pub fn delete_where(&self, doomed: impl Fn(&str, &T) -> bool) -> Result<usize, StoreError> {
        let mut deleted = 0;
        for (id, object) in self.list()? {
            if doomed(&id, &object.value) {
                self.delete(&id)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Removes object `id` (nothing when it is not there).
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        match self.kind.key(id) {
            Some(key) => self.backend.delete(&key),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DataDir, FileBackend};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_kind_is_its_directory_in_both_stores() {
        let users = Kind {
            dir: "users",
            prefix: "corral/users/",
            secret: true,
        };
        assert_eq!(crate::store::kind!("users", secret), users);
        let roles = crate::store::kind!("globalroles", public);
        assert_eq!((roles.prefix, roles.secret), ("corral/globalroles/", false));
    }

    const THINGS: Kind = Kind {
        dir: "things",
        prefix: "test/things/",
        secret: true,
    };

    fn things(dir: &DataDir) -> Collection<Vec<u32>> {
        Collection::new(Arc::new(FileBackend::new(dir.clone())), THINGS)
    }

    /// A generated id that is taken is not an error: the next one is tried; ids that are all
    /// taken give the conflict after a bounded number of tries.
    #[test]
    fn a_taken_generated_id_makes_another() {
        let tmp = tempfile::tempdir().unwrap();
        let things = things(&DataDir::open(tmp.path()).unwrap());
        things.create("x-1", &vec![1]).unwrap();
        let next = std::cell::Cell::new(0);
        let generate = || {
            next.set(next.get() + 1);
            format!("x-{}", next.get())
        };
        let (id, value) = things
            .create_generated(generate, |id| vec![id.len() as u32])
            .unwrap();
        assert_eq!((id.as_str(), value), ("x-2", vec![3]));
        assert_eq!(
            things.get("x-1").unwrap().unwrap().value,
            vec![1],
            "untouched"
        );
        let always = things.create_generated(|| "x-1".to_string(), |_| vec![9]);
        assert!(matches!(always, Err(StoreError::Conflict(_))), "{always:?}");
    }

    /// One file per object (0600 in a 0700 directory); two handles (two processes) see each
    /// other's writes and conflicts; a removed object is gone for both.
    #[test]
    fn objects_are_files_of_their_own() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let (ours, theirs) = (things(&dir), things(&dir));
        ours.create("a", &vec![1]).unwrap();
        assert!(matches!(
            theirs.create("a", &vec![2]),
            Err(StoreError::Conflict(_))
        ));
        theirs.create("b", &vec![2]).unwrap();
        let changed = theirs.update("a", |v| {
            v.push(10);
            Ok::<_, StoreError>(v.len())
        });
        assert_eq!(changed.unwrap(), Some(2));
        assert_eq!(ours.get("a").unwrap().unwrap().value, vec![1, 10]);
        let ids: Vec<String> = ours.list().unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["a", "b"]);
        let file = tmp.path().join("things/a.json");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&tmp.path().join("things")), 0o700);
        theirs.delete("a").unwrap();
        assert!(ours.get("a").unwrap().is_none());
        assert_eq!(ours.update("a", |_| Ok::<_, StoreError>(())).unwrap(), None);
    }

    /// A stale version loses: the write of whoever read before the other's write is refused.
    #[test]
    fn writes_are_compare_and_swap() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let things = things(&dir);
        let first = things.create("a", &vec![1]).unwrap();
        things.write("a", &vec![2], Some(first)).unwrap();
        let stale = things.write("a", &vec![3], Some(first));
        assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
        assert_eq!(things.get("a").unwrap().unwrap().value, vec![2]);
    }

    /// Ids that are not corral's own never become paths: a token name from a client cannot read
    /// another file.
    #[test]
    fn hostile_ids_name_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("secret.json"), "[1]").unwrap();
        let things = things(&dir);
        for id in ["../secret", "", ".hidden", "a/b", "a\0b", &"x".repeat(200)] {
            assert!(things.get(id).unwrap().is_none(), "{id:?}");
            assert!(
                matches!(things.create(id, &vec![1]), Err(StoreError::InvalidId(_))),
                "{id:?}"
            );
        }
        std::fs::create_dir_all(tmp.path().join("things")).unwrap();
        std::fs::write(tmp.path().join("things/broken.json"), "{").unwrap();
        std::fs::write(tmp.path().join("things/.c.json.corral-tmp-1-2"), "[3]").unwrap();
        things.create("ok", &vec![1]).unwrap();
        let ids: Vec<String> = things
            .list()
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            ids,
            ["ok"],
            "a damaged object and a temporary file are left out"
        );
    }
}
