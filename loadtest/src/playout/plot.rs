//! PNG plots of the playout evaluation (plotters, bitmap backend, a system TrueType font).

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;

use super::audio_eval::RunResult;
use super::bottleneck::BottleneckRun;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Strategy colours, in the order of `lodge_jitter::eval::STRATEGIES` names.
fn colour(strategy: &str) -> RGBColor {
    if strategy.starts_with("fixed 40") {
        RGBColor(214, 96, 77)
    } else if strategy.starts_with("fixed 80") {
        RGBColor(67, 147, 195)
    } else if strategy.starts_with("target pinned") {
        RGBColor(150, 150, 150)
    } else {
        RGBColor(27, 158, 119)
    }
}

/// Make "sans-serif" available to plotters (it has no font of its own in this build).
pub fn register_font() -> Result<()> {
    let Some(bytes) = FONT_PATHS.iter().find_map(|p| std::fs::read(p).ok()) else {
        bail!(
            "no TrueType font for the plots: install fonts-dejavu-core (looked in {})",
            FONT_PATHS.join(", ")
        );
    };
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into()))
        .map_err(|_| anyhow!("the font file is not a usable TrueType font"))
}

pub(crate) fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// One "mean playout delay (x) against concealment (y)" panel with its axes drawn, for the
/// playout evaluation and the NetEq comparison alike.
pub(crate) fn delay_concealment_panel<'a, 'b: 'a>(
    panel: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    xmax: f64,
    ymax: f64,
) -> Result<
    ChartContext<
        'a,
        BitMapBackend<'b>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
> {
    let mut c = ChartBuilder::on(panel)
        .caption(caption, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("mean playout delay, ms")
        .y_desc("concealment, %")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    Ok(c)
}

/// One panel per profile: mean playout delay (x) against concealment (y), one point per
/// strategy; circles without FEC, triangles with.
pub fn delay_vs_concealment(path: &Path, profiles: &[&str], runs: &[RunResult]) -> Result<()> {
    let root = BitMapBackend::new(path, (1400, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            "Playout delay vs concealment per profile (lower-left is better; ▲ = with FEC)",
            ("sans-serif", 24),
        )
        .map_err(err)?;
    let cols = 4;
    let rows = profiles.len().div_ceil(cols);
    let panels = root.split_evenly((rows, cols));
    for (panel, profile) in panels.iter().zip(profiles) {
        let pts: Vec<&RunResult> = runs.iter().filter(|r| r.profile == *profile).collect();
        let xmax = pts.iter().map(|r| r.mean_delay_ms).fold(50.0, f64::max) * 1.15;
        let ymax = pts.iter().map(|r| r.concealment_pct).fold(0.5, f64::max) * 1.2;
        let mut c = delay_concealment_panel(panel, profile, xmax, ymax)?;
        for r in &pts {
            let col = colour(r.strategy);
            let p = (r.mean_delay_ms, r.concealment_pct);
            if r.fec {
                c.draw_series(std::iter::once(TriangleMarker::new(p, 8, col.filled())))
                    .map_err(err)?;
            } else {
                c.draw_series(std::iter::once(Circle::new(p, 6, col.filled())))
                    .map_err(err)?;
            }
        }
    }
    // Legend in the last panel when there is room, else over the first.
    let legend = panels.get(profiles.len()).unwrap_or(&panels[0]);
    for (i, (name, c)) in [
        ("fixed 40 ms", colour("fixed 40")),
        ("fixed 80 ms", colour("fixed 80")),
        ("adaptive (Lodge)", colour("adaptive")),
        ("target pinned at 80 ms", colour("target pinned")),
    ]
    .iter()
    .enumerate()
    {
        let y = 60 + i as i32 * 30;
        legend
            .draw(&Circle::new((40, y), 7, c.filled()))
            .map_err(err)?;
        legend
            .draw(&Text::new(*name, (56, y - 9), ("sans-serif", 18)))
            .map_err(err)?;
    }
    legend
        .draw(&Text::new(
            "● without FEC   ▲ with FEC",
            (34, 190),
            ("sans-serif", 18),
        ))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Mean buffering delay per half second, one line per strategy.
pub fn delay_over_time(path: &Path, profile: &str, runs: &[&RunResult]) -> Result<()> {
    const BUCKET_MS: f64 = 500.0;
    let series: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            let mut out: Vec<(f64, f64, u32)> = Vec::new();
            for &(t, d) in &r.delay_series {
                let b = (t / BUCKET_MS).floor() * BUCKET_MS / 1000.0;
                match out.last_mut() {
                    Some(last) if last.0 == b => {
                        last.1 += d;
                        last.2 += 1;
                    }
                    _ => out.push((b, d, 1)),
                }
            }
            out.into_iter().map(|(t, s, n)| (t, s / n as f64)).collect()
        })
        .collect();
    let root = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let tmax = series
        .iter()
        .flat_map(|s| s.last().map(|d| d.0))
        .fold(1.0, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.iter().map(|d| d.1))
        .fold(50.0, f64::max)
        * 1.1;
    let mut c = ChartBuilder::on(&root)
        .caption(
            format!("Playout buffer delay over time, {profile} (with FEC; 0.5 s means)"),
            ("sans-serif", 24),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..tmax, 0.0..ymax)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("time, s")
        .y_desc("buffering delay, ms")
        .draw()
        .map_err(err)?;
    for (r, s) in runs.iter().zip(&series) {
        let col = colour(r.strategy);
        // A buffer that played no packet for a while (everything late) leaves a gap, not a
        // line across it.
        let segments = s.chunk_by(|a, b| b.0 - a.0 <= BUCKET_MS / 1000.0 * 1.5);
        for (i, seg) in segments.enumerate() {
            let drawn = c
                .draw_series(LineSeries::new(seg.iter().copied(), col.stroke_width(2)))
                .map_err(err)?;
            if i == 0 {
                drawn.label(r.strategy).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], col.stroke_width(3))
                });
            }
        }
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Bits on the wire per second for each sender against the link capacity, and loss.
pub fn bottleneck(path: &Path, runs: &[BottleneckRun]) -> Result<()> {
    let root = BitMapBackend::new(path, (1400, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(520);
    let tmax = runs
        .iter()
        .flat_map(|r| r.per_second.last().map(|s| s.t_s))
        .fold(1.0, f64::max);
    let mut c = ChartBuilder::on(&top)
        .caption(
            "Bottleneck trace: bits on the wire vs capacity (shaded: adaptive sender has FEC on)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..tmax, 0.0..80.0)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("time, s")
        .y_desc("kbit/s")
        .draw()
        .map_err(err)?;
    if let Some(a) = runs.first() {
        c.draw_series(a.per_second.iter().filter(|s| s.fec).map(|s| {
            Rectangle::new(
                [(s.t_s - 1.0, 0.0), (s.t_s, 80.0)],
                RGBColor(27, 158, 119).mix(0.12).filled(),
            )
        }))
        .map_err(err)?;
        c.draw_series(LineSeries::new(
            a.per_second
                .iter()
                .map(|s| (s.t_s, s.capacity_bps / 1000.0)),
            BLACK.stroke_width(2),
        ))
        .map_err(err)?
        .label("capacity")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLACK.stroke_width(3)));
    }
    let colours = [RGBColor(27, 158, 119), RGBColor(214, 96, 77)];
    for (r, col) in runs.iter().zip(colours) {
        c.draw_series(LineSeries::new(
            r.per_second.iter().map(|s| (s.t_s, s.on_wire_bps / 1000.0)),
            col.stroke_width(2),
        ))
        .map_err(err)?
        .label(r.sender)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], col.stroke_width(3)));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    let lmax = runs
        .iter()
        .flat_map(|r| r.per_second.iter().map(|s| s.loss_pct))
        .fold(5.0, f64::max)
        * 1.1;
    let mut c = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..tmax, 0.0..lmax)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("time, s")
        .y_desc("packet loss, %")
        .draw()
        .map_err(err)?;
    for (r, col) in runs.iter().zip(colours) {
        c.draw_series(LineSeries::new(
            r.per_second.iter().map(|s| (s.t_s, s.loss_pct)),
            col.stroke_width(2),
        ))
        .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
