//! The voice load report: what callers heard (loss, jitter, mouth-to-ear delay, MOS estimate
//! from the probes), how joining went, and the server's cost per forwarded packet; per node when
//! several nodes were loaded. Rendered from [`Tally`]s, so a run, a shard and a merge of shards
//! (`lodge-load merge`) all print the same way.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::tally::Tally;
use super::VoiceArgs;
use crate::hist;

/// What was run: two reports can be merged only if these are equal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub target: String,
    /// What carried the callers' media: webrtc, udp or udp-xchacha (reports from before
    /// native callers existed were WebRTC).
    #[serde(default = "webrtc")]
    pub transport: String,
    pub callers: usize,
    pub channels: usize,
    pub speakers: usize,
    pub slots: usize,
    pub join_rate: f64,
    pub duration_s: u64,
    pub talk_ms: u64,
    pub pause_ms: u64,
    pub seed: u64,
    pub probes: f64,
    pub profile: Option<String>,
    pub speech: String,
}

fn webrtc() -> String {
    "webrtc".into()
}

impl Scenario {
    pub fn of(a: &VoiceArgs, speech: &str) -> Scenario {
        Scenario {
            target: format!("{:?}", a.target).to_lowercase(),
            transport: match a.transport {
                super::Transport::Webrtc => "webrtc",
                super::Transport::Udp => "udp",
                super::Transport::UdpXchacha => "udp-xchacha",
            }
            .into(),
            callers: a.callers,
            channels: a.channels,
            speakers: a.speakers,
            slots: a.slots,
            join_rate: a.join_rate,
            duration_s: a.duration,
            talk_ms: a.talk_ms,
            pause_ms: a.pause_ms,
            seed: a.seed,
            probes: a.probes,
            profile: a.profile.clone(),
            speech: speech.to_string(),
        }
    }
}

/// Which shards of a scenario a report covers: `indices` of `count` (one for a run, several
/// for a merge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shards {
    pub count: usize,
    pub indices: Vec<usize>,
}

/// What this report's share of the scenario holds (callers are counted in the tallies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub channels: u64,
    pub speakers: u64,
    pub listeners: u64,
}

/// The server's counters over the measurement window.
#[derive(Default)]
pub struct ServerWindow {
    pub seconds: f64,
    /// The nodes' own (RTP in, forwarded) counters, summed (Lodge only; every node readable).
    pub node: Option<(u64, u64)>,
    /// RTP packets the callers' WebRTC stacks delivered in the window: counted the same way
    /// for every target, so the CPU-per-packet figure compares servers fairly.
    pub delivered: u64,
    /// The nodes' CPU seconds, summed (every node's PID given).
    pub cpu_seconds: Option<f64>,
    /// This load generator's own CPU seconds over the window.
    pub generator_cpu_seconds: Option<f64>,
    /// Share of the whole machine's CPU time that was busy over the window, percent.
    pub machine_busy_pct: Option<f64>,
    /// UDP datagrams the kernel dropped for full receive buffers during the window.
    pub udp_rcvbuf_drops: Option<u64>,
    /// Node-added delay over the window (from two readings of the nodes' delay buckets, summed).
    pub forward_delay: Option<WindowDelay>,
    /// Each node's share, in `--url` order (empty in a merged report).
    pub nodes: Vec<NodeWindow>,
}

/// One node's counters over the window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeWindow {
    /// (RTP in, forwarded) in the window.
    pub counters: Option<(u64, u64)>,
    pub cpu_seconds: Option<f64>,
    pub forward_delay: Option<WindowDelay>,
}

/// Node-added delay over the measurement window; quantiles interpolated inside buckets,
/// `None` beyond the last finite bucket (1 s).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowDelay {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// Datagrams the node sent within 1 ms of receiving what caused them, percent.
    pub within_1ms_pct: f64,
}

/// Everything a report is rendered from.
pub struct Run {
    pub scenario: Scenario,
    pub shards: Shards,
    pub plan: Plan,
    /// Per node (URL, what its callers measured), in `--url` order.
    pub nodes: Vec<(String, Tally)>,
    pub errors: Vec<String>,
    pub server: Option<ServerWindow>,
    /// The node's receive → send delay quantiles over its whole life (single node only).
    pub forward_delay_ms: Option<[f64; 4]>,
    pub node_drops: Vec<(String, u64)>,
    pub timeline: Vec<Value>,
    pub interrupted: bool,
    /// Wall-clock start of the run (Unix ms): aligns shards' timelines in a merge.
    pub started_unix_ms: u64,
    /// Set for a merge: how many reports were merged.
    pub merged_reports: Option<usize>,
}

pub struct Report {
    pub markdown: String,
    pub json: Value,
    /// For the plots: mouth-to-ear delays (µs), join times (ms), probe MOS estimates.
    pub m2e: Histogram<u64>,
    pub join_ms: Histogram<u64>,
    pub mos: Vec<f64>,
    /// Why a strict run fails (empty: it passes).
    pub strict_failures: Vec<String>,
}

fn quantiles_ms(h: &Histogram<u64>, scale: f64) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.5) as f64 / scale,
        "p90": h.value_at_quantile(0.9) as f64 / scale,
        "p99": h.value_at_quantile(0.99) as f64 / scale,
        "p99_9": h.value_at_quantile(0.999) as f64 / scale,
        "max": h.max() as f64 / scale,
        "mean": h.mean() / scale,
    })
}

/// A gap distribution in ms as JSON: count, p50, p99, max (null figures when empty).
fn gap_json(h: &Histogram<u64>) -> Value {
    let q = |q: f64| {
        if h.is_empty() {
            Value::Null
        } else {
            json!(hist::at(h, q, 1.0))
        }
    };
    json!({ "count": h.len(), "p50": q(0.5), "p99": q(0.99), "max": q(1.0) })
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// A number with one decimal, or "–".
fn one(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "–".into()
    }
}

impl Run {
    /// The whole report's tally: the nodes' tallies added up.
    pub fn total(&self) -> Tally {
        let mut t = Tally::default();
        for (_, n) in &self.nodes {
            t.merge(n);
        }
        t
    }
}

pub fn render(run: &Run) -> Report {
    let sc = &run.scenario;
    let t = run.total();
    let loss_pct = t.loss_pct();
    let mut mos: Vec<f64> = t.probes.iter().map(|p| p.mos_estimate).collect();
    let mut conceal: Vec<f64> = t.probes.iter().map(|p| p.concealment_pct).collect();
    let mut buf_delay: Vec<f64> = t.probes.iter().map(|p| p.buffer_delay_ms).collect();
    let server = run.server.as_ref();
    let cpu_per_packet_us = server.and_then(|s| {
        let (_, fwd) = s.node?;
        s.cpu_seconds
            .filter(|_| fwd > 0)
            .map(|c| c / fwd as f64 * 1e6)
    });
    let cpu_per_delivered_us = server.and_then(|s| {
        s.cpu_seconds
            .filter(|_| s.delivered > 0)
            .map(|c| c / s.delivered as f64 * 1e6)
    });

    let mut failures = Vec::new();
    if run.interrupted {
        failures.push("the run was interrupted".to_string());
    }
    if t.connected < t.callers {
        failures.push(format!(
            "{} of {} callers connected media",
            t.connected, t.callers
        ));
    }
    if !run.errors.is_empty() {
        failures.push(format!(
            "{} errors, first: {}",
            run.errors.len(),
            run.errors[0]
        ));
    }
    if t.deaf > 0 {
        failures.push(format!("{} callers heard nothing", t.deaf));
    }
    if t.moved_without_media > 0 {
        failures.push(format!(
            "{} of {} moved callers had no media at the end",
            t.moved_without_media, t.moved_callers
        ));
    }
    let timeable = t.received.saturating_sub(t.repeated);
    if timeable > 0 && t.unmatched as f64 / timeable as f64 > 0.05 {
        failures.push(format!(
            "{} of {timeable} timeable packets could not be matched to their send time",
            t.unmatched
        ));
    }
    let missing: Vec<usize> = (0..run.shards.count)
        .filter(|i| !run.shards.indices.contains(i))
        .collect();
    if run.merged_reports.is_some() && !missing.is_empty() {
        failures.push(format!(
            "shards {missing:?} of {} are missing",
            run.shards.count
        ));
    }

    let m2e_q = quantiles_ms(&t.m2e_us, 1000.0);
    let join_q = quantiles_ms(&t.join_ms, 1.0);
    let mut md = String::new();
    md.push_str(&format!(
        "# Voice load report: {}{}\n\n{} callers ({} speakers, {} listeners) in {} channel(s), K = {} slots, joining at {}/s, measured {} s after joining; talk spurts {} ms on / {} ms off; speech: {}.\n\n",
        match (sc.target.as_str(), sc.transport.as_str()) {
            ("janus", _) => "Janus VideoRoom",
            (_, "udp") => "Lodge, native UDP callers (aead_aes256_gcm_rtpsize)",
            (_, "udp-xchacha") => "Lodge, native UDP callers (aead_xchacha20_poly1305_rtpsize)",
            _ => "Lodge, WebRTC callers",
        },
        if run.interrupted { " (partial: interrupted)" } else { "" },
        t.callers, run.plan.speakers, run.plan.listeners, run.plan.channels, sc.slots, sc.join_rate,
        sc.duration_s, sc.talk_ms, sc.pause_ms, sc.speech
    ));
    let shard_list = run
        .shards
        .indices
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match run.merged_reports {
        Some(n) => md.push_str(&format!(
            "Merged from {n} reports: shard(s) {shard_list} of {}{} of a scenario of {} callers in {} channels. Histograms are added and counters summed; node-side figures (node CPU and counters, node-added delay, drops) are in each shard's report: every shard read the same nodes over its own window, so they are not added up here.\n\n",
            run.shards.count,
            if missing.is_empty() { String::new() } else { format!(" (missing: {missing:?})") },
            sc.callers, sc.channels
        )),
        None if run.shards.count > 1 => md.push_str(&format!(
            "Shard {shard_list}/{} of a scenario of {} callers in {} channels (`lodge-load merge` combines the shards' JSON reports).\n\n",
            run.shards.count, sc.callers, sc.channels
        )),
        None => {}
    }
    md.push_str("| measure | value |\n|---|---|\n");
    md.push_str(&format!(
        "| callers with media connected | {} / {} |\n",
        t.connected, t.callers
    ));
    let q = |v: &Value, k: &str| {
        v[k].as_f64()
            .map(|x| format!("{x:.1}"))
            .unwrap_or("–".into())
    };
    md.push_str(&format!(
        "| join → media connected, ms (p50 / p90 / p99 / max) | {} / {} / {} / {} |\n",
        q(&join_q, "p50"),
        q(&join_q, "p90"),
        q(&join_q, "p99"),
        q(&join_q, "max")
    ));
    let ph = |h: &Histogram<u64>, q: f64| hist::at(h, q, 1.0);
    if !t.wait_ms.is_empty() {
        md.push_str(&format!(
            "| join phases, ms (p50 / p90): waiting for a generator slot (`--parallelism`) · gateway + voice gateway to the SDP answer · ICE + DTLS to media | {:.0} / {:.0} · {:.0} / {:.0} · {:.0} / {:.0} |\n",
            ph(&t.wait_ms, 0.5), ph(&t.wait_ms, 0.9), ph(&t.signaling_ms, 0.5), ph(&t.signaling_ms, 0.9),
            ph(&t.ice_dtls_ms, 0.5), ph(&t.ice_dtls_ms, 0.9)
        ));
    }
    md.push_str(&format!(
        "| RTP sent by speakers / read from callers' sockets / delivered by their WebRTC stacks | {} / {} / {} |\n",
        t.rtp_sent, t.rtp_datagrams, t.received
    ));
    md.push_str(&format!(
        "| loss seen by listeners (expected − received per slot, RFC 3550 style) | {loss_pct:.3}% |\n"
    ));
    let g = t.gap_sizes;
    md.push_str(&format!(
        "| sequence gaps by size (1 / 2 / 3–5 / 6–20 / more) | {} / {} / {} / {} / {} |\n",
        g[0], g[1], g[2], g[3], g[4]
    ));
    md.push_str(&format!(
        "| datagrams the callers' WebRTC stacks refused / packets reordered | {} / {} |\n",
        t.input_errors, t.reordered
    ));
    let jit = |q: f64| hist::at(&t.jitter_us, q, 1000.0);
    md.push_str(&format!(
        "| jitter per slot, ms (p50 / p95 / max) | {:.2} / {:.2} / {:.2} |\n",
        jit(0.5),
        jit(0.95),
        jit(1.0)
    ));
    md.push_str(&format!(
        "| mouth-to-ear (send → receive, no playout), ms (p50 / p90 / p99 / p99.9 / max) | {} / {} / {} / {} / {} |\n",
        q(&m2e_q, "p50"), q(&m2e_q, "p90"), q(&m2e_q, "p99"), q(&m2e_q, "p99_9"), q(&m2e_q, "max")
    ));
    md.push_str(&format!(
        "| packets timed / untimeable (payload repeats in the sample, e.g. silence) / unmatched | {} / {} / {} |\n",
        t.m2e_us.len(), t.repeated, t.unmatched
    ));
    if !t.probes.is_empty() {
        md.push_str(&format!(
            "| probes (jitter buffer + Opus decode) | {} |\n| MOS estimate (E-model) over probes (min / p5 / p50) | {:.2} / {:.2} / {:.2} |\n| concealment over probes, % (p50 / max) | {:.2} / {:.2} |\n| probe buffer delay, ms (p50) | {:.1} |\n",
            t.probes.len(),
            pct(&mut mos, 0.0), pct(&mut mos, 0.05), pct(&mut mos, 0.5),
            pct(&mut conceal, 0.5), pct(&mut conceal, 1.0),
            pct(&mut buf_delay, 0.5)
        ));
    }
    if t.rejoins > 0 {
        md.push_str(&format!(
            "| calls the server moved (rejoins) / voice lost → media again, ms (p50 / p99 / max) | {} / {:.0} / {:.0} / {:.0} |\n",
            t.rejoins,
            hist::at(&t.rejoin_ms, 0.5, 1.0),
            hist::at(&t.rejoin_ms, 0.99, 1.0),
            hist::at(&t.rejoin_ms, 1.0, 1.0)
        ));
        md.push_str(&format!(
            "| callers moved / without media at the end; each caller's longest gap, ms (p50 / p99 / max) | {} / {}; {:.0} / {:.0} / {:.0} |\n",
            t.moved_callers,
            t.moved_without_media,
            hist::at(&t.caller_gap_ms, 0.5, 1.0),
            hist::at(&t.caller_gap_ms, 0.99, 1.0),
            hist::at(&t.caller_gap_ms, 1.0, 1.0)
        ));
    }
    if let Some(s) = server {
        if let Some((rtp_in, fwd)) = s.node {
            md.push_str(&format!(
                "| node: RTP in / forwarded in the window | {rtp_in} / {fwd} ({:.0} / {:.0} pps) |\n",
                rtp_in as f64 / s.seconds,
                fwd as f64 / s.seconds
            ));
        }
        md.push_str(&format!(
            "| RTP delivered to the callers in the window | {} ({:.0} pps) |\n",
            s.delivered,
            s.delivered as f64 / s.seconds
        ));
        if let Some(d) = s.udp_rcvbuf_drops {
            md.push_str(&format!(
                "| kernel UDP receive-buffer drops in the window (this machine) | {d}{} |\n",
                if d > 0 { " — a receiver (usually the generator) could not keep up: loss above is partly the test's own" } else { "" }
            ));
        }
        if let Some(c) = s.cpu_seconds {
            md.push_str(&format!(
                "| server CPU in the window | {c:.2} s ({:.0}% of a core){}{} |\n",
                c / s.seconds * 100.0,
                cpu_per_packet_us
                    .map(|us| format!("; {us:.2} µs per forwarded packet (node counter)"))
                    .unwrap_or_default(),
                cpu_per_delivered_us
                    .map(|us| format!("; {us:.2} µs per packet delivered to a caller"))
                    .unwrap_or_default(),
            ));
        }
    }
    if let Some(g) = server.and_then(|s| Some((s.generator_cpu_seconds?, s.seconds))) {
        md.push_str(&format!(
            "| load generator CPU in the window ({}) | {:.2} s ({:.0}% of a core) |\n",
            if run.merged_reports.is_some() {
                "all shards' generators"
            } else {
                "this process"
            },
            g.0,
            g.0 / g.1 * 100.0
        ));
    }
    if let Some(b) = server.and_then(|s| s.machine_busy_pct) {
        md.push_str(&format!(
            "| machine CPU busy in the window (all cores) | {b:.0}%{} |\n",
            if b > 85.0 {
                " — near saturation: delays and jitter above include waiting for a CPU (the generator and the node share this machine)"
            } else {
                ""
            }
        ));
    }
    let delay_ms = |v: Option<f64>| {
        v.map(|v| format!("{v:.3}"))
            .unwrap_or_else(|| "> 1000".into())
    };
    if let Some(d) = server.and_then(|s| s.forward_delay.as_ref()) {
        md.push_str(&format!(
            "| node-added delay in the window, ms (p50 / p99 / p99.9; interpolated in buckets) | {} / {} / {} ({:.2}% within 1 ms) |\n",
            delay_ms(d.p50_ms),
            delay_ms(d.p99_ms),
            delay_ms(d.p999_ms),
            d.within_1ms_pct
        ));
    }
    if let Some([p50, p99, p999, max]) = run.forward_delay_ms {
        md.push_str(&format!(
            "| node-added delay (receive → send inside the node, whole run), ms (p50 / p99 / p99.9 / max) | {p50:.3} / {p99:.3} / {p999:.3} / {max:.3} |\n"
        ));
    }
    if run.merged_reports.is_none() {
        md.push_str(&format!(
            "| node drops by reason (whole run) | {} |\n",
            if run.node_drops.is_empty() {
                "none".to_string()
            } else {
                run.node_drops
                    .iter()
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
    md.push_str(&format!(
        "| errors | {}{} |\n",
        run.errors.len(),
        run.errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    ));
    let node_windows: &[NodeWindow] = server.map(|s| &s.nodes[..]).unwrap_or(&[]);
    if run.nodes.len() > 1 {
        md.push_str(&node_table(
            &run.nodes,
            node_windows,
            server.map(|s| s.seconds),
        ));
    }

    let server_json = server.map(|s| {
        json!({ "window_s": s.seconds,
            "rtp_in": s.node.map(|n| n.0), "rtp_forwarded": s.node.map(|n| n.1),
            "rtp_delivered": s.delivered, "cpu_seconds": s.cpu_seconds,
            "generator_cpu_seconds": s.generator_cpu_seconds,
            "machine_busy_pct": s.machine_busy_pct,
            "forward_delay_window": s.forward_delay,
            "udp_rcvbuf_drops": s.udp_rcvbuf_drops,
            "cpu_us_per_forwarded_packet": cpu_per_packet_us,
            "cpu_us_per_delivered_packet": cpu_per_delivered_us })
    });
    let nodes_json: Vec<Value> = run
        .nodes
        .iter()
        .enumerate()
        .map(|(i, (url, n))| {
            let w = node_windows.get(i);
            json!({
                "url": url, "callers": n.callers, "connected": n.connected,
                "join_ms": quantiles_ms(&n.join_ms, 1.0),
                "loss_pct": n.loss_pct(),
                "mouth_to_ear_ms": quantiles_ms(&n.m2e_us, 1000.0),
                "server": w.map(|w| json!({
                    "rtp_in": w.counters.map(|c| c.0), "rtp_forwarded": w.counters.map(|c| c.1),
                    "cpu_seconds": w.cpu_seconds,
                    "cpu_us_per_forwarded_packet": node_cpu_per_packet(w),
                    "forward_delay_window": w.forward_delay,
                })),
                "tally": n,
            })
        })
        .collect();
    let phase = |h: &Histogram<u64>| json!({ "p50": ph(h, 0.5), "p90": ph(h, 0.9) });
    let mut json = json!({
        "callers": t.callers, "channels": run.plan.channels, "speakers_per_channel": sc.speakers,
        "slots": sc.slots, "join_rate": sc.join_rate, "duration_s": sc.duration_s,
        "talk_ms": sc.talk_ms, "pause_ms": sc.pause_ms, "seed": sc.seed, "speech": sc.speech,
        "profile": sc.profile,
        "interrupted": run.interrupted,
        "connected": t.connected,
        "join_ms": join_q,
        "join_phases_ms": {
            "waiting_for_generator_slot": phase(&t.wait_ms),
            "signaling": phase(&t.signaling_ms),
            "ice_dtls": phase(&t.ice_dtls_ms),
        },
        "rtp_sent": t.rtp_sent, "rtp_received": t.received, "sequence_gaps": t.gaps, "loss_pct": loss_pct,
        "unmatched": t.unmatched, "repeated_payloads": t.repeated, "caller_input_errors": t.input_errors,
        "reordered": t.reordered, "rtp_datagrams_read": t.rtp_datagrams, "gap_sizes": t.gap_sizes,
        "jitter_ms": { "p50": jit(0.5), "p95": jit(0.95), "max": jit(1.0) },
        "mouth_to_ear_ms": m2e_q,
        "rejoins": t.rejoins,
        "rejoin_ms": gap_json(&t.rejoin_ms),
        "moved_callers": t.moved_callers,
        "moved_without_media": t.moved_without_media,
        "caller_gap_ms": gap_json(&t.caller_gap_ms),
        "probes": t.probes,
        "target": sc.target,
        "server": server_json,
        "node_forward_delay_ms": run.forward_delay_ms.map(|[p50, p99, p999, max]| json!({ "p50": p50, "p99": p99, "p99_9": p999, "max": max })),
        "node_drops": run.node_drops.iter().map(|(r, n)| json!({ "reason": r, "count": n })).collect::<Vec<_>>(),
        "nodes": nodes_json,
        "timeline": run.timeline,
        "errors": run.errors,
        "strict_failures": failures,
    });
    // What `lodge-load merge` needs besides the tallies in "nodes".
    for (k, v) in [
        ("scenario", json!("voice")),
        ("scenario_params", json!(sc)),
        ("shards", json!(run.shards)),
        ("plan", json!(run.plan)),
        ("started_unix_ms", json!(run.started_unix_ms)),
        ("merged_reports", json!(run.merged_reports)),
    ] {
        json[k] = v;
    }
    Report {
        markdown: md,
        json,
        mos: t.probes.iter().map(|p| p.mos_estimate).collect(),
        m2e: t.m2e_us,
        join_ms: t.join_ms,
        strict_failures: failures,
    }
}

fn node_cpu_per_packet(w: &NodeWindow) -> Option<f64> {
    let (_, fwd) = w.counters?;
    w.cpu_seconds
        .filter(|_| fwd > 0)
        .map(|c| c / fwd as f64 * 1e6)
}

/// The per-node table: callers dealt to each node, and what they measured; the node's own
/// window figures where its /metrics (and `--server-pid`) were read.
fn node_table(nodes: &[(String, Tally)], windows: &[NodeWindow], seconds: Option<f64>) -> String {
    let mut md = String::from(
        "\n| node | callers | media connected | join → media, ms (p50 / p99) | loss at its callers | mouth-to-ear at its callers, ms (p50 / p99) | node: forwarded in the window | node CPU in the window | node-added delay p99 in the window, ms |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (i, (url, n)) in nodes.iter().enumerate() {
        let w = windows.get(i);
        let fwd = w
            .and_then(|w| w.counters)
            .map(|(_, f)| match seconds {
                Some(s) if s > 0.0 => format!("{f} ({:.0} pps)", f as f64 / s),
                _ => f.to_string(),
            })
            .unwrap_or_else(|| "–".into());
        let cpu = w
            .and_then(|w| Some((w.cpu_seconds?, node_cpu_per_packet(w))))
            .map(|(c, per)| {
                format!(
                    "{c:.2} s{}",
                    per.map(|us| format!("; {us:.2} µs per forwarded packet"))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "–".into());
        let delay = w
            .and_then(|w| w.forward_delay.as_ref())
            .map(|d| {
                d.p99_ms
                    .map(|v| format!("{v:.3}"))
                    .unwrap_or_else(|| "> 1000".into())
            })
            .unwrap_or_else(|| "–".into());
        md.push_str(&format!(
            "| {url} | {} | {} | {} / {} | {:.3}% | {} / {} | {fwd} | {cpu} | {delay} |\n",
            n.callers,
            n.connected,
            one(hist::at(&n.join_ms, 0.5, 1.0)),
            one(hist::at(&n.join_ms, 0.99, 1.0)),
            n.loss_pct(),
            one(hist::at(&n.m2e_us, 0.5, 1000.0)),
            one(hist::at(&n.m2e_us, 0.99, 1000.0)),
        ));
    }
    md
}
