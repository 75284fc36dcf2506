//! Request bodies (`shared/spec/norman-api.md` §2.6): JSON whatever the Content-Type, and for a
//! create or an update only the fields the schema lets it set, checked against their types, with
//! defaults applied and required fields demanded on create.

use serde_json::{Map, Value};

use super::error::ApiError;
use super::schema::{Field, FieldType, Schema};

/// What a body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
}

/// A string field of a body, as handlers read one: absent or not a string, it is empty.
pub fn text<'a>(input: &'a Map<String, Value>, name: &str) -> &'a str {
    input.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// A body as a JSON object; an empty body is `{}`. Anything else is norman's 422.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::invalid_body(format!(
            "Failed to parse body: expected a JSON object, got {}",
            kind_of(&other)
        ))),
        Err(e) => Err(ApiError::invalid_body(format!("Failed to parse body: {e}"))),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The fields of `body` that `op` may set on `schema`, checked; on create, with defaults and the
/// required fields present. Fields it may not set are dropped without a word, as norman does.
pub fn admit(
    schema: &Schema,
    op: Op,
    body: Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for (name, value) in body {
        let Some(field) = schema.fields.get(name.as_str()) else {
            continue;
        };
        let settable = match op {
            Op::Create => field.create,
            Op::Update => field.update,
        };
        if !settable {
            continue;
        }
        if value.is_null() {
            // null clears a nullable field; on another it is refused if required, else unset.
            if field.nullable {
                out.insert(name, value);
            } else if field.required {
                return Err(ApiError::field("NotNullable", &name));
            }
            continue;
        }
        check(field, &name, &value)?;
        out.insert(name, value);
    }
    if op == Op::Create {
        for (name, field) in &schema.fields {
            if !field.create || out.contains_key(*name) {
                continue;
            }
            if let Some(default) = &field.default {
                out.insert((*name).to_string(), default.clone());
            } else if field.required {
                return Err(ApiError::missing_required(name));
            }
        }
    }
    Ok(out)
}

/// A value against its field's type, options and length.
fn check(field: &Field, name: &str, value: &Value) -> Result<(), ApiError> {
    let format = || ApiError::field("InvalidFormat", name);
    let fits = match &field.kind {
        FieldType::String
        | FieldType::Password
        | FieldType::Hostname
        | FieldType::Base64
        | FieldType::Date
        | FieldType::Reference(_) => value.is_string(),
        FieldType::Enum => value.is_string(),
        FieldType::DnsLabel => value.as_str().is_some_and(is_dns_label),
        FieldType::Int => value.is_i64() || value.is_u64(),
        FieldType::Boolean => value.is_boolean(),
        FieldType::Json | FieldType::Object(_) => true,
        FieldType::Array(of) => value
            .as_array()
            .is_some_and(|items| items.iter().all(|v| simple_fits(of, v))),
        FieldType::Map(of) => value
            .as_object()
            .is_some_and(|items| items.values().all(|v| simple_fits(of, v))),
    };
    if !fits {
        if let (FieldType::DnsLabel, Some(text)) = (&field.kind, value.as_str()) {
            return Err(ApiError {
                message: format!("invalid value {text}: {DNS_LABEL_RULE}"),
                ..format()
            });
        }
        return Err(format());
    }
    if !field.options.is_empty() && !value.as_str().is_some_and(|v| field.options.contains(&v)) {
        return Err(ApiError::field("InvalidOption", name));
    }
    if let (Some(max), Some(text)) = (field.max_length, value.as_str())
        && text.chars().count() as u64 > max
    {
        return Err(ApiError::field("MaxLengthExceeded", name));
    }
    Ok(())
}

/// An element of an array or map field.
fn simple_fits(kind: &FieldType, value: &Value) -> bool {
    match kind {
        FieldType::Int => value.is_i64() || value.is_u64(),
        FieldType::Boolean => value.is_boolean(),
        FieldType::Json | FieldType::Object(_) => true,
        _ => value.is_string(),
    }
}

/// Kubernetes' words for a name that is not an RFC 1123 label.
const DNS_LABEL_RULE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// RFC 1123 label: lowercase alphanumerics and `-`, starting and ending alphanumeric, ≤ 63.
pub fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Kubernetes' words for a name that is not an RFC 1123 subdomain (the rule for object names).
const DNS_SUBDOMAIN_RULE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// RFC 1123 subdomain, as Kubernetes checks an object's name: labels joined by `.`, ≤ 253.
pub fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// The error for an object name Kubernetes would refuse (`field` says which field carried it).
pub fn invalid_object_name(field: &str, text: &str) -> ApiError {
    ApiError {
        message: format!("invalid value {text}: {DNS_SUBDOMAIN_RULE}"),
        ..ApiError::field("InvalidFormat", field)
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::{GET, POST};
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::new("setting")
            .methods(&[GET, POST], &[GET])
            .field("name", Field::string().create().required())
            .field("value", Field::string().writable().required())
            .field("default", Field::string())
            .field(
                "kind",
                Field::one_of(&["a", "b"]).create().default("a".into()),
            )
            .field("labels", Field::string_map().writable())
    }

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn creates_take_settable_fields_defaults_and_demand_required_ones() {
        let schema = schema();
        let admitted = admit(
            &schema,
            Op::Create,
            object(json!({"name": "x", "value": "1", "default": "dropped", "junk": 1})),
        )
        .unwrap();
        assert_eq!(
            Value::Object(admitted),
            json!({"name": "x", "value": "1", "kind": "a"})
        );
        let missing = admit(&schema, Op::Create, object(json!({"name": "x"}))).unwrap_err();
        assert_eq!(
            (missing.code.as_ref(), missing.field_name.as_deref()),
            ("MissingRequired", Some("value"))
        );
        // An update sets only updatable fields and demands nothing.
        let update = admit(
            &schema,
            Op::Update,
            object(json!({"name": "y", "value": "2"})),
        )
        .unwrap();
        assert_eq!(Value::Object(update), json!({"value": "2"}));
    }

    #[test]
    fn values_are_checked_against_their_fields() {
        let schema = schema();
        let refused = |body: Value| {
            let e = admit(&schema, Op::Update, object(body)).unwrap_err();
            (e.code.into_owned(), e.field_name.unwrap())
        };
        assert_eq!(
            refused(json!({"value": 5})),
            ("InvalidFormat".into(), "value".into())
        );
        assert_eq!(
            refused(json!({"labels": {"a": 1}})),
            ("InvalidFormat".into(), "labels".into())
        );
        let e = admit(
            &schema,
            Op::Create,
            object(json!({"name": "x", "value": "v", "kind": "z"})),
        )
        .unwrap_err();
        assert_eq!(e.code, "InvalidOption");
    }

    #[test]
    fn bodies_are_json_objects_or_nothing() {
        assert!(parse_object(b"").unwrap().is_empty());
        assert!(parse_object(b" \n").unwrap().is_empty());
        let bad = parse_object(b"{nope").unwrap_err();
        assert_eq!(bad.code, "InvalidBodyContent");
        assert!(
            bad.message.starts_with("Failed to parse body: "),
            "{}",
            bad.message
        );
        assert_eq!(parse_object(b"[1]").unwrap_err().status.as_u16(), 422);
        assert!(is_dns_label("my-cluster-1"));
        assert!(is_dns_subdomain("ui-pl") && is_dns_subdomain("a.b-c.d"));
        assert!(!is_dns_subdomain("a/b") && !is_dns_subdomain("A") && !is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
        assert!(!is_dns_label("My_Cluster") && !is_dns_label("-x") && !is_dns_label(""));
    }
}
