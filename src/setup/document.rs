//! `setup.json`: users, login tokens (hashed) and settings, as one JSON document.
//!
//! Two processes may write it: `corral serve`, and `corral reset-password` run beside it. So every
//! change is a read-modify-write under an exclusive lock on a lock file beside it (`.setup.lock`,
//! `flock`), and the server re-reads the document whenever the file on disk is not the one it last
//! read or wrote: a reset takes effect at once, and no write of either loses the other's.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::state::{DataDir, SECRET_MODE, read_optional, write_atomic};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub must_change_password: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    pub name: String,
    pub secret_hash: String,
    pub user_id: String,
    pub created: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetupState {
    /// When setup state was first created (unix seconds): the settings' `created`.
    pub created: i64,
    pub users: Vec<User>,
    pub tokens: Vec<Token>,
    /// Settings set through the API (`server-url`, `first-login`).
    pub settings: BTreeMap<String, String>,
}

/// Which file was read: a rename puts a new inode in place, so (inode, mtime, length) changes with
/// every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    modified_ns: i128,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: meta.ino(),
        modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        len: meta.len(),
    })
}

/// The document as last read or written.
pub struct Loaded {
    state: SetupState,
    stamp: Option<Stamp>,
}

pub struct SetupDocument {
    path: PathBuf,
    lock_path: PathBuf,
    loaded: Mutex<Loaded>,
}

/// Why the document could not be read or written.
#[derive(Debug)]
pub enum DocumentError {
    Io(PathBuf, io::Error),
    Unreadable(PathBuf, serde_json::Error),
}

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DocumentError::Io(path, e) => write!(f, "{}: {e}", path.display()),
            DocumentError::Unreadable(path, e) => write!(
                f,
                "{} is unreadable ({e}); restore it or move it away to set up again",
                path.display()
            ),
        }
    }
}

impl std::error::Error for DocumentError {}

impl SetupDocument {
    /// Opens the document in `dir`; `None` for the state when there is none yet.
    pub fn open(dir: &DataDir) -> Result<(Self, Option<SetupState>), DocumentError> {
        let path = dir.setup_state();
        let (state, stamp) = read(&path)?;
        let document = Self {
            lock_path: dir.setup_lock(),
            loaded: Mutex::new(Loaded {
                state: state.clone().unwrap_or_default(),
                stamp,
            }),
            path,
        };
        Ok((document, state))
    }

    /// The current state, re-read first if another process wrote the file.
    pub fn read(&self) -> MutexGuard<'_, Loaded> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let on_disk = stamp(&self.path);
        if on_disk.is_some() && on_disk != loaded.stamp {
            match read(&self.path) {
                Ok((Some(state), stamp)) => {
                    tracing::info!("{} changed on disk; reloaded it", self.path.display());
                    *loaded = Loaded { state, stamp };
                }
                Ok((None, _)) => {}
                Err(e) => tracing::warn!("keeping the state in memory: {e}"),
            }
        }
        loaded
    }

    /// Applies `change` to the current state and saves the result, under the lock file; the change
    /// takes effect only if it is saved.
    pub fn update<T, E: From<DocumentError>>(
        &self,
        change: impl FnOnce(&mut SetupState) -> Result<T, E>,
    ) -> Result<T, E> {
        let _exclusive = lock_file(&self.lock_path)?;
        let mut loaded = self.read();
        let mut next = loaded.state.clone();
        let result = change(&mut next)?;
        save(&self.path, &next)?;
        loaded.stamp = stamp(&self.path);
        loaded.state = next;
        Ok(result)
    }
}

impl std::ops::Deref for Loaded {
    type Target = SetupState;
    fn deref(&self) -> &SetupState {
        &self.state
    }
}

/// Changes the document in `dir` from outside the server (`corral reset-password`), under the same
/// lock; `Ok(None)` when there is no document yet.
pub fn update_stored<T, E: From<DocumentError>>(
    dir: &DataDir,
    change: impl FnOnce(&mut SetupState) -> Result<T, E>,
) -> Result<Option<T>, E> {
    let _exclusive = lock_file(&dir.setup_lock())?;
    let path = dir.setup_state();
    let Some(mut state) = read(&path)?.0 else {
        return Ok(None);
    };
    let result = change(&mut state)?;
    save(&path, &state)?;
    Ok(Some(result))
}

fn read(path: &Path) -> Result<(Option<SetupState>, Option<Stamp>), DocumentError> {
    // The stamp first: a write landing between the two makes the next read reload, never miss it.
    let stamp = stamp(path);
    let Some(bytes) = read_optional(path).map_err(|e| DocumentError::Io(path.into(), e))? else {
        return Ok((None, None));
    };
    let state =
        serde_json::from_slice(&bytes).map_err(|e| DocumentError::Unreadable(path.into(), e))?;
    Ok((Some(state), stamp))
}

fn save(path: &Path, state: &SetupState) -> Result<(), DocumentError> {
    let json = serde_json::to_vec_pretty(state).expect("the state serializes");
    write_atomic(path, &json, SECRET_MODE).map_err(|e| DocumentError::Io(path.into(), e))
}

/// An exclusive `flock` on `path` (created 0600), held until the file is dropped.
fn lock_file(path: &Path) -> Result<File, DocumentError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(SECRET_MODE)
        .open(path)
        .map_err(|e| DocumentError::Io(path.into(), e))?;
    file.lock().map_err(|e| DocumentError::Io(path.into(), e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_by_another_process_is_seen_and_not_lost() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let (document, stored) = SetupDocument::open(&dir).unwrap();
        assert!(stored.is_none());
        document
            .update(|state| {
                state.settings.insert("a".into(), "1".into());
                Ok::<_, DocumentError>(())
            })
            .unwrap();
        // "Another process": the stored document changed behind the server's back.
        update_stored(&dir, |state| {
            state.settings.insert("b".into(), "2".into());
            Ok::<_, DocumentError>(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            document.read().settings.get("b").map(String::as_str),
            Some("2")
        );
        document
            .update(|state| {
                state.settings.insert("c".into(), "3".into());
                Ok::<_, DocumentError>(())
            })
            .unwrap();
        let (_, stored) = SetupDocument::open(&dir).unwrap();
        let keys: Vec<_> = stored.unwrap().settings.into_keys().collect();
        assert_eq!(keys, ["a", "b", "c"], "neither write lost the other");
    }
}
