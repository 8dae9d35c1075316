//! Lodge's selective forwarding unit.
//!
//! The [`Node`] is a sans-IO state machine: it owns every participant's str0m `Rtc`
//! (ICE-lite, DTLS-SRTP, RTP mode), demultiplexes datagrams by STUN username and then by source
//! address, ranks speakers by their RFC 6464 audio level and forwards Opus packets, rewritten,
//! into each listener's K speaker slots. It never reads the clock, opens a socket or spawns a
//! task: `now` is always passed in. The optional `shell` feature adds the tokio loop (the UDP
//! media socket and, beside it, the ICE-TCP listener on the same port number).
//!
//! ```
//! use std::time::Instant;
//! use lodge_sfu::{Node, NodeConfig};
//! let mut node = Node::new(NodeConfig::new("127.0.0.1:50000".parse().unwrap()));
//! let now = Instant::now();
//! // A datagram nobody owns is counted, never a panic.
//! node.handle_datagram(now, "127.0.0.1:9".parse().unwrap(), "127.0.0.1:50000".parse().unwrap(), b"junk");
//! assert_eq!(node.stats().drops.total(), 1);
//! assert!(node.poll_output().is_none());
//! ```

#[cfg(feature = "shell")]
mod admission;
mod buf_pool;
mod direct_send;
pub mod drop_reason;
pub mod error;
pub mod ids;
pub mod native;
pub mod node;
mod participant;
mod prefetch;
pub mod rate_limit;
mod room;
pub mod seq_rewriter;
mod slot_map;
pub mod speaker_selector;
pub mod stats;
pub mod stun;
pub mod tcp_framing;
mod timers;

#[cfg(feature = "shell")]
pub mod ice_tcp;
#[cfg(feature = "shell")]
pub mod send_batch;
#[cfg(feature = "shell")]
pub mod shell;
#[cfg(feature = "shell")]
pub mod workers;

pub use drop_reason::{DropCounters, DropReason};
pub use error::SfuError;
pub use ids::{GuildId, ParticipantIdx, RoomId, Ssrc, UserId};
pub use node::{
    Export, JoinAnswer, JoinRequest, LeaveReason, NativeAnswer, NativeJoin, Node, NodeConfig,
    NodeEvent, NodeOutput, ParticipantReport, RemotePacket, SlotInfo, Transmit, Transport,
    MAX_SLOTS, NATIVE_OPUS_PT,
};
pub use participant::VoiceFlags;
