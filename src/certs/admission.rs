//! Which names may get a certificate of their own: valid, on the allow-list, and within the mint
//! rates (overall, and per client: an IPv4 address or an IPv6 /64, so one client cannot use up the
//! overall rate). Refusals are counted, and logged at most once a second so that a flood of names
//! cannot flood the log too.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::CertError;
use crate::limits::ClientLimiter;
use crate::pki::{AllowList, NameError, SubjectName};

/// Why a name did not get a certificate of its own.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("invalid name: {0}")]
    Invalid(NameError),
    #[error("not in allowed-names")]
    NotAllowed,
    #[error("max-names reached")]
    Capacity,
    #[error("mint-rate exceeded")]
    RateLimited,
    #[error("mint-rate-per-client exceeded")]
    ClientRateLimited,
    #[error("minting failed: {0}")]
    MintFailed(#[source] Arc<CertError>),
}

impl From<CertError> for Refusal {
    fn from(e: CertError) -> Self {
        Refusal::MintFailed(Arc::new(e))
    }
}

impl Refusal {
    /// The `reason` label of `corral_names_refused_total`.
    fn label(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) => "invalid",
            Refusal::NotAllowed => "not_allowed",
            Refusal::Capacity => "capacity",
            Refusal::RateLimited => "rate",
            Refusal::ClientRateLimited => "client_rate",
            Refusal::MintFailed(_) => "mint_failed",
        }
    }
}

pub struct Admission {
    allowed: AllowList,
    mint_limiter: Option<DefaultDirectRateLimiter>,
    client_mint_limiter: Option<ClientLimiter>,
    refusal_log_limiter: DefaultDirectRateLimiter,
}

fn per_second(rate: Option<u32>) -> Option<Quota> {
    rate.and_then(NonZeroU32::new).map(Quota::per_second)
}

impl Admission {
    /// `mint_rate` and `per_client` are mints per second; `None` or 0 is unlimited.
    pub fn new(allowed: AllowList, mint_rate: Option<u32>, per_client: Option<u32>) -> Self {
        Self {
            allowed,
            mint_limiter: per_second(mint_rate).map(RateLimiter::direct),
            client_mint_limiter: per_second(per_client).map(ClientLimiter::new),
            refusal_log_limiter: RateLimiter::direct(Quota::per_second(NonZeroU32::MIN)),
        }
    }

    /// Whether `name` is on the allow-list (the check that costs nothing, for the hot path).
    pub fn allows(&self, name: &SubjectName) -> bool {
        self.allowed.allows(name)
    }

    /// The checks a name passes before it may get a certificate: valid, and on the allow-list.
    pub fn admit(&self, name: Result<SubjectName, NameError>) -> Result<SubjectName, Refusal> {
        let name = name.map_err(Refusal::Invalid)?;
        match self.allowed.allows(&name) {
            true => Ok(name),
            false => Err(Refusal::NotAllowed),
        }
    }

    /// Spends one mint from `client`'s budget and then from the overall one.
    pub fn check_rate(&self, client: IpAddr) -> Result<(), Refusal> {
        if let Some(limiter) = &self.client_mint_limiter
            && !limiter.allow(client)
        {
            return Err(Refusal::ClientRateLimited);
        }
        match &self.mint_limiter {
            Some(limiter) if limiter.check().is_err() => Err(Refusal::RateLimited),
            _ => Ok(()),
        }
    }

    /// Counts a refusal and logs it (at most once a second), with what is served instead.
    pub fn log_refusal(&self, source: &str, refusal: &Refusal, served: &str) {
        crate::metrics::metrics()
            .names_refused
            .with_label_values(&[refusal.label()])
            .inc();
        if self.refusal_log_limiter.check().is_ok() {
            tracing::warn!(
                "{source} refused ({refusal}); serving {served} (further refusals within a second are not logged)"
            );
        }
    }
}
