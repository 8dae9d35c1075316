//! The voice gateway (v4–v8): Hello, Identify → Ready, Select Protocol → Session Description
//! (WebRTC: the SDP answer and slots; native UDP: the mode and key), Heartbeat, Speaking, Clients
//! Connect/Disconnect, Resume, and DAVE's ops (21–31, binary 26/28 in; see `e2ee.rs`).

use lodge_ids::{ChannelId, GuildId, UserId};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use lodge_sfu::native::CryptoMode;
use lodge_sfu::{JoinRequest, NativeJoin, RoomId};
use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::{info, warn};

use super::client_op::{self, ClientOp, Identify, Media, SelectProtocol};
use super::conns::{VoiceConn, VoiceOut};
use super::control::{Guard, Input};
use super::executor::{self, ExecError};
use super::outbox::{
    outbox, Next, Outbox, OutboxRx, OverflowWatch, OUTBOX_CAPACITY, WRITE_TIMEOUT,
};
use super::resume::{Frame, ReplayBuffer};
use super::state::PendingToken;
use super::wire::{Seq, WireVersion};
use super::{payload, Opcode};
use crate::app::AppState;
use crate::ws::{await_close, close_with, reply_close, send_close, Tx};

/// Discord's voice gateway heartbeat interval, the default of `voice_heartbeat_interval_ms`.
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
    /// The client did not keep up with what it was sent (outbox full or a write timed out):
    /// Discord's session timeout, with a reason naming the limit.
    pub const TOO_SLOW: u16 = 4009;
    pub const SERVER_NOT_FOUND: u16 = 4011;
    pub const UNKNOWN_PROTOCOL: u16 = 4012;
    pub const UNKNOWN_ENCRYPTION_MODE: u16 = 4016;
    /// The channel requires end-to-end encryption (DAVE) and the client offers none.
    pub const E2EE_REQUIRED: u16 = 4017;
    pub const DISCONNECTED: u16 = 4014;
    pub const SERVER_CRASHED: u16 = 4015;
    pub const BAD_REQUEST: u16 = 4020;
}

/// `version`: the `?v=` the client asked for (see [`super::wire`]), or why it is refused (the
/// socket is then closed with 4020 at once).
pub fn upgrade(
    ws: WebSocketUpgrade,
    s: AppState,
    version: Result<WireVersion, String>,
) -> Response {
    // Small read buffer: see the gateway's handler (tungstenite zero-fills it per read).
    ws.max_message_size(MAX_PAYLOAD * 2)
        .max_frame_size(MAX_PAYLOAD * 2)
        .read_buffer_size(4096)
        .on_upgrade(move |sock| run(s, sock, version))
}

pub(crate) struct Authed {
    user_id: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
    conn_id: u64,
    generation: u64,
    joined: bool,
    /// The gateway session and the voice token it identified with: what op 7 must name.
    session_id: String,
    token: String,
    /// The speaking flags last relayed to the others (op 5), and the budget for relaying: each
    /// relay fans out to every native connection in the channel, so a client that flips its
    /// flags in a loop must not flood the others' queues (they would be closed as too slow).
    relayed_speaking: Option<u64>,
    speaking_relays: lodge_sfu::rate_limit::TokenBucket,
    /// Identify's `max_dave_protocol_version` (0: no DAVE).
    max_dave: u16,
    /// Budget for binary DAVE frames (each may cost signature checks).
    dave_frames: lodge_sfu::rate_limit::TokenBucket,
    /// The channel requires DAVE (`require_dave`): no WebRTC, no call without it.
    require_dave: bool,
}

/// Speaking changes relayed per second per connection, and the burst (Discord's libraries
/// send op 5 when they start and stop playing, a few times a minute).
const SPEAKING_RELAYS_PER_S: u32 = 2;
const SPEAKING_RELAY_BURST: u32 = 10;

/// A connection whose WebSocket dropped, kept for `voice_resume_secs` so op 7 can take it up:
/// its call, its queue of messages not yet written, its numbering and what it wrote last.
pub(crate) struct Parked {
    authed: Authed,
    out: Outbox,
    outbox: OutboxRx,
    seq: Seq,
    replay: ReplayBuffer,
    /// Which parking this is (a connection resumed and dropped again is parked anew, with
    /// its own grace period).
    parking: u64,
}

/// Numbers parkings, so a grace period ends only its own.
static PARKINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Numbers the connection tasks (`VoiceConns::live`).
static TASKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// How long op 7 waits for a still-open connection it named to park.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// The SSRC `user` speaks under in `guild` (Ready, op 5; the node derives the same).
fn user_ssrc(guild: GuildId, user: UserId) -> u32 {
    lodge_sfu::native::user_ssrc(guild, user).0
}

/// The relays for `user`'s Ready: `[]` without `--turn-url`.
fn ice_servers(s: &AppState, user: UserId) -> Vec<crate::turn::IceServer> {
    let Some(turn) = &s.cfg.turn else {
        return Vec::new();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    turn.ice_servers(user, now)
}

/// Why a connection's loop stopped.
enum Stop {
    /// Close with this code and reason.
    Close(u16, String),
    /// The client is not keeping up (its outbox filled or a write timed out).
    TooSlow(String),
    /// The client's socket closed or broke: an identified connection is parked for op 7.
    Dropped,
    /// Nothing more to do (the connection was replaced or removed elsewhere).
    Gone,
}

/// The connection's writing half: numbers each payload and gives every write a deadline; a
/// write also ends when the outbox overflows meanwhile.
struct Writer {
    tx: Tx,
    version: WireVersion,
    seq: Seq,
    /// Numbered messages written, for a resume (v8).
    replay: ReplayBuffer,
    overflow: OverflowWatch,
}

impl Writer {
    async fn json(&mut self, mut v: Value) -> Result<(), Stop> {
        let op = v["op"].as_u64().and_then(|n| Opcode::try_from(n).ok());
        // Hello and heartbeat ACKs belong to one socket; everything else is numbered (v8) and,
        // but for Ready and Resumed, kept for a resume.
        let numbered =
            self.version.numbered() && !matches!(op, Some(Opcode::Hello | Opcode::HeartbeatAck));
        let text = if numbered {
            let seq = self.seq.advance();
            v["seq"] = json!(seq);
            let text = v.to_string();
            if !matches!(op, Some(Opcode::Ready | Opcode::Resumed)) {
                self.replay.push(seq, text.clone());
            }
            text
        } else {
            v.to_string()
        };
        self.frame(Frame::Text(text)).await
    }

    /// A binary frame (opcode and payload): v8 puts the sequence number in front and keeps it
    /// for a resume; older versions send it as it is (NATIVE-VOICE.md §0).
    async fn binary(&mut self, op_and_payload: Vec<u8>) -> Result<(), Stop> {
        if !self.version.numbered() {
            return self.frame(Frame::Binary(op_and_payload)).await;
        }
        let seq = self.seq.advance();
        let mut frame = Vec::with_capacity(2 + op_and_payload.len());
        frame.extend_from_slice(&seq.to_be_bytes());
        frame.extend_from_slice(&op_and_payload);
        self.replay.push(seq, Frame::Binary(frame.clone()));
        self.frame(Frame::Binary(frame)).await
    }

    /// Write one frame as it is (a replayed message keeps its number).
    async fn frame(&mut self, frame: Frame) -> Result<(), Stop> {
        let msg = match frame {
            Frame::Text(t) => Message::Text(t.into()),
            Frame::Binary(b) => Message::Binary(b.into()),
        };
        let write = tokio::time::timeout(WRITE_TIMEOUT, self.tx.send(msg));
        tokio::select! {
            r = write => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Stop::Gone),
                Err(_) => Err(Stop::TooSlow(format!(
                    "too slow: a write did not complete within {} s",
                    WRITE_TIMEOUT.as_secs()
                ))),
            },
            _ = self.overflow.overflowed() => Err(outbox_full()),
        }
    }
}

fn outbox_full() -> Stop {
    Stop::TooSlow(format!(
        "too slow: more than {OUTBOX_CAPACITY} messages waiting to be read"
    ))
}

async fn run(s: AppState, sock: WebSocket, version: Result<WireVersion, String>) {
    let (tx, mut rx) = sock.split();
    let (mut out, mut outbox) = outbox(OUTBOX_CAPACITY);
    let mut w = Writer {
        tx,
        version: *version.as_ref().unwrap_or(&WireVersion::V8),
        seq: Seq::default(),
        replay: ReplayBuffer::default(),
        overflow: outbox.watch(),
    };
    if let Err(reason) = version {
        return close_with(&mut w.tx, &mut rx, close::BAD_REQUEST, &reason).await;
    }
    let hello = payload(
        Opcode::Hello,
        json!({ "heartbeat_interval": s.cfg.voice_heartbeat_interval_ms, "v": w.version.get() }),
    );
    if w.json(hello).await.is_err() {
        return;
    }
    let mut me: Option<Authed> = None;
    let hb_timeout = Duration::from_millis(s.cfg.voice_heartbeat_interval_ms * 2);
    let mut hb_deadline = Instant::now() + hb_timeout;
    let mut shutdown = s.shutdown.subscribe();
    let mut resumed: Option<Parked> = None;
    // Registered in `live` once identified (or resumed), so a resume can take it over.
    let task = TASKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut live = false;

    let stop = loop {
        let step = tokio::select! {
            m = rx.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let mut cx = Cx { me: &mut me, out: &out, resumed: &mut resumed };
                    handle_text(&s, &mut w, &mut cx, &mut hb_deadline, hb_timeout, &t).await
                }
                Some(Ok(Message::Binary(b))) => handle_binary(&s, me.as_mut(), &b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                // A close frame is the client's decision to end; a broken socket is not.
                Some(Ok(Message::Close(_))) => Err(Stop::Gone),
                _ => Err(Stop::Dropped),
            },
            o = outbox.next() => match o {
                Next::Msg(VoiceOut::Json(v)) => w.json(v).await,
                Next::Msg(VoiceOut::Binary(b)) => w.binary(b).await,
                Next::Msg(VoiceOut::Close(code, reason)) => Err(Stop::Close(code, reason)),
                Next::Msg(VoiceOut::Park) => Err(Stop::Dropped),
                Next::Overflowed => Err(outbox_full()),
                Next::Closed => Err(Stop::Gone),
            },
            _ = tokio::time::sleep_until(hb_deadline) => {
                Err(Stop::Close(close::SESSION_TIMEOUT, "no heartbeat received".into()))
            }
            _ = shutdown.changed() => Err(Stop::Close(1001, "server shutting down".into())),
        };
        if let Err(stop) = step {
            break stop;
        }
        if let Some(p) = resumed.take() {
            // Op 7 took up a parked connection: its queue, numbering and call are this
            // socket's from now on (op 9 and the replay have been written).
            out = p.out;
            outbox = p.outbox;
            w.overflow = outbox.watch();
            me = Some(p.authed);
        }
        if !live {
            if let Some(a) = &me {
                let entry = (task, a.conn_id, a.token.clone());
                s.voice()
                    .live
                    .insert((a.guild_id, a.session_id.clone()), entry);
                live = true;
            }
        }
    };
    if let Some(a) = &me {
        let mut v = s.voice();
        let key = (a.guild_id, a.session_id.clone());
        if v.live.get(&key).is_some_and(|e| e.0 == task) {
            v.live.remove(&key);
        }
    }
    if let Some(p) = resumed.take() {
        // A resume that failed while writing op 9 or the replay: the connection is this
        // socket's all the same, and ends with it.
        out = p.out;
        outbox = p.outbox;
        me = Some(p.authed);
    }
    // A dropped socket, or heartbeats that stopped (songbird resumes after 4009), leave the
    // call running for a resume; every other end is final.
    let park = matches!(stop, Stop::Dropped)
        || matches!(&stop, Stop::Close(code, _) if *code == close::SESSION_TIMEOUT);
    // What the client is told: a close frame, or (it closed first) the reply to its own.
    let frame = match stop {
        Stop::Close(code, reason) => Some((code, reason)),
        Stop::TooSlow(reason) => {
            s.voice().slow_consumers_closed += 1;
            warn!(
                user = me.as_ref().map(|a| a.user_id.get()),
                %reason,
                "voice connection closed: slow consumer"
            );
            Some((close::TOO_SLOW, reason))
        }
        Stop::Gone => {
            reply_close(&mut w.tx).await;
            None
        }
        Stop::Dropped => None,
    };
    // A final end: the close frame, then the connection's end. A parked connection is parked
    // before its close frame (4009) goes out, so an op 7 that follows at once finds it. Then
    // the client's close reply.
    let mut closing = false;
    if !park {
        closing = send_frame(&mut w.tx, &frame).await;
    }
    if let Some(a) = me {
        if park {
            let p = Parked {
                authed: a,
                out,
                outbox,
                seq: w.seq,
                replay: w.replay,
                parking: PARKINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            };
            park_connection(&s, p).await;
        } else {
            end_connection(&s, &a).await;
        }
    }
    if park {
        closing = send_frame(&mut w.tx, &frame).await;
    }
    if closing {
        await_close(&mut rx).await;
    }
}

/// Send the close frame, if there is one (`ws::send_close`, at most `ws::CLOSE_TIMEOUT`):
/// true if it went out, and the client's reply is then worth waiting for.
async fn send_frame(tx: &mut Tx, frame: &Option<(u16, String)>) -> bool {
    match frame {
        Some((code, reason)) => send_close(tx, *code, reason).await,
        None => false,
    }
}

/// What a text frame may change besides the writer: who the connection is, and (op 7) the
/// parked connection it takes up.
struct Cx<'a> {
    me: &'a mut Option<Authed>,
    out: &'a Outbox,
    resumed: &'a mut Option<Parked>,
}

/// Keep a connection whose socket dropped for `voice_resume_secs`; then, unless op 7 took it
/// up, it ends as any connection does.
async fn park_connection(s: &AppState, p: Parked) {
    let key = (p.authed.guild_id, p.authed.session_id.clone());
    let parking = p.parking;
    let dropped = Input::Dropped {
        generation: p.authed.generation,
    };
    if let Err(e) = executor::run(s, p.authed.guild_id, p.authed.user_id, &dropped).await {
        // The state is not reachable or no longer this connection's: nothing to resume.
        info!(user = %p.authed.user_id, error = ?e, "voice socket dropped: connection ended");
        return end_connection(s, &p.authed).await;
    }
    info!(
        user = %p.authed.user_id,
        channel = %p.authed.channel_id,
        "voice socket dropped: connection kept for a resume"
    );
    let replaced = s.voice().parked.insert(key.clone(), p);
    let grace = Duration::from_secs(s.cfg.voice_resume_secs);
    let s = s.clone();
    tokio::spawn(async move {
        if let Some(old) = replaced {
            end_connection(&s, &old.authed).await;
        }
        tokio::time::sleep(grace).await;
        let expired = {
            let mut v = s.voice();
            match v.parked.get(&key) {
                Some(p) if p.parking == parking => v.parked.remove(&key),
                _ => None,
            }
        };
        if let Some(p) = expired {
            s.voice().resumes_expired += 1;
            end_connection(&s, &p.authed).await;
        }
    });
}

/// One text frame from the client.
async fn handle_text(
    s: &AppState,
    w: &mut Writer,
    cx: &mut Cx<'_>,
    hb_deadline: &mut Instant,
    hb_timeout: Duration,
    text: &str,
) -> Result<(), Stop> {
    let (me, out) = (&mut *cx.me, cx.out);
    let op = match client_op::parse(text) {
        Ok(op) => op,
        Err(r) => {
            // What the connection's state says comes before what is wrong with the payload.
            let (code, reason) = match (r.op, me.as_ref()) {
                (Some(Opcode::Identify), Some(_)) => {
                    (close::ALREADY_AUTHENTICATED, "already identified".into())
                }
                (Some(Opcode::SelectProtocol), None) => {
                    (close::NOT_AUTHENTICATED, "identify first".into())
                }
                (Some(Opcode::SelectProtocol), Some(a)) if a.joined => (
                    close::ALREADY_AUTHENTICATED,
                    "protocol already selected".into(),
                ),
                _ => (r.code, r.reason),
            };
            return Err(Stop::Close(code, reason));
        }
    };
    match op {
        ClientOp::Identify(i) => {
            if me.is_some() {
                return Err(Stop::Close(
                    close::ALREADY_AUTHENTICATED,
                    "already identified".into(),
                ));
            }
            crate::cluster::await_token(s, &i.token).await;
            let a = identify(s, &i, out.clone())
                .await
                .map_err(|(c, r)| Stop::Close(c, r.into()))?;
            let ready = payload(
                Opcode::Ready,
                json!({
                    "ssrc": user_ssrc(a.guild_id, a.user_id),
                    "ip": s.cfg.public_ip.to_string(),
                    // The media worker that runs this channel's room.
                    "port": s.sfu.port_for_room(RoomId(a.channel_id.get())),
                    "modes": CryptoMode::ALL.iter().map(|m| m.name()).collect::<Vec<_>>(),
                    "experiments": [],
                    "heartbeat_interval": s.cfg.voice_heartbeat_interval_ms,
                    // Lodge's WebRTC-mode extension: the TURN relays this connection may use,
                    // with a credential of its own (Discord's clients ignore the field).
                    "ice_servers": ice_servers(s, a.user_id),
                }),
            );
            info!(
                user = %a.user_id,
                channel = %a.channel_id,
                "voice gateway identified"
            );
            *me = Some(a);
            w.json(ready).await
        }
        ClientOp::SelectProtocol(p) => {
            let Some(a) = me.as_mut() else {
                return Err(Stop::Close(
                    close::NOT_AUTHENTICATED,
                    "identify first".into(),
                ));
            };
            if a.joined {
                return Err(Stop::Close(
                    close::ALREADY_AUTHENTICATED,
                    "protocol already selected".into(),
                ));
            }
            let answer = select_protocol(s, a, &p)
                .await
                .map_err(|(c, r)| Stop::Close(c, r))?;
            a.joined = true;
            w.json(answer).await?;
            let others: Vec<UserId> = s
                .voice()
                .users_in(a.guild_id, a.channel_id)
                .into_iter()
                .filter(|u| *u != a.user_id)
                .collect();
            if !others.is_empty() {
                let ids: Vec<String> = others.iter().map(|u| u.to_string()).collect();
                w.json(payload(Opcode::ClientsConnect, json!({ "user_ids": ids })))
                    .await?;
            }
            if matches!(p.media, Media::Udp { .. }) {
                // A native client ignores packets whose SSRC no op 5 named: name everyone's
                // before their voice arrives.
                for u in others {
                    w.json(speaking(a.guild_id, u, 0)).await?;
                }
            }
            super::service::notify_others(
                s,
                a.guild_id,
                a.channel_id,
                a.user_id,
                payload(
                    Opcode::ClientsConnect,
                    json!({ "user_ids": [a.user_id.to_string()] }),
                ),
            );
            notify_native_others(s, a, speaking(a.guild_id, a.user_id, 0));
            Ok(())
        }
        ClientOp::Heartbeat { t, seq_ack } => {
            *hb_deadline = Instant::now() + hb_timeout;
            if let Some(ack) = seq_ack.and_then(|a| u16::try_from(a).ok()) {
                w.replay.ack(ack);
            }
            let ack = w.version.heartbeat_ack(&t);
            w.json(payload(Opcode::HeartbeatAck, ack)).await
        }
        ClientOp::Speaking { speaking: flags } => match me.as_mut() {
            // Selection uses the packets themselves; a native client's flags are relayed (its
            // SSRC as the node knows it, whatever the client wrote).
            Some(a) => {
                let native = a.joined && s.voice().conns.get(&a.conn_id).is_some_and(|c| c.native);
                let flags = flags.unwrap_or(0) & 0b111;
                // Only a change is relayed, within the connection's relay budget; the rest is
                // accepted and dropped (counted).
                if native && a.relayed_speaking != Some(flags) {
                    if a.speaking_relays.take(std::time::Instant::now()) {
                        a.relayed_speaking = Some(flags);
                        notify_native_others(s, a, speaking(a.guild_id, a.user_id, flags));
                    } else {
                        s.voice().speaking_relays_dropped += 1;
                    }
                }
                Ok(())
            }
            None => Err(Stop::Close(
                close::NOT_AUTHENTICATED,
                "identify first".into(),
            )),
        },
        ClientOp::Resume(r) => {
            if me.is_some() {
                return Err(Stop::Close(
                    close::ALREADY_AUTHENTICATED,
                    "already identified".into(),
                ));
            }
            take_over_live(s, &r).await;
            let p = take_parked(s, &r)?;
            let connected = Input::Connected {
                generation: p.authed.generation,
                channel: p.authed.channel_id,
                at: s.shared.me.clone(),
            };
            if executor::run(s, p.authed.guild_id, p.authed.user_id, &connected)
                .await
                .is_err()
            {
                // An op 4 placed the caller afresh meanwhile (or the state is unreachable).
                end_connection(s, &p.authed).await;
                return Err(Stop::Close(
                    close::SESSION_INVALID,
                    "the voice state changed since the connection dropped; rejoin with gateway op 4"
                        .into(),
                ));
            }
            // Op 9, then what the client had not acknowledged, with the numbers it first had.
            // The connection is this socket's from here, even if a write below fails.
            let mut p = p;
            w.seq = p.seq;
            w.replay = std::mem::take(&mut p.replay);
            let (user, channel) = (p.authed.user_id, p.authed.channel_id);
            *cx.resumed = Some(p);
            w.json(payload(Opcode::Resumed, Value::Null)).await?;
            let ack = r.seq_ack.and_then(|a| u16::try_from(a).ok());
            let again: Vec<Frame> = w
                .replay
                .replay(ack)
                .unwrap_or_default()
                .into_iter()
                .map(|(_, f)| f.clone())
                .collect();
            for f in again {
                w.frame(f).await?;
            }
            info!(user = %user, channel = %channel, "voice connection resumed");
            s.voice().resumes += 1;
            Ok(())
        }
        ClientOp::DaveTransitionReady { transition_id } => {
            let a = me.as_ref().ok_or_else(not_identified)?;
            super::e2ee::transition_ready(s, a.guild_id, a.channel_id, a.user_id, transition_id);
            Ok(())
        }
        ClientOp::DaveInvalidCommitWelcome { transition_id } => {
            let a = me.as_ref().ok_or_else(not_identified)?;
            super::e2ee::invalid_commit_welcome(
                s,
                a.guild_id,
                a.channel_id,
                a.user_id,
                transition_id,
            );
            Ok(())
        }
        ClientOp::Unknown(_) => Err(match me {
            None => Stop::Close(close::NOT_AUTHENTICATED, "identify first".into()),
            Some(_) => Stop::Close(close::UNKNOWN_OPCODE, "unknown opcode".into()),
        }),
    }
}

fn not_identified() -> Stop {
    Stop::Close(close::NOT_AUTHENTICATED, "identify first".into())
}

/// A binary frame from the client: DAVE's key package (op 26) or commit + Welcome (op 28),
/// within the connection's budget. What the coordinator refuses is dropped and counted
/// (`lodge_dave_refused_total`): a losing commit is normal, and a bad one costs its sender
/// only its own message.
fn handle_binary(s: &AppState, me: Option<&mut Authed>, frame: &[u8]) -> Result<(), Stop> {
    let a = me.ok_or_else(not_identified)?;
    if !a.dave_frames.take(std::time::Instant::now()) {
        s.voice().dave.over_budget += 1;
        return Ok(());
    }
    super::e2ee::binary(s, a.guild_id, a.channel_id, a.user_id, frame);
    Ok(())
}

/// Op 7 may name a connection whose socket is still open on this node: the client stopped
/// hearing from it (its heartbeats went unacknowledged) before this side stopped hearing
/// from the client. With the right voice token, that connection is told to park (as if its
/// socket had dropped), and this waits up to [`TAKEOVER_WAIT`] for it to, so that
/// [`take_parked`] finds it. Anything else (no such connection, another token) is left to
/// `take_parked` to refuse.
async fn take_over_live(s: &AppState, r: &client_op::Resume) {
    let key = (GuildId(r.server_id), r.session_id.clone());
    {
        let v = s.voice();
        if v.parked.contains_key(&key) {
            return;
        }
        let Some((_, conn_id, token)) = v.live.get(&key) else {
            return;
        };
        if !crate::operator::same_secret(token, &r.token) {
            return;
        }
        let Some(c) = v.conns.get(conn_id) else {
            return;
        };
        if !c.tx.send(VoiceOut::Park) {
            return;
        }
    }
    let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
    while tokio::time::Instant::now() < deadline && !s.voice().parked.contains_key(&key) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The parked connection op 7 names, if its token matches and everything the client has not
/// acknowledged can still be sent again; otherwise the close to send.
fn take_parked(s: &AppState, r: &client_op::Resume) -> Result<Parked, Stop> {
    let key = (GuildId(r.server_id), r.session_id.clone());
    let mut v = s.voice();
    let Some(p) = v.parked.get(&key) else {
        return Err(Stop::Close(
            close::SESSION_INVALID,
            "no voice connection to resume (it ended or was never here); rejoin with gateway op 4"
                .into(),
        ));
    };
    if !crate::operator::same_secret(&p.authed.token, &r.token) {
        return Err(Stop::Close(
            close::AUTHENTICATION_FAILED,
            "resume token does not match the connection's voice token".into(),
        ));
    }
    let ack = r.seq_ack.and_then(|a| u16::try_from(a).ok());
    if p.replay.replay(ack).is_none() {
        // It cannot be made whole: end it now rather than at the end of the grace period.
        let p = v.parked.remove(&key).expect("looked up above");
        drop(v);
        let s = s.clone();
        tokio::spawn(async move { end_connection(&s, &p.authed).await });
        return Err(Stop::Close(
            close::SESSION_INVALID,
            format!(
                "messages after seq {} are no longer kept (at most {} messages or {} bytes); rejoin with gateway op 4",
                r.seq_ack.unwrap_or(-1),
                super::resume::REPLAY_MESSAGES,
                super::resume::REPLAY_BYTES
            ),
        ));
    }
    Ok(v.parked.remove(&key).expect("looked up above"))
}

async fn identify(s: &AppState, i: &Identify, out: Outbox) -> Result<Authed, (u16, &'static str)> {
    let (guild_id, user_id, session_id) = (
        GuildId(i.server_id),
        UserId(i.user_id),
        i.session_id.as_str(),
    );
    let redeemed = s.shared.voice_tokens.redeem(&i.token).await.map_err(|e| {
        warn!(error = %e, "voice token store unreachable");
        (
            close::SERVER_CRASHED,
            "voice is temporarily unavailable; rejoin shortly",
        )
    })?;
    let unknown = (
        close::AUTHENTICATION_FAILED,
        "unknown, used or expired voice token; send gateway op 4 again for a new one",
    );
    let t: PendingToken = redeemed
        .and_then(|raw| serde_json::from_str(&raw).ok())
        .ok_or(unknown)?;
    if t.user_id != user_id || t.guild_id != guild_id || t.session_id != session_id {
        return Err((
            close::AUTHENTICATION_FAILED,
            "voice token was issued for another user, guild or session",
        ));
    }
    // (An edge has no channel store: it cannot see the setting, and runs no DAVE either.)
    let require_dave = s
        .store
        .channel_requires_dave(t.channel_id)
        .await
        .unwrap_or(false);
    if require_dave && !super::e2ee::available(s) {
        return Err((
            close::E2EE_REQUIRED,
            "this voice channel requires end-to-end encryption (DAVE), which this node cannot run (it is part of an edge cascade)",
        ));
    }
    if require_dave && i.max_dave_protocol_version < super::dave::DAVE_VERSION {
        return Err((
            close::E2EE_REQUIRED,
            "this voice channel requires end-to-end encryption (DAVE): identify with max_dave_protocol_version 1 from a client that supports it",
        ));
    }
    let connected = Input::Connected {
        generation: t.generation,
        channel: t.channel_id,
        at: s.shared.me.clone(),
    };
    let state = match executor::run(s, guild_id, user_id, &connected).await {
        Ok(a) => a.state,
        // (`Full` comes only from a capped join, which this is not.)
        Err(ExecError::Refused(_) | ExecError::Full(_)) => {
            return Err((
                close::SESSION_INVALID,
                "voice state changed since the token was issued; send gateway op 4 again",
            ))
        }
        Err(ExecError::Shared(e)) => {
            warn!(error = %e, "voice state unreachable");
            return Err((
                close::SERVER_CRASHED,
                "voice is temporarily unavailable; rejoin shortly",
            ));
        }
    };
    let (conn_id, old) = s.voice().add_conn(VoiceConn {
        tx: out,
        generation: t.generation,
        state,
        user_id,
        guild_id,
        channel_id: t.channel_id,
        participant: None,
        slots: Default::default(),
        native: false,
        dave: false,
    });
    if let Some(old) = old {
        let _ = old.tx.send(VoiceOut::Close(
            close::DISCONNECTED,
            "another voice connection took over".into(),
        ));
        super::e2ee::conn_removed(s, &old);
        if let Some(p) = old.participant {
            s.sfu.leave(p).await;
        }
    }
    Ok(Authed {
        user_id,
        guild_id,
        channel_id: t.channel_id,
        conn_id,
        generation: t.generation,
        joined: false,
        session_id: i.session_id.clone(),
        token: i.token.clone(),
        relayed_speaking: None,
        speaking_relays: lodge_sfu::rate_limit::TokenBucket::new(
            SPEAKING_RELAYS_PER_S,
            SPEAKING_RELAY_BURST,
        ),
        max_dave: i.max_dave_protocol_version,
        require_dave,
        dave_frames: lodge_sfu::rate_limit::TokenBucket::new(
            super::e2ee::DAVE_FRAMES_PER_S,
            super::e2ee::DAVE_FRAME_BURST,
        ),
    })
}

/// Op 5 naming `user`'s SSRC, as the server sends it.
fn speaking(guild: GuildId, user: UserId, flags: u64) -> Value {
    payload(
        Opcode::Speaking,
        json!({ "user_id": user.to_string(), "ssrc": user_ssrc(guild, user), "speaking": flags, "delay": 0 }),
    )
}

/// Send `msg` to every other native connection in `a`'s channel.
fn notify_native_others(s: &AppState, a: &Authed, msg: Value) {
    super::service::notify_others_where(s, a.guild_id, a.channel_id, a.user_id, msg, |c| c.native);
}

/// Default speakers a native client hears at once (it names none).
const NATIVE_SLOTS: usize = 3;

async fn select_protocol(
    s: &AppState,
    a: &Authed,
    p: &SelectProtocol,
) -> Result<Value, (u16, String)> {
    let sdp = match &p.media {
        Media::WebRtc { sdp } => sdp.as_str(),
        Media::Udp {
            address,
            port,
            mode,
        } => return select_udp(s, a, *mode, p.slots, address.as_deref(), *port).await,
    };
    if a.require_dave {
        return Err((
            close::E2EE_REQUIRED,
            "this voice channel requires end-to-end encryption (DAVE); the WebRTC transport has none here: select protocol \"udp\" with a DAVE client".into(),
        ));
    }
    let slots = p.slots;
    let flags = current_flags(s, a).await?;
    let req = JoinRequest {
        room: RoomId(a.channel_id.get()),
        guild: a.guild_id,
        user: a.user_id,
        offer: sdp.to_string(),
        flags,
    };
    let ans = s.sfu.join(req).await.map_err(|e| refused(a, e))?;
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
    if let Err(refused) = crate::admin::gates::webrtc_slots(s, a.guild_id, ans.slots.len()).await {
        s.sfu.leave(ans.idx).await;
        return Err(refused);
    }
    let dave = attach(s, a, ans.idx, false).await?;
    info!(
        user = %a.user_id,
        channel = %a.channel_id,
        slots = ans.slots.len(),
        dave,
        "webrtc session described"
    );
    Ok(payload(
        Opcode::SessionDescription,
        json!({
            "mode": "webrtc",
            "audio_codec": "opus",
            "video_codec": null,
            "media_session_id": format!("{}", ans.idx.0),
            "sdp": ans.answer,
            "slots": ans.slots,
        }),
    ))
}

/// The caller's current flags, if the voice state is still the one this connection opened.
async fn current_flags(s: &AppState, a: &Authed) -> Result<lodge_sfu::VoiceFlags, (u16, String)> {
    Ok(executor::state(s, a.guild_id, a.user_id)
        .await
        .map_err(|e| {
            (
                close::SERVER_CRASHED,
                format!("voice state unreachable: {e}"),
            )
        })?
        .filter(|st| st.generation == a.generation)
        .ok_or((close::SESSION_INVALID, "voice state is gone".to_string()))?
        .flags())
}

/// Why the node refused a join, as a close: a bound reached is no fault of the request
/// (4014, do not retry at once, the limit named); anything else is the request's.
fn refused(a: &Authed, e: lodge_sfu::SfuError) -> (u16, String) {
    warn!(user = %a.user_id, error = %e, "media join refused");
    let code = if e.is_limit() {
        close::DISCONNECTED
    } else {
        close::DECODE_ERROR
    };
    (code, e.to_string())
}

/// Record the participant on its connection (slot announcements queued meanwhile are written
/// after the answer) and join the channel's DAVE call, or leave the node again if the
/// connection ended while joining. Returns op 4's `dave_protocol_version`.
async fn attach(
    s: &AppState,
    a: &Authed,
    idx: lodge_sfu::ParticipantIdx,
    native: bool,
) -> Result<u16, (u16, String)> {
    let still_there = {
        let mut v = s.voice();
        if let Some(c) = v.conns.get_mut(&a.conn_id) {
            c.native = native;
            v.map_participant(idx, a.conn_id);
            s.telemetry()
                .start(idx, a.guild_id.get(), a.channel_id.get(), a.user_id.get());
            true
        } else {
            false
        }
    };
    if !still_there {
        s.sfu.leave(idx).await;
        return Err((
            close::DISCONNECTED,
            "voice state ended while connecting".into(),
        ));
    }
    // Lodge's web client has no DAVE: a WebRTC caller is a participant without it.
    let max_dave = if native { a.max_dave } else { 0 };
    let joined = super::e2ee::join(
        s,
        a.guild_id,
        a.channel_id,
        a.user_id,
        max_dave,
        a.require_dave,
    );
    let version = match joined {
        Ok(v) => v,
        Err(e) => {
            return Err((
                close::DISCONNECTED,
                format!(
                    "this channel requires end-to-end encryption (DAVE) and its call is full: {e}"
                ),
            ))
        }
    };
    let joined = {
        let mut v = s.voice();
        v.conns.get_mut(&a.conn_id).map(|c| c.dave = true).is_some()
    };
    if !joined {
        // The connection ended meanwhile (its end saw no DAVE membership to leave).
        super::e2ee::leave(s, a.guild_id, a.channel_id, a.user_id);
    }
    Ok(version)
}

/// Select Protocol `udp`: a fresh transport key, the node admits the caller natively, and op 4
/// hands out the mode and key.
async fn select_udp(
    s: &AppState,
    a: &Authed,
    mode: CryptoMode,
    slots: Option<usize>,
    address: Option<&str>,
    port: Option<u16>,
) -> Result<Value, (u16, String)> {
    let flags = current_flags(s, a).await?;
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
    let req = NativeJoin {
        room: RoomId(a.channel_id.get()),
        guild: a.guild_id,
        user: a.user_id,
        mode,
        key,
        slots: crate::admin::gates::native_slots(s, a.guild_id, slots.unwrap_or(NATIVE_SLOTS))
            .await?,
        flags,
        // The client reads DAVE frames (it announced DAVE at Identify); the node never sends
        // them to one that did not.
        dave: a.max_dave >= super::dave::DAVE_VERSION,
    };
    let ans = s.sfu.join_native(req).await.map_err(|e| refused(a, e))?;
    let dave = attach(s, a, ans.idx, true).await?;
    info!(
        user = %a.user_id,
        channel = %a.channel_id,
        mode = mode.name(),
        discovered = ?ans.addr,
        claimed = ?address.zip(port),
        dave,
        "udp session described"
    );
    Ok(payload(
        Opcode::SessionDescription,
        json!({
            "mode": mode.name(),
            "secret_key": key,
            "audio_codec": "opus",
            "video_codec": null,
            "media_session_id": format!("{}", ans.idx.0),
            // The call's DAVE version with this caller in it; op 25 follows when it is 1.
            "dave_protocol_version": dave,
        }),
    ))
}

/// The voice WebSocket ended: free the media participant and the voice state it owned.
async fn end_connection(s: &AppState, a: &Authed) {
    let conn = s.voice().remove_conn(a.conn_id);
    if let Some(p) = conn.as_ref().and_then(|c| c.participant) {
        s.sfu.leave(p).await;
    }
    if let Some(c) = &conn {
        super::service::notify_others(
            s,
            a.guild_id,
            a.channel_id,
            a.user_id,
            super::client_disconnect(a.user_id.get()),
        );
        super::e2ee::conn_removed(s, c);
    }
    // The state goes with the connection, unless a newer placement replaced it meanwhile.
    let left =
        super::service::leave_if(s, a.guild_id, a.user_id, Guard::Generation(a.generation)).await;
    // On an edge the voice state is the origin's: tell it the caller left.
    if let Some(c) = s.cluster.get().filter(|_| left && s.is_edge()) {
        let gone = lodge_edge::Control::VoiceGone {
            guild: a.guild_id.get(),
            user: a.user_id.get(),
        };
        c.to_placer(a.guild_id, a.user_id, gone).await;
    }
    info!(
        user = %a.user_id,
        channel = %a.channel_id,
        "voice connection ended"
    );
}
