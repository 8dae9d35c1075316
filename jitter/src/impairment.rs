//! A seeded, deterministic network impairment model: bursty loss (Gilbert-Elliott), jitter
//! (normal or Pareto, with spikes), reordering, duplication, delay steps, a bandwidth cap with a
//! queue, and clock drift. Sans-IO: give it a packet and its send time, get arrival times back.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Parameters of one impairment profile. Times in milliseconds, probabilities 0..1.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Profile {
    pub name: &'static str,
    /// One-way base delay.
    pub base_delay_ms: f64,
    /// Gilbert-Elliott: P(good→bad) and P(bad→good) per packet; loss probability in each state.
    pub p_good_to_bad: f64,
    pub p_bad_to_good: f64,
    pub loss_good: f64,
    pub loss_bad: f64,
    /// Jitter: standard deviation (normal) or scale (Pareto) of the extra delay.
    pub jitter_ms: f64,
    /// Use a Pareto (heavy-tailed) jitter distribution with this shape instead of normal.
    pub pareto_shape: Option<f64>,
    /// Probability per packet of a delay spike, and its size.
    pub spike_prob: f64,
    pub spike_ms: f64,
    /// Probability that a packet is held back behind the next one (reordering).
    pub reorder_prob: f64,
    pub duplicate_prob: f64,
    /// At these offsets from the start the base delay changes by the given amount (route change).
    pub delay_steps: &'static [(f64, f64)],
    /// Bottleneck capacity (bits per second); `None` = unlimited.
    pub bandwidth_bps: Option<f64>,
    /// Receiver clock runs this many parts per million faster than the sender's.
    pub clock_drift_ppm: f64,
}

impl Profile {
    const BASE: Profile = Profile {
        name: "",
        base_delay_ms: 20.0,
        p_good_to_bad: 0.0,
        p_bad_to_good: 1.0,
        loss_good: 0.0,
        loss_bad: 0.0,
        jitter_ms: 0.0,
        pareto_shape: None,
        spike_prob: 0.0,
        spike_ms: 0.0,
        reorder_prob: 0.0,
        duplicate_prob: 0.0,
        delay_steps: &[],
        bandwidth_bps: None,
        clock_drift_ppm: 0.0,
    };

    /// Wired LAN/fibre: tiny jitter, no loss.
    pub const WIRED: Profile = Profile {
        name: "wired",
        base_delay_ms: 10.0,
        jitter_ms: 1.0,
        ..Self::BASE
    };
    /// Good Wi-Fi: a few ms of jitter, rare short bursts (~0.3% loss), occasional 30 ms spikes.
    pub const GOOD_WIFI: Profile = Profile {
        name: "good_wifi",
        base_delay_ms: 15.0,
        jitter_ms: 4.0,
        p_good_to_bad: 0.0015,
        p_bad_to_good: 0.5,
        loss_bad: 1.0,
        spike_prob: 0.002,
        spike_ms: 30.0,
        clock_drift_ppm: 20.0,
        ..Self::BASE
    };
    /// Busy Wi-Fi: heavy-tailed jitter, 1-2% bursty loss, frequent spikes, some reordering.
    pub const BUSY_WIFI: Profile = Profile {
        name: "busy_wifi",
        base_delay_ms: 25.0,
        jitter_ms: 8.0,
        pareto_shape: Some(2.5),
        p_good_to_bad: 0.006,
        p_bad_to_good: 0.4,
        loss_bad: 0.9,
        spike_prob: 0.01,
        spike_ms: 80.0,
        reorder_prob: 0.01,
        clock_drift_ppm: -40.0,
        ..Self::BASE
    };
    /// 4G with a handover: moderate jitter, then the route changes (+80 ms at 20 s, back at 40 s)
    /// with a burst of loss around it.
    pub const HANDOVER_4G: Profile = Profile {
        name: "4g_handover",
        base_delay_ms: 45.0,
        jitter_ms: 10.0,
        p_good_to_bad: 0.002,
        p_bad_to_good: 0.3,
        loss_bad: 0.8,
        spike_prob: 0.005,
        spike_ms: 120.0,
        delay_steps: &[(20_000.0, 80.0), (40_000.0, -80.0)],
        clock_drift_ppm: 50.0,
        ..Self::BASE
    };
    /// Congested 3G: 150 ms base, large heavy-tailed jitter, 3% bursty loss, 48 kbps bottleneck.
    pub const CONGESTED_3G: Profile = Profile {
        name: "congested_3g",
        base_delay_ms: 150.0,
        jitter_ms: 30.0,
        pareto_shape: Some(2.0),
        p_good_to_bad: 0.01,
        p_bad_to_good: 0.3,
        loss_bad: 0.9,
        spike_prob: 0.01,
        spike_ms: 200.0,
        reorder_prob: 0.02,
        bandwidth_bps: Some(48_000.0),
        ..Self::BASE
    };
    /// 10% loss in bursts (mean burst 2.5 packets), mild jitter.
    pub const BURSTY_10: Profile = Profile {
        name: "bursty_10",
        base_delay_ms: 30.0,
        jitter_ms: 5.0,
        p_good_to_bad: 0.0444,
        p_bad_to_good: 0.4,
        loss_bad: 1.0,
        ..Self::BASE
    };
    /// 3% loss in bursts, mild jitter (the FEC goal's profile).
    pub const BURSTY_3: Profile = Profile {
        name: "bursty_3",
        base_delay_ms: 30.0,
        jitter_ms: 5.0,
        p_good_to_bad: 0.0124,
        p_bad_to_good: 0.4,
        loss_bad: 1.0,
        ..Self::BASE
    };

    pub const ALL: [Profile; 7] = [
        Self::WIRED,
        Self::GOOD_WIFI,
        Self::BUSY_WIFI,
        Self::HANDOVER_4G,
        Self::CONGESTED_3G,
        Self::BURSTY_10,
        Self::BURSTY_3,
    ];

    /// A long-haul link between nodes (the edge trunk's repair goal): 5% loss in bursts (mean
    /// burst 2.5 packets), 40 ms ± 10 ms one way. Not one of the caller profiles in [`ALL`].
    ///
    /// [`ALL`]: Profile::ALL
    pub const TRUNK_BURSTY_5: Profile = Profile {
        name: "trunk_bursty_5",
        base_delay_ms: 40.0,
        jitter_ms: 10.0,
        p_good_to_bad: 0.05 * 0.4 / 0.95,
        p_bad_to_good: 0.4,
        loss_bad: 1.0,
        ..Self::BASE
    };

    /// A caller profile of [`Profile::ALL`] or the trunk profile, by name.
    pub fn by_name(name: &str) -> Option<Profile> {
        Self::ALL
            .into_iter()
            .chain([Self::TRUNK_BURSTY_5])
            .find(|p| p.name == name)
    }

    /// Long-run loss rate of the Gilbert-Elliott chain.
    pub fn expected_loss(&self) -> f64 {
        let pi_bad = if self.p_good_to_bad + self.p_bad_to_good > 0.0 {
            self.p_good_to_bad / (self.p_good_to_bad + self.p_bad_to_good)
        } else {
            0.0
        };
        pi_bad * self.loss_bad + (1.0 - pi_bad) * self.loss_good
    }
}

/// The impairment state machine for one direction of one flow.
pub struct Impairment {
    p: Profile,
    rng: StdRng,
    bad: bool,
    /// When the bottleneck queue drains (ms since start).
    queue_free_at: f64,
    /// A packet held back for reordering: (arrival ms, bytes) is released after the next one.
    held: Option<f64>,
    last_arrival: f64,
}

impl Impairment {
    pub fn new(p: Profile, seed: u64) -> Self {
        Impairment {
            p,
            rng: StdRng::seed_from_u64(seed),
            bad: false,
            queue_free_at: 0.0,
            held: None,
            last_arrival: 0.0,
        }
    }

    pub fn profile(&self) -> &Profile {
        &self.p
    }

    fn normal(&mut self) -> f64 {
        // Box-Muller.
        let u1: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = self.rng.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Arrival times (on the receiver's clock, since the start) of a packet of `bytes` sent at
    /// `sent` (since the start). Empty when lost; two entries when duplicated.
    pub fn send(&mut self, sent: Duration, bytes: usize) -> Vec<Duration> {
        let t = sent.as_secs_f64() * 1000.0;
        // Loss: advance the chain, then draw in the current state.
        self.bad = if self.bad {
            !self.rng.gen_bool(self.p.p_bad_to_good.clamp(0.0, 1.0))
        } else {
            self.rng.gen_bool(self.p.p_good_to_bad.clamp(0.0, 1.0))
        };
        let loss = if self.bad {
            self.p.loss_bad
        } else {
            self.p.loss_good
        };
        if self.rng.gen_bool(loss.clamp(0.0, 1.0)) {
            return Vec::new();
        }
        // Bottleneck: serialize behind earlier packets.
        let mut depart = t;
        if let Some(bps) = self.p.bandwidth_bps {
            let tx_ms = bytes as f64 * 8.0 / bps * 1000.0;
            depart = depart.max(self.queue_free_at) + tx_ms;
            self.queue_free_at = depart;
        }
        let step: f64 = self
            .p
            .delay_steps
            .iter()
            .filter(|(at, _)| t >= *at)
            .map(|(_, d)| d)
            .sum();
        let jitter = match self.p.pareto_shape {
            Some(shape) => {
                let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
                self.p.jitter_ms * (u.powf(-1.0 / shape) - 1.0)
            }
            None => (self.normal() * self.p.jitter_ms).abs(),
        };
        let spike = if self.rng.gen_bool(self.p.spike_prob.clamp(0.0, 1.0)) {
            self.p.spike_ms * self.rng.gen_range(0.5..1.0)
        } else {
            0.0
        };
        let mut arrival = depart + self.p.base_delay_ms + step + jitter + spike;
        // Reordering: this packet arrives just after the next one.
        if let Some(h) = self.held.take() {
            arrival = arrival.min(h - 0.1).max(0.0);
        } else if self.rng.gen_bool(self.p.reorder_prob.clamp(0.0, 1.0)) {
            self.held = Some(arrival);
            arrival += 25.0;
        }
        // Receiver clock drift.
        arrival *= 1.0 + self.p.clock_drift_ppm * 1e-6;
        self.last_arrival = self.last_arrival.max(arrival);
        let mut out = vec![Duration::from_secs_f64(arrival.max(0.0) / 1000.0)];
        if self.rng.gen_bool(self.p.duplicate_prob.clamp(0.0, 1.0)) {
            out.push(Duration::from_secs_f64(
                (arrival + self.rng.gen_range(0.0..10.0)) / 1000.0,
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: Profile, seed: u64, n: usize) -> (usize, Vec<f64>) {
        let mut imp = Impairment::new(p, seed);
        let mut lost = 0;
        let mut delays = Vec::new();
        for i in 0..n {
            let sent = Duration::from_millis(20 * i as u64);
            let a = imp.send(sent, 80);
            if a.is_empty() {
                lost += 1;
            } else {
                delays.push((a[0].as_secs_f64() - sent.as_secs_f64()) * 1000.0);
            }
        }
        (lost, delays)
    }

    #[test]
    fn deterministic_per_seed() {
        assert_eq!(
            run(Profile::BUSY_WIFI, 7, 2000).1,
            run(Profile::BUSY_WIFI, 7, 2000).1
        );
        assert_ne!(
            run(Profile::BUSY_WIFI, 7, 2000).1,
            run(Profile::BUSY_WIFI, 8, 2000).1
        );
    }

    #[test]
    fn loss_rates_match_the_chain() {
        for p in [Profile::BURSTY_10, Profile::BURSTY_3, Profile::GOOD_WIFI] {
            let n = 200_000;
            let (lost, _) = run(p.clone(), 1, n);
            let rate = lost as f64 / n as f64;
            let want = p.expected_loss();
            assert!(
                (rate - want).abs() < want * 0.15 + 0.001,
                "{}: {rate:.4} vs {want:.4}",
                p.name
            );
        }
        assert_eq!(run(Profile::WIRED, 1, 10_000).0, 0);
    }

    #[test]
    fn handover_steps_the_delay() {
        let (_, d) = run(Profile::HANDOVER_4G, 3, 3000); // 60 s
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let before = mean(&d[200..900]);
        let during = mean(&d[1100..1900]);
        let after = mean(&d[2100..2900]);
        assert!(
            during - before > 60.0 && during - after > 60.0,
            "{before:.0} {during:.0} {after:.0}"
        );
    }

    #[test]
    fn bottleneck_queues() {
        // 48 kbps, 400-byte packets every 20 ms = 160 kbps: the queue grows without bound.
        let mut imp = Impairment::new(
            Profile {
                bandwidth_bps: Some(48_000.0),
                ..Profile::WIRED
            },
            1,
        );
        let first = imp.send(Duration::ZERO, 400)[0];
        let mut last = first;
        for i in 1..100 {
            last = imp.send(Duration::from_millis(20 * i), 400)[0];
        }
        assert!(
            last.as_secs_f64() - 99.0 * 0.020 > 4.0,
            "queueing delay built up: {last:?}"
        );
    }
}
