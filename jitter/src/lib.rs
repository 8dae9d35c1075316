//! Lodge's receive side for voice: an adaptive playout (jitter) buffer and a network
//! impairment model to evaluate it.
//!
//! Both are sans-IO and deterministic: time is passed in (`now_ms`), randomness is seeded.
//! The buffer is codec-agnostic: it says *what* to play each frame (a packet, an FEC rebuild, a
//! concealment, a stretch, silence); the caller decodes (see the `codec` crate for Opus).
//!
//! ```
//! use lodge_jitter::{BufferConfig, JitterBuffer, Pulled};
//! let mut jb = JitterBuffer::new(BufferConfig::default());
//! let mut played = Vec::new();
//! for tick in 0..20u16 {
//!     let now = tick as f64 * 20.0;
//!     if tick < 10 {
//!         // Packet `tick` arrives 30 ms after it was sent.
//!         jb.insert(now + 30.0, tick, tick as u32 * 960, vec![tick as u8]);
//!     }
//!     if let Pulled::Frame { payload, .. } = jb.pull(now + 35.0) {
//!         played.push(payload[0]);
//!     }
//! }
//! assert_eq!(played, (0..10).collect::<Vec<u8>>());
//! ```

pub mod buffer;
pub mod delay_manager;
pub mod eval;
pub mod impairment;
pub mod quality;
pub mod stats;
pub mod unwrap;

pub use buffer::{BufferConfig, Inserted, JitterBuffer, Pulled};
pub use delay_manager::{DelayConfig, DelayManager, QualityContext};
pub use impairment::{Impairment, Profile};
pub use quality::{mos_estimate, QualityInput};
pub use stats::JitterStats;
