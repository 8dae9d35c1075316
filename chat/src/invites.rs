//! Invites: create, look up, and join a guild by one.
//!
//! Joining is one write transaction: the ban check, the membership insert and the use count
//! (`UPDATE … SET uses = uses + 1 WHERE uses < max_uses`, which only one of many concurrent
//! joins can win for the last use) commit together or not at all, so an invite with
//! `max_uses: 1` admits exactly one member however many accept it at once.

use lodge_ids::{ChannelId, GuildId, UserId};
use rand::distributions::Alphanumeric;
use rand::Rng;
use sqlx::Row;

use crate::error::ChatError;
use crate::model::{Channel, Invite};
use crate::store::{now_ms, Store};

impl Store {
    pub async fn create_invite(
        &self,
        channel: &Channel,
        inviter: UserId,
        max_uses: u32,
        max_age_s: u32,
    ) -> Result<Invite, ChatError> {
        let code: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(8)
            .map(char::from)
            .collect();
        let expires_at = (max_age_s > 0).then(|| now_ms() + max_age_s as i64 * 1000);
        sqlx::query("INSERT INTO invites (code, guild_id, channel_id, inviter_id, max_uses, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&code)
            .bind(channel.guild_id.get() as i64)
            .bind(channel.id.get() as i64)
            .bind(inviter.get() as i64)
            .bind(max_uses as i64)
            .bind(expires_at)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(Invite {
            code,
            guild_id: channel.guild_id,
            channel_id: channel.id,
            inviter_id: inviter,
            max_uses,
            uses: 0,
            expires_at,
        })
    }

    /// A usable invite (not expired, not used up); `Unknown Invite` otherwise.
    pub async fn invite(&self, code: &str) -> Result<Invite, ChatError> {
        let r = sqlx::query("SELECT * FROM invites WHERE code = $1")
            .bind(code)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(ChatError::Unknown("invite"))?;
        let inv = Invite {
            code: r.get("code"),
            guild_id: GuildId(r.get::<i64, _>("guild_id") as u64),
            channel_id: ChannelId(r.get::<i64, _>("channel_id") as u64),
            inviter_id: UserId(r.get::<i64, _>("inviter_id") as u64),
            max_uses: r.get::<i64, _>("max_uses") as u32,
            uses: r.get::<i64, _>("uses") as u32,
            expires_at: r.get("expires_at"),
        };
        if inv.expires_at.is_some_and(|e| e <= now_ms())
            || (inv.max_uses > 0 && inv.uses >= inv.max_uses)
        {
            return Err(ChatError::Unknown("invite"));
        }
        Ok(inv)
    }

    /// Join the invite's guild. Returns the invite and whether the user was newly added (a
    /// member already in the guild does not use the invite up). `Banned` for a user banned
    /// from the guild; `Unknown Invite` when it expired or its last use went to someone else.
    pub async fn use_invite(
        &self,
        code: &str,
        user_id: UserId,
    ) -> Result<(Invite, bool), ChatError> {
        let mut inv = self.invite(code).await?;
        let mut tx = self.begin_write().await?;
        let banned: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM bans WHERE guild_id = $1 AND user_id = $2")
                .bind(inv.guild_id.get() as i64)
                .bind(user_id.get() as i64)
                .fetch_one(&mut *tx)
                .await?;
        if banned > 0 {
            return Err(ChatError::Banned);
        }
        let added = sqlx::query("INSERT INTO members (guild_id, user_id, joined_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(inv.guild_id.get() as i64)
            .bind(user_id.get() as i64)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if !added {
            return Ok((inv, false));
        }
        let used = sqlx::query(
            "UPDATE invites SET uses = uses + 1 WHERE code = $1 AND (max_uses = 0 OR uses < max_uses) \
             AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(code)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() == 0 {
            // Dropping the transaction rolls the membership back.
            return Err(ChatError::Unknown("invite"));
        }
        tx.commit().await?;
        inv.uses += 1;
        Ok((inv, true))
    }
}
