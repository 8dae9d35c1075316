//! A participant: one WebRTC peer in one room, with its speaker slots.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::media::{Mid, Pt};
use str0m::Rtc;

use crate::ids::{GuildId, RoomId, Ssrc, UserId};
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

pub(crate) struct Participant {
    pub user: UserId,
    pub room: RoomId,
    /// The room's guild, for a participant on WebRTC (counted against the per-guild bound);
    /// `None` for a remote speaker, which no bound counts.
    pub guild: Option<GuildId>,
    /// The WebRTC session; `None` for a remote speaker fed by a trunk from another node.
    pub rtc: Option<Rtc>,
    /// For a remote speaker: the SSRC its packets carry inside this node.
    pub remote_ssrc: u32,
    pub ufrag: String,
    /// Addresses that passed a STUN check for this participant (ICE checks every candidate
    /// pair, so media may come from any of them). Bounded by `MAX_REMOTES`.
    pub remotes: Vec<SocketAddr>,
    pub opus_pt: Pt,
    pub slots: Vec<Slot>,
    pub level: SpeakerLevel,
    pub flags: VoiceFlags,
    pub stats: ParticipantStats,
    pub rate: TokenBucket,
    pub joined_at: Instant,
    pub last_recv: Option<Instant>,
    pub connected: bool,
    pub next_timeout: Instant,
    /// The time of this participant's live entry in the node's timer queue.
    pub armed: Option<Instant>,
    pub gone: bool,
}
