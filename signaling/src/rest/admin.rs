//! The admin API (`/api/v10/admin/*`, the operator token, see [`crate::operator::Operator`]):
//! runtime control without a restart (see [`crate::admin`] for where each change is kept).
//!
//! - `GET /admin/settings`, `PATCH /admin/settings` — `log_filter`, `rate_limit_route`,
//!   `rate_limit_global`, `joins_frozen` (the kill switch for new voice joins through this
//!   node).
//! - `POST /admin/drain` — drain this node before a restart (as SIGTERM does; see
//!   [`crate::drain`]): 202 with what will happen; asked again, 202 with `already: true`.
//! - `GET /admin/guilds` — every guild with a switch on; `GET /admin/guilds/{id}`,
//!   `PATCH /admin/guilds/{id}` — `voice_off`, `messages_frozen`, `max_slots` (`null` lifts it).
//!
//! A PATCH checks every field before it changes anything, and answers with the state after it.

use axum::extract::{Path, State};
use axum::Json;
use lodge_ids::GuildId;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::Setting;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{present, snowflake, ApiJson};
use crate::operator::Operator;
use crate::shared::guild_switches::{GuildSwitches, SwitchChange};

/// The largest rate limit the admin API sets (requests per window): beyond it a limit is no
/// limit.
pub const MAX_RATE_LIMIT: u32 = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    log_filter: Option<String>,
    rate_limit_route: Option<u32>,
    rate_limit_global: Option<u32>,
    joins_frozen: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuildChange {
    voice_off: Option<bool>,
    messages_frozen: Option<bool>,
    /// A number, or `null` to lift the cap (absent: unchanged).
    #[serde(default, deserialize_with = "present")]
    max_slots: Option<Value>,
}

fn settings(s: &AppState) -> Value {
    let log = s.admin.log_filter.get();
    json!({
        "log_filter": log.map(|l| l.get()),
        "log_filter_reloadable": log.is_some(),
        "rate_limit_route": s.limits.route(),
        "rate_limit_route_window_secs": s.limits.route_window.as_secs(),
        "rate_limit_global": s.limits.global(),
        "joins_frozen": s.admin.joins_frozen(),
    })
}

/// Start draining this node (idempotent): 202 Accepted with the plan.
pub async fn drain(
    State(s): State<AppState>,
    op: Operator,
) -> (axum::http::StatusCode, Json<crate::drain::Plan>) {
    let by = format!("admin API ({})", op.who);
    let plan = crate::drain::start(&s, &by).await;
    (axum::http::StatusCode::ACCEPTED, Json(plan))
}

pub async fn get_settings(State(s): State<AppState>, _op: Operator) -> Json<Value> {
    Json(settings(&s))
}

fn rate_limit(field: &str, v: Option<u32>) -> ApiResult<Option<u32>> {
    match v {
        Some(n) if !(1..=MAX_RATE_LIMIT).contains(&n) => Err(ApiError::bad_request(
            field,
            format!("{field} must be 1..={MAX_RATE_LIMIT} requests per window"),
        )),
        v => Ok(v),
    }
}

pub async fn patch_settings(
    State(s): State<AppState>,
    op: Operator,
    ApiJson(b): ApiJson<SettingsChange>,
) -> ApiResult<Json<Value>> {
    let route = rate_limit("rate_limit_route", b.rate_limit_route)?;
    let global = rate_limit("rate_limit_global", b.rate_limit_global)?;
    let log = match &b.log_filter {
        None => None,
        Some(f) => {
            let Some(log) = s.admin.log_filter.get() else {
                return Err(ApiError::bad_request(
                    "log_filter",
                    "this node's logger cannot be reloaded (it was not started by `lodge serve`)",
                ));
            };
            // Checked here so that a bad filter changes nothing else.
            if let Err(e) = crate::admin::LogFilter::parse(f) {
                return Err(ApiError::bad_request(
                    "log_filter",
                    format!(
                        "log_filter is not a valid filter (e.g. \"info,lodge_signaling=debug\"): {e}"
                    ),
                ));
            }
            Some((log, f.as_str()))
        }
    };
    let who = op.who.as_str();
    if let Some((log, f)) = log {
        // Logged before the change, so the record shows under the filter it was asked under.
        let old = log.get();
        s.admin.changed(who, Setting::LogFilter, "node", &old, f);
        log.set(f)
            .map_err(|e| ApiError::bad_request("log_filter", e))?;
    }
    if let Some(n) = route {
        let old = s.limits.set_route(n);
        s.admin.changed(
            who,
            Setting::RateLimitRoute,
            "node",
            &old.to_string(),
            &n.to_string(),
        );
    }
    if let Some(n) = global {
        let old = s.limits.set_global(n);
        s.admin.changed(
            who,
            Setting::RateLimitGlobal,
            "node",
            &old.to_string(),
            &n.to_string(),
        );
    }
    if let Some(on) = b.joins_frozen {
        let old = s.admin.set_joins_frozen(on);
        s.admin.changed(
            who,
            Setting::JoinsFrozen,
            "node",
            &old.to_string(),
            &on.to_string(),
        );
    }
    Ok(Json(settings(&s)))
}

fn guild_json(g: GuildId, sw: &GuildSwitches) -> Value {
    json!({
        "guild_id": g.to_string(),
        "voice_off": sw.voice_off,
        "messages_frozen": sw.messages_frozen,
        "max_slots": sw.max_slots,
    })
}

pub async fn list_guilds(State(s): State<AppState>, _op: Operator) -> ApiResult<Json<Value>> {
    let all = s.shared.guild_switches.all().await?;
    Ok(Json(json!({
        "guilds": all.iter().map(|(g, sw)| guild_json(*g, sw)).collect::<Vec<_>>(),
    })))
}

async fn known_guild(s: &AppState, id: &str) -> ApiResult<GuildId> {
    let g = GuildId(snowflake(id, "guild")?);
    // 404 Unknown Guild for a guild that does not exist.
    s.store.guild(g).await?;
    Ok(g)
}

pub async fn get_guild(
    State(s): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let g = known_guild(&s, &id).await?;
    let sw = s.shared.guild_switches.get(g).await?;
    Ok(Json(guild_json(g, &sw)))
}

fn max_slots(v: Option<Value>) -> ApiResult<Option<Option<u8>>> {
    let max = lodge_sfu::MAX_SLOTS;
    match v {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=max as u64).contains(n))
            .map(|n| Some(Some(n as u8)))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "max_slots",
                    format!("max_slots must be 1..={max} speaker slots, or null to lift the cap"),
                )
            }),
    }
}

pub async fn patch_guild(
    State(s): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<GuildChange>,
) -> ApiResult<Json<Value>> {
    let change = SwitchChange {
        voice_off: b.voice_off,
        messages_frozen: b.messages_frozen,
        max_slots: max_slots(b.max_slots)?,
    };
    let g = known_guild(&s, &id).await?;
    let (old, new) = s.shared.guild_switches.change(g, &change).await?;
    let scope = format!("guild {g}");
    let slots = |v: Option<u8>| v.map_or("none".to_string(), |n| n.to_string());
    for (setting, asked, before, after) in [
        (
            Setting::VoiceOff,
            change.voice_off.is_some(),
            old.voice_off.to_string(),
            new.voice_off.to_string(),
        ),
        (
            Setting::MessagesFrozen,
            change.messages_frozen.is_some(),
            old.messages_frozen.to_string(),
            new.messages_frozen.to_string(),
        ),
        (
            Setting::MaxSlots,
            change.max_slots.is_some(),
            slots(old.max_slots),
            slots(new.max_slots),
        ),
    ] {
        if asked {
            s.admin.changed(&op.who, setting, &scope, &before, &after);
        }
    }
    if new.voice_off && !old.voice_off {
        // Voice off means off: the calls in progress end too (on whichever node hosts them).
        crate::voice::service::disconnect_guild(&s, g).await;
    }
    Ok(Json(guild_json(g, &new)))
}
