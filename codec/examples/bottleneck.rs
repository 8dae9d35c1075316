//! The bitrate controller on a bottleneck trace, against static 32 kbps without FEC.
//!
//! `cargo run --release -p lodge-codec --example bottleneck`
//!
//! Trace (180 s): capacity 64 kbps and no loss; at 60 s capacity drops to 24 kbps with 10% random
//! loss; at 120 s both recover. The link is a drop-tail queue (200 ms) in front of the capacity.
//! Packets carry Opus at the chosen rate plus 40 bytes of IP/UDP/RTP/SRTP headers. A lost packet
//! is rebuilt from the next packet's in-band FEC when FEC is on and that packet arrived. Each
//! second the receiver reports loss; the sender's controller decides. No audio is coded here: the
//! MOS is the simplified E-model estimate from delay and unrecovered loss.

use lodge_codec::{BitrateController, ControllerConfig};
use lodge_jitter::{mos_estimate, QualityInput};
use rand::{Rng, SeedableRng};

const HEADER_BYTES: f64 = 40.0;

fn capacity_and_loss(t: f64) -> (f64, f64) {
    if (60.0..120.0).contains(&t) {
        (24_000.0, 0.10)
    } else {
        (64_000.0, 0.0)
    }
}

struct Run {
    label: &'static str,
    adapt_s: Option<f64>,
    fec_seconds: u32,
    mos: f64,
    mean_delay_ms: f64,
    unrecovered_pct: f64,
    per_second: Vec<(f64, u32, bool, f64, f64)>,
}

fn run(adaptive: bool) -> Run {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut ctl = BitrateController::new(ControllerConfig::default());
    let mut queue_free_at = 0.0f64; // s
    let (mut sent, mut lost_sec, mut sent_sec) = (0u64, 0u64, 0u64);
    let (mut unrecovered, mut delay_sum, mut delivered) = (0u64, 0.0, 0u64);
    let mut prev_lost = false;
    let mut per_second = Vec::new();
    let mut adapt_s = None;
    let mut fec_seconds = 0;
    let mut t = 0.0f64;
    let mut next_report = 1.0;
    let (mut sec_delay, mut sec_n) = (0.0, 0u64);
    while t < 180.0 {
        let d = if adaptive {
            ctl.decision()
        } else {
            lodge_codec::Decision {
                bitrate_bps: 32_000,
                fec: false,
                expected_loss_pct: 0,
                frame_ms: 20,
                dtx: false,
            }
        };
        let frame_s = d.frame_ms as f64 / 1000.0;
        let bytes = d.bitrate_bps as f64 * frame_s / 8.0 + HEADER_BYTES;
        let (cap, loss) = capacity_and_loss(t);
        // Drop-tail queue: refuse if the backlog would exceed 200 ms.
        let start = queue_free_at.max(t);
        let tx = bytes * 8.0 / cap;
        let dropped_by_queue = start - t > 0.2;
        let dropped = dropped_by_queue || rng.gen_bool(loss);
        sent += 1;
        sent_sec += 1;
        if !dropped {
            queue_free_at = start + tx;
            let delay = queue_free_at - t + 0.03; // + 30 ms propagation
            delay_sum += delay;
            delivered += 1;
            sec_delay += delay;
            sec_n += 1;
            // The previous frame, if lost, is rebuilt from this packet's FEC.
            if prev_lost && !d.fec {
                unrecovered += 1;
            }
        } else {
            lost_sec += 1;
            if prev_lost {
                // Two in a row: the first cannot be rebuilt.
                unrecovered += 1;
            }
        }
        prev_lost = dropped;
        t += frame_s;
        if t >= next_report {
            let lf = lost_sec as f64 / sent_sec.max(1) as f64;
            let md = if sec_n > 0 {
                sec_delay / sec_n as f64 * 1000.0
            } else {
                0.0
            };
            if adaptive {
                ctl.handle_report(t * 1000.0, lf, 5.0, 2.0 * md);
            }
            if d.fec {
                fec_seconds += 1;
            }
            // Adapted: in the bottleneck, the rate fits the capacity and the queue has drained.
            let on_wire = d.bitrate_bps as f64 + HEADER_BYTES * 8.0 / frame_s;
            if adapt_s.is_none()
                && t > 60.5
                && t < 120.0
                && on_wire <= capacity_and_loss(t).0
                && md < 80.0
            {
                adapt_s = Some(t - 60.0);
            }
            per_second.push((t, d.bitrate_bps, d.fec, lf * 100.0, md));
            lost_sec = 0;
            sent_sec = 0;
            sec_delay = 0.0;
            sec_n = 0;
            next_report += 1.0;
        }
    }
    let mean_delay_ms = delay_sum / delivered.max(1) as f64 * 1000.0;
    let unrecovered_pct = unrecovered as f64 / sent as f64 * 100.0;
    // Mouth-to-ear: network + a 40 ms playout buffer + 26.5 ms Opus framing/lookahead.
    let mos = mos_estimate(&QualityInput::opus(
        mean_delay_ms + 40.0 + 26.5,
        unrecovered_pct,
    ));
    Run {
        label: if adaptive {
            "adaptive controller"
        } else {
            "static 32 kbps, no FEC"
        },
        adapt_s,
        fec_seconds,
        mos,
        mean_delay_ms,
        unrecovered_pct,
        per_second,
    }
}

fn main() {
    let runs = [run(true), run(false)];
    println!("| sender | time to adapt | seconds with FEC | mean network delay | unrecovered loss | MOS (estimate) |");
    println!("|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {} | {} | {:.0} ms | {:.2}% | {:.2} |",
            r.label,
            r.adapt_s
                .map(|s| format!("{s:.0} s"))
                .unwrap_or_else(|| "never".into()),
            r.fec_seconds,
            r.mean_delay_ms,
            r.unrecovered_pct,
            r.mos
        );
    }
    println!("\nadaptive, every 10 s: time, bitrate, FEC, loss %, network delay ms");
    for (t, b, f, l, d) in runs[0].per_second.iter().step_by(10) {
        println!("{t:5.0} s  {b:6} bps  fec {f:5}  loss {l:5.1}%  delay {d:6.1} ms");
    }
}
