//! REST API v10 (also served as v9).

pub mod auth;
pub mod channels;
pub mod guilds;
pub mod messages;
pub mod ops;
pub mod quality;
pub mod roles;
pub mod users;

use axum::http::StatusCode;
use lodge_chat::{Channel, Guild, Permissions};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// The guild, if the user is a member (403 Missing Access otherwise, as Discord answers).
pub async fn guild_for(state: &AppState, guild_id: u64, user_id: u64) -> ApiResult<Guild> {
    let g = state.store.guild(guild_id).await?;
    if g.owner_id != user_id && !state.store.is_member(guild_id, user_id).await? {
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
    let c = state.store.channel(channel_id).await?;
    let g = guild_for(state, c.guild_id, user_id).await?;
    let p = state.store.permissions(&g, Some(&c), user_id).await?;
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
