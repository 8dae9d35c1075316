//! Password hashing and verification off the async runtime.
//!
//! Argon2 is deliberately slow (tens of milliseconds of one core per call). Run on a runtime
//! thread, eight parallel logins stalled every other request on that thread (`/healthz` p50 went
//! from 1.3 ms to 89 ms). Here every hash and verify runs on tokio's blocking pool, at most
//! `concurrency` at a time (a semaphore, sized to the cores by default), and at most
//! `concurrency * QUEUE_PER_SLOT` callers wait for a slot: beyond that the caller gets
//! [`ChatError::Busy`] at once (503 with `Retry-After` on the wire) instead of an unbounded queue.
//!
//! A login for an unknown username verifies against a dummy hash with the same parameters, so the
//! answer takes as long as a wrong password and does not reveal which usernames exist.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

use crate::error::ChatError;

/// Callers that may wait for a hashing slot, per slot; more get `Busy`.
pub const QUEUE_PER_SLOT: usize = 4;

/// The hash of a random password, verified against when the username is unknown.
static DUMMY_HASH: OnceLock<String> = OnceLock::new();

fn dummy_hash() -> &'static str {
    DUMMY_HASH.get_or_init(|| {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let secret: [u8; 32] = rand::random();
        Argon2::default()
            .hash_password(&secret, &salt)
            .expect("argon2 hashes 32 bytes with default parameters")
            .to_string()
    })
}

/// The bounded hashing pool. One per store; cheap to share (`Arc`).
#[derive(Debug)]
pub struct Passwords {
    /// Permits = hashes allowed to run at once.
    slots: Arc<Semaphore>,
    concurrency: usize,
    /// Callers holding or waiting for a slot; at most `concurrency * (1 + QUEUE_PER_SLOT)`.
    admitted: AtomicUsize,
    /// Hashes and verifies running right now on the blocking pool.
    running: Arc<AtomicUsize>,
    /// Verifications run (real and dummy); tests use it to see both paths verify.
    verifications: AtomicU64,
    /// Calls refused because the pool and its queue were full.
    refused: AtomicU64,
}

impl Passwords {
    /// A pool running at most `concurrency` hashes at once (0 means one per core).
    pub fn new(concurrency: usize) -> Passwords {
        let concurrency = if concurrency == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            concurrency
        };
        Passwords {
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            admitted: AtomicUsize::new(0),
            running: Arc::new(AtomicUsize::new(0)),
            verifications: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Hashes or verifies running now (off the runtime threads).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Verifications run so far, dummy ones included.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Calls refused with `Busy` so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Compute the dummy hash now (on the blocking pool) so the first unknown-username login
    /// does not pay for it.
    pub fn prepare(&self) {
        tokio::task::spawn_blocking(|| {
            dummy_hash();
        });
    }

    /// Run `f` on the blocking pool once a slot is free; `Busy` if too many already wait.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ChatError> {
        let limit = self.concurrency * (1 + QUEUE_PER_SLOT);
        if self
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_err()
        {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(ChatError::Busy {
                what: "password hashing",
                retry_after_secs: 1,
            });
        }
        // Released however this future ends (finished, or dropped while waiting).
        struct Admitted<'a>(&'a AtomicUsize);
        impl Drop for Admitted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _admitted = Admitted(&self.admitted);
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the hashing semaphore is never closed");
        let running = self.running.clone();
        running.fetch_add(1, Ordering::Relaxed);
        let out = tokio::task::spawn_blocking(move || {
            let out = f();
            running.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            out
        })
        .await
        .map_err(|_| ChatError::Hash)?;
        Ok(out)
    }

    /// Hash a new password (argon2id, random salt) into its PHC string.
    pub async fn hash(&self, password: &str) -> Result<String, ChatError> {
        let password = password.to_owned();
        self.run(move || {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|_| ChatError::Hash)
        })
        .await?
    }

    /// Whether `password` matches `stored`. With no stored hash (unknown username) the password
    /// is verified against the dummy hash, taking the same time, and the answer is `false`.
    pub async fn verify(&self, password: &str, stored: Option<String>) -> Result<bool, ChatError> {
        let password = password.to_owned();
        self.verifications.fetch_add(1, Ordering::Relaxed);
        self.run(move || {
            let real = stored.is_some();
            let hash = stored.unwrap_or_else(|| dummy_hash().to_owned());
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return Err(ChatError::Hash);
            };
            let ok = Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            Ok(real && ok)
        })
        .await?
    }
}

impl Default for Passwords {
    fn default() -> Self {
        Passwords::new(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dummy_hash_has_the_parameters_of_real_hashes() {
        let dummy = PasswordHash::new(dummy_hash()).unwrap();
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let real_s = Argon2::default()
            .hash_password(b"password-123", &salt)
            .unwrap()
            .to_string();
        let real = PasswordHash::new(&real_s).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn hashing_runs_off_the_runtime_thread() {
        // On a current-thread runtime a hash computed inline would stop every other task until
        // it finished: here a timer keeps ticking while hashes run.
        let p = Arc::new(Passwords::new(1));
        let h = p.hash("password-123").await.unwrap();
        let job = {
            let p = p.clone();
            tokio::spawn(async move {
                for _ in 0..3 {
                    p.verify("wrong-password", Some(h.clone())).await.unwrap();
                }
            })
        };
        let mut ticks_while_running = 0;
        while !job.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            if p.running() > 0 {
                ticks_while_running += 1;
            }
        }
        assert!(
            ticks_while_running >= 2,
            "the runtime thread ran only {ticks_while_running} ticks while hashes ran"
        );
        assert_eq!(p.verifications(), 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_pool_refuses_instead_of_queueing_without_bound() {
        let p = Arc::new(Passwords::new(1));
        let calls: Vec<_> = (0..(2 + QUEUE_PER_SLOT) * 2)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.hash("password-123").await })
            })
            .collect();
        let mut busy = 0;
        let mut ok = 0;
        for c in calls {
            match c.await.unwrap() {
                Ok(_) => ok += 1,
                Err(ChatError::Busy { .. }) => busy += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ok, 1 + QUEUE_PER_SLOT, "one running, the queue waiting");
        assert_eq!(busy, (2 + QUEUE_PER_SLOT) * 2 - ok);
        assert_eq!(p.refused(), busy as u64);
    }

    #[tokio::test]
    async fn unknown_users_take_the_verify_path() {
        let p = Passwords::new(1);
        assert!(!p.verify("whatever-pass", None).await.unwrap());
        let h = p.hash("password-123").await.unwrap();
        assert!(!p.verify("wrong-password", Some(h.clone())).await.unwrap());
        assert!(p.verify("password-123", Some(h)).await.unwrap());
        assert_eq!(p.verifications(), 3);
    }
}
