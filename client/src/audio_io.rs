//! Where a call's audio comes from and goes to, without a sound card: a tone, a WAV file or
//! silence in; nothing, WAV files (the mix and each speaker) or memory out. A sound card
//! backend implements the same two traits.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lodge_codec::wav;

use crate::error::ClientError;

/// Fills one 20 ms frame (960 samples, 48 kHz mono) per call.
pub trait Source: Send {
    /// False once the source has ended (the frame is then silence).
    fn read(&mut self, frame: &mut [i16]) -> bool;
}

/// Takes one tick of the mix per call (10 ms in a call, 480 samples), and each speaker's
/// audio for the tick before mixing.
pub trait Sink: Send {
    fn mixed(&mut self, frame: &[i16]);
    /// One speaker's decoded frame: their SSRC, and their user once the voice gateway named it.
    fn speaker(&mut self, _ssrc: u32, _user: Option<u64>, _frame: &[i16]) {}
    /// The call ended: flush files.
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A sine tone.
pub struct Tone {
    pub hz: f32,
    /// Peak amplitude, 0..=32767.
    pub amplitude: f32,
    n: u64,
}

impl Tone {
    pub fn new(hz: f32, amplitude: f32) -> Tone {
        Tone {
            hz,
            amplitude,
            n: 0,
        }
    }
}

impl Source for Tone {
    fn read(&mut self, frame: &mut [i16]) -> bool {
        for s in frame.iter_mut() {
            let t = self.n as f64 / wav::RATE as f64;
            *s =
                ((t * self.hz as f64 * std::f64::consts::TAU).sin() * self.amplitude as f64) as i16;
            self.n += 1;
        }
        true
    }
}

/// Silence forever (a listener).
pub struct Silence;

impl Source for Silence {
    fn read(&mut self, frame: &mut [i16]) -> bool {
        frame.fill(0);
        true
    }
}

/// A WAV file (16-bit PCM, any rate, mono or stereo), converted to 48 kHz mono once.
pub struct WavSource {
    pcm: Vec<i16>,
    pos: usize,
    looped: bool,
}

impl WavSource {
    pub fn open(path: &Path, looped: bool) -> Result<WavSource, ClientError> {
        let bytes = std::fs::read(path)?;
        Ok(WavSource {
            pcm: wav::to_48k_mono(&bytes)?,
            pos: 0,
            looped,
        })
    }
}

impl WavSource {
    /// The file's length in seconds.
    pub fn len_secs(&self) -> f64 {
        self.pcm.len() as f64 / wav::RATE as f64
    }
}

impl Source for WavSource {
    fn read(&mut self, frame: &mut [i16]) -> bool {
        for s in frame.iter_mut() {
            if self.pos >= self.pcm.len() && self.looped && !self.pcm.is_empty() {
                self.pos = 0;
            }
            *s = self.pcm.get(self.pos).copied().unwrap_or(0);
            self.pos += 1;
        }
        self.pos <= self.pcm.len() || self.looped
    }
}

/// Plays nothing.
pub struct NullSink;

impl Sink for NullSink {
    fn mixed(&mut self, _: &[i16]) {}
}

/// Every sink in turn (play and record at once).
pub struct Tee(pub Vec<Box<dyn Sink>>);

impl Sink for Tee {
    fn mixed(&mut self, frame: &[i16]) {
        for s in &mut self.0 {
            s.mixed(frame);
        }
    }
    fn speaker(&mut self, ssrc: u32, user: Option<u64>, frame: &[i16]) {
        for s in &mut self.0 {
            s.speaker(ssrc, user, frame);
        }
    }
    fn finish(&mut self) -> io::Result<()> {
        let mut first = Ok(());
        for s in &mut self.0 {
            if let Err(e) = s.finish() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// What a [`MemorySink`] holds: the mix, and each user's (or unnamed SSRC's) frames.
#[derive(Debug, Default)]
pub struct Recorded {
    pub mixed: Vec<i16>,
    pub by_user: HashMap<u64, Vec<i16>>,
    pub by_ssrc: HashMap<u32, Vec<i16>>,
}

/// Keeps everything in memory, shared with whoever holds the other `Arc` (tests, bots).
#[derive(Clone, Default)]
pub struct MemorySink(pub Arc<Mutex<Recorded>>);

impl Sink for MemorySink {
    fn mixed(&mut self, frame: &[i16]) {
        self.0
            .lock()
            .expect("recording lock")
            .mixed
            .extend_from_slice(frame);
    }
    fn speaker(&mut self, ssrc: u32, user: Option<u64>, frame: &[i16]) {
        let mut r = self.0.lock().expect("recording lock");
        match user {
            Some(u) => r.by_user.entry(u).or_default().extend_from_slice(frame),
            None => r.by_ssrc.entry(ssrc).or_default().extend_from_slice(frame),
        }
    }
}

/// A WAV file written as it goes (its lengths patched at the end).
struct WavWriter {
    file: io::BufWriter<File>,
    samples: usize,
}

impl WavWriter {
    fn create(path: &Path) -> io::Result<WavWriter> {
        let mut file = io::BufWriter::new(File::create(path)?);
        file.write_all(&wav::header(0, wav::RATE))?;
        Ok(WavWriter { file, samples: 0 })
    }
    fn write(&mut self, frame: &[i16]) -> io::Result<()> {
        for s in frame {
            self.file.write_all(&s.to_le_bytes())?;
        }
        self.samples += frame.len();
        Ok(())
    }
    fn finish(&mut self) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&wav::header(self.samples, wav::RATE))?;
        self.file.flush()
    }
}

/// Records the mix to `mix.wav` and each speaker to `user-<id>.wav` (or `ssrc-<n>.wav` before
/// the voice gateway names them) in a directory.
pub struct WavRecorder {
    dir: PathBuf,
    mix: WavWriter,
    speakers: HashMap<String, WavWriter>,
    error: Option<io::Error>,
}

impl WavRecorder {
    pub fn create(dir: &Path) -> io::Result<WavRecorder> {
        std::fs::create_dir_all(dir)?;
        Ok(WavRecorder {
            dir: dir.to_path_buf(),
            mix: WavWriter::create(&dir.join("mix.wav"))?,
            speakers: HashMap::new(),
            error: None,
        })
    }
}

impl Sink for WavRecorder {
    fn mixed(&mut self, frame: &[i16]) {
        if let Err(e) = self.mix.write(frame) {
            self.error.get_or_insert(e);
        }
    }
    fn speaker(&mut self, ssrc: u32, user: Option<u64>, frame: &[i16]) {
        let name = match user {
            Some(u) => format!("user-{u}.wav"),
            None => format!("ssrc-{ssrc}.wav"),
        };
        let w = match self.speakers.entry(name) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                match WavWriter::create(&self.dir.join(e.key())) {
                    Ok(w) => e.insert(w),
                    Err(err) => {
                        self.error.get_or_insert(err);
                        return;
                    }
                }
            }
        };
        if let Err(e) = w.write(frame) {
            self.error.get_or_insert(e);
        }
    }
    fn finish(&mut self) -> io::Result<()> {
        self.mix.finish()?;
        for w in self.speakers.values_mut() {
            w.finish()?;
        }
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_reads_back_as_the_frames_written() {
        let dir = std::env::temp_dir().join(format!("lodge-client-rec-{}", std::process::id()));
        let mut r = WavRecorder::create(&dir).unwrap();
        let mut tone = Tone::new(440.0, 8_000.0);
        let mut f = [0i16; 960];
        for _ in 0..5 {
            tone.read(&mut f);
            r.mixed(&f);
            r.speaker(9, Some(42), &f);
        }
        r.finish().unwrap();
        let mix = wav::to_48k_mono(&std::fs::read(dir.join("mix.wav")).unwrap()).unwrap();
        assert_eq!(mix.len(), 5 * 960);
        assert_eq!(&mix[4 * 960..], &f[..]);
        let mut src = WavSource::open(&dir.join("user-42.wav"), false).unwrap();
        let mut g = [0i16; 960];
        for _ in 0..5 {
            assert!(src.read(&mut g));
        }
        assert_eq!(g, f);
        assert!(!src.read(&mut g), "the file has ended");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
