//! REST rate limits the way Discord announces them: a bucket per route (and major parameter) per
//! caller, plus a global per-caller limit. Every response carries `X-RateLimit-*` headers; a
//! refused request gets 429 `{message, retry_after, global}` and `Retry-After`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::app::AppState;

/// Limits, configurable (`--rate-limit-route`, `--rate-limit-global`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests per route bucket per window.
    pub route: u32,
    pub route_window: Duration,
    /// Requests per second per caller across all routes.
    pub global: u32,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    reset_at: Instant,
    remaining: u32,
}

#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<(u64, u64), Window>>,
}

/// What a request got.
enum Verdict {
    Ok {
        limit: u32,
        remaining: u32,
        reset_after: Duration,
        bucket: u64,
    },
    Limited {
        retry_after: Duration,
        global: bool,
        limit: u32,
        bucket: u64,
    },
}

fn hash_of(v: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
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
        if m.len() > 100_000 {
            m.retain(|_, w| w.reset_at > now);
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
        if w.remaining == 0 {
            return Err(*w);
        }
        w.remaining -= 1;
        Ok(*w)
    }

    fn check(&self, now: Instant, caller: u64, bucket: u64, l: Limits) -> Verdict {
        const GLOBAL: u64 = 0;
        if let Err(w) = self.take(now, caller, GLOBAL, l.global, Duration::from_secs(1)) {
            return Verdict::Limited {
                retry_after: w.reset_at - now,
                global: true,
                limit: l.global,
                bucket,
            };
        }
        match self.take(now, caller, bucket, l.route, l.route_window) {
            Ok(w) => Verdict::Ok {
                limit: l.route,
                remaining: w.remaining,
                reset_after: w.reset_at - now,
                bucket,
            },
            Err(w) => Verdict::Limited {
                retry_after: w.reset_at - now,
                global: false,
                limit: l.route,
                bucket,
            },
        }
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

pub async fn middleware(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let l = s.limits;
    let now = Instant::now();
    let caller = match req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
    {
        Some(a) => hash_of(("token", crate::extract::token_from_header(a))),
        None => {
            let ip = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            hash_of(("ip", ip))
        }
    };
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let bucket = bucket_of(req.method().as_str(), &template, req.uri().path());
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    match s.rate_limiter.check(now, caller, bucket, l) {
        Verdict::Ok {
            limit,
            remaining,
            reset_after,
            bucket,
        } => {
            let mut res = next.run(req).await;
            let h = res.headers_mut();
            set(h, "x-ratelimit-limit", limit.to_string());
            set(h, "x-ratelimit-remaining", remaining.to_string());
            set(
                h,
                "x-ratelimit-reset",
                format!("{:.3}", (unix_now + reset_after).as_secs_f64()),
            );
            set(
                h,
                "x-ratelimit-reset-after",
                format!("{:.3}", reset_after.as_secs_f64()),
            );
            set(h, "x-ratelimit-bucket", format!("{bucket:016x}"));
            res
        }
        Verdict::Limited {
            retry_after,
            global,
            limit,
            bucket,
        } => {
            let secs = retry_after.as_secs_f64().max(0.001);
            let scope = if global {
                "global limit"
            } else {
                "route limit"
            };
            tracing::debug!(
                global,
                bucket = format!("{bucket:016x}"),
                "request rate limited"
            );
            let body = json!({
                "message": format!("You are being rate limited ({scope}: {limit} requests per {}).",
                    if global { "second".to_string() } else { format!("{:.0} s", l.route_window.as_secs_f64()) }),
                "retry_after": (secs * 1000.0).ceil() / 1000.0,
                "global": global,
                "code": 0,
            });
            let mut res = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            let h = res.headers_mut();
            set(h, "retry-after", format!("{}", secs.ceil() as u64));
            set(h, "x-ratelimit-limit", limit.to_string());
            set(h, "x-ratelimit-remaining", "0".into());
            set(
                h,
                "x-ratelimit-reset",
                format!("{:.3}", (unix_now + retry_after).as_secs_f64()),
            );
            set(h, "x-ratelimit-reset-after", format!("{secs:.3}"));
            set(h, "x-ratelimit-bucket", format!("{bucket:016x}"));
            set(h, "x-ratelimit-scope", "user".into());
            if global {
                set(h, "x-ratelimit-global", "true".into());
            }
            res
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let l = Limits {
            route: 2,
            route_window: Duration::from_secs(1),
            global: 100,
        };
        let t0 = Instant::now();
        assert!(matches!(
            r.check(t0, 1, 7, l),
            Verdict::Ok { remaining: 1, .. }
        ));
        assert!(matches!(
            r.check(t0, 1, 7, l),
            Verdict::Ok { remaining: 0, .. }
        ));
        assert!(matches!(
            r.check(t0, 1, 7, l),
            Verdict::Limited { global: false, .. }
        ));
        assert!(
            matches!(r.check(t0, 2, 7, l), Verdict::Ok { .. }),
            "other callers are separate"
        );
        assert!(matches!(
            r.check(t0 + Duration::from_millis(1001), 1, 7, l),
            Verdict::Ok { remaining: 1, .. }
        ));
        let g = Limits {
            route: 100,
            route_window: Duration::from_secs(1),
            global: 3,
        };
        let t1 = t0 + Duration::from_secs(10);
        for b in 0..3 {
            assert!(matches!(r.check(t1, 9, 100 + b, g), Verdict::Ok { .. }));
        }
        assert!(matches!(
            r.check(t1, 9, 200, g),
            Verdict::Limited { global: true, .. }
        ));
    }
}
