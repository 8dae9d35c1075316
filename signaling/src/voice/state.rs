//! A caller's voice state: who is in which voice channel with which flags, and where their
//! media is hosted. This is the shared part (stored through [`crate::shared::VoiceStates`], so
//! in a cluster every node reads the same one); the live voice connection and the media
//! participant belong to the home node alone (`conns.rs`).

use lodge_ids::{ChannelId, GuildId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::shared::RoomHome;

/// Where a caller's media is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Home {
    /// A node of the cluster hosts the room (with one node: this node). The epoch is the
    /// room's placement epoch when the caller was sent there.
    Node(RoomHome),
    /// An edge hosts the caller, reached through the node `via` (the room's home, which holds
    /// a trunk from the edge named `edge`; alone, this node).
    Edge { via: RoomHome, edge: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoiceState {
    // Stored as JSON numbers (the ids are serde-transparent): `channel_marker` relies on it.
    pub guild_id: GuildId,
    pub channel_id: ChannelId,
    pub user_id: UserId,
    pub session_id: String,
    pub self_mute: bool,
    pub self_deaf: bool,
    pub mute: bool,
    pub deaf: bool,
    pub can_speak: bool,
    pub home: Home,
    /// Which placement of the caller this is: a new one with every voice token. The voice
    /// connection opened with that token carries it, so ending an older placement never
    /// closes a newer connection.
    pub generation: u64,
    /// The voice connection of this generation identified at the home.
    pub connected: bool,
    /// The region the caller asked for (kept to re-place them if their edge dies).
    pub region: String,
}

impl VoiceState {
    pub fn json(&self) -> Value {
        json!({
            "guild_id": self.guild_id.to_string(),
            "channel_id": self.channel_id.to_string(),
            "user_id": self.user_id.to_string(),
            "session_id": self.session_id,
            "deaf": self.deaf,
            "mute": self.mute || !self.can_speak,
            "self_deaf": self.self_deaf,
            "self_mute": self.self_mute,
            "self_stream": false,
            "self_video": false,
            "suppress": !self.can_speak,
            "request_to_speak_timestamp": null,
        })
    }

    pub fn flags(&self) -> lodge_sfu::VoiceFlags {
        lodge_sfu::VoiceFlags {
            self_mute: self.self_mute,
            self_deaf: self.self_deaf,
            server_mute: self.mute,
            server_deaf: self.deaf,
            can_speak: self.can_speak,
        }
    }
}

/// The text that the stored form of every state in `channel_id` contains and no other state's
/// does: the serialized `channel_id` field with the comma that ends it. The shared store counts
/// a channel's states with it (inside one atomic script on Redis), so it must follow the field
/// order of [`VoiceState`]; a test below holds the two together.
pub fn channel_marker(channel_id: ChannelId) -> String {
    format!("\"channel_id\":{channel_id},")
}

/// VOICE_STATE_UPDATE for a user who left (`channel_id: null`).
pub fn left_json(guild_id: GuildId, user_id: UserId, session_id: &str) -> Value {
    json!({
        "guild_id": guild_id.to_string(), "channel_id": null, "user_id": user_id.to_string(), "session_id": session_id,
        "deaf": false, "mute": false, "self_deaf": false, "self_mute": false, "self_video": false, "suppress": false,
        "request_to_speak_timestamp": null,
    })
}

/// What a voice token stands for (stored with the token; redeemed once, on the home node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingToken {
    pub user_id: UserId,
    pub guild_id: GuildId,
    pub channel_id: ChannelId,
    pub session_id: String,
    pub generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_marker_matches_the_stored_form_of_a_state_in_that_channel_only() {
        let st = VoiceState {
            guild_id: GuildId(1),
            channel_id: ChannelId(42),
            user_id: UserId(7),
            session_id: "s".into(),
            self_mute: false,
            self_deaf: false,
            mute: false,
            deaf: false,
            can_speak: true,
            home: Home::Edge {
                via: RoomHome {
                    node: crate::shared::NodeId("n1".into()),
                    epoch: 2,
                },
                edge: "eu-1".into(),
            },
            generation: 1,
            connected: false,
            region: String::new(),
        };
        let raw = serde_json::to_string(&st).unwrap();
        assert!(raw.contains(&channel_marker(ChannelId(42))), "{raw}");
        assert!(!raw.contains(&channel_marker(ChannelId(4))), "{raw}");
        // The stored form keeps the ids as JSON numbers, as when they were bare u64.
        assert!(
            raw.starts_with(r#"{"guild_id":1,"channel_id":42,"user_id":7,"session_id":"s","#),
            "{raw}"
        );
        assert_eq!(channel_marker(ChannelId(42)), r#""channel_id":42,"#);
        assert!(!raw.contains(&channel_marker(ChannelId(420))), "{raw}");
        let other = VoiceState {
            channel_id: ChannelId(420),
            ..st
        };
        let raw = serde_json::to_string(&other).unwrap();
        assert!(!raw.contains(&channel_marker(ChannelId(42))), "{raw}");
        // A caller-chosen string (the region hint) cannot forge the marker: quotes in it are
        // escaped.
        let forged = VoiceState {
            region: "\"channel_id\":42,".into(),
            ..other
        };
        let raw = serde_json::to_string(&forged).unwrap();
        assert!(!raw.contains(&channel_marker(ChannelId(42))), "{raw}");
    }
}
