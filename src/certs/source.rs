//! One strategy for choosing certificates, as rustls's `ResolvesServerCert` is one way of resolving
//! them: per-host leaves, the shared certificate, bring-your-own files, ACME. The certificate service
//! asks the configured source until server-url pins it (see `PinPlan`), then none.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;

use super::CertError;
use super::persisted::{PersistedCert, PreparedName};
use super::template::Served;
use crate::pki::SubjectName;

pub trait CertSource: Send + Sync + 'static {
    /// The config for a connection whose certificate exists already — no minting, no learning, no
    /// lock: the hot path. `None` sends the hello down [`CertSource::choose`], inside the handshake.
    fn ready(&self, sni: Option<&str>, local_ip: IpAddr) -> Option<Arc<ServerConfig>>;

    /// The certificate for a connection from `client` that sent `sni` (if any) to `local_ip`,
    /// minting or learning names as needed. Never fails: a refused name gets another certificate.
    fn choose(&self, sni: Option<&str>, local_ip: IpAddr, client: IpAddr) -> Arc<Served>;

    /// The leaf a client of 127.0.0.1 without SNI gets.
    fn current_leaf(&self) -> CertificateDer<'static>;

    /// Certificates (or, for the shared certificate, names) held for clients, for
    /// `corral_certificate_cache_entries`.
    fn held(&self) -> usize {
        0
    }

    /// What pinning to `host` will serve, made but not served; `None` when this source is never
    /// pinned (its certificate is every client's already).
    fn prepare_pin(&self, _host: &SubjectName) -> Result<Option<PinPlan>, CertError> {
        Ok(None)
    }

    /// A `Host` header seen on a request from `client` (dynamiclistener learns some).
    fn learn_host(&self, _host: &str, _user_agent: Option<&str>, _client: IpAddr) {}

    /// Starts what runs beside the listeners (a file watch, an ACME client); needs the runtime.
    fn start(self: Arc<Self>) {}

    /// ACME HTTP-01: the key authorization for a token being validated.
    fn acme_challenge(&self, _token: &str) -> Option<String> {
        None
    }

    /// ACME TLS-ALPN-01: the config presenting the challenge certificate for `domain`.
    fn alpn_challenge(&self, _domain: &str) -> Option<Arc<ServerConfig>> {
        None
    }

    /// Bring-your-own files: the chain served.
    fn files_chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        None
    }
}

/// How a source is pinned to server-url's host.
pub enum PinPlan {
    /// A certificate of its own for the host (`per-host` mode); `fresh` when it is not stored yet.
    Own {
        cert: Arc<PersistedCert>,
        fresh: bool,
    },
    /// The shared certificate with the host added (`None`: it has the host), frozen once pinned.
    Shared {
        cert: Arc<PersistedCert>,
        prepared: Option<PreparedName>,
    },
}
