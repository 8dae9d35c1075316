//! Messages, mentions and reactions.

use lodge_ids::{ChannelId, GuildId, MessageId, RoleId, UserId};
use sqlx::any::AnyRow;
use sqlx::Row;

/// Message rows with their author, plus a static tail (sqlx wants static SQL).
macro_rules! select {
    ($tail:literal) => {
        concat!(
            "SELECT m.id, m.channel_id, m.guild_id, m.author_id, m.content, m.nonce, m.tts, m.mention_everyone, \
             m.reference_id, m.reference_channel_id, m.edited_at, m.created_at, u.username, u.bot \
             FROM messages m JOIN users u ON u.id = m.author_id ",
            $tail
        )
    };
}

use crate::error::ChatError;
use crate::model::{Channel, Message, MessageQuery, NewMessage, ReactionCount, User};
use crate::store::{flag, now_ms, user_from_row, Backend, Store};

/// Longest message content, in characters (Discord's limit).
pub const MAX_CONTENT_CHARS: usize = 2000;
/// Longest nonce, in characters.
pub const MAX_NONCE_CHARS: usize = 25;
/// A repeated nonce within this window returns the earlier message.
pub const NONCE_WINDOW_MS: i64 = 5 * 60 * 1000;
/// Distinct reaction emoji per message.
pub const MAX_REACTIONS_PER_MESSAGE: usize = 20;

/// User and role ids mentioned as `<@id>`, `<@!id>` and `<@&id>`; whether `@everyone`/`@here` occurs.
pub fn parse_mentions(content: &str) -> (Vec<u64>, Vec<u64>, bool) {
    let (mut users, mut roles) = (Vec::new(), Vec::new());
    let mut rest = content;
    while let Some(start) = rest.find("<@") {
        rest = &rest[start + 2..];
        let (is_role, body) = match rest.as_bytes().first() {
            Some(b'&') => (true, &rest[1..]),
            Some(b'!') => (false, &rest[1..]),
            _ => (false, rest),
        };
        let Some(end) = body.find('>') else { break };
        if let Ok(id) = body[..end].parse::<u64>() {
            let list = if is_role { &mut roles } else { &mut users };
            if !list.contains(&id) {
                list.push(id);
            }
        }
    }
    let everyone = content.contains("@everyone") || content.contains("@here");
    (users, roles, everyone)
}

fn check_content(content: &str) -> Result<(), ChatError> {
    let n = content.chars().count();
    if n == 0 {
        return Err(ChatError::Invalid {
            field: "content",
            message: "Cannot send an empty message.".into(),
        });
    }
    if n > MAX_CONTENT_CHARS {
        return Err(ChatError::Invalid {
            field: "content",
            message: format!("Must be {MAX_CONTENT_CHARS} or fewer in length."),
        });
    }
    Ok(())
}

impl Store {
    /// Post a message. Returns the message and whether it is new (false: the nonce matched an
    /// earlier message and `enforce_nonce` was set).
    pub async fn create_message(
        &self,
        channel: &Channel,
        author: &User,
        m: NewMessage,
    ) -> Result<(Message, bool), ChatError> {
        check_content(&m.content)?;
        if let Some(n) = &m.nonce {
            if n.chars().count() > MAX_NONCE_CHARS {
                return Err(ChatError::Invalid {
                    field: "nonce",
                    message: format!("Must be {MAX_NONCE_CHARS} or fewer in length."),
                });
            }
            if m.enforce_nonce {
                let existing: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM messages WHERE channel_id = $1 AND author_id = $2 AND nonce = $3 AND created_at > $4 ORDER BY id DESC LIMIT 1",
                )
                .bind(channel.id.get() as i64)
                .bind(author.id.get() as i64)
                .bind(n)
                .bind(now_ms() - NONCE_WINDOW_MS)
                .fetch_optional(&self.pool)
                .await?;
                if let Some(id) = existing {
                    return Ok((
                        self.message(channel.id, MessageId(id as u64), author.id)
                            .await?,
                        false,
                    ));
                }
            }
        }
        if let Some((mid, cid)) = m.reference {
            let ok: Option<i64> = sqlx::query_scalar(
                "SELECT guild_id FROM messages WHERE id = $1 AND channel_id = $2",
            )
            .bind(mid.get() as i64)
            .bind(cid.get() as i64)
            .fetch_optional(&self.pool)
            .await?;
            if ok.map(|g| g as u64) != Some(channel.guild_id.get()) {
                return Err(ChatError::Invalid {
                    field: "message_reference",
                    message: "Unknown message".into(),
                });
            }
        }
        let (users, roles, everyone) = parse_mentions(&m.content);
        let id = self.next_id();
        let created_at = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO messages (id, channel_id, guild_id, author_id, content, nonce, tts, mention_everyone, reference_id, reference_channel_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(id as i64)
        .bind(channel.id.get() as i64)
        .bind(channel.guild_id.get() as i64)
        .bind(author.id.get() as i64)
        .bind(&m.content)
        .bind(&m.nonce)
        .bind(m.tts as i64)
        .bind((everyone && m.may_mention_everyone) as i64)
        .bind(m.reference.map(|r| r.0.get() as i64))
        .bind(m.reference.map(|r| r.1.get() as i64))
        .bind(created_at)
        .execute(&mut *tx)
        .await?;
        // Only members and roles of this guild count as mentions.
        for u in users.iter().take(100) {
            sqlx::query("INSERT INTO message_mentions (message_id, kind, target_id) SELECT $1, 0, user_id FROM members WHERE guild_id = $2 AND user_id = $3 ON CONFLICT DO NOTHING")
                .bind(id as i64)
                .bind(channel.guild_id.get() as i64)
                .bind(*u as i64)
                .execute(&mut *tx)
                .await?;
        }
        for r in roles.iter().take(100) {
            sqlx::query("INSERT INTO message_mentions (message_id, kind, target_id) SELECT $1, 1, id FROM roles WHERE guild_id = $2 AND id = $3 ON CONFLICT DO NOTHING")
                .bind(id as i64)
                .bind(channel.guild_id.get() as i64)
                .bind(*r as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok((
            self.message(channel.id, MessageId(id), author.id).await?,
            true,
        ))
    }

    async fn hydrate(&self, r: &AnyRow, viewer: UserId) -> Result<Message, ChatError> {
        let id = r.get::<i64, _>("id") as u64;
        let mention_rows = sqlx::query(
            "SELECT mm.kind, mm.target_id, u.username, u.bot FROM message_mentions mm LEFT JOIN users u ON mm.kind = 0 AND u.id = mm.target_id WHERE mm.message_id = $1",
        )
        .bind(id as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut mentions = Vec::new();
        let mut mention_roles = Vec::new();
        for m in &mention_rows {
            let target = m.get::<i64, _>("target_id") as u64;
            if m.get::<i64, _>("kind") == 0 {
                mentions.push(User {
                    id: UserId(target),
                    username: m.get::<Option<String>, _>("username").unwrap_or_default(),
                    bot: m
                        .try_get::<Option<i64>, _>("bot")
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                        != 0,
                });
            } else {
                mention_roles.push(RoleId(target));
            }
        }
        let reaction_rows = sqlx::query(
            "SELECT emoji, COUNT(*) AS n, CAST(MAX(CASE WHEN user_id = $1 THEN 1 ELSE 0 END) AS BIGINT) AS me, MIN(created_at) AS first \
             FROM reactions WHERE message_id = $2 GROUP BY emoji ORDER BY first",
        )
        .bind(viewer.get() as i64)
        .bind(id as i64)
        .fetch_all(&self.pool)
        .await?;
        let reactions = reaction_rows
            .iter()
            .map(|x| ReactionCount {
                emoji: x.get("emoji"),
                count: x.get::<i64, _>("n") as u32,
                me: x.get::<i64, _>("me") != 0,
            })
            .collect();
        Ok(Message {
            id: MessageId(id),
            channel_id: ChannelId(r.get::<i64, _>("channel_id") as u64),
            guild_id: GuildId(r.get::<i64, _>("guild_id") as u64),
            author: user_from_row(r, r.get::<i64, _>("author_id") as u64),
            content: r.get("content"),
            nonce: r.get("nonce"),
            tts: flag(r, "tts"),
            mention_everyone: flag(r, "mention_everyone"),
            mentions,
            mention_roles,
            reference: r
                .get::<Option<i64>, _>("reference_id")
                .zip(r.get::<Option<i64>, _>("reference_channel_id"))
                .map(|(a, b)| (MessageId(a as u64), ChannelId(b as u64))),
            edited_at: r.get("edited_at"),
            created_at: r.get("created_at"),
            reactions,
        })
    }

    /// One message of a channel, as `viewer` sees it (reactions' `me`).
    pub async fn message(
        &self,
        channel_id: ChannelId,
        id: MessageId,
        viewer: UserId,
    ) -> Result<Message, ChatError> {
        let r = sqlx::query(select!("WHERE m.id = $1 AND m.channel_id = $2"))
            .bind(id.get() as i64)
            .bind(channel_id.get() as i64)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(ChatError::Unknown("message"))?;
        self.hydrate(&r, viewer).await
    }

    /// A page of history, newest first (as Discord returns it).
    pub async fn messages(
        &self,
        channel_id: ChannelId,
        q: MessageQuery,
        viewer: UserId,
    ) -> Result<Vec<Message>, ChatError> {
        let limit = q.limit.clamp(1, 100) as i64;
        let cid = channel_id.get() as i64;
        let rows = if let Some(around) = q.around {
            let newer = limit / 2 + (limit % 2);
            let mut up = sqlx::query(select!(
                "WHERE m.channel_id = $1 AND m.id >= $2 ORDER BY m.id ASC LIMIT $3"
            ))
            .bind(cid)
            .bind(around.get() as i64)
            .bind(newer)
            .fetch_all(&self.pool)
            .await?;
            let older = limit - up.len() as i64;
            let down = sqlx::query(select!(
                "WHERE m.channel_id = $1 AND m.id < $2 ORDER BY m.id DESC LIMIT $3"
            ))
            .bind(cid)
            .bind(around.get() as i64)
            .bind(older)
            .fetch_all(&self.pool)
            .await?;
            up.reverse();
            up.extend(down);
            up
        } else if let Some(after) = q.after {
            let mut v = sqlx::query(select!(
                "WHERE m.channel_id = $1 AND m.id > $2 ORDER BY m.id ASC LIMIT $3"
            ))
            .bind(cid)
            .bind(after.get() as i64)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            v.reverse();
            v
        } else {
            sqlx::query(select!(
                "WHERE m.channel_id = $1 AND m.id < $2 ORDER BY m.id DESC LIMIT $3"
            ))
            .bind(cid)
            .bind(q.before.map(|b| b.get() as i64).unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.hydrate(r, viewer).await?);
        }
        Ok(out)
    }

    pub async fn edit_message(
        &self,
        channel_id: ChannelId,
        id: MessageId,
        content: &str,
        viewer: UserId,
    ) -> Result<Message, ChatError> {
        check_content(content)?;
        let r = sqlx::query(
            "UPDATE messages SET content = $1, edited_at = $2 WHERE id = $3 AND channel_id = $4",
        )
        .bind(content)
        .bind(now_ms())
        .bind(id.get() as i64)
        .bind(channel_id.get() as i64)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(ChatError::Unknown("message"));
        }
        self.message(channel_id, id, viewer).await
    }

    pub async fn delete_message(
        &self,
        channel_id: ChannelId,
        id: MessageId,
    ) -> Result<(), ChatError> {
        let r = sqlx::query("DELETE FROM messages WHERE id = $1 AND channel_id = $2")
            .bind(id.get() as i64)
            .bind(channel_id.get() as i64)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(ChatError::Unknown("message"));
        }
        Ok(())
    }

    /// Add a reaction; `false` if the user had already reacted with it.
    pub async fn add_reaction(
        &self,
        message_id: MessageId,
        emoji: &str,
        user_id: UserId,
    ) -> Result<bool, ChatError> {
        let distinct: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT emoji) FROM reactions WHERE message_id = $1 AND emoji != $2",
        )
        .bind(message_id.get() as i64)
        .bind(emoji)
        .fetch_one(&self.pool)
        .await?;
        if distinct as usize >= MAX_REACTIONS_PER_MESSAGE {
            return Err(ChatError::Limit {
                what: "reactions",
                limit: MAX_REACTIONS_PER_MESSAGE,
            });
        }
        let r = sqlx::query("INSERT INTO reactions (message_id, emoji, user_id, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(message_id.get() as i64)
            .bind(emoji)
            .bind(user_id.get() as i64)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Remove a reaction; `false` if there was none.
    pub async fn remove_reaction(
        &self,
        message_id: MessageId,
        emoji: &str,
        user_id: UserId,
    ) -> Result<bool, ChatError> {
        let r = sqlx::query(
            "DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND user_id = $3",
        )
        .bind(message_id.get() as i64)
        .bind(emoji)
        .bind(user_id.get() as i64)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Users who reacted with `emoji`, by user id, after `after`.
    pub async fn reaction_users(
        &self,
        message_id: MessageId,
        emoji: &str,
        limit: u32,
        after: u64,
    ) -> Result<Vec<User>, ChatError> {
        let rows = sqlx::query(
            "SELECT u.id, u.username, u.bot FROM reactions r JOIN users u ON u.id = r.user_id WHERE r.message_id = $1 AND r.emoji = $2 AND u.id > $3 ORDER BY u.id LIMIT $4",
        )
        .bind(message_id.get() as i64)
        .bind(emoji)
        .bind(after as i64)
        .bind(limit.clamp(1, 100) as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| user_from_row(r, r.get::<i64, _>("id") as u64))
            .collect())
    }
}

/// Turn user input into a safe FTS5 query: every word quoted, all words required.
pub fn fts_query(input: &str) -> Option<String> {
    let terms: Vec<String> = input
        .split_whitespace()
        .take(16)
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

impl Store {
    /// Messages of `guild_id` in `channels` whose content matches every word of `query`, newest
    /// first, with the total number of hits.
    pub async fn search_messages(
        &self,
        guild_id: GuildId,
        channels: &[ChannelId],
        query: &str,
        limit: u32,
        offset: u32,
        viewer: UserId,
    ) -> Result<(u64, Vec<Message>), ChatError> {
        let Some(q) = fts_query(query) else {
            return Err(ChatError::Invalid {
                field: "content",
                message: "Give at least one word to search for.".into(),
            });
        };
        let chans = serde_json::to_string(channels).unwrap_or_else(|_| "[]".into());
        let (limit, offset) = (limit.clamp(1, 25) as i64, offset.min(5000) as i64);
        let (total, rows): (i64, Vec<AnyRow>) = match self.backend {
            Backend::Sqlite => {
                let total = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM messages_fts f JOIN messages m ON m.id = f.rowid \
                     WHERE messages_fts MATCH $1 AND m.guild_id = $2 AND m.channel_id IN (SELECT value FROM json_each($3))",
                )
                .bind(&q)
                .bind(guild_id.get() as i64)
                .bind(&chans)
                .fetch_one(&self.pool)
                .await?;
                let rows = sqlx::query(select!(
                    "JOIN messages_fts f ON f.rowid = m.id WHERE messages_fts MATCH $1 AND m.guild_id = $2 \
                     AND m.channel_id IN (SELECT value FROM json_each($3)) ORDER BY m.id DESC LIMIT $4 OFFSET $5"
                ))
                .bind(&q)
                .bind(guild_id.get() as i64)
                .bind(&chans)
                .bind(limit)
                .bind(offset)
                .fetch_all(&self.pool)
                .await?;
                (total, rows)
            }
            Backend::Postgres => {
                // Every word required, as with FTS5 above: plainto_tsquery ANDs the words.
                let words = query
                    .split_whitespace()
                    .take(16)
                    .collect::<Vec<_>>()
                    .join(" ");
                let total = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM messages m WHERE m.search @@ plainto_tsquery('simple', $1) AND m.guild_id = $2 \
                     AND m.channel_id IN (SELECT value::bigint FROM json_array_elements_text($3::json))",
                )
                .bind(&words)
                .bind(guild_id.get() as i64)
                .bind(&chans)
                .fetch_one(&self.pool)
                .await?;
                let rows = sqlx::query(select!(
                    "WHERE m.search @@ plainto_tsquery('simple', $1) AND m.guild_id = $2 \
                     AND m.channel_id IN (SELECT value::bigint FROM json_array_elements_text($3::json)) ORDER BY m.id DESC LIMIT $4 OFFSET $5"
                ))
                .bind(&words)
                .bind(guild_id.get() as i64)
                .bind(&chans)
                .bind(limit)
                .bind(offset)
                .fetch_all(&self.pool)
                .await?;
                (total, rows)
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.hydrate(r, viewer).await?);
        }
        Ok((total as u64, out))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_mentions;

    #[test]
    fn mentions_table() {
        let cases: &[(&str, &[u64], &[u64], bool)] = &[
            ("hi <@12> and <@!34>", &[12, 34], &[], false),
            ("<@&56> ping", &[], &[56], false),
            ("@everyone look", &[], &[], true),
            ("@here", &[], &[], true),
            ("<@12><@12>", &[12], &[], false),
            ("<@abc> <@", &[], &[], false),
            ("<@&> <@!>", &[], &[], false),
        ];
        for (c, u, r, e) in cases {
            let (gu, gr, ge) = parse_mentions(c);
            assert_eq!((&gu[..], &gr[..], ge), (*u, *r, *e), "{c}");
        }
    }
}
