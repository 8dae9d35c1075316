//! Playout evaluation without audio: a 20 ms sender through an impairment profile into a
//! buffer, pulled every 20 ms. Gives delay, concealment, FEC and interruption figures per buffer
//! strategy. (`lodge-load playout` adds real Opus, speech and an audio score on top.)

use std::time::Duration;

use serde::Serialize;

use crate::{BufferConfig, Impairment, JitterBuffer, JitterStats, Profile, Pulled};

/// How a strategy sets its playout delay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Playout {
    /// Lodge's adaptive buffer.
    Adaptive,
    /// The simple fixed jitter buffer: a static schedule this many ms after the first packet
    /// ([`BufferConfig::static_delay_ms`]).
    Fixed(f64),
    /// Lodge's control loop with its target pinned to this many ms
    /// ([`BufferConfig::fixed_delay_ms`]): an ablation showing what the adaptive *target* adds
    /// on top of the stretching and dropping that follow it.
    Pinned(f64),
}

/// A playout strategy under test.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Strategy {
    pub name: &'static str,
    pub playout: Playout,
    pub fec: bool,
}

impl Strategy {
    /// The buffer configuration for this strategy on a path with `network_delay_ms` one way.
    pub fn config(&self, network_delay_ms: f64) -> BufferConfig {
        let (fixed, stat) = match self.playout {
            Playout::Adaptive => (None, None),
            Playout::Fixed(ms) => (None, Some(ms)),
            Playout::Pinned(ms) => (Some(ms), None),
        };
        BufferConfig {
            fixed_delay_ms: fixed,
            static_delay_ms: stat,
            use_fec: self.fec,
            // A receiver knows RTT/2 from RTCP; only the adaptive target uses it.
            network_delay_ms: Some(network_delay_ms),
            ..BufferConfig::default()
        }
    }
}

const fn strategy(name: &'static str, playout: Playout, fec: bool) -> Strategy {
    Strategy { name, playout, fec }
}

/// Every strategy of the evaluation: the fixed 40 ms and 80 ms buffers, the adaptive
/// one, and the pinned-target ablation, each without and with FEC.
pub const STRATEGIES: [Strategy; 8] = [
    strategy("fixed 40 ms", Playout::Fixed(40.0), false),
    strategy("fixed 80 ms", Playout::Fixed(80.0), false),
    strategy("adaptive", Playout::Adaptive, false),
    strategy("target pinned at 80 ms", Playout::Pinned(80.0), false),
    strategy("fixed 40 ms + FEC", Playout::Fixed(40.0), true),
    strategy("fixed 80 ms + FEC", Playout::Fixed(80.0), true),
    strategy("adaptive + FEC", Playout::Adaptive, true),
    strategy("target pinned at 80 ms + FEC", Playout::Pinned(80.0), true),
];

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub profile: &'static str,
    pub strategy: &'static str,
    pub mean_delay_ms: f64,
    pub p95_delay_ms: f64,
    pub concealment_pct: f64,
    pub fec_recovered_pct: f64,
    pub interruptions: u64,
    /// Simplified E-model MOS — an estimate: network one-way delay (profile base) + playout delay
    /// + 26.5 ms of Opus framing and lookahead, with the concealed share as loss.
    pub mos_estimate: f64,
    #[serde(skip)]
    pub stats: JitterStats,
    /// Decoded frame numbers in play order (Frame and FEC rebuilds).
    #[serde(skip)]
    pub played: Vec<u64>,
}

/// One 20 ms frame as the sender sends it.
pub struct SentFrame {
    pub payload: Vec<u8>,
    /// The frame is quiet (RFC 6464 level below speech): a good place to drop or stretch.
    pub low_energy: bool,
}

/// What a playout run produced.
#[derive(Debug, Clone)]
pub struct Run {
    pub stats: JitterStats,
    /// Frame numbers decoded (packet or FEC rebuild), in play order.
    pub played: Vec<u64>,
    /// (play time ms, buffering delay ms) of every decoded frame.
    pub delays: Vec<(f64, f64)>,
    /// Frames the network lost (no copy arrived): no buffer can play them.
    pub network_lost: u64,
    /// Lost frames whose successor (which carries their in-band FEC) was lost too: no buffer
    /// can rebuild them from FEC.
    pub fec_unrecoverable: u64,
}

/// Send frame `i` of `frames` at `i × 20 ms` through `profile` (seeded), insert arrivals into a
/// buffer with `cfg`, and pull every 20 ms until 3 s after the last send. `on_pull` sees every
/// decision with its play time, so a caller can decode real audio.
pub fn play_through(
    profile: &Profile,
    cfg: BufferConfig,
    seed: u64,
    frames: &[SentFrame],
    mut on_pull: impl FnMut(f64, &Pulled),
) -> Run {
    /// IP + UDP + RTP + SRTP tag bytes on top of the Opus payload (for bandwidth caps).
    const OVERHEAD_BYTES: usize = 40;
    let mut imp = Impairment::new(profile.clone(), seed);
    let mut arrivals: Vec<(f64, usize)> = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let sent = Duration::from_millis(i as u64 * 20);
        for a in imp.send(sent, f.payload.len() + OVERHEAD_BYTES) {
            arrivals.push((a.as_secs_f64() * 1000.0, i));
        }
    }
    arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut arrived = vec![false; frames.len()];
    for &(_, i) in &arrivals {
        arrived[i] = true;
    }
    let network_lost = arrived.iter().filter(|a| !**a).count() as u64;
    let fec_unrecoverable = (0..frames.len())
        .filter(|&i| !arrived[i] && !arrived.get(i + 1).copied().unwrap_or(false))
        .count() as u64;
    let mut jb = JitterBuffer::new(cfg);
    let (mut played, mut delays) = (Vec::new(), Vec::new());
    let mut next = 0;
    let mut t = 0.0;
    let end_ms = frames.len() as f64 * 20.0 + 3000.0;
    while t < end_ms {
        while next < arrivals.len() && arrivals[next].0 <= t {
            let (at, i) = arrivals[next];
            let f = &frames[i];
            jb.insert_frame(
                at,
                (i % 65536) as u16,
                (i as u32).wrapping_mul(960),
                f.payload.clone(),
                f.low_energy,
            );
            next += 1;
        }
        let before = jb.stats().jitter_buffer_delay;
        let pulled = jb.pull(t);
        if let Pulled::Frame { seq, .. } | Pulled::Fec { seq, .. } = pulled {
            played.push(seq);
            delays.push((
                t,
                (jb.stats().jitter_buffer_delay - before) / 960.0 * 1000.0,
            ));
        }
        on_pull(t, &pulled);
        t += 20.0;
    }
    jb.finish();
    Run {
        stats: jb.stats().clone(),
        played,
        delays,
        network_lost,
        fec_unrecoverable,
    }
}

/// Run `secs` of (payload-free) frames through `profile` with `cfg`.
pub fn simulate(profile: &Profile, cfg: BufferConfig, secs: u64, seed: u64) -> Run {
    let frames: Vec<SentFrame> = (0..secs * 50)
        .map(|_| SentFrame {
            payload: vec![0; 80],
            low_energy: false,
        })
        .collect();
    play_through(profile, cfg, seed, &frames, |_, _| {})
}

pub fn evaluate(profile: &Profile, s: Strategy, secs: u64, seed: u64) -> Outcome {
    let cfg = s.config(profile.base_delay_ms);
    let Run {
        stats,
        played,
        delays,
        ..
    } = simulate(profile, cfg, secs, seed);
    let mut delays: Vec<f64> = delays.into_iter().map(|(_, d)| d).collect();
    delays.sort_by(f64::total_cmp);
    let p95 = delays.get(delays.len() * 95 / 100).copied().unwrap_or(0.0);
    let frames = (stats.total_samples_received / 960).max(1) as f64;
    Outcome {
        profile: profile.name,
        strategy: s.name,
        mean_delay_ms: stats.mean_delay_ms(),
        p95_delay_ms: p95,
        concealment_pct: stats.concealment_ratio() * 100.0,
        fec_recovered_pct: stats.fec_packets_received as f64 / frames * 100.0,
        interruptions: stats.interruptions,
        mos_estimate: crate::quality::mos_estimate(&crate::quality::QualityInput::opus(
            profile.base_delay_ms + stats.mean_delay_ms() + 26.5,
            stats.concealment_ratio() * 100.0,
        )),
        stats,
        played,
    }
}
