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
use crate::accounts::Caller;
use crate::api::collection::{CollectionContext, collection};
use crate::api::error::MUST_AUTHENTICATE;
use crate::api::input::{Op, admit, parse_object};
use crate::api::request::{ApiPath, Query, effective_method};
use crate::api::resource::{RenderOptions, render};
use crate::api::schema::{DELETE, GET, POST, PUT, Registry, Schema, V3, V3_PUBLIC, Version};
use crate::api::urls::Urls;
use crate::api::{ApiError, Resource};

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
}

impl Call<'_> {
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

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError>;

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
    if version == V3 && caller.is_none() && !public_read {
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
    };
    let render_options = RenderOptions {
        created: false,
        action_links: parts.headers.contains_key("x-api-action-links"),
    };
    let answer = route(api, &call, &path, schema, handler, &parts.method, body).await;
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
            respond(
                &urls,
                &version,
                StatusCode::OK,
                Some(&collection(&cx, items)),
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
    body: Body,
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
                let input = parse_object(&read_body(call.headers, body).await?)?;
                return Ok(Routed::Answer(
                    handler.action(call, None, action, input).await?,
                ));
            }
            if !schema.collection_methods.contains(&method) {
                return Err(ApiError::method_not_allowed(method));
            }
            match method {
                GET => Ok(Routed::Collection(
                    schema.clone(),
                    handler.list(call).await?,
                )),
                POST => {
                    let body = parse_object(&read_body(call.headers, body).await?)?;
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
                handler.get(call, id).await?;
                let input = parse_object(&read_body(call.headers, body).await?)?;
                return Ok(Routed::Answer(
                    handler.action(call, Some(id), action, input).await?,
                ));
            }
            if !schema.resource_methods.contains(&method) {
                return Err(ApiError::method_not_allowed(method));
            }
            match method {
                GET => Ok(Routed::Answer(Answer::ok(
                    schema.id,
                    handler.get(call, id).await?,
                ))),
                PUT => {
                    handler.get(call, id).await?;
                    let body = parse_object(&read_body(call.headers, body).await?)?;
                    let input = admit(&schema, Op::Update, body)?;
                    let updated = handler.update(call, id, input).await?;
                    Ok(Routed::Answer(Answer::ok(schema.id, updated)))
                }
                DELETE => {
                    handler.get(call, id).await?;
                    Ok(Routed::Answer(handler.delete(call, id).await?))
                }
                other => Err(ApiError::method_not_allowed(other)),
            }
        }
    }
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
