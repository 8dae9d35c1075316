//! Password hashing and verification off the async runtime.
//!
//! Argon2 is deliberately slow (tens of milliseconds of one core per call). Run on a runtime
//! thread, eight parallel logins stalled every other request on that thread (`/healthz` p50 went
//! from 1.3 ms to 89 ms). Here every hash and verify runs on one of `concurrency` threads of the
//! pool's own (half the cores by default), and at most `concurrency * QUEUE_PER_SLOT` more wait:
//! beyond that the caller gets [`ChatError::Busy`] at once (503 with `Retry-After` on the wire)
//! instead of an unbounded queue.
//!
//! A login for an unknown username verifies against a dummy hash with the same parameters, so the
//! answer takes as long as a wrong password and does not reveal which usernames exist.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use std::cell::RefCell;

use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use crate::error::ChatError;

/// Callers that may wait for a hashing slot, per slot; more get `Busy`.
pub const QUEUE_PER_SLOT: usize = 4;

/// The hash of a random password, verified against when the username is unknown.
static DUMMY_HASH: OnceLock<String> = OnceLock::new();

fn dummy_hash() -> &'static str {
    DUMMY_HASH.get_or_init(|| {
        let secret: [u8; 32] = rand::random();
        hash_phc(&secret).expect("argon2 hashes 32 bytes with default parameters")
    })
}

/// The largest working area a stored hash may ask for (1 GiB; ours use 19 MiB).
const MAX_BLOCKS: usize = 1 << 20;

thread_local! {
    /// This thread's Argon2 working area, kept between calls. Allocating it per call (as
    /// `PasswordHasher` does) left each freed 19 MiB area in the thread's malloc arena, whose
    /// dynamic mmap threshold had risen past it: a node grew by ~19 MB per login until its
    /// arenas filled.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Argon2 in the thread's working area; the same PHC result as `PasswordHasher::hash_password`
/// (salt decoded from its B64 form, output length from the parameters).
fn compute<'a>(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: Salt<'a>,
) -> Result<PasswordHash<'a>, ChatError> {
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_buf)
        .map_err(|_| ChatError::Hash)?;
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let blocks = params.block_count();
    if blocks > MAX_BLOCKS {
        return Err(ChatError::Hash);
    }
    let params_string = ParamsString::try_from(&params).map_err(|_| ChatError::Hash)?;
    let argon = Argon2::new(algorithm, version, params);
    let output = MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        Output::init_with(output_len, |out| {
            argon
                .hash_password_into_with_memory(password, salt_bytes, out, &mut memory[..blocks])
                .map_err(|_| argon2::password_hash::Error::Crypto)
        })
    });
    Ok(PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: params_string,
        salt: Some(salt),
        hash: Some(output.map_err(|_| ChatError::Hash)?),
    })
}

/// A new PHC string (argon2id, default parameters, random salt).
fn hash_phc(password: &[u8]) -> Result<String, ChatError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    compute(
        Algorithm::default(),
        Version::default(),
        Params::default(),
        password,
        salt.as_salt(),
    )
    .map(|h| h.to_string())
}

/// Whether `password` matches the PHC string `stored` (its own algorithm and parameters).
fn verify_phc(password: &[u8], stored: &str) -> Result<bool, ChatError> {
    let parsed = PasswordHash::new(stored).map_err(|_| ChatError::Hash)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(ChatError::Hash);
    };
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|_| ChatError::Hash)?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|_| ChatError::Hash)?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).map_err(|_| ChatError::Hash)?;
    let computed = compute(algorithm, version, params, password, salt)?;
    // `Output`'s equality is constant-time.
    Ok(computed.hash == Some(expected))
}

/// Work for a hashing thread.
type Job = Box<dyn FnOnce() + Send>;

/// The bounded hashing pool: `concurrency` threads of its own (`lodge-argon2-N`), each with
/// one Argon2 working area it keeps (see `MEMORY`), so the memory hashing takes is
/// `concurrency` × 19 MiB however many logins come. (On tokio's blocking pool the threads, and
/// so the areas, would follow the load.)
pub struct Passwords {
    jobs: std::sync::mpsc::Sender<Job>,
    concurrency: usize,
    /// Jobs queued or running; at most `concurrency * (1 + QUEUE_PER_SLOT)`. Decremented when
    /// a job ends, not when its caller gives up, so abandoned requests cannot grow the queue.
    admitted: Arc<AtomicUsize>,
    /// Hashes and verifies running right now on the hashing threads.
    running: Arc<AtomicUsize>,
    /// Verifications run (real and dummy); tests use it to see both paths verify.
    verifications: AtomicU64,
    /// Calls refused because the pool and its queue were full.
    refused: AtomicU64,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("concurrency", &self.concurrency)
            .field("admitted", &self.admitted)
            .field("running", &self.running)
            .finish()
    }
}

/// Gives a job's place back however the job ends.
struct Done(Arc<AtomicUsize>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Passwords {
    /// A pool running at most `concurrency` hashes at once (0 means half the cores, at least
    /// one: a flood of logins, which anyone can send, leaves the other half to requests and
    /// media).
    pub fn new(concurrency: usize) -> Passwords {
        let concurrency = if concurrency == 0 {
            std::thread::available_parallelism()
                .map(|n| (n.get() / 2).max(1))
                .unwrap_or(1)
        } else {
            concurrency
        };
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..concurrency {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("lodge-argon2-{i}"))
                .spawn(move || loop {
                    // The guard is dropped before the job runs: the others may take the next.
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else {
                        return; // the pool was dropped
                    };
                    // A panicking hash fails its caller (the result channel closes), not the pool.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                })
                .expect("the OS gives a process a few threads at start-up");
        }
        Passwords {
            jobs,
            concurrency,
            admitted: Arc::new(AtomicUsize::new(0)),
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

    /// Compute the dummy hash now (on a hashing thread) so the first unknown-username login
    /// does not pay for it.
    pub fn prepare(&self) {
        let _ = self.jobs.send(Box::new(|| {
            dummy_hash();
        }));
    }

    /// Run `f` on a hashing thread; `Busy` if the threads and their queue are full.
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
        let done = Done(self.admitted.clone());
        let running = self.running.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _done = done;
            running.fetch_add(1, Ordering::Relaxed);
            let out = f();
            running.fetch_sub(1, Ordering::Relaxed);
            let _ = tx.send(out);
        });
        // A send fails only if every hashing thread is gone; the job (and its place) is dropped.
        self.jobs.send(job).map_err(|_| ChatError::Hash)?;
        rx.await.map_err(|_| ChatError::Hash)
    }

    /// Hash a new password (argon2id, random salt) into its PHC string.
    pub async fn hash(&self, password: &str) -> Result<String, ChatError> {
        let password = password.to_owned();
        self.run(move || hash_phc(password.as_bytes())).await?
    }

    /// Whether `password` matches `stored`. With no stored hash (unknown username) the password
    /// is verified against the dummy hash, taking the same time, and the answer is `false`.
    pub async fn verify(&self, password: &str, stored: Option<String>) -> Result<bool, ChatError> {
        let password = password.to_owned();
        self.verifications.fetch_add(1, Ordering::Relaxed);
        self.run(move || match stored {
            Some(hash) => verify_phc(password.as_bytes(), &hash),
            None => verify_phc(password.as_bytes(), dummy_hash()).map(|_| false),
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
    fn hashes_are_those_of_the_password_hasher_api() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        // Stored before this module existed: made by `PasswordHasher`, verified here.
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let old = Argon2::default()
            .hash_password(b"password-123", &salt)
            .unwrap()
            .to_string();
        assert!(verify_phc(b"password-123", &old).unwrap());
        assert!(!verify_phc(b"password-124", &old).unwrap());
        // Made here, verified by `PasswordVerifier`; and the same salt gives the same string.
        let new = hash_phc(b"password-123").unwrap();
        let parsed = PasswordHash::new(&new).unwrap();
        assert!(Argon2::default()
            .verify_password(b"password-123", &parsed)
            .is_ok());
        let again = compute(
            Algorithm::default(),
            Version::default(),
            Params::default(),
            b"password-123",
            salt.as_salt(),
        )
        .unwrap()
        .to_string();
        assert_eq!(again, old);
        // Other parameters (a smaller area) verify too, in the same thread's working area.
        let small = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(1024, 3, 1, Some(24)).unwrap(),
        )
        .hash_password(b"pw-pw-pw-pw", &salt)
        .unwrap()
        .to_string();
        assert!(verify_phc(b"pw-pw-pw-pw", &small).unwrap());
        assert!(verify_phc(b"pw-pw-pw-pw", "not a hash").is_err());
    }

    #[test]
    fn the_dummy_hash_has_the_parameters_of_real_hashes() {
        use argon2::password_hash::PasswordHasher;
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
