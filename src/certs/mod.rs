//! Which certificate a ClientHello gets, without sockets: minting and caching per name, the shared
//! certificate, bring-your-own files, ACME, and the pin to server-url.

pub mod acme;
pub mod byo;
pub mod persisted;
pub mod resolver;
pub mod served;

pub use resolver::{CertResolver, PendingPin};
