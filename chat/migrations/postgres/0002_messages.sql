-- Messages and reactions (PostgreSQL).
CREATE TABLE messages (
    id           BIGINT PRIMARY KEY,
    channel_id   BIGINT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    guild_id     BIGINT NOT NULL,
    author_id    BIGINT NOT NULL REFERENCES users(id),
    content      TEXT NOT NULL,
    nonce        TEXT,
    tts          BIGINT NOT NULL DEFAULT 0,
    mention_everyone BIGINT NOT NULL DEFAULT 0,
    reference_id BIGINT,
    reference_channel_id BIGINT,
    edited_at    BIGINT,
    created_at   BIGINT NOT NULL
);
CREATE INDEX messages_by_channel ON messages(channel_id, id);
CREATE INDEX messages_by_nonce ON messages(channel_id, author_id, nonce) WHERE nonce IS NOT NULL;

CREATE TABLE message_mentions (
    message_id BIGINT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    kind       BIGINT NOT NULL,
    target_id  BIGINT NOT NULL,
    PRIMARY KEY (message_id, kind, target_id)
);

CREATE TABLE reactions (
    message_id BIGINT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    emoji      TEXT NOT NULL,
    user_id    BIGINT NOT NULL REFERENCES users(id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (message_id, emoji, user_id)
);
