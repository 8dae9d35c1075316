-- One call-quality summary per participant per voice call (PostgreSQL).
CREATE TABLE call_quality (
    id            BIGINT PRIMARY KEY,
    guild_id      BIGINT NOT NULL,
    channel_id    BIGINT NOT NULL,
    user_id       BIGINT NOT NULL,
    started_at    BIGINT NOT NULL,
    ended_at      BIGINT NOT NULL,
    duration_ms   BIGINT NOT NULL,
    packets_in    BIGINT NOT NULL,
    packets_out   BIGINT NOT NULL,
    loss_in_pct   DOUBLE PRECISION,
    loss_out_pct  DOUBLE PRECISION,
    jitter_mean_ms DOUBLE PRECISION,
    jitter_p95_ms DOUBLE PRECISION,
    rtt_mean_ms   DOUBLE PRECISION,
    mos_estimate  DOUBLE PRECISION,
    end_reason    TEXT NOT NULL
);
CREATE INDEX call_quality_by_guild ON call_quality(guild_id, ended_at);
CREATE INDEX call_quality_by_user ON call_quality(user_id, ended_at);
