//! `session_start_limit` and the REST rate limits on Redis: each check is one Lua script
//! (one round trip) that reads, decides and counts atomically, on Redis's own clock (`TIME`),
//! so the nodes' clocks do not matter.
//!
//! - Identifies: a fixed day window `{u:<user>}:starts:day` (a counter; PX set by the first
//!   identify of the window, so the window starts at the user's first identify, as on a node
//!   alone) and a sliding burst window `{u:<user>}:starts:burst` (a sorted set of the last
//!   window's identifies, scored by time: cheap, since it holds at most `max_concurrency`
//!   entries).
//! - REST: fixed windows, as on a node alone, `{u:<user>}:rl:global` and
//!   `{u:<user>}:rl:<bucket>` (or `{a:<address>}:…` for callers without a verified token),
//!   each a counter whose PX is what is left of its window. Both keys of a request share the
//!   caller's hash tag, so the script touches one Redis Cluster slot.

use lodge_ids::UserId;
use std::time::Duration;

use redis::Script;

use super::conn::Conn;
use super::stats::OpKind;
use crate::gateway::session_start::{BURST_WINDOW, DAY};
use crate::shared::limits::{
    Caller, RateLimits, RateVerdict, RateWindows, Remaining, StartBudgets, StartLimits,
    StartRefused,
};
use crate::shared::{Fut, SharedResult};

/// KEYS[1] = day counter, KEYS[2] = burst set.
/// ARGV = total, max_concurrency, day ms, burst ms, count ("1": an Identify; "0": only read).
/// Returns {outcome (0 counted or read, 1 too fast, 2 exhausted), used today, ms left today}.
const START: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local total, maxc = tonumber(ARGV[1]), tonumber(ARGV[2])
local day, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local left = redis.call('PTTL', KEYS[1])
if left < 0 then used = 0; left = day end
if ARGV[5] == '0' then return {0, used, left} end
if used >= total then return {2, used, left} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - burst)
if redis.call('ZCARD', KEYS[2]) >= maxc then return {1, used, left} end
if used == 0 then
  redis.call('SET', KEYS[1], 1, 'PX', day)
else
  redis.call('INCR', KEYS[1])
end
redis.call('ZADD', KEYS[2], now, now .. ':' .. (used + 1))
redis.call('PEXPIRE', KEYS[2], burst)
return {0, used + 1, left}
";

/// KEYS[1] = the caller's global window, KEYS[2] = its route bucket.
/// ARGV = global limit, global window ms, route limit, route window ms.
/// Returns {outcome (0 counted, 1 global limit, 2 route limit), limit, remaining, ms to reset}.
const RATE: &str = r"
local function peek(key, win)
  local used = tonumber(redis.call('GET', key) or '0')
  local left = redis.call('PTTL', key)
  if left < 0 then return 0, win end
  return used, left
end
local function count(key, used, win)
  if used == 0 then
    redis.call('SET', key, 1, 'PX', win)
  else
    redis.call('INCR', key)
  end
end
local gl, gw, rl, rw = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local gu, gleft = peek(KEYS[1], gw)
if gu >= gl then return {1, gl, 0, gleft} end
local ru, rleft = peek(KEYS[2], rw)
count(KEYS[1], gu, gw)
if ru >= rl then return {2, rl, 0, rleft} end
count(KEYS[2], ru, rw)
return {0, rl, rl - ru - 1, rleft}
";

fn ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

/// `session_start_limit` on Redis.
pub struct RedisStartBudgets {
    conn: Conn,
    script: Script,
    day: Duration,
    burst: Duration,
}

impl RedisStartBudgets {
    pub fn new(conn: Conn) -> Self {
        Self::with_windows(conn, DAY, BURST_WINDOW)
    }

    /// Other windows than a day and 5 s (tests).
    pub fn with_windows(conn: Conn, day: Duration, burst: Duration) -> Self {
        RedisStartBudgets {
            conn,
            script: Script::new(START),
            day,
            burst,
        }
    }

    async fn run(
        &self,
        user: UserId,
        l: StartLimits,
        count: bool,
    ) -> SharedResult<(Result<Remaining, StartRefused>, u32)> {
        let k = &self.conn.keys;
        let mut inv = self.script.key(k.starts_day(user));
        inv.key(k.starts_burst(user))
            .arg(l.total)
            .arg(l.max_concurrency)
            .arg(ms(self.day))
            .arg(ms(self.burst))
            .arg(if count { "1" } else { "0" });
        let (outcome, used, left): (u8, u64, u64) =
            self.conn.script(OpKind::SessionStart, &inv).await?;
        let used = used.min(u32::MAX as u64) as u32;
        let reset_after = Duration::from_millis(left);
        let r = match outcome {
            1 => Err(StartRefused::TooFast),
            2 => Err(StartRefused::Exhausted { reset_after }),
            _ => Ok(Remaining {
                total: l.total,
                remaining: l.total.saturating_sub(used),
                reset_after,
                max_concurrency: l.max_concurrency,
            }),
        };
        Ok((r, used))
    }
}

impl StartBudgets for RedisStartBudgets {
    fn try_start(
        &self,
        user: UserId,
        limits: StartLimits,
    ) -> Fut<'_, SharedResult<Result<Remaining, StartRefused>>> {
        Box::pin(async move { Ok(self.run(user, limits, true).await?.0) })
    }
    fn remaining(&self, user: UserId, limits: StartLimits) -> Fut<'_, SharedResult<Remaining>> {
        Box::pin(async move {
            let (r, used) = self.run(user, limits, false).await?;
            Ok(r.unwrap_or(Remaining {
                total: limits.total,
                remaining: limits.total.saturating_sub(used),
                reset_after: self.day,
                max_concurrency: limits.max_concurrency,
            }))
        })
    }
}

/// REST rate limits on Redis.
pub struct RedisRateLimits {
    conn: Conn,
    script: Script,
}

impl RedisRateLimits {
    pub fn new(conn: Conn) -> Self {
        RedisRateLimits {
            conn,
            script: Script::new(RATE),
        }
    }

    async fn check_(
        &self,
        caller: Caller,
        bucket: u64,
        w: &RateWindows,
    ) -> SharedResult<RateVerdict> {
        let k = &self.conn.keys;
        let mut inv = self.script.key(k.rate(caller, "global"));
        inv.key(k.rate(caller, &format!("{bucket:016x}")))
            .arg(w.global)
            .arg(ms(w.global_window))
            .arg(w.route)
            .arg(ms(w.route_window));
        let (outcome, limit, remaining, left): (u8, u32, u32, u64) =
            self.conn.script(OpKind::RateLimit, &inv).await?;
        let after = Duration::from_millis(left);
        Ok(match outcome {
            0 => RateVerdict::Ok {
                limit,
                remaining,
                reset_after: after,
            },
            o => RateVerdict::Limited {
                retry_after: after,
                global: o == 1,
                limit,
            },
        })
    }
}

impl RateLimits for RedisRateLimits {
    fn check<'a>(
        &'a self,
        caller: Caller,
        bucket: u64,
        w: &'a RateWindows,
    ) -> Fut<'a, SharedResult<RateVerdict>> {
        Box::pin(self.check_(caller, bucket, w))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::test_support::redis_or_skip;
    use super::*;

    const L: StartLimits = StartLimits {
        total: 5,
        max_concurrency: 2,
    };

    #[tokio::test]
    async fn identifies_from_two_nodes_share_the_burst_and_the_day() {
        let Some(t) = redis_or_skip("session starts").await else {
            return;
        };
        let c = t.conns(2).await;
        let a = RedisStartBudgets::new(c[0].clone());
        let b = RedisStartBudgets::new(c[1].clone());
        assert_eq!(
            a.try_start(UserId(1), L).await.unwrap().unwrap().remaining,
            4
        );
        assert_eq!(
            b.try_start(UserId(1), L).await.unwrap().unwrap().remaining,
            3
        );
        assert_eq!(
            a.try_start(UserId(1), L).await.unwrap(),
            Err(StartRefused::TooFast),
            "the (max_concurrency+1)th identify within 5 s, whichever node"
        );
        assert_eq!(
            b.try_start(UserId(1), L).await.unwrap(),
            Err(StartRefused::TooFast)
        );
        let r = b.remaining(UserId(1), L).await.unwrap();
        assert_eq!(r.remaining, 3, "refusals use nothing up");
        assert!(r.reset_after > DAY - Duration::from_secs(60), "{r:?}");
        assert!(
            a.try_start(UserId(2), L).await.unwrap().is_ok(),
            "users are separate"
        );
        assert_eq!(
            a.remaining(UserId(3), L).await.unwrap(),
            Remaining {
                total: 5,
                remaining: 5,
                reset_after: DAY,
                max_concurrency: 2
            },
            "an unseen user has the whole budget"
        );
        assert_eq!(t.conn.stats.ops(OpKind::SessionStart), 7, "one script each");
    }

    #[tokio::test]
    async fn the_day_total_counts_across_nodes_and_the_burst_slides() {
        let Some(t) = redis_or_skip("session start day").await else {
            return;
        };
        let burst = Duration::from_millis(300);
        let nodes: Vec<Arc<RedisStartBudgets>> = t
            .conns(2)
            .await
            .into_iter()
            .map(|c| Arc::new(RedisStartBudgets::with_windows(c, DAY, burst)))
            .collect();
        let l = StartLimits {
            total: 3,
            max_concurrency: 2,
        };
        assert!(nodes[0].try_start(UserId(7), l).await.unwrap().is_ok());
        assert!(nodes[1].try_start(UserId(7), l).await.unwrap().is_ok());
        assert_eq!(
            nodes[0].try_start(UserId(7), l).await.unwrap(),
            Err(StartRefused::TooFast)
        );
        tokio::time::sleep(burst + Duration::from_millis(50)).await;
        assert_eq!(
            nodes[1]
                .try_start(UserId(7), l)
                .await
                .unwrap()
                .unwrap()
                .remaining,
            0,
            "the burst window slid; the third of the day"
        );
        tokio::time::sleep(burst + Duration::from_millis(50)).await;
        match nodes[0].try_start(UserId(7), l).await.unwrap() {
            Err(StartRefused::Exhausted { reset_after }) => {
                assert!(reset_after <= DAY && reset_after > DAY - Duration::from_secs(60))
            }
            other => panic!("the day's total is used up across nodes: {other:?}"),
        }
        assert_eq!(nodes[1].remaining(UserId(7), l).await.unwrap().remaining, 0);
    }

    #[tokio::test]
    async fn the_day_window_refills() {
        let Some(t) = redis_or_skip("session start refill").await else {
            return;
        };
        let day = Duration::from_millis(300);
        let s = RedisStartBudgets::with_windows(t.conn.clone(), day, Duration::from_millis(10));
        let l = StartLimits {
            total: 1,
            max_concurrency: 5,
        };
        assert!(s.try_start(UserId(1), l).await.unwrap().is_ok());
        assert!(matches!(
            s.try_start(UserId(1), l).await.unwrap(),
            Err(StartRefused::Exhausted { .. })
        ));
        tokio::time::sleep(day + Duration::from_millis(50)).await;
        assert_eq!(
            s.try_start(UserId(1), l).await.unwrap().unwrap().remaining,
            0
        );
    }

    const W: RateWindows = RateWindows {
        global: 3,
        global_window: Duration::from_secs(1),
        route: 2,
        route_window: Duration::from_secs(1),
    };

    #[tokio::test]
    async fn rest_windows_count_across_nodes() {
        let Some(t) = redis_or_skip("rate limits").await else {
            return;
        };
        let c = t.conns(2).await;
        let a = RedisRateLimits::new(c[0].clone());
        let b = RedisRateLimits::new(c[1].clone());
        let u = Caller::User(UserId(1));
        let ok = |r: RateVerdict| match r {
            RateVerdict::Ok {
                limit, remaining, ..
            } => (limit, remaining),
            other => panic!("{other:?}"),
        };
        assert_eq!(ok(a.check(u, 7, &W).await.unwrap()), (2, 1));
        assert_eq!(ok(b.check(u, 7, &W).await.unwrap()), (2, 0));
        match a.check(u, 7, &W).await.unwrap() {
            RateVerdict::Limited {
                global: false,
                limit: 2,
                retry_after,
            } => assert!(retry_after <= Duration::from_secs(1)),
            other => panic!("the route bucket is shared: {other:?}"),
        }
        assert!(
            matches!(
                b.check(Caller::User(UserId(2)), 7, &W).await.unwrap(),
                RateVerdict::Ok { .. }
            ),
            "callers are separate"
        );
        // The refused request counted against the global window (3 of 3 used).
        assert!(matches!(
            b.check(u, 8, &W).await.unwrap(),
            RateVerdict::Limited {
                global: true,
                limit: 3,
                ..
            }
        ));
        let addr = Caller::Addr([10, 0, 0, 1].into());
        assert_eq!(ok(a.check(addr, 7, &W).await.unwrap()), (2, 1));
        assert_eq!(t.conn.stats.ops(OpKind::RateLimit), 6, "one script each");
    }

    #[tokio::test]
    async fn rest_windows_refill() {
        let Some(t) = redis_or_skip("rate limit refill").await else {
            return;
        };
        let r = RedisRateLimits::new(t.conn.clone());
        let w = RateWindows {
            route_window: Duration::from_millis(200),
            global_window: Duration::from_millis(200),
            ..W
        };
        let u = Caller::User(UserId(5));
        for _ in 0..2 {
            assert!(matches!(
                r.check(u, 1, &w).await.unwrap(),
                RateVerdict::Ok { .. }
            ));
        }
        assert!(matches!(
            r.check(u, 1, &w).await.unwrap(),
            RateVerdict::Limited { .. }
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(matches!(
            r.check(u, 1, &w).await.unwrap(),
            RateVerdict::Ok { remaining: 1, .. }
        ));
    }
}
