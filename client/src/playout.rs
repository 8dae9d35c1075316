//! One remote speaker's playout: Lodge's adaptive jitter buffer and an Opus decoder, pulled
//! once per 20 ms frame (packet, in-band FEC, PLC or silence, as the buffer decides).

use lodge_codec::OpusDecoder;
use lodge_jitter::{BufferConfig, JitterBuffer, JitterStats, Pulled};

use crate::error::ClientError;

/// Samples in one 20 ms mono frame at 48 kHz.
pub const FRAME: usize = 960;

pub struct SpeakerPlayout {
    jb: JitterBuffer,
    dec: OpusDecoder,
    /// When the last packet arrived (ms on the engine's clock).
    pub last_packet_ms: f64,
    /// Frames that did not decode (a corrupt packet): played as silence.
    pub decode_errors: u64,
}

impl SpeakerPlayout {
    pub fn new(cfg: BufferConfig, now_ms: f64) -> Result<SpeakerPlayout, ClientError> {
        Ok(SpeakerPlayout {
            jb: JitterBuffer::new(cfg),
            dec: OpusDecoder::new(false)?,
            last_packet_ms: now_ms,
            decode_errors: 0,
        })
    }

    pub fn insert(&mut self, now_ms: f64, seq: u16, rtp_ts: u32, opus: &[u8]) {
        self.last_packet_ms = now_ms;
        self.jb.insert(now_ms, seq, rtp_ts, opus.to_vec());
    }

    /// Fill `out` (one frame) with what plays now; false while the buffer is still filling
    /// (then `out` is silence).
    pub fn pull(&mut self, now_ms: f64, out: &mut [i16; FRAME]) -> bool {
        let r = match self.jb.pull(now_ms) {
            Pulled::Waiting => {
                out.fill(0);
                return false;
            }
            Pulled::Frame { payload, .. } => self.dec.decode(&payload, out),
            Pulled::Fec { next_payload, .. } => self.dec.decode_fec(&next_payload, out),
            Pulled::Conceal { .. } | Pulled::Stretch => self.dec.conceal(out),
            Pulled::Silence => {
                out.fill(0);
                Ok(FRAME)
            }
        };
        if !matches!(r, Ok(FRAME)) {
            self.decode_errors += 1;
            out.fill(0);
        }
        true
    }

    pub fn stats(&self) -> &JitterStats {
        self.jb.stats()
    }

    pub fn target_delay_ms(&self) -> f64 {
        self.jb.target_delay_ms()
    }
}
