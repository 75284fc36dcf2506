//! Per-client rate limits (new names minted, login attempts): governor's keyed limiter, whose table
//! forgets clients that have refilled their budget every [`SWEEP_EVERY`] checks, so it stays
//! bounded by the clients seen between two sweeps however many addresses a flood uses.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

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
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(&client).is_ok()
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
