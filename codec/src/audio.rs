//! Small audio utilities: level in RFC 6464 terms, a voice activity detector, mixing with soft
//! clipping.

/// RMS level of 16-bit PCM as RFC 6464 audio level: 0 (0 dBov, loudest) .. 127 (-127 dBov or
/// silence).
pub fn rfc6464_level(pcm: &[i16]) -> u8 {
    if pcm.is_empty() {
        return 127;
    }
    let sum: f64 = pcm.iter().map(|&s| (s as f64) * (s as f64)).sum();
    let rms = (sum / pcm.len() as f64).sqrt() / 32768.0;
    if rms <= 0.0 {
        return 127;
    }
    // dBov relative to a full-scale square wave (RMS 1.0).
    let dbov = 20.0 * rms.log10();
    (-dbov).round().clamp(0.0, 127.0) as u8
}

/// Energy VAD with hangover: speech when louder than `threshold` (RFC 6464 units, smaller is
/// louder), and for `hangover` frames after, so word endings are not clipped.
#[derive(Debug, Clone)]
pub struct Vad {
    pub threshold: u8,
    pub hangover: u32,
    left: u32,
}

impl Default for Vad {
    fn default() -> Self {
        // -50 dBov: speech at a normal microphone gain is well above, room noise below.
        Vad {
            threshold: 50,
            hangover: 10,
            left: 0,
        }
    }
}

impl Vad {
    pub fn is_speech(&mut self, pcm: &[i16]) -> bool {
        if rfc6464_level(pcm) <= self.threshold {
            self.left = self.hangover;
            true
        } else if self.left > 0 {
            self.left -= 1;
            true
        } else {
            false
        }
    }
}

/// Mix equal-length streams into `out`, with a soft knee instead of hard clipping: below
/// 0.8 full scale samples pass unchanged; above, they are compressed smoothly toward full scale.
pub fn mix(streams: &[&[i16]], out: &mut [i16]) {
    for (i, o) in out.iter_mut().enumerate() {
        let sum: f64 = streams
            .iter()
            .filter_map(|s| s.get(i))
            .map(|&v| v as f64 / 32768.0)
            .sum();
        *o = (soft_clip(sum) * 32767.0).round() as i16;
    }
}

fn soft_clip(x: f64) -> f64 {
    const KNEE: f64 = 0.8;
    let a = x.abs();
    if a <= KNEE {
        return x;
    }
    // Map (KNEE, ∞) smoothly onto (KNEE, 1): continuous value and slope at the knee.
    let over = (a - KNEE) / (1.0 - KNEE);
    let y = KNEE + (1.0 - KNEE) * over.tanh();
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(amp: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (amp * 32767.0 * (i as f64 * 2.0 * std::f64::consts::PI * 440.0 / 48_000.0).sin())
                    as i16
            })
            .collect()
    }

    #[test]
    fn levels_table() {
        // A full-scale sine has RMS 1/sqrt(2): -3 dBov.
        let cases = [(1.0, 3), (0.1, 23), (0.01, 43), (0.001, 63)];
        for (amp, want) in cases {
            let got = rfc6464_level(&sine(amp, 960));
            assert!((got as i32 - want).abs() <= 1, "amp {amp}: {got} vs {want}");
        }
        assert_eq!(rfc6464_level(&[0; 960]), 127);
        assert_eq!(rfc6464_level(&[]), 127);
    }

    #[test]
    fn vad_holds_over_short_pauses() {
        let mut v = Vad::default();
        assert!(v.is_speech(&sine(0.1, 960)));
        for _ in 0..10 {
            assert!(v.is_speech(&[0; 960]), "hangover");
        }
        assert!(!v.is_speech(&[0; 960]));
    }

    #[test]
    fn mix_never_wraps_and_is_transparent_when_quiet() {
        let a = sine(0.9, 960);
        let b = sine(0.9, 960);
        let mut out = vec![0; 960];
        mix(&[&a, &b], &mut out);
        // Without protection 1.8 full scale would wrap around; soft clipping keeps the sign.
        for (i, o) in out.iter().enumerate() {
            assert!(
                o.signum() == a[i].signum() || a[i].abs() < 100,
                "sample {i}"
            );
        }
        let q = sine(0.1, 960);
        mix(&[&q], &mut out);
        assert!(out.iter().zip(&q).all(|(o, q)| (o - q).abs() <= 1));
    }
}
