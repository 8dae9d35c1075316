//! Limits on the account endpoints, where each attempt costs an Argon2 hash (or, for a token,
//! a store lookup) and a wrong guess is what an attacker is buying:
//!
//! - **Login back-off**, counted per client address and per username (whatever address the
//!   guesses come from): the first `login_free_failures` failures are free; from then on each
//!   further failure blocks that key for `base · 2^(failures − free)`, doubling up to
//!   `login_backoff_max`. An attempt counts as a failure from the moment it starts, so parallel
//!   guesses cannot all slip through before the first one fails; a successful login takes its
//!   attempt back and clears its username's record. A record is forgotten `FORGET_AFTER` after
//!   its last failure. Refused registrations of one username back off the same way.
//! - **Registrations per address per hour** (every attempt counts).
//! - **Invalid tokens per address per second** (`crate::ratelimit`'s middleware asks).
//!
//! The counts live in the switch's [`AccountCounters`]: this process's [`LocalAccounts`] when
//! the node is alone, Redis in a cluster — so a guesser spreading attempts over N nodes gets
//! the free failures once, not N times. If Redis does not answer within
//! [`crate::ratelimit::SHARED_TIMEOUT`], the attempt is counted on this node's own
//! [`LocalAccounts`] instead, Redis is left alone for [`crate::ratelimit::SHARED_RETRY`], and
//! the fallback is logged (at most every 10 s): during an outage each node counts by itself,
//! as the REST rate limits do.
//!
//! The local maps are bounded (`MAX_ENTRIES`); usernames are kept as hashes (FNV-1a of the
//! name folded as the store folds it: the same on every node), so an entry's size does not
//! depend on what a client sends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ratelimit::{make_room, RateLimited, SHARED_RETRY, SHARED_TIMEOUT};
use crate::shared::limits::{AccountCounters, AccountKey, AddrWindow, BackingOff, Backoff, Left};
use crate::shared::{Fut, SharedResult};

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

impl AccountLimits {
    fn backoff(&self) -> Backoff {
        Backoff {
            free: self.login_free_failures,
            base: self.login_backoff_base,
            max: self.login_backoff_max,
            forget: FORGET_AFTER,
        }
    }
}

/// A failure record is forgotten this long after its last failure.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// The registration window.
const REGISTRATION_WINDOW: Duration = Duration::from_secs(3600);
/// Most records per map (a record is ~40 bytes: a few MB at most).
const MAX_ENTRIES: usize = 100_000;
/// Failed token lookups an address may cause per second.
pub const INVALID_TOKENS_PER_SECOND: u32 = 10;
/// At most one fallback warning per this long.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The stable hash of a username, folded as the store folds it (NFKC + case: `ＡＬＩＣＥ`
/// backs off with `alice`). FNV-1a: every node computes the same value.
pub fn username_hash(username: &str) -> u64 {
    lodge_chat::names::username_key(username)
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        })
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
    failures: HashMap<AccountKey, Failures>,
    windows: HashMap<(IpAddr, AddrWindow), Window>,
}

/// This process's account counters: a node alone's, and a cluster node's stand-in while Redis
/// is unreachable. Every operation takes the time (tests move it).
#[derive(Default)]
pub struct LocalAccounts {
    state: Mutex<State>,
}

impl LocalAccounts {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("account limiter lock is never held across a panic")
    }

    pub fn fail_at(
        &self,
        now: Instant,
        key: AccountKey,
        refuse: bool,
        b: &Backoff,
    ) -> Result<(), BackingOff> {
        let mut st = self.state();
        if let Some(f) = st.failures.get(&key) {
            if refuse && f.blocked_until > now {
                return Err(BackingOff {
                    count: f.count,
                    retry_after: f.blocked_until - now,
                });
            }
        } else {
            make_room(&mut st.failures, MAX_ENTRIES, |f| f.last + b.forget, now);
        }
        let f = st.failures.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: now,
        });
        if now.duration_since(f.last) > b.forget {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        f.blocked_until = now + b.after(f.count);
        Ok(())
    }

    pub fn backing_off_at(&self, now: Instant, key: AccountKey) -> Option<BackingOff> {
        let st = self.state();
        let f = st.failures.get(&key)?;
        (f.blocked_until > now).then(|| BackingOff {
            count: f.count,
            retry_after: f.blocked_until - now,
        })
    }

    pub fn give_back_now(&self, key: AccountKey, b: &Backoff) {
        if let Some(f) = self.state().failures.get_mut(&key) {
            f.count = f.count.saturating_sub(1);
            if f.count < b.free {
                f.blocked_until = f.last;
            }
        }
    }

    pub fn clear_now(&self, key: AccountKey) {
        self.state().failures.remove(&key);
    }

    pub fn take_at(
        &self,
        now: Instant,
        addr: IpAddr,
        w: AddrWindow,
        limit: u32,
        window: Duration,
    ) -> Result<Left, Duration> {
        let mut st = self.state();
        if !st.windows.contains_key(&(addr, w)) {
            make_room(&mut st.windows, MAX_ENTRIES, |w| w.reset_at, now);
        }
        let win = st.windows.entry((addr, w)).or_insert(Window {
            reset_at: now + window,
            used: 0,
        });
        if now >= win.reset_at {
            *win = Window {
                reset_at: now + window,
                used: 0,
            };
        }
        if win.used >= limit {
            return Err(win.reset_at - now);
        }
        win.used += 1;
        Ok(Left {
            remaining: limit - win.used,
            reset_after: win.reset_at - now,
        })
    }

    pub fn untake_now(&self, addr: IpAddr, w: AddrWindow) {
        if let Some(win) = self.state().windows.get_mut(&(addr, w)) {
            win.used = win.used.saturating_sub(1);
        }
    }

    pub fn exhausted_at(
        &self,
        now: Instant,
        addr: IpAddr,
        w: AddrWindow,
        limit: u32,
    ) -> Option<Duration> {
        let st = self.state();
        let win = st.windows.get(&(addr, w))?;
        (win.used >= limit && now < win.reset_at).then(|| win.reset_at - now)
    }

    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let st = self.state();
        (st.failures.len(), st.windows.len())
    }
}

impl AccountCounters for LocalAccounts {
    fn fail<'a>(
        &'a self,
        key: AccountKey,
        refuse: bool,
        b: &'a Backoff,
    ) -> Fut<'a, SharedResult<Result<(), BackingOff>>> {
        Box::pin(std::future::ready(Ok(self.fail_at(
            Instant::now(),
            key,
            refuse,
            b,
        ))))
    }
    fn backing_off(&self, key: AccountKey) -> Fut<'_, SharedResult<Option<BackingOff>>> {
        Box::pin(std::future::ready(Ok(
            self.backing_off_at(Instant::now(), key)
        )))
    }
    fn give_back<'a>(&'a self, key: AccountKey, b: &'a Backoff) -> Fut<'a, SharedResult<()>> {
        self.give_back_now(key, b);
        Box::pin(std::future::ready(Ok(())))
    }
    fn clear(&self, key: AccountKey) -> Fut<'_, SharedResult<()>> {
        self.clear_now(key);
        Box::pin(std::future::ready(Ok(())))
    }
    fn take(
        &self,
        addr: IpAddr,
        w: AddrWindow,
        limit: u32,
        window: Duration,
    ) -> Fut<'_, SharedResult<Result<Left, Duration>>> {
        let r = self.take_at(Instant::now(), addr, w, limit, window);
        Box::pin(std::future::ready(Ok(r)))
    }
    fn untake(&self, addr: IpAddr, w: AddrWindow) -> Fut<'_, SharedResult<()>> {
        self.untake_now(addr, w);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The account limits of this node: counted by the switch's [`AccountCounters`], or by its
/// own [`LocalAccounts`] while those cannot answer (see the module docs).
pub struct AccountLimiter {
    limits: AccountLimits,
    local: LocalAccounts,
    /// While set and in the future, the shared counters are not asked.
    shared_down_until: Mutex<Option<Instant>>,
    last_warn: Mutex<Option<Instant>>,
    /// Addresses whose invalid tokens used up the cluster's allowance, until when.
    token_blocks: Mutex<HashMap<IpAddr, Instant>>,
}

/// A login attempt that has been counted; report how it ended.
#[derive(Debug)]
pub struct LoginAttempt {
    addr: IpAddr,
    username: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AccountLimiter {
    pub fn new(limits: AccountLimits) -> AccountLimiter {
        AccountLimiter {
            limits,
            local: LocalAccounts::default(),
            shared_down_until: Mutex::new(None),
            last_warn: Mutex::new(None),
            token_blocks: Mutex::new(HashMap::new()),
        }
    }

    /// `shared`'s answer, or `None` when it is down or fails now (then the caller counts
    /// locally).
    async fn ask<T>(&self, shared: Fut<'_, SharedResult<T>>) -> Option<T> {
        if lock(&self.shared_down_until).is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let why = match tokio::time::timeout(SHARED_TIMEOUT, shared).await {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", SHARED_TIMEOUT.as_millis()),
        };
        let now = Instant::now();
        *lock(&self.shared_down_until) = Some(now + SHARED_RETRY);
        let mut last = lock(&self.last_warn);
        if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            *last = Some(now);
            tracing::warn!(error = %why, "account limits counted on this node alone: the shared counters cannot be reached");
        }
        None
    }

    async fn fail(
        &self,
        shared: &dyn AccountCounters,
        now: Instant,
        key: AccountKey,
        refuse: bool,
    ) -> Result<(), BackingOff> {
        let b = self.limits.backoff();
        match self.ask(shared.fail(key, refuse, &b)).await {
            Some(r) => r,
            None => self.local.fail_at(now, key, refuse, &b),
        }
    }

    async fn backing_off(
        &self,
        shared: &dyn AccountCounters,
        now: Instant,
        key: AccountKey,
    ) -> Result<(), BackingOff> {
        let b = match self.ask(shared.backing_off(key)).await {
            Some(b) => b,
            None => self.local.backing_off_at(now, key),
        };
        b.map_or(Ok(()), Err)
    }

    async fn give_back(&self, shared: &dyn AccountCounters, key: AccountKey) {
        let b = self.limits.backoff();
        if self.ask(shared.give_back(key, &b)).await.is_none() {
            self.local.give_back_now(key, &b);
        }
    }

    fn refused(&self, what: &str, counted: &str, bucket: &str, b: BackingOff) -> Box<RateLimited> {
        Box::new(RateLimited {
            limit_name: format!(
                "{what}: {} {counted}, back-off {:.0} s",
                b.count,
                self.limits.backoff().after(b.count).as_secs_f64()
            ),
            retry_after: b.retry_after,
            global: false,
            limit: self.limits.login_free_failures,
            bucket: bucket.into(),
            scope: "shared",
        })
    }

    /// Refuse the login if the address or the username is backing off; otherwise count the
    /// attempt as a failure until [`AccountLimiter::login_succeeded`] says otherwise.
    pub async fn begin_login(
        &self,
        shared: &dyn AccountCounters,
        now: Instant,
        addr: IpAddr,
        username: &str,
    ) -> Result<LoginAttempt, Box<RateLimited>> {
        let attempt = LoginAttempt {
            addr,
            username: username_hash(username),
        };
        let (a, u) = (
            AccountKey::Addr(addr),
            AccountKey::Username(attempt.username),
        );
        // A look at the username first; then each key is checked and counted in one step (one
        // script on Redis), and the address's count is given back if the username started
        // backing off in between.
        if let Err(b) = self.backing_off(shared, now, u).await {
            return Err(self.refused("login failures for this username", "failures", "login", b));
        }
        if let Err(b) = self.fail(shared, now, a, true).await {
            return Err(self.refused("login failures from this address", "failures", "login", b));
        }
        if let Err(b) = self.fail(shared, now, u, true).await {
            self.give_back(shared, a).await;
            return Err(self.refused("login failures for this username", "failures", "login", b));
        }
        Ok(attempt)
    }

    /// The login succeeded: the address gets its attempt back, the username starts afresh.
    pub async fn login_succeeded(&self, shared: &dyn AccountCounters, attempt: LoginAttempt) {
        let u = AccountKey::Username(attempt.username);
        if self.ask(shared.clear(u)).await.is_none() {
            self.local.clear_now(u);
        }
        self.give_back(shared, AccountKey::Addr(attempt.addr)).await;
    }

    /// The password was never checked (the hashing pool was full, the store failed): the
    /// attempt is given back to both the address and the username.
    pub async fn login_unchecked(&self, shared: &dyn AccountCounters, attempt: LoginAttempt) {
        self.give_back(shared, AccountKey::Addr(attempt.addr)).await;
        self.give_back(shared, AccountKey::Username(attempt.username))
            .await;
    }

    /// Count a registration attempt of `username` from `addr`; refuse past the address's
    /// hourly limit, or while the username backs off after refused registrations.
    pub async fn begin_registration(
        &self,
        shared: &dyn AccountCounters,
        now: Instant,
        addr: IpAddr,
        username: &str,
    ) -> Result<(), Box<RateLimited>> {
        let name = AccountKey::Registering(username_hash(username));
        // Only a look: a refusal is counted when the store refuses the name.
        if let Err(b) = self.backing_off(shared, now, name).await {
            return Err(self.refused(
                "refused registrations of this username",
                "refusals",
                "register",
                b,
            ));
        }
        let limit = self.limits.registrations_per_hour;
        let w = AddrWindow::Registrations;
        let r = match self
            .ask(shared.take(addr, w, limit, REGISTRATION_WINDOW))
            .await
        {
            Some(r) => r,
            None => self.local.take_at(now, addr, w, limit, REGISTRATION_WINDOW),
        };
        r.map(|_| ()).map_err(|retry_after| {
            Box::new(RateLimited {
                limit_name: format!("registrations from this address: {limit} per hour"),
                retry_after,
                global: false,
                limit,
                bucket: "register".into(),
                scope: "shared",
            })
        })
    }

    /// The registration of `username` was refused (taken, or invalid): count it against the
    /// username, with the login back-off's free refusals and doubling.
    pub async fn registration_refused(
        &self,
        shared: &dyn AccountCounters,
        now: Instant,
        username: &str,
    ) {
        let key = AccountKey::Registering(username_hash(username));
        let _ = self.fail(shared, now, key, false).await;
    }

    /// The registration never reached hashing (the pool was full, the store failed): give the
    /// attempt back.
    pub async fn registration_unchecked(&self, shared: &dyn AccountCounters, addr: IpAddr) {
        let w = AddrWindow::Registrations;
        if self.ask(shared.untake(addr, w)).await.is_none() {
            self.local.untake_now(addr, w);
        }
    }

    /// How long token-bearing requests from `addr` must wait, if its invalid tokens used up
    /// this second's allowance. Asks no one: a node learns that the cluster's allowance is used
    /// up when it counts an invalid token ([`AccountLimiter::invalid_token`]: the last one, or
    /// one past it), so a REST request costs no Redis round trip for this, and each other node
    /// lets at most one more lookup through per window.
    pub fn invalid_tokens_exhausted(&self, now: Instant, addr: IpAddr) -> Option<Duration> {
        let (w, l) = (AddrWindow::InvalidTokens, INVALID_TOKENS_PER_SECOND);
        let learned = lock(&self.token_blocks)
            .get(&addr)
            .filter(|until| **until > now)
            .map(|until| *until - now);
        learned.or_else(|| self.local.exhausted_at(now, addr, w, l))
    }

    /// A request from `addr` carried a token that does not verify: count it.
    pub async fn invalid_token(&self, shared: &dyn AccountCounters, now: Instant, addr: IpAddr) {
        let (w, l) = (AddrWindow::InvalidTokens, INVALID_TOKENS_PER_SECOND);
        let one = Duration::from_secs(1);
        let full = match self.ask(shared.take(addr, w, l, one)).await {
            // That was the last one: refuse the next without asking.
            Some(Ok(left)) => (left.remaining == 0).then_some(left.reset_after),
            Some(Err(retry_after)) => Some(retry_after),
            None => {
                let _ = self.local.take_at(now, addr, w, l, one);
                None
            }
        };
        if let Some(retry_after) = full {
            {
                let mut m = lock(&self.token_blocks);
                if !m.contains_key(&addr) {
                    make_room(&mut m, MAX_ENTRIES, |t| *t, now);
                }
                m.insert(addr, now + retry_after);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::SharedError;

    /// Shared counters that never answer: every count falls back to the node's own.
    struct Down;
    fn down<T: Send + 'static>() -> Fut<'static, SharedResult<T>> {
        Box::pin(std::future::ready(Err(SharedError::Unavailable(
            "down".into(),
        ))))
    }
    impl AccountCounters for Down {
        fn fail<'a>(
            &'a self,
            _: AccountKey,
            _: bool,
            _: &'a Backoff,
        ) -> Fut<'a, SharedResult<Result<(), BackingOff>>> {
            down()
        }
        fn backing_off(&self, _: AccountKey) -> Fut<'_, SharedResult<Option<BackingOff>>> {
            down()
        }
        fn give_back<'a>(&'a self, _: AccountKey, _: &'a Backoff) -> Fut<'a, SharedResult<()>> {
            down()
        }
        fn clear(&self, _: AccountKey) -> Fut<'_, SharedResult<()>> {
            down()
        }
        fn take(
            &self,
            _: IpAddr,
            _: AddrWindow,
            _: u32,
            _: Duration,
        ) -> Fut<'_, SharedResult<Result<Left, Duration>>> {
            down()
        }
        fn untake(&self, _: IpAddr, _: AddrWindow) -> Fut<'_, SharedResult<()>> {
            down()
        }
    }

    /// A limiter whose shared counters are down (so the times the tests give are used),
    /// driven synchronously.
    struct Node {
        l: AccountLimiter,
        rt: tokio::runtime::Runtime,
    }

    impl Node {
        fn new(limits: AccountLimits) -> Node {
            Node {
                l: AccountLimiter::new(limits),
                rt: tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap(),
            }
        }
        fn begin_login(
            &self,
            now: Instant,
            a: IpAddr,
            u: &str,
        ) -> Result<LoginAttempt, Box<RateLimited>> {
            self.rt.block_on(self.l.begin_login(&Down, now, a, u))
        }
        fn login_succeeded(&self, at: LoginAttempt) {
            self.rt.block_on(self.l.login_succeeded(&Down, at))
        }
        fn login_unchecked(&self, at: LoginAttempt) {
            self.rt.block_on(self.l.login_unchecked(&Down, at))
        }
        fn begin_registration(
            &self,
            now: Instant,
            a: IpAddr,
            u: &str,
        ) -> Result<(), Box<RateLimited>> {
            self.rt
                .block_on(self.l.begin_registration(&Down, now, a, u))
        }
        fn registration_refused(&self, now: Instant, u: &str) {
            self.rt.block_on(self.l.registration_refused(&Down, now, u))
        }
        fn sizes(&self) -> (usize, usize) {
            self.l.local.sizes()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failures_back_off_doubling_to_a_cap_per_username_across_addresses() {
        let l = Node::new(AccountLimits::default());
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
        let l = Node::new(AccountLimits::default());
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
        let l = Node::new(AccountLimits {
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
        let l = Node::new(AccountLimits::default());
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
        let l = Node::new(AccountLimits::default());
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
