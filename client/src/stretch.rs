//! Time-scale modification of decoded speech, pitch-synchronous: the playout buffer decides
//! *when* to lengthen or shorten (deceleration, acceleration); this module decides *where*, by
//! adding or removing whole pitch periods so the waveform stays continuous and the pitch stays
//! the same. Where the audio is not periodic enough (noise, silence, onsets) it declines and the
//! caller falls back to concealment or a plain drop.
//!
//! The period is the lag, 2.5–15 ms (400–67 Hz voices), that maximises the normalised
//! correlation between the signal's last 10 ms and the 10 ms one lag earlier.

/// Shortest period searched: 2.5 ms at 48 kHz (400 Hz).
pub const MIN_LAG: usize = 120;
/// Longest: 15 ms (67 Hz).
pub const MAX_LAG: usize = 720;
/// The correlation window: 10 ms.
const WIN: usize = 480;
/// Below this normalised correlation the signal is not treated as periodic.
pub const MIN_CORRELATION: f32 = 0.6;
/// Crossfade at a joint, at most 5 ms.
const MAX_FADE: usize = 240;

/// The pitch period of `x`'s end and its normalised correlation, or `None` if `x` is too short
/// or silent.
pub fn period(x: &[i16]) -> Option<(usize, f32)> {
    let n = x.len();
    if n < WIN + MAX_LAG {
        return None;
    }
    let a = &x[n - WIN..];
    let ea: f64 = a.iter().map(|v| (*v as f64).powi(2)).sum();
    if ea < (WIN as f64) * 4.0 {
        return None; // below -78 dBov: nothing to match
    }
    let mut corr = vec![f64::MIN; MAX_LAG + 2];
    for (lag, slot) in corr.iter_mut().enumerate().take(MAX_LAG + 1).skip(MIN_LAG) {
        if let Some(c) = correlation(x, ea, lag) {
            *slot = c;
        }
    }
    let best = corr.iter().copied().fold(f64::MIN, f64::max);
    if best == f64::MIN {
        return None;
    }
    // A multiple of the true period correlates as well: take the shortest lag whose peak is
    // nearly the best, so insertions and removals are as fine-grained as they can be.
    (MIN_LAG..=MAX_LAG)
        .find(|&l| corr[l] >= best - 0.03 && corr[l] >= corr[l - 1] && corr[l] >= corr[l + 1])
        .map(|l| (l, corr[l] as f32))
}

/// Samples to play after `hist` (what was played last) to lengthen the audio by about `want`
/// samples: whole periods of its end repeated, so the next decoded frame (which continues
/// `hist`) still joins on. `None` when `hist` is not periodic enough.
///
/// The insertion ends with `hist`'s last sample, so the decoder's next sample follows it as it
/// would have followed `hist`. At its start, a true period that is not a whole number of
/// samples would leave a jump of up to half a sample of phase (a click on a steep slope), so
/// the first repetition fades in from `hist` delayed by the fractional period (read between
/// samples, the fraction from the correlation peak's parabola): where the signal would have
/// gone on.
pub fn expand(hist: &[i16], want: usize) -> Option<Vec<i16>> {
    let (p, c) = period(hist)?;
    if c < MIN_CORRELATION {
        return None;
    }
    let k = ((want + p / 2) / p).max(1);
    let n = hist.len();
    let mut cycle = hist[n - p..].to_vec();
    let frac = fractional_lag(hist, p);
    let at = |i: usize| f32::from(hist[i]);
    // Sample n + i of the signal gone on, one true period (p + frac) back: between the samples
    // p and p + 1 back when frac > 0, between p - 1 and p back when it is < 0. i + 1 < p keeps
    // every read inside `hist`. Every repetition starts with the faded cycle, so each joint
    // between repetitions is the same joint as the one after `hist`; each ends on `hist`'s
    // last sample.
    let fade = p.saturating_sub(2).min(MAX_FADE);
    for (i, o) in cycle.iter_mut().enumerate().take(fade) {
        let j = n + i - p;
        let on = if frac >= 0.0 {
            at(j) * (1.0 - frac) + at(j - 1) * frac
        } else {
            at(j) * (1.0 + frac) - at(j + 1) * frac
        };
        let w = (i + 1) as f32 / (fade + 1) as f32;
        *o = (f32::from(*o) * w + on * (1.0 - w)).round() as i16;
    }
    let mut out = Vec::with_capacity(k * p);
    for _ in 0..k {
        out.extend_from_slice(&cycle);
    }
    Some(out)
}

/// The normalised correlation between `x`'s last [`WIN`] samples (whose energy is `ea`) and
/// the [`WIN`] samples `lag` earlier; `None` where those are silent or reach before `x`.
fn correlation(x: &[i16], ea: f64, lag: usize) -> Option<f64> {
    let n = x.len();
    if lag + WIN > n {
        return None;
    }
    let a = &x[n - WIN..];
    let b = &x[n - WIN - lag..n - lag];
    let (mut xy, mut eb) = (0.0f64, 0.0f64);
    for (p, q) in a.iter().zip(b) {
        xy += *p as f64 * *q as f64;
        eb += (*q as f64).powi(2);
    }
    (eb > 0.0).then(|| xy / (ea * eb).sqrt())
}

/// How far the true period lies from the whole lag `p`, -0.5..0.5 samples: the vertex of the
/// parabola through the correlations at `p - 1`, `p` and `p + 1`.
fn fractional_lag(x: &[i16], p: usize) -> f32 {
    let ea: f64 = x[x.len() - WIN..].iter().map(|v| (*v as f64).powi(2)).sum();
    let corr = |lag| correlation(x, ea, lag).unwrap_or(0.0);
    let (before, at, after) = (corr(p - 1), corr(p), corr(p + 1));
    let curve = before - 2.0 * at + after;
    if curve >= 0.0 {
        return 0.0; // not a peak: no fraction to read
    }
    ((before - after) / (2.0 * curve)).clamp(-0.5, 0.5) as f32
}

/// `seg` (decoded audio that follows `hist` directly) shortened by whole periods, about `want`
/// samples in all, with a crossfade where the cut joins. `None` when the audio is not
/// periodic enough.
pub fn shorten(hist: &[i16], seg: &[i16], want: usize) -> Option<Vec<i16>> {
    let p = seg_period(hist, seg)?;
    let fade = p.min(MAX_FADE);
    let mut k = ((want + p / 2) / p).max(1);
    while k > 0 && k * p + fade > seg.len() {
        k -= 1;
    }
    (k > 0).then(|| cut(seg, p, k))
}

/// `seg` shortened as [`shorten`] does, by whole periods that remove more than `more_than`
/// and at most `at_most` samples (the most that do). `None` when the audio is not periodic
/// enough or no whole number of its periods falls in that range.
pub fn shorten_between(
    hist: &[i16],
    seg: &[i16],
    more_than: usize,
    at_most: usize,
) -> Option<Vec<i16>> {
    let p = seg_period(hist, seg)?;
    let fade = p.min(MAX_FADE);
    let k = at_most.min(seg.len().saturating_sub(fade)) / p;
    (k > 0 && k * p > more_than).then(|| cut(seg, p, k))
}

/// The period of `seg`'s audio, judged with what played before it; `None` when not periodic
/// enough.
fn seg_period(hist: &[i16], seg: &[i16]) -> Option<usize> {
    let mut x = Vec::with_capacity(WIN + MAX_LAG + seg.len());
    x.extend_from_slice(&hist[hist.len().saturating_sub(WIN + MAX_LAG)..]);
    x.extend_from_slice(seg);
    let (p, c) = period(&x)?;
    (c >= MIN_CORRELATION).then_some(p)
}

/// `seg` without `k` periods of `p` from its start, crossfaded where the cut joins.
fn cut(seg: &[i16], p: usize, k: usize) -> Vec<i16> {
    let fade = p.min(MAX_FADE);
    let cut = k * p;
    let mut out = Vec::with_capacity(seg.len() - cut);
    for i in 0..fade {
        let w = (i + 1) as f32 / (fade + 1) as f32;
        out.push((seg[i] as f32 * (1.0 - w) + seg[cut + i] as f32 * w) as i16);
    }
    out.extend_from_slice(&seg[cut + fade..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A voiced-like signal: 200 Hz with two harmonics (period 240 samples).
    fn voice(start: usize, n: usize) -> Vec<i16> {
        (start..start + n)
            .map(|i| {
                let t = i as f64 / 48_000.0 * 200.0 * std::f64::consts::TAU;
                (6000.0 * t.sin() + 2500.0 * (2.0 * t).sin() + 1200.0 * (3.0 * t + 0.5).sin())
                    as i16
            })
            .collect()
    }

    /// The largest step between neighbouring samples.
    fn max_step(x: &[i16]) -> i32 {
        x.windows(2)
            .map(|w| (w[1] as i32 - w[0] as i32).abs())
            .max()
            .unwrap()
    }

    /// `n` samples of a pure tone at `hz` (amplitude 8000), from sample `s` on.
    fn sine(hz: f64, s: usize, n: usize) -> Vec<i16> {
        (s..s + n)
            .map(|i| ((i as f64 / 48_000.0 * hz * std::f64::consts::TAU).sin() * 8000.0) as i16)
            .collect()
    }

    fn noise(n: usize) -> Vec<i16> {
        let mut s = 0x2545_f491u32;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 16) as i16 / 4
            })
            .collect()
    }

    #[test]
    fn finds_the_period_of_voice_and_none_in_noise_or_silence() {
        let (p, c) = period(&voice(0, 1920)).unwrap();
        assert_eq!(p, 240);
        assert!(c > 0.99, "{c}");
        let (_, c) = period(&noise(1920)).unwrap();
        assert!(c < MIN_CORRELATION, "noise is not periodic: {c}");
        assert_eq!(period(&vec![0; 1920]), None);
        assert_eq!(period(&voice(0, 600)), None, "too short to search");
    }

    #[test]
    fn expanding_adds_whole_periods_that_join_on_both_sides() {
        let hist = voice(0, 1920);
        let ins = expand(&hist, 960).unwrap();
        assert_eq!(ins.len(), 960, "four periods of 240");
        // hist, the insertion, then what the decoder plays next (the signal continuing from
        // hist): no step larger than the signal's own.
        let mut joined = hist.clone();
        joined.extend_from_slice(&ins);
        joined.extend_from_slice(&voice(1920, 960));
        let own = max_step(&voice(0, 4800));
        assert!(
            max_step(&joined) <= own + own / 10,
            "{} vs {own}",
            max_step(&joined)
        );
        assert_eq!(expand(&noise(1920), 960), None);
    }

    /// A voice whose period is not a whole number of samples (210.2 Hz: 228.35): every
    /// insertion, whatever the phase of `hist`'s end, starts where the signal would have gone
    /// on, joins its own repetitions, and is joined by the signal going on (what the decoder
    /// plays next), each within a tenth of the signal's own largest step.
    #[test]
    fn expanding_a_fractional_period_joins_where_the_signal_goes_on() {
        let tone = |s: usize, n: usize| -> Vec<i16> {
            (s..s + n)
                .map(|i| {
                    let t = i as f64 / 48_000.0 * 210.2 * std::f64::consts::TAU;
                    (7000.0 * t.sin() + 2000.0 * (2.0 * t).sin()) as i16
                })
                .collect()
        };
        let own = max_step(&tone(0, 4800));
        for end in (1920..1920 + 229).step_by(7) {
            let hist = tone(0, end);
            let ins = expand(&hist, 960).unwrap();
            let (p, _) = period(&hist).unwrap();
            assert_eq!(ins.len() % p, 0, "whole periods of {p}");
            let mut joined = hist[end - 4..].to_vec();
            joined.extend_from_slice(&ins);
            joined.extend_from_slice(&tone(end, 4));
            assert!(
                max_step(&joined) <= own + own / 10,
                "hist ending at {end}: step {} through the insertion vs the signal's {own}",
                max_step(&joined)
            );
        }
    }

    /// A bounded cut takes the most whole periods inside its range, or declines.
    #[test]
    fn a_bounded_cut_stays_inside_its_range() {
        let tone = |s, n| sine(170.0, s, n);
        let (hist, seg) = (tone(0, 1920), tone(1920, 1200));
        let p = 48_000.0 / 170.0; // 282.4 samples
        for (more_than, at_most) in [(0, 480), (100, 580), (300, 780), (450, 930)] {
            let short = shorten_between(&hist, &seg, more_than, at_most).unwrap();
            let removed = seg.len() - short.len();
            assert!(
                removed > more_than && removed <= at_most,
                "{removed} outside ({more_than}, {at_most}]"
            );
            // The most periods that fit: one more would not.
            assert!(
                removed as f64 + p > at_most as f64 - 2.0,
                "{removed} in ({more_than}, {at_most}]"
            );
        }
        // No whole number of periods in (290, 480]: 282 is too few, 565 too many.
        assert!(shorten_between(&hist, &seg, 290, 480).is_none());
    }

    #[test]
    fn shortening_removes_whole_periods_where_a_plain_drop_would_click() {
        // 210 Hz does not divide a 20 ms frame: dropping a frame jumps in phase.
        let tone = |s, n| sine(210.0, s, n);
        let hist = tone(0, 1920);
        let seg = tone(1920, 960);
        let short = shorten(&hist, &seg, 960).unwrap();
        let removed = 960 - short.len();
        let p = 48_000.0 / 210.0;
        let k = (removed as f64 / p).round();
        assert!(
            (removed as f64 - k * p).abs() <= 2.0,
            "whole periods: {removed} samples"
        );
        assert!(removed >= 480, "most of a frame: {removed}");
        let mut joined = hist.clone();
        joined.extend_from_slice(&short);
        let own = max_step(&tone(0, 4800));
        assert!(
            max_step(&joined) <= own + own / 10,
            "{} vs {own}",
            max_step(&joined)
        );
        // The plain drop this replaces: hist, then the frame after the dropped one.
        let mut dropped = hist.clone();
        dropped.extend_from_slice(&tone(2880, 960));
        assert!(
            max_step(&dropped) > 3 * own,
            "a drop clicks: {}",
            max_step(&dropped)
        );
        assert_eq!(shorten(&noise(1920), &noise(960), 960), None);
    }
}
