//! `lodge-client`: a native voice client for Lodge (and Discord-shaped servers) that a game,
//! a bot or a support tool links.
//!
//! It logs in with a token, joins a voice channel through the gateway and the voice gateway,
//! and carries audio over Discord's native UDP transport (IP discovery, then RTP sealed with
//! `aead_aes256_gcm_rtpsize` or `aead_xchacha20_poly1305_rtpsize`). Each remote speaker is
//! played out through Lodge's adaptive jitter buffer (`lodge-jitter`) and Opus decoder with
//! FEC and PLC (`lodge-codec`), then mixed at per-user volumes. Mute, deafen, push-to-talk and
//! voice activity decide what is sent. Calls are end-to-end encrypted with DAVE (MLS, Discord's
//! protocol) whenever everyone in them speaks it.
//!
//! Layers, as in the rest of Lodge:
//! - [`engine::VoiceEngine`] — the media, sans-IO: capture frame → datagram, datagram →
//!   playout, playout → mixed frame; time passed in.
//! - [`signal`] — the two WebSocket protocols.
//! - [`dave`] — DAVE membership, sans-IO: the MLS group from the voice gateway's ops 21–31, and
//!   each frame's end-to-end encryption.
//! - [`call::Call`] — the tokio shell that owns the socket and the 10 ms tick.
//! - [`audio_io`] — sources (tone, WAV, silence) and sinks (null, memory, WAV per speaker).
//! - [`ffi`] — the C ABI (`include/lodge_client.h`).
//!
//! ```no_run
//! # async fn f() -> Result<(), lodge_client::ClientError> {
//! use lodge_client::{audio_io, Call, JoinOptions};
//! let opts = JoinOptions::new("http://127.0.0.1:8080", "TOKEN", "GUILD_ID", "CHANNEL_ID");
//! let call = Call::join(opts, Box::new(audio_io::Tone::new(440.0, 8000.0)), Box::new(audio_io::NullSink)).await?;
//! tokio::time::sleep(std::time::Duration::from_secs(5)).await;
//! println!("{:?}", call.stats());
//! call.leave().await?;
//! # Ok(()) }
//! ```

pub mod audio_io;
pub mod call;
pub mod dave;
pub mod discovery;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod playout;
pub mod signal;
#[cfg(feature = "sound-card")]
pub mod sound_card;
pub mod stretch;
pub mod tls;

pub use call::{Call, JoinOptions};
pub use engine::{CallStats, Controls, EngineConfig, RemoteInbound, SpeakerStats, VoiceEngine};
pub use error::ClientError;
pub use lodge_sfu::native::CryptoMode;
