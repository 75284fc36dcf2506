//! Durable state, behind one seam. Everything corral keeps is either a file of the data directory
//! ([`DataDir`], written with [`write_atomic`]), a typed JSON [`Document`] kept by a [`Backend`]
//! (the settings, the clusters, the certificates that must survive a restart), or one object of a
//! [`Collection`], a value of its own (users, login tokens). The backends are the data directory
//! ([`FileBackend`]) and etcd (`etcd::EtcdBackend`), behind the same trait.
//!
//! A document is changed only through [`Document::update`]: read the newest version, apply the change
//! to a copy, write it back if nobody wrote in between (compare-and-swap on the version, retried),
//! and only then make it current. A failed write changes nothing, in memory or on disk. A document
//! another process changed (`corral reset-password` beside the server) is re-read when it is next
//! read.

mod backend;
mod collection;
pub mod dir;
mod document;
#[cfg(feature = "etcd")]
pub mod etcd;

pub(crate) use backend::kind;
pub use backend::{
    Backend, Changes, FileBackend, Key, Kind, Leadership, LeaseGuard, StoreError, Version,
    create_once, put,
};
pub use collection::{Collection, Stored};
pub use dir::{DataDir, PUBLIC_MODE, SECRET_MODE, read_optional, write_atomic};
pub use document::Document;
