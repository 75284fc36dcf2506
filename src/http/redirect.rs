//! The plain HTTP port, as dynamiclistener's `HTTPRedirect` wraps it: health checks, ACME challenges
//! and requests a proxy marks as HTTPS pass through; other GET/HEAD are sent to HTTPS (302); anything
//! else gets 400 `Use HTTPS`. Redirect responses do not carry Rancher's headers (it sits outermost).
//!
//! The HTTPS port: a request for corral's own HTTP port (the `Host` port, 80 when it names none) is
//! sent to corral's own HTTPS port; any other port p gets Rancher's rule, (p/1000)·1000 + 443, which
//! fits a container whose published ports differ from the ones inside (80 → 443, 8080 → 8443).

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};

use super::text_response;

pub fn passes_through<B>(req: &Request<B>) -> bool {
    let path = req.uri().path();
    let forwarded_secure = req
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|p| p == "https" || p == "wss");
    forwarded_secure
        || path.starts_with("/.well-known/")
        || path.starts_with("/ping")
        || path.starts_with("/health")
}

/// The ports corral listens on, as the connection a request arrived on knows them.
#[derive(Debug, Clone, Copy)]
pub struct OwnPorts {
    /// The HTTP port the request arrived on.
    pub http: u16,
    pub https: u16,
}

pub fn respond<B>(req: &Request<B>, own: OwnPorts) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text_response(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            "Use HTTPS\n",
        );
        response.headers_mut().insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        return response;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{}{path}", https_host(host, own));
    // Go's http.Redirect: a short HTML body for GET, none for HEAD.
    let body = match req.method() == Method::GET {
        true => format!("<a href=\"{}\">Found</a>.\n\n", html_escape(&location)),
        false => String::new(),
    };
    let mut response = text_response(StatusCode::FOUND, "text/html; charset=utf-8", body);
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
            response
        }
        Err(_) => text_response(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            "bad Host header\n",
        ),
    }
}

/// The `Host` for the HTTPS URL (see the module's comment).
pub fn https_host(host: &str, own: OwnPorts) -> String {
    let split = match host.rsplit_once(':') {
        Some((name, port)) if name.starts_with('[') && name.ends_with(']') => Some((name, port)),
        Some((name, port)) if !name.contains(':') => Some((name, port)),
        _ => None,
    };
    let (name, port) = match split.and_then(|(name, port)| Some((name, port.parse::<u32>().ok()?)))
    {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let with_port = |port: u32| match port {
        443 => name.to_string(),
        port => format!("{name}:{port}"),
    };
    match port {
        Some(port) if port == u32::from(own.http) => with_port(u32::from(own.https)),
        None if own.http == 80 => with_port(u32::from(own.https)),
        Some(port) => format!("{name}:{}", port / 1000 * 1000 + 443),
        None => host.to_string(),
    }
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_other_ports_like_rancher() {
        let own = OwnPorts {
            http: 18086,
            https: 18449,
        };
        assert_eq!(https_host("h:80", own), "h:443");
        assert_eq!(https_host("h:8080", own), "h:8443");
        assert_eq!(https_host("h:3080", own), "h:3443");
        assert_eq!(https_host("h", own), "h");
        assert_eq!(https_host("[::1]:8080", own), "[::1]:8443");
        assert_eq!(https_host("::1", own), "::1");
    }

    #[test]
    fn its_own_http_port_goes_to_its_own_https_port() {
        let own = OwnPorts {
            http: 18086,
            https: 18449,
        };
        assert_eq!(https_host("h:18086", own), "h:18449");
        assert_eq!(https_host("[::1]:18086", own), "[::1]:18449");
        let standard = OwnPorts {
            http: 80,
            https: 8443,
        };
        assert_eq!(https_host("h", standard), "h:8443", "no port is port 80");
        assert_eq!(
            https_host(
                "h",
                OwnPorts {
                    http: 80,
                    https: 443
                }
            ),
            "h",
            "443 is left out"
        );
    }
}
