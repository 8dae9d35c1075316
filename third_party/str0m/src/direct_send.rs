//! Sealing RTP outside the session: what [`Rtc::send_context`](crate::Rtc::send_context) hands
//! a caller that writes one packet into many sessions (an SFU's fan-out) and keeps each
//! session's send state in its own dense table, and what it hands back
//! ([`Rtc::note_sent_rtp`](crate::Rtc::note_sent_rtp)) so the session's statistics and sender
//! reports count those packets.

use std::net::SocketAddr;
use std::time::Instant;

use crate::net::Protocol;
use crate::rtp_::{SeqNo, Ssrc};

pub use crate::rtp_::SrtpSendKey;

/// The longest header [`RtpHeaderTemplate`] holds: 12 fixed bytes, the extension preamble and
/// the audio level and MID elements in the two-byte form, padded.
pub const HEADER_TEMPLATE_MAX: usize = 48;

/// Everything needed to send RTP on one send stream without the session, valid until the
/// next `&mut` call on the [`Rtc`](crate::Rtc) that may change it: input, a timeout, a poll or
/// an SDP change may change the address, the keys or the header (the MID element is dropped
/// once the peer has acknowledged the SSRC). [`Rtc::send_rtp_now`](crate::Rtc::send_rtp_now),
/// [`Rtc::recycle_buffer`](crate::Rtc::recycle_buffer) and
/// [`Rtc::note_sent_rtp`](crate::Rtc::note_sent_rtp) change nothing it holds; nor do an
/// incoming SRTP media packet (RTP, not RTCP) and the `poll_output` drain after it, as long as
/// the outputs of every earlier input were drained (addresses change on STUN, keys on DTLS,
/// the acknowledgement on RTCP, the state on timeouts and closes).
#[derive(Debug, Clone)]
pub struct SendContext {
    /// The transport of the selected candidate pair.
    pub proto: Protocol,
    /// The local address of the selected pair.
    pub source: SocketAddr,
    /// The peer's address of the selected pair.
    pub destination: SocketAddr,
    /// The send stream's SSRC.
    pub ssrc: Ssrc,
    /// The RTP header every packet of this stream starts with.
    pub header: RtpHeaderTemplate,
    /// The SRTP key and salt to seal with.
    pub srtp: SrtpSendKey,
}

/// A serialized RTP header with the payload type and SSRC of one stream and its header
/// extensions (the RFC 6464 audio level, and the MID while the peer needs it); the sequence
/// number, timestamp and marker are zero and the level is a placeholder.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RtpHeaderTemplate {
    bytes: [u8; HEADER_TEMPLATE_MAX],
    len: u8,
    level_at: u8,
}

impl RtpHeaderTemplate {
    pub(crate) fn new(bytes: &[u8], level_at: usize) -> Option<Self> {
        if bytes.len() > HEADER_TEMPLATE_MAX || level_at >= bytes.len() {
            return None;
        }
        let mut b = [0; HEADER_TEMPLATE_MAX];
        b[..bytes.len()].copy_from_slice(bytes);
        Some(RtpHeaderTemplate {
            bytes: b,
            len: bytes.len() as u8,
            level_at: level_at as u8,
        })
    }

    /// The header's length in bytes (a multiple of 4).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Never true: a header has at least its 12 fixed bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the header of one packet into `out[..self.len()]`: `audio_level` in -dBov
    /// (0 loudest, -127 silence) and `voice_activity` as RFC 6464's V bit. These are the bytes
    /// the session would write for an `RtpWrite` with these values and both extension values
    /// set.
    ///
    /// Panics if `out` is shorter than [`RtpHeaderTemplate::len`].
    pub fn write(
        &self,
        out: &mut [u8],
        seq_no: SeqNo,
        rtp_time: u32,
        marker: bool,
        audio_level: i8,
        voice_activity: bool,
    ) {
        let n = self.len();
        out[..n].copy_from_slice(&self.bytes[..n]);
        out[1] = (out[1] & 0x7f) | if marker { 0x80 } else { 0 };
        out[2..4].copy_from_slice(&(*seq_no as u16).to_be_bytes());
        out[4..8].copy_from_slice(&rtp_time.to_be_bytes());
        // As the serializer writes it: the low 7 bits of -level (so -128 writes 0).
        out[self.level_at as usize] =
            (0x7f & audio_level.unsigned_abs()) | if voice_activity { 0x80 } else { 0 };
    }
}

impl std::fmt::Debug for RtpHeaderTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtpHeaderTemplate")
            .field("bytes", &&self.bytes[..self.len()])
            .field("level_at", &self.level_at)
            .finish()
    }
}

/// RTP packets a caller sealed itself with a [`SendContext`] since it last told the session,
/// summed: given to [`Rtc::note_sent_rtp`](crate::Rtc::note_sent_rtp) before any other `&mut`
/// call on the session, so its statistics and sender reports count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentRtp {
    /// Packets sent.
    pub packets: u64,
    /// Their payload bytes (what `StreamTxStats::bytes` counts).
    pub payload_bytes: u64,
    /// Their datagrams' bytes, header and SRTP tag included (the peer's transport bytes).
    pub datagram_bytes: u64,
    /// The last packet's extended sequence number.
    pub last_seq_no: SeqNo,
    /// The last packet's RTP timestamp.
    pub last_rtp_time: u32,
    /// The last packet's wallclock (`RtpWrite::wallclock`).
    pub last_wallclock: Instant,
    /// When the last packet was sent.
    pub last_sent_at: Instant,
}
