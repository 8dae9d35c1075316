//! Channel routes: get/update/delete, permission overwrites, invites.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use lodge_chat::{ChannelSpec, Permissions};
use serde::Deserialize;
use serde_json::{json, Value};

use super::guilds::OverwriteBody;
use super::{channel_for, require};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{present, snowflake, ApiJson, Auth};
use crate::hub::{DispatchKind, Target};
use crate::wire;

pub async fn get(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (c, _, _) = channel_for(&s, snowflake(&id, "channel")?, u.id.get()).await?;
    Ok(Json(wire::channel(&c)))
}

#[derive(Deserialize)]
pub struct UpdateChannel {
    name: Option<String>,
    position: Option<i64>,
    bitrate: Option<u32>,
    user_limit: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    require_dave: Option<Value>,
    topic: Option<String>,
}

/// Lodge's `require_dave` from a create or update body: absent is unchanged, a JSON boolean is
/// the setting, anything else (`null` included) a form error naming the field. Checked here,
/// not by serde, so the refusal is Discord's 50035 like every other bad channel field.
pub(super) fn require_dave(v: Option<Value>) -> ApiResult<Option<bool>> {
    match v {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(ApiError::bad_request(
            "require_dave",
            "Must be true or false.",
        )),
    }
}

pub async fn update(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<UpdateChannel>,
) -> ApiResult<Json<Value>> {
    let (c, g, p) = channel_for(&s, snowflake(&id, "channel")?, u.id.get()).await?;
    require(p, Permissions::MANAGE_CHANNELS, "MANAGE_CHANNELS")?;
    let require_dave = require_dave(b.require_dave)?;
    let c = s
        .store
        .update_channel(
            c.id,
            ChannelSpec {
                name: b.name,
                position: b.position,
                bitrate: b.bitrate,
                user_limit: b.user_limit,
                require_dave,
                topic: b.topic.map(Some),
                ..Default::default()
            },
        )
        .await?;
    let v = wire::channel(&c);
    s.hub.send(
        Target::Guild(g.id),
        Some(g.id),
        Some(c.id),
        DispatchKind::ChannelUpdate,
        v.clone(),
    );
    Ok(Json(v))
}

pub async fn remove(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (c, g, p) = channel_for(&s, snowflake(&id, "channel")?, u.id.get()).await?;
    require(p, Permissions::MANAGE_CHANNELS, "MANAGE_CHANNELS")?;
    crate::voice::service::disconnect_channel(&s, g.id, c.id).await;
    let c = s.store.delete_channel(c.id).await?;
    let v = wire::channel(&c);
    s.hub.send(
        Target::Guild(g.id),
        Some(g.id),
        None,
        DispatchKind::ChannelDelete,
        v.clone(),
    );
    Ok(Json(v))
}

pub async fn put_overwrite(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, target)): Path<(String, String)>,
    ApiJson(mut b): ApiJson<OverwriteBody>,
) -> ApiResult<StatusCode> {
    let (c, g, p) = channel_for(&s, snowflake(&id, "channel")?, u.id.get()).await?;
    require(p, Permissions::MANAGE_ROLES, "MANAGE_ROLES")?;
    b.id = target;
    let ow = b.parse()?;
    // Only bits you hold in this channel may be allowed or denied (owners and admins hold all).
    super::overwrites::check(&s, &g, p, &ow).await?;
    s.store.set_overwrite(c.id, ow).await?;
    let c = s.store.channel(c.id).await?;
    s.hub.send(
        Target::Guild(g.id),
        Some(g.id),
        Some(c.id),
        DispatchKind::ChannelUpdate,
        wire::channel(&c),
    );
    crate::voice::service::refresh_channel_permissions(&s, g.id, c.id).await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete_overwrite(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, target)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (c, g, p) = channel_for(&s, snowflake(&id, "channel")?, u.id.get()).await?;
    require(p, Permissions::MANAGE_ROLES, "MANAGE_ROLES")?;
    s.store
        .delete_overwrite(c.id, snowflake(&target, "overwrite")?)
        .await?;
    let c = s.store.channel(c.id).await?;
    s.hub.send(
        Target::Guild(g.id),
        Some(g.id),
        Some(c.id),
        DispatchKind::ChannelUpdate,
        wire::channel(&c),
    );
    crate::voice::service::refresh_channel_permissions(&s, g.id, c.id).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
pub struct CreateInvite {
    #[serde(default)]
    max_age: Option<u32>,
    #[serde(default)]
    max_uses: Option<u32>,
}

pub async fn create_invite(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let (c, g, p) = channel_for(&s, snowflake(&id, "channel")?, u.id.get()).await?;
    require(
        p,
        Permissions::CREATE_INSTANT_INVITE,
        "CREATE_INSTANT_INVITE",
    )?;
    // The body is optional (Discord accepts an empty one).
    let b: CreateInvite = if body.iter().all(|b| b.is_ascii_whitespace()) {
        CreateInvite::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                50109,
                format!("The request body contains invalid JSON: {e}"),
            )
        })?
    };
    let max_age = b.max_age.unwrap_or(86_400);
    if max_age > 604_800 {
        return Err(ApiError::bad_request(
            "max_age",
            "Must be between 0 and 604800.",
        ));
    }
    let max_uses = b.max_uses.unwrap_or(0);
    if max_uses > 100 {
        return Err(ApiError::bad_request(
            "max_uses",
            "Must be between 0 and 100.",
        ));
    }
    let inv = s.store.create_invite(&c, u.id, max_uses, max_age).await?;
    Ok(Json(invite_json(&inv, &g, &c, Some(&u))))
}

fn invite_json(
    inv: &lodge_chat::Invite,
    g: &lodge_chat::Guild,
    c: &lodge_chat::Channel,
    inviter: Option<&lodge_chat::User>,
) -> Value {
    json!({
        "type": 0,
        "code": inv.code,
        "guild": { "id": g.id.to_string(), "name": g.name, "icon": null, "features": [] },
        "guild_id": g.id.to_string(),
        "channel": { "id": c.id.to_string(), "name": c.name, "type": c.kind as u8 },
        "inviter": inviter.map(wire::user),
        "max_uses": inv.max_uses,
        "uses": inv.uses,
        "expires_at": inv.expires_at.map(wire::iso8601),
    })
}

pub async fn get_invite(
    State(s): State<AppState>,
    Path(code): Path<String>,
) -> ApiResult<Json<Value>> {
    let inv = s.store.invite(&code).await?;
    let g = s.store.guild(inv.guild_id).await?;
    let c = s.store.channel(inv.channel_id).await?;
    Ok(Json(invite_json(&inv, &g, &c, None)))
}

/// Join the invite's guild.
pub async fn accept_invite(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(code): Path<String>,
) -> ApiResult<Json<Value>> {
    if code.len() > 32 {
        return Err(ApiError::not_found("invite"));
    }
    let (inv, added) = s.store.use_invite(&code, u.id).await?;
    let g = s.store.guild(inv.guild_id).await?;
    let c = s.store.channel(inv.channel_id).await?;
    if added {
        let m = s.store.member(g.id, u.id).await?;
        let mut mv = wire::member(&m);
        mv["guild_id"] = json!(g.id.to_string());
        s.hub.send(
            Target::Guild(g.id),
            Some(g.id),
            None,
            DispatchKind::GuildMemberAdd,
            mv,
        );
        let payload = crate::gateway::payloads::guild_create(&s, &g, u.id).await?;
        s.hub.send(
            Target::User(u.id),
            Some(g.id),
            None,
            DispatchKind::GuildCreate,
            payload,
        );
        tracing::info!(guild = %g.id, user = %u.id, "member joined by invite");
    }
    Ok(Json(invite_json(&inv, &g, &c, None)))
}
