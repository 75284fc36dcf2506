//! `/v3/corral/ca`: the CA that signs corral's certificates and, after a rotation, the one still
//! kept in the bundle; `POST /v3/corral/ca?action=rotate` with `{"keepOld":"10m"}` (or `"0s"`)
//! rotates it, for admins.

use async_trait::async_trait;
use axum::http::StatusCode;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Map, Value};

use super::norman::{Answer, Call, TypeHandler};
use crate::api::schema::{Action, GET};
use crate::api::{ApiError, Field, Resource, Schema};
use crate::ca_bundle::{Distributed, RotationError};
use crate::lab::fault::{MAX_TTL, parse_duration};
use crate::pki::ca_checksum;

pub struct LabCa;

/// A CA as listed: what its certificate says, and the checksum an agent would be given for it
/// alone.
fn ca_resource(id: &str, ca_pem: &str) -> Resource {
    let summary = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .ok()
        .and_then(|der| crate::pki::inspect::summarize(&der));
    let mut resource = Resource::new(id)
        .with("state", "active")
        .with("checksum", ca_checksum(ca_pem));
    if let Some(summary) = summary {
        resource = resource
            .with("subject", summary.subject)
            .with("serial", summary.serial)
            .with("notBefore", summary.not_before)
            .with("notAfter", summary.not_after);
    }
    resource
}

fn resources(distributed: &Distributed) -> Vec<Resource> {
    let mut list = vec![
        ca_resource("current", distributed.ca.cacerts())
            .with("signing", true)
            .with("bundleChecksum", distributed.checksum.as_str()),
    ];
    if let Some(previous) = &distributed.previous {
        list.push(
            ca_resource("previous", &previous.pem)
                .with("signing", false)
                .with("keptUntil", crate::api::resource::date(previous.until)),
        );
    }
    list
}

#[async_trait]
impl TypeHandler for LabCa {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            Schema::new("ca")
                .plural("ca")
                .methods(&[GET], &[GET])
                .field("subject", Field::string())
                .field("serial", Field::string())
                .field("notBefore", Field::string())
                .field("notAfter", Field::string())
                .field("checksum", Field::string())
                .field("bundleChecksum", Field::string())
                .field("signing", Field::boolean())
                .field("keptUntil", Field::string().nullable())
                .field("state", Field::string())
                .collection_action(
                    "rotate",
                    Action {
                        input: Some("caRotateInput"),
                        output: Some("ca"),
                    },
                ),
            Schema::new("caRotateInput").field("keepOld", Field::string().create()),
        ]
    }

    fn rbac_resource(&self) -> Option<&'static str> {
        Some("corralca")
    }

    fn action_verb(&self, _action: &str, _on_object: bool) -> Option<&'static str> {
        Some("update")
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        Ok(resources(&call.state.ca.current()))
    }

    async fn action(
        &self,
        call: &Call<'_>,
        _: Option<&str>,
        _: &str,
        input: Map<String, Value>,
    ) -> Result<Answer, ApiError> {
        let keep_old = match input.get("keepOld") {
            None | Some(Value::Null) => std::time::Duration::ZERO,
            Some(Value::String(text)) => parse_duration(text)
                .filter(|d| *d <= MAX_TTL)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "InvalidFormat",
                        format!("invalid keepOld {text:?}: must be a duration such as 0s, 10m or 1h, at most 168h"),
                    )
                    .on_field("keepOld")
                })?,
            Some(_) => return Err(ApiError::field("InvalidFormat", "keepOld")),
        };
        let bundle = call.state.ca.clone();
        let rotated = tokio::task::spawn_blocking(move || bundle.rotate(keep_old))
            .await
            .map_err(|e| ApiError::server_error(format!("the rotation stopped: {e}")))?;
        match rotated {
            Ok(distributed) => {
                let current = resources(&distributed).remove(0);
                Ok(Answer::ok("ca", current))
            }
            Err(RotationError::NotHere(why)) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "InvalidAction",
                why,
            )),
            Err(e) => {
                tracing::warn!("CA rotation failed: {e}");
                Err(ApiError::server_error(format!(
                    "the CA was not rotated: {e}"
                )))
            }
        }
    }
}
