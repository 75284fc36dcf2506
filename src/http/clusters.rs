//! `/v3/clusters` and `/v3/clusterRegistrationTokens` (`shared/spec/norman-api.md` §11): imported
//! clusters — create, update (name, description, labels), delete (its tunnels end, its tokens and
//! what its agents advertised go, its agents are refused) — with the conditions Rancher gives an
//! imported cluster, `generateKubeconfig`; registration tokens with Rancher's commands; and the
//! import manifest (`/v3/import/<token>_<cluster>.yaml`).

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::norman::{Answer, Call, Scope, TypeHandler};
use super::{AppState, account_error, text_response};
use crate::accounts::settings::{AGENT_IMAGE, DEFAULT_AGENT_IMAGE};
use crate::accounts::{SERVER_URL, TokenKind, TokenRequest};
use crate::api::collection::query_involves;
use crate::api::input::text;
use crate::api::resource::date;
use crate::api::schema::{Action, DELETE, FieldType, GET, POST, PUT};
use crate::api::{ApiError, Field, Resource, Schema};
use crate::clusters::{
    Cluster, ClusterChange, ClusterError, ClusterParams, IssuedRegistrationToken, RegistrationToken,
};
use crate::kubeconfig::{KubeconfigInput, render};

pub fn cluster_error(error: &ClusterError) -> ApiError {
    match error {
        ClusterError::NotFound(_) | ClusterError::TokenNotFound(_) => {
            ApiError::not_found(error.to_string())
        }
        ClusterError::Invalid(_) => ApiError::invalid_body(error.to_string()),
        ClusterError::Storage(e) => super::store_error(e),
    }
}

/// Cluster `id`, or norman's 404 with Kubernetes' text.
fn find(state: &AppState, id: &str) -> Result<Cluster, ApiError> {
    state
        .clusters
        .get(id)
        .ok_or_else(|| cluster_error(&ClusterError::NotFound(id.to_string())))
}

/// `server-url` if set (Rancher's commands are empty until it is), else nothing.
fn server_url(state: &AppState) -> Option<String> {
    state
        .accounts
        .setting(SERVER_URL)
        .map(|(url, _)| url)
        .filter(|url| !url.is_empty())
}

/// `server-url`, else the root the caller reached (what the import manifest points agents at).
fn server_base(state: &AppState, headers: &HeaderMap) -> String {
    server_url(state).unwrap_or_else(|| format!("https://{}", host_header(headers)))
}

fn host_header(headers: &HeaderMap) -> &str {
    headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
}

fn condition(kind: &str, holds: bool, at: &Value) -> Value {
    json!({
        "type": kind,
        "status": if holds { "True" } else { "False" },
        "lastUpdateTime": at,
    })
}

/// The `agentImage` every cluster shows (the setting, read once per answer).
fn agent_image(state: &AppState) -> String {
    state
        .accounts
        .setting(AGENT_IMAGE)
        .map(|(v, _)| v)
        .unwrap_or_default()
}

/// The image agents are deployed with: the setting, or Rancher's default when it is set empty.
fn deployed_image(state: &AppState) -> String {
    Some(agent_image(state))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_AGENT_IMAGE.to_string())
}

/// A cluster as the API writes it: pending until an agent connects, then active.
fn cluster_resource(state: &AppState, cluster: &Cluster, agent_image: &str) -> Resource {
    let mut one = cluster_resources(state, std::slice::from_ref(cluster), agent_image);
    complete_advertised(state, &mut one);
    one.pop().expect("one cluster, one resource")
}

/// Clusters as the API writes them (see [`cluster_resource`]) but without what their agents
/// advertised, which [`complete_advertised`] adds (to a list's page only, unless the list filters
/// or sorts on it).
fn cluster_resources(state: &AppState, clusters: &[Cluster], agent_image: &str) -> Vec<Resource> {
    clusters
        .iter()
        .map(|cluster| {
            let connected = state.tunnels.route(&cluster.id).is_some();
            render_cluster(cluster, agent_image, connected)
        })
        .collect()
}

fn render_cluster(cluster: &Cluster, agent_image: &str, connected: bool) -> Resource {
    let created = date(cluster.created);
    let mut conditions = vec![
        condition("Pending", true, &created),
        condition("Provisioned", true, &created),
        condition("Waiting", connected, &created),
        condition("BackingNamespaceCreated", true, &created),
        condition("DefaultProjectCreated", true, &created),
        condition("SystemProjectCreated", true, &created),
        condition("InitialRolesPopulated", true, &created),
        condition("CreatorMadeOwner", true, &created),
        condition("NoDiskPressure", true, &created),
        condition("NoMemoryPressure", true, &created),
    ];
    let ready = if connected {
        condition("Ready", true, &created)
    } else {
        json!({
            "type": "Ready", "status": "False", "lastUpdateTime": created,
            "reason": "Disconnected", "message": "Waiting for API to be available",
        })
    };
    conditions.push(ready);
    let (state_name, transitioning, message) = if connected {
        ("active", "no", "")
    } else {
        ("pending", "yes", "Waiting for API to be available")
    };
    let object = |map: &std::collections::BTreeMap<String, String>| -> Map<String, Value> {
        map.iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect()
    };
    Resource::new(&cluster.id)
        .with("name", cluster.name.as_str())
        .with("description", cluster.description.as_str())
        .with("internal", false)
        .with("driver", "imported")
        .with("provider", "")
        .with("connected", connected)
        .with("conditions", Value::Array(conditions))
        .with("state", state_name)
        .with("transitioning", transitioning)
        .with("transitioningMessage", message)
        .with("created", created)
        .with("creatorId", Value::Null)
        .with("labels", Value::Object(object(&cluster.labels)))
        .with("annotations", Value::Object(object(&cluster.annotations)))
        .with("agentImage", agent_image)
}

/// The fields that come from what a cluster's agent advertised: on a replica, a read from etcd
/// for each cluster whose agent another replica holds.
const ADVERTISED_FIELDS: [&str; 2] = ["apiEndpoint", "caCert"];

fn add_advertised(resource: &mut Resource, params: &ClusterParams) {
    let [endpoint, ca] = ADVERTISED_FIELDS;
    let fields = &mut resource.fields;
    fields.insert(
        endpoint.into(),
        format!("https://{}", params.address).into(),
    );
    fields.insert(ca.into(), params.ca_cert.as_str().into());
}

/// Adds what their agents advertised to the connected clusters of `resources` that lack it, read
/// together (in as few requests to the store as it can).
fn complete_advertised(state: &AppState, resources: &mut [Resource]) {
    let connected: Vec<(usize, String, Vec<i64>)> = resources
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.fields.get("connected") == Some(&Value::Bool(true))
                && !r.fields.contains_key(ADVERTISED_FIELDS[0])
        })
        .filter_map(|(i, r)| Some((i, r.id.clone(), state.tunnels.route(&r.id)?.sessions())))
        .collect();
    let wanted: Vec<(&str, &[i64])> = connected
        .iter()
        .map(|(_, id, sessions)| (id.as_str(), sessions.as_slice()))
        .collect();
    let params = state.clusters.agent_params_many(&wanted);
    for ((i, _, _), params) in connected.iter().zip(params) {
        if let Some(params) = params {
            add_advertised(&mut resources[*i], &params);
        }
    }
}

pub struct Clusters;

#[async_trait]
impl TypeHandler for Clusters {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            Schema::new("cluster")
                .methods(&[GET, POST], &[GET, PUT, DELETE])
                .field("name", Field::of(FieldType::DnsLabel).writable())
                .field("description", Field::string().writable())
                .field("internal", Field::boolean())
                .field("driver", Field::string())
                .field("provider", Field::string())
                .field("connected", Field::boolean())
                .field(
                    "conditions",
                    Field::of(FieldType::Array(Box::new(FieldType::Json))),
                )
                .field("apiEndpoint", Field::string())
                .field("caCert", Field::string())
                .field("agentImage", Field::string())
                .object_meta()
                .status_summary()
                .resource_action(
                    "generateKubeconfig",
                    Action {
                        input: None,
                        output: Some("generateKubeConfigOutput"),
                    },
                ),
            Schema::new("generateKubeConfigOutput").field("config", Field::string()),
        ]
    }

    fn rbac_resource(&self) -> Option<&'static str> {
        Some("clusters")
    }

    fn scope(&self) -> Scope {
        Scope::Cluster
    }

    /// A kubeconfig is for whoever may see the cluster.
    fn action_verb(&self, action: &str, on_object: bool) -> Option<&'static str> {
        match action {
            "generateKubeconfig" => Some("get"),
            _ => on_object.then_some("update"),
        }
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        let state = call.state;
        let image = agent_image(state);
        // A caller that may not see every cluster sees those it is bound in: only those are
        // rendered (rendering is what a cluster costs; the dispatcher filters them again).
        let everyone = call.caller.is_none() || call.may("get", "clusters", None)?;
        let bound: std::collections::HashSet<&str> = match everyone {
            true => Default::default(),
            false => call.cluster_grants()?.clusters().collect(),
        };
        let mut visible = Vec::new();
        for cluster in state.clusters.list() {
            let seen = everyone
                || bound.contains(cluster.id.as_str())
                || call.may("get", "clusters", Some(&cluster.id))?;
            if seen {
                visible.push(cluster);
            }
        }
        // What the agents advertised is read for the page only, unless the query filters or
        // sorts on it (on etcd, that is a read per cluster whose agent another replica holds).
        let involved = ADVERTISED_FIELDS
            .iter()
            .any(|field| query_involves(call.query, field));
        let mut resources = cluster_resources(state, &visible, &image);
        if involved {
            complete_advertised(state, &mut resources);
        }
        Ok(resources)
    }

    fn complete_page(&self, call: &Call<'_>, page: &mut [Resource]) {
        complete_advertised(call.state, page);
    }

    async fn get(&self, call: &Call<'_>, id: &str) -> Result<Resource, ApiError> {
        let cluster = find(call.state, id)?;
        Ok(cluster_resource(
            call.state,
            &cluster,
            &agent_image(call.state),
        ))
    }

    async fn create(&self, call: &Call<'_>, input: Map<String, Value>) -> Result<Answer, ApiError> {
        let state = call.state;
        let cluster = state
            .clusters
            .create(&change_of(&input))
            .map_err(|e| cluster_error(&e))?;
        // Its creator owns it (Rancher's creator-cluster-owner binding).
        state
            .accounts
            .bind_cluster_creator(&cluster.id, &call.caller()?.user_id)
            .map_err(|e| account_error(&e))?;
        Ok(Answer::created(
            "cluster",
            cluster_resource(state, &cluster, &agent_image(state)),
        ))
    }

    async fn update(
        &self,
        call: &Call<'_>,
        id: &str,
        input: Map<String, Value>,
    ) -> Result<Resource, ApiError> {
        let state = call.state;
        let cluster = state
            .clusters
            .update(id, change_of(&input))
            .map_err(|e| cluster_error(&e))?;
        Ok(cluster_resource(state, &cluster, &agent_image(state)))
    }

    async fn delete(&self, call: &Call<'_>, id: &str) -> Result<Answer, ApiError> {
        let state = call.state;
        let before = cluster_resource(state, &find(state, id)?, &agent_image(state));
        state.clusters.delete(id).map_err(|e| cluster_error(&e))?;
        let closed = state.tunnels.close_cluster(id);
        // Its bindings go with it (Rancher's are in the cluster's namespace).
        if let Err(e) = state.accounts.forget_cluster(id) {
            tracing::warn!("cluster {id} deleted, but its role bindings were not: {e}");
        }
        tracing::info!(
            "cluster {id} deleted by {}; {closed} tunnel(s) closed",
            call.caller()?.username
        );
        let removing = before
            .with("removed", date(crate::support::unix_now()))
            .with("state", "removing")
            .with("transitioning", "yes")
            .with("transitioningMessage", "");
        Ok(Answer::ok("cluster", removing))
    }

    async fn action(
        &self,
        call: &Call<'_>,
        id: Option<&str>,
        name: &str,
        _: Map<String, Value>,
    ) -> Result<Answer, ApiError> {
        let (Some(id), "generateKubeconfig") = (id, name) else {
            return Err(ApiError::invalid_action(name));
        };
        let state = call.state;
        let cluster = find(state, id)?;
        let caller = call.caller()?;
        let request = TokenRequest {
            kind: TokenKind::Kubeconfig,
            ..TokenRequest::default()
        };
        let token = state
            .accounts
            .issue_token(&caller.user_id, request)
            .map_err(|e| account_error(&e))?;
        let host = match state.accounts.server_url_value() {
            Some(url) => url.as_str().trim_start_matches("https://").to_string(),
            None => host_header(call.headers).to_string(),
        };
        let config = render(&KubeconfigInput {
            cluster_id: &cluster.id,
            cluster_name: &cluster.name,
            host: &host,
            cacerts: &state.ca.current().setting.value,
            token: &token.token,
        });
        let output = Resource::new("").with("config", config);
        Ok(Answer::ok("generateKubeConfigOutput", output))
    }
}

/// What a cluster body changes.
fn change_of(input: &Map<String, Value>) -> ClusterChange {
    let text = |name: &str| input.get(name).and_then(Value::as_str).map(str::to_string);
    let map = |name: &str| {
        input.get(name).and_then(Value::as_object).map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
    };
    ClusterChange {
        name: text("name"),
        description: text("description"),
        labels: map("labels"),
        annotations: map("annotations"),
    }
}

/// What an agent is deployed with: the server, the token and, when the CA is private, its
/// checksum. Empty until server-url is set, as in Rancher.
#[derive(Default)]
struct Commands {
    manifest_url: String,
    command: String,
    insecure_command: String,
    node_command: String,
    windows_node_command: String,
}

fn commands(state: &AppState, token: &str, cluster_id: &str) -> Commands {
    let Some(server) = server_url(state) else {
        return Commands::default();
    };
    let manifest_url = format!("{server}/v3/import/{token}_{cluster_id}.yaml");
    let checksum = state.ca.current().checksum.clone();
    let image = deployed_image(state);
    let (linux_checksum, windows_checksum) = if checksum.is_empty() {
        (String::new(), String::new())
    } else {
        (
            format!(" --ca-checksum {checksum}"),
            format!(" -CaChecksum {checksum}"),
        )
    };
    Commands {
        command: format!("kubectl apply -f {manifest_url}"),
        insecure_command: format!("curl --insecure -sfL {manifest_url} | kubectl apply -f -"),
        node_command: format!(
            "sudo docker run -d --privileged --restart=unless-stopped --net=host -v /etc/kubernetes:/etc/kubernetes -v /var/run:/var/run {image} --server {server} --token {token}{linux_checksum}"
        ),
        windows_node_command: format!(
            "PowerShell -NoLogo -NonInteractive -Command \"& {{docker run -v c:\\:c:\\host {image} bootstrap --server {server} --token {token}{windows_checksum} | iex}}\""
        ),
        manifest_url,
    }
}

fn registration_token_resource(
    state: &AppState,
    token: &RegistrationToken,
    secret: Option<&str>,
) -> Resource {
    let commands = secret.map(|s| commands(state, s, &token.cluster_id));
    let field =
        |pick: fn(&Commands) -> &String| commands.as_ref().map(pick).cloned().unwrap_or_default();
    Resource::new(format!("{}:{}", token.cluster_id, token.id))
        .with("name", token.id.as_str())
        .with("namespaceId", token.cluster_id.as_str())
        .with("clusterId", token.cluster_id.as_str())
        .with("token", secret.unwrap_or_default())
        .with("manifestUrl", field(|c| &c.manifest_url))
        .with("command", field(|c| &c.command))
        .with("insecureCommand", field(|c| &c.insecure_command))
        .with("nodeCommand", field(|c| &c.node_command))
        .with("windowsNodeCommand", field(|c| &c.windows_node_command))
        .with("state", "active")
        .with("transitioning", "no")
        .with("transitioningMessage", "")
        .with("created", date(token.created))
        .with("creatorId", Value::Null)
}

pub struct RegistrationTokens;

#[async_trait]
impl TypeHandler for RegistrationTokens {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            Schema::new("clusterRegistrationToken")
                .methods(&[GET, POST], &[GET, DELETE])
                .field("name", Field::string())
                .field("namespaceId", Field::string())
                .field("clusterId", Field::reference("cluster").create().required())
                .field("token", Field::string())
                .field("manifestUrl", Field::string())
                .field("command", Field::string())
                .field("insecureCommand", Field::string())
                .field("nodeCommand", Field::string())
                .field("windowsNodeCommand", Field::string())
                .object_meta()
                .status_summary(),
        ]
    }

    fn rbac_resource(&self) -> Option<&'static str> {
        Some("clusterregistrationtokens")
    }

    fn scope(&self) -> Scope {
        Scope::InCluster
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        let state = call.state;
        Ok(state
            .clusters
            .all_tokens()
            .iter()
            .map(|t| registration_token_resource(state, t, None))
            .collect())
    }

    async fn get(&self, call: &Call<'_>, id: &str) -> Result<Resource, ApiError> {
        let not_found = || cluster_error(&ClusterError::TokenNotFound(id.to_string()));
        let (cluster_id, token_id) = id.split_once(':').ok_or_else(not_found)?;
        let token = call
            .state
            .clusters
            .tokens(cluster_id)
            .into_iter()
            .find(|t| t.id == token_id)
            .ok_or_else(not_found)?;
        Ok(registration_token_resource(call.state, &token, None))
    }

    async fn create(&self, call: &Call<'_>, input: Map<String, Value>) -> Result<Answer, ApiError> {
        let cluster_id = text(&input, "clusterId");
        call.require_in_cluster(
            cluster_id,
            "create",
            "clusterregistrationtokens",
            "clusterRegistrationToken",
        )?;
        let state = call.state;
        let IssuedRegistrationToken {
            id,
            cluster_id,
            token,
            created,
        } = state
            .clusters
            .create_token(cluster_id)
            .map_err(|e| cluster_error(&e))?;
        let listed = RegistrationToken {
            id,
            cluster_id,
            created,
        };
        let resource = registration_token_resource(state, &listed, Some(&token));
        Ok(Answer::created("clusterRegistrationToken", resource))
    }

    async fn delete(&self, call: &Call<'_>, id: &str) -> Result<Answer, ApiError> {
        let before = self.get(call, id).await?;
        let (cluster_id, token_id) = id.split_once(':').unwrap_or_default();
        call.state
            .clusters
            .delete_token(cluster_id, token_id)
            .map_err(|e| cluster_error(&e))?;
        Ok(Answer::ok("clusterRegistrationToken", before))
    }
}

/// `GET /v3/import/<token>_<clusterId>.yaml`: the agent manifest. The token in the path is the
/// credential, as in Rancher.
pub async fn import(
    State(state): State<Arc<AppState>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let not_found = || {
        text_response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "registration token not found\n",
        )
    };
    let Some((token, cluster_id)) = file.strip_suffix(".yaml").and_then(|f| f.rsplit_once('_'))
    else {
        return not_found();
    };
    match state.clusters.find_by_token(token) {
        Some(cluster) if cluster.id == cluster_id => {
            let image = deployed_image(&state);
            let manifest = import_manifest(
                &server_base(&state, &headers),
                token,
                &state.ca.current().checksum,
                &image,
            );
            text_response(StatusCode::OK, "text/plain", manifest)
        }
        _ => not_found(),
    }
}

fn import_manifest(server: &str, token: &str, checksum: &str, image: &str) -> String {
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
          image: {image}
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
