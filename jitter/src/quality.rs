//! A call-quality estimate: the simplified ITU-T G.107 E-model. It is an *estimate* (a model of
//! an average listener), labelled as such wherever it is shown.

/// Inputs of the estimate.
#[derive(Debug, Clone, Copy)]
pub struct QualityInput {
    /// Mouth-to-ear delay, ms (network one-way + playout buffer + codec framing/lookahead).
    pub one_way_delay_ms: f64,
    /// Share of frames the listener did not get (concealed), percent.
    pub loss_pct: f64,
    /// Equipment impairment of the codec at its bitrate (0 for wideband Opus at ≥ 24 kbps).
    pub codec_ie: f64,
    /// Packet-loss robustness of the codec with its concealment (Opus PLC: ~20).
    pub bpl: f64,
    /// Burst ratio (1 = random loss, > 1 = bursty).
    pub burst_ratio: f64,
}

impl QualityInput {
    /// Opus at a voice bitrate with PLC; `delay` and `loss` are the call's.
    pub fn opus(one_way_delay_ms: f64, loss_pct: f64) -> Self {
        QualityInput {
            one_way_delay_ms,
            loss_pct,
            codec_ie: 0.0,
            bpl: 20.0,
            burst_ratio: 1.0,
        }
    }
}

/// Transmission rating factor R (0..100).
pub fn r_factor(q: &QualityInput) -> f64 {
    let ta = q.one_way_delay_ms.max(0.0);
    let id = 0.024 * ta + if ta > 177.3 { 0.11 * (ta - 177.3) } else { 0.0 };
    let ppl = q.loss_pct.clamp(0.0, 100.0);
    let ie_eff = q.codec_ie + (95.0 - q.codec_ie) * ppl / (ppl / q.burst_ratio.max(1.0) + q.bpl);
    (93.2 - id - ie_eff).clamp(0.0, 100.0)
}

/// Mean opinion score estimate (1.0..4.5) from R.
pub fn mos_from_r(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        // The G.107 polynomial dips just below 1 for small R; MOS is 1..4.5 by definition.
        (1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6).clamp(1.0, 4.5)
    }
}

/// MOS estimate for a call.
pub fn mos_estimate(q: &QualityInput) -> f64 {
    mos_from_r(r_factor(q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        // (delay ms, loss %, expected MOS range)
        let cases = [
            (20.0, 0.0, 4.35, 4.45), // a clean LAN call: the model's ceiling (R ≈ 92.7)
            (150.0, 0.0, 4.2, 4.35), // long but below the 177 ms knee
            (300.0, 0.0, 3.6, 3.9),  // past the knee: delay hurts
            (50.0, 1.0, 4.0, 4.3),   // 1% concealed
            (50.0, 5.0, 3.6, 3.9),
            (50.0, 20.0, 2.0, 2.5),
        ];
        for (d, l, lo, hi) in cases {
            let m = mos_estimate(&QualityInput::opus(d, l));
            assert!((lo..=hi).contains(&m), "delay {d} loss {l}: MOS {m:.2}");
        }
        assert_eq!(mos_from_r(-5.0), 1.0);
        assert_eq!(mos_from_r(120.0), 4.5);
        assert!(
            (1..100).all(|r| (1.0..=4.5).contains(&mos_from_r(r as f64))),
            "never outside 1..4.5"
        );
        // Monotone: more delay or loss never helps.
        let mut prev = 5.0;
        for l in 0..30 {
            let m = mos_estimate(&QualityInput::opus(80.0, l as f64));
            assert!(m <= prev);
            prev = m;
        }
    }
}
