//! corral: a Rust server that reproduces Rancher 2.x's TLS front end.
//!
//! Layers, each importing only those below it (README, "How the code is laid out"):
//! [`labctl`] → [`lab_up`] → [`app`] (composition and shutdown) → [`http`], [`agent`], [`bench`], [`peering`] → [`ca_bundle`] (what `/cacerts` distributes, CA rotation) → [`api`]
//! (norman's rules: schemas, URLs, collections, errors) → [`net`]
//! (listener), [`certs`] (which certificate a hello gets), [`accounts`], [`clusters`], [`tunnel`],
//! [`replicas`], [`kubeconfig`] → [`lab`] → [`pki`], [`store`] (durable state behind one seam), [`config`], [`client`] →
//! [`metrics`], [`limits`], [`secrets`], [`support`].

pub mod accounts;
pub mod agent;
pub mod api;
pub mod app;
pub mod bench;
pub mod ca_bundle;
pub mod certs;
pub mod client;
pub mod clusters;
pub mod config;
pub mod http;
pub mod kubeconfig;
pub mod lab;
pub mod lab_up;
pub mod labctl;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod peering;
pub mod pki;
pub mod rbac;
pub mod replicas;
pub mod secrets;
pub mod store;
pub mod support;
pub mod tunnel;
