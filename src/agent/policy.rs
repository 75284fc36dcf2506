//! `--allow`: what the server may make the agent dial. Rancher's agent allows any `tcp` address and
//! only the Docker socket over `unix`; corral's default is any `tcp`.

/// An `--allow` entry that is not `PROTO:ADDR`.
#[derive(Debug, thiserror::Error)]
#[error("invalid --allow {0:?}: expected PROTO:ADDR")]
pub struct PolicyError(String);

/// One allowed (protocol, address) pattern; `*` as the address allows any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    proto: String,
    address: String,
}

#[derive(Debug, Clone)]
pub struct AllowPolicy {
    rules: Vec<Rule>,
}

impl AllowPolicy {
    /// Parses `PROTO:ADDR` entries (`tcp:*`, `tcp:10.43.0.1:443`, `unix:/var/run/docker.sock`).
    pub fn parse(entries: &[String]) -> Result<Self, PolicyError> {
        let rules = entries
            .iter()
            .map(|entry| {
                let (proto, address) = entry
                    .split_once(':')
                    .filter(|(p, a)| !p.is_empty() && !a.is_empty())
                    .ok_or_else(|| PolicyError(entry.clone()))?;
                Ok(Rule {
                    proto: proto.to_string(),
                    address: address.to_string(),
                })
            })
            .collect::<Result<_, PolicyError>>()?;
        Ok(Self { rules })
    }

    pub fn allows(&self, proto: &str, address: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.proto == proto && (r.address == "*" || r.address == address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_allows_any_tcp_only() {
        let policy = AllowPolicy::parse(&["tcp:*".into()]).unwrap();
        assert!(policy.allows("tcp", "10.43.0.1:443"));
        assert!(!policy.allows("unix", "/var/run/docker.sock"));
        let narrow = AllowPolicy::parse(&[
            "tcp:10.0.0.1:443".into(),
            "unix:/var/run/docker.sock".into(),
        ])
        .unwrap();
        assert!(narrow.allows("tcp", "10.0.0.1:443") && !narrow.allows("tcp", "10.0.0.2:443"));
        assert!(narrow.allows("unix", "/var/run/docker.sock"));
        assert!(AllowPolicy::parse(&["nonsense".into()]).is_err());
    }
}
