//! PNG plots of a voice load run: mouth-to-ear delay CDF, MOS distribution of the probes,
//! packets per second over time, and the join-time distribution.

use std::path::Path;

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde_json::Value;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

const GREEN: RGBColor = RGBColor(27, 158, 119);
const BLUE: RGBColor = RGBColor(67, 147, 195);
const RED: RGBColor = RGBColor(214, 96, 77);

/// Delay (x, ms, log scale) against the share of packets at or below it.
pub fn m2e_cdf(path: &Path, h: &Histogram<u64>) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xmin = (h.min() as f64 / 1000.0 / 2.0).max(0.01);
    let pts: Vec<(f64, f64)> = h
        .iter_quantiles(4)
        .map(|v| {
            (
                (v.value_iterated_to() as f64 / 1000.0).max(xmin),
                v.quantile_iterated_to(),
            )
        })
        .collect();
    let xmax = (h.max() as f64 / 1000.0).max(1.0) * 1.2;
    let mut c = ChartBuilder::on(&root)
        .caption(
            format!(
                "Mouth-to-ear delay (send → receive), {} packets: p50 {:.1} / p99 {:.1} / p99.9 {:.1} / max {:.1} ms",
                h.len(),
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.value_at_quantile(0.999) as f64 / 1000.0,
                h.max() as f64 / 1000.0
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0.0f64..1.0)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("delay, ms (log)")
        .y_desc("share of packets ≤ delay")
        .draw()
        .map_err(err)?;
    c.draw_series(LineSeries::new(pts, GREEN.stroke_width(2)))
        .map_err(err)?;
    root.present().map_err(err)
}

/// Bars of a distribution: `values` (value, count) binned by `bin` from `lo` to `hi`.
fn bars(
    path: &Path,
    title: &str,
    xdesc: &str,
    values: impl Iterator<Item = (f64, u64)>,
    lo: f64,
    hi: f64,
    bin: f64,
) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = ((hi - lo) / bin).ceil().max(1.0) as usize;
    let mut counts = vec![0u64; n];
    for (v, k) in values {
        let i = (((v - lo) / bin).floor().max(0.0) as usize).min(n - 1);
        counts[i] += k;
    }
    let ymax = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.15;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(lo..hi, 0.0..ymax)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc(xdesc)
        .y_desc("count")
        .draw()
        .map_err(err)?;
    c.draw_series(counts.iter().enumerate().map(|(i, &k)| {
        let x0 = lo + i as f64 * bin;
        Rectangle::new([(x0, 0.0), (x0 + bin * 0.9, k as f64)], BLUE.filled())
    }))
    .map_err(err)?;
    root.present().map_err(err)
}

pub fn mos(path: &Path, mos: &[f64]) -> Result<()> {
    bars(
        path,
        &format!(
            "MOS estimate of the {} probe listeners (simplified E-model)",
            mos.len()
        ),
        "MOS (estimate)",
        mos.iter().map(|&m| (m, 1)),
        1.0,
        4.6,
        0.1,
    )
}

/// Join times (ms) from the run's histogram of them.
pub fn join(path: &Path, join_ms: &Histogram<u64>) -> Result<()> {
    let hi = (join_ms.max() as f64).max(100.0) * 1.05;
    bars(
        path,
        &format!("Join → media connected, {} callers", join_ms.len()),
        "ms",
        join_ms
            .iter_recorded()
            .map(|v| (v.value_iterated_to() as f64, v.count_at_value())),
        0.0,
        hi,
        (hi / 40.0).max(1.0),
    )
}

/// Packets per second sent by speakers and received by callers, and callers connected.
pub fn pps(path: &Path, timeline: &[Value]) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let get = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let tmax = timeline
        .last()
        .map(|v| get(v, "t_s"))
        .unwrap_or(1.0)
        .max(1.0);
    let ymax = timeline
        .iter()
        .map(|v| get(v, "pps_in").max(get(v, "pps_out")))
        .fold(10.0, f64::max)
        * 1.1;
    let cmax = timeline
        .iter()
        .map(|v| get(v, "connected"))
        .fold(1.0, f64::max)
        * 1.1;
    let mut c = ChartBuilder::on(&root)
        .caption(
            "Packets per second at the callers, and callers connected",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .right_y_label_area_size(56)
        .build_cartesian_2d(0.0..tmax, 0.0..ymax)
        .map_err(err)?
        .set_secondary_coord(0.0..tmax, 0.0..cmax);
    c.configure_mesh()
        .x_desc("time, s")
        .y_desc("packets/s")
        .draw()
        .map_err(err)?;
    c.configure_secondary_axes()
        .y_desc("callers connected")
        .draw()
        .map_err(err)?;
    for (key, col, label) in [
        ("pps_out", BLUE, "sent by speakers"),
        ("pps_in", GREEN, "received by callers"),
    ] {
        c.draw_series(LineSeries::new(
            timeline.iter().map(|v| (get(v, "t_s"), get(v, key))),
            col.stroke_width(2),
        ))
        .map_err(err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], col.stroke_width(3)));
    }
    c.draw_secondary_series(LineSeries::new(
        timeline
            .iter()
            .map(|v| (get(v, "t_s"), get(v, "connected"))),
        RED.stroke_width(2),
    ))
    .map_err(err)?
    .label("callers connected")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], RED.stroke_width(3)));
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
