//! `/v3/connect` and `/v3/connect/register`: agents open their tunnel here. Authentication runs
//! before the WebSocket upgrade, as remotedialer's server does: no token → 401 `failed
//! authentication`; an unknown token or bad params → 400 with Rancher's texts. Then the tunnel
//! must find room: among its cluster's (or node's, or peer's) tunnels, `429`; among all tunnels,
//! `503`. A tunnel keeps its connection's place among the open connections while it lives.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use futures_util::FutureExt;
use futures_util::future::Either;

use super::{AppState, ConnectionSlot, text_response};
use crate::clusters::AgentParams;
use crate::lab::ToxicIo;
use crate::net::ConnInfo;
use crate::tunnel::registry::Reservation;
use crate::tunnel::websocket;

/// The longest a new tunnel waits for a downed link before it is refused.
const DOWN_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a tunnel holds while it lives: its connection's place, its place among all tunnels and
/// among its key's.
struct TunnelPlaces {
    _connection: Option<ConnectionSlot>,
    _tunnel: tokio::sync::OwnedSemaphorePermit,
    _key: Option<Reservation>,
}

/// Why a tunnel was refused: the status and the text of the answer.
type Refusal = (StatusCode, String);

fn refused((status, text): Refusal) -> Response<Body> {
    tracing::info!("tunnel refused ({status}): {text}");
    text_response(status, "text/plain; charset=utf-8", text)
}

/// Room for one more tunnel for `key`, or why there is none.
fn room_for(state: &AppState, req: &Request<Body>, key: &str) -> Result<TunnelPlaces, Refusal> {
    let refuse = |status: StatusCode, text: String| Err((status, text));
    let limits = &state.tunnel_limits;
    let key_place = match limits.per_key {
        Some(max) => match state.tunnels.reserve(key, max) {
            Some(place) => Some(place),
            None => {
                return refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "too many tunnels for {key}: at most {max} at once (--max-tunnels-per-cluster)"
                    ),
                );
            }
        },
        None => None,
    };
    let Ok(tunnel) = limits.slots.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many tunnels: this server holds as many as it may (--max-connections)".into(),
        );
    };
    Ok(TunnelPlaces {
        _connection: req.extensions().get::<ConnectionSlot>().cloned(),
        _tunnel: tunnel,
        _key: key_place,
    })
}

pub async fn connect(State(state): State<Arc<AppState>>, mut req: Request<Body>) -> Response<Body> {
    // remotedialer checks for a peer first: a known replica id with its token.
    if let Some(peer_id) = authenticated_peer(&state, req.headers()) {
        let places = match room_for(&state, &req, &peer_id) {
            Ok(places) => places,
            Err(refusal) => return refused(refusal),
        };
        let (response, on_upgrade) = match websocket::upgrade(&mut req) {
            Ok(pair) => pair,
            Err((status, text)) => return text_response(status, "text/plain; charset=utf-8", text),
        };
        let tunnels = state.tunnels.clone();
        tokio::spawn(async move {
            match websocket::accept(on_upgrade).await {
                Ok(ws) => tunnels.serve_peer(&peer_id, ws).await,
                Err(e) => tracing::warn!("peer upgrade for {peer_id} failed: {e}"),
            }
            drop(places);
        });
        return response;
    }
    let (cluster_id, params) = match authorize(&state, req.headers()) {
        Ok(found) => found,
        Err(refusal) => return refused(refusal),
    };
    // The tunnel's client key: the cluster for a cluster agent, `<cluster>:<node>` for a node agent.
    let key = match &params {
        AgentParams::Cluster(_) => cluster_id.clone(),
        AgentParams::Node(params) => format!("{cluster_id}:{}", params.node_id()),
    };
    let places = match room_for(&state, &req, &key) {
        Ok(places) => places,
        Err(refusal) => return refused(refusal),
    };
    // A link that is down takes no new tunnel: the agent's handshake waits, as on a dead network,
    // until the link is back or the agent gives up.
    let down_since = std::time::Instant::now();
    while state.faults.tunnel_down(&key) {
        if down_since.elapsed() > DOWN_WAIT_LIMIT {
            return text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "the link is down (a lab fault)",
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (response, on_upgrade) = match websocket::upgrade(&mut req) {
        Ok(pair) => pair,
        Err((status, text)) => return text_response(status, "text/plain; charset=utf-8", text),
    };
    let cluster_params = match params {
        AgentParams::Cluster(params) => Some(params),
        AgentParams::Node(params) => {
            state.clusters.record_node(&cluster_id, &params);
            None
        }
    };
    let (tunnels, clusters) = (state.tunnels.clone(), state.clusters.clone());
    let faults = state.faults.clone();
    let conn = req.extensions().get::<ConnInfo>().copied();
    let toxic_key = key.clone();
    let wrap = move |io| {
        let reset = conn.map(|conn| {
            Box::new(move || crate::net::reset_on_close(&conn)) as crate::lab::toxics::ResetOnClose
        });
        ToxicIo::new(io, faults, toxic_key, reset)
    };
    // Combinators, not an async block: a block would keep everything the upgrade and the
    // session's start needed for as long as the tunnel lives, and a second copy of the session's
    // future, in every idle tunnel's task.
    let upgraded = websocket::accept_through(on_upgrade, wrap);
    tokio::spawn(upgraded.then(move |ws| {
        let ws = match ws {
            Ok(ws) => ws,
            Err(e) => {
                tracing::warn!("tunnel upgrade for {key} failed: {e}");
                return Either::Left(std::future::ready(()));
            }
        };
        let (recording, recorded_id) = (clusters.clone(), cluster_id.clone());
        let record = move |session| {
            if let Some(params) = cluster_params {
                recording.record_agent(&recorded_id, session, params);
            }
        };
        let serving = tunnels.serve(key, ws, record);
        Either::Right(serving.map(move |session| {
            clusters.forget_agent(&cluster_id, session);
            drop(places);
        }))
    }));
    response
}

/// The peer replica a request comes from, when it names one (`X-API-Tunnel-ID`) with that replica's
/// token (`X-API-Tunnel-Token`).
fn authenticated_peer(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let replicas = state.replicas.as_ref()?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (id, token) = (header("x-api-tunnel-id")?, header("x-api-tunnel-token")?);
    replicas.authenticates(id, token).then(|| id.to_string())
}

/// remotedialer's authorizer chain, reduced to Rancher's agents: the cluster a registration token
/// belongs to, and what its cluster or node agent advertises.
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(String, AgentParams), (StatusCode, String)> {
    let bad = |text: &str| (StatusCode::BAD_REQUEST, text.to_string());
    let token = headers
        .get("x-api-tunnel-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if token.is_empty() {
        return Err((StatusCode::UNAUTHORIZED, "failed authentication".into()));
    }
    let cluster = state
        .clusters
        .find_by_token(token)
        .ok_or_else(|| bad("cluster not found"))?;
    let raw = headers
        .get("x-api-tunnel-params")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let params = AgentParams::from_header(raw).map_err(|e| bad(&e.to_string()))?;
    Ok((cluster.id, params))
}
