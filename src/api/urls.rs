//! The absolute URLs a norman response is written with: the API versions, and the base the request
//! reached (from its forwarding headers, `shared/spec/norman-api.md` §1.1).

use axum::http::{HeaderMap, header};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::{Value, json};

/// One API version: `/v3`, `/v3-public` or `/v3/corral`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// `apiVersion.version`: `v3`, `v3public`.
    pub name: &'static str,
    /// `/v3`, `/v3-public`.
    pub path: &'static str,
    pub group: &'static str,
}

pub const V3: Version = Version {
    name: "v3",
    path: "/v3",
    group: "management.cattle.io",
};
pub const V3_PUBLIC: Version = Version {
    name: "v3public",
    path: "/v3-public",
    group: "management.cattle.io",
};

/// corral's own types (lab faults), beside Rancher's under `/v3`: norman-shaped like the rest,
/// under a path no Rancher type can take (`corral` is no type of Rancher's).
pub const V3_CORRAL: Version = Version {
    name: "corral",
    path: "/v3/corral",
    group: "lab.corral.dev",
};

impl Version {
    pub fn to_json(&self) -> Value {
        json!({ "group": self.group, "version": self.name, "path": self.path })
    }
}

/// Bytes escaped in an id placed in a path (a principal's `local://u-x` keeps its `:`).
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Builds the absolute URLs of a response: `scheme://host[prefix]` then the path.
#[derive(Debug, Clone)]
pub struct Urls {
    base: String,
}

impl Urls {
    /// From the request: host from `X-API-Host`, the first `X-Forwarded-Host`, then `Host`; scheme
    /// from `X-Forwarded-Proto` (`ws`/`wss` read as `http`/`https`), then how it arrived;
    /// `X-API-URL-Prefix` before the path.
    pub fn from_request(headers: &HeaderMap, secure: bool) -> Self {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let forwarded = text("x-forwarded-host").and_then(|v| v.split(',').next());
        let host = [text("x-api-host"), forwarded, text(header::HOST.as_str())]
            .into_iter()
            .flatten()
            .map(str::trim)
            .find(|h| valid_authority(h))
            .unwrap_or("localhost");
        let scheme = match text("x-forwarded-proto").map(str::to_ascii_lowercase) {
            Some(p) if p == "https" || p == "wss" => "https",
            Some(p) if p == "http" || p == "ws" => "http",
            _ if secure => "https",
            _ => "http",
        };
        let prefix = text("x-api-url-prefix")
            .filter(|p| p.starts_with('/') && valid_path(p))
            .unwrap_or("")
            .trim_end_matches('/');
        Self {
            base: format!("{scheme}://{host}{prefix}"),
        }
    }

    /// A fixed base, for tests.
    pub fn fixed(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `path` (starting with `/`) under the base.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn version(&self, version: &Version) -> String {
        self.at(version.path)
    }

    pub fn schemas(&self, version: &Version) -> String {
        self.at(&format!("{}/schemas", version.path))
    }

    pub fn schema(&self, version: &Version, id: &str) -> String {
        self.at(&format!("{}/schemas/{id}", version.path))
    }

    /// A type's collection, by the type's plural: lowercased, as norman links collections.
    pub fn collection(&self, version: &Version, plural: &str) -> String {
        self.at(&format!("{}/{}", version.path, plural.to_ascii_lowercase()))
    }

    /// An object: the type's plural as declared (camelCase), then the id.
    pub fn resource(&self, version: &Version, plural: &str, id: &str) -> String {
        self.at(&format!(
            "{}/{plural}/{}",
            version.path,
            utf8_percent_encode(id, PATH_SEGMENT)
        ))
    }
}

/// A `Host`-like value that is safe to put in a URL: no spaces, slashes or control characters.
fn valid_authority(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

fn valid_path(path: &str) -> bool {
    path.len() <= 255
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/.-_~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn urls_follow_the_forwarding_headers_in_norman_order() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("direct:8443"));
        assert_eq!(
            Urls::from_request(&headers, true).base(),
            "https://direct:8443"
        );
        assert_eq!(
            Urls::from_request(&headers, false).base(),
            "http://direct:8443"
        );
        headers.insert(
            "x-forwarded-host",
            HeaderValue::from_static("lb.lab, inner"),
        );
        headers.insert("x-forwarded-proto", HeaderValue::from_static("wss"));
        assert_eq!(Urls::from_request(&headers, false).base(), "https://lb.lab");
        headers.insert("x-api-host", HeaderValue::from_static("api.lab"));
        headers.insert("x-api-url-prefix", HeaderValue::from_static("/rancher/"));
        assert_eq!(
            Urls::from_request(&headers, false).base(),
            "https://api.lab/rancher"
        );
        // A host that would break the URL is not used.
        headers.insert("x-api-host", HeaderValue::from_static("evil/path x"));
        assert_eq!(
            Urls::from_request(&headers, false).base(),
            "https://lb.lab/rancher"
        );
    }
}
