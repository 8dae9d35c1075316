//! Guild bans: a banned user is not a member and cannot join again (by invite) until unbanned.

use lodge_ids::{GuildId, RoleId, UserId};
use sqlx::Row;

use crate::error::ChatError;
use crate::model::{Guild, User};
use crate::permissions::Permissions;
use crate::store::{now_ms, user_from_row, Store};

/// Longest ban reason, in characters (Discord's audit log reason limit).
pub const MAX_BAN_REASON: usize = 512;
/// Largest page of `GET /guilds/{id}/bans`.
pub const MAX_BANS_PAGE: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub user: User,
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// What a ban removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BanEffect {
    /// The user was a member (and is no longer).
    pub was_member: bool,
    /// Messages deleted by `delete_message_seconds`, by channel (ids ascending).
    pub deleted: Vec<(u64, Vec<u64>)>,
}

/// Which page of a guild's bans (by user id, as Discord pages them).
#[derive(Debug, Clone, Copy, Default)]
pub struct BanQuery {
    pub limit: u32,
    pub before: Option<u64>,
    pub after: Option<u64>,
}

impl Store {
    /// Ban `user_id` from the guild in one transaction: the ban is recorded (again: the reason
    /// is replaced), the membership and its roles go, and the user's messages of the last
    /// `delete_message_seconds` (if not 0) are deleted. The caller checks who may ban whom.
    pub async fn ban(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        reason: Option<&str>,
        delete_message_seconds: u64,
    ) -> Result<BanEffect, ChatError> {
        let delete_messages_since_ms = (delete_message_seconds > 0).then(|| {
            now_ms()
                .saturating_sub(delete_message_seconds.min(i64::MAX as u64 / 1000) as i64 * 1000)
        });
        if reason.is_some_and(|r| r.chars().count() > MAX_BAN_REASON) {
            return Err(ChatError::Invalid {
                field: "reason",
                message: format!("Must be {MAX_BAN_REASON} or fewer in length."),
            });
        }
        self.user(user_id).await?;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO bans (guild_id, user_id, reason, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (guild_id, user_id) DO UPDATE SET reason = excluded.reason",
        )
        .bind(guild_id.get() as i64)
        .bind(user_id.get() as i64)
        .bind(reason)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let removed = sqlx::query("DELETE FROM members WHERE guild_id = $1 AND user_id = $2")
            .bind(guild_id.get() as i64)
            .bind(user_id.get() as i64)
            .execute(&mut *tx)
            .await?;
        let mut effect = BanEffect {
            was_member: removed.rows_affected() > 0,
            deleted: Vec::new(),
        };
        if let Some(since) = delete_messages_since_ms {
            let rows: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT channel_id, id FROM messages WHERE guild_id = $1 AND author_id = $2 AND created_at >= $3 ORDER BY channel_id, id",
            )
            .bind(guild_id.get() as i64)
            .bind(user_id.get() as i64)
            .bind(since)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM messages WHERE guild_id = $1 AND author_id = $2 AND created_at >= $3",
            )
            .bind(guild_id.get() as i64)
            .bind(user_id.get() as i64)
            .bind(since)
            .execute(&mut *tx)
            .await?;
            for (c, m) in rows {
                match effect.deleted.last_mut() {
                    Some((last, ids)) if *last == c as u64 => ids.push(m as u64),
                    _ => effect.deleted.push((c as u64, vec![m as u64])),
                }
            }
        }
        tx.commit().await?;
        Ok(effect)
    }

    /// Lift a ban; `Unknown Ban` if there was none.
    pub async fn unban(&self, guild_id: GuildId, user_id: UserId) -> Result<(), ChatError> {
        let r = sqlx::query("DELETE FROM bans WHERE guild_id = $1 AND user_id = $2")
            .bind(guild_id.get() as i64)
            .bind(user_id.get() as i64)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(ChatError::Unknown("ban"));
        }
        Ok(())
    }

    /// One ban; `Unknown Ban` if the user is not banned.
    pub async fn ban_of(&self, guild_id: GuildId, user_id: UserId) -> Result<Ban, ChatError> {
        let r = sqlx::query(
            "SELECT b.user_id, b.reason, b.created_at, u.username, u.bot FROM bans b JOIN users u ON u.id = b.user_id \
             WHERE b.guild_id = $1 AND b.user_id = $2",
        )
        .bind(guild_id.get() as i64)
        .bind(user_id.get() as i64)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(ChatError::Unknown("ban"))?;
        Ok(Ban {
            user: user_from_row(&r, user_id.get()),
            reason: r.get("reason"),
            created_at: r.get("created_at"),
        })
    }

    pub async fn is_banned(&self, guild_id: GuildId, user_id: UserId) -> Result<bool, ChatError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM bans WHERE guild_id = $1 AND user_id = $2")
                .bind(guild_id.get() as i64)
                .bind(user_id.get() as i64)
                .fetch_one(&self.pool)
                .await?;
        Ok(n > 0)
    }

    /// Who is told of bans (GUILD_BAN_ADD/REMOVE), as Discord tells them: members holding
    /// BAN_MEMBERS or VIEW_AUDIT_LOG (or ADMINISTRATOR) through a role, and the owner; `None`
    /// when `@everyone` holds one of them (every member).
    pub async fn ban_watchers(&self, guild: &Guild) -> Result<Option<Vec<UserId>>, ChatError> {
        const BITS: u64 =
            Permissions::BAN_MEMBERS | Permissions::VIEW_AUDIT_LOG | Permissions::ADMINISTRATOR;
        let roles: Vec<RoleId> = self
            .roles(guild.id)
            .await?
            .into_iter()
            .filter(|r| r.permissions & BITS != 0)
            .map(|r| r.id)
            .collect();
        if roles.contains(&RoleId::everyone(guild.id)) {
            return Ok(None);
        }
        let mut users = vec![guild.owner_id];
        for r in roles {
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT user_id FROM member_roles WHERE guild_id = $1 AND role_id = $2",
            )
            .bind(guild.id.get() as i64)
            .bind(r.get() as i64)
            .fetch_all(&self.pool)
            .await?;
            users.extend(ids.into_iter().map(|u| UserId(u as u64)));
        }
        users.sort_unstable();
        users.dedup();
        Ok(Some(users))
    }

    /// A page of the guild's bans by user id: after `after` ascending, or (with only `before`)
    /// the last `limit` before it, still ascending.
    pub async fn bans(&self, guild_id: GuildId, q: BanQuery) -> Result<Vec<Ban>, ChatError> {
        let limit = q.limit.clamp(1, MAX_BANS_PAGE) as i64;
        let before = q.before.map(|b| b as i64).unwrap_or(i64::MAX);
        let rows = if q.after.is_none() && q.before.is_some() {
            let mut rows = sqlx::query(
                "SELECT b.user_id, b.reason, b.created_at, u.username, u.bot FROM bans b JOIN users u ON u.id = b.user_id \
                 WHERE b.guild_id = $1 AND b.user_id < $2 ORDER BY b.user_id DESC LIMIT $3",
            )
            .bind(guild_id.get() as i64)
            .bind(before)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            rows.reverse();
            rows
        } else {
            sqlx::query(
                "SELECT b.user_id, b.reason, b.created_at, u.username, u.bot FROM bans b JOIN users u ON u.id = b.user_id \
                 WHERE b.guild_id = $1 AND b.user_id > $2 AND b.user_id < $3 ORDER BY b.user_id LIMIT $4",
            )
            .bind(guild_id.get() as i64)
            .bind(q.after.map(|a| a as i64).unwrap_or(0))
            .bind(before)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
        };
        Ok(rows
            .iter()
            .map(|r| Ban {
                user: user_from_row(r, r.get::<i64, _>("user_id") as u64),
                reason: r.get("reason"),
                created_at: r.get("created_at"),
            })
            .collect())
    }
}
