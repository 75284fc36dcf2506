//! Rancher's feature flags (`/v3/features`, `shared/spec/norman-api.md` §10.1): the ones a Rancher
//! v2.11 installs, their defaults, and a value an admin sets. corral's behaviour does not depend on
//! them; clients read them (the dashboard hides what is off).
//!
//! The list and defaults follow Rancher's `pkg/features` as read; the descriptions are corral's
//! own words.

use super::{AccountError, Accounts};

/// A feature flag as Rancher installs it.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    pub name: &'static str,
    pub default: bool,
    /// Takes effect without a restart.
    pub dynamic: bool,
    /// Fixed at install: it cannot be changed (`status.lockedValue`).
    pub locked: bool,
    pub description: &'static str,
}

const fn flag(name: &'static str, default: bool, dynamic: bool, description: &'static str) -> Flag {
    Flag {
        name,
        default,
        dynamic,
        locked: false,
        description,
    }
}

pub const FLAGS: &[Flag] = &[
    flag(
        "multi-cluster-management",
        true,
        false,
        "Provision and manage many Kubernetes clusters.",
    ),
    flag("fleet", true, false, "Install Fleet at start."),
    flag(
        "continuous-delivery",
        true,
        false,
        "Fleet's GitOps components.",
    ),
    flag("rke2", true, false, "Provision RKE2 clusters."),
    flag(
        "harvester",
        true,
        true,
        "Import and manage Harvester clusters.",
    ),
    flag(
        "istio-virtual-service-ui",
        true,
        true,
        "Show the UI for Istio virtual services and destination rules.",
    ),
    flag(
        "unsupported-storage-drivers",
        false,
        true,
        "Allow storage providers that are not enabled by default.",
    ),
    flag(
        "legacy",
        false,
        true,
        "Legacy features of Rancher 2.5 and earlier.",
    ),
    flag(
        "token-hashing",
        false,
        true,
        "Store tokens hashed (cannot be turned off once on).",
    ),
    flag(
        "rke1-custom-node-cleanup",
        true,
        true,
        "Clean up RKE1 custom nodes when they are deleted.",
    ),
    flag("rke1-ui", true, true, "Show RKE1 provisioning in the UI."),
    flag(
        "harvester-baremetal-container-workload",
        false,
        true,
        "Deploy containers onto the Harvester cluster beneath (experimental).",
    ),
    flag(
        "provisioningv2-fleet-workspace-back-population",
        false,
        false,
        "Allow a provisioning-v2 cluster's Fleet workspace to change (experimental).",
    ),
    flag("uiextension", true, false, "Load UI extensions at start."),
    flag(
        "ui-sql-cache",
        true,
        false,
        "Cache in SQLite for the UI (server-side pagination).",
    ),
    flag(
        "provisioningprebootstrap",
        false,
        false,
        "Run pre-bootstrap workloads on downstream clusters.",
    ),
    flag(
        "clean-stale-secrets",
        true,
        false,
        "Remove unused impersonation secrets.",
    ),
    Flag {
        locked: true,
        ..flag(
            "aggregated-roletemplates",
            false,
            false,
            "Build role templates' RBAC by aggregation (experimental).",
        )
    },
    flag(
        "cluster-agent-scheduling-customization",
        false,
        true,
        "Deploy disruption budgets and priority classes with the cluster agent.",
    ),
    flag(
        "v2prov-etcd-snapshot-backpopulate",
        true,
        false,
        "Create etcd snapshot objects for provisioning-v2 clusters.",
    ),
];

/// A feature as the API shows it.
#[derive(Debug, Clone)]
pub struct FeatureView {
    pub flag: Flag,
    /// `spec.value`: what an admin set, if anything.
    pub value: Option<bool>,
}

impl FeatureView {
    /// The effective value: locked, else set, else the default.
    pub fn effective(&self) -> bool {
        if self.flag.locked {
            return self.flag.default;
        }
        self.value.unwrap_or(self.flag.default)
    }
}

impl Accounts {
    pub fn features(&self) -> Vec<FeatureView> {
        let set = self.settings().features.clone();
        FLAGS
            .iter()
            .map(|flag| FeatureView {
                flag: *flag,
                value: set.get(flag.name).copied(),
            })
            .collect()
    }

    pub fn feature(&self, name: &str) -> Result<FeatureView, AccountError> {
        self.features()
            .into_iter()
            .find(|f| f.flag.name == name)
            .ok_or_else(|| AccountError::FeatureNotFound(name.to_string()))
    }

    /// Sets a feature's value; a locked one cannot change.
    pub fn set_feature(&self, name: &str, value: bool) -> Result<FeatureView, AccountError> {
        let current = self.feature(name)?;
        if current.flag.locked && value != current.effective() {
            return Err(AccountError::FeatureLocked(current.effective()));
        }
        self.records.settings.update(|next| {
            next.features.insert(name.to_string(), value);
            Ok::<_, AccountError>(())
        })?;
        tracing::info!("feature {name} set to {value}");
        self.feature(name)
    }
}
