//! Per-participant and node-wide counters. Plain integers, updated in place on the hot path.

use serde::Serialize;

use crate::drop_reason::DropCounters;

/// What one participant sent and received, plus the latest RTCP-derived quality figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ParticipantStats {
    /// RTP packets/bytes received from this participant (its voice).
    pub packets_in: u64,
    pub bytes_in: u64,
    /// RTP packets/bytes forwarded to this participant (its slots).
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Fraction of this participant's packets lost on the way to us (0..1), from our receiver side.
    pub loss_in: Option<f32>,
    /// Fraction of our packets the participant reports lost (0..1), from its receiver reports.
    pub loss_out: Option<f32>,
    /// Interarrival jitter of the participant's stream, in milliseconds.
    pub jitter_in_ms: Option<f32>,
    /// Jitter the participant reports for what we send, in milliseconds.
    pub jitter_out_ms: Option<f32>,
    /// Round-trip time from RTCP, in milliseconds.
    pub rtt_ms: Option<f32>,
    /// Times a slot of this participant changed speaker.
    pub slot_switches: u64,
    /// Datagrams from this participant that were not used, by reason.
    #[serde(skip)]
    pub drops: DropCounters,
}

/// Node-wide counters.
#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    /// Of those, copies written and sealed in the forward loop from the slot's context
    /// instead of through the listener's session (`NodeConfig::direct_send`).
    pub rtp_direct: u64,
    /// Times a slot read its direct-send context from its session (its first copy, and the
    /// first after anything that may have changed the session's send state).
    pub direct_context_reads: u64,
    /// Forwarded packets str0m could not send directly (`Rtc::send_rtp_now` declined, e.g.
    /// before the session connected): written to its queue instead.
    pub rtp_queued: u64,
    /// Of those, packets str0m did not transmit in the same call (left queued for later).
    pub rtp_deferred: u64,
    /// Speaker packets handed to trunks for other nodes (one per packet, not per node).
    pub exported: u64,
    /// IP discovery requests answered, and keepalives from native participants (datagrams
    /// used without being RTP).
    pub native_discovery: u64,
    pub native_keepalives: u64,
    /// Sender reports from native participants, each answered with a receiver report.
    pub native_reports: u64,
    /// Speaker packets whose payload is a DAVE frame (end-to-end encrypted; forwarded opaque).
    pub dave_frames_in: u64,
    /// Of `datagrams_in`/`datagrams_out`: RFC 4571 frames on ICE-TCP connections.
    pub tcp_frames_in: u64,
    pub tcp_frames_out: u64,
    pub drops: DropCounters,
}
