//! The `server-url` setting: what a valid value is, and the host certificates are pinned to.

use std::fmt;

use super::{NameError, SubjectName};

/// Why a value is not a server URL (the text is the 400 response's message).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServerUrlError {
    #[error("invalid server-url {raw:?}: {source}")]
    Unparsable {
        raw: String,
        source: url::ParseError,
    },
    #[error("invalid server-url {0:?}: the scheme must be https")]
    NotHttps(String),
    #[error("invalid server-url {0:?}: credentials are not allowed")]
    Credentials(String),
    #[error("invalid server-url {0:?}: a path, query or fragment is not allowed")]
    NotJustHost(String),
    #[error("invalid server-url {0:?}: no host")]
    NoHost(String),
    #[error("invalid server-url host {host:?}: {source}")]
    Host { host: String, source: NameError },
}

/// A validated server URL: `https://host[:port]`, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// The value as stored: scheme, host and port, no trailing slash.
    text: String,
    host: SubjectName,
}

impl ServerUrl {
    /// Parses and validates a server URL. The error says what is wrong, for a 400 response.
    pub fn parse(raw: &str) -> Result<Self, ServerUrlError> {
        let raw = raw.trim();
        let url = url::Url::parse(raw).map_err(|source| ServerUrlError::Unparsable {
            raw: raw.into(),
            source,
        })?;
        if url.scheme() != "https" {
            return Err(ServerUrlError::NotHttps(raw.into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ServerUrlError::Credentials(raw.into()));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(ServerUrlError::NotJustHost(raw.into()));
        }
        let host_text = url
            .host_str()
            .ok_or_else(|| ServerUrlError::NoHost(raw.into()))?;
        let host = SubjectName::parse(host_text).map_err(|source| ServerUrlError::Host {
            host: host_text.into(),
            source,
        })?;
        let text = match url.port() {
            Some(port) => format!("https://{host_text}:{port}"),
            None => format!("https://{host_text}"),
        };
        Ok(Self { text, host })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The host certificates are pinned to (a DNS name or an IP).
    pub fn host(&self) -> &SubjectName {
        &self.host
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hosts_ports_and_ips() {
        let url = ServerUrl::parse("https://Rancher.Lab.Test:8443/").unwrap();
        assert_eq!(url.as_str(), "https://rancher.lab.test:8443");
        assert_eq!(url.host(), &SubjectName::Dns("rancher.lab.test".into()));
        let v6 = ServerUrl::parse("https://[fd00::1]").unwrap();
        assert_eq!(v6.host(), &SubjectName::Ip("fd00::1".parse().unwrap()));
        assert_eq!(
            ServerUrl::parse("https://10.0.0.5:443").unwrap().as_str(),
            "https://10.0.0.5"
        );
    }

    #[test]
    fn refuses_malformed_urls() {
        for bad in [
            "",
            "rancher.lab.test",
            "http://a.test",
            "https://a.test/x",
            "https://u:p@a.test",
            "https://*.a.test",
            "https://a.test?x=1",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad:?}");
        }
    }
}
