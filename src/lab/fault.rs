//! What a lab fault is: a certificate scenario served to some names, until it expires or is
//! removed. Read from an API body or the config file, checked here once, stored as it is.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::pki::SubjectName;
pub use crate::pki::scenarios::Scenario;

/// How long a `short-lived` leaf lasts unless told.
const DEFAULT_LIFETIME: &str = "60s";

/// The longest a fault may be asked to last (a lab left running over a week-end is the longest
/// use seen); without a `ttl` it lasts until removed or the server stops.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 86_400);

/// The kinds of fault, as `kind` names them.
pub const KINDS: [&str; 2] = ["certificate", "tunnel"];

/// A fault as created, stored and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub id: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix milliseconds after which the fault is over; `None`: until removed.
    pub expires_ms: Option<i64>,
    #[serde(flatten)]
    pub what: What,
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self.what {
            What::Certificate(_) => "certificate",
            What::Tunnel(_) => "tunnel",
        }
    }

    /// Whether the fault is over at `now_ms` (unix milliseconds).
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_ms.is_some_and(|at| at <= now_ms)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.what {
            What::Certificate(cert) => {
                write!(f, "certificate scenario {} for ", cert.scenario)?;
                match &cert.name {
                    Some(name) => write!(f, "{name}")?,
                    None => f.write_str("every name")?,
                }
            }
            What::Tunnel(tunnel) => {
                write!(f, "tunnel toxic {} ", tunnel.toxic.name())?;
                match tunnel.direction {
                    Direction::Both => f.write_str("both ways")?,
                    Direction::Downstream => f.write_str("downstream")?,
                    Direction::Upstream => f.write_str("upstream")?,
                }
                match &tunnel.cluster {
                    Some(cluster) => write!(f, " for cluster {cluster}")?,
                    None => f.write_str(" for every cluster")?,
                }
                if tunnel.toxicity < 1.0 {
                    write!(f, " (toxicity {})", tunnel.toxicity)?;
                }
            }
        }
        if let Some(at) = self.expires_ms {
            write!(
                f,
                " until {}",
                crate::support::rfc3339(at.div_euclid(1000)).unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum What {
    Certificate(CertificateFault),
    Tunnel(TunnelFault),
}

/// A toxic on agents' tunnels, as toxiproxy's: for one cluster (its cluster and node agents) or
/// every one, one direction or both, on a share of the tunnels (`toxicity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelFault {
    pub toxic: Toxic,
    /// A cluster id; `None`: every cluster.
    pub cluster: Option<String>,
    pub direction: Direction,
    /// The probability that a tunnel gets the toxic, decided once per tunnel.
    pub toxicity: f64,
}

impl TunnelFault {
    /// Whether the fault applies to the tunnel of client key `key` (`<cluster>` or
    /// `<cluster>:<node>`) in `direction`.
    pub fn applies_to(&self, key: &str, direction: Direction) -> bool {
        self.covers(key) && (self.direction == Direction::Both || self.direction == direction)
    }

    /// Whether the fault is for the cluster of client key `key`, whichever way.
    pub fn covers(&self, key: &str) -> bool {
        let cluster = key.split_once(':').map_or(key, |(cluster, _)| cluster);
        self.cluster.as_deref().is_none_or(|c| c == cluster)
    }
}

/// Which way data goes: `downstream` from corral to the cluster (kubectl's requests), `upstream`
/// from the cluster back (its answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Downstream,
    Upstream,
    Both,
}

/// toxiproxy's toxics, with its attributes (durations as `300ms`, sizes in bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "toxic", rename_all = "kebab-case")]
pub enum Toxic {
    /// Each chunk of data waits `latency` ± `jitter`.
    Latency { latency_ms: u64, jitter_ms: u64 },
    /// At most `rate` KB/s.
    Bandwidth { rate_kbps: u64 },
    /// A close, either side's, takes `delay` to go through.
    SlowClose { delay_ms: u64 },
    /// No data passes; the tunnel is closed after `timeout` (0: never, data waits until removed).
    Timeout { timeout_ms: u64 },
    /// The tunnel is reset (TCP RST) after `timeout`.
    ResetPeer { timeout_ms: u64 },
    /// Data is cut into pieces of `average_size` ± `size_variation` bytes, `delay` apart.
    Slicer {
        average_size: u64,
        size_variation: u64,
        delay_us: u64,
    },
    /// The tunnel is closed once `bytes` have passed.
    LimitData { bytes: u64 },
    /// The link is down: tunnels are reset, new ones hang until it is back.
    Down,
}

impl Toxic {
    pub const NAMES: [&str; 8] = [
        "latency",
        "bandwidth",
        "slow-close",
        "timeout",
        "reset-peer",
        "slicer",
        "limit-data",
        "down",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Toxic::Latency { .. } => "latency",
            Toxic::Bandwidth { .. } => "bandwidth",
            Toxic::SlowClose { .. } => "slow-close",
            Toxic::Timeout { .. } => "timeout",
            Toxic::ResetPeer { .. } => "reset-peer",
            Toxic::Slicer { .. } => "slicer",
            Toxic::LimitData { .. } => "limit-data",
            Toxic::Down => "down",
        }
    }
}

/// A certificate scenario, for one name, a glob of names, or every client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateFault {
    pub scenario: Scenario,
    /// An exact name or IP, or a glob (`*.lab.test`); `None`: every client, with or without SNI.
    pub name: Option<String>,
    /// `short-lived`: how long its leaf lasts from the first handshake that gets it, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_ms: Option<u64>,
}

impl CertificateFault {
    /// Whether the fault applies to a client that asked for `name` (its SNI, lower-cased, or the
    /// local IP it reached without SNI).
    pub fn applies_to(&self, name: &str) -> bool {
        match &self.name {
            None => true,
            Some(pattern) => match pattern.strip_prefix("*.") {
                // One label or more before the suffix, as the glob's users expect of `*.lab.test`.
                Some(suffix) => name
                    .strip_suffix(suffix)
                    .and_then(|head| head.strip_suffix('.'))
                    .is_some_and(|head| !head.is_empty()),
                None => pattern == name,
            },
        }
    }
}

/// Why a fault cannot be made, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("{field} is required")]
    Missing { field: &'static str },
    #[error("invalid {field} {given:?}: valid ones are {valid}")]
    NotOneOf {
        field: &'static str,
        given: String,
        valid: String,
    },
    #[error("invalid {field} {given:?}: {why}")]
    Invalid {
        field: &'static str,
        given: String,
        why: &'static str,
    },
}

impl FaultError {
    pub fn field(&self) -> &'static str {
        match self {
            FaultError::Missing { field }
            | FaultError::NotOneOf { field, .. }
            | FaultError::Invalid { field, .. } => field,
        }
    }
}

/// Scenarios asked for that the TLS stack cannot serve, and why (the refusal says so).
const NOT_SERVABLE: [(&str, &str); 3] = [
    (
        "weak-key",
        "aws-lc-rs, which signs corral's handshakes, refuses RSA keys under 2048 bits",
    ),
    ("sha1", "rcgen cannot sign certificates with SHA-1"),
    (
        "revoked",
        "corral serves no CRL or OCSP answer that could say so",
    ),
];

/// What a body asks for: `kind`, then the kind's fields, and an optional `ttl`. The fault's id and
/// times are set by [`Fault::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    pub what: What,
    pub ttl: Option<Duration>,
}

impl FaultSpec {
    pub fn parse(input: &Map<String, Value>) -> Result<Self, FaultError> {
        let text = |field| text(input, field);
        let kind = text("kind")?.ok_or(FaultError::Missing { field: "kind" })?;
        let what = match kind {
            "certificate" => What::Certificate(certificate(input)?),
            "tunnel" => What::Tunnel(tunnel(input)?),
            other => {
                return Err(FaultError::NotOneOf {
                    field: "kind",
                    given: other.into(),
                    valid: KINDS.join(", "),
                });
            }
        };
        let ttl = match text("ttl")? {
            None => None,
            Some(given) => Some(parse_duration(given).filter(|d| *d <= MAX_TTL).ok_or(
                FaultError::Invalid {
                    field: "ttl",
                    given: given.into(),
                    why: "must be a duration such as 90s, 10m or 1h30m, at most 168h",
                },
            )?),
        };
        Ok(Self { what, ttl })
    }
}

/// A string field of a body: absent, null or empty is `None`; another type is refused.
fn text<'a>(
    input: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, FaultError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(FaultError::Invalid {
            field,
            given: other.to_string(),
            why: "must be a string",
        }),
    }
}

fn certificate(input: &Map<String, Value>) -> Result<CertificateFault, FaultError> {
    let text = |field| text(input, field);
    let given = text("scenario")?.ok_or(FaultError::Missing { field: "scenario" })?;
    let Some(scenario) = Scenario::parse(given) else {
        let valid = Scenario::ALL.map(Scenario::name).join(", ");
        let valid = match NOT_SERVABLE.iter().find(|(name, _)| *name == given) {
            Some((_, why)) => format!("{valid} ({given} is not offered: {why})"),
            None => valid,
        };
        return Err(FaultError::NotOneOf {
            field: "scenario",
            given: given.into(),
            valid,
        });
    };
    let name = match text("name")? {
        None => None,
        Some(given) => Some(name_pattern(given).ok_or(FaultError::Invalid {
            field: "name",
            given: given.into(),
            why: "must be a DNS name, an IP address or a glob such as *.lab.test",
        })?),
    };
    let lifetime_ms = match (scenario, text("lifetime")?) {
        (Scenario::ShortLived, given) => {
            let given = given.unwrap_or(DEFAULT_LIFETIME);
            let lifetime = parse_duration(given)
                .filter(|d| !d.is_zero() && *d <= MAX_TTL)
                .ok_or(FaultError::Invalid {
                    field: "lifetime",
                    given: given.into(),
                    why: "must be a duration such as 30s or 5m, at most 168h",
                })?;
            Some(lifetime.as_millis() as u64)
        }
        (_, None) => None,
        (_, Some(given)) => {
            return Err(FaultError::Invalid {
                field: "lifetime",
                given: given.into(),
                why: "only short-lived takes a lifetime",
            });
        }
    };
    Ok(CertificateFault {
        scenario,
        name,
        lifetime_ms,
    })
}

fn tunnel(input: &Map<String, Value>) -> Result<TunnelFault, FaultError> {
    let text = |field| text(input, field);
    let duration = |field: &'static str, default: &str| -> Result<u64, FaultError> {
        let given = text(field)?.unwrap_or(default);
        parse_duration(given)
            .filter(|d| *d <= MAX_TTL)
            .map(|d| d.as_millis() as u64)
            .ok_or(FaultError::Invalid {
                field,
                given: given.into(),
                why: "must be a duration such as 0s, 300ms or 10s",
            })
    };
    let size = |field: &'static str, default: Option<u64>| -> Result<u64, FaultError> {
        match input.get(field) {
            None | Some(Value::Null) => default.ok_or(FaultError::Missing { field }),
            Some(value) => value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
                .filter(|n| *n <= 1 << 40)
                .ok_or(FaultError::Invalid {
                    field,
                    given: value.to_string(),
                    why: "must be a whole number",
                }),
        }
    };
    let given = text("toxic")?.ok_or(FaultError::Missing { field: "toxic" })?;
    let toxic = match given {
        "latency" => Toxic::Latency {
            latency_ms: duration("latency", "0s")?,
            jitter_ms: duration("jitter", "0s")?,
        },
        "bandwidth" => Toxic::Bandwidth {
            rate_kbps: size("rate", None)?.max(1),
        },
        "slow-close" => Toxic::SlowClose {
            delay_ms: duration("delay", "0s")?,
        },
        "timeout" => Toxic::Timeout {
            timeout_ms: duration("timeout", "0s")?,
        },
        "reset-peer" => Toxic::ResetPeer {
            timeout_ms: duration("timeout", "0s")?,
        },
        "slicer" => Toxic::Slicer {
            average_size: size("average_size", Some(64))?.max(1),
            size_variation: size("size_variation", Some(0))?,
            delay_us: size("delay", Some(0))?,
        },
        "limit-data" => Toxic::LimitData {
            bytes: size("bytes", None)?,
        },
        "down" => Toxic::Down,
        other => {
            return Err(FaultError::NotOneOf {
                field: "toxic",
                given: other.into(),
                valid: Toxic::NAMES.join(", "),
            });
        }
    };
    let direction = match text("direction")?.unwrap_or("both") {
        "downstream" => Direction::Downstream,
        "upstream" => Direction::Upstream,
        "both" => Direction::Both,
        other => {
            return Err(FaultError::NotOneOf {
                field: "direction",
                given: other.into(),
                valid: "downstream, upstream, both".into(),
            });
        }
    };
    let toxicity = match input.get("toxicity") {
        None | Some(Value::Null) => 1.0,
        Some(value) => {
            value
                .as_f64()
                .filter(|t| (0.0..=1.0).contains(t))
                .ok_or(FaultError::Invalid {
                    field: "toxicity",
                    given: value.to_string(),
                    why: "must be a number from 0 to 1",
                })?
        }
    };
    let cluster = match text("cluster")? {
        None => None,
        Some(id)
            if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            Some(id.to_string())
        }
        Some(id) => {
            return Err(FaultError::Invalid {
                field: "cluster",
                given: id.into(),
                why: "must be a cluster id such as c-xxxxx",
            });
        }
    };
    Ok(TunnelFault {
        toxic,
        cluster,
        direction,
        toxicity,
    })
}

/// A name as faults match it: lower-cased, a valid name or IP, or `*.` before a valid name.
fn name_pattern(given: &str) -> Option<String> {
    let lower = given.trim().to_ascii_lowercase();
    let checked = lower.strip_prefix("*.").unwrap_or(&lower);
    let parsed = SubjectName::parse(checked).ok()?;
    match (&parsed, lower.starts_with("*.")) {
        (SubjectName::Ip(_), true) => None,
        (SubjectName::Ip(ip), false) => Some(ip.to_string()),
        (SubjectName::Dns(_), _) => Some(lower),
    }
}

/// A Go-style duration: numbers with units `ms`, `s`, `m`, `h`, one after another (`1h30m`,
/// `300ms`, `0s`). `None` when it is not one.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() || rest.len() > 32 {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .filter(|&end| end > 0)?;
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += Duration::try_from_secs_f64(number * seconds).ok()?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<FaultSpec, FaultError> {
        FaultSpec::parse(body.as_object().unwrap())
    }

    #[test]
    fn durations_read_as_go_writes_them() {
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "10", "m", "10x", "-1s", "1e9h", "s10"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_certificate_fault_names_a_scenario_and_maybe_a_name() {
        let spec = parse(json!({"kind": "certificate", "scenario": "expired",
            "name": "Exp.Lab.Test", "ttl": "10m"}))
        .unwrap();
        assert_eq!(spec.ttl, Some(Duration::from_secs(600)));
        let What::Certificate(cert) = spec.what else {
            panic!("a certificate fault")
        };
        assert_eq!(cert.scenario, Scenario::Expired);
        assert!(cert.applies_to("exp.lab.test"));
        assert!(!cert.applies_to("other.lab.test"));
        let every = parse(json!({"kind": "certificate", "scenario": "no-san"})).unwrap();
        let What::Certificate(every) = every.what else {
            panic!("a certificate fault")
        };
        assert!(every.applies_to("anything") && every.applies_to("127.0.0.1"));
    }

    #[test]
    fn globs_match_one_label_or_more() {
        let spec = parse(json!({"kind": "certificate", "scenario": "expired",
            "name": "*.lab.test"}))
        .unwrap();
        let What::Certificate(cert) = spec.what else {
            panic!("a certificate fault")
        };
        assert!(cert.applies_to("a.lab.test"));
        assert!(cert.applies_to("a.b.lab.test"));
        assert!(!cert.applies_to("lab.test"));
        assert!(!cert.applies_to("evillab.test"));
        assert!(!cert.applies_to(".lab.test"));
    }

    #[test]
    fn refusals_name_the_field_and_what_is_valid() {
        let unknown = parse(json!({"kind": "certificate", "scenario": "broken"})).unwrap_err();
        assert_eq!(unknown.field(), "scenario");
        let text = unknown.to_string();
        assert!(
            text.contains("expired, not-yet-valid, wrong-host"),
            "{text}"
        );
        let weak = parse(json!({"kind": "certificate", "scenario": "weak-key"})).unwrap_err();
        assert!(weak.to_string().contains("2048 bits"), "{weak}");
        assert_eq!(
            parse(json!({"scenario": "expired"})).unwrap_err(),
            FaultError::Missing { field: "kind" }
        );
        assert_eq!(parse(json!({"kind": "dns"})).unwrap_err().field(), "kind");
        for name in ["*", "*.1.2.3.4", "a..b", "x y", "*.*.lab.test"] {
            let e = parse(json!({"kind": "certificate", "scenario": "expired", "name": name}));
            assert_eq!(e.unwrap_err().field(), "name", "{name}");
        }
        let ttl = parse(json!({"kind": "certificate", "scenario": "expired", "ttl": "200h"}));
        assert_eq!(ttl.unwrap_err().field(), "ttl");
        let typed = parse(json!({"kind": "certificate", "scenario": 3}));
        assert_eq!(typed.unwrap_err().field(), "scenario");
    }
}
