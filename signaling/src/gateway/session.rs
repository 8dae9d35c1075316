//! One gateway connection. The session it identifies (or resumes) lives in the registry and
//! survives the connection; a collector task per session keeps receiving dispatches while the
//! client is away, so Resume can replay them in order.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use lodge_chat::User;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info};

use super::registry::{Entry, Session, SessionRef, LIVE_QUEUE};
use super::{
    close, intents, payloads, HEARTBEAT_INTERVAL_MS, MAX_PAYLOAD, RATE_LIMIT, RATE_WINDOW,
};
use crate::app::AppState;
use crate::hub::{Dispatch, Ended, Subscription, Target};
use crate::ws::{close_with, Inbound, Tx};

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

pub async fn ws_handler(ws: WebSocketUpgrade, State(s): State<AppState>) -> Response {
    // Accept frames a bit larger than the protocol limit so we can close with 4002 ourselves.
    // A small read buffer: tungstenite zero-fills the whole read buffer on every read attempt,
    // and clients send little (measured: the 128 KiB default cost a third of the CPU at 1,000
    // sessions).
    ws.max_message_size(MAX_PAYLOAD * 4)
        .max_frame_size(MAX_PAYLOAD * 4)
        .read_buffer_size(4096)
        .on_upgrade(move |sock| run(s, sock))
}

async fn send(tx: &mut Tx, v: Value) -> bool {
    tx.send(Message::Text(v.to_string().into())).await.is_ok()
}

async fn send_frames(tx: &mut Tx, frames: Vec<String>) -> bool {
    for f in frames {
        if tx.send(Message::Text(f.into())).await.is_err() {
            return false;
        }
    }
    true
}

fn lock(s: &SessionRef) -> std::sync::MutexGuard<'_, Session> {
    s.lock()
        .expect("a session lock is never held across a panic")
}

async fn run(s: AppState, sock: WebSocket) {
    let (mut tx, mut rx) = sock.split();
    if !send(&mut tx, json!({ "op": 10, "d": { "heartbeat_interval": HEARTBEAT_INTERVAL_MS }, "s": null, "t": null })).await {
        return;
    }
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let mut session: Option<SessionRef> = None;
    let mut live: Option<mpsc::Receiver<String>> = None;
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
                        if session.is_some() { close_with(&mut tx, close::ALREADY_AUTHENTICATED, "already identified").await; break }
                        // Subscribe before reading the snapshot so nothing falls between the two.
                        // Invalid intents: identify refuses them below; the hub filter meanwhile passes all.
                        let hub_rx = s.hub.subscribe(requested_intents(&d).unwrap_or(intents::ALL));
                        match identify(&s, &d).await {
                            Ok((sess, ready, creates)) => {
                                let (live_tx, live_rx) = mpsc::channel(LIVE_QUEUE);
                                let id = sess.id.clone();
                                let user = sess.user.id;
                                hub_rx.identified(&id, user);
                                let sref = s.sessions.insert(sess);
                                let frames: Vec<String> = {
                                    let mut g = lock(&sref);
                                    let mut f = vec![g.record(Entry::Own("READY", ready.to_string().into())).1];
                                    for c in creates {
                                        f.push(g.record(Entry::Own("GUILD_CREATE", c.to_string().into())).1);
                                    }
                                    g.attach(conn, live_tx);
                                    f
                                };
                                tokio::spawn(collector(s.clone(), sref.clone(), hub_rx));
                                info!(user, session = %&id[..6], "gateway session identified");
                                super::presence::connected(&s, user, d.get("presence").filter(|p| p.is_object())).await;
                                session = Some(sref);
                                live = Some(live_rx);
                                if !send_frames(&mut tx, frames).await { break }
                            }
                            Err((code, reason)) => { close_with(&mut tx, code, reason).await; break }
                        }
                    }
                    Some(6) => {
                        if session.is_some() { close_with(&mut tx, close::ALREADY_AUTHENTICATED, "already identified").await; break }
                        match resume(&s, &d, conn).await {
                            Some((sref, live_rx, frames)) => {
                                let user = lock(&sref).user.id;
                                super::presence::connected(&s, user, None).await;
                                session = Some(sref);
                                live = Some(live_rx);
                                if !send_frames(&mut tx, frames).await { break }
                            }
                            None => {
                                if !send(&mut tx, json!({ "op": 9, "d": false, "s": null, "t": null })).await { break }
                            }
                        }
                    }
                    Some(3) => {
                        let Some(sref) = &session else { close_with(&mut tx, close::NOT_AUTHENTICATED, "identify first").await; break };
                        let user = lock(sref).user.id;
                        if !super::presence::set(&s, user, &d).await {
                            close_with(&mut tx, close::DECODE_ERROR, "invalid presence: status must be online, idle, dnd, invisible or offline").await;
                            break;
                        }
                    }
                    Some(4) => {
                        let Some(sref) = &session else { close_with(&mut tx, close::NOT_AUTHENTICATED, "identify first").await; break };
                        let (user, sid) = { let g = lock(sref); (g.user.clone(), g.id.clone()) };
                        if let Err(e) = crate::voice::service::handle_op4(&s, &user, &sid, &d).await {
                            // Discord answers nothing on a refused op 4; Lodge tells the session why.
                            let body = json!({ "code": e.code(), "message": e.to_string(), "guild_id": d.get("guild_id"), "channel_id": d.get("channel_id") });
                            s.hub.send(Target::Session(sid), None, None, "LODGE_VOICE_ERROR", body);
                        }
                    }
                    Some(8) => { /* request guild members: GUILD_CREATE already carries them */ }
                    Some(_) | None => {
                        if session.is_none() { close_with(&mut tx, close::NOT_AUTHENTICATED, "identify first").await; }
                        else { close_with(&mut tx, close::UNKNOWN_OPCODE, "unknown opcode").await; }
                        break;
                    }
                }
            }
            f = async { match live.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                match f {
                    Some(frame) => {
                        // Under load frames queue up: write what is waiting, then flush once, so a
                        // busy session costs one write per batch rather than one per dispatch.
                        if tx.feed(Message::Text(frame.into())).await.is_err() { break }
                        let mut more = 0;
                        while more < 256 {
                            match live.as_mut().map(|r| r.try_recv()) {
                                Some(Ok(f)) => { if tx.feed(Message::Text(f.into())).await.is_err() { break } more += 1; }
                                _ => break,
                            }
                        }
                        if tx.flush().await.is_err() { break }
                    }
                    None => {
                        // Detached: too slow, resumed elsewhere, or the session ended.
                        close_with(&mut tx, close::UNKNOWN_ERROR, "session detached; resume to continue").await;
                        break;
                    }
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
    if let Some(sref) = session {
        let user = {
            let mut g = lock(&sref);
            g.detach(conn);
            debug!(user = g.user.id, session = %&g.id[..6], seq = g.seq, "gateway connection closed; session resumable");
            g.user.id
        };
        super::presence::disconnected(&s, user).await;
    }
}

type IdentifyResult = Result<(Session, Value, Vec<Value>), (u16, &'static str)>;

async fn identify(s: &AppState, d: &Value) -> IdentifyResult {
    let token = d
        .get("token")
        .and_then(Value::as_str)
        .ok_or((close::DECODE_ERROR, "identify needs a token"))?;
    let token = crate::extract::token_from_header(token);
    let user = s
        .store
        .authenticate(token)
        .await
        .map_err(|_| (close::AUTHENTICATION_FAILED, "authentication failed"))?;
    let intents = requested_intents(d).ok_or((close::INVALID_INTENTS, "invalid intents"))?;
    let shard = d.get("shard").filter(|v| !v.is_null());
    if let Some(sh) = shard {
        let ok = sh.as_array().is_some_and(|a| {
            a.len() == 2
                && a[0]
                    .as_u64()
                    .zip(a[1].as_u64())
                    .is_some_and(|(i, n)| n >= 1 && i < n)
        });
        if !ok {
            return Err((close::INVALID_SHARD, "invalid shard"));
        }
    }
    let large = d
        .get("large_threshold")
        .and_then(Value::as_u64)
        .unwrap_or(payloads::MAX_GUILD_CREATE_MEMBERS as u64)
        .clamp(50, 250) as u32;
    let session_id: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let guilds = s
        .store
        .user_guilds(user.id)
        .await
        .map_err(|_| (close::UNKNOWN_ERROR, "storage error"))?;
    let ids: Vec<u64> = guilds.iter().map(|g| g.id).collect();
    let ready = payloads::ready(s, &user, &session_id, &ids, shard);
    let mut creates = Vec::new();
    if intents & intents::GUILDS != 0 {
        for g in &guilds {
            creates.push(
                payloads::guild_create_limited(s, g, user.id, large)
                    .await
                    .map_err(|_| (close::UNKNOWN_ERROR, "storage error"))?,
            );
        }
    }
    let sess = Session::new(
        session_id,
        user,
        intents,
        ids.into_iter().collect::<HashSet<u64>>(),
    );
    Ok((sess, ready, creates))
}

/// Resume `{token, session_id, seq}`: the missed dispatches in order, then RESUMED. `None` means
/// Invalid Session (unknown, expired, another user's, or too far behind).
async fn resume(
    s: &AppState,
    d: &Value,
    conn: u64,
) -> Option<(SessionRef, mpsc::Receiver<String>, Vec<String>)> {
    let token = crate::extract::token_from_header(d.get("token")?.as_str()?);
    let sid = d.get("session_id")?.as_str()?;
    let acked = d.get("seq").and_then(Value::as_u64).unwrap_or(0);
    let user = s.store.authenticate(token).await.ok()?;
    let sref = s.sessions.get(sid)?;
    let (live_tx, live_rx) = mpsc::channel(LIVE_QUEUE);
    let frames = {
        let mut g = lock(&sref);
        if g.user.id != user.id || g.ended {
            return None;
        }
        let mut frames = match g.replay_after(acked) {
            Ok(f) => f,
            Err(e) => {
                info!(user = user.id, session = %&g.id[..6], acked, ?e, "resume refused");
                return None;
            }
        };
        // Taking over drops the previous connection's queue: it closes and stops reading.
        g.attach(conn, live_tx);
        frames.push(g.record(Entry::Own("RESUMED", "{}".into())).1);
        info!(user = user.id, session = %&g.id[..6], replayed = frames.len() - 1, "gateway session resumed");
        frames
    };
    Some((sref, live_rx, frames))
}

/// The intents an Identify asks for (all when absent); `None` when they are invalid.
fn requested_intents(d: &Value) -> Option<u64> {
    match d.get("intents") {
        None | Some(Value::Null) => Some(intents::ALL),
        Some(v) => v.as_u64().filter(|i| *i <= intents::ALL),
    }
}

/// Receives hub dispatches for one session until it expires, connected or not.
async fn collector(s: AppState, sref: SessionRef, mut hub: Subscription) {
    let mut check = tokio::time::interval(Duration::from_secs(5));
    let mut open = true;
    loop {
        tokio::select! {
            ev = hub.recv(), if open => match ev {
                Ok(d) => {
                    let Some((user, redacted)) = addressed(&sref, &d) else { continue };
                    if let (Some(ch), Some(g)) = (d.channel_id, d.guild_id) {
                        if !can_view(&s, &sref, user, g, ch).await { continue }
                    }
                    lock(&sref).push(Entry::Shared(d, redacted));
                }
                Err(Ended::Lagged) => {
                    // Dispatches were lost for this session: it cannot be resumed faithfully.
                    open = false;
                    let mut g = lock(&sref);
                    info!(user = g.user.id, queue = crate::hub::SESSION_QUEUE, "gateway session fell behind the hub; invalidating it");
                    g.ended = true;
                    g.detach_all();
                }
            },
            _ = check.tick() => {
                let (expired, id) = { let g = lock(&sref); (g.expired(Instant::now()), g.id.clone()) };
                if expired {
                    s.sessions.remove(&id);
                    crate::voice::service::disconnect_session(&s, &id).await;
                    debug!(session = %&id[..6], "gateway session expired");
                    return;
                }
            }
        }
    }
}

/// VIEW_CHANNEL for this session's user, cached until permissions may have changed.
async fn can_view(s: &AppState, sref: &SessionRef, user: u64, guild: u64, channel: u64) -> bool {
    let epoch = s.hub.epoch();
    {
        let mut g = lock(sref);
        if g.visible_epoch != epoch {
            g.visible.clear();
            g.visible_epoch = epoch;
        }
        if let Some(v) = g.visible.get(&channel) {
            return *v;
        }
    }
    let visible = s
        .visibility
        .can_view(&s.store, epoch, guild, channel, user)
        .await;
    let mut g = lock(sref);
    // Only cache what was computed under the epoch that is still current.
    if g.visible_epoch == epoch {
        g.visible.insert(channel, visible);
    }
    visible
}

/// Is the dispatch for this session (before the VIEW_CHANNEL check)? Keeps the guild set
/// current. Returns the user and whether the redacted body applies.
fn addressed(sref: &SessionRef, d: &Dispatch) -> Option<(u64, bool)> {
    let mut g = lock(sref);
    let me: &User = &g.user;
    let uid = me.id;
    let ok = d.targets(&g.id, uid)
        && match &d.target {
            Target::Guild(gid) => g.guilds.contains(gid),
            _ => true,
        };
    if !ok {
        return None;
    }
    if let Some(gid) = d.guild_id {
        match (d.t, &d.target) {
            ("GUILD_CREATE", Target::User(_)) => {
                g.guilds.insert(gid);
            }
            ("GUILD_DELETE", _) => {
                g.guilds.remove(&gid);
            }
            _ => {}
        }
    }
    if !d.wanted_with(g.intents) {
        return None;
    }
    let redacted = d.redacted.is_some()
        && g.intents & intents::MESSAGE_CONTENT == 0
        && !d.full_for.contains(&uid);
    Some((uid, redacted))
}
