//! Per-user login backoff: after a few consecutive failures for one user, each further attempt for
//! that user must wait, twice as long each time (up to a cap); a success clears the record.
//!
//! This complements the per-client rate limit: an attacker spreading guesses over many addresses
//! still cannot try one user's password faster than the backoff allows. Only existing users are
//! tracked, so the table is bounded by the user list.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Consecutive failures allowed before the first wait.
const FREE_FAILURES: u32 = 5;
/// The first wait; doubled with every further failure.
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest wait.
const MAX_DELAY: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct LoginBackoff {
    users: Mutex<HashMap<String, Failures>>,
}

struct Failures {
    count: u32,
    blocked_until: Instant,
}

impl LoginBackoff {
    /// `Err(wait)` while `user_id` must wait before the next attempt.
    pub fn check(&self, user_id: &str) -> Result<(), Duration> {
        let users = crate::support::lock(&self.users);
        match users.get(user_id) {
            Some(f) if f.blocked_until > Instant::now() => Err(f.blocked_until - Instant::now()),
            _ => Ok(()),
        }
    }

    pub fn failed(&self, user_id: &str) {
        let mut users = crate::support::lock(&self.users);
        let failures = users.entry(user_id.to_string()).or_insert(Failures {
            count: 0,
            blocked_until: Instant::now(),
        });
        failures.count = failures.count.saturating_add(1);
        if let Some(over) = failures.count.checked_sub(FREE_FAILURES) {
            let delay = FIRST_DELAY.saturating_mul(1 << over.min(16)).min(MAX_DELAY);
            failures.blocked_until = Instant::now() + delay;
        }
    }

    pub fn succeeded(&self, user_id: &str) {
        let mut users = crate::support::lock(&self.users);
        users.remove(user_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_double_after_the_free_failures_and_success_clears() {
        let backoff = LoginBackoff::default();
        for _ in 0..FREE_FAILURES - 1 {
            backoff.failed("u");
            assert!(backoff.check("u").is_ok());
        }
        backoff.failed("u");
        assert_eq!(backoff.check("u"), Err(FIRST_DELAY));
        assert!(backoff.check("other").is_ok(), "per user");
        tokio::time::advance(FIRST_DELAY).await;
        assert!(backoff.check("u").is_ok());
        backoff.failed("u");
        assert_eq!(backoff.check("u"), Err(FIRST_DELAY * 2));
        for _ in 0..40 {
            backoff.failed("u");
        }
        assert_eq!(backoff.check("u"), Err(MAX_DELAY), "capped");
        backoff.succeeded("u");
        assert!(backoff.check("u").is_ok());
    }
}
