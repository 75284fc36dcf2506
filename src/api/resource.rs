//! One object as norman writes it (`shared/spec/norman-api.md` §3.1): `id`, `type`, `baseType`,
//! `links` (self, update and remove as the type's methods allow, back-references from the types
//! that refer to it), `actions`, then the schema's fields — only those, never a password, a
//! write-only field only in the response that created the object — with `<date>TS` beside dates.

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::schema::{DELETE, FieldType, PUT, Registry, Schema, Version};
use super::urls::Urls;

/// An object a handler produced: its id and fields (API names), and what it leaves out.
#[derive(Debug, Clone, Default)]
pub struct Resource {
    pub id: String,
    pub fields: Map<String, Value>,
    /// The object's own type when it is not the collection's (`githubConfig` in `authConfigs`).
    pub type_name: Option<&'static str>,
    /// Links left out for this object (`update` on a read-only setting).
    pub without_links: Vec<&'static str>,
    /// The resource actions this object offers; `None`: all of its schema's.
    pub actions: Option<Vec<&'static str>>,
    /// Written as its fields are, with no links or actions added (schemas, API roots).
    pub raw: bool,
}

impl Resource {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            ..Self::default()
        }
    }

    /// Sets a field (builder style).
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(name.to_string(), value.into());
        self
    }

    pub fn without_link(mut self, link: &'static str) -> Self {
        self.without_links.push(link);
        self
    }

    pub fn only_actions(mut self, actions: Vec<&'static str>) -> Self {
        self.actions = Some(actions);
        self
    }

    /// The value of a field as collection filters compare it: by its string form, a missing or
    /// null value as the field's default.
    pub fn text(&self, schema: &Schema, field: &str) -> String {
        if field == "id" {
            return self.id.clone();
        }
        let value = self
            .fields
            .get(field)
            .filter(|v| !v.is_null())
            .or_else(|| schema.fields.get(field)?.default.as_ref());
        match value {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }
}

/// How an object is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderOptions {
    /// The response to the POST that created it: write-only fields are shown.
    pub created: bool,
    /// `X-API-Action-Links` was sent: the action map is named `actionLinks`.
    pub action_links: bool,
}

/// A date as norman writes it: RFC 3339, UTC, whole seconds.
pub fn date(unix: i64) -> Value {
    crate::support::rfc3339(unix).map_or(Value::Null, Value::String)
}

/// Milliseconds since the epoch of a date written by [`date`].
fn date_millis(value: &Value) -> Option<i64> {
    let parsed = OffsetDateTime::parse(value.as_str()?, &Rfc3339).ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
}

/// `resource` of `schema` in `version`, written out.
pub fn render(
    registry: &Registry,
    version: &Version,
    schema: &Schema,
    urls: &Urls,
    resource: &Resource,
    options: RenderOptions,
) -> Value {
    let own_type = resource.type_name.unwrap_or(schema.id);
    if resource.raw {
        let mut out = Map::new();
        out.insert("id".into(), resource.id.clone().into());
        out.insert("type".into(), own_type.into());
        out.insert("baseType".into(), schema.base_type.into());
        out.extend(resource.fields.clone());
        return Value::Object(out);
    }
    let self_url = urls.resource(version, &schema.plural, &resource.id);
    let mut links = Map::new();
    links.insert("self".into(), self_url.clone().into());
    if schema.resource_methods.contains(&PUT) {
        links.insert("update".into(), self_url.clone().into());
    }
    if schema.resource_methods.contains(&DELETE) {
        links.insert("remove".into(), self_url.clone().into());
    }
    for (other, field) in registry.referring_to(version, schema.id) {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair(field, &resource.id)
            .finish();
        let url = urls.at(&format!("{}/{}?{query}", version.path, other.plural));
        links.insert(other.plural.clone(), url.into());
    }
    for link in &resource.without_links {
        links.remove(*link);
    }
    let actions: Map<String, Value> = schema
        .resource_actions
        .keys()
        .filter(|name| resource.actions.as_ref().is_none_or(|a| a.contains(name)))
        .map(|name| (name.to_string(), format!("{self_url}?action={name}").into()))
        .collect();

    let mut out = Map::new();
    out.insert("id".into(), resource.id.clone().into());
    out.insert("type".into(), own_type.into());
    out.insert("baseType".into(), schema.base_type.into());
    if !links.is_empty() {
        out.insert("links".into(), Value::Object(links));
    }
    if !actions.is_empty() {
        let key = if options.action_links {
            "actionLinks"
        } else {
            "actions"
        };
        out.insert(key.into(), Value::Object(actions));
    }
    for (name, value) in &resource.fields {
        let Some(field) = schema.fields.get(name.as_str()) else {
            continue;
        };
        if field.kind == FieldType::Password || (field.write_only && !options.created) {
            continue;
        }
        if field.kind == FieldType::Date
            && let Some(millis) = date_millis(value)
        {
            out.insert(format!("{name}TS"), millis.into());
        }
        out.insert(name.clone(), value.clone());
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::super::schema::{Field, GET, POST, V3};
    use super::*;
    use serde_json::json;

    fn registry() -> Registry {
        let mut registry = Registry::default();
        registry.add(
            V3,
            vec![
                Schema::new("user")
                    .methods(&[GET, POST], &[GET, PUT, DELETE])
                    .field("username", Field::string())
                    .field("password", Field::password().create())
                    .field("created", Field::date())
                    .resource_action("setpassword", Default::default()),
                Schema::new("token")
                    .methods(&[GET, POST], &[GET, DELETE])
                    .field("userId", Field::reference("user"))
                    .field("token", Field::string().write_only()),
            ],
        );
        registry
    }

    #[test]
    fn an_object_has_its_links_actions_and_only_its_schemas_fields() {
        let registry = registry();
        let user = registry.lookup(&V3, "user").unwrap();
        let resource = Resource::new("u-abcde")
            .with("username", "alice")
            .with("password", "secret")
            .with("created", date(1_743_501_600))
            .with("notInSchema", 1);
        let urls = Urls::fixed("https://lab.test");
        let out = render(
            &registry,
            &V3,
            &user,
            &urls,
            &resource,
            RenderOptions::default(),
        );
        assert_eq!(
            out,
            json!({
                "id": "u-abcde", "type": "user", "baseType": "user",
                "links": {
                    "self": "https://lab.test/v3/users/u-abcde",
                    "update": "https://lab.test/v3/users/u-abcde",
                    "remove": "https://lab.test/v3/users/u-abcde",
                    "tokens": "https://lab.test/v3/tokens?userId=u-abcde",
                },
                "actions": {"setpassword": "https://lab.test/v3/users/u-abcde?action=setpassword"},
                "username": "alice",
                "created": "2025-04-01T10:00:00Z", "createdTS": 1_743_501_600_000i64,
            })
        );
        let bare = resource.without_link("remove").only_actions(vec![]);
        let out = render(
            &registry,
            &V3,
            &user,
            &urls,
            &bare,
            RenderOptions::default(),
        );
        assert!(out["links"].get("remove").is_none());
        assert!(out.get("actions").is_none());
    }

    #[test]
    fn write_only_fields_show_only_on_create() {
        let registry = registry();
        let token = registry.lookup(&V3, "token").unwrap();
        let urls = Urls::fixed("https://lab.test");
        let resource = Resource::new("token-x").with("token", "token-x:secret");
        let listed = render(
            &registry,
            &V3,
            &token,
            &urls,
            &resource,
            RenderOptions::default(),
        );
        assert!(listed.get("token").is_none());
        let created = RenderOptions {
            created: true,
            ..Default::default()
        };
        let out = render(&registry, &V3, &token, &urls, &resource, created);
        assert_eq!(out["token"], "token-x:secret");
    }
}
