//! Per-participant figures for logs and the JSON endpoint.

use super::Node;
use crate::ids::{ParticipantIdx, RoomId, UserId};
use crate::stats::ParticipantStats;

/// A participant's figures for logs and the JSON endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParticipantReport {
    pub idx: u32,
    #[serde(serialize_with = "lodge_ids::as_string")]
    pub user: UserId,
    pub room: RoomId,
    pub connected: bool,
    pub self_mute: bool,
    pub server_mute: bool,
    pub deaf: bool,
    pub can_speak: bool,
    pub speaking_level: f32,
    pub slots: Vec<SlotReport>,
    pub stats: ParticipantStats,
    pub drops: Vec<(&'static str, u64)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotReport {
    pub ssrc: u32,
    #[serde(serialize_with = "lodge_ids::option_as_string")]
    pub speaker: Option<UserId>,
}

impl Node {
    /// Snapshot of every local (WebRTC or native) participant's figures (for logs and the JSON endpoint; remote
    /// speakers are counted by [`Node::remote_count`], not listed).
    pub fn reports(&self) -> Vec<ParticipantReport> {
        let user_of = |i: ParticipantIdx| self.participant(i).map(|p| p.user);
        self.participants
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().filter(|p| !p.is_remote()).map(|p| (i, p)))
            .map(|(i, p)| ParticipantReport {
                idx: i as u32,
                user: p.user,
                room: p.room,
                connected: p.connected(),
                self_mute: p.flags.self_mute,
                server_mute: p.flags.server_mute,
                deaf: p.flags.deaf(),
                can_speak: p.flags.can_speak,
                speaking_level: p.level.loudness(),
                // A WebRTC slot has an SSRC of its own; a native listener hears each speaker
                // under the speaker's SSRC (0 while the slot is empty).
                slots: self
                    .slot_map
                    .speakers(ParticipantIdx(i as u32))
                    .iter()
                    .enumerate()
                    .map(|(n, speaker)| SlotReport {
                        ssrc: p.slot_ssrc(n).map_or_else(
                            || {
                                speaker
                                    .and_then(|s| self.participant(s))
                                    .map_or(0, |s| s.voice_ssrc.0)
                            },
                            |s| s.0,
                        ),
                        speaker: speaker.and_then(user_of),
                    })
                    .collect(),
                stats: p.stats.clone(),
                drops: p
                    .stats
                    .drops
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| (r.as_str(), n))
                    .collect(),
            })
            .collect()
    }
}
