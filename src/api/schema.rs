//! norman's schemas: a type declared once here serves discovery (`/v3/schemas`), routing (which
//! methods and actions a URL takes), collection filters and body validation.
//!
//! Field and method names are norman's on the wire (`shared/spec/norman-api.md` §1.4).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::urls::Urls;
pub use super::urls::{V3, V3_CORRAL, V3_PUBLIC, Version};

/// The HTTP methods norman takes.
pub const GET: &str = "GET";
pub const POST: &str = "POST";
pub const PUT: &str = "PUT";
pub const DELETE: &str = "DELETE";

/// A field's type, as `resourceFields.<name>.type` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    String,
    Int,
    Boolean,
    Date,
    Enum,
    Password,
    Json,
    DnsLabel,
    Hostname,
    Base64,
    /// `reference[<type>]`: the id of an object of that type.
    Reference(&'static str),
    Array(Box<FieldType>),
    Map(Box<FieldType>),
    /// Another schema, embedded.
    Object(&'static str),
}

impl FieldType {
    /// The type's name on the wire.
    pub fn wire(&self) -> String {
        match self {
            FieldType::String => "string".into(),
            FieldType::Int => "int".into(),
            FieldType::Boolean => "boolean".into(),
            FieldType::Date => "date".into(),
            FieldType::Enum => "enum".into(),
            FieldType::Password => "password".into(),
            FieldType::Json => "json".into(),
            FieldType::DnsLabel => "dnsLabel".into(),
            FieldType::Hostname => "hostname".into(),
            FieldType::Base64 => "base64".into(),
            FieldType::Reference(to) => format!("reference[{to}]"),
            FieldType::Array(of) => format!("array[{}]", of.wire()),
            FieldType::Map(of) => format!("map[{}]", of.wire()),
            FieldType::Object(id) => (*id).to_string(),
        }
    }

    /// The modifiers a collection filter on a field of this type takes, if it is filterable.
    pub fn filter_modifiers(&self) -> Option<&'static [&'static str]> {
        const ORDERED: &[&str] = &["eq", "ne", "in", "notin"];
        match self {
            FieldType::String
            | FieldType::Date
            | FieldType::DnsLabel
            | FieldType::Hostname
            | FieldType::Int
            | FieldType::Enum
            | FieldType::Reference(_) => Some(ORDERED),
            FieldType::Boolean => Some(&["eq", "ne"]),
            _ => None,
        }
    }
}

/// One entry of `resourceFields`.
#[derive(Debug, Clone)]
pub struct Field {
    pub kind: FieldType,
    pub create: bool,
    pub update: bool,
    pub nullable: bool,
    pub required: bool,
    pub default: Option<Value>,
    pub options: &'static [&'static str],
    /// Output only in the response to the POST that created the object (`token.token`).
    pub write_only: bool,
    pub max_length: Option<u64>,
    pub description: Option<&'static str>,
}

impl Field {
    pub fn of(kind: FieldType) -> Self {
        Self {
            kind,
            create: false,
            update: false,
            nullable: false,
            required: false,
            default: None,
            options: &[],
            write_only: false,
            max_length: None,
            description: None,
        }
    }
    pub fn string() -> Self {
        Self::of(FieldType::String)
    }
    pub fn int() -> Self {
        Self::of(FieldType::Int)
    }
    pub fn boolean() -> Self {
        Self::of(FieldType::Boolean)
    }
    pub fn date() -> Self {
        Self::of(FieldType::Date)
    }
    pub fn password() -> Self {
        Self::of(FieldType::Password)
    }
    pub fn json() -> Self {
        Self::of(FieldType::Json)
    }
    pub fn reference(to: &'static str) -> Self {
        Self::of(FieldType::Reference(to))
    }
    pub fn strings() -> Self {
        Self::of(FieldType::Array(Box::new(FieldType::String)))
    }
    /// An array of references to objects of type `to`.
    pub fn references(to: &'static str) -> Self {
        Self::of(FieldType::Array(Box::new(FieldType::Reference(to))))
    }
    /// An array of objects of schema `id` (`policyRule`).
    pub fn objects(id: &'static str) -> Self {
        Self::of(FieldType::Array(Box::new(FieldType::Object(id))))
    }
    pub fn string_map() -> Self {
        Self::of(FieldType::Map(Box::new(FieldType::String)))
    }
    pub fn one_of(options: &'static [&'static str]) -> Self {
        Self {
            options,
            ..Self::of(FieldType::Enum)
        }
    }
    pub fn object(id: &'static str) -> Self {
        Self::of(FieldType::Object(id))
    }
    /// Settable on create.
    pub fn create(self) -> Self {
        Self {
            create: true,
            ..self
        }
    }
    /// Settable on create and update.
    pub fn writable(self) -> Self {
        Self {
            create: true,
            update: true,
            ..self
        }
    }
    pub fn required(self) -> Self {
        Self {
            required: true,
            ..self
        }
    }
    pub fn nullable(self) -> Self {
        Self {
            nullable: true,
            ..self
        }
    }
    pub fn default(self, value: Value) -> Self {
        Self {
            default: Some(value),
            ..self
        }
    }
    pub fn write_only(self) -> Self {
        Self {
            write_only: true,
            ..self
        }
    }
    pub fn max_length(self, max: u64) -> Self {
        Self {
            max_length: Some(max),
            ..self
        }
    }
    pub fn describe(self, text: &'static str) -> Self {
        Self {
            description: Some(text),
            ..self
        }
    }

    fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("type".into(), self.kind.wire().into());
        out.insert("create".into(), self.create.into());
        out.insert("update".into(), self.update.into());
        if self.nullable {
            out.insert("nullable".into(), true.into());
        }
        if self.required {
            out.insert("required".into(), true.into());
        }
        if let Some(default) = &self.default {
            out.insert("default".into(), default.clone());
        }
        if !self.options.is_empty() {
            out.insert("options".into(), self.options.into());
        }
        if self.write_only {
            out.insert("writeOnly".into(), true.into());
        }
        if let Some(max) = self.max_length {
            out.insert("maxLength".into(), max.into());
        }
        if let Some(text) = self.description {
            out.insert("description".into(), text.into());
        }
        Value::Object(out)
    }
}

/// An action's input and output schemas.
#[derive(Debug, Clone, Default)]
pub struct Action {
    pub input: Option<&'static str>,
    pub output: Option<&'static str>,
}

/// A type as norman publishes it.
#[derive(Debug, Clone)]
pub struct Schema {
    pub id: &'static str,
    /// camelCase, as declared (`clusterRegistrationTokens`).
    pub plural: String,
    pub base_type: &'static str,
    pub collection_methods: Vec<&'static str>,
    pub resource_methods: Vec<&'static str>,
    pub fields: BTreeMap<&'static str, Field>,
    pub resource_actions: BTreeMap<&'static str, Action>,
    pub collection_actions: BTreeMap<&'static str, Action>,
}

impl Schema {
    /// A type with no methods and no fields yet.
    pub fn new(id: &'static str) -> Self {
        Self {
            id,
            plural: plural_of(id),
            base_type: id,
            collection_methods: Vec::new(),
            resource_methods: Vec::new(),
            fields: BTreeMap::new(),
            resource_actions: BTreeMap::new(),
            collection_actions: BTreeMap::new(),
        }
    }

    pub fn plural(self, plural: &str) -> Self {
        Self {
            plural: plural.to_string(),
            ..self
        }
    }

    pub fn base_type(self, base_type: &'static str) -> Self {
        Self { base_type, ..self }
    }

    /// `collectionMethods` and `resourceMethods`.
    pub fn methods(self, collection: &[&'static str], resource: &[&'static str]) -> Self {
        Self {
            collection_methods: collection.to_vec(),
            resource_methods: resource.to_vec(),
            ..self
        }
    }

    pub fn field(mut self, name: &'static str, field: Field) -> Self {
        self.fields.insert(name, field);
        self
    }

    pub fn resource_action(mut self, name: &'static str, action: Action) -> Self {
        self.resource_actions.insert(name, action);
        self
    }

    pub fn collection_action(mut self, name: &'static str, action: Action) -> Self {
        self.collection_actions.insert(name, action);
        self
    }

    /// What every object kept as a Kubernetes resource carries (norman's metadata mapping).
    pub fn object_meta(self) -> Self {
        self.field("created", Field::date())
            .field("creatorId", Field::reference("user").nullable())
            .field("uuid", Field::string())
            .field("labels", Field::string_map().writable().nullable())
            .field("annotations", Field::string_map().writable().nullable())
            .field("removed", Field::date())
    }

    /// `state`, `transitioning` and `transitioningMessage`, on types with a spec and a status.
    pub fn status_summary(self) -> Self {
        self.field("state", Field::string())
            .field("transitioning", Field::one_of(&["yes", "no", "error"]))
            .field("transitioningMessage", Field::string())
    }

    pub fn lists(&self) -> bool {
        self.collection_methods.contains(&GET)
    }

    /// `collectionFilters`: every filterable field, when the collection can be listed.
    pub fn collection_filters(&self) -> BTreeMap<&'static str, &'static [&'static str]> {
        if !self.lists() {
            return BTreeMap::new();
        }
        self.fields
            .iter()
            .filter_map(|(name, field)| Some((*name, field.kind.filter_modifiers()?)))
            .chain(FieldType::String.filter_modifiers().map(|m| ("id", m)))
            .collect()
    }

    /// The schema object `/v3/schemas` lists.
    pub fn to_json(&self, version: &Version, urls: &Urls) -> Value {
        let mut links = Map::new();
        links.insert("self".into(), urls.schema(version, self.id).into());
        if self.lists() {
            links.insert(
                "collection".into(),
                urls.collection(version, &self.plural).into(),
            );
        }
        let fields: Map<String, Value> = self
            .fields
            .iter()
            .map(|(name, field)| ((*name).to_string(), field.to_json()))
            .collect();
        let actions = |actions: &BTreeMap<&'static str, Action>| -> Map<String, Value> {
            actions
                .iter()
                .map(|(name, action)| {
                    let mut out = Map::new();
                    if let Some(input) = action.input {
                        out.insert("input".into(), input.into());
                    }
                    if let Some(output) = action.output {
                        out.insert("output".into(), output.into());
                    }
                    ((*name).to_string(), Value::Object(out))
                })
                .collect()
        };
        let filters: Map<String, Value> = self
            .collection_filters()
            .into_iter()
            .map(|(name, modifiers)| (name.to_string(), json!({ "modifiers": modifiers })))
            .collect();
        json!({
            "id": self.id,
            "type": "schema",
            "baseType": self.base_type,
            "pluralName": self.plural,
            "version": version.to_json(),
            "links": links,
            "collectionMethods": self.collection_methods,
            "resourceMethods": self.resource_methods,
            "resourceFields": fields,
            "resourceActions": actions(&self.resource_actions),
            "collectionActions": actions(&self.collection_actions),
            "collectionFilters": filters,
        })
    }
}

/// norman's default plural: `-s`, `-es` after `s`, `-ies` for a consonant and `y`.
fn plural_of(id: &str) -> String {
    if let Some(stem) = id.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        return format!("{stem}ies");
    }
    if id.ends_with('s') {
        return format!("{id}es");
    }
    format!("{id}s")
}

/// The schemas of every version, and the lookup that routes a path segment to one.
#[derive(Debug, Default)]
pub struct Registry {
    versions: Vec<(Version, Vec<Arc<Schema>>)>,
}

impl Registry {
    /// A version's schemas; norman's `apiRoot` and `schema` types are added to each.
    pub fn add(&mut self, version: Version, schemas: Vec<Schema>) {
        let meta = [
            Schema::new("apiRoot")
                .methods(&[GET], &[GET])
                .field("apiVersion", Field::json())
                .field("links", Field::string_map()),
            Schema::new("schema")
                .methods(&[GET], &[GET])
                .field("pluralName", Field::string())
                .field("resourceFields", Field::json()),
        ];
        let schemas = schemas.into_iter().chain(meta).map(Arc::new).collect();
        self.versions.push((version, schemas));
    }

    pub fn versions(&self) -> impl Iterator<Item = &Version> {
        self.versions.iter().map(|(v, _)| v)
    }

    /// The version whose path is `path` (`/v3`).
    pub fn version(&self, path: &str) -> Option<Version> {
        self.versions().find(|v| v.path == path).copied()
    }

    pub fn schemas(&self, version: &Version) -> &[Arc<Schema>] {
        self.versions
            .iter()
            .find(|(v, _)| v == version)
            .map_or(&[], |(_, schemas)| schemas.as_slice())
    }

    /// The type a path segment names: the exact id first, then any id or plural, case-insensitive.
    pub fn lookup(&self, version: &Version, name: &str) -> Option<Arc<Schema>> {
        let schemas = self.schemas(version);
        schemas
            .iter()
            .find(|s| s.id == name)
            .or_else(|| {
                schemas.iter().find(|s| {
                    s.id.eq_ignore_ascii_case(name) || s.plural.eq_ignore_ascii_case(name)
                })
            })
            .cloned()
    }

    /// Schemas of `version` with a field referring to `id`, that can be listed: the back-reference
    /// links an object of type `id` carries (`clusterRegistrationTokens?clusterId=c-x`).
    pub fn referring_to(&self, version: &Version, id: &str) -> Vec<(Arc<Schema>, &'static str)> {
        self.schemas(version)
            .iter()
            .filter(|s| s.lists())
            .flat_map(|s| {
                s.fields
                    .iter()
                    .filter(move |(_, f)| matches!(f.kind, FieldType::Reference(to) if to == id))
                    .map(move |(name, _)| (s.clone(), *name))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let mut registry = Registry::default();
        registry.add(
            V3,
            vec![
                Schema::new("cluster")
                    .methods(&[GET, POST], &[GET, PUT, DELETE])
                    .field("name", Field::string().writable()),
                Schema::new("clusterRegistrationToken")
                    .methods(&[GET, POST], &[GET])
                    .field("clusterId", Field::reference("cluster").create().required())
                    .field("enabled", Field::boolean()),
                Schema::new("policy"),
            ],
        );
        registry
    }

    #[test]
    fn types_are_found_by_id_or_plural_whatever_the_case() {
        let registry = registry();
        for name in [
            "clusterRegistrationToken",
            "clusterregistrationtokens",
            "ClusterRegistrationTokens",
            "clusterRegistrationTokens",
        ] {
            assert_eq!(
                registry.lookup(&V3, name).map(|s| s.id),
                Some("clusterRegistrationToken"),
                "{name}"
            );
        }
        assert_eq!(registry.lookup(&V3, "schemas").unwrap().id, "schema");
        assert_eq!(registry.lookup(&V3, "policies").unwrap().id, "policy");
        assert!(registry.lookup(&V3, "nosuch").is_none());
        assert!(registry.lookup(&V3_PUBLIC, "cluster").is_none());
    }

    #[test]
    fn a_schema_publishes_its_fields_filters_and_collection_link() {
        let registry = registry();
        let urls = Urls::fixed("https://lab.test");
        let token = registry.lookup(&V3, "clusterRegistrationToken").unwrap();
        let json = token.to_json(&V3, &urls);
        assert_eq!(json["type"], "schema");
        assert_eq!(json["pluralName"], "clusterRegistrationTokens");
        assert_eq!(
            json["links"]["collection"],
            "https://lab.test/v3/clusterregistrationtokens"
        );
        assert_eq!(
            json["resourceFields"]["clusterId"],
            json!({"type": "reference[cluster]", "create": true, "update": false, "required": true})
        );
        assert_eq!(
            json["collectionFilters"]["enabled"]["modifiers"],
            json!(["eq", "ne"])
        );
        assert_eq!(
            json["collectionFilters"]["clusterId"]["modifiers"],
            json!(["eq", "ne", "in", "notin"])
        );
        let policy = registry.lookup(&V3, "policy").unwrap().to_json(&V3, &urls);
        assert!(policy["links"].get("collection").is_none());
        assert_eq!(policy["collectionFilters"], json!({}));
        let back = registry.referring_to(&V3, "cluster");
        assert_eq!(back.len(), 1);
        assert_eq!(
            (back[0].0.id, back[0].1),
            ("clusterRegistrationToken", "clusterId")
        );
    }
}
