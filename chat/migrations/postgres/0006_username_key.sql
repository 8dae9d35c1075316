-- Usernames are unique after Unicode compatibility and case folding (NFKC + case fold, computed
-- by the store: chat/src/names.rs). Rows made before this migration get their key at start-up.
ALTER TABLE users ADD COLUMN username_key TEXT;
CREATE UNIQUE INDEX users_username_key ON users (username_key);
