//! Call-quality summaries: one row per participant per voice call, written when the participant
//! leaves the media node, read back with filters.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::ChatError;
use crate::store::Store;

/// What one participant's call was like (figures measured by the media node; the MOS is the
/// simplified E-model, an estimate).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CallSummary {
    pub id: u64,
    pub guild_id: u64,
    pub channel_id: u64,
    pub user_id: u64,
    /// Unix ms.
    pub started_at: i64,
    pub ended_at: i64,
    pub duration_ms: i64,
    pub packets_in: u64,
    pub packets_out: u64,
    /// Loss of the participant's uplink as the node saw it, percent.
    pub loss_in_pct: Option<f64>,
    /// Loss of the downlink as the participant's receiver reports said, percent.
    pub loss_out_pct: Option<f64>,
    pub jitter_mean_ms: Option<f64>,
    pub jitter_p95_ms: Option<f64>,
    pub rtt_mean_ms: Option<f64>,
    pub mos_estimate: Option<f64>,
    /// Why the call ended: requested, idle, connect_timeout, …
    pub end_reason: String,
}

/// Filters for [`Store::calls`]; every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct CallQuery {
    /// Only these guilds (the caller's); empty means none unless `any_guild`.
    pub guilds: Vec<u64>,
    /// Every guild (the node operator's view).
    pub any_guild: bool,
    pub guild_id: Option<u64>,
    pub channel_id: Option<u64>,
    pub user_id: Option<u64>,
    /// Ended at or after (unix ms).
    pub since: Option<i64>,
    /// Ended before (unix ms).
    pub until: Option<i64>,
    /// Only calls with a MOS estimate below this.
    pub mos_below: Option<f64>,
    pub limit: u32,
    /// Never these channels (the viewer lacks VIEW_CHANNEL there).
    pub hidden_channels: Vec<u64>,
}

/// Largest page of call summaries.
pub const MAX_CALLS_PAGE: u32 = 200;

fn from_row(r: &AnyRow) -> Result<CallSummary, ChatError> {
    Ok(CallSummary {
        id: r.try_get::<i64, _>("id")? as u64,
        guild_id: r.try_get::<i64, _>("guild_id")? as u64,
        channel_id: r.try_get::<i64, _>("channel_id")? as u64,
        user_id: r.try_get::<i64, _>("user_id")? as u64,
        started_at: r.try_get("started_at")?,
        ended_at: r.try_get("ended_at")?,
        duration_ms: r.try_get("duration_ms")?,
        packets_in: r.try_get::<i64, _>("packets_in")? as u64,
        packets_out: r.try_get::<i64, _>("packets_out")? as u64,
        loss_in_pct: r.try_get("loss_in_pct")?,
        loss_out_pct: r.try_get("loss_out_pct")?,
        jitter_mean_ms: r.try_get("jitter_mean_ms")?,
        jitter_p95_ms: r.try_get("jitter_p95_ms")?,
        rtt_mean_ms: r.try_get("rtt_mean_ms")?,
        mos_estimate: r.try_get("mos_estimate")?,
        end_reason: r.try_get("end_reason")?,
    })
}

impl Store {
    /// Persist one summary (its `id` is assigned here and returned).
    pub async fn record_call(&self, mut c: CallSummary) -> Result<CallSummary, ChatError> {
        c.id = self.next_id();
        sqlx::query(
            "INSERT INTO call_quality (id, guild_id, channel_id, user_id, started_at, ended_at, \
             duration_ms, packets_in, packets_out, loss_in_pct, loss_out_pct, jitter_mean_ms, \
             jitter_p95_ms, rtt_mean_ms, mos_estimate, end_reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(c.id as i64)
        .bind(c.guild_id as i64)
        .bind(c.channel_id as i64)
        .bind(c.user_id as i64)
        .bind(c.started_at)
        .bind(c.ended_at)
        .bind(c.duration_ms)
        .bind(c.packets_in as i64)
        .bind(c.packets_out as i64)
        .bind(c.loss_in_pct)
        .bind(c.loss_out_pct)
        .bind(c.jitter_mean_ms)
        .bind(c.jitter_p95_ms)
        .bind(c.rtt_mean_ms)
        .bind(c.mos_estimate)
        .bind(&c.end_reason)
        .execute(&self.pool)
        .await?;
        Ok(c)
    }

    /// Summaries matching `q`, most recently ended first.
    pub async fn calls(&self, q: &CallQuery) -> Result<Vec<CallSummary>, ChatError> {
        let limit = q.limit.clamp(1, MAX_CALLS_PAGE) as usize;
        let opt = |v: Option<u64>| v.map(|x| x as i64).unwrap_or(-1);
        // One static query per guild (a user is in few guilds), merged by end time; the
        // operator's view is one query over all guilds (-1 = any).
        let scopes: Vec<i64> = if q.any_guild {
            vec![opt(q.guild_id)]
        } else {
            q.guilds
                .iter()
                .filter(|g| q.guild_id.is_none_or(|x| x == **g))
                .map(|g| *g as i64)
                .collect()
        };
        // Hidden channels as a NOT IN list of numbered parameters ($8 on); the SQL holds no
        // value, only placeholders.
        let hidden: String = (0..q.hidden_channels.len())
            .map(|i| format!("${}", i + 8))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT * FROM call_quality WHERE ($1 < 0 OR guild_id = $1) \
             AND ($2 < 0 OR channel_id = $2) AND ($3 < 0 OR user_id = $3) \
             AND ended_at >= $4 AND ended_at < $5 \
             AND ($6 < 0 OR (mos_estimate IS NOT NULL AND mos_estimate < $6)) {} \
             ORDER BY ended_at DESC, id DESC LIMIT $7",
            if hidden.is_empty() {
                String::new()
            } else {
                format!("AND channel_id NOT IN ({hidden})")
            }
        );
        let mut out = Vec::new();
        for g in scopes {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(g)
                .bind(opt(q.channel_id))
                .bind(opt(q.user_id))
                .bind(q.since.unwrap_or(0))
                .bind(q.until.unwrap_or(i64::MAX))
                .bind(q.mos_below.unwrap_or(-1.0))
                .bind(limit as i64);
            for c in &q.hidden_channels {
                query = query.bind(*c as i64);
            }
            let rows = query.fetch_all(&self.pool).await?;
            for r in &rows {
                out.push(from_row(r)?);
            }
        }
        out.sort_by_key(|c| std::cmp::Reverse((c.ended_at, c.id)));
        out.truncate(limit);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(guild: u64, channel: u64, user: u64, ended: i64, mos: Option<f64>) -> CallSummary {
        CallSummary {
            id: 0,
            guild_id: guild,
            channel_id: channel,
            user_id: user,
            started_at: ended - 60_000,
            ended_at: ended,
            duration_ms: 60_000,
            packets_in: 3000,
            packets_out: 6000,
            loss_in_pct: Some(0.5),
            loss_out_pct: None,
            jitter_mean_ms: Some(4.0),
            jitter_p95_ms: Some(9.5),
            rtt_mean_ms: Some(30.0),
            mos_estimate: mos,
            end_reason: "requested".into(),
        }
    }

    async fn stores(dir: &tempfile::TempDir) -> Vec<Store> {
        let mut v = vec![Store::open(&dir.path().join("t.db")).await.unwrap()];
        if let Some(url) = crate::store::testing::database_url_from_env().await {
            v.push(Store::open_url(&url).await.unwrap());
        }
        v
    }

    #[tokio::test]
    async fn summaries_round_trip_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        for s in stores(&dir).await {
            let a = s
                .record_call(summary(1, 10, 100, 1_000_000, Some(4.3)))
                .await
                .unwrap();
            s.record_call(summary(1, 11, 101, 1_000_500, Some(3.1)))
                .await
                .unwrap();
            s.record_call(summary(2, 20, 100, 1_001_000, None))
                .await
                .unwrap();
            s.record_call(summary(3, 30, 100, 1_002_000, Some(4.0)))
                .await
                .unwrap();
            let q = |f: fn(&mut CallQuery)| {
                let mut q = CallQuery {
                    guilds: vec![1, 2],
                    limit: 50,
                    ..CallQuery::default()
                };
                f(&mut q);
                q
            };
            let all = s.calls(&q(|_| {})).await.unwrap();
            assert_eq!(all.len(), 3, "guild 3 is not the caller's");
            assert_eq!(all[0].guild_id, 2, "most recent first");
            assert_eq!(all[2], a, "every field survives the round trip");
            assert_eq!(
                s.calls(&q(|q| q.guild_id = Some(1))).await.unwrap().len(),
                2
            );
            assert_eq!(
                s.calls(&q(|q| q.channel_id = Some(11))).await.unwrap()[0].user_id,
                101
            );
            assert_eq!(
                s.calls(&q(|q| q.user_id = Some(100))).await.unwrap().len(),
                2
            );
            assert_eq!(
                s.calls(&q(|q| q.since = Some(1_000_400)))
                    .await
                    .unwrap()
                    .len(),
                2
            );
            assert_eq!(
                s.calls(&q(|q| q.until = Some(1_000_400)))
                    .await
                    .unwrap()
                    .len(),
                1
            );
            let bad = s.calls(&q(|q| q.mos_below = Some(3.5))).await.unwrap();
            assert_eq!(bad.len(), 1);
            assert_eq!(bad[0].mos_estimate, Some(3.1));
            assert_eq!(s.calls(&q(|q| q.limit = 1)).await.unwrap().len(), 1);
            assert!(s
                .calls(&CallQuery {
                    limit: 10,
                    ..CallQuery::default()
                })
                .await
                .unwrap()
                .is_empty());
        }
    }
}
