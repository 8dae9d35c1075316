-- Lodge guild model (PostgreSQL). Ids are snowflakes (BIGINT); flags are 0/1 BIGINT so the same
-- queries serve SQLite and PostgreSQL.
CREATE TABLE users (
    id            BIGINT PRIMARY KEY,
    username      TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    bot           BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_username_lower ON users (lower(username));

CREATE TABLE tokens (
    hash       TEXT PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    revoked    BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE guilds (
    id         BIGINT PRIMARY KEY,
    name       TEXT NOT NULL,
    owner_id   BIGINT NOT NULL REFERENCES users(id),
    created_at BIGINT NOT NULL
);

CREATE TABLE roles (
    id          BIGINT PRIMARY KEY,
    guild_id    BIGINT NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    permissions BIGINT NOT NULL,
    position    BIGINT NOT NULL DEFAULT 0,
    color       BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE channels (
    id         BIGINT PRIMARY KEY,
    guild_id   BIGINT NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    type       BIGINT NOT NULL,
    name       TEXT NOT NULL,
    position   BIGINT NOT NULL DEFAULT 0,
    parent_id  BIGINT,
    bitrate    BIGINT,
    user_limit BIGINT,
    topic      TEXT
);

CREATE TABLE overwrites (
    channel_id BIGINT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    target_id  BIGINT NOT NULL,
    type       BIGINT NOT NULL,
    allow      BIGINT NOT NULL,
    deny       BIGINT NOT NULL,
    PRIMARY KEY (channel_id, target_id)
);

CREATE TABLE members (
    guild_id  BIGINT NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    user_id   BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    nick      TEXT,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

CREATE TABLE member_roles (
    guild_id BIGINT NOT NULL,
    user_id  BIGINT NOT NULL,
    role_id  BIGINT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    PRIMARY KEY (guild_id, user_id, role_id),
    FOREIGN KEY (guild_id, user_id) REFERENCES members(guild_id, user_id) ON DELETE CASCADE
);

CREATE TABLE invites (
    code       TEXT PRIMARY KEY,
    guild_id   BIGINT NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    channel_id BIGINT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    inviter_id BIGINT NOT NULL,
    max_uses   BIGINT NOT NULL DEFAULT 0,
    uses       BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT,
    created_at BIGINT NOT NULL
);

CREATE INDEX channels_by_guild ON channels(guild_id);
CREATE INDEX roles_by_guild ON roles(guild_id);
CREATE INDEX members_by_user ON members(user_id);
