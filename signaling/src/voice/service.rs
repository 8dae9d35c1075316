//! Voice state changes (gateway op 4, moderation, permission changes, sessions ending) turned
//! into inputs of the voice control plane (`control.rs`, applied by `executor.rs`), and SFU
//! events back to clients.

use axum::http::StatusCode;
use lodge_chat::{ChannelKind, Permissions, User};
use lodge_ids::{ChannelId, GuildId, UserId};
use lodge_sfu::{LeaveReason, NodeEvent};
use rand::Rng;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::control::{Guard, Input, Join, Placed, Refusal};
use super::executor::{self, ExecError};
use super::state::Home;
use super::VoiceOut;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::shared::ChannelCap;

fn id_field(d: &Value, key: &'static str) -> ApiResult<Option<u64>> {
    match d.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(key, "Must be a snowflake.")),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(key, "Must be a snowflake.")),
        _ => Err(ApiError::bad_request(key, "Must be a snowflake.")),
    }
}

fn not_in_voice() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        40032,
        "Target user is not connected to voice.",
    )
}

fn unavailable(e: crate::shared::SharedError) -> ApiError {
    ApiError::unavailable(e)
}

impl From<ExecError> for ApiError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Refused(Refusal::NotInVoice) => not_in_voice(),
            ExecError::Refused(Refusal::Stale) => ApiError::new(
                StatusCode::CONFLICT,
                0,
                "The voice state changed meanwhile; retry.",
            ),
            ExecError::Full(limit) => ApiError::new(
                StatusCode::BAD_REQUEST,
                50035,
                format!("The voice channel is full (user_limit {limit})"),
            ),
            ExecError::Shared(e) => unavailable(e),
        }
    }
}

/// A fresh voice token and placement generation.
pub fn fresh_token() -> (String, u64) {
    let mut rng = rand::thread_rng();
    let token: String = (&mut rng)
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    // Never 0: a generation of 0 means "none" in old grants.
    (token, rng.gen_range(1..u64::MAX))
}

/// Where a caller of `channel` goes: an edge of their region (origin with edges), or the room's
/// home node.
pub async fn placed_for(
    s: &AppState,
    guild: GuildId,
    channel: ChannelId,
    region: Option<&str>,
    can_speak: bool,
) -> ApiResult<Placed> {
    let room = super::placement::room_home(s, guild, channel, region.unwrap_or(""))
        .await
        .map_err(|e| {
            if s.drain.is_draining() {
                // Most likely no other node can host the room: say so rather than blame Redis.
                tracing::info!(error = %e, %guild, %channel, "voice join refused: this node is draining");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    0,
                    "503: this voice server is draining before a restart and no other node can host the call; join again shortly",
                )
            } else {
                unavailable(e)
            }
        })?;
    // An edge of the caller's region trunked to the room's home hosts them, through that node.
    let edge = match region {
        Some(r) => super::placement::edge_for(s, &room, r).await,
        None => None,
    };
    let home = match edge {
        Some(edge) => Home::Edge { via: room, edge },
        None => Home::Node(room),
    };
    let (token, generation) = fresh_token();
    Ok(Placed {
        channel_id: channel,
        can_speak,
        home,
        token,
        generation,
    })
}

/// Give a caller whose home is gone (a lost node or edge) a new one in the same channel and
/// region: a new token and VOICE_SERVER_UPDATE. Whether it was done (failures are logged).
pub async fn rehome(s: &AppState, st: &super::VoiceState) -> bool {
    let region = Some(st.region.as_str()).filter(|r| !r.is_empty());
    let placed = match placed_for(s, st.guild_id, st.channel_id, region, st.can_speak).await {
        Ok(p) => p,
        Err(e) => {
            warn!(guild = %st.guild_id, user = %st.user_id, error = ?e, "could not place a caller whose home is gone");
            return false;
        }
    };
    match executor::run(s, st.guild_id, st.user_id, &Input::Rehome(placed)).await {
        Ok(_) => true,
        Err(e) => {
            warn!(guild = %st.guild_id, user = %st.user_id, error = %e, "could not move a caller whose home is gone");
            false
        }
    }
}

/// Gateway op 4: join, move, leave or change self mute/deaf.
pub async fn handle_op4(s: &AppState, user: &User, session_id: &str, d: &Value) -> ApiResult<()> {
    let guild_id = id_field(d, "guild_id")?
        .ok_or_else(|| ApiError::bad_request("guild_id", "This field is required."))?;
    let channel_id = id_field(d, "channel_id")?;
    let self_mute = d.get("self_mute").and_then(Value::as_bool).unwrap_or(false);
    let self_deaf = d.get("self_deaf").and_then(Value::as_bool).unwrap_or(false);
    let g = crate::rest::guild_for(s, guild_id, user.id.get()).await?;

    let Some(channel_id) = channel_id else {
        disconnect_user(s, g.id, user.id).await;
        return Ok(());
    };
    let c = s.store.channel(ChannelId(channel_id)).await?;
    if c.guild_id != g.id {
        return Err(ApiError::not_found("channel"));
    }
    if c.kind != ChannelKind::Voice {
        return Err(ApiError::bad_request("channel_id", "Not a voice channel."));
    }
    let p = s.store.permissions(&g, Some(&c), user.id).await?;
    if !p.has(Permissions::VIEW_CHANNEL | Permissions::CONNECT) {
        return Err(ApiError::missing_permissions(
            "CONNECT (and VIEW_CHANNEL) in this voice channel",
        ));
    }
    // The operator's kill switch and the guild's voice_off switch.
    crate::admin::gates::voice_join(s, g.id, user.id, c.id).await?;
    let can_speak = p.has(Permissions::SPEAK);
    let limit = c.user_limit.unwrap_or(0);
    // Lodge's extension: a region hint places the call on an edge (or node) of that region.
    let region = match d.get("region") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if !r.is_empty() && r.len() <= 64 => Some(r.clone()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "region",
                "Must be a region name of 1 to 64 characters.",
            ))
        }
    };
    // Members who may move others may also enter a full channel (as on Discord).
    let cap = (limit > 0 && !p.has(Permissions::MOVE_MEMBERS)).then_some(ChannelCap {
        channel_id: c.id,
        limit,
    });
    let placed = placed_for(s, g.id, c.id, region.as_deref(), can_speak).await?;
    let join = Input::Join(Join {
        session_id: session_id.to_string(),
        self_mute,
        self_deaf,
        can_speak,
        region: region.unwrap_or_default(),
        placed,
    });
    let applied = executor::run_capped(s, g.id, user.id, &join, cap).await?;
    if applied.issued_token {
        // A kick or ban between `guild_for` above and the state going in may have run its
        // voice disconnect before there was a state to end. Reading membership again now
        // that the state is in place closes that gap: either the removal commits after this
        // read, and its disconnect (which follows it) finds the state, or this read sees it.
        if g.owner_id != user.id && !s.store.is_member(g.id, user.id).await? {
            disconnect_user(s, g.id, user.id).await;
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                50001,
                "Missing Access",
            ));
        }
        // The same for the operator's voice_off switch thrown meanwhile.
        if let Err(e) = crate::admin::gates::voice_still_on(s, g.id).await {
            disconnect_user(s, g.id, user.id).await;
            return Err(e);
        }
        info!(
            guild = %g.id,
            channel = %c.id,
            user = %user.id,
            "voice join: token issued"
        );
    }
    Ok(())
}

/// Server mute/deafen (MUTE_MEMBERS/DEAFEN_MEMBERS, checked by the caller): effective in the SFU
/// at once.
pub async fn set_server_flags(
    s: &AppState,
    guild_id: GuildId,
    user_id: UserId,
    mute: Option<bool>,
    deaf: Option<bool>,
) -> ApiResult<()> {
    executor::run(s, guild_id, user_id, &Input::ServerFlags { mute, deaf }).await?;
    info!(
        guild = %guild_id,
        user = %user_id,
        ?mute,
        ?deaf,
        "server voice flags changed"
    );
    Ok(())
}

/// Whether the user is in a voice channel of the guild.
pub async fn in_voice(s: &AppState, guild_id: GuildId, user_id: UserId) -> ApiResult<bool> {
    Ok(executor::state(s, guild_id, user_id)
        .await
        .map_err(unavailable)?
        .is_some())
}

/// Move a user to another voice channel (MOVE_MEMBERS, checked by the caller) or disconnect them
/// (`None`). The user's client gets VOICE_SERVER_UPDATE and reconnects.
pub async fn move_member(
    s: &AppState,
    g: &lodge_chat::Guild,
    actor: &User,
    user_id: UserId,
    dest: Option<u64>,
) -> ApiResult<()> {
    let Some(dest) = dest else {
        executor::run(s, g.id, user_id, &Input::Leave(None)).await?;
        return Ok(());
    };
    let c = s.store.channel(ChannelId(dest)).await?;
    if c.guild_id != g.id || c.kind != ChannelKind::Voice {
        return Err(ApiError::bad_request(
            "channel_id",
            "Not a voice channel of this guild.",
        ));
    }
    let actor_p = s.store.permissions(g, Some(&c), actor.id).await?;
    if !actor_p.has(Permissions::VIEW_CHANNEL | Permissions::CONNECT) {
        return Err(ApiError::missing_permissions(
            "CONNECT in the destination channel",
        ));
    }
    let target_p = s.store.permissions(g, Some(&c), user_id).await?;
    if !target_p.has(Permissions::VIEW_CHANNEL | Permissions::CONNECT) {
        return Err(ApiError::missing_permissions(
            "the member cannot CONNECT to the destination channel",
        ));
    }
    let cur = executor::state(s, g.id, user_id)
        .await
        .map_err(unavailable)?
        .ok_or_else(not_in_voice)?;
    // Placed again for the new channel, in the caller's region (an edge caller stays on an
    // edge of that region, through the new room's home).
    let region = (!cur.region.is_empty()).then_some(cur.region.as_str());
    let placed = placed_for(s, g.id, c.id, region, target_p.has(Permissions::SPEAK)).await?;
    executor::run(s, g.id, user_id, &Input::Move(placed)).await?;
    info!(guild = %g.id, user = %user_id, to = %c.id, "member moved");
    Ok(())
}

/// Remove a user's voice state in a guild: media participant, voice connection, broadcast.
pub async fn disconnect_user(s: &AppState, guild_id: GuildId, user_id: UserId) {
    leave(s, guild_id, user_id, None).await;
}

/// Whether a state was removed.
async fn leave(s: &AppState, guild_id: GuildId, user_id: UserId, guard: Option<Guard>) -> bool {
    match executor::run(s, guild_id, user_id, &Input::Leave(guard)).await {
        Ok(a) if a.state.is_none() => {
            info!(guild = %guild_id, user = %user_id, "voice leave");
            true
        }
        Ok(_) | Err(ExecError::Refused(_) | ExecError::Full(_)) => false,
        Err(ExecError::Shared(e)) => {
            warn!(guild = %guild_id, user = %user_id, error = %e, "voice leave not recorded");
            false
        }
    }
}

/// Leave, only if the state is still the one `guard` names. Whether it was.
pub async fn leave_if(s: &AppState, guild_id: GuildId, user_id: UserId, guard: Guard) -> bool {
    leave(s, guild_id, user_id, Some(guard)).await
}

/// Users with a voice state in the guild (optionally only in one channel).
async fn users_in(s: &AppState, guild_id: GuildId, channel_id: Option<ChannelId>) -> Vec<UserId> {
    match executor::guild_states(s, guild_id).await {
        Ok(v) => v
            .into_iter()
            .filter(|st| channel_id.is_none_or(|c| st.channel_id == c))
            .map(|st| st.user_id)
            .collect(),
        Err(e) => {
            warn!(guild = %guild_id, error = %e, "voice states unavailable");
            Vec::new()
        }
    }
}

pub async fn disconnect_channel(s: &AppState, guild_id: GuildId, channel_id: ChannelId) {
    for u in users_in(s, guild_id, Some(channel_id)).await {
        disconnect_user(s, guild_id, u).await;
    }
}

pub async fn disconnect_guild(s: &AppState, guild_id: GuildId) {
    for u in users_in(s, guild_id, None).await {
        disconnect_user(s, guild_id, u).await;
    }
}

/// The gateway session ended: its voice states (in the guilds it was in) go with it.
pub async fn disconnect_session(
    s: &AppState,
    user_id: UserId,
    guilds: impl IntoIterator<Item = GuildId>,
    session_id: &str,
) {
    for g in guilds {
        leave(s, g, user_id, Some(Guard::Session(session_id.to_string()))).await;
    }
}

/// Overwrites changed: re-check CONNECT and SPEAK of everyone in the channel (effective in the SFU
/// at once).
pub async fn refresh_channel_permissions(s: &AppState, guild_id: GuildId, channel_id: ChannelId) {
    let (Ok(g), Ok(c)) = (
        s.store.guild(guild_id).await,
        s.store.channel(channel_id).await,
    ) else {
        return;
    };
    for u in users_in(s, guild_id, Some(channel_id)).await {
        let Ok(p) = s.store.permissions(&g, Some(&c), u).await else {
            continue;
        };
        if !p.has(Permissions::VIEW_CHANNEL | Permissions::CONNECT) {
            disconnect_user(s, guild_id, u).await;
            continue;
        }
        if let Err(e) =
            executor::run(s, guild_id, u, &Input::SetSpeak(p.has(Permissions::SPEAK))).await
        {
            debug!(guild = %guild_id, user = %u, error = %e, "speak change not applied");
        }
    }
}

/// Send a voice gateway message to every other connection in a channel.
pub fn notify_others(
    s: &AppState,
    guild_id: GuildId,
    channel_id: ChannelId,
    except_user: UserId,
    msg: Value,
) {
    notify_others_where(s, guild_id, channel_id, except_user, msg, |_| true);
}

/// The same, to the other connections `which` picks (e.g. native ones only).
pub fn notify_others_where(
    s: &AppState,
    guild_id: GuildId,
    channel_id: ChannelId,
    except_user: UserId,
    msg: Value,
    which: impl Fn(&super::conns::VoiceConn) -> bool,
) {
    let v = s.voice();
    for c in v.conns.values() {
        if c.guild_id == guild_id
            && c.channel_id == channel_id
            && c.user_id != except_user
            && which(c)
        {
            let _ = c.tx.send(VoiceOut::Json(msg.clone()));
        }
    }
}

/// Turn SFU events into voice gateway messages: op 5 slot announcements and disconnects.
pub async fn run_sfu_events(s: AppState, mut rx: mpsc::UnboundedReceiver<NodeEvent>) {
    while let Some(ev) = rx.recv().await {
        match ev {
            NodeEvent::SlotChanged {
                listener,
                ssrc,
                speaker,
                ..
            } => {
                s.voice().slot_changed(listener, ssrc.0, speaker);
            }
            NodeEvent::Connected { idx, user, .. } => {
                debug!(%idx, user = user.0, "media connected")
            }
            NodeEvent::Left {
                idx,
                reason,
                user,
                stats,
                ..
            } => {
                s.voice().participant_left(idx);
                crate::quality::record_left(&s, idx, reason, &stats).await;
                if reason == LeaveReason::Requested {
                    continue;
                }
                let conn = {
                    let mut v = s.voice();
                    v.by_participant
                        .remove(&idx)
                        .and_then(|c| v.conns.get(&c).map(|c| c.tx.clone()))
                };
                info!(%idx, user = user.0, ?reason, "media participant lost; closing its voice connection");
                if let Some(tx) = conn {
                    let why = match reason {
                        LeaveReason::Idle => "media connection lost: no packets within the idle timeout (6 s WebRTC, 15 s native)",
                        LeaveReason::ConnectTimeout => {
                            "media connection never completed (ICE/DTLS)"
                        }
                        _ => "media connection closed",
                    };
                    let _ = tx.send(VoiceOut::Close(4014, why.into()));
                }
            }
        }
    }
}
