//! Call-quality API: persisted call summaries (`GET /quality/calls`), the node's live view
//! (`GET /quality/node`: timeline, channels and participants with their figures) and the same
//! view pushed every two seconds over a WebSocket (`/quality/live`, used by /dashboard). A user
//! sees the channels they may view (VIEW_CHANNEL) in their own guilds; the node operator (`Authorization: Operator <secret>`,
//! see `--operator-token`) sees every channel. Nothing here shows tokens or network addresses.

use lodge_ids::{ChannelId, UserId};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lodge_chat::quality::MAX_CALLS_PAGE;
use lodge_chat::CallQuery;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{token_from_header, ApiQuery, Auth};
use crate::quality::participant_mos;

/// Who is looking: a user (their guilds) or the node operator (everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Viewer {
    User(u64),
    Operator,
}

/// Open `/quality/live` sockets one viewer (a user, or the operator) may hold at once, unless
/// `max_live_sockets_per_viewer` says otherwise.
pub const MAX_LIVE_PER_VIEWER: usize = 4;
/// Open `/quality/live` sockets on the node, authenticated or not (a socket counts from its
/// upgrade, so the 10 s before it authenticates are bounded too), unless `max_live_sockets`
/// says otherwise.
pub const MAX_LIVE_SOCKETS: usize = 256;
/// Close code for a live socket over its viewer's limit (Discord's "rate limited").
pub const CLOSE_TOO_MANY: u16 = 4008;

/// The live sockets open now: node-wide and per viewer. Each socket holds a [`LiveSlot`]
/// that gives its places back when dropped.
#[derive(Default)]
pub struct LiveSockets {
    open: std::sync::Mutex<LiveCounts>,
}

#[derive(Default)]
struct LiveCounts {
    total: usize,
    by_viewer: std::collections::HashMap<Viewer, usize>,
}

/// One live socket's place in [`LiveSockets`].
pub struct LiveSlot {
    s: AppState,
    viewer: Option<Viewer>,
}

impl LiveSockets {
    fn counts(&self) -> std::sync::MutexGuard<'_, LiveCounts> {
        self.open
            .lock()
            .expect("live socket counts are never held across a panic")
    }
}

/// A place for a new socket, or `None` when the node holds `max_live_sockets`.
fn open_slot(s: &AppState) -> Option<LiveSlot> {
    let mut c = s.live_sockets.counts();
    if c.total >= s.cfg.max_live_sockets {
        return None;
    }
    c.total += 1;
    Some(LiveSlot {
        s: s.clone(),
        viewer: None,
    })
}

impl LiveSlot {
    /// Count this socket against `viewer`; false when they already hold
    /// `max_live_sockets_per_viewer`.
    fn claim(&mut self, viewer: Viewer) -> bool {
        let mut c = self.s.live_sockets.counts();
        let n = c.by_viewer.entry(viewer).or_default();
        if *n >= self.s.cfg.max_live_sockets_per_viewer {
            return false;
        }
        *n += 1;
        self.viewer = Some(viewer);
        true
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        let mut c = self.s.live_sockets.counts();
        c.total -= 1;
        if let Some(v) = self.viewer {
            if let std::collections::hash_map::Entry::Occupied(mut e) = c.by_viewer.entry(v) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }
}

impl Viewer {
    /// The guilds this viewer may see, or `None` for all of them.
    async fn guilds(&self, s: &AppState) -> ApiResult<Option<HashSet<u64>>> {
        match self {
            Viewer::Operator => Ok(None),
            Viewer::User(id) => Ok(Some(
                s.store
                    .user_guilds(UserId(*id))
                    .await?
                    .into_iter()
                    .map(|g| g.id.get())
                    .collect(),
            )),
        }
    }

    /// The channels of the viewer's guilds that the viewer may not view (none for the operator).
    async fn hidden_channels(&self, s: &AppState) -> ApiResult<Vec<u64>> {
        let Viewer::User(id) = self else {
            return Ok(Vec::new());
        };
        let mut hidden = Vec::new();
        for g in s.store.user_guilds(UserId(*id)).await? {
            let all = s.store.channels(g.id).await?;
            let perms = s.store.channel_permissions(&g, &all, UserId(*id)).await?;
            hidden.extend(
                all.iter()
                    .zip(perms)
                    .filter(|(_, p)| !p.has(lodge_chat::Permissions::VIEW_CHANNEL))
                    .map(|(c, _)| c.id.get()),
            );
        }
        Ok(hidden)
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        if let Some(secret) = crate::operator::secret_in(&parts.headers) {
            return if crate::operator::is_operator(s, secret) {
                Ok(Viewer::Operator)
            } else {
                Err(ApiError::unauthorized())
            };
        }
        let Auth(u) = Auth::from_request_parts(parts, s).await?;
        Ok(Viewer::User(u.id.get()))
    }
}

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
    viewer: Viewer,
    ApiQuery(q): ApiQuery<CallsQuery>,
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
    let visible = viewer.guilds(&s).await?;
    let query = CallQuery {
        guild_id: parse("guild_id", &q.guild_id, "a snowflake")?,
        channel_id: parse("channel_id", &q.channel_id, "a snowflake")?,
        user_id: parse("user_id", &q.user_id, "a snowflake")?,
        since: parse("since", &q.since, "unix milliseconds")?,
        until: parse("until", &q.until, "unix milliseconds")?,
        mos_below,
        limit,
        hidden_channels: viewer.hidden_channels(&s).await?,
        ..calls_in(&visible)
    };
    let calls = s.store.calls(&query).await?;
    Ok(Json(calls_json(&calls)))
}

/// A call query over the guilds a viewer may see (`None`: all of them).
fn calls_in(visible: &Option<HashSet<u64>>) -> CallQuery {
    CallQuery {
        any_guild: visible.is_none(),
        guilds: visible.iter().flatten().copied().collect(),
        ..CallQuery::default()
    }
}

fn calls_json(calls: &[lodge_chat::CallSummary]) -> Value {
    json!(calls
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
        .collect::<Vec<_>>())
}

/// The live view: node timeline, and each visible channel with its participants' figures.
pub async fn node(State(s): State<AppState>, viewer: Viewer) -> ApiResult<Json<Value>> {
    Ok(Json(node_view(&s, &viewer).await?))
}

/// What the dashboard shows: the node, its timeline, every visible channel with its
/// participants' figures, and the most recent call summaries.
pub async fn node_view(s: &AppState, viewer: &Viewer) -> ApiResult<Value> {
    let report = s.node_report().await;
    let visible = viewer.guilds(s).await?;
    let mut channels: BTreeMap<u64, (u64, String, Vec<Value>)> = BTreeMap::new();
    let mut hidden: HashSet<u64> = HashSet::new();
    let mut views = crate::rest::ChannelViews::default();
    if let Some(r) = &report {
        for p in &r.peers {
            let room = p.room.0;
            if hidden.contains(&room) {
                continue;
            }
            if let std::collections::btree_map::Entry::Vacant(e) = channels.entry(room) {
                let shown = match viewer {
                    Viewer::Operator => s.store.channel(ChannelId(room)).await.ok(),
                    Viewer::User(id) => views.visible(s, room, *id).await,
                };
                match shown {
                    Some(c) => {
                        e.insert((c.guild_id.get(), c.name.clone(), Vec::new()));
                    }
                    None => {
                        hidden.insert(room);
                        continue;
                    }
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
    let calls = s
        .store
        .calls(&CallQuery {
            limit: 20,
            hidden_channels: viewer.hidden_channels(s).await?,
            ..calls_in(&visible)
        })
        .await?;
    let timeline = s.telemetry().timeline();
    Ok(json!({
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
        "recent_calls": calls_json(&calls),
        "thresholds": { "rtt_ms": 400, "jitter_ms": 30, "loss_pct": 3, "mos": 3.5 },
        "mos_note": "MOS values are estimates (simplified ITU-T G.107 E-model)",
    }))
}

/// `GET /quality/live` (WebSocket): the first message authenticates (`{"token": "..."}` or
/// `{"operator_token": "..."}`, within 10 s); then a `{"t": "snapshot", "d": view}` every two
/// seconds (and once at once).
/// Beyond `max_live_sockets` open sockets the upgrade is refused with Discord's 429 body; a
/// viewer's socket beyond `max_live_sockets_per_viewer` is closed with [`CLOSE_TOO_MANY`] once it has
/// authenticated. Either way the refusal names the limit.
pub async fn live(ws: WebSocketUpgrade, State(s): State<AppState>) -> Response {
    let Some(slot) = open_slot(&s) else {
        let limit = s.cfg.max_live_sockets;
        tracing::warn!(
            limit,
            "live quality socket refused: node-wide limit reached (max_live_sockets)"
        );
        let body = json!({
            "message": format!("too many live quality sockets on this node (at most {limit}, max_live_sockets)"),
            "retry_after": crate::quality::SAMPLE_EVERY.as_secs_f64(),
            "global": true,
        });
        let mut res = (axum::http::StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
        res.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("2"),
        );
        return res;
    };
    ws.max_message_size(4096)
        .on_upgrade(move |sock| run_live(s, sock, slot))
}

/// Close with the handshake (`ws::close_with`): our frame, then the client's reply, each
/// bounded, so what the client sent meanwhile is read and the close code reaches it.
async fn close(sock: WebSocket, code: u16, reason: &str) {
    use futures_util::StreamExt;
    let (mut tx, mut rx) = sock.split();
    crate::ws::close_with(&mut tx, &mut rx, code, reason).await;
}

async fn run_live(s: AppState, mut sock: WebSocket, mut slot: LiveSlot) {
    let first = tokio::time::timeout(Duration::from_secs(10), sock.recv()).await;
    let hello = match first {
        Ok(m) => crate::ws::judge(m, 4096),
        Err(_) => {
            return close(
                sock,
                4003,
                "authenticate within 10 s: send {\"token\": \"...\"}",
            )
            .await
        }
    };
    let crate::ws::Inbound::Json(v) = hello else {
        return close(
            sock,
            4002,
            "the first message must be JSON: {\"token\": \"...\"}",
        )
        .await;
    };
    // Subscribed before authenticating, so a revocation racing the first message is seen.
    let mut revoked = s.revoked.subscribe();
    let mut token_hash = None;
    let viewer = if let Some(secret) = v["operator_token"].as_str() {
        if !crate::operator::is_operator(&s, secret) {
            return close(sock, 4004, "operator token refused").await;
        }
        Viewer::Operator
    } else {
        let token = token_from_header(v["token"].as_str().unwrap_or(""));
        match s.store.authenticate(token).await {
            Ok(u) if !token.is_empty() => {
                token_hash = Some(lodge_chat::token_hash(token));
                Viewer::User(u.id.get())
            }
            _ => {
                return close(
                    sock,
                    4004,
                    "token refused: log in and send {\"token\": \"...\"}",
                )
                .await
            }
        }
    };
    if !slot.claim(viewer) {
        let limit = s.cfg.max_live_sockets_per_viewer;
        tracing::info!(
            ?viewer,
            limit,
            "live quality socket refused: per-viewer limit reached (max_live_sockets_per_viewer)"
        );
        return close(
            sock,
            CLOSE_TOO_MANY,
            &format!("too many live quality sockets: at most {limit} per user"),
        )
        .await;
    }
    let mut shutdown = s.shutdown.subscribe();
    let mut tick = tokio::time::interval(crate::quality::SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let d = match node_view(&s, &viewer).await {
                    Ok(d) => d,
                    Err(e) => json!({ "error": e.to_string() }),
                };
                let msg = json!({ "t": "snapshot", "d": d }).to_string();
                if sock.send(Message::Text(msg.into())).await.is_err() { return; }
            }
            m = sock.recv() => match crate::ws::judge(m, 4096) {
                crate::ws::Inbound::Gone => return,
                crate::ws::Inbound::Refuse(c, r) => return close(sock, c, &r).await,
                _ => {}
            },
            _ = shutdown.changed() => return close(sock, 1001, "server shutting down").await,
            r = revoked.recv() => match (r, viewer, &token_hash) {
                (Ok(r), Viewer::User(u), Some(h)) if r.applies_to(u, h) => {
                    return close(sock, 4004, "token revoked").await
                }
                // Missed revocations: ask the store whether this socket's token still holds.
                (Err(tokio::sync::broadcast::error::RecvError::Lagged(_)), Viewer::User(_), Some(h))
                    if !s.store.token_hash_live(h).await.unwrap_or(true) =>
                {
                    return close(sock, 4004, "token revoked").await;
                }
                _ => {}
            },
        }
    }
}
