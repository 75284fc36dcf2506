//! Per-client rate limits (new names minted, login attempts): governor's keyed limiter, whose table
//! forgets clients that have refilled their budget every [`SWEEP_EVERY`] checks, so it stays
//! bounded by the clients seen between two sweeps however many addresses a flood uses.
//!
//! One place decides what "a client" is ([`host_key`]): an IPv4 address, or an IPv6 /64, so a host
//! cannot multiply its budget by cycling through the addresses of its own prefix.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Checks between two sweeps of idle clients.
const SWEEP_EVERY: u32 = 4096;

pub struct ClientLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU32,
}

impl ClientLimiter {
    pub fn new(quota: Quota) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota),
            checks: AtomicU32::new(0),
        }
    }

    /// Spends one unit of `client`'s budget; `false` when it has none left.
    pub fn allow(&self, client: IpAddr) -> bool {
        self.check(client).is_ok()
    }

    /// Spends one unit of `client`'s budget; `Err` says how long until the next unit.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(&host_key(client))
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The key a host is counted under: its address, or its /64 for IPv6 (one host's usual share).
pub fn host_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn an_ipv6_host_has_one_budget_per_64_and_mapped_v4_is_v4() {
        let limiter = ClientLimiter::new(Quota::per_hour(NonZeroU32::new(2).unwrap()));
        let in_prefix = |last: u16| IpAddr::from([0xfd00, 0, 0, 7, 0, 0, 0, last]);
        assert!(limiter.allow(in_prefix(1)));
        assert!(limiter.allow(in_prefix(2)));
        let refused = limiter.check(in_prefix(3));
        assert!(
            refused.is_err(),
            "a third address of the same /64 shares the budget"
        );
        assert!(
            refused.unwrap_err() > Duration::from_secs(60),
            "says how long to wait"
        );
        assert!(
            limiter.allow(IpAddr::from([0xfd00, 0, 0, 8, 0, 0, 0, 1])),
            "another /64"
        );

        let v4: IpAddr = [192, 0, 2, 1].into();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(limiter.allow(v4));
        assert!(limiter.allow(mapped));
        assert!(!limiter.allow(v4), "the mapped form is the same client");
    }
}
