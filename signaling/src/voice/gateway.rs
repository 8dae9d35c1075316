//! The voice gateway (v8) in WebRTC mode: Hello, Identify → Ready, Select Protocol (SDP offer) →
//! Session Description (answer + slots), Heartbeat, Speaking, Clients Connect/Disconnect.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use lodge_sfu::{JoinRequest, RoomId, UserId, MAX_SLOTS};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::registry::{TokenError, VoiceConn, VoiceOut};
use crate::app::AppState;
use crate::ws::{close_with, Inbound};

pub const HEARTBEAT_INTERVAL_MS: u64 = 13_750;
/// Largest client payload (an offer with 17 audio lines is ~10 KB).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Discord's voice close codes that Lodge uses.
pub mod close {
    pub const UNKNOWN_OPCODE: u16 = 4001;
    pub const DECODE_ERROR: u16 = 4002;
    pub const NOT_AUTHENTICATED: u16 = 4003;
    pub const AUTHENTICATION_FAILED: u16 = 4004;
    pub const ALREADY_AUTHENTICATED: u16 = 4005;
    pub const SESSION_INVALID: u16 = 4006;
    pub const SESSION_TIMEOUT: u16 = 4009;
    pub const SERVER_NOT_FOUND: u16 = 4011;
    pub const UNKNOWN_PROTOCOL: u16 = 4012;
    pub const DISCONNECTED: u16 = 4014;
    pub const SERVER_CRASHED: u16 = 4015;
}

pub fn upgrade(ws: WebSocketUpgrade, s: AppState) -> Response {
    // Small read buffer: see the gateway's handler (tungstenite zero-fills it per read).
    ws.max_message_size(MAX_PAYLOAD * 2)
        .max_frame_size(MAX_PAYLOAD * 2)
        .read_buffer_size(4096)
        .on_upgrade(move |sock| run(s, sock))
}

struct Authed {
    user_id: u64,
    guild_id: u64,
    channel_id: u64,
    conn_id: u64,
    joined: bool,
}

/// Stable per-user SSRC for UDP mode's Ready (WebRTC clients may ignore it).
fn user_ssrc(user_id: u64) -> u32 {
    let x = user_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((x >> 32) as u32) | 1
}

async fn run(s: AppState, sock: WebSocket) {
    let (mut tx, mut rx) = sock.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<VoiceOut>();
    let mut seq: u64 = 0;
    let mut send = |v: Value| {
        seq += 1;
        let mut v = v;
        v["seq"] = json!(seq);
        Message::Text(v.to_string().into())
    };
    if tx
        .send(send(
            json!({ "op": 8, "d": { "heartbeat_interval": HEARTBEAT_INTERVAL_MS, "v": 8 } }),
        ))
        .await
        .is_err()
    {
        return;
    }
    let mut me: Option<Authed> = None;
    let hb_timeout = Duration::from_millis(HEARTBEAT_INTERVAL_MS * 2);
    let mut hb_deadline = Instant::now() + hb_timeout;
    let mut shutdown = s.shutdown.subscribe();

    loop {
        tokio::select! {
            m = rx.next() => {
                let msg = match crate::ws::judge(m, MAX_PAYLOAD) {
                    Inbound::Json(v) => v,
                    Inbound::Ignore => continue,
                    Inbound::Refuse(code, reason) => { close_with(&mut tx, code, &reason).await; break }
                    Inbound::Gone => break,
                };
                let d = msg.get("d").cloned().unwrap_or(Value::Null);
                match msg.get("op").and_then(Value::as_u64) {
                    Some(0) => {
                        if me.is_some() { close_with(&mut tx, close::ALREADY_AUTHENTICATED, "already identified").await; break }
                        if let Some(t) = d.get("token").and_then(Value::as_str) {
                            crate::cluster::await_token(&s, t).await;
                        }
                        match identify(&s, &d, out_tx.clone()) {
                            Ok(a) => {
                                let ready = json!({ "op": 2, "d": {
                                    "ssrc": user_ssrc(a.user_id),
                                    "ip": s.cfg.public_ip.to_string(),
                                    "port": s.sfu.local_addr().port(),
                                    "modes": ["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"],
                                    "experiments": [],
                                    "heartbeat_interval": HEARTBEAT_INTERVAL_MS,
                                }});
                                info!(user = a.user_id, channel = a.channel_id, "voice gateway identified");
                                me = Some(a);
                                if tx.send(send(ready)).await.is_err() { break }
                            }
                            Err((code, reason)) => { close_with(&mut tx, code, reason).await; break }
                        }
                    }
                    Some(1) => {
                        let Some(a) = me.as_mut() else { close_with(&mut tx, close::NOT_AUTHENTICATED, "identify first").await; break };
                        if a.joined { close_with(&mut tx, close::ALREADY_AUTHENTICATED, "protocol already selected").await; break }
                        match select_protocol(&s, a, &d).await {
                            Ok(answer) => {
                                a.joined = true;
                                if tx.send(send(answer)).await.is_err() { break }
                                let others: Vec<String> = s.voice().users_in(a.guild_id, a.channel_id).into_iter()
                                    .filter(|u| *u != a.user_id).map(|u| u.to_string()).collect();
                                if !others.is_empty() && tx.send(send(json!({ "op": 11, "d": { "user_ids": others } }))).await.is_err() { break }
                                super::service::notify_others(&s, a.guild_id, a.channel_id, a.user_id,
                                    json!({ "op": 11, "d": { "user_ids": [a.user_id.to_string()] } }));
                            }
                            Err((code, reason)) => { close_with(&mut tx, code, &reason).await; break }
                        }
                    }
                    Some(3) => {
                        hb_deadline = Instant::now() + hb_timeout;
                        let t = d.get("t").cloned().unwrap_or_else(|| if d.is_number() { d.clone() } else { Value::Null });
                        if tx.send(send(json!({ "op": 6, "d": { "t": t } }))).await.is_err() { break }
                    }
                    Some(5) => {
                        if me.is_none() { close_with(&mut tx, close::NOT_AUTHENTICATED, "identify first").await; break }
                        // Accepted; selection uses the audio-level header extension instead.
                    }
                    Some(7) => {
                        close_with(&mut tx, close::SESSION_INVALID, "voice resume is not supported yet; rejoin with gateway op 4").await;
                        break;
                    }
                    Some(_) | None => {
                        if me.is_none() { close_with(&mut tx, close::NOT_AUTHENTICATED, "identify first").await; }
                        else { close_with(&mut tx, close::UNKNOWN_OPCODE, "unknown opcode").await; }
                        break;
                    }
                }
            }
            o = out_rx.recv() => match o {
                Some(VoiceOut::Json(v)) => { if tx.send(send(v)).await.is_err() { break } }
                Some(VoiceOut::Close(code, reason)) => { close_with(&mut tx, code, &reason).await; break }
                None => break,
            },
            _ = tokio::time::sleep_until(hb_deadline) => {
                close_with(&mut tx, close::SESSION_TIMEOUT, "no heartbeat received").await;
                break;
            }
            _ = shutdown.changed() => {
                close_with(&mut tx, 1001, "server shutting down").await;
                break;
            }
        }
    }
    if let Some(a) = me {
        end_connection(&s, &a).await;
    }
}

fn identify(
    s: &AppState,
    d: &Value,
    out: mpsc::UnboundedSender<VoiceOut>,
) -> Result<Authed, (u16, &'static str)> {
    let id = |k: &str| -> Option<u64> {
        match d.get(k)? {
            Value::String(v) => v.parse().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        }
    };
    let (Some(guild_id), Some(user_id)) = (id("server_id"), id("user_id")) else {
        return Err((close::DECODE_ERROR, "identify needs server_id and user_id"));
    };
    let session_id = d
        .get("session_id")
        .and_then(Value::as_str)
        .ok_or((close::DECODE_ERROR, "identify needs session_id"))?;
    let token = d
        .get("token")
        .and_then(Value::as_str)
        .ok_or((close::DECODE_ERROR, "identify needs token"))?;
    let mut v = s.voice();
    let t = v
        .redeem(
            std::time::Instant::now(),
            token,
            user_id,
            guild_id,
            session_id,
        )
        .map_err(|e| match e {
            TokenError::Unknown => (
                close::AUTHENTICATION_FAILED,
                "unknown or already used voice token",
            ),
            TokenError::Expired => (
                close::AUTHENTICATION_FAILED,
                "voice token expired; send gateway op 4 again for a new one",
            ),
            TokenError::Mismatch => (
                close::AUTHENTICATION_FAILED,
                "voice token was issued for another user, guild or session",
            ),
        })?;
    let valid = v.states.get(&(guild_id, user_id)).is_some_and(|st| {
        st.channel_id == t.channel_id && st.session_id == session_id && st.conn.is_none()
    });
    if !valid {
        return Err((
            close::SESSION_INVALID,
            "voice state changed since the token was issued; send gateway op 4 again",
        ));
    }
    let conn_id = v.add_conn(VoiceConn {
        tx: out,
        user_id,
        guild_id,
        channel_id: t.channel_id,
        participant: None,
        slots: Default::default(),
    });
    if let Some(st) = v.states.get_mut(&(guild_id, user_id)) {
        st.conn = Some(conn_id);
    }
    Ok(Authed {
        user_id,
        guild_id,
        channel_id: t.channel_id,
        conn_id,
        joined: false,
    })
}

async fn select_protocol(s: &AppState, a: &Authed, d: &Value) -> Result<Value, (u16, String)> {
    let protocol = d.get("protocol").and_then(Value::as_str).unwrap_or("");
    if protocol != "webrtc" {
        return Err((
            close::UNKNOWN_PROTOCOL,
            format!("protocol {protocol:?} is not available on this node; use \"webrtc\""),
        ));
    }
    let data = d.get("data").cloned().unwrap_or(Value::Null);
    let sdp = data
        .get("sdp")
        .or_else(|| d.get("sdp"))
        .and_then(Value::as_str)
        .ok_or((
            close::DECODE_ERROR,
            "select protocol needs data.sdp (the SDP offer)".to_string(),
        ))?;
    let slots = match d.get("slots").or_else(|| data.get("slots")) {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|k| (1..=MAX_SLOTS as u64).contains(k))
                .ok_or((
                    close::DECODE_ERROR,
                    format!("slots must be 1..={MAX_SLOTS}"),
                ))? as usize,
        ),
    };
    let flags = {
        let v = s.voice();
        let st = v
            .states
            .get(&(a.guild_id, a.user_id))
            .ok_or((close::SESSION_INVALID, "voice state is gone".to_string()))?;
        st.flags()
    };
    let req = JoinRequest {
        room: RoomId(a.channel_id),
        user: UserId(a.user_id),
        offer: sdp.to_string(),
        flags,
    };
    let ans = s.sfu.join(req).await.map_err(|e| {
        warn!(user = a.user_id, error = %e, "offer refused");
        (close::DECODE_ERROR, e.to_string())
    })?;
    let expected = slots.unwrap_or(ans.slots.len());
    if ans.slots.len() != expected {
        s.sfu.leave(ans.idx).await;
        return Err((
            close::DECODE_ERROR,
            format!(
                "slots is {expected} but the offer carries {} recv-only audio transceivers",
                ans.slots.len()
            ),
        ));
    }
    let still_there = {
        let mut v = s.voice();
        if v.conns.contains_key(&a.conn_id) {
            // Slot announcements queued here are written after the answer: the caller's
            // loop does not read its outbox while this runs.
            v.map_participant(ans.idx, a.conn_id);
            s.telemetry()
                .start(ans.idx, a.guild_id, a.channel_id, a.user_id);
            if let Some(st) = v.states.get_mut(&(a.guild_id, a.user_id)) {
                st.participant = Some(ans.idx);
            }
            true
        } else {
            false
        }
    };
    if !still_there {
        s.sfu.leave(ans.idx).await;
        return Err((
            close::DISCONNECTED,
            "voice state ended while connecting".into(),
        ));
    }
    info!(
        user = a.user_id,
        channel = a.channel_id,
        slots = ans.slots.len(),
        "webrtc session described"
    );
    Ok(json!({ "op": 4, "d": {
        "mode": "webrtc",
        "audio_codec": "opus",
        "video_codec": null,
        "media_session_id": format!("{}", ans.idx.0),
        "sdp": ans.answer,
        "slots": ans.slots,
    }}))
}

/// The voice WebSocket ended: free the media participant and the voice state it owned.
async fn end_connection(s: &AppState, a: &Authed) {
    let (participant, owned_state) = {
        let mut v = s.voice();
        let conn = v.conns.remove(&a.conn_id);
        let participant = conn.and_then(|c| c.participant);
        if let Some(p) = participant {
            v.by_participant.remove(&p);
        }
        let owned = v
            .states
            .get(&(a.guild_id, a.user_id))
            .is_some_and(|st| st.conn == Some(a.conn_id));
        (participant, owned)
    };
    if let Some(p) = participant {
        s.sfu.leave(p).await;
    }
    super::service::notify_others(
        s,
        a.guild_id,
        a.channel_id,
        a.user_id,
        json!({ "op": 13, "d": { "user_id": a.user_id.to_string() } }),
    );
    if owned_state {
        super::service::disconnect_user(s, a.guild_id, a.user_id).await;
        // On an edge the voice state is the origin's: tell it the caller left.
        if let Some(c) = s.cluster.get().filter(|_| s.is_edge()) {
            c.cascade
                .broadcast(lodge_edge::Control::VoiceGone {
                    guild: a.guild_id,
                    user: a.user_id,
                })
                .await;
        }
    }
    info!(
        user = a.user_id,
        channel = a.channel_id,
        "voice connection ended"
    );
}
