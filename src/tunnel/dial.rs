//! The client end's dials: what a Connect asks for, dialed with a deadline, failures worded as a Go
//! agent words them (`dial tcp 127.0.0.1:1: connect: connection refused`). Rancher shows that text to
//! whoever made the request that needed the dial, so it should read the same from every agent.

use std::io;
use std::time::Duration;

use super::session::{Connector, Dialed, Serving};
use super::stream::TunnelStream;

/// A rule `(proto, address) -> allowed` is a connector that dials and relays what it allows.
impl<F: Fn(&str, &str) -> bool + Send + Sync + 'static> Connector for F {
    fn allows(&self, proto: &str, address: &str) -> bool {
        self(proto, address)
    }

    fn serve(&self, proto: String, address: String, stream: TunnelStream) -> Serving {
        Box::pin(dial_and_relay(proto, address, stream))
    }
}

/// Dials what a Connect names and relays the stream to it; a failed dial fails the stream with
/// Go's text.
pub async fn dial_and_relay(proto: String, address: String, stream: TunnelStream) {
    match dial(&proto, &address).await {
        Ok(target) => stream.relay(target).await,
        Err(e) => stream.fail(&e.to_string()),
    }
}

/// A failed dial, worded as Go's `net.Dial` words it.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("dial {proto} {address}: i/o timeout")]
    Timeout { proto: String, address: String },
    #[error("dial {proto}: address {address}: missing port in address")]
    MissingPort { proto: String, address: String },
    #[error("dial {proto}: address {address}: invalid port")]
    InvalidPort { proto: String, address: String },
    #[error("dial {proto}: lookup {host}: no such host")]
    NoSuchHost { proto: String, host: String },
    /// `reason`: the C library's text for the error number, lower-cased as Go's syscall table has it.
    #[error("dial {proto} {address}: connect: {reason}")]
    Connect {
        proto: String,
        address: String,
        reason: String,
    },
    #[error("dial {proto} {address}: unknown network {proto}")]
    UnknownNetwork { proto: String, address: String },
}

/// How long a client waits for a dial the server asked for (remotedialer's client dialer).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Dials `proto`/`address` within [`DIAL_TIMEOUT`]: `tcp` addresses or `unix` socket paths. The error
/// is Go's text for the failure.
pub async fn dial(proto: &str, address: &str) -> Result<Box<dyn Dialed>, DialError> {
    match tokio::time::timeout(DIAL_TIMEOUT, dial_now(proto, address)).await {
        Ok(result) => result,
        Err(_) => Err(DialError::Timeout {
            proto: proto.into(),
            address: address.into(),
        }),
    }
}

async fn dial_now(proto: &str, address: &str) -> Result<Box<dyn Dialed>, DialError> {
    match proto {
        "tcp" | "tcp4" | "tcp6" => {
            // Each address in turn; the error is the first one's, naming the address tried (Go's
            // serial dial).
            let mut first_error = None;
            for target in resolve(proto, address).await? {
                match tokio::net::TcpStream::connect(target).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(Box::new(stream));
                    }
                    Err(e) => {
                        first_error
                            .get_or_insert_with(|| connect_error(proto, &target.to_string(), &e));
                    }
                }
            }
            Err(first_error.unwrap_or_else(|| lookup_error(proto, address)))
        }
        "unix" => match tokio::net::UnixStream::connect(address).await {
            Ok(stream) => Ok(Box::new(stream)),
            Err(e) => Err(connect_error(proto, address, &e)),
        },
        other => Err(DialError::UnknownNetwork {
            proto: other.into(),
            address: address.into(),
        }),
    }
}

/// `host:port` to socket addresses, as Go's resolver reports its failures.
async fn resolve(proto: &str, address: &str) -> Result<Vec<std::net::SocketAddr>, DialError> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(DialError::MissingPort {
            proto: proto.into(),
            address: address.into(),
        });
    };
    // Go's own split: the last colon, brackets around an IPv6 host.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if port.parse::<u16>().is_err() {
        return Err(DialError::InvalidPort {
            proto: proto.into(),
            address: address.into(),
        });
    }
    let found: Vec<_> = match tokio::net::lookup_host(address).await {
        Ok(found) => found
            .filter(|a| match proto {
                "tcp4" => a.is_ipv4(),
                "tcp6" => a.is_ipv6(),
                _ => true,
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    if found.is_empty() {
        return Err(lookup_error(proto, host));
    }
    Ok(found)
}

fn lookup_error(proto: &str, host: &str) -> DialError {
    DialError::NoSuchHost {
        proto: proto.into(),
        host: host.into(),
    }
}

/// Go's `dial <proto> <address>: connect: <errno text>`: the C library's text for the error number,
/// lower-cased as Go's syscall table has it.
fn connect_error(proto: &str, address: &str, error: &io::Error) -> DialError {
    if error.kind() == io::ErrorKind::TimedOut {
        return DialError::Timeout {
            proto: proto.into(),
            address: address.into(),
        };
    }
    let reason = match error.raw_os_error() {
        Some(code) => {
            let text = io::Error::from_raw_os_error(code).to_string();
            let text = match text.rsplit_once(" (os error") {
                Some((text, _)) => text.to_string(),
                None => text,
            };
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text,
            }
        }
        None => error.to_string(),
    };
    DialError::Connect {
        proto: proto.into(),
        address: address.into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn failure(proto: &str, address: &str) -> String {
        match dial(proto, address).await {
            Ok(_) => panic!("{proto}/{address} connected"),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn failures_read_as_a_go_agent_writes_them() {
        assert_eq!(
            failure("tcp", "127.0.0.1:1").await,
            "dial tcp 127.0.0.1:1: connect: connection refused"
        );
        assert_eq!(
            failure("tcp4", "localhost:1").await,
            "dial tcp4 127.0.0.1:1: connect: connection refused",
            "a name from /etc/hosts (no DNS query leaves the machine)"
        );
        assert_eq!(
            lookup_error("tcp", "nosuch.invalid").to_string(),
            "dial tcp: lookup nosuch.invalid: no such host"
        );
        assert_eq!(
            failure("tcp", "10.0.0.1").await,
            "dial tcp: address 10.0.0.1: missing port in address"
        );
        assert_eq!(
            failure("unix", "/nonexistent/corral.sock").await,
            "dial unix /nonexistent/corral.sock: connect: no such file or directory"
        );
        assert_eq!(
            failure("udp", "127.0.0.1:53").await,
            "dial udp 127.0.0.1:53: unknown network udp"
        );
        let timed_out = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(
            connect_error("tcp", "10.255.255.1:443", &timed_out).to_string(),
            "dial tcp 10.255.255.1:443: i/o timeout"
        );
    }
}
