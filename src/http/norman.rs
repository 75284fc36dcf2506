//! The norman API: every request under `/v3` and `/v3-public` (and `GET /` from a non-browser) goes
//! through [`dispatch`], which applies norman's rules once — authentication first, then the type
//! (404 `failed to find schema`), the method against the schema's methods (405 `MethodNotAllow`),
//! `?action=`, links — and hands the request to the type's [`TypeHandler`], which says only what
//! its type does. Answers are written with `X-Api-Schemas` and norman's `Expires`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, State};
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use super::{AppState, ConnInfo, HEADER_READ_TIMEOUT, MAX_API_BODY};
use crate::accounts::{AccountError, Accounts, Caller, ClusterGrants};
use crate::api::collection::{CollectionContext, collection_completed};
use crate::api::error::MUST_AUTHENTICATE;
use crate::api::input::{Op, admit, parse_object};
use crate::api::request::{ApiPath, Query, effective_method};
use crate::api::resource::{RenderOptions, render};
use crate::api::schema::{
    DELETE, GET, POST, PUT, Registry, Schema, V3, V3_CORRAL, V3_PUBLIC, Version,
};
use crate::api::urls::Urls;
use crate::api::{ApiError, Resource};
use crate::rbac::{Grants, Request as RbacRequest};

/// norman's fixed `Expires` date.
const NORMAN_EXPIRES: &str = "Wed 24 Feb 1982 18:42:00 GMT";

/// What a handler's call knows of its request.
pub struct Call<'a> {
    pub state: &'a AppState,
    pub version: Version,
    /// Who is calling; `None` only for public routes.
    pub caller: Option<&'a Caller>,
    pub urls: &'a Urls,
    pub headers: &'a HeaderMap,
    pub conn: Option<&'a ConnInfo>,
    pub query: &'a Query,
    /// The caller's global rules, read once per request when first needed.
    grants: std::sync::OnceLock<Grants>,
    /// What the caller is bound to in each cluster, read once when first needed.
    cluster_grants: std::sync::OnceLock<ClusterGrants>,
}

impl Call<'_> {
    /// The caller's global rules (none for a caller-less public read).
    pub fn grants(&self) -> Result<&Grants, ApiError> {
        self.read_once(&self.grants, |accounts, user| accounts.grants(user))
    }

    /// Whether the caller's global rules allow `verb` on management `resource` (object `name`).
    pub fn may(&self, verb: &str, resource: &str, name: Option<&str>) -> Result<bool, ApiError> {
        Ok(self
            .grants()?
            .allows(&RbacRequest::management(verb, resource, name)))
    }

    /// What the caller is bound to, per cluster.
    pub fn cluster_grants(&self) -> Result<&ClusterGrants, ApiError> {
        self.read_once(&self.cluster_grants, |accounts, user| {
            accounts.cluster_grants(user)
        })
    }

    /// What `read` says of the caller, read once per request (the default for no caller).
    fn read_once<'c, T: Default>(
        &self,
        cell: &'c std::sync::OnceLock<T>,
        read: impl FnOnce(&Accounts, &str) -> Result<T, AccountError>,
    ) -> Result<&'c T, ApiError> {
        if let Some(value) = cell.get() {
            return Ok(value);
        }
        let value = match self.caller {
            Some(caller) => {
                read(&self.state.accounts, &caller.user_id).map_err(|e| super::account_error(&e))?
            }
            None => T::default(),
        };
        Ok(cell.get_or_init(|| value))
    }

    /// Whether the caller may `verb` on management `resource` (object `name`) in `cluster`: by
    /// its global rules, or by what it is bound to there.
    pub fn may_in_cluster(
        &self,
        cluster: &str,
        verb: &str,
        resource: &str,
        name: Option<&str>,
    ) -> Result<bool, ApiError> {
        if self.may(verb, resource, name)? {
            return Ok(true);
        }
        let request = RbacRequest::management(verb, resource, name);
        Ok(self
            .cluster_grants()?
            .in_cluster(cluster)
            .is_some_and(|grants| grants.allows(&request)))
    }

    /// norman's refusal unless the caller may `verb` `resource` in `cluster` (a create whose
    /// cluster is in the body).
    pub fn require_in_cluster(
        &self,
        cluster: &str,
        verb: &str,
        resource: &str,
        schema: &str,
    ) -> Result<(), ApiError> {
        if self.caller.is_none() || self.may_in_cluster(cluster, verb, resource, None)? {
            return Ok(());
        }
        Err(denied(verb, schema))
    }

    /// The caller, on a route that needed one.
    pub fn caller(&self) -> Result<&Caller, ApiError> {
        self.caller.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "must authenticate",
            )
        })
    }
}

/// Where a type's objects live, for the rules that decide who may use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Global objects (users, settings): the caller's global rules.
    Global,
    /// Clusters themselves: also what the caller is bound to in the cluster.
    Cluster,
    /// Objects of one cluster, ids `<cluster>:<name>` (nodes, registration tokens, bindings):
    /// also what the caller is bound to in that cluster.
    InCluster,
}

/// What a handler answers besides an object of its own type.
pub enum Answer {
    /// An object of schema `schema` (of the same version), with `status`; `created`: the response
    /// to the request that made it (write-only fields shown).
    Object {
        status: StatusCode,
        schema: &'static str,
        resource: Resource,
        created: bool,
    },
    /// A JSON document as it is.
    Json(StatusCode, Value),
    /// 200 with an empty body (`changepassword`, `logout`).
    Empty,
    /// 204 with no body.
    NoContent,
    /// A response of the handler's own making (cookies).
    Raw(Response<Body>),
    /// A collection of objects of schema `schema` (an action's output: principal search).
    Collection(&'static str, Vec<Resource>),
}

impl Answer {
    pub fn ok(schema: &'static str, resource: Resource) -> Self {
        Answer::Object {
            status: StatusCode::OK,
            schema,
            resource,
            created: false,
        }
    }

    pub fn created(schema: &'static str, resource: Resource) -> Self {
        Answer::Object {
            status: StatusCode::CREATED,
            schema,
            resource,
            created: true,
        }
    }
}

/// One type's behaviour: its schema and what each method and action does. The dispatcher has
/// already checked that the method is in the schema's methods and the action in its actions.
#[async_trait]
pub trait TypeHandler: Send + Sync {
    /// The type's schema first, then the helper schemas its actions take or give.
    fn schemas(&self) -> Vec<Schema>;

    /// Whether a GET of the collection (`id` `None`) or of `id` needs no login.
    fn public_read(&self, _id: Option<&str>) -> bool {
        false
    }

    /// The Kubernetes resource this type is, whose verbs the caller's rules must grant
    /// (`users`); `None`: every caller may use what the type offers, and the handler decides
    /// what it shows (tokens: the caller's own).
    fn rbac_resource(&self) -> Option<&'static str> {
        None
    }

    /// The verb an action needs: on an object `update`, on the collection none, unless the type
    /// says otherwise.
    fn action_verb(&self, _action: &str, on_object: bool) -> Option<&'static str> {
        on_object.then_some("update")
    }

    /// Where this type's objects live, for the rules that apply to them.
    fn scope(&self) -> Scope {
        Scope::Global
    }

    /// Whether the caller may `verb` object `id` (`None`: the collection): what its rules grant
    /// on [`TypeHandler::rbac_resource`] — its global rules, and for objects of a cluster what it
    /// is bound to there. A create in a cluster is checked by the handler, which reads the
    /// cluster from the body ([`Call::require_in_cluster`]).
    fn allows(&self, call: &Call<'_>, verb: &str, id: Option<&str>) -> Result<bool, ApiError> {
        let (Some(resource), Some(_)) = (self.rbac_resource(), call.caller) else {
            return Ok(true);
        };
        let cluster = match (self.scope(), id) {
            (Scope::Global, _) => None,
            (Scope::Cluster, Some(id)) => Some(id),
            (Scope::InCluster, Some(id)) => Some(id.split_once(':').map_or(id, |(c, _)| c)),
            (Scope::InCluster, None) if verb == "create" => return Ok(true),
            (_, None) => None,
        };
        match cluster {
            Some(cluster) => call.may_in_cluster(cluster, verb, resource, id),
            None => call.may(verb, resource, id),
        }
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError>;

    /// Fills in, for the page of a list about to be written, what `list` left out because it costs
    /// a read per object (see [`crate::api::collection::collection_completed`]).
    fn complete_page(&self, _call: &Call<'_>, _page: &mut [Resource]) {}

    async fn get(&self, call: &Call<'_>, id: &str) -> Result<Resource, ApiError> {
        self.list(call)
            .await?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| ApiError::not_found(format!("{id} not found")))
    }

    async fn create(&self, _: &Call<'_>, _: Map<String, Value>) -> Result<Answer, ApiError> {
        Err(ApiError::method_not_allowed(POST))
    }

    async fn update(
        &self,
        _: &Call<'_>,
        _: &str,
        _: Map<String, Value>,
    ) -> Result<Resource, ApiError> {
        Err(ApiError::method_not_allowed(PUT))
    }

    async fn delete(&self, _: &Call<'_>, _: &str) -> Result<Answer, ApiError> {
        Err(ApiError::method_not_allowed(DELETE))
    }

    /// Action `name` on the collection (`id` `None`) or on object `id` (which exists).
    async fn action(
        &self,
        _: &Call<'_>,
        _: Option<&str>,
        name: &str,
        _: Map<String, Value>,
    ) -> Result<Answer, ApiError> {
        Err(ApiError::invalid_action(name))
    }
}

/// The schemas of every version, and who handles each type.
pub struct Api {
    pub registry: Registry,
    handlers: HashMap<(&'static str, &'static str), Arc<dyn TypeHandler>>,
}

impl Api {
    fn new() -> Self {
        let mut api = Self {
            registry: Registry::default(),
            handlers: HashMap::new(),
        };
        api.add(V3, super::handlers_v3());
        api.add(V3_PUBLIC, super::handlers_v3_public());
        api.add(V3_CORRAL, super::handlers_v3_corral());
        api
    }

    fn add(&mut self, version: Version, handlers: Vec<Arc<dyn TypeHandler>>) {
        let mut schemas = Vec::new();
        for handler in handlers {
            let declared = handler.schemas();
            if let Some(own) = declared.first() {
                self.handlers
                    .insert((version.path, own.id), handler.clone());
            }
            for schema in declared {
                if !schemas.iter().any(|s: &Schema| s.id == schema.id) {
                    schemas.push(schema);
                }
            }
        }
        self.registry.add(version, schemas);
    }

    fn handler(&self, version: &Version, id: &'static str) -> Option<&Arc<dyn TypeHandler>> {
        self.handlers.get(&(version.path, id))
    }
}

/// The API, built once: its schemas are fixed.
pub fn api() -> &'static Api {
    static API: LazyLock<Api> = LazyLock::new(Api::new);
    &API
}

/// A response with norman's headers.
fn respond(
    urls: &Urls,
    version: &Version,
    status: StatusCode,
    body: Option<&Value>,
) -> Response<Body> {
    let mut response = match body {
        Some(body) => Response::new(Body::from(format!("{body}\n"))),
        None => Response::new(Body::empty()),
    };
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if body.is_some() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    norman_headers(headers, urls, version);
    response
}

/// The headers norman puts on every answer: its fixed `Expires`, and where the schemas are.
fn norman_headers(headers: &mut HeaderMap, urls: &Urls, version: &Version) {
    headers.insert(header::EXPIRES, HeaderValue::from_static(NORMAN_EXPIRES));
    if let Ok(schemas) = HeaderValue::from_str(&urls.schemas(version)) {
        headers.insert("x-api-schemas", schemas);
    }
}

/// An error, written as norman writes it.
pub fn error_response(urls: &Urls, version: &Version, error: &ApiError) -> Response<Body> {
    let mut response = respond(urls, version, error.status, Some(&error.body()));
    if let Some(seconds) = error.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The authentication filter's 401 (not a norman body: `status` is a string, no `code`).
pub fn must_authenticate() -> Response<Body> {
    super::text_response(
        StatusCode::UNAUTHORIZED,
        "application/json",
        format!("{MUST_AUTHENTICATE}\n"),
    )
}

/// Reads a request body within the API's limits: 413 past 64 KiB (a declared length over it is
/// refused before a byte is read), 408 when it does not arrive within 30 s.
pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "InvalidBodyContent",
            format!("request body larger than {MAX_API_BODY} bytes"),
        )
    };
    if declared.is_some_and(|n| n > MAX_API_BODY as u64) {
        return Err(too_large());
    }
    let limited = Request::new(Body::new(http_body_util::Limited::new(body, MAX_API_BODY)));
    match tokio::time::timeout(HEADER_READ_TIMEOUT, Bytes::from_request(limited, &())).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "InvalidBodyContent",
            "request body not received in time",
        )),
    }
}

/// Whether a request comes from a browser (norman's test: `mozilla` in the User-Agent).
pub fn from_browser(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::USER_AGENT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("mozilla"))
}

/// Every request under a norman version path.
pub async fn dispatch(State(state): State<Arc<AppState>>, req: Request<Body>) -> Response<Body> {
    let api = api();
    let conn = req.extensions().get::<ConnInfo>().copied();
    let urls = Urls::from_request(req.headers(), conn.is_some_and(|c| c.secure));
    let Some(path) = ApiPath::parse(req.uri().path(), api.registry.versions()) else {
        return super::not_found_page();
    };
    let version = match &path {
        Ok(p) => p.version,
        Err(_) => V3,
    };
    let mut path = match path {
        Ok(path) => path,
        Err(e) => return error_response(&urls, &version, &e),
    };
    let caller = req.extensions().get::<Caller>().cloned();
    let query = Query::parse(req.uri().query());
    // `?link=` names a link as a third path segment does.
    if path.link.is_none() {
        path.link = query
            .get("link")
            .filter(|l| !l.is_empty())
            .map(str::to_string);
    }
    let schema = path
        .type_name
        .as_deref()
        .and_then(|name| api.registry.lookup(&version, name));
    let handler = schema.as_ref().and_then(|s| api.handler(&version, s.id));
    // Authentication comes first: an unknown type is a 401 to a stranger, not a 404.
    let public_read = req.method() == axum::http::Method::GET
        && handler.is_some_and(|h| h.public_read(path.id.as_deref()));
    if version != V3_PUBLIC && caller.is_none() && !public_read {
        return must_authenticate();
    }
    let (parts, body) = req.into_parts();
    let call = Call {
        state: &state,
        version,
        caller: caller.as_ref(),
        urls: &urls,
        headers: &parts.headers,
        conn: conn.as_ref(),
        query: &query,
        grants: std::sync::OnceLock::new(),
        cluster_grants: std::sync::OnceLock::new(),
    };
    let render_options = RenderOptions {
        created: false,
        action_links: parts.headers.contains_key("x-api-action-links"),
    };
    // The body is read before anything can refuse the request: a refusal that left it unread
    // would make hyper close the connection, and a client reusing it (Python's requests does)
    // would meet a closed socket on its next request. Go's server drains it too.
    let body = match read_body(&parts.headers, body).await {
        Ok(body) => body,
        Err(e) => return error_response(&urls, &version, &e),
    };
    let handled_type = schema.as_ref().map(|s| s.id);
    let answer = match route(api, &call, &path, schema, handler, &parts.method, &body).await {
        Ok(Routed::Answer(Answer::Collection(of, items))) => {
            match api.registry.lookup(&version, of) {
                Some(schema) => Ok(Routed::Collection(schema, items)),
                None => Err(ApiError::server_error(format!("no schema {of}"))),
            }
        }
        other => other,
    };
    match answer {
        Ok(Routed::Answer(answer)) => write(api, &urls, &version, answer, render_options),
        Ok(Routed::Collection(schema, items)) => {
            let cx = CollectionContext {
                registry: &api.registry,
                version: &version,
                schema: &schema,
                urls: &urls,
                path: parts.uri.path(),
                query: &query,
                render: render_options,
            };
            // The page's objects are completed by their type's handler.
            let complete = |page: &mut [Resource]| {
                if let Some(handler) = handler.filter(|_| handled_type == Some(schema.id)) {
                    handler.complete_page(&call, page);
                }
            };
            respond(
                &urls,
                &version,
                StatusCode::OK,
                Some(&collection_completed(&cx, items, complete)),
            )
        }
        Err(e) => error_response(&urls, &version, &e),
    }
}

/// Where a request ends: an answer, or a collection of a schema's objects.
enum Routed {
    Answer(Answer),
    Collection(Arc<Schema>, Vec<Resource>),
}

async fn route(
    api: &Api,
    call: &Call<'_>,
    path: &ApiPath,
    schema: Option<Arc<Schema>>,
    handler: Option<&Arc<dyn TypeHandler>>,
    http_method: &axum::http::Method,
    body: &Bytes,
) -> Result<Routed, ApiError> {
    let version = call.version;
    let method = effective_method(http_method, call.query)?;
    let Some(type_name) = path.type_name.as_deref() else {
        // The version itself: its apiRoot.
        if method != GET {
            return Err(ApiError::method_not_allowed(method));
        }
        return Ok(Routed::Answer(Answer::ok(
            "apiRoot",
            api_root(api, &version, call.urls),
        )));
    };
    let Some(schema) = schema else {
        return Err(ApiError::no_schema(type_name));
    };
    let action = call
        .query
        .action()
        .filter(|a| *a != "remove" && method == POST);
    let meta = match schema.id {
        "schema" | "apiRoot" => Some(schema.id),
        _ => None,
    };
    if let Some(meta) = meta {
        return meta_type(api, call, &schema, meta, path, method);
    }
    let handler = handler.ok_or_else(|| ApiError::no_schema(type_name))?;
    match (&path.id, &path.link) {
        (Some(id), Some(_)) => {
            handler.get(call, id).await?;
            Err(ApiError::not_found("Link not found"))
        }
        (None, _) => {
            if let Some(action) = action {
                if !schema.collection_actions.contains_key(action) {
                    return Err(ApiError::invalid_action(action));
                }
                if let Some(verb) = handler.action_verb(action, false) {
                    require(handler, call, &schema, verb, None)?;
                }
                let input = parse_object(body)?;
                return Ok(Routed::Answer(
                    handler.action(call, None, action, input).await?,
                ));
            }
            if !schema.collection_methods.contains(&method) {
                return Err(ApiError::method_not_allowed(method));
            }
            match method {
                GET => {
                    let mut visible = Vec::new();
                    for item in handler.list(call).await? {
                        if handler.allows(call, "get", Some(&item.id))? {
                            visible.push(permitted(handler, call, &schema, item)?);
                        }
                    }
                    Ok(Routed::Collection(schema.clone(), visible))
                }
                POST => {
                    require(handler, call, &schema, "create", None)?;
                    let body = parse_object(body)?;
                    let input = admit(&schema, Op::Create, body)?;
                    Ok(Routed::Answer(handler.create(call, input).await?))
                }
                other => Err(ApiError::method_not_allowed(other)),
            }
        }
        (Some(id), None) => {
            if let Some(action) = action {
                if !schema.resource_actions.contains_key(action) {
                    return Err(ApiError::invalid_action(action));
                }
                require(handler, call, &schema, "get", Some(id))?;
                handler.get(call, id).await?;
                if let Some(verb) = handler.action_verb(action, true) {
                    require(handler, call, &schema, verb, Some(id))?;
                }
                let input = parse_object(body)?;
                return Ok(Routed::Answer(
                    handler.action(call, Some(id), action, input).await?,
                ));
            }
            if !schema.resource_methods.contains(&method) {
                return Err(ApiError::method_not_allowed(method));
            }
            require(handler, call, &schema, "get", Some(id))?;
            match method {
                GET => {
                    let found = handler.get(call, id).await?;
                    let found = permitted(handler, call, &schema, found)?;
                    Ok(Routed::Answer(Answer::ok(schema.id, found)))
                }
                PUT => {
                    handler.get(call, id).await?;
                    require(handler, call, &schema, "update", Some(id))?;
                    let body = parse_object(body)?;
                    let input = admit(&schema, Op::Update, body)?;
                    let updated = handler.update(call, id, input).await?;
                    Ok(Routed::Answer(Answer::ok(schema.id, updated)))
                }
                DELETE => {
                    handler.get(call, id).await?;
                    require(handler, call, &schema, "delete", Some(id))?;
                    Ok(Routed::Answer(handler.delete(call, id).await?))
                }
                other => Err(ApiError::method_not_allowed(other)),
            }
        }
    }
}

/// norman's refusal when the caller's rules do not grant `verb` (Rancher's access control
/// writes it with the trailing space).
fn require(
    handler: &Arc<dyn TypeHandler>,
    call: &Call<'_>,
    schema: &Schema,
    verb: &str,
    id: Option<&str>,
) -> Result<(), ApiError> {
    if handler.allows(call, verb, id)? {
        return Ok(());
    }
    Err(denied(verb, schema.id))
}

/// Rancher's access control's refusal (with its trailing space).
pub fn denied(verb: &str, schema: &str) -> ApiError {
    ApiError::permission_denied(format!("can not {verb} {schema} "))
}

/// An object as the caller sees it: without the `update` and `remove` links and the actions its
/// rules do not let it use.
fn permitted(
    handler: &Arc<dyn TypeHandler>,
    call: &Call<'_>,
    schema: &Schema,
    mut resource: Resource,
) -> Result<Resource, ApiError> {
    let id = resource.id.clone();
    if !handler.allows(call, "update", Some(&id))? {
        resource = resource.without_link("update");
    }
    if !handler.allows(call, "delete", Some(&id))? {
        resource = resource.without_link("remove");
    }
    let offered: Vec<&'static str> = match &resource.actions {
        Some(actions) => actions.clone(),
        None => schema.resource_actions.keys().copied().collect(),
    };
    let mut usable = Vec::new();
    for action in &offered {
        let allowed = match handler.action_verb(action, true) {
            Some(verb) => handler.allows(call, verb, Some(&id))?,
            None => true,
        };
        if allowed {
            usable.push(*action);
        }
    }
    if usable.len() != offered.len() {
        resource = resource.only_actions(usable);
    }
    Ok(resource)
}

/// `/v3/schemas`, `/v3/schemas/<id>` and `/v3/apiRoots`.
fn meta_type(
    api: &Api,
    call: &Call<'_>,
    schema: &Arc<Schema>,
    meta: &str,
    path: &ApiPath,
    method: &str,
) -> Result<Routed, ApiError> {
    if method != GET || path.link.is_some() {
        return Err(ApiError::method_not_allowed(method));
    }
    let version = call.version;
    let items: Vec<Resource> = match meta {
        "schema" => api
            .registry
            .schemas(&version)
            .iter()
            .map(|s| schema_resource(s, &version, call.urls))
            .collect(),
        _ => api
            .registry
            .versions()
            .map(|v| api_root(api, v, call.urls))
            .collect(),
    };
    match &path.id {
        None => Ok(Routed::Collection(schema.clone(), items)),
        Some(id) => items
            .into_iter()
            .find(|r| r.id == *id)
            .map(|r| Routed::Answer(Answer::ok(schema.id, r)))
            .ok_or_else(|| ApiError::not_found(format!("{id} not found"))),
    }
}

/// A schema as an object of the `schema` type: its JSON, written out as is.
fn schema_resource(schema: &Schema, version: &Version, urls: &Urls) -> Resource {
    let mut resource = Resource::new(schema.id);
    resource.raw = true;
    resource.fields = match schema.to_json(version, urls) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    resource
}

/// `GET /v3`: the version's root, linking every collection that can be listed.
fn api_root(api: &Api, version: &Version, urls: &Urls) -> Resource {
    let mut links = Map::new();
    links.insert("self".into(), urls.version(version).into());
    links.insert("root".into(), urls.version(version).into());
    for schema in api.registry.schemas(version) {
        if schema.lists() {
            links.insert(
                schema.plural.clone(),
                urls.collection(version, &schema.plural).into(),
            );
        }
    }
    let mut resource = Resource::new(version.name);
    resource.raw = true;
    resource
        .fields
        .insert("apiVersion".into(), version.to_json());
    resource.fields.insert("links".into(), Value::Object(links));
    resource
}

/// Writes an answer of `version`.
pub fn respond_answer(urls: &Urls, version: &Version, answer: Answer) -> Response<Body> {
    write(api(), urls, version, answer, RenderOptions::default())
}

fn write(
    api: &Api,
    urls: &Urls,
    version: &Version,
    answer: Answer,
    options: RenderOptions,
) -> Response<Body> {
    match answer {
        Answer::Object {
            status,
            schema,
            resource,
            created,
        } => {
            let Some(schema) = api.registry.lookup(version, schema) else {
                let missing = ApiError::server_error(format!("no schema {schema}"));
                return error_response(urls, version, &missing);
            };
            let options = RenderOptions { created, ..options };
            let body = render(&api.registry, version, &schema, urls, &resource, options);
            respond(urls, version, status, Some(&body))
        }
        Answer::Json(status, body) => respond(urls, version, status, Some(&body)),
        Answer::Empty => respond(urls, version, StatusCode::OK, None),
        Answer::NoContent => respond(urls, version, StatusCode::NO_CONTENT, None),
        Answer::Raw(mut response) => {
            norman_headers(response.headers_mut(), urls, version);
            response
        }
        // `dispatch` writes collections (they need the request's path and query).
        Answer::Collection(of, _) => {
            let misplaced = ApiError::server_error(format!("a collection of {of} outside /v3"));
            error_response(urls, version, &misplaced)
        }
    }
}

/// `GET /` from a client that is not a browser: the API's roots, as a collection.
pub async fn roots(headers: &HeaderMap, secure: bool) -> Response<Body> {
    let api = api();
    let urls = Urls::from_request(headers, secure);
    let data: Vec<Value> = api
        .registry
        .versions()
        .filter_map(|v| {
            let schema = api.registry.lookup(v, "apiRoot")?;
            let root = api_root(api, v, &urls);
            Some(render(
                &api.registry,
                v,
                &schema,
                &urls,
                &root,
                RenderOptions::default(),
            ))
        })
        .collect();
    let body = json!({
        "type": "collection",
        "resourceType": "apiRoot",
        "links": { "self": urls.at("/") },
        "createTypes": {},
        "actions": {},
        "pagination": { "limit": 1000, "total": data.len() },
        "data": data,
    });
    respond(&urls, &V3, StatusCode::OK, Some(&body))
}
