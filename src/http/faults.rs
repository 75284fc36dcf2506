//! `/v3/corral/faults`: the lab faults active now (issue 23), norman-shaped like Rancher's types:
//! list, create, get and remove, for whoever the rules let (admins). A fault ends when its `ttl`
//! passes, when it is removed, or when the server stops.

use async_trait::async_trait;
use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::norman::{Answer, Call, TypeHandler};
use crate::api::resource::date;
use crate::api::schema::{DELETE, GET, POST};
use crate::api::{ApiError, Field, Resource, Schema};
use crate::lab::fault::Toxic;
use crate::lab::{Fault, FaultError, FaultSpec, RegistryError, What};
use crate::support::unix_now_ms;

pub struct LabFaults;

fn resource(fault: &Fault) -> Resource {
    let mut resource = Resource::new(&fault.id)
        .with("kind", fault.kind())
        .with("state", "active")
        .with("created", date(fault.created))
        .with(
            "expires",
            fault
                .expires_ms
                .map_or(Value::Null, |at| date(at.div_euclid(1000))),
        );
    match &fault.what {
        What::Certificate(cert) => {
            resource = resource
                .with("scenario", cert.scenario.name())
                .with("name", cert.name.clone().map_or(Value::Null, Value::from))
                .with(
                    "lifetime",
                    cert.lifetime_ms
                        .map_or(Value::Null, |ms| format!("{}s", ms as f64 / 1000.0).into()),
                );
        }
        What::Tunnel(tunnel) => {
            let ms = |ms: &u64| Value::from(format!("{ms}ms"));
            resource = resource
                .with("toxic", tunnel.toxic.name())
                .with(
                    "cluster",
                    tunnel.cluster.clone().map_or(Value::Null, Value::from),
                )
                .with(
                    "direction",
                    format!("{:?}", tunnel.direction).to_lowercase(),
                )
                .with("toxicity", tunnel.toxicity);
            resource = match &tunnel.toxic {
                Toxic::Latency {
                    latency_ms,
                    jitter_ms,
                } => resource
                    .with("latency", ms(latency_ms))
                    .with("jitter", ms(jitter_ms)),
                Toxic::Bandwidth { rate_kbps } => resource.with("rate", *rate_kbps),
                Toxic::SlowClose { delay_ms } => resource.with("delay", ms(delay_ms)),
                Toxic::Timeout { timeout_ms } | Toxic::ResetPeer { timeout_ms } => {
                    resource.with("timeout", ms(timeout_ms))
                }
                Toxic::Slicer {
                    average_size,
                    size_variation,
                    delay_us,
                } => resource
                    .with("average_size", *average_size)
                    .with("size_variation", *size_variation)
                    .with("delay", *delay_us),
                Toxic::LimitData { bytes } => resource.with("bytes", *bytes),
                Toxic::Down => resource,
            };
        }
    }
    resource
}

fn invalid(error: &FaultError) -> ApiError {
    let code = match error {
        FaultError::Missing { .. } => "MissingRequired",
        FaultError::NotOneOf { .. } => "InvalidOption",
        FaultError::Invalid { .. } => "InvalidFormat",
    };
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, error.to_string()).on_field(error.field())
}

fn registry_error(error: RegistryError) -> ApiError {
    match error {
        RegistryError::Full => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "MaxLimitExceeded",
            error.to_string(),
        ),
        RegistryError::NotFound(_) => ApiError::not_found(error.to_string()),
        RegistryError::Store(e) => {
            tracing::warn!("lab faults: {e}");
            ApiError::store_unavailable()
        }
    }
}

#[async_trait]
impl TypeHandler for LabFaults {
    fn schemas(&self) -> Vec<Schema> {
        vec![
            Schema::new("fault")
                .methods(&[GET, POST], &[GET, DELETE])
                .field(
                    "kind",
                    Field::one_of(&crate::lab::fault::KINDS).create().required(),
                )
                .field("scenario", Field::string().create().nullable())
                .field("name", Field::string().create().nullable())
                .field("ttl", Field::string().create().nullable())
                .field("lifetime", Field::string().create().nullable())
                .field("toxic", Field::string().create().nullable())
                .field("cluster", Field::string().create().nullable())
                .field("direction", Field::string().create().nullable())
                .field("toxicity", Field::json().create().nullable())
                .field("latency", Field::string().create().nullable())
                .field("jitter", Field::string().create().nullable())
                .field("rate", Field::json().create().nullable())
                .field("delay", Field::json().create().nullable())
                .field("timeout", Field::string().create().nullable())
                .field("average_size", Field::json().create().nullable())
                .field("size_variation", Field::json().create().nullable())
                .field("bytes", Field::json().create().nullable())
                .field("expires", Field::date().nullable())
                .field("created", Field::date())
                .field("state", Field::string()),
        ]
    }

    fn rbac_resource(&self) -> Option<&'static str> {
        Some("corralfaults")
    }

    async fn list(&self, call: &Call<'_>) -> Result<Vec<Resource>, ApiError> {
        Ok(call
            .state
            .faults
            .list(unix_now_ms())
            .iter()
            .map(|f| resource(f))
            .collect())
    }

    async fn create(&self, call: &Call<'_>, input: Map<String, Value>) -> Result<Answer, ApiError> {
        let spec = FaultSpec::parse(&input).map_err(|e| invalid(&e))?;
        // Keys and CAs a scenario needs are made before it is served, off the workers, rather
        // than by its first handshake (an RSA-4096 key takes a second or more).
        let (certs, what) = (call.state.certs.clone(), spec.what.clone());
        let made = tokio::task::spawn_blocking(move || certs.prepare_fault(&what)).await;
        let failed = match made {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            return Err(ApiError::server_error(format!(
                "cannot prepare the fault: {e}"
            )));
        }
        let fault = call.state.faults.add(spec).map_err(registry_error)?;
        Ok(Answer::created("fault", resource(&fault)))
    }

    async fn delete(&self, call: &Call<'_>, id: &str) -> Result<Answer, ApiError> {
        let fault = call.state.faults.remove(id).map_err(registry_error)?;
        Ok(Answer::ok("fault", resource(&fault)))
    }
}
