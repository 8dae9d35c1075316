//! Small newtypes for the ids the core deals in.

use std::fmt;

/// Index of a participant in the node's slab. Hot-path handle; never leaves the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantIdx(pub u32);

/// A room is a voice channel on this node; the id is the channel's snowflake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub u64);

/// The guild a room belongs to (the node bounds participants per guild) and the user a
/// participant speaks for: the workspace's shared snowflake ids. They print as bare numbers
/// and serialize as JSON numbers; the sfu's reports write them as strings at the use site
/// (`serialize_with = "lodge_ids::as_string"`), as before.
pub use lodge_ids::{GuildId, UserId};

// Snowflakes exceed JavaScript's 2^53: serialize them as strings, as Discord does.
impl serde::Serialize for RoomId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// An RTP synchronization source as written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Ssrc(pub u32);

/// Bits of a [`ParticipantIdx`] below the media worker's number. A worker's node hands out
/// slab indices below `1 << WORKER_SHIFT`; outside the worker (signaling, the cascade) an index
/// carries its worker in the bits above, so one number names a participant node-wide. Worker 0's
/// indices are the node's own, unchanged.
pub const WORKER_SHIFT: u32 = 24;

/// Media workers a node can run (the worker number must fit above [`WORKER_SHIFT`]).
pub const MAX_WORKERS: usize = 1 << (32 - WORKER_SHIFT);

impl ParticipantIdx {
    /// The media worker this node-wide index belongs to.
    pub fn worker(self) -> usize {
        (self.0 >> WORKER_SHIFT) as usize
    }

    /// The index inside its worker's node.
    pub fn local(self) -> ParticipantIdx {
        ParticipantIdx(self.0 & ((1 << WORKER_SHIFT) - 1))
    }

    /// A worker node's (local) index as the node-wide one.
    pub fn on_worker(self, worker: usize) -> ParticipantIdx {
        debug_assert!(worker < MAX_WORKERS && self.0 < 1 << WORKER_SHIFT);
        ParticipantIdx(self.local().0 | ((worker as u32) << WORKER_SHIFT))
    }
}

impl fmt::Display for ParticipantIdx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.worker() {
            0 => write!(f, "p{}", self.0),
            w => write!(f, "p{}@w{w}", self.local().0),
        }
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "room {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{ParticipantReport, SlotReport};

    /// The node's JSON endpoint writes every snowflake as a string; the shared ids serialize
    /// as numbers by default, so the report fields say otherwise. Pin it.
    #[test]
    fn reports_write_snowflakes_as_strings() {
        let big = 1u64 << 60;
        let slot = SlotReport {
            ssrc: 5,
            speaker: Some(UserId(big)),
        };
        assert_eq!(
            serde_json::to_string(&slot).unwrap(),
            format!(r#"{{"ssrc":5,"speaker":"{big}"}}"#)
        );
        let empty = SlotReport {
            ssrc: 6,
            speaker: None,
        };
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            r#"{"ssrc":6,"speaker":null}"#
        );
        let p = ParticipantReport {
            idx: 1,
            user: UserId(big),
            room: RoomId(big + 1),
            connected: true,
            self_mute: false,
            server_mute: false,
            deaf: false,
            can_speak: true,
            speaking_level: 0.0,
            slots: vec![],
            stats: Default::default(),
            drops: vec![],
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["user"], serde_json::json!(big.to_string()));
        assert_eq!(v["room"], serde_json::json!((big + 1).to_string()));
    }
}
