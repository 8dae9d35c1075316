//! The voice gateway's side of DAVE (end-to-end encrypted voice): one [`DaveCall`] per voice
//! channel that has callers on this node, fed by the gateway's connections and polled into
//! their queues.
//!
//! - **Who is in a call**: every connection that selected a protocol. Lodge's web client has
//!   no DAVE, so a WebRTC caller joins with version 0 and the call downgrades while it stays; a
//!   native client joins with the `max_dave_protocol_version` of its Identify.
//! - **Order**: each call has its own lock; a handler runs under it and its outputs are queued
//!   on the connections before it is released, so every participant sees one call's messages
//!   in the coordinator's order. Lock order: a call, then the voice registry (never the
//!   reverse).
//! - **Where DAVE runs**: a call whose voice connections all sit on this node. A node in an
//!   edge cascade (`--trunk-listen` or `--origin`) hears remote speakers whose frames are
//!   encrypted for a group it does not coordinate, so its calls run at version 0 and channels
//!   that require DAVE refuse callers there.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lodge_ids::{ChannelId, GuildId, UserId};
use serde_json::json;
use tracing::{debug, warn};

use super::conns::{VoiceConns, VoiceOut};
use super::dave::{self, DaveCall, DaveError, DaveStats, TransitionId};
use crate::app::AppState;

/// Binary DAVE frames (ops 26 and 28) a connection may send per second, and the burst: a
/// member commits once per proposal batch, a joiner sends one key package per (re)start.
pub const DAVE_FRAMES_PER_S: u32 = 20;
pub const DAVE_FRAME_BURST: u32 = 60;

struct CallSlot {
    call: DaveCall,
    /// Removed from the registry (its last participant left); a handler that finds it closed
    /// looks the channel up again.
    closed: bool,
}

type Key = (GuildId, ChannelId);

/// The DAVE calls of this node and their counters.
#[derive(Default)]
pub struct DaveCalls {
    calls: HashMap<Key, Arc<Mutex<CallSlot>>>,
    /// Counters of calls that ended (live calls are added when read).
    retired: DaveStats,
    /// DAVE input refused, by [`DaveError::kind`].
    refused: BTreeMap<&'static str, u64>,
    /// Binary frames dropped because the connection was over [`DAVE_FRAMES_PER_S`].
    pub over_budget: u64,
}

/// What `/metrics` shows.
pub struct DaveTotals {
    pub calls: usize,
    pub dave_calls: usize,
    pub stats: DaveStats,
    pub refused: BTreeMap<&'static str, u64>,
    pub over_budget: u64,
}

impl DaveCalls {
    pub fn totals(&self) -> DaveTotals {
        let mut stats = self.retired.clone();
        let mut dave_calls = 0;
        for slot in self.calls.values() {
            // A call busy in a handler is skipped rather than waited for (lock order).
            if let Ok(slot) = slot.try_lock() {
                stats.add(slot.call.stats());
                if slot.call.protocol_version() >= dave::DAVE_VERSION {
                    dave_calls += 1;
                }
            }
        }
        DaveTotals {
            calls: self.calls.len(),
            dave_calls,
            stats,
            refused: self.refused.clone(),
            over_budget: self.over_budget,
        }
    }
}

/// Whether this node may run DAVE at all (see the module docs).
pub fn available(s: &AppState) -> bool {
    s.cfg.trunk_listen.is_none() && s.cfg.origin.is_none()
}

fn lock(slot: &Mutex<CallSlot>) -> std::sync::MutexGuard<'_, CallSlot> {
    // A panic inside openmls under this lock would poison it; the call's state is then
    // suspect, but the rest of the node must go on: take it as it is.
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run `f` on the call of `key` (made when `create` and missing), then queue what it produced
/// on the participants' connections and forget the call if it emptied.
fn with_call<R>(
    s: &AppState,
    key: Key,
    create: bool,
    f: impl FnOnce(&mut DaveCall) -> R,
) -> Option<R> {
    loop {
        let slot = {
            let mut v = s.voice();
            match v.dave.calls.get(&key) {
                Some(slot) => slot.clone(),
                None if create => {
                    let call = match DaveCall::new(dave::ChannelId(key.1.get()), true) {
                        Ok(c) => c,
                        Err(e) => {
                            warn!(error = %e, "DAVE call could not start (external sender key)");
                            return None;
                        }
                    };
                    let slot = Arc::new(Mutex::new(CallSlot {
                        call,
                        closed: false,
                    }));
                    v.dave.calls.insert(key, slot.clone());
                    slot
                }
                None => return None,
            }
        };
        let mut guard = lock(&slot);
        if guard.closed {
            continue;
        }
        let r = f(&mut guard.call);
        let mut v = s.voice();
        route(&mut v, key, &mut guard.call);
        if guard.call.participant_count() == 0 {
            guard.closed = true;
            let stats = guard.call.stats().clone();
            v.dave.retired.add(&stats);
            v.dave.calls.remove(&key);
        }
        return Some(r);
    }
}

/// Queue the call's outputs on its participants' connections, in order.
fn route(v: &mut VoiceConns, (guild, channel): Key, call: &mut DaveCall) {
    while let Some(o) = call.poll_output() {
        let conn = v
            .by_user
            .get(&(guild, UserId(o.to.0)))
            .and_then(|id| v.conns.get(id))
            .filter(|c| c.channel_id == channel);
        let Some(conn) = conn else {
            continue;
        };
        let msg = match o.msg.binary() {
            Some(b) => match b.encode_frame(None) {
                Ok(frame) => VoiceOut::Binary(frame),
                Err(e) => {
                    warn!(error = %e, "DAVE message could not be encoded");
                    continue;
                }
            },
            None => VoiceOut::Json(json!({ "op": o.msg.opcode(), "d": o.msg.json_data() })),
        };
        let _ = conn.tx.send(msg);
    }
}

fn refused(s: &AppState, user: UserId, what: &str, e: &DaveError) {
    debug!(user = %user, error = %e, "DAVE {what} refused");
    *s.voice().dave.refused.entry(e.kind()).or_default() += 1;
}

/// A caller selected its protocol: it joins its channel's call. Returns Session Description's
/// `dave_protocol_version` (the call's version after the join); the messages queued here (op
/// 25 for a DAVE joiner, op 21 to the others on a downgrade) go out after op 4. `required`
/// (the channel's `require_dave`): a join that would take the call off DAVE is refused instead
/// (a call past [`dave::MAX_PARTICIPANTS`]; callers without DAVE are refused before this).
pub fn join(
    s: &AppState,
    guild: GuildId,
    channel: ChannelId,
    user: UserId,
    max: u16,
    required: bool,
) -> Result<u16, DaveError> {
    if !available(s) {
        return Ok(0);
    }
    let r = with_call(s, (guild, channel), true, |c| {
        if required && c.participant_count() >= dave::MAX_PARTICIPANTS {
            return Err(DaveError::CallFull {
                limit: dave::MAX_PARTICIPANTS,
            });
        }
        c.handle_join(Instant::now(), dave::UserId(user.get()), max)
    });
    match r {
        Some(Ok(v)) => Ok(v),
        Some(Err(e @ DaveError::CallFull { .. })) => {
            refused(s, user, "join", &e);
            Err(e)
        }
        Some(Err(e)) => {
            refused(s, user, "join", &e);
            Ok(0)
        }
        None => Ok(0),
    }
}

/// Run a client's input on its channel's existing call, counting a refusal. `no_call`: how to
/// count input for a channel without a call (`None`: ignore it, e.g. a leave after the call
/// ended).
fn input(
    s: &AppState,
    (guild, channel, user): (GuildId, ChannelId, UserId),
    what: &str,
    no_call: Option<DaveError>,
    f: impl FnOnce(&mut DaveCall, Instant, dave::UserId) -> Result<(), DaveError>,
) {
    let r = with_call(s, (guild, channel), false, |c| {
        f(c, Instant::now(), dave::UserId(user.get()))
    });
    match (r, no_call) {
        (Some(Err(e)), _) | (None, Some(e)) => refused(s, user, what, &e),
        _ => {}
    }
}

/// A caller that joined (see [`join`]) left its channel's call.
pub fn leave(s: &AppState, guild: GuildId, channel: ChannelId, user: UserId) {
    input(s, (guild, channel, user), "leave", None, |c, now, u| {
        c.handle_leave(now, u)
    });
}

/// A connection was removed from the registry (it ended, was replaced, or its caller was
/// moved or disconnected): its caller leaves the DAVE call it joined, if it did. Call it with
/// the voice registry unlocked.
pub fn conn_removed(s: &AppState, c: &super::conns::VoiceConn) {
    if c.dave {
        leave(s, c.guild_id, c.channel_id, c.user_id);
    }
}

/// A binary frame from a caller (op 26 key package, op 28 commit + Welcome).
pub fn binary(s: &AppState, guild: GuildId, channel: ChannelId, user: UserId, frame: &[u8]) {
    let no_call = DaveError::NotInDaveMode(dave::UserId(user.get()));
    input(
        s,
        (guild, channel, user),
        "binary message",
        Some(no_call),
        |c, now, u| c.handle_binary(now, u, frame),
    );
}

/// Op 23.
pub fn transition_ready(s: &AppState, guild: GuildId, channel: ChannelId, user: UserId, id: u16) {
    input(
        s,
        (guild, channel, user),
        "transition ready",
        None,
        |c, now, u| c.handle_transition_ready(now, u, TransitionId(id)),
    );
}

/// Op 31.
pub fn invalid_commit_welcome(
    s: &AppState,
    guild: GuildId,
    channel: ChannelId,
    user: UserId,
    id: u16,
) {
    let no_call = DaveError::NotInDaveMode(dave::UserId(user.get()));
    input(
        s,
        (guild, channel, user),
        "invalid commit/welcome",
        Some(no_call),
        |c, now, u| c.handle_invalid_commit_welcome(now, u, TransitionId(id)),
    );
}

/// How often transition deadlines are checked (they are two seconds long).
const TICK: std::time::Duration = std::time::Duration::from_millis(200);

/// Executes transitions whose deadline passed, for as long as the node runs.
pub async fn run_timers(s: AppState) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = Instant::now();
        let keys: Vec<Key> = s.voice().dave.calls.keys().copied().collect();
        for key in keys {
            with_call(&s, key, false, |c| {
                if c.poll_timeout().is_some_and(|t| t <= now) {
                    c.handle_timeout(now);
                }
            });
        }
    }
}
