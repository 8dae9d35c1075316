//! Voice: op 4 handling, the voice registry and the voice gateway (v8, WebRTC mode).

pub mod client_op;
pub mod gateway;
pub mod outbox;
pub mod registry;
pub mod service;

pub use registry::{VoiceOut, VoiceRegistry, VoiceState};
