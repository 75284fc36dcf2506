//! corral: a Rust server that reproduces Rancher 2.x's TLS front end.
//!
//! Modules, one concern each: [`config`] (settings), [`state`] (the data directory and atomic writes),
//! [`pki`] (CA, minting, names, checksum), [`tls`] (accept loop and certificate selection),
//! [`http`] (Rancher's endpoints), [`server`] (startup wiring).

pub mod config;
pub mod http;
pub mod pki;
pub mod server;
pub mod state;
pub mod tls;
