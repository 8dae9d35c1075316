//! The sfu crate's one error type.

use crate::ids::{GuildId, ParticipantIdx, RoomId, UserId};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    #[error("invalid SDP offer: {0}")]
    InvalidSdp(String),
    #[error(
        "the offer must carry exactly 1 send audio transceiver and 1 to {max} recv-only audio \
         transceivers (speaker slots); it carries {send} sending and {recv} recv-only"
    )]
    BadTransceivers {
        send: usize,
        recv: usize,
        max: usize,
    },
    #[error("the offer must carry audio only; media line {mid} is {kind}")]
    NotAudio { mid: String, kind: String },
    #[error("the offer does not offer Opus on every audio line; Lodge forwards Opus only")]
    NoOpus,
    #[error("the node is full: at most {limit} participants (max_participants)")]
    NodeFull { limit: usize },
    #[error("{room} is full: at most {limit} participants (max_room_size)")]
    RoomFull { room: RoomId, limit: usize },
    /// Connected or still connecting.
    #[error(
        "user {user} already has {limit} participants on this node (max_participants_per_user)"
    )]
    UserLimit { user: UserId, limit: usize },
    /// Connected or still connecting.
    #[error(
        "guild {guild} already has {limit} participants on this node (max_participants_per_guild)"
    )]
    GuildLimit { guild: GuildId, limit: usize },
    #[error("a native participant hears 1 to {max} speakers at once; asked for {asked}")]
    BadSlots { asked: usize, max: usize },
    /// Two (guild, user) pairs whose SSRCs collide, or one already joined natively.
    #[error("SSRC {0} is already in use on this node; leave the other voice connection first")]
    SsrcInUse(u32),
    #[error("no participant {0}")]
    UnknownParticipant(ParticipantIdx),
    #[error("WebRTC failure: {0}")]
    Rtc(String),
}

impl SfuError {
    /// A capacity limit refused the join (the request itself was fine).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            SfuError::NodeFull { .. }
                | SfuError::RoomFull { .. }
                | SfuError::UserLimit { .. }
                | SfuError::GuildLimit { .. }
        )
    }
}
