//! The gate every password hash and check passes through. argon2id is deliberately expensive (about
//! 19 MiB and tens of milliseconds each), so unbounded it lets anyone with a TCP connection exhaust
//! memory: a few hundred logins at once, for users that need not exist, would each hold their 19 MiB
//! at the same time. The gate runs as many as there are cores; others wait briefly, then are
//! turned away (`Busy`, which the API answers with 503 and `Retry-After`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::secrets::{hash_password, verify_password};

/// How long a password operation may wait for a free slot before the caller is turned away.
const WAIT: Duration = Duration::from_secs(2);

/// All slots stayed busy for the whole wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

pub struct PasswordGate {
    /// One permit per argon2 run allowed at once. A permit moves into the blocking job, so a
    /// client that hangs up mid-check does not free its slot before the work is really done.
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl Default for PasswordGate {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new(cores, WAIT)
    }
}

impl PasswordGate {
    pub fn new(slots: usize, wait: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            wait,
        }
    }

    /// Whether `password` matches the PHC `hash`. Callers with no real hash (an unknown user) pass a
    /// dummy one, so that they cost, and wait, exactly as much.
    pub async fn verify(&self, password: &str, hash: &str) -> Result<bool, Busy> {
        let (password, hash) = (password.to_string(), hash.to_string());
        self.run(move || {
            crate::metrics::metrics().password_checks.inc();
            verify_password(&password, &hash)
        })
        .await
    }

    /// An argon2id hash of `password`.
    pub async fn hash(&self, password: &str) -> Result<String, Busy> {
        let password = password.to_string();
        self.run(move || hash_password(&password)).await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let permit = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
        .map_err(|_| Busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_most_the_slots_run_and_the_rest_are_turned_away() {
        let gate = Arc::new(PasswordGate::new(1, Duration::from_millis(50)));
        let hash = hash_password("a long enough password");
        let holder = gate.slots.clone().acquire_owned().await.unwrap();
        assert_eq!(gate.verify("x", &hash).await, Err(Busy), "no slot free");
        assert_eq!(gate.hash("x").await.map(|_| ()), Err(Busy));
        drop(holder);
        assert_eq!(gate.verify("a long enough password", &hash).await, Ok(true));
        assert_eq!(gate.verify("wrong", &hash).await, Ok(false));
        assert_eq!(gate.slots.available_permits(), 1, "slots come back");
    }
}
