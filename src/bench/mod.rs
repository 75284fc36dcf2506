//! `corral bench`: load generators for corral's two hot paths, the TLS handshake and the tunnel.

pub mod deployment;
pub mod handshake;
mod loopback;
pub mod report;
pub mod tunnel;
pub mod verify;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// TLS handshakes against a server, with a new SNI per connection if asked.
    Handshake(handshake::HandshakeArgs),
    /// Bulk throughput and stream-open rate through a tunnel, against a direct TLS stream.
    Tunnel(tunnel::TunnelArgs),
}

/// Why a load generator could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid duration {0:?}")]
    Duration(String),
    #[error("invalid duration unit in {0:?} (use ms, s or m)")]
    DurationUnit(String),
    #[error("duration {0:?} is too long")]
    DurationRange(String),
    #[error("cannot resolve {target}: {source}")]
    Resolve {
        target: String,
        source: std::io::Error,
    },
    #[error("no address for {0}")]
    NoAddress(String),
    #[error("invalid server name {name:?}: {source}")]
    ServerName {
        name: String,
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("--unique-sni {suffix:?}: {source}")]
    UniqueSni {
        suffix: String,
        source: Box<BenchError>,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("pass --ca FILE or --insecure")]
    NoTrust,
    #[error("--ca {}: {reason}", path.display())]
    Ca {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Http(String),
    #[error("{0} must be more than 0")]
    Zero(&'static str),
    #[error("cannot read the CPU time in {0}")]
    ProcStat(String),
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Sign(#[from] rcgen::Error),
    #[error("{0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    WebSocket(#[from] crate::tunnel::websocket::HandshakeError),
    #[error("short transfer: direct {direct}, tunnel {tunnel} of {expected} bytes")]
    ShortTransfer {
        direct: usize,
        tunnel: usize,
        expected: usize,
    },
}

/// What `--ca FILE` holds, or `None` with `--insecure`; neither is an error.
fn trusted_pem(
    ca: Option<&std::path::Path>,
    insecure: bool,
) -> Result<Option<Vec<u8>>, BenchError> {
    match ca {
        Some(path) => std::fs::read(path)
            .map(Some)
            .map_err(|source| BenchError::Read {
                path: path.to_path_buf(),
                source,
            }),
        None if insecure => Ok(None),
        None => Err(BenchError::NoTrust),
    }
}

/// Parses durations such as `10s`, `500ms`, `2m`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, BenchError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| BenchError::Duration(text.into()))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(BenchError::DurationUnit(text.into())),
    };
    std::time::Duration::try_from_secs_f64(seconds)
        .map_err(|_| BenchError::DurationRange(text.into()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("10s").unwrap().as_secs(), 10);
        assert_eq!(super::parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(super::parse_duration("2m").unwrap().as_secs(), 120);
        assert!(super::parse_duration("1h").is_err());
        // Past what a Duration holds: refused, not a panic.
        assert!(super::parse_duration("99999999999999999999999999m").is_err());
    }
}
