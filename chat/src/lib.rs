//! Lodge's guild model: accounts, guilds, channels, roles, members, invites and Discord's
//! permission computation, stored through sqlx (SQLite file by default).
//!
//! This crate knows nothing of HTTP, WebSocket or JSON; the signaling crate shapes the wire.

pub mod bans;
pub mod error;
pub mod invites;
mod member_search;
pub mod messages;
pub mod model;
pub mod names;
pub mod password;
pub mod permissions;
pub mod quality;
pub mod snowflake;
pub mod store;

pub use bans::{Ban, BanEffect, BanQuery};
pub use error::ChatError;
pub use lodge_ids::{ChannelId, GuildId, MessageId, RoleId, UserId};
pub use model::*;
pub use permissions::{Overwrite, OverwriteKind, Permissions};
pub use quality::{CallQuery, CallSummary};
pub use store::{token_hash, RoleSpec, Store};
