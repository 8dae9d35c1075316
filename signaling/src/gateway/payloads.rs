//! Gateway payloads built from the store: READY and GUILD_CREATE.

use lodge_chat::{Guild, Permissions, User};
use lodge_ids::UserId;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::error::ApiResult;
use crate::wire;

/// Members sent in GUILD_CREATE at most (Discord's `large_threshold` maximum).
pub const MAX_GUILD_CREATE_MEMBERS: u32 = 250;

pub fn ready(
    s: &AppState,
    user: &User,
    session_id: &str,
    guild_ids: &[lodge_ids::GuildId],
    shard: Option<&Value>,
) -> Value {
    let mut v = json!({
        "v": 10,
        "user": wire::user(user),
        "guilds": guild_ids.iter().map(|g| json!({ "id": g.to_string(), "unavailable": true })).collect::<Vec<_>>(),
        "session_id": session_id,
        "session_type": "normal",
        "resume_gateway_url": s.cfg.gateway_url(),
        "application": { "id": user.id.to_string(), "flags": 0 },
        "private_channels": [],
        "relationships": [],
        "presences": [],
        "guild_join_requests": [],
        "geo_ordered_rtc_regions": [],
        "user_settings": {},
    });
    if let Some(sh) = shard {
        v["shard"] = sh.clone();
    }
    v
}

/// GUILD_CREATE for `user_id`: only channels the user can view.
pub async fn guild_create(s: &AppState, g: &Guild, user_id: UserId) -> ApiResult<Value> {
    guild_create_limited(s, g, user_id, MAX_GUILD_CREATE_MEMBERS).await
}

pub async fn guild_create_limited(
    s: &AppState,
    g: &Guild,
    user_id: UserId,
    large_threshold: u32,
) -> ApiResult<Value> {
    let roles = s.store.roles(g.id).await?;
    let mut v = wire::guild(g, &roles);
    let all = s.store.channels(g.id).await?;
    let perms = s.store.channel_permissions(g, &all, user_id).await?;
    let visible: Vec<&lodge_chat::Channel> = all
        .iter()
        .zip(perms)
        .filter(|(_, p)| p.has(Permissions::VIEW_CHANNEL))
        .map(|(c, _)| c)
        .collect();
    let channels: Vec<Value> = visible.iter().map(|c| wire::channel(c)).collect();
    let mut members = s
        .store
        .members(g.id, large_threshold.clamp(1, MAX_GUILD_CREATE_MEMBERS), 0)
        .await?;
    // The list is the first page by user id; the session's own member is always in it (a
    // client takes its own roles and join time from there).
    if !members.iter().any(|m| m.user.id == user_id) {
        if let Ok(me) = s.store.member(g.id, user_id).await {
            members.push(me);
        }
    }
    let member_count = s.store.member_count(g.id).await?;
    let joined_at = members
        .iter()
        .find(|m| m.user.id == user_id)
        .map(|m| wire::iso8601(m.joined_at));
    let voice_states: Vec<Value> = crate::voice::executor::guild_states(s, g.id)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(guild = %g.id, error = %e, "GUILD_CREATE without voice states");
            Vec::new()
        })
        .iter()
        // Only the voice channels the user may view: who is in a hidden one is not theirs to see.
        .filter(|vs| visible.iter().any(|c| c.id == vs.channel_id))
        .map(|vs| {
            let mut j = vs.json();
            j.as_object_mut().map(|o| o.remove("guild_id"));
            j
        })
        .collect();
    v["unavailable"] = json!(false);
    v["channels"] = Value::Array(channels);
    v["members"] = Value::Array(members.iter().map(wire::member).collect());
    v["member_count"] = json!(member_count);
    v["large"] = json!(member_count >= large_threshold as u64);
    v["joined_at"] = json!(joined_at);
    v["voice_states"] = Value::Array(voice_states);
    let ids: Vec<UserId> = members.iter().map(|m| m.user.id).collect();
    v["presences"] = Value::Array(super::presence::snapshot(s, g.id, &ids).await);
    v["threads"] = json!([]);
    v["stage_instances"] = json!([]);
    v["guild_scheduled_events"] = json!([]);
    v["soundboard_sounds"] = json!([]);
    v["lazy"] = json!(true);
    Ok(v)
}
