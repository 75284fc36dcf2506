//! `/k8s/clusters/<id>/…`: a logged-in caller reaches a cluster's API through its agent's tunnel.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, Response, StatusCode};

use super::auth::Authenticated;
use super::cluster_proxy as proxy;
use super::{AppState, text_response};

const PREFIX: &str = "/k8s/clusters/";

pub async fn cluster_proxy(
    State(state): State<Arc<AppState>>,
    Authenticated(_caller): Authenticated,
    req: Request<Body>,
) -> Response<Body> {
    let Some((cluster_id, rest)) = split_cluster_path(req.uri().path()) else {
        return not_found("");
    };
    // An id that names no cluster will never have an agent: no reason to wait for one.
    if state.clusters.get(&cluster_id).is_none() {
        return not_found(&cluster_id);
    }
    let path_and_query = proxy::upstream_target(rest, req.uri().query());
    proxy::forward(
        &state.tunnels,
        &state.clusters,
        &cluster_id,
        state.agent_wait,
        req,
        &path_and_query,
    )
    .await
}

/// `/k8s/clusters/<id><rest>` → the cluster id, percent-decoded as the router reads path segments,
/// and `<rest>` exactly as sent (the cluster API decodes it itself).
fn split_cluster_path(path: &str) -> Option<(String, &str)> {
    let after = path.strip_prefix(PREFIX)?;
    let (raw_id, rest) = after.split_at(after.find('/').unwrap_or(after.len()));
    Some((proxy::decode_segment(raw_id)?, rest))
}

fn not_found(cluster_id: &str) -> Response<Body> {
    text_response(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        format!("clusters.management.cattle.io \"{cluster_id}\" not found\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_stripped_as_the_id_was_read() {
        let split = |p| split_cluster_path(p).map(|(id, rest)| (id, rest.to_string()));
        let pair = |id: &str, rest: &str| Some((id.to_string(), rest.to_string()));
        assert_eq!(
            split("/k8s/clusters/c-rkn8j/api/v1/pods"),
            pair("c-rkn8j", "/api/v1/pods")
        );
        assert_eq!(
            split("/k8s/clusters/c-%72kn8j/api/v1/pods"),
            pair("c-rkn8j", "/api/v1/pods")
        );
        assert_eq!(split("/k8s/clusters/c-rkn8j"), pair("c-rkn8j", ""));
        assert_eq!(
            split("/k8s/clusters/c-x/a%2Fb"),
            pair("c-x", "/a%2Fb"),
            "the rest as sent"
        );
        assert_eq!(split("/k8s/clusters/c-%ff/x"), None, "not UTF-8");
        assert_eq!(split("/v3/clusters/c-x"), None);
    }
}
