//! The guild model's nouns. Plain data: the signaling crate decides their JSON shape.

use lodge_ids::{ChannelId, GuildId, MessageId, RoleId, UserId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub bot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guild {
    pub id: GuildId,
    pub name: String,
    pub owner_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub id: RoleId,
    pub guild_id: GuildId,
    pub name: String,
    pub permissions: u64,
    pub position: i64,
    pub color: u32,
}

/// Channel types (Discord's numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Text = 0,
    Voice = 2,
    Category = 4,
}

impl ChannelKind {
    pub fn from_code(c: i64) -> Option<Self> {
        match c {
            0 => Some(ChannelKind::Text),
            2 => Some(ChannelKind::Voice),
            4 => Some(ChannelKind::Category),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub id: ChannelId,
    pub guild_id: GuildId,
    pub kind: ChannelKind,
    pub name: String,
    pub position: i64,
    pub parent_id: Option<ChannelId>,
    pub bitrate: Option<u32>,
    pub user_limit: Option<u32>,
    /// Voice gateway clients that do not support DAVE (end-to-end encryption) are refused
    /// (close 4017). Always false on a channel that is not a voice channel.
    pub require_dave: bool,
    pub topic: Option<String>,
    pub overwrites: Vec<crate::permissions::Overwrite>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub guild_id: GuildId,
    pub user: User,
    pub nick: Option<String>,
    pub roles: Vec<RoleId>,
    /// Unix milliseconds.
    pub joined_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub code: String,
    pub guild_id: GuildId,
    pub channel_id: ChannelId,
    pub inviter_id: UserId,
    pub max_uses: u32,
    pub uses: u32,
    /// Unix milliseconds, or never.
    pub expires_at: Option<i64>,
}

/// Fields a channel create/update may carry.
#[derive(Debug, Clone, Default)]
pub struct ChannelSpec {
    pub name: Option<String>,
    pub kind: Option<ChannelKind>,
    pub parent_id: Option<Option<ChannelId>>,
    pub position: Option<i64>,
    pub bitrate: Option<u32>,
    pub user_limit: Option<u32>,
    /// Voice channels only: `Some(true)` for any other kind is refused.
    pub require_dave: Option<bool>,
    pub topic: Option<Option<String>>,
    /// Overwrites a new channel starts with (create only; the caller has checked them).
    pub overwrites: Vec<crate::permissions::Overwrite>,
}

/// A reaction on a message as one viewer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactionCount {
    pub emoji: String,
    pub count: u32,
    /// The viewer reacted with this emoji.
    pub me: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub channel_id: ChannelId,
    pub guild_id: GuildId,
    pub author: User,
    pub content: String,
    pub nonce: Option<String>,
    pub tts: bool,
    pub mention_everyone: bool,
    pub mentions: Vec<User>,
    pub mention_roles: Vec<RoleId>,
    /// (message id, channel id) this message replies to.
    pub reference: Option<(MessageId, ChannelId)>,
    /// Unix milliseconds.
    pub edited_at: Option<i64>,
    pub created_at: i64,
    pub reactions: Vec<ReactionCount>,
}

/// What a new message carries; the caller has checked permissions.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    pub content: String,
    pub nonce: Option<String>,
    /// Return the earlier message with the same nonce from the same author instead of a new one.
    pub enforce_nonce: bool,
    pub tts: bool,
    /// The author may mention @everyone/@here (MENTION_EVERYONE).
    pub may_mention_everyone: bool,
    pub reference: Option<(MessageId, ChannelId)>,
}

/// Which page of a channel's history.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageQuery {
    pub limit: u32,
    pub before: Option<MessageId>,
    pub after: Option<MessageId>,
    pub around: Option<MessageId>,
}
