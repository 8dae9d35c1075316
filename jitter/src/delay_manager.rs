//! The target playout delay, NetEq-style: every packet's transit time relative to the recent
//! fastest one goes into a histogram that slowly forgets; the target is a high quantile of it.
//!
//! Relative to the *recent minimum* (a sliding window) so that clock drift and route changes
//! move the baseline instead of inflating the jitter estimate forever.
//!
//! A route change that adds delay would still sit in the histogram for the baseline window and
//! then fade only with the forgetting factor (a 15% share needs ~18 s to fall below 1%), keeping
//! the target high long after the path settled. So a step is recognised directly: when *every*
//! packet of the last [`DelayConfig::step_window_ms`] arrived at least
//! [`DelayConfig::step_min_ms`] later than the baseline, jitter cannot explain it (jitter lets
//! some packets through fast); the baseline jumps to the new level and that window's packets
//! are moved down in the histogram by the step, as if they had been measured against it.

/// Histogram bin width, ms.
pub const BIN_MS: f64 = 5.0;
const BINS: usize = 400; // 2 s of relative delay

use std::collections::VecDeque;

/// Tunables, with why.
#[derive(Debug, Clone, Copy)]
pub struct DelayConfig {
    /// Quantile of relative delay to cover: 0.99 trades ~1% late packets (concealed, often
    /// rebuilt from FEC) for delay.
    pub quantile: f64,
    /// Per-packet forgetting factor: 0.997 ≈ a 6.7 s memory at 50 packets/s.
    pub forget: f64,
    /// Sliding window for the baseline (fastest transit), ms: long enough to span a burst,
    /// short enough to follow a route change within seconds.
    pub baseline_window_ms: f64,
    pub min_delay_ms: f64,
    pub max_delay_ms: f64,
    /// Route-change detection: a window in which every packet is late by at least
    /// `step_min_ms` is a new base delay, not jitter. 1 s holds ~50 packets, enough that
    /// heavy-tailed jitter always lets one through near the baseline.
    pub step_window_ms: f64,
    /// Smallest delay step treated as a route change (one 20 ms frame).
    pub step_min_ms: f64,
    /// When the path delay is known, the E-model picks the target between the minimum and
    /// this quantile: above `quantile` where covering a sparse tail (delay spikes) is worth
    /// its delay, below it where the tail is too long to cover (heavy-tailed jitter on a path
    /// already near the E-model's 177 ms knee). Capped so that a low-delay path, where the
    /// E-model would buy almost any delay to avoid a late packet, keeps a low delay.
    pub quality_ceiling: f64,
}

impl Default for DelayConfig {
    fn default() -> Self {
        DelayConfig {
            quantile: 0.99,
            forget: 0.997,
            baseline_window_ms: 4000.0,
            min_delay_ms: 20.0,
            max_delay_ms: 1000.0,
            step_window_ms: 1000.0,
            step_min_ms: 20.0,
            quality_ceiling: 0.995,
        }
    }
}

/// Minimum over a sliding time window, kept in 8 sub-window buckets (O(1) per update).
#[derive(Debug, Clone)]
struct SlidingMin {
    bucket_ms: f64,
    buckets: [(f64, f64); 8], // (bucket start, min)
}

impl SlidingMin {
    fn new(window_ms: f64) -> Self {
        SlidingMin {
            bucket_ms: window_ms / 8.0,
            buckets: [(f64::NEG_INFINITY, f64::INFINITY); 8],
        }
    }

    /// Forget everything and start again from `v` at `now_ms`.
    fn reset(&mut self, now_ms: f64, v: f64) {
        self.buckets = [(f64::NEG_INFINITY, f64::INFINITY); 8];
        self.update(now_ms, v);
    }

    fn update(&mut self, now_ms: f64, v: f64) -> f64 {
        let idx = ((now_ms / self.bucket_ms).floor() as i64).rem_euclid(8) as usize;
        let start = (now_ms / self.bucket_ms).floor() * self.bucket_ms;
        if self.buckets[idx].0 != start {
            self.buckets[idx] = (start, v);
        } else if v < self.buckets[idx].1 {
            self.buckets[idx].1 = v;
        }
        let oldest = now_ms - self.bucket_ms * 8.0;
        self.buckets
            .iter()
            .filter(|(s, _)| *s > oldest)
            .map(|(_, m)| *m)
            .fold(f64::INFINITY, f64::min)
    }
}

#[derive(Debug, Clone)]
pub struct DelayManager {
    cfg: DelayConfig,
    /// Bin weights scaled by `inc`: instead of decaying every bin per packet, new packets weigh
    /// more (1/forget per packet) and everything is renormalized now and then. Same histogram,
    /// O(1) per packet instead of O(bins).
    hist: Vec<f64>,
    inc: f64,
    total: f64,
    baseline: SlidingMin,
    /// The last `step_window_ms` of packets: (arrival ms, transit ms, histogram bin, weight),
    /// so a route change can move them. Bounded; allocated once.
    recent: VecDeque<(f64, f64, usize, f64)>,
    /// The quantile of relative delay, ms, before the target's clamping: how late a packet may
    /// be against the recent fastest one. The target is this, clamped.
    quantile_ms: f64,
    packets: u64,
    steps: u64,
}

/// Most packets remembered for route-change detection (1 s of 5 ms frames).
const RECENT_MAX: usize = 200;

impl DelayManager {
    pub fn new(cfg: DelayConfig) -> Self {
        let mut hist = vec![0.0; BINS];
        hist[0] = 1.0;
        DelayManager {
            cfg,
            hist,
            inc: 1.0,
            total: 1.0,
            baseline: SlidingMin::new(cfg.baseline_window_ms),
            recent: VecDeque::with_capacity(RECENT_MAX),
            quantile_ms: 0.0,
            packets: 0,
            steps: 0,
        }
    }

    /// Target playout delay (buffered audio the buffer aims to hold), ms.
    pub fn target_ms(&self) -> f64 {
        self.quantile_ms
            .clamp(self.cfg.min_delay_ms, self.cfg.max_delay_ms)
    }

    /// The [`DelayConfig::quantile`] of relative delay, ms, unclamped (a multiple of
    /// [`BIN_MS`]): the jitter a packet must be allowed to arrive within.
    pub fn quantile_ms(&self) -> f64 {
        self.quantile_ms
    }

    /// Route changes recognised so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// A packet arrived at `arrival_ms` (receiver clock) carrying media time `media_ms`.
    /// Returns its relative delay (how late it was against the recent fastest packet).
    pub fn update(&mut self, arrival_ms: f64, media_ms: f64) -> f64 {
        let transit = arrival_ms - media_ms;
        let mut base = self.baseline.update(arrival_ms, transit);
        self.detect_step(arrival_ms, transit, &mut base);
        let rel = (transit - base).max(0.0);
        let f = self.cfg.forget;
        // Weight (1 - f) relative to a decayed history = inc * (1 - f) / f in scaled units.
        self.inc /= f;
        let w = self.inc * (1.0 - f);
        let bin = ((rel / BIN_MS) as usize).min(BINS - 1);
        self.hist[bin] += w;
        self.total += w;
        if self.recent.len() == RECENT_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back((arrival_ms, transit, bin, w));
        if self.inc > 1e100 {
            let s = self.inc;
            for b in &mut self.hist {
                *b /= s;
            }
            for r in &mut self.recent {
                r.3 /= s;
            }
            self.total /= s;
            self.inc = 1.0;
        }
        self.packets += 1;
        self.quantile_ms = (self.quantile_bin(self.cfg.quantile) as f64 + 1.0) * BIN_MS;
        rel
    }
}

/// What the quality-based target needs besides the histogram.
#[derive(Debug, Clone, Copy)]
pub struct QualityContext {
    /// Mouth-to-ear delay outside the buffer: one-way network delay (RTT/2) + codec framing
    /// and lookahead + the frame being played, ms.
    pub other_delay_ms: f64,
    /// Share of packets the network loses (0..1).
    pub network_loss: f64,
    /// Share of packets lost together with their successor (0..1): what FEC cannot rebuild.
    pub pair_loss: f64,
    /// The receiver rebuilds a missing frame from the next packet's in-band FEC.
    pub fec: bool,
    /// How much later than the target a packet may be and still play (the frame being
    /// played), ms.
    pub late_margin_ms: f64,
}

impl DelayManager {
    /// The target delay between the minimum and the [`DelayConfig::quality_ceiling`] quantile
    /// that maximises the E-model's R for the histogram's late-packet share at each candidate
    /// delay (see the buffer's docs for why). Scans bins up to the ceiling: O(ceiling / 5 ms).
    pub fn quality_target_ms(&self, q: &QualityContext) -> f64 {
        let top = self.quantile_bin(self.cfg.quality_ceiling) + 1;
        let min_bin = ((self.cfg.min_delay_ms / BIN_MS).ceil() as usize).saturating_sub(1);
        // A packet is late when its relative delay exceeds the audio held beyond the frame
        // being played, plus that frame: count the mass above `t + late_margin_ms`.
        let m = (q.late_margin_ms / BIN_MS).round() as usize;
        let mut below = self.hist[..(min_bin + m).min(BINS)].iter().sum::<f64>();
        let (mut best_t, mut best_r) = (self.target_ms(), f64::NEG_INFINITY);
        for b in min_bin..top {
            if let Some(h) = self.hist.get(b + m) {
                below += h;
            }
            let t = (b as f64 + 1.0) * BIN_MS;
            let late = (1.0 - below / self.total).clamp(0.0, 1.0);
            let missing = (q.network_loss + late).min(1.0);
            let unplayed = if q.fec {
                // A late or lost frame is rebuilt when its successor is here in time; lost
                // pairs are what the network took together.
                q.pair_loss + late * missing
            } else {
                missing
            };
            let r = crate::quality::r_factor(&crate::quality::QualityInput::opus(
                q.other_delay_ms + t,
                unplayed * 100.0,
            ));
            if r > best_r + 1e-9 {
                best_r = r;
                best_t = t;
            }
        }
        best_t.clamp(self.cfg.min_delay_ms, self.cfg.max_delay_ms)
    }

    /// The bin holding quantile `q` of the histogram (the decayed total is the scaled total's
    /// share).
    fn quantile_bin(&self, q: f64) -> usize {
        let want = q * self.total;
        let mut acc = 0.0;
        for (i, b) in self.hist.iter().enumerate() {
            acc += b;
            if acc >= want {
                return i;
            }
        }
        BINS - 1
    }

    /// Recognise a route change that added delay (see the module docs) and rebase on it.
    fn detect_step(&mut self, now_ms: f64, transit: f64, base: &mut f64) {
        let window = self.cfg.step_window_ms;
        while self.recent.front().is_some_and(|r| r.0 < now_ms - window) {
            self.recent.pop_front();
        }
        // The window must be covered: its oldest packet about a window ago.
        let Some(&(oldest, ..)) = self.recent.front() else {
            return;
        };
        if now_ms - oldest < window * 0.9 || self.recent.len() < 10 {
            return;
        }
        let floor = self.recent.iter().map(|r| r.1).fold(transit, f64::min);
        let step = floor - *base;
        if step < self.cfg.step_min_ms {
            return;
        }
        self.steps += 1;
        self.baseline.reset(now_ms, floor);
        *base = floor;
        let shift = (step / BIN_MS) as usize;
        for r in &mut self.recent {
            let to = r.2.saturating_sub(shift);
            self.hist[r.2] -= r.3;
            self.hist[to] += r.3;
            r.2 = to;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed packets every 20 ms with the given extra delay pattern; return the final target.
    fn feed(dm: &mut DelayManager, start: usize, n: usize, extra: impl Fn(usize) -> f64) -> f64 {
        for i in start..start + n {
            let media = i as f64 * 20.0;
            dm.update(media + 50.0 + extra(i), media);
        }
        dm.target_ms()
    }

    #[test]
    fn table() {
        // (name, jitter pattern, expected target range ms)
        type Pattern = Box<dyn Fn(usize) -> f64>;
        let cases: Vec<(&str, Pattern, f64, f64)> = vec![
            ("no jitter: minimum", Box::new(|_| 0.0), 20.0, 20.0),
            (
                "every 10th packet 60 ms late (10% > q): covers it",
                Box::new(|i| if i % 10 == 0 { 60.0 } else { 0.0 }),
                60.0,
                70.0,
            ),
            (
                "every 200th packet 60 ms late (0.5% < 1%): ignored",
                Box::new(|i| if i % 200 == 0 { 60.0 } else { 0.0 }),
                20.0,
                25.0,
            ),
            (
                "uniform 0..40 ms",
                Box::new(|i| ((i * 7919) % 41) as f64),
                35.0,
                45.0,
            ),
            (
                "constant offset (drift-free) is not jitter",
                Box::new(|_| 200.0),
                20.0,
                20.0,
            ),
        ];
        for (name, f, lo, hi) in cases {
            let mut dm = DelayManager::new(DelayConfig::default());
            let t = feed(&mut dm, 0, 3000, f);
            assert!((lo..=hi).contains(&t), "{name}: target {t}");
        }
    }

    #[test]
    fn forgets_old_jitter() {
        let mut dm = DelayManager::new(DelayConfig::default());
        let t = feed(&mut dm, 0, 1500, |i| ((i * 7919) % 101) as f64);
        assert!(t > 80.0, "{t}");
        let t = feed(&mut dm, 1500, 3000, |_| 0.0);
        assert!(t <= 25.0, "calm again after a minute: {t}");
    }

    #[test]
    fn follows_clock_drift_and_route_changes() {
        // 100 ppm drift: transit grows 2 µs per packet; a +80 ms step at packet 1000.
        let mut dm = DelayManager::new(DelayConfig::default());
        let t = feed(&mut dm, 0, 3000, |i| {
            i as f64 * 0.002 + if i >= 1000 { 80.0 } else { 0.0 }
        });
        assert!(t <= 25.0, "baseline moved with drift and the step: {t}");
    }

    #[test]
    fn a_route_change_does_not_hold_the_target_up() {
        // 10 ms of uniform jitter, then the path gets 80 ms longer at packet 1000.
        let jitter = |i: usize| ((i * 7919) % 11) as f64;
        let mut dm = DelayManager::new(DelayConfig::default());
        let before = feed(&mut dm, 0, 1000, jitter);
        assert_eq!(dm.steps(), 0, "jitter alone is not a route change");
        // During the first second after the step the buffer cannot tell it from jitter.
        feed(&mut dm, 1000, 50, |i| jitter(i) + 80.0);
        let after = feed(&mut dm, 1050, 50, |i| jitter(i) + 80.0);
        assert_eq!(dm.steps(), 1);
        assert!(
            after <= before + BIN_MS,
            "two seconds after the step the target is back: {before} -> {after}"
        );
    }

    #[test]
    fn heavy_tailed_jitter_is_not_a_route_change() {
        // Pareto-like tail (scale 30 ms, shape 2) from a fixed pseudo-random sequence.
        let mut dm = DelayManager::new(DelayConfig::default());
        feed(&mut dm, 0, 5000, |i| pareto(i, 30.0));
        assert_eq!(dm.steps(), 0);
    }

    /// Pareto (shape 2) jitter from a fixed pseudo-random sequence.
    fn pareto(i: usize, scale: f64) -> f64 {
        let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 32;
        let u = ((x >> 11) as f64 / (1u64 << 53) as f64).max(1e-9);
        scale * (u.powf(-0.5) - 1.0)
    }

    fn ctx(other_delay_ms: f64, fec: bool) -> QualityContext {
        QualityContext {
            other_delay_ms,
            network_loss: 0.03,
            pair_loss: 0.01,
            fec,
            late_margin_ms: 20.0,
        }
    }

    #[test]
    fn quality_target_table() {
        // (case, jitter, other delay ms, FEC, expected relation to the 0.99 quantile target)
        let heavy = |i: usize| pareto(i, 30.0);
        let spikes = |i: usize| {
            if i % 100 == 7 {
                100.0
            } else {
                ((i * 7919) % 11) as f64
            }
        };
        type Case<'a> = (
            &'a str,
            &'a dyn Fn(usize) -> f64,
            f64,
            bool,
            fn(f64, f64) -> bool,
        );
        let cases: Vec<Case> = vec![
            (
                "heavy tail on a long path: accept late packets rather than ~250 ms",
                &heavy,
                180.0,
                false,
                |q, t| t < q - 50.0,
            ),
            (
                "the same with FEC: lower still (the next packet rebuilds a late one)",
                &heavy,
                180.0,
                true,
                |q, t| t < q - 100.0,
            ),
            (
                "sparse 100 ms spikes (1%) on a short path: cover them",
                &spikes,
                40.0,
                false,
                |q, t| q <= 25.0 && t + 20.0 >= 100.0, // + the frame being played
            ),
            (
                "sparse spikes on a long path: not worth 100 ms",
                &spikes,
                200.0,
                false,
                |q, t| t <= q + 5.0,
            ),
        ];
        for (name, jitter, other, fec, ok) in cases {
            let mut dm = DelayManager::new(DelayConfig::default());
            let q = feed(&mut dm, 0, 3000, jitter);
            let t = dm.quality_target_ms(&ctx(other, fec));
            assert!(ok(q, t), "{name}: quantile target {q}, quality target {t}");
        }
    }
}
