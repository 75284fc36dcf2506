//! The plain HTTP port, as dynamiclistener's `HTTPRedirect` wraps it: health checks, ACME challenges
//! and requests a proxy marks as HTTPS pass through; other GET/HEAD are sent to HTTPS (302); anything
//! else gets 400 `Use HTTPS`. Redirect responses do not carry Rancher's headers (it sits outermost).

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

pub fn respond<B>(req: &Request<B>) -> Response<Body> {
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
    let location = format!("https://{}{path}", https_host(host));
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

/// The `Host` for the HTTPS URL: an explicit port p becomes (p/1000)*1000 + 443 (80→443,
/// 8080→8443); without a port the host is unchanged.
pub fn https_host(host: &str) -> String {
    let split = match host.rsplit_once(':') {
        Some((name, port)) if name.starts_with('[') && name.ends_with(']') => Some((name, port)),
        Some((name, port)) if !name.contains(':') => Some((name, port)),
        _ => None,
    };
    match split.and_then(|(name, port)| Some((name, port.parse::<u32>().ok()?))) {
        Some((name, port)) => format!("{name}:{}", port / 1000 * 1000 + 443),
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
    fn rewrites_ports_like_rancher() {
        assert_eq!(https_host("h:80"), "h:443");
        assert_eq!(https_host("h:8080"), "h:8443");
        assert_eq!(https_host("h:3080"), "h:3443");
        assert_eq!(https_host("h"), "h");
        assert_eq!(https_host("[::1]:8080"), "[::1]:8443");
        assert_eq!(https_host("::1"), "::1");
    }
}
