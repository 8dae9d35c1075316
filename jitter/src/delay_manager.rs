//! The target playout delay, NetEq-style: every packet's transit time relative to the recent
//! fastest one goes into a histogram that slowly forgets; the target is a high quantile of it.
//!
//! Relative to the *recent minimum* (a sliding window) so that clock drift and route changes
//! move the baseline instead of inflating the jitter estimate forever.

/// Histogram bin width, ms.
pub const BIN_MS: f64 = 5.0;
const BINS: usize = 400; // 2 s of relative delay

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
}

impl Default for DelayConfig {
    fn default() -> Self {
        DelayConfig {
            quantile: 0.99,
            forget: 0.997,
            baseline_window_ms: 4000.0,
            min_delay_ms: 20.0,
            max_delay_ms: 1000.0,
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
    target_ms: f64,
    packets: u64,
}

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
            target_ms: cfg.min_delay_ms,
            packets: 0,
        }
    }

    /// Target playout delay (buffered audio the buffer aims to hold), ms.
    pub fn target_ms(&self) -> f64 {
        self.target_ms
    }

    /// A packet arrived at `arrival_ms` (receiver clock) carrying media time `media_ms`.
    /// Returns its relative delay (how late it was against the recent fastest packet).
    pub fn update(&mut self, arrival_ms: f64, media_ms: f64) -> f64 {
        let transit = arrival_ms - media_ms;
        let base = self.baseline.update(arrival_ms, transit);
        let rel = (transit - base).max(0.0);
        let f = self.cfg.forget;
        // Weight (1 - f) relative to a decayed history = inc * (1 - f) / f in scaled units.
        self.inc /= f;
        let w = self.inc * (1.0 - f);
        let bin = ((rel / BIN_MS) as usize).min(BINS - 1);
        self.hist[bin] += w;
        self.total += w;
        if self.inc > 1e100 {
            let s = self.inc;
            for b in &mut self.hist {
                *b /= s;
            }
            self.total /= s;
            self.inc = 1.0;
        }
        self.packets += 1;
        // Quantile of the histogram (the decayed total is the scaled total's share).
        let want = self.cfg.quantile * self.total;
        let mut acc = 0.0;
        let mut q_bin = BINS - 1;
        for (i, b) in self.hist.iter().enumerate() {
            acc += b;
            if acc >= want {
                q_bin = i;
                break;
            }
        }
        let q_ms = (q_bin as f64 + 1.0) * BIN_MS;
        self.target_ms = q_ms.clamp(self.cfg.min_delay_ms, self.cfg.max_delay_ms);
        rel
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
        let cases: Vec<(&str, Box<dyn Fn(usize) -> f64>, f64, f64)> = vec![
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
}
