//! Native participants: game clients and bots on Discord's UDP voice (docs/design/NATIVE-VOICE.md).
//!
//! A native client learns its public address by IP discovery before it selects the UDP
//! protocol, so the node answers discovery for any SSRC (a stateless echo, like a STUN
//! binding) and remembers, for a short time, which address asked for which SSRC. When
//! signaling then joins the participant ([`Node::join_native`]) with the mode and key it
//! handed out, that address becomes the participant's. From then on:
//!
//! - a datagram shorter than an RTP header from its address is a keepalive;
//! - anything else from its address must open under its key with a counter not seen before
//!   (AEAD + replay window) and carry its SSRC; RTP is voice, a sender report is answered at
//!   once with a receiver report on its voice's loss and jitter (`native/rtcp.rs`, a Lodge
//!   extension), other RTCP is counted and dropped;
//! - an authenticated packet from another address moves the participant there (NAT
//!   rebinding); a discovery request moves it only until the first authenticated packet.
//!
//! Its voice is ranked by a size proxy (native clients send no audio-level extension; for a
//! DAVE frame, the size of the Opus frame inside) and forwarded like any speaker's; what it hears is the loudest K speakers of the room, each
//! under the speaker's own SSRC (`user_ssrc`), sealed under its key (`forward.rs`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::forward::Inbound;
use super::{Node, NodeEvent, NodeOutput, Transmit, Transport, MAX_SLOTS};
use crate::drop_reason::DropReason;
use crate::error::SfuError;
use crate::ids::{GuildId, ParticipantIdx, RoomId, Ssrc, UserId};
use crate::native::rtcp::{self, Reception, Report};
use crate::native::{
    dave_frame, discovery_response, user_ssrc, CryptoMode, ReplayWindow, TransportCipher,
};
use crate::participant::{Kind, NativePeer, Participant, VoiceFlags};
use crate::rate_limit::TokenBucket;
use crate::stats::ParticipantStats;

/// The payload type of Opus on Discord's voice (both client libraries send and expect it).
pub const NATIVE_OPUS_PT: u8 = crate::native::OPUS_PT;
/// Discovery answers remembered for a join to come, and for how long (a client selects the
/// protocol within a round trip of its discovery).
const PENDING_MAX: usize = 4096;
const PENDING_TTL: Duration = Duration::from_secs(60);
/// Discovery requests answered per second node-wide, and the burst: an answer is no larger
/// than its request, and the budget bounds how fast a flood can push out remembered ones.
const DISCOVERY_RATE: u32 = 1_000;
const DISCOVERY_BURST: u32 = 2_000;
/// Attempts per second to authenticate a packet from an unknown address as a peer's.
const REBIND_RATE: u32 = 100;

/// The SSRC the node's receiver reports to native clients carry as their sender (the node
/// sends no RTP of its own under any SSRC).
pub const NODE_RTCP_SSRC: u32 = 0;

/// What one datagram of a native participant turned out to be.
enum NativeIn {
    /// Shorter than RTP: liveness only.
    Keepalive,
    /// Voice to forward, and whether it came from a new address.
    Voice(Inbound, bool),
    /// A sender report to answer; `lsr` is its timestamp's middle 32 bits.
    SenderReport { lsr: u32 },
}

/// Ask the node to admit a native participant (after Select Protocol `udp`).
#[derive(Clone)]
pub struct NativeJoin {
    pub room: RoomId,
    pub guild: GuildId,
    pub user: UserId,
    pub mode: CryptoMode,
    /// The transport key handed to the client in Session Description.
    pub key: [u8; 32],
    /// Speakers it hears at once (1..=[`MAX_SLOTS`]).
    pub slots: usize,
    pub flags: VoiceFlags,
    /// The client does DAVE (its Identify announced `max_dave_protocol_version` ≥ 1): it may
    /// be sent DAVE frames. Without it the node never forwards it one.
    pub dave: bool,
}

impl std::fmt::Debug for NativeJoin {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeJoin")
            .field("room", &self.room)
            .field("user", &self.user)
            .field("mode", &self.mode.name())
            .field("slots", &self.slots)
            .field("dave", &self.dave)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeAnswer {
    pub idx: ParticipantIdx,
    /// The SSRC its packets must carry (the one Ready announced).
    pub ssrc: Ssrc,
    /// The address IP discovery bound, if the client asked before joining.
    pub addr: Option<SocketAddr>,
}

/// Which address asked about which SSRC lately (bounded, oldest forgotten first).
#[derive(Default)]
pub(crate) struct PendingDiscovery {
    by_ssrc: HashMap<Ssrc, (SocketAddr, Instant)>,
    order: VecDeque<(Ssrc, Instant)>,
}

impl PendingDiscovery {
    fn remember(&mut self, now: Instant, ssrc: Ssrc, from: SocketAddr) {
        self.expire(now);
        while self.by_ssrc.len() >= PENDING_MAX {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.by_ssrc.get(&old).is_some_and(|(_, t)| *t == at) {
                self.by_ssrc.remove(&old);
            }
        }
        self.by_ssrc.insert(ssrc, (from, now));
        self.order.push_back((ssrc, now));
    }

    fn take(&mut self, now: Instant, ssrc: Ssrc) -> Option<SocketAddr> {
        self.expire(now);
        self.by_ssrc.remove(&ssrc).map(|(a, _)| a)
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(ssrc, at)) = self.order.front() {
            if now.saturating_duration_since(at) < PENDING_TTL
                && self.order.len() <= 2 * PENDING_MAX
            {
                break;
            }
            self.order.pop_front();
            if self.by_ssrc.get(&ssrc).is_some_and(|(_, t)| *t == at) {
                self.by_ssrc.remove(&ssrc);
            }
        }
    }
}

/// The node-wide state native participants need beside the participants themselves.
pub(crate) struct NativeState {
    pub by_ssrc: HashMap<Ssrc, ParticipantIdx>,
    pub pending: PendingDiscovery,
    pub discovery_budget: TokenBucket,
    /// One received packet, decrypted in place (no allocation per packet).
    pub scratch: Vec<u8>,
}

impl Default for NativeState {
    fn default() -> Self {
        NativeState {
            by_ssrc: HashMap::new(),
            pending: PendingDiscovery::default(),
            discovery_budget: TokenBucket::new(DISCOVERY_RATE, DISCOVERY_BURST),
            scratch: Vec::new(),
        }
    }
}

impl Node {
    /// Admit a native participant with the mode and key signaling gave it. Bounds as for a
    /// WebRTC join; its SSRC is `user_ssrc(guild, user)`.
    pub fn join_native(&mut self, now: Instant, req: NativeJoin) -> Result<NativeAnswer, SfuError> {
        self.admit(req.room, req.guild, req.user)?;
        if req.slots == 0 || req.slots > MAX_SLOTS {
            return Err(SfuError::BadSlots {
                asked: req.slots,
                max: MAX_SLOTS,
            });
        }
        let ssrc = user_ssrc(req.guild, req.user);
        if self.native.by_ssrc.contains_key(&ssrc) {
            return Err(SfuError::SsrcInUse(ssrc.0));
        }
        let addr = self.native.pending.take(now, ssrc);
        let rate = self.cfg.max_packet_rate;
        let p = Participant {
            user: req.user,
            room: req.room,
            level: Default::default(),
            flags: req.flags,
            stats: ParticipantStats::default(),
            rate: TokenBucket::new(rate, (rate / 4).max(8)),
            last_recv: addr.map(|_| now),
            voice_ssrc: ssrc,
            sends_dave: false,
            kind: Kind::Native(NativePeer {
                guild: req.guild,
                addr: None,
                addr_proven: false,
                cipher: TransportCipher::new(req.mode, &req.key),
                replay: ReplayWindow::default(),
                send_counter: 0,
                k: req.slots,
                joined_at: now,
                rebind: TokenBucket::new(REBIND_RATE, REBIND_RATE),
                dave: req.dave,
                reception: Reception::default(),
            }),
        };
        let idx = self.seat(now, p, req.guild);
        self.native.by_ssrc.insert(ssrc, idx);
        info!(%idx, room = req.room.0, user = req.user.0, slots = req.slots,
              mode = req.mode.name(), dave = req.dave, discovered = addr.is_some(),
              "native participant joined");
        if let Some(a) = addr {
            self.bind_native(idx, a);
        }
        Ok(NativeAnswer { idx, ssrc, addr })
    }

    /// An IP discovery request for `ssrc` from `source`: answer it, and bind the address to
    /// the SSRC's participant unless an authenticated packet already proved another one.
    pub(super) fn native_discovery(&mut self, now: Instant, source: SocketAddr, ssrc: Ssrc) {
        if !self.native.discovery_budget.take(now) {
            return self.drop_datagram(DropReason::OverRate, None);
        }
        match self.native.by_ssrc.get(&ssrc).copied() {
            Some(idx) => {
                let movable = matches!(
                    self.participant(idx).map(|p| &p.kind),
                    Some(Kind::Native(n)) if !n.addr_proven
                );
                if movable {
                    self.bind_native(idx, source);
                    if let Some(p) = self.participant_mut(idx) {
                        p.last_recv = Some(now);
                    }
                }
            }
            None => self.native.pending.remember(now, ssrc, source),
        }
        self.stats.native_discovery += 1;
        self.out.push_back(NodeOutput::Transmit(Transmit {
            transport: Transport::Udp,
            destination: source,
            contents: discovery_response(ssrc, source).to_vec(),
        }));
    }

    /// Make `addr` the native participant's address (taking it from whoever had it).
    fn bind_native(&mut self, idx: ParticipantIdx, addr: SocketAddr) {
        let Some(Kind::Native(n)) = self.participant_mut(idx).map(|p| &mut p.kind) else {
            return;
        };
        let first = n.addr.is_none();
        let old = n.addr.replace(addr);
        if let Some(old) = old.filter(|o| *o != addr) {
            if self.by_addr.get(&old) == Some(&idx) {
                self.by_addr.remove(&old);
            }
        }
        if let Some(prev) = self.by_addr.insert(addr, idx).filter(|p| *p != idx) {
            match self.participant_mut(prev).map(|p| &mut p.kind) {
                Some(Kind::WebRtc(w)) => w.remotes.retain(|r| *r != (Transport::Udp, addr)),
                Some(Kind::Native(n)) if n.addr == Some(addr) => {
                    n.addr = None;
                    n.addr_proven = false;
                }
                _ => {}
            }
        }
        debug!(%idx, "native participant address bound");
        if first {
            let (room, user) = match self.participant(idx) {
                Some(p) => (p.room, p.user),
                None => return,
            };
            self.out
                .push_back(NodeOutput::Event(NodeEvent::Connected { idx, room, user }));
        }
    }

    /// A datagram for native participant `idx`: from its address (`rebinding` false) or an
    /// RTP-shaped one from an unknown address carrying its SSRC (`rebinding` true).
    pub(super) fn native_datagram(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        source: SocketAddr,
        buf: &[u8],
        rebinding: bool,
    ) {
        let who = (!rebinding).then_some(idx);
        match self.open_native(now, idx, source, buf, rebinding) {
            Ok(NativeIn::Keepalive) => self.stats.native_keepalives += 1,
            Ok(NativeIn::SenderReport { lsr }) => self.answer_sender_report(idx, lsr),
            Ok(NativeIn::Voice(pkt, moved)) => {
                if moved {
                    info!(%idx, rebinding, "native participant moved to a new address (authenticated)");
                    self.bind_native(idx, source);
                }
                self.forward(now, idx, pkt, true);
            }
            Err(DropReason::Replayed) => self.drop_datagram(DropReason::Replayed, Some(idx)),
            Err(r) => self.drop_datagram(r, who),
        }
    }

    /// Answer a native participant's sender report with a receiver report on its voice.
    fn answer_sender_report(&mut self, idx: ParticipantIdx, lsr: u32) {
        let Some(p) = self
            .participants
            .get_mut(idx.0 as usize)
            .and_then(|p| p.as_mut())
        else {
            return;
        };
        let Kind::Native(n) = &mut p.kind else {
            return;
        };
        let Some(addr) = n.addr else {
            return;
        };
        // Answered while handling the SR: no delay since it arrived.
        let block = n.reception.report(p.voice_ssrc.0, lsr, 0);
        p.stats.loss_in = Some(block.loss_fraction() as f32);
        p.stats.jitter_in_ms = Some(n.reception.jitter_ms() as f32);
        let pkt = rtcp::seal_receiver_report(&n.cipher, NODE_RTCP_SSRC, &block, n.send_counter);
        n.send_counter = n.send_counter.wrapping_add(1);
        self.stats.native_reports += 1;
        self.out.push_back(NodeOutput::Transmit(Transmit {
            transport: Transport::Udp,
            destination: addr,
            contents: pkt,
        }));
    }

    /// Check and open one datagram of a native participant.
    fn open_native(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        source: SocketAddr,
        buf: &[u8],
        rebinding: bool,
    ) -> Result<NativeIn, DropReason> {
        let Node {
            participants,
            native,
            ..
        } = self;
        let p = participants
            .get_mut(idx.0 as usize)
            .and_then(|p| p.as_mut())
            .ok_or(DropReason::UnknownPeer)?;
        let Kind::Native(n) = &mut p.kind else {
            return Err(DropReason::UnknownPeer);
        };
        let budget = if rebinding {
            n.rebind.take(now)
        } else {
            p.rate.take(now)
        };
        if !budget {
            return Err(DropReason::OverRate);
        }
        if buf.len() < 12 {
            // A keepalive (8 bytes from discord.js, 4 from songbird): liveness only.
            if rebinding {
                return Err(DropReason::UnknownPeer);
            }
            p.last_recv = Some(now);
            return Ok(NativeIn::Keepalive);
        }
        if rtcp::is_rtcp(buf) {
            if rebinding {
                // Only voice moves a participant: its next packet will.
                return Err(DropReason::UnknownPeer);
            }
            let s = &mut native.scratch;
            let opened = open_fresh(s, n, buf, true)?;
            return match rtcp::parse(&s[..opened.payload.end]) {
                Some(Report::Sender(sr)) if sr.ssrc == p.voice_ssrc.0 => {
                    p.last_recv = Some(now);
                    Ok(NativeIn::SenderReport {
                        lsr: sr.ntp_middle(),
                    })
                }
                Some(_) => Err(DropReason::UnexpectedStream),
                None => Err(DropReason::Malformed),
            };
        }
        // Other RTCP types (RFC 5761: payload type 64..=95 after masking the marker bit).
        if (64..=95).contains(&(buf[1] & 0x7f)) {
            return Err(DropReason::UnexpectedStream);
        }
        let s = &mut native.scratch;
        let opened = open_fresh(s, n, buf, false)?;
        let ssrc = u32::from_be_bytes([s[8], s[9], s[10], s[11]]);
        if ssrc != p.voice_ssrc.0 {
            return Err(DropReason::UnexpectedStream);
        }
        p.last_recv = Some(now);
        n.addr_proven = true;
        let moved = n.addr != Some(source);
        let seq = u16::from_be_bytes([s[2], s[3]]);
        let ts = u32::from_be_bytes([s[4], s[5], s[6], s[7]]);
        let arrival = now.saturating_duration_since(n.joined_at);
        n.reception
            .packet(seq, ts, (arrival.as_micros() as u64) * 48 / 1000);
        let payload: Arc<[u8]> = Arc::from(&s[opened.payload]);
        // With DAVE the Opus frame is sealed (its TOC too) but keeps its size; what DAVE adds
        // (the supplemental bytes, ~12–16) would otherwise lift every quiet packet a band.
        let dave = dave_frame::supplemental_len(&payload);
        let level = size_level(payload.len() - dave.unwrap_or(0));
        Ok(NativeIn::Voice(
            Inbound {
                ssrc,
                seq,
                ts,
                marker: s[1] & 0x80 != 0,
                audio_level: Some(-(level as i8)),
                voice_activity: None,
                dave: dave.is_some(),
                payload,
            },
            moved,
        ))
    }

    /// The native participant an RTP-shaped datagram from an unknown address claims to be.
    pub(super) fn native_claimed(&self, buf: &[u8]) -> Option<ParticipantIdx> {
        if buf.len() < 12 || buf[0] >> 6 != 2 {
            return None;
        }
        let ssrc = Ssrc(u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]));
        self.native.by_ssrc.get(&ssrc).copied()
    }
}

/// `buf` copied into `scratch` (no allocation once it has grown) and opened there under the
/// peer's key, as RTCP or RTP, with a nonce counter its replay window has not seen.
fn open_fresh(
    scratch: &mut Vec<u8>,
    n: &mut NativePeer,
    buf: &[u8],
    rtcp: bool,
) -> Result<crate::native::Opened, DropReason> {
    scratch.clear();
    scratch.extend_from_slice(buf);
    let opened = if rtcp {
        n.cipher.open_rtcp(scratch)?
    } else {
        n.cipher.open(scratch)?
    };
    if !n.replay.accept(opened.counter) {
        return Err(DropReason::Replayed);
    }
    Ok(opened)
}

/// A pseudo RFC 6464 level (0 loudest … 127 silent) from an Opus packet's size: native
/// clients send no audio-level extension, and Opus in VBR spends bytes on sound. DTX and
/// silence frames are ≤ 3 bytes; background noise a few dozen; voice, more. The bands put
/// quiet packets below the selector's "talking" threshold (level 72) and rank louder,
/// busier speech higher. A Lodge choice (how Discord ranks such senders is not published).
/// For a DAVE frame, pass the Opus size inside it (`dave_frame::opus_len`).
pub fn size_level(opus_bytes: usize) -> u8 {
    match opus_bytes {
        0..=3 => 127,
        4..=19 => 100,
        n => (70usize.saturating_sub((n - 20) / 4)).max(10) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_level_bands() {
        assert_eq!(size_level(3), 127);
        assert_eq!(size_level(10), 100);
        assert!(
            size_level(40) < 72,
            "a voice-sized packet counts as talking"
        );
        assert!(size_level(160) < size_level(60), "more bytes rank louder");
        assert_eq!(size_level(10_000), 10);
    }

    #[test]
    fn pending_discovery_is_bounded_and_expires() {
        let t0 = Instant::now();
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut p = PendingDiscovery::default();
        p.remember(t0, Ssrc(1), a);
        assert_eq!(p.take(t0, Ssrc(1)), Some(a));
        assert_eq!(p.take(t0, Ssrc(1)), None, "taken once");
        p.remember(t0, Ssrc(3), a);
        assert_eq!(p.take(t0 + PENDING_TTL, Ssrc(3)), None, "expired");
        for i in 0..(PENDING_MAX as u32 + 10) {
            p.remember(t0, Ssrc(2 * i + 1), a);
        }
        assert!(p.by_ssrc.len() <= PENDING_MAX);
        assert!(p.order.len() <= 2 * PENDING_MAX + 1);
        assert_eq!(p.take(t0, Ssrc(1)), None, "the oldest went first");
        let last = Ssrc(2 * (PENDING_MAX as u32 + 9) + 1);
        assert_eq!(p.take(t0, last), Some(a));
    }
}
