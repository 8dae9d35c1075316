//! The node: every participant and room of one media server, driven sans-IO.
//!
//! [`Node`] is a state machine in the manner of str0m's `Rtc` and quinn-proto's
//! `Connection`: it never reads the clock, opens a socket or spawns a task. Its shell
//! (`shell.rs`, or a test's simulated network) owns the socket and the timer and calls it;
//! see [`Node`] for the contract.
//!
//! Where things are:
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | `Node`, its timers and output queue, commands on flags and exports |
//! | `config.rs` | [`NodeConfig`], the bounds and tunables |
//! | `output.rs` | [`NodeOutput`] and what it carries: [`Transmit`], [`NodeEvent`], [`Export`] |
//! | `join.rs` | admission bounds, the SDP offer, classifying its lines into 1 send + K slots |
//! | `native.rs` | native (Discord UDP mode) participants: join, IP discovery, opening their packets |
//! | `remote.rs` | remote speakers fed by a trunk: [`Node::add_remote`], [`Node::remote_rtp`] |
//! | `demux.rs` | a datagram → its participant (STUN ufrag, then source address); address learning |
//! | `rtc_output.rs` | draining one WebRTC session: transmits, its timer, events, received RTP |
//! | `forward.rs` | the per-packet loop: checks, level, export, each subscribed slot |
//! | `tick.rs` | the selector tick: rank a room's speakers, re-map its listeners' slots |
//! | `leave.rs` | leaving, reaping (idle, never connected, closed), shutdown |
//! | `report.rs` | [`ParticipantReport`]s for logs and the JSON endpoint |
//!
//! Who hears whom lives in one `SlotMap` (`slot_map.rs`), what carries a participant's media
//! in its `Kind` (`participant.rs`).

mod config;
mod demux;
mod forward;
mod join;
mod leave;
mod native;
mod output;
mod remote;
mod report;
mod rtc_output;
mod tick;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::Input;
use tracing::{trace, warn};

use crate::buf_pool::BufPool;
use crate::drop_reason::DropReason;
use crate::error::SfuError;
use crate::ids::{GuildId, ParticipantIdx, RoomId, UserId};
use crate::participant::{Kind, Participant, VoiceFlags};
use crate::room::Room;
use crate::slot_map::SlotMap;
use crate::speaker_selector::Candidate as SelCandidate;
use crate::stats::NodeStats;
use crate::timers::TimerQueue;

pub use config::NodeConfig;
pub use join::{JoinAnswer, JoinRequest, SlotInfo, MAX_SLOTS};
pub use native::{size_level, NativeAnswer, NativeJoin, NATIVE_OPUS_PT};
pub use output::{Export, LeaveReason, NodeEvent, NodeOutput, Transmit, Transport};
pub use remote::RemotePacket;
pub use report::{ParticipantReport, SlotReport};

/// How often participants are checked for idle and connect timeouts and closed sessions.
const REAP_INTERVAL: Duration = Duration::from_millis(100);

/// Every participant and room of one media server: a sans-IO state machine.
///
/// The node does nothing by itself. Its shell feeds it what happened (handlers) and what
/// signaling asks for (commands), then takes what it produced (polls). Every method that may
/// change state takes `now`, which must never go backwards between calls.
///
/// # Handlers: something happened
///
/// - [`handle_datagram`](Node::handle_datagram): a UDP datagram arrived on the node's port
///   (STUN, DTLS, SRTP, SRTCP for any participant). Never fails: a datagram nobody can use is
///   counted under a [`DropReason`] and dropped.
/// - [`handle_tcp_frame`](Node::handle_tcp_frame): the same for one RFC 4571 frame of an
///   ICE-TCP connection (WebRTC participants only), and
///   [`handle_tcp_closed`](Node::handle_tcp_closed) when such a connection ends.
/// - [`remote_rtp`](Node::remote_rtp): a trunk delivered a remote speaker's packet.
/// - [`handle_timeout`](Node::handle_timeout): the time returned by
///   [`poll_timeout`](Node::poll_timeout) has come (calling it early or late is harmless: it
///   does what is due at `now`).
///
/// # Commands: signaling asks
///
/// - [`join`](Node::join) admits a WebRTC participant (bounds, SDP) and answers; it returns
///   the participant's [`ParticipantIdx`] and its slots. [`join_native`](Node::join_native)
///   admits a native (UDP mode) one with the mode and key signaling handed out.
///   [`leave`](Node::leave) removes either.
/// - [`set_flags`](Node::set_flags): mute, deafen, SPEAK; a speaker that may no longer be
///   heard loses its slots in the same call.
/// - [`add_remote`](Node::add_remote) / [`leave`](Node::leave) for speakers of other nodes;
///   [`set_exported`](Node::set_exported) / [`set_export_all`](Node::set_export_all) for rooms
///   other nodes listen to.
/// - [`close_all`](Node::close_all) at shutdown; [`set_seed`](Node::set_seed) once, before the
///   first join (slot numbering).
///
/// # Polls: what the node produced
///
/// - [`poll_output`](Node::poll_output): datagrams to send ([`NodeOutput::Transmit`], in
///   order, each naming its [`Transport`]), events for signaling ([`NodeOutput::Event`]), packets and stream ends for other
///   nodes ([`NodeOutput::Export`], [`NodeOutput::ExportEnd`]). `None` when empty.
/// - [`poll_timeout`](Node::poll_timeout): when to call `handle_timeout` next (O(1)); `None`
///   when nothing is due until the next datagram or command.
///
/// # The order to call them
///
/// After **every** handler or command, drain `poll_output` until it returns `None`, then ask
/// `poll_timeout` again (any call may move it earlier) and sleep until then or the next
/// datagram or command, whichever comes first:
///
/// ```text
/// loop {
///     wait for a datagram, a command, or poll_timeout()
///     now = clock()
///     handle_datagram(now, ..) | remote_rtp(now, ..) | join(now, ..) | … | handle_timeout(now)
///     while let Some(o) = poll_output() { send / deliver o }
/// }
/// ```
///
/// Transmits must leave in the order polled (a listener's SRTP packets are numbered). The
/// queue is unbounded: a shell that stops polling lets it grow.
///
/// Once a datagram is sent, its `contents` may be handed back with [`recycle`](Node::recycle);
/// forwarded copies are then encrypted into those buffers instead of new ones.
///
/// # Events, and what signaling may rely on
///
/// - [`NodeEvent::Connected`] once per WebRTC participant, when ICE and DTLS complete, and
///   once per native one, when IP discovery (or its first packet) gives it an address.
/// - [`NodeEvent::SlotChanged`] whenever a listener's slot gets a speaker or is emptied
///   (tick, flags, a speaker leaving), after the listener's `join` returned.
/// - [`NodeEvent::Left`] is the last event of a WebRTC participant, whatever the reason
///   ([`LeaveReason`]); its index may be handed to a later join, so forget it then.
/// - Remote speakers get neither `Connected` nor `Left`: their trunk adds and removes them.
///
/// Queries ([`stats`](Node::stats), [`tcp_peer_known`](Node::tcp_peer_known), [`reports`](Node::reports), counts, [`flags`](Node::flags),
/// [`is_remote`](Node::is_remote)) change nothing and may be called at any time.
pub struct Node {
    cfg: NodeConfig,
    /// The node's one DTLS certificate, shared by every participant (as mediasoup shares one
    /// per worker). Generating a key pair per join cost ~25 ms of the media thread, which a
    /// stream of joins could turn against every call on the node; each handshake still
    /// negotiates fresh keys.
    dtls_cert: Option<str0m::config::DtlsCert>,
    participants: Vec<Option<Participant>>,
    free: Vec<u32>,
    count: usize,
    rooms: HashMap<RoomId, Room>,
    /// Which speaker each listener slot carries, and its reverse.
    slot_map: SlotMap,
    by_ufrag: HashMap<String, ParticipantIdx>,
    /// UDP source addresses proven by STUN (WebRTC) or discovery/authentication (native).
    by_addr: HashMap<SocketAddr, ParticipantIdx>,
    /// ICE-TCP connections (by peer address) proven by STUN: WebRTC participants only. Apart
    /// from `by_addr` so a TCP peer can never pass for a UDP one with the same address and
    /// port, and so the UDP lookup stays as it was.
    by_tcp: HashMap<SocketAddr, ParticipantIdx>,
    out: VecDeque<NodeOutput>,
    next_tick: Option<Instant>,
    stats: NodeStats,
    /// Scratch buffers reused every tick so ticks do not allocate in steady state.
    scratch_candidates: Vec<SelCandidate>,
    scratch_changes: Vec<(usize, Option<ParticipantIdx>)>,
    scratch_rooms: Vec<RoomId>,
    seed: u64,
    /// Rooms whose speakers other nodes receive (see [`Export`]).
    exported: HashSet<RoomId>,
    /// Every room is exported (an edge sends all its local speakers to its origin).
    export_all: bool,
    /// Remote speakers among `count`.
    remote_count: usize,
    /// When each participant's WebRTC session next needs a timeout.
    timers: TimerQueue,
    /// Next sweep for idle, unconnected and closed participants.
    next_reap: Option<Instant>,
    /// WebRTC participants per user and per guild (connected or not), for the bounds; an
    /// entry is removed when it reaches zero.
    per_user: HashMap<UserId, usize>,
    per_guild: HashMap<GuildId, usize>,
    /// Native participants by SSRC, discovery answers waiting for their join, scratch.
    native: native::NativeState,
    /// Sent datagrams' storage, handed back by the shell ([`Node::recycle`]) and reused for
    /// forwarded copies.
    pool: BufPool,
}

impl Node {
    pub fn new(cfg: NodeConfig) -> Self {
        Node {
            cfg,
            dtls_cert: str0m::crypto::from_feature_flags()
                .dtls_provider
                .generate_certificate(),
            participants: Vec::new(),
            free: Vec::new(),
            count: 0,
            rooms: HashMap::new(),
            slot_map: SlotMap::default(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            by_tcp: HashMap::new(),
            out: VecDeque::new(),
            next_tick: None,
            stats: NodeStats::default(),
            scratch_candidates: Vec::new(),
            scratch_changes: Vec::new(),
            scratch_rooms: Vec::new(),
            seed: 0x9E37_79B9_7F4A_7C15,
            timers: TimerQueue::default(),
            next_reap: None,
            exported: HashSet::new(),
            export_all: false,
            remote_count: 0,
            per_user: HashMap::new(),
            per_guild: HashMap::new(),
            native: native::NativeState::default(),
            pool: BufPool::default(),
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Participants, local and remote.
    pub fn participant_count(&self) -> usize {
        self.count
    }

    /// Remote speakers (fed by trunks) among the participants.
    pub fn remote_count(&self) -> usize {
        self.remote_count
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Deterministic pseudo-random numbers for initial slot numbering (xorshift).
    pub(super) fn next_rand(&mut self) -> u64 {
        let mut x = self.seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed = x;
        x
    }

    /// Seed the node's numbering randomness (tests use fixed seeds; the shell uses entropy).
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed | 1;
    }

    /// Put a participant in a free slab slot (or a new one), with its slots empty.
    pub(super) fn insert(&mut self, p: Participant) -> ParticipantIdx {
        let k = p.slot_count();
        let idx = match self.free.pop() {
            Some(i) => {
                self.participants[i as usize] = Some(p);
                ParticipantIdx(i)
            }
            None => {
                self.participants.push(Some(p));
                ParticipantIdx((self.participants.len() - 1) as u32)
            }
        };
        self.slot_map.add(idx, k);
        idx
    }

    /// Mark `room` as having listeners on other nodes: its speakers' packets are emitted as
    /// [`NodeOutput::Export`] too.
    pub fn set_exported(&mut self, room: RoomId, on: bool) {
        if on {
            self.exported.insert(room);
        } else {
            self.exported.remove(&room);
        }
    }

    /// Export every room (an edge: all its speakers go to the origin).
    pub fn set_export_all(&mut self, on: bool) {
        self.export_all = on;
    }

    /// Change mute/deaf/SPEAK. A participant that stops being forwardable loses its slots at
    /// once (well inside the 1 s the protocol promises).
    pub fn set_flags(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        flags: VoiceFlags,
    ) -> Result<(), SfuError> {
        let p = self
            .participant_mut(idx)
            .ok_or(SfuError::UnknownParticipant(idx))?;
        let was = p.flags.forwardable();
        p.flags = flags;
        if was && !flags.forwardable() {
            p.level.reset();
            let room = p.room;
            if self.export_all || self.exported.contains(&room) {
                self.out.push_back(NodeOutput::ExportEnd(idx));
            }
            self.tick_room(now, room);
        }
        Ok(())
    }

    pub fn flags(&self, idx: ParticipantIdx) -> Option<VoiceFlags> {
        self.participant(idx).map(|p| p.flags)
    }

    pub(super) fn participant(&self, idx: ParticipantIdx) -> Option<&Participant> {
        self.participants
            .get(idx.0 as usize)
            .and_then(|p| p.as_ref())
    }

    pub(super) fn participant_mut(&mut self, idx: ParticipantIdx) -> Option<&mut Participant> {
        self.participants
            .get_mut(idx.0 as usize)
            .and_then(|p| p.as_mut())
    }

    /// The proven addresses of one transport.
    pub(super) fn addr_map(&mut self, t: Transport) -> &mut HashMap<SocketAddr, ParticipantIdx> {
        match t {
            Transport::Udp => &mut self.by_addr,
            Transport::Tcp => &mut self.by_tcp,
        }
    }

    pub(super) fn drop_datagram(&mut self, reason: DropReason, idx: Option<ParticipantIdx>) {
        self.stats.drops.count(reason);
        if let Some(p) = idx.and_then(|i| self.participant_mut(i)) {
            p.stats.drops.count(reason);
        }
        trace!(reason = reason.as_str(), "datagram dropped");
    }

    /// Earliest time the node needs [`Node::handle_timeout`] (O(1): a heap of deadlines).
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.timers.peek(), self.next_tick, self.next_reap]
            .into_iter()
            .flatten()
            .min()
    }

    /// Drive timers: str0m timeouts that are due, the selector tick, idle and connect timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, i)) = self.timers.pop_due(now) {
            // Only WebRTC sessions arm timers.
            let Some(Participant {
                kind: Kind::WebRtc(w),
                ..
            }) = self
                .participants
                .get_mut(i as usize)
                .and_then(|p| p.as_mut())
            else {
                continue;
            };
            if w.armed != Some(at) {
                continue; // stale: a later entry (or none, for a reused index) is live
            }
            w.armed = None;
            let idx = ParticipantIdx(i);
            if w.next_timeout <= now {
                if let Err(e) = w.rtc_mut().handle_input(Input::Timeout(now)) {
                    warn!(%idx, error = %e, "WebRTC timeout handling failed; removing participant");
                    w.gone = true;
                }
                // Re-arms through the Timeout output.
                self.drain(idx, now);
            } else {
                let at = w.next_timeout;
                self.timers.arm(i, at, &mut w.armed);
            }
        }
        if self.next_tick.is_some_and(|t| t <= now) {
            self.tick(now);
            self.next_tick = if self.count > 0 {
                Some(now + self.cfg.selector.tick)
            } else {
                None
            };
        }
        if self.next_reap.is_none_or(|t| t <= now) {
            self.reap(now);
            self.next_reap = (self.count > 0).then(|| now + REAP_INTERVAL);
        }
    }

    /// Hands back the storage of a datagram that was sent ([`Transmit::contents`]): the node
    /// writes later forwarded copies into it instead of allocating. Optional, but a shell that
    /// does it for every sent datagram makes the forward path allocation-free.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.pool.put(buf);
    }

    /// Next output: a datagram to send or an event for signaling.
    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        let o = self.out.pop_front();
        if let Some(NodeOutput::Transmit(t)) = &o {
            self.stats.datagrams_out += 1;
            self.stats.bytes_out += t.contents.len() as u64;
            if t.transport == Transport::Tcp {
                self.stats.tcp_frames_out += 1;
            }
        }
        o
    }
}
