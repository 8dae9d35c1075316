//! Limits on the account endpoints, where each attempt costs an Argon2 hash and a wrong guess is
//! what an attacker is buying:
//!
//! - **Login back-off**, counted per client address and per username (whatever address the
//!   guesses come from): the first `login_free_failures` failures are free; from then on each
//!   further failure blocks that key for `base · 2^(failures − free)`, doubling up to
//!   `login_backoff_max`. An attempt counts as a failure from the moment it starts, so parallel
//!   guesses cannot all slip through before the first one fails; a successful login takes its
//!   attempt back and clears its username's record. A record is forgotten `FORGET_AFTER` after
//!   its last failure.
//! - **Registrations per address per hour** (every attempt counts).
//!
//! Both maps are bounded (`MAX_ENTRIES`); usernames are kept as keyed hashes, so an entry's size
//! does not depend on what a client sends; usernames are folded as the store folds them.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ratelimit::{make_room, RateLimited};

/// Configurable account limits.
#[derive(Debug, Clone, Copy)]
pub struct AccountLimits {
    /// Failed logins (per address and per username) before back-off starts.
    pub login_free_failures: u32,
    /// The first back-off; each further failure doubles it.
    pub login_backoff_base: Duration,
    /// The longest back-off.
    pub login_backoff_max: Duration,
    /// Registration attempts per client address per hour.
    pub registrations_per_hour: u32,
}

impl Default for AccountLimits {
    fn default() -> Self {
        AccountLimits {
            login_free_failures: 5,
            login_backoff_base: Duration::from_secs(1),
            login_backoff_max: Duration::from_secs(60),
            registrations_per_hour: 20,
        }
    }
}

/// A failure record is forgotten this long after its last failure.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// The registration window.
const REGISTRATION_WINDOW: Duration = Duration::from_secs(3600);
/// Most records per map (a record is ~40 bytes: a few MB at most).
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Addr(IpAddr),
    /// Keyed hash of the case-folded username.
    Username(u64),
    /// Refused registrations of one (folded) username: asking again and again whether a name
    /// is taken backs off like failed logins do.
    Registering(u64),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    reset_at: Instant,
    used: u32,
}

#[derive(Default)]
struct State {
    failures: HashMap<Key, Failures>,
    registrations: HashMap<IpAddr, Window>,
}

pub struct AccountLimiter {
    limits: AccountLimits,
    hasher: RandomState,
    state: Mutex<State>,
}

/// A login attempt that has been counted; report how it ended.
#[derive(Debug)]
pub struct LoginAttempt {
    addr: IpAddr,
    username: u64,
}

impl AccountLimiter {
    pub fn new(limits: AccountLimits) -> AccountLimiter {
        AccountLimiter {
            limits,
            hasher: RandomState::new(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("account limiter lock is never held across a panic")
    }

    fn username_key(&self, username: &str) -> u64 {
        // The store's own folding (NFKC + case): `ＡＬＩＣＥ` backs off with `alice`.
        self.hasher
            .hash_one(lodge_chat::names::username_key(username))
    }

    fn backoff(&self, count: u32) -> Duration {
        let l = &self.limits;
        if count < l.login_free_failures {
            return Duration::ZERO;
        }
        let doublings = (count - l.login_free_failures).min(30);
        l.login_backoff_base
            .saturating_mul(1 << doublings)
            .min(l.login_backoff_max)
    }

    /// `Err` while `key` backs off, naming the limit (`what` for the log and the message,
    /// `counted` for what its count counts).
    fn refuse_while_backing_off(
        &self,
        st: &State,
        key: Key,
        what: &str,
        counted: &str,
        bucket: &str,
        now: Instant,
    ) -> Result<(), Box<RateLimited>> {
        match st.failures.get(&key) {
            Some(f) if f.blocked_until > now => Err(Box::new(RateLimited {
                limit_name: format!(
                    "{what}: {} {counted}, back-off {:.0} s",
                    f.count,
                    self.backoff(f.count).as_secs_f64()
                ),
                retry_after: f.blocked_until - now,
                global: false,
                limit: self.limits.login_free_failures,
                bucket: bucket.into(),
                scope: "shared",
            })),
            _ => Ok(()),
        }
    }

    /// One more failure for `key` (forgotten after [`FORGET_AFTER`] without one); past the
    /// free ones, it backs off for [`AccountLimiter::backoff`].
    fn count_failure(&self, st: &mut State, key: Key, now: Instant) {
        if !st.failures.contains_key(&key) {
            make_room(
                &mut st.failures,
                MAX_ENTRIES,
                |f| f.last + FORGET_AFTER,
                now,
            );
        }
        let f = st.failures.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: now,
        });
        if now.duration_since(f.last) > FORGET_AFTER {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        f.blocked_until = now + self.backoff(f.count);
    }

    /// Refuse the login if the address or the username is backing off; otherwise count the
    /// attempt as a failure until [`AccountLimiter::login_succeeded`] says otherwise.
    pub fn begin_login(
        &self,
        now: Instant,
        addr: IpAddr,
        username: &str,
    ) -> Result<LoginAttempt, Box<RateLimited>> {
        let attempt = LoginAttempt {
            addr,
            username: self.username_key(username),
        };
        let keys = [
            (Key::Addr(addr), "login failures from this address"),
            (
                Key::Username(attempt.username),
                "login failures for this username",
            ),
        ];
        let mut st = self.state();
        for (key, name) in keys {
            self.refuse_while_backing_off(&st, key, name, "failures", "login", now)?;
        }
        for (key, _) in keys {
            self.count_failure(&mut st, key, now);
        }
        Ok(attempt)
    }

    /// The login succeeded: the address gets its attempt back, the username starts afresh.
    pub fn login_succeeded(&self, attempt: LoginAttempt) {
        let mut st = self.state();
        st.failures.remove(&Key::Username(attempt.username));
        if let Some(f) = st.failures.get_mut(&Key::Addr(attempt.addr)) {
            f.count = f.count.saturating_sub(1);
            if f.count < self.limits.login_free_failures {
                f.blocked_until = f.last;
            }
        }
    }

    /// The password was never checked (the hashing pool was full, the store failed): the
    /// attempt is given back to both the address and the username.
    pub fn login_unchecked(&self, attempt: LoginAttempt) {
        let mut st = self.state();
        for key in [Key::Addr(attempt.addr), Key::Username(attempt.username)] {
            if let Some(f) = st.failures.get_mut(&key) {
                f.count = f.count.saturating_sub(1);
                if f.count < self.limits.login_free_failures {
                    f.blocked_until = f.last;
                }
            }
        }
    }

    /// Count a registration attempt of `username` from `addr`; refuse past the address's
    /// hourly limit, or while the username backs off after refused registrations.
    pub fn begin_registration(
        &self,
        now: Instant,
        addr: IpAddr,
        username: &str,
    ) -> Result<(), Box<RateLimited>> {
        let limit = self.limits.registrations_per_hour;
        let name = Key::Registering(self.username_key(username));
        let mut st = self.state();
        self.refuse_while_backing_off(
            &st,
            name,
            "refused registrations of this username",
            "refusals",
            "register",
            now,
        )?;
        if !st.registrations.contains_key(&addr) {
            make_room(&mut st.registrations, MAX_ENTRIES, |w| w.reset_at, now);
        }
        let w = st.registrations.entry(addr).or_insert(Window {
            reset_at: now + REGISTRATION_WINDOW,
            used: 0,
        });
        if now >= w.reset_at {
            *w = Window {
                reset_at: now + REGISTRATION_WINDOW,
                used: 0,
            };
        }
        if w.used >= limit {
            return Err(Box::new(RateLimited {
                limit_name: format!("registrations from this address: {limit} per hour"),
                retry_after: w.reset_at - now,
                global: false,
                limit,
                bucket: "register".into(),
                scope: "shared",
            }));
        }
        w.used += 1;
        Ok(())
    }

    /// The registration of `username` was refused (taken, or invalid): count it against the
    /// username, with the login back-off's free refusals and doubling.
    pub fn registration_refused(&self, now: Instant, username: &str) {
        let key = Key::Registering(self.username_key(username));
        self.count_failure(&mut self.state(), key, now);
    }

    /// The registration never reached hashing (the pool was full, the store failed): give the
    /// attempt back.
    pub fn registration_unchecked(&self, addr: IpAddr) {
        if let Some(w) = self.state().registrations.get_mut(&addr) {
            w.used = w.used.saturating_sub(1);
        }
    }

    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let st = self.state();
        (st.failures.len(), st.registrations.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failures_back_off_doubling_to_a_cap_per_username_across_addresses() {
        let l = AccountLimiter::new(AccountLimits::default());
        let t0 = Instant::now();
        // Five free failures for "alice", each from another address.
        for i in 0..5 {
            let a = ip(&format!("192.0.2.{i}"));
            assert!(l.begin_login(t0, a, "alice").is_ok(), "failure {i}");
        }
        // The fifth failure started a 1 s back-off for the username, from any address.
        let r = l.begin_login(t0, ip("198.51.100.1"), "ALICE ").unwrap_err();
        assert_eq!(r.retry_after, Duration::from_secs(1));
        assert!(r.limit_name.contains("username"), "{}", r.limit_name);
        // Folded as the store folds usernames: the fullwidth spelling is the same account.
        assert!(l.begin_login(t0, ip("198.51.100.2"), "ａｌｉｃｅ").is_err());
        // Other usernames are not affected.
        assert!(l.begin_login(t0, ip("198.51.100.1"), "bob").is_ok());
        // After it: the next failure doubles it, and so on up to the cap.
        let mut t = t0;
        let mut waits = Vec::new();
        for i in 0..10 {
            t += waits.last().copied().unwrap_or(Duration::from_secs(1));
            let a = ip(&format!("203.0.113.{i}"));
            l.begin_login(t, a, "alice").unwrap();
            waits.push(l.begin_login(t, a, "alice").unwrap_err().retry_after);
        }
        let secs: Vec<u64> = waits.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60, 60, 60]);
    }

    #[test]
    fn an_address_backs_off_across_usernames_and_success_gives_the_attempt_back() {
        let l = AccountLimiter::new(AccountLimits::default());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        // Many successful logins from one address never back off.
        for _ in 0..50 {
            let at = l.begin_login(t0, a, "carol").unwrap();
            l.login_succeeded(at);
        }
        for u in ["u1", "u2", "u3", "u4", "u5"] {
            l.begin_login(t0, a, u).unwrap();
        }
        let r = l.begin_login(t0, a, "u6").unwrap_err();
        assert!(r.limit_name.contains("address"), "{}", r.limit_name);
        // Another address is free to try.
        assert!(l.begin_login(t0, ip("192.0.2.2"), "u6").is_ok());
        // An attempt whose password was never checked is given back.
        let b = ip("192.0.2.3");
        for _ in 0..20 {
            let at = l.begin_login(t0, b, "dave").unwrap();
            l.login_unchecked(at);
        }
        // Records are forgotten.
        let later = t0 + FORGET_AFTER + Duration::from_secs(2);
        assert!(l.begin_login(later, a, "u7").is_ok());
    }

    #[test]
    fn registrations_per_address_per_hour() {
        let l = AccountLimiter::new(AccountLimits {
            registrations_per_hour: 3,
            ..Default::default()
        });
        let t0 = Instant::now();
        for i in 0..3 {
            l.begin_registration(t0, ip("192.0.2.1"), &format!("n{i}"))
                .unwrap();
        }
        let r = l.begin_registration(t0, ip("192.0.2.1"), "n9").unwrap_err();
        assert_eq!(r.retry_after, REGISTRATION_WINDOW);
        l.begin_registration(t0, ip("192.0.2.2"), "n9").unwrap();
        l.begin_registration(t0 + REGISTRATION_WINDOW, ip("192.0.2.1"), "n9")
            .unwrap();
    }

    #[test]
    fn refused_registrations_of_one_username_back_off_across_addresses() {
        let l = AccountLimiter::new(AccountLimits::default());
        let t0 = Instant::now();
        for i in 0..5 {
            let a = ip(&format!("192.0.2.{}", i + 1));
            l.begin_registration(t0, a, "taken").unwrap();
            l.registration_refused(t0, "taken");
        }
        let r = l
            .begin_registration(t0, ip("198.51.100.1"), "ＴＡＫＥＮ")
            .unwrap_err();
        assert_eq!(r.retry_after, Duration::from_secs(1), "{}", r.limit_name);
        assert!(r.limit_name.contains("registrations of this username"));
        assert!(
            l.begin_registration(t0, ip("198.51.100.1"), "other")
                .is_ok(),
            "other names are not held up"
        );
        assert!(l
            .begin_registration(t0 + Duration::from_secs(1), ip("198.51.100.1"), "taken")
            .is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let l = AccountLimiter::new(AccountLimits::default());
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 5_000) {
            let a = IpAddr::from(i.to_be_bytes());
            let _ = l.begin_login(t0, a, &format!("user{i}"));
            let _ = l.begin_registration(t0, a, "x");
        }
        let (f, r) = l.sizes();
        assert!(f <= MAX_ENTRIES && r <= MAX_ENTRIES, "{f} {r}");
    }
}
