//! Room placement on Redis: `{g:<guild>}:room:<channel>` holds `"<node> <epoch>"`, and
//! `{g:<guild>}:room:<channel>:epoch` counts placements. Claiming and releasing are Lua
//! scripts, so each is one atomic step on the server: two nodes claiming at once are
//! serialized and the second sees the first's claim.

use lodge_ids::{ChannelId, GuildId};
use redis::Script;

use super::conn::Conn;
use super::stats::OpKind;
use crate::shared::{Fut, NodeId, Placement, RoomHome, SharedError, SharedResult};

/// KEYS[1] = room, KEYS[2] = its epoch counter; ARGV[1] = candidate, ARGV[2..] = live nodes.
/// The home stays if its node is live; otherwise the candidate takes the room with the next
/// epoch.
const HOME: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local node = string.match(cur, '^(.*) %d+$')
  for i = 2, #ARGV do
    if ARGV[i] == node then
      return cur
    end
  end
end
local epoch = redis.call('INCR', KEYS[2])
local v = ARGV[1] .. ' ' .. epoch
redis.call('SET', KEYS[1], v)
return v
";

/// KEYS[1] = room; ARGV[1] = the home being released. Only that home is deleted.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

fn encode(h: &RoomHome) -> String {
    format!("{} {}", h.node, h.epoch)
}

/// `"<node> <epoch>"`; the node id may itself hold spaces, the epoch is after the last one.
fn decode(key: &str, v: &str) -> SharedResult<RoomHome> {
    let malformed = || SharedError::Malformed {
        key: key.to_string(),
        why: format!("not \"<node> <epoch>\": {v:?}"),
    };
    let (node, epoch) = v.rsplit_once(' ').ok_or_else(malformed)?;
    Ok(RoomHome {
        node: NodeId(node.to_string()),
        epoch: epoch.parse().map_err(|_| malformed())?,
    })
}

pub struct RedisPlacement {
    conn: Conn,
    home: Script,
    release: Script,
}

impl RedisPlacement {
    pub fn new(conn: Conn) -> Self {
        RedisPlacement {
            conn,
            home: Script::new(HOME),
            release: Script::new(RELEASE),
        }
    }

    async fn home_(
        &self,
        guild: GuildId,
        channel: ChannelId,
        candidate: &NodeId,
        alive: &[NodeId],
    ) -> SharedResult<RoomHome> {
        let key = self.conn.keys.room(guild, channel);
        let mut inv = self.home.key(&key);
        inv.key(self.conn.keys.room_epoch(guild, channel))
            .arg(&candidate.0);
        for n in alive {
            inv.arg(&n.0);
        }
        let v: String = self.conn.script(OpKind::Placement, &inv).await?;
        decode(&key, &v)
    }

    async fn current_(&self, guild: GuildId, channel: ChannelId) -> SharedResult<Option<RoomHome>> {
        let key = self.conn.keys.room(guild, channel);
        let v: Option<String> = self
            .conn
            .cmd(OpKind::Placement, redis::cmd("GET").arg(&key))
            .await?;
        v.map(|v| decode(&key, &v)).transpose()
    }

    async fn release_(
        &self,
        guild: GuildId,
        channel: ChannelId,
        home: &RoomHome,
    ) -> SharedResult<()> {
        let mut inv = self.release.key(self.conn.keys.room(guild, channel));
        inv.arg(encode(home));
        let _deleted: u64 = self.conn.script(OpKind::Placement, &inv).await?;
        Ok(())
    }
}

impl Placement for RedisPlacement {
    fn home<'a>(
        &'a self,
        guild: GuildId,
        channel: ChannelId,
        candidate: &'a NodeId,
        alive: &'a [NodeId],
    ) -> Fut<'a, SharedResult<RoomHome>> {
        Box::pin(self.home_(guild, channel, candidate, alive))
    }
    fn current(
        &self,
        guild: GuildId,
        channel: ChannelId,
    ) -> Fut<'_, SharedResult<Option<RoomHome>>> {
        Box::pin(self.current_(guild, channel))
    }
    fn release<'a>(
        &'a self,
        guild: GuildId,
        channel: ChannelId,
        home: &'a RoomHome,
    ) -> Fut<'a, SharedResult<()>> {
        Box::pin(self.release_(guild, channel, home))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::test_support::redis_or_skip;
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId(s.into())
    }

    #[test]
    fn homes_encode_and_decode() {
        for h in [
            RoomHome {
                node: n("10.0.0.1:8080"),
                epoch: 1,
            },
            RoomHome {
                node: n("a node with spaces"),
                epoch: u64::MAX,
            },
        ] {
            assert_eq!(decode("k", &encode(&h)).unwrap(), h);
        }
        for bad in ["", "node", "node x", "node -1"] {
            assert!(decode("k", bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_agree_on_one_home() {
        let Some(t) = redis_or_skip("placement race").await else {
            return;
        };
        // 20 claimants, each with its own connection (20 nodes).
        let nodes: Vec<Arc<RedisPlacement>> = t
            .conns(20)
            .await
            .into_iter()
            .map(|c| Arc::new(RedisPlacement::new(c)))
            .collect();
        let alive: Arc<Vec<NodeId>> = Arc::new((0..20).map(|i| n(&format!("n{i}"))).collect());
        let claims = nodes.iter().enumerate().map(|(i, p)| {
            let (p, alive) = (p.clone(), alive.clone());
            tokio::spawn(async move {
                p.home(GuildId(1), ChannelId(2), &alive[i], &alive)
                    .await
                    .unwrap()
            })
        });
        let homes: Vec<RoomHome> = futures_util::future::join_all(claims)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert!(homes.iter().all(|h| *h == homes[0]), "{homes:?}");
        assert_eq!(homes[0].epoch, 1, "one claim won, the others read it");
        assert_eq!(
            nodes[0].current(GuildId(1), ChannelId(2)).await.unwrap(),
            Some(homes[0].clone())
        );
    }

    #[tokio::test]
    async fn a_room_moves_with_a_new_epoch_when_its_home_dies() {
        let Some(t) = redis_or_skip("placement epoch").await else {
            return;
        };
        let p = RedisPlacement::new(t.conn.clone());
        let (a, b) = (n("a"), n("b"));
        let both = [a.clone(), b.clone()];
        let h1 = p.home(GuildId(1), ChannelId(2), &a, &both).await.unwrap();
        assert_eq!(h1.node, a);
        assert_eq!(
            p.home(GuildId(1), ChannelId(2), &b, &both).await.unwrap(),
            h1,
            "the live home stays"
        );

        let h2 = p
            .home(GuildId(1), ChannelId(2), &b, std::slice::from_ref(&b))
            .await
            .unwrap();
        assert_eq!(h2.node, b, "a dead home is replaced");
        assert!(h2.epoch > h1.epoch);

        p.release(GuildId(1), ChannelId(2), &h1).await.unwrap();
        assert_eq!(
            p.current(GuildId(1), ChannelId(2)).await.unwrap(),
            Some(h2.clone()),
            "a stale release is ignored"
        );
        p.release(GuildId(1), ChannelId(2), &h2).await.unwrap();
        assert_eq!(p.current(GuildId(1), ChannelId(2)).await.unwrap(), None);

        let h3 = p.home(GuildId(1), ChannelId(2), &a, &both).await.unwrap();
        assert!(h3.epoch > h2.epoch, "epochs keep growing after a release");
        assert_eq!(
            p.current(GuildId(1), ChannelId(3)).await.unwrap(),
            None,
            "rooms are separate"
        );
    }
}
