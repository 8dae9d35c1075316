//! The speech signal the evaluation sends: synthesised with espeak-ng (Debian's `espeak-ng`)
//! from a fixed text, or read from a WAV file the user passes. Either way it ends up as 48 kHz
//! mono 16-bit PCM, looped to the requested length.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// What the synthesiser reads: ordinary conversational sentences (written for this project),
/// one talk spurt each; pauses between them give the signal the on/off shape of speech.
const SENTENCES: &[&str] = &[
    "Can everyone hear me now? I think the microphone was muted a minute ago.",
    "Yes, you are coming through clearly, maybe a little quiet.",
    "Let us start with the build server, because it was slow again this morning.",
    "The second node in the east region restarted twice overnight.",
    "I looked at the logs, and it ran out of file handles around three o'clock.",
    "Should we raise the limit, or find out what is leaking them first?",
    "Both, I would say. Raise it today and keep looking.",
    "Fine. Next item: the voice channel for the tournament on Saturday.",
    "We expect about four hundred listeners and six people on stage.",
    "That is well within what one node can carry, but let us keep a spare ready.",
    "Agreed. Anything else before we wrap up?",
    "Only that the quarterly report is due on Friday. Thanks, everyone.",
];

/// Gap after each sentence, ms (varied so talk spurts do not line up with anything periodic).
const PAUSES_MS: &[u32] = &[
    600, 900, 450, 1200, 700, 500, 1000, 650, 800, 550, 1100, 750,
];

pub const RATE: u32 = 48_000;

/// 48 kHz mono speech of `seconds`, looped: the user's WAV if given, else synthesised. The
/// description names the source and its own length.
pub fn load(seconds: u64, wav: Option<&Path>, scratch: &Path) -> Result<(Vec<i16>, String)> {
    let (pcm, source) = match wav {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            (
                to_48k_mono(&bytes).with_context(|| format!("{} is not usable", p.display()))?,
                p.display().to_string(),
            )
        }
        None => (
            synthesise(scratch)?,
            "espeak-ng (built-in text)".to_string(),
        ),
    };
    if pcm.len() < RATE as usize {
        bail!("the speech sample is shorter than one second");
    }
    let source = format!("{source}, {:.1} s", pcm.len() as f64 / RATE as f64);
    let want = seconds as usize * RATE as usize;
    let looped: Vec<i16> = pcm.iter().copied().cycle().take(want).collect();
    Ok((looped, source))
}

/// Run espeak-ng once per sentence and join the sentences with pauses.
fn synthesise(scratch: &Path) -> Result<Vec<i16>> {
    std::fs::create_dir_all(scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let mut out = Vec::new();
    for (i, text) in SENTENCES.iter().enumerate() {
        let file = scratch.join(format!("sentence-{i}.wav"));
        let status = Command::new("espeak-ng")
            .args(["-v", "en-us", "-s", "165", "-a", "120", "-w"])
            .arg(&file)
            .arg(text)
            .status()
            .context(
                "cannot run espeak-ng: install it (apt-get install espeak-ng) or pass --speech FILE.wav",
            )?;
        if !status.success() {
            bail!("espeak-ng failed ({status}) on sentence {i}");
        }
        let bytes = std::fs::read(&file)?;
        out.extend(to_48k_mono(&bytes).context("espeak-ng wrote an unexpected WAV")?);
        out.extend(std::iter::repeat_n(
            0i16,
            (PAUSES_MS[i % PAUSES_MS.len()] * RATE / 1000) as usize,
        ));
    }
    Ok(out)
}

/// Parse a 16-bit PCM WAV (any rate, mono or stereo) and convert it to 48 kHz mono.
pub fn to_48k_mono(bytes: &[u8]) -> Result<Vec<i16>> {
    let (rate, channels, data) = parse_wav(bytes)?;
    let mono: Vec<f32> = data
        .chunks_exact(2 * channels as usize)
        .map(|frame| {
            let sum: f32 = frame
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32)
                .sum();
            sum / channels as f32 / 32768.0
        })
        .collect();
    let resampled = lodge_codec::resample(&mono, rate, RATE)?;
    Ok(resampled
        .iter()
        .map(|&x| (x * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect())
}

/// (sample rate, channels, PCM bytes) of a RIFF/WAVE file with 16-bit PCM samples.
fn parse_wav(b: &[u8]) -> Result<(u32, u16, &[u8])> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        bail!("not a RIFF/WAVE file");
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
                    bail!("data chunk before fmt chunk");
                };
                // 1 = PCM; 0xFFFE = WAVE_FORMAT_EXTENSIBLE (PCM sub-format assumed).
                if !(format == 1 || format == 0xFFFE) || bits != 16 {
                    bail!("only 16-bit PCM WAV is supported (format {format}, {bits} bits)");
                }
                if !(1..=2).contains(&channels) || rate == 0 {
                    bail!("only mono or stereo WAV is supported ({channels} channels, {rate} Hz)");
                }
                return Ok((rate, channels, &b[body..end]));
            }
            _ => {}
        }
        pos = body + len + (len & 1);
    }
    bail!("no data chunk found")
}

/// A 16-bit mono WAV file (for the clean and played-out audio the report links to).
pub fn wav_bytes(pcm: &[i16], rate: u32) -> Vec<u8> {
    let data_len = (pcm.len() * 2) as u32;
    let mut v = Vec::with_capacity(44 + pcm.len() * 2);
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data_len).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&rate.to_le_bytes());
    v.extend_from_slice(&(rate * 2).to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data_len.to_le_bytes());
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
    }
}
