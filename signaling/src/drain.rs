//! Draining a node before it stops: SIGTERM, or `POST /api/v10/admin/drain` with the operator
//! token. A draining node
//!
//! 1. says so at once — the registry entry turns `draining` (no node places a new room here, and
//!    a join into a room still homed here claims a new home elsewhere), `/readyz` answers 503
//!    (a balancer stops sending new work);
//! 2. moves the calls it hosts, room by room, spread over `drain_spread_ms`: each caller gets a
//!    new home and VOICE_SERVER_UPDATE through the ordinary rehome path
//!    (`voice::service::rehome`), while its old connection here keeps carrying media until the
//!    client leaves it (make before break; a connection still open [`RETIRE_AFTER`] later is
//!    closed with 4014). With no other media node the calls end instead, with voice close 4014
//!    and a reason saying so;
//! 3. tells its chat gateway clients to reconnect (op 7, then close 1012), spread over
//!    `drain_spread_ms` too: each connection has a fixed per-mille bucket and leaves when the
//!    published share passes it, so no two clients' reconnects are tied to one instant. Once
//!    every bucket has passed, new gateway connections get 503;
//! 4. is done when it hosts no voice connection and no gateway connection, or after
//!    `drain_timeout_secs`; `lodge serve` then stops as on a second signal.
//!
//! The pacing is pure ([`room_offsets`], [`reconnect_share`], [`gateway_bucket`]); [`run`] is
//! the shell that sleeps, reads the shared state and acts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use lodge_ids::{ChannelId, GuildId, UserId};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::app::AppState;
use crate::shared::NodeId;
use crate::voice::control::{HomeCmd, CLOSE_DISCONNECTED};
use crate::voice::state::Home;
use crate::voice::VoiceState;

/// A moved caller's old connection here is closed (4014) this long after its
/// VOICE_SERVER_UPDATE if the client has not left it by then.
pub const RETIRE_AFTER: Duration = Duration::from_secs(3);
/// The whole share of gateway connections, in buckets (per mille).
pub const BUCKETS: u16 = 1000;
/// How often the op 7 share is raised, and the empty check made.
const TICK: Duration = Duration::from_millis(50);

/// The reason a call ends with when no other node can take it.
pub const ENDED_REASON: &str =
    "this voice server is restarting and no other node can take the call; join again shortly";
/// The reason a moved caller's old connection is closed with, if the client kept it.
pub const MOVED_REASON: &str =
    "moved to another voice server (this one is draining): follow VOICE_SERVER_UPDATE";

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    Draining,
    /// Hosts nothing any more, or the drain timed out: the process may stop.
    Done,
}

/// This node's drain state (one per node, in [`AppState`]).
pub struct Drain {
    phase: watch::Sender<Phase>,
    /// The share of gateway connections (per mille) told to reconnect so far; a connection
    /// leaves when this passes its [`gateway_bucket`].
    reconnect: watch::Sender<u16>,
    pub calls_moved: AtomicU64,
    pub calls_ended: AtomicU64,
    pub gateway_reconnects: AtomicU64,
    /// Old connections closed because their client kept them after a move.
    pub retired: AtomicU64,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            phase: watch::channel(Phase::Serving).0,
            reconnect: watch::channel(0).0,
            calls_moved: AtomicU64::new(0),
            calls_ended: AtomicU64::new(0),
            gateway_reconnects: AtomicU64::new(0),
            retired: AtomicU64::new(0),
        }
    }
}

impl Drain {
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }
    pub fn is_draining(&self) -> bool {
        self.phase() != Phase::Serving
    }
    /// Resolves once the drain is done (never, unless one started).
    pub async fn done(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p == Phase::Done).await;
    }
    /// The op 7 share, for a gateway connection to watch.
    pub fn reconnects(&self) -> watch::Receiver<u16> {
        self.reconnect.subscribe()
    }
    /// Every gateway connection has been told to reconnect: new ones are refused.
    pub fn gateway_closed(&self) -> bool {
        *self.reconnect.borrow() >= BUCKETS
    }
}

/// A gateway connection's bucket in `0..BUCKETS`: connection ids are sequential, so a
/// multiplicative hash spreads neighbours over the whole range.
pub fn gateway_bucket(conn_id: u64) -> u16 {
    ((conn_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % BUCKETS as u64) as u16
}

/// The share of gateway connections (per mille) told to reconnect `elapsed` into a ramp of
/// `spread`: linear, all of them at the end (at once when `spread` is zero).
pub fn reconnect_share(elapsed: Duration, spread: Duration) -> u16 {
    if elapsed >= spread {
        return BUCKETS;
    }
    (elapsed.as_secs_f64() / spread.as_secs_f64() * BUCKETS as f64) as u16
}

/// When to move each room, from the start of the drain: rooms go whole (a room's callers are
/// moved together, so the room is split across two nodes as briefly as possible), each at
/// the share of `spread` its callers before it take: callers move at an even rate however
/// the rooms are sized. `offset[i] = spread · Σ_{j<i} sizes[j] / Σ sizes`.
pub fn room_offsets(sizes: &[usize], spread: Duration) -> Vec<Duration> {
    let total: usize = sizes.iter().sum();
    let mut before = 0usize;
    sizes
        .iter()
        .map(|&n| {
            let at = if total == 0 {
                Duration::ZERO
            } else {
                spread.mul_f64(before as f64 / total as f64)
            };
            before += n;
            at
        })
        .collect()
}

/// What a drain will do (the admin API's answer, and the log line).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub node: String,
    pub draining: bool,
    /// The drain was already under way (the request changed nothing).
    pub already: bool,
    /// Voice callers whose home is this node, in how many rooms.
    pub callers: usize,
    pub rooms: usize,
    /// `move` (to `move_to`) or `end` (no other media node).
    pub calls: &'static str,
    pub move_to: Vec<String>,
    pub gateway_connections: usize,
    pub spread_ms: u64,
    pub timeout_secs: u64,
    pub what: String,
}

/// Start draining (if not already) and say what will happen. `by` names who asked, for the
/// log.
pub async fn start(s: &AppState, by: &str) -> Plan {
    let already = s.drain.phase.send_if_modified(|p| match p {
        Phase::Serving => {
            *p = Phase::Draining;
            false
        }
        _ => true,
    });
    let rooms = hosted_rooms(s).await;
    let others = other_media_nodes(s).await;
    let callers = rooms.values().map(Vec::len).sum();
    let plan = Plan {
        node: s.shared.me.to_string(),
        draining: true,
        already,
        callers,
        rooms: rooms.len(),
        calls: if others.is_empty() { "end" } else { "move" },
        move_to: others.iter().map(|n| n.to_string()).collect(),
        gateway_connections: s.gateway_conns.load(Relaxed),
        spread_ms: s.cfg.drain_spread_ms,
        timeout_secs: s.cfg.drain_timeout_secs,
        what: if others.is_empty() {
            format!("no new rooms here; {callers} calls end with notice (voice close 4014, no other media node); gateway clients get op 7 over {} ms; the node stops when empty or after {} s", s.cfg.drain_spread_ms, s.cfg.drain_timeout_secs)
        } else {
            format!("no new rooms here; {callers} callers in {} rooms move to other nodes over {} ms; gateway clients get op 7 over the next {} ms; the node stops when empty or after {} s", rooms.len(), s.cfg.drain_spread_ms, s.cfg.drain_spread_ms, s.cfg.drain_timeout_secs)
        },
    };
    if already {
        info!(node = %s.shared.me, by, "drain asked again: already draining");
        return plan;
    }
    s.ready.store(false, Relaxed);
    info!(node = %s.shared.me, by, callers, rooms = plan.rooms, calls = plan.calls, move_to = ?plan.move_to,
        gateway_connections = plan.gateway_connections, spread_ms = plan.spread_ms, timeout_s = plan.timeout_secs,
        "draining: {}", plan.what);
    // Said in the registry now, not at the next renewal: placement elsewhere stops choosing
    // this node before the first call moves.
    crate::nodes::announce_once(s).await;
    tokio::spawn(run(s.clone(), rooms));
    plan
}

/// Callers whose home is this node (or an edge through it), by room.
async fn hosted_rooms(s: &AppState) -> BTreeMap<(GuildId, ChannelId), Vec<VoiceState>> {
    let mut rooms: BTreeMap<_, Vec<VoiceState>> = BTreeMap::new();
    let guilds = match s.shared.voice_states.guilds().await {
        Ok(g) => g,
        Err(e) => {
            warn!(error = %e, "drain: cannot read the voice states; the calls here are not moved");
            return rooms;
        }
    };
    for g in guilds {
        for st in crate::voice::executor::guild_states(s, g)
            .await
            .unwrap_or_default()
        {
            if is_here(s, &st.home) {
                rooms
                    .entry((st.guild_id, st.channel_id))
                    .or_default()
                    .push(st);
            }
        }
    }
    rooms
}

fn is_here(s: &AppState, home: &Home) -> bool {
    match home {
        Home::Node(h) => h.node == s.shared.me,
        Home::Edge { via, .. } => via.node == s.shared.me,
    }
}

/// Media nodes other than this one that are registered and not draining.
async fn other_media_nodes(s: &AppState) -> Vec<NodeId> {
    match s.shared.registry.live_nodes().await {
        Ok(nodes) => nodes
            .into_iter()
            .filter(|n| n.roles.media && !n.draining && n.id != s.shared.me)
            .map(|n| n.id)
            .collect(),
        Err(e) => {
            warn!(error = %e, "drain: the node registry is unreachable");
            Vec::new()
        }
    }
}

/// A moved caller's old connection, to close if its client keeps it.
struct Retire {
    guild: GuildId,
    user: UserId,
    generation: u64,
    due: Instant,
}

/// The drain itself: the calls, then the gateway clients, then wait until empty.
async fn run(s: AppState, rooms: BTreeMap<(GuildId, ChannelId), Vec<VoiceState>>) {
    let t0 = Instant::now();
    let spread = Duration::from_millis(s.cfg.drain_spread_ms);
    let deadline = t0 + Duration::from_secs(s.cfg.drain_timeout_secs);
    let sizes: Vec<usize> = rooms.values().map(Vec::len).collect();
    let mut retire = Vec::new();
    for (((guild, channel), callers), at) in rooms.into_iter().zip(room_offsets(&sizes, spread)) {
        tokio::time::sleep_until(t0 + at).await;
        if Instant::now() >= deadline {
            break;
        }
        retire_due(&s, &mut retire).await;
        // Asked per room: a node that joined meanwhile can take the rest.
        if other_media_nodes(&s).await.is_empty() {
            end_room(&s, guild, channel, &callers).await;
        } else {
            move_room(&s, guild, channel, &callers, &mut retire).await;
        }
    }
    let ramp = Instant::now();
    loop {
        // No gateway client left to tell: the rest of the ramp is moot (an idle node stops
        // at once).
        let share = match s.gateway_conns.load(Relaxed) {
            0 => BUCKETS,
            _ => reconnect_share(ramp.elapsed(), spread),
        };
        s.drain.reconnect.send_replace(share);
        retire_due(&s, &mut retire).await;
        if share >= BUCKETS {
            break;
        }
        tokio::time::sleep(TICK).await;
    }
    loop {
        retire_due(&s, &mut retire).await;
        let voice = s.voice().conns.len();
        let gateway = s.gateway_conns.load(Relaxed);
        if voice == 0 && gateway == 0 {
            info!(
                node = %s.shared.me,
                ms = t0.elapsed().as_millis() as u64,
                moved = s.drain.calls_moved.load(Relaxed),
                ended = s.drain.calls_ended.load(Relaxed),
                "drained: no calls and no gateway connections left"
            );
            break;
        }
        if Instant::now() >= deadline {
            warn!(
                node = %s.shared.me,
                voice_connections = voice,
                gateway_connections = gateway,
                timeout_s = s.cfg.drain_timeout_secs,
                "drain timed out with connections left; stopping anyway"
            );
            break;
        }
        tokio::time::sleep(TICK).await;
    }
    s.drain.phase.send_replace(Phase::Done);
}

/// Move a room's callers to the room's new home (claimed by the first of them: placement no
/// longer counts this node among the live ones).
async fn move_room(
    s: &AppState,
    guild: GuildId,
    channel: ChannelId,
    callers: &[VoiceState],
    retire: &mut Vec<Retire>,
) {
    let mut moved = 0;
    for st in callers {
        // Still the state the scan saw (the caller may have left or been moved meanwhile).
        let cur = crate::voice::executor::state(s, guild, st.user_id).await;
        let Ok(Some(cur)) = cur else { continue };
        if cur.generation != st.generation || !is_here(s, &cur.home) {
            continue;
        }
        if crate::voice::service::rehome(s, &cur).await {
            moved += 1;
            retire.push(Retire {
                guild,
                user: cur.user_id,
                generation: cur.generation,
                due: Instant::now() + RETIRE_AFTER,
            });
        }
    }
    s.drain.calls_moved.fetch_add(moved, Relaxed);
    info!(%guild, %channel, callers = moved, "drain: room moved to another node");
}

/// No other node can take the room: its calls end with a close that says why.
async fn end_room(s: &AppState, guild: GuildId, channel: ChannelId, callers: &[VoiceState]) {
    let mut ended = 0;
    for st in callers {
        // The close carries the drain's reason; the leave (guarded by the generation, so a
        // newer placement is left alone) then removes the state and tells the guild.
        let cmd = HomeCmd::Remove {
            guild_id: guild,
            user_id: st.user_id,
            generation: st.generation,
            code: CLOSE_DISCONNECTED,
            reason: ENDED_REASON.into(),
        };
        crate::voice::executor::to_home(s, st.home.clone(), cmd).await;
        let guard = crate::voice::control::Guard::Generation(st.generation);
        if crate::voice::service::leave_if(s, guild, st.user_id, guard).await {
            ended += 1;
        }
    }
    s.drain.calls_ended.fetch_add(ended, Relaxed);
    info!(%guild, %channel, callers = ended, "drain: no other media node; the room's calls ended with notice");
}

/// Close the old connections whose client kept them past [`RETIRE_AFTER`].
async fn retire_due(s: &AppState, retire: &mut Vec<Retire>) {
    let now = Instant::now();
    let (due, later): (Vec<_>, Vec<_>) = retire.drain(..).partition(|r| r.due <= now);
    *retire = later;
    for r in due {
        let here = s.voice().conn_of(r.guild, r.user, r.generation).is_some();
        if !here {
            continue;
        }
        s.drain.retired.fetch_add(1, Relaxed);
        crate::voice::executor::apply_here(
            s,
            HomeCmd::Remove {
                guild_id: r.guild,
                user_id: r.user,
                generation: r.generation,
                code: CLOSE_DISCONNECTED,
                reason: MOVED_REASON.into(),
            },
        )
        .await;
    }
}

/// The drain's figures in Prometheus text.
pub fn write_metrics(s: &AppState, out: &mut String) {
    use std::fmt::Write as _;
    let d = &s.drain;
    let n = |a: &AtomicU64| a.load(Relaxed);
    let _ = writeln!(out, "# HELP lodge_draining Whether this node is draining (1) or done draining (2): no new rooms, its calls moving away\n# TYPE lodge_draining gauge\nlodge_draining {}", match d.phase() { Phase::Serving => 0, Phase::Draining => 1, Phase::Done => 2 });
    let _ = writeln!(out, "# HELP lodge_drain_calls_moved_total Callers a drain moved to another node\n# TYPE lodge_drain_calls_moved_total counter\nlodge_drain_calls_moved_total {}", n(&d.calls_moved));
    let _ = writeln!(out, "# HELP lodge_drain_calls_ended_total Callers a drain disconnected with notice (no other media node)\n# TYPE lodge_drain_calls_ended_total counter\nlodge_drain_calls_ended_total {}", n(&d.calls_ended));
    let _ = writeln!(out, "# HELP lodge_drain_old_connections_closed_total Moved callers' old voice connections a drain closed because the client kept them\n# TYPE lodge_drain_old_connections_closed_total counter\nlodge_drain_old_connections_closed_total {}", n(&d.retired));
    let _ = writeln!(out, "# HELP lodge_drain_gateway_reconnects_total Gateway connections a drain told to reconnect (op 7)\n# TYPE lodge_drain_gateway_reconnects_total counter\nlodge_drain_gateway_reconnects_total {}", n(&d.gateway_reconnects));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_move_whole_at_an_even_rate_of_callers() {
        let ms = Duration::from_millis;
        // 10 callers over 1 s: the room of 5 takes half the time, each room of 1 a tenth.
        assert_eq!(
            room_offsets(&[5, 1, 1, 3], ms(1000)),
            vec![ms(0), ms(500), ms(600), ms(700)]
        );
        assert_eq!(room_offsets(&[], ms(1000)), Vec::<Duration>::new());
        assert_eq!(room_offsets(&[4, 4], Duration::ZERO), vec![ms(0), ms(0)]);
        // Never past the spread: the last room starts before its end.
        let o = room_offsets(&[1; 7], ms(700));
        assert!(o.windows(2).all(|w| w[0] < w[1]) && *o.last().unwrap() < ms(700));
    }

    #[test]
    fn the_reconnect_share_ramps_linearly_to_everyone() {
        let ms = Duration::from_millis;
        assert_eq!(reconnect_share(ms(0), ms(2000)), 0);
        assert_eq!(reconnect_share(ms(500), ms(2000)), 250);
        assert_eq!(reconnect_share(ms(1999), ms(2000)), 999);
        assert_eq!(reconnect_share(ms(2000), ms(2000)), BUCKETS);
        assert_eq!(reconnect_share(ms(0), Duration::ZERO), BUCKETS);
    }

    #[test]
    fn gateway_buckets_spread_sequential_connections_evenly() {
        // 10,000 sequential ids in 10 slices of the range: each slice within 15% of a tenth,
        // and every bucket below BUCKETS (so a full share reaches every connection).
        let mut slices = [0u32; 10];
        for id in 1..=10_000u64 {
            let b = gateway_bucket(id);
            assert!(b < BUCKETS);
            slices[(b / 100) as usize] += 1;
        }
        assert!(
            slices.iter().all(|&n| (850..=1150).contains(&n)),
            "{slices:?}"
        );
    }
}
