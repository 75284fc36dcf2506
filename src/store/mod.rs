//! Durable state, behind one seam. Everything corral keeps is either a file of the data directory
//! ([`DataDir`], written with [`write_atomic`]) or a typed JSON [`Document`] kept by a [`Backend`]:
//! the accounts and settings, the clusters and their tokens, the certificates that must survive a
//! restart. The data directory is the backend today ([`FileBackend`]); a distributed store is the
//! next one, behind the same trait.
//!
//! A document is changed only through [`Document::update`]: read the newest version, apply the change
//! to a copy, write it back if nobody wrote in between (compare-and-swap on the version, retried),
//! and only then make it current. A failed write changes nothing, in memory or on disk. A document
//! another process changed (`corral reset-password` beside the server) is re-read when it is next
//! read.

mod backend;
pub mod dir;
mod document;
#[cfg(feature = "etcd")]
pub mod etcd;

pub use backend::{
    Backend, Changes, FileBackend, Key, Leadership, LeaseGuard, StoreError, Version, create_once,
    put,
};
pub use dir::{DataDir, PUBLIC_MODE, SECRET_MODE, read_optional, write_atomic};
pub use document::Document;
