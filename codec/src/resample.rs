//! Sample-rate conversion (e.g. 44.1 kHz or 16 kHz ↔ 48 kHz for Opus), mono, whole buffers.
//!
//! A windowed-sinc interpolator whose cutoff is the lower of the two Nyquist frequencies, so
//! downsampling filters instead of folding high frequencies back (aliasing). (dasp's sinc
//! interpolator was tried first: it keeps the source cutoff when downsampling and aliases.)

use crate::error::CodecError;

/// Zero crossings of the sinc kernel on each side (at the output's cutoff): 16 keeps aliasing
/// and ripple well below speech levels at a modest cost.
const ZERO_CROSSINGS: f64 = 16.0;

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-9 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// Blackman window over [-1, 1].
fn window(x: f64) -> f64 {
    if x.abs() >= 1.0 {
        return 0.0;
    }
    let t = std::f64::consts::PI * (x + 1.0);
    0.42 - 0.5 * t.cos() + 0.08 * (2.0 * t).cos()
}

/// Convert mono `input` sampled at `from_hz` to `to_hz`. The output length is
/// `round(input.len() * to_hz / from_hz)`.
pub fn resample(input: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, CodecError> {
    if from_hz == 0 || to_hz == 0 || from_hz > 384_000 || to_hz > 384_000 {
        return Err(CodecError::Invalid(format!(
            "sample rates must be 1..=384000 Hz, got {from_hz} → {to_hz}"
        )));
    }
    if from_hz == to_hz {
        return Ok(input.to_vec());
    }
    let ratio = from_hz as f64 / to_hz as f64; // input samples per output sample
    let fc = (1.0 / ratio).min(1.0); // cutoff relative to the input's Nyquist
    let half = (ZERO_CROSSINGS / fc).ceil() as i64; // kernel half-width in input samples
    let out_len = (input.len() as f64 / ratio).round() as usize;
    let mut out = Vec::with_capacity(out_len);
    for j in 0..out_len {
        let t = j as f64 * ratio;
        let center = t.floor() as i64;
        let mut acc = 0.0;
        for k in (center - half + 1)..=(center + half) {
            if k < 0 || k as usize >= input.len() {
                continue;
            }
            let d = t - k as f64;
            acc += input[k as usize] as f64 * fc * sinc(fc * d) * window(d / half as f64);
        }
        out.push(acc as f32);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f64, rate: u32, secs: f64) -> Vec<f32> {
        (0..(rate as f64 * secs) as usize)
            .map(|i| (2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin() as f32 * 0.5)
            .collect()
    }

    fn middle(v: &[f32]) -> &[f32] {
        &v[v.len() / 4..v.len() * 3 / 4]
    }

    /// Frequency by zero crossings over the middle of the buffer.
    fn freq(v: &[f32], rate: u32) -> f64 {
        let mid = middle(v);
        let crossings = mid
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        crossings as f64 / 2.0 / (mid.len() as f64 / rate as f64)
    }

    fn rms(v: &[f32]) -> f32 {
        let m = middle(v);
        (m.iter().map(|s| s * s).sum::<f32>() / m.len() as f32).sqrt()
    }

    #[test]
    fn keeps_pitch_length_and_level() {
        for (from, to) in [
            (44_100, 48_000),
            (16_000, 48_000),
            (48_000, 16_000),
            (48_000, 44_100),
        ] {
            let x = sine(440.0, from, 0.5);
            let y = resample(&x, from, to).unwrap();
            assert_eq!(
                y.len(),
                (x.len() as f64 * to as f64 / from as f64).round() as usize
            );
            let f = freq(&y, to);
            assert!((f - 440.0).abs() < 3.0, "{from}→{to}: {f:.1} Hz");
            let level = rms(&y) / rms(&x);
            assert!((level - 1.0).abs() < 0.03, "{from}→{to}: level {level:.3}");
        }
    }

    #[test]
    fn removes_content_above_the_new_nyquist() {
        // 12 kHz cannot exist at 16 kHz sampling: it must be filtered, not folded to 4 kHz.
        let y = resample(&sine(12_000.0, 48_000, 0.5), 48_000, 16_000).unwrap();
        assert!(rms(&y) < 0.01, "aliased energy {}", rms(&y));
        // 6 kHz is below 8 kHz and survives.
        let y = resample(&sine(6_000.0, 48_000, 0.5), 48_000, 16_000).unwrap();
        assert!(rms(&y) > 0.3, "passband lost: {}", rms(&y));
    }

    #[test]
    fn bad_rates_are_refused() {
        assert!(resample(&[0.0; 10], 0, 48_000).is_err());
        assert_eq!(
            resample(&[0.25; 10], 48_000, 48_000).unwrap(),
            vec![0.25; 10]
        );
    }
}
