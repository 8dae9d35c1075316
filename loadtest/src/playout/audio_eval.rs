//! One playout run with real audio: the speech, Opus-encoded once, sent through an impairment
//! profile into a jitter buffer; every pull decoded the way a client would (packet, in-band FEC,
//! PLC); the result compared frame by frame with the clean decode of the same packets.

use anyhow::Result;
use lodge_codec::audio::rfc6464_level;
use lodge_codec::{EncoderSettings, OpusDecoder, OpusEncoder};
use lodge_jitter::eval::{play_through, Playout, SentFrame, Strategy};
use lodge_jitter::{mos_estimate, JitterStats, Profile, Pulled, QualityInput};
use serde::Serialize;

/// Samples in one 20 ms frame at 48 kHz.
pub const FRAME: usize = 960;
/// Opus bitrate of the evaluation (a typical voice-chat setting).
pub const BITRATE_BPS: u32 = 32_000;
/// Frames quieter than this RFC 6464 level (-50 dBov) are "low energy" for the buffer and are
/// not scored (the segmental SNR is taken over speech only).
const QUIET_LEVEL: u8 = 50;
/// Segmental SNR per frame is clipped to this range, as is usual, so that a silent or a
/// perfect frame does not dominate the mean.
const SNR_FLOOR_DB: f64 = -10.0;
const SNR_CEIL_DB: f64 = 35.0;
/// Opus framing (20 ms) + lookahead (6.5 ms), added to network and buffer delay for the MOS.
const CODEC_DELAY_MS: f64 = 26.5;

/// The speech encoded once: packets, their energy flags, and the clean decode per frame.
pub struct Encoded {
    pub frames: Vec<SentFrame>,
    /// Clean decode of every packet (no loss, no delay): the reference.
    pub clean: Vec<Vec<i16>>,
    /// Whether the source frame is speech (scored) or a pause.
    pub speech: Vec<bool>,
    pub mean_packet_bytes: f64,
}

/// Encode `pcm` (48 kHz mono) at 32 kbps in 20 ms frames, with or without in-band FEC.
pub fn encode(pcm: &[i16], fec: bool, expected_loss_pct: u8) -> Result<Encoded> {
    let settings = EncoderSettings {
        bitrate_bps: BITRATE_BPS,
        fec,
        expected_loss_pct: if fec { expected_loss_pct } else { 0 },
        ..EncoderSettings::default()
    };
    let mut enc = OpusEncoder::new(settings)?;
    let mut dec = OpusDecoder::new(false)?;
    let (mut frames, mut clean, mut speech) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0usize;
    for chunk in pcm.chunks_exact(FRAME) {
        let level = rfc6464_level(chunk);
        let payload = enc.encode(chunk)?.to_vec();
        bytes += payload.len();
        let mut out = vec![0i16; FRAME];
        dec.decode(&payload, &mut out)?;
        frames.push(SentFrame {
            payload,
            low_energy: level > QUIET_LEVEL,
        });
        clean.push(out);
        speech.push(level <= QUIET_LEVEL);
    }
    let n = frames.len().max(1) as f64;
    Ok(Encoded {
        frames,
        clean,
        speech,
        mean_packet_bytes: bytes as f64 / n,
    })
}

/// What one profile × strategy run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub profile: &'static str,
    pub strategy: &'static str,
    pub playout: Playout,
    pub fec: bool,
    pub mean_delay_ms: f64,
    pub p95_delay_ms: f64,
    /// Concealed samples / received samples (jitter buffer stats), percent.
    pub concealment_pct: f64,
    /// Frames rebuilt from in-band FEC / frames, percent.
    pub fec_recovered_pct: f64,
    /// Concealment events of 150 ms or more.
    pub interruptions: u64,
    /// Packets that arrived too late to be played.
    pub late_discarded: u64,
    /// Frames concealed with PLC (not comfort silence): the count behind the percentage.
    pub concealed_frames: u64,
    /// Concealed frames no buffer could avoid: frames the network lost (without FEC), or lost
    /// frames whose FEC-carrying successor was lost too (with FEC).
    pub unavoidable_frames: u64,
    /// Simplified E-model MOS — an estimate.
    pub mos_estimate: f64,
    /// Mean segmental SNR of the played speech against the clean decode, dB (35 = identical).
    pub seg_snr_db: f64,
    /// Speech frames that were never played (dropped to catch up, or lost and not concealed
    /// in place), percent; they score the floor in the segmental SNR.
    pub speech_frames_skipped_pct: f64,
    /// (play time ms, buffering delay ms) of each decoded frame.
    #[serde(skip)]
    pub delay_series: Vec<(f64, f64)>,
}

/// What one seed's run counted; the figures of a [`RunResult`] are derived from the sum over
/// seeds, so several networks weigh as one longer call.
#[derive(Debug, Default)]
struct Tally {
    /// The buffer's own counts (frames played and decoded, delay, concealment, FEC, late).
    stats: JitterStats,
    /// Buffer delay of every decoded frame, ms (for the p95).
    delays: Vec<f64>,
    unavoidable: u64,
    speech_total: u64,
    speech_scored: u64,
    snr_sum: f64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.stats.merge(&o.stats);
        self.delays.extend(o.delays);
        self.unavoidable += o.unavoidable;
        self.speech_total += o.speech_total;
        self.speech_scored += o.speech_scored;
        self.snr_sum += o.snr_sum;
    }
}

/// Play `enc` through `profile` with `strategy` once per seed and score what comes out, summed
/// over the seeds; with `keep_audio`, also return everything played on the first seed (48 kHz
/// mono). The delay series (for the plot) is the first seed's.
pub fn run(
    profile: &Profile,
    strategy: Strategy,
    enc: &Encoded,
    seeds: &[u64],
    keep_audio: bool,
) -> Result<(RunResult, Option<Vec<i16>>)> {
    let mut total = Tally::default();
    let (mut series, mut audio) = (None, None);
    for (i, &seed) in seeds.iter().enumerate() {
        let run = run_seed(profile, strategy, enc, seed, keep_audio && i == 0)?;
        total.add(run.tally);
        series.get_or_insert(run.delays);
        if run.audio.is_some() {
            audio = run.audio;
        }
    }
    let t = total;
    let st = &t.stats;
    let mut sorted = t.delays;
    sorted.sort_by(f64::total_cmp);
    let p95 = sorted.get(sorted.len() * 95 / 100).copied().unwrap_or(0.0);
    let frames = (st.total_samples_received / FRAME as u64).max(1) as f64;
    let mean_delay_ms = st.mean_delay_ms();
    let concealment_pct = st.concealment_ratio() * 100.0;
    let skipped = t.speech_total - t.speech_scored;
    let seg_snr_db = if t.speech_total == 0 {
        SNR_CEIL_DB
    } else {
        (t.snr_sum + skipped as f64 * SNR_FLOOR_DB) / t.speech_total as f64
    };
    let result = RunResult {
        profile: profile.name,
        strategy: strategy.name,
        playout: strategy.playout,
        fec: strategy.fec,
        mean_delay_ms,
        p95_delay_ms: p95,
        concealment_pct,
        fec_recovered_pct: st.fec_packets_received as f64 / frames * 100.0,
        interruptions: st.interruptions,
        late_discarded: st.packets_discarded,
        concealed_frames: st.loss_concealed_samples() / FRAME as u64,
        unavoidable_frames: t.unavoidable,
        mos_estimate: mos_estimate(&QualityInput::opus(
            profile.base_delay_ms + mean_delay_ms + CODEC_DELAY_MS,
            concealment_pct,
        )),
        seg_snr_db,
        speech_frames_skipped_pct: skipped as f64 / t.speech_total.max(1) as f64 * 100.0,
        delay_series: series.unwrap_or_default(),
    };
    Ok((result, audio))
}

/// What one seed's run gives back.
struct SeedRun {
    tally: Tally,
    /// (play time ms, buffering delay ms) of each decoded frame.
    delays: Vec<(f64, f64)>,
    /// Everything played, when asked for.
    audio: Option<Vec<i16>>,
}

/// One seed: the counts, the delay series, and the audio if asked for.
fn run_seed(
    profile: &Profile,
    strategy: Strategy,
    enc: &Encoded,
    seed: u64,
    keep_audio: bool,
) -> Result<SeedRun> {
    // A receiver knows RTT/2 from RTCP; the model's base delay stands in for it.
    let cfg = strategy.config(profile.base_delay_ms);
    let n = enc.frames.len();
    let mut dec = OpusDecoder::new(false)?;
    let mut out = vec![0i16; FRAME];
    let mut scored = vec![false; n];
    let (mut snr_sum, mut snr_n) = (0.0f64, 0u64);
    let mut err: Option<lodge_codec::CodecError> = None;
    let mut audio = Vec::new();
    let playout = play_through(profile, cfg, seed, &enc.frames, |_, pulled| {
        let (source, r) = match pulled {
            Pulled::Waiting => return,
            Pulled::Frame { seq, payload } => (Some(*seq), dec.decode(payload, &mut out)),
            Pulled::Fec { seq, next_payload } => {
                (Some(*seq), dec.decode_fec(next_payload, &mut out))
            }
            Pulled::Conceal { seq } => (Some(*seq), dec.conceal(&mut out)),
            Pulled::Stretch => (None, dec.conceal(&mut out)),
            Pulled::Silence => {
                out.fill(0);
                (None, Ok(FRAME))
            }
        };
        if let Err(e) = r {
            err.get_or_insert(e);
            return;
        }
        if keep_audio {
            audio.extend_from_slice(&out);
        }
        // The buffer numbers the first sequence cycle from 2^16 (see lodge_jitter::unwrap).
        let index = source
            .and_then(|s| s.checked_sub(1 << 16))
            .map(|s| s as usize);
        if let Some(s) = index.filter(|&s| s < n) {
            if enc.speech[s] && !scored[s] {
                scored[s] = true;
                snr_sum += seg_snr(&enc.clean[s], &out);
                snr_n += 1;
            }
        }
    });
    if let Some(e) = err {
        return Err(e.into());
    }
    let tally = Tally {
        delays: playout.delays.iter().map(|d| d.1).collect(),
        stats: playout.stats,
        unavoidable: if strategy.fec {
            playout.fec_unrecoverable
        } else {
            playout.network_lost
        },
        speech_total: enc.speech.iter().filter(|&&s| s).count() as u64,
        speech_scored: snr_n,
        snr_sum,
    };
    Ok(SeedRun {
        tally,
        delays: playout.delays,
        audio: keep_audio.then_some(audio),
    })
}

/// Segmental SNR of one frame, dB, clipped to [-10, 35].
fn seg_snr(clean: &[i16], got: &[i16]) -> f64 {
    let (mut sig, mut noise) = (0.0f64, 0.0f64);
    for (&c, &g) in clean.iter().zip(got) {
        let (c, g) = (c as f64, g as f64);
        sig += c * c;
        noise += (c - g) * (c - g);
    }
    if noise <= 0.0 {
        return SNR_CEIL_DB;
    }
    (10.0 * (sig / noise).log10()).clamp(SNR_FLOOR_DB, SNR_CEIL_DB)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_jitter::eval::STRATEGIES;

    /// A speech-like test signal without the synthesiser: voiced syllables (harmonics of a
    /// gliding pitch under a 4 Hz envelope) separated by pauses.
    fn voiced(seconds: usize) -> Vec<i16> {
        (0..seconds * 48_000)
            .map(|i| {
                let t = i as f64 / 48_000.0;
                let on = (t % 2.0) < 1.4;
                let env = (std::f64::consts::PI * 4.0 * t).sin().abs();
                let f0 = 120.0 + 30.0 * (t * 0.7).sin();
                let s: f64 = (1..8)
                    .map(|h| (2.0 * std::f64::consts::PI * f0 * h as f64 * t).sin() / h as f64)
                    .sum();
                if on {
                    (s * env * 6000.0) as i16
                } else {
                    0
                }
            })
            .collect()
    }

    fn strategy(name: &str) -> Strategy {
        *STRATEGIES.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn a_clean_link_plays_the_clean_decode() {
        let enc = encode(&voiced(6), false, 0).unwrap();
        let r = run(&Profile::WIRED, strategy("adaptive"), &enc, &[1], false)
            .unwrap()
            .0;
        assert_eq!(r.concealment_pct, 0.0);
        assert!(r.seg_snr_db > 30.0, "{r:?}");
        assert_eq!(r.speech_frames_skipped_pct, 0.0);
    }

    #[test]
    fn loss_lowers_the_score_and_fec_wins_some_back() {
        let plain = encode(&voiced(20), false, 0).unwrap();
        let fec = encode(&voiced(20), true, 10).unwrap();
        let p = Profile::BURSTY_10;
        let without = run(&p, strategy("adaptive"), &plain, &[3], false)
            .unwrap()
            .0;
        let with = run(&p, strategy("adaptive + FEC"), &fec, &[3], true).unwrap();
        let (with, audio) = with;
        assert!(
            audio.unwrap().len() >= 20 * 48_000,
            "all that was played is kept"
        );
        assert!(without.concealment_pct > 3.0, "{without:?}");
        assert!(without.seg_snr_db < 30.0, "{without:?}");
        assert!(with.fec_recovered_pct > 1.0, "{with:?}");
        assert!(with.concealment_pct < without.concealment_pct);
        assert!(
            with.seg_snr_db > without.seg_snr_db,
            "{with:?} vs {without:?}"
        );
    }

    #[test]
    fn several_seeds_count_as_one_longer_call() {
        let enc = encode(&voiced(10), false, 0).unwrap();
        let p = Profile::BUSY_WIFI;
        let one = |seed| {
            run(&p, strategy("adaptive"), &enc, &[seed], false)
                .unwrap()
                .0
        };
        let (a, b) = (one(5), one(6));
        let both = run(&p, strategy("adaptive"), &enc, &[5, 6], false)
            .unwrap()
            .0;
        assert_ne!(a.concealed_frames, 0, "{a:?}");
        assert_eq!(
            both.concealed_frames,
            a.concealed_frames + b.concealed_frames
        );
        assert_eq!(both.late_discarded, a.late_discarded + b.late_discarded);
        let (lo, hi) = if a.mean_delay_ms < b.mean_delay_ms {
            (a.mean_delay_ms, b.mean_delay_ms)
        } else {
            (b.mean_delay_ms, a.mean_delay_ms)
        };
        assert!(
            lo <= both.mean_delay_ms && both.mean_delay_ms <= hi,
            "{lo} {hi} {both:?}"
        );
        assert!(both.concealment_pct > 0.0 && both.concealment_pct < 100.0);
        // The plotted series is the first seed's.
        assert_eq!(both.delay_series, a.delay_series);
    }

    #[test]
    fn seg_snr_is_clipped() {
        let a = [1000i16; 960];
        assert_eq!(seg_snr(&a, &a), SNR_CEIL_DB);
        assert_eq!(seg_snr(&a, &[-10_000i16; 960]), SNR_FLOOR_DB);
        assert!((seg_snr(&a, &[-1000i16; 960]) + 6.02).abs() < 0.01);
    }
}
