//! The node registry on Redis: `lodge:node:<id>` holds the node's JSON with a TTL, and the
//! set `lodge:nodes` lists ids that announced. A node that stops renewing disappears when its
//! key expires; its id lingers in the set until a reader notices and removes it.

use std::time::Duration;

use redis::Script;

use super::conn::Conn;
use super::stats::OpKind;
use crate::shared::{Fut, NodeId, NodeInfo, Registry, SharedError, SharedResult};

/// Drop ids from the set whose node key is (still) gone. A node may have re-announced since
/// the reader saw its key missing; checking again inside the script keeps a live node from
/// being removed. KEYS[1] = the set, KEYS[1 + i] = node key of ARGV[i].
const PRUNE: &str = r"
local n = 0
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    n = n + redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return n
";

/// Lease a snowflake id (0–1023): renew the one this node holds, or take the first free one
/// from ARGV[4] on. ARGV = slot key prefix, node id, TTL ms, first slot; KEYS[1] = the node's
/// reverse key (which slot it holds). Returns the slot, or -1 when all 1,024 are held.
const LEASE: &str = r"
local held = redis.call('GET', KEYS[1])
if held and redis.call('GET', ARGV[1] .. held) == ARGV[2] then
  redis.call('PEXPIRE', ARGV[1] .. held, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return tonumber(held)
end
local start = tonumber(ARGV[4])
for i = 0, 1023 do
  local n = (start + i) % 1024
  if redis.call('SET', ARGV[1] .. n, ARGV[2], 'NX', 'PX', ARGV[3]) then
    redis.call('SET', KEYS[1], n, 'PX', ARGV[3])
    return n
  end
end
return -1
";

pub struct RedisRegistry {
    conn: Conn,
    prune: Script,
    lease: Script,
}

impl RedisRegistry {
    pub fn new(conn: Conn) -> Self {
        RedisRegistry {
            conn,
            prune: Script::new(PRUNE),
            lease: Script::new(LEASE),
        }
    }

    async fn announce_(&self, me: &NodeInfo, ttl: Duration) -> SharedResult<bool> {
        let k = &self.conn.keys;
        let json = serde_json::to_string(me).expect("NodeInfo serializes");
        // PX 0 is an error in Redis; a registration shorter than a millisecond is one
        // millisecond.
        let px = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        let mut p = redis::pipe();
        p.cmd("SET")
            .arg(k.node(&me.id))
            .arg(json)
            .arg("PX")
            .arg(px)
            .arg("GET")
            .cmd("SADD")
            .arg(k.nodes())
            .arg(&me.id.0)
            .ignore();
        let (old,): (Option<String>,) = self.conn.pipe(OpKind::Registry, 2, &p).await?;
        Ok(old.is_some())
    }

    async fn live_nodes_(&self) -> SharedResult<Vec<NodeInfo>> {
        let k = &self.conn.keys;
        let ids: Vec<String> = self
            .conn
            .cmd(OpKind::Registry, redis::cmd("SMEMBERS").arg(k.nodes()))
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| k.node(&NodeId(id.clone()))).collect();
        let values: Vec<Option<String>> = self
            .conn
            .cmd(OpKind::Registry, redis::cmd("MGET").arg(&keys))
            .await?;
        let mut live = Vec::with_capacity(ids.len());
        let mut expired = Vec::new();
        for ((id, key), v) in ids.iter().zip(&keys).zip(values) {
            match v {
                Some(json) => {
                    let info: NodeInfo =
                        serde_json::from_str(&json).map_err(|e| SharedError::Malformed {
                            key: key.clone(),
                            why: e.to_string(),
                        })?;
                    live.push(info);
                }
                None => expired.push((id, key)),
            }
        }
        if !expired.is_empty() {
            let mut inv = self.prune.key(k.nodes());
            for (id, key) in &expired {
                inv.key(*key).arg(*id);
            }
            let removed: u64 = self.conn.script(OpKind::Registry, &inv).await?;
            if removed > 0 {
                tracing::debug!(removed, "registry: dropped expired node ids");
            }
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }

    async fn withdraw_(&self, id: &NodeId) -> SharedResult<()> {
        let k = &self.conn.keys;
        let mut p = redis::pipe();
        p.cmd("DEL")
            .arg(k.node(id))
            .ignore()
            .cmd("SREM")
            .arg(k.nodes())
            .arg(&id.0)
            .ignore();
        self.conn.pipe(OpKind::Registry, 2, &p).await
    }
}

impl RedisRegistry {
    async fn lease_id_(&self, me: &NodeId, ttl: Duration) -> SharedResult<u16> {
        let k = &self.conn.keys;
        let prefix = format!("{}lodge:snowflake:", k.prefix());
        let start =
            me.0.bytes()
                .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
                % 1024;
        let mut inv = self
            .lease
            .key(format!("{}lodge:snowflake-of:{}", k.prefix(), me.0));
        inv.arg(prefix)
            .arg(&me.0)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(start);
        let n: i64 = self.conn.script(OpKind::Registry, &inv).await?;
        u16::try_from(n).map_err(|_| {
            SharedError::Unavailable(
                "all 1,024 snowflake ids are leased by live nodes; a cluster holds at most 1,024 nodes".into(),
            )
        })
    }
}

impl Registry for RedisRegistry {
    fn lease_id<'a>(&'a self, me: &'a NodeId, ttl: Duration) -> Fut<'a, SharedResult<u16>> {
        Box::pin(self.lease_id_(me, ttl))
    }
    fn announce<'a>(&'a self, me: &'a NodeInfo, ttl: Duration) -> Fut<'a, SharedResult<bool>> {
        Box::pin(self.announce_(me, ttl))
    }
    fn live_nodes(&self) -> Fut<'_, SharedResult<Vec<NodeInfo>>> {
        Box::pin(self.live_nodes_())
    }
    fn withdraw<'a>(&'a self, id: &'a NodeId) -> Fut<'a, SharedResult<()>> {
        Box::pin(self.withdraw_(id))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::redis_or_skip;
    use super::*;
    use crate::shared::Roles;

    fn info(id: &str, draining: bool) -> NodeInfo {
        NodeInfo {
            id: NodeId(id.into()),
            endpoint: format!("{id}.example:8080"),
            region: "eu".into(),
            roles: Roles::ALL,
            load: 3,
            draining,
            trunk: None,
            edges: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_node_that_stops_renewing_is_gone_after_its_ttl() {
        let Some(t) = redis_or_skip("registry ttl").await else {
            return;
        };
        let r = RedisRegistry::new(t.conn.clone());
        let (a, b) = (info("a", false), info("b", true));
        r.announce(&a, Duration::from_millis(300)).await.unwrap();
        r.announce(&b, Duration::from_secs(30)).await.unwrap();
        let live = r.live_nodes().await.unwrap();
        assert_eq!(
            live,
            vec![a.clone(), b.clone()],
            "the draining flag round-trips"
        );

        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(r.live_nodes().await.unwrap(), vec![b.clone()]);
        let members: Vec<String> = t.cmd(redis::cmd("SMEMBERS").arg(t.keys.nodes())).await;
        assert_eq!(
            members,
            vec!["b".to_string()],
            "the expired id left the set"
        );

        r.withdraw(&b.id).await.unwrap();
        assert!(r.live_nodes().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn renewing_keeps_a_node_and_updates_it() {
        let Some(t) = redis_or_skip("registry renew").await else {
            return;
        };
        let r = RedisRegistry::new(t.conn.clone());
        let mut a = info("a", false);
        for load in 0..4 {
            a.load = load;
            r.announce(&a, Duration::from_millis(300)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        a.draining = true;
        r.announce(&a, Duration::from_millis(300)).await.unwrap();
        assert_eq!(r.live_nodes().await.unwrap(), vec![a]);
    }

    #[tokio::test]
    async fn pruning_spares_a_node_that_came_back() {
        let Some(t) = redis_or_skip("registry prune").await else {
            return;
        };
        let r = RedisRegistry::new(t.conn.clone());
        let a = info("a", false);
        // An id in the set whose key exists must survive the prune script, even when the
        // caller believed it expired.
        r.announce(&a, Duration::from_secs(30)).await.unwrap();
        let mut inv = r.prune.key(t.keys.nodes());
        inv.key(t.keys.node(&a.id)).arg("a");
        let removed: u64 = t.conn.script(OpKind::Registry, &inv).await.unwrap();
        assert_eq!(removed, 0);
        assert_eq!(r.live_nodes().await.unwrap(), vec![a]);
    }
}
