//! What a norman request says: its path (`/<version>/<type>[/<id>[/<link>]]`), its method and its
//! query (`shared/spec/norman-api.md` §2.1, §2.2).

use axum::http::Method;
use percent_encoding::percent_decode_str;

use super::error::ApiError;
use super::urls::Version;

/// A norman path split into its parts; segments percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath {
    pub version: Version,
    pub type_name: Option<String>,
    pub id: Option<String>,
    pub link: Option<String>,
}

impl ApiPath {
    /// `path` under one of `versions`; `None` when it is under none of them. Repeated slashes are
    /// one, a trailing slash is nothing; a segment that does not decode to UTF-8 is refused.
    pub fn parse<'v>(
        path: &str,
        versions: impl IntoIterator<Item = &'v Version>,
    ) -> Option<Result<Self, ApiError>> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        // The version whose path's segments begin the path's, the longest such (`/v3/corral`
        // before `/v3`).
        let version = *versions
            .into_iter()
            .filter(|v| {
                let own: Vec<&str> = v.path.split('/').filter(|s| !s.is_empty()).collect();
                segments.starts_with(&own)
            })
            .max_by_key(|v| v.path.len())?;
        let skip = version.path.split('/').filter(|s| !s.is_empty()).count();
        let mut decoded = Vec::new();
        for raw in segments.iter().skip(skip) {
            match percent_decode_str(raw).decode_utf8() {
                Ok(segment) => decoded.push(segment.into_owned()),
                Err(_) => {
                    return Some(Err(ApiError::not_found(format!(
                        "invalid path segment {raw}"
                    ))));
                }
            }
        }
        if decoded.len() > 3 {
            return Some(Err(ApiError::not_found("Link not found")));
        }
        let mut parts = decoded.into_iter();
        Some(Ok(Self {
            version,
            type_name: parts.next(),
            id: parts.next(),
            link: parts.next(),
        }))
    }
}

/// The query string's pairs, in order, decoded.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        let pairs = query
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Self { pairs }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// `?action=`, which norman reads on POST only.
    pub fn action(&self) -> Option<&str> {
        self.get("action").filter(|a| !a.is_empty())
    }

    /// The query with `key` set to `value` (once), the rest kept in order.
    pub fn with(&self, key: &str, value: &str) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.pairs.iter().filter(|(k, _)| k != key) {
            out.append_pair(k, v);
        }
        out.append_pair(key, value);
        out.finish()
    }
}

/// The method a request stands for: `?_method=` if given, else the HTTP method; `?action=remove`
/// is a DELETE. Only GET, POST, PUT and DELETE are taken: anything else is norman's 405.
pub fn effective_method(method: &Method, query: &Query) -> Result<&'static str, ApiError> {
    if query.action() == Some("remove") && *method == Method::POST {
        return Ok(super::schema::DELETE);
    }
    let named = query
        .get("_method")
        .map(str::to_ascii_uppercase)
        .unwrap_or_else(|| method.as_str().to_string());
    match named.as_str() {
        "GET" => Ok(super::schema::GET),
        "POST" => Ok(super::schema::POST),
        "PUT" => Ok(super::schema::PUT),
        "DELETE" => Ok(super::schema::DELETE),
        other => Err(ApiError::method_not_allowed(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::urls::{V3, V3_CORRAL, V3_PUBLIC};
    use super::*;

    #[test]
    fn paths_split_into_version_type_id_and_link() {
        let versions = [V3, V3_PUBLIC];
        let parse = |p: &str| ApiPath::parse(p, &versions).map(|r| r.unwrap());
        let path = parse("//v3//clusters/c-abc%3Axyz/").unwrap();
        assert_eq!(path.version, V3);
        assert_eq!(path.type_name.as_deref(), Some("clusters"));
        assert_eq!(path.id.as_deref(), Some("c-abc:xyz"));
        assert_eq!(path.link, None);
        assert_eq!(parse("/v3").unwrap().type_name, None);
        assert_eq!(
            parse("/v3-public/authProviders").unwrap().version,
            V3_PUBLIC
        );
        assert!(parse("/v1/x").is_none());
        let corral = [V3, V3_CORRAL];
        let lab = ApiPath::parse("/v3/corral/faults/fault-x", &corral);
        let lab = lab.unwrap().unwrap();
        assert_eq!(lab.version, V3_CORRAL);
        assert_eq!(lab.type_name.as_deref(), Some("faults"));
        assert_eq!(lab.id.as_deref(), Some("fault-x"));
        let rancher = ApiPath::parse("/v3/corralx/y", &corral).unwrap().unwrap();
        assert_eq!(rancher.version, V3);
        assert!(parse("/").is_none());
        assert!(ApiPath::parse("/v3/a/b/c/d", &versions).unwrap().is_err());
        assert!(ApiPath::parse("/v3/%FF", &versions).unwrap().is_err());
    }

    #[test]
    fn the_method_may_be_overridden_and_only_four_are_taken() {
        let q = |s: &str| Query::parse(Some(s));
        assert_eq!(effective_method(&Method::GET, &q("")).unwrap(), "GET");
        assert_eq!(
            effective_method(&Method::POST, &q("_method=put")).unwrap(),
            "PUT"
        );
        assert_eq!(
            effective_method(&Method::POST, &q("action=remove")).unwrap(),
            "DELETE"
        );
        let refused = effective_method(&Method::PATCH, &q("")).unwrap_err();
        assert_eq!(refused.code, "MethodNotAllow");
        assert_eq!(refused.message, "Method PATCH not supported");
    }

    #[test]
    fn a_query_keeps_its_order_when_a_key_is_set() {
        let query = Query::parse(Some("limit=2&name=a%20b&marker=x"));
        assert_eq!(query.get("name"), Some("a b"));
        assert_eq!(query.with("marker", "c-2"), "limit=2&name=a+b&marker=c-2");
    }
}
