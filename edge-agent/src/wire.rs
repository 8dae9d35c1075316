//! What travels on a trunk: media in QUIC datagrams with a 10-byte header, control messages as
//! length-prefixed JSON on one bidirectional QUIC stream.
//!
//! Media datagram (big-endian):
//!
//! ```text
//!  0      1      2      3      4      5      6      7      8      9      10 ...
//! +------+------+------+------+------+------+------+------+------+------+---------+
//! | kind |   stream    |  trunk seq  |        RTP timestamp      | lvl  | Opus    |
//! +------+------+------+------+------+------+------+------+------+------+---------+
//! ```
//!
//! `kind` is 1 for a first transmission and 2 for a repair (retransmission after a NACK);
//! `stream` is the sender's number for one speaker, announced by `StreamOpen` on the control
//! stream before its first datagram; `trunk seq` counts that stream's datagrams (16 bits,
//! wrapping); `lvl` is the RFC 6464 level (0 loudest … 127 silent) with the RTP marker bit in
//! its top bit. Everything an RTP header would repeat per packet (SSRC, payload type, version)
//! is known from the stream, so a forwarded packet costs 10 bytes of Lodge header on top of
//! QUIC's own.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::EdgeError;

/// Bytes of Lodge header in front of each Opus payload.
pub const HEADER_LEN: usize = 10;
/// Largest Opus payload a trunk carries (one 120 ms frame at 510 kbps is ~7.6 kB; real voice
/// frames are < 400 bytes). Larger datagrams are refused.
pub const MAX_PAYLOAD: usize = 1200;
/// Largest control message accepted.
pub const MAX_CONTROL_BYTES: usize = 64 * 1024;
/// The trunk protocol version a hello carries.
pub const VERSION: u32 = 1;

const KIND_MEDIA: u8 = 1;
const KIND_REPAIR: u8 = 2;

/// One media datagram, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub stream: u16,
    pub seq: u16,
    pub rtp_ts: u32,
    /// RFC 6464 level: 0 loudest, 127 silent.
    pub level: u8,
    pub marker: bool,
    /// A retransmission answering a NACK.
    pub repair: bool,
    pub payload: Bytes,
}

impl Media {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_LEN + self.payload.len());
        b.put_u8(if self.repair { KIND_REPAIR } else { KIND_MEDIA });
        b.put_u16(self.stream);
        b.put_u16(self.seq);
        b.put_u32(self.rtp_ts);
        b.put_u8((self.level & 0x7f) | if self.marker { 0x80 } else { 0 });
        b.put_slice(&self.payload);
        b.freeze()
    }

    /// Parse a datagram; never panics on any input.
    pub fn decode(d: Bytes) -> Result<Media, EdgeError> {
        if d.len() < HEADER_LEN {
            return Err(EdgeError::ShortDatagram(d.len()));
        }
        if d.len() - HEADER_LEN > MAX_PAYLOAD {
            return Err(EdgeError::OversizedDatagram(d.len() - HEADER_LEN));
        }
        let repair = match d[0] {
            KIND_MEDIA => false,
            KIND_REPAIR => true,
            k => return Err(EdgeError::UnknownDatagramKind(k)),
        };
        Ok(Media {
            stream: u16::from_be_bytes([d[1], d[2]]),
            seq: u16::from_be_bytes([d[3], d[4]]),
            rtp_ts: u32::from_be_bytes([d[5], d[6], d[7], d[8]]),
            level: d[9] & 0x7f,
            marker: d[9] & 0x80 != 0,
            repair,
            payload: d.slice(HEADER_LEN..),
        })
    }

    /// The same datagram marked as a repair.
    pub fn as_repair(datagram: &Bytes) -> Bytes {
        let mut b = BytesMut::from(&datagram[..]);
        if !b.is_empty() {
            b[0] = KIND_REPAIR;
        }
        b.freeze()
    }
}

/// Messages on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Control {
    /// The edge's first message: who it is, the cluster token, and where its callers' voice
    /// gateway is (`host:port`, what VOICE_SERVER_UPDATE's `endpoint` will say).
    Hello {
        version: u32,
        token: String,
        node: String,
        region: String,
        voice_endpoint: String,
    },
    /// The origin accepted the hello.
    Welcome { node: String },
    /// The origin refused the trunk (the connection closes after this).
    Refused { reason: String },
    /// From now on datagrams of `stream` carry `user`'s voice in `room`; `ssrc` is the SSRC
    /// native (UDP mode) listeners hear that user under (its `user_ssrc`, which op 5 names),
    /// absent from senders that predate native voice.
    StreamOpen {
        stream: u16,
        room: u64,
        user: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ssrc: Option<u32>,
    },
    /// `stream` ends; its number may be reused after this.
    StreamClose { stream: u16 },
    /// The receiver misses these trunk sequence numbers of `stream`: send them again.
    Nack { stream: u16, seqs: Vec<u16> },
    /// Edge → origin: this edge has (or no longer has) callers in `room`, so it wants (or no
    /// longer wants) the room's speakers.
    Interest { room: u64, on: bool },
    /// Edge → origin, every few seconds: how busy the edge is (for placement).
    Load { participants: u32 },
    /// Origin → edge: a caller was placed on this edge; accept `token` for them.
    VoicePlace(VoiceGrant),
    /// Origin → edge: the caller's voice state changed (mute, deaf, SPEAK).
    VoiceUpdate(VoiceGrant),
    /// Origin → edge: the caller left the channel (or was disconnected or moved away).
    VoiceRemove { guild: u64, user: u64 },
    /// Edge → origin: the caller's voice connection on the edge ended (tab closed, left).
    VoiceGone { guild: u64, user: u64 },
    /// Edge → origin: the call-quality summary of a caller who left the edge (JSON), so the
    /// origin's `/quality/calls` covers every node.
    CallSummary { json: String },
    /// Node → edge (a cluster of nodes): every media node that accepts trunks. The edge keeps
    /// a trunk to each (it trusts these fingerprints because they came over a pinned trunk), so
    /// any room's home can place callers on it. Sent after the welcome and whenever the list
    /// changes.
    Peers { nodes: Vec<PeerNode> },
}

/// A node that accepts edge trunks, as a `Peers` message lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// The node's name in the cluster (what its welcome says).
    pub node: String,
    /// Its trunk address, `host:port`.
    pub addr: String,
    /// Its trunk certificate fingerprint (`sha256:…`).
    pub fingerprint: String,
}

/// A caller's voice state as the origin decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoiceGrant {
    pub guild: u64,
    pub channel: u64,
    pub user: u64,
    pub session_id: String,
    /// The single-use voice token (empty in updates).
    pub token: String,
    pub self_mute: bool,
    pub self_deaf: bool,
    pub mute: bool,
    pub deaf: bool,
    pub can_speak: bool,
    /// The caller's placement generation (the voice connection of an older one is not this
    /// caller's any more).
    #[serde(default)]
    pub generation: u64,
}

impl Control {
    /// Length-prefixed JSON.
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("control messages always serialize");
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// The length a frame header announces, checked against the limit.
    pub fn frame_len(header: [u8; 4]) -> Result<usize, EdgeError> {
        let n = u32::from_be_bytes(header) as usize;
        if n > MAX_CONTROL_BYTES {
            return Err(EdgeError::ControlTooLarge(n));
        }
        Ok(n)
    }

    pub fn decode(body: &[u8]) -> Result<Control, EdgeError> {
        serde_json::from_slice(body).map_err(|e| EdgeError::BadControl(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_round_trips() {
        let m = Media {
            stream: 0xBEEF,
            seq: 65535,
            rtp_ts: 0xDEAD_BEEF,
            level: 33,
            marker: true,
            repair: false,
            payload: Bytes::from_static(b"opus!"),
        };
        let d = m.encode();
        assert_eq!(d.len(), HEADER_LEN + 5);
        assert_eq!(Media::decode(d.clone()).unwrap(), m);
        let r = Media::decode(Media::as_repair(&d)).unwrap();
        assert!(r.repair);
        assert_eq!(r.payload, m.payload);
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        assert!(matches!(
            Media::decode(Bytes::from_static(b"abc")),
            Err(EdgeError::ShortDatagram(3))
        ));
        assert!(matches!(
            Media::decode(Bytes::from_static(&[9u8; 20])),
            Err(EdgeError::UnknownDatagramKind(9))
        ));
        let mut big = vec![1u8; HEADER_LEN + MAX_PAYLOAD + 1];
        big[0] = 1;
        assert!(matches!(
            Media::decode(Bytes::from(big)),
            Err(EdgeError::OversizedDatagram(_))
        ));
        // Every short prefix of a valid datagram and a few random byte strings.
        let d = Media {
            stream: 1,
            seq: 2,
            rtp_ts: 3,
            level: 4,
            marker: false,
            repair: false,
            payload: Bytes::from_static(b"x"),
        }
        .encode();
        for n in 0..d.len() {
            let _ = Media::decode(d.slice(..n));
        }
        let mut x = 0x1234_5678u32;
        for len in 0..64 {
            let v: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = Media::decode(Bytes::from(v));
        }
    }

    #[test]
    fn control_frames_round_trip_and_are_bounded() {
        let c = Control::Nack {
            stream: 3,
            seqs: vec![1, 65535],
        };
        let f = c.encode();
        let n = Control::frame_len([f[0], f[1], f[2], f[3]]).unwrap();
        assert_eq!(n, f.len() - 4);
        assert_eq!(Control::decode(&f[4..]).unwrap(), c);
        assert!(matches!(
            Control::frame_len((MAX_CONTROL_BYTES as u32 + 1).to_be_bytes()),
            Err(EdgeError::ControlTooLarge(_))
        ));
        assert!(matches!(
            Control::decode(b"{\"t\":\"launch_missiles\"}"),
            Err(EdgeError::BadControl(_))
        ));
    }

    #[test]
    fn stream_open_carries_the_native_ssrc_and_reads_senders_without_it() {
        let c = Control::StreamOpen {
            stream: 4,
            room: 9,
            user: 7,
            ssrc: Some(0x1234_5679),
        };
        assert_eq!(Control::decode(&c.encode()[4..]).unwrap(), c);
        assert_eq!(
            Control::decode(br#"{"t":"stream_open","stream":4,"room":9,"user":7}"#).unwrap(),
            Control::StreamOpen {
                stream: 4,
                room: 9,
                user: 7,
                ssrc: None
            }
        );
    }
}
