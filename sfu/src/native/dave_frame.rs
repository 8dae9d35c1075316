//! The DAVE media-frame check: whether a voice payload is an end-to-end encrypted frame
//! (Discord's DAVE protocol, docs/design/NATIVE-VOICE.md §3.7) rather than plain Opus.
//!
//! The node cannot decrypt such a frame (its key derives from an MLS epoch only the call's
//! members know) and forwards it opaque to listeners that do DAVE. A listener that does not
//! would hand it to its Opus decoder as noise, so it must never get one; this is the
//! "protocol frame check" DAVE asks of a forwarder. A frame is, back to front:
//!
//! ```text
//! ciphertext | tag (8) | nonce (ULEB128, u32, 1–5 bytes) | ranges (ULEB128 offset,len pairs)
//!            | supplemental size (1) | 0xFA 0xFA
//! ```
//!
//! where the supplemental size counts everything from the tag to the end (`tag + nonce +
//! ranges + 1 + 2`), and each range names bytes of the ciphertext left in clear (none for Opus).
//! Opus silence (`F8 FF FE`) is never encrypted and never passes.
//!
//! A plain Opus frame passes only if it happens to end in `FA FA` *and* everything before
//! parses as above; DAVE accepts the same (rare) false positive by design. The check reads
//! the frame's tail in place and allocates nothing.

/// The marker every DAVE frame ends with.
pub const DAVE_MAGIC: [u8; 2] = [0xFA, 0xFA];
/// The truncated AES-GCM tag after the ciphertext.
pub const DAVE_TAG_LEN: usize = 8;
/// The smallest supplemental size: tag, a one-byte nonce, the size byte, the marker.
pub const DAVE_MIN_SUPPLEMENTAL: usize = DAVE_TAG_LEN + 1 + 1 + DAVE_MAGIC.len();

/// Whether `payload` is a DAVE media frame (see the module doc for every check).
pub fn is_dave_frame(payload: &[u8]) -> bool {
    supplemental_len(payload).is_some()
}

/// The supplemental size of a DAVE frame (what DAVE adds to the Opus frame: tag, nonce,
/// ranges, size byte and marker), or `None` when `payload` is not one.
pub fn supplemental_len(payload: &[u8]) -> Option<usize> {
    let len = payload.len();
    if len < DAVE_MIN_SUPPLEMENTAL || payload[len - 2..] != DAVE_MAGIC {
        return None;
    }
    let sup = payload[len - 3] as usize;
    if !(DAVE_MIN_SUPPLEMENTAL..=len).contains(&sup) {
        return None;
    }
    let ciphertext_len = (len - sup) as u64;
    // Nonce and ranges lie between the tag and the size byte.
    let fields = &payload[len - sup + DAVE_TAG_LEN..len - 3];
    let mut pos = 0;
    read_uleb128(fields, &mut pos, 32)?;
    // Ranges: (offset, len) pairs, in order, not overlapping, inside the ciphertext.
    let mut covered = 0u64;
    while pos < fields.len() {
        let offset = read_uleb128(fields, &mut pos, 64)?;
        let size = read_uleb128(fields, &mut pos, 64)?;
        let end = offset.checked_add(size)?;
        if offset < covered || end > ciphertext_len {
            return None;
        }
        covered = end;
    }
    Some(sup)
}

/// The Opus frame's size inside `payload`: its length without DAVE's supplemental bytes when it
/// is a DAVE frame (the ciphertext is as long as the Opus frame it seals).
pub fn opus_len(payload: &[u8]) -> usize {
    payload.len() - supplemental_len(payload).unwrap_or(0)
}

/// One unsigned LEB128 value starting at `buf[*pos]` that fits in `bits` bits (32 or 64), so
/// at most `ceil(bits / 7)` bytes; `None` if it runs past `buf` or needs more bits. Redundant
/// zero groups (`80 00`) are accepted, as DAVE's reference reader accepts them.
fn read_uleb128(buf: &[u8], pos: &mut usize, bits: u32) -> Option<u64> {
    let mut value = 0u64;
    let mut shift = 0u32;
    loop {
        if shift >= bits {
            return None;
        }
        let byte = *buf.get(*pos)?;
        *pos += 1;
        let low = u64::from(byte & 0x7f);
        if bits - shift < 7 && low >> (bits - shift) != 0 {
            return None;
        }
        value |= low << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uleb(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// A frame as a DAVE sender builds it: `ct` bytes of "ciphertext", the tag, the nonce and
    /// `ranges`, the size byte and the marker.
    fn frame(ct: usize, nonce: u32, ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut f: Vec<u8> = (0..ct).map(|i| (i * 37 + 11) as u8).collect();
        let start = f.len();
        f.extend_from_slice(&[0xA5; DAVE_TAG_LEN]);
        uleb(nonce as u64, &mut f);
        for &(o, l) in ranges {
            uleb(o, &mut f);
            uleb(l, &mut f);
        }
        let sup = f.len() - start + 3;
        f.push(sup as u8);
        f.extend_from_slice(&DAVE_MAGIC);
        f
    }

    #[test]
    fn valid_frames_pass_with_their_supplemental_size() {
        // 8 tag + 1 nonce + 1 size + 2 marker = 12: the smallest.
        let f = frame(60, 5, &[]);
        assert_eq!(supplemental_len(&f), Some(12));
        assert_eq!(opus_len(&f), 60);
        // Nonces of every length 1..=5, up to u32::MAX.
        for (nonce, sup) in [
            (127, 12),
            (128, 13),
            (1 << 14, 14),
            (1 << 21, 15),
            (1 << 28, 16),
            (u32::MAX, 16),
        ] {
            let f = frame(40, nonce, &[]);
            assert_eq!(supplemental_len(&f), Some(sup), "nonce {nonce}");
            assert_eq!(opus_len(&f), 40);
        }
        // Ranges in order, touching, and one ending exactly at the ciphertext's end.
        let f = frame(50, 9, &[(0, 1), (1, 4), (10, 0), (20, 30)]);
        assert!(is_dave_frame(&f));
        assert_eq!(opus_len(&f), 50);
        // An empty ciphertext is still a well-formed frame.
        assert!(is_dave_frame(&frame(0, 1, &[])));
        // A redundant zero group in the nonce (as the reference reader accepts).
        let mut f = frame(30, 0, &[]);
        let n = f.len();
        f[n - 4] = 0x80;
        f.insert(n - 3, 0x00);
        f[n - 2] = 13;
        assert_eq!(supplemental_len(&f), Some(13));
    }

    #[test]
    fn each_check_refuses() {
        let good = frame(60, 300, &[(2, 3)]);
        assert!(is_dave_frame(&good));
        let n = good.len();
        let sup = good[n - 3] as usize;

        // The marker.
        for i in [n - 1, n - 2] {
            let mut f = good.clone();
            f[i] = 0xFB;
            assert!(!is_dave_frame(&f), "marker byte {i}");
        }
        // Supplemental size below the minimum or above the frame.
        for bad in [0, 1, 11, n + 1, 255] {
            let mut f = good.clone();
            f[n - 3] = bad as u8;
            assert!(!is_dave_frame(&f), "supplemental size {bad}");
        }
        // The size byte may claim the whole frame, but then the "ranges" are garbage here.
        let mut f = good.clone();
        f[n - 3] = n as u8;
        assert!(!is_dave_frame(&f));
        // A nonce that does not end within the fields: the size shrunk to cover only the tag
        // and a continuation byte.
        let mut f = frame(20, 1, &[]);
        let m = f.len();
        f[m - 4] = 0x81;
        assert!(!is_dave_frame(&f), "nonce runs into the size byte");
        // A nonce longer than 5 bytes, or 5 bytes above u32::MAX.
        let mut f = frame(20, 0, &[]);
        let m = f.len();
        f.truncate(m - 4);
        f.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]);
        f.extend_from_slice(&[8 + 6 + 3, 0xFA, 0xFA]);
        assert!(!is_dave_frame(&f), "six-byte nonce");
        let mut f = frame(20, 0, &[]);
        let m = f.len();
        f.truncate(m - 4);
        f.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x1F]);
        f.extend_from_slice(&[8 + 5 + 3, 0xFA, 0xFA]);
        assert!(!is_dave_frame(&f), "nonce above u32");
        f[m - 4 + 4] = 0x0F;
        assert!(is_dave_frame(&f), "u32::MAX itself");
        // An odd range list (an offset without a length).
        let mut f = frame(20, 1, &[]);
        let m = f.len();
        f.insert(m - 3, 4);
        f[m - 2] += 1;
        assert!(!is_dave_frame(&f), "offset without length");
        // Ranges out of order, overlapping, past the ciphertext, overflowing.
        for ranges in [
            &[(10, 2), (5, 1)][..],
            &[(0, 5), (4, 2)],
            &[(50, 11)],
            &[(61, 0)],
            &[(u64::MAX, 2)],
        ] {
            assert!(!is_dave_frame(&frame(60, 1, ranges)), "{ranges:?}");
        }
        assert_eq!(sup, DAVE_TAG_LEN + 2 + 2 + 1 + 2);
    }

    #[test]
    fn plain_opus_is_not_dave() {
        // Silence, DTX-sized and voice-sized Opus frames (TOC bytes of SILK/CELT configs).
        assert!(!is_dave_frame(&[0xF8, 0xFF, 0xFE]));
        assert_eq!(opus_len(&[0xF8, 0xFF, 0xFE]), 3);
        assert!(!is_dave_frame(&[]));
        assert!(!is_dave_frame(&[0xFA, 0xFA]));
        assert!(!is_dave_frame(&[0xFA; 11]));
        for toc in [0x78u8, 0xF8, 0xFC, 0x08] {
            let f: Vec<u8> = std::iter::once(toc)
                .chain((0..119).map(|i| (i * 13) as u8))
                .collect();
            assert!(!is_dave_frame(&f));
            assert_eq!(opus_len(&f), 120);
        }
    }

    #[test]
    fn random_bytes_ending_in_the_marker_are_refused_unless_they_parse() {
        // A small xorshift: deterministic "random" frames of every length, forced to end FA FA.
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut passed = 0;
        for len in 0..300 {
            for _ in 0..20 {
                let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if len >= 2 {
                    f[len - 2..].copy_from_slice(&DAVE_MAGIC);
                }
                if let Some(sup) = supplemental_len(&f) {
                    passed += 1;
                    // Whatever passes really has that shape.
                    assert!((DAVE_MIN_SUPPLEMENTAL..=len).contains(&sup));
                    assert_eq!(f[len - 3] as usize, sup);
                }
            }
        }
        assert!(passed < 300 * 20 / 10, "{passed} random frames passed");
        // Sizes that cannot be: smaller than the minimum, larger than the frame.
        let mut f = vec![0u8; 40];
        f[37..].copy_from_slice(&[5, 0xFA, 0xFA]);
        assert!(!is_dave_frame(&f));
        f[37] = 41;
        assert!(!is_dave_frame(&f));
        f[37] = 12;
        assert!(is_dave_frame(&f), "zero nonce, no ranges: well formed");
    }
}
