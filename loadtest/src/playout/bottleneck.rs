//! The bitrate controller on a bottleneck trace, against a static 32 kbps sender without FEC,
//! both sending the real speech through a real Opus encoder.
//!
//! Trace: capacity 64 kbps and no loss; from `1/3` of the run capacity drops to 24 kbps with 10%
//! random loss; from `2/3` both recover. The link is a drop-tail queue (200 ms) in front of the
//! capacity plus 30 ms propagation. Each packet is the encoder's real output plus 40 bytes of
//! IP/UDP/RTP/SRTP headers; DTX packets (≤ 2 bytes) are not sent. A lost packet is rebuilt from
//! the next packet's in-band FEC when that packet carried FEC and arrived. Each second the
//! receiver reports loss, jitter and RTT; the adaptive sender's controller decides.

use anyhow::Result;
use lodge_codec::{BitrateController, ControllerConfig, Decision, EncoderSettings, OpusEncoder};
use lodge_jitter::{mos_estimate, QualityInput};
use rand::{Rng, SeedableRng};
use serde::Serialize;

const HEADER_BYTES: f64 = 40.0;
const QUEUE_LIMIT_S: f64 = 0.2;
const PROPAGATION_S: f64 = 0.03;
/// A fixed playout allowance for the mouth-to-ear estimate (the buffer is not simulated here).
const PLAYOUT_MS: f64 = 40.0;
const CODEC_DELAY_MS: f64 = 26.5;

/// One second of a run, for the plot.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t_s: f64,
    pub bitrate_bps: u32,
    pub on_wire_bps: f64,
    pub capacity_bps: f64,
    pub fec: bool,
    pub loss_pct: f64,
    pub delay_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BottleneckRun {
    pub sender: &'static str,
    /// Seconds from the capacity drop until the sender fits the link with the queue drained.
    pub time_to_adapt_s: Option<f64>,
    pub seconds_with_fec: u32,
    pub mean_network_delay_ms: f64,
    /// Audio lost and not rebuilt from FEC, percent of the audio sent.
    pub unrecovered_pct: f64,
    /// Simplified E-model — an estimate; it ignores the bitrate's own effect on quality.
    pub mos_estimate: f64,
    pub per_second: Vec<Second>,
}

/// (capacity bps, random loss) at `t` of a run lasting `total` seconds.
pub fn link(t: f64, total: f64) -> (f64, f64) {
    if t >= total / 3.0 && t < 2.0 * total / 3.0 {
        (24_000.0, 0.10)
    } else {
        (64_000.0, 0.0)
    }
}

fn static_32k() -> Decision {
    Decision {
        bitrate_bps: 32_000,
        fec: false,
        expected_loss_pct: 0,
        frame_ms: 20,
        dtx: false,
    }
}

/// Run the trace over `pcm` (48 kHz mono, its length sets the run's duration).
pub fn run(pcm: &[i16], adaptive: bool, seed: u64) -> Result<BottleneckRun> {
    let total = pcm.len() as f64 / 48_000.0;
    let drop_at = total / 3.0;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ctl = BitrateController::new(ControllerConfig::default());
    let settings_for = |d: Decision| EncoderSettings {
        bitrate_bps: d.bitrate_bps,
        fec: d.fec,
        expected_loss_pct: d.expected_loss_pct,
        frame_ms: d.frame_ms,
        dtx: d.dtx,
        ..EncoderSettings::default()
    };
    let mut current = if adaptive {
        ctl.decision()
    } else {
        static_32k()
    };
    let mut enc = OpusEncoder::new(settings_for(current))?;
    let mut queue_free_at = 0.0f64;
    let (mut audio_ms, mut unrecovered_ms) = (0.0f64, 0.0f64);
    let (mut delay_sum, mut delivered) = (0.0f64, 0u64);
    let (mut sec_sent, mut sec_lost, mut sec_bits) = (0u64, 0u64, 0.0f64);
    let (mut sec_delay, mut sec_n) = (0.0f64, 0u64);
    let mut sec_fec = false;
    // The previous sent packet was lost: (its audio ms).
    let mut pending_loss: Option<f64> = None;
    let mut per_second = Vec::new();
    let mut adapt = None;
    let mut fec_seconds = 0;
    let mut pos = 0usize;
    let mut next_report = 1.0;
    while pos < pcm.len() {
        let t = pos as f64 / 48_000.0;
        let want = if adaptive {
            ctl.decision()
        } else {
            static_32k()
        };
        if want != current {
            enc.apply(settings_for(want))?;
            current = want;
        }
        let n = (current.frame_ms * 48) as usize;
        if pos + n > pcm.len() {
            break;
        }
        let packet_len = enc.encode(&pcm[pos..pos + n])?.len();
        pos += n;
        let frame_ms = current.frame_ms as f64;
        if packet_len <= 2 {
            // DTX: nothing goes on the wire; the receiver plays comfort noise.
            if let Some(ms) = pending_loss.take() {
                unrecovered_ms += ms;
            }
            continue;
        }
        audio_ms += frame_ms;
        sec_fec |= current.fec;
        let bytes = packet_len as f64 + HEADER_BYTES;
        sec_bits += bytes * 8.0;
        let (cap, loss) = link(t, total);
        let start = queue_free_at.max(t);
        let lost = start - t > QUEUE_LIMIT_S || rng.gen_bool(loss);
        sec_sent += 1;
        if lost {
            sec_lost += 1;
            if let Some(ms) = pending_loss.replace(frame_ms) {
                unrecovered_ms += ms;
            }
        } else {
            queue_free_at = start + bytes * 8.0 / cap;
            let delay = queue_free_at - t + PROPAGATION_S;
            delay_sum += delay;
            delivered += 1;
            sec_delay += delay;
            sec_n += 1;
            if let Some(ms) = pending_loss.take() {
                if !current.fec {
                    unrecovered_ms += ms;
                }
            }
        }
        let now = pos as f64 / 48_000.0;
        if now >= next_report {
            let lf = sec_lost as f64 / sec_sent.max(1) as f64;
            let md = if sec_n > 0 {
                sec_delay / sec_n as f64 * 1000.0
            } else {
                0.0
            };
            if adaptive {
                ctl.handle_report(now * 1000.0, lf, 5.0, 2.0 * md);
            }
            if sec_fec {
                fec_seconds += 1;
            }
            let cap_now = link(now - 0.5, total).0;
            if adapt.is_none()
                && now > drop_at + 0.5
                && now < 2.0 * drop_at
                && sec_bits <= cap_now
                && md < 80.0
            {
                adapt = Some(now - drop_at);
            }
            per_second.push(Second {
                t_s: now,
                bitrate_bps: current.bitrate_bps,
                on_wire_bps: sec_bits,
                capacity_bps: cap_now,
                fec: sec_fec,
                loss_pct: lf * 100.0,
                delay_ms: md,
            });
            (sec_sent, sec_lost, sec_bits, sec_delay, sec_n) = (0, 0, 0.0, 0.0, 0);
            sec_fec = false;
            next_report += 1.0;
        }
    }
    if let Some(ms) = pending_loss {
        unrecovered_ms += ms;
    }
    let mean_network_delay_ms = delay_sum / delivered.max(1) as f64 * 1000.0;
    let unrecovered_pct = unrecovered_ms / audio_ms.max(1.0) * 100.0;
    Ok(BottleneckRun {
        sender: if adaptive {
            "adaptive controller"
        } else {
            "static 32 kbps, no FEC"
        },
        time_to_adapt_s: adapt,
        seconds_with_fec: fec_seconds,
        mean_network_delay_ms,
        unrecovered_pct,
        mos_estimate: mos_estimate(&QualityInput::opus(
            mean_network_delay_ms + PLAYOUT_MS + CODEC_DELAY_MS,
            unrecovered_pct,
        )),
        per_second,
    })
}
