//! Opus round trips through real libopus: bitrates, frame sizes, FEC recovery, PLC, DTX.

use lodge_codec::{EncoderSettings, OpusDecoder, OpusEncoder};

/// A voice-like test signal: harmonics of a gliding pitch with a syllable envelope.
fn voice(frames: usize, frame: usize) -> Vec<i16> {
    (0..frames * frame)
        .map(|i| {
            let t = i as f64 / 48_000.0;
            let f0 = 140.0 + 30.0 * (t * 1.3).sin();
            let env = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 3.0 * t).sin().abs();
            let s: f64 = (1..6)
                .map(|h| (2.0 * std::f64::consts::PI * f0 * h as f64 * t).sin() / h as f64)
                .sum();
            (s * env * 6000.0) as i16
        })
        .collect()
}

/// Correlation (Pearson) of the 10 ms loudness envelopes of `want` and `got`: Opus is perceptual,
/// so the waveform differs, but the decoded loudness must follow the input's.
fn envelope_correlation(want: &[i16], got: &[i16]) -> f64 {
    let env = |v: &[i16]| -> Vec<f64> {
        v.chunks(480)
            .map(|c| (c.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
            .collect()
    };
    let (a, b) = (env(want), env(got));
    (0..8)
        .map(|lag| pearson(&a, &b[lag.min(b.len())..]))
        .fold(f64::NEG_INFINITY, f64::max)
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().sum::<f64>() / n as f64;
    let mb = b.iter().sum::<f64>() / n as f64;
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Signal-to-noise ratio (dB) of `got` against `want`, after the best alignment within 10 ms.
#[allow(dead_code)]
fn snr(want: &[i16], got: &[i16]) -> f64 {
    let mut best = f64::NEG_INFINITY;
    for lag in 0..480 {
        let n = want.len().min(got.len().saturating_sub(lag));
        let (mut sig, mut err) = (0.0, 0.0);
        for i in 0..n {
            let w = want[i] as f64;
            let g = got[i + lag] as f64;
            sig += w * w;
            err += (w - g) * (w - g);
        }
        best = best.max(10.0 * (sig / err.max(1.0)).log10());
    }
    best
}

#[test]
fn round_trip_at_several_bitrates_and_frame_sizes() {
    for (bitrate, frame_ms) in [
        (12_000, 20),
        (24_000, 20),
        (64_000, 20),
        (32_000, 10),
        (32_000, 40),
        (32_000, 60),
    ] {
        let s = EncoderSettings {
            bitrate_bps: bitrate,
            frame_ms,
            fec: false,
            ..EncoderSettings::default()
        };
        let mut enc = OpusEncoder::new(s).unwrap();
        let mut dec = OpusDecoder::new(false).unwrap();
        let n = s.frame_samples();
        let input = voice(100, n);
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut buf = vec![0i16; n];
        for f in input.chunks(n) {
            let p = enc.encode(f).unwrap().to_vec();
            bytes += p.len();
            assert_eq!(dec.decode(&p, &mut buf).unwrap(), n);
            out.extend_from_slice(&buf);
        }
        let kbps = bytes as f64 * 8.0 / (100.0 * frame_ms as f64 / 1000.0) / 1000.0;
        assert!(
            kbps < bitrate as f64 / 1000.0 * 1.3,
            "{bitrate} bps produced {kbps:.1} kbps"
        );
        let r = envelope_correlation(&input[4800..], &out[4800..]);
        let e = |v: &[i16]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
        eprintln!(
            "{bitrate} {frame_ms} {r:.3} energy ratio {:.3}",
            e(&out) / e(&input)
        );
        // Measured on this synthetic signal: 0.78–0.93 at 10/20 ms, ~0.6 at 40 ms (SILK-only
        // mode tracks its envelope less closely; to revisit with real speech in the harness).
        let floor = if frame_ms <= 20 { 0.75 } else { 0.5 };
        assert!(
            r > floor,
            "{bitrate} bps / {frame_ms} ms: envelope correlation {r:.3}"
        );
        assert!(
            e(&out) / e(&input) > 0.5,
            "{bitrate} bps / {frame_ms} ms: decoded energy too low"
        );
    }
}

#[test]
fn fec_rebuilds_lost_frames_better_than_plc() {
    let s = EncoderSettings {
        bitrate_bps: 32_000,
        fec: true,
        expected_loss_pct: 20,
        ..EncoderSettings::default()
    };
    let n = s.frame_samples();
    let input = voice(60, n);
    let packets: Vec<Vec<u8>> = {
        let mut enc = OpusEncoder::new(s).unwrap();
        input
            .chunks(n)
            .map(|f| enc.encode(f).unwrap().to_vec())
            .collect()
    };
    let decode_all = |lost: Option<(usize, bool)>| -> Vec<i16> {
        let mut dec = OpusDecoder::new(false).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0i16; n];
        for (i, p) in packets.iter().enumerate() {
            match lost {
                Some((l, true)) if l == i => dec.decode_fec(&packets[i + 1], &mut buf).unwrap(),
                Some((l, false)) if l == i => dec.conceal(&mut buf).unwrap(),
                _ => dec.decode(p, &mut buf).unwrap(),
            };
            out.extend_from_slice(&buf);
        }
        out
    };
    let clean = decode_all(None);
    // Error energy of the lost frame against the clean decode, summed over several losses
    // (the encoder only spends FEC on active speech, so some frames carry none).
    let err = |v: &[i16], l: usize| -> f64 {
        (l * n..(l + 1) * n)
            .map(|i| (v[i] as f64 - clean[i] as f64).powi(2))
            .sum()
    };
    let (mut fec_err, mut plc_err) = (0.0, 0.0);
    for l in [8, 12, 18, 22, 28, 32, 45, 52] {
        fec_err += err(&decode_all(Some((l, true))), l);
        plc_err += err(&decode_all(Some((l, false))), l);
    }
    assert!(
        fec_err < plc_err * 0.7,
        "FEC error {fec_err:.3e} vs PLC {plc_err:.3e}"
    );
}

#[test]
fn dtx_makes_silence_nearly_free_and_plc_fills_gaps() {
    let s = EncoderSettings {
        dtx: true,
        fec: false,
        ..EncoderSettings::default()
    };
    let mut enc = OpusEncoder::new(s).unwrap();
    let n = s.frame_samples();
    let silence = vec![0i16; n];
    let sizes: Vec<usize> = (0..50)
        .map(|_| enc.encode(&silence).unwrap().len())
        .collect();
    // After a short onset, DTX sends 1-byte frames and a refresh frame every 400 ms.
    let tiny = sizes[10..].iter().filter(|&&b| b <= 3).count();
    assert!(tiny >= 36, "DTX frames are tiny: {sizes:?}");
    let mut dec = OpusDecoder::new(false).unwrap();
    let mut buf = vec![0i16; n];
    assert_eq!(
        dec.conceal(&mut buf).unwrap(),
        n,
        "PLC produces a full frame"
    );
}

#[test]
fn bad_settings_and_frames_are_refused() {
    assert!(OpusEncoder::new(EncoderSettings {
        frame_ms: 25,
        ..EncoderSettings::default()
    })
    .is_err());
    assert!(OpusEncoder::new(EncoderSettings {
        bitrate_bps: 1_000,
        ..EncoderSettings::default()
    })
    .is_err());
    let mut enc = OpusEncoder::new(EncoderSettings::default()).unwrap();
    let e = enc.encode(&[0; 100]).unwrap_err().to_string();
    assert!(e.contains("960"), "{e}");
    let stereo = EncoderSettings {
        stereo: true,
        ..EncoderSettings::default()
    };
    assert!(enc.apply(stereo).is_err(), "channel count is fixed");
    let mut s = OpusEncoder::new(stereo).unwrap();
    assert!(!s.encode(&vec![0; 1920]).unwrap().is_empty());
}
