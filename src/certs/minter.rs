//! Leaves for names, ready to serve: signed by the CA's leaf factory, wrapped by the config template,
//! counted and timed. Also the fallback certificate (the server's own addresses), served when nothing
//! better is allowed, and the renewal window every minted certificate is renewed within.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arc_swap::ArcSwap;

use super::CertError;
use super::template::{ConfigTemplate, Served};
use crate::pki::{LeafFactory, SubjectName};
use crate::support::unix_now;

/// How the log names the fallback certificate.
pub const FALLBACK_DESCRIPTION: &str =
    "the fallback certificate (localhost, 127.0.0.1, ::1 and the default-route IP)";

pub struct Minter {
    factory: LeafFactory,
    template: ConfigTemplate,
    /// Leaves expiring within this many seconds are re-minted on their next use.
    renew_window: AtomicI64,
    fallback: ArcSwap<Served>,
}

impl Minter {
    /// Mints the fallback certificate too, so that one always exists.
    pub fn new(
        factory: LeafFactory,
        template: ConfigTemplate,
        renew_window: i64,
    ) -> Result<Self, CertError> {
        let fallback = template.serve(factory.mint(&fallback_names())?)?;
        Ok(Self {
            factory,
            template,
            renew_window: AtomicI64::new(renew_window),
            fallback: ArcSwap::from_pointee(fallback),
        })
    }

    pub fn factory(&self) -> &LeafFactory {
        &self.factory
    }

    pub fn template(&self) -> &ConfigTemplate {
        &self.template
    }

    /// A new leaf for `names`, counted in `corral_certificates_minted_total`.
    pub fn mint(&self, names: &[SubjectName]) -> Result<Arc<Served>, CertError> {
        let metrics = crate::metrics::metrics();
        let timer = metrics.mint_seconds.start_timer();
        let served = Arc::new(self.template.serve(self.factory.mint(names)?)?);
        timer.observe_duration();
        metrics.minted.inc();
        Ok(served)
    }

    /// The renewal window, in seconds.
    pub fn renew_window(&self) -> i64 {
        self.renew_window.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn set_renew_window(&self, seconds: i64) {
        self.renew_window.store(seconds, Ordering::Relaxed);
    }

    /// Whether `served` is within the renewal window and must be made again.
    pub fn expiring(&self, served: &Served) -> bool {
        served.expires_within(unix_now(), self.renew_window())
    }

    /// The fallback certificate, renewed first if it is expiring.
    pub fn fallback(&self) -> Arc<Served> {
        let current = self.fallback.load_full();
        if self.expiring(&current)
            && let Ok(renewed) = self.mint(&fallback_names())
        {
            self.fallback.store(renewed.clone());
            return renewed;
        }
        current
    }
}

/// The fallback certificate's names: the server's own addresses.
fn fallback_names() -> Vec<SubjectName> {
    let mut names = vec![
        SubjectName::Dns("localhost".into()),
        SubjectName::ip([127, 0, 0, 1].into()),
        SubjectName::ip(std::net::Ipv6Addr::LOCALHOST.into()),
    ];
    names.extend(default_route_ip().map(SubjectName::ip));
    names
}

/// The IP of the default-route interface, as Kubernetes' `ChooseHostInterface` picks it.
pub fn default_route_ip() -> Option<IpAddr> {
    local_ip_address::local_ip().ok()
}
