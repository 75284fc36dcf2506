//! The seam between documents and where they are kept, and the data-directory implementation.

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dir::{DataDir, PUBLIC_MODE, SECRET_MODE, read_optional, write_atomic};

/// Where a value is kept: its file in the data directory (`name`, also what logs call it), its key
/// under a distributed store's prefix (`path`), and whether it holds secrets (0600 in the data
/// directory). Fixed documents are constants; the objects of a [`Kind`] get theirs from
/// [`Kind::key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub name: Cow<'static, str>,
    pub path: Cow<'static, str>,
    pub secret: bool,
    /// The data directory's lock for writes of this key (`.<lock>.lock`): one per document, one per
    /// kind for the objects of a kind (so a kind of 10,000 objects has one lock file, not 10,000).
    lock: Option<&'static str>,
}

impl Key {
    pub const fn secret(name: &'static str, path: &'static str) -> Self {
        Self {
            name: Cow::Borrowed(name),
            path: Cow::Borrowed(path),
            secret: true,
            lock: None,
        }
    }

    pub const fn public(name: &'static str, path: &'static str) -> Self {
        Self {
            name: Cow::Borrowed(name),
            path: Cow::Borrowed(path),
            secret: false,
            lock: None,
        }
    }
}

/// A kind of object kept one value per object, as etcd holds Kubernetes objects: `DIR/<id>.json` in
/// the data directory, `<prefix><id>` on a shared store. Writing one object costs what it holds,
/// whatever the number of objects; a kind is listed with [`Backend::list_kind`], whole or the ids
/// that start with a prefix (a cluster's registration tokens, `<cluster>:…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// The data directory's subdirectory (one path segment).
    pub dir: &'static str,
    /// The shared store's path prefix, ending in `/`.
    pub prefix: &'static str,
    pub secret: bool,
}

/// The [`Kind`] kept in the data directory's `DIR/` and under `corral/DIR/` on a shared store:
/// `kind!("users", secret)` (its files are the owner's only, as [`Key::secret`]'s), or
/// `kind!("globalroles", public)`.
macro_rules! kind {
    ($dir:literal, secret) => {
        $crate::store::Kind {
            dir: $dir,
            prefix: concat!("corral/", $dir, "/"),
            secret: true,
        }
    };
    ($dir:literal, public) => {
        $crate::store::Kind {
            dir: $dir,
            prefix: concat!("corral/", $dir, "/"),
            secret: false,
        }
    };
}
pub(crate) use kind;

impl Kind {
    /// The key of object `id`; `None` when `id` cannot name an object: ids come from clients too
    /// (the name half of a presented token), and one must never reach another file.
    pub fn key(&self, id: &str) -> Option<Key> {
        valid_id(id).then(|| Key {
            name: Cow::Owned(format!("{}/{id}.json", self.dir)),
            path: Cow::Owned(format!("{}{id}", self.prefix)),
            secret: self.secret,
            lock: Some(self.dir),
        })
    }

    /// The id of the object a store path names, if it is one of this kind's.
    pub fn id_of<'a>(&self, path: &'a str) -> Option<&'a str> {
        path.strip_prefix(self.prefix).filter(|id| valid_id(id))
    }
}

/// Object ids are what corral generates (`token-…`, `user-…`, `c-…`): letters, digits, `-`, `_`,
/// `.` and `:`, not starting with `.`, at most 128 bytes.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Which write of a document is stored: changes with every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version(u128);

impl Version {
    /// A backend's own version number (etcd's revision), as a `Version`.
    pub fn from_raw(raw: u128) -> Self {
        Self(raw)
    }

    pub fn raw(self) -> u128 {
        self.0
    }
}

/// Why the store could not read or write a document.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{location} is unreadable ({source}); restore it or move it away")]
    Unreadable {
        location: String,
        source: serde_json::Error,
    },
    /// Another writer changed the document between our read and our write (or, for a key written
    /// only if absent, wrote it first).
    #[error("{0} was changed by another writer")]
    Conflict(String),
    /// An object id that cannot name a stored object (see [`Kind::key`]).
    #[error("{0:?} is not a valid object id")]
    InvalidId(String),
    /// The store cannot be reached (or did not answer in time): nothing was written.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

/// Objects of a kind as listed: id, bytes, version.
pub type Listed = Vec<(String, Vec<u8>, Version)>;
/// What takes one page of a listing at a time ([`Backend::list_kind_pages`]).
pub type PageSink<'a> = dyn FnMut(Listed) -> Result<(), StoreError> + 'a;

/// Where documents are kept: whole values, versioned, written with compare-and-swap.
pub trait Backend: Send + Sync + 'static {
    /// The stored bytes and their version; `None` when there is no such document.
    fn read(&self, key: &Key) -> Result<Option<(Vec<u8>, Version)>, StoreError>;
    /// The stored version, cheaply (to notice another writer).
    fn version(&self, key: &Key) -> Result<Option<Version>, StoreError>;
    /// Where `key` is kept, for messages (a path, a store key).
    fn location(&self, key: &Key) -> String;
    /// Writes `bytes` if the stored version is still `expected` (`None`: no document yet);
    /// [`StoreError::Conflict`] otherwise.
    fn write(
        &self,
        key: &Key,
        bytes: &[u8],
        expected: Option<Version>,
    ) -> Result<Version, StoreError>;
    /// Removes `key` (nothing when it is not there).
    fn delete(&self, key: &Key) -> Result<(), StoreError>;
    /// Every object of `kind` whose id starts with `id_prefix` (`""`: all): its id, bytes and
    /// version, by id.
    fn list_kind(&self, kind: &Kind, id_prefix: &str) -> Result<Listed, StoreError>;
    /// Every object of `kind` (as [`Backend::list_kind`]), handed to `each` a page at a time by a
    /// store that reads them from its server: only what `each` keeps stays in memory.
    fn list_kind_pages(&self, kind: &Kind, each: &mut PageSink<'_>) -> Result<(), StoreError> {
        each(self.list_kind(kind, "")?)
    }
    /// The values of `keys`, in their order (`None`: none there): from a store that asks its
    /// server, in as few requests as it can.
    fn read_many(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter()
            .map(|key| Ok(self.read(key)?.map(|(bytes, _)| bytes)))
            .collect()
    }
    /// The paths ([`Key::path`]) `wanted` accepts of the values other writers change from now on,
    /// as they change; `None` for a backend that only notices them when read (the data directory:
    /// [`Backend::version`] on each read). Paths `wanted` refuses are never queued for this
    /// receiver: a burst of writes elsewhere (thousands of agents connecting) cannot make it lag.
    fn changes(
        &self,
        _wanted: fn(&str) -> bool,
    ) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }
    /// The values under `prefix` (a path prefix), by path, as last seen. Only a shared store has
    /// such dynamic keys (replicas registering themselves); the data directory has none.
    fn list(&self, _prefix: &str) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }
    /// Whether this store keeps values at dynamic paths ([`Backend::put_path`],
    /// [`Backend::read_path`]): one key per object, as etcd holds Kubernetes objects, instead of
    /// growing one document past what a single write may carry.
    fn has_paths(&self) -> bool {
        false
    }
    /// Stores `bytes` at `path` whatever is there (one writer owns the path).
    fn put_path(&self, path: &str, _bytes: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::Unavailable(format!(
            "{path}: this store keeps no dynamic paths"
        )))
    }
    /// The value at `path`, as last seen.
    fn read_path(&self, _path: &str) -> Option<Vec<u8>> {
        None
    }
    /// Removes the value at `path` (nothing when there is none, or no dynamic paths).
    fn delete_path(&self, _path: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// Keeps `bytes` at `path` for as long as this process is alive and reaches the store: the
    /// value is removed `ttl` after the last renewal (an etcd lease), and put back when the store
    /// returns. Dropping the guard removes it. `None` from a backend without leases.
    fn keep_alive(
        &self,
        _path: &str,
        _bytes: &[u8],
        _ttl: std::time::Duration,
    ) -> Result<Option<LeaseGuard>, StoreError> {
        Ok(None)
    }
    /// Campaigns, in the background and for as long as the result lives, to lead `path` (held as
    /// `id` under a lease of `ttl`): one process of those campaigning leads at a time; when it dies
    /// another takes over after `ttl`. `None` from a backend without leases (one process: it
    /// always leads).
    fn campaign(
        &self,
        _path: &str,
        _id: &str,
        _ttl: std::time::Duration,
    ) -> Result<Option<Leadership>, StoreError> {
        Ok(None)
    }
}

/// Whether this process leads, for work exactly one replica does (renewing the HA certificate).
#[derive(Clone)]
pub struct Leadership {
    leading: Arc<std::sync::atomic::AtomicBool>,
    _guard: Arc<LeaseGuard>,
}

impl Leadership {
    pub fn new(leading: Arc<std::sync::atomic::AtomicBool>, guard: LeaseGuard) -> Self {
        Self {
            leading,
            _guard: Arc::new(guard),
        }
    }

    /// Whether this process holds the leadership now.
    pub fn is_leader(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A value kept alive by [`Backend::keep_alive`]; dropped, it stops being renewed and is removed.
pub struct LeaseGuard {
    stop: tokio_util::sync::CancellationToken,
}

impl LeaseGuard {
    pub fn new(stop: tokio_util::sync::CancellationToken) -> Self {
        Self { stop }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Stores `bytes` under `key` unless something is stored there already, and returns what is stored
/// afterwards: ours, or the value of whoever was first (replicas starting at once agree on one).
pub fn create_once(backend: &dyn Backend, key: &Key, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    for _ in 0..8 {
        if let Some((stored, _)) = backend.read(key)? {
            return Ok(stored);
        }
        match backend.write(key, bytes, None) {
            Ok(_) => return Ok(bytes.to_vec()),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict(key.name.to_string()))
}

/// Stores `bytes` under `key` whatever is there (the last writer wins), retrying a write that lost
/// a race. For values one writer owns (the ACME order's result, on the replica that ordered it).
pub fn put(backend: &dyn Backend, key: &Key, bytes: &[u8]) -> Result<Version, StoreError> {
    for _ in 0..8 {
        let expected = backend.version(key)?;
        match backend.write(key, bytes, expected) {
            Err(StoreError::Conflict(_)) => continue,
            other => return other,
        }
    }
    Err(StoreError::Conflict(key.name.to_string()))
}

/// Documents as files of the data directory: atomic writes (temp file, fsync, rename, directory
/// fsync), an exclusive `flock` on a lock file around each compare-and-swap so that two processes
/// never interleave, and the file's identity (inode, mtime, length) as its version.
pub struct FileBackend {
    dir: DataDir,
}

impl FileBackend {
    pub fn new(dir: DataDir) -> Self {
        Self { dir }
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.dir.root().join(key.name.as_ref())
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn version_of(path: &Path) -> Result<Option<Version>, StoreError> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            let modified = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
            let stamp = (u128::from(meta.ino()) << 96)
                ^ ((modified as u128) << 32)
                ^ u128::from(meta.len());
            Ok(Some(Version(stamp)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
    }
}

impl Backend for FileBackend {
    fn read(&self, key: &Key) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        let path = self.path(key);
        // The version first: a write landing between the two makes the next read reload, never miss it.
        let Some(version) = version_of(&path)? else {
            return Ok(None);
        };
        let bytes = read_optional(&path).map_err(io_error(&path))?;
        Ok(bytes.map(|bytes| (bytes, version)))
    }

    fn version(&self, key: &Key) -> Result<Option<Version>, StoreError> {
        version_of(&self.path(key))
    }

    fn location(&self, key: &Key) -> String {
        self.path(key).display().to_string()
    }

    fn write(
        &self,
        key: &Key,
        bytes: &[u8],
        expected: Option<Version>,
    ) -> Result<Version, StoreError> {
        let path = self.path(key);
        // `.setup.lock` beside `setup.json`: the name earlier versions locked, so they still agree.
        // Keys in a subdirectory (`acme/…`) lock beside the others, at the root; a kind's objects
        // share their kind's lock.
        let lock = match key.lock {
            Some(lock) => lock.to_string(),
            None => {
                let stem = key.name.strip_suffix(".json").unwrap_or(&key.name);
                stem.replace('/', "-")
            }
        };
        let _exclusive = lock_file(&self.dir.root().join(format!(".{lock}.lock")))?;
        if version_of(&path)? != expected {
            return Err(StoreError::Conflict(key.name.to_string()));
        }
        if let Some(parent) = path.parent() {
            create_private_dir(parent).map_err(io_error(parent))?;
        }
        let mode = if key.secret { SECRET_MODE } else { PUBLIC_MODE };
        write_atomic(&path, bytes, mode).map_err(io_error(&path))?;
        version_of(&path)?.ok_or_else(|| {
            io_error(&path)(io::Error::new(
                io::ErrorKind::NotFound,
                "gone right after it was written",
            ))
        })
    }

    fn delete(&self, key: &Key) -> Result<(), StoreError> {
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&path)(e)),
            // Durable as a write is: a removed token must not come back after a crash.
            _ => sync_dir(&path),
        }
    }

    fn list_kind(&self, kind: &Kind, id_prefix: &str) -> Result<Listed, StoreError> {
        let dir = self.dir.root().join(kind.dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&dir)(e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(&dir))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|id| id.starts_with(id_prefix))
            else {
                continue;
            };
            // Temporary files of writes in flight start with `.`; `key` refuses them.
            let Some(key) = kind.key(id) else { continue };
            // Removed between the listing and the read: not there.
            if let Some((bytes, version)) = self.read(&key)? {
                found.push((id.to_string(), bytes, version));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }
}

/// Creates `dir` (mode 0700) if it is not there: a kind's directory, made on its first write.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Makes a removal in the directory of `path` durable.
fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// An exclusive `flock` on `path` (created 0600), held until the file is dropped.
fn lock_file(path: &Path) -> Result<File, StoreError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(SECRET_MODE)
        .open(path)
        .map_err(io_error(path))?;
    file.lock().map_err(io_error(path))?;
    Ok(file)
}

/// The changes other writers make to some paths of a shared store, for a loop that follows them.
pub struct Changes {
    receiver: tokio::sync::broadcast::Receiver<String>,
    wanted: fn(&str) -> bool,
}

impl Changes {
    /// Changes to the paths `wanted` accepts; `None` for a backend that does not tell (the data
    /// directory).
    pub fn of(backend: &dyn Backend, wanted: fn(&str) -> bool) -> Option<Self> {
        Some(Self {
            receiver: backend.changes(wanted)?,
            wanted,
        })
    }

    /// Waits for the next change to a wanted path through `changes`; without changes to follow
    /// (`None`, or the store gone), waits for ever — for a loop that also runs on a timer.
    pub async fn next_or_never(changes: &mut Option<Changes>) {
        let next = match changes {
            Some(changes) => changes.next().await,
            None => None,
        };
        if next.is_none() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits for the next change to a wanted path: `Some(Some(path))`, or `Some(None)` after a
    /// burst too large to follow (which may have held any); `None` once the store is gone.
    pub async fn next_path(&mut self) -> Option<Option<String>> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match self.receiver.recv().await {
                Ok(path) if (self.wanted)(&path) => return Some(Some(path)),
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => return Some(None),
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Waits for the next change to a wanted path (or for a burst too large to follow, which may
    /// have held one); `None` once the store is gone.
    pub async fn next(&mut self) -> Option<()> {
        self.next_path().await.map(|_| ())
    }
}
