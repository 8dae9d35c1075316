//! Lodge's codec side: Opus encode/decode over libopus (FEC, DTX, PLC), an adaptive
//! bitrate/FEC controller driven by receiver feedback, small audio utilities and WAV files.
//!
//! ```
//! use lodge_codec::{EncoderSettings, OpusDecoder, OpusEncoder};
//! let s = EncoderSettings::default();
//! let mut enc = OpusEncoder::new(s).unwrap();
//! let mut dec = OpusDecoder::new(false).unwrap();
//! let pcm: Vec<i16> = (0..s.frame_samples()).map(|i| ((i as f32 * 0.05).sin() * 8000.0) as i16).collect();
//! let packet = enc.encode(&pcm).unwrap().to_vec();
//! let mut out = vec![0i16; s.frame_samples()];
//! assert_eq!(dec.decode(&packet, &mut out).unwrap(), 960);
//! ```

pub mod audio;
pub mod controller;
pub mod error;
pub mod opus;
pub mod resample;
pub mod wav;

pub use controller::{BitrateController, ControllerConfig, Decision};
pub use error::CodecError;
pub use opus::{EncoderSettings, OpusDecoder, OpusEncoder};
pub use resample::resample;
