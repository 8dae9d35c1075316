//! Discord's role hierarchy between members: a member acts on another member (kick, ban,
//! nickname, role changes) only from strictly above the other's highest role. The owner is
//! above everyone and no one acts on the owner.

use lodge_chat::Guild;
use lodge_ids::UserId;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// May `actor` act on the member `target`? (Permissions are the caller's to check; acting on
/// yourself is the caller's to allow.)
pub async fn may_act_on(s: &AppState, g: &Guild, actor: u64, target: u64) -> ApiResult<()> {
    if target == g.owner_id.get() {
        return Err(ApiError::missing_permissions(
            "the guild owner is above everyone",
        ));
    }
    if actor == g.owner_id.get() {
        return Ok(());
    }
    let mine = s.store.top_role_position(g, UserId(actor)).await?;
    let theirs = s.store.top_role_position(g, UserId(target)).await?;
    if theirs >= mine {
        return Err(ApiError::missing_permissions(
            "the member's highest role is not below yours",
        ));
    }
    Ok(())
}
