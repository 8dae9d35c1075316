//! RFC 4571 framing for ICE-TCP: every packet on the stream is preceded by its length as a
//! 16-bit big-endian number. Sans-IO: the shell pushes what it read and takes whole frames;
//! the simulated network of the tests uses the same decoder.
//!
//! Bounds: a frame longer than the decoder's `max_frame` is an error (the shell then closes
//! the connection: a peer that sends one is not a WebRTC stack, and skipping it would leave
//! the stream to the peer's mercy), and the buffer never holds more than one frame plus one
//! read's bytes, because the caller takes every whole frame before pushing again.

/// Bytes of the length prefix.
pub const PREFIX: usize = 2;

/// A frame announced longer than the decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ICE-TCP frame of {len} bytes (at most {max} accepted)")]
pub struct FrameTooLong {
    pub len: usize,
    pub max: usize,
}

/// Cuts a byte stream into frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// `buf[..consumed]` was handed out already; dropped at the next push.
    consumed: usize,
    max_frame: usize,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            consumed: 0,
            max_frame,
        }
    }

    /// Append bytes read from the stream. Take every whole frame ([`next_frame`](Self::next_frame)
    /// until `Ok(None)`) before pushing again, or the buffer grows with the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed, or an error for a frame
    /// longer than `max_frame` (the stream cannot be trusted past it: keep calling and it stays
    /// an error).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameTooLong> {
        let rest = &self.buf[self.consumed..];
        if rest.len() < PREFIX {
            return Ok(None);
        }
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        if len > self.max_frame {
            return Err(FrameTooLong {
                len,
                max: self.max_frame,
            });
        }
        if rest.len() < PREFIX + len {
            return Ok(None);
        }
        let start = self.consumed + PREFIX;
        self.consumed = start + len;
        Ok(Some(&self.buf[start..start + len]))
    }

    /// Bytes held that are not a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.consumed
    }
}

/// Append `payload` framed (length prefix, then the bytes) to `out`. `None` when it cannot be
/// framed (longer than 65,535 bytes; the node never sends such a datagram).
pub fn encode(payload: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let len = u16::try_from(payload.len()).ok()?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(d: &mut FrameDecoder) -> Result<Vec<Vec<u8>>, FrameTooLong> {
        let mut v = Vec::new();
        while let Some(f) = d.next_frame()? {
            v.push(f.to_vec());
        }
        Ok(v)
    }

    #[test]
    fn frames_survive_any_cutting_of_the_stream() {
        let payloads: Vec<Vec<u8>> = vec![vec![], vec![1], vec![2; 300], vec![3; 1500], vec![4; 7]];
        let mut stream = Vec::new();
        for p in &payloads {
            encode(p, &mut stream).unwrap();
        }
        // Every chunk size from one byte to the whole stream at once.
        for chunk in 1..=stream.len() {
            let mut d = FrameDecoder::new(1500);
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                d.push(c);
                got.extend(frames(&mut d).unwrap());
                // Never more than one frame plus one chunk buffered.
                assert!(d.buf.len() <= PREFIX + 1500 + chunk, "chunk {chunk}");
            }
            assert_eq!(got, payloads, "chunk size {chunk}");
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn table_of_bad_streams() {
        // (what, stream, frames before the end or the error, error)
        let cases: Vec<(&str, Vec<u8>, usize, Option<FrameTooLong>)> = vec![
            ("empty", vec![], 0, None),
            ("half a prefix", vec![0], 0, None),
            ("prefix, no body", vec![0, 5], 0, None),
            ("body cut short", vec![0, 5, 1, 2], 0, None),
            (
                "one over the bound",
                vec![0x05, 0xDD],
                0,
                Some(FrameTooLong {
                    len: 1501,
                    max: 1500,
                }),
            ),
            (
                "the largest a prefix can say",
                vec![0xFF, 0xFF, 0],
                0,
                Some(FrameTooLong {
                    len: 65535,
                    max: 1500,
                }),
            ),
            (
                "a good frame, then an oversized one",
                vec![0, 1, 9, 0xFF, 0xFF],
                1,
                Some(FrameTooLong {
                    len: 65535,
                    max: 1500,
                }),
            ),
        ];
        for (what, stream, good, err) in cases {
            let mut d = FrameDecoder::new(1500);
            d.push(&stream);
            let mut n = 0;
            let r = loop {
                match d.next_frame() {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            assert_eq!((n, r), (good, err), "{what}");
            if let Some(e) = err {
                // It stays an error: the stream is not resynchronised past a bad length.
                assert_eq!(d.next_frame(), Err(e), "{what}");
            }
        }
    }

    #[test]
    fn encode_refuses_what_a_prefix_cannot_say() {
        let mut out = Vec::new();
        assert!(encode(&vec![0; 65_536], &mut out).is_none());
        assert!(out.is_empty());
        assert!(encode(&vec![0; 65_535], &mut out).is_some());
        assert_eq!(&out[..2], &[0xFF, 0xFF]);
    }
}
