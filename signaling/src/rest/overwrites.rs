//! The rules for a permission overwrite, shared by `PUT /channels/{id}/permissions/{target}`
//! and the `permission_overwrites` of a channel being created.

use lodge_chat::{Guild, Overwrite, OverwriteKind, Permissions};
use lodge_ids::{RoleId, UserId};

use super::require;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// `actor` (holding `p` where the overwrite applies) may set `ow` in guild `g`: MANAGE_ROLES,
/// only bits the actor holds there (owners and administrators hold all), and a target that
/// is a role or a member of this guild.
pub async fn check(s: &AppState, g: &Guild, p: Permissions, ow: &Overwrite) -> ApiResult<()> {
    require(p, Permissions::MANAGE_ROLES, "MANAGE_ROLES")?;
    if (ow.allow | ow.deny) & !p.0 != 0 {
        return Err(ApiError::missing_permissions(
            "cannot allow or deny permissions you do not have",
        ));
    }
    match ow.kind {
        OverwriteKind::Role if s.store.role(g.id, RoleId(ow.target)).await.is_err() => {
            Err(ApiError::not_found("role"))
        }
        OverwriteKind::Member if !s.store.is_member(g.id, UserId(ow.target)).await? => {
            Err(ApiError::not_found("member"))
        }
        _ => Ok(()),
    }
}
