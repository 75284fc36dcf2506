//! Lab faults: what a lab asks corral to get wrong on purpose, on which names, until when. The
//! certificate front end ([`crate::certs`]) reads the active faults on every handshake; the API
//! (`/v3/corral/faults`) and `corral lab` add and remove them.

pub mod fault;
mod registry;
pub mod toxics;

pub use fault::{CertificateFault, Fault, FaultError, FaultSpec, Scenario, What};
pub use registry::{Faults, MAX_FAULTS, RegistryError};
pub use toxics::ToxicIo;
