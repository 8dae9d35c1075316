//! Operations endpoints and gateway discovery.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Auth;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: started, not shutting down or draining, and the media loop running. Asks the media thread for
/// nothing (a probe may be frequent).
pub async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::Relaxed) && s.sfu.is_running() && !s.drain.is_draining() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

pub async fn gateway(State(s): State<AppState>) -> Json<Value> {
    Json(json!({ "url": s.cfg.gateway_url() }))
}

/// The gateway URL and what is left of the caller's `session_start_limit` (enforced at
/// Identify).
pub async fn gateway_bot(State(s): State<AppState>, Auth(u): Auth) -> Json<Value> {
    let l = s.session_starts.remaining(u.id).await;
    Json(json!({
        "url": s.cfg.gateway_url(),
        "shards": 1,
        "session_start_limit": {
            "total": l.total,
            "remaining": l.remaining,
            "reset_after": l.reset_after.as_millis() as u64,
            "max_concurrency": l.max_concurrency,
        },
    }))
}

pub async fn api_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, 0, "404: Not Found")
}

/// Per-participant media figures (packets, bytes, loss, jitter, RTT, slots, drops) for the voice
/// channels the caller may view (VIEW_CHANNEL), plus node-wide totals.
pub async fn voice_stats(State(s): State<AppState>, Auth(u): Auth) -> ApiResult<Json<Value>> {
    let r = s.node_report().await.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            0,
            "media node is not running",
        )
    })?;
    let mut visible = crate::rest::ChannelViews::default();
    let mut peers = Vec::with_capacity(r.peers.len());
    for p in &r.peers {
        if visible.can_view(&s, p.room.0, u.id.get()).await {
            peers.push(p);
        }
    }
    let mut v = serde_json::to_value(&*r).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "peers".into(),
            serde_json::to_value(peers).unwrap_or(Value::Null),
        );
    }
    Ok(Json(v))
}

/// Prometheus text format. No tokens, user names or addresses: only counts.
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    if let Some(r) = s.node_report().await {
        let mut g = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP lodge_{name} {help}\n# TYPE lodge_{name} {kind}\nlodge_{name} {v}"
            );
        };
        g(
            "participants",
            "WebRTC participants on this node",
            "gauge",
            r.participants as u64,
        );
        g(
            "rooms",
            "Voice channels with participants on this node",
            "gauge",
            r.rooms as u64,
        );
        g(
            "udp_datagrams_received_total",
            "UDP datagrams received on the media port (ICE-TCP frames included; also counted as lodge_ice_tcp_frames_received_total)",
            "counter",
            r.datagrams_in,
        );
        g(
            "udp_datagrams_sent_total",
            "UDP datagrams sent from the media port (ICE-TCP frames included; also counted as lodge_ice_tcp_frames_sent_total)",
            "counter",
            r.datagrams_out,
        );
        g(
            "udp_bytes_received_total",
            "UDP bytes received",
            "counter",
            r.bytes_in,
        );
        g(
            "udp_bytes_sent_total",
            "UDP bytes sent",
            "counter",
            r.bytes_out,
        );
        g(
            "rtp_received_total",
            "RTP packets received from speakers",
            "counter",
            r.rtp_in,
        );
        g(
            "rtp_forwarded_total",
            "RTP packets forwarded into listener slots",
            "counter",
            r.rtp_forwarded,
        );
        g(
            "rtp_direct_total",
            "Of the forwarded RTP packets, those written and sealed from the listener slot's own context (direct sends) rather than through its WebRTC session",
            "counter",
            r.rtp_direct,
        );
        g(
            "direct_context_reads_total",
            "Times a listener slot read its direct-send context from its WebRTC session (its first copy, and the first after anything that may have changed the session's send state); far fewer than lodge_rtp_direct_total when all is well",
            "counter",
            r.direct_context_reads,
        );
        g(
            "rtp_queued_total",
            "Forwarded RTP packets the WebRTC stack could not send directly (written to its queue)",
            "counter",
            r.rtp_queued,
        );
        g(
            "rtp_deferred_total",
            "Forwarded RTP packets the WebRTC stack did not transmit at once (queued)",
            "counter",
            r.rtp_deferred,
        );
        g(
            "native_discovery_total",
            "IP discovery requests answered on the media port (native UDP voice)",
            "counter",
            r.native_discovery,
        );
        g(
            "native_keepalives_total",
            "Keepalives received from native UDP voice participants",
            "counter",
            r.native_keepalives,
        );
        g(
            "native_reports_total",
            "Sender reports from native UDP voice participants, each answered with a receiver report",
            "counter",
            r.native_reports,
        );
        g(
            "dave_frames_total",
            "Speaker packets whose payload is a DAVE frame (end-to-end encrypted, forwarded without keys)",
            "counter",
            r.dave_frames_in,
        );
        g(
            "ice_tcp_frames_received_total",
            "RFC 4571 frames received on ICE-TCP connections to the media port",
            "counter",
            r.tcp_frames_in,
        );
        g(
            "ice_tcp_frames_sent_total",
            "RFC 4571 frames sent on ICE-TCP connections",
            "counter",
            r.tcp_frames_out,
        );
        if let Some(t) = &r.ice_tcp {
            g(
                "ice_tcp_connections",
                "Open ICE-TCP connections on the media port",
                "gauge",
                t.connections as u64,
            );
            g(
                "ice_tcp_accepted_total",
                "ICE-TCP connections accepted",
                "counter",
                t.accepted,
            );
            let _ = writeln!(out, "# HELP lodge_ice_tcp_closed_total ICE-TCP connections closed by the node or the peer, by reason\n# TYPE lodge_ice_tcp_closed_total counter");
            for (reason, n) in [
                ("over_limit", t.refused_over_limit),
                ("unauthenticated", t.closed_unauthenticated),
                ("idle", t.closed_idle),
                ("slow", t.closed_slow),
                ("oversized", t.closed_oversized),
                ("peer", t.closed_by_peer),
            ] {
                let _ = writeln!(out, "lodge_ice_tcp_closed_total{{reason=\"{reason}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# HELP lodge_dropped_total Datagrams or packets not forwarded, by reason\n# TYPE lodge_dropped_total counter");
        for (reason, n) in &r.drops {
            let _ = writeln!(out, "lodge_dropped_total{{reason=\"{reason}\"}} {n}");
        }
        crate::quality::write_participant_metrics(&mut out, &r);
        let d = &r.forward_delay;
        let _ = writeln!(out, "# HELP lodge_forward_delay_seconds Time datagrams spend inside the node (receive batch returned → each datagram a received one caused sent; timer-driven sends not included), since start\n# TYPE lodge_forward_delay_seconds summary");
        for (q, v) in [
            ("0.5", d.p50_us),
            ("0.99", d.p99_us),
            ("0.999", d.p999_us),
            ("1", d.max_us),
        ] {
            let _ = writeln!(
                out,
                "lodge_forward_delay_seconds{{quantile=\"{q}\"}} {}",
                v as f64 / 1e6
            );
        }
        let _ = writeln!(out, "lodge_forward_delay_seconds_count {}", d.count);
        // The same datagrams in fixed buckets: two scrapes give the delay between them.
        let _ = writeln!(out, "# HELP lodge_forward_delay_hist_seconds Time datagrams spend inside the node, cumulative buckets since start (subtract two scrapes for an interval)\n# TYPE lodge_forward_delay_hist_seconds histogram");
        for (le, n) in lodge_sfu::shell::FORWARD_DELAY_BUCKETS_US
            .iter()
            .zip(&d.buckets)
        {
            let _ = writeln!(
                out,
                "lodge_forward_delay_hist_seconds_bucket{{le=\"{}\"}} {n}",
                *le as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "lodge_forward_delay_hist_seconds_bucket{{le=\"+Inf\"}} {}",
            d.count
        );
        let _ = writeln!(
            out,
            "lodge_forward_delay_hist_seconds_sum {}",
            d.sum_us / 1e6
        );
        let _ = writeln!(out, "lodge_forward_delay_hist_seconds_count {}", d.count);
    }
    if let Some(cpu) = crate::quality::process_cpu_seconds() {
        let _ = writeln!(out, "# HELP lodge_process_cpu_seconds_total CPU time of the node process (user + system)\n# TYPE lodge_process_cpu_seconds_total counter\nlodge_process_cpu_seconds_total {cpu}");
    }
    let _ = writeln!(out, "# HELP lodge_media_workers Media workers the node runs, and those still running (a stopped one takes its rooms with it and fails /readyz)\n# TYPE lodge_media_workers gauge\nlodge_media_workers{{state=\"configured\"}} {}\nlodge_media_workers{{state=\"running\"}} {}", s.sfu.workers(), s.sfu.workers_running());
    let recorded = s.telemetry().calls_recorded;
    let _ = writeln!(out, "# HELP lodge_call_summaries_total Call-quality summaries persisted since start\n# TYPE lodge_call_summaries_total counter\nlodge_call_summaries_total {recorded}");
    crate::http_server::write_metrics(&mut out, &s);
    crate::admin::write_metrics(&mut out, &s).await;
    let (states, conns, slow, parked, resumes, expired, relays_dropped) = {
        let v = s.voice();
        (
            v.by_user.len(),
            v.conns.len(),
            v.slow_consumers_closed,
            v.parked.len(),
            v.resumes,
            v.resumes_expired,
            v.speaking_relays_dropped,
        )
    };
    let dave = s.voice().dave.totals();
    let _ = writeln!(out, "# HELP lodge_dave_calls Voice calls with callers on this node (DAVE coordinators), and those running DAVE (end-to-end encrypted) now\n# TYPE lodge_dave_calls gauge\nlodge_dave_calls{{state=\"any\"}} {}\nlodge_dave_calls{{state=\"e2ee\"}} {}", dave.calls, dave.dave_calls);
    let st = &dave.stats;
    let _ = writeln!(out, "# HELP lodge_dave_events_total DAVE coordinator events: commits accepted, transitions executed (all ACKed) or timed out, downgrades, upgrades, sole-member resets\n# TYPE lodge_dave_events_total counter\nlodge_dave_events_total{{event=\"commit_accepted\"}} {}\nlodge_dave_events_total{{event=\"transition_executed\"}} {}\nlodge_dave_events_total{{event=\"transition_timed_out\"}} {}\nlodge_dave_events_total{{event=\"downgrade\"}} {}\nlodge_dave_events_total{{event=\"upgrade\"}} {}\nlodge_dave_events_total{{event=\"sole_member_reset\"}} {}", st.commits_accepted, st.transitions_executed, st.transitions_timed_out, st.downgrades, st.upgrades, st.sole_member_resets);
    let _ = writeln!(out, "# HELP lodge_dave_refused_total DAVE messages from clients refused (dropped), by reason; over_budget: binary frames over {} per second per connection\n# TYPE lodge_dave_refused_total counter", crate::voice::e2ee::DAVE_FRAMES_PER_S);
    for kind in crate::voice::dave::DaveError::KINDS {
        let n = dave.refused.get(kind).copied().unwrap_or(0);
        let _ = writeln!(out, "lodge_dave_refused_total{{reason=\"{kind}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "lodge_dave_refused_total{{reason=\"over_budget\"}} {}",
        dave.over_budget
    );
    let _ = writeln!(out, "# HELP lodge_voice_speaking_relays_dropped_total Op 5 speaking changes of native clients not relayed to the channel (over 2/s, burst 10, per connection)\n# TYPE lodge_voice_speaking_relays_dropped_total counter\nlodge_voice_speaking_relays_dropped_total {relays_dropped}");
    let (live, detached) = s.sessions.counts();
    let _ = writeln!(out, "# HELP lodge_voice_states Callers whose voice connection this node hosts\n# TYPE lodge_voice_states gauge\nlodge_voice_states {states}");
    let _ = writeln!(out, "# HELP lodge_voice_connections Open voice gateway connections\n# TYPE lodge_voice_connections gauge\nlodge_voice_connections {conns}");
    let _ = writeln!(out, "# HELP lodge_voice_slow_consumers_closed_total Voice connections closed because the client did not keep up (outbox full or a write timed out)\n# TYPE lodge_voice_slow_consumers_closed_total counter\nlodge_voice_slow_consumers_closed_total {slow}");
    let _ = writeln!(out, "# HELP lodge_voice_parked Voice connections whose socket dropped, kept for a resume (op 7)\n# TYPE lodge_voice_parked gauge\nlodge_voice_parked {parked}");
    let _ = writeln!(out, "# HELP lodge_voice_resumes_total Voice connections taken up again by op 7 (resumed), and parked ones whose grace ran out (expired)\n# TYPE lodge_voice_resumes_total counter\nlodge_voice_resumes_total{{outcome=\"resumed\"}} {resumes}\nlodge_voice_resumes_total{{outcome=\"expired\"}} {expired}");
    let _ = writeln!(out, "# HELP lodge_gateway_sessions Gateway sessions, connected or resumable\n# TYPE lodge_gateway_sessions gauge\nlodge_gateway_sessions{{state=\"connected\"}} {live}\nlodge_gateway_sessions{{state=\"resumable\"}} {detached}");
    if let Some(c) = s.cluster.get() {
        crate::cluster::write_metrics(c, &mut out).await;
    }
    crate::drain::write_metrics(&s, &mut out);
    if s.shared.clustered {
        crate::nodes::write_metrics(&s, &mut out);
    }
    if let Some(r) = s.redis.get() {
        use std::sync::atomic::Ordering::Relaxed;
        r.stats.write_metrics(&mut out);
        let _ = writeln!(out, "# HELP lodge_bus_published_total Dispatches this node published on the cluster bus\n# TYPE lodge_bus_published_total counter\nlodge_bus_published_total {}", r.publish.published.load(Relaxed));
        let _ = writeln!(out, "# HELP lodge_bus_publish_failed_total Dispatches this node could not publish (Redis unreachable); their routes' sessions are told\n# TYPE lodge_bus_publish_failed_total counter\nlodge_bus_publish_failed_total {}", r.publish.failed.load(Relaxed));
        let _ = writeln!(out, "# HELP lodge_bus_gap_markers_total Gap markers this node published after failed publishes\n# TYPE lodge_bus_gap_markers_total counter\nlodge_bus_gap_markers_total {}", r.publish.gap_markers.load(Relaxed));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
