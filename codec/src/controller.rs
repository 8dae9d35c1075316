//! Adaptive Opus settings from receiver feedback.
//!
//! Inputs (each with its time): receiver-report loss fraction, jitter and RTT, and an optional
//! bandwidth estimate. Output: target bitrate, FEC on/off with the expected-loss percentage,
//! frame length and DTX. The rules, and why:
//!
//! - **Loss is smoothed asymmetrically**: rises count at once (protect quickly), falls decay
//!   with a 0.8 per-report factor (do not drop protection after one lucky second).
//! - **FEC first**: at ≥ 1% smoothed loss FEC turns on, with expected loss = 1.5 × the loss
//!   (Opus spends that share on redundancy); it turns off only after 10 s below 0.5%
//!   (hysteresis). While the link has room (no estimate, or the estimate is above the current
//!   rate × 1.3) FEC is added *without* cutting the bitrate.
//! - **Cut on congestion**: loss ≥ 8% in the last report (not the smoothed figure, so that cuts
//!   stop once the queue has drained) unless an estimate shows headroom, or a rate above the
//!   estimate × 0.85, cuts the bitrate by 15% per step (never below `min_bps`), at most every
//!   2 s; under an estimate the cuts stop within one step of its × 0.85 headroom target.
//! - **Cut harder on heavy loss**: at ≥ 20% loss in the last report (and no estimate showing
//!   headroom) the sender is far above capacity, typically with a queue overflowing; each
//!   report then cuts by half the loss share, between 15% and 50% (at 50% loss: −25%), every
//!   second. 15% per 2 s would need ~25 s to come down from 64 to 8 kbps while half the
//!   packets are lost.
//! - **Queueing is congestion**: an RTT more than 60 ms above the lowest seen means a queue is
//!   building on the path; it cuts like loss does, and blocks increases.
//! - **Recover carefully**: below 2% loss, no queue and with headroom, +10% every 2 s (not
//!   within 4 s of a cut) up to `max_bps`.
//! - **Frame length**: 20 ms normally; 40 ms below 16 kbps and 60 ms below 10 kbps, where
//!   per-packet header overhead (≈ 40–60 bytes with IP/UDP/RTP/SRTP) is a large share.
//! - **DTX** when the bitrate is ≤ 24 kbps: silence then costs almost nothing.

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct ControllerConfig {
    pub min_bps: u32,
    pub max_bps: u32,
    pub start_bps: u32,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            min_bps: 8_000,
            max_bps: 64_000,
            start_bps: 32_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Decision {
    pub bitrate_bps: u32,
    pub fec: bool,
    pub expected_loss_pct: u8,
    pub frame_ms: u32,
    pub dtx: bool,
}

#[derive(Debug, Clone)]
pub struct BitrateController {
    cfg: ControllerConfig,
    /// Smoothed loss (rises at once, falls slowly): what FEC protects against.
    loss: f64,
    /// The last report's loss: what congestion is judged by, so cuts stop as soon as the
    /// queue has drained instead of while the smoothed figure decays.
    report_loss: f64,
    bwe: Option<f64>,
    pub jitter_ms: f64,
    pub rtt_ms: f64,
    /// Lowest RTT seen: the path without queues.
    min_rtt_ms: f64,
    last_cut_ms: f64,
    last_raise_ms: f64,
    low_loss_since: Option<f64>,
    d: Decision,
}

impl BitrateController {
    pub fn new(cfg: ControllerConfig) -> Self {
        let mut c = BitrateController {
            cfg,
            loss: 0.0,
            report_loss: 0.0,
            bwe: None,
            jitter_ms: 0.0,
            rtt_ms: 0.0,
            min_rtt_ms: f64::INFINITY,
            last_cut_ms: f64::NEG_INFINITY,
            last_raise_ms: f64::NEG_INFINITY,
            low_loss_since: Some(0.0),
            d: Decision {
                bitrate_bps: cfg.start_bps,
                fec: false,
                expected_loss_pct: 0,
                frame_ms: 20,
                dtx: false,
            },
        };
        c.shape();
        c
    }

    pub fn decision(&self) -> Decision {
        self.d
    }

    pub fn smoothed_loss(&self) -> f64 {
        self.loss
    }

    /// A bandwidth estimate (bits per second) for the path.
    pub fn handle_bandwidth(&mut self, now_ms: f64, bps: f64) -> Decision {
        self.bwe = Some(bps);
        self.decide(now_ms)
    }

    /// A receiver report: loss fraction 0..1, interarrival jitter and RTT in ms.
    pub fn handle_report(
        &mut self,
        now_ms: f64,
        loss_fraction: f64,
        jitter_ms: f64,
        rtt_ms: f64,
    ) -> Decision {
        let l = loss_fraction.clamp(0.0, 1.0);
        self.report_loss = l;
        self.loss = if l > self.loss {
            l
        } else {
            self.loss * 0.8 + l * 0.2
        };
        self.jitter_ms = jitter_ms;
        self.rtt_ms = rtt_ms;
        if rtt_ms > 0.0 {
            self.min_rtt_ms = self.min_rtt_ms.min(rtt_ms);
        }
        self.decide(now_ms)
    }

    fn headroom(&self) -> bool {
        self.bwe.is_none_or(|b| b > self.d.bitrate_bps as f64 * 1.3)
    }

    fn decide(&mut self, now_ms: f64) -> Decision {
        // FEC with hysteresis.
        if self.loss >= 0.01 {
            self.d.fec = true;
            self.low_loss_since = None;
        } else if self.loss < 0.005 {
            let since = *self.low_loss_since.get_or_insert(now_ms);
            if now_ms - since >= 10_000.0 {
                self.d.fec = false;
            }
        }
        self.d.expected_loss_pct = if self.d.fec {
            ((self.loss * 150.0).ceil() as u8).clamp(1, 30)
        } else {
            0
        };

        let rate = self.d.bitrate_bps as f64;
        let over_estimate = self.bwe.is_some_and(|b| b * 0.85 < rate);
        // High loss is congestion unless an estimate shows room (then it is random loss, which
        // FEC handles better than a lower rate).
        let known_headroom = self.bwe.is_some_and(|b| b > rate * 1.3);
        // A queue is building when the RTT stands well above the path's minimum: that is
        // congestion even before packets drop (and the only signal when a queue absorbs them).
        let queueing = self.min_rtt_ms.is_finite() && self.rtt_ms > self.min_rtt_ms + 60.0;
        let congested = (self.report_loss >= 0.08 && !known_headroom) || over_estimate || queueing;
        // Heavy loss means the sender is far above the path's capacity (a queue overflowing):
        // cut harder and sooner, by half the loss share (at least the usual 15%, at most half
        // the rate), every report while loss stays at 20% or more.
        let heavy = self.report_loss >= 0.2 && !known_headroom;
        let interval = if heavy { 1_000.0 } else { 2_000.0 };
        if congested && now_ms - self.last_cut_ms >= interval {
            let factor = if heavy {
                (1.0 - 0.5 * self.report_loss).clamp(0.5, 0.85)
            } else {
                0.85
            };
            self.d.bitrate_bps = ((rate * factor) as u32).max(self.cfg.min_bps);
            self.last_cut_ms = now_ms;
        } else if self.loss < 0.02
            && !queueing
            && self.headroom()
            && now_ms - self.last_raise_ms >= 2_000.0
            && now_ms - self.last_cut_ms >= 4_000.0
        {
            let cap = self
                .bwe
                .map(|b| b * 0.85)
                .unwrap_or(f64::INFINITY)
                .min(self.cfg.max_bps as f64);
            let next = (rate * 1.10).min(cap);
            if next > rate {
                self.d.bitrate_bps = next as u32;
                self.last_raise_ms = now_ms;
            }
        }
        self.shape();
        self.d
    }

    /// Frame length and DTX follow the bitrate.
    fn shape(&mut self) {
        let b = self.d.bitrate_bps;
        self.d.frame_ms = if b < 10_000 {
            60
        } else if b < 16_000 {
            40
        } else {
            20
        };
        self.d.dtx = b <= 24_000;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        c: &mut BitrateController,
        from_s: u64,
        secs: u64,
        loss: f64,
        bwe: Option<f64>,
    ) -> Decision {
        for s in from_s..from_s + secs {
            let t = s as f64 * 1000.0;
            if let Some(b) = bwe {
                c.handle_bandwidth(t, b);
            }
            c.handle_report(t, loss, 5.0, 50.0);
        }
        c.decision()
    }

    #[test]
    fn clean_link_ramps_up_without_fec() {
        let mut c = BitrateController::new(ControllerConfig::default());
        let d = run(&mut c, 0, 60, 0.0, None);
        assert_eq!(
            (d.bitrate_bps, d.fec, d.frame_ms, d.dtx),
            (64_000, false, 20, false)
        );
    }

    #[test]
    fn moderate_loss_with_headroom_adds_fec_without_cutting() {
        let mut c = BitrateController::new(ControllerConfig::default());
        let d = run(&mut c, 0, 20, 0.03, Some(200_000.0));
        assert!(d.fec && (4..=6).contains(&d.expected_loss_pct), "{d:?}");
        assert!(
            d.bitrate_bps >= 32_000,
            "no cut while the link has room: {d:?}"
        );
    }

    #[test]
    fn congestion_cuts_in_bounded_steps_and_recovers() {
        let mut c = BitrateController::new(ControllerConfig::default());
        let mut prev = c.decision().bitrate_bps;
        let mut cuts = Vec::new();
        for s in 0..20u64 {
            let d = c.handle_report(s as f64 * 1000.0, 0.12, 20.0, 80.0);
            assert!(
                d.bitrate_bps as f64 >= prev as f64 * 0.849,
                "step too large: {prev} -> {}",
                d.bitrate_bps
            );
            if d.bitrate_bps < prev {
                cuts.push(s);
            }
            prev = d.bitrate_bps;
        }
        assert!(
            cuts.windows(2).all(|w| w[1] - w[0] >= 2),
            "at most one cut per 2 s: {cuts:?}"
        );
        assert!(prev < 16_000 && c.decision().fec, "{:?}", c.decision());
        assert!(c.decision().frame_ms >= 40, "longer frames at low rate");
        assert_eq!(c.decision().bitrate_bps, 8_000, "never below min_bps");
        // Loss gone: FEC goes off after 10 s of quiet, the rate climbs back.
        let d = run(&mut c, 20, 120, 0.0, None);
        assert!(!d.fec && d.bitrate_bps > 40_000, "{d:?}");
    }

    #[test]
    fn heavy_loss_cuts_harder_and_every_second() {
        // A link far below the rate: half the packets are lost until the rate is down to
        // 12 kbps.
        let mut c = BitrateController::new(ControllerConfig::default());
        let d = run(&mut c, 0, 30, 0.0, None);
        assert_eq!(d.bitrate_bps, 64_000);
        let mut prev = d.bitrate_bps;
        let mut reached = None;
        for s in 30..60u64 {
            let loss = if prev > 12_000 { 0.5 } else { 0.0 };
            let d = c.handle_report(s as f64 * 1000.0, loss, 20.0, 80.0);
            let step = d.bitrate_bps as f64 / prev as f64;
            if d.bitrate_bps < prev {
                assert!((0.5..=0.851).contains(&step), "{prev} -> {}", d.bitrate_bps);
            }
            if reached.is_none() && d.bitrate_bps <= 12_000 {
                reached = Some(s - 30);
            }
            prev = d.bitrate_bps;
        }
        // 15% every 2 s would need 21 s from 64 to 12 kbps; by half the loss every second, 6.
        let reached = reached.expect("came down");
        assert!(reached <= 8, "took {reached} s");
    }

    #[test]
    fn bandwidth_estimate_caps_the_rate_and_enables_dtx() {
        let mut c = BitrateController::new(ControllerConfig::default());
        let d = run(&mut c, 0, 30, 0.0, Some(24_000.0));
        assert!(d.bitrate_bps <= 20_400 && d.bitrate_bps >= 17_000, "{d:?}");
        assert!(d.dtx);
        // Capacity returns: back up, DTX off again.
        let d = run(&mut c, 30, 60, 0.0, Some(64_000.0));
        assert!(d.bitrate_bps >= 50_000 && !d.dtx, "{d:?}");
    }

    #[test]
    fn a_single_loss_spike_is_protected_at_once_and_forgotten_slowly() {
        let mut c = BitrateController::new(ControllerConfig::default());
        let d = c.handle_report(0.0, 0.2, 5.0, 50.0);
        assert!(d.fec && d.expected_loss_pct >= 20);
        let d = c.handle_report(1000.0, 0.0, 5.0, 50.0);
        assert!(d.fec, "still protecting after one clean second");
        assert!(c.smoothed_loss() > 0.1);
    }
}
