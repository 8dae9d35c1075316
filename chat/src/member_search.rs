//! Members picked by id or by name prefix, for the gateway's Request Guild Members (op 8).

use lodge_ids::{GuildId, UserId};
use sqlx::Row;

use crate::error::ChatError;
use crate::model::Member;
use crate::store::{user_from_row, Store};

/// Ids in one lookup, at most (one bound parameter each).
pub const MAX_IDS: usize = 1000;

/// `%`, `_` and the escape character itself match literally in the LIKE pattern.
fn like_prefix(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for c in prefix.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl Store {
    /// Members whose username or nickname starts with `prefix` (case-insensitive), by
    /// username, at most `limit`.
    pub async fn members_named(
        &self,
        guild_id: GuildId,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<Member>, ChatError> {
        let rows = sqlx::query(
            "SELECT m.user_id, m.nick, m.joined_at, u.username, u.bot FROM members m JOIN users u ON u.id = m.user_id \
             WHERE m.guild_id = $1 AND (lower(u.username) LIKE $2 ESCAPE '\\' OR lower(COALESCE(m.nick, '')) LIKE $2 ESCAPE '\\') \
             ORDER BY u.username LIMIT $3",
        )
        .bind(guild_id.get() as i64)
        .bind(like_prefix(prefix))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        self.with_roles(guild_id, rows).await
    }

    /// The members among `user_ids` (ids that are not members are left out).
    pub async fn members_by_id(
        &self,
        guild_id: GuildId,
        user_ids: &[UserId],
    ) -> Result<Vec<Member>, ChatError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        if user_ids.len() > MAX_IDS {
            return Err(ChatError::Limit {
                what: "user ids per member lookup",
                limit: MAX_IDS,
            });
        }
        // `$n` placeholders, which both backends take through the Any driver (QueryBuilder's
        // `?` is SQLite's only). Only the placeholders are formatted in; the ids are bound.
        let marks: Vec<String> = (0..user_ids.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT m.user_id, m.nick, m.joined_at, u.username, u.bot FROM members m JOIN users u ON u.id = m.user_id \
             WHERE m.guild_id = $1 AND m.user_id IN ({}) ORDER BY m.user_id",
            marks.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(guild_id.get() as i64);
        for id in user_ids {
            q = q.bind(id.get() as i64);
        }
        let rows = q.fetch_all(&self.pool).await?;
        self.with_roles(guild_id, rows).await
    }

    async fn with_roles(
        &self,
        guild_id: GuildId,
        rows: Vec<sqlx::any::AnyRow>,
    ) -> Result<Vec<Member>, ChatError> {
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let uid = r.get::<i64, _>("user_id") as u64;
            out.push(Member {
                guild_id,
                user: user_from_row(r, uid),
                nick: r.get("nick"),
                roles: self.member_roles(guild_id, UserId(uid)).await?,
                joined_at: r.get("joined_at"),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_patterns_match_the_prefix_literally() {
        assert_eq!(super::like_prefix("Al"), "al%");
        assert_eq!(super::like_prefix("a_b%"), "a\\_b\\%%");
    }
}
