//! Lodge's edge relay agents: the QUIC trunk between a channel's origin node and the edges that
//! terminate callers in other regions (cascading, not tunnelling: each remote speaker crosses a
//! trunk once per edge and fans out at the edge).
//!
//! - [`wire`]: the trunk's datagram header (10 bytes) and control messages.
//! - [`repair`]: NACK-based loss repair (sender history, receiver gap tracking), sans-IO.
//! - [`session`]: one trunk's protocol state, sans-IO: streams, numbering, limits, counters.
//! - [`tls`]: the trunk's TLS: a node identity (self-signed certificate) and certificate pinning.
//! - [`trunk`]: the quinn shell: an origin listener, an edge connector, and a driver task.
//! - [`cascade`]: joins a media node's exports and remote speakers to its trunks: a sans-IO
//!   [`cascade::CascadeCore`] (which speaker goes on which trunk, which stream is which remote
//!   speaker, interest, idle streams) under a tokio shell (the trunks' queues, the node's handle).

pub mod cascade;
pub mod error;
pub mod repair;
pub mod session;
pub mod tls;
pub mod trunk;
pub mod wire;

pub use error::EdgeError;
pub use repair::{ReceiveStats, RepairConfig};
pub use session::{Delivered, Notice, TrunkCounters, TrunkSession};
pub use wire::{Control, Media, PeerNode, VoiceGrant};
