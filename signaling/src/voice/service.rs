//! Voice state changes (gateway op 4), their effects on the SFU, and SFU events back to clients.

use std::time::Instant;

use axum::http::StatusCode;
use lodge_chat::{ChannelKind, Permissions, User};
use lodge_sfu::{LeaveReason, NodeEvent};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::outbox::Outbox;
use super::registry::{VoiceOut, VoiceState};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::hub::{DispatchKind, Target};

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

fn left_json(guild_id: u64, user_id: u64, session_id: &str) -> Value {
    json!({
        "guild_id": guild_id.to_string(), "channel_id": null, "user_id": user_id.to_string(), "session_id": session_id,
        "deaf": false, "mute": false, "self_deaf": false, "self_mute": false, "self_video": false, "suppress": false,
        "request_to_speak_timestamp": null,
    })
}

/// Gateway op 4: join, move, leave or change self mute/deaf.
pub async fn handle_op4(s: &AppState, user: &User, session_id: &str, d: &Value) -> ApiResult<()> {
    let guild_id = id_field(d, "guild_id")?
        .ok_or_else(|| ApiError::bad_request("guild_id", "This field is required."))?;
    let channel_id = id_field(d, "channel_id")?;
    let self_mute = d.get("self_mute").and_then(Value::as_bool).unwrap_or(false);
    let self_deaf = d.get("self_deaf").and_then(Value::as_bool).unwrap_or(false);
    let g = crate::rest::guild_for(s, guild_id, user.id).await?;

    let Some(channel_id) = channel_id else {
        disconnect_user(s, g.id, user.id).await;
        return Ok(());
    };
    let c = s.store.channel(channel_id).await?;
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
    let can_speak = p.has(Permissions::SPEAK);
    let limit = c.user_limit.unwrap_or(0) as usize;
    // Lodge's extension: a region hint places the call on an edge of that region.
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
    let placement = match (&region, s.cluster.get()) {
        (Some(r), Some(cl)) if cl.role == lodge_edge::cascade::Role::Origin => cl.place(r),
        _ => None,
    };

    let mut close_old: Option<OldConn> = None;
    let mut edge_msgs: Vec<(u64, lodge_edge::Control)> = Vec::new();
    let (vs_json, token, flags_update, left) = {
        let mut v = s.voice();
        let in_channel = v
            .states
            .values()
            .filter(|st| st.guild_id == g.id && st.channel_id == c.id && st.user_id != user.id)
            .count();
        if limit > 0 && in_channel >= limit && !p.has(Permissions::MOVE_MEMBERS) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                50035,
                format!("The voice channel is full (user_limit {limit})"),
            ));
        }
        let existing = v.states.get(&(g.id, user.id)).cloned();
        // A move: the channel left, and the leave that sessions seeing only that channel get.
        let left = existing
            .as_ref()
            .filter(|e| e.channel_id != c.id)
            .map(|e| (e.channel_id, left_json(g.id, user.id, &e.session_id)));
        // Server mute/deafen stick to the member across channel changes, as on Discord.
        let (mute, deaf) = existing
            .as_ref()
            .map(|e| (e.mute, e.deaf))
            .unwrap_or((false, false));
        match existing {
            // Same channel and session, already connected: only the flags change.
            Some(st)
                if st.channel_id == c.id
                    && st.session_id == session_id
                    && (st.conn.is_some() || st.edge.is_some()) =>
            {
                let st = v.states.get_mut(&(g.id, user.id)).expect("cloned above");
                st.self_mute = self_mute;
                st.self_deaf = self_deaf;
                st.can_speak = can_speak;
                if let Some(e) = st.edge {
                    edge_msgs.push((
                        e,
                        lodge_edge::Control::VoiceUpdate(crate::cluster::grant(st, "")),
                    ));
                }
                (
                    st.json(),
                    None,
                    st.participant.map(|i| (i, st.flags())),
                    None,
                )
            }
            _ => {
                let st = VoiceState {
                    guild_id: g.id,
                    channel_id: c.id,
                    user_id: user.id,
                    session_id: session_id.to_string(),
                    self_mute,
                    self_deaf,
                    mute,
                    deaf,
                    can_speak,
                    participant: None,
                    conn: None,
                    edge: placement.as_ref().map(|p| p.0),
                    region: region.clone().unwrap_or_default(),
                };
                let old_edge = v.states.get(&(g.id, user.id)).and_then(|o| o.edge);
                if let Some(e) = old_edge.filter(|e| Some(*e) != st.edge) {
                    edge_msgs.push((
                        e,
                        lodge_edge::Control::VoiceRemove {
                            guild: g.id,
                            user: user.id,
                        },
                    ));
                }
                let pending = st.clone();
                let (j, token, old) = replace_state(&mut v, st);
                if let Some(e) = pending.edge {
                    edge_msgs.push((
                        e,
                        lodge_edge::Control::VoicePlace(crate::cluster::grant(&pending, &token)),
                    ));
                }
                close_old = old;
                (j, Some(token), None, left)
            }
        }
    };
    if let Some((tx, participant)) = close_old {
        let _ = tx.send(VoiceOut::Close(
            4014,
            "moved to another voice channel".into(),
        ));
        if let Some(pi) = participant {
            s.sfu.leave(pi).await;
        }
    }
    if let Some((idx, flags)) = flags_update {
        s.sfu.set_flags(idx, flags).await;
    }
    // The edge hears of the caller before the caller hears of the edge.
    for (e, msg) in edge_msgs {
        crate::cluster::notify_edge(s, e, msg).await;
    }
    // With the channel, so only sessions that may view it hear who is in it; a move also
    // carries the channel left, so sessions that may view only that one hear a leave.
    match left {
        Some((from, left)) => s.hub.send_move(
            g.id,
            from,
            c.id,
            DispatchKind::VoiceStateUpdate,
            vs_json,
            left,
        ),
        None => s.hub.send(
            Target::Guild(g.id),
            Some(g.id),
            Some(c.id),
            DispatchKind::VoiceStateUpdate,
            vs_json,
        ),
    }
    if let Some(token) = token {
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
        info!(
            guild = g.id,
            channel = c.id,
            user = user.id,
            "voice join: token issued"
        );
        s.hub.send(
            Target::Session {
                user: user.id,
                session: session_id.to_string(),
            },
            Some(g.id),
            None,
            DispatchKind::VoiceServerUpdate,
            json!({ "token": token, "guild_id": g.id.to_string(),
                    "endpoint": placement.map(|p| p.1).unwrap_or_else(|| s.cfg.public_host()) }),
        );
    }
    Ok(())
}

type OldConn = (Outbox, Option<lodge_sfu::ParticipantIdx>);

/// Put a (new) voice state in place of the user's current one: the old voice connection is
/// returned for closing, a fresh voice token is issued.
fn replace_state(v: &mut super::VoiceRegistry, st: VoiceState) -> (Value, String, Option<OldConn>) {
    let mut old_conn = None;
    if let Some(old) = v.states.remove(&(st.guild_id, st.user_id)) {
        if let Some(conn) = old.conn.and_then(|id| v.conns.remove(&id)) {
            if let Some(pi) = conn.participant {
                v.by_participant.remove(&pi);
            }
            old_conn = Some((conn.tx, conn.participant));
        }
    }
    let j = st.json();
    let token = v.issue_token(
        Instant::now(),
        st.user_id,
        st.guild_id,
        st.channel_id,
        &st.session_id,
    );
    v.states.insert((st.guild_id, st.user_id), st);
    (j, token, old_conn)
}

fn not_in_voice() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        40032,
        "Target user is not connected to voice.",
    )
}

/// Server mute/deafen (MUTE_MEMBERS/DEAFEN_MEMBERS, checked by the caller): effective in the SFU
/// at once.
pub async fn set_server_flags(
    s: &AppState,
    guild_id: u64,
    user_id: u64,
    mute: Option<bool>,
    deaf: Option<bool>,
) -> ApiResult<()> {
    let (j, part, edge, channel_id) = {
        let mut v = s.voice();
        let st = v
            .states
            .get_mut(&(guild_id, user_id))
            .ok_or_else(not_in_voice)?;
        if let Some(m) = mute {
            st.mute = m;
        }
        if let Some(d) = deaf {
            st.deaf = d;
        }
        let edge = st.edge.map(|e| {
            (
                e,
                lodge_edge::Control::VoiceUpdate(crate::cluster::grant(st, "")),
            )
        });
        (
            st.json(),
            st.participant.map(|i| (i, st.flags())),
            edge,
            st.channel_id,
        )
    };
    if let Some((i, f)) = part {
        s.sfu.set_flags(i, f).await;
    }
    if let Some((e, msg)) = edge {
        crate::cluster::notify_edge(s, e, msg).await;
    }
    info!(
        guild = guild_id,
        user = user_id,
        ?mute,
        ?deaf,
        "server voice flags changed"
    );
    s.hub.send(
        Target::Guild(guild_id),
        Some(guild_id),
        Some(channel_id),
        DispatchKind::VoiceStateUpdate,
        j,
    );
    Ok(())
}

/// Move a user to another voice channel (MOVE_MEMBERS, checked by the caller) or disconnect them
/// (`None`). The user's client gets VOICE_SERVER_UPDATE and reconnects.
pub async fn move_member(
    s: &AppState,
    g: &lodge_chat::Guild,
    actor: &User,
    user_id: u64,
    dest: Option<u64>,
) -> ApiResult<()> {
    let Some(dest) = dest else {
        if !s.voice().states.contains_key(&(g.id, user_id)) {
            return Err(not_in_voice());
        }
        disconnect_user(s, g.id, user_id).await;
        return Ok(());
    };
    let c = s.store.channel(dest).await?;
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
    let (j, token, old, session_id, from, placed, left) = {
        let mut v = s.voice();
        let cur = v
            .states
            .get(&(g.id, user_id))
            .cloned()
            .ok_or_else(not_in_voice)?;
        let st = VoiceState {
            channel_id: c.id,
            can_speak: target_p.has(Permissions::SPEAK),
            participant: None,
            conn: None,
            ..cur.clone()
        };
        let placed = st.clone();
        let (j, token, old) = replace_state(&mut v, st);
        let left = left_json(g.id, user_id, &cur.session_id);
        (j, token, old, cur.session_id, cur.channel_id, placed, left)
    };
    // A caller on an edge moves within that edge.
    let endpoint = match placed.edge {
        Some(e) => {
            crate::cluster::notify_edge(
                s,
                e,
                lodge_edge::Control::VoicePlace(crate::cluster::grant(&placed, &token)),
            )
            .await;
            s.cluster
                .get()
                .and_then(|c| c.endpoint_of(e))
                .unwrap_or_else(|| s.cfg.public_host())
        }
        None => s.cfg.public_host(),
    };
    if let Some((tx, participant)) = old {
        let _ = tx.send(VoiceOut::Close(
            4014,
            "moved to another voice channel".into(),
        ));
        notify_others(s, g.id, from, user_id, super::client_disconnect(user_id));
        if let Some(pi) = participant {
            s.sfu.leave(pi).await;
        }
    }
    info!(guild = g.id, user = user_id, to = c.id, "member moved");
    // Sessions that may view only the channel left hear a leave.
    s.hub
        .send_move(g.id, from, c.id, DispatchKind::VoiceStateUpdate, j, left);
    s.hub.send(
        Target::Session {
            user: user_id,
            session: session_id,
        },
        Some(g.id),
        None,
        DispatchKind::VoiceServerUpdate,
        json!({ "token": token, "guild_id": g.id.to_string(), "endpoint": endpoint }),
    );
    Ok(())
}

/// Remove a user's voice state in a guild: media participant, voice connection, broadcast.
pub async fn disconnect_user(s: &AppState, guild_id: u64, user_id: u64) {
    let removed = {
        let mut v = s.voice();
        let st = v.states.remove(&(guild_id, user_id));
        st.map(|st| {
            let conn = st.conn.and_then(|id| v.conns.remove(&id));
            if let Some(pi) = st.participant {
                v.by_participant.remove(&pi);
            }
            (st, conn)
        })
    };
    let Some((st, conn)) = removed else { return };
    if let Some(e) = st.edge {
        crate::cluster::notify_edge(
            s,
            e,
            lodge_edge::Control::VoiceRemove {
                guild: guild_id,
                user: user_id,
            },
        )
        .await;
    }
    if let Some(conn) = conn {
        let _ = conn.tx.send(VoiceOut::Close(
            4014,
            "disconnected from the voice channel".into(),
        ));
        notify_others(
            s,
            st.guild_id,
            st.channel_id,
            user_id,
            super::client_disconnect(user_id),
        );
    }
    if let Some(pi) = st.participant {
        s.sfu.leave(pi).await;
    }
    // The leave names no channel, but it goes only to sessions that may view the channel
    // left: to anyone else it would say who had been in a channel they cannot see. A member
    // who lost sight of the channel (that is why they were disconnected) still hears of their
    // own leave on their session.
    let left = left_json(guild_id, user_id, &st.session_id);
    let sees_it = s
        .visibility
        .can_view(
            &s.store,
            s.hub.epoch(guild_id),
            guild_id,
            st.channel_id,
            user_id,
        )
        .await;
    if !sees_it {
        s.hub.send(
            Target::Session {
                user: user_id,
                session: st.session_id.clone(),
            },
            Some(guild_id),
            None,
            DispatchKind::VoiceStateUpdate,
            left.clone(),
        );
    }
    s.hub.send(
        Target::Guild(guild_id),
        Some(guild_id),
        Some(st.channel_id),
        DispatchKind::VoiceStateUpdate,
        left,
    );
    info!(
        guild = guild_id,
        channel = st.channel_id,
        user = user_id,
        "voice leave"
    );
}

pub async fn disconnect_channel(s: &AppState, guild_id: u64, channel_id: u64) {
    let users: Vec<u64> = s
        .voice()
        .states
        .values()
        .filter(|st| st.guild_id == guild_id && st.channel_id == channel_id)
        .map(|st| st.user_id)
        .collect();
    for u in users {
        disconnect_user(s, guild_id, u).await;
    }
}

pub async fn disconnect_guild(s: &AppState, guild_id: u64) {
    let users: Vec<u64> = s
        .voice()
        .states
        .values()
        .filter(|st| st.guild_id == guild_id)
        .map(|st| st.user_id)
        .collect();
    for u in users {
        disconnect_user(s, guild_id, u).await;
    }
}

/// The gateway session ended: its voice states go with it.
pub async fn disconnect_session(s: &AppState, session_id: &str) {
    let keys: Vec<(u64, u64)> = s
        .voice()
        .states
        .values()
        .filter(|st| st.session_id == session_id)
        .map(|st| (st.guild_id, st.user_id))
        .collect();
    for (g, u) in keys {
        disconnect_user(s, g, u).await;
    }
}

/// Overwrites changed: re-check CONNECT and SPEAK of everyone in the channel (effective in the SFU
/// at once).
pub async fn refresh_channel_permissions(s: &AppState, guild_id: u64, channel_id: u64) {
    let (Ok(g), Ok(c)) = (
        s.store.guild(guild_id).await,
        s.store.channel(channel_id).await,
    ) else {
        return;
    };
    let users: Vec<u64> = s
        .voice()
        .states
        .values()
        .filter(|st| st.guild_id == guild_id && st.channel_id == channel_id)
        .map(|st| st.user_id)
        .collect();
    for u in users {
        let Ok(p) = s.store.permissions(&g, Some(&c), u).await else {
            continue;
        };
        if !p.has(Permissions::VIEW_CHANNEL | Permissions::CONNECT) {
            disconnect_user(s, guild_id, u).await;
            continue;
        }
        let change = {
            let mut v = s.voice();
            v.states.get_mut(&(guild_id, u)).and_then(|st| {
                let speak = p.has(Permissions::SPEAK);
                (st.can_speak != speak).then(|| {
                    st.can_speak = speak;
                    (st.json(), st.participant.map(|i| (i, st.flags())))
                })
            })
        };
        if let Some((j, part)) = change {
            if let Some((i, f)) = part {
                s.sfu.set_flags(i, f).await;
            }
            s.hub.send(
                Target::Guild(guild_id),
                Some(guild_id),
                Some(channel_id),
                DispatchKind::VoiceStateUpdate,
                j,
            );
        }
    }
}

/// Send a voice gateway message to every other connection in a channel.
pub fn notify_others(s: &AppState, guild_id: u64, channel_id: u64, except_user: u64, msg: Value) {
    let v = s.voice();
    for c in v.conns.values() {
        if c.guild_id == guild_id && c.channel_id == channel_id && c.user_id != except_user {
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
                s.voice()
                    .slot_changed(listener, ssrc.0, speaker.map(|u| u.0));
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
                        LeaveReason::Idle => "media connection lost: no packets for 6 s",
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
