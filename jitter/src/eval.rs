//! Playout evaluation without audio: a 20 ms sender through an impairment profile into a
//! buffer, pulled every 20 ms. Gives delay, concealment, FEC and interruption figures per buffer
//! strategy. (The full harness adds real Opus, a speech sample and a MOS estimate.)

use std::time::Duration;

use serde::Serialize;

use crate::{BufferConfig, Impairment, JitterBuffer, JitterStats, Profile, Pulled};

/// A playout strategy under test.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Strategy {
    pub name: &'static str,
    pub fixed_delay_ms: Option<f64>,
    pub fec: bool,
}

pub const STRATEGIES: [Strategy; 6] = [
    Strategy {
        name: "fixed 40 ms",
        fixed_delay_ms: Some(40.0),
        fec: false,
    },
    Strategy {
        name: "fixed 80 ms",
        fixed_delay_ms: Some(80.0),
        fec: false,
    },
    Strategy {
        name: "adaptive",
        fixed_delay_ms: None,
        fec: false,
    },
    Strategy {
        name: "fixed 40 ms + FEC",
        fixed_delay_ms: Some(40.0),
        fec: true,
    },
    Strategy {
        name: "fixed 80 ms + FEC",
        fixed_delay_ms: Some(80.0),
        fec: true,
    },
    Strategy {
        name: "adaptive + FEC",
        fixed_delay_ms: None,
        fec: true,
    },
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

/// Run `secs` of audio through `profile` with `cfg`.
pub fn simulate(
    profile: &Profile,
    cfg: BufferConfig,
    secs: u64,
    seed: u64,
) -> (JitterStats, Vec<u64>, Vec<f64>) {
    let mut imp = Impairment::new(profile.clone(), seed);
    let n = secs * 50;
    let mut arrivals: Vec<(f64, u16, u32)> = Vec::new();
    for i in 0..n {
        for a in imp.send(Duration::from_millis(i * 20), 80) {
            arrivals.push((
                a.as_secs_f64() * 1000.0,
                (i % 65536) as u16,
                (i as u32).wrapping_mul(960),
            ));
        }
    }
    arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut jb = JitterBuffer::new(cfg);
    let (mut played, mut delays) = (Vec::new(), Vec::new());
    let mut next = 0;
    let mut t = 0.0;
    while t < (secs as f64 + 3.0) * 1000.0 {
        while next < arrivals.len() && arrivals[next].0 <= t {
            let (at, s, ts) = arrivals[next];
            jb.insert(at, s, ts, vec![0; 80]);
            next += 1;
        }
        let before = jb.stats().jitter_buffer_delay;
        if let Pulled::Frame { seq, .. } | Pulled::Fec { seq, .. } = jb.pull(t) {
            played.push(seq);
            delays.push((jb.stats().jitter_buffer_delay - before) / 960.0 * 1000.0);
        }
        t += 20.0;
    }
    jb.finish();
    (jb.stats().clone(), played, delays)
}

pub fn evaluate(profile: &Profile, s: Strategy, secs: u64, seed: u64) -> Outcome {
    let cfg = BufferConfig {
        fixed_delay_ms: s.fixed_delay_ms,
        use_fec: s.fec,
        ..BufferConfig::default()
    };
    let (stats, played, mut delays) = simulate(profile, cfg, secs, seed);
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
