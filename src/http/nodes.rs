//! `/v3/nodes`: the nodes whose node agents (cattle-node-agent) connected, as Rancher lists them,
//! with their state; and `/v3/nodes/<id>/proxy/<host:port>/<path>`, an authenticated way for a lab
//! user to reach a plain-HTTP service through a node's tunnel (the agent dials `tcp/<host:port>` on
//! its side, under its Connect rules).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Authenticated;
use super::cluster_proxy as proxy;
use super::clusters::server_base;
use super::{AppState, json_response, norman_error};
use crate::clusters::Node;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeQuery {
    cluster_id: Option<String>,
}

fn node_object(state: &AppState, node: &Node, base: &str) -> Value {
    let key = node.key();
    let connected = state.tunnels.is_connected(&key);
    json!({
        "baseType": "node",
        "type": "node",
        "id": key,
        "clusterId": node.cluster_id,
        "nodeName": node.id,
        "hostname": node.requested_hostname,
        "requestedHostname": node.requested_hostname,
        "ipAddress": node.address,
        "internalIpAddress": node.internal_address,
        "etcd": node.etcd,
        "controlPlane": node.control_plane,
        "worker": node.worker,
        "createdTS": node.created * 1000,
        "state": if connected { "active" } else { "unavailable" },
        "links": { "self": format!("{base}/v3/nodes/{key}") },
    })
}

/// The nodes of `clusterId` (of every cluster without it).
pub async fn list(
    State(state): State<Arc<AppState>>,
    _: Authenticated,
    Query(query): Query<NodeQuery>,
    headers: HeaderMap,
) -> Response<Body> {
    let base = server_base(&state, &headers);
    let clusters: Vec<String> = match query.cluster_id {
        Some(id) => vec![id],
        None => state.clusters.list().into_iter().map(|c| c.id).collect(),
    };
    let data: Vec<Value> = clusters
        .iter()
        .flat_map(|id| state.clusters.nodes(id))
        .map(|node| node_object(&state, &node, &base))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "type": "collection", "resourceType": "node", "data": data }),
    )
}

/// The node `<cluster>:<node>`.
fn find(state: &AppState, id: &str) -> Option<Node> {
    let (cluster_id, node_id) = id.split_once(':')?;
    state.clusters.node(cluster_id, node_id)
}

fn not_found(id: &str) -> Response<Body> {
    norman_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("nodes.management.cattle.io \"{id}\" not found"),
    )
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    _: Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    match find(&state, &id) {
        Some(node) => json_response(
            StatusCode::OK,
            &node_object(&state, &node, &server_base(&state, &headers)),
        ),
        None => not_found(&id),
    }
}

/// `/v3/nodes/<id>/proxy/<host:port>[/<path>]`: the request, as plain HTTP, to `host:port` dialed
/// by the node's agent.
pub async fn proxy(
    State(state): State<Arc<AppState>>,
    _: Authenticated,
    req: Request<Body>,
) -> Response<Body> {
    let Some((id, address, rest)) = split_proxy_path(req.uri().path()) else {
        return norman_error(StatusCode::NOT_FOUND, "NotFound", "not found");
    };
    let Some(node) = find(&state, &id) else {
        return not_found(&id);
    };
    let path_and_query = proxy::upstream_target(rest, req.uri().query());
    proxy::forward_to_node(
        &state.tunnels,
        &node.key(),
        &address,
        state.agent_wait,
        req,
        &path_and_query,
    )
    .await
}

/// `/v3/nodes/<id>/proxy/<address><rest>` → the node id and address, percent-decoded, and `<rest>`
/// as sent.
fn split_proxy_path(path: &str) -> Option<(String, String, &str)> {
    let after = path.strip_prefix("/v3/nodes/")?;
    let (raw_id, after) = after.split_once("/proxy/")?;
    let (raw_address, rest) = after.split_at(after.find('/').unwrap_or(after.len()));
    let address = proxy::decode_segment(raw_address)?;
    crate::support::split_host_port(&address)?;
    Some((proxy::decode_segment(raw_id)?, address, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_paths_name_the_node_the_address_and_the_rest() {
        assert_eq!(
            split_proxy_path("/v3/nodes/c-abc:m-0123/proxy/127.0.0.1:8080/a/b?x"),
            Some((
                "c-abc:m-0123".to_string(),
                "127.0.0.1:8080".to_string(),
                "/a/b?x"
            ))
        );
        assert_eq!(
            split_proxy_path("/v3/nodes/c-abc%3Am-0123/proxy/web.lab:80"),
            Some(("c-abc:m-0123".to_string(), "web.lab:80".to_string(), ""))
        );
        assert_eq!(
            split_proxy_path("/v3/nodes/c-abc:m-0123/proxy/no-port/x"),
            None
        );
    }
}
