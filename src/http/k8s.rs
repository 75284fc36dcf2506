//! `/k8s/clusters/<id>/…`: a logged-in caller reaches a cluster's API through its agent's tunnel,
//! if its rules let it see the cluster (to others, the cluster does not exist). The request goes
//! with the agent's service-account token and Rancher's impersonation headers, so the cluster's
//! own RBAC applies to the caller; the cluster is told first what its users are bound to
//! ([`super::downstream_rbac`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode, header};

use super::auth::Authenticated;
use super::cluster_proxy::{self as proxy, Impersonation};
use super::{AppState, text_response};
use crate::accounts::Caller;
use crate::rbac::Request as RbacRequest;

const PREFIX: &str = "/k8s/clusters/";
/// The least a request is given to reach its cluster after the cluster was told of its users.
const MIN_FORWARD_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn cluster_proxy(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    req: Request<Body>,
) -> Response<Body> {
    let Some((cluster_id, rest)) = split_cluster_path(req.uri().path()) else {
        return not_found("");
    };
    // An id that names no cluster will never have an agent: no reason to wait for one.
    if state.clusters.get(&cluster_id).is_none() {
        return not_found(&cluster_id);
    }
    let see = RbacRequest::management("get", "clusters", Some(&cluster_id));
    match state.accounts.may(&caller.user_id, &cluster_id, &see) {
        Ok(true) => {}
        Ok(false) => return not_found(&cluster_id),
        Err(e) => return super::norman_error_of(&super::account_error(&e)),
    }
    let identity = match identity(&state, &caller, req.headers()) {
        Ok(identity) => identity,
        // Rancher's plain-text refusal.
        Err(what) => {
            return text_response(
                StatusCode::FORBIDDEN,
                "text/plain; charset=utf-8",
                format!("not allowed to impersonate {what}\n"),
            );
        }
    };
    // One wait for the agent, telling the cluster included: an absent or stuck agent costs the
    // caller --agent-wait, not twice that.
    let deadline = tokio::time::Instant::now() + state.agent_wait;
    super::downstream_rbac::ensure(&state, &cluster_id, deadline).await;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let path_and_query = proxy::upstream_target(rest, req.uri().query());
    proxy::forward(
        &state.tunnels,
        &state.clusters,
        &cluster_id,
        left.max(MIN_FORWARD_WAIT),
        req,
        &path_and_query,
        Some(&identity),
    )
    .await
}

/// Who the cluster is told the request is from: the caller, with Rancher's groups and extras; or,
/// when the caller impersonates someone itself and may (global `impersonate` rights, as admins
/// have), that one. A caller that may not is refused; the error names what it may not impersonate.
fn identity(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<Impersonation, &'static str> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let Some(user) = values("impersonate-user").into_iter().next() else {
        // Groups and extras without a user are the caller's to drop, as Rancher deletes them.
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        return Ok(Impersonation {
            user: caller.user_id.clone(),
            groups: vec![
                "system:authenticated".into(),
                "system:cattle:authenticated".into(),
            ],
            extras: vec![
                ("principalid".into(), format!("local://{}", caller.user_id)),
                ("requesthost".into(), host.to_string()),
                ("requesttokenid".into(), caller.token_name.clone()),
                ("username".into(), caller.username.clone()),
            ],
        });
    };
    let may = |resource: &str| {
        let asked = RbacRequest {
            verb: "impersonate",
            group: "",
            resource,
            name: None,
        };
        state
            .accounts
            .grants(&caller.user_id)
            .is_ok_and(|grants| grants.allows(&asked))
    };
    if !may("users") {
        return Err("user");
    }
    let groups = values("impersonate-group");
    if !groups.is_empty() && !may("groups") {
        return Err("group");
    }
    let extras: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(name, value)| {
            let key = name.as_str().strip_prefix("impersonate-extra-")?;
            Some((key.to_string(), value.to_str().ok()?.to_string()))
        })
        .collect();
    if !extras.is_empty() && !may("userextras") {
        return Err("extras");
    }
    Ok(Impersonation {
        user,
        groups: groups.into_iter().take(64).collect(),
        extras: extras.into_iter().take(64).collect(),
    })
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
