//! Messages, reactions and typing.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use lodge_chat::{Channel, ChannelKind, Message, MessageQuery, NewMessage, Permissions, User};
use lodge_ids::{ChannelId, MessageId, UserId};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{channel_for, require};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{snowflake, ApiJson, ApiQuery, Auth};
use crate::hub::{DispatchKind, Target};
use crate::wire;

fn messageable(c: &Channel) -> ApiResult<()> {
    match c.kind {
        ChannelKind::Text | ChannelKind::Voice => Ok(()),
        ChannelKind::Category => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            50008,
            "Cannot send messages in a non-text channel",
        )),
    }
}

/// VIEW_CHANNEL and READ_MESSAGE_HISTORY: what it takes to see a channel's past messages.
const READ: u64 = Permissions::VIEW_CHANNEL | Permissions::READ_MESSAGE_HISTORY;

/// Which referenced channels a viewer may read, asked once per channel per request.
#[derive(Default)]
struct Readable(std::collections::HashMap<u64, bool>);

impl Readable {
    async fn check(&mut self, s: &AppState, channel_id: u64, viewer: u64) -> bool {
        if let Some(v) = self.0.get(&channel_id) {
            return *v;
        }
        let ok = async {
            let c = s.store.channel(ChannelId(channel_id)).await.ok()?;
            let g = s.store.guild(c.guild_id).await.ok()?;
            let p = s
                .store
                .permissions(&g, Some(&c), UserId(viewer))
                .await
                .ok()?;
            Some(p.has(READ))
        }
        .await
        .unwrap_or(false);
        self.0.insert(channel_id, ok);
        ok
    }
}

/// A message as `viewer` sees it: `referenced_message` only if the viewer may read the channel
/// it is in (otherwise null, as for a deleted one).
async fn message_json_with(
    s: &AppState,
    m: &Message,
    viewer: u64,
    readable: &mut Readable,
) -> Value {
    let referenced = match m.reference {
        Some((mid, cid)) if readable.check(s, cid.get(), viewer).await => {
            s.store.message(cid, mid, UserId(viewer)).await.ok()
        }
        _ => None,
    };
    wire::message(m, referenced.as_ref())
}

async fn message_json(s: &AppState, m: &Message, viewer: u64) -> Value {
    message_json_with(s, m, viewer, &mut Readable::default()).await
}

/// MESSAGE_CREATE/UPDATE payload: the message plus guild_id and the author's member object.
/// It goes to everyone who can view the message's channel. A reply to a message in another
/// channel is published with a second body, `referenced_message: null`, for sessions whose
/// user may not read that channel (VIEW_CHANNEL and READ_MESSAGE_HISTORY; the gateway decides
/// per session), as REST renders it per viewer.
async fn dispatch_message(s: &AppState, t: DispatchKind, m: &Message) {
    let referenced = match m.reference {
        Some((mid, cid)) => s.store.message(cid, mid, UserId(0)).await.ok(),
        None => None,
    };
    let member = s
        .store
        .member(m.guild_id, m.author.id)
        .await
        .ok()
        .map(|member| {
            let mut mv = wire::member(&member);
            mv.as_object_mut().map(|o| o.remove("user"));
            mv
        });
    let body = |referenced: Option<&Message>| {
        let mut d = wire::message(m, referenced);
        d["guild_id"] = json!(m.guild_id.to_string());
        if let Some(mv) = &member {
            d["member"] = mv.clone();
        }
        d
    };
    let d = body(referenced.as_ref());
    let unreferenced = match (m.reference, &referenced) {
        (Some((_, cid)), Some(_)) if cid != m.channel_id => Some((cid, body(None))),
        _ => None,
    };
    let mut full_for = vec![m.author.id];
    full_for.extend(m.mentions.iter().map(|u| u.id));
    s.hub
        .send_reply(m.guild_id, m.channel_id, t, d, full_for, unreferenced);
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    limit: Option<u32>,
    before: Option<String>,
    after: Option<String>,
    around: Option<String>,
}

pub async fn list(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<Value>> {
    let (c, _, p) = channel_for(&s, snowflake(&id, "channel")?, u.id.get()).await?;
    messageable(&c)?;
    require(p, Permissions::READ_MESSAGE_HISTORY, "READ_MESSAGE_HISTORY")?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("limit", "Must be between 1 and 100."));
    }
    let id_of = |v: Option<String>, f: &str| -> ApiResult<Option<MessageId>> {
        v.map(|x| {
            x.parse::<MessageId>()
                .map_err(|_| ApiError::bad_request(f, "Must be a snowflake."))
        })
        .transpose()
    };
    let query = MessageQuery {
        limit,
        before: id_of(q.before, "before")?,
        after: id_of(q.after, "after")?,
        around: id_of(q.around, "around")?,
    };
    let ms = s.store.messages(c.id, query, u.id).await?;
    let mut out = Vec::with_capacity(ms.len());
    let mut readable = Readable::default();
    for m in &ms {
        out.push(message_json_with(&s, m, u.id.get(), &mut readable).await);
    }
    Ok(Json(Value::Array(out)))
}

#[derive(Deserialize, Default)]
pub struct Reference {
    message_id: Option<Value>,
    channel_id: Option<Value>,
    #[serde(default)]
    fail_if_not_exists: Option<bool>,
}

#[derive(Deserialize)]
pub struct CreateMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    nonce: Option<Value>,
    #[serde(default)]
    enforce_nonce: bool,
    #[serde(default)]
    tts: bool,
    #[serde(default)]
    message_reference: Option<Reference>,
}

fn snowflake_value(v: &Option<Value>) -> Option<u64> {
    match v {
        Some(Value::String(s)) => s.parse().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    }
}

pub async fn create(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<CreateMessage>,
) -> ApiResult<Json<Value>> {
    let (c, g, p) = channel_for(&s, snowflake(&id, "channel")?, u.id.get()).await?;
    messageable(&c)?;
    require(p, Permissions::SEND_MESSAGES, "SEND_MESSAGES")?;
    crate::admin::gates::message_create(&s, g.id).await?;
    let nonce = match b.nonce {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) => Some(n),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "nonce",
                "Must be a string or an integer.",
            ))
        }
    };
    let mut reference = None;
    if let Some(r) = &b.message_reference {
        let mid = snowflake_value(&r.message_id).ok_or_else(|| {
            ApiError::bad_request("message_reference", "message_id must be a snowflake.")
        })?;
        // A reference without channel_id means the channel posted in.
        let cid = snowflake_value(&r.channel_id).unwrap_or(c.id.get());
        // The author must be able to read the referenced message where it is: VIEW_CHANNEL
        // (a channel they cannot see answers as if the message did not exist, revealing
        // nothing) and READ_MESSAGE_HISTORY (50013).
        let rp = match s.store.channel(ChannelId(cid)).await {
            Ok(rc) if rc.guild_id == c.guild_id => s.store.permissions(&g, Some(&rc), u.id).await?,
            _ => Permissions(0),
        };
        if rp.has(Permissions::VIEW_CHANNEL) {
            require(
                rp,
                Permissions::READ_MESSAGE_HISTORY,
                "READ_MESSAGE_HISTORY",
            )?;
        }
        let exists = rp.has(READ)
            && s.store
                .message(ChannelId(cid), MessageId(mid), u.id)
                .await
                .is_ok_and(|m| m.guild_id == c.guild_id);
        if exists {
            reference = Some((MessageId(mid), ChannelId(cid)));
        } else if r.fail_if_not_exists.unwrap_or(true) {
            return Err(ApiError::bad_request(
                "message_reference",
                "Unknown message",
            ));
        }
    }
    let content = b.content.unwrap_or_default();
    let new = NewMessage {
        content,
        nonce,
        enforce_nonce: b.enforce_nonce,
        tts: b.tts && p.has(Permissions::SEND_TTS_MESSAGES),
        may_mention_everyone: p.has(Permissions::MENTION_EVERYONE),
        reference,
    };
    let (m, created) = s.store.create_message(&c, &u, new).await?;
    if created {
        dispatch_message(&s, DispatchKind::MessageCreate, &m).await;
    }
    Ok(Json(message_json(&s, &m, u.id.get()).await))
}

pub async fn get(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, mid)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (c, _, p) = channel_for(&s, snowflake(&id, "channel")?, u.id.get()).await?;
    require(p, Permissions::READ_MESSAGE_HISTORY, "READ_MESSAGE_HISTORY")?;
    let m = s
        .store
        .message(c.id, MessageId(snowflake(&mid, "message")?), u.id)
        .await?;
    Ok(Json(message_json(&s, &m, u.id.get()).await))
}

#[derive(Deserialize)]
pub struct EditMessage {
    content: Option<String>,
}

pub async fn edit(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, mid)): Path<(String, String)>,
    ApiJson(b): ApiJson<EditMessage>,
) -> ApiResult<Json<Value>> {
    let (c, _, _) = channel_for(&s, snowflake(&id, "channel")?, u.id.get()).await?;
    let m = s
        .store
        .message(c.id, MessageId(snowflake(&mid, "message")?), u.id)
        .await?;
    if m.author.id != u.id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            50005,
            "Cannot edit a message authored by another user",
        ));
    }
    let m = match b.content {
        Some(content) => s.store.edit_message(c.id, m.id, &content, u.id).await?,
        None => m,
    };
    dispatch_message(&s, DispatchKind::MessageUpdate, &m).await;
    Ok(Json(message_json(&s, &m, u.id.get()).await))
}

pub async fn delete(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, mid)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (c, g, p) = channel_for(&s, snowflake(&id, "channel")?, u.id.get()).await?;
    let m = s
        .store
        .message(c.id, MessageId(snowflake(&mid, "message")?), u.id)
        .await?;
    if m.author.id != u.id {
        require(p, Permissions::MANAGE_MESSAGES, "MANAGE_MESSAGES")?;
    }
    s.store.delete_message(c.id, m.id).await?;
    s.hub.send(Target::Guild(g.id), Some(g.id), Some(c.id), DispatchKind::MessageDelete, json!({ "id": m.id.to_string(), "channel_id": c.id.to_string(), "guild_id": g.id.to_string() }));
    Ok(StatusCode::NO_CONTENT)
}

/// Unicode emoji only (Lodge has no custom emoji): "name:id" forms are unknown.
fn check_emoji(e: &str) -> ApiResult<()> {
    if e.is_empty()
        || e.chars().count() > 32
        || e.is_ascii()
        || e.contains(':')
        || e.chars().any(char::is_whitespace)
    {
        return Err(ApiError::not_found("emoji"));
    }
    Ok(())
}

async fn reaction_target(
    s: &AppState,
    u: &User,
    id: &str,
    mid: &str,
) -> ApiResult<(Channel, Permissions, Message)> {
    let (c, _, p) = channel_for(s, snowflake(id, "channel")?, u.id.get()).await?;
    require(p, Permissions::READ_MESSAGE_HISTORY, "READ_MESSAGE_HISTORY")?;
    let m = s
        .store
        .message(c.id, MessageId(snowflake(mid, "message")?), u.id)
        .await?;
    Ok((c, p, m))
}

pub async fn react(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, mid, emoji)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    check_emoji(&emoji)?;
    let (c, p, m) = reaction_target(&s, &u, &id, &mid).await?;
    require(p, Permissions::ADD_REACTIONS, "ADD_REACTIONS")?;
    if s.store.add_reaction(m.id, &emoji, u.id).await? {
        let mut d = json!({
            "user_id": u.id.to_string(), "channel_id": c.id.to_string(), "message_id": m.id.to_string(),
            "guild_id": c.guild_id.to_string(), "emoji": wire::emoji(&emoji), "message_author_id": m.author.id.to_string(),
            "burst": false, "burst_colors": [], "type": 0,
        });
        if let Ok(member) = s.store.member(c.guild_id, u.id).await {
            d["member"] = wire::member(&member);
        }
        s.hub.send(
            Target::Guild(c.guild_id),
            Some(c.guild_id),
            Some(c.id),
            DispatchKind::MessageReactionAdd,
            d,
        );
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn unreact(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, mid, emoji)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    check_emoji(&emoji)?;
    let (c, _, m) = reaction_target(&s, &u, &id, &mid).await?;
    if s.store.remove_reaction(m.id, &emoji, u.id).await? {
        let d = json!({
            "user_id": u.id.to_string(), "channel_id": c.id.to_string(), "message_id": m.id.to_string(),
            "guild_id": c.guild_id.to_string(), "emoji": wire::emoji(&emoji), "burst": false, "type": 0,
        });
        s.hub.send(
            Target::Guild(c.guild_id),
            Some(c.guild_id),
            Some(c.id),
            DispatchKind::MessageReactionRemove,
            d,
        );
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct ReactorsQuery {
    limit: Option<u32>,
    after: Option<String>,
}

pub async fn reactors(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path((id, mid, emoji)): Path<(String, String, String)>,
    ApiQuery(q): ApiQuery<ReactorsQuery>,
) -> ApiResult<Json<Value>> {
    check_emoji(&emoji)?;
    let (_, _, m) = reaction_target(&s, &u, &id, &mid).await?;
    let after = q
        .after
        .map(|a| a.parse::<u64>())
        .transpose()
        .map_err(|_| ApiError::bad_request("after", "Must be a snowflake."))?;
    let users = s
        .store
        .reaction_users(m.id, &emoji, q.limit.unwrap_or(25), after.unwrap_or(0))
        .await?;
    Ok(Json(Value::Array(users.iter().map(wire::user).collect())))
}

pub async fn typing(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (c, _, p) = channel_for(&s, snowflake(&id, "channel")?, u.id.get()).await?;
    messageable(&c)?;
    require(p, Permissions::SEND_MESSAGES, "SEND_MESSAGES")?;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut d = json!({ "channel_id": c.id.to_string(), "guild_id": c.guild_id.to_string(), "user_id": u.id.to_string(), "timestamp": ts });
    if let Ok(member) = s.store.member(c.guild_id, u.id).await {
        d["member"] = wire::member(&member);
    }
    s.hub.send(
        Target::Guild(c.guild_id),
        Some(c.guild_id),
        Some(c.id),
        DispatchKind::TypingStart,
        d,
    );
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct SearchQuery {
    content: Option<String>,
    channel_id: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// `GET /guilds/{id}/messages/search?content=…`: hits in the channels the caller may read only.
pub async fn search(
    State(s): State<AppState>,
    Auth(u): Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Json<Value>> {
    let g = super::guild_for(&s, snowflake(&id, "guild")?, u.id.get()).await?;
    let content = q.content.unwrap_or_default();
    if content.chars().count() > 512 {
        return Err(ApiError::bad_request(
            "content",
            "Must be 512 or fewer in length.",
        ));
    }
    let only = q
        .channel_id
        .map(|c| {
            c.parse::<u64>()
                .map_err(|_| ApiError::bad_request("channel_id", "Must be a snowflake."))
        })
        .transpose()?;
    let mut channels = s.store.channels(g.id).await?;
    channels.retain(|c| only.is_none_or(|o| o == c.id.get()));
    let perms = s.store.channel_permissions(&g, &channels, u.id).await?;
    let readable: Vec<ChannelId> = channels
        .iter()
        .zip(perms)
        .filter(|(_, p)| p.has(Permissions::VIEW_CHANNEL | Permissions::READ_MESSAGE_HISTORY))
        .map(|(c, _)| c.id)
        .collect();
    let (total, hits) = s
        .store
        .search_messages(
            g.id,
            &readable,
            &content,
            q.limit.unwrap_or(25),
            q.offset.unwrap_or(0),
            u.id,
        )
        .await?;
    let mut messages = Vec::with_capacity(hits.len());
    let mut readable = Readable::default();
    for m in &hits {
        let mut v = message_json_with(&s, m, u.id.get(), &mut readable).await;
        v["guild_id"] = json!(g.id.to_string());
        messages.push(json!([v]));
    }
    Ok(Json(
        json!({ "total_results": total, "messages": messages }),
    ))
}
