//! corral: a Rust server that reproduces Rancher 2.x's TLS front end.
//!
//! Modules, one concern each: [`config`] (settings), [`state`] (the data directory and atomic writes),
//! [`pki`] (CA, minting, names, checksum), [`tls`] (accept loop and certificate selection),
//! [`http`] (Rancher's endpoints), [`setup`] (bootstrap, users, tokens, server-url),
//! [`ui`] (the embedded web page), [`server`] (startup wiring).

pub mod accounts;
pub mod agent;
pub mod app;
pub mod bench;
pub mod certs;
pub mod client;
pub mod clusters;
pub mod config;
pub mod http;
pub mod kubeconfig;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod pki;
pub mod store;
pub mod support;
pub mod tunnel;
