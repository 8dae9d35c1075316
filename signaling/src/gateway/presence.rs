//! Presence: online/idle/dnd/offline per user, set by Identify and op 3, cleared when the user's
//! last gateway connection goes away — on any node: the switch's [`Presences`] counts each
//! user's connections per node ([`LocalPresences`] here when the node is alone; Redis in a
//! cluster). Broadcast as PRESENCE_UPDATE to the user's guilds when what others see changes
//! (invisible looks offline), by the node where the change happened.

use lodge_ids::{GuildId, UserId};
use std::collections::HashMap;

use serde_json::{json, Value};

use crate::app::AppState;
use crate::dispatch::DispatchKind;
use crate::shared::limits::{visible_status, PresenceChange, Presences, Visible};
use crate::shared::{Fut, NodeId, SharedResult};

pub const STATUSES: [&str; 5] = ["online", "idle", "dnd", "invisible", "offline"];

/// One user's presence in this process.
#[derive(Debug, Clone)]
struct Presence {
    status: String,
    activities: Value,
    /// Live gateway connections of the user.
    connections: usize,
}

/// The in-process presences: a node alone, which holds every connection of its users.
#[derive(Default)]
pub struct LocalPresences {
    map: std::sync::Mutex<HashMap<UserId, Presence>>,
}

impl LocalPresences {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Presence>> {
        self.map
            .lock()
            .expect("presence lock is never held across a panic")
    }

    /// Online-looking presences among `users`.
    fn snapshot_now(&self, users: &[UserId]) -> Vec<(UserId, Visible)> {
        let m = self.lock();
        users
            .iter()
            .filter_map(|u| m.get(u).map(|p| (*u, p)))
            .filter(|(_, p)| visible_status(&p.status) != "offline")
            .map(|(u, p)| {
                (
                    u,
                    Visible {
                        status: visible_status(&p.status).to_string(),
                        activities: p.activities.clone(),
                    },
                )
            })
            .collect()
    }

    fn update_now(&self, user: UserId, f: impl FnOnce(&mut Presence)) -> Option<Visible> {
        let mut m = self.lock();
        let p = m.entry(user).or_insert(Presence {
            status: "offline".into(),
            activities: json!([]),
            connections: 0,
        });
        let before = (visible_status(&p.status).to_string(), p.activities.clone());
        f(p);
        let after = (visible_status(&p.status).to_string(), p.activities.clone());
        if p.connections == 0 {
            m.remove(&user);
        }
        (before != after).then_some(Visible {
            status: after.0,
            activities: after.1,
        })
    }

    fn apply(&self, user: UserId, change: PresenceChange) -> Option<Visible> {
        match change {
            PresenceChange::Connected {
                status,
                activities,
                explicit,
            } => self.update_now(user, |p| {
                p.connections += 1;
                if p.connections == 1 || explicit {
                    p.status = status;
                    p.activities = activities;
                }
            }),
            PresenceChange::Set { status, activities } => self.update_now(user, |p| {
                p.status = status;
                p.activities = activities;
            }),
            PresenceChange::Disconnected => self.update_now(user, |p| {
                p.connections = p.connections.saturating_sub(1);
                if p.connections == 0 {
                    p.status = "offline".into();
                    p.activities = json!([]);
                }
            }),
        }
    }
}

impl Presences for LocalPresences {
    fn update(
        &self,
        user: UserId,
        change: PresenceChange,
    ) -> Fut<'_, SharedResult<Option<Visible>>> {
        Box::pin(std::future::ready(Ok(self.apply(user, change))))
    }
    fn snapshot<'a>(
        &'a self,
        users: &'a [UserId],
    ) -> Fut<'a, SharedResult<Vec<(UserId, Visible)>>> {
        Box::pin(std::future::ready(Ok(self.snapshot_now(users))))
    }
    /// A node alone holds no other node's connections.
    fn forget_node<'a>(
        &'a self,
        _node: &'a NodeId,
    ) -> Fut<'a, SharedResult<Vec<(UserId, Visible)>>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
}

/// Online-looking presences among `users`, as `guild_id`'s PRESENCE_UPDATE payloads (for
/// READY, GUILD_CREATE and member chunks). One read of the shared presences (a pipelined round
/// trip per 1,000 users in a cluster); if it fails, none (logged): a snapshot without
/// presences is better than no READY.
pub async fn snapshot(s: &AppState, guild_id: GuildId, users: &[UserId]) -> Vec<Value> {
    match s.shared.presences.snapshot(users).await {
        Ok(v) => v
            .into_iter()
            .map(|(u, p)| payload(guild_id, u, &p.status, &p.activities))
            .collect(),
        Err(e) => {
            tracing::warn!(guild = %guild_id, error = %e, "presences left out of a snapshot");
            Vec::new()
        }
    }
}

/// Apply a change and broadcast what others now see, if that changed.
async fn change(s: &AppState, user: UserId, c: PresenceChange) {
    match s.shared.presences.update(user, c).await {
        Ok(Some(v)) => broadcast(s, user, &v.status, &v.activities).await,
        Ok(None) => {}
        Err(e) => tracing::warn!(user = %user, error = %e, "presence change not recorded"),
    }
}

/// A node of the cluster is gone: drop its users' connections from the shared presences and
/// tell the guilds of those it left offline. Safe to call from every node that notices.
pub async fn node_lost(s: &AppState, node: &NodeId) {
    match s.shared.presences.forget_node(node).await {
        Ok(gone) => {
            for (user, v) in gone {
                broadcast(s, user, &v.status, &v.activities).await;
            }
        }
        Err(e) => {
            tracing::warn!(%node, error = %e, "a lost node's presences could not be dropped")
        }
    }
}

fn payload(guild_id: GuildId, user: UserId, status: &str, activities: &Value) -> Value {
    json!({
        "user": { "id": user.to_string() },
        "guild_id": guild_id.to_string(),
        "status": status,
        "activities": activities,
        "client_status": if status == "offline" { json!({}) } else { json!({ "web": status }) },
    })
}

async fn broadcast(s: &AppState, user: UserId, status: &str, activities: &Value) {
    let Ok(guilds) = s.store.user_guilds(user).await else {
        return;
    };
    for g in guilds {
        publish(s, g.id, user, status, activities);
    }
}

/// One guild's PRESENCE_UPDATE for `user`. The guild list it is sent to may be stale by the
/// time it is published (read before a kick or ban): the dispatch names `user` as the member
/// it is about, so sessions drop it once `user` has left the guild, and members hear nothing
/// more of them after GUILD_MEMBER_REMOVE.
pub fn publish(s: &AppState, guild: GuildId, user: UserId, status: &str, activities: &Value) {
    s.hub.send_about(
        guild,
        user,
        DispatchKind::PresenceUpdate,
        payload(guild, user, status, activities),
    );
}

/// A connection of `user` came up (identify or resume) with an optional presence.
pub async fn connected(s: &AppState, user: UserId, initial: Option<&Value>) {
    let status = initial
        .and_then(|p| p.get("status"))
        .and_then(Value::as_str)
        .filter(|st| STATUSES.contains(st))
        .unwrap_or("online")
        .to_string();
    let activities = initial
        .and_then(|p| p.get("activities"))
        .filter(|a| a.is_array())
        .cloned();
    let c = PresenceChange::Connected {
        status,
        activities: activities.unwrap_or_else(|| json!([])),
        explicit: initial.is_some(),
    };
    change(s, user, c).await;
}

/// Op 3. Returns false for an invalid status.
pub async fn set(s: &AppState, user: UserId, d: &Value) -> bool {
    let Some(status) = d
        .get("status")
        .and_then(Value::as_str)
        .filter(|st| STATUSES.contains(st))
    else {
        return false;
    };
    let status = status.to_string();
    let activities = d
        .get("activities")
        .filter(|a| a.is_array())
        .cloned()
        .unwrap_or_else(|| json!([]));
    change(s, user, PresenceChange::Set { status, activities }).await;
    true
}

/// A connection of `user` went away.
pub async fn disconnected(s: &AppState, user: UserId) {
    change(s, user, PresenceChange::Disconnected).await;
}
