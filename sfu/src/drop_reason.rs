//! Every packet the node does not forward is counted under one typed reason.

use serde::Serialize;

/// Why a datagram or an RTP packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DropReason {
    /// Not STUN, DTLS, RTP or RTCP, or too short to be any of them.
    Malformed,
    /// Larger than the node accepts.
    Oversized,
    /// STUN whose username names no participant of this node.
    UnknownUsername,
    /// A non-STUN datagram from an address no participant has proven (via ICE) to own.
    UnknownPeer,
    /// The participant's WebRTC stack refused the datagram outright.
    Rejected,
    /// RTP from a known peer that did not authenticate or decrypt (SRTP), or a replay.
    DecryptFailed,
    /// The sender is self-muted or server-muted.
    Muted,
    /// The sender lacks the SPEAK permission in this channel.
    NoSpeakPermission,
    /// RTP on a media line that is not the participant's send line, or an unexpected codec.
    UnexpectedStream,
    /// An old packet that belongs before the slot's last speaker switch.
    Stale,
    /// The sender exceeded the per-participant packet rate.
    OverRate,
    /// A native (UDP mode) packet that authenticated but whose nonce counter was already
    /// accepted: a captured packet sent again.
    Replayed,
    /// A DAVE (end-to-end encrypted) frame not delivered to one listener that does not do
    /// DAVE: counted once per skipped delivery, not per packet (like `Stale`).
    DaveToNonDave,
    /// Something UDP only on an ICE-TCP connection: IP discovery, or a frame for a native
    /// (Discord UDP mode) participant. ICE-TCP is for WebRTC participants.
    NotOverTcp,
}

impl DropReason {
    /// All reasons, for exporting zeroes too.
    pub const ALL: [DropReason; 14] = [
        DropReason::Malformed,
        DropReason::Oversized,
        DropReason::UnknownUsername,
        DropReason::UnknownPeer,
        DropReason::Rejected,
        DropReason::DecryptFailed,
        DropReason::Muted,
        DropReason::NoSpeakPermission,
        DropReason::UnexpectedStream,
        DropReason::Stale,
        DropReason::OverRate,
        DropReason::Replayed,
        DropReason::DaveToNonDave,
        DropReason::NotOverTcp,
    ];

    /// Stable snake_case name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Oversized => "oversized",
            DropReason::UnknownUsername => "unknown_username",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::Rejected => "rejected",
            DropReason::DecryptFailed => "decrypt_failed",
            DropReason::Muted => "muted",
            DropReason::NoSpeakPermission => "no_speak_permission",
            DropReason::UnexpectedStream => "unexpected_stream",
            DropReason::Stale => "stale",
            DropReason::OverRate => "over_rate",
            DropReason::Replayed => "replayed",
            DropReason::DaveToNonDave => "dave_to_non_dave",
            DropReason::NotOverTcp => "not_over_tcp",
        }
    }

    fn index(self) -> usize {
        DropReason::ALL
            .iter()
            .position(|r| *r == self)
            .expect("ALL lists every reason")
    }
}

/// Fixed-size drop counters: no allocation when counting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    pub fn count(&mut self, reason: DropReason) {
        self.0[reason.index()] += 1;
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` pairs, every reason included.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }
}
