//! The guild model's nouns. Plain data: the signaling crate decides their JSON shape.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: u64,
    pub username: String,
    pub bot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guild {
    pub id: u64,
    pub name: String,
    pub owner_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub id: u64,
    pub guild_id: u64,
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
    pub id: u64,
    pub guild_id: u64,
    pub kind: ChannelKind,
    pub name: String,
    pub position: i64,
    pub parent_id: Option<u64>,
    pub bitrate: Option<u32>,
    pub user_limit: Option<u32>,
    pub topic: Option<String>,
    pub overwrites: Vec<crate::permissions::Overwrite>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub guild_id: u64,
    pub user: User,
    pub nick: Option<String>,
    pub roles: Vec<u64>,
    /// Unix milliseconds.
    pub joined_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub code: String,
    pub guild_id: u64,
    pub channel_id: u64,
    pub inviter_id: u64,
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
    pub parent_id: Option<Option<u64>>,
    pub position: Option<i64>,
    pub bitrate: Option<u32>,
    pub user_limit: Option<u32>,
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
    pub id: u64,
    pub channel_id: u64,
    pub guild_id: u64,
    pub author: User,
    pub content: String,
    pub nonce: Option<String>,
    pub tts: bool,
    pub mention_everyone: bool,
    pub mentions: Vec<User>,
    pub mention_roles: Vec<u64>,
    /// (message id, channel id) this message replies to.
    pub reference: Option<(u64, u64)>,
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
    pub reference: Option<(u64, u64)>,
}

/// Which page of a channel's history.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageQuery {
    pub limit: u32,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub around: Option<u64>,
}
