//! Sound cards through cpal (feature `sound-card`): the microphone as a [`Source`], the speakers
//! as a [`Sink`]. Each device runs at 48 kHz (the rate of everything else here: no resampling
//! in the audio callback); the mono signal goes to every output channel, and the first input
//! channel is the microphone. Between the device's callback thread and the call's 10 ms tick
//! sits a bounded queue (200 ms): a late tick plays silence, an early one waits in the queue.
//!
//! A cpal stream may not move between threads on every platform, so each device's stream lives
//! on a thread of its own until the source or sink is dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, Sample, SampleFormat, SizedSample};

use crate::audio_io::{Sink, Source};
use crate::error::ClientError;

const RATE: u32 = 48_000;
/// At most 200 ms waits between the call and the device.
const MAX_QUEUED: usize = 9_600;

fn audio(why: impl Into<String>) -> ClientError {
    ClientError::Audio(why.into())
}

/// What a device's queue has seen: samples moved, and samples missing (underruns: silence
/// played or sent) or thrown away (overflow: the oldest dropped).
#[derive(Debug, Default)]
pub struct QueueStats {
    pub samples: AtomicU64,
    pub underrun: AtomicU64,
    pub overflow: AtomicU64,
}

struct Queue {
    q: Mutex<VecDeque<i16>>,
    stats: QueueStats,
}

impl Queue {
    fn new() -> Arc<Queue> {
        Arc::new(Queue {
            q: Mutex::new(VecDeque::with_capacity(MAX_QUEUED)),
            stats: QueueStats::default(),
        })
    }

    fn push(&self, samples: impl Iterator<Item = i16>) {
        let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
        for s in samples {
            if q.len() == MAX_QUEUED {
                q.pop_front();
                self.stats.overflow.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(s);
            self.stats.samples.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn pop(&self) -> Option<i16> {
        self.q.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }

    fn len(&self) -> usize {
        self.q.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The names of the input and of the output devices.
pub fn devices() -> Result<(Vec<String>, Vec<String>), ClientError> {
    let host = cpal::default_host();
    let names = |d: Result<Vec<cpal::Device>, cpal::DevicesError>| -> Vec<String> {
        d.map(|v| v.iter().filter_map(|d| d.name().ok()).collect())
            .unwrap_or_default()
    };
    let input = names(host.input_devices().map(|d| d.collect()));
    let output = names(host.output_devices().map(|d| d.collect()));
    Ok((input, output))
}

fn find(name: Option<&str>, output: bool) -> Result<cpal::Device, ClientError> {
    let host = cpal::default_host();
    let which = if output { "output" } else { "input" };
    match name {
        None => if output {
            host.default_output_device()
        } else {
            host.default_input_device()
        }
        .ok_or_else(|| {
            audio(format!(
                "no default {which} device (list them with --list-devices)"
            ))
        }),
        Some(n) => {
            let mut all = if output {
                host.output_devices()
            } else {
                host.input_devices()
            }
            .map_err(|e| audio(format!("listing {which} devices: {e}")))?;
            all.find(|d| d.name().is_ok_and(|x| x == n)).ok_or_else(|| {
                audio(format!(
                    "no {which} device named {n:?} (list them with --list-devices)"
                ))
            })
        }
    }
}

/// A 48 kHz configuration of the device, f32 or i16 samples.
fn config(dev: &cpal::Device, output: bool) -> Result<cpal::SupportedStreamConfig, ClientError> {
    let name = dev.name().unwrap_or_default();
    let ranges: Vec<_> = if output {
        dev.supported_output_configs().map(|c| c.collect())
    } else {
        dev.supported_input_configs().map(|c| c.collect())
    }
    .map_err(|e| audio(format!("{name}: {e}")))?;
    let ok = |f: SampleFormat| {
        ranges.iter().find(|r| {
            r.sample_format() == f && r.min_sample_rate().0 <= RATE && RATE <= r.max_sample_rate().0
        })
    };
    ok(SampleFormat::F32)
        .or_else(|| ok(SampleFormat::I16))
        .map(|r| r.with_sample_rate(cpal::SampleRate(RATE)))
        .ok_or_else(|| audio(format!("{name} has no 48 kHz mode with f32 or i16 samples")))
}

/// A device stream on its own thread, stopped when dropped.
struct Running {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    name: Option<&str>,
    output: bool,
    queue: Arc<Queue>,
) -> Result<(Running, String), ClientError> {
    let dev = find(name, output)?;
    let dev_name = dev.name().unwrap_or_else(|_| "(unnamed)".into());
    let cfg = config(&dev, output)?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(
            if output {
                "lodge-speakers"
            } else {
                "lodge-mic"
            }
            .into(),
        )
        .spawn(move || {
            let stream = match cfg.sample_format() {
                SampleFormat::F32 => build::<f32>(&dev, &cfg.config(), output, queue),
                _ => build::<i16>(&dev, &cfg.config(), output, queue),
            };
            let stream = match stream.and_then(|s| {
                s.play()
                    .map_err(|e| audio(format!("starting the stream: {e}")))?;
                Ok(s)
            }) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            // Until the owner drops its sender.
            let _ = stop_rx.recv();
            drop(stream);
        })
        .map_err(|e| audio(format!("starting the audio thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((
            Running {
                stop: Some(stop_tx),
                thread: Some(thread),
            },
            dev_name,
        )),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(audio(format!("{dev_name}: {e}")))
        }
        Err(_) => Err(audio(format!("{dev_name}: the audio thread ended"))),
    }
}

fn build<T>(
    dev: &cpal::Device,
    cfg: &cpal::StreamConfig,
    output: bool,
    queue: Arc<Queue>,
) -> Result<cpal::Stream, ClientError>
where
    T: SizedSample + FromSample<i16>,
    i16: FromSample<T>,
{
    let channels = usize::from(cfg.channels.max(1));
    let err = |e: cpal::StreamError| tracing::warn!("audio device: {e}");
    let s = if output {
        dev.build_output_stream(
            cfg,
            move |data: &mut [T], _: &cpal::OutputCallbackInfo| {
                for frame in data.chunks_mut(channels) {
                    let v = queue.pop().unwrap_or_else(|| {
                        queue.stats.underrun.fetch_add(1, Ordering::Relaxed);
                        0
                    });
                    for s in frame {
                        *s = T::from_sample(v);
                    }
                }
            },
            err,
            None,
        )
    } else {
        dev.build_input_stream(
            cfg,
            move |data: &[T], _: &cpal::InputCallbackInfo| {
                queue.push(data.chunks(channels).map(|f| i16::from_sample(f[0])));
            },
            err,
            None,
        )
    };
    s.map_err(|e| audio(format!("opening the stream: {e}")))
}

/// The speakers: the call's mix, played on an output device.
pub struct SpeakerSink {
    queue: Arc<Queue>,
    _run: Running,
    pub device: String,
}

impl SpeakerSink {
    /// The default output device, or the one named (see [`devices`]).
    pub fn open(name: Option<&str>) -> Result<SpeakerSink, ClientError> {
        let queue = Queue::new();
        let (run, device) = run(name, true, queue.clone())?;
        Ok(SpeakerSink {
            queue,
            _run: run,
            device,
        })
    }

    pub fn stats(&self) -> &QueueStats {
        &self.queue.stats
    }

    /// Samples waiting for the device.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

impl Sink for SpeakerSink {
    fn mixed(&mut self, frame: &[i16]) {
        self.queue.push(frame.iter().copied());
    }
}

/// The microphone: an input device's first channel.
pub struct MicSource {
    queue: Arc<Queue>,
    _run: Running,
    pub device: String,
}

impl MicSource {
    /// The default input device, or the one named (see [`devices`]).
    pub fn open(name: Option<&str>) -> Result<MicSource, ClientError> {
        let queue = Queue::new();
        let (run, device) = run(name, false, queue.clone())?;
        Ok(MicSource {
            queue,
            _run: run,
            device,
        })
    }

    pub fn stats(&self) -> &QueueStats {
        &self.queue.stats
    }
}

impl Source for MicSource {
    fn read(&mut self, frame: &mut [i16]) -> bool {
        for s in frame.iter_mut() {
            *s = self.queue.pop().unwrap_or_else(|| {
                self.queue.stats.underrun.fetch_add(1, Ordering::Relaxed);
                0
            });
        }
        true
    }
}
