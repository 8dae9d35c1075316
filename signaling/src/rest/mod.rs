//! REST API v10 (also served as v9).

pub mod admin;
pub mod auth;
pub mod bans;
pub mod channels;
pub mod guilds;
pub mod hierarchy;
pub mod messages;
pub mod ops;
pub mod overwrites;
pub mod quality;
pub mod roles;
pub mod users;

use axum::http::StatusCode;
use lodge_chat::{Channel, Guild, Permissions};
use lodge_ids::{ChannelId, GuildId, UserId};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// The guild, if the user is a member (403 Missing Access otherwise, as Discord answers).
pub async fn guild_for(state: &AppState, guild_id: u64, user_id: u64) -> ApiResult<Guild> {
    let g = state.store.guild(GuildId(guild_id)).await?;
    if g.owner_id != UserId(user_id)
        && !state
            .store
            .is_member(GuildId(guild_id), UserId(user_id))
            .await?
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            50001,
            "Missing Access",
        ));
    }
    Ok(g)
}

/// The channel and its guild, if the user can see it (VIEW_CHANNEL).
pub async fn channel_for(
    state: &AppState,
    channel_id: u64,
    user_id: u64,
) -> ApiResult<(Channel, Guild, Permissions)> {
    let c = state.store.channel(ChannelId(channel_id)).await?;
    let g = guild_for(state, c.guild_id.get(), user_id).await?;
    let p = state
        .store
        .permissions(&g, Some(&c), UserId(user_id))
        .await?;
    if !p.has(Permissions::VIEW_CHANNEL) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            50001,
            "Missing Access",
        ));
    }
    Ok((c, g, p))
}

pub fn require(p: Permissions, bits: u64, name: &str) -> ApiResult<()> {
    if p.has(bits) {
        Ok(())
    } else {
        Err(ApiError::missing_permissions(name))
    }
}

/// VIEW_CHANNEL answers for one request that asks about many channels (voice rooms), each
/// channel's guild, roles and the viewer's roles read once per guild.
#[derive(Default)]
pub struct ChannelViews {
    /// channel id → the channel, or `None` if unknown.
    channels: std::collections::HashMap<u64, Option<Channel>>,
    /// guild → the channel ids the viewer may view there (None: not a member).
    guilds:
        std::collections::HashMap<lodge_ids::GuildId, Option<std::collections::HashSet<ChannelId>>>,
}

impl ChannelViews {
    /// The channel, if `viewer` may view it.
    pub async fn visible(&mut self, s: &AppState, channel_id: u64, viewer: u64) -> Option<Channel> {
        if let std::collections::hash_map::Entry::Vacant(e) = self.channels.entry(channel_id) {
            e.insert(s.store.channel(ChannelId(channel_id)).await.ok());
        }
        let c = self.channels.get(&channel_id)?.clone()?;
        if let std::collections::hash_map::Entry::Vacant(e) = self.guilds.entry(c.guild_id) {
            // `channel_permissions` (under visible_channels) answers all-zero for non-members.
            let set = match s.store.guild(c.guild_id).await {
                Ok(g) => guilds::visible_channels(s, &g, viewer).await.ok(),
                Err(_) => None,
            };
            e.insert(set);
        }
        let ok = self
            .guilds
            .get(&c.guild_id)
            .and_then(|v| v.as_ref())
            .is_some_and(|v| v.contains(&ChannelId(channel_id)));
        ok.then_some(c)
    }

    pub async fn can_view(&mut self, s: &AppState, channel_id: u64, viewer: u64) -> bool {
        self.visible(s, channel_id, viewer).await.is_some()
    }
}
