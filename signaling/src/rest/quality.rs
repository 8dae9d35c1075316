//! Call-quality API: persisted call summaries (`GET /quality/calls`) and the node's live view
//! (`GET /quality/node`: timeline, channels and participants with their figures). Both are
//! limited to the guilds the caller belongs to; neither shows tokens or network addresses.

use std::collections::{BTreeMap, HashSet};

use axum::extract::{Query, State};
use axum::Json;
use lodge_chat::quality::MAX_CALLS_PAGE;
use lodge_chat::CallQuery;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Auth;
use crate::quality::participant_mos;

/// Every filter is a string so that a bad value gets Discord's form error, not a plain 400.
#[derive(Deserialize, Default)]
pub struct CallsQuery {
    guild_id: Option<String>,
    channel_id: Option<String>,
    user_id: Option<String>,
    /// Ended at or after, unix ms.
    since: Option<String>,
    /// Ended before, unix ms.
    until: Option<String>,
    mos_below: Option<String>,
    limit: Option<String>,
}

fn parse<T: std::str::FromStr>(
    field: &str,
    v: &Option<String>,
    what: &str,
) -> ApiResult<Option<T>> {
    v.as_deref()
        .map(|s| {
            s.parse::<T>()
                .map_err(|_| ApiError::bad_request(field, format!("{field} must be {what}")))
        })
        .transpose()
}

pub async fn calls(
    State(s): State<AppState>,
    Auth(u): Auth,
    Query(q): Query<CallsQuery>,
) -> ApiResult<Json<Value>> {
    let limit = parse::<u32>("limit", &q.limit, "a number")?.unwrap_or(50);
    if !(1..=MAX_CALLS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "limit",
            format!("limit must be 1..={MAX_CALLS_PAGE}"),
        ));
    }
    let mos_below = parse::<f64>("mos_below", &q.mos_below, "a number")?;
    if mos_below.is_some_and(|m| !(1.0..=5.0).contains(&m)) {
        return Err(ApiError::bad_request(
            "mos_below",
            "mos_below must be 1..=5",
        ));
    }
    let guilds: Vec<u64> = s
        .store
        .user_guilds(u.id)
        .await?
        .into_iter()
        .map(|g| g.id)
        .collect();
    let query = CallQuery {
        guilds,
        guild_id: parse("guild_id", &q.guild_id, "a snowflake")?,
        channel_id: parse("channel_id", &q.channel_id, "a snowflake")?,
        user_id: parse("user_id", &q.user_id, "a snowflake")?,
        since: parse("since", &q.since, "unix milliseconds")?,
        until: parse("until", &q.until, "unix milliseconds")?,
        mos_below,
        limit,
    };
    let calls = s.store.calls(&query).await?;
    Ok(Json(json!(calls
        .iter()
        .map(|c| json!({
            "id": c.id.to_string(),
            "guild_id": c.guild_id.to_string(),
            "channel_id": c.channel_id.to_string(),
            "user_id": c.user_id.to_string(),
            "started_at": c.started_at,
            "ended_at": c.ended_at,
            "duration_ms": c.duration_ms,
            "packets_in": c.packets_in,
            "packets_out": c.packets_out,
            "loss_in_pct": c.loss_in_pct,
            "loss_out_pct": c.loss_out_pct,
            "jitter_mean_ms": c.jitter_mean_ms,
            "jitter_p95_ms": c.jitter_p95_ms,
            "rtt_mean_ms": c.rtt_mean_ms,
            "mos_estimate": c.mos_estimate,
            "end_reason": c.end_reason,
        }))
        .collect::<Vec<_>>())))
}

/// The live view: node timeline, and each visible channel with its participants' figures.
pub async fn node(State(s): State<AppState>, Auth(u): Auth) -> ApiResult<Json<Value>> {
    let report = s.sfu.report().await;
    let mine: HashSet<u64> = s
        .store
        .user_guilds(u.id)
        .await?
        .into_iter()
        .map(|g| g.id)
        .collect();
    let mut channels: BTreeMap<u64, (u64, String, Vec<Value>)> = BTreeMap::new();
    if let Some(r) = &report {
        for p in &r.peers {
            let room = p.room.0;
            if !channels.contains_key(&room) {
                match s.store.channel(room).await {
                    Ok(c) if mine.contains(&c.guild_id) => {
                        channels.insert(room, (c.guild_id, c.name.clone(), Vec::new()));
                    }
                    _ => continue,
                }
            }
            let Some(entry) = channels.get_mut(&room) else {
                continue;
            };
            let st = &p.stats;
            entry.2.push(json!({
                "user_id": p.user.0.to_string(),
                "connected": p.connected,
                "muted": p.self_mute || p.server_mute,
                "packets_in": st.packets_in,
                "packets_out": st.packets_out,
                "bytes_in": st.bytes_in,
                "bytes_out": st.bytes_out,
                "loss_in_pct": st.loss_in.map(|l| l as f64 * 100.0),
                "loss_out_pct": st.loss_out.map(|l| l as f64 * 100.0),
                "jitter_in_ms": st.jitter_in_ms,
                "jitter_out_ms": st.jitter_out_ms,
                "rtt_ms": st.rtt_ms,
                "slot_switches": st.slot_switches,
                "mos_estimate": participant_mos(st),
                "drops": p.drops.iter().map(|(r, n)| json!({ "reason": r, "count": n })).collect::<Vec<_>>(),
            }));
        }
    }
    let timeline = s.telemetry().timeline();
    Ok(Json(json!({
        "node": report.as_ref().map(|r| json!({
            "participants": r.participants,
            "rooms": r.rooms,
            "rtp_in": r.rtp_in,
            "rtp_forwarded": r.rtp_forwarded,
        })),
        "timeline": timeline,
        "channels": channels.into_iter().map(|(id, (g, name, peers))| json!({
            "id": id.to_string(), "guild_id": g.to_string(), "name": name, "participants": peers,
        })).collect::<Vec<_>>(),
        "mos_note": "MOS values are estimates (simplified ITU-T G.107 E-model)",
    })))
}
