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

/// The decoded `X-API-Tunnel-Params` JSON: a cluster agent's params, or a node agent's.
#[derive(Deserialize)]
struct TunnelParams {
    cluster: Option<ClusterParams>,
    node: Option<serde_json::Value>,
}

/// Why `X-API-Tunnel-Params` was refused: the text of Rancher's 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("illegal base64 data in X-API-Tunnel-Params: {0}")]
    Base64(base64::DecodeError),
    /// serde_json's errors are neither `Clone` nor `PartialEq`: its text is kept.
    #[error("invalid X-API-Tunnel-Params: {0}")]
    Json(String),
    #[error("node agents are not supported by corral")]
    NodeAgent,
    #[error("missing node or cluster registration info")]
    Missing,
    #[error("invalid input, {0} empty")]
    Empty(&'static str),
}

impl ClusterParams {
    /// Parses `X-API-Tunnel-Params` (base64 of JSON).
    pub fn from_header(raw: &str) -> Result<Self, ParamsError> {
        use base64::Engine;
        let json = base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .map_err(ParamsError::Base64)?;
        let params: TunnelParams =
            serde_json::from_slice(&json).map_err(|e| ParamsError::Json(e.to_string()))?;
        let Some(cluster) = params.cluster else {
            return Err(match params.node {
                Some(_) => ParamsError::NodeAgent,
                None => ParamsError::Missing,
            });
        };
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
            (r#"{"node":{}}"#, "node agents are not supported by corral"),
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
            let refused = ClusterParams::from_header(&encode(json)).unwrap_err();
            assert_eq!(refused.to_string(), text);
        }
        let bad = ClusterParams::from_header("%%%").unwrap_err().to_string();
        assert!(bad.starts_with("illegal base64 data"), "{bad}");
    }

    proptest! {
        #[test]
        fn any_header_is_parsed_or_refused_without_panic(raw in ".*", bytes: Vec<u8>) {
            let _ = ClusterParams::from_header(&raw);
            let _ = ClusterParams::from_header(&base64::engine::general_purpose::STANDARD.encode(&bytes));
        }

        #[test]
        fn advertised_params_round_trip(address in "[a-z0-9.:]{1,40}", ca in "[A-Za-z0-9+/=]{1,64}", token in "[!-~]{1,64}") {
            let params = ClusterParams { address, ca_cert: ca, token };
            let json = serde_json::json!({ "cluster": params }).to_string();
            prop_assert_eq!(ClusterParams::from_header(&encode(&json)), Ok(params));
        }
    }
}
