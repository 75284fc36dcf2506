//! `/v3/nodes`: the nodes whose node agents (cattle-node-agent) connected, as Rancher lists them,
//! with their state; and `/v3/nodes/<id>/proxy/<host:port>/<path>`, an authenticated way for a lab
//! user to reach a plain-HTTP service through a node's tunnel (the agent dials `tcp/<host:port>` on
//! its side, under its Connect rules).

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, Response, StatusCode};
use serde_json::Value;

use super::auth::Authenticated;
use super::cluster_proxy as proxy;
use super::norman::{Call, Scope, TypeHandler};
use super::{AppState, norman_error};
use crate::api::resource::date;
use crate::api::schema::GET;
use crate::api::{ApiError, Field, Resource, Schema};
use crate::clusters::Node;

pub struct Nodes;

fn resource(state: &AppState, node: &Node) -> Resource {
    let key = node.key();
    let connected = state.tunnels.is_connected(&key);
    Resource::new(&key)
        .with("name", node.requested_hostname.as_str())
        .with("namespaceId", node.cluster_id.as_str())
        .with("clusterId", node.cluster_id.as_str())
        .with("nodeName", node.id.as_str())
        .with("hostname", node.requested_hostname.as_str())
        .with("requestedHostname", node.requested_hostname.as_str())
        .with("ipAddress", node.address.as_str())
        .with("internalIpAddress", node.internal_address.as_str())
        .with("etcd", node.etcd)
        .with("controlPlane", node.control_plane)
        .with("worker", node.worker)
        .with("state", if connected { "active" } else { "unavailable" })
        .with("transitioning", if connected { "no" } else { "error" })
        .with(
            "transitioningMessage",
            if connected {
                ""
            } else {
                "node agent is not connected"
            },
        )
        .with("created", date(node.created))
        .with("creatorId", Value::Null)
}

/// The node `<cluster>:<node>`.
fn find(state: &AppState, id: &str) -> Option<Node> {
    let (cluster_id, node_id) = id.split_once(':')?;
    state.clusters.node(cluster_id, node_id)
}

fn not_found_message(id: &str) -> String {
    format!("nodes.management.cattle.io \"{id}\" not found")
}

#[async_trait]
impl TypeHandler for Nodes {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            Schema::new("node")
                .methods(&[GET], &[GET])
                .field("name", Field::string())
                .field("namespaceId", Field::string())
                .field("clusterId", Field::reference("cluster"))
                .field("nodeName", Field::string())
                .field("hostname", Field::string())
                .field("requestedHostname", Field::string())
                .field("ipAddress", Field::string())
                .field("internalIpAddress", Field::string())
                .field("etcd", Field::boolean())
                .field("controlPlane", Field::boolean())
                .field("worker", Field::boolean())
                .object_meta()
                .status_summary(),
        ]
    }

    /// Every cluster's nodes; `?clusterId=` filters them as any field filter does.
    fn rbac_resource(&self) -> Option<&'static str> {
        Some("nodes")
    }

    fn scope(&self) -> Scope {
        Scope::InCluster
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        let state = call.state;
        let clusters: Vec<String> = match call.query.get("clusterId") {
            Some(id) => vec![id.to_string()],
            None => state.clusters.list().into_iter().map(|c| c.id).collect(),
        };
        Ok(clusters
            .iter()
            .flat_map(|id| state.clusters.nodes(id))
            .map(|node| resource(state, &node))
            .collect())
    }

    async fn get(&self, call: &Call<'_>, id: &str) -> Result<Resource, ApiError> {
        let node =
            find(call.state, id).ok_or_else(|| ApiError::not_found(not_found_message(id)))?;
        Ok(resource(call.state, &node))
    }
}

/// `/v3/nodes/<id>/proxy/<host:port>[/<path>]`: the request, as plain HTTP, to `host:port` dialed
/// by the node's agent.
pub async fn proxy(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    req: Request<Body>,
) -> Response<Body> {
    let Some((id, address, rest)) = split_proxy_path(req.uri().path()) else {
        return norman_error(StatusCode::NOT_FOUND, "NotFound", "not found");
    };
    // A node the caller may not see does not exist for it.
    let cluster = id.split_once(':').map_or(id.as_str(), |(c, _)| c);
    let see = crate::rbac::Request::management("get", "nodes", Some(&id));
    match state.accounts.may(&caller.user_id, cluster, &see) {
        Ok(true) => {}
        Ok(false) => {
            return norman_error(StatusCode::NOT_FOUND, "NotFound", &not_found_message(&id));
        }
        Err(e) => return super::norman_error_of(&super::account_error(&e)),
    }
    let Some(node) = find(&state, &id) else {
        return norman_error(StatusCode::NOT_FOUND, "NotFound", &not_found_message(&id));
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
