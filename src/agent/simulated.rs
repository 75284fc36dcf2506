//! `corral agent --simulate`: a downstream cluster without a cluster. Each simulated agent advertises
//! the usual in-cluster API address and serves the Connects to it in-process — nothing listens on the
//! network — over TLS with the agent's own CA, as a small in-memory Kubernetes API: `/version`,
//! `/healthz`, `/livez`, `/readyz`, legacy discovery (`/api`, `/api/v1`, `/apis`), namespaces
//! (list, get, create, delete, watch), one node, three system pods and two services, and RBAC
//! ([`super::simulated_rbac`]):
//! ClusterRoles, ClusterRoleBindings and the self reviews, applied to the user corral's proxy
//! impersonates. Enough for `kubectl version`, `kubectl get ns`/`nodes`, `kubectl create namespace
//! x`, `kubectl get ns -w`, `kubectl get pods -A`, `kubectl cluster-info` and `kubectl auth can-i`
//! through corral's proxy.
//!
//! One cluster's state is a few namespaces and a short event history, so a process can simulate
//! hundreds of clusters; the router and the TLS identity are shared by all of them.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query};
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::broadcast;
use tower::ServiceExt;

use super::api_tls::ApiTls;
use super::simulated_rbac::{self as rbac, Attributes, Identity, Kind, Rbac};
use crate::secrets::{TOKEN_LENGTH, random_token};
use crate::tunnel::TunnelStream;

/// The address a simulated agent advertises: the `kubernetes` Service's usual ClusterIP.
pub const SIMULATED_ADDRESS: &str = "10.43.0.1:443";
/// What `/version` reports.
const GIT_VERSION: &str = "v1.31.4+corral-simulated";
/// Namespaces one simulated cluster holds at most (a bound on what a script gone wrong can create).
const MAX_NAMESPACES: usize = 1_000;
/// Watch events kept, for watches that resume from a resourceVersion.
const HISTORY: usize = 64;
/// Largest request body read.
const MAX_BODY: usize = 64 * 1024;
/// Namespaces every cluster starts with.
const INITIAL: [&str; 4] = ["default", "kube-node-lease", "kube-public", "kube-system"];
/// The one node of a simulated cluster.
const NODE: &str = "simulated-node-1";
/// Namespaces Kubernetes refuses to delete.
const UNDELETABLE: [&str; 3] = ["default", "kube-public", "kube-system"];

/// One simulated cluster: its service-account token and its namespaces.
pub struct SimulatedCluster {
    /// What the server must present (`Authorization: Bearer …`), advertised as the agent's token.
    token: String,
    state: Mutex<ClusterState>,
    /// Watch events as they happen; watchers subscribe.
    events: broadcast::Sender<Arc<Event>>,
    rbac: Mutex<Rbac>,
    /// When the cluster (and its node) started.
    created: OffsetDateTime,
}

struct ClusterState {
    namespaces: BTreeMap<String, Namespace>,
    resource_version: u64,
    /// Recent events, oldest first, for watches from a resourceVersion.
    history: VecDeque<Arc<Event>>,
}

#[derive(Clone)]
struct Namespace {
    uid: String,
    created: OffsetDateTime,
    resource_version: u64,
    labels: BTreeMap<String, String>,
}

/// A watch event: `ADDED`, `MODIFIED` or `DELETED`, and the namespace as it was then.
struct Event {
    kind: &'static str,
    name: String,
    namespace: Namespace,
}

impl Event {
    fn resource_version(&self) -> u64 {
        self.namespace.resource_version
    }

    /// One line of a watch response: the object as JSON, or as a one-row Table (`kubectl get -w`).
    fn line(&self, format: WatchFormat) -> Bytes {
        let phase = if self.kind == "DELETED" {
            "Terminating"
        } else {
            "Active"
        };
        let object = match format {
            WatchFormat::Json => namespace_json(&self.name, &self.namespace, phase),
            WatchFormat::Table { columns } => table(
                self.resource_version(),
                vec![table_row(&self.name, &self.namespace, phase)],
                columns,
            ),
        };
        Bytes::from(format!(
            "{}\n",
            json!({"type": self.kind, "object": object})
        ))
    }
}

/// How watch events are written. A table watch sends its columns with the first event only.
#[derive(Clone, Copy)]
enum WatchFormat {
    Json,
    Table { columns: bool },
}

impl SimulatedCluster {
    pub fn new() -> Self {
        let created = OffsetDateTime::now_utc();
        let namespaces = INITIAL
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let namespace = Namespace {
                    uid: uid(),
                    created,
                    resource_version: i as u64 + 1,
                    labels: BTreeMap::new(),
                };
                (name.to_string(), namespace)
            })
            .collect();
        let (events, _) = broadcast::channel(16);
        Self {
            rbac: Mutex::new(Rbac::new(&rfc3339(created), uid)),
            created,
            token: random_token(TOKEN_LENGTH),
            state: Mutex::new(ClusterState {
                namespaces,
                resource_version: INITIAL.len() as u64,
                history: VecDeque::new(),
            }),
            events,
        }
    }

    /// The token the server presents; the agent advertises it.
    pub fn token(&self) -> &str {
        &self.token
    }

    fn lock(&self) -> MutexGuard<'_, ClusterState> {
        crate::support::lock(&self.state)
    }

    /// Serves the API on a Connect's stream: TLS with `tls`, then HTTP/1.1 until the server hangs up.
    pub async fn serve(self: Arc<Self>, tls: Arc<ApiTls>, router: Router, stream: TunnelStream) {
        let Some(tls) = tls.accept(stream).await else {
            return;
        };
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(self.clone());
            let router = router.clone();
            async move {
                let response = router.oneshot(req.map(Body::new)).await;
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), service)
            .await;
        if let Err(e) = served {
            tracing::debug!("simulated API connection: {e}");
        }
    }

    /// Records a change: keeps the event, tells watchers.
    fn changed(
        &self,
        state: &mut ClusterState,
        kind: &'static str,
        name: &str,
        object: &Namespace,
    ) {
        let event = Arc::new(Event {
            kind,
            name: name.to_string(),
            namespace: object.clone(),
        });
        if state.history.len() == HISTORY {
            state.history.pop_front();
        }
        state.history.push_back(event.clone());
        let _ = self.events.send(event);
    }
}

impl Default for SimulatedCluster {
    fn default() -> Self {
        Self::new()
    }
}

/// The API's routes, shared by every simulated cluster of the process (the cluster is a request
/// extension).
pub fn router() -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/healthz", get(ok))
        .route("/livez", get(ok))
        .route("/readyz", get(ok))
        .route("/api", get(api_versions))
        .route("/api/v1", get(api_v1_resources))
        .route("/apis", get(api_groups))
        .route("/api/v1/namespaces", get(list_or_watch).post(create))
        .route("/api/v1/namespaces/{name}", get(read).delete(delete))
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/pods", get(list_pods))
        .route(
            "/api/v1/namespaces/{namespace}/pods",
            get(list_namespace_pods),
        )
        .route("/api/v1/services", get(list_services))
        .route(
            "/api/v1/namespaces/{namespace}/services",
            get(list_namespace_services),
        )
        .route("/api/v1/nodes/{name}", get(read_node))
        .route("/apis/{group}/{version}", get(group_resources))
        .route(
            "/apis/rbac.authorization.k8s.io/v1/{kind}",
            get(rbac_collection).post(rbac_collection),
        )
        .route(
            "/apis/rbac.authorization.k8s.io/v1/{kind}/{name}",
            get(rbac_object).put(rbac_object).delete(rbac_object),
        )
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            axum::routing::post(access_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            axum::routing::post(rules_review),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn(authorize))
        .layer(axum::middleware::from_fn(authenticate))
}

/// Every request must carry the cluster's service-account token, as a real API server wants.
async fn authenticate(req: Request<Body>, next: axum::middleware::Next) -> Response<Body> {
    let cluster = req.extensions().get::<Arc<SimulatedCluster>>().cloned();
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authorized = match (cluster, presented) {
        (Some(cluster), Some(token)) => {
            bool::from(token.as_bytes().ct_eq(cluster.token.as_bytes()))
        }
        _ => false,
    };
    if !authorized {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
            None,
        );
    }
    next.run(req).await
}

/// RBAC, as kube-apiserver applies it after authentication: the service account may do anything,
/// a user it impersonates what the cluster's bindings grant; a refusal is its 403 Status.
async fn authorize(mut req: Request<Body>, next: axum::middleware::Next) -> Response<Body> {
    let Some(cluster) = req.extensions().get::<Arc<SimulatedCluster>>().cloned() else {
        return next.run(req).await;
    };
    let who = Identity::of(req.headers());
    let attributes = Attributes::of(req.method(), req.uri().path(), req.uri().query());
    let allowed = crate::support::lock(&cluster.rbac).allows(&who, &attributes);
    if !allowed {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": attributes.forbidden(&who.user),
            "reason": "Forbidden",
            "code": 403,
        });
        if let Attributes::Resource {
            group,
            resource,
            name,
            ..
        } = &attributes
        {
            let mut details = json!({"kind": resource});
            if !group.is_empty() {
                details["group"] = group.as_str().into();
            }
            if let Some(name) = name {
                details["name"] = name.as_str().into();
            }
            body["details"] = details;
        }
        return json_response(StatusCode::FORBIDDEN, &body);
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

async fn ok() -> Response<Body> {
    text(StatusCode::OK, "ok")
}

async fn version() -> Response<Body> {
    let minor = GIT_VERSION.split('.').nth(1).unwrap_or_default();
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": minor,
            "gitVersion": GIT_VERSION,
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "corral",
            "compiler": "corral",
            "platform": "linux/amd64",
        }),
    )
}

async fn api_versions() -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": SIMULATED_ADDRESS}
            ],
        }),
    )
}

async fn api_v1_resources() -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [{
                "name": "namespaces",
                "singularName": "namespace",
                "namespaced": false,
                "kind": "Namespace",
                "verbs": ["create", "delete", "get", "list", "watch"],
                "shortNames": ["ns"],
            }, {
                "name": "pods",
                "singularName": "pod",
                "namespaced": true,
                "kind": "Pod",
                "verbs": ["get", "list"],
                "shortNames": ["po"],
            }, {
                "name": "services",
                "singularName": "service",
                "namespaced": true,
                "kind": "Service",
                "verbs": ["get", "list"],
                "shortNames": ["svc"],
            }, {
                "name": "nodes",
                "singularName": "node",
                "namespaced": false,
                "kind": "Node",
                "verbs": ["get", "list"],
                "shortNames": ["no"],
            }],
        }),
    )
}

/// A group's resources: name, kind and verbs.
type GroupResources = &'static [(&'static str, &'static str, &'static [&'static str])];

/// The API groups served besides the core one, and their resources.
const GROUPS: [(&str, GroupResources); 2] = [
    (
        rbac::RBAC_GROUP,
        &[
            (
                "clusterroles",
                "ClusterRole",
                &["create", "delete", "get", "list", "update"],
            ),
            (
                "clusterrolebindings",
                "ClusterRoleBinding",
                &["create", "delete", "get", "list", "update"],
            ),
        ],
    ),
    (
        "authorization.k8s.io",
        &[
            (
                "selfsubjectaccessreviews",
                "SelfSubjectAccessReview",
                &["create"],
            ),
            (
                "selfsubjectrulesreviews",
                "SelfSubjectRulesReview",
                &["create"],
            ),
        ],
    ),
];

async fn api_groups() -> Response<Body> {
    let groups: Vec<Value> = GROUPS
        .iter()
        .map(|(name, _)| {
            let version = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
            json!({"name": name, "versions": [version], "preferredVersion": version})
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

async fn group_resources(Path((group, version)): Path<(String, String)>) -> Response<Body> {
    let Some((_, resources)) = GROUPS.iter().find(|(name, _)| *name == group) else {
        return not_found().await;
    };
    if version != "v1" {
        return not_found().await;
    }
    let resources: Vec<Value> = resources
        .iter()
        .map(|(name, kind, verbs)| {
            json!({"name": name, "singularName": "", "namespaced": false, "kind": kind, "verbs": verbs})
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": format!("{group}/v1"),
            "resources": resources,
        }),
    )
}

fn node_json(cluster: &SimulatedCluster) -> Value {
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": NODE,
            "uid": "00000000-0000-4000-8000-000000000001",
            "resourceVersion": "1",
            "creationTimestamp": rfc3339(cluster.created),
            "labels": {
                "kubernetes.io/hostname": NODE,
                "kubernetes.io/os": "linux",
                "node-role.kubernetes.io/control-plane": "true",
            },
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status"}],
            "nodeInfo": {"kubeletVersion": GIT_VERSION, "osImage": "corral simulated",
                         "architecture": "amd64", "operatingSystem": "linux"},
        },
    })
}

fn node_table(cluster: &SimulatedCluster) -> Value {
    let column = |name: &str, format: &str| json!({"name": name, "type": "string", "format": format, "description": "", "priority": 0});
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": "1"},
        "columnDefinitions": [column("Name", "name"), column("Status", ""), column("Roles", ""),
                              column("Age", ""), column("Version", "")],
        "rows": [{
            "cells": [NODE, "Ready", "control-plane", age(cluster.created), GIT_VERSION],
            "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                       "metadata": {"name": NODE, "resourceVersion": "1",
                                    "creationTimestamp": rfc3339(cluster.created)}},
        }],
    })
}

async fn list_nodes(
    Extension(cluster): Extension<Arc<SimulatedCluster>>,
    headers: HeaderMap,
) -> Response<Body> {
    if wants_table(&headers) {
        return json_response(StatusCode::OK, &node_table(&cluster));
    }
    json_response(
        StatusCode::OK,
        &json!({"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                "items": [node_json(&cluster)]}),
    )
}

async fn read_node(
    Extension(cluster): Extension<Arc<SimulatedCluster>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    if name != NODE {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("nodes \"{name}\" not found"),
            None,
        );
    }
    if wants_table(&headers) {
        return json_response(StatusCode::OK, &node_table(&cluster));
    }
    json_response(StatusCode::OK, &node_json(&cluster))
}

/// The system pods every simulated cluster runs (what k3s starts with), all ready: namespace,
/// name, app label.
const PODS: [(&str, &str, &str); 3] = [
    ("kube-system", "coredns-6799fbcd5-c0rr4", "kube-dns"),
    (
        "kube-system",
        "local-path-provisioner-6c86858495-c0rr4",
        "local-path-provisioner",
    ),
    (
        "kube-system",
        "metrics-server-54fd9b65b-c0rr4",
        "metrics-server",
    ),
];

fn pod_json(cluster: &SimulatedCluster, namespace: &str, name: &str, app: &str) -> Value {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "labels": {"k8s-app": app},
                     "resourceVersion": "1", "creationTimestamp": rfc3339(cluster.created)},
        "spec": {"nodeName": NODE, "containers": [{"name": app, "image": "corral/simulated"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": app, "ready": true, "restartCount": 0}]},
    })
}

/// Pods in `namespace` (all namespaces when `None`), as a list or the table `kubectl get` asks for.
fn pods(
    cluster: &SimulatedCluster,
    namespace: Option<&str>,
    headers: &HeaderMap,
) -> Response<Body> {
    let chosen = PODS
        .iter()
        .filter(|(ns, _, _)| namespace.is_none_or(|wanted| wanted == *ns));
    if wants_table(headers) {
        let column = |name: &str, format: &str| json!({"name": name, "type": "string", "format": format, "description": "", "priority": 0});
        let rows: Vec<Value> = chosen
            .map(|(ns, name, _)| {
                json!({
                    "cells": [name, "1/1", "Running", 0, age(cluster.created)],
                    "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                               "metadata": {"name": name, "namespace": ns, "resourceVersion": "1",
                                            "creationTimestamp": rfc3339(cluster.created)}},
                })
            })
            .collect();
        let table = json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": "1"},
            "columnDefinitions": [column("Name", "name"), column("Ready", ""), column("Status", ""),
                                  column("Restarts", ""), column("Age", "")],
            "rows": rows,
        });
        return json_response(StatusCode::OK, &table);
    }
    let items: Vec<Value> = chosen
        .map(|(ns, name, app)| pod_json(cluster, ns, name, app))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                "items": items}),
    )
}

async fn list_pods(
    Extension(cluster): Extension<Arc<SimulatedCluster>>,
    headers: HeaderMap,
) -> Response<Body> {
    pods(&cluster, None, &headers)
}

async fn list_namespace_pods(
    Extension(cluster): Extension<Arc<SimulatedCluster>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    pods(&cluster, Some(&namespace), &headers)
}

/// The cluster's services: `default/kubernetes` and `kube-system/kube-dns` (which `kubectl
/// cluster-info` lists by its `kubernetes.io/cluster-service` label).
fn services(namespace: Option<&str>, selector: &str) -> Value {
    let all = [
        json!({"kind": "Service", "apiVersion": "v1",
               "metadata": {"name": "kubernetes", "namespace": "default",
                            "labels": {"component": "apiserver", "provider": "kubernetes"}},
               "spec": {"clusterIP": "10.43.0.1", "type": "ClusterIP",
                        "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}),
        json!({"kind": "Service", "apiVersion": "v1",
               "metadata": {"name": "kube-dns", "namespace": "kube-system",
                            "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                                       "kubernetes.io/name": "CoreDNS"}},
               "spec": {"clusterIP": "10.43.0.10", "type": "ClusterIP",
                        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                                  {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}),
    ];
    let items: Vec<Value> = all
        .into_iter()
        .filter(|s| namespace.is_none_or(|ns| s["metadata"]["namespace"] == ns))
        .filter(|s| {
            selector.split(',').filter(|t| !t.is_empty()).all(|term| {
                let (key, value) = term.split_once('=').unwrap_or((term, ""));
                let label = &s["metadata"]["labels"][key];
                match value {
                    "" => !label.is_null(),
                    value => label == value,
                }
            })
        })
        .collect();
    json!({"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
           "items": items})
}

async fn list_services(Query(query): Query<SelectorQuery>) -> Response<Body> {
    json_response(StatusCode::OK, &services(None, &query.label_selector))
}

async fn list_namespace_services(
    Path(namespace): Path<String>,
    Query(query): Query<SelectorQuery>,
) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &services(Some(&namespace), &query.label_selector),
    )
}

/// A JSON body within the size limit, or why the apiserver refuses it.
fn json_body(body: &Bytes) -> Result<Value, rbac::Refusal> {
    if body.len() > MAX_BODY {
        return Err(rbac::Refusal {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: "request body too large".into(),
        });
    }
    serde_json::from_slice(body).map_err(|e| rbac::Refusal {
        code: 400,
        reason: "BadRequest",
        message: format!("the body of the request was in an unknown format: {e}"),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SelectorQuery {
    #[serde(default)]
    label_selector: String,
}

/// `/apis/rbac.authorization.k8s.io/v1/<kind>`: list (with `labelSelector`) or create.
async fn rbac_collection(
    Extension(cluster): Extension<Arc<SimulatedCluster>>,
    method: axum::http::Method,
    Path(kind): Path<String>,
    Query(query): Query<SelectorQuery>,
    body: Bytes,
) -> Response<Body> {
    answer(rbac_call(
        &cluster,
        &method,
        &kind,
        None,
        &query.label_selector,
        &body,
    ))
}

/// `/apis/rbac.authorization.k8s.io/v1/<kind>/<name>`: read, replace or delete.
async fn rbac_object(
    Extension(cluster): Extension<Arc<SimulatedCluster>>,
    method: axum::http::Method,
    Path((kind, name)): Path<(String, String)>,
    body: Bytes,
) -> Response<Body> {
    answer(rbac_call(&cluster, &method, &kind, Some(&name), "", &body))
}

fn answer(result: Result<(StatusCode, Value), rbac::Refusal>) -> Response<Body> {
    match result {
        Ok((code, object)) => json_response(code, &object),
        Err(refusal) => {
            let code = StatusCode::from_u16(refusal.code).unwrap_or(StatusCode::BAD_REQUEST);
            status(code, refusal.reason, &refusal.message, None)
        }
    }
}

/// One request on ClusterRoles or ClusterRoleBindings, as kube-apiserver answers it.
fn rbac_call(
    cluster: &SimulatedCluster,
    method: &axum::http::Method,
    kind: &str,
    name: Option<&str>,
    selector: &str,
    body: &Bytes,
) -> Result<(StatusCode, Value), rbac::Refusal> {
    use axum::http::Method;
    let kind = Kind::from_path(kind).ok_or_else(|| {
        rbac::Refusal::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        )
    })?;
    let mut rbac = crate::support::lock(&cluster.rbac);
    let now = || rfc3339(OffsetDateTime::now_utc());
    match (method, name) {
        (&Method::GET, None) => Ok((StatusCode::OK, rbac.list(kind, selector))),
        (&Method::GET, Some(name)) => Ok((StatusCode::OK, rbac.get(kind, name)?)),
        (&Method::POST, None) => {
            let written = rbac.write(kind, None, &json_body(body)?, &now(), uid())?;
            Ok((StatusCode::CREATED, written))
        }
        (&Method::PUT, Some(name)) => {
            let written = rbac.write(kind, Some(name), &json_body(body)?, &now(), uid())?;
            Ok((StatusCode::OK, written))
        }
        (&Method::DELETE, Some(name)) => Ok((StatusCode::OK, rbac.delete(kind, name)?)),
        _ => Err(rbac::Refusal::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )),
    }
}

async fn access_review(
    Extension(cluster): Extension<Arc<SimulatedCluster>>,
    Extension(who): Extension<Identity>,
    body: Bytes,
) -> Response<Body> {
    review(&cluster, &who, &body, rbac::access_review)
}

async fn rules_review(
    Extension(cluster): Extension<Arc<SimulatedCluster>>,
    Extension(who): Extension<Identity>,
    body: Bytes,
) -> Response<Body> {
    review(&cluster, &who, &body, rbac::rules_review)
}

/// A self review (`kubectl auth can-i`): `reviewed` answers it for `who`, as 201.
fn review(
    cluster: &SimulatedCluster,
    who: &Identity,
    body: &Bytes,
    reviewed: fn(&Rbac, &Identity, &Value) -> Value,
) -> Response<Body> {
    let asked = match json_body(body) {
        Ok(asked) => asked,
        Err(refusal) => return answer(Err(refusal)),
    };
    let answered = reviewed(&crate::support::lock(&cluster.rbac), who, &asked);
    json_response(StatusCode::CREATED, &answered)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    #[serde(default)]
    watch: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
}

async fn list_or_watch(
    Extension(cluster): Extension<Arc<SimulatedCluster>>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response<Body> {
    if query
        .watch
        .as_deref()
        .is_some_and(|w| w == "true" || w == "1")
    {
        let format = match wants_table(&headers) {
            true => WatchFormat::Table { columns: true },
            false => WatchFormat::Json,
        };
        return watch(cluster, query, format);
    }
    let state = cluster.lock();
    let version = state.resource_version;
    if wants_table(&headers) {
        let rows: Vec<Value> = state
            .namespaces
            .iter()
            .map(|(name, ns)| table_row(name, ns, "Active"))
            .collect();
        return json_response(StatusCode::OK, &table(version, rows, true));
    }
    let items: Vec<Value> = state
        .namespaces
        .iter()
        .map(|(name, ns)| namespace_json(name, ns, "Active"))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "NamespaceList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": version.to_string()},
            "items": items,
        }),
    )
}

/// A watch: the events after `resourceVersion` (or every namespace as ADDED without one), then
/// events as they happen, until `timeoutSeconds` or the client leaves.
fn watch(cluster: Arc<SimulatedCluster>, query: ListQuery, format: WatchFormat) -> Response<Body> {
    // Subscribed before the snapshot, so nothing falls between the two; what both carry is skipped
    // by resourceVersion.
    let receiver = cluster.events.subscribe();
    let since = query
        .resource_version
        .as_deref()
        .filter(|v| !v.is_empty() && *v != "0")
        .map(str::parse::<u64>);
    let (backlog, last_sent): (Vec<Arc<Event>>, u64) = {
        let state = cluster.lock();
        let backlog = match since {
            None => state
                .namespaces
                .iter()
                .map(|(name, ns)| {
                    Arc::new(Event {
                        kind: "ADDED",
                        name: name.clone(),
                        namespace: ns.clone(),
                    })
                })
                .collect(),
            Some(Ok(version)) => {
                let oldest = state.history.front().map_or(state.resource_version, |e| {
                    e.resource_version().saturating_sub(1)
                });
                if version < oldest {
                    return status(
                        StatusCode::GONE,
                        "Expired",
                        &format!("too old resource version: {version} ({oldest})"),
                        None,
                    );
                }
                state
                    .history
                    .iter()
                    .filter(|e| e.resource_version() > version)
                    .cloned()
                    .collect()
            }
            Some(Err(_)) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "resourceVersion: invalid value",
                    None,
                );
            }
        };
        (backlog, state.resource_version)
    };
    let limit = Duration::from_secs(query.timeout_seconds.unwrap_or(1800).min(3600));
    let deadline = tokio::time::Instant::now() + limit;
    let live = futures_util::stream::unfold(
        (receiver, last_sent),
        move |(mut receiver, last_sent)| async move {
            loop {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Ok(event)) if event.resource_version() > last_sent => {
                        let version = event.resource_version();
                        return Some((event, (receiver, version)));
                    }
                    Ok(Ok(_)) => continue,
                    // A reader too slow for the channel, or the time is up: the watch ends, and
                    // kubectl watches again.
                    Ok(Err(_)) | Err(_) => return None,
                }
            }
        },
    );
    let events = futures_util::StreamExt::chain(futures_util::stream::iter(backlog), live);
    let mut format = format;
    let stream = futures_util::StreamExt::map(events, move |event| {
        let line = event.line(format);
        if let WatchFormat::Table { columns } = &mut format {
            *columns = false;
        }
        Ok::<_, Infallible>(line)
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn read(
    Extension(cluster): Extension<Arc<SimulatedCluster>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let state = cluster.lock();
    let Some(ns) = state.namespaces.get(&name) else {
        return not_found_namespace(&name);
    };
    if wants_table(&headers) {
        let row = table_row(&name, ns, "Active");
        return json_response(
            StatusCode::OK,
            &table(state.resource_version, vec![row], true),
        );
    }
    json_response(StatusCode::OK, &namespace_json(&name, ns, "Active"))
}

/// A Namespace's name and labels from a JSON body.
fn parse_json_namespace(body: &[u8]) -> Result<(String, BTreeMap<String, String>), String> {
    let object: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let labels = object["metadata"]["labels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .take(64)
                .collect()
        })
        .unwrap_or_default();
    Ok((name, labels))
}

async fn create(
    Extension(cluster): Extension<Arc<SimulatedCluster>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    if body.len() > MAX_BODY {
        return status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "request body too large",
            None,
        );
    }
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    // kube-apiserver takes JSON and protobuf (what kubectl's typed clients send); anything else is
    // 415, on which clients fall back to JSON.
    let parsed = match media_type.as_str() {
        "application/vnd.kubernetes.protobuf" => super::protobuf::namespace(&body)
            .ok_or_else(|| "unable to decode the protobuf body".to_string()),
        "" | "application/json" => parse_json_namespace(&body),
        other => {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                &format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json, application/vnd.kubernetes.protobuf (not {other})"
                ),
                None,
            );
        }
    };
    let (name, labels) = match parsed {
        Ok(found) => found,
        Err(e) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("the body of the request was in an unknown format: {e}"),
                None,
            );
        }
    };
    let name = name.as_str();
    if let Err(reason) = valid_name(name) {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!(
                "Namespace \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": {reason}"
            ),
            Some(name),
        );
    }
    let mut state = cluster.lock();
    if state.namespaces.contains_key(name) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("namespaces \"{name}\" already exists"),
            Some(name),
        );
    }
    if state.namespaces.len() >= MAX_NAMESPACES {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "namespaces \"{name}\" is forbidden: a simulated cluster holds at most {MAX_NAMESPACES} namespaces"
            ),
            Some(name),
        );
    }
    state.resource_version += 1;
    let namespace = Namespace {
        uid: uid(),
        created: OffsetDateTime::now_utc(),
        resource_version: state.resource_version,
        labels,
    };
    let body = namespace_json(name, &namespace, "Active");
    cluster.changed(&mut state, "ADDED", name, &namespace);
    state.namespaces.insert(name.to_string(), namespace);
    json_response(StatusCode::CREATED, &body)
}

async fn delete(
    Extension(cluster): Extension<Arc<SimulatedCluster>>,
    Path(name): Path<String>,
) -> Response<Body> {
    if UNDELETABLE.contains(&name.as_str()) {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
            Some(&name),
        );
    }
    let mut state = cluster.lock();
    let Some(mut namespace) = state.namespaces.remove(&name) else {
        return not_found_namespace(&name);
    };
    state.resource_version += 1;
    namespace.resource_version = state.resource_version;
    cluster.changed(&mut state, "DELETED", &name, &namespace);
    json_response(
        StatusCode::OK,
        &namespace_json(&name, &namespace, "Terminating"),
    )
}

async fn not_found() -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
        None,
    )
}

fn not_found_namespace(name: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("namespaces \"{name}\" not found"),
        Some(name),
    )
}

/// A namespace name that breaks Kubernetes' DNS-1123 label rule; the text is Kubernetes'.
#[derive(Debug, thiserror::Error)]
#[error(
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
)]
struct InvalidLabel;

/// Kubernetes' DNS-1123 label rule for namespace names.
fn valid_name(name: &str) -> Result<(), InvalidLabel> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    match ok {
        true => Ok(()),
        false => Err(InvalidLabel),
    }
}

fn namespace_json(name: &str, ns: &Namespace, phase: &str) -> Value {
    let mut labels = serde_json::Map::new();
    for (k, v) in &ns.labels {
        labels.insert(k.clone(), v.clone().into());
    }
    labels.insert("kubernetes.io/metadata.name".into(), name.into());
    json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": ns.uid,
            "resourceVersion": ns.resource_version.to_string(),
            "creationTimestamp": rfc3339(ns.created),
            "labels": labels,
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": phase},
    })
}

/// Whether the client asked for a server-side table (`kubectl get` does).
fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("as=Table") && accept.contains("v=v1;g=meta.k8s.io"))
}

/// A meta.k8s.io Table of namespaces; `columns` false leaves the column definitions out (the
/// events after the first of a watch).
fn table(version: u64, rows: Vec<Value>, columns: bool) -> Value {
    let column = |name: &str, format: &str, description: &str| json!({"name": name, "type": "string", "format": format, "description": description, "priority": 0});
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": version.to_string()},
        "columnDefinitions": if columns {
            json!([
                column("Name", "name", "Name must be unique within a namespace."),
                column("Status", "", "The status of the namespace"),
                column("Age", "", "CreationTimestamp is a timestamp representing the server time when this object was created."),
            ])
        } else {
            json!([])
        },
        "rows": rows,
    })
}

fn table_row(name: &str, ns: &Namespace, phase: &str) -> Value {
    json!({
        "cells": [name, phase, age(ns.created)],
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {
                "name": name,
                "uid": ns.uid,
                "resourceVersion": ns.resource_version.to_string(),
                "creationTimestamp": rfc3339(ns.created),
            },
        },
    })
}

/// Kubernetes' short age: `45s`, `12m`, `5h`, `3d`.
fn age(since: OffsetDateTime) -> String {
    let seconds = (OffsetDateTime::now_utc() - since).whole_seconds().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn uid() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Kubernetes' `Status` object for an error.
fn status(code: StatusCode, reason: &str, message: &str, name: Option<&str>) -> Response<Body> {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(name) = name {
        body["details"] = json!({"name": name, "kind": "namespaces"});
    }
    json_response(code, &body)
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("static headers are valid")
}

fn text(code: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(body))
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn call(
        cluster: &Arc<SimulatedCluster>,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (u16, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", cluster.token()))
            .body(Body::from(body.to_string()))
            .unwrap();
        req.extensions_mut().insert(cluster.clone());
        let response = router().oneshot(req).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn namespaces_are_created_listed_read_and_deleted() {
        let cluster = Arc::new(SimulatedCluster::new());
        let (code, list) = call(&cluster, "GET", "/api/v1/namespaces", "").await;
        assert_eq!(code, 200);
        let names: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, INITIAL);

        let new = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"lab"}}"#;
        assert_eq!(
            call(&cluster, "POST", "/api/v1/namespaces", new).await.0,
            201
        );
        assert_eq!(
            call(&cluster, "POST", "/api/v1/namespaces", new).await.0,
            409
        );
        let bad = r#"{"metadata":{"name":"Not_OK"}}"#;
        assert_eq!(
            call(&cluster, "POST", "/api/v1/namespaces", bad).await.0,
            422
        );
        assert_eq!(
            call(&cluster, "POST", "/api/v1/namespaces", "{").await.0,
            400
        );
        let (code, lab) = call(&cluster, "GET", "/api/v1/namespaces/lab", "").await;
        assert_eq!(
            (code, lab["status"]["phase"].as_str()),
            (200, Some("Active"))
        );
        assert_eq!(
            call(&cluster, "DELETE", "/api/v1/namespaces/lab", "")
                .await
                .0,
            200
        );
        assert_eq!(
            call(&cluster, "GET", "/api/v1/namespaces/lab", "").await.0,
            404
        );
        assert_eq!(
            call(&cluster, "DELETE", "/api/v1/namespaces/default", "")
                .await
                .0,
            403
        );
    }

    #[tokio::test]
    async fn requests_without_the_token_are_refused() {
        let cluster = Arc::new(SimulatedCluster::new());
        let mut req = Request::builder()
            .uri("/version")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut().insert(cluster);
        assert_eq!(router().oneshot(req).await.unwrap().status(), 401);
    }

    #[tokio::test]
    async fn a_namespace_count_past_the_cap_is_refused() {
        let cluster = Arc::new(SimulatedCluster::new());
        for i in 0..(MAX_NAMESPACES - INITIAL.len()) {
            let body = format!(r#"{{"metadata":{{"name":"n{i}"}}}}"#);
            assert_eq!(
                call(&cluster, "POST", "/api/v1/namespaces", &body).await.0,
                201
            );
        }
        let over = r#"{"metadata":{"name":"one-more"}}"#;
        assert_eq!(
            call(&cluster, "POST", "/api/v1/namespaces", over).await.0,
            403
        );
    }
}
