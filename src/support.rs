//! Helpers every layer uses, kept at the bottom so that nothing imports upward for them.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning: a panic elsewhere must not take the server down with it, and
/// every value kept behind these locks is whole between statements.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether a comma-separated header (`Connection`, `Upgrade`, …) lists `token`, in any case.
pub fn header_has_token(
    headers: &axum::http::HeaderMap,
    name: axum::http::header::HeaderName,
    token: &str,
) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The current time in unix seconds.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The current time in unix milliseconds.
pub fn unix_now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The current time in unix microseconds.
pub fn unix_now_micros() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64
}

/// Unix seconds as RFC 3339 (UTC, whole seconds: norman's dates); `None` out of range.
pub fn rfc3339(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// The host part of `host[:port]` or `[v6]:port`, as HTTP authorities write it; `None` when it is
/// not an authority at all (or carries user information, which no `Host` or address may).
pub fn authority_host(authority: &str) -> Option<&str> {
    let parsed: hyper::http::uri::Authority = authority.parse().ok()?;
    if parsed.as_str().contains('@') {
        return None;
    }
    let host = parsed.host();
    // `Authority::host` keeps an IPv6 literal's brackets; find the same text in the input.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let start = authority.find(host)?;
    Some(&authority[start..start + host.len()])
}

/// `host:port` (`[v6]:port` for IPv6) split into host and port; `None` without a valid port.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let parsed: hyper::http::uri::Authority = address.parse().ok()?;
    let port = parsed.port_u16()?;
    Some((authority_host(address)?, port))
}

/// What a runtime's worker thread does when it runs out of work, set once by the binary (which
/// chose the allocator: it gives freed memory back to the system). The runtimes the library builds
/// for itself (etcd's client) call it too, so that their threads do as the server's workers do.
static THREAD_IDLE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets [`thread_idle`]'s hook; the first call wins.
pub fn set_thread_idle(hook: fn()) {
    let _ = THREAD_IDLE.set(hook);
}

/// Runs the hook set by [`set_thread_idle`], if any (a runtime's `on_thread_park`).
pub fn thread_idle() {
    if let Some(hook) = THREAD_IDLE.get() {
        hook();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports_of_authorities() {
        assert_eq!(authority_host("a.test:8443"), Some("a.test"));
        assert_eq!(authority_host("[::1]:8443"), Some("::1"));
        assert_eq!(authority_host("[::1]"), Some("::1"));
        assert_eq!(authority_host("10.0.0.1"), Some("10.0.0.1"));
        assert_eq!(authority_host("user@a.test"), None);
        assert_eq!(authority_host(""), None);
        assert_eq!(split_host_port("a.test:8443"), Some(("a.test", 8443)));
        assert_eq!(split_host_port("[fd00::1]:6443"), Some(("fd00::1", 6443)));
        assert_eq!(split_host_port("a.test"), None);
        assert_eq!(split_host_port("a.test:99999"), None);
        assert_eq!(split_host_port("a.test:"), None);
    }
}
