//! What the node hands its shell: datagrams, events for signaling, cascade exports.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::ids::{ParticipantIdx, RoomId, Ssrc, UserId};
use crate::stats::ParticipantStats;

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

/// How a datagram reached the node, or how it must leave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// The media port's UDP socket: every kind of participant.
    Udp,
    /// An ICE-TCP connection accepted on the media port's number (RFC 6544 passive candidate,
    /// RFC 4571 framing; the shell frames and deframes): WebRTC participants only. The
    /// connection is named by its peer's address, which is unique per connection.
    Tcp,
}

/// A datagram to send: on the media socket ([`Transport::Udp`]) or framed on the ICE-TCP
/// connection whose peer is `destination` ([`Transport::Tcp`]; gone = dropped by the shell).
#[derive(Debug)]
pub struct Transmit {
    pub transport: Transport,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

impl Transport {
    /// The transport of a str0m transmit. The node only ever adds UDP and (passive) TCP host
    /// candidates, so str0m never sends on the other protocols it knows (SSL-TCP, TLS, which
    /// only TURN relays use).
    pub(crate) fn of(proto: str0m::net::Protocol) -> Transport {
        match proto {
            str0m::net::Protocol::Tcp => Transport::Tcp,
            _ => Transport::Udp,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// A speaker's packet for other nodes (cascading): emitted for rooms marked with
/// [`Node::set_exported`](super::Node::set_exported) while the speaker talks or holds a seat in the ranking.
#[derive(Debug, Clone)]
pub struct Export {
    pub room: RoomId,
    pub from: ParticipantIdx,
    pub user: UserId,
    /// The SSRC native listeners hear the speaker under (its `user_ssrc`), for the other
    /// node's op 5 to name.
    pub voice_ssrc: Ssrc,
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
