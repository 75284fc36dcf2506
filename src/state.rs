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
        // An existing directory keeps its mode unless it is more open than 0700: keys live here.
        let mode = fs::metadata(root)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
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
}

/// Writes `contents` to `path` atomically and durably, with the file mode `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
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
    fn data_dir_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        DataDir::open(&root).unwrap();
        let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
