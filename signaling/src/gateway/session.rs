//! One gateway connection. The session it identifies (or resumes) lives in the registry and
//! survives the connection; a collector task per session keeps receiving dispatches while the
//! client is away, so Resume can replay them in order.
//!
//! A connection's life: Hello; then, within `identify_timeout_secs`, Identify or Resume (only
//! Heartbeat may come before them, anything else closes with 4003); then client ops until the
//! client leaves, stops heartbeating (4009), sends too much (4008), its session is ended from
//! outside (token revoked: 4004) or the node shuts down (op 7).

use lodge_ids::{GuildId, UserId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{SinkExt, StreamExt};
use lodge_chat::User;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info};

use super::client_op::{self, ClientOp, Identify, Refusal, Resume, MAX_PAYLOAD};
use super::registry::{Entry, Session, SessionRef, LIVE_QUEUE};
use super::session_start::StartRefused;
use super::{close, intents, payload, payloads, Opcode, RATE_LIMIT, RATE_WINDOW};
use crate::app::AppState;
use crate::hub::{DispatchKind, Ended, Subscription, Target};
use crate::shared::redis::{Route, StreamId};
use crate::shared::SessionMeta;
use crate::ws::{await_close, close_with, reply_close, send_close, Inbound, Rx, Tx};

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Gateway API versions this gateway speaks (`?v=`).
pub const VERSIONS: [&str; 2] = ["9", "10"];

/// Counts an open gateway connection for `max_gateway_connections` while it lives.
struct ConnSlot<'a>(&'a AtomicUsize);

impl Drop for ConnSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `?v=10&encoding=json`: a version other than 9 or 10 is closed with 4012 after the upgrade
/// (as Discord does); an encoding other than JSON with 4002.
fn query_refusal(q: Option<&str>) -> Option<Refusal> {
    for pair in q.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "v" if !VERSIONS.contains(&v) => {
                return Some((
                    close::INVALID_API_VERSION,
                    format!("gateway version {v:.8} is not supported; use v=10"),
                ))
            }
            "encoding" if v != "json" => {
                return Some((
                    close::DECODE_ERROR,
                    format!("encoding {v:.8} is not supported; use encoding=json"),
                ))
            }
            _ => {}
        }
    }
    None
}

pub async fn ws_handler(
    ws: WebSocketUpgrade,
    RawQuery(q): RawQuery,
    State(s): State<AppState>,
) -> Response {
    if s.drain.gateway_closed() {
        // Every client of this node has been told to reconnect: a new one belongs elsewhere
        // (a balancer stopped sending them once /readyz said 503).
        let body = json!({ "code": 0, "message": "This node is draining before a restart; connect through another node." });
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            Json(body),
        )
            .into_response();
    }
    let cap = s.cfg.max_gateway_connections;
    if s.gateway_conns.fetch_add(1, Ordering::AcqRel) >= cap {
        s.gateway_conns.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(
            limit = cap,
            "gateway connection refused: node at max_gateway_connections"
        );
        let body = json!({ "code": 0, "message": format!("The gateway is full ({cap} connections, max_gateway_connections); retry later.") });
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "5")],
            Json(body),
        )
            .into_response();
    }
    let refusal = query_refusal(q.as_deref());
    // Accept frames a bit larger than the protocol limit so we can close with 4002 ourselves.
    // A small read buffer: tungstenite zero-fills the whole read buffer on every read attempt,
    // and clients send little (measured: the 128 KiB default cost a third of the CPU at 1,000
    // sessions).
    ws.max_message_size(MAX_PAYLOAD * 4)
        .max_frame_size(MAX_PAYLOAD * 4)
        .read_buffer_size(4096)
        .on_upgrade(move |sock| async move {
            let _slot = ConnSlot(&s.gateway_conns);
            let (mut tx, mut rx) = sock.split();
            if let Some((code, reason)) = refusal {
                close_with(&mut tx, &mut rx, code, &reason).await;
                return;
            }
            Conn::new(s.clone()).run(tx, rx).await
        })
}

async fn send(tx: &mut Tx, v: Value) -> bool {
    tx.send(Message::Text(v.to_string().into())).await.is_ok()
}

async fn send_frames(tx: &mut Tx, frames: Vec<String>) -> bool {
    for f in frames {
        if tx.feed(Message::Text(f.into())).await.is_err() {
            return false;
        }
    }
    tx.flush().await.is_ok()
}

pub(super) fn lock(s: &SessionRef) -> std::sync::MutexGuard<'_, Session> {
    s.lock()
        .expect("a session lock is never held across a panic")
}

/// How handling a payload ends the connection, if it does.
enum Stop {
    Close(u16, String),
    /// The socket is gone: nothing more can be sent.
    Gone,
}

impl From<Refusal> for Stop {
    fn from((code, reason): Refusal) -> Self {
        Stop::Close(code, reason)
    }
}

fn stop(code: u16, reason: impl Into<String>) -> Stop {
    Stop::Close(code, reason.into())
}

/// One connection's state.
struct Conn {
    s: AppState,
    id: u64,
    session: Option<SessionRef>,
    live: Option<mpsc::Receiver<String>>,
    /// Arrival times of the payloads in the last [`RATE_WINDOW`].
    recent: VecDeque<Instant>,
    hb_deadline: Instant,
    /// Last all-members request per guild (rate limited).
    member_requests: HashMap<GuildId, Instant>,
}

impl Conn {
    fn new(s: AppState) -> Self {
        Conn {
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            hb_deadline: Instant::now() + heartbeat_timeout(&s),
            s,
            session: None,
            live: None,
            recent: VecDeque::new(),
            member_requests: HashMap::new(),
        }
    }

    async fn run(mut self, mut tx: Tx, mut rx: Rx) {
        let s = self.s.clone();
        let hello = payload(
            Opcode::Hello,
            json!({ "heartbeat_interval": s.cfg.heartbeat_interval_ms }),
        );
        if !send(&mut tx, hello).await {
            return;
        }
        let identify_by = Instant::now() + Duration::from_secs(s.cfg.identify_timeout_secs);
        let mut shutdown = s.shutdown.subscribe();
        // A drain tells this connection to reconnect once its share passes this bucket.
        let bucket = crate::drain::gateway_bucket(self.id);
        let mut drain = s.drain.reconnects();
        let end = loop {
            tokio::select! {
                m = rx.next() => {
                    let v = match crate::ws::judge(m, MAX_PAYLOAD) {
                        Inbound::Json(v) => v,
                        Inbound::Ignore => continue,
                        Inbound::Refuse(code, reason) => break Stop::Close(code, reason),
                        Inbound::Gone => break Stop::Gone,
                    };
                    if let Err(e) = self.count_payload() { break e }
                    if self.session.is_none() && !client_op::allowed_before_identify(&v) {
                        break stop(close::NOT_AUTHENTICATED, "identify first: only heartbeat, identify and resume are accepted before identify");
                    }
                    let op = match client_op::parse_value(v) {
                        Ok(op) => op,
                        Err(r) => break r.into(),
                    };
                    if let Err(e) = self.handle(&mut tx, op).await { break e }
                }
                f = async { match self.live.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                    match f {
                        Some(frame) => {
                            // Under load frames queue up: write what is waiting, then flush once, so a
                            // busy session costs one write per batch rather than one per dispatch.
                            if tx.feed(Message::Text(frame.into())).await.is_err() { break Stop::Gone }
                            let mut more = 0;
                            let mut broke = false;
                            while more < 256 {
                                match self.live.as_mut().map(|r| r.try_recv()) {
                                    Some(Ok(f)) => { if tx.feed(Message::Text(f.into())).await.is_err() { broke = true; break } more += 1; }
                                    _ => break,
                                }
                            }
                            if broke || tx.flush().await.is_err() { break Stop::Gone }
                        }
                        None => {
                            // Detached: too slow, resumed elsewhere, or ended from outside.
                            let ended = self.session.as_ref().and_then(|r| lock(r).end_close);
                            let (code, reason) = ended.unwrap_or((close::UNKNOWN_ERROR, "session detached; resume to continue"));
                            break stop(code, reason);
                        }
                    }
                }
                _ = tokio::time::sleep_until(self.hb_deadline) => {
                    break stop(close::SESSION_TIMED_OUT, "no heartbeat received in time");
                }
                _ = tokio::time::sleep_until(identify_by), if self.session.is_none() => {
                    break stop(close::NOT_AUTHENTICATED, format!("not identified within {} s", s.cfg.identify_timeout_secs));
                }
                _ = shutdown.changed() => {
                    let _ = send(&mut tx, payload(Opcode::Reconnect, Value::Null)).await;
                    break stop(1012, "server restarting");
                }
                // (The guard `wait_for` returns is dropped inside: it must not live across an await.)
                _ = async { drop(drain.wait_for(|share| *share > bucket).await) } => {
                    s.drain.gateway_reconnects.fetch_add(1, Ordering::Relaxed);
                    let _ = send(&mut tx, payload(Opcode::Reconnect, Value::Null)).await;
                    break stop(1012, "node draining before a restart: resume elsewhere");
                }
            }
        };
        // The close frame first, then the session's end, then the client's close reply.
        let closing = match end {
            Stop::Close(code, reason) => send_close(&mut tx, code, &reason).await,
            Stop::Gone => {
                reply_close(&mut tx).await;
                false
            }
        };
        if let Some(sref) = self.session {
            let user = {
                let mut g = lock(&sref);
                g.detach(self.id);
                debug!(user = %g.user.id, session = %&g.id[..6], seq = g.seq, "gateway connection closed; session resumable");
                g.user.id
            };
            super::presence::disconnected(&s, user).await;
        }
        if closing {
            // Detached above, so nothing more is written: the live queue goes before the wait.
            self.live = None;
            await_close(&mut rx).await;
        }
    }

    /// The payload rate limit: more than [`RATE_LIMIT`] in [`RATE_WINDOW`] closes with 4008.
    fn count_payload(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > RATE_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() > RATE_LIMIT {
            return Err(stop(
                close::RATE_LIMITED,
                format!("more than {RATE_LIMIT} payloads in 60 s"),
            ));
        }
        Ok(())
    }

    async fn handle(&mut self, tx: &mut Tx, op: ClientOp) -> Result<(), Stop> {
        let s = self.s.clone();
        match op {
            ClientOp::Heartbeat(_) => {
                self.hb_deadline = Instant::now() + heartbeat_timeout(&s);
                ok(send(tx, payload(Opcode::HeartbeatAck, Value::Null)).await)
            }
            ClientOp::Identify(d) => {
                if self.session.is_some() {
                    return Err(stop(close::ALREADY_AUTHENTICATED, "already identified"));
                }
                self.identify(tx, d).await
            }
            ClientOp::Resume(d) => {
                if self.session.is_some() {
                    return Err(stop(close::ALREADY_AUTHENTICATED, "already identified"));
                }
                match resume(&s, &d, self.id).await {
                    Some((sref, live_rx, frames)) => {
                        let user = lock(&sref).user.id;
                        super::presence::connected(&s, user, None).await;
                        self.session = Some(sref);
                        self.live = Some(live_rx);
                        ok(send_frames(tx, frames).await)
                    }
                    None => ok(send(tx, payload(Opcode::InvalidSession, Value::Bool(false))).await),
                }
            }
            ClientOp::PresenceUpdate(d) => {
                let user = self.user().id;
                if !super::presence::set(&s, user, &d).await {
                    return Err(stop(
                        close::DECODE_ERROR,
                        "invalid presence: status must be online, idle, dnd, invisible or offline",
                    ));
                }
                Ok(())
            }
            ClientOp::VoiceStateUpdate(d) => {
                let (user, sid) = {
                    let g = lock(self.sref());
                    (g.user.clone(), g.id.clone())
                };
                if let Err(e) = crate::voice::service::handle_op4(&s, &user, &sid, &d).await {
                    // Discord answers nothing on a refused op 4; Lodge tells the session why.
                    let body = json!({ "code": e.code(), "message": e.to_string(), "guild_id": d.get("guild_id"), "channel_id": d.get("channel_id") });
                    let to = Target::Session {
                        user: user.id,
                        session: sid,
                    };
                    s.hub
                        .send(to, None, None, DispatchKind::LodgeVoiceError, body);
                }
                Ok(())
            }
            ClientOp::RequestGuildMembers(r) => {
                let sref = self.sref().clone();
                super::member_chunks::request(&s, &sref, &mut self.member_requests, r)
                    .await
                    .map_err(Stop::from)
            }
        }
    }

    fn sref(&self) -> &SessionRef {
        self.session
            .as_ref()
            .expect("ops that need a session are refused before identify")
    }

    fn user(&self) -> User {
        lock(self.sref()).user.clone()
    }

    async fn identify(&mut self, tx: &mut Tx, d: Identify) -> Result<(), Stop> {
        let s = self.s.clone();
        let user = s.store.authenticate(&d.token).await.map_err(|e| match e {
            // The database is down: not the token's fault (4004 would make clients drop
            // it); 4000 lets them reconnect and identify again.
            e if e.is_unreachable() => stop(
                close::UNKNOWN_ERROR,
                "the database is unreachable; reconnect and identify again shortly",
            ),
            _ => stop(close::AUTHENTICATION_FAILED, "authentication failed"),
        })?;
        if user.bot && !s.cfg.bot_privileged_intents && d.intents & intents::PRIVILEGED != 0 {
            return Err(stop(
                close::DISALLOWED_INTENTS,
                "disallowed intents: GUILD_MEMBERS and GUILD_PRESENCES are not enabled for bots on this node (bot_privileged_intents)",
            ));
        }
        let cap = s.cfg.max_sessions_per_user;
        if !s.sessions.has_room(user.id, cap) {
            return Err(stop(
                close::RATE_LIMITED,
                format!("this user already has {cap} connected gateway sessions (max_sessions_per_user)"),
            ));
        }
        match s.session_starts.try_start(user.id).await {
            Ok(_) => {}
            Err(StartRefused::TooFast) => {
                let per = s.session_starts.limits().max_concurrency;
                info!(
                    user = %user.id,
                    limit = per,
                    "identify refused: more than max_concurrency identifies in 5 s"
                );
                return ok(send(tx, payload(Opcode::InvalidSession, Value::Bool(false))).await);
            }
            Err(StartRefused::Exhausted { reset_after }) => {
                let total = s.session_starts.limits().total;
                info!(
                    user = %user.id,
                    limit = total,
                    "identify refused: session_start_limit used up"
                );
                return Err(stop(
                    close::RATE_LIMITED,
                    format!(
                        "session_start_limit used up ({total} identifies per 24 h); resets in {} s",
                        reset_after.as_secs()
                    ),
                ));
            }
        }
        // Subscribe (and, in a cluster, watch the bus routes, confirmed) before reading the
        // snapshot so nothing falls between the two.
        let hub_rx = s.hub.subscribe(d.intents);
        let guild_ids: Vec<GuildId> = s
            .store
            .user_guilds(user.id)
            .await
            .map_err(|_| stop(close::UNKNOWN_ERROR, "storage error"))?
            .iter()
            .map(|g| g.id)
            .collect();
        watch_routes(&s, user.id, &guild_ids, true);
        s.shared.bus.synced().await;
        // In a cluster, where another node taking the session over starts reading routes
        // that have nothing in its log (without it the session resumes only here).
        let created = match s.shared.clustered {
            true => match s.shared.resume.position().await {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "the session cannot be resumed on another node: no stream position");
                    None
                }
            },
            false => None,
        };
        let (sess, ready, creates) = snapshot(&s, &d, user).await?;
        let watched = Watched {
            s: s.clone(),
            session: sess.id.clone(),
            user: sess.user.id,
            guilds: guild_ids,
            journaled: created.is_some(),
        };
        let (live_tx, live_rx) = mpsc::channel(LIVE_QUEUE);
        let id = sess.id.clone();
        let uid = sess.user.id;
        hub_rx.identified(&id, uid);
        let (sref, evicted) = s
            .sessions
            .insert_capped(sess, cap, (close::SESSION_TIMED_OUT, "session ended: the user opened more than max_sessions_per_user sessions"))
            .map_err(|e| {
                stop(
                    close::RATE_LIMITED,
                    format!("this user already has {} connected gateway sessions (max_sessions_per_user)", e.cap),
                )
            })?;
        if let Some(old) = evicted {
            let old_id = lock(&old).id.clone();
            info!(user = %uid, session = %&old_id[..6], "gateway session evicted: user at max_sessions_per_user");
            end_voice(&s, &old).await;
        }
        let frames: Vec<String> = {
            let mut g = lock(&sref);
            let mut f = vec![g.record(DispatchKind::Ready, &ready.to_string())];
            for c in creates {
                f.push(g.record(DispatchKind::GuildCreate, &c.to_string()));
            }
            g.set_replay_floor();
            if let Some(created) = created {
                s.shared.resume.open(SessionMeta {
                    session: g.id.clone(),
                    user: g.user.id,
                    token_hash: g.token_hash.clone(),
                    intents: g.intents,
                    guilds: watched.guilds.clone(),
                    floor: g.replay_floor(),
                    created,
                    routes: Default::default(),
                    node: s.shared.me.clone(),
                    ended: false,
                });
                g.keep_journal(s.shared.resume.clone());
            }
            g.attach(self.id, live_tx);
            f
        };
        tokio::spawn(collector(
            s.clone(),
            sref.clone(),
            hub_rx,
            watched,
            HashMap::new(),
        ));
        info!(user = %uid, session = %&id[..6], "gateway session identified");
        super::presence::connected(&s, uid, d.presence.as_ref()).await;
        self.session = Some(sref);
        self.live = Some(live_rx);
        ok(send_frames(tx, frames).await)
    }
}

fn ok(sent: bool) -> Result<(), Stop> {
    if sent {
        Ok(())
    } else {
        Err(Stop::Gone)
    }
}

/// One and a half heartbeat intervals: a client that misses a beat is a zombie.
fn heartbeat_timeout(s: &AppState) -> Duration {
    Duration::from_millis(s.cfg.heartbeat_interval_ms * 3 / 2)
}

/// READY and the GUILD_CREATEs of a new session.
async fn snapshot(
    s: &AppState,
    d: &Identify,
    user: User,
) -> Result<(Session, Value, Vec<Value>), Stop> {
    let storage = |_| stop(close::UNKNOWN_ERROR, "storage error");
    let session_id: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let guilds = s.store.user_guilds(user.id).await.map_err(storage)?;
    let ids: Vec<GuildId> = guilds.iter().map(|g| g.id).collect();
    let shard = d.shard.map(|sh| json!(sh));
    let ready = payloads::ready(s, &user, &session_id, &ids, shard.as_ref());
    let mut creates = Vec::new();
    if d.intents & intents::GUILDS != 0 {
        for g in &guilds {
            creates.push(
                payloads::guild_create_limited(s, g, user.id, d.large_threshold)
                    .await
                    .map_err(|_| stop(close::UNKNOWN_ERROR, "storage error"))?,
            );
        }
    }
    let sess = Session::new(
        session_id,
        user,
        lodge_chat::token_hash(&d.token),
        d.intents,
        ids.into_iter().collect::<HashSet<GuildId>>(),
    );
    Ok((sess, ready, creates))
}

/// Resume `{token, session_id, seq}`: the missed dispatches in order, then RESUMED. `None` means
/// Invalid Session (unknown, expired, another user's, or too far behind).
async fn resume(
    s: &AppState,
    d: &Resume,
    conn: u64,
) -> Option<(SessionRef, mpsc::Receiver<String>, Vec<String>)> {
    let user = s.store.authenticate(&d.token).await.ok()?;
    let Some(sref) = s.sessions.get(&d.session_id) else {
        // Not here: in a cluster, its node may have died (or the client moved).
        if s.shared.clustered {
            return super::takeover::resume(s, d, user, conn).await;
        }
        return None;
    };
    let (live_tx, live_rx) = mpsc::channel(LIVE_QUEUE);
    let frames = {
        let mut g = lock(&sref);
        if g.user.id != user.id || g.ended {
            return None;
        }
        let mut frames = match g.replay_after(d.seq) {
            Ok(f) => f,
            Err(e) => {
                info!(user = %user.id, session = %&g.id[..6], acked = d.seq, ?e, "resume refused");
                return None;
            }
        };
        // Taking over drops the previous connection's queue: it closes and stops reading.
        g.attach(conn, live_tx);
        frames.push(g.record(DispatchKind::Resumed, "{}"));
        info!(user = %user.id, session = %&g.id[..6], replayed = frames.len() - 1, "gateway session resumed");
        frames
    };
    Some((sref, live_rx, frames))
}

/// The bus routes a session watches; unwatched when dropped (the session's end).
pub(super) struct Watched {
    pub(super) s: AppState,
    pub(super) session: String,
    pub(super) user: UserId,
    pub(super) guilds: Vec<GuildId>,
    /// The session's resume state is in the cluster's resume store (follow its guilds there).
    pub(super) journaled: bool,
}

impl Drop for Watched {
    fn drop(&mut self) {
        watch_routes(&self.s, self.user, &self.guilds, false);
    }
}

/// Receives hub dispatches for one session until it expires, connected or not. `caught_up`:
/// per route, the position up to which the session already has the route's dispatches (a
/// session taken over from another node read them back from the route's stream); live ones
/// up to there are skipped.
pub(super) async fn collector(
    s: AppState,
    sref: SessionRef,
    mut hub: Subscription,
    mut watched: Watched,
    mut caught_up: HashMap<Route, StreamId>,
) {
    let mut check = tokio::time::interval(Duration::from_secs(5));
    let mut open = true;
    loop {
        tokio::select! {
            ev = hub.recv(), if open => match ev {
                Ok(d) => {
                    if let Some((route, id)) = d.bus {
                        if let Some(upto) = caught_up.get(&route) {
                            if id <= *upto {
                                continue;
                            }
                            // Past the catch-up: the route is live from here on.
                            caught_up.remove(&route);
                        }
                    }
                    follow_guilds(&s, &d, &mut watched);
                    let Some((user, body)) = super::session_filter::addressed(&sref, &d) else { continue };
                    let Some(body) = super::session_filter::visible_body(&s, &sref, user, &d, body).await else { continue };
                    lock(&sref).push(Entry::Shared(d, body));
                }
                Err(Ended::Lagged) => {
                    // Dispatches were lost for this session: it cannot be resumed faithfully.
                    open = false;
                    let mut g = lock(&sref);
                    info!(user = %g.user.id, queue = crate::hub::SESSION_QUEUE, "gateway session fell behind the hub; invalidating it");
                    g.lost_dispatches();
                }
            },
            _ = check.tick() => {
                let (expired, id) = { let g = lock(&sref); (g.expired(Instant::now()), g.id.clone()) };
                if expired {
                    s.sessions.remove_if(&id, &sref);
                    let (journal, moved, keep_voice) = { let mut g = lock(&sref); (g.take_journal(), g.moved, g.keep_voice) };
                    if let Some(j) = journal {
                        j.close(&id);
                    }
                    if !moved && !keep_voice {
                        end_voice(&s, &sref).await;
                    }
                    debug!(session = %&id[..6], moved, "gateway session expired");
                    return;
                }
            }
        }
    }
}

/// A guild joined or left: watch its route from now on, or stop (and, in a cluster, say so
/// in the session's resume meta: a join's route is read from the join's bus position on a
/// takeover).
pub(super) fn follow_guilds(s: &AppState, d: &crate::dispatch::Dispatch, w: &mut Watched) {
    use crate::dispatch::{DispatchKind, Target};
    let Some(g) = d.guild_id else { return };
    match (d.t, &d.target) {
        (DispatchKind::GuildCreate, Target::User(u)) if *u == w.user && !w.guilds.contains(&g) => {
            s.shared.bus.watch_guild(g, true);
            w.guilds.push(g);
            if let (Some((_, id)), true) = (d.bus, w.journaled) {
                let from = StreamId {
                    ms: id.ms.saturating_sub(1),
                    seq: u64::MAX,
                };
                s.shared
                    .resume
                    .follow(&w.session, w.guilds.clone(), Some((Route::Guild(g), from)));
            }
        }
        (DispatchKind::GuildDelete, target) if !matches!(target, Target::User(u) if *u != w.user) => {
            if let Some(i) = w.guilds.iter().position(|x| *x == g) {
                w.guilds.swap_remove(i);
                s.shared.bus.watch_guild(g, false);
                if w.journaled {
                    s.shared.resume.follow(&w.session, w.guilds.clone(), None);
                }
            }
        }
        _ => {}
    }
}

/// End every session that identified with the token whose hash is `token_hash` (`None`: every
/// session of the user): their connections close with 4004 and their voice ends.
pub async fn end_sessions_of(s: &AppState, user: UserId, token_hash: Option<&str>) -> usize {
    let mut ended = Vec::new();
    for r in s.sessions.of_user(user) {
        let mut g = lock(&r);
        if g.ended || token_hash.is_some_and(|h| h != g.token_hash) {
            continue;
        }
        g.end((
            close::AUTHENTICATION_FAILED,
            "authentication failed: the token was revoked",
        ));
        ended.push(r.clone());
    }
    for r in &ended {
        end_voice(s, r).await;
    }
    ended.len()
}

/// The bus could not deliver everything on `route`: every session here that receives it is
/// told (op 9) and ended. Returns how many.
pub fn invalidate_route(
    s: &AppState,
    route: crate::shared::redis::Route,
    reason: &'static str,
) -> usize {
    use crate::shared::redis::Route;
    let mut n = 0;
    for r in s.sessions.all() {
        let mut g = lock(&r);
        let hit = match route {
            Route::Guild(id) => g.guilds.contains(&id),
            Route::User(u) => g.user.id == u,
        };
        if hit && !g.ended {
            g.invalidate(reason);
            n += 1;
        }
    }
    if n > 0 {
        tracing::warn!(
            ?route,
            sessions = n,
            reason,
            "sessions told they may have missed events (op 9)"
        );
    }
    n
}

/// The bus routes a session needs: its user's and its guilds'.
pub(super) fn watch_routes(s: &AppState, user: UserId, guilds: &[GuildId], on: bool) {
    let bus = &s.shared.bus;
    bus.watch_user(user, on);
    for g in guilds {
        bus.watch_guild(*g, on);
    }
}

/// A session ended: its voice states in the guilds it was in end with it.
pub(super) async fn end_voice(s: &AppState, sref: &SessionRef) {
    let (user, guilds, id) = {
        let g = lock(sref);
        (
            g.user.id,
            g.guilds.iter().copied().collect::<Vec<GuildId>>(),
            g.id.clone(),
        )
    };
    crate::voice::service::disconnect_session(s, user, guilds, &id).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_encodings() {
        assert!(query_refusal(None).is_none());
        assert!(query_refusal(Some("v=10&encoding=json")).is_none());
        assert!(query_refusal(Some("v=9&encoding=json&compress=zlib-stream")).is_none());
        assert_eq!(
            query_refusal(Some("v=6&encoding=json")).unwrap().0,
            close::INVALID_API_VERSION
        );
        assert_eq!(
            query_refusal(Some("encoding=etf&v=10")).unwrap().0,
            close::DECODE_ERROR
        );
    }
}
