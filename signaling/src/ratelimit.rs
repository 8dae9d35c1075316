//! REST rate limits the way Discord announces them: a bucket per route (and major parameter) per
//! caller, plus a global per-caller limit. Every response carries `X-RateLimit-*` headers; a
//! refused request gets 429 `{message, retry_after, global, code}` (the message names the limit)
//! and `Retry-After`.
//!
//! The caller is the verified user: the middleware authenticates the request's token once and
//! leaves the outcome in the request's extensions ([`Authenticated`]) for the `Auth` extractor.
//! A request without a token, or with one that does not verify, is counted against its client
//! address ([`crate::client_addr`]), so a made-up `Authorization` header per request buys
//! nothing. Account endpoints add their own limits (`crate::account_limits`).
//!
//! The global and route windows are counted by the switch's [`RateLimits`]: this process's
//! [`RateLimiter`] when the node is alone, Redis in a cluster (one script per request, so a
//! caller's limits hold across every node). If Redis does not answer within
//! [`SHARED_TIMEOUT`], the request is counted on this node's own windows instead, Redis is
//! left alone for [`SHARED_RETRY`], and the fallback is logged (at most every 10 s): during an
//! outage each node enforces the limits by itself — a caller spreading requests over N nodes
//! gets up to N times the limit — and the API stays up. Failed token lookups per address are
//! counted with the account limits (`crate::account_limits`), also cluster-wide.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lodge_chat::User;
use serde_json::json;

use crate::app::AppState;
use crate::client_addr::{self, Cidr, ClientAddr};
pub use crate::shared::limits::Caller;
use crate::shared::limits::{RateLimits, RateVerdict, RateWindows};
use crate::shared::{Fut, SharedResult};

/// Limits, configurable (`--rate-limit-route`, `--rate-limit-global`, `--trusted-proxy`). The
/// two sizes can be changed while the node runs (`PATCH /api/v10/admin/settings`): every
/// request reads them afresh, and a lowered limit caps what is left of a window already open.
#[derive(Debug)]
pub struct Limits {
    /// Requests per route bucket per window.
    route: AtomicU32,
    pub route_window: Duration,
    /// Requests per second per caller across all routes.
    global: AtomicU32,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
}

impl Limits {
    pub fn new(
        route: u32,
        global: u32,
        route_window: Duration,
        trusted_proxies: Vec<Cidr>,
    ) -> Self {
        Limits {
            route: AtomicU32::new(route),
            route_window,
            global: AtomicU32::new(global),
            trusted_proxies,
        }
    }

    /// Requests per route bucket per window, now.
    pub fn route(&self) -> u32 {
        self.route.load(Relaxed)
    }

    /// Requests per second per caller, now.
    pub fn global(&self) -> u32 {
        self.global.load(Relaxed)
    }

    /// Change the route limit; returns the one it replaces.
    pub fn set_route(&self, n: u32) -> u32 {
        self.route.swap(n, Relaxed)
    }

    /// Change the global limit; returns the one it replaces.
    pub fn set_global(&self, n: u32) -> u32 {
        self.global.swap(n, Relaxed)
    }

    /// The windows the switch's [`RateLimits`] count.
    pub fn windows(&self) -> RateWindows {
        RateWindows {
            global: self.global(),
            global_window: Duration::from_secs(1),
            route: self.route(),
            route_window: self.route_window,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(50, 100, Duration::from_secs(1), Vec::new())
    }
}

use crate::account_limits::INVALID_TOKENS_PER_SECOND;

/// Most (caller, bucket) windows kept; past it, expired ones are dropped first, then the ones
/// closest to expiring. 100,000 windows are a few MB.
const MAX_WINDOWS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    reset_at: Instant,
    remaining: u32,
}

/// How long the shared limits may take to answer before a request is counted on this node.
pub const SHARED_TIMEOUT: Duration = Duration::from_millis(250);
/// After the shared limits failed, how long requests are counted on this node before Redis
/// is asked again.
pub const SHARED_RETRY: Duration = Duration::from_secs(1);
/// At most one fallback warning per this long.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// This process's windows: every window of a node alone, and in a cluster the stand-in while
/// Redis is unreachable.
#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<(u64, u64), Window>>,
    /// While set and in the future, the shared limits are not asked.
    shared_down_until: Mutex<Option<Instant>>,
    last_warn: Mutex<Option<Instant>>,
}

/// The outcome of authenticating a request's token, left in its extensions by the middleware.
#[derive(Debug, Clone)]
pub enum Authenticated {
    User(User),
    /// A token was sent and it is unknown, revoked or malformed.
    Invalid,
    /// The token could not be checked: the database is unreachable (answered 503 at once,
    /// rather than waiting for the database a second time in the handler).
    Unreachable,
}

fn hash_of(v: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Make room in a map capped at `cap` entries: when full, drop the expired entries and, if that
/// leaves more than three quarters, the ones soonest to expire. Amortised O(1) per insert.
pub(crate) fn make_room<K: Clone + Eq + Hash, V>(
    map: &mut HashMap<K, V>,
    cap: usize,
    expires: impl Fn(&V) -> Instant,
    now: Instant,
) {
    if map.len() < cap {
        return;
    }
    map.retain(|_, v| expires(v) > now);
    let target = cap / 4 * 3;
    if map.len() <= target {
        return;
    }
    let mut by_expiry: Vec<(Instant, K)> =
        map.iter().map(|(k, v)| (expires(v), k.clone())).collect();
    by_expiry.sort_unstable_by_key(|(t, _)| *t);
    let excess = map.len() - target;
    for (_, k) in by_expiry.into_iter().take(excess) {
        map.remove(&k);
    }
}

impl RateLimiter {
    fn take(
        &self,
        now: Instant,
        caller: u64,
        bucket: u64,
        limit: u32,
        window: Duration,
    ) -> Result<Window, Window> {
        let mut m = self.windows.lock().expect("rate limiter lock");
        if !m.contains_key(&(caller, bucket)) {
            make_room(&mut m, MAX_WINDOWS, |w| w.reset_at, now);
        }
        let w = m.entry((caller, bucket)).or_insert(Window {
            reset_at: now + window,
            remaining: limit,
        });
        if now >= w.reset_at {
            *w = Window {
                reset_at: now + window,
                remaining: limit,
            };
        }
        // The limit was lowered while this window was open: what is left cannot exceed it.
        w.remaining = w.remaining.min(limit);
        if w.remaining == 0 {
            return Err(*w);
        }
        w.remaining -= 1;
        Ok(*w)
    }

    fn check(&self, now: Instant, caller: Caller, bucket: u64, l: &RateWindows) -> RateVerdict {
        const GLOBAL: u64 = 0;
        let caller = hash_of(caller);
        if let Err(w) = self.take(now, caller, GLOBAL, l.global, l.global_window) {
            return RateVerdict::Limited {
                retry_after: w.reset_at - now,
                global: true,
                limit: l.global,
            };
        }
        match self.take(now, caller, bucket, l.route, l.route_window) {
            Ok(w) => RateVerdict::Ok {
                limit: l.route,
                remaining: w.remaining,
                reset_after: w.reset_at - now,
            },
            Err(w) => RateVerdict::Limited {
                retry_after: w.reset_at - now,
                global: false,
                limit: l.route,
            },
        }
    }

    /// Count a request with the switch's `shared` limits, or on this node's windows while
    /// they cannot answer (see the module docs).
    pub async fn check_shared(
        &self,
        shared: &dyn RateLimits,
        caller: Caller,
        bucket: u64,
        w: &RateWindows,
    ) -> RateVerdict {
        let lock = |m: &'_ Mutex<Option<Instant>>| *m.lock().unwrap_or_else(|p| p.into_inner());
        if lock(&self.shared_down_until).is_none_or(|t| Instant::now() >= t) {
            let why =
                match tokio::time::timeout(SHARED_TIMEOUT, shared.check(caller, bucket, w)).await {
                    Ok(Ok(v)) => return v,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {} ms", SHARED_TIMEOUT.as_millis()),
                };
            let now = Instant::now();
            *self
                .shared_down_until
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(now + SHARED_RETRY);
            let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                *last = Some(now);
                tracing::warn!(error = %why, "REST rate limits counted on this node alone: the shared limits cannot be reached");
            }
        }
        self.check(Instant::now(), caller, bucket, w)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.windows.lock().unwrap().len()
    }
}

impl RateLimits for RateLimiter {
    fn check<'a>(
        &'a self,
        caller: Caller,
        bucket: u64,
        w: &'a RateWindows,
    ) -> Fut<'a, SharedResult<RateVerdict>> {
        let v = RateLimiter::check(self, Instant::now(), caller, bucket, w);
        Box::pin(std::future::ready(Ok(v)))
    }
}

/// The route template plus its major parameter (the channel or guild id), Discord's bucket key.
fn bucket_of(method: &str, template: &str, path: &str) -> u64 {
    let major = template
        .split('/')
        .zip(path.split('/'))
        .find(|(t, _)| *t == "{id}")
        .map(|(_, v)| v)
        .unwrap_or("");
    hash_of((method, template.replace("/api/v9", "/api/v10"), major)) | 1
}

fn set(h: &mut HeaderMap, k: &'static str, v: String) {
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(k, v);
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A refused request: 429 with Discord's body and headers. The message names the limit.
#[derive(Debug, Clone)]
pub struct RateLimited {
    /// What was exceeded, for the message: "global limit: 100 requests per second".
    pub limit_name: String,
    pub retry_after: Duration,
    pub global: bool,
    /// The limit's size (`X-RateLimit-Limit`).
    pub limit: u32,
    /// `X-RateLimit-Bucket`.
    pub bucket: String,
    /// `X-RateLimit-Scope`: "user" (this caller's own limit) or "shared".
    pub scope: &'static str,
}

impl RateLimited {
    /// An address that sent too many refused tokens (user tokens, or the operator's) waits.
    pub fn invalid_tokens(retry_after: Duration) -> RateLimited {
        RateLimited {
            limit_name: format!(
                "invalid tokens from this address: {INVALID_TOKENS_PER_SECOND} per second"
            ),
            retry_after,
            global: false,
            limit: INVALID_TOKENS_PER_SECOND,
            bucket: "invalid-token".into(),
            scope: "shared",
        }
    }
}

impl IntoResponse for RateLimited {
    fn into_response(self) -> Response {
        let secs = self.retry_after.as_secs_f64().max(0.001);
        let body = json!({
            "message": format!("You are being rate limited ({}).", self.limit_name),
            "retry_after": (secs * 1000.0).ceil() / 1000.0,
            "global": self.global,
            "code": 0,
        });
        let mut res = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
        let h = res.headers_mut();
        set(h, "retry-after", format!("{}", secs.ceil() as u64));
        set(h, "x-ratelimit-limit", self.limit.to_string());
        set(h, "x-ratelimit-remaining", "0".into());
        set(
            h,
            "x-ratelimit-reset",
            format!("{:.3}", (unix_now() + self.retry_after).as_secs_f64()),
        );
        set(h, "x-ratelimit-reset-after", format!("{secs:.3}"));
        set(h, "x-ratelimit-bucket", self.bucket);
        set(h, "x-ratelimit-scope", self.scope.into());
        if self.global {
            set(h, "x-ratelimit-global", "true".into());
        }
        res
    }
}

/// Authenticate the request's token, if it has one (one store lookup per request).
async fn authenticate(s: &AppState, headers: &HeaderMap) -> Option<Authenticated> {
    let h = headers.get(axum::http::header::AUTHORIZATION)?;
    if h.as_bytes().starts_with(crate::operator::SCHEME.as_bytes()) {
        // The operator's secret is checked by the routes that take it, not the token store.
        return None;
    }
    let Some(token) = h.to_str().ok().map(crate::extract::token_from_header) else {
        return Some(Authenticated::Invalid);
    };
    if token.is_empty() || token.len() > crate::extract::MAX_TOKEN_LEN {
        return Some(Authenticated::Invalid);
    }
    match s.store.authenticate(token).await {
        Ok(u) => Some(Authenticated::User(u)),
        Err(lodge_chat::ChatError::Unauthorized) => Some(Authenticated::Invalid),
        Err(e) if e.is_unreachable() => Some(Authenticated::Unreachable),
        // The store failed otherwise: leave it to the `Auth` extractor, which reports it.
        Err(_) => None,
    }
}

pub async fn middleware(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let addr = client_addr::resolve(peer, req.headers(), &s.limits.trusted_proxies);
    req.extensions_mut().insert(ClientAddr(addr));
    let key = client_addr::limit_key(addr);
    // Token lookups that fail cost the store a query each: an address gets a few per second,
    // then token-bearing requests from it wait (429) instead of reaching the store.
    let has_token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .is_some_and(|h| !h.as_bytes().starts_with(crate::operator::SCHEME.as_bytes()));
    if has_token {
        if let Some(retry_after) = s
            .account_limiter
            .invalid_tokens_exhausted(Instant::now(), key)
        {
            return RateLimited::invalid_tokens(retry_after).into_response();
        }
    }
    let auth = authenticate(&s, req.headers()).await;
    if matches!(auth, Some(Authenticated::Unreachable)) {
        tracing::warn!("request refused: the database is unreachable (token check)");
        return crate::error::database_unreachable();
    }
    if matches!(auth, Some(Authenticated::Invalid)) {
        s.account_limiter
            .invalid_token(&*s.shared.accounts, Instant::now(), key)
            .await;
    }
    let caller = match &auth {
        Some(Authenticated::User(u)) => Caller::User(u.id),
        _ => Caller::Addr(key),
    };
    if let Some(a) = auth {
        req.extensions_mut().insert(a);
    }
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let bucket = bucket_of(req.method().as_str(), &template, req.uri().path());
    let verdict = s
        .rate_limiter
        .check_shared(&*s.shared.rate_limits, caller, bucket, &s.limits.windows())
        .await;
    match verdict {
        RateVerdict::Ok {
            limit,
            remaining,
            reset_after,
        } => {
            let mut res = next.run(req).await;
            let h = res.headers_mut();
            // An account limit's 429 carries its own figures.
            if !h.contains_key("x-ratelimit-limit") {
                set(h, "x-ratelimit-limit", limit.to_string());
                set(h, "x-ratelimit-remaining", remaining.to_string());
                set(
                    h,
                    "x-ratelimit-reset",
                    format!("{:.3}", (unix_now() + reset_after).as_secs_f64()),
                );
                set(
                    h,
                    "x-ratelimit-reset-after",
                    format!("{:.3}", reset_after.as_secs_f64()),
                );
                set(h, "x-ratelimit-bucket", format!("{bucket:016x}"));
            }
            res
        }
        RateVerdict::Limited {
            retry_after,
            global,
            limit,
        } => {
            tracing::debug!(
                global,
                bucket = format!("{bucket:016x}"),
                "request rate limited"
            );
            let limit_name = if global {
                format!("global limit: {limit} requests per second")
            } else {
                format!(
                    "route limit: {limit} requests per {:.0} s",
                    s.limits.route_window.as_secs_f64()
                )
            };
            RateLimited {
                limit_name,
                retry_after,
                global,
                limit,
                bucket: format!("{bucket:016x}"),
                scope: "user",
            }
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_ids::UserId;

    #[test]
    fn buckets_split_by_major_parameter_not_by_minor() {
        let t = "/api/v10/channels/{id}/messages/{msg}";
        assert_eq!(
            bucket_of("GET", t, "/api/v10/channels/1/messages/5"),
            bucket_of("GET", t, "/api/v10/channels/1/messages/6")
        );
        assert_ne!(
            bucket_of("GET", t, "/api/v10/channels/1/messages/5"),
            bucket_of("GET", t, "/api/v10/channels/2/messages/5")
        );
        assert_ne!(
            bucket_of("GET", t, "/api/v10/channels/1/messages/5"),
            bucket_of("DELETE", t, "/api/v10/channels/1/messages/5")
        );
    }

    #[test]
    fn windows_refill() {
        let r = RateLimiter::default();
        let l = Limits::new(2, 100, Duration::from_secs(1), Vec::new()).windows();
        let t0 = Instant::now();
        assert!(matches!(
            r.check(t0, Caller::User(UserId(1)), 7, &l),
            RateVerdict::Ok { remaining: 1, .. }
        ));
        assert!(matches!(
            r.check(t0, Caller::User(UserId(1)), 7, &l),
            RateVerdict::Ok { remaining: 0, .. }
        ));
        assert!(matches!(
            r.check(t0, Caller::User(UserId(1)), 7, &l),
            RateVerdict::Limited { global: false, .. }
        ));
        assert!(
            matches!(
                r.check(t0, Caller::User(UserId(2)), 7, &l),
                RateVerdict::Ok { .. }
            ),
            "other callers are separate"
        );
        assert!(matches!(
            r.check(
                t0 + Duration::from_millis(1001),
                Caller::User(UserId(1)),
                7,
                &l
            ),
            RateVerdict::Ok { remaining: 1, .. }
        ));
        let g = Limits::new(100, 3, Duration::from_secs(1), Vec::new()).windows();
        let t1 = t0 + Duration::from_secs(10);
        for b in 0..3 {
            assert!(matches!(
                r.check(t1, Caller::User(UserId(9)), 100 + b, &g),
                RateVerdict::Ok { .. }
            ));
        }
        assert!(matches!(
            r.check(t1, Caller::User(UserId(9)), 200, &g),
            RateVerdict::Limited { global: true, .. }
        ));
    }

    #[test]
    fn a_lowered_limit_caps_an_open_window() {
        let r = RateLimiter::default();
        let limits = Limits::new(50, 100, Duration::from_secs(1), Vec::new());
        let t0 = Instant::now();
        let u = Caller::User(UserId(3));
        assert!(matches!(
            r.check(t0, u, 7, &limits.windows()),
            RateVerdict::Ok { remaining: 49, .. }
        ));
        assert_eq!(limits.set_route(2), 50);
        let w = limits.windows();
        assert!(matches!(
            r.check(t0, u, 7, &w),
            RateVerdict::Ok { remaining: 1, .. }
        ));
        assert!(matches!(
            r.check(t0, u, 7, &w),
            RateVerdict::Ok { remaining: 0, .. }
        ));
        assert!(matches!(
            r.check(t0, u, 7, &w),
            RateVerdict::Limited { limit: 2, .. }
        ));
    }

    /// Shared limits that never answer well: Redis down (an error) or swamped (no answer).
    struct Broken {
        hang: bool,
        calls: std::sync::atomic::AtomicU32,
    }

    impl RateLimits for Broken {
        fn check<'a>(
            &'a self,
            _caller: Caller,
            _bucket: u64,
            _w: &'a RateWindows,
        ) -> Fut<'a, SharedResult<RateVerdict>> {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.hang {
                return Box::pin(std::future::pending());
            }
            Box::pin(std::future::ready(Err(
                crate::shared::SharedError::Unavailable("Redis at redis://x: refused".into()),
            )))
        }
    }

    #[tokio::test]
    async fn an_unreachable_shared_limiter_fails_over_to_this_nodes_windows() {
        let w = Limits::new(2, 100, Duration::from_secs(1), Vec::new()).windows();
        for hang in [false, true] {
            let r = RateLimiter::default();
            let broken = Broken {
                hang,
                calls: Default::default(),
            };
            let u = Caller::User(UserId(1));
            assert!(matches!(
                r.check_shared(&broken, u, 7, &w).await,
                RateVerdict::Ok { remaining: 1, .. }
            ));
            assert!(matches!(
                r.check_shared(&broken, u, 7, &w).await,
                RateVerdict::Ok { remaining: 0, .. }
            ));
            assert!(
                matches!(
                    r.check_shared(&broken, u, 7, &w).await,
                    RateVerdict::Limited { global: false, .. }
                ),
                "still limited, on this node's own count (hang: {hang})"
            );
            let calls = |b: &Broken| b.calls.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(calls(&broken), 1, "Redis is left alone after a failure");
            tokio::time::sleep(SHARED_RETRY).await;
            r.check_shared(&broken, Caller::User(UserId(2)), 7, &w)
                .await;
            assert_eq!(calls(&broken), 2, "and asked again after SHARED_RETRY");
        }
    }

    #[test]
    fn memory_is_bounded() {
        let r = RateLimiter::default();
        let l = Limits::default().windows();
        let t0 = Instant::now();
        for i in 0..(MAX_WINDOWS as u32 + 10_000) {
            let ip = IpAddr::from(i.to_be_bytes());
            r.check(t0, Caller::Addr(ip), 7, &l);
        }
        assert!(r.len() <= MAX_WINDOWS, "{}", r.len());
    }
}
