//! `/k8s/clusters/<id>/…`: a logged-in caller reaches a cluster's API through its agent's tunnel.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, Response};

use super::AppState;
use super::auth::Authenticated;
use crate::tunnel::proxy;

pub async fn cluster_proxy(
    State(state): State<Arc<AppState>>,
    Authenticated(_caller): Authenticated,
    Path(params): Path<Vec<(String, String)>>,
    req: Request<Body>,
) -> Response<Body> {
    let cluster_id = params
        .iter()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let prefix = format!("/k8s/clusters/{cluster_id}");
    let path = req.uri().path().strip_prefix(&prefix).unwrap_or("/");
    let path = if path.is_empty() { "/" } else { path };
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    proxy::forward(
        &state.tunnels,
        &cluster_id,
        state.agent_wait,
        req,
        &path_and_query,
    )
    .await
}
