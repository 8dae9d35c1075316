//! 16-bit PCM WAV files: read any rate, mono or stereo, into Lodge's 48 kHz mono; write mono.
//! Used by the load generator's speech sample and the client's file source and recorder.

use crate::error::CodecError;

/// The rate everything in Lodge's audio path runs at.
pub const RATE: u32 = 48_000;

/// A parsed RIFF/WAVE file with 16-bit PCM samples: its rate, channels and raw sample bytes.
#[derive(Debug, Clone, Copy)]
pub struct Wav<'a> {
    pub rate: u32,
    pub channels: u16,
    /// Little-endian 16-bit samples, interleaved.
    pub data: &'a [u8],
}

fn bad(why: impl Into<String>) -> CodecError {
    CodecError::Wav(why.into())
}

/// Parse a RIFF/WAVE file with 16-bit PCM samples (mono or stereo, any rate).
pub fn parse(b: &[u8]) -> Result<Wav<'_>, CodecError> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE file"));
    }
    let mut pos = 12;
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= b.len() {
        let id = &b[pos..pos + 4];
        let len = u32::from_le_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]) as usize;
        let body = pos + 8;
        // Streamed WAVs carry a placeholder length: clamp to what the file holds.
        let end = body.saturating_add(len).min(b.len());
        match id {
            b"fmt " if end - body >= 16 => {
                let c = &b[body..end];
                fmt = Some((
                    u16::from_le_bytes([c[0], c[1]]),
                    u16::from_le_bytes([c[2], c[3]]),
                    u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                    u16::from_le_bytes([c[14], c[15]]),
                ));
            }
            b"data" => {
                let Some((format, channels, rate, bits)) = fmt else {
                    return Err(bad("data chunk before fmt chunk"));
                };
                // 1 = PCM; 0xFFFE = WAVE_FORMAT_EXTENSIBLE (PCM sub-format assumed).
                if !(format == 1 || format == 0xFFFE) || bits != 16 {
                    return Err(bad(format!(
                        "only 16-bit PCM WAV is supported (format {format}, {bits} bits)"
                    )));
                }
                if !(1..=2).contains(&channels) || rate == 0 {
                    return Err(bad(format!(
                        "only mono or stereo WAV is supported ({channels} channels, {rate} Hz)"
                    )));
                }
                return Ok(Wav {
                    rate,
                    channels,
                    data: &b[body..end],
                });
            }
            _ => {}
        }
        pos = body.saturating_add(len).saturating_add(len & 1);
    }
    Err(bad("no data chunk found"))
}

/// Parse a 16-bit PCM WAV (any rate, mono or stereo) and convert it to 48 kHz mono.
pub fn to_48k_mono(bytes: &[u8]) -> Result<Vec<i16>, CodecError> {
    let w = parse(bytes)?;
    let mono: Vec<f32> = w
        .data
        .chunks_exact(2 * w.channels as usize)
        .map(|frame| {
            let sum: f32 = frame
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32)
                .sum();
            sum / w.channels as f32 / 32768.0
        })
        .collect();
    let resampled = crate::resample(&mono, w.rate, RATE)?;
    Ok(resampled
        .iter()
        .map(|&x| (x * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect())
}

/// The 44-byte header of a 16-bit mono WAV holding `samples` samples at `rate`.
pub fn header(samples: usize, rate: u32) -> [u8; 44] {
    let data_len = (samples * 2).min(u32::MAX as usize - 36) as u32;
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36 + data_len).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&1u16.to_le_bytes());
    h[24..28].copy_from_slice(&rate.to_le_bytes());
    h[28..32].copy_from_slice(&(rate * 2).to_le_bytes());
    h[32..34].copy_from_slice(&2u16.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// A whole 16-bit mono WAV file.
pub fn wav_bytes(pcm: &[i16], rate: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(44 + pcm.len() * 2);
    v.extend_from_slice(&header(pcm.len(), rate));
    for s in pcm {
        v.extend_from_slice(&s.to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_round_trip_and_rate_conversion() {
        let tone: Vec<i16> = (0..16_000)
            .map(|i| ((i as f32 * 0.1).sin() * 10_000.0) as i16)
            .collect();
        let pcm = to_48k_mono(&wav_bytes(&tone, 16_000)).unwrap();
        assert_eq!(pcm.len(), 48_000, "one second at 48 kHz");
        let peak = pcm.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!((9_000..=11_000).contains(&peak), "level kept: {peak}");
    }

    #[test]
    fn bad_wavs_are_refused_with_a_reason() {
        assert!(to_48k_mono(b"not a wav").is_err());
        let mut w = wav_bytes(&[0; 100], 48_000);
        w[34] = 8; // 8-bit samples
        let e = to_48k_mono(&w).unwrap_err().to_string();
        assert!(e.contains("16-bit"), "{e}");
        // A truncated file with an oversized data length is read as far as it goes.
        let mut w = wav_bytes(&[1000; 480], 48_000);
        w[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(to_48k_mono(&w).unwrap().len(), 480);
        // A chunk length that would run past the end of memory is not followed.
        let mut w = b"RIFF\0\0\0\0WAVEjunk".to_vec();
        w.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&w).is_err());
    }
}
