//! The speech signal the evaluation sends: synthesised with espeak-ng (Debian's `espeak-ng`)
//! from a fixed text, or read from a WAV file the user passes. Either way it ends up as 48 kHz
//! mono 16-bit PCM, looped to the requested length.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
pub use lodge_codec::wav::{to_48k_mono, wav_bytes};

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
