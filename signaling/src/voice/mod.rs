//! Voice: the control plane (`control.rs`, pure; `executor.rs`, its one door), the shared voice
//! state (`state.rs`), room placement, the connections this node hosts (`conns.rs`) and the
//! voice gateway (v4–v8: WebRTC and native UDP mode, DAVE through `e2ee.rs`).

pub mod client_op;
pub mod conns;
pub mod control;
pub mod dave;
pub mod e2ee;
pub mod executor;
pub mod gateway;
pub mod opcode;
pub mod outbox;
pub mod placement;
pub mod resume;
pub mod service;
pub mod state;
pub mod wire;

pub use conns::{VoiceConns, VoiceOut};
pub use opcode::{client_disconnect, payload, Opcode};
pub use state::VoiceState;
