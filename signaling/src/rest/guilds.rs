//! Guild routes: create/get/update/delete, channels, members, roles, voice states.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use lodge_chat::{ChannelKind, ChannelSpec, Overwrite, OverwriteKind, Permissions};
use lodge_ids::UserId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{guild_for, require};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{present, snowflake, ApiJson, ApiQuery, Auth};
use crate::hub::{DispatchKind, Target};
use crate::wire;

#[derive(Deserialize)]
pub struct CreateGuild {
    name: String,
}

pub async fn create(
    State(s): State<AppState>,
    Auth(u): Auth,
    ApiJson(b): ApiJson<CreateGuild>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    // The owned-guild cap (lodge_chat::store::MAX_OWNED_GUILDS) is checked in the creating
    // transaction: concurrent creations cannot overshoot it.
    let g = s.store.create_guild(&u, &b.name).await?;
    tracing::info!(guild = %g.id, owner = %u.id, "guild created");
    let roles = s.store.roles(g.id).await?;
    let payload = crate::gateway::payloads::guild_create(&s, &g, u.id).await?;
    s.hub.send(
        Target::User(u.id),
        Some(g.id),
        None,
        DispatchKind::GuildCreate,
        payload,
    );
    let mut v = wire::guild(&g, &roles);
    v["channels"] = Value::Array(
        s.store
            .channels(g.id)
            .await?
            .iter()
            .map(wire::channel)
            .collect(),
    );
    Ok((StatusCode::CREATED, Json(v)))
}

pub async fn get(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    let roles = s.store.roles(g.id).await?;
    Ok(Json(wire::guild(&g, &roles)))
}

#[derive(Deserialize)]
pub struct UpdateGuild {
    name: Option<String>,
}

pub async fn update(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<UpdateGuild>,
) -> ApiResult<Json<Value>> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    require(
        s.store.permissions(&g, None, u.id).await?,
        Permissions::MANAGE_GUILD,
        "MANAGE_GUILD",
    )?;
    let g = match b.name {
        Some(n) => s.store.rename_guild(g.id, &n).await?,
        None => g,
    };
    let roles = s.store.roles(g.id).await?;
    let v = wire::guild(&g, &roles);
    s.hub.send(
        Target::Guild(g.id),
        Some(g.id),
        None,
        DispatchKind::GuildUpdate,
        v.clone(),
    );
    Ok(Json(v))
}

pub async fn remove(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    if g.owner_id != u.id {
        return Err(ApiError::missing_permissions(
            "only the owner may delete a guild",
        ));
    }
    crate::voice::service::disconnect_guild(&s, g.id).await;
    s.hub.send(
        Target::Guild(g.id),
        Some(g.id),
        None,
        DispatchKind::GuildDelete,
        json!({ "id": g.id.to_string(), "unavailable": false }),
    );
    s.store.delete_guild(g.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn channels(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    let all = s.store.channels(g.id).await?;
    let perms = s.store.channel_permissions(&g, &all, u.id).await?;
    let out = all
        .iter()
        .zip(perms)
        .filter(|(_, p)| p.has(Permissions::VIEW_CHANNEL))
        .map(|(c, _)| wire::channel(c))
        .collect();
    Ok(Json(Value::Array(out)))
}

#[derive(Deserialize)]
pub struct OverwriteBody {
    /// In the channel's `permission_overwrites`; taken from the path on PUT.
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(default)]
    pub allow: Option<String>,
    #[serde(default)]
    pub deny: Option<String>,
}

impl OverwriteBody {
    pub fn parse(&self) -> ApiResult<Overwrite> {
        let bits = |v: &Option<String>, f: &str| -> ApiResult<u64> {
            v.as_deref().unwrap_or("0").parse::<u64>().map_err(|_| {
                ApiError::bad_request(f, "Must be a permission bit set as a decimal string.")
            })
        };
        Ok(Overwrite {
            target: self
                .id
                .parse()
                .map_err(|_| ApiError::bad_request("id", "Must be a snowflake."))?,
            kind: match self.kind {
                0 => OverwriteKind::Role,
                1 => OverwriteKind::Member,
                _ => {
                    return Err(ApiError::bad_request(
                        "type",
                        "Must be 0 (role) or 1 (member).",
                    ))
                }
            },
            allow: bits(&self.allow, "allow")?,
            deny: bits(&self.deny, "deny")?,
        })
    }
}

#[derive(Deserialize)]
pub struct CreateChannel {
    name: String,
    #[serde(rename = "type", default)]
    kind: Option<i64>,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    position: Option<i64>,
    #[serde(default)]
    bitrate: Option<u32>,
    #[serde(default)]
    user_limit: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    require_dave: Option<Value>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    permission_overwrites: Vec<OverwriteBody>,
}

pub async fn create_channel(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<CreateChannel>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    let p = s.store.permissions(&g, None, u.id).await?;
    require(p, Permissions::MANAGE_CHANNELS, "MANAGE_CHANNELS")?;
    let kind = match b.kind {
        None => ChannelKind::Text,
        Some(k) => ChannelKind::from_code(k).ok_or_else(|| {
            ApiError::bad_request(
                "type",
                "Lodge supports 0 (text), 2 (voice) and 4 (category).",
            )
        })?,
    };
    let require_dave = super::channels::require_dave(b.require_dave)?;
    let parent_id = match b.parent_id {
        Some(p) => Some(Some(p.parse().map_err(|_| {
            ApiError::bad_request("parent_id", "Must be a snowflake.")
        })?)),
        None => None,
    };
    let ows = b
        .permission_overwrites
        .iter()
        .map(|o| o.parse())
        .collect::<ApiResult<Vec<_>>>()?;
    // The same rules as PUT /channels/{id}/permissions/{target}, with the creator's guild
    // permissions (the channel does not exist yet), all checked before anything is written.
    for o in &ows {
        super::overwrites::check(&s, &g, p, o).await?;
    }
    let c = s
        .store
        .create_channel(
            g.id,
            ChannelSpec {
                name: Some(b.name),
                kind: Some(kind),
                parent_id,
                position: b.position,
                bitrate: b.bitrate,
                user_limit: b.user_limit,
                require_dave,
                topic: Some(b.topic),
                overwrites: ows,
            },
        )
        .await?;
    let v = wire::channel(&c);
    s.hub.send(
        Target::Guild(g.id),
        Some(g.id),
        Some(c.id),
        DispatchKind::ChannelCreate,
        v.clone(),
    );
    Ok((StatusCode::CREATED, Json(v)))
}

#[derive(Deserialize)]
pub struct MembersQuery {
    limit: Option<u32>,
    after: Option<String>,
}

pub async fn members(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<MembersQuery>,
) -> ApiResult<Json<Value>> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    let limit = q.limit.unwrap_or(1);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "limit",
            "Must be between 1 and 1000.",
        ));
    }
    let after = q
        .after
        .map(|a| a.parse::<u64>())
        .transpose()
        .map_err(|_| ApiError::bad_request("after", "Must be a snowflake."))?;
    let ms = s.store.members(g.id, limit, after.unwrap_or(0)).await?;
    Ok(Json(Value::Array(ms.iter().map(wire::member).collect())))
}

pub async fn member(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    let m = s
        .store
        .member(g.id, UserId(snowflake(&user, "member")?))
        .await?;
    Ok(Json(wire::member(&m)))
}

pub async fn kick(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    let target = snowflake(&user, "member")?;
    if target == g.owner_id.get() {
        return Err(ApiError::missing_permissions(
            "the guild owner cannot be kicked",
        ));
    }
    let m = s.store.member(g.id, UserId(target)).await?;
    if target != u.id.get() {
        require(
            s.store.permissions(&g, None, u.id).await?,
            Permissions::KICK_MEMBERS,
            "KICK_MEMBERS",
        )?;
        super::hierarchy::may_act_on(&s, &g, u.id.get(), target).await?;
    }
    // Membership first: from here op 4 refuses the user, so the voice disconnect is final.
    s.store.remove_member(g.id, UserId(target)).await?;
    crate::voice::service::disconnect_user(&s, g.id, UserId(target)).await;
    s.hub.send(
        Target::Guild(g.id),
        Some(g.id),
        None,
        DispatchKind::GuildMemberRemove,
        json!({ "guild_id": g.id.to_string(), "user": wire::user(&m.user) }),
    );
    s.hub.send(
        Target::User(UserId(target)),
        Some(g.id),
        None,
        DispatchKind::GuildDelete,
        json!({ "id": g.id.to_string() }),
    );
    Ok(StatusCode::NO_CONTENT)
}

pub async fn roles(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    Ok(Json(Value::Array(
        s.store.roles(g.id).await?.iter().map(wire::role).collect(),
    )))
}

pub async fn voice_states(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let g = guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    let visible = visible_channels(&s, &g, u.id.get()).await?;
    let states = crate::voice::executor::guild_states(&s, g.id)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(Value::Array(
        states
            .iter()
            .filter(|v| visible.contains(&v.channel_id))
            .map(|v| v.json())
            .collect(),
    )))
}

/// The ids of the guild's channels `user_id` may view (VIEW_CHANNEL).
pub async fn visible_channels(
    s: &AppState,
    g: &lodge_chat::Guild,
    user_id: u64,
) -> ApiResult<std::collections::HashSet<lodge_ids::ChannelId>> {
    let all = s.store.channels(g.id).await?;
    let perms = s
        .store
        .channel_permissions(g, &all, UserId(user_id))
        .await?;
    Ok(all
        .iter()
        .zip(perms)
        .filter(|(_, p)| p.has(Permissions::VIEW_CHANNEL))
        .map(|(c, _)| c.id)
        .collect())
}
