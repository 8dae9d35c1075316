//! Playout evaluation without audio: a 20 ms sender through an impairment profile into a
//! buffer, pulled every 20 ms. Gives delay, concealment, FEC and interruption figures per buffer
//! strategy. (`lodge-load playout` adds real Opus, speech and an audio score on top.)

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

/// One 20 ms frame as the sender sends it.
pub struct SentFrame {
    pub payload: Vec<u8>,
    /// The frame is quiet (RFC 6464 level below speech): a good place to drop or stretch.
    pub low_energy: bool,
}

/// What a playout run produced.
#[derive(Debug, Clone)]
pub struct Playout {
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
) -> Playout {
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
    Playout {
        stats: jb.stats().clone(),
        played,
        delays,
        network_lost,
        fec_unrecoverable,
    }
}

/// Run `secs` of (payload-free) frames through `profile` with `cfg`.
pub fn simulate(profile: &Profile, cfg: BufferConfig, secs: u64, seed: u64) -> Playout {
    let frames: Vec<SentFrame> = (0..secs * 50)
        .map(|_| SentFrame {
            payload: vec![0; 80],
            low_energy: false,
        })
        .collect();
    play_through(profile, cfg, seed, &frames, |_, _| {})
}

pub fn evaluate(profile: &Profile, s: Strategy, secs: u64, seed: u64) -> Outcome {
    let cfg = BufferConfig {
        fixed_delay_ms: s.fixed_delay_ms,
        use_fec: s.fec,
        network_delay_ms: Some(profile.base_delay_ms),
        ..BufferConfig::default()
    };
    let Playout {
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
