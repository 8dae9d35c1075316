//! Opus over libopus (via audiopus): 48 kHz mono or stereo, 10/20/40/60 ms frames, bitrate,
//! complexity, in-band FEC with the expected loss, DTX; decoding with FEC and PLC.

use audiopus::coder::{Decoder, Encoder};
use audiopus::{Application, Bitrate, Channels, SampleRate};

use crate::error::CodecError;

pub const SAMPLE_RATE: u32 = 48_000;
/// libopus's OPUS_SET_DTX_REQUEST.
const OPUS_SET_DTX_REQUEST: i32 = 4016;
/// Largest Opus packet we produce (RFC 6716 allows 1275 bytes per frame).
pub const MAX_PACKET: usize = 1275 * 3;

/// What the encoder is asked to do; every field is validated.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EncoderSettings {
    pub stereo: bool,
    /// 10, 20, 40 or 60.
    pub frame_ms: u32,
    /// 6,000..=510,000 bits per second.
    pub bitrate_bps: u32,
    /// 0..=10.
    pub complexity: u8,
    pub fec: bool,
    /// 0..=100: how much loss the encoder should protect against with FEC.
    pub expected_loss_pct: u8,
    pub dtx: bool,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        EncoderSettings {
            stereo: false,
            frame_ms: 20,
            bitrate_bps: 32_000,
            complexity: 9,
            fec: true,
            expected_loss_pct: 5,
            dtx: false,
        }
    }
}

impl EncoderSettings {
    pub fn validate(&self) -> Result<(), CodecError> {
        if ![10, 20, 40, 60].contains(&self.frame_ms) {
            return Err(CodecError::Invalid(format!(
                "frame_ms must be 10, 20, 40 or 60, got {}",
                self.frame_ms
            )));
        }
        if !(6_000..=510_000).contains(&self.bitrate_bps) {
            return Err(CodecError::Invalid(format!(
                "bitrate must be 6000..=510000 bps, got {}",
                self.bitrate_bps
            )));
        }
        if self.complexity > 10 || self.expected_loss_pct > 100 {
            return Err(CodecError::Invalid(
                "complexity must be 0..=10 and expected loss 0..=100".into(),
            ));
        }
        Ok(())
    }

    pub fn channels(&self) -> usize {
        if self.stereo {
            2
        } else {
            1
        }
    }

    /// Samples per channel in one frame.
    pub fn frame_samples(&self) -> usize {
        (SAMPLE_RATE * self.frame_ms / 1000) as usize
    }
}

pub struct OpusEncoder {
    enc: Encoder,
    settings: EncoderSettings,
    out: Vec<u8>,
}

impl OpusEncoder {
    pub fn new(settings: EncoderSettings) -> Result<Self, CodecError> {
        settings.validate()?;
        let ch = if settings.stereo {
            Channels::Stereo
        } else {
            Channels::Mono
        };
        let mut enc = Encoder::new(SampleRate::Hz48000, ch, Application::Voip)?;
        // Tell the encoder it is speech: it then stays in SILK/hybrid modes, the only ones that
        // carry in-band FEC (LBRR).
        enc.set_signal(audiopus::Signal::Voice)?;
        let mut e = OpusEncoder {
            enc,
            settings,
            out: vec![0; MAX_PACKET],
        };
        e.apply(settings)?;
        Ok(e)
    }

    pub fn settings(&self) -> &EncoderSettings {
        &self.settings
    }

    /// Change settings between frames (channel count cannot change).
    pub fn apply(&mut self, s: EncoderSettings) -> Result<(), CodecError> {
        s.validate()?;
        if s.stereo != self.settings.stereo {
            return Err(CodecError::Invalid(
                "the channel count of an encoder cannot change".into(),
            ));
        }
        self.enc
            .set_bitrate(Bitrate::BitsPerSecond(s.bitrate_bps as i32))?;
        self.enc.set_complexity(s.complexity)?;
        self.enc.set_inband_fec(s.fec)?;
        self.enc.set_packet_loss_perc(s.expected_loss_pct)?;
        self.enc
            .set_encoder_ctl_request(OPUS_SET_DTX_REQUEST, s.dtx as i32)?;
        self.settings = s;
        Ok(())
    }

    /// Encode one frame of interleaved PCM (`frame_samples() * channels()` samples). Returns
    /// the packet; with DTX, silence yields packets of 1–2 bytes (the caller may skip sending).
    pub fn encode(&mut self, pcm: &[i16]) -> Result<&[u8], CodecError> {
        let want = self.settings.frame_samples() * self.settings.channels();
        if pcm.len() != want {
            return Err(CodecError::Invalid(format!(
                "a {} ms frame needs {want} samples, got {}",
                self.settings.frame_ms,
                pcm.len()
            )));
        }
        let n = self.enc.encode(pcm, &mut self.out)?;
        Ok(&self.out[..n])
    }
}

pub struct OpusDecoder {
    dec: Decoder,
    channels: usize,
}

impl OpusDecoder {
    pub fn new(stereo: bool) -> Result<Self, CodecError> {
        let ch = if stereo {
            Channels::Stereo
        } else {
            Channels::Mono
        };
        Ok(OpusDecoder {
            dec: Decoder::new(SampleRate::Hz48000, ch)?,
            channels: if stereo { 2 } else { 1 },
        })
    }

    /// Decode a packet into `out` (interleaved); returns samples per channel.
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        Ok(self.dec.decode(Some(packet), &mut out[..], false)?)
    }

    /// Rebuild the frame *before* `next_packet` from its in-band FEC. `out` must hold exactly
    /// the missing frame (`frame_samples * channels`).
    pub fn decode_fec(&mut self, next_packet: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        Ok(self.dec.decode(Some(next_packet), &mut out[..], true)?)
    }

    /// Packet loss concealment for a missing frame of `out.len() / channels` samples.
    pub fn conceal(&mut self, out: &mut [i16]) -> Result<usize, CodecError> {
        Ok(self.dec.decode(None::<&[u8]>, &mut out[..], false)?)
    }

    pub fn channels(&self) -> usize {
        self.channels
    }
}
