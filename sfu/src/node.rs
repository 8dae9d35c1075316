//! The node: every participant and room of one media server, driven sans-IO.
//!
//! Inputs: [`Node::handle_datagram`], [`Node::handle_timeout`] and commands (join, leave,
//! voice flags). Outputs: [`Node::poll_output`] until it returns `None`, then sleep until
//! [`Node::poll_timeout`]. The node never reads the clock: every call takes `now`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::{Extension, ExtensionValues, RtpPacket, RtpWrite};

/// Far enough in the future to mean "no timer".
const NEVER: Duration = Duration::from_secs(86_400 * 365);
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tracing::{debug, info, trace, warn};

use crate::drop_reason::DropReason;
use crate::error::SfuError;
use crate::ids::{GuildId, ParticipantIdx, RoomId, Ssrc, UserId};
use crate::participant::{Participant, Slot, VoiceFlags, MAX_REMOTES};
use crate::rate_limit::TokenBucket;
use crate::room::Room;
use crate::seq_rewriter::SeqRewriter;
use crate::speaker_selector::{assign_slots, Candidate as SelCandidate, SelectorConfig};
use crate::stats::{NodeStats, ParticipantStats};
use crate::timers::TimerQueue;

/// Most speaker slots a listener may ask for.
pub const MAX_SLOTS: usize = 16;
const OPUS_FRAME: Duration = Duration::from_millis(20);
/// How often participants are checked for idle and connect timeouts and closed sessions.
const REAP_INTERVAL: Duration = Duration::from_millis(100);

/// Limits and tunables of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Address put in the ICE host candidate (public IP + the UDP media port).
    pub public_addr: SocketAddr,
    pub max_participants: usize,
    pub max_room_size: usize,
    /// WebRTC participants one user may have on the node, connected or still connecting (a
    /// user has one voice state per guild, so this is how many guilds they may talk in here).
    pub max_participants_per_user: usize,
    /// WebRTC participants one guild may have on the node, connected or still connecting, so
    /// one guild cannot fill `max_participants`.
    pub max_participants_per_guild: usize,
    /// Datagrams longer than this are dropped as oversized.
    pub max_datagram: usize,
    /// Datagrams per second one participant may send (burst is a quarter second's worth).
    pub max_packet_rate: u32,
    /// A connected participant silent on the network this long is removed (closed tab).
    pub idle_timeout: Duration,
    /// A participant that has not completed ICE+DTLS after this long is removed. Honest
    /// clients take well under a second (ICE+DTLS p90 87 ms with 2,000 callers joining); a
    /// join that never connects holds a place in every bound until then.
    pub connect_timeout: Duration,
    pub selector: SelectorConfig,
    /// Fixed start of every slot's output numbering `(seq, timestamp)` instead of random
    /// (tests use it to force 16/32-bit wrap).
    pub slot_numbering_start: Option<(u16, u32)>,
}

impl NodeConfig {
    pub fn new(public_addr: SocketAddr) -> Self {
        NodeConfig {
            public_addr,
            max_participants: 10_000,
            max_room_size: 1_000,
            max_participants_per_user: 4,
            max_participants_per_guild: 2_500,
            max_datagram: 1500,
            max_packet_rate: 400,
            idle_timeout: Duration::from_secs(6),
            connect_timeout: Duration::from_secs(10),
            selector: SelectorConfig::default(),
            slot_numbering_start: None,
        }
    }
}

/// Ask the node to admit a participant.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub room: RoomId,
    /// The guild the room belongs to.
    pub guild: GuildId,
    pub user: UserId,
    /// The client's SDP offer: 1 sending + K recv-only audio lines, candidates included.
    pub offer: String,
    pub flags: VoiceFlags,
}

/// One speaker slot as announced to the client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotInfo {
    pub mid: String,
    pub ssrc: u32,
}

#[derive(Debug, Clone)]
pub struct JoinAnswer {
    pub idx: ParticipantIdx,
    pub answer: String,
    pub slots: Vec<SlotInfo>,
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// Asked by signaling (left the channel, moved, kicked, disconnected).
    Requested,
    /// Silent on the network for longer than the idle timeout (closed tab, lost network).
    Idle,
    /// Never completed ICE/DTLS.
    ConnectTimeout,
    /// The WebRTC session closed or failed.
    Closed,
}

/// Something signaling should know.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    /// ICE and DTLS completed: media can flow.
    Connected {
        idx: ParticipantIdx,
        room: RoomId,
        user: UserId,
    },
    /// A listener's slot now carries `speaker` (or nobody).
    SlotChanged {
        listener: ParticipantIdx,
        listener_user: UserId,
        room: RoomId,
        slot: usize,
        ssrc: Ssrc,
        speaker: Option<UserId>,
    },
    /// The participant is gone from the node.
    Left {
        idx: ParticipantIdx,
        room: RoomId,
        user: UserId,
        reason: LeaveReason,
        /// The participant's figures at the moment it left (for call summaries).
        stats: Box<ParticipantStats>,
    },
}

/// A datagram to send from the node's socket.
#[derive(Debug)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// A speaker's packet for other nodes (cascading): emitted for rooms marked with
/// [`Node::set_exported`] while the speaker talks or holds a seat in the ranking.
#[derive(Debug, Clone)]
pub struct Export {
    pub room: RoomId,
    pub from: ParticipantIdx,
    pub user: UserId,
    /// The speaker itself came from another node (an origin relays it on to other edges; an
    /// edge never sends it back).
    pub remote: bool,
    pub rtp_ts: u32,
    /// RFC 6464 level, 0 loudest … 127 silent.
    pub level: u8,
    pub marker: bool,
    pub payload: Arc<[u8]>,
}

#[derive(Debug)]
pub enum NodeOutput {
    Transmit(Transmit),
    Event(NodeEvent),
    Export(Export),
    /// The speaker will not be exported any more (muted, lost SPEAK, or left): other nodes
    /// should drop it now rather than wait for its stream to go idle.
    ExportEnd(ParticipantIdx),
}

/// A remote speaker's packet, as a trunk delivered it.
#[derive(Debug)]
pub struct RemotePacket {
    pub idx: ParticipantIdx,
    /// Consecutive per speaker (the trunk's sequence number).
    pub seq: u16,
    pub rtp_ts: u32,
    /// RFC 6464 level, 0 loudest … 127 silent.
    pub level: u8,
    pub marker: bool,
    pub payload: Arc<[u8]>,
}

/// One received speaker packet, from WebRTC or from a trunk.
struct Inbound {
    ssrc: u32,
    seq: u16,
    ts: u32,
    marker: bool,
    audio_level: Option<i8>,
    voice_activity: Option<bool>,
    payload: Arc<[u8]>,
}

impl Inbound {
    fn from_rtp(p: RtpPacket) -> Inbound {
        Inbound {
            ssrc: *p.header.ssrc,
            seq: p.header.sequence_number,
            ts: p.header.timestamp,
            marker: p.header.marker,
            audio_level: p.header.ext_vals.audio_level,
            voice_activity: p.header.ext_vals.voice_activity,
            payload: p.payload,
        }
    }
}

/// A participant's figures for logs and the JSON endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParticipantReport {
    pub idx: u32,
    #[serde(serialize_with = "lodge_ids::as_string")]
    pub user: UserId,
    pub room: RoomId,
    pub connected: bool,
    pub self_mute: bool,
    pub server_mute: bool,
    pub deaf: bool,
    pub can_speak: bool,
    pub speaking_level: f32,
    pub slots: Vec<SlotReport>,
    pub stats: ParticipantStats,
    pub drops: Vec<(&'static str, u64)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotReport {
    pub ssrc: u32,
    #[serde(serialize_with = "lodge_ids::option_as_string")]
    pub speaker: Option<UserId>,
}

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
    by_ufrag: HashMap<String, ParticipantIdx>,
    by_addr: HashMap<SocketAddr, ParticipantIdx>,
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
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
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
    fn next_rand(&mut self) -> u64 {
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

    /// Admit a participant: accept its offer and answer with ICE-lite, our host candidate and
    /// K send-only slots.
    pub fn join(&mut self, now: Instant, req: JoinRequest) -> Result<JoinAnswer, SfuError> {
        if self.count >= self.cfg.max_participants {
            return Err(SfuError::NodeFull {
                limit: self.cfg.max_participants,
            });
        }
        let room_size = self
            .rooms
            .get(&req.room)
            .map(|r| r.members.len())
            .unwrap_or(0);
        if room_size >= self.cfg.max_room_size {
            return Err(SfuError::RoomFull {
                room: req.room,
                limit: self.cfg.max_room_size,
            });
        }
        if self.per_user.get(&req.user).copied().unwrap_or(0) >= self.cfg.max_participants_per_user
        {
            return Err(SfuError::UserLimit {
                user: req.user,
                limit: self.cfg.max_participants_per_user,
            });
        }
        if self.per_guild.get(&req.guild).copied().unwrap_or(0)
            >= self.cfg.max_participants_per_guild
        {
            return Err(SfuError::GuildLimit {
                guild: req.guild,
                limit: self.cfg.max_participants_per_guild,
            });
        }
        let offer = SdpOffer::from_sdp_string(&req.offer)
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        let mids = offer_mids(&req.offer);
        if mids.is_empty() {
            return Err(SfuError::InvalidSdp("no media line with a=mid".into()));
        }

        let mut builder = Rtc::builder();
        if let Some(cert) = &self.dtls_cert {
            builder = builder.set_dtls_cert(cert.clone());
        }
        let mut rtc = builder
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            // Only the header extensions an audio SFU uses: the RFC 6464 level (speaker
            // selection) and the BUNDLE mid. No transport-wide congestion control: nothing
            // here estimates bandwidth for audio, and every TWCC feedback packet a client
            // sends would cost the node a datagram, a decrypt and a wake-up for nothing.
            .clear_extension_map()
            .set_extension(1, Extension::AudioLevel)
            .set_extension(4, Extension::RtpMid)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        let cand = Candidate::host(self.cfg.public_addr, "udp")
            .map_err(|e| SfuError::Rtc(e.to_string()))?;
        rtc.add_local_candidate(cand);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;

        // Classify the lines: exactly one the client sends on, K it only receives on.
        let mut send_count = 0;
        let mut slot_mids = Vec::new();
        for m in &mids {
            let mid = Mid::from(m.as_str());
            let Some(media) = rtc.media(mid) else {
                return Err(SfuError::InvalidSdp(format!(
                    "media line {m} was not accepted"
                )));
            };
            if media.kind() != MediaKind::Audio {
                return Err(SfuError::NotAudio {
                    mid: m.clone(),
                    kind: format!("{:?}", media.kind()).to_lowercase(),
                });
            }
            match media.direction() {
                Direction::RecvOnly | Direction::SendRecv => {
                    send_count += 1;
                }
                Direction::SendOnly => slot_mids.push(mid),
                Direction::Inactive => {}
            }
        }
        if send_count != 1 || slot_mids.is_empty() || slot_mids.len() > MAX_SLOTS {
            return Err(SfuError::BadTransceivers {
                send: send_count,
                recv: slot_mids.len(),
                max: MAX_SLOTS,
            });
        }
        let opus_pt = rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
            .ok_or(SfuError::NoOpus)?;

        let mut slots = Vec::with_capacity(slot_mids.len());
        for mid in slot_mids {
            let ssrc = rtc
                .direct_api()
                .stream_tx_by_mid(mid, None)
                .map(|s| s.ssrc())
                .ok_or_else(|| SfuError::Rtc(format!("no send stream for slot {mid}")))?;
            let r = self.next_rand();
            let (seq0, ts0) = self
                .cfg
                .slot_numbering_start
                .unwrap_or(((r & 0x7fff) as u16, (r >> 32) as u32));
            slots.push(Slot {
                mid,
                ssrc: Ssrc(*ssrc),
                pt: opus_pt,
                speaker: None,
                rewriter: SeqRewriter::new(seq0, ts0, 48_000, OPUS_FRAME),
            });
        }

        let ufrag = rtc.direct_api().local_ice_credentials().ufrag.clone();
        let slot_infos = slots
            .iter()
            .map(|s| SlotInfo {
                mid: s.mid.to_string(),
                ssrc: s.ssrc.0,
            })
            .collect();
        let k = slots.len();
        let rate = self.cfg.max_packet_rate;
        let p = Participant {
            user: req.user,
            room: req.room,
            guild: Some(req.guild),
            rtc: Some(rtc),
            remote_ssrc: 0,
            ufrag: ufrag.clone(),
            remotes: Vec::new(),
            opus_pt,
            slots,
            subscribers: Vec::new(),
            level: Default::default(),
            flags: req.flags,
            stats: ParticipantStats::default(),
            rate: TokenBucket::new(rate, (rate / 4).max(8)),
            joined_at: now,
            last_recv: None,
            connected: false,
            next_timeout: now,
            armed: None,
            gone: false,
        };
        let idx = self.insert(p);
        self.count += 1;
        *self.per_user.entry(req.user).or_default() += 1;
        *self.per_guild.entry(req.guild).or_default() += 1;
        self.by_ufrag.insert(ufrag, idx);
        let sel_cfg = self.cfg.selector;
        let room = self
            .rooms
            .entry(req.room)
            .or_insert_with(|| Room::new(sel_cfg));
        room.members.push(idx);
        room.refresh_capacity(k);
        if self.next_tick.is_none() {
            self.next_tick = Some(now + self.cfg.selector.tick);
        }
        info!(%idx, room = req.room.0, user = req.user.0, slots = k, "participant joined");
        self.drain(idx, now);
        Ok(JoinAnswer {
            idx,
            answer: answer.to_sdp_string(),
            slots: slot_infos,
        })
    }

    /// Put a participant in a free slab slot (or a new one).
    fn insert(&mut self, p: Participant) -> ParticipantIdx {
        match self.free.pop() {
            Some(i) => {
                self.participants[i as usize] = Some(p);
                ParticipantIdx(i)
            }
            None => {
                self.participants.push(Some(p));
                ParticipantIdx((self.participants.len() - 1) as u32)
            }
        }
    }

    /// Remove a participant (left the channel, moved, kicked). Unknown indices are ignored.
    pub fn leave(&mut self, _now: Instant, idx: ParticipantIdx) {
        self.remove(idx, LeaveReason::Requested);
    }

    /// Add a speaker of `room` that is connected to another node and arrives over a trunk: it
    /// is ranked and forwarded like a local speaker, has no WebRTC session and no slots, and is
    /// never timed out (the trunk removes it). No Connected/Left events are emitted for it.
    pub fn add_remote(
        &mut self,
        now: Instant,
        room: RoomId,
        user: UserId,
    ) -> Result<ParticipantIdx, SfuError> {
        if self.count >= self.cfg.max_participants {
            return Err(SfuError::NodeFull {
                limit: self.cfg.max_participants,
            });
        }
        let rate = self.cfg.max_packet_rate;
        let p = Participant {
            user,
            room,
            guild: None,
            rtc: None,
            remote_ssrc: 0,
            ufrag: String::new(),
            remotes: Vec::new(),
            opus_pt: 111.into(),
            slots: Vec::new(),
            subscribers: Vec::new(),
            level: Default::default(),
            flags: VoiceFlags {
                can_speak: true,
                ..VoiceFlags::default()
            },
            stats: ParticipantStats::default(),
            rate: TokenBucket::new(rate, (rate / 4).max(8)),
            joined_at: now,
            last_recv: None,
            connected: true,
            next_timeout: now + NEVER,
            armed: None,
            gone: false,
        };
        let idx = self.insert(p);
        // A per-node SSRC for the remote source (the slot rewriter tells sources apart by it).
        let r = self.next_rand() as u32;
        if let Some(p) = self.participant_mut(idx) {
            p.remote_ssrc = r;
        }
        self.count += 1;
        self.remote_count += 1;
        let sel_cfg = self.cfg.selector;
        let r = self.rooms.entry(room).or_insert_with(|| Room::new(sel_cfg));
        r.members.push(idx);
        if self.next_tick.is_none() {
            self.next_tick = Some(now + self.cfg.selector.tick);
        }
        info!(%idx, room = room.0, user = user.0, "remote speaker added");
        Ok(idx)
    }

    /// A remote speaker's packet from its trunk. Unknown or local indices are dropped (counted).
    pub fn remote_rtp(&mut self, now: Instant, pkt: RemotePacket) {
        let RemotePacket {
            idx,
            seq,
            rtp_ts,
            level,
            marker,
            payload,
        } = pkt;
        let Some(p) = self.participant_mut(idx).filter(|p| p.rtc.is_none()) else {
            return self.drop_datagram(DropReason::UnknownPeer, None);
        };
        if !p.rate.take(now) {
            return self.drop_datagram(DropReason::OverRate, Some(idx));
        }
        p.last_recv = Some(now);
        let pkt = Inbound {
            ssrc: p.remote_ssrc,
            seq,
            ts: rtp_ts,
            marker,
            audio_level: Some(-(level.min(127) as i8)),
            voice_activity: None,
            payload,
        };
        self.forward(now, idx, pkt, true);
    }

    /// Whether `idx` is a remote speaker (fed by a trunk).
    pub fn is_remote(&self, idx: ParticipantIdx) -> bool {
        self.participant(idx).is_some_and(|p| p.rtc.is_none())
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

    fn participant(&self, idx: ParticipantIdx) -> Option<&Participant> {
        self.participants
            .get(idx.0 as usize)
            .and_then(|p| p.as_ref())
    }

    fn participant_mut(&mut self, idx: ParticipantIdx) -> Option<&mut Participant> {
        self.participants
            .get_mut(idx.0 as usize)
            .and_then(|p| p.as_mut())
    }

    /// Snapshot of every WebRTC participant's figures (for logs and the JSON endpoint; remote
    /// speakers are counted by [`Node::remote_count`], not listed).
    pub fn reports(&self) -> Vec<ParticipantReport> {
        let user_of = |i: ParticipantIdx| self.participant(i).map(|p| p.user);
        self.participants
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().filter(|p| p.rtc.is_some()).map(|p| (i, p)))
            .map(|(i, p)| ParticipantReport {
                idx: i as u32,
                user: p.user,
                room: p.room,
                connected: p.connected,
                self_mute: p.flags.self_mute,
                server_mute: p.flags.server_mute,
                deaf: p.flags.deaf(),
                can_speak: p.flags.can_speak,
                speaking_level: p.level.loudness(),
                slots: p
                    .slots
                    .iter()
                    .map(|s| SlotReport {
                        ssrc: s.ssrc.0,
                        speaker: s.speaker.and_then(user_of),
                    })
                    .collect(),
                stats: p.stats.clone(),
                drops: p
                    .stats
                    .drops
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| (r.as_str(), n))
                    .collect(),
            })
            .collect()
    }

    /// Feed one received UDP datagram.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        buf: &[u8],
    ) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += buf.len() as u64;
        if buf.len() > self.cfg.max_datagram {
            return self.drop_datagram(DropReason::Oversized, None);
        }
        let stun = crate::stun::is_stun(buf);
        let idx = if stun {
            match crate::stun::local_ufrag(buf) {
                None => return self.drop_datagram(DropReason::Malformed, None),
                Some(u) => match self.by_ufrag.get(u) {
                    Some(i) => *i,
                    None => return self.drop_datagram(DropReason::UnknownUsername, None),
                },
            }
        } else {
            match self.by_addr.get(&source) {
                Some(i) => *i,
                None => {
                    let reason = if DatagramRecv::try_from(buf).is_err() {
                        DropReason::Malformed
                    } else {
                        DropReason::UnknownPeer
                    };
                    return self.drop_datagram(reason, None);
                }
            }
        };
        let Ok(contents) = DatagramRecv::try_from(buf) else {
            return self.drop_datagram(DropReason::Malformed, Some(idx));
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        let p = self.participants[idx.0 as usize]
            .as_mut()
            .expect("maps only hold live participants");
        if !p.rate.take(now) {
            return self.drop_datagram(DropReason::OverRate, Some(idx));
        }
        let Some(rtc) = p.rtc.as_mut() else {
            // Remote speakers have no address or ufrag in the maps.
            return self.drop_datagram(DropReason::UnknownPeer, None);
        };
        if !rtc.accepts(&input) {
            return self.drop_datagram(DropReason::Rejected, Some(idx));
        }
        if let Err(e) = rtc.handle_input(input) {
            trace!(%idx, error = %e, "datagram refused by WebRTC stack");
            return self.drop_datagram(DropReason::Rejected, Some(idx));
        }
        p.last_recv = Some(now);
        if stun && !p.remotes.contains(&source) {
            p.remotes.push(source);
            let evicted = (p.remotes.len() > MAX_REMOTES).then(|| p.remotes.remove(0));
            if let Some(old) = evicted {
                if self.by_addr.get(&old) == Some(&idx) {
                    self.by_addr.remove(&old);
                }
            }
            // An address moves to whoever proved it last (NAT rebinding, reused port).
            if let Some(prev) = self.by_addr.insert(source, idx) {
                if prev != idx {
                    if let Some(pp) = self.participant_mut(prev) {
                        pp.remotes.retain(|a| *a != source);
                    }
                }
            }
            debug!(%idx, "participant address learned from STUN");
        }
        // In RTP mode str0m reports every RTP packet that authenticates; one that does not
        // vanishes inside it. Notice that here so it is counted like every other drop.
        let rtp_before = self.stats.rtp_in;
        self.drain(idx, now);
        if is_rtp(buf) && self.stats.rtp_in == rtp_before {
            self.drop_datagram(DropReason::DecryptFailed, Some(idx));
        }
    }

    fn drop_datagram(&mut self, reason: DropReason, idx: Option<ParticipantIdx>) {
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
            let Some(p) = self
                .participants
                .get_mut(i as usize)
                .and_then(|p| p.as_mut())
            else {
                continue;
            };
            if p.armed != Some(at) {
                continue; // stale: a later entry (or none, for a reused index) is live
            }
            p.armed = None;
            let idx = ParticipantIdx(i);
            if p.next_timeout <= now {
                let Some(rtc) = p.rtc.as_mut() else {
                    continue;
                };
                if let Err(e) = rtc.handle_input(Input::Timeout(now)) {
                    warn!(%idx, error = %e, "WebRTC timeout handling failed; removing participant");
                    p.gone = true;
                }
                // Re-arms through the Timeout output.
                self.drain(idx, now);
            } else {
                let at = p.next_timeout;
                self.timers.arm(i, at, &mut p.armed);
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

    /// Next output: a datagram to send or an event for signaling.
    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        let o = self.out.pop_front();
        if let Some(NodeOutput::Transmit(t)) = &o {
            self.stats.datagrams_out += 1;
            self.stats.bytes_out += t.contents.len() as u64;
        }
        o
    }

    /// Close every peer (shutdown). Each participant gets a Left event.
    pub fn close_all(&mut self, _now: Instant) {
        for i in 0..self.participants.len() {
            if self.participants[i].is_some() {
                self.remove(ParticipantIdx(i as u32), LeaveReason::Requested);
            }
        }
    }

    fn reap(&mut self, now: Instant) {
        for i in 0..self.participants.len() {
            let reason = match &self.participants[i] {
                Some(p) if p.rtc.is_none() => None,
                Some(p) if p.gone => Some(LeaveReason::Closed),
                Some(p) if p.connected => p
                    .last_recv
                    .is_some_and(|t| now.saturating_duration_since(t) > self.cfg.idle_timeout)
                    .then_some(LeaveReason::Idle),
                Some(p) => (now.saturating_duration_since(p.joined_at) > self.cfg.connect_timeout)
                    .then_some(LeaveReason::ConnectTimeout),
                None => None,
            };
            if let Some(r) = reason {
                self.remove(ParticipantIdx(i as u32), r);
            }
        }
    }

    fn remove(&mut self, idx: ParticipantIdx, reason: LeaveReason) {
        let Some(mut p) = self
            .participants
            .get_mut(idx.0 as usize)
            .and_then(|s| s.take())
        else {
            return;
        };
        self.free.push(idx.0);
        self.count -= 1;
        if p.rtc.is_none() {
            self.remote_count -= 1;
        }
        if let Some(g) = p.guild {
            release(&mut self.per_guild, g);
            release(&mut self.per_user, p.user);
        }
        self.by_ufrag.remove(&p.ufrag);
        for addr in &p.remotes {
            if self.by_addr.get(addr) == Some(&idx) {
                self.by_addr.remove(addr);
            }
        }
        if let Some(rtc) = p.rtc.as_mut() {
            rtc.disconnect();
        }
        // Free every slot that carried this participant, and forget its own subscriptions.
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.members.retain(|m| *m != idx);
            room.selector_forget(idx);
        }
        for (listener, slot) in p.subscribers.drain(..) {
            if let Some(l) = self
                .participants
                .get_mut(listener.0 as usize)
                .and_then(|s| s.as_mut())
            {
                if let Some(s) = l.slots.get_mut(slot as usize) {
                    if s.speaker == Some(idx) {
                        s.speaker = None;
                        self.out
                            .push_back(NodeOutput::Event(NodeEvent::SlotChanged {
                                listener,
                                listener_user: l.user,
                                room: l.room,
                                slot: slot as usize,
                                ssrc: s.ssrc,
                                speaker: None,
                            }));
                    }
                }
            }
        }
        for s in &p.slots {
            if let Some(sp) = s
                .speaker
                .and_then(|sp| self.participants.get_mut(sp.0 as usize))
                .and_then(|x| x.as_mut())
            {
                sp.subscribers.retain(|(l, _)| *l != idx);
            }
        }
        let room_empty = self
            .rooms
            .get(&p.room)
            .is_some_and(|r| r.members.is_empty());
        if room_empty {
            self.rooms.remove(&p.room);
        } else if let Some(room) = self.rooms.get_mut(&p.room) {
            let max_k = room
                .members
                .iter()
                .filter_map(|m| self.participants[m.0 as usize].as_ref())
                .map(|m| m.slots.len())
                .max();
            room.set_capacity(max_k.unwrap_or(0) + 1);
        }
        info!(%idx, room = p.room.0, user = p.user.0, ?reason, packets_in = p.stats.packets_in,
              packets_out = p.stats.packets_out, loss_in = ?p.stats.loss_in, rtt_ms = ?p.stats.rtt_ms,
              "participant left");
        if self.export_all || self.exported.contains(&p.room) {
            self.out.push_back(NodeOutput::ExportEnd(idx));
        }
        if p.rtc.is_none() {
            return;
        }
        self.out.push_back(NodeOutput::Event(NodeEvent::Left {
            idx,
            room: p.room,
            user: p.user,
            reason,
            stats: Box::new(p.stats.clone()),
        }));
    }

    /// Drain one participant's WebRTC outputs into the node's queue, forwarding its RTP.
    fn drain(&mut self, idx: ParticipantIdx, now: Instant) {
        loop {
            let Some(p) = self
                .participants
                .get_mut(idx.0 as usize)
                .and_then(|s| s.as_mut())
            else {
                return;
            };
            let Some(rtc) = p.rtc.as_mut() else {
                return;
            };
            let out = match rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    warn!(%idx, error = %e, "WebRTC session failed");
                    p.gone = true;
                    return;
                }
            };
            match out {
                Output::Timeout(t) => {
                    p.next_timeout = t;
                    self.timers.arm(idx.0, t, &mut p.armed);
                    return;
                }
                Output::Transmit(t) => {
                    self.out.push_back(NodeOutput::Transmit(Transmit {
                        destination: t.destination,
                        contents: t.contents.into(),
                    }));
                }
                Output::Event(ev) => match ev {
                    Event::RtpPacket(pkt) => {
                        let pt_ok = pkt.header.payload_type == p.opus_pt;
                        self.forward(now, idx, Inbound::from_rtp(pkt), pt_ok)
                    }
                    Event::Connected => {
                        p.connected = true;
                        info!(%idx, "participant connected (ICE + DTLS done)");
                        let (room, user) = (p.room, p.user);
                        self.out.push_back(NodeOutput::Event(NodeEvent::Connected {
                            idx,
                            room,
                            user,
                        }));
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        debug!(%idx, "ICE disconnected");
                        p.gone = true;
                    }
                    Event::MediaIngressStats(s) => {
                        p.stats.loss_in = s.loss.or(p.stats.loss_in);
                        p.stats.jitter_in_ms = Some(s.jitter as f32 / 48.0);
                        if let Some(rtt) = s.rtt {
                            p.stats.rtt_ms = Some(rtt.as_secs_f32() * 1000.0);
                        }
                    }
                    Event::MediaEgressStats(s) => {
                        p.stats.loss_out = s.loss.or(p.stats.loss_out);
                        if let Some(rtt) = s.rtt {
                            p.stats.rtt_ms = Some(rtt.as_secs_f32() * 1000.0);
                        }
                        if let Some(r) = s.remote {
                            p.stats.jitter_out_ms = Some(r.jitter as f32 / 48.0);
                        }
                    }
                    Event::PeerStats(s) => {
                        if let Some(rtt) = s.rtt {
                            p.stats.rtt_ms = Some(rtt.as_secs_f32() * 1000.0);
                        }
                    }
                    Event::Closed => p.gone = true,
                    _ => {}
                },
            }
        }
    }

    /// The hot path: one speaker packet to every listener slot that carries the speaker.
    fn forward(&mut self, now: Instant, from: ParticipantIdx, pkt: Inbound, pt_ok: bool) {
        self.stats.rtp_in += 1;
        let Node {
            participants,
            stats,
            out,
            cfg,
            rooms,
            exported,
            export_all,
            timers,
            ..
        } = self;
        let p = participants[from.0 as usize]
            .as_mut()
            .expect("drain only forwards for live participants");
        p.stats.packets_in += 1;
        p.stats.bytes_in += pkt.payload.len() as u64;
        let reason = if !pt_ok {
            Some(DropReason::UnexpectedStream)
        } else if !p.flags.can_speak {
            Some(DropReason::NoSpeakPermission)
        } else if p.flags.self_mute || p.flags.server_mute {
            Some(DropReason::Muted)
        } else {
            None
        };
        if let Some(r) = reason {
            stats.drops.count(r);
            p.stats.drops.count(r);
            return;
        }
        // RFC 6464: value is -dBov, 127 = silence. Without the extension the sender is silent to
        // the selector (it can still be heard if already selected).
        let level = pkt
            .audio_level
            .map(|l| l.unsigned_abs().min(127))
            .unwrap_or(127);
        p.level.observe(now, level, &cfg.selector);
        let Inbound {
            ssrc,
            seq,
            ts,
            marker,
            audio_level,
            voice_activity,
            payload,
        } = pkt;
        // Other nodes get this speaker while it talks (this packet is voice, or it talked within
        // the hang time) or holds a seat in the room's ranking: one copy per node, fan-out there.
        if *export_all || exported.contains(&p.room) {
            let voice = 127.0 - level as f32 > cfg.selector.active_above;
            let ranked = || {
                rooms
                    .get(&p.room)
                    .is_some_and(|r| r.selector.ranked().iter().any(|(i, _)| *i == from))
            };
            if voice || p.level.is_holding(now, &cfg.selector) || ranked() {
                stats.exported += 1;
                out.push_back(NodeOutput::Export(Export {
                    room: p.room,
                    from,
                    user: p.user,
                    remote: p.rtc.is_none(),
                    rtp_ts: ts,
                    level,
                    marker,
                    payload: payload.clone(),
                }));
            }
        }
        let ext = ExtensionValues {
            audio_level,
            voice_activity,
            ..Default::default()
        };
        // Subscribers are kept up to date by the tick; iterate by index to avoid cloning the list.
        let n_subs = p.subscribers.len();
        for s in 0..n_subs {
            let (listener, slot_ix) = participants[from.0 as usize]
                .as_ref()
                .expect("live")
                .subscribers[s];
            let Some(l) = participants
                .get_mut(listener.0 as usize)
                .and_then(|x| x.as_mut())
            else {
                continue;
            };
            if l.flags.deaf() || !l.connected {
                continue;
            }
            let slot = &mut l.slots[slot_ix as usize];
            let Some(rw) = slot.rewriter.rewrite(now, ssrc, seq, ts) else {
                stats.drops.count(DropReason::Stale);
                continue;
            };
            if rw.switched {
                l.stats.slot_switches += 1;
            }
            let (mid, pt) = (slot.mid, slot.pt);
            let Some(rtc) = l.rtc.as_mut() else {
                continue;
            };
            {
                let mut api = rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                    continue;
                };
                tx.write_rtp(
                    RtpWrite::new(pt, rw.seq.into(), rw.timestamp, now, payload.clone())
                        .marker(marker)
                        .ext_vals(ext.clone()),
                );
            }
            l.stats.packets_out += 1;
            l.stats.bytes_out += payload.len() as u64;
            stats.rtp_forwarded += 1;
            // str0m releases queued RTP when driven by time: give it `now` so the packet leaves
            // in this same call instead of waiting for the listener's next timer.
            if rtc.handle_input(Input::Timeout(now)).is_err() {
                l.gone = true;
                continue;
            }
            // Drain the listener's transmits right away (no events are expected from writing).
            let mut sent = false;
            loop {
                match rtc.poll_output() {
                    Ok(Output::Transmit(t)) => {
                        sent = true;
                        out.push_back(NodeOutput::Transmit(Transmit {
                            destination: t.destination,
                            contents: t.contents.into(),
                        }))
                    }
                    Ok(Output::Timeout(t)) => {
                        l.next_timeout = t;
                        timers.arm(listener.0, t, &mut l.armed);
                        if !sent {
                            stats.rtp_deferred += 1;
                        }
                        break;
                    }
                    Ok(Output::Event(_)) => {}
                    Err(_) => {
                        l.gone = true;
                        break;
                    }
                }
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        let mut rooms = std::mem::take(&mut self.scratch_rooms);
        rooms.clear();
        rooms.extend(self.rooms.keys().copied());
        for r in &rooms {
            self.tick_room(now, *r);
        }
        self.scratch_rooms = rooms;
    }

    /// Re-rank a room's speakers and re-map every listener's slots.
    fn tick_room(&mut self, now: Instant, room_id: RoomId) {
        let Node {
            participants,
            rooms,
            scratch_candidates,
            scratch_changes,
            out,
            ..
        } = self;
        let Some(room) = rooms.get_mut(&room_id) else {
            return;
        };
        scratch_candidates.clear();
        for m in &room.members {
            if let Some(p) = participants[m.0 as usize].as_ref() {
                scratch_candidates.push(SelCandidate {
                    idx: *m,
                    eligible: p.connected && p.flags.forwardable(),
                    level: p.level,
                });
            }
        }
        room.selector.update(now, scratch_candidates);
        let ranked = room.selector.ranked();
        for &li in &room.members {
            scratch_changes.clear();
            {
                let Some(l) = participants[li.0 as usize].as_mut() else {
                    continue;
                };
                room.slot_scratch.clear();
                room.slot_scratch.extend(l.slots.iter().map(|s| s.speaker));
                assign_slots(li, &mut room.slot_scratch, ranked, |n, w| {
                    scratch_changes.push((n, w))
                });
            }
            for &(n, who) in scratch_changes.iter() {
                let l = participants[li.0 as usize].as_mut().expect("checked above");
                let old = std::mem::replace(&mut l.slots[n].speaker, who);
                let (listener_user, ssrc) = (l.user, l.slots[n].ssrc);
                if let Some(o) = old.and_then(|o| participants[o.0 as usize].as_mut()) {
                    o.subscribers
                        .retain(|(x, s)| !(*x == li && *s as usize == n));
                }
                let speaker_user = who
                    .and_then(|w| participants[w.0 as usize].as_mut())
                    .map(|w| {
                        w.subscribers.push((li, n as u8));
                        w.user
                    });
                out.push_back(NodeOutput::Event(NodeEvent::SlotChanged {
                    listener: li,
                    listener_user,
                    room: room_id,
                    slot: n,
                    ssrc,
                    speaker: speaker_user,
                }));
            }
        }
    }
}

/// One participant fewer under `key` (the entry goes at zero, so the maps hold only keys with
/// participants).
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let std::collections::hash_map::Entry::Occupied(mut e) = counts.entry(key) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
}

/// RTP, not RTCP (RFC 5761 demultiplexing: version 2, payload type outside 64..=95).
fn is_rtp(buf: &[u8]) -> bool {
    buf.len() >= 12 && buf[0] >> 6 == 2 && !(64..=95).contains(&(buf[1] & 0x7f))
}

/// `a=mid:` values in media-line order.
fn offer_mids(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=mid:"))
        .map(|m| m.trim().to_string())
        .collect()
}
