//! The account limits' counters on Redis (`crate::account_limits`): each operation is one Lua
//! script on one key (one round trip, atomic, on Redis's own clock), so every node counts the
//! same failures and windows.
//!
//! - A failure record (`{a:<addr>}:acct:fail`, `{n:<hash>}:acct:login`,
//!   `{n:<hash>}:acct:register`) is a hash: `c` failures, `u` blocked until, `l` the last
//!   failure (Redis ms); PX = the back-off's `forget`, renewed by each failure, so a record is
//!   forgotten that long after its last failure, as on a node alone.
//! - A window (`{a:<addr>}:acct:registrations`, `{a:<addr>}:acct:invalid-tokens`) is a counter
//!   whose PX is what is left of the window.

use std::net::IpAddr;
use std::time::Duration;

use redis::Script;

use super::conn::Conn;
use super::stats::OpKind;
use crate::shared::limits::{AccountCounters, AccountKey, AddrWindow, BackingOff, Backoff, Left};
use crate::shared::{Fut, SharedResult};

/// KEYS[1] = the record. ARGV = free, base ms, max ms, forget ms, mode ("check": only look;
/// "refuse": refuse while blocked, else count; "count": count).
/// Returns {outcome (0 counted or not blocked, 1 blocked), count, ms blocked}.
const FAIL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local free, base, max, forget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local c = tonumber(redis.call('HGET', KEYS[1], 'c') or '0')
local u = tonumber(redis.call('HGET', KEYS[1], 'u') or '0')
if ARGV[5] ~= 'count' and u > now then return {1, c, u - now} end
if ARGV[5] == 'check' then return {0, c, 0} end
c = c + 1
local b = 0
if c >= free then b = math.min(base * 2 ^ math.min(c - free, 30), max) end
redis.call('HSET', KEYS[1], 'c', c, 'u', now + b, 'l', now)
redis.call('PEXPIRE', KEYS[1], forget)
return {0, c, 0}
";

/// KEYS[1] = the record. ARGV = free. One failure taken back; below `free`, unblocked.
const GIVE_BACK: &str = r"
local c = tonumber(redis.call('HGET', KEYS[1], 'c') or '0')
if c == 0 then return 0 end
c = c - 1
redis.call('HSET', KEYS[1], 'c', c)
if c < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'u', redis.call('HGET', KEYS[1], 'l')) end
return c
";

/// KEYS[1] = the window. ARGV = limit, window ms, mode ("take", "untake").
/// Returns {outcome (0 taken, 1 full), ms to reset, uses left}.
const WINDOW: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local left = redis.call('PTTL', KEYS[1])
if left < 0 then used = 0; left = tonumber(ARGV[2]) end
if ARGV[3] == 'untake' then
  if used > 0 then redis.call('DECR', KEYS[1]) end
  return {0, left, 0}
end
local limit = tonumber(ARGV[1])
if used >= limit then return {1, left, 0} end
if used == 0 then
  redis.call('SET', KEYS[1], 1, 'PX', ARGV[2])
else
  redis.call('INCR', KEYS[1])
end
return {0, left, limit - used - 1}
";

fn ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

/// The account limits' counters on Redis.
pub struct RedisAccounts {
    conn: Conn,
    fail: Script,
    give_back: Script,
    window: Script,
}

impl RedisAccounts {
    pub fn new(conn: Conn) -> Self {
        RedisAccounts {
            conn,
            fail: Script::new(FAIL),
            give_back: Script::new(GIVE_BACK),
            window: Script::new(WINDOW),
        }
    }

    async fn record(
        &self,
        key: AccountKey,
        b: &Backoff,
        mode: &str,
    ) -> SharedResult<Result<(), BackingOff>> {
        let mut inv = self.fail.key(self.conn.keys.account(key));
        inv.arg(b.free)
            .arg(ms(b.base))
            .arg(ms(b.max))
            .arg(ms(b.forget))
            .arg(mode);
        let (outcome, count, left): (u8, u64, u64) =
            self.conn.script(OpKind::RateLimit, &inv).await?;
        Ok(if outcome == 1 {
            Err(BackingOff {
                count: count.min(u32::MAX as u64) as u32,
                retry_after: Duration::from_millis(left),
            })
        } else {
            Ok(())
        })
    }

    async fn window_op(
        &self,
        addr: IpAddr,
        w: AddrWindow,
        limit: u32,
        window: Duration,
        mode: &str,
    ) -> SharedResult<Result<Left, Duration>> {
        let mut inv = self.window.key(self.conn.keys.addr_window(addr, w));
        inv.arg(limit).arg(ms(window)).arg(mode);
        let (outcome, left, remaining): (u8, u64, u64) =
            self.conn.script(OpKind::RateLimit, &inv).await?;
        Ok(if outcome == 1 {
            Err(Duration::from_millis(left))
        } else {
            Ok(Left {
                remaining: remaining.min(u32::MAX as u64) as u32,
                reset_after: Duration::from_millis(left),
            })
        })
    }
}

/// A look at a record needs no back-off figures.
const LOOK: Backoff = Backoff {
    free: 0,
    base: Duration::ZERO,
    max: Duration::ZERO,
    forget: Duration::ZERO,
};

impl AccountCounters for RedisAccounts {
    fn fail<'a>(
        &'a self,
        key: AccountKey,
        refuse: bool,
        b: &'a Backoff,
    ) -> Fut<'a, SharedResult<Result<(), BackingOff>>> {
        Box::pin(self.record(key, b, if refuse { "refuse" } else { "count" }))
    }
    fn backing_off(&self, key: AccountKey) -> Fut<'_, SharedResult<Option<BackingOff>>> {
        Box::pin(async move { Ok(self.record(key, &LOOK, "check").await?.err()) })
    }
    fn give_back<'a>(&'a self, key: AccountKey, b: &'a Backoff) -> Fut<'a, SharedResult<()>> {
        Box::pin(async move {
            let mut inv = self.give_back.key(self.conn.keys.account(key));
            inv.arg(b.free);
            let _: i64 = self.conn.script(OpKind::RateLimit, &inv).await?;
            Ok(())
        })
    }
    fn clear(&self, key: AccountKey) -> Fut<'_, SharedResult<()>> {
        Box::pin(async move {
            let _: i64 = self
                .conn
                .cmd(
                    OpKind::RateLimit,
                    redis::cmd("DEL").arg(self.conn.keys.account(key)),
                )
                .await?;
            Ok(())
        })
    }
    fn take(
        &self,
        addr: IpAddr,
        w: AddrWindow,
        limit: u32,
        window: Duration,
    ) -> Fut<'_, SharedResult<Result<Left, Duration>>> {
        Box::pin(self.window_op(addr, w, limit, window, "take"))
    }
    fn untake(&self, addr: IpAddr, w: AddrWindow) -> Fut<'_, SharedResult<()>> {
        Box::pin(async move {
            self.window_op(addr, w, u32::MAX, Duration::from_millis(1), "untake")
                .await
                .map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::test_support::redis_or_skip;
    use super::*;
    use crate::account_limits::{AccountLimiter, AccountLimits, INVALID_TOKENS_PER_SECOND};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Two "nodes": each its own limiter (with its own fallback counters) and its own Redis
    /// connection, sharing the counters in Redis.
    async fn two_nodes(
        what: &str,
        limits: AccountLimits,
    ) -> Option<[(AccountLimiter, RedisAccounts); 2]> {
        let t = redis_or_skip(what).await?;
        let c = t.conns(2).await;
        Some([
            (
                AccountLimiter::new(limits),
                RedisAccounts::new(c[0].clone()),
            ),
            (
                AccountLimiter::new(limits),
                RedisAccounts::new(c[1].clone()),
            ),
        ])
    }

    #[tokio::test]
    async fn a_guesser_spread_over_two_nodes_gets_the_free_failures_once() {
        let Some([(la, ra), (lb, rb)]) =
            two_nodes("account logins", AccountLimits::default()).await
        else {
            return;
        };
        let now = Instant::now();
        // Five free failures for "alice", alternating the nodes and the addresses.
        for i in 0..5 {
            let (l, r) = if i % 2 == 0 { (&la, &ra) } else { (&lb, &rb) };
            let a = ip(&format!("192.0.2.{i}"));
            assert!(
                l.begin_login(r, now, a, "alice").await.is_ok(),
                "failure {i}"
            );
        }
        // The fifth started the back-off on both nodes (counted once, not per node).
        for (l, r) in [(&la, &ra), (&lb, &rb)] {
            let e = l
                .begin_login(r, now, ip("198.51.100.1"), "ALICE")
                .await
                .unwrap_err();
            assert!(e.limit_name.contains("username"), "{}", e.limit_name);
            assert!(
                e.retry_after <= Duration::from_secs(1) && e.retry_after > Duration::ZERO,
                "{:?}",
                e.retry_after
            );
        }
        // One address guessing across usernames through both nodes backs off after five.
        let a = ip("203.0.113.7");
        for i in 0..5 {
            let (l, r) = if i % 2 == 0 { (&la, &ra) } else { (&lb, &rb) };
            l.begin_login(r, now, a, &format!("u{i}")).await.unwrap();
        }
        let e = lb.begin_login(&rb, now, a, "u9").await.unwrap_err();
        assert!(e.limit_name.contains("address"), "{}", e.limit_name);
        // A success on one node clears the username everywhere and gives the address its
        // attempt back.
        let b = ip("203.0.113.8");
        for i in 0..4 {
            la.begin_login(&ra, now, b, "carol").await.unwrap();
            let _ = i;
        }
        let at = lb.begin_login(&rb, now, b, "carol").await.unwrap();
        lb.login_succeeded(&rb, at).await;
        assert!(la
            .begin_login(&ra, now, ip("203.0.113.9"), "carol")
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn registrations_and_invalid_tokens_per_address_count_across_nodes() {
        let limits = AccountLimits {
            registrations_per_hour: 3,
            ..Default::default()
        };
        let Some([(la, ra), (lb, rb)]) = two_nodes("account registrations", limits).await else {
            return;
        };
        let now = Instant::now();
        let a = ip("192.0.2.50");
        la.begin_registration(&ra, now, a, "n1").await.unwrap();
        lb.begin_registration(&rb, now, a, "n2").await.unwrap();
        // One given back (never reached hashing) on the other node.
        la.registration_unchecked(&ra, a).await;
        lb.begin_registration(&rb, now, a, "n3").await.unwrap();
        la.begin_registration(&ra, now, a, "n4").await.unwrap();
        let e = lb.begin_registration(&rb, now, a, "n5").await.unwrap_err();
        assert!(e.limit_name.contains("per hour"), "{}", e.limit_name);
        assert!(
            e.retry_after > Duration::from_secs(3590),
            "{:?}",
            e.retry_after
        );
        // Refused registrations of one name back off on both nodes.
        for i in 0..5 {
            let (l, r) = if i % 2 == 0 { (&la, &ra) } else { (&lb, &rb) };
            l.registration_refused(r, now, "taken").await;
        }
        let e = la
            .begin_registration(&ra, now, ip("192.0.2.51"), "TAKEN")
            .await
            .unwrap_err();
        assert!(e.limit_name.contains("this username"), "{}", e.limit_name);
        // Invalid tokens: the per-second allowance is one for the cluster. Each node learns
        // it is used up with its next invalid token, and then refuses without asking.
        let t = ip("192.0.2.60");
        for i in 0..INVALID_TOKENS_PER_SECOND {
            let (l, r) = if i % 2 == 0 { (&la, &ra) } else { (&lb, &rb) };
            assert!(l.invalid_tokens_exhausted(now, t).is_none(), "{i}");
            l.invalid_token(r, now, t).await;
        }
        // Node b counted the tenth: it knows; node a learns with its next.
        let wait = lb.invalid_tokens_exhausted(now, t).expect("exhausted");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(
            la.invalid_tokens_exhausted(now, t).is_none(),
            "not learnt yet"
        );
        la.invalid_token(&ra, now, t).await;
        assert!(la.invalid_tokens_exhausted(now, t).is_some());
    }

    #[tokio::test]
    async fn records_are_forgotten_after_the_forget_time() {
        let Some([(_, ra), _]) = two_nodes("account forget", AccountLimits::default()).await else {
            return;
        };
        let b = Backoff {
            free: 1,
            base: Duration::from_secs(60),
            max: Duration::from_secs(60),
            forget: Duration::from_millis(200),
        };
        let k = AccountKey::Username(7);
        ra.fail(k, true, &b).await.unwrap().unwrap();
        assert!(ra.fail(k, true, &b).await.unwrap().is_err(), "backing off");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ra.backing_off(k).await.unwrap(), None, "forgotten");
        ra.give_back(k, &b).await.unwrap();
        assert!(ra.fail(k, true, &b).await.unwrap().is_ok());
    }
}
