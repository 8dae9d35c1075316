//! Discord's native voice transport ("UDP mode"), the pure pieces: what a native client
//! (@discordjs/voice, songbird) sends to the media port besides RTP, and the transport
//! encryption of its RTP. Nothing here touches a socket or a clock; the node's demultiplexer
//! and the participant kind that uses them come on top (see docs/design/NATIVE-VOICE.md).
//!
//! - [`discovery`]: the 74-byte IP discovery request and its answer (the client learns its
//!   public address and port from it before Select Protocol).
//! - [`transport_crypto`]: the two AEAD "rtpsize" modes, `aead_aes256_gcm_rtpsize` and
//!   `aead_xchacha20_poly1305_rtpsize`: the RTP header (and the header extension's 4-byte
//!   preamble) in clear as associated data, everything after it sealed, a 16-byte tag and a
//!   4-byte big-endian nonce counter appended.
//! - [`replay_window`]: which nonce counters a session has already accepted, so a captured
//!   packet replayed to the port is dropped even though it authenticates.
//! - [`user_ssrc`]: the SSRC each (guild, user) speaks under.
//! - [`rtcp`]: sender and receiver reports, sealed like RTP: a Lodge extension through which
//!   a client that sends an SR learns its uplink's loss, jitter and round trip.
//! - [`dave_frame`]: whether a voice payload is an end-to-end encrypted DAVE frame, which
//!   only listeners that do DAVE may get.
//!
//! The node's `Kind::Native` participant (`node/native.rs`) puts them together.

pub mod dave_frame;
pub mod discovery;
pub mod replay_window;
pub mod rtcp;
pub mod transport_crypto;
pub mod user_ssrc;

pub use dave_frame::{is_dave_frame, DAVE_MAGIC};
pub use discovery::{discovery_request, discovery_response, DISCOVERY_LEN};
pub use replay_window::ReplayWindow;
pub use transport_crypto::{
    clear_header_len, CryptoMode, Opened, TransportCipher, COUNTER_LEN, OPUS_PT, RTCP_CLEAR,
    TAG_LEN,
};
pub use user_ssrc::user_ssrc;
