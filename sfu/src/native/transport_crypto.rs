//! The transport encryption of native voice RTP: Discord's two "rtpsize" AEAD modes.
//!
//! A packet is `clear header | sealed | tag (16) | counter (4)`:
//!
//! - the clear header is the 12-byte RTP header, its CSRCs, and, when the X bit is set, only
//!   the 4-byte preamble of the header extension (profile and length); it is the AEAD's
//!   associated data;
//! - everything after it is sealed: the extension's body (if any), then the Opus payload;
//! - the nonce is the 32-bit counter, big-endian, in the *first* four bytes of an otherwise
//!   zero nonce (12 bytes for AES-256-GCM, 24 for XChaCha20-Poly1305), and the same four
//!   bytes follow the tag.
//!
//! The key is the 32 bytes the voice gateway hands out in Session Description (op 4). Opening
//! and sealing work in place on the caller's buffer: nothing here allocates per packet.

use std::ops::Range;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use chacha20poly1305::XChaCha20Poly1305;

use crate::drop_reason::DropReason;

/// Bytes of the authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes of the nonce counter after the tag.
pub const COUNTER_LEN: usize = 4;
/// The smallest RTP header.
const RTP_HEADER: usize = 12;
/// Bytes of an RTCP packet left in clear when sealed: its 4-byte header and the sender's SSRC.
pub const RTCP_CLEAR: usize = 8;
/// The payload type of Opus on Discord's voice (both client libraries send and expect it).
pub const OPUS_PT: u8 = 120;

/// An encryption mode a native client may select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CryptoMode {
    /// `aead_aes256_gcm_rtpsize`.
    Aes256GcmRtpsize,
    /// `aead_xchacha20_poly1305_rtpsize`.
    XChaCha20Poly1305Rtpsize,
}

impl CryptoMode {
    /// Every mode Lodge offers, in the order Ready lists them.
    pub const ALL: [CryptoMode; 2] = [
        CryptoMode::Aes256GcmRtpsize,
        CryptoMode::XChaCha20Poly1305Rtpsize,
    ];

    /// The mode's name on the voice gateway.
    pub fn name(self) -> &'static str {
        match self {
            CryptoMode::Aes256GcmRtpsize => "aead_aes256_gcm_rtpsize",
            CryptoMode::XChaCha20Poly1305Rtpsize => "aead_xchacha20_poly1305_rtpsize",
        }
    }

    /// The mode a Select Protocol names, if Lodge speaks it.
    pub fn from_name(name: &str) -> Option<CryptoMode> {
        CryptoMode::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The length of a packet's clear header, or `None` if it is not RTP version 2 or ends
/// before its header does.
pub fn clear_header_len(p: &[u8]) -> Option<usize> {
    if p.len() < RTP_HEADER || p[0] >> 6 != 2 {
        return None;
    }
    let csrcs = usize::from(p[0] & 0x0f);
    let preamble = if p[0] & 0x10 != 0 { 4 } else { 0 };
    let n = RTP_HEADER + 4 * csrcs + preamble;
    (p.len() >= n).then_some(n)
}

/// Where things are in a packet [`TransportCipher::open`] decrypted in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The nonce counter the sender used.
    pub counter: u32,
    /// The clear header's length.
    pub header_len: usize,
    /// The Opus payload, after the header extension's body.
    pub payload: Range<usize>,
}

/// One session's key in its mode.
pub struct TransportCipher {
    cipher: Cipher,
}

enum Cipher {
    // Boxed: the expanded AES key schedule is large next to the ChaCha key.
    Aes(Box<Aes256Gcm>),
    XChaCha(XChaCha20Poly1305),
}

impl std::fmt::Debug for TransportCipher {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportCipher")
            .field("mode", &self.mode().name())
            .finish_non_exhaustive()
    }
}

impl TransportCipher {
    pub fn new(mode: CryptoMode, key: &[u8; 32]) -> TransportCipher {
        let cipher = match mode {
            CryptoMode::Aes256GcmRtpsize => Cipher::Aes(Box::new(Aes256Gcm::new(key.into()))),
            CryptoMode::XChaCha20Poly1305Rtpsize => {
                Cipher::XChaCha(XChaCha20Poly1305::new(key.into()))
            }
        };
        TransportCipher { cipher }
    }

    /// Starts fetching the key state a seal will read (the forward loop's prefetch pass;
    /// `crate::prefetch`). The AES key schedule is behind a pointer: call this once the
    /// cipher itself has been fetched.
    pub(crate) fn prefetch_key(&self) {
        match &self.cipher {
            Cipher::Aes(k) => crate::prefetch::prefetch_of(&**k),
            Cipher::XChaCha(k) => crate::prefetch::prefetch_of(k),
        }
    }

    pub fn mode(&self) -> CryptoMode {
        match self.cipher {
            Cipher::Aes(_) => CryptoMode::Aes256GcmRtpsize,
            Cipher::XChaCha(_) => CryptoMode::XChaCha20Poly1305Rtpsize,
        }
    }

    /// Authenticate and decrypt `packet` in place. A packet too short or not RTP is
    /// [`DropReason::Malformed`]; one that does not authenticate, [`DropReason::DecryptFailed`]
    /// (the packet's sealed bytes are then unspecified).
    pub fn open(&self, packet: &mut [u8]) -> Result<Opened, DropReason> {
        let header_len = clear_header_len(packet).ok_or(DropReason::Malformed)?;
        let mut opened = self.open_after(packet, header_len)?;
        if packet[0] & 0x10 != 0 {
            let words = u16::from_be_bytes([packet[header_len - 2], packet[header_len - 1]]);
            opened.payload.start += 4 * usize::from(words);
            if opened.payload.start > opened.payload.end {
                return Err(DropReason::Malformed);
            }
        }
        Ok(opened)
    }

    /// Authenticate and decrypt a sealed RTCP packet in place (see [`crate::native::rtcp`]):
    /// its first [`RTCP_CLEAR`] bytes (header and sender SSRC) in clear, the rest sealed as
    /// RTP's are. `payload` is then the report after the sender SSRC.
    pub fn open_rtcp(&self, packet: &mut [u8]) -> Result<Opened, DropReason> {
        if packet.len() < RTCP_CLEAR || packet[0] >> 6 != 2 {
            return Err(DropReason::Malformed);
        }
        self.open_after(packet, RTCP_CLEAR)
    }

    /// Seal an RTCP packet: `clear` (its header and sender SSRC) as associated data, `body`
    /// (the rest) sealed, into `out`. Counters are shared with RTP: never use one twice.
    pub fn seal_rtcp(
        &self,
        clear: &[u8; RTCP_CLEAR],
        body: &[u8],
        counter: u32,
        out: &mut [u8],
    ) -> Option<usize> {
        self.seal_after(clear, body, counter, out)
    }

    fn open_after(&self, packet: &mut [u8], header_len: usize) -> Result<Opened, DropReason> {
        let n = packet.len();
        if n < header_len + TAG_LEN + COUNTER_LEN {
            return Err(DropReason::Malformed);
        }
        let sealed_end = n - TAG_LEN - COUNTER_LEN;
        let counter =
            u32::from_be_bytes([packet[n - 4], packet[n - 3], packet[n - 2], packet[n - 1]]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&packet[sealed_end..sealed_end + TAG_LEN]);
        let (aad, sealed) = packet[..sealed_end].split_at_mut(header_len);
        let ok = match &self.cipher {
            Cipher::Aes(c) => c
                .decrypt_in_place_detached(&nonce12(counter).into(), aad, sealed, &tag.into())
                .is_ok(),
            Cipher::XChaCha(c) => c
                .decrypt_in_place_detached(&nonce24(counter).into(), aad, sealed, &tag.into())
                .is_ok(),
        };
        if !ok {
            return Err(DropReason::DecryptFailed);
        }
        Ok(Opened {
            counter,
            header_len,
            payload: header_len..sealed_end,
        })
    }

    /// Seal `header` (exactly a clear header: see [`clear_header_len`]) and `payload` (an
    /// extension body, if the header's X bit is set, then Opus) with `counter` into `out`.
    /// Returns the packet's length, or `None` if `out` is too small or `header` is not a
    /// clear header. A counter must never be used twice with one key.
    pub fn seal(
        &self,
        header: &[u8],
        payload: &[u8],
        counter: u32,
        out: &mut [u8],
    ) -> Option<usize> {
        if clear_header_len(header) != Some(header.len()) {
            return None;
        }
        self.seal_after(header, payload, counter, out)
    }

    fn seal_after(
        &self,
        header: &[u8],
        payload: &[u8],
        counter: u32,
        out: &mut [u8],
    ) -> Option<usize> {
        let h = header.len();
        let sealed_end = h + payload.len();
        let total = sealed_end + TAG_LEN + COUNTER_LEN;
        if out.len() < total {
            return None;
        }
        out[..h].copy_from_slice(header);
        out[h..sealed_end].copy_from_slice(payload);
        let (aad, body) = out[..sealed_end].split_at_mut(h);
        let tag = match &self.cipher {
            Cipher::Aes(c) => c
                .encrypt_in_place_detached(&nonce12(counter).into(), aad, body)
                .ok()?,
            Cipher::XChaCha(c) => c
                .encrypt_in_place_detached(&nonce24(counter).into(), aad, body)
                .ok()?,
        };
        out[sealed_end..sealed_end + TAG_LEN].copy_from_slice(&tag);
        out[sealed_end + TAG_LEN..total].copy_from_slice(&counter.to_be_bytes());
        Some(total)
    }
}

impl TransportCipher {
    /// One Opus frame as Discord's clients send and expect it: a bare 12-byte header (PT
    /// [`OPUS_PT`], no extensions) and the payload, sealed with `counter`.
    pub fn seal_opus(
        &self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        marker: bool,
        payload: &[u8],
        counter: u32,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_opus_into(ssrc, seq, ts, marker, payload, counter, &mut out);
        out
    }

    /// [`TransportCipher::seal_opus`] into `out`, replacing what it held: a reused buffer
    /// seals without allocating.
    #[allow(clippy::too_many_arguments)]
    pub fn seal_opus_into(
        &self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        marker: bool,
        payload: &[u8],
        counter: u32,
        out: &mut Vec<u8>,
    ) {
        let mut header = [0u8; RTP_HEADER];
        header[0] = 0x80;
        header[1] = (u8::from(marker) << 7) | OPUS_PT;
        header[2..4].copy_from_slice(&seq.to_be_bytes());
        header[4..8].copy_from_slice(&ts.to_be_bytes());
        header[8..12].copy_from_slice(&ssrc.to_be_bytes());
        out.clear();
        out.resize(RTP_HEADER + payload.len() + TAG_LEN + COUNTER_LEN, 0);
        let n = self
            .seal(&header, payload, counter, out)
            .expect("a bare header and a buffer sized for it always seal");
        out.truncate(n);
    }
}

fn nonce12(counter: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&counter.to_be_bytes());
    n
}

fn nonce24(counter: u32) -> [u8; 24] {
    let mut n = [0u8; 24];
    n[..4].copy_from_slice(&counter.to_be_bytes());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const KEY: [u8; 32] = {
        let mut k = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            k[i] = i as u8;
            i += 1;
        }
        k
    };
    const HEADER: &str = "80780102030405060708090a";
    const OPUS: &[u8] = b"opus frame bytes";

    // Expected packets computed independently (Python `cryptography`: AESGCM, and
    // ChaCha20Poly1305 under an HChaCha20 subkey checked against the XChaCha draft's vector).
    const AES_PACKET: &str = "80780102030405060708090a4e25a82e37f70a109682b7d9c9b4d21db34c9c44d88822f171f8afee0d19fca801020304";
    const XCHACHA_PACKET: &str = "80780102030405060708090a1918653fbe0c307eeb8655e5892d41832f389a61052754541c7327ba591ad9d101020304";
    const AES_WITH_EXTENSION: &str = "90780102030405060708090abede00015cd6445e3c9ab4cad28a92dbec6f287a0fbbc64c8933ac19ac233f3f947bdd4b419805b8fffffffe";

    #[test]
    fn sealing_matches_an_independent_implementation_in_both_modes() {
        for (mode, want) in [
            (CryptoMode::Aes256GcmRtpsize, AES_PACKET),
            (CryptoMode::XChaCha20Poly1305Rtpsize, XCHACHA_PACKET),
        ] {
            let c = TransportCipher::new(mode, &KEY);
            let mut out = [0u8; 1500];
            let n = c.seal(&hex(HEADER), OPUS, 0x0102_0304, &mut out).unwrap();
            assert_eq!(out[..n], hex(want)[..], "{}", mode.name());
        }
    }

    #[test]
    fn opening_finds_the_payload_after_the_extension_body() {
        let c = TransportCipher::new(CryptoMode::Aes256GcmRtpsize, &KEY);
        let mut p = hex(AES_WITH_EXTENSION);
        let o = c.open(&mut p).unwrap();
        assert_eq!(o.counter, 0xffff_fffe);
        assert_eq!(
            o.header_len, 16,
            "12 + the 4-byte preamble; the body is sealed"
        );
        assert_eq!(
            &p[16..20],
            &[0x10, 0xaa, 0, 0],
            "the extension body, decrypted"
        );
        assert_eq!(&p[o.payload], OPUS);
    }

    #[test]
    fn open_inverts_seal_with_csrcs_and_any_counter() {
        for mode in CryptoMode::ALL {
            let c = TransportCipher::new(mode, &KEY);
            let mut header = hex("82780102030405060708090a");
            header.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2]);
            for counter in [0, 1, 0x8000_0000, u32::MAX] {
                let mut out = [0u8; 200];
                let n = c.seal(&header, OPUS, counter, &mut out).unwrap();
                let o = c.open(&mut out[..n]).unwrap();
                assert_eq!((o.counter, o.header_len), (counter, 20));
                assert_eq!(&out[o.payload], OPUS);
            }
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_or_another_key_or_mode_does_not_open() {
        let c = TransportCipher::new(CryptoMode::XChaCha20Poly1305Rtpsize, &KEY);
        let good = hex(XCHACHA_PACKET);
        for i in 0..good.len() {
            let mut p = good.clone();
            p[i] ^= 0x04;
            let r = c.open(&mut p);
            assert!(r.is_err(), "byte {i} flipped still opened");
        }
        let mut other = KEY;
        other[0] ^= 1;
        let mut p = good.clone();
        assert_eq!(
            TransportCipher::new(CryptoMode::XChaCha20Poly1305Rtpsize, &other).open(&mut p),
            Err(DropReason::DecryptFailed)
        );
        let mut p = good.clone();
        assert_eq!(
            TransportCipher::new(CryptoMode::Aes256GcmRtpsize, &KEY).open(&mut p),
            Err(DropReason::DecryptFailed)
        );
    }

    #[test]
    fn short_or_non_rtp_input_is_malformed_not_a_panic() {
        let c = TransportCipher::new(CryptoMode::Aes256GcmRtpsize, &KEY);
        let good = hex(AES_PACKET);
        for len in 0..12 + TAG_LEN + COUNTER_LEN {
            let mut p = good[..len].to_vec();
            assert_eq!(c.open(&mut p), Err(DropReason::Malformed), "{len} bytes");
        }
        let mut v1 = good.clone();
        v1[0] = 0x40;
        assert_eq!(c.open(&mut v1), Err(DropReason::Malformed));
        // 15 CSRCs announced in a packet that is too short to hold them.
        let mut csrcs = good.clone();
        csrcs[0] = 0x8f;
        assert!(c.open(&mut csrcs).is_err());
        // An extension claiming more words than the packet holds, sealed honestly.
        let mut header = hex("90780102030405060708090a");
        header.extend_from_slice(&[0xbe, 0xde, 0x00, 0x40]);
        let mut out = [0u8; 100];
        let n = c.seal(&header, b"abcd", 5, &mut out).unwrap();
        assert_eq!(c.open(&mut out[..n]), Err(DropReason::Malformed));
    }

    #[test]
    fn seal_refuses_a_small_buffer_and_a_header_that_is_not_clear() {
        let c = TransportCipher::new(CryptoMode::Aes256GcmRtpsize, &KEY);
        let mut small = [0u8; 12 + 16 + 20 - 1];
        assert_eq!(c.seal(&hex(HEADER), OPUS, 1, &mut small), None);
        let mut out = [0u8; 100];
        assert_eq!(
            c.seal(&hex("80780102030405060708"), OPUS, 1, &mut out),
            None
        );
        let mut with_x = hex(HEADER);
        with_x[0] = 0x90;
        assert_eq!(
            c.seal(&with_x, OPUS, 1, &mut out),
            None,
            "X set but no preamble"
        );
    }

    #[test]
    fn modes_round_trip_their_names() {
        for m in CryptoMode::ALL {
            assert_eq!(CryptoMode::from_name(m.name()), Some(m));
        }
        assert_eq!(CryptoMode::from_name("xsalsa20_poly1305"), None);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let c = TransportCipher::new(CryptoMode::Aes256GcmRtpsize, &KEY);
        let s = format!("{c:?}");
        assert!(
            s.contains("aead_aes256_gcm_rtpsize") && !s.contains("31"),
            "{s}"
        );
    }
}
