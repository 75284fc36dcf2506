//! What a downstream cluster is told of its users, as Rancher's controllers tell it: a
//! ClusterRole per role template in use, a ClusterRoleBinding per cluster role template binding
//! and `cluster-admin` for every global admin, all labelled `cattle.io/creator=norman`; bindings
//! of that label that no longer have a reason are deleted. The writes go through the cluster proxy
//! with the agent's service-account token, before the first proxied request after a change of what
//! the cluster must hold or of its tunnel: a cluster nobody reaches costs nothing, a change to
//! another cluster costs this one nothing, and one that reconnects (a restarted agent, a simulated
//! cluster that forgot everything) is told again. A cluster that cannot be told (an agent whose
//! account may not write RBAC) is tried again after a while, not on every request.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::AppState;
use super::cluster_proxy as proxy;

const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";
/// The label on everything corral writes (Rancher's).
const CREATOR: (&str, &str) = ("cattle.io/creator", "norman");
/// The largest answer read from the cluster.
const MAX_ANSWER: usize = 4 << 20;
/// Stale bindings deleted in one telling, at most: a cluster that lists many more (an agent gone
/// wrong) costs a bounded number of requests; the rest go at the next telling.
const MAX_STALE: usize = 1_000;
/// Clusters remembered; past it the memory starts over (each is then told again once).
const REMEMBERED: usize = 200_000;
/// How long a cluster that could not be told is left alone before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Which clusters were told what: per cluster, the tunnel session and a digest of what it was told
/// (or failed to be told, and when).
#[derive(Default)]
pub struct DownstreamSync {
    told: Mutex<HashMap<String, Told>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Told {
    session: i64,
    digest: u64,
    /// Set when telling failed: when to try again.
    failed_until: Option<Instant>,
}

/// Tells `cluster_id` who its users are, unless it was told that already through this tunnel, by
/// `deadline`. A failure is logged and the request goes on: the cluster then answers from what it
/// knows.
pub async fn ensure(state: &AppState, cluster_id: &str, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    let Some(route) = state.tunnels.wait_for(cluster_id, left).await else {
        return;
    };
    let Some(session) = route.sessions().first().copied() else {
        return;
    };
    let wanted = match state.accounts.downstream_rbac(cluster_id) {
        Ok(wanted) => wanted,
        Err(e) => return tracing::warn!("cluster {cluster_id}: {e}"),
    };
    let mut hasher = DefaultHasher::new();
    wanted.hash(&mut hasher);
    let digest = hasher.finish();
    let before = crate::support::lock(&state.downstream.told)
        .get(cluster_id)
        .copied();
    if let Some(before) = before
        && before.session == session
        && before.digest == digest
        && before
            .failed_until
            .is_none_or(|until| Instant::now() < until)
    {
        return;
    }
    let telling = tokio::time::timeout_at(deadline, tell(state, cluster_id, &wanted)).await;
    let told = match telling.unwrap_or_else(|_| Err("the agent did not answer in time".into())) {
        Ok(()) => {
            tracing::debug!(
                "cluster {cluster_id} told of {} binding(s)",
                wanted.bindings.len()
            );
            None
        }
        Err(e) => {
            tracing::warn!("cluster {cluster_id} was not told who its users are: {e}");
            Some(Instant::now() + RETRY_AFTER)
        }
    };
    let mut remembered = crate::support::lock(&state.downstream.told);
    if remembered.len() >= REMEMBERED {
        remembered.clear();
    }
    let entry = Told {
        session,
        digest,
        failed_until: told,
    };
    remembered.insert(cluster_id.to_string(), entry);
}

/// Writes what the cluster must hold and deletes what it must not.
async fn tell(
    state: &AppState,
    cluster_id: &str,
    wanted: &crate::accounts::DownstreamRbac,
) -> Result<(), String> {
    let labels = json!({ CREATOR.0: CREATOR.1 });
    for (name, rules) in &wanted.roles {
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels},
            "rules": rules,
        });
        write(state, cluster_id, "clusterroles", name, &role).await?;
    }
    let selector = format!("{}%3D{}", CREATOR.0.replace('/', "%2F"), CREATOR.1);
    let (_, existing) = send(
        state,
        cluster_id,
        Method::GET,
        &format!("{RBAC}/clusterrolebindings?labelSelector={selector}"),
        None,
    )
    .await?;
    let present: Vec<String> = existing["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    let stale = present
        .iter()
        .filter(|name| !wanted.bindings.iter().any(|b| b.name == **name))
        .take(MAX_STALE);
    for name in stale {
        let path = format!("{RBAC}/clusterrolebindings/{name}");
        send(state, cluster_id, Method::DELETE, &path, None).await?;
    }
    for binding in &wanted.bindings {
        let object = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": binding.name, "labels": labels},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io",
                          "name": binding.user}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": binding.role},
        });
        write(
            state,
            cluster_id,
            "clusterrolebindings",
            &binding.name,
            &object,
        )
        .await?;
    }
    Ok(())
}

/// Creates `object`, or replaces it when it exists (deleted and made again when Kubernetes will
/// not change it in place: a binding's role).
async fn write(
    state: &AppState,
    cluster_id: &str,
    kind: &str,
    name: &str,
    object: &Value,
) -> Result<(), String> {
    let collection = format!("{RBAC}/{kind}");
    let path = format!("{collection}/{name}");
    let (status, _) = send(state, cluster_id, Method::POST, &collection, Some(object)).await?;
    if status != StatusCode::CONFLICT {
        return Ok(());
    }
    let (status, _) = send(state, cluster_id, Method::PUT, &path, Some(object)).await?;
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        send(state, cluster_id, Method::DELETE, &path, None).await?;
        send(state, cluster_id, Method::POST, &collection, Some(object)).await?;
    }
    Ok(())
}

/// One request to the cluster as its service account; an answer other than 2xx, 404 or 409 (and
/// 422, which [`write`] handles) is an error.
async fn send(
    state: &AppState,
    cluster_id: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(StatusCode, Value), String> {
    let request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .map_err(|e| e.to_string())?;
    let response = proxy::forward(
        &state.tunnels,
        &state.clusters,
        cluster_id,
        state.agent_wait,
        request,
        path,
        None,
    )
    .await;
    let status = response.status();
    let limited = http_body_util::Limited::new(response.into_body(), MAX_ANSWER);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?
        .to_bytes();
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let expected = status.is_success()
        || matches!(
            status,
            StatusCode::NOT_FOUND | StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY
        );
    if !expected {
        let message = answer["message"].as_str().map_or_else(
            || String::from_utf8_lossy(&bytes).into_owned(),
            str::to_string,
        );
        return Err(format!("{method} {path}: {status}: {message}"));
    }
    Ok((status, answer))
}
