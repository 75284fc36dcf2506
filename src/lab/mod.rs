//! Lab faults: what a lab asks corral to get wrong on purpose, on which names, until when. The
//! certificate front end ([`crate::certs`]) reads the active faults on every handshake; the API
//! (`/v3/corral/faults`) and `corral lab` add and remove them.

pub mod fault;
mod registry;
pub mod toxics;

pub use fault::{CertificateFault, Fault, FaultError, FaultSpec, Scenario, What};
pub use registry::{Faults, MAX_FAULTS, RegistryError, now_ms};
pub use toxics::ToxicIo;

/// Unix milliseconds as RFC 3339 (norman's date format), for logs and the API.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
