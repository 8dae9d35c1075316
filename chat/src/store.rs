//! Storage of the guild model through sqlx (SQLite, the embedded default).

use lodge_ids::{ChannelId, GuildId, RoleId, UserId};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::error::ChatError;
use crate::model::*;
use crate::password::Passwords;
use crate::permissions::{self, Overwrite, OverwriteKind, Permissions};
use crate::snowflake::Snowflakes;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Limits named in errors.
pub const MAX_GUILD_CHANNELS: usize = 500;
pub const MAX_NAME_LEN: usize = 100;
/// A channel topic, at most (Discord's limit for text channels).
pub const MAX_TOPIC_LEN: usize = 1024;
pub const MAX_GUILD_ROLES: usize = 250;
pub const MAX_USERNAME_LEN: usize = 32;
/// Most guilds one user may own (checked in the creating transaction).
pub const MAX_OWNED_GUILDS: usize = 100;
/// Longest nickname, in characters.
pub const MAX_NICK_LEN: usize = 32;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How a token is stored and recognised: its SHA-256, hex. Sessions keep this, not the token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What a guild holds a bounded number of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuildCap {
    Channels,
    Roles,
}

/// Which database a store runs on. The SQL is shared; a few statements differ (search, locking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The guild model's storage. Cheap to clone (a pool handle).
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
    ids: std::sync::Arc<Snowflakes>,
    /// Argon2 on a bounded pool of its own threads (never on the runtime's).
    passwords: std::sync::Arc<Passwords>,
}

/// A user from a row's `username` and `bot` columns; the id is given (its column varies).
pub(crate) fn user_from_row(r: &AnyRow, id: u64) -> User {
    User {
        id: UserId(id),
        username: r.get("username"),
        bot: flag(r, "bot"),
    }
}

/// A 0/1 integer column as bool (portable across SQLite and PostgreSQL).
pub(crate) fn flag(r: &AnyRow, col: &str) -> bool {
    r.try_get::<i64, _>(col).map(|v| v != 0).unwrap_or(false)
}

impl Store {
    /// Open (creating if needed) the SQLite file and run migrations.
    pub async fn open(path: &Path) -> Result<Store, ChatError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                create_private_dir(dir).map_err(|e| ChatError::Storage(sqlx::Error::Io(e)))?;
            }
        }
        Self::open_url(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Open `sqlite://…` or `postgres://…` and run that backend's migrations.
    pub async fn open_url(url: &str) -> Result<Store, ChatError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(ChatError::Invalid {
                field: "database_url",
                message: "Use sqlite://<file> or postgres://user@host/db.".into(),
            });
        };
        let mut opts = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            // A database that does not answer is reported (503) within seconds, not after
            // sqlx's default 30 s.
            .acquire_timeout(std::time::Duration::from_secs(3));
        if backend == Backend::Sqlite {
            // An embedded database's connections cannot be dropped by a server: skip the ping
            // sqlx sends before handing out each connection (a round trip to the connection's
            // worker thread per query).
            opts = opts.test_before_acquire(false);
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL for concurrent readers; FULL: a write acknowledged to a client is on disk.
                    sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(url).await?;
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        let passwords = Passwords::default();
        passwords.prepare();
        let store = Store {
            pool,
            backend,
            ids: std::sync::Arc::new(Snowflakes::new(0, 0)),
            passwords: std::sync::Arc::new(passwords),
        };
        store.backfill_username_keys().await?;
        Ok(store)
    }

    /// Run at most `concurrency` password hashes at once (0: half the cores).
    pub fn with_password_hashing(mut self, concurrency: usize) -> Store {
        self.passwords = std::sync::Arc::new(Passwords::new(concurrency));
        self
    }

    /// Mint ids with the 10-bit node id `id` from now on (a cluster node's lease).
    pub fn set_id_worker(&self, id: u16) {
        self.ids.set_id(id);
    }

    /// The password hashing pool (its counters are read by tests and metrics).
    pub fn passwords(&self) -> &Passwords {
        &self.passwords
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A write transaction. SQLite: IMMEDIATE takes the write lock up front (waiting on
    /// busy_timeout) instead of failing with SQLITE_BUSY when a deferred transaction upgrades.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, ChatError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// A write transaction that adds one of `cap`'s kind to a guild, with the guild's count
    /// taken inside it (PostgreSQL: under the guild's row lock; SQLite: under the write lock
    /// IMMEDIATE takes), so concurrent creations cannot overshoot the cap. Returns the count
    /// before the addition.
    pub(crate) async fn begin_capped(
        &self,
        guild_id: GuildId,
        cap: GuildCap,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Any>, i64), ChatError> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT id FROM guilds WHERE id = $1 FOR UPDATE")
                .bind(guild_id.get() as i64)
                .execute(&mut *tx)
                .await?;
        }
        let (sql, limit, what) = match cap {
            GuildCap::Channels => (
                "SELECT COUNT(*) FROM channels WHERE guild_id = $1",
                MAX_GUILD_CHANNELS,
                "guild channels",
            ),
            GuildCap::Roles => (
                "SELECT COUNT(*) FROM roles WHERE guild_id = $1",
                MAX_GUILD_ROLES,
                "guild roles",
            ),
        };
        let count: i64 = sqlx::query_scalar(sql)
            .bind(guild_id.get() as i64)
            .fetch_one(&mut *tx)
            .await?;
        if count as usize >= limit {
            return Err(ChatError::Limit { what, limit });
        }
        Ok((tx, count))
    }

    /// Close the pool (SQLite: checkpointing the WAL).
    pub async fn close(&self) {
        if self.backend == Backend::Sqlite {
            let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await;
        }
        self.pool.close().await;
    }

    pub fn next_id(&self) -> u64 {
        self.ids.next()
    }

    // ---- accounts ----

    pub async fn register(
        &self,
        username: &str,
        password: &str,
        bot: bool,
    ) -> Result<(User, String), ChatError> {
        let username = username.trim();
        if username.len() < 2 || username.len() > MAX_USERNAME_LEN {
            return Err(ChatError::Invalid {
                field: "username",
                message: format!("Must be between 2 and {MAX_USERNAME_LEN} in length."),
            });
        }
        if !username
            .chars()
            .all(|c| c.is_alphanumeric() || "_.-".contains(c))
        {
            return Err(ChatError::Invalid {
                field: "username",
                message: "Only letters, digits, '_', '.' and '-' are allowed.".into(),
            });
        }
        if password.len() < 8 || password.len() > 128 {
            return Err(ChatError::Invalid {
                field: "password",
                message: "Must be between 8 and 128 in length.".into(),
            });
        }
        let hash = self.passwords.hash(password).await?;
        let id = self.next_id();
        let r = sqlx::query("INSERT INTO users (id, username, username_key, password_hash, bot, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(id as i64)
            .bind(username)
            .bind(crate::names::username_key(username))
            .bind(&hash)
            .bind(bot as i64)
            .bind(now_ms())
            .execute(&self.pool)
            .await;
        match r {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(ChatError::Invalid {
                    field: "username",
                    message: "Username is already taken.".into(),
                })
            }
            r => {
                r?;
            }
        }
        let user = User {
            id: UserId(id),
            username: username.to_string(),
            bot,
        };
        let token = self.issue_token(UserId(id)).await?;
        Ok((user, token))
    }

    pub async fn login(&self, username: &str, password: &str) -> Result<(User, String), ChatError> {
        let invalid = || ChatError::Invalid {
            field: "login",
            message: "Login or password is invalid.".into(),
        };
        // Registration allows 128; a longer one cannot match and is not worth hashing.
        if password.len() > 1024 {
            return Err(invalid());
        }
        // By the folded key: `ＡＤＭＩＮ` logs in as `admin`, never as an account of its own.
        let row = sqlx::query(
            "SELECT id, username, password_hash, bot FROM users WHERE username_key = $1",
        )
        .bind(crate::names::username_key(username))
        .fetch_optional(&self.pool)
        .await?;
        // An unknown username is verified against a dummy hash: the same work, the same answer.
        let stored = row.as_ref().map(|r| r.get::<String, _>("password_hash"));
        let matches = self.passwords.verify(password, stored).await?;
        let Some(row) = row.filter(|_| matches) else {
            return Err(invalid());
        };
        let user = user_from_row(&row, row.get::<i64, _>("id") as u64);
        let token = self.issue_token(user.id).await?;
        Ok((user, token))
    }

    async fn issue_token(&self, user_id: UserId) -> Result<String, ChatError> {
        let secret: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(40)
            .map(char::from)
            .collect();
        // The token starts with the user id so it is recognisable (as Discord's are), then a secret.
        let token = format!("{}.{}", user_id, secret);
        sqlx::query("INSERT INTO tokens (hash, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(token_hash(&token))
            .bind(user_id.get() as i64)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(token)
    }

    /// The user a token belongs to; `Unauthorized` for unknown or revoked tokens.
    pub async fn authenticate(&self, token: &str) -> Result<User, ChatError> {
        let row = sqlx::query(
            "SELECT u.id, u.username, u.bot FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = $1 AND t.revoked = 0",
        )
        .bind(token_hash(token))
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or(ChatError::Unauthorized)?;
        Ok(user_from_row(&row, row.get::<i64, _>("id") as u64))
    }

    pub async fn revoke_token(&self, token: &str) -> Result<(), ChatError> {
        sqlx::query("UPDATE tokens SET revoked = 1 WHERE hash = $1")
            .bind(token_hash(token))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether the token whose hash is `hash` ([`token_hash`]) is still valid.
    pub async fn token_hash_live(&self, hash: &str) -> Result<bool, ChatError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE hash = $1 AND revoked = 0")
                .bind(hash)
                .fetch_one(&self.pool)
                .await?;
        Ok(n > 0)
    }

    /// Revoke every token of a user; returns how many were live.
    pub async fn revoke_all_tokens(&self, user_id: UserId) -> Result<u64, ChatError> {
        let r = sqlx::query("UPDATE tokens SET revoked = 1 WHERE user_id = $1 AND revoked = 0")
            .bind(user_id.get() as i64)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    pub async fn user(&self, id: UserId) -> Result<User, ChatError> {
        let row = sqlx::query("SELECT id, username, bot FROM users WHERE id = $1")
            .bind(id.get() as i64)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(ChatError::Unknown("user"))?;
        Ok(User {
            id,
            username: row.get("username"),
            bot: flag(&row, "bot"),
        })
    }

    // ---- guilds ----

    /// Create a guild owned by `owner`: `@everyone` (id = guild id), `general` text channel and
    /// `General` voice channel.
    pub async fn create_guild(&self, owner: &User, name: &str) -> Result<Guild, ChatError> {
        let name = check_name("name", name)?;
        let id = self.next_id();
        let mut tx = self.begin_write().await?;
        // The cap is counted inside the creating transaction. SQLite's write transaction is
        // already exclusive; on PostgreSQL the owner's row lock serialises their creations.
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT id FROM users WHERE id = $1 FOR UPDATE")
                .bind(owner.id.get() as i64)
                .execute(&mut *tx)
                .await?;
        }
        let owned: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM guilds WHERE owner_id = $1")
            .bind(owner.id.get() as i64)
            .fetch_one(&mut *tx)
            .await?;
        if owned as usize >= MAX_OWNED_GUILDS {
            return Err(ChatError::Limit {
                what: "guilds",
                limit: MAX_OWNED_GUILDS,
            });
        }
        sqlx::query("INSERT INTO guilds (id, name, owner_id, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id as i64)
            .bind(&name)
            .bind(owner.id.get() as i64)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO roles (id, guild_id, name, permissions, position) VALUES ($1, $2, '@everyone', $3, 0)")
            .bind(id as i64)
            .bind(id as i64)
            .bind(Permissions::DEFAULT_EVERYONE as i64)
            .execute(&mut *tx)
            .await?;
        for (pos, (kind, cname)) in [
            (ChannelKind::Text, "general"),
            (ChannelKind::Voice, "General"),
        ]
        .iter()
        .enumerate()
        {
            sqlx::query("INSERT INTO channels (id, guild_id, type, name, position, bitrate, user_limit) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(self.next_id() as i64)
                .bind(id as i64)
                .bind(*kind as i64)
                .bind(*cname)
                .bind(pos as i64)
                .bind((*kind == ChannelKind::Voice).then_some(64_000i64))
                .bind((*kind == ChannelKind::Voice).then_some(0i64))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("INSERT INTO members (guild_id, user_id, joined_at) VALUES ($1, $2, $3)")
            .bind(id as i64)
            .bind(owner.id.get() as i64)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Guild {
            id: GuildId(id),
            name,
            owner_id: owner.id,
        })
    }

    pub async fn guild(&self, id: GuildId) -> Result<Guild, ChatError> {
        let row = sqlx::query("SELECT id, name, owner_id FROM guilds WHERE id = $1")
            .bind(id.get() as i64)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(ChatError::Unknown("guild"))?;
        Ok(Guild {
            id,
            name: row.get("name"),
            owner_id: UserId(row.get::<i64, _>("owner_id") as u64),
        })
    }

    pub async fn rename_guild(&self, id: GuildId, name: &str) -> Result<Guild, ChatError> {
        let name = check_name("name", name)?;
        sqlx::query("UPDATE guilds SET name = $1 WHERE id = $2")
            .bind(&name)
            .bind(id.get() as i64)
            .execute(&self.pool)
            .await?;
        self.guild(id).await
    }

    pub async fn delete_guild(&self, id: GuildId) -> Result<(), ChatError> {
        sqlx::query("DELETE FROM guilds WHERE id = $1")
            .bind(id.get() as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn user_guilds(&self, user_id: UserId) -> Result<Vec<Guild>, ChatError> {
        let rows = sqlx::query("SELECT g.id, g.name, g.owner_id FROM guilds g JOIN members m ON m.guild_id = g.id WHERE m.user_id = $1 ORDER BY g.id")
            .bind(user_id.get() as i64)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Guild {
                id: GuildId(r.get::<i64, _>("id") as u64),
                name: r.get("name"),
                owner_id: UserId(r.get::<i64, _>("owner_id") as u64),
            })
            .collect())
    }

    pub async fn roles(&self, guild_id: GuildId) -> Result<Vec<Role>, ChatError> {
        let rows = sqlx::query("SELECT id, name, permissions, position, color FROM roles WHERE guild_id = $1 ORDER BY position, id")
            .bind(guild_id.get() as i64)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Role {
                id: RoleId(r.get::<i64, _>("id") as u64),
                guild_id,
                name: r.get("name"),
                permissions: r.get::<i64, _>("permissions") as u64,
                position: r.get("position"),
                color: r.get::<i64, _>("color") as u32,
            })
            .collect())
    }

    /// Create a role (used by tests and the chat issue's role routes).
    pub async fn create_role(
        &self,
        guild_id: GuildId,
        name: &str,
        permissions: u64,
    ) -> Result<Role, ChatError> {
        let permissions = permissions & Permissions::ALL;
        let name = check_name("name", name)?;
        let id = self.next_id();
        let (mut tx, _) = self.begin_capped(guild_id, GuildCap::Roles).await?;
        // New roles go to the bottom, just above @everyone, as Discord places them.
        let pos: i64 = 1;
        sqlx::query("INSERT INTO roles (id, guild_id, name, permissions, position) VALUES ($1, $2, $3, $4, $5)")
            .bind(id as i64)
            .bind(guild_id.get() as i64)
            .bind(&name)
            .bind(permissions as i64)
            .bind(pos)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Role {
            id: RoleId(id),
            guild_id,
            name,
            permissions,
            position: pos,
            color: 0,
        })
    }

    pub async fn add_member_role(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        role_id: RoleId,
    ) -> Result<(), ChatError> {
        sqlx::query("INSERT INTO member_roles (guild_id, user_id, role_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(guild_id.get() as i64)
            .bind(user_id.get() as i64)
            .bind(role_id.get() as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- channels ----

    async fn overwrites(&self, channel_id: ChannelId) -> Result<Vec<Overwrite>, ChatError> {
        let rows = sqlx::query(
            "SELECT target_id, type, allow, deny FROM overwrites WHERE channel_id = $1",
        )
        .bind(channel_id.get() as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Overwrite {
                target: r.get::<i64, _>("target_id") as u64,
                kind: if r.get::<i64, _>("type") == 1 {
                    OverwriteKind::Member
                } else {
                    OverwriteKind::Role
                },
                allow: r.get::<i64, _>("allow") as u64,
                deny: r.get::<i64, _>("deny") as u64,
            })
            .collect())
    }

    fn channel_from_row(r: &AnyRow) -> Channel {
        Channel {
            id: ChannelId(r.get::<i64, _>("id") as u64),
            guild_id: GuildId(r.get::<i64, _>("guild_id") as u64),
            kind: ChannelKind::from_code(r.get("type")).unwrap_or(ChannelKind::Text),
            name: r.get("name"),
            position: r.get("position"),
            parent_id: r
                .get::<Option<i64>, _>("parent_id")
                .map(|v| ChannelId(v as u64)),
            bitrate: r.get::<Option<i64>, _>("bitrate").map(|v| v as u32),
            user_limit: r.get::<Option<i64>, _>("user_limit").map(|v| v as u32),
            require_dave: flag(r, "require_dave"),
            topic: r.get("topic"),
            overwrites: Vec::new(),
        }
    }

    pub async fn channels(&self, guild_id: GuildId) -> Result<Vec<Channel>, ChatError> {
        let rows = sqlx::query("SELECT * FROM channels WHERE guild_id = $1 ORDER BY position, id")
            .bind(guild_id.get() as i64)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut c = Self::channel_from_row(r);
            c.overwrites = self.overwrites(c.id).await?;
            out.push(c);
        }
        Ok(out)
    }

    pub async fn channel(&self, id: ChannelId) -> Result<Channel, ChatError> {
        let r = sqlx::query("SELECT * FROM channels WHERE id = $1")
            .bind(id.get() as i64)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(ChatError::Unknown("channel"))?;
        let mut c = Self::channel_from_row(&r);
        c.overwrites = self.overwrites(id).await?;
        Ok(c)
    }

    /// Whether the voice gateway must refuse clients without DAVE in channel `id`: one column
    /// by primary key, without the overwrites `channel` also reads. Unknown channel: `Unknown`.
    pub async fn channel_requires_dave(&self, id: ChannelId) -> Result<bool, ChatError> {
        let r = sqlx::query("SELECT require_dave FROM channels WHERE id = $1")
            .bind(id.get() as i64)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(ChatError::Unknown("channel"))?;
        Ok(flag(&r, "require_dave"))
    }

    pub async fn create_channel(
        &self,
        guild_id: GuildId,
        spec: ChannelSpec,
    ) -> Result<Channel, ChatError> {
        let name = check_name("name", spec.name.as_deref().unwrap_or(""))?;
        let kind = spec.kind.unwrap_or(ChannelKind::Text);
        if kind == ChannelKind::Voice {
            check_voice_limits(spec.bitrate, spec.user_limit)?;
        }
        check_require_dave(kind, spec.require_dave)?;
        if let Some(Some(t)) = &spec.topic {
            check_topic(t)?;
        }
        if let Some(Some(parent)) = spec.parent_id {
            let p = self.channel(parent).await.map_err(|_| ChatError::Invalid {
                field: "parent_id",
                message: "Unknown category.".into(),
            })?;
            if p.guild_id != guild_id || p.kind != ChannelKind::Category {
                return Err(ChatError::Invalid {
                    field: "parent_id",
                    message: "Not a category of this guild.".into(),
                });
            }
        }
        // The channel and its overwrites appear together or not at all, in the transaction that
        // counted the channel cap.
        let (mut tx, count) = self.begin_capped(guild_id, GuildCap::Channels).await?;
        let id = self.next_id();
        let pos = spec.position.unwrap_or(count);
        let voice = kind == ChannelKind::Voice;
        sqlx::query("INSERT INTO channels (id, guild_id, type, name, position, parent_id, bitrate, user_limit, topic, require_dave) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(id as i64)
            .bind(guild_id.get() as i64)
            .bind(kind as i64)
            .bind(&name)
            .bind(pos)
            .bind(spec.parent_id.flatten().map(|v| v.get() as i64))
            .bind(voice.then(|| spec.bitrate.unwrap_or(64_000) as i64))
            .bind(voice.then(|| spec.user_limit.unwrap_or(0) as i64))
            .bind(spec.topic.flatten())
            .bind(spec.require_dave.unwrap_or(false) as i64)
            .execute(&mut *tx)
            .await?;
        for ow in &spec.overwrites {
            sqlx::query(
                "INSERT INTO overwrites (channel_id, target_id, type, allow, deny) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (channel_id, target_id) DO UPDATE SET type = excluded.type, allow = excluded.allow, deny = excluded.deny",
            )
            .bind(id as i64)
            .bind(ow.target as i64)
            .bind(ow.kind as i64)
            .bind(ow.allow as i64)
            .bind(ow.deny as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.channel(ChannelId(id)).await
    }

    pub async fn update_channel(
        &self,
        id: ChannelId,
        spec: ChannelSpec,
    ) -> Result<Channel, ChatError> {
        let mut c = self.channel(id).await?;
        if let Some(n) = spec.name {
            c.name = check_name("name", &n)?;
        }
        if let Some(p) = spec.position {
            c.position = p;
        }
        if let Some(t) = spec.topic {
            if let Some(t) = &t {
                check_topic(t)?;
            }
            c.topic = t;
        }
        if c.kind == ChannelKind::Voice {
            check_voice_limits(spec.bitrate, spec.user_limit)?;
            if let Some(b) = spec.bitrate {
                c.bitrate = Some(b);
            }
            if let Some(u) = spec.user_limit {
                c.user_limit = Some(u);
            }
        }
        check_require_dave(c.kind, spec.require_dave)?;
        if let Some(r) = spec.require_dave {
            c.require_dave = r;
        }
        sqlx::query("UPDATE channels SET name = $1, position = $2, topic = $3, bitrate = $4, user_limit = $5, require_dave = $6 WHERE id = $7")
            .bind(&c.name)
            .bind(c.position)
            .bind(&c.topic)
            .bind(c.bitrate.map(|v| v as i64))
            .bind(c.user_limit.map(|v| v as i64))
            .bind(c.require_dave as i64)
            .bind(id.get() as i64)
            .execute(&self.pool)
            .await?;
        Ok(c)
    }

    pub async fn delete_channel(&self, id: ChannelId) -> Result<Channel, ChatError> {
        let c = self.channel(id).await?;
        sqlx::query("DELETE FROM channels WHERE id = $1")
            .bind(id.get() as i64)
            .execute(&self.pool)
            .await?;
        Ok(c)
    }

    pub async fn set_overwrite(
        &self,
        channel_id: ChannelId,
        ow: Overwrite,
    ) -> Result<(), ChatError> {
        sqlx::query(
            "INSERT INTO overwrites (channel_id, target_id, type, allow, deny) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (channel_id, target_id) DO UPDATE SET type = excluded.type, allow = excluded.allow, deny = excluded.deny",
        )
            .bind(channel_id.get() as i64)
            .bind(ow.target as i64)
            .bind(ow.kind as i64)
            .bind(ow.allow as i64)
            .bind(ow.deny as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_overwrite(
        &self,
        channel_id: ChannelId,
        target: u64,
    ) -> Result<(), ChatError> {
        sqlx::query("DELETE FROM overwrites WHERE channel_id = $1 AND target_id = $2")
            .bind(channel_id.get() as i64)
            .bind(target as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- members ----

    pub async fn members(
        &self,
        guild_id: GuildId,
        limit: u32,
        after: u64,
    ) -> Result<Vec<Member>, ChatError> {
        let rows = sqlx::query(
            "SELECT m.user_id, m.nick, m.joined_at, u.username, u.bot FROM members m JOIN users u ON u.id = m.user_id \
             WHERE m.guild_id = $1 AND m.user_id > $2 ORDER BY m.user_id LIMIT $3",
        )
        .bind(guild_id.get() as i64)
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        // The page's role assignments in one query (the page is the user ids in (after, last]),
        // not one per member.
        let mut roles: std::collections::HashMap<u64, Vec<RoleId>> =
            std::collections::HashMap::new();
        if let Some(last) = rows.last().map(|r| r.get::<i64, _>("user_id")) {
            let pairs: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT user_id, role_id FROM member_roles \
                 WHERE guild_id = $1 AND user_id > $2 AND user_id <= $3",
            )
            .bind(guild_id.get() as i64)
            .bind(after as i64)
            .bind(last)
            .fetch_all(&self.pool)
            .await?;
            for (u, r) in pairs {
                roles.entry(u as u64).or_default().push(RoleId(r as u64));
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let uid = r.get::<i64, _>("user_id") as u64;
            out.push(Member {
                guild_id,
                user: user_from_row(r, uid),
                nick: r.get("nick"),
                roles: roles.remove(&uid).unwrap_or_default(),
                joined_at: r.get("joined_at"),
            });
        }
        Ok(out)
    }

    pub(crate) async fn member_roles(
        &self,
        guild_id: GuildId,
        user_id: UserId,
    ) -> Result<Vec<RoleId>, ChatError> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT role_id FROM member_roles WHERE guild_id = $1 AND user_id = $2",
        )
        .bind(guild_id.get() as i64)
        .bind(user_id.get() as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(|v| RoleId(v as u64)).collect())
    }

    pub async fn member(&self, guild_id: GuildId, user_id: UserId) -> Result<Member, ChatError> {
        let r = sqlx::query(
            "SELECT m.nick, m.joined_at, u.username, u.bot FROM members m JOIN users u ON u.id = m.user_id WHERE m.guild_id = $1 AND m.user_id = $2",
        )
        .bind(guild_id.get() as i64)
        .bind(user_id.get() as i64)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(ChatError::Unknown("member"))?;
        Ok(Member {
            guild_id,
            user: user_from_row(&r, user_id.get()),
            nick: r.get("nick"),
            roles: self.member_roles(guild_id, user_id).await?,
            joined_at: r.get("joined_at"),
        })
    }

    pub async fn is_member(&self, guild_id: GuildId, user_id: UserId) -> Result<bool, ChatError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE guild_id = $1 AND user_id = $2")
                .bind(guild_id.get() as i64)
                .bind(user_id.get() as i64)
                .fetch_one(&self.pool)
                .await?;
        Ok(n > 0)
    }

    /// Add a member; `false` when already a member.
    pub async fn add_member(&self, guild_id: GuildId, user_id: UserId) -> Result<bool, ChatError> {
        let r = sqlx::query("INSERT INTO members (guild_id, user_id, joined_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(guild_id.get() as i64)
            .bind(user_id.get() as i64)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn remove_member(&self, guild_id: GuildId, user_id: UserId) -> Result<(), ChatError> {
        let r = sqlx::query("DELETE FROM members WHERE guild_id = $1 AND user_id = $2")
            .bind(guild_id.get() as i64)
            .bind(user_id.get() as i64)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(ChatError::Unknown("member"));
        }
        Ok(())
    }

    // ---- permissions ----

    /// A member's permissions in the guild (no channel) or in a channel.
    pub async fn permissions(
        &self,
        guild: &Guild,
        channel: Option<&Channel>,
        user_id: UserId,
    ) -> Result<Permissions, ChatError> {
        let Some(mine) = self.member_role_ids(guild, user_id).await? else {
            return Ok(Permissions(0));
        };
        let roles = self.roles(guild.id).await?;
        Ok(permissions::of_member(
            guild, &roles, &mine, channel, user_id,
        ))
    }

    /// The member's permissions in each of `channels`, reading the member's and the guild's
    /// roles once rather than once per channel (all zero if the user is not in the guild).
    pub async fn channel_permissions(
        &self,
        guild: &Guild,
        channels: &[Channel],
        user_id: UserId,
    ) -> Result<Vec<Permissions>, ChatError> {
        let Some(mine) = self.member_role_ids(guild, user_id).await? else {
            return Ok(vec![Permissions(0); channels.len()]);
        };
        let roles = self.roles(guild.id).await?;
        Ok(channels
            .iter()
            .map(|c| permissions::of_member(guild, &roles, &mine, Some(c), user_id))
            .collect())
    }

    /// How many members the guild has.
    pub async fn member_count(&self, guild_id: GuildId) -> Result<u64, ChatError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE guild_id = $1")
            .bind(guild_id.get() as i64)
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// The member's role ids, or `None` if the user is not in the guild (the owner always is).
    pub async fn member_role_ids(
        &self,
        guild: &Guild,
        user_id: UserId,
    ) -> Result<Option<Vec<RoleId>>, ChatError> {
        if guild.owner_id != user_id && !self.is_member(guild.id, user_id).await? {
            return Ok(None);
        }
        Ok(Some(self.member_roles(guild.id, user_id).await?))
    }
}

fn check_name(field: &'static str, name: &str) -> Result<String, ChatError> {
    crate::names::check_name(field, name, MAX_NAME_LEN)
}

/// Voice channel bitrate 8,000..=384,000 and user_limit 0..=99 (0: no limit), on create and on
/// update alike.
fn check_voice_limits(bitrate: Option<u32>, user_limit: Option<u32>) -> Result<(), ChatError> {
    if bitrate.is_some_and(|b| !(8_000..=384_000).contains(&b)) {
        return Err(ChatError::Invalid {
            field: "bitrate",
            message: "Must be between 8000 and 384000.".into(),
        });
    }
    if user_limit.is_some_and(|u| u > 99) {
        return Err(ChatError::Invalid {
            field: "user_limit",
            message: "Must be between 0 and 99.".into(),
        });
    }
    Ok(())
}

/// Only a voice channel may require DAVE; `false` is accepted anywhere (it is every other
/// channel's value), on create and on update alike.
fn check_require_dave(kind: ChannelKind, require_dave: Option<bool>) -> Result<(), ChatError> {
    if require_dave == Some(true) && kind != ChannelKind::Voice {
        return Err(ChatError::Invalid {
            field: "require_dave",
            message: "Only voice channels can require DAVE.".into(),
        });
    }
    Ok(())
}

/// Create `dir` (and missing parents) readable by the owner only (0700 on Unix): it holds the
/// database and the trunk key. An existing directory keeps its mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// A topic is at most [`MAX_TOPIC_LEN`] characters, without bidirectional overrides or control
/// characters other than line breaks and tabs.
fn check_topic(t: &str) -> Result<(), ChatError> {
    if t.chars().count() > MAX_TOPIC_LEN {
        return Err(ChatError::Invalid {
            field: "topic",
            message: format!("Must be {MAX_TOPIC_LEN} or fewer in length."),
        });
    }
    if t.chars().any(|c| {
        crate::names::is_bidi_control(c) || (c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    }) {
        return Err(ChatError::Invalid {
            field: "topic",
            message: "Control and bidirectional-override characters are not allowed.".into(),
        });
    }
    Ok(())
}

/// Role changes; `None` fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct RoleSpec {
    pub name: Option<String>,
    pub permissions: Option<u64>,
    pub color: Option<u32>,
    pub position: Option<i64>,
}

impl Store {
    pub async fn role(&self, guild_id: GuildId, role_id: RoleId) -> Result<Role, ChatError> {
        self.roles(guild_id)
            .await?
            .into_iter()
            .find(|r| r.id == role_id)
            .ok_or(ChatError::Unknown("role"))
    }

    pub async fn update_role(
        &self,
        guild_id: GuildId,
        role_id: RoleId,
        spec: RoleSpec,
    ) -> Result<Role, ChatError> {
        let mut r = self.role(guild_id, role_id).await?;
        if let Some(n) = spec.name {
            if role_id == RoleId::everyone(guild_id) {
                return Err(ChatError::Invalid {
                    field: "name",
                    message: "The @everyone role cannot be renamed.".into(),
                });
            }
            r.name = check_name("name", &n)?;
        }
        if let Some(p) = spec.permissions {
            r.permissions = p & Permissions::ALL;
        }
        if let Some(c) = spec.color {
            r.color = c & 0xFF_FFFF;
        }
        if let Some(p) = spec.position {
            if role_id != RoleId::everyone(guild_id) {
                r.position = p.max(1);
            }
        }
        sqlx::query("UPDATE roles SET name = $1, permissions = $2, color = $3, position = $4 WHERE id = $5 AND guild_id = $6")
            .bind(&r.name)
            .bind(r.permissions as i64)
            .bind(r.color as i64)
            .bind(r.position)
            .bind(role_id.get() as i64)
            .bind(guild_id.get() as i64)
            .execute(&self.pool)
            .await?;
        Ok(r)
    }

    pub async fn delete_role(&self, guild_id: GuildId, role_id: RoleId) -> Result<(), ChatError> {
        if role_id == RoleId::everyone(guild_id) {
            return Err(ChatError::Invalid {
                field: "role_id",
                message: "The @everyone role cannot be deleted.".into(),
            });
        }
        let r = sqlx::query("DELETE FROM roles WHERE id = $1 AND guild_id = $2")
            .bind(role_id.get() as i64)
            .bind(guild_id.get() as i64)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(ChatError::Unknown("role"));
        }
        sqlx::query("DELETE FROM overwrites WHERE target_id = $1 AND type = 0")
            .bind(role_id.get() as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn remove_member_role(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        role_id: RoleId,
    ) -> Result<(), ChatError> {
        sqlx::query(
            "DELETE FROM member_roles WHERE guild_id = $1 AND user_id = $2 AND role_id = $3",
        )
        .bind(guild_id.get() as i64)
        .bind(user_id.get() as i64)
        .bind(role_id.get() as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The position of a member's highest role (0 = only @everyone); the owner is above all.
    pub async fn top_role_position(
        &self,
        guild: &Guild,
        user_id: UserId,
    ) -> Result<i64, ChatError> {
        if guild.owner_id == user_id {
            return Ok(i64::MAX);
        }
        let p: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(r.position) FROM member_roles mr JOIN roles r ON r.id = mr.role_id WHERE mr.guild_id = $1 AND mr.user_id = $2",
        )
        .bind(guild.id.get() as i64)
        .bind(user_id.get() as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(p.unwrap_or(0))
    }
}

impl Store {
    pub async fn set_nick(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        nick: Option<&str>,
    ) -> Result<(), ChatError> {
        let nick = match nick {
            Some(n) if !n.trim().is_empty() => {
                Some(crate::names::check_name("nick", n, MAX_NICK_LEN)?)
            }
            _ => None,
        };
        let r = sqlx::query("UPDATE members SET nick = $1 WHERE guild_id = $2 AND user_id = $3")
            .bind(nick)
            .bind(guild_id.get() as i64)
            .bind(user_id.get() as i64)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(ChatError::Unknown("member"));
        }
        Ok(())
    }
}

/// Helpers for tests that run the same suite on PostgreSQL.
#[doc(hidden)]
pub mod testing {
    use sqlx::Connection;

    /// Create an empty database next to `admin_url`'s and return its URL.
    pub async fn fresh_postgres(admin_url: &str) -> String {
        let mut c = sqlx::PgConnection::connect(admin_url)
            .await
            .expect("connect to the test PostgreSQL (TEST_POSTGRES_URL)");
        let name = format!("lodge_test_{:016x}", rand::random::<u64>());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .expect("create test database");
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(admin_url);
        format!("{base}/{name}")
    }

    /// `TEST_POSTGRES_URL` → a fresh PostgreSQL database URL; unset → `None` (SQLite).
    pub async fn database_url_from_env() -> Option<String> {
        match std::env::var("TEST_POSTGRES_URL") {
            Ok(admin) if !admin.is_empty() => Some(fresh_postgres(&admin).await),
            _ => None,
        }
    }
}
