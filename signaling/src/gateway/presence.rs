//! Presence: online/idle/dnd/offline per user, set by Identify and op 3, cleared when the user's
//! last gateway connection goes away. Broadcast as PRESENCE_UPDATE to the user's guilds.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::app::AppState;
use crate::dispatch::DispatchKind;

pub const STATUSES: [&str; 5] = ["online", "idle", "dnd", "invisible", "offline"];

#[derive(Debug, Clone)]
pub struct Presence {
    pub status: String,
    pub activities: Value,
    /// Live gateway connections of the user.
    pub connections: usize,
}

#[derive(Default)]
pub struct Presences {
    map: std::sync::Mutex<HashMap<u64, Presence>>,
}

impl Presences {
    /// What others see: invisible looks offline.
    fn visible_status(p: &Presence) -> &str {
        if p.status == "invisible" {
            "offline"
        } else {
            &p.status
        }
    }

    /// Online-looking presences among `users` (for READY/GUILD_CREATE).
    pub fn snapshot(&self, guild_id: u64, users: &[u64]) -> Vec<Value> {
        let m = self.map.lock().expect("presence lock");
        users
            .iter()
            .filter_map(|u| m.get(u).map(|p| (u, p)))
            .filter(|(_, p)| Self::visible_status(p) != "offline")
            .map(|(u, p)| payload(guild_id, *u, Self::visible_status(p), &p.activities))
            .collect()
    }

    fn update(&self, user: u64, f: impl FnOnce(&mut Presence)) -> Option<(String, Value)> {
        let mut m = self.map.lock().expect("presence lock");
        let p = m.entry(user).or_insert(Presence {
            status: "offline".into(),
            activities: json!([]),
            connections: 0,
        });
        let before = (Self::visible_status(p).to_string(), p.activities.clone());
        f(p);
        let after = (Self::visible_status(p).to_string(), p.activities.clone());
        if p.connections == 0 {
            m.remove(&user);
        }
        (before != after).then_some(after)
    }
}

fn payload(guild_id: u64, user: u64, status: &str, activities: &Value) -> Value {
    json!({
        "user": { "id": user.to_string() },
        "guild_id": guild_id.to_string(),
        "status": status,
        "activities": activities,
        "client_status": if status == "offline" { json!({}) } else { json!({ "web": status }) },
    })
}

async fn broadcast(s: &AppState, user: u64, status: &str, activities: &Value) {
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
pub fn publish(s: &AppState, guild: u64, user: u64, status: &str, activities: &Value) {
    s.hub.send_about(
        guild,
        user,
        DispatchKind::PresenceUpdate,
        payload(guild, user, status, activities),
    );
}

/// A connection of `user` came up (identify or resume) with an optional presence.
pub async fn connected(s: &AppState, user: u64, initial: Option<&Value>) {
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
    let changed = s.presences.update(user, |p| {
        p.connections += 1;
        if p.connections == 1 || initial.is_some() {
            p.status = status;
            p.activities = activities.unwrap_or_else(|| json!([]));
        }
    });
    if let Some((st, act)) = changed {
        broadcast(s, user, &st, &act).await;
    }
}

/// Op 3. Returns false for an invalid status.
pub async fn set(s: &AppState, user: u64, d: &Value) -> bool {
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
    let changed = s.presences.update(user, |p| {
        p.status = status;
        p.activities = activities;
    });
    if let Some((st, act)) = changed {
        broadcast(s, user, &st, &act).await;
    }
    true
}

/// A connection of `user` went away.
pub async fn disconnected(s: &AppState, user: u64) {
    let changed = s.presences.update(user, |p| {
        p.connections = p.connections.saturating_sub(1);
        if p.connections == 0 {
            p.status = "offline".into();
            p.activities = json!([]);
        }
    });
    if let Some((st, act)) = changed {
        broadcast(s, user, &st, &act).await;
    }
}
