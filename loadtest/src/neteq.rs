//! `lodge-load neteq-report`: the side-by-side table and plot of `tests/neteq/run.sh`, which
//! sends the same speech through the same impairment profile to a headless Chromium listener
//! (its NetEq) and to a `lodge-client` listener (Lodge's buffer, Opus FEC/PLC and time
//! stretching), and keeps each side's final figures under getStats names.
//!
//! Both sides are scored by one formula: playout delay = jitterBufferDelay /
//! jitterBufferEmittedCount; concealment = concealed samples that were not silence, over all
//! samples played; MOS estimate = `lodge_jitter::mos_estimate` (E-model) with mouth-to-ear delay
//! = the profile's base network delay + the playout delay + 26.5 ms of Opus framing and
//! lookahead, and the concealment as the loss.
//!
//! jitterBufferDelay is each packet's wait until it is decoded; decoded audio that waits for
//! its output tick (NetEq's sync buffer, lodge-client's queue) is not in it. The two sides do
//! not measure that wait alike: libwebrtc's NetEq (by its source; the Chromium build run here
//! was not inspected) times it in whole 10 ms ticks counted from the tick before the packet
//! arrived, so each wait reads on average about 5 ms long, while lodge-client times it
//! exactly. Lodge also reports its queue's wait (`lodgeQueueDelay` over `lodgeQueueSamples`);
//! NetEq's sync buffer is not in getStats, and with 20 ms packets and 10 ms output it holds
//! each sample at least 5 ms on average. So the report also judges the goals with Lodge's
//! figure plus its whole output wait against NetEq's figure as reported (its rounding taken
//! for the sync buffer's least): the check that leans against Lodge.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use lodge_jitter::{mos_estimate, Profile, QualityInput};
use plotters::prelude::*;

use crate::playout::plot::{delay_concealment_panel, err};
use serde_json::Value;

/// Opus framing (20 ms) + lookahead (6.5 ms), as in the playout evaluation.
const CODEC_DELAY_MS: f64 = 26.5;

#[derive(Args, Debug)]
pub struct NeteqReportArgs {
    /// The run's directory: one sub-directory per profile holding chromium.json and
    /// lodge.json (as tests/neteq/run.sh writes them).
    #[arg(long)]
    pub dir: PathBuf,
    /// Where report.md and neteq.png go (default: --dir).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Fail unless each listener received at least 80% of this many seconds of packets (50
    /// per second) on every profile: a check for smoke runs.
    #[arg(long)]
    pub expect_seconds: Option<f64>,
}

/// One listener's result on one profile.
#[derive(Debug, Clone, Copy)]
pub struct Side {
    pub packets: f64,
    pub delay_ms: f64,
    pub concealment_pct: f64,
    pub stretch_pct: f64,
    /// Decoded audio's mean wait for its output tick (ms): Lodge's `lodgeQueueDelay` over
    /// `lodgeQueueSamples`; `None` where the stats do not say (NetEq, older runs).
    pub output_ms: Option<f64>,
    pub mos: f64,
    /// The MOS estimate with every concealed sample as loss, silent ones too (a check on the
    /// two sides' different ways of calling concealment silent; the speaker sends every frame,
    /// so no concealment here is a sender's pause).
    pub mos_all: f64,
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

/// Score one inbound stream's getStats-named figures on `profile`.
pub fn score(s: &Value, profile: &Profile) -> Side {
    let emitted = num(s, "jitterBufferEmittedCount");
    let total = num(s, "totalSamplesReceived").max(1.0);
    let delay_ms = if emitted > 0.0 {
        num(s, "jitterBufferDelay") / emitted * 1e3
    } else {
        0.0
    };
    let concealed = (num(s, "concealedSamples") - num(s, "silentConcealedSamples")).max(0.0);
    let concealment_pct = concealed / total * 100.0;
    let stretch =
        num(s, "insertedSamplesForDeceleration") + num(s, "removedSamplesForAcceleration");
    let mouth_to_ear = profile.base_delay_ms + delay_ms + CODEC_DELAY_MS;
    let all_pct = num(s, "concealedSamples") / total * 100.0;
    let queued = num(s, "lodgeQueueSamples");
    let output_ms = (s.get("lodgeQueueDelay").is_some() && queued > 0.0)
        .then(|| num(s, "lodgeQueueDelay") / queued * 1e3);
    Side {
        packets: num(s, "packetsReceived"),
        delay_ms,
        concealment_pct,
        stretch_pct: stretch / total * 100.0,
        output_ms,
        mos: mos_estimate(&QualityInput::opus(mouth_to_ear, concealment_pct)),
        mos_all: mos_estimate(&QualityInput::opus(mouth_to_ear, all_pct)),
    }
}

/// `side`'s delay with its reported output wait added (none for NetEq: see the module doc),
/// and the MOS estimate at that delay.
fn with_output(side: &Side, profile: &Profile) -> (f64, f64) {
    let d = side.delay_ms + side.output_ms.unwrap_or(0.0);
    let mos = mos_estimate(&QualityInput::opus(
        profile.base_delay_ms + d + CODEC_DELAY_MS,
        side.concealment_pct,
    ));
    (d, mos)
}

/// The speaker's stream in a lodge-voice `--stats-json` file: the one with the most packets.
fn lodge_stream(v: &Value) -> Option<Value> {
    v["speakers"]
        .as_array()?
        .iter()
        .max_by(|a, b| num(a, "packetsReceived").total_cmp(&num(b, "packetsReceived")))
        .cloned()
}

fn read(p: &Path) -> Result<Value> {
    let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&t).with_context(|| format!("{} is not JSON", p.display()))
}

pub fn run(a: NeteqReportArgs) -> Result<bool> {
    let out = a.out.clone().unwrap_or_else(|| a.dir.clone());
    std::fs::create_dir_all(&out)?;
    let mut rows = Vec::new();
    for p in Profile::ALL {
        let d = a.dir.join(p.name);
        if !d.is_dir() {
            continue;
        }
        let chromium = read(&d.join("chromium.json"))?;
        let lodge = read(&d.join("lodge.json"))?;
        let Some(ls) = lodge_stream(&lodge) else {
            bail!(
                "{}: the lodge-client listener received nothing",
                d.display()
            );
        };
        if num(&chromium, "packetsReceived") == 0.0 {
            bail!("{}: the Chromium listener received nothing", d.display());
        }
        if num(&chromium, "streams") != 1.0 {
            bail!(
                "{}: the Chromium figures sum {} streams; the comparison needs exactly the speaker's",
                d.display(),
                chromium["streams"]
            );
        }
        let (n, l) = (score(&chromium, &p), score(&ls, &p));
        if let Some(secs) = a.expect_seconds {
            let want = 0.8 * secs * 50.0;
            for (who, side) in [("Chromium", &n), ("lodge-client", &l)] {
                if side.packets < want {
                    bail!(
                        "{}: the {who} listener received {} packets, fewer than 80% of {secs} s ({want:.0})",
                        p.name,
                        side.packets
                    );
                }
            }
        }
        rows.push((p, n, l));
    }
    if rows.is_empty() {
        bail!("no profile results under {}", a.dir.display());
    }
    let md = report(&rows);
    std::fs::write(out.join("report.md"), &md)?;
    crate::playout::plot::register_font()?;
    plot(&out.join("neteq.png"), &rows)?;
    print!("{md}");
    println!("report and plot written to {}", out.display());
    Ok(true)
}

fn report(rows: &[(Profile, Side, Side)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Lodge's playout against Chromium's NetEq\n\n\
         The same speech, through the same impairment profile (a `lodge-load relay` between the node and \
         each listener, same seed), played out by headless Chromium (NetEq) and by `lodge-client` \
         (Lodge's adaptive buffer, Opus FEC/PLC, time stretching on decoded audio). Delay: mean \
         jitterBufferDelay per emitted sample. Concealment: concealedSamples − silentConcealedSamples \
         over all samples played; both sides count concealment that played as silence as silent (NetEq: \
         its expansion once faded out; Lodge: silence played through an outage once PLC gave up). MOS: the E-model estimate with the profile's base delay + playout \
         delay + 26.5 ms codec delay, and the concealment as loss; \"MOS, all\" counts every concealed sample, \
         silent ones too. Stretch: inserted + removed samples. Bias to know: Lodge's client weighs its buffer by \
         the round trip it measures, which over these relays is twice the profile's base delay that the MOS \
         also uses; NetEq does not use the round trip. Output wait: decoded audio's wait for its 10 ms output \
         tick, which jitterBufferDelay leaves out on both sides; Lodge reports its own, NetEq's is not in \
         getStats (at least 5 ms: half of every 20 ms frame waits a tick). Bias to know: NetEq times each \
         packet's wait in whole 10 ms ticks from the tick before it arrived (about 5 ms more on average), \
         Lodge exactly; the last line below adds Lodge's whole output wait and nothing to NetEq's figure.\n"
    );
    let _ = writeln!(
        s,
        "| profile | packets (NetEq / Lodge) | delay ms (NetEq / Lodge) | Lodge's output wait ms | concealment % (NetEq / Lodge) | stretch % (NetEq / Lodge) | MOS (NetEq / Lodge) | MOS, all (NetEq / Lodge) |\n|---|---|---|---|---|---|---|---|"
    );
    let (mut mos_ok, mut better_delay) = (0, 0);
    let (mut mos_ok_out, mut better_delay_out) = (0, 0);
    for (p, n, l) in rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} / {:.0} | {:.1} / {:.1} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.3} / {:.3} | {:.3} / {:.3} |",
            p.name, n.packets, l.packets, n.delay_ms, l.delay_ms,
            l.output_ms.map_or("–".to_string(), |o| format!("{o:.1}")), n.concealment_pct,
            l.concealment_pct, n.stretch_pct, l.stretch_pct, n.mos, l.mos, n.mos_all, l.mos_all
        );
        if l.mos >= n.mos {
            mos_ok += 1;
        }
        // Lower delay at equal (or less) concealment, with 0.1 point of tolerance.
        let equal_concealment = l.concealment_pct <= n.concealment_pct + 0.1;
        if l.delay_ms < n.delay_ms && equal_concealment {
            better_delay += 1;
        }
        let (nd, nm) = with_output(n, p);
        let (ld, lm) = with_output(l, p);
        if lm >= nm {
            mos_ok_out += 1;
        }
        if ld < nd && equal_concealment {
            better_delay_out += 1;
        }
    }
    let n = rows.len();
    let _ = writeln!(
        s,
        "\nGoals (issue #18):\n- Lodge's MOS estimate at least NetEq's on every profile: **{}** ({mos_ok} of {n}).\n\
         - Lower delay at equal concealment on most profiles: **{}** ({better_delay} of {n}).",
        if mos_ok == n { "met" } else { "not met" },
        if better_delay * 2 > n { "met" } else { "not met" },
    );
    let _ = writeln!(
        s,
        "\nWith Lodge's output wait added (NetEq's figure as reported, its tick rounding standing for its \
         sync buffer): MOS at least NetEq's on {mos_ok_out} of {n}; lower delay at equal concealment on \
         {better_delay_out} of {n}."
    );
    s
}

/// One panel per profile: playout delay (x) against concealment (y), NetEq and Lodge.
fn plot(path: &Path, rows: &[(Profile, Side, Side)]) -> Result<()> {
    let root = BitMapBackend::new(path, (1400, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            "Playout delay vs concealment: Chromium NetEq (red) and Lodge (green); lower-left is better",
            ("sans-serif", 22),
        )
        .map_err(err)?;
    let cols = 4;
    let panels = root.split_evenly((rows.len().div_ceil(cols), cols));
    let neteq = RGBColor(214, 96, 77);
    let lodge = RGBColor(27, 158, 119);
    for (panel, (p, n, l)) in panels.iter().zip(rows) {
        let xmax = n.delay_ms.max(l.delay_ms).max(40.0) * 1.25;
        let ymax = n.concealment_pct.max(l.concealment_pct).max(0.5) * 1.3;
        let caption = format!("{} (MOS {:.2} / {:.2})", p.name, n.mos, l.mos);
        let mut c = delay_concealment_panel(panel, &caption, xmax, ymax)?;
        for (side, col) in [(n, neteq), (l, lodge)] {
            c.draw_series(std::iter::once(Circle::new(
                (side.delay_ms, side.concealment_pct),
                7,
                col.filled(),
            )))
            .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_sides_are_scored_by_one_formula() {
        let p = Profile::by_name("wired").unwrap();
        let s = json!({ "packetsReceived": 500, "jitterBufferDelay": 0.040 * 480_000.0,
            "jitterBufferEmittedCount": 480_000.0, "totalSamplesReceived": 480_000.0,
            "concealedSamples": 9_600.0, "silentConcealedSamples": 4_800.0,
            "insertedSamplesForDeceleration": 960.0, "removedSamplesForAcceleration": 3_840.0 });
        let x = score(&s, &p);
        assert!((x.delay_ms - 40.0).abs() < 1e-9, "{x:?}");
        assert!(
            (x.concealment_pct - 1.0).abs() < 1e-9,
            "silent concealment is not counted"
        );
        assert!((x.stretch_pct - 1.0).abs() < 1e-9);
        assert!(
            x.mos_all < x.mos,
            "counting the silent ones too costs: {x:?}"
        );
        let better = score(
            &json!({ "jitterBufferDelay": 0.020 * 480_000.0, "jitterBufferEmittedCount": 480_000.0,
            "totalSamplesReceived": 480_000.0 }),
            &p,
        );
        assert!(
            better.mos > x.mos,
            "less delay and no concealment score higher"
        );
        let rows = vec![(p, x, better)];
        let md = report(&rows);
        assert!(md.contains("| wired | 500 / 0 | 40.0 / 20.0 |"), "{md}");
        assert!(
            md.contains("at least NetEq's on every profile: **met** (1 of 1)"),
            "{md}"
        );
    }

    /// The check with output waits: Lodge's figure plus its own queue wait against NetEq's as
    /// reported. 10 ms less jitter-buffer delay but 16 ms of queue is more delay in all.
    #[test]
    fn the_output_wait_counts_lodges_queue_against_neteqs_least() {
        let p = Profile::by_name("wired").unwrap();
        let side = |delay: f64, queue: f64| {
            score(
                &json!({ "packetsReceived": 500, "jitterBufferDelay": delay * 480_000.0,
                "jitterBufferEmittedCount": 480_000.0, "totalSamplesReceived": 480_000.0,
                "lodgeQueueDelay": queue * 500_000.0, "lodgeQueueSamples": 500_000.0 }),
                &p,
            )
        };
        let (mut neteq, lodge) = (side(0.040, 0.0), side(0.030, 0.016));
        neteq.output_ms = None;
        assert!((lodge.output_ms.unwrap() - 16.0).abs() < 1e-9, "{lodge:?}");
        assert_eq!(with_output(&neteq, &p).0, 40.0);
        assert!((with_output(&lodge, &p).0 - 46.0).abs() < 1e-9);
        let md = report(&[(p.clone(), neteq, lodge)]);
        assert!(
            md.contains("| wired | 500 / 500 | 40.0 / 30.0 | 16.0 |"),
            "{md}"
        );
        assert!(
            md.contains("**met** (1 of 1)"),
            "by jitterBufferDelay alone: {md}"
        );
        assert!(
            md.contains(
                "MOS at least NetEq's on 0 of 1; lower delay at equal concealment on 0 of 1"
            ),
            "{md}"
        );
    }
}
