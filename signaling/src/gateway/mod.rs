//! The gateway (v10, JSON): Hello, Identify → READY + GUILD_CREATE, Heartbeat, op 4 voice state
//! updates, and dispatches from the hub filtered by guild membership, intents and VIEW_CHANNEL.

pub mod client_op;
mod member_chunks;
pub(crate) mod opcode;
pub mod payloads;
pub mod presence;
pub mod registry;
mod session;
mod session_filter;
pub mod session_start;
pub mod takeover;
pub mod visibility;

pub use client_op::MAX_PAYLOAD;
pub use opcode::{payload, Opcode, UnknownOpcode};
pub use session::{end_sessions_of, invalidate_route, ws_handler};
pub use takeover::{session_moved, Moved};

/// Client payloads allowed per [`RATE_WINDOW`] before closing with 4008.
pub const RATE_LIMIT: usize = 120;
pub const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Discord's gateway close codes that Lodge uses.
pub mod close {
    pub const UNKNOWN_ERROR: u16 = 4000;
    pub const UNKNOWN_OPCODE: u16 = 4001;
    pub const DECODE_ERROR: u16 = 4002;
    pub const NOT_AUTHENTICATED: u16 = 4003;
    pub const AUTHENTICATION_FAILED: u16 = 4004;
    pub const ALREADY_AUTHENTICATED: u16 = 4005;
    pub const INVALID_SEQ: u16 = 4007;
    pub const RATE_LIMITED: u16 = 4008;
    pub const SESSION_TIMED_OUT: u16 = 4009;
    pub const INVALID_SHARD: u16 = 4010;
    pub const INVALID_API_VERSION: u16 = 4012;
    pub const INVALID_INTENTS: u16 = 4013;
    pub const DISALLOWED_INTENTS: u16 = 4014;
}

/// Intent bits (Discord's). Which one each event needs is `DispatchKind::intent`.
pub mod intents {
    pub const GUILDS: u64 = 1 << 0;
    pub const GUILD_MEMBERS: u64 = 1 << 1;
    pub const GUILD_MODERATION: u64 = 1 << 2;
    pub const GUILD_VOICE_STATES: u64 = 1 << 7;
    pub const GUILD_PRESENCES: u64 = 1 << 8;
    pub const GUILD_MESSAGES: u64 = 1 << 9;
    pub const GUILD_MESSAGE_REACTIONS: u64 = 1 << 10;
    pub const GUILD_MESSAGE_TYPING: u64 = 1 << 11;
    pub const MESSAGE_CONTENT: u64 = 1 << 15;
    pub const ALL: u64 = (1 << 26) - 1;
    /// Intents Discord makes each application enable (MESSAGE_CONTENT is not privileged on
    /// Lodge).
    pub const PRIVILEGED: u64 = GUILD_MEMBERS | GUILD_PRESENCES;
}
