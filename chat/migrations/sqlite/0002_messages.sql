-- Messages and reactions (SQLite).
CREATE TABLE messages (
    id           INTEGER PRIMARY KEY,
    channel_id   INTEGER NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    guild_id     INTEGER NOT NULL,
    author_id    INTEGER NOT NULL REFERENCES users(id),
    content      TEXT NOT NULL,
    nonce        TEXT,
    tts          INTEGER NOT NULL DEFAULT 0,
    mention_everyone INTEGER NOT NULL DEFAULT 0,
    reference_id INTEGER,
    reference_channel_id INTEGER,
    edited_at    INTEGER,
    created_at   INTEGER NOT NULL
);
CREATE INDEX messages_by_channel ON messages(channel_id, id);
CREATE INDEX messages_by_nonce ON messages(channel_id, author_id, nonce) WHERE nonce IS NOT NULL;

CREATE TABLE message_mentions (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    kind       INTEGER NOT NULL, -- 0 user, 1 role
    target_id  INTEGER NOT NULL,
    PRIMARY KEY (message_id, kind, target_id)
);

CREATE TABLE reactions (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    emoji      TEXT NOT NULL,
    user_id    INTEGER NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (message_id, emoji, user_id)
);
