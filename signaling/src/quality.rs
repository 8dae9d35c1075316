//! Call-quality telemetry: the media node's report sampled every two seconds into per-call
//! aggregates (mean/p95 jitter, mean RTT) and a node-wide timeline (pps, participants), and one
//! call summary persisted per participant when it leaves. The MOS shown everywhere is the
//! simplified E-model: an estimate, labelled as such.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use lodge_chat::CallSummary;
use lodge_jitter::{mos_estimate, QualityInput};
use lodge_sfu::stats::ParticipantStats;
use lodge_sfu::{LeaveReason, ParticipantIdx};
use serde::Serialize;

use crate::app::AppState;

/// How often the node is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Timeline length kept for the dashboard (10 minutes at one point per sample).
pub const TIMELINE_POINTS: usize = 300;
/// Jitter histogram of one call: 1 ms bins up to 500 ms (beyond counts in the last bin).
const JITTER_BINS: usize = 500;

/// MOS estimate of one participant from what the node measured: mouth-to-ear ≈ half the RTT
/// + a playout buffer of twice the jitter (at least 20 ms) + 26.5 ms of Opus framing and
///   lookahead; loss = the worse direction.
pub fn participant_mos(s: &ParticipantStats) -> Option<f64> {
    if s.packets_in + s.packets_out == 0 {
        return None;
    }
    let jitter = worse_jitter_ms(s).unwrap_or(0.0);
    let delay = s.rtt_ms.unwrap_or(0.0) as f64 / 2.0 + (2.0 * jitter).max(20.0) + 26.5;
    let loss = worse_loss(s).unwrap_or(0.0) * 100.0;
    Some(mos_estimate(&QualityInput::opus(delay, loss)))
}

/// The larger of two optional figures, if either is known.
fn worse(a: Option<f32>, b: Option<f32>) -> Option<f64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0.0).max(b.unwrap_or(0.0)) as f64),
    }
}

/// Interarrival jitter of the worse direction (uplink as the node measures it, downlink as the
/// participant reports it), ms.
pub fn worse_jitter_ms(s: &ParticipantStats) -> Option<f64> {
    worse(s.jitter_in_ms, s.jitter_out_ms)
}

/// Loss fraction (0..1) of the worse direction.
pub fn worse_loss(s: &ParticipantStats) -> Option<f64> {
    worse(s.loss_in, s.loss_out)
}

/// A point of the node timeline.
#[derive(Debug, Clone, Serialize)]
pub struct NodePoint {
    /// Unix ms.
    pub t: i64,
    pub pps_in: f64,
    pub pps_out: f64,
    pub participants: usize,
    pub rooms: usize,
    /// CPU of this process over the interval, percent of one core.
    pub cpu_pct: Option<f64>,
}

struct Track {
    guild_id: u64,
    channel_id: u64,
    user_id: u64,
    started_at: i64,
    jitter_hist: Box<[u32; JITTER_BINS]>,
    jitter_sum: f64,
    jitter_n: u32,
    rtt_sum: f64,
    rtt_n: u32,
}

#[derive(Default)]
pub struct Telemetry {
    calls: HashMap<ParticipantIdx, Track>,
    timeline: VecDeque<NodePoint>,
    /// The previous sample: when its report was taken, its packet counters, and when the
    /// process CPU was read with its value.
    last: Option<(Instant, u64, u64, Instant, Option<f64>)>,
    pub calls_recorded: u64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// CPU seconds (user + system) of this process, from /proc.
pub fn process_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

impl Telemetry {
    /// A participant's call starts (the voice gateway mapped it).
    pub fn start(&mut self, idx: ParticipantIdx, guild_id: u64, channel_id: u64, user_id: u64) {
        self.calls.insert(
            idx,
            Track {
                guild_id,
                channel_id,
                user_id,
                started_at: now_ms(),
                jitter_hist: Box::new([0; JITTER_BINS]),
                jitter_sum: 0.0,
                jitter_n: 0,
                rtt_sum: 0.0,
                rtt_n: 0,
            },
        );
    }

    /// Fold one node report in; `at` is when the report was taken (a shared report may be up
    /// to a second old when the sampler reads it).
    pub fn sample(&mut self, at: Instant, r: &lodge_sfu::shell::NodeReport) {
        if self.last.is_some_and(|l| at <= l.0) {
            return; // the same shared report again: nothing new to fold in
        }
        let cpu_at = Instant::now();
        let cpu = process_cpu_seconds();
        if let Some((t0, in0, out0, cpu_t0, cpu0)) = self.last {
            let dt = at.duration_since(t0).as_secs_f64().max(1e-3);
            let cpu_dt = cpu_at.duration_since(cpu_t0).as_secs_f64().max(1e-3);
            self.timeline.push_back(NodePoint {
                t: now_ms(),
                pps_in: r.rtp_in.saturating_sub(in0) as f64 / dt,
                pps_out: r.rtp_forwarded.saturating_sub(out0) as f64 / dt,
                participants: r.participants,
                rooms: r.rooms,
                cpu_pct: match (cpu0, cpu) {
                    (Some(a), Some(b)) => Some((b - a) / cpu_dt * 100.0),
                    _ => None,
                },
            });
            while self.timeline.len() > TIMELINE_POINTS {
                self.timeline.pop_front();
            }
        }
        self.last = Some((at, r.rtp_in, r.rtp_forwarded, cpu_at, cpu));
        for p in &r.peers {
            let Some(t) = self.calls.get_mut(&ParticipantIdx(p.idx)) else {
                continue;
            };
            if let Some(j) = worse_jitter_ms(&p.stats) {
                t.jitter_hist[(j as usize).min(JITTER_BINS - 1)] += 1;
                t.jitter_sum += j;
                t.jitter_n += 1;
            }
            if let Some(rtt) = p.stats.rtt_ms {
                t.rtt_sum += rtt as f64;
                t.rtt_n += 1;
            }
        }
    }

    pub fn timeline(&self) -> Vec<NodePoint> {
        self.timeline.iter().cloned().collect()
    }

    /// The participant left: its summary (if its call was tracked).
    pub fn finish(
        &mut self,
        idx: ParticipantIdx,
        reason: LeaveReason,
        stats: &ParticipantStats,
    ) -> Option<CallSummary> {
        let t = self.calls.remove(&idx)?;
        let ended_at = now_ms();
        let p95 = (t.jitter_n > 0).then(|| {
            let want = (t.jitter_n as f64 * 0.95).ceil() as u32;
            let mut seen = 0;
            t.jitter_hist
                .iter()
                .position(|&n| {
                    seen += n;
                    seen >= want
                })
                .unwrap_or(JITTER_BINS - 1) as f64
                + 1.0
        });
        let mut summary_stats = stats.clone();
        // The summary's MOS uses the call's mean jitter and RTT, not the last sample's.
        if t.jitter_n > 0 {
            let mean = (t.jitter_sum / t.jitter_n as f64) as f32;
            summary_stats.jitter_in_ms = Some(mean);
            summary_stats.jitter_out_ms = None;
        }
        if t.rtt_n > 0 {
            summary_stats.rtt_ms = Some((t.rtt_sum / t.rtt_n as f64) as f32);
        }
        Some(CallSummary {
            id: 0,
            guild_id: t.guild_id,
            channel_id: t.channel_id,
            user_id: t.user_id,
            started_at: t.started_at,
            ended_at,
            duration_ms: ended_at - t.started_at,
            packets_in: stats.packets_in,
            packets_out: stats.packets_out,
            loss_in_pct: stats.loss_in.map(|l| l as f64 * 100.0),
            loss_out_pct: stats.loss_out.map(|l| l as f64 * 100.0),
            jitter_mean_ms: (t.jitter_n > 0).then(|| t.jitter_sum / t.jitter_n as f64),
            jitter_p95_ms: p95,
            rtt_mean_ms: (t.rtt_n > 0).then(|| t.rtt_sum / t.rtt_n as f64),
            mos_estimate: participant_mos(&summary_stats),
            end_reason: serde_json::to_value(reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "unknown".into()),
        })
    }
}

/// Channels with their own label on /metrics (the largest); the rest are summed as "other",
/// so label cardinality stays bounded however many channels a node carries.
pub const METRIC_CHANNELS: usize = 50;

/// Prometheus histograms of the current participants' quality, and per-channel gauges.
pub fn write_participant_metrics(out: &mut String, r: &lodge_sfu::shell::NodeReport) {
    use std::fmt::Write;
    let hist = |out: &mut String, name: &str, help: &str, bounds: &[f64], values: &[f64]| {
        let _ = writeln!(
            out,
            "# HELP lodge_{name} {help}\n# TYPE lodge_{name} histogram"
        );
        for b in bounds {
            let n = values.iter().filter(|v| **v <= *b).count();
            let _ = writeln!(out, "lodge_{name}_bucket{{le=\"{b}\"}} {n}");
        }
        let _ = writeln!(out, "lodge_{name}_bucket{{le=\"+Inf\"}} {}", values.len());
        let _ = writeln!(out, "lodge_{name}_sum {}", values.iter().sum::<f64>());
        let _ = writeln!(out, "lodge_{name}_count {}", values.len());
    };
    let live: Vec<&lodge_sfu::ParticipantReport> = r.peers.iter().filter(|p| p.connected).collect();
    let mos: Vec<f64> = live
        .iter()
        .filter_map(|p| participant_mos(&p.stats))
        .collect();
    let jitter: Vec<f64> = live
        .iter()
        .filter_map(|p| worse_jitter_ms(&p.stats))
        .collect();
    let loss: Vec<f64> = live.iter().filter_map(|p| worse_loss(&p.stats)).collect();
    let rtt: Vec<f64> = live
        .iter()
        .filter_map(|p| p.stats.rtt_ms.map(|v| v as f64))
        .collect();
    hist(
        out,
        "participant_mos_estimate",
        "MOS estimate (simplified E-model) of connected participants",
        &[1.0, 2.0, 3.0, 3.5, 4.0, 4.3],
        &mos,
    );
    hist(
        out,
        "participant_jitter_ms",
        "Interarrival jitter of connected participants (worse direction), ms",
        &[5.0, 10.0, 20.0, 30.0, 50.0, 100.0],
        &jitter,
    );
    hist(
        out,
        "participant_loss_ratio",
        "Packet loss of connected participants (worse direction), 0..1",
        &[0.001, 0.01, 0.03, 0.05, 0.1, 0.2],
        &loss,
    );
    hist(
        out,
        "participant_rtt_ms",
        "Round-trip time of connected participants, ms",
        &[10.0, 50.0, 100.0, 200.0, 400.0, 800.0],
        &rtt,
    );
    let switches: u64 = r.peers.iter().map(|p| p.stats.slot_switches).sum();
    let _ = writeln!(out, "# HELP lodge_slot_switches Speaker-slot switches of current participants\n# TYPE lodge_slot_switches gauge\nlodge_slot_switches {switches}");

    // Per channel: (participants, packets in, packets out, min MOS).
    let mut rooms: HashMap<u64, (u64, u64, u64, f64)> = HashMap::new();
    for p in &r.peers {
        let e = rooms.entry(p.room.0).or_insert((0, 0, 0, f64::INFINITY));
        e.0 += 1;
        e.1 += p.stats.packets_in;
        e.2 += p.stats.packets_out;
        if let Some(m) = participant_mos(&p.stats) {
            e.3 = e.3.min(m);
        }
    }
    let mut by_size: Vec<(u64, (u64, u64, u64, f64))> = rooms.into_iter().collect();
    by_size.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
    let mut labelled: Vec<(String, (u64, u64, u64, f64))> = Vec::new();
    let mut other = (0u64, 0u64, 0u64, f64::INFINITY);
    for (i, (id, v)) in by_size.into_iter().enumerate() {
        if i < METRIC_CHANNELS {
            labelled.push((id.to_string(), v));
        } else {
            other = (
                other.0 + v.0,
                other.1 + v.1,
                other.2 + v.2,
                other.3.min(v.3),
            );
        }
    }
    if other.0 > 0 {
        labelled.push(("other".into(), other));
    }
    type Row = (u64, u64, u64, f64);
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&Row) -> Option<f64>,
    );
    let series: [Series; 4] = [
        (
            "channel_participants",
            "Participants per voice channel (largest channels; the rest as \"other\")",
            "gauge",
            |v| Some(v.0 as f64),
        ),
        (
            "channel_packets_in",
            "RTP packets received from the channel's current participants",
            "gauge",
            |v| Some(v.1 as f64),
        ),
        (
            "channel_packets_out",
            "RTP packets sent to the channel's current participants",
            "gauge",
            |v| Some(v.2 as f64),
        ),
        (
            "channel_mos_estimate_min",
            "Lowest participant MOS estimate in the channel",
            "gauge",
            |v| v.3.is_finite().then_some(v.3),
        ),
    ];
    for (name, help, kind, f) in series {
        let _ = writeln!(
            out,
            "# HELP lodge_{name} {help}\n# TYPE lodge_{name} {kind}"
        );
        for (id, v) in &labelled {
            if let Some(x) = f(v) {
                let _ = writeln!(out, "lodge_{name}{{channel=\"{id}\"}} {x}");
            }
        }
    }
}

/// Sample the node every [`SAMPLE_EVERY`] until shutdown.
pub async fn run_sampler(s: AppState) {
    let mut shutdown = s.shutdown.subscribe();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some((at, r)) = s.reports.get_timed(&s.sfu).await {
                    s.telemetry().sample(at, &r);
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Persist the summary of a participant that left (called from the node event loop).
pub async fn record_left(
    s: &AppState,
    idx: ParticipantIdx,
    reason: LeaveReason,
    stats: &ParticipantStats,
) {
    let summary = s.telemetry().finish(idx, reason, stats);
    if let Some(c) = summary {
        // An edge's summaries belong in the origin's database (with the rest of the channel's).
        if let Some(cl) = s.cluster.get().filter(|_| s.is_edge()) {
            if *cl.origin_up.borrow() {
                let json = serde_json::to_string(&c).expect("a summary serializes");
                let (guild, user) = (c.guild_id, c.user_id);
                cl.to_placer(
                    lodge_ids::GuildId(guild),
                    lodge_ids::UserId(user),
                    lodge_edge::Control::CallSummary { json },
                )
                .await;
                s.telemetry().calls_recorded += 1;
                return;
            }
        }
        match s.store.record_call(c).await {
            Ok(c) => {
                s.telemetry().calls_recorded += 1;
                tracing::info!(user = c.user_id, channel = c.channel_id, duration_ms = c.duration_ms,
                    mos_estimate = ?c.mos_estimate, "call summary recorded");
            }
            Err(e) => tracing::warn!(error = %e, "could not record a call summary"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(loss: f32, jitter: f32, rtt: f32) -> ParticipantStats {
        ParticipantStats {
            packets_in: 100,
            packets_out: 100,
            loss_in: Some(loss),
            jitter_in_ms: Some(jitter),
            rtt_ms: Some(rtt),
            ..ParticipantStats::default()
        }
    }

    #[test]
    fn mos_falls_with_loss_jitter_and_delay() {
        let good = participant_mos(&stats(0.0, 2.0, 20.0)).unwrap();
        assert!(good > 4.2, "{good}");
        assert!(participant_mos(&stats(0.05, 2.0, 20.0)).unwrap() < good - 0.5);
        assert!(participant_mos(&stats(0.0, 60.0, 20.0)).unwrap() < good);
        assert!(participant_mos(&stats(0.0, 2.0, 600.0)).unwrap() < 3.6);
        assert_eq!(participant_mos(&ParticipantStats::default()), None);
    }

    fn report(jitter: f32) -> lodge_sfu::shell::NodeReport {
        lodge_sfu::shell::NodeReport {
            participants: 1,
            remote_speakers: 0,
            exported: 0,
            exports_dropped: 0,
            native_discovery: 0,
            native_keepalives: 0,
            native_reports: 0,
            dave_frames_in: 0,
            tcp_frames_in: 0,
            tcp_frames_out: 0,
            ice_tcp: None,
            rooms: 1,
            datagrams_in: 0,
            datagrams_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            rtp_in: 0,
            rtp_forwarded: 0,
            rtp_direct: 0,
            direct_context_reads: 0,
            rtp_queued: 0,
            rtp_deferred: 0,
            drops: vec![],
            peers: vec![lodge_sfu::ParticipantReport {
                idx: 3,
                user: lodge_sfu::UserId(3),
                room: lodge_sfu::RoomId(2),
                connected: true,
                self_mute: false,
                server_mute: false,
                deaf: false,
                can_speak: true,
                speaking_level: 0.0,
                slots: vec![],
                stats: stats(0.01, jitter, 30.0),
                drops: vec![],
            }],
            forward_delay: Default::default(),
        }
    }

    #[test]
    fn a_call_summary_aggregates_the_samples() {
        let mut t = Telemetry::default();
        let idx = ParticipantIdx(3);
        t.start(idx, 1, 2, 3);
        let t0 = Instant::now();
        for (i, j) in [2.0f32, 4.0, 6.0, 40.0].into_iter().enumerate() {
            let report = report(j);
            t.sample(t0 + SAMPLE_EVERY * i as u32, &report);
        }
        let c = t
            .finish(idx, LeaveReason::Requested, &stats(0.01, 40.0, 30.0))
            .unwrap();
        assert_eq!((c.guild_id, c.channel_id, c.user_id), (1, 2, 3));
        assert_eq!(c.jitter_mean_ms, Some(13.0));
        assert_eq!(c.jitter_p95_ms, Some(41.0), "1 ms bins, upper edge");
        assert_eq!(c.rtt_mean_ms, Some(30.0));
        assert_eq!(c.loss_in_pct.map(|l| (l * 100.0).round()), Some(100.0));
        assert_eq!(c.end_reason, "requested");
        assert!(c.mos_estimate.unwrap() > 3.5);
        assert!(t
            .finish(idx, LeaveReason::Requested, &stats(0.0, 0.0, 0.0))
            .is_none());
    }

    #[test]
    fn the_same_shared_report_is_folded_in_once() {
        let mut t = Telemetry::default();
        t.start(ParticipantIdx(3), 1, 2, 3);
        let t0 = Instant::now();
        let r = report(10.0);
        t.sample(t0, &r);
        t.sample(t0, &r);
        assert!(
            t.timeline().is_empty(),
            "a point from one report read twice"
        );
        t.sample(t0 + SAMPLE_EVERY, &report(20.0));
        assert_eq!(t.timeline().len(), 1);
        let c = t
            .finish(
                ParticipantIdx(3),
                LeaveReason::Requested,
                &stats(0.0, 0.0, 0.0),
            )
            .unwrap();
        assert_eq!(c.jitter_mean_ms, Some(15.0));
    }
}
