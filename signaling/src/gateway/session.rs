//! One gateway connection.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use lodge_chat::{Permissions, User};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tracing::info;

use super::{close, intents, payloads, HEARTBEAT_INTERVAL_MS, MAX_PAYLOAD, RATE_LIMIT, RATE_WINDOW};
use crate::app::{AppState, SessionInfo};
use crate::hub::{Dispatch, Target};
use crate::ws::{close_with, Inbound, Tx};

pub async fn ws_handler(ws: WebSocketUpgrade, State(s): State<AppState>) -> Response {
    // Accept frames a bit larger than the protocol limit so we can close with 4002 ourselves.
    ws.max_message_size(MAX_PAYLOAD * 4).max_frame_size(MAX_PAYLOAD * 4).on_upgrade(move |sock| run(s, sock))
}

struct Identified {
    user: User,
    session_id: String,
    guilds: HashSet<u64>,
    intents: u64,
}

async fn send(tx: &mut Tx, v: Value) -> bool {
    tx.send(Message::Text(v.to_string().into())).await.is_ok()
}

async fn run(s: AppState, sock: WebSocket) {
    let (mut tx, mut rx) = sock.split();
    if !send(&mut tx, json!({ "op": 10, "d": { "heartbeat_interval": HEARTBEAT_INTERVAL_MS }, "s": null, "t": null })).await {
        return;
    }
    let mut me: Option<Identified> = None;
    let mut seq: u64 = 0;
    let mut hub = s.hub.subscribe();
    let mut recent: VecDeque<Instant> = VecDeque::new();
    // A client that stops heartbeating is a zombie: allow one interval plus slack.
    let hb_timeout = Duration::from_millis(HEARTBEAT_INTERVAL_MS * 3 / 2);
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
                let now = Instant::now();
                recent.push_back(now);
                while recent.front().is_some_and(|t| now.duration_since(*t) > RATE_WINDOW) { recent.pop_front(); }
                if recent.len() > RATE_LIMIT {
                    close_with(&mut tx, close::RATE_LIMITED, "more than 120 payloads in 60 s").await;
                    break;
                }
                let op = msg.get("op").and_then(Value::as_u64);
                let d = msg.get("d").cloned().unwrap_or(Value::Null);
                match op {
                    Some(1) => {
                        hb_deadline = Instant::now() + hb_timeout;
                        if !send(&mut tx, json!({ "op": 11, "d": null, "s": null, "t": null })).await { break }
                    }
                    Some(2) => {
                        if me.is_some() { close_with(&mut tx, close::ALREADY_AUTHENTICATED, "already identified").await; break }
                        match identify(&s, &d).await {
                            Ok((ident, ready, creates)) => {
                                seq += 1;
                                if !send(&mut tx, json!({ "op": 0, "t": "READY", "s": seq, "d": ready })).await { break }
                                let mut ok = true;
                                for g in creates {
                                    seq += 1;
                                    ok &= send(&mut tx, json!({ "op": 0, "t": "GUILD_CREATE", "s": seq, "d": g })).await;
                                }
                                info!(user = ident.user.id, session = %&ident.session_id[..6], guilds = ident.guilds.len(), "gateway session identified");
                                me = Some(ident);
                                if !ok { break }
                            }
                            Err((code, reason)) => { close_with(&mut tx, code, reason).await; break }
                        }
                    }
                    Some(3) => { /* presence: accepted; presence tracking comes with the chat issue */ }
                    Some(4) => {
                        let Some(ident) = &me else { close_with(&mut tx, close::NOT_AUTHENTICATED, "identify first").await; break };
                        if let Err(e) = crate::voice::service::handle_op4(&s, &ident.user, &ident.session_id, &d).await {
                            // Discord answers nothing on a refused op 4; Lodge tells the client why.
                            seq += 1;
                            let ev = json!({ "op": 0, "t": "LODGE_VOICE_ERROR", "s": seq, "d": { "code": e.code(), "message": e.to_string(), "guild_id": d.get("guild_id"), "channel_id": d.get("channel_id") } });
                            if !send(&mut tx, ev).await { break }
                        }
                    }
                    Some(6) => {
                        // Resume comes with the chat issue; an unknown session is not resumable.
                        if !send(&mut tx, json!({ "op": 9, "d": false, "s": null, "t": null })).await { break }
                    }
                    Some(8) => { /* request guild members: GUILD_CREATE already carries them */ }
                    Some(_) | None => {
                        if me.is_none() { close_with(&mut tx, close::NOT_AUTHENTICATED, "identify first").await; }
                        else { close_with(&mut tx, close::UNKNOWN_OPCODE, "unknown opcode").await; }
                        break;
                    }
                }
            }
            ev = hub.recv(), if me.is_some() => {
                let ident = me.as_mut().expect("guarded by the select condition");
                match ev {
                    Ok(d) => {
                        if wants(&s, ident, &d).await {
                            seq += 1;
                            let body = match &d.redacted {
                                Some(r) if ident.intents & intents::MESSAGE_CONTENT == 0 && !d.full_for.contains(&ident.user.id) => r,
                                _ => &d.json,
                            };
                            if tx.send(Message::Text(crate::hub::frame(d.t, seq, body).into())).await.is_err() { break }
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        info!(missed = n, "gateway session fell behind; asking the client to reconnect");
                        let _ = send(&mut tx, json!({ "op": 7, "d": null, "s": null, "t": null })).await;
                        close_with(&mut tx, close::UNKNOWN_ERROR, "session fell behind").await;
                        break;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
            _ = tokio::time::sleep_until(hb_deadline) => {
                close_with(&mut tx, close::SESSION_TIMED_OUT, "no heartbeat received").await;
                break;
            }
            _ = shutdown.changed() => {
                let _ = send(&mut tx, json!({ "op": 7, "d": null, "s": null, "t": null })).await;
                close_with(&mut tx, 1012, "server restarting").await;
                break;
            }
        }
    }
    if let Some(ident) = me {
        s.sessions.lock().expect("sessions lock").remove(&ident.session_id);
        crate::voice::service::disconnect_session(&s, &ident.session_id).await;
        info!(user = ident.user.id, session = %&ident.session_id[..6], "gateway session ended");
    }
}

type IdentifyResult = Result<(Identified, Value, Vec<Value>), (u16, &'static str)>;

async fn identify(s: &AppState, d: &Value) -> IdentifyResult {
    let token = d.get("token").and_then(Value::as_str).ok_or((close::DECODE_ERROR, "identify needs a token"))?;
    let token = crate::extract::token_from_header(token);
    let user = s.store.authenticate(token).await.map_err(|_| (close::AUTHENTICATION_FAILED, "authentication failed"))?;
    let intents = match d.get("intents") {
        None | Some(Value::Null) => intents::ALL,
        Some(v) => v.as_u64().filter(|i| *i <= intents::ALL).ok_or((close::INVALID_INTENTS, "invalid intents"))?,
    };
    let shard = d.get("shard").filter(|v| !v.is_null());
    if let Some(sh) = shard {
        let ok = sh.as_array().is_some_and(|a| a.len() == 2 && a[0].as_u64().zip(a[1].as_u64()).is_some_and(|(i, n)| n >= 1 && i < n));
        if !ok {
            return Err((close::INVALID_SHARD, "invalid shard"));
        }
    }
    let large = d.get("large_threshold").and_then(Value::as_u64).unwrap_or(payloads::MAX_GUILD_CREATE_MEMBERS as u64).clamp(50, 250) as u32;
    let session_id: String = rand::thread_rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect();
    let guilds = s.store.user_guilds(user.id).await.map_err(|_| (close::UNKNOWN_ERROR, "storage error"))?;
    let ids: Vec<u64> = guilds.iter().map(|g| g.id).collect();
    let ready = payloads::ready(s, &user, &session_id, &ids, shard);
    let mut creates = Vec::new();
    if intents & intents::GUILDS != 0 {
        for g in &guilds {
            creates.push(payloads::guild_create_limited(s, g, user.id, large).await.map_err(|_| (close::UNKNOWN_ERROR, "storage error"))?);
        }
    }
    s.sessions.lock().expect("sessions lock").insert(session_id.clone(), SessionInfo { user_id: user.id });
    Ok((Identified { user, session_id, guilds: ids.into_iter().collect(), intents }, ready, creates))
}

/// Does this session get this dispatch?
async fn wants(s: &AppState, me: &mut Identified, d: &Arc<Dispatch>) -> bool {
    let addressed = match &d.target {
        Target::Session(id) => *id == me.session_id,
        Target::User(u) => *u == me.user.id,
        Target::Guild(g) => me.guilds.contains(g),
    };
    if !addressed {
        return false;
    }
    // Keep the membership set current.
    if let Some(g) = d.guild_id {
        match (d.t, &d.target) {
            ("GUILD_CREATE", Target::User(_)) => {
                me.guilds.insert(g);
            }
            ("GUILD_DELETE", _) => {
                me.guilds.remove(&g);
            }
            _ => {}
        }
    }
    if let Some(bit) = intents::required(d.t) {
        if me.intents & bit == 0 {
            return false;
        }
    }
    if let (Some(ch), Some(g)) = (d.channel_id, d.guild_id) {
        let (Ok(guild), Ok(channel)) = (s.store.guild(g).await, s.store.channel(ch).await) else { return false };
        return s.store.permissions(&guild, Some(&channel), me.user.id).await.is_ok_and(|p| p.has(Permissions::VIEW_CHANNEL));
    }
    true
}
