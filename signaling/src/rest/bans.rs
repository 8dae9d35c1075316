//! Guild bans (Discord's shapes): `PUT/DELETE/GET /guilds/{id}/bans/{user}`, `GET
//! /guilds/{id}/bans`. Banning needs BAN_MEMBERS and, for a member, a highest role above
//! theirs; it removes the membership, ends the user's voice call in the guild and keeps them
//! from joining again by invite (40007) until the ban is lifted.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use lodge_chat::bans::MAX_BANS_PAGE;
use lodge_chat::{Ban, BanQuery, Guild, Permissions, User};
use lodge_ids::UserId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{guild_for, require};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{snowflake, ApiQuery, Auth};
use crate::hub::{DispatchKind, Target};
use crate::wire;

/// Longest `delete_message_seconds` (7 days, Discord's limit).
pub const MAX_DELETE_MESSAGE_SECONDS: u64 = 604_800;

fn ban_json(b: &Ban) -> Value {
    json!({ "reason": b.reason, "user": wire::user(&b.user) })
}

/// GUILD_BAN_ADD/REMOVE go only to members who may see bans (BAN_MEMBERS or VIEW_AUDIT_LOG),
/// as on Discord; everyone else learns of a banned member from GUILD_MEMBER_REMOVE.
async fn tell_ban_watchers(s: &AppState, g: &Guild, t: DispatchKind, user: &User) {
    let d = json!({ "guild_id": g.id.to_string(), "user": wire::user(user) });
    match s.store.ban_watchers(g).await {
        Ok(None) => s.hub.send(Target::Guild(g.id), Some(g.id), None, t, d),
        Ok(Some(users)) => {
            for u in users {
                s.hub.send(Target::User(u), Some(g.id), None, t, d.clone());
            }
        }
        Err(e) => tracing::warn!(guild = %g.id, error = %e, "{t} not dispatched"),
    }
}

/// The guild, if `actor` is in it and holds BAN_MEMBERS.
async fn moderated_guild(s: &AppState, id: &str, actor: &User) -> ApiResult<Guild> {
    let g = guild_for(s, snowflake(id, "guild")?, actor.id.get()).await?;
    require(
        s.store.permissions(&g, None, actor.id).await?,
        Permissions::BAN_MEMBERS,
        "BAN_MEMBERS",
    )?;
    Ok(g)
}

#[derive(Deserialize, Default)]
pub struct BanBody {
    #[serde(default)]
    delete_message_seconds: Option<u64>,
    /// Deprecated by Discord, still accepted: days instead of seconds.
    #[serde(default)]
    delete_message_days: Option<u64>,
}

/// `X-Audit-Log-Reason`, which Discord clients send percent-encoded.
fn audit_reason(h: &HeaderMap) -> Option<String> {
    let raw = h.get("x-audit-log-reason")?.to_str().ok()?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&a), Some(&b)) if hex(a).is_some() && hex(b).is_some() => {
                out.push((hex(a).unwrap_or(0) * 16 + hex(b).unwrap_or(0)) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(String::from_utf8(out).unwrap_or_else(|_| raw.to_string())).filter(|r| !r.is_empty())
}

/// `PUT /guilds/{id}/bans/{user}` → 204.
pub async fn ban(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let g = moderated_guild(&s, &id, &u).await?;
    let target = snowflake(&user, "user")?;
    // The body is optional, as on Discord.
    let b: BanBody = crate::extract::optional_json(&body)?;
    let seconds = match (b.delete_message_seconds, b.delete_message_days) {
        (Some(sec), _) => sec,
        (None, Some(days)) if days <= 7 => days * 86_400,
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "delete_message_days",
                "Must be between 0 and 7.",
            ))
        }
        (None, None) => 0,
    };
    if seconds > MAX_DELETE_MESSAGE_SECONDS {
        return Err(ApiError::bad_request(
            "delete_message_seconds",
            format!("Must be between 0 and {MAX_DELETE_MESSAGE_SECONDS}."),
        ));
    }
    if target == g.owner_id.get() {
        return Err(ApiError::missing_permissions(
            "the guild owner cannot be banned",
        ));
    }
    if s.store.is_member(g.id, UserId(target)).await? {
        super::hierarchy::may_act_on(&s, &g, u.id.get(), target).await?;
    }
    let reason = audit_reason(&headers);
    let effect = s
        .store
        .ban(g.id, UserId(target), reason.as_deref(), seconds)
        .await?;
    // Membership is gone: op 4 now refuses the user, so this disconnect is final.
    crate::voice::service::disconnect_user(&s, g.id, UserId(target)).await;
    let banned = s.store.user(UserId(target)).await?;
    let gid = g.id.to_string();
    if effect.was_member {
        // The user's own sessions drop the guild first, so they are not told of their ban.
        s.hub.send(
            Target::User(UserId(target)),
            Some(g.id),
            None,
            DispatchKind::GuildDelete,
            json!({ "id": gid }),
        );
    }
    tell_ban_watchers(&s, &g, DispatchKind::GuildBanAdd, &banned).await;
    if effect.was_member {
        s.hub.send(
            Target::Guild(g.id),
            Some(g.id),
            None,
            DispatchKind::GuildMemberRemove,
            json!({ "guild_id": gid, "user": wire::user(&banned) }),
        );
    }
    for (channel, ids) in &effect.deleted {
        s.hub.send(
            Target::Guild(g.id),
            Some(g.id),
            Some(lodge_ids::ChannelId(*channel)),
            DispatchKind::MessageDeleteBulk,
            json!({ "ids": ids.iter().map(u64::to_string).collect::<Vec<_>>(),
                    "channel_id": channel.to_string(), "guild_id": gid }),
        );
    }
    tracing::info!(
        guild = %g.id,
        user = %target,
        by = %u.id,
        was_member = effect.was_member,
        "member banned"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /guilds/{id}/bans/{user}` → 204, or 404 Unknown Ban.
pub async fn unban(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let g = moderated_guild(&s, &id, &u).await?;
    let b = s
        .store
        .ban_of(g.id, UserId(snowflake(&user, "ban")?))
        .await?;
    s.store.unban(g.id, b.user.id).await?;
    tell_ban_watchers(&s, &g, DispatchKind::GuildBanRemove, &b.user).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /guilds/{id}/bans/{user}` → the ban object, or 404 Unknown Ban.
pub async fn get(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let g = moderated_guild(&s, &id, &u).await?;
    let b = s
        .store
        .ban_of(g.id, UserId(snowflake(&user, "ban")?))
        .await?;
    Ok(Json(ban_json(&b)))
}

#[derive(Deserialize)]
pub struct BansQuery {
    limit: Option<u32>,
    before: Option<String>,
    after: Option<String>,
}

/// `GET /guilds/{id}/bans?limit&before&after` → ban objects by user id.
pub async fn list(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<BansQuery>,
) -> ApiResult<Json<Value>> {
    let g = moderated_guild(&s, &id, &u).await?;
    let limit = q.limit.unwrap_or(MAX_BANS_PAGE);
    if !(1..=MAX_BANS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "limit",
            format!("Must be between 1 and {MAX_BANS_PAGE}."),
        ));
    }
    let id_of = |v: Option<String>, f: &str| -> ApiResult<Option<u64>> {
        v.map(|x| {
            x.parse::<u64>()
                .map_err(|_| ApiError::bad_request(f, "Must be a snowflake."))
        })
        .transpose()
    };
    let bans = s
        .store
        .bans(
            g.id,
            BanQuery {
                limit,
                before: id_of(q.before, "before")?,
                after: id_of(q.after, "after")?,
            },
        )
        .await?;
    Ok(Json(Value::Array(bans.iter().map(ban_json).collect())))
}
