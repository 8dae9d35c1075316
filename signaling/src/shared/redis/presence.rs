//! Presence on Redis: each user's hash `{u:<user>}:presence` holds what they set (`status`,
//! `activities` as JSON) and their live gateway connections, per node (`n:<node>`) and in
//! all (`total` = the sum of the `n:` fields, kept by the scripts). The user is online while
//! `total > 0`; the hash is deleted when it reaches 0. Each node keeps the set
//! `lodge:node:<id>:presence` of users with connections on it, so a lost node's connections
//! are dropped without scanning every user ([`RedisPresences::forget_node`]).
//!
//! A change is one script (one round trip) that applies it and says whether what others see
//! changed; a snapshot is one pipelined `HMGET` per user, a round trip per 1,000 users.
//!
//! The node's set is not under the user's hash tag: on a Redis Cluster the update script
//! would have to leave it to a second command (a set per node and shard), as the voice-guilds
//! set would; on one Redis the script keeps both together.

use lodge_ids::UserId;
use redis::Script;
use serde_json::Value;

use super::conn::Conn;
use super::stats::OpKind;
use crate::shared::limits::{PresenceChange, Presences, Visible};
use crate::shared::{Fut, NodeId, SharedError, SharedResult};

/// KEYS[1] = the user's hash, KEYS[2] = this node's set.
/// ARGV = op ("c" connected, "s" set, "d" disconnected), this node's field, status,
/// activities JSON, explicit ("1"/"0"), user.
/// Returns {changed (0/1), visible status, activities JSON}.
const UPDATE: &str = r"
local function vis(s) if s == 'invisible' then return 'offline' end return s end
local cur = redis.call('HMGET', KEYS[1], 'status', 'activities', 'total', ARGV[2])
local status, acts = cur[1] or 'offline', cur[2] or '[]'
local total, mine = tonumber(cur[3] or '0'), tonumber(cur[4] or '0')
local bs, ba = vis(status), acts
local op = ARGV[1]
if op == 'c' then
  total = total + 1
  mine = mine + 1
  if total == 1 or ARGV[5] == '1' then status = ARGV[3]; acts = ARGV[4] end
elseif op == 's' then
  status = ARGV[3]; acts = ARGV[4]
elseif mine > 0 then
  mine = mine - 1
  total = total - 1
  if total <= 0 then status = 'offline'; acts = '[]' end
end
if total <= 0 then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[6])
else
  redis.call('HSET', KEYS[1], 'status', status, 'activities', acts, 'total', total)
  if mine > 0 then
    redis.call('HSET', KEYS[1], ARGV[2], mine)
    redis.call('SADD', KEYS[2], ARGV[6])
  else
    redis.call('HDEL', KEYS[1], ARGV[2])
    redis.call('SREM', KEYS[2], ARGV[6])
  end
end
local as = vis(status)
if as ~= bs or acts ~= ba then return {1, as, acts} end
return {0, as, acts}
";

/// KEYS[1] = the user's hash. ARGV = the lost node's field.
/// Drops the node's connections; returns 1 when that made the user look offline (they looked
/// otherwise before), else 0.
const FORGET: &str = r"
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if mine == 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local total = redis.call('HINCRBY', KEYS[1], 'total', -mine)
if total > 0 then return 0 end
local st = redis.call('HGET', KEYS[1], 'status') or 'offline'
local acts = redis.call('HGET', KEYS[1], 'activities') or '[]'
redis.call('DEL', KEYS[1])
if (st == 'offline' or st == 'invisible') and acts == '[]' then return 0 end
return 1
";

/// Users per pipelined round trip (snapshots and node sweeps).
const BATCH: usize = 1000;

fn offline() -> Visible {
    Visible {
        status: "offline".into(),
        activities: Value::Array(Vec::new()),
    }
}

pub struct RedisPresences {
    conn: Conn,
    me: NodeId,
    update: Script,
    forget: Script,
}

impl RedisPresences {
    pub fn new(conn: Conn, me: NodeId) -> Self {
        RedisPresences {
            conn,
            me,
            update: Script::new(UPDATE),
            forget: Script::new(FORGET),
        }
    }

    fn field(node: &NodeId) -> String {
        format!("n:{node}")
    }

    fn activities(&self, key: &str, json: &str) -> SharedResult<Value> {
        serde_json::from_str(json).map_err(|e| SharedError::Malformed {
            key: key.to_string(),
            why: format!("activities are not JSON: {e}"),
        })
    }

    async fn update_(&self, user: UserId, change: PresenceChange) -> SharedResult<Option<Visible>> {
        let k = &self.conn.keys;
        let key = k.presence(user);
        let (op, status, activities, explicit) = match change {
            PresenceChange::Connected {
                status,
                activities,
                explicit,
            } => ("c", status, activities.to_string(), explicit),
            PresenceChange::Set { status, activities } => {
                ("s", status, activities.to_string(), false)
            }
            PresenceChange::Disconnected => ("d", String::new(), String::new(), false),
        };
        let mut inv = self.update.key(&key);
        inv.key(k.node_presence(&self.me))
            .arg(op)
            .arg(Self::field(&self.me))
            .arg(status)
            .arg(activities)
            .arg(if explicit { "1" } else { "0" })
            .arg(user);
        let (changed, status, acts): (u8, String, String) =
            self.conn.script(OpKind::Presence, &inv).await?;
        if changed == 0 {
            return Ok(None);
        }
        Ok(Some(Visible {
            status,
            activities: self.activities(&key, &acts)?,
        }))
    }

    async fn snapshot_(&self, users: &[UserId]) -> SharedResult<Vec<(UserId, Visible)>> {
        let k = &self.conn.keys;
        let mut out = Vec::new();
        for chunk in users.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for u in chunk {
                pipe.cmd("HMGET")
                    .arg(k.presence(*u))
                    .arg("status")
                    .arg("activities");
            }
            let rows: Vec<(Option<String>, Option<String>)> = self
                .conn
                .pipe(OpKind::Presence, chunk.len() as u64, &pipe)
                .await?;
            for (u, (status, acts)) in chunk.iter().zip(rows) {
                let Some(status) = status else { continue };
                let status = crate::shared::limits::visible_status(&status);
                if status == "offline" {
                    continue;
                }
                let key = k.presence(*u);
                let activities = self.activities(&key, acts.as_deref().unwrap_or("[]"))?;
                out.push((
                    *u,
                    Visible {
                        status: status.to_string(),
                        activities,
                    },
                ));
            }
        }
        Ok(out)
    }

    async fn forget_node_(&self, node: &NodeId) -> SharedResult<Vec<(UserId, Visible)>> {
        let k = &self.conn.keys;
        let set = k.node_presence(node);
        let users: Vec<String> = self
            .conn
            .cmd(OpKind::Presence, redis::cmd("SMEMBERS").arg(&set))
            .await?;
        let users = users
            .iter()
            .map(|u| {
                u.parse::<UserId>().map_err(|_| SharedError::Malformed {
                    key: set.clone(),
                    why: format!("not a user id: {u:?}"),
                })
            })
            .collect::<SharedResult<Vec<UserId>>>()?;
        let field = Self::field(node);
        let mut gone = Vec::new();
        for chunk in users.chunks(BATCH) {
            // The script cache may be empty (a restarted Redis): load it in the same pipeline.
            let mut pipe = redis::pipe();
            pipe.load_script(&self.forget).ignore();
            for u in chunk {
                let mut inv = self.forget.key(k.presence(*u));
                inv.arg(&field);
                pipe.invoke_script(&inv);
            }
            pipe.cmd("SREM").arg(&set).arg(chunk).ignore();
            let went: Vec<u8> = self
                .conn
                .pipe(OpKind::Presence, chunk.len() as u64 + 2, &pipe)
                .await?;
            gone.extend(
                chunk
                    .iter()
                    .zip(went)
                    .filter(|(_, w)| *w == 1)
                    .map(|(u, _)| (*u, offline())),
            );
        }
        if !users.is_empty() {
            tracing::info!(%node, users = users.len(), offline = gone.len(), "presence: dropped a lost node's gateway connections");
        }
        Ok(gone)
    }
}

impl Presences for RedisPresences {
    fn update(
        &self,
        user: UserId,
        change: PresenceChange,
    ) -> Fut<'_, SharedResult<Option<Visible>>> {
        Box::pin(self.update_(user, change))
    }
    fn snapshot<'a>(
        &'a self,
        users: &'a [UserId],
    ) -> Fut<'a, SharedResult<Vec<(UserId, Visible)>>> {
        Box::pin(self.snapshot_(users))
    }
    fn forget_node<'a>(
        &'a self,
        node: &'a NodeId,
    ) -> Fut<'a, SharedResult<Vec<(UserId, Visible)>>> {
        Box::pin(self.forget_node_(node))
    }
}

#[cfg(test)]
mod tests {
    use lodge_ids::UserId;
    use serde_json::json;

    use super::super::test_support::redis_or_skip;
    use super::*;

    fn connected(status: &str, explicit: bool) -> PresenceChange {
        PresenceChange::Connected {
            status: status.into(),
            activities: json!([]),
            explicit,
        }
    }

    fn vis(status: &str) -> Option<Visible> {
        Some(Visible {
            status: status.into(),
            activities: json!([]),
        })
    }

    async fn two_nodes(what: &str) -> Option<(RedisPresences, RedisPresences, Conn)> {
        let t = redis_or_skip(what).await?;
        let c = t.conns(2).await;
        Some((
            RedisPresences::new(c[0].clone(), NodeId("a".into())),
            RedisPresences::new(c[1].clone(), NodeId("b".into())),
            t.conn,
        ))
    }

    #[tokio::test]
    async fn the_last_connection_across_nodes_makes_the_user_offline() {
        let Some((a, b, conn)) = two_nodes("presence two nodes").await else {
            return;
        };
        assert_eq!(
            a.update(UserId(1), connected("online", false))
                .await
                .unwrap(),
            vis("online")
        );
        assert_eq!(
            b.update(UserId(1), connected("online", false))
                .await
                .unwrap(),
            None,
            "a second connection changes nothing others see"
        );
        assert_eq!(
            a.update(UserId(1), PresenceChange::Disconnected)
                .await
                .unwrap(),
            None,
            "node b still has a connection"
        );
        assert_eq!(
            a.snapshot(&[UserId(1), UserId(2)]).await.unwrap(),
            vec![(UserId(1), vis("online").unwrap())]
        );
        assert_eq!(
            a.update(UserId(1), PresenceChange::Disconnected)
                .await
                .unwrap(),
            None,
            "node a has no connection left to drop: the count does not go below b's"
        );
        assert_eq!(
            b.update(UserId(1), PresenceChange::Disconnected)
                .await
                .unwrap(),
            vis("offline"),
            "the last one"
        );
        assert!(a.snapshot(&[UserId(1)]).await.unwrap().is_empty());
        let left: u64 = conn
            .cmd(
                OpKind::Registry,
                redis::cmd("EXISTS").arg(conn.keys.presence(UserId(1))),
            )
            .await
            .unwrap();
        assert_eq!(left, 0, "an offline user leaves nothing behind");
    }

    #[tokio::test]
    async fn status_rules_match_a_node_alone() {
        let Some((a, b, _)) = two_nodes("presence rules").await else {
            return;
        };
        let playing = json!([{ "name": "chess", "type": 0 }]);
        assert_eq!(
            a.update(UserId(2), connected("invisible", true))
                .await
                .unwrap(),
            None,
            "invisible looks offline"
        );
        assert!(a.snapshot(&[UserId(2)]).await.unwrap().is_empty());
        assert_eq!(
            b.update(UserId(2), connected("dnd", false)).await.unwrap(),
            None,
            "a later connection without a presence keeps the status"
        );
        assert_eq!(
            b.update(UserId(2), connected("dnd", true)).await.unwrap(),
            vis("dnd")
        );
        let set = PresenceChange::Set {
            status: "idle".into(),
            activities: playing.clone(),
        };
        let want = Visible {
            status: "idle".into(),
            activities: playing.clone(),
        };
        assert_eq!(
            a.update(UserId(2), set.clone()).await.unwrap(),
            Some(want.clone())
        );
        assert_eq!(
            b.update(UserId(2), set).await.unwrap(),
            None,
            "the same again"
        );
        assert_eq!(
            b.snapshot(&[UserId(2)]).await.unwrap(),
            vec![(UserId(2), want)]
        );
    }

    #[tokio::test]
    async fn forget_node_drops_a_dead_nodes_connections_once() {
        let Some((a, b, _)) = two_nodes("presence forget").await else {
            return;
        };
        for u in [1, 2, 3] {
            a.update(UserId(u), connected("online", false))
                .await
                .unwrap();
        }
        b.update(UserId(2), connected("online", false))
            .await
            .unwrap();
        a.update(UserId(3), connected("invisible", true))
            .await
            .unwrap();
        let dead = NodeId("a".into());
        let mut gone = b.forget_node(&dead).await.unwrap();
        gone.sort_by_key(|(u, _)| *u);
        assert_eq!(
            gone,
            vec![(UserId(1), vis("offline").unwrap())],
            "2 is still on b; 3 looked offline already"
        );
        assert_eq!(
            b.snapshot(&[UserId(1), UserId(2), UserId(3)])
                .await
                .unwrap(),
            vec![(UserId(2), vis("online").unwrap())]
        );
        assert!(
            b.forget_node(&dead).await.unwrap().is_empty(),
            "a second sweep (another node) reports nothing"
        );
        assert_eq!(
            a.update(UserId(2), PresenceChange::Disconnected)
                .await
                .unwrap(),
            None,
            "a late disconnect from the forgotten node cannot take b's connection"
        );
        assert_eq!(
            b.update(UserId(2), PresenceChange::Disconnected)
                .await
                .unwrap(),
            vis("offline")
        );
    }

    #[tokio::test]
    async fn a_snapshot_is_one_round_trip() {
        let Some((a, _, conn)) = two_nodes("presence snapshot").await else {
            return;
        };
        a.update(UserId(5), connected("online", false))
            .await
            .unwrap();
        let before = conn.stats.ops(OpKind::Presence);
        let users: Vec<UserId> = (0..50).map(UserId).collect();
        assert_eq!(a.snapshot(&users).await.unwrap().len(), 1);
        assert_eq!(
            conn.stats.ops(OpKind::Presence) - before,
            50,
            "50 HMGETs, one pipeline"
        );
    }
}
