//! Roles, member roles and member edits (nick, roles, server mute/deafen, move), with Discord's
//! hierarchy rules: you manage only roles below your highest role, and never grant permissions
//! you do not hold.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use lodge_chat::{Guild, Permissions, Role, RoleSpec, User};
use lodge_ids::{ChannelId, GuildId, RoleId, UserId};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{guild_for, require};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{snowflake, ApiJson, Auth};
use crate::hub::{DispatchKind, Target};
use crate::wire;

fn perm_bits(v: &Option<String>) -> ApiResult<Option<u64>> {
    v.as_deref()
        .map(|p| {
            p.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "permissions",
                    "Must be a permission bit set as a decimal string.",
                )
            })
        })
        .transpose()
}

/// MANAGE_ROLES, and `role` strictly below the actor's highest role (the owner is above all).
async fn may_manage(
    s: &AppState,
    g: &Guild,
    actor: &User,
    role: Option<&Role>,
) -> ApiResult<Permissions> {
    let p = s.store.permissions(g, None, actor.id).await?;
    require(p, Permissions::MANAGE_ROLES, "MANAGE_ROLES")?;
    if let Some(r) = role {
        let top = s.store.top_role_position(g, actor.id).await?;
        if r.id != RoleId::everyone(g.id) && r.position >= top {
            return Err(ApiError::missing_permissions(
                "the role is not below your highest role",
            ));
        }
    }
    Ok(p)
}

fn no_escalation(actor: Permissions, wanted: u64) -> ApiResult<()> {
    if wanted & !actor.0 != 0 {
        return Err(ApiError::missing_permissions(
            "cannot grant permissions you do not have",
        ));
    }
    Ok(())
}

async fn after_role_change(s: &AppState, g: u64) {
    // CONNECT/SPEAK may have changed for anyone in voice.
    let channels: std::collections::HashSet<lodge_ids::ChannelId> =
        crate::voice::executor::guild_states(s, GuildId(g))
            .await
            .unwrap_or_default()
            .iter()
            .map(|v| v.channel_id)
            .collect();
    for c in channels {
        crate::voice::service::refresh_channel_permissions(s, GuildId(g), c).await;
    }
}

#[derive(Deserialize, Default)]
pub struct RoleBody {
    name: Option<String>,
    permissions: Option<String>,
    color: Option<u32>,
    position: Option<i64>,
}

pub async fn create(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    let p = may_manage(&s, &g, &u, None).await?;
    let b: RoleBody = crate::extract::optional_json(&body)?;
    let perms = perm_bits(&b.permissions)?.unwrap_or(0);
    no_escalation(p, perms)?;
    let mut r = s
        .store
        .create_role(g.id, b.name.as_deref().unwrap_or("new role"), perms)
        .await?;
    if let Some(c) = b.color {
        r = s
            .store
            .update_role(
                g.id,
                r.id,
                RoleSpec {
                    color: Some(c),
                    ..Default::default()
                },
            )
            .await?;
    }
    let v = wire::role(&r);
    s.hub.send(
        Target::Guild(g.id),
        Some(g.id),
        None,
        DispatchKind::GuildRoleCreate,
        json!({ "guild_id": g.id.to_string(), "role": v }),
    );
    Ok(Json(v))
}

pub async fn update(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, role)): Path<(String, String)>,
    ApiJson(b): ApiJson<RoleBody>,
) -> ApiResult<Json<Value>> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    let r = s
        .store
        .role(g.id, RoleId(snowflake(&role, "role")?))
        .await?;
    let p = may_manage(&s, &g, &u, Some(&r)).await?;
    let perms = perm_bits(&b.permissions)?;
    if let Some(bits) = perms {
        // Adding bits needs them; removing bits you lack is allowed only if you could grant them.
        no_escalation(p, bits & !r.permissions)?;
    }
    if let Some(pos) = b.position {
        let top = s.store.top_role_position(&g, u.id).await?;
        if pos >= top {
            return Err(ApiError::missing_permissions(
                "cannot move a role to or above your highest role",
            ));
        }
    }
    let r = s
        .store
        .update_role(
            g.id,
            r.id,
            RoleSpec {
                name: b.name,
                permissions: perms,
                color: b.color,
                position: b.position,
            },
        )
        .await?;
    let v = wire::role(&r);
    s.hub.send(
        Target::Guild(g.id),
        Some(g.id),
        None,
        DispatchKind::GuildRoleUpdate,
        json!({ "guild_id": g.id.to_string(), "role": v }),
    );
    after_role_change(&s, g.id.get()).await;
    Ok(Json(v))
}

pub async fn delete(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, role)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    let r = s
        .store
        .role(g.id, RoleId(snowflake(&role, "role")?))
        .await?;
    may_manage(&s, &g, &u, Some(&r)).await?;
    s.store.delete_role(g.id, r.id).await?;
    s.hub.send(
        Target::Guild(g.id),
        Some(g.id),
        None,
        DispatchKind::GuildRoleDelete,
        json!({ "guild_id": g.id.to_string(), "role_id": r.id.to_string() }),
    );
    after_role_change(&s, g.id.get()).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn member_update_dispatch(s: &AppState, g: &Guild, user: u64) {
    if let Ok(m) = s.store.member(g.id, UserId(user)).await {
        let mut v = wire::member(&m);
        v["guild_id"] = json!(g.id.to_string());
        s.hub.send(
            Target::Guild(g.id),
            Some(g.id),
            None,
            DispatchKind::GuildMemberUpdate,
            v,
        );
    }
}

pub async fn add_member_role(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, user, role)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    let target = s
        .store
        .member(g.id, UserId(snowflake(&user, "member")?))
        .await?;
    let r = s
        .store
        .role(g.id, RoleId(snowflake(&role, "role")?))
        .await?;
    may_manage(&s, &g, &u, Some(&r)).await?;
    if r.id == RoleId::everyone(g.id) {
        return Err(ApiError::bad_request("role_id", "Everyone has @everyone."));
    }
    if target.user.id != u.id {
        super::hierarchy::may_act_on(&s, &g, u.id.get(), target.user.id.get()).await?;
    }
    s.store.add_member_role(g.id, target.user.id, r.id).await?;
    member_update_dispatch(&s, &g, target.user.id.get()).await;
    after_role_change(&s, g.id.get()).await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove_member_role(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, user, role)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    let target = s
        .store
        .member(g.id, UserId(snowflake(&user, "member")?))
        .await?;
    let r = s
        .store
        .role(g.id, RoleId(snowflake(&role, "role")?))
        .await?;
    may_manage(&s, &g, &u, Some(&r)).await?;
    if target.user.id != u.id {
        super::hierarchy::may_act_on(&s, &g, u.id.get(), target.user.id.get()).await?;
    }
    s.store
        .remove_member_role(g.id, target.user.id, r.id)
        .await?;
    member_update_dispatch(&s, &g, target.user.id.get()).await;
    after_role_change(&s, g.id.get()).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct MemberBody {
    #[serde(default)]
    nick: Option<Option<String>>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    mute: Option<bool>,
    deaf: Option<bool>,
    #[serde(default, deserialize_with = "double_option")]
    channel_id: Option<Option<String>>,
}

/// Tell "absent" from "null" (null means disconnect from voice).
fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::<String>::deserialize(d)?))
}

/// Would moving `target` (with `target_roles`) to `dest` be allowed? The same rules as
/// `voice::service::move_member`: a voice channel of this guild that both the actor and the
/// member may view and connect to.
async fn check_move(
    s: &AppState,
    g: &Guild,
    actor: u64,
    target: u64,
    target_roles: &[RoleId],
    dest: u64,
) -> ApiResult<()> {
    let c = s.store.channel(ChannelId(dest)).await?;
    if c.guild_id != g.id || c.kind != lodge_chat::ChannelKind::Voice {
        return Err(ApiError::bad_request(
            "channel_id",
            "Not a voice channel of this guild.",
        ));
    }
    let roles = s.store.roles(g.id).await?;
    let actor_roles = s
        .store
        .member_role_ids(g, UserId(actor))
        .await?
        .unwrap_or_default();
    let join = Permissions::VIEW_CHANNEL | Permissions::CONNECT;
    let of = |roles_of: &[RoleId], user| {
        lodge_chat::permissions::of_member(g, &roles, roles_of, Some(&c), user)
    };
    if !of(&actor_roles, UserId(actor)).has(join) {
        return Err(ApiError::missing_permissions(
            "CONNECT in the destination channel",
        ));
    }
    if !of(target_roles, UserId(target)).has(join) {
        return Err(ApiError::missing_permissions(
            "the member cannot CONNECT to the destination channel",
        ));
    }
    Ok(())
}

/// PATCH /guilds/{id}/members/{user}: nick, roles, server mute/deafen, move or disconnect.
pub async fn update_member(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, user)): Path<(String, String)>,
    ApiJson(b): ApiJson<MemberBody>,
) -> ApiResult<Json<Value>> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    let target = s
        .store
        .member(g.id, UserId(snowflake(&user, "member")?))
        .await?;
    let p = s.store.permissions(&g, None, u.id).await?;
    let target_id = target.user.id;
    if target_id == g.owner_id
        && u.id != g.owner_id
        && (b.mute.is_some() || b.deaf.is_some() || b.roles.is_some())
    {
        return Err(ApiError::missing_permissions(
            "the guild owner is above everyone",
        ));
    }
    // Every check comes before the first change: a refused request changes nothing.
    if let Some(nick) = &b.nick {
        if target_id == u.id {
            require(p, Permissions::CHANGE_NICKNAME, "CHANGE_NICKNAME")?;
        } else {
            require(p, Permissions::MANAGE_NICKNAMES, "MANAGE_NICKNAMES")?;
        }
        if let Some(n) = nick.as_deref().filter(|n| !n.trim().is_empty()) {
            lodge_chat::names::check_name("nick", n, lodge_chat::store::MAX_NICK_LEN)?;
        }
    }
    if target_id != u.id && (b.nick.is_some() || b.roles.is_some()) {
        super::hierarchy::may_act_on(&s, &g, u.id.get(), target_id.get()).await?;
    }
    let mut role_changes: Vec<(RoleId, bool)> = Vec::new();
    if let Some(roles) = &b.roles {
        let wanted: Vec<RoleId> = roles
            .iter()
            .map(|r| {
                r.parse::<RoleId>()
                    .map_err(|_| ApiError::bad_request("roles", "Must be snowflakes."))
            })
            .collect::<ApiResult<_>>()?;
        require(p, Permissions::MANAGE_ROLES, "MANAGE_ROLES")?;
        let all = s.store.roles(g.id).await?;
        let top = s.store.top_role_position(&g, u.id).await?;
        let changed: Vec<RoleId> = wanted
            .iter()
            .filter(|r| !target.roles.contains(r))
            .chain(target.roles.iter().filter(|r| !wanted.contains(r)))
            .copied()
            .collect();
        for rid in &changed {
            let r = all
                .iter()
                .find(|r| r.id == *rid)
                .ok_or_else(|| ApiError::not_found("role"))?;
            if r.position >= top || r.id == RoleId::everyone(g.id) {
                return Err(ApiError::missing_permissions(
                    "a role is not below your highest role",
                ));
            }
            role_changes.push((*rid, wanted.contains(rid)));
        }
    }
    if b.mute.is_some() {
        require(p, Permissions::MUTE_MEMBERS, "MUTE_MEMBERS")?;
    }
    if b.deaf.is_some() {
        require(p, Permissions::DEAFEN_MEMBERS, "DEAFEN_MEMBERS")?;
    }
    let dest = match &b.channel_id {
        Some(ch) => {
            require(p, Permissions::MOVE_MEMBERS, "MOVE_MEMBERS")?;
            Some(
                ch.as_deref()
                    .map(|c| {
                        c.parse::<u64>().map_err(|_| {
                            ApiError::bad_request("channel_id", "Must be a snowflake.")
                        })
                    })
                    .transpose()?,
            )
        }
        None => None,
    };
    if (b.mute.is_some() || b.deaf.is_some() || dest.is_some())
        && !crate::voice::service::in_voice(&s, g.id, target_id).await?
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            40032,
            "Target user is not connected to voice.",
        ));
    }
    if let Some(Some(dest)) = dest {
        // The move's own checks, made now with the roles the member will have, so a move
        // refused after the nick and roles changed cannot leave half a request applied.
        let mut roles_after = target.roles.clone();
        roles_after.retain(|r| !role_changes.iter().any(|(c, add)| c == r && !add));
        roles_after.extend(role_changes.iter().filter(|(_, add)| *add).map(|(r, _)| *r));
        check_move(&s, &g, u.id.get(), target_id.get(), &roles_after, dest).await?;
    }
    if let Some(nick) = &b.nick {
        s.store.set_nick(g.id, target_id, nick.as_deref()).await?;
    }
    for (rid, add) in role_changes {
        if add {
            s.store.add_member_role(g.id, target_id, rid).await?;
        } else {
            s.store.remove_member_role(g.id, target_id, rid).await?;
        }
    }
    if b.mute.is_some() || b.deaf.is_some() {
        crate::voice::service::set_server_flags(&s, g.id, target_id, b.mute, b.deaf).await?;
    }
    if let Some(dest) = dest {
        crate::voice::service::move_member(&s, &g, &u, target_id, dest).await?;
    }
    member_update_dispatch(&s, &g, target_id.get()).await;
    if b.roles.is_some() {
        after_role_change(&s, g.id.get()).await;
    }
    let m = s.store.member(g.id, target_id).await?;
    Ok(Json(wire::member(&m)))
}
