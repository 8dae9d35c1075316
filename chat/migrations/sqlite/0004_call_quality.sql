-- One call-quality summary per participant per voice call (SQLite).
CREATE TABLE call_quality (
    id            INTEGER PRIMARY KEY,
    guild_id      INTEGER NOT NULL,
    channel_id    INTEGER NOT NULL,
    user_id       INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    ended_at      INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL,
    packets_in    INTEGER NOT NULL,
    packets_out   INTEGER NOT NULL,
    loss_in_pct   REAL,
    loss_out_pct  REAL,
    jitter_mean_ms REAL,
    jitter_p95_ms REAL,
    rtt_mean_ms   REAL,
    mos_estimate  REAL,
    end_reason    TEXT NOT NULL
);
CREATE INDEX call_quality_by_guild ON call_quality(guild_id, ended_at);
CREATE INDEX call_quality_by_user ON call_quality(user_id, ended_at);
