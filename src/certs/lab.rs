//! Lab certificate scenarios laid over whatever corral serves: a client whose name an active
//! certificate fault covers gets the scenario's certificate instead, pinned or not. With no fault
//! active this costs the handshake one atomic load.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;

use super::minter::Minter;
use crate::lab::{Fault, Faults, What};
use crate::pki::SubjectName;
use crate::pki::scenarios::ScenarioKit;
use crate::support::{lock, unix_now_ms};

/// Scenario certificates kept, by fault and name; past this, more are made for each handshake and
/// not kept (a flood of names under a fault for every name must not grow memory).
const MAX_KEPT: usize = 1024;

pub struct LabCerts {
    faults: Arc<Faults>,
    kit: ScenarioKit,
    kept: Mutex<HashMap<(String, String), Arc<ServerConfig>>>,
    /// The faults prepared for this CA (see [`LabCerts::prepare_fault`]), by id.
    prepared: Mutex<HashSet<String>>,
}

impl LabCerts {
    pub fn new(faults: Arc<Faults>) -> Self {
        Self {
            faults,
            kit: ScenarioKit::default(),
            kept: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashSet::new()),
        }
    }

    /// The scenario's config for a client that sent `sni` (or none) to `local_ip`, if an active
    /// certificate fault covers it.
    pub fn select(
        &self,
        minter: &Minter,
        sni: Option<&str>,
        local_ip: IpAddr,
    ) -> Option<Arc<ServerConfig>> {
        let faults = self.faults.snapshot();
        if faults.is_empty() {
            return None;
        }
        let name = match sni {
            Some(sni) => sni.to_ascii_lowercase(),
            None => local_ip.to_string(),
        };
        let now = unix_now_ms();
        let fault = faults.iter().find(|fault| match &fault.what {
            What::Certificate(cert) => !fault.expired(now) && cert.applies_to(&name),
            What::Tunnel(_) => false,
        })?;
        let key = (fault.id.clone(), name);
        if let Some(config) = lock(&self.kept).get(&key) {
            return Some(config.clone());
        }
        let config = self.build(minter, fault, &key.1)?;
        let mut kept = lock(&self.kept);
        if kept.len() >= MAX_KEPT {
            kept.retain(|(id, _), _| faults.iter().any(|f| f.id == *id && !f.expired(now)));
        }
        if kept.len() < MAX_KEPT {
            kept.insert(key, config.clone());
        }
        Some(config)
    }

    /// Makes what a fault doing `what` needs ahead of its first handshake (an RSA key takes a
    /// while); at once when made already.
    pub fn prepare(&self, minter: &Minter, what: &What) -> Result<(), rcgen::Error> {
        let What::Certificate(cert) = what else {
            return Ok(());
        };
        self.kit.prepare(minter.factory(), cert.scenario)
    }

    /// Prepares each of the `active` certificate faults once for this CA, whichever replica made
    /// it, and says so: from then on its handshakes only sign. One that cannot be prepared is
    /// logged and left to its first handshake.
    pub fn prepare_faults(&self, minter: &Minter, active: &[Arc<Fault>]) {
        let fresh: Vec<&Arc<Fault>> = {
            let mut prepared = lock(&self.prepared);
            prepared.retain(|id| active.iter().any(|f| f.id == *id));
            active
                .iter()
                .filter(|f| matches!(f.what, What::Certificate(_)))
                .filter(|f| prepared.insert(f.id.clone()))
                .collect()
        };
        for fault in fresh {
            match self.prepare(minter, &fault.what) {
                Ok(()) => tracing::info!("lab fault {}: ready to serve", fault.id),
                Err(e) => {
                    tracing::warn!(
                        "lab fault {}: cannot prepare its certificate: {e}",
                        fault.id
                    )
                }
            }
        }
    }

    fn build(&self, minter: &Minter, fault: &Fault, name: &str) -> Option<Arc<ServerConfig>> {
        let What::Certificate(cert) = &fault.what else {
            return None;
        };
        // A name that cannot be one (a hostile SNI) gets what it would have got without the fault.
        let subject = SubjectName::parse(name).ok()?;
        let made = self
            .kit
            .leaf(
                minter.factory(),
                cert.scenario,
                &subject,
                time::Duration::milliseconds(cert.lifetime_ms.unwrap_or(60_000) as i64),
            )
            .map_err(|e| e.to_string())
            .and_then(|leaf| {
                minter
                    .template()
                    .serve_chain(leaf.chain, leaf.key)
                    .map_err(|e| e.to_string())
            });
        match made {
            Ok(config) => Some(config),
            Err(e) => {
                tracing::warn!(
                    "lab fault {}: cannot make its certificate for {name}: {e}",
                    fault.id
                );
                None
            }
        }
    }
}
