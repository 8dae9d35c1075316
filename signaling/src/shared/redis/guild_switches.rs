//! The per-guild switches on Redis: the hash `{g:<guild>}:switches` holds the switches that
//! are not at their default (field → value, [`GuildSwitches::fields`]), and the set
//! `lodge:switched-guilds` lists the guilds that have any, kept by the same script (like
//! `lodge:voice-guilds`, see `voice.rs`). Every check (a message post, a voice join, Select
//! Protocol) is one HGETALL.

use lodge_ids::GuildId;
use redis::Script;

use super::conn::Conn;
use super::stats::OpKind;
use crate::shared::guild_switches::{GuildSwitchStore, GuildSwitches, SwitchChange};
use crate::shared::{Fut, SharedError, SharedResult};

/// KEYS[1] = the guild's switches, KEYS[2] = the switched-guilds set.
/// ARGV[1] = the guild, then field, value pairs ("" removes the field).
/// Returns the hash as it was before (HGETALL's flat list).
const CHANGE: &str = r"
local old = redis.call('HGETALL', KEYS[1])
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[1])
else
  redis.call('SREM', KEYS[2], ARGV[1])
end
return old
";

pub struct RedisGuildSwitches {
    conn: Conn,
    change: Script,
}

impl RedisGuildSwitches {
    pub fn new(conn: Conn) -> Self {
        RedisGuildSwitches {
            conn,
            change: Script::new(CHANGE),
        }
    }

    fn decode(key: &str, flat: &[String]) -> SharedResult<GuildSwitches> {
        GuildSwitches::from_fields(
            key,
            flat.chunks_exact(2).map(|p| (p[0].as_str(), p[1].as_str())),
        )
    }

    async fn get_(&self, guild: GuildId) -> SharedResult<GuildSwitches> {
        let key = self.conn.keys.guild_switches(guild);
        let flat: Vec<String> = self
            .conn
            .cmd(OpKind::Admin, redis::cmd("HGETALL").arg(&key))
            .await?;
        Self::decode(&key, &flat)
    }

    async fn change_(
        &self,
        guild: GuildId,
        change: &SwitchChange,
    ) -> SharedResult<(GuildSwitches, GuildSwitches)> {
        let k = &self.conn.keys;
        let key = k.guild_switches(guild);
        let mut inv = self.change.key(&key);
        inv.key(k.switched_guilds()).arg(guild.get());
        for (field, value) in GuildSwitches::fields(change) {
            inv.arg(field).arg(value);
        }
        let flat: Vec<String> = self.conn.script(OpKind::Admin, &inv).await?;
        let old = Self::decode(&key, &flat)?;
        Ok((old, old.with(change)))
    }

    async fn all_(&self) -> SharedResult<Vec<(GuildId, GuildSwitches)>> {
        let set = self.conn.keys.switched_guilds();
        let ids: Vec<String> = self
            .conn
            .cmd(OpKind::Admin, redis::cmd("SMEMBERS").arg(&set))
            .await?;
        let mut guilds = ids
            .iter()
            .map(|s| {
                s.parse().map(GuildId).map_err(|_| SharedError::Malformed {
                    key: set.clone(),
                    why: format!("{s:?} is not a guild id"),
                })
            })
            .collect::<SharedResult<Vec<GuildId>>>()?;
        guilds.sort_unstable();
        let mut all = Vec::with_capacity(guilds.len());
        for g in guilds {
            let s = self.get_(g).await?;
            if !s.is_default() {
                all.push((g, s));
            }
        }
        Ok(all)
    }
}

impl GuildSwitchStore for RedisGuildSwitches {
    fn get(&self, guild: GuildId) -> Fut<'_, SharedResult<GuildSwitches>> {
        Box::pin(self.get_(guild))
    }

    fn change<'a>(
        &'a self,
        guild: GuildId,
        change: &'a SwitchChange,
    ) -> Fut<'a, SharedResult<(GuildSwitches, GuildSwitches)>> {
        Box::pin(self.change_(guild, change))
    }

    fn all(&self) -> Fut<'_, SharedResult<Vec<(GuildId, GuildSwitches)>>> {
        Box::pin(self.all_())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::redis_or_skip;
    use super::*;

    #[tokio::test]
    async fn two_nodes_see_one_guilds_switches() {
        let Some(r) = redis_or_skip("guild_switches").await else {
            return;
        };
        let mut conns = r.conns(2).await.into_iter();
        let a = RedisGuildSwitches::new(conns.next().unwrap());
        let b = RedisGuildSwitches::new(conns.next().unwrap());
        let g = GuildId(42);
        let freeze = SwitchChange {
            messages_frozen: Some(true),
            max_slots: Some(Some(2)),
            ..Default::default()
        };
        let (old, new) = a.change(g, &freeze).await.unwrap();
        assert!(old.is_default());
        assert_eq!(b.get(g).await.unwrap(), new);
        assert_eq!(b.all().await.unwrap(), vec![(g, new)]);
        let voice = SwitchChange {
            voice_off: Some(true),
            ..Default::default()
        };
        let (old, new) = b.change(g, &voice).await.unwrap();
        assert_eq!(old, GuildSwitches::default().with(&freeze));
        assert!(new.voice_off && new.messages_frozen);
        let lift = SwitchChange {
            voice_off: Some(false),
            messages_frozen: Some(false),
            max_slots: Some(None),
        };
        a.change(g, &lift).await.unwrap();
        assert!(b.get(g).await.unwrap().is_default());
        assert!(a.all().await.unwrap().is_empty());
    }
}
