//! Collections (`shared/spec/norman-api.md` §2.4, §2.5): filters from the query (`field`,
//! `field_<modifier>`; those the schema does not offer are ignored), `sort`/`order`, pagination
//! (`limit`, `marker`), and the envelope around the page.

use serde_json::{Map, Value, json};

use super::request::Query;
use super::resource::{RenderOptions, Resource, render};
use super::schema::{FieldType, POST, Registry, Schema, Version};
use super::urls::Urls;

/// A page holds this many objects unless `limit` says otherwise, and at most [`MAX_LIMIT`].
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

/// One condition of a filter: `field` `modifier` `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    field: String,
    modifier: &'static str,
    values: Vec<String>,
}

impl Condition {
    fn holds(&self, schema: &Schema, resource: &Resource) -> bool {
        let value = resource.text(schema, &self.field);
        // Booleans whatever their case: Python's `me=True` is `true`.
        let boolean = schema
            .fields
            .get(self.field.as_str())
            .is_some_and(|f| f.kind == FieldType::Boolean);
        let same = |v: &String| {
            if boolean {
                v.eq_ignore_ascii_case(&value)
            } else {
                *v == value
            }
        };
        match self.modifier {
            "eq" => self.values.iter().any(same),
            "ne" => !self.values.iter().any(same),
            "in" => self.values.contains(&value),
            "notin" => !self.values.contains(&value),
            "null" => value.is_empty(),
            "notnull" => !value.is_empty(),
            _ => true,
        }
    }
}

/// What a list request asks for.
#[derive(Debug, Clone)]
pub struct ListOptions {
    conditions: Vec<Condition>,
    sort: Option<String>,
    descending: bool,
    limit: usize,
    marker: Option<String>,
}

impl ListOptions {
    /// Reads the query against `schema`'s filters.
    pub fn parse(schema: &Schema, query: &Query) -> Self {
        let filters = schema.collection_filters();
        let mut conditions: Vec<Condition> = Vec::new();
        for (key, value) in query.pairs() {
            let (field, modifier) = match key.rsplit_once('_') {
                Some((field, modifier)) if filters.contains_key(field) => (field, modifier),
                _ => (key.as_str(), "eq"),
            };
            let Some(offered) = filters.get(field) else {
                continue;
            };
            let Some(modifier) = offered.iter().find(|m| **m == modifier) else {
                continue;
            };
            match conditions
                .iter_mut()
                .find(|c| c.field == field && c.modifier == *modifier)
            {
                Some(existing) => existing.values.push(value.clone()),
                None => conditions.push(Condition {
                    field: field.to_string(),
                    modifier,
                    values: vec![value.clone()],
                }),
            }
        }
        let limit = match query.get("limit").map(str::parse::<i64>) {
            Some(Ok(-1)) => MAX_LIMIT,
            Some(Ok(n)) if n > 0 => usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
            _ => DEFAULT_LIMIT,
        };
        Self {
            conditions,
            sort: query
                .get("sort")
                .filter(|f| filters.contains_key(f))
                .map(str::to_string),
            descending: query.get("order") == Some("desc"),
            limit,
            marker: query.get("marker").map(str::to_string),
        }
    }

    /// Whether `resource` passes every filter.
    pub fn admits(&self, schema: &Schema, resource: &Resource) -> bool {
        self.conditions.iter().all(|c| c.holds(schema, resource))
    }
}

/// Everything a collection response needs to know besides its objects.
pub struct CollectionContext<'a> {
    pub registry: &'a Registry,
    pub version: &'a Version,
    pub schema: &'a Schema,
    pub urls: &'a Urls,
    /// The request's path (no query) and query.
    pub path: &'a str,
    pub query: &'a Query,
    pub render: RenderOptions,
}

/// Whether `query` filters or sorts on `field` (any modifier; a condition the schema would not
/// take counts too).
pub fn query_involves(query: &Query, field: &str) -> bool {
    query.get("sort") == Some(field)
        || query.pairs().iter().any(|(key, _)| {
            key == field
                || key
                    .strip_prefix(field)
                    .is_some_and(|rest| rest.starts_with('_'))
        })
}

/// The collection of `items` (filtered, sorted, paged as the query asks).
pub fn collection(cx: &CollectionContext<'_>, items: Vec<Resource>) -> Value {
    collection_completed(cx, items, |_| {})
}

/// [`collection`], with `complete` given the page's objects before they are written: a type whose
/// objects have fields that cost a read (and that the query neither filters nor sorts on) fills
/// them in for the page only.
pub fn collection_completed(
    cx: &CollectionContext<'_>,
    items: Vec<Resource>,
    complete: impl FnOnce(&mut [Resource]),
) -> Value {
    let options = ListOptions::parse(cx.schema, cx.query);
    let mut items: Vec<Resource> = items
        .into_iter()
        .filter(|r| options.admits(cx.schema, r))
        .collect();
    let sort_field = options.sort.as_deref().unwrap_or("id");
    items.sort_by_cached_key(|r| (r.text(cx.schema, sort_field), r.id.clone()));
    if options.descending {
        items.reverse();
    }
    let total = items.len();
    let start = options
        .marker
        .as_ref()
        .and_then(|m| items.iter().position(|r| r.id == *m))
        .unwrap_or(0);
    let end = (start + options.limit).min(total);
    complete(&mut items[start..end]);
    let self_url = cx.urls.at(cx.path);
    let with_marker =
        |index: usize| format!("{self_url}?{}", cx.query.with("marker", &items[index].id));
    let mut pagination = Map::new();
    pagination.insert("limit".into(), options.limit.into());
    pagination.insert("total".into(), total.into());
    if end - start < total {
        pagination.insert("partial".into(), true.into());
        pagination.insert("first".into(), with_marker(0).into());
        if end < total {
            pagination.insert("next".into(), with_marker(end).into());
        }
        if start > 0 {
            let previous = start.saturating_sub(options.limit);
            pagination.insert("previous".into(), with_marker(previous).into());
        }
        let last = (total - 1) / options.limit * options.limit;
        pagination.insert("last".into(), with_marker(last).into());
    }

    let filterable = cx.schema.collection_filters();
    let mut filters = Map::new();
    for field in filterable.keys() {
        let applied: Vec<Value> = options
            .conditions
            .iter()
            .filter(|c| c.field == *field)
            .map(|c| {
                let value = match c.modifier {
                    "in" | "notin" => json!(c.values),
                    _ => json!(c.values.first()),
                };
                json!({ "modifier": c.modifier, "value": value })
            })
            .collect();
        let entry = if applied.is_empty() {
            Value::Null
        } else {
            Value::Array(applied)
        };
        filters.insert(field.to_string(), entry);
    }
    let mut sort_links = Map::new();
    for (name, field) in &cx.schema.fields {
        if matches!(field.kind, FieldType::String | FieldType::Enum)
            && filterable.contains_key(name)
        {
            sort_links.insert(name.to_string(), format!("{self_url}?sort={name}").into());
        }
    }
    let mut sort = Map::new();
    sort.insert(
        "order".into(),
        if options.descending { "desc" } else { "asc" }.into(),
    );
    sort.insert(
        "reverse".into(),
        format!(
            "{self_url}?{}",
            cx.query
                .with("order", if options.descending { "asc" } else { "desc" })
        )
        .into(),
    );
    sort.insert("links".into(), Value::Object(sort_links));
    if let Some(name) = &options.sort {
        sort.insert("name".into(), name.clone().into());
    }

    let collection_url = cx.urls.collection(cx.version, &cx.schema.plural);
    let mut create_types = Map::new();
    if cx.schema.collection_methods.contains(&POST) {
        create_types.insert(cx.schema.id.into(), collection_url.clone().into());
    }
    let actions: Map<String, Value> = cx
        .schema
        .collection_actions
        .keys()
        .map(|name| {
            (
                name.to_string(),
                format!("{collection_url}?action={name}").into(),
            )
        })
        .collect();
    let data: Vec<Value> = items[start..end]
        .iter()
        .map(|r| render(cx.registry, cx.version, cx.schema, cx.urls, r, cx.render))
        .collect();
    json!({
        "type": "collection",
        "resourceType": cx.schema.id,
        "links": { "self": self_url },
        "createTypes": create_types,
        "actions": actions,
        "pagination": pagination,
        "sort": sort,
        "filters": filters,
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::super::schema::{Field, GET, V3};
    use super::*;

    fn setup() -> (Registry, Urls) {
        let mut registry = Registry::default();
        registry.add(
            V3,
            vec![
                Schema::new("user")
                    .methods(&[GET], &[GET])
                    .field("username", Field::string())
                    .field("enabled", Field::boolean().default(true.into()))
                    .field("me", Field::boolean())
                    .collection_action("changepassword", Default::default()),
            ],
        );
        (registry, Urls::fixed("https://lab.test"))
    }

    fn users() -> Vec<Resource> {
        ["carol", "alice", "bob", "dave"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let user = Resource::new(format!("u-{name}")).with("username", *name);
                if i == 3 {
                    user.with("enabled", false)
                } else {
                    user
                }
            })
            .collect()
    }

    fn list(query: &str) -> Value {
        let (registry, urls) = setup();
        let schema = registry.lookup(&V3, "user").unwrap();
        let query = Query::parse(Some(query));
        let cx = CollectionContext {
            registry: &registry,
            version: &V3,
            schema: &schema,
            urls: &urls,
            path: "/v3/users",
            query: &query,
            render: RenderOptions::default(),
        };
        collection(&cx, users())
    }

    fn ids(collection: &Value) -> Vec<&str> {
        collection["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn filters_sort_and_ignore_what_the_schema_does_not_offer() {
        assert_eq!(ids(&list("")), ["u-alice", "u-bob", "u-carol", "u-dave"]);
        assert_eq!(ids(&list("username=bob")), ["u-bob"]);
        assert_eq!(
            ids(&list("username_ne=bob&username_ne=alice")),
            ["u-carol", "u-dave"]
        );
        assert_eq!(
            ids(&list("username_in=bob&username_in=dave")),
            ["u-bob", "u-dave"]
        );
        // A missing value compares as the default (enabled: true).
        assert_eq!(ids(&list("enabled=false")), ["u-dave"]);
        assert_eq!(ids(&list("enabled=true")).len(), 3);
        assert_eq!(
            ids(&list("enabled=False")),
            ["u-dave"],
            "booleans in any case"
        );
        // Unknown fields and modifiers are ignored.
        assert_eq!(ids(&list("nosuch=1&enabled_in=false")).len(), 4);
        assert_eq!(ids(&list("sort=username&order=desc"))[0], "u-dave");
        let filtered = list("username=bob");
        assert_eq!(
            filtered["filters"]["username"],
            json!([{"modifier": "eq", "value": "bob"}])
        );
        assert_eq!(filtered["filters"]["enabled"], Value::Null);
        assert_eq!(filtered["pagination"], json!({"limit": 1000, "total": 1}));
        assert_eq!(
            filtered["actions"]["changepassword"],
            "https://lab.test/v3/users?action=changepassword"
        );
        assert_eq!(filtered["createTypes"], json!({}));
        assert_eq!(
            filtered["sort"]["links"]["username"],
            "https://lab.test/v3/users?sort=username"
        );
    }

    #[test]
    fn a_query_involves_the_fields_it_filters_or_sorts_on() {
        let involves = |query: &str| query_involves(&Query::parse(Some(query)), "apiEndpoint");
        assert!(involves("apiEndpoint=https://a"));
        assert!(involves("limit=5&apiEndpoint_ne=x"));
        assert!(
            involves("apiEndpoint_bogus=x"),
            "counted even where the schema would ignore it"
        );
        assert!(involves("sort=apiEndpoint&order=desc"));
        assert!(!involves("apiEndpointX=1"));
        assert!(!involves("name=apiEndpoint&sort=name"));
    }

    #[test]
    fn pages_follow_markers() {
        let first = list("limit=2");
        assert_eq!(ids(&first), ["u-alice", "u-bob"]);
        let pagination = &first["pagination"];
        assert_eq!(pagination["partial"], true);
        assert_eq!(pagination["total"], 4);
        assert_eq!(
            pagination["next"],
            "https://lab.test/v3/users?limit=2&marker=u-carol"
        );
        assert!(pagination.get("previous").is_none());
        let second = list("limit=2&marker=u-carol");
        assert_eq!(ids(&second), ["u-carol", "u-dave"]);
        assert!(second["pagination"].get("next").is_none());
        assert_eq!(
            second["pagination"]["previous"],
            "https://lab.test/v3/users?limit=2&marker=u-alice"
        );
        // -1 is the most a page holds; nonsense is the default.
        assert_eq!(list("limit=-1")["pagination"]["limit"], 10_000);
        assert_eq!(list("limit=x")["pagination"]["limit"], 1000);
        assert_eq!(list("limit=99999")["pagination"]["limit"], 10_000);
    }
}
