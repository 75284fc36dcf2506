//! Tunnel peering between replicas, as remotedialer's peers (Rancher HA): this replica dials every
//! other registered replica's `/v3/connect` as a client (`X-API-Tunnel-ID`, `X-API-Tunnel-Token`,
//! redial after 5 s), announces the agents it holds on that session (AddClient for each on
//! connecting, then AddClient/RemoveClient as they come and go), and serves the other replica's
//! relayed dials: a Connect for `<clientKey>::<proto>/<address>` is dialed through this replica's own
//! tunnel for that key, and the bytes piped.
//!
//! Rancher's peers do not verify each other's TLS; a replica here does, before it sends its peer
//! token: whatever listens at a registered replica's address (a process that took a dead replica's
//! port) must prove it is one of the installation's replicas ([`PeerVerifier`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::client::{Target, signature_algorithms, tls_verified_by};
use crate::replicas::Replicas;
use crate::store::Changes;
use crate::tunnel::session::{Connector, Serving};
use crate::tunnel::{ClientEvent, Role, Session, TunnelRegistry, TunnelStream, websocket};

/// Wait before dialing a peer again after a failure or a disconnect (remotedialer's).
const REDIAL_WAIT: Duration = Duration::from_secs(5);
/// The peer's WebSocket handshake must finish within this (remotedialer's HandshakeTimeOut).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the peer list is read again even without a store event (a missed one costs this much).
const RESCAN_INTERVAL: Duration = Duration::from_secs(5);

/// The certificate this replica serves now (to a client of 127.0.0.1 without SNI).
pub type ServedLeaf = Arc<dyn Fn() -> CertificateDer<'static> + Send + Sync>;

/// Decides whether a peer's certificate proves it one of the installation's replicas: its key is
/// the key this replica serves with (replicas share the leaf key, the bring-your-own files, the
/// ACME certificate), or it chains to the installation's CA (or the `cacerts` bundle), whose keys
/// only replicas hold. Its names are not checked: replicas are dialed at their addresses, and serve
/// certificates for the install's hostname or for whatever names clients asked for.
#[derive(Debug)]
pub struct PeerVerifier {
    roots: rustls::RootCertStore,
    served: ServedKey,
}

/// [`ServedLeaf`], for `PeerVerifier`'s `Debug`.
struct ServedKey(ServedLeaf);

impl std::fmt::Debug for ServedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServedKey")
    }
}

impl PeerVerifier {
    /// Trusts the certificates of `roots_pem` (the CA, the `cacerts` bundle) and the key of what
    /// `served` returns.
    pub fn new(roots_pem: &[u8], served: ServedLeaf) -> Self {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(roots_pem).flatten() {
            let _ = roots.add(cert);
        }
        Self {
            roots,
            served: ServedKey(served),
        }
    }
}

/// The subjectPublicKeyInfo of a certificate, as DER.
fn public_key(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.public_key().raw.to_vec())
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ours = public_key(&(self.served.0)());
        if ours.is_some() && ours == public_key(end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            signature_algorithms().all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &signature_algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        signature_algorithms().supported_schemes()
    }
}

/// Keeps one outgoing peer session to every other registered replica until `shutdown`; peers'
/// certificates are checked by `verifier` before anything is sent.
pub fn start(
    replicas: Arc<Replicas>,
    tunnels: Arc<TunnelRegistry>,
    verifier: Arc<PeerVerifier>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut changes = replicas.changes();
        let mut dialers: HashMap<String, CancellationToken> = HashMap::new();
        loop {
            let others = replicas.others();
            dialers.retain(|id, stop| {
                let listed = others.iter().any(|r| &r.id == id);
                if !listed {
                    tracing::info!("peer {id} left (its lease expired or it stopped)");
                    stop.cancel();
                }
                listed
            });
            for replica in others {
                if dialers.contains_key(&replica.id) {
                    continue;
                }
                let stop = shutdown.child_token();
                dialers.insert(replica.id.clone(), stop.clone());
                let peer = Peer {
                    id: replica.id,
                    replicas: replicas.clone(),
                    tunnels: tunnels.clone(),
                    verifier: verifier.clone(),
                };
                tokio::spawn(peer.keep_connected(stop));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = Changes::next_or_never(&mut changes) => {}
                _ = tokio::time::sleep(RESCAN_INTERVAL) => {}
            }
        }
    });
}

/// Another replica, as this one dials it.
struct Peer {
    id: String,
    replicas: Arc<Replicas>,
    tunnels: Arc<TunnelRegistry>,
    verifier: Arc<PeerVerifier>,
}

#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    #[error(transparent)]
    Connect(#[from] crate::client::ConnectError),
    #[error("{0}")]
    Handshake(#[from] websocket::HandshakeError),
    #[error("no connection and WebSocket handshake within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
}

impl Peer {
    async fn keep_connected(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                result = self.connect_once() => match result {
                    Ok(()) => tracing::info!("peer session to {} ended", self.id),
                    Err(PeerError::Connect(e @ crate::client::ConnectError::Tls { .. })) => {
                        tracing::warn!(
                            "not sending the peer token to {}: it is not one of this \
                             installation's replicas ({e})",
                            self.id
                        )
                    }
                    Err(e) => tracing::debug!("cannot open a peer session to {}: {e}", self.id),
                },
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REDIAL_WAIT) => {}
            }
        }
    }

    /// One peer session: the handshake, then announcements and relayed dials until it ends.
    async fn connect_once(&self) -> Result<(), PeerError> {
        let target = Target::parse(&format!("https://{}", self.id))?;
        // TCP, TLS and the WebSocket handshake share one deadline: a peer that hangs costs 10 s.
        // The token goes out only after the peer's certificate has proved it a replica.
        let tls_config = tls_verified_by(self.verifier.clone(), &[b"http/1.1"])?;
        let handshake = async {
            let tls = target.connect(tls_config).await?;
            let headers = [
                ("X-API-Tunnel-ID", self.replicas.id()),
                ("X-API-Tunnel-Token", self.replicas.token()),
            ];
            let authority = target.authority();
            let ws = websocket::connect(tls, &authority, "/v3/connect", &headers).await?;
            Ok::<_, PeerError>(ws)
        };
        let ws = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| PeerError::Timeout)??;
        tracing::info!("peer session to {} open", self.id);
        let relay: Arc<dyn Connector> = Arc::new(Relay {
            tunnels: self.tunnels.clone(),
        });
        let (session, outgoing) = Session::new(Role::Client, "client", Some(relay));
        let announcing = announce(session.clone(), self.tunnels.clone());
        let result = tokio::select! {
            result = session.run(ws, outgoing) => result,
            () = announcing => Ok(()),
        };
        session.close();
        if let Err(e) = result {
            tracing::info!("peer session to {}: {e}", self.id);
        }
        Ok(())
    }
}

/// Tells the peer about every agent session here, then about each one that comes or goes. A burst
/// too large to follow (the event queue overflowed) ends the session: the next one starts from the
/// full list again.
async fn announce(session: Arc<Session>, tunnels: Arc<TunnelRegistry>) {
    let mut events = tunnels.subscribe();
    for (key, session_key) in tunnels.local_clients() {
        session.announce(true, &key, session_key).await;
    }
    loop {
        match events.recv().await {
            Ok(ClientEvent::Added { key, session_key }) => {
                session.announce(true, &key, session_key).await
            }
            Ok(ClientEvent::Removed { key, session_key }) => {
                session.announce(false, &key, session_key).await
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!("{missed} agent events not announced to a peer: reconnecting");
                return;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Serves a peer's relayed dials through this replica's own agent sessions.
struct Relay {
    tunnels: Arc<TunnelRegistry>,
}

impl Connector for Relay {
    /// remotedialer's peer sessions allow every Connect; only relayed ones (`key::proto`) mean
    /// anything to a replica, which dials nothing itself.
    fn allows(&self, proto: &str, _address: &str) -> bool {
        proto.contains("::")
    }

    fn serve(&self, proto: String, address: String, stream: TunnelStream) -> Serving {
        let tunnels = self.tunnels.clone();
        Box::pin(async move {
            let Some((key, proto)) = proto.split_once("::") else {
                return stream.fail(&format!("invalid relayed connect {proto:?}"));
            };
            // Only this replica's own sessions: a relay never goes on to a third replica.
            let Some(agent) = tunnels.local(key) else {
                return stream.fail(&format!("failed to find Session for client {key}"));
            };
            match agent.open_stream(proto, &address).await {
                Ok(target) => stream.relay(target).await,
                Err(e) => stream.fail(&e.to_string()),
            }
        })
    }
}
