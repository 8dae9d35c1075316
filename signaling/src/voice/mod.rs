//! Voice: op 4 handling, the voice registry and the voice gateway (v8, WebRTC mode).

pub mod client_op;
pub mod gateway;
pub mod opcode;
pub mod outbox;
pub mod registry;
pub mod service;

pub use opcode::{client_disconnect, payload, Opcode};
pub use registry::{VoiceOut, VoiceRegistry, VoiceState};
