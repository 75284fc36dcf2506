//! The data directory: where every piece of durable state lives, and the one way it is written.
//!
//! Every write goes through [`write_atomic`]: a temporary file in the same directory, fsync, rename over
//! the target, fsync of the directory. A crash at any instant therefore leaves either the old file or the
//! new one, never a torn mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File mode for anything secret (private keys): owner read/write only.
pub const SECRET_MODE: u32 = 0o600;
/// File mode for public material (certificates, checksums, name lists).
pub const PUBLIC_MODE: u32 = 0o644;

/// The layout of a corral data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Opens (creating if needed, mode 0700) the data directory at `root`.
    pub fn open(root: &Path) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)?;
        // An existing directory keeps its mode unless it is more open than 0700 (keys live here):
        // then only the group's and others' bits go, and a sticky or setgid bit stays.
        let mode = fs::metadata(root)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            fs::set_permissions(root, fs::Permissions::from_mode(mode & !0o077))?;
        }
        let dir = Self {
            root: root.to_path_buf(),
        };
        remove_stale_temp_files(&dir.root)?;
        for entry in fs::read_dir(&dir.root)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                remove_stale_temp_files(&entry.path())?;
            }
        }
        dir.repair_secret_modes()?;
        Ok(dir)
    }

    /// Files that hold secrets (keys, password and token hashes): mode 0600.
    fn secret_files(&self) -> [PathBuf; 7] {
        let acme = self.acme();
        [
            self.ca_key(),
            self.leaf_key(),
            self.setup_state(),
            self.bootstrap_password(),
            self.clusters(),
            acme.join("key.pem"),
            acme.join("account.json"),
        ]
    }

    /// A secret file found readable by others (copied in by hand, restored from a backup) is
    /// narrowed to 0600 before anything reads it, with a warning: it may have been read already.
    fn repair_secret_modes(&self) -> io::Result<()> {
        for path in self.secret_files() {
            let mode = match fs::metadata(&path) {
                Ok(meta) => meta.permissions().mode() & 0o777,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if mode & 0o077 != 0 {
                fs::set_permissions(&path, fs::Permissions::from_mode(SECRET_MODE))?;
                tracing::warn!(
                    "{} had mode {mode:04o}; set it to {SECRET_MODE:04o} (it holds a secret: \
                     replace it if others could have read it)",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// A data directory that is only read (for `corral ca checksum`): never created.
    pub fn existing(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }

    /// A rotated CA's key and certificate in one file (0600), written before `ca.key` and
    /// `ca.crt` are replaced: the rotation's commit point, finished by the next load if cut short.
    pub fn ca_rotated(&self) -> PathBuf {
        self.root.join("ca.rotated.pem")
    }

    /// The key pair shared by every minted leaf (one signature per mint, not a key generation).
    pub fn leaf_key(&self) -> PathBuf {
        self.root.join("leaf.key")
    }

    /// `shared` mode: the one certificate and the names it carries.
    pub fn shared_cert(&self) -> PathBuf {
        self.root.join("shared-cert.json")
    }

    /// The one certificate served once server-url is set (`per-host` mode).
    pub fn pinned_cert(&self) -> PathBuf {
        self.root.join("pinned-cert.json")
    }

    /// Clusters and their registration tokens (hashed).
    pub fn clusters(&self) -> PathBuf {
        self.root.join("clusters.json")
    }

    /// Users, tokens and settings written through setup and the API.
    pub fn setup_state(&self) -> PathBuf {
        self.root.join("setup.json")
    }

    /// A generated bootstrap password, kept until first login (Rancher's `bootstrap-secret`).
    pub fn bootstrap_password(&self) -> PathBuf {
        self.root.join("bootstrap-password")
    }

    /// ACME mode: the account, the key and the certificate obtained.
    pub fn acme(&self) -> PathBuf {
        self.root.join("acme")
    }
}

/// The temporary file [`write_atomic`] writes next to `path` before renaming it into place:
/// `.<name>.corral-tmp-<pid>-<n>`, unique within the process and, through the pid, among the
/// processes writing at once.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    Ok(dir.join(format!(
        ".{}{TEMP_MARKER}{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )))
}

/// Between a temporary file's target name and what makes it unique.
const TEMP_MARKER: &str = ".corral-tmp-";
/// What earlier versions wrote instead (`.<name>.tmp-<pid>`), for the files they wrote.
const LEGACY_MARKER: &str = ".tmp-";
const LEGACY_TARGETS: [&str; 12] = [
    "ca.crt",
    "ca.key",
    "leaf.key",
    "setup.json",
    "clusters.json",
    "shared-cert.json",
    "pinned-cert.json",
    "bootstrap-password",
    "cert.pem",
    "key.pem",
    "account.json",
    "challenges.json",
];
/// A temporary file younger than this may belong to a write that has not locked it yet.
const TEMP_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether `name` is a temporary file corral's own writes make (or made, in earlier versions).
fn is_corral_temp(name: &str) -> bool {
    let Some(hidden) = name.strip_prefix('.') else {
        return false;
    };
    if let Some((target, unique)) = hidden.rsplit_once(TEMP_MARKER) {
        return !target.is_empty()
            && !unique.is_empty()
            && unique.bytes().all(|b| b.is_ascii_digit() || b == b'-');
    }
    hidden
        .rsplit_once(LEGACY_MARKER)
        .is_some_and(|(target, pid)| {
            LEGACY_TARGETS.contains(&target)
                && !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Removes the temporary files that writes interrupted by a crash left in `dir` (they may hold
/// token hashes or keys): exactly corral's own, whatever process wrote them — the same pid as this
/// one included (a container's corral is always pid 1) — but not one a live writer holds (its
/// `flock`, taken as it is created) or has only just created.
fn remove_stale_temp_files(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_corral_temp(name) || !entry.file_type()?.is_file() {
            continue;
        }
        let path = entry.path();
        let age = entry
            .metadata()?
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .unwrap_or_default();
        if age < TEMP_MIN_AGE {
            continue;
        }
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // Held: a write in flight in another process.
        if file.try_lock().is_err() {
            continue;
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => tracing::info!("removed {}, left by an interrupted write", path.display()),
        }
    }
    Ok(())
}

/// Writes `contents` to `path` atomically and durably, with the file mode `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_path(path)?;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // Held until the file is closed: a start of corral meanwhile leaves it alone.
        file.lock()?;
        // `mode` on open is filtered by the umask and ignored for an existing file: set it explicitly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a file, mapping "not found" to `None`.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_atomic(&path, b"one", SECRET_MODE).unwrap();
        write_atomic(&path, b"two", SECRET_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn stale_temp_files_are_removed_and_secret_modes_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("acme")).unwrap();
        fs::create_dir_all(root.join("tokens")).unwrap();
        let stale = [
            root.join(".clusters.json.tmp-4242"),
            // pid 1 (a container's corral), and this process's own pid: stale all the same.
            root.join(".setup.json.tmp-1"),
            root.join(format!(".setup.json.tmp-{}", std::process::id())),
            root.join(".setup.json.corral-tmp-1-0"),
            root.join("acme/.key.pem.tmp-77"),
            root.join("tokens/.token-abc.json.corral-tmp-1-7"),
        ];
        let kept = [
            root.join(".hidden"),
            root.join("notes.tmp-12"),
            // Not a file corral writes: somebody else's.
            root.join(".mine.tmp-12"),
            root.join(".notes.corral-tmp-x"),
        ];
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for path in stale.iter().chain(&kept) {
            let file = File::create(path).unwrap();
            file.set_modified(an_hour_ago).unwrap();
        }
        // A write in flight in another process: its file is locked; one just created: not yet.
        let in_flight = root.join(".clusters.json.corral-tmp-99-1");
        let held = File::create(&in_flight).unwrap();
        held.set_modified(an_hour_ago).unwrap();
        let _lock = File::open(&in_flight).unwrap();
        _lock.lock().unwrap();
        let just_created = root.join(".setup.json.corral-tmp-98-1");
        File::create(&just_created).unwrap();
        for name in ["ca.key", "leaf.key", "setup.json"] {
            fs::write(root.join(name), b"secret").unwrap();
            fs::set_permissions(root.join(name), fs::Permissions::from_mode(0o644)).unwrap();
        }
        fs::write(root.join("ca.crt"), b"public").unwrap();
        fs::set_permissions(root.join("ca.crt"), fs::Permissions::from_mode(0o644)).unwrap();

        let dir = DataDir::open(root).unwrap();
        for path in &stale {
            assert!(!path.exists(), "{} removed", path.display());
        }
        for path in kept.iter().chain([&in_flight, &just_created]) {
            assert!(path.exists(), "{} kept", path.display());
        }
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.ca_key()), 0o600);
        assert_eq!(mode(dir.leaf_key()), 0o600);
        assert_eq!(mode(dir.setup_state()), 0o600);
        assert_eq!(mode(dir.ca_cert()), 0o644, "public files keep their mode");
    }

    /// A data directory readable by others is narrowed to the owner, keeping a sticky bit.
    #[test]
    fn a_looser_directory_is_tightened_and_keeps_its_sticky_bit() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o1777)).unwrap();
        DataDir::open(&root).unwrap();
        let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o1700);
    }

    #[test]
    fn data_dir_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        DataDir::open(&root).unwrap();
        let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
