//! The voice load report: what callers heard (loss, jitter, mouth-to-ear delay, MOS estimate
//! from the probes), how joining went, and the server's cost per forwarded packet.

use anyhow::Result;
use hdrhistogram::Histogram;
use lodge_jitter::{mos_estimate, QualityInput};
use serde_json::{json, Value};

use super::media::CallerStats;
use super::VoiceArgs;

/// Opus framing + lookahead, added to network and buffer delay for the MOS estimate.
const CODEC_DELAY_MS: f64 = 26.5;

/// The server's counters over the measurement window.
pub struct ServerWindow {
    pub seconds: f64,
    /// The node's own (RTP in, forwarded) counters (Lodge only).
    pub node: Option<(u64, u64)>,
    /// RTP packets the callers' WebRTC stacks delivered in the window: counted the same way
    /// for every target, so the CPU-per-packet figure compares servers fairly.
    pub delivered: u64,
    pub cpu_seconds: Option<f64>,
    /// This load generator's own CPU seconds over the window.
    pub generator_cpu_seconds: Option<f64>,
    /// Share of the whole machine's CPU time that was busy over the window, percent.
    pub machine_busy_pct: Option<f64>,
    /// UDP datagrams the kernel dropped for full receive buffers during the window.
    pub udp_rcvbuf_drops: Option<u64>,
    /// Node-added delay over the window (from two readings of the node's delay buckets).
    pub forward_delay: Option<WindowDelay>,
}

/// Node-added delay over the measurement window; quantiles interpolated inside buckets,
/// `None` beyond the last finite bucket (1 s).
#[derive(Debug, Clone, serde::Serialize)]
pub struct WindowDelay {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// Datagrams the node sent within 1 ms of receiving what caused them, percent.
    pub within_1ms_pct: f64,
}

pub struct Report {
    pub markdown: String,
    pub json: Value,
    /// For the plots: mouth-to-ear delays (µs), join times (ms), probe MOS estimates.
    pub m2e: Histogram<u64>,
    pub join_ms: Vec<f64>,
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

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[allow(clippy::too_many_arguments)]
pub fn build(
    a: &VoiceArgs,
    source: &str,
    listeners: usize,
    speakers: usize,
    results: &[(CallerStats, bool)],
    errors: &[String],
    server: Option<ServerWindow>,
    forward_delay_ms: Option<[f64; 4]>,
    node_drops: Vec<(String, u64)>,
    timeline: Vec<Value>,
    interrupted: bool,
) -> Result<Report> {
    let mut m2e = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut join = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    let (mut received, mut gaps, mut sent, mut unmatched, mut repeated) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut input_errors = 0u64;
    let mut reordered = 0u64;
    let mut rtp_datagrams = 0u64;
    let mut gap_sizes = [0u64; 5];
    let mut jitters = Vec::new();
    let mut deaf = 0usize;
    let mut join_ms = Vec::new();
    // Of each join that connected: waiting for a generator slot, signaling, ICE + DTLS, ms.
    let mut phases: [Vec<f64>; 3] = Default::default();
    let mut probes = Vec::new();
    let (mut rejoins, mut rejoin_ms) = (0u64, Vec::new());
    for (st, _) in results {
        rejoins += st.rejoins as u64;
        rejoin_ms.extend(st.rejoin_ms.iter().copied());
        m2e.add(&st.m2e_us)?;
        if let Some(ms) = st.connect_ms {
            join.record((ms.max(1.0)) as u64)?;
            join_ms.push(ms);
            if let (Some(q), Some(sig)) = (st.queued_ms, st.signaled_ms) {
                phases[0].push(q);
                phases[1].push(sig - q);
                phases[2].push(ms - sig);
            }
        }
        received += st.received;
        gaps += st.gaps;
        sent += st.rtp_sent;
        unmatched += st.unmatched;
        repeated += st.repeated;
        input_errors += st.input_errors;
        reordered += st.reordered;
        rtp_datagrams += st.rtp_datagrams;
        for (a, b) in gap_sizes.iter_mut().zip(st.gap_sizes) {
            *a += b;
        }
        jitters.extend(st.jitter_ms.iter().copied());
        // With one speaker per channel the speaker hears nobody; everyone else must hear.
        let alone = st.rtp_sent > 0 && a.speakers == 1;
        if st.received == 0 && !alone {
            deaf += 1;
        }
        if let Some(p) = &st.probe {
            let m2e_ms = if st.m2e_us.is_empty() {
                0.0
            } else {
                st.m2e_us.mean() / 1000.0
            };
            let mos = mos_estimate(&QualityInput::opus(
                m2e_ms + p.mean_buffer_delay_ms + CODEC_DELAY_MS,
                p.concealment_pct,
            ));
            probes.push((mos, p.concealment_pct, p.mean_buffer_delay_ms));
        }
    }
    let connected = results.iter().filter(|r| r.0.connect_ms.is_some()).count();
    let loss_pct = gaps as f64 / (received + gaps).max(1) as f64 * 100.0;
    let mut mos: Vec<f64> = probes.iter().map(|p| p.0).collect();
    let mut conceal: Vec<f64> = probes.iter().map(|p| p.1).collect();
    let mut buf_delay: Vec<f64> = probes.iter().map(|p| p.2).collect();
    let cpu_per_packet_us = server.as_ref().and_then(|s| {
        let (_, fwd) = s.node?;
        s.cpu_seconds
            .filter(|_| fwd > 0)
            .map(|c| c / fwd as f64 * 1e6)
    });
    let cpu_per_delivered_us = server.as_ref().and_then(|s| {
        s.cpu_seconds
            .filter(|_| s.delivered > 0)
            .map(|c| c / s.delivered as f64 * 1e6)
    });

    let mut failures = Vec::new();
    if interrupted {
        failures.push("the run was interrupted".to_string());
    }
    if connected < a.callers {
        failures.push(format!(
            "{} of {} callers connected media",
            connected, a.callers
        ));
    }
    if !errors.is_empty() {
        failures.push(format!("{} errors, first: {}", errors.len(), errors[0]));
    }
    if deaf > 0 {
        failures.push(format!("{deaf} callers heard nothing"));
    }
    let timeable = received.saturating_sub(repeated);
    if timeable > 0 && unmatched as f64 / timeable as f64 > 0.05 {
        failures.push(format!(
            "{unmatched} of {timeable} timeable packets could not be matched to their send time"
        ));
    }

    let m2e_q = quantiles_ms(&m2e, 1000.0);
    let join_q = quantiles_ms(&join, 1.0);
    let mut md = String::new();
    md.push_str(&format!(
        "# Voice load report: {}{}\n\n{} callers ({} speakers, {} listeners) in {} channel(s), K = {} slots, joining at {}/s, measured {} s after joining; talk spurts {} ms on / {} ms off; speech: {source}.\n\n",
        match a.target {
            super::Target::Lodge => "Lodge",
            super::Target::Janus => "Janus VideoRoom",
        },
        if interrupted { " (partial: interrupted)" } else { "" },
        a.callers, speakers, listeners, a.channels, a.slots, a.join_rate, a.duration, a.talk_ms, a.pause_ms
    ));
    md.push_str("| measure | value |\n|---|---|\n");
    md.push_str(&format!(
        "| callers with media connected | {connected} / {} |\n",
        a.callers
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
    if !phases[0].is_empty() {
        let [w, g, m] = &mut phases;
        md.push_str(&format!(
            "| join phases, ms (p50 / p90): waiting for a generator slot (`--parallelism`) · gateway + voice gateway to the SDP answer · ICE + DTLS to media | {:.0} / {:.0} · {:.0} / {:.0} · {:.0} / {:.0} |\n",
            pct(w, 0.5), pct(w, 0.9), pct(g, 0.5), pct(g, 0.9), pct(m, 0.5), pct(m, 0.9)
        ));
    }
    md.push_str(&format!(
        "| RTP sent by speakers / read from callers' sockets / delivered by their WebRTC stacks | {sent} / {rtp_datagrams} / {received} |\n"
    ));
    md.push_str(&format!(
        "| loss seen by listeners (expected − received per slot, RFC 3550 style) | {loss_pct:.3}% |\n"
    ));
    md.push_str(&format!(
        "| sequence gaps by size (1 / 2 / 3–5 / 6–20 / more) | {} / {} / {} / {} / {} |\n",
        gap_sizes[0], gap_sizes[1], gap_sizes[2], gap_sizes[3], gap_sizes[4]
    ));
    md.push_str(&format!(
        "| datagrams the callers' WebRTC stacks refused / packets reordered | {input_errors} / {reordered} |\n"
    ));
    md.push_str(&format!(
        "| jitter per slot, ms (p50 / p95 / max) | {:.2} / {:.2} / {:.2} |\n",
        pct(&mut jitters, 0.5),
        pct(&mut jitters, 0.95),
        pct(&mut jitters, 1.0)
    ));
    md.push_str(&format!(
        "| mouth-to-ear (send → receive, no playout), ms (p50 / p90 / p99 / p99.9 / max) | {} / {} / {} / {} / {} |\n",
        q(&m2e_q, "p50"), q(&m2e_q, "p90"), q(&m2e_q, "p99"), q(&m2e_q, "p99_9"), q(&m2e_q, "max")
    ));
    md.push_str(&format!(
        "| packets timed / untimeable (payload repeats in the sample, e.g. silence) / unmatched | {} / {repeated} / {unmatched} |\n",
        m2e.len()
    ));
    if !probes.is_empty() {
        md.push_str(&format!(
            "| probes (jitter buffer + Opus decode) | {} |\n| MOS estimate (E-model) over probes (min / p5 / p50) | {:.2} / {:.2} / {:.2} |\n| concealment over probes, % (p50 / max) | {:.2} / {:.2} |\n| probe buffer delay, ms (p50) | {:.1} |\n",
            probes.len(),
            pct(&mut mos, 0.0), pct(&mut mos, 0.05), pct(&mut mos, 0.5),
            pct(&mut conceal, 0.5), pct(&mut conceal, 1.0),
            pct(&mut buf_delay, 0.5)
        ));
    }
    if rejoins > 0 {
        md.push_str(&format!(
            "| calls the server moved (rejoins) / voice lost → media again, ms (p50 / max) | {rejoins} / {:.0} / {:.0} |\n",
            pct(&mut rejoin_ms, 0.5),
            pct(&mut rejoin_ms, 1.0)
        ));
    }
    if let Some(s) = &server {
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
    if let Some(g) = server
        .as_ref()
        .and_then(|s| Some((s.generator_cpu_seconds?, s.seconds)))
    {
        md.push_str(&format!(
            "| load generator CPU in the window (this process) | {:.2} s ({:.0}% of a core) |\n",
            g.0,
            g.0 / g.1 * 100.0
        ));
    }
    if let Some(b) = server.as_ref().and_then(|s| s.machine_busy_pct) {
        md.push_str(&format!(
            "| machine CPU busy in the window (all cores) | {b:.0}%{} |\n",
            if b > 85.0 {
                " — near saturation: delays and jitter above include waiting for a CPU (the generator and the node share this machine)"
            } else {
                ""
            }
        ));
    }
    if let Some(d) = server.as_ref().and_then(|s| s.forward_delay.as_ref()) {
        let ms = |v: Option<f64>| {
            v.map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "> 1000".into())
        };
        md.push_str(&format!(
            "| node-added delay in the window, ms (p50 / p99 / p99.9; interpolated in buckets) | {} / {} / {} ({:.2}% within 1 ms) |\n",
            ms(d.p50_ms),
            ms(d.p99_ms),
            ms(d.p999_ms),
            d.within_1ms_pct
        ));
    }
    if let Some([p50, p99, p999, max]) = forward_delay_ms {
        md.push_str(&format!(
            "| node-added delay (receive → send inside the node, whole run), ms (p50 / p99 / p99.9 / max) | {p50:.3} / {p99:.3} / {p999:.3} / {max:.3} |\n"
        ));
    }
    md.push_str(&format!(
        "| node drops by reason (whole run) | {} |\n",
        if node_drops.is_empty() {
            "none".to_string()
        } else {
            node_drops
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    md.push_str(&format!(
        "| errors | {}{} |\n",
        errors.len(),
        errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    ));

    let server_json = server.as_ref().map(|s| {
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
    let json = json!({
        "callers": a.callers, "channels": a.channels, "speakers_per_channel": a.speakers,
        "slots": a.slots, "join_rate": a.join_rate, "duration_s": a.duration,
        "talk_ms": a.talk_ms, "pause_ms": a.pause_ms, "seed": a.seed, "speech": source,
        "profile": a.profile,
        "interrupted": interrupted,
        "connected": connected,
        "join_ms": join_q,
        "join_phases_ms": {
            "waiting_for_generator_slot": { "p50": pct(&mut phases[0], 0.5), "p90": pct(&mut phases[0], 0.9) },
            "signaling": { "p50": pct(&mut phases[1], 0.5), "p90": pct(&mut phases[1], 0.9) },
            "ice_dtls": { "p50": pct(&mut phases[2], 0.5), "p90": pct(&mut phases[2], 0.9) },
        },
        "rtp_sent": sent, "rtp_received": received, "sequence_gaps": gaps, "loss_pct": loss_pct,
        "unmatched": unmatched, "repeated_payloads": repeated, "caller_input_errors": input_errors, "reordered": reordered, "rtp_datagrams_read": rtp_datagrams, "gap_sizes": gap_sizes,
        "jitter_ms": { "p50": pct(&mut jitters, 0.5), "p95": pct(&mut jitters, 0.95), "max": pct(&mut jitters, 1.0) },
        "mouth_to_ear_ms": m2e_q,
        "rejoins": rejoins,
        "rejoin_ms": { "p50": if rejoin_ms.is_empty() { Value::Null } else { json!(pct(&mut rejoin_ms, 0.5)) },
                       "max": if rejoin_ms.is_empty() { Value::Null } else { json!(pct(&mut rejoin_ms, 1.0)) } },
        "probes": probes.iter().map(|p| json!({ "mos_estimate": p.0, "concealment_pct": p.1, "buffer_delay_ms": p.2 })).collect::<Vec<_>>(),
        "target": format!("{:?}", a.target).to_lowercase(),
        "server": server_json,
        "node_forward_delay_ms": forward_delay_ms.map(|[p50, p99, p999, max]| json!({ "p50": p50, "p99": p99, "p99_9": p999, "max": max })),
        "node_drops": node_drops.iter().map(|(r, n)| json!({ "reason": r, "count": n })).collect::<Vec<_>>(),
        "timeline": timeline,
        "errors": errors,
        "strict_failures": failures,
    });
    let mos_all: Vec<f64> = probes.iter().map(|p| p.0).collect();
    Ok(Report {
        markdown: md,
        json,
        m2e,
        join_ms,
        mos: mos_all,
        strict_failures: failures,
    })
}
