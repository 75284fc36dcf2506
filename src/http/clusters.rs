//! Clusters, registration tokens, the import manifest and kubeconfig generation under `/v3`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Authenticated;
use super::login::ActionQuery;
use super::{AppState, NormanJson, json_response, norman_error, text_response};
use crate::accounts::SERVER_URL;
use crate::clusters::{Cluster, ClusterError};
use crate::kubeconfig::{KubeconfigInput, render};
use crate::pki::ca_checksum;
use crate::store::StoreError;

/// Lifetime of a token made for a kubeconfig (Rancher's `kubeconfig-default-token-ttl-minutes`).
const KUBECONFIG_TOKEN_TTL_SECS: i64 = 30 * 24 * 3600;

#[derive(Deserialize)]
pub struct NewCluster {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewToken {
    cluster_id: String,
}

fn cluster_error(error: &ClusterError) -> Response<Body> {
    let (status, code) = match error {
        ClusterError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
        ClusterError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "InvalidBodyContent"),
        ClusterError::Storage(StoreError::Unavailable(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
        }
        ClusterError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "ServerError"),
    };
    norman_error(status, code, &error.to_string())
}

fn cluster_object(state: &AppState, cluster: &Cluster, base: &str) -> Value {
    let connected = state.tunnels.is_connected(&cluster.id);
    json!({
        "baseType": "cluster",
        "type": "cluster",
        "id": cluster.id,
        "name": cluster.name,
        "createdTS": cluster.created * 1000,
        "state": if connected { "active" } else { "pending" },
        "connected": connected,
        "links": { "self": format!("{base}/v3/clusters/{}", cluster.id) },
        "actions": { "generateKubeconfig": format!("{base}/v3/clusters/{}?action=generateKubeconfig", cluster.id) },
    })
}

/// `https://<server-url host>` when server-url is set, else the URL the caller used.
pub(super) fn server_base(state: &AppState, headers: &HeaderMap) -> String {
    match state.accounts.setting(SERVER_URL) {
        Some((url, _)) if !url.is_empty() => url,
        _ => format!("https://{}", host_header(headers)),
    }
}

fn host_header(headers: &HeaderMap) -> &str {
    headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    _: Authenticated,
    headers: HeaderMap,
    NormanJson(input): NormanJson<NewCluster>,
) -> Response<Body> {
    match state.clusters.create(&input.name) {
        Ok(cluster) => json_response(
            StatusCode::CREATED,
            &cluster_object(&state, &cluster, &server_base(&state, &headers)),
        ),
        Err(e) => cluster_error(&e),
    }
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    _: Authenticated,
    headers: HeaderMap,
) -> Response<Body> {
    let base = server_base(&state, &headers);
    let data: Vec<Value> = state
        .clusters
        .list()
        .iter()
        .map(|c| cluster_object(&state, c, &base))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "type": "collection", "resourceType": "cluster", "data": data }),
    )
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    _: Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    match state.clusters.get(&id) {
        Some(cluster) => json_response(
            StatusCode::OK,
            &cluster_object(&state, &cluster, &server_base(&state, &headers)),
        ),
        None => cluster_error(&ClusterError::NotFound(id)),
    }
}

/// `POST /v3/clusters/<id>?action=generateKubeconfig`.
pub async fn action(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Query(query): Query<ActionQuery>,
    headers: HeaderMap,
) -> Response<Body> {
    if query.action() != Some("generateKubeconfig") {
        return norman_error(StatusCode::BAD_REQUEST, "InvalidAction", "invalid action");
    }
    let Some(cluster) = state.clusters.get(&id) else {
        return cluster_error(&ClusterError::NotFound(id));
    };
    let token = match state
        .accounts
        .issue_token(&caller.user_id, KUBECONFIG_TOKEN_TTL_SECS)
    {
        Ok(token) => token,
        Err(e) => return super::account_error(&e),
    };
    let host = match state.accounts.server_url_value() {
        Some(url) => url.as_str().trim_start_matches("https://").to_string(),
        None => host_header(&headers).to_string(),
    };
    let config = render(&KubeconfigInput {
        cluster_id: &cluster.id,
        cluster_name: &cluster.name,
        host: &host,
        cacerts: &state.cacerts.value,
        token: &token.token,
    });
    json_response(
        StatusCode::OK,
        &json!({ "baseType": "generateKubeConfigOutput", "type": "generateKubeConfigOutput", "config": config }),
    )
}

/// `POST /v3/clusterregistrationtokens` `{"clusterId"}`: the token, shown once, with Rancher's commands.
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    _: Authenticated,
    headers: HeaderMap,
    NormanJson(input): NormanJson<NewToken>,
) -> Response<Body> {
    let token = match state.clusters.create_token(&input.cluster_id) {
        Ok(token) => token,
        Err(e) => return cluster_error(&e),
    };
    let base = server_base(&state, &headers);
    let manifest = format!("{base}/v3/import/{}_{}.yaml", token.token, token.cluster_id);
    let body = json!({
        "baseType": "clusterRegistrationToken",
        "type": "clusterRegistrationToken",
        "id": format!("{}:{}", token.cluster_id, token.id),
        "clusterId": token.cluster_id,
        "createdTS": token.created * 1000,
        "token": token.token,
        "manifestUrl": manifest,
        "command": format!("kubectl apply -f {manifest}"),
        "insecureCommand": format!("curl --insecure -sfL {manifest} | kubectl apply -f -"),
    });
    json_response(StatusCode::CREATED, &body)
}

/// `GET /v3/import/<token>_<clusterId>.yaml`: the agent manifest. The token in the path is the
/// credential, as in Rancher.
pub async fn import(
    State(state): State<Arc<AppState>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let not_found = || norman_error(StatusCode::NOT_FOUND, "NotFound", "not found");
    let Some((token, cluster_id)) = file.strip_suffix(".yaml").and_then(|f| f.rsplit_once('_'))
    else {
        return not_found();
    };
    match state.clusters.find_by_token(token) {
        Some(cluster) if cluster.id == cluster_id => {
            let manifest = import_manifest(
                &server_base(&state, &headers),
                token,
                &ca_checksum(&state.cacerts.value),
            );
            text_response(StatusCode::OK, "application/yaml", manifest)
        }
        _ => not_found(),
    }
}

fn import_manifest(server: &str, token: &str, checksum: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let checksum_env = match checksum.is_empty() {
        true => String::new(),
        false => {
            format!("            - name: CATTLE_CA_CHECKSUM\n              value: \"{checksum}\"\n")
        }
    };
    format!(
        r#"---
apiVersion: v1
kind: Namespace
metadata:
  name: cattle-system
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: cattle
  namespace: cattle-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: cattle-admin-binding
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
  - kind: ServiceAccount
    name: cattle
    namespace: cattle-system
---
apiVersion: v1
kind: Secret
metadata:
  name: cattle-credentials
  namespace: cattle-system
type: Opaque
data:
  url: "{url}"
  token: "{token_b64}"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: cattle-cluster-agent
  namespace: cattle-system
spec:
  selector:
    matchLabels:
      app: cattle-cluster-agent
  template:
    metadata:
      labels:
        app: cattle-cluster-agent
    spec:
      serviceAccountName: cattle
      containers:
        - name: cluster-register
          image: rancher/rancher-agent:v2.12.0
          env:
            - name: CATTLE_SERVER
              value: "{server}"
{checksum_env}            - name: CATTLE_CLUSTER
              value: "true"
            - name: CATTLE_K8S_MANAGED
              value: "true"
          volumeMounts:
            - name: cattle-credentials
              mountPath: /cattle-credentials
              readOnly: true
      volumes:
        - name: cattle-credentials
          secret:
            secretName: cattle-credentials
"#,
        url = b64(server),
        token_b64 = b64(token),
    )
}
