//! Voice states and voice tokens on Redis.
//!
//! States: the hash `{g:<guild>}:voice` maps user → state; writes are a compare-and-set
//! script. The set `lodge:voice-guilds` lists guilds whose hash is not empty, kept by the same
//! script so the two cannot disagree. That set is not under a guild's hash tag: on a Redis
//! Cluster a script may only touch one slot, so there the set would become one per shard
//! (`{shard:<n>}:voice-guilds`, with the guild's tag mapped to its shard) — on one Redis it is
//! a single key.
//!
//! Tokens: `{t:<token>}` holds the value with the token's TTL; redeeming is GETDEL, so one
//! redeem wins across every node.

use lodge_ids::{GuildId, UserId};
use std::time::Duration;

use redis::Script;

use super::conn::Conn;
use super::stats::OpKind;
use crate::shared::{
    ChannelCap, Fut, SharedError, SharedResult, Swapped, VoiceStates, VoiceTokens,
};

/// KEYS[1] = the guild's hash, KEYS[2] = the voice-guilds set.
/// ARGV = user, has_expected ("0"/"1"), expected, has_new ("0"/"1"), new, guild, and for a
/// capped swap the channel's marker and its limit.
/// Returns 1 when the stored state was `expected` and is now `new`, 0 when it was not
/// `expected`, 2 when `new` enters the marked channel and `limit` other states are there.
const SWAP: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  if cur ~= ARGV[3] then return 0 end
elseif cur then
  return 0
end
if ARGV[4] == '1' and ARGV[7] then
  local m = ARGV[7]
  if string.find(ARGV[5], m, 1, true) and not (cur and string.find(cur, m, 1, true)) then
    local n = 0
    local all = redis.call('HGETALL', KEYS[1])
    for i = 1, #all, 2 do
      if all[i] ~= ARGV[1] and string.find(all[i + 1], m, 1, true) then n = n + 1 end
    end
    if n >= tonumber(ARGV[8]) then return 2 end
  end
end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
  redis.call('SADD', KEYS[2], ARGV[6])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  if redis.call('HLEN', KEYS[1]) == 0 then
    redis.call('SREM', KEYS[2], ARGV[6])
  end
end
return 1
";

fn parse_id<T: std::str::FromStr>(key: &str, s: &str) -> SharedResult<T> {
    s.parse().map_err(|_| SharedError::Malformed {
        key: key.to_string(),
        why: format!("not an id: {s:?}"),
    })
}

pub struct RedisVoiceStates {
    conn: Conn,
    swap: Script,
}

impl RedisVoiceStates {
    pub fn new(conn: Conn) -> Self {
        RedisVoiceStates {
            conn,
            swap: Script::new(SWAP),
        }
    }

    async fn get_(&self, guild: GuildId, user: UserId) -> SharedResult<Option<String>> {
        let c = redis::cmd("HGET")
            .arg(self.conn.keys.voice(guild))
            .arg(user)
            .to_owned();
        self.conn.cmd(OpKind::Voice, &c).await
    }

    async fn guild_(&self, guild: GuildId) -> SharedResult<Vec<(UserId, String)>> {
        let key = self.conn.keys.voice(guild);
        let all: Vec<(String, String)> = self
            .conn
            .cmd(OpKind::Voice, redis::cmd("HGETALL").arg(&key))
            .await?;
        all.into_iter()
            .map(|(u, v)| Ok((parse_id(&key, &u)?, v)))
            .collect()
    }

    async fn swap_(
        &self,
        guild: GuildId,
        user: UserId,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> SharedResult<bool> {
        Ok(self.swap_capped_(guild, user, expected, new, None).await? == Swapped::Done)
    }

    /// The one compare-and-set script call; with `cap`, it also counts the channel.
    async fn swap_capped_(
        &self,
        guild: GuildId,
        user: UserId,
        expected: Option<&str>,
        new: Option<&str>,
        cap: Option<ChannelCap>,
    ) -> SharedResult<Swapped> {
        let k = &self.conn.keys;
        let mut inv = self.swap.key(k.voice(guild));
        inv.key(k.voice_guilds())
            .arg(user)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or(""))
            .arg(if new.is_some() { "1" } else { "0" })
            .arg(new.unwrap_or(""))
            .arg(guild);
        if let Some(cap) = cap {
            inv.arg(cap.marker()).arg(cap.limit);
        }
        let done: u8 = self.conn.script(OpKind::Voice, &inv).await?;
        Ok(match done {
            1 => Swapped::Done,
            2 => Swapped::Full,
            _ => Swapped::Changed,
        })
    }

    async fn guilds_(&self) -> SharedResult<Vec<GuildId>> {
        let key = self.conn.keys.voice_guilds();
        let ids: Vec<String> = self
            .conn
            .cmd(OpKind::Voice, redis::cmd("SMEMBERS").arg(&key))
            .await?;
        let mut ids = ids
            .iter()
            .map(|s| parse_id(&key, s))
            .collect::<SharedResult<Vec<GuildId>>>()?;
        ids.sort_unstable();
        Ok(ids)
    }
}

impl VoiceStates for RedisVoiceStates {
    fn get(&self, guild: GuildId, user: UserId) -> Fut<'_, SharedResult<Option<String>>> {
        Box::pin(self.get_(guild, user))
    }
    fn guild(&self, guild: GuildId) -> Fut<'_, SharedResult<Vec<(UserId, String)>>> {
        Box::pin(self.guild_(guild))
    }
    fn swap<'a>(
        &'a self,
        guild: GuildId,
        user: UserId,
        expected: Option<&'a str>,
        new: Option<&'a str>,
    ) -> Fut<'a, SharedResult<bool>> {
        Box::pin(self.swap_(guild, user, expected, new))
    }
    fn swap_capped<'a>(
        &'a self,
        guild: GuildId,
        user: UserId,
        expected: Option<&'a str>,
        new: Option<&'a str>,
        cap: ChannelCap,
    ) -> Fut<'a, SharedResult<Swapped>> {
        Box::pin(self.swap_capped_(guild, user, expected, new, Some(cap)))
    }
    fn guilds(&self) -> Fut<'_, SharedResult<Vec<GuildId>>> {
        Box::pin(self.guilds_())
    }
}

pub struct RedisVoiceTokens {
    conn: Conn,
}

impl RedisVoiceTokens {
    pub fn new(conn: Conn) -> Self {
        RedisVoiceTokens { conn }
    }

    async fn issue_(&self, token: &str, value: &str, ttl: Duration) -> SharedResult<()> {
        let key = self.conn.keys.token(token);
        let px = ttl.as_millis().min(u64::MAX as u128) as u64;
        if px == 0 {
            // Already expired (PX 0 is an error in Redis): make sure no older value stays.
            return self
                .conn
                .cmd(OpKind::Token, redis::cmd("DEL").arg(&key))
                .await;
        }
        let c = redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .arg("PX")
            .arg(px)
            .to_owned();
        self.conn.cmd(OpKind::Token, &c).await
    }

    async fn redeem_(&self, token: &str) -> SharedResult<Option<String>> {
        let key = self.conn.keys.token(token);
        self.conn
            .cmd(OpKind::Token, redis::cmd("GETDEL").arg(&key))
            .await
    }
}

impl VoiceTokens for RedisVoiceTokens {
    fn issue<'a>(
        &'a self,
        token: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> Fut<'a, SharedResult<()>> {
        Box::pin(self.issue_(token, value, ttl))
    }
    fn redeem<'a>(&'a self, token: &'a str) -> Fut<'a, SharedResult<Option<String>>> {
        Box::pin(self.redeem_(token))
    }
    fn exists<'a>(&'a self, token: &'a str) -> Fut<'a, SharedResult<bool>> {
        Box::pin(async move {
            let key = self.conn.keys.token(token);
            let n: u64 = self
                .conn
                .cmd(OpKind::Token, redis::cmd("EXISTS").arg(&key))
                .await?;
            Ok(n > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use lodge_ids::{ChannelId, GuildId, UserId};
    use std::sync::Arc;

    use super::super::test_support::redis_or_skip;
    use super::*;

    #[tokio::test]
    async fn swaps_are_compare_and_set_and_keep_the_guild_set() {
        let Some(t) = redis_or_skip("voice swap").await else {
            return;
        };
        let s = RedisVoiceStates::new(t.conn.clone());
        assert!(s
            .swap(GuildId(1), UserId(2), None, Some("a"))
            .await
            .unwrap());
        assert!(
            !s.swap(GuildId(1), UserId(2), None, Some("b"))
                .await
                .unwrap(),
            "a second insert loses"
        );
        assert!(!s
            .swap(GuildId(1), UserId(2), Some("x"), Some("b"))
            .await
            .unwrap());
        assert!(s
            .swap(GuildId(1), UserId(2), Some("a"), Some("b"))
            .await
            .unwrap());
        assert!(s
            .swap(GuildId(1), UserId(3), None, Some("c"))
            .await
            .unwrap());
        assert!(
            s.swap(GuildId(4), UserId(3), None, Some("")).await.unwrap(),
            "an empty state is a state"
        );
        assert!(!s
            .swap(GuildId(4), UserId(3), None, Some("d"))
            .await
            .unwrap());
        assert_eq!(
            s.get(GuildId(1), UserId(2)).await.unwrap().as_deref(),
            Some("b")
        );
        assert_eq!(s.get(GuildId(1), UserId(9)).await.unwrap(), None);
        let mut g = s.guild(GuildId(1)).await.unwrap();
        g.sort();
        assert_eq!(
            g,
            vec![(UserId(2), "b".to_string()), (UserId(3), "c".to_string())]
        );
        assert_eq!(s.guilds().await.unwrap(), vec![GuildId(1), GuildId(4)]);

        assert!(
            !s.swap(GuildId(1), UserId(2), None, None).await.unwrap(),
            "expected absent, but present"
        );
        assert!(s
            .swap(GuildId(1), UserId(2), Some("b"), None)
            .await
            .unwrap());
        assert_eq!(
            s.guilds().await.unwrap(),
            vec![GuildId(1), GuildId(4)],
            "user 3 is still in guild 1"
        );
        assert!(s
            .swap(GuildId(1), UserId(3), Some("c"), None)
            .await
            .unwrap());
        assert!(s.swap(GuildId(4), UserId(3), Some(""), None).await.unwrap());
        assert!(s.guilds().await.unwrap().is_empty());
        assert!(s.guild(GuildId(1)).await.unwrap().is_empty());
    }

    /// A state as the executor stores it, in `channel`.
    fn in_channel(user: UserId, channel: ChannelId) -> String {
        format!("{{\"guild_id\":9,\"channel_id\":{channel},\"user_id\":{user}}}")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_capped_channel_never_overfills_when_joins_race_on_several_nodes() {
        let Some(t) = redis_or_skip("voice capped swap").await else {
            return;
        };
        let nodes: Vec<Arc<RedisVoiceStates>> = t
            .conns(3)
            .await
            .into_iter()
            .map(|c| Arc::new(RedisVoiceStates::new(c)))
            .collect();
        let cap = ChannelCap {
            channel_id: ChannelId(500),
            limit: 3,
        };
        let s = nodes[0].clone();
        // One user already elsewhere in the guild (another channel) does not count.
        assert_eq!(
            s.swap_capped(
                GuildId(9),
                UserId(1),
                None,
                Some(&in_channel(UserId(1), ChannelId(501))),
                cap
            )
            .await
            .unwrap(),
            Swapped::Done
        );
        let tasks = (10..22u64).map(|user| {
            let s = nodes[user as usize % nodes.len()].clone();
            tokio::spawn(async move {
                s.swap_capped(
                    GuildId(9),
                    UserId(user),
                    None,
                    Some(&in_channel(UserId(user), ChannelId(500))),
                    cap,
                )
                .await
                .unwrap()
            })
        });
        let got: Vec<Swapped> = futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let done = got.iter().filter(|g| **g == Swapped::Done).count();
        let full = got.iter().filter(|g| **g == Swapped::Full).count();
        assert_eq!((done, full), (3, 9), "{got:?}");
        let marker = cap.marker();
        let inside: Vec<UserId> = s
            .guild(GuildId(9))
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, v)| v.contains(&marker))
            .map(|(u, _)| u)
            .collect();
        assert_eq!(inside.len(), 3);
        // A caller already inside changes flags (same channel): not an entry, never refused.
        let u = inside[0];
        let cur = s.get(GuildId(9), UserId(u.get())).await.unwrap().unwrap();
        let again = format!("{cur} ");
        assert_eq!(
            s.swap_capped(GuildId(9), UserId(u.get()), Some(&cur), Some(&again), cap)
                .await
                .unwrap(),
            Swapped::Done
        );
        // The user in the other channel moves in: refused while full, then one leaves.
        let other = in_channel(UserId(1), ChannelId(501));
        assert_eq!(
            s.swap_capped(
                GuildId(9),
                UserId(1),
                Some(&other),
                Some(&in_channel(UserId(1), ChannelId(500))),
                cap
            )
            .await
            .unwrap(),
            Swapped::Full
        );
        assert!(s
            .swap(GuildId(9), UserId(u.get()), Some(&again), None)
            .await
            .unwrap());
        assert_eq!(
            s.swap_capped(
                GuildId(9),
                UserId(1),
                Some(&other),
                Some(&in_channel(UserId(1), ChannelId(500))),
                cap
            )
            .await
            .unwrap(),
            Swapped::Done
        );
        // A stale expectation is a change, not a refusal.
        assert_eq!(
            s.swap_capped(GuildId(9), UserId(1), Some(&other), None, cap)
                .await
                .unwrap(),
            Swapped::Changed
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_racing_increments_all_land() {
        let Some(t) = redis_or_skip("voice cas race").await else {
            return;
        };
        // Five "nodes" (connections), ten writers each.
        let nodes: Vec<Arc<RedisVoiceStates>> = t
            .conns(5)
            .await
            .into_iter()
            .map(|c| Arc::new(RedisVoiceStates::new(c)))
            .collect();
        let s = nodes[0].clone();
        let tasks = (0..50).map(|i| {
            let s = nodes[i % nodes.len()].clone();
            tokio::spawn(async move {
                let mut tries = 0u32;
                loop {
                    tries += 1;
                    let cur = s.get(GuildId(7), UserId(1)).await.unwrap();
                    let n: u32 = cur.as_deref().map_or(0, |v| v.parse().unwrap());
                    let next = (n + 1).to_string();
                    if s.swap(GuildId(7), UserId(1), cur.as_deref(), Some(&next))
                        .await
                        .unwrap()
                    {
                        return tries;
                    }
                    tokio::task::yield_now().await;
                }
            })
        });
        let tries: Vec<u32> = futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            s.get(GuildId(7), UserId(1)).await.unwrap().as_deref(),
            Some("50")
        );
        let retried = tries.iter().filter(|t| **t > 1).count();
        println!("{retried} of 50 writers lost a race and retried");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_is_redeemed_once_among_racers() {
        let Some(t) = redis_or_skip("token race").await else {
            return;
        };
        let nodes: Vec<Arc<RedisVoiceTokens>> = t
            .conns(4)
            .await
            .into_iter()
            .map(|c| Arc::new(RedisVoiceTokens::new(c)))
            .collect();
        nodes[0]
            .issue("tok", "session-1", Duration::from_secs(60))
            .await
            .unwrap();
        let redeems = (0..20).map(|i| {
            let tokens = nodes[i % nodes.len()].clone();
            tokio::spawn(async move { tokens.redeem("tok").await.unwrap() })
        });
        let got: Vec<String> = futures_util::future::join_all(redeems)
            .await
            .into_iter()
            .filter_map(|r| r.unwrap())
            .collect();
        assert_eq!(got, vec!["session-1".to_string()]);
    }

    #[tokio::test]
    async fn tokens_expire() {
        let Some(t) = redis_or_skip("token expiry").await else {
            return;
        };
        let tokens = RedisVoiceTokens::new(t.conn.clone());
        tokens
            .issue("a", "v", Duration::from_millis(100))
            .await
            .unwrap();
        tokens.issue("b", "v", Duration::ZERO).await.unwrap();
        assert_eq!(tokens.redeem("b").await.unwrap(), None, "born expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(tokens.redeem("a").await.unwrap(), None, "expired");
    }
}
