//! The server's tunnel sessions, by client key (the cluster id), and the dialer that opens streams
//! through them. With several sessions for one key the oldest serves dials, as in remotedialer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;

use super::session::{Role, Session};
use super::stream::TunnelStream;

/// What a cluster agent advertises in `X-API-Tunnel-Params`: where its API is, the CA to verify it
/// with (base64 of a PEM) and the token to present to it. All three are required, as by Rancher.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterParams {
    #[serde(default)]
    pub address: String,
    #[serde(default, rename = "caCert")]
    pub ca_cert: String,
    #[serde(default)]
    pub token: String,
}

/// The decoded `X-API-Tunnel-Params` JSON: a cluster agent's params, or a node agent's.
#[derive(Deserialize)]
struct TunnelParams {
    cluster: Option<ClusterParams>,
    node: Option<serde_json::Value>,
}

/// Why `X-API-Tunnel-Params` was refused: the text of Rancher's 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("illegal base64 data in X-API-Tunnel-Params: {0}")]
    Base64(base64::DecodeError),
    /// serde_json's errors are neither `Clone` nor `PartialEq`: its text is kept.
    #[error("invalid X-API-Tunnel-Params: {0}")]
    Json(String),
    #[error("node agents are not supported by corral")]
    NodeAgent,
    #[error("missing node or cluster registration info")]
    Missing,
    #[error("invalid input, {0} empty")]
    Empty(&'static str),
}

impl ClusterParams {
    /// Parses `X-API-Tunnel-Params` (base64 of JSON).
    pub fn from_header(raw: &str) -> Result<Self, ParamsError> {
        use base64::Engine;
        let json = base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .map_err(ParamsError::Base64)?;
        let params: TunnelParams =
            serde_json::from_slice(&json).map_err(|e| ParamsError::Json(e.to_string()))?;
        let Some(cluster) = params.cluster else {
            return Err(match params.node {
                Some(_) => ParamsError::NodeAgent,
                None => ParamsError::Missing,
            });
        };
        if cluster.address.trim().is_empty() {
            return Err(ParamsError::Empty("address"));
        }
        if cluster.token.trim().is_empty() {
            return Err(ParamsError::Empty("token"));
        }
        if cluster.ca_cert.trim().is_empty() {
            return Err(ParamsError::Empty("caCert"));
        }
        Ok(cluster)
    }
}

struct Entry {
    session: Arc<Session>,
    params: ClusterParams,
}

/// Live sessions by client key.
#[derive(Default)]
pub struct TunnelRegistry {
    sessions: Mutex<HashMap<String, Vec<Entry>>>,
    /// Woken whenever a session is added, for dials waiting on an agent.
    added: Notify,
}

impl TunnelRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Entry>>> {
        crate::support::lock(&self.sessions)
    }

    /// Runs a server session for `key` over `ws` until it ends.
    pub async fn serve<S>(&self, key: &str, params: ClusterParams, ws: WebSocketStream<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (session, outgoing) = Session::new(Role::Server, key, None);
        self.lock().entry(key.to_string()).or_default().push(Entry {
            session: session.clone(),
            params,
        });
        self.added.notify_waiters();
        let sessions = &crate::metrics::metrics().tunnel_sessions;
        sessions.inc();
        tracing::info!(
            "tunnel for {key} connected (session {})",
            session.session_key()
        );
        let result = session.run(ws, outgoing).await;
        self.remove(key, &session);
        sessions.dec();
        match result {
            Ok(()) => tracing::info!("tunnel for {key} closed"),
            Err(e) => tracing::warn!("tunnel for {key} ended: {e}"),
        }
    }

    fn remove(&self, key: &str, session: &Arc<Session>) {
        let mut sessions = self.lock();
        if let Some(list) = sessions.get_mut(key) {
            list.retain(|e| !Arc::ptr_eq(&e.session, session));
            if list.is_empty() {
                sessions.remove(key);
            }
        }
    }

    /// The session that serves dials for `key` (the oldest live one) and what its agent advertised.
    pub fn first(&self, key: &str) -> Option<(Arc<Session>, ClusterParams)> {
        let sessions = self.lock();
        let entry = sessions.get(key)?.iter().find(|e| !e.session.is_closed())?;
        Some((entry.session.clone(), entry.params.clone()))
    }

    /// Like [`first`](Self::first), waiting up to `limit` for an agent to connect.
    pub async fn wait_for(
        &self,
        key: &str,
        limit: Duration,
    ) -> Option<(Arc<Session>, ClusterParams)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let added = self.added.notified();
            if let Some(found) = self.first(key) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return self.first(key);
            }
        }
    }

    /// Ends every session (shutdown); returns how many there were.
    pub fn close_all(&self) -> usize {
        let sessions: Vec<Arc<Session>> = self
            .lock()
            .values()
            .flatten()
            .map(|entry| entry.session.clone())
            .collect();
        for session in &sessions {
            session.close();
        }
        sessions.len()
    }

    /// Sessions still running.
    pub fn session_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_connected(&self, key: &str) -> bool {
        self.first(key).is_some()
    }

    /// Opens a stream to `proto`/`address` through `key`'s tunnel.
    pub async fn dial(
        &self,
        key: &str,
        proto: &str,
        address: &str,
    ) -> std::io::Result<TunnelStream> {
        let (session, _) = self.first(key).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("failed to find Session for client {key}"),
            )
        })?;
        session.open_stream(proto, address).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use proptest::prelude::*;

    fn encode(json: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    #[test]
    fn params_errors_use_rancher_texts() {
        let cases = [
            ("{}", "missing node or cluster registration info"),
            (r#"{"node":{}}"#, "node agents are not supported by corral"),
            (
                r#"{"cluster":{"token":"t"}}"#,
                "invalid input, address empty",
            ),
            (
                r#"{"cluster":{"address":"a:1"}}"#,
                "invalid input, token empty",
            ),
            (
                r#"{"cluster":{"address":"a:1","token":"t","caCert":""}}"#,
                "invalid input, caCert empty",
            ),
            (
                r#"{"cluster":{"address":"a:1","token":"t"}}"#,
                "invalid input, caCert empty",
            ),
        ];
        for (json, text) in cases {
            let refused = ClusterParams::from_header(&encode(json)).unwrap_err();
            assert_eq!(refused.to_string(), text);
        }
        let bad = ClusterParams::from_header("%%%").unwrap_err().to_string();
        assert!(bad.starts_with("illegal base64 data"), "{bad}");
    }

    proptest! {
        #[test]
        fn any_header_is_parsed_or_refused_without_panic(raw in ".*", bytes: Vec<u8>) {
            let _ = ClusterParams::from_header(&raw);
            let _ = ClusterParams::from_header(&base64::engine::general_purpose::STANDARD.encode(&bytes));
        }

        #[test]
        fn advertised_params_round_trip(address in "[a-z0-9.:]{1,40}", ca in "[A-Za-z0-9+/=]{1,64}", token in "[!-~]{1,64}") {
            let params = ClusterParams { address, ca_cert: ca, token };
            let json = serde_json::json!({ "cluster": params }).to_string();
            prop_assert_eq!(ClusterParams::from_header(&encode(&json)), Ok(params));
        }
    }
}
