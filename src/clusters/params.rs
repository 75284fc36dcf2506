//! What an agent says about itself when it opens its tunnel (`X-API-Tunnel-Params`, base64 of
//! JSON), checked as Rancher's mcmauthorizer checks it: the texts of its 400s are Rancher's.

use serde::{Deserialize, Serialize};

/// What a cluster agent advertises in `X-API-Tunnel-Params`: where its API is, the CA to verify it
/// with (base64 of a PEM) and the token to present to it. All three are required, as by Rancher.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterParams {
    #[serde(default)]
    pub address: String,
    #[serde(default, rename = "caCert")]
    pub ca_cert: String,
    #[serde(default)]
    pub token: String,
}

/// What a node agent (cattle-node-agent) advertises: the host it runs on and its roles. corral
/// keeps the fields Rancher's node list shows; the rest (`dockerInfo`, labels, taints) is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeParams {
    #[serde(default)]
    pub requested_hostname: String,
    #[serde(default)]
    pub custom_config: Option<CustomConfig>,
    #[serde(default)]
    pub etcd: bool,
    #[serde(default)]
    pub control_plane: bool,
    #[serde(default)]
    pub worker: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomConfig {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub internal_address: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The longest hostname or address a node may advertise (a DNS name's limit); what is kept of a
/// node is bounded, whoever holds a registration token.
const MAX_NODE_FIELD: usize = 253;
/// The most roles a node may advertise, and the longest role.
const MAX_ROLES: usize = 8;
const MAX_ROLE: usize = 32;

impl NodeParams {
    /// What is kept of a node is bounded and printable: its names end up in logs, in the API and in
    /// the node's id, whoever holds a registration token.
    fn check_fields(&self) -> Result<(), ParamsError> {
        let custom = self.custom_config.clone().unwrap_or_default();
        let fields = [
            ("hostname", &self.requested_hostname),
            ("address", &custom.address),
            ("internalAddress", &custom.internal_address),
        ];
        for (name, value) in fields {
            if value.len() > MAX_NODE_FIELD {
                return Err(ParamsError::TooLong(name, MAX_NODE_FIELD));
            }
            if value.chars().any(char::is_control) {
                return Err(ParamsError::Control(name));
            }
        }
        if custom.roles.len() > MAX_ROLES {
            return Err(ParamsError::TooMany("roles", MAX_ROLES));
        }
        for role in &custom.roles {
            if role.len() > MAX_ROLE {
                return Err(ParamsError::TooLong("role", MAX_ROLE));
            }
            if role.chars().any(char::is_control) {
                return Err(ParamsError::Control("role"));
            }
        }
        Ok(())
    }

    /// Rancher's name for the node: `m-` and the first 12 hex digits of the MD5 of the requested
    /// hostname.
    pub fn node_id(&self) -> String {
        use md5::{Digest, Md5};
        let digest = hex::encode(Md5::digest(self.requested_hostname.as_bytes()));
        format!("m-{}", &digest[..12])
    }
}

/// What an agent advertised: a cluster agent's params or a node agent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentParams {
    Cluster(ClusterParams),
    Node(NodeParams),
}

/// The decoded `X-API-Tunnel-Params` JSON: a cluster agent's params, or a node agent's.
#[derive(Deserialize)]
struct TunnelParams {
    cluster: Option<ClusterParams>,
    node: Option<NodeParams>,
}

/// Why `X-API-Tunnel-Params` was refused: the text of Rancher's 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("illegal base64 data in X-API-Tunnel-Params: {0}")]
    Base64(base64::DecodeError),
    /// serde_json's errors are neither `Clone` nor `PartialEq`: its text is kept.
    #[error("invalid X-API-Tunnel-Params: {0}")]
    Json(String),
    #[error("missing node or cluster registration info")]
    Missing,
    #[error("invalid input, {0} empty")]
    Empty(&'static str),
    #[error("invalid input, {0} longer than {1}")]
    TooLong(&'static str, usize),
    #[error("invalid input, more than {1} {0}")]
    TooMany(&'static str, usize),
    #[error("invalid input, {0} contains a control character")]
    Control(&'static str),
}

impl AgentParams {
    /// Parses `X-API-Tunnel-Params` (base64 of JSON). Node params win when both are there, as in
    /// Rancher's authorizer.
    pub fn from_header(raw: &str) -> Result<Self, ParamsError> {
        use base64::Engine;
        let json = base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .map_err(ParamsError::Base64)?;
        let params: TunnelParams =
            serde_json::from_slice(&json).map_err(|e| ParamsError::Json(e.to_string()))?;
        match (params.node, params.cluster) {
            (Some(node), _) => {
                if node.requested_hostname.trim().is_empty() {
                    return Err(ParamsError::Empty("hostname"));
                }
                node.check_fields()?;
                Ok(Self::Node(node))
            }
            (None, Some(cluster)) => cluster.checked().map(Self::Cluster),
            (None, None) => Err(ParamsError::Missing),
        }
    }
}

impl ClusterParams {
    /// A cluster agent's params, if Rancher would take them: address, token and caCert all set.
    fn checked(self) -> Result<Self, ParamsError> {
        let cluster = self;
        if cluster.address.trim().is_empty() {
            return Err(ParamsError::Empty("address"));
        }
        if cluster.token.trim().is_empty() {
            return Err(ParamsError::Empty("token"));
        }
        if cluster.ca_cert.trim().is_empty() {
            return Err(ParamsError::Empty("caCert"));
        }
        Ok(cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use proptest::prelude::*;

    fn encode(json: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    #[test]
    fn params_errors_use_rancher_texts() {
        let cases = [
            ("{}", "missing node or cluster registration info"),
            (r#"{"node":{}}"#, "invalid input, hostname empty"),
            (
                r#"{"cluster":{"token":"t"}}"#,
                "invalid input, address empty",
            ),
            (
                r#"{"cluster":{"address":"a:1"}}"#,
                "invalid input, token empty",
            ),
            (
                r#"{"cluster":{"address":"a:1","token":"t","caCert":""}}"#,
                "invalid input, caCert empty",
            ),
            (
                r#"{"cluster":{"address":"a:1","token":"t"}}"#,
                "invalid input, caCert empty",
            ),
        ];
        for (json, text) in cases {
            let refused = AgentParams::from_header(&encode(json)).unwrap_err();
            assert_eq!(refused.to_string(), text);
        }
        let node = r#"{"node":{"requestedHostname":"worker-1","worker":true,"dockerInfo":{}}}"#;
        let Ok(AgentParams::Node(node)) = AgentParams::from_header(&encode(node)) else {
            panic!("node params");
        };
        // `echo -n worker-1 | md5sum` = fd8beb38b0b3b008…: Rancher's node name has its first 12.
        assert_eq!(node.node_id(), "m-fd8beb38b0b3");
        assert!(node.worker && !node.etcd);
        let long = format!(
            r#"{{"node":{{"requestedHostname":"{}"}}}}"#,
            "a".repeat(254)
        );
        let refused = AgentParams::from_header(&encode(&long)).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "invalid input, hostname longer than 253"
        );
        let refused = |json: &str| {
            AgentParams::from_header(&encode(json))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused(r#"{"node":{"requestedHostname":"a\u0000b"}}"#),
            "invalid input, hostname contains a control character"
        );
        assert_eq!(
            refused(r#"{"node":{"requestedHostname":"a\nb"}}"#),
            "invalid input, hostname contains a control character"
        );
        let role = "r".repeat(33);
        assert_eq!(
            refused(&format!(
                r#"{{"node":{{"requestedHostname":"w","customConfig":{{"roles":["{role}"]}}}}}}"#
            )),
            "invalid input, role longer than 32"
        );
        assert_eq!(
            refused(
                r#"{"node":{"requestedHostname":"w","customConfig":{"roles":["a","b","c","d","e","f","g","h","i"]}}}"#
            ),
            "invalid input, more than 8 roles"
        );
        let bad = AgentParams::from_header("%%%").unwrap_err().to_string();
        assert!(bad.starts_with("illegal base64 data"), "{bad}");
    }

    proptest! {
        #[test]
        fn any_header_is_parsed_or_refused_without_panic(raw in ".*", bytes: Vec<u8>) {
            let _ = AgentParams::from_header(&raw);
            let _ = AgentParams::from_header(&base64::engine::general_purpose::STANDARD.encode(&bytes));
        }

        #[test]
        fn advertised_params_round_trip(address in "[a-z0-9.:]{1,40}", ca in "[A-Za-z0-9+/=]{1,64}", token in "[!-~]{1,64}") {
            let params = ClusterParams { address, ca_cert: ca, token };
            let json = serde_json::json!({ "cluster": params }).to_string();
            prop_assert_eq!(AgentParams::from_header(&encode(&json)), Ok(AgentParams::Cluster(params)));
        }
    }
}
