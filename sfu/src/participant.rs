//! A participant: one speaker/listener in one room, and the kinds of media transport it can be on.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::media::{Mid, Pt};
use str0m::rtp::RtpWrite;
use str0m::Rtc;

use crate::buf_pool::BufPool;
use crate::direct_send::{DirectCopy, DirectSession, DirectSlot};
use crate::ids::{GuildId, RoomId, Ssrc, UserId};
use crate::native::rtcp::Reception;
use crate::native::{ReplayWindow, TransportCipher};
use crate::node::{Transmit, Transport};
use crate::rate_limit::TokenBucket;
use crate::seq_rewriter::SeqRewriter;
use crate::speaker_selector::SpeakerLevel;
use crate::stats::ParticipantStats;

/// One of a listener's K outgoing streams: a send-only audio line in the answer.
pub(crate) struct Slot {
    pub mid: Mid,
    pub ssrc: Ssrc,
    pub pt: Pt,
    pub rewriter: SeqRewriter,
    /// Its context for sealing copies without the session (`crate::direct_send`).
    pub direct: DirectSlot,
}

/// Voice flags that decide whether this participant is forwarded and hears anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VoiceFlags {
    pub self_mute: bool,
    pub self_deaf: bool,
    pub server_mute: bool,
    pub server_deaf: bool,
    /// Holds the channel's SPEAK permission.
    pub can_speak: bool,
}

impl VoiceFlags {
    pub fn forwardable(&self) -> bool {
        self.can_speak && !self.self_mute && !self.server_mute
    }
    pub fn deaf(&self) -> bool {
        self.self_deaf || self.server_deaf
    }
}

/// Most remote addresses remembered per participant.
pub(crate) const MAX_REMOTES: usize = 8;

/// One participant of a room, whatever carries its media.
pub(crate) struct Participant {
    pub user: UserId,
    pub room: RoomId,
    pub level: SpeakerLevel,
    pub flags: VoiceFlags,
    pub stats: ParticipantStats,
    pub rate: TokenBucket,
    pub last_recv: Option<Instant>,
    /// The SSRC native listeners hear this participant under (its `user_ssrc`: the one a
    /// native client announces in Ready and op 5 maps to the user).
    pub voice_ssrc: Ssrc,
    /// Its voice is DAVE-encrypted: set by a DAVE frame, cleared by a plain Opus frame longer
    /// than silence (`F8 FF FE` is never encrypted, so silence leaves it as it is). Listeners
    /// that cannot decrypt it keep their slots for someone they can hear (the tick).
    pub sends_dave: bool,
    pub kind: Kind,
}

/// What carries a participant's media; each kind holds only the state it uses.
///
// The WebRTC variant is large (str0m's `Rtc`, ~10 KB) and stays inline, as `Option<Rtc>` was:
// boxing it would add a pointer chase per listener on the forward path to save memory only on
// remote speakers, which are few.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Kind {
    /// A browser or game client on WebRTC: a str0m session, addresses, K slots.
    WebRtc(WebRtcPeer),
    /// A speaker connected to another node whose packets a trunk delivers: ranked and
    /// forwarded like a local speaker, but no session, no slots, never timed out.
    Remote(RemoteSpeaker),
    /// A game client or bot on Discord's native UDP voice (docs/design/NATIVE-VOICE.md): one
    /// address, AEAD transport encryption, and the loudest K speakers under their own SSRCs.
    Native(NativePeer),
}

pub(crate) struct NativePeer {
    pub guild: GuildId,
    /// Where its packets come from and ours go: set by IP discovery until an authenticated
    /// packet proves an address, then only by authenticated packets (NAT rebinding).
    pub addr: Option<SocketAddr>,
    /// An authenticated packet came from `addr`.
    pub addr_proven: bool,
    pub cipher: TransportCipher,
    pub replay: ReplayWindow,
    /// The nonce counter of the next packet sent to it.
    pub send_counter: u32,
    /// Speakers it hears at once (its slots in the slot map; no SSRC of their own).
    pub k: usize,
    pub joined_at: Instant,
    /// Budget for trying to authenticate packets from unknown addresses as this peer's.
    pub rebind: TokenBucket,
    /// Its client does DAVE (announced `max_dave_protocol_version` ≥ 1): it may get DAVE
    /// frames.
    pub dave: bool,
    /// How its voice reaches us (sequence, loss, jitter): reported back when it sends an SR.
    pub reception: Reception,
}

pub(crate) struct WebRtcPeer {
    /// Private: every `&mut` use goes through a method here that first reports the slots'
    /// direct sends to it and says whether their contexts stay valid.
    rtc: Rtc,
    /// What the slots' direct sends share (`crate::direct_send`).
    pub direct: DirectSession,
    /// The room's guild (counted against the per-guild bound).
    pub guild: GuildId,
    /// Our ICE username fragment: STUN requests name it, so it finds this peer.
    pub ufrag: String,
    /// Addresses that passed a STUN check for this participant, with the transport they came
    /// on (ICE checks every candidate pair, UDP and ICE-TCP, so media may come from any of
    /// them). Bounded by `MAX_REMOTES`.
    pub remotes: Vec<(Transport, SocketAddr)>,
    pub opus_pt: Pt,
    /// The listener's speaker slots; who is in each is kept by the node's `SlotMap`.
    pub slots: Vec<Slot>,
    pub joined_at: Instant,
    /// ICE and DTLS completed.
    pub connected: bool,
    /// When the session next wants `Input::Timeout`.
    pub next_timeout: Instant,
    /// The time of this participant's live entry in the node's timer queue.
    pub armed: Option<Instant>,
    /// The session closed or failed: the next reap removes it.
    pub gone: bool,
}

impl WebRtcPeer {
    pub fn new(
        rtc: Rtc,
        guild: GuildId,
        ufrag: String,
        opus_pt: Pt,
        slots: Vec<Slot>,
        now: Instant,
    ) -> WebRtcPeer {
        WebRtcPeer {
            rtc,
            direct: DirectSession::default(),
            guild,
            ufrag,
            remotes: Vec::new(),
            opus_pt,
            slots,
            joined_at: now,
            connected: false,
            next_timeout: now,
            armed: None,
            gone: false,
        }
    }

    pub fn rtc(&self) -> &Rtc {
        &self.rtc
    }

    /// The session, for anything that may change its send state (timeouts, queued writes,
    /// disconnecting, and every datagram but media): the slots' direct sends are reported to
    /// it first, and their contexts are read again before the next (the call may change an
    /// address, a key or a header).
    pub fn rtc_mut(&mut self) -> &mut Rtc {
        self.report_direct();
        self.direct.invalidate();
        &mut self.rtc
    }

    /// The session, for one incoming datagram and the drain of outputs that follows it.
    /// `media`: an SRTP media packet (RTP, not RTCP), after which the slots' contexts stay
    /// valid; anything else is [`WebRtcPeer::rtc_mut`]. str0m changes no send state on media:
    /// addresses change on STUN checks (and the drain after them), keys on DTLS records, the
    /// MID acknowledgement on receiver reports (RTCP), the state on timeouts and closes; and
    /// every drain runs to its end, so nothing an earlier input queued is left for this one.
    /// Without this a listener that also speaks (50 packets a second) would make its slots
    /// read their contexts again before almost every copy.
    pub fn rtc_for_datagram(&mut self, media: bool) -> &mut Rtc {
        if !media {
            return self.rtc_mut();
        }
        self.report_direct();
        &mut self.rtc
    }

    /// Hands `buf` to the session for its next datagram (`Rtc::recycle_buffer`); the buffer
    /// back if it has enough. Changes nothing a direct-send context holds.
    pub fn recycle_buffer(&mut self, buf: Vec<u8>) -> Option<Vec<u8>> {
        self.rtc.recycle_buffer(buf)
    }

    /// Slot `ix`'s copy through the session (`Rtc::send_rtp_now`), after the slots' direct
    /// sends are reported (a packet's counts must follow theirs). Keeps the contexts valid:
    /// the call changes nothing they hold, except that the slot's first packet sets its
    /// stream's clock rate, after which a context declined for the lack of it may be given.
    // str0m's own signature: the write comes back whole for the queued path.
    #[allow(clippy::result_large_err)]
    pub fn send_rtp_now(
        &mut self,
        ix: usize,
        now: Instant,
        write: RtpWrite,
    ) -> Result<Option<str0m::net::Transmit>, RtpWrite> {
        self.report_direct();
        let Some(slot) = self.slots.get_mut(ix) else {
            return Ok(None);
        };
        let sent = self.rtc.send_rtp_now(now, slot.mid, write)?;
        if sent.is_some() {
            slot.direct.sent_through_session();
        }
        Ok(sent)
    }

    /// Tells the session what the slots sent directly since it was last told.
    fn report_direct(&mut self) {
        for s in &mut self.slots {
            if let Some(sent) = s.direct.take_sent() {
                self.rtc.note_sent_rtp(s.mid, &sent);
            }
        }
    }

    /// Slot `ix`'s copy written and sealed directly into a buffer from `pool`, or `None`
    /// where the session has to send it (`crate::direct_send`).
    pub fn send_direct(
        &mut self,
        ix: usize,
        now: Instant,
        copy: &DirectCopy<'_>,
        pool: &mut BufPool,
        reads: &mut u64,
    ) -> Option<Transmit> {
        let WebRtcPeer {
            rtc, direct, slots, ..
        } = self;
        let slot = slots.get_mut(ix)?;
        let (mid, pt) = (slot.mid, slot.pt);
        let mut contents = pool.take_or_new();
        let sent = slot.direct.send(
            direct,
            || rtc.send_context(mid, pt),
            now,
            copy,
            &mut contents,
            reads,
        );
        let Some((transport, destination)) = sent else {
            pool.put(contents);
            return None;
        };
        Some(Transmit {
            transport,
            destination,
            contents,
        })
    }
}

pub(crate) struct RemoteSpeaker {
    /// The SSRC its packets carry inside this node (the slot rewriter tells sources apart by
    /// it).
    pub ssrc: u32,
}

impl Participant {
    pub fn is_remote(&self) -> bool {
        matches!(self.kind, Kind::Remote(_))
    }

    /// Media can flow: a WebRTC peer completed ICE + DTLS; a native peer has an address; a
    /// remote speaker always can.
    pub fn connected(&self) -> bool {
        match &self.kind {
            Kind::WebRtc(w) => w.connected,
            Kind::Native(n) => n.addr.is_some(),
            Kind::Remote(_) => true,
        }
    }

    /// How many speakers it hears at once (none for a remote speaker, which listens on its
    /// own node).
    pub fn slot_count(&self) -> usize {
        match &self.kind {
            Kind::WebRtc(w) => w.slots.len(),
            Kind::Native(n) => n.k,
            Kind::Remote(_) => 0,
        }
    }

    /// It can decrypt DAVE frames: only a native client that announced DAVE. The browser
    /// client has no DAVE, so a WebRTC listener never can.
    pub fn hears_dave(&self) -> bool {
        matches!(&self.kind, Kind::Native(n) if n.dave)
    }

    /// The SSRC a WebRTC listener's slot `n` carries, announced by op 5 when its speaker
    /// changes. Native listeners have none: they hear every speaker under the speaker's own
    /// SSRC, announced once per user.
    pub fn slot_ssrc(&self, n: usize) -> Option<Ssrc> {
        match &self.kind {
            Kind::WebRtc(w) => w.slots.get(n).map(|s| s.ssrc),
            Kind::Native(_) | Kind::Remote(_) => None,
        }
    }
}
