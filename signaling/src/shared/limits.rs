//! The limits and the presence several nodes share: `session_start_limit` per user, the REST
//! rate limits per caller, the account endpoints' counters (login back-off, registrations and
//! invalid tokens per address), and each user's presence with a live-connection count per node.
//! Each is a trait with an in-process implementation (today's per-process code, in
//! `gateway/session_start.rs`, `ratelimit.rs`, `account_limits.rs` and [`super::local`]) and a
//! Redis one ([`super::redis::limits`], [`super::redis::accounts`], [`super::redis::presence`]).
//!
//! The traits take the configured limits with every call, so [`super::Shared`] can be built
//! before the configuration is read into the application state, and one implementation serves
//! any limits.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use super::{Fut, NodeId, SharedResult};
use lodge_ids::UserId;

/// `session_start_limit`, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartLimits {
    /// Identifies per user per day window.
    pub total: u32,
    /// Identifies per user per burst window.
    pub max_concurrency: u32,
}

/// What `GET /gateway/bot` reports for one user, and what a counted Identify leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    pub total: u32,
    pub remaining: u32,
    pub reset_after: Duration,
    pub max_concurrency: u32,
}

/// Why an Identify is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartRefused {
    /// More than `max_concurrency` in the burst window: Invalid Session (op 9), retry shortly.
    TooFast,
    /// The day's `total` is used up; `reset_after` until it refills.
    Exhausted { reset_after: Duration },
}

/// Identifies per user, counted wherever the user identifies.
pub trait StartBudgets: Send + Sync {
    /// Count one Identify of `user`, or refuse it (a refusal uses nothing up).
    fn try_start(
        &self,
        user: UserId,
        limits: StartLimits,
    ) -> Fut<'_, SharedResult<Result<Remaining, StartRefused>>>;
    /// What is left for `user`, without using any.
    fn remaining(&self, user: UserId, limits: StartLimits) -> Fut<'_, SharedResult<Remaining>>;
}

/// Whom a REST request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    User(UserId),
    /// The client address's limit key (IPv4, or IPv6 /64).
    Addr(IpAddr),
}

/// The REST windows, from the configuration: a global one per caller and one per route
/// bucket per caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindows {
    pub global: u32,
    pub global_window: Duration,
    pub route: u32,
    pub route_window: Duration,
}

/// What a request got: the figures of the `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    Ok {
        limit: u32,
        remaining: u32,
        reset_after: Duration,
    },
    Limited {
        retry_after: Duration,
        /// The global limit refused it (else the route bucket did).
        global: bool,
        limit: u32,
    },
}

/// REST rate limits per caller: the global window and the route bucket, checked and counted
/// together (a request refused by the global limit counts against nothing; one refused by its
/// route counts against the global window, as Discord does).
pub trait RateLimits: Send + Sync {
    fn check<'a>(
        &'a self,
        caller: Caller,
        bucket: u64,
        w: &'a RateWindows,
    ) -> Fut<'a, SharedResult<RateVerdict>>;
}

/// A change to a user's presence, made by one of their gateway connections on this node.
#[derive(Debug, Clone, PartialEq)]
pub enum PresenceChange {
    /// A connection came up (identify or resume). The first connection, or one that sent a
    /// presence with Identify (`explicit`), sets the status and activities.
    Connected {
        status: String,
        activities: Value,
        explicit: bool,
    },
    /// Op 3.
    Set { status: String, activities: Value },
    /// A connection went away; the last one (across every node) makes the user offline.
    Disconnected,
}

/// What others see of a user: invisible looks offline.
#[derive(Debug, Clone, PartialEq)]
pub struct Visible {
    pub status: String,
    pub activities: Value,
}

/// What others see of a stored status.
pub fn visible_status(status: &str) -> &str {
    if status == "invisible" {
        "offline"
    } else {
        status
    }
}

/// Presence per user, with the user's live gateway connections counted per node: the user is
/// online while any node has one.
pub trait Presences: Send + Sync {
    /// Apply a change made on this node. `Some(what others now see)` when that changed (a
    /// PRESENCE_UPDATE is due), `None` when it did not.
    fn update(
        &self,
        user: UserId,
        change: PresenceChange,
    ) -> Fut<'_, SharedResult<Option<Visible>>>;
    /// Online-looking presences among `users` (for READY, GUILD_CREATE and member chunks), in
    /// `users`' order.
    fn snapshot<'a>(&'a self, users: &'a [UserId])
        -> Fut<'a, SharedResult<Vec<(UserId, Visible)>>>;
    /// `node` is gone: drop its connections. Returns the users that went offline (a
    /// PRESENCE_UPDATE is due for each). Safe to call from several nodes at once: each user's
    /// change is reported once.
    fn forget_node<'a>(&'a self, node: &'a NodeId)
        -> Fut<'a, SharedResult<Vec<(UserId, Visible)>>>;
}

/// Whose failures an account limit counts (`crate::account_limits`): a client address (its
/// limit key), a username or refused registrations of a username (each a stable hash of the
/// folded name, the same on every node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountKey {
    Addr(IpAddr),
    Username(u64),
    Registering(u64),
}

/// A fixed window counted per client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrWindow {
    /// Registration attempts.
    Registrations,
    /// Requests whose token failed to verify.
    InvalidTokens,
}

impl AddrWindow {
    pub fn name(self) -> &'static str {
        match self {
            AddrWindow::Registrations => "registrations",
            AddrWindow::InvalidTokens => "invalid-tokens",
        }
    }
}

/// The failure back-off, from the configuration: the first `free` failures are free, then
/// each blocks the key for `base · 2^(failures − free)`, at most `max`; a record is forgotten
/// `forget` after its last failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub free: u32,
    pub base: Duration,
    pub max: Duration,
    pub forget: Duration,
}

impl Backoff {
    /// The back-off after the `count`th failure.
    pub fn after(&self, count: u32) -> Duration {
        if count < self.free {
            return Duration::ZERO;
        }
        let doublings = (count - self.free).min(30);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

/// What a window has left after a use: uses, and time until it resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    pub remaining: u32,
    pub reset_after: Duration,
}

/// A key that is backing off: its failures and how long until it may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackingOff {
    pub count: u32,
    pub retry_after: Duration,
}

/// The account endpoints' counters (login back-off, refused registrations per username,
/// registrations and invalid tokens per address), counted wherever the attempt is made.
pub trait AccountCounters: Send + Sync {
    /// Count one failure of `key` — unless `refuse` is set and `key` is backing off, which
    /// counts nothing and says for how long.
    fn fail<'a>(
        &'a self,
        key: AccountKey,
        refuse: bool,
        b: &'a Backoff,
    ) -> Fut<'a, SharedResult<Result<(), BackingOff>>>;
    /// Whether `key` is backing off now (counts nothing).
    fn backing_off(&self, key: AccountKey) -> Fut<'_, SharedResult<Option<BackingOff>>>;
    /// Take one counted failure back; below the free ones the back-off ends.
    fn give_back<'a>(&'a self, key: AccountKey, b: &'a Backoff) -> Fut<'a, SharedResult<()>>;
    /// Forget `key`'s failures.
    fn clear(&self, key: AccountKey) -> Fut<'_, SharedResult<()>>;
    /// Count one use of `addr`'s window `w` (`limit` per `window`) and say what is left, or
    /// refuse with the time until it resets.
    fn take(
        &self,
        addr: IpAddr,
        w: AddrWindow,
        limit: u32,
        window: Duration,
    ) -> Fut<'_, SharedResult<Result<Left, Duration>>>;
    /// Give one use of the window back.
    fn untake(&self, addr: IpAddr, w: AddrWindow) -> Fut<'_, SharedResult<()>>;
}
