//! The node's limits and tunables.

use std::net::SocketAddr;
use std::time::Duration;

use crate::speaker_selector::SelectorConfig;

/// Limits and tunables of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Address put in the ICE host candidates (public IP + the media port): the UDP one, and
    /// with `ice_tcp` the passive TCP one.
    pub public_addr: SocketAddr,
    /// Offer every WebRTC participant a passive ICE-TCP host candidate on `public_addr` beside
    /// the UDP one (lower priority: browsers use it only when UDP fails). Only true when the
    /// shell listens on TCP there (the shell sets it from its listener); off by default.
    pub ice_tcp: bool,
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
    /// The same for a native (UDP mode) participant, which proves it is alive only by
    /// keepalives every 5 s while it does not speak (both Discord libraries): three missed.
    pub native_idle_timeout: Duration,
    /// A participant that has not completed ICE+DTLS after this long is removed. Honest
    /// clients take well under a second (ICE+DTLS p90 87 ms with 2,000 callers joining); a
    /// join that never connects holds a place in every bound until then.
    pub connect_timeout: Duration,
    pub selector: SelectorConfig,
    /// Fixed start of every slot's output numbering `(seq, timestamp)` instead of random
    /// (tests use it to force 16/32-bit wrap).
    pub slot_numbering_start: Option<(u16, u32)>,
    /// Prefetch every listener's state before a packet's fan-out (`prefetch.rs`). On by
    /// default; off only to measure what it saves (the forward bench's cache-cold rows).
    pub prefetch: bool,
    /// Write and seal WebRTC listeners' copies in the forward loop from each slot's context
    /// instead of through the listener's str0m session (`direct_send.rs`). On by default;
    /// off to compare (`lodge serve --media-direct-send false`, the forward bench).
    pub direct_send: bool,
}

impl NodeConfig {
    pub fn new(public_addr: SocketAddr) -> Self {
        NodeConfig {
            public_addr,
            ice_tcp: false,
            max_participants: 10_000,
            max_room_size: 1_000,
            max_participants_per_user: 4,
            max_participants_per_guild: 2_500,
            max_datagram: 1500,
            max_packet_rate: 400,
            idle_timeout: Duration::from_secs(6),
            native_idle_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(10),
            selector: SelectorConfig::default(),
            slot_numbering_start: None,
            prefetch: true,
            direct_send: true,
        }
    }
}
