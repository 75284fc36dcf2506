//! Who may have a password checked now. Two rules, on top of the per-client rate limit:
//!
//! - **Per user and client** (an address, or an IPv6 /64): 5 consecutive failures are free; after
//!   that each further attempt from that client for that user waits, 1 s, then twice as long each
//!   time, up to 5 minutes. A success clears the record. Attempts count *as they start*, not when
//!   their check ends: however many arrive at once, a client gets its 5 free checks and then one at
//!   a time, after the wait.
//! - **Per user, across clients**: checks from clients where the user has not logged in lately
//!   draw on one bucket per user, 10 at once and then 1 a second; a check that finds the right
//!   password gives its share back. A flood of wrong passwords from many addresses therefore gets
//!   about one guess a second, and slows the user's own logins from a new address by about a second
//!   (a refused attempt says when to retry), but stops none for minutes.
//!
//! A client where the user logged in successfully within [`TRUSTED_FOR`] skips the per-user
//! bucket, so an attacker elsewhere cannot slow the admin's own machine at all. The bucket belongs
//! to the password: a new one (`corral reset-password`, `changepassword`) starts a full bucket.
//! Everything is in memory and bounded (least recently used records go first).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::sync::Cache;
use tokio::time::Instant;

use crate::limits::host_key;

/// Consecutive failures allowed per user and client before the first wait.
pub const FREE_FAILURES: u32 = 5;
/// The first wait; doubled with every further failure.
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest wait.
const MAX_DELAY: Duration = Duration::from_secs(300);
/// Checks per user at once from clients without a recent success, then one per [`USER_REFILL`].
pub const USER_BURST: u32 = 10;
pub const USER_REFILL: Duration = Duration::from_secs(1);
/// How long a client stays trusted for a user after a successful login.
const TRUSTED_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most (user, client) records kept, failing and trusted each.
const MAX_RECORDS: u64 = 100_000;

/// One user seen from one client.
type Pair = (String, IpAddr);

#[derive(Debug, Default)]
struct Failures {
    /// Consecutive failures, including the attempts still being checked.
    count: u32,
    in_flight: u32,
    blocked_until: Option<Instant>,
}

/// A user's checks from clients it is not trusted at: up to `burst`, refilled one per `refill`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct LoginBackoff {
    failures: Cache<Pair, Arc<Mutex<Failures>>>,
    trusted: Cache<Pair, ()>,
    /// Keyed by user id and password version.
    per_user: Cache<String, Arc<Mutex<Bucket>>>,
    burst: f64,
    refill: Duration,
}

impl Default for LoginBackoff {
    fn default() -> Self {
        Self::new(USER_BURST, USER_REFILL)
    }
}

/// A password check admitted by [`LoginBackoff::begin`]: counted as a failure until it is told
/// otherwise; dropped untold (the check never ran), it is not counted at all.
pub struct Attempt<'a> {
    backoff: &'a LoginBackoff,
    pair: Pair,
    record: Arc<Mutex<Failures>>,
    /// The user's bucket, when the check was drawn from it.
    bucket: Option<Arc<Mutex<Bucket>>>,
    finished: bool,
}

impl LoginBackoff {
    pub fn new(user_burst: u32, user_refill: Duration) -> Self {
        Self {
            failures: Cache::builder()
                .max_capacity(MAX_RECORDS)
                .time_to_idle(MAX_DELAY * 2)
                .build(),
            trusted: Cache::builder()
                .max_capacity(MAX_RECORDS)
                .time_to_live(TRUSTED_FOR)
                .build(),
            per_user: Cache::builder()
                .max_capacity(MAX_RECORDS)
                .time_to_idle(user_refill.saturating_mul(user_burst.max(1)) + MAX_DELAY)
                .build(),
            burst: f64::from(user_burst.max(1)),
            refill: user_refill,
        }
    }

    /// Takes one check from `user`'s bucket, or says how long until there is one.
    fn draw(&self, user: String) -> Result<Arc<Mutex<Bucket>>, Duration> {
        let burst = self.burst;
        let bucket = self.per_user.get_with(user, || {
            Arc::new(Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }))
        });
        {
            let mut state = crate::support::lock(&bucket);
            let now = Instant::now();
            let refilled = now.duration_since(state.at).as_secs_f64() / self.refill.as_secs_f64();
            state.tokens = (state.tokens + refilled).min(self.burst);
            state.at = now;
            if state.tokens < 1.0 {
                return Err(self.refill.mul_f64(1.0 - state.tokens));
            }
            state.tokens -= 1.0;
        }
        Ok(bucket)
    }

    /// Admits a check of `user_id`'s password (version `version`) for `client`, or says how long
    /// to wait first.
    pub fn begin(
        &self,
        user_id: &str,
        version: u64,
        client: IpAddr,
    ) -> Result<Attempt<'_>, Duration> {
        let pair = (user_id.to_string(), host_key(client));
        let record = self.failures.get_with(pair.clone(), Default::default);
        let mut failures = crate::support::lock(&record);
        if failures.count >= FREE_FAILURES {
            let wait = failures.blocked_until.map_or(FIRST_DELAY, |until| {
                until.saturating_duration_since(Instant::now())
            });
            if failures.in_flight > 0 || !wait.is_zero() {
                return Err(wait.max(Duration::from_millis(1)));
            }
        }
        let bucket = match self.trusted.contains_key(&pair) {
            true => None,
            false => Some(self.draw(format!("{user_id}#{version}"))?),
        };
        failures.count += 1;
        failures.in_flight += 1;
        drop(failures);
        Ok(Attempt {
            backoff: self,
            pair,
            record,
            bucket,
            finished: false,
        })
    }
}

impl Attempt<'_> {
    /// The password did not match: the attempt stays counted, and past the free ones the client
    /// waits before its next.
    pub fn failed(mut self) {
        self.finished = true;
        let mut failures = crate::support::lock(&self.record);
        failures.in_flight -= 1;
        if let Some(over) = failures.count.checked_sub(FREE_FAILURES) {
            let delay = FIRST_DELAY.saturating_mul(1 << over.min(16)).min(MAX_DELAY);
            failures.blocked_until = Some(Instant::now() + delay);
        }
    }

    /// The password matched: the record is cleared, the check given back to the user's bucket and
    /// the client trusted for this user.
    pub fn succeeded(mut self) {
        self.finished = true;
        self.give_back();
        self.backoff.failures.invalidate(&self.pair);
        self.backoff.trusted.insert(self.pair.clone(), ());
    }

    fn give_back(&self) {
        if let Some(bucket) = &self.bucket {
            let mut state = crate::support::lock(bucket);
            state.tokens = (state.tokens + 1.0).min(self.backoff.burst);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.give_back();
            let mut failures = crate::support::lock(&self.record);
            failures.in_flight -= 1;
            failures.count -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_gets_its_free_failures_then_waits_doubling() {
        let backoff = LoginBackoff::new(1000, Duration::from_millis(1));
        for _ in 0..FREE_FAILURES {
            backoff.begin("u", 0, ip(1)).unwrap().failed();
        }
        assert_eq!(backoff.begin("u", 0, ip(1)).err(), Some(FIRST_DELAY));
        assert!(backoff.begin("u", 0, ip(2)).is_ok(), "another client");
        assert!(backoff.begin("other", 0, ip(1)).is_ok(), "another user");
        tokio::time::advance(FIRST_DELAY).await;
        backoff.begin("u", 0, ip(1)).unwrap().failed();
        assert_eq!(backoff.begin("u", 0, ip(1)).err(), Some(FIRST_DELAY * 2));
        for _ in 0..20 {
            tokio::time::advance(MAX_DELAY).await;
            backoff.begin("u", 0, ip(1)).unwrap().failed();
        }
        assert_eq!(
            backoff.begin("u", 0, ip(1)).err(),
            Some(MAX_DELAY),
            "capped"
        );
        tokio::time::advance(MAX_DELAY).await;
        backoff.begin("u", 0, ip(1)).unwrap().succeeded();
        for _ in 0..FREE_FAILURES {
            backoff.begin("u", 0, ip(1)).unwrap().failed();
        }
    }

    /// Attempts count as they start: many at once from one client get the free ones only, and an
    /// attempt whose check never ran (the caller went away) counts for nothing.
    #[tokio::test(start_paused = true)]
    async fn attempts_in_flight_count() {
        let backoff = LoginBackoff::new(1000, Duration::from_millis(1));
        let admitted: Vec<_> = (0..50)
            .filter_map(|_| backoff.begin("u", 0, ip(1)).ok())
            .collect();
        assert_eq!(admitted.len(), FREE_FAILURES as usize);
        drop(admitted);
        let admitted: Vec<_> = (0..50)
            .filter_map(|_| backoff.begin("u", 0, ip(1)).ok())
            .collect();
        assert_eq!(
            admitted.len(),
            FREE_FAILURES as usize,
            "dropped ones gave back"
        );
        for attempt in admitted {
            attempt.failed();
        }
        tokio::time::advance(FIRST_DELAY).await;
        let one = backoff.begin("u", 0, ip(1)).unwrap();
        assert!(
            backoff.begin("u", 0, ip(1)).is_err(),
            "past the free ones: one at a time"
        );
        one.failed();
    }

    /// Many clients share the user's bucket; a client where the user logged in skips it, and a new
    /// password version starts a new bucket.
    #[tokio::test]
    async fn clients_without_a_success_share_one_bucket_per_user() {
        let backoff = LoginBackoff::new(3, Duration::from_secs(3600));
        backoff.begin("u", 0, ip(200)).unwrap().succeeded();
        let admitted = (1..=100u8)
            .filter_map(|i| backoff.begin("u", 0, ip(i)).ok())
            .map(Attempt::failed)
            .count();
        assert_eq!(
            admitted, 3,
            "the trusted client's login gave its check back"
        );
        let wait = backoff.begin("u", 0, ip(101)).err().unwrap();
        assert!(wait > Duration::from_secs(3000), "{wait:?}");
        assert!(backoff.begin("u", 0, ip(200)).is_ok(), "trusted");
        assert!(
            backoff.begin("u", 1, ip(102)).is_ok(),
            "a new password, a new bucket"
        );
    }
}
