//! `corral bench`: load generators for corral's two hot paths, the TLS handshake and the tunnel.

pub mod handshake;
pub mod report;
pub mod tunnel;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// TLS handshakes against a server, with a new SNI per connection if asked.
    Handshake(handshake::HandshakeArgs),
    /// Bulk throughput and stream-open rate through a tunnel, against a direct TLS stream.
    Tunnel(tunnel::TunnelArgs),
}

/// Parses durations such as `10s`, `500ms`, `2m`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?} (use ms, s or m)"
            ));
        }
    };
    Ok(std::time::Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("10s").unwrap().as_secs(), 10);
        assert_eq!(super::parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(super::parse_duration("2m").unwrap().as_secs(), 120);
        assert!(super::parse_duration("1h").is_err());
    }
}
