//! DAVE binary framing and payloads (voice gateway ops 25–30) and the MLS variable-length vector
//! (RFC 9420 §2.1.2). Pure byte code: no openmls, no allocation beyond the output, no panics on
//! any input — every length is checked against the bytes present and against a named limit
//! before anything is sliced.
//!
//! Frames (docs/design/NATIVE-VOICE.md §1.1, §0):
//! - server → client: `[seq u16 BE][op u8][payload]` on gateway v8, `[op u8][payload]` on v4..7
//!   (songbird reads byte 0 as the opcode);
//! - client → server: `[op u8][payload]` on every version.

use super::{DaveError, TransitionId};

/// Largest binary frame accepted from a client (any op). A commit + Welcome for a full call
/// ([`super::MAX_PARTICIPANTS`] leaves, inline ratchet tree) stays well under this.
pub const MAX_CLIENT_FRAME: usize = 256 * 1024;
/// Largest op 26 key package. davey's is ~300 bytes; the slack covers other clients' extensions.
pub const MAX_KEY_PACKAGE: usize = 4 * 1024;
/// Largest op 28 payload (commit + optional Welcome).
pub const MAX_COMMIT_WELCOME: usize = MAX_CLIENT_FRAME - 1;
/// Largest vector the codec builds or reads (the 4-byte form allows 2³⁰ − 1; nothing in DAVE
/// comes near it, so a bigger claim is refused before any slicing).
pub const MAX_VECTOR: usize = MAX_CLIENT_FRAME;

// ---------------------------------------------------------------------------------------------
// MLS variable-length vector header (RFC 9420 §2.1.2)

/// Decodes a vector length prefix: `00` → 6-bit length in 1 byte, `01` → 14 bits in 2, `10` →
/// 30 bits in 4; `11` is reserved. The encoding must be minimal (RFC 9420: "the length MUST be
/// encoded in the smallest number of bytes"). Returns `(length, prefix_len)`.
pub fn read_varint(buf: &[u8], what: &'static str) -> Result<(usize, usize), DaveError> {
    let first = *buf.first().ok_or(DaveError::Truncated { what })?;
    let (prefix_len, min) = match first >> 6 {
        0 => return Ok((usize::from(first & 0x3f), 1)),
        1 => (2, 64usize),
        2 => (4, 16_384usize),
        _ => return Err(DaveError::VarintReserved { what }),
    };
    let bytes = buf.get(..prefix_len).ok_or(DaveError::Truncated { what })?;
    let mut len = usize::from(first & 0x3f);
    for b in &bytes[1..] {
        len = (len << 8) | usize::from(*b);
    }
    if len < min {
        return Err(DaveError::VarintNonMinimal { what });
    }
    Ok((len, prefix_len))
}

/// Appends the minimal length prefix for `len`.
pub fn write_varint(out: &mut Vec<u8>, len: usize, what: &'static str) -> Result<(), DaveError> {
    if len > MAX_VECTOR {
        return Err(DaveError::TooLarge {
            what,
            len,
            limit: MAX_VECTOR,
            limit_name: "MAX_VECTOR",
        });
    }
    // MAX_VECTOR < 2³⁰, so the three cases cover every allowed length.
    if len < 64 {
        out.push(len as u8);
    } else if len < 16_384 {
        out.extend_from_slice(&(0x4000u16 | len as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&(0x8000_0000u32 | len as u32).to_be_bytes());
    }
    Ok(())
}

/// Appends `<V>` = prefix + bytes.
pub fn write_vector(out: &mut Vec<u8>, bytes: &[u8], what: &'static str) -> Result<(), DaveError> {
    write_varint(out, bytes.len(), what)?;
    out.extend_from_slice(bytes);
    Ok(())
}

/// A cursor over untrusted bytes; every read names what it was reading for the error.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DaveError> {
        if n > self.buf.len() {
            return Err(DaveError::Truncated { what });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DaveError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DaveError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DaveError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DaveError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// Reads one `<V>` and returns its contents.
    pub fn vector(&mut self, what: &'static str) -> Result<&'a [u8], DaveError> {
        let (len, prefix) = read_varint(self.buf, what)?;
        if len > MAX_VECTOR {
            return Err(DaveError::TooLarge {
                what,
                len,
                limit: MAX_VECTOR,
                limit_name: "MAX_VECTOR",
            });
        }
        self.take(prefix, what)?;
        self.take(len, what)
    }

    /// Requires that nothing is left.
    pub fn finish(&self, what: &'static str) -> Result<(), DaveError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DaveError::Trailing {
                what,
                extra: self.buf.len(),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Binary opcodes

pub const OP_EXTERNAL_SENDER: u8 = 25;
pub const OP_KEY_PACKAGE: u8 = 26;
pub const OP_PROPOSALS: u8 = 27;
pub const OP_COMMIT_WELCOME: u8 = 28;
pub const OP_ANNOUNCE_COMMIT: u8 = 29;
pub const OP_WELCOME: u8 = 30;

/// op 27's `operation_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProposalsOp {
    /// Contents are concatenated MLSMessages (external-sender proposals).
    Append = 0,
    /// Contents are concatenated `ProposalRef<V>`s.
    Revoke = 1,
}

/// A binary message from a client, borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBinary<'a> {
    /// op 26: a bare TLS `KeyPackage` (NATIVE-VOICE.md §0), checked only for size here.
    KeyPackage(&'a [u8]),
    /// op 28: `MLSMessage commit ‖ Welcome?`, split by [`super::mls::parse_commit_welcome`].
    CommitWelcome(&'a [u8]),
}

/// Decodes a client → server binary frame `[op u8][payload]`.
pub fn decode_client_frame(frame: &[u8]) -> Result<ClientBinary<'_>, DaveError> {
    if frame.len() > MAX_CLIENT_FRAME {
        return Err(DaveError::TooLarge {
            what: "binary frame",
            len: frame.len(),
            limit: MAX_CLIENT_FRAME,
            limit_name: "MAX_CLIENT_FRAME",
        });
    }
    let (&op, payload) = frame.split_first().ok_or(DaveError::Truncated {
        what: "binary frame",
    })?;
    match op {
        OP_KEY_PACKAGE => {
            if payload.len() > MAX_KEY_PACKAGE {
                return Err(DaveError::TooLarge {
                    what: "op 26 key package",
                    len: payload.len(),
                    limit: MAX_KEY_PACKAGE,
                    limit_name: "MAX_KEY_PACKAGE",
                });
            }
            if payload.is_empty() {
                return Err(DaveError::Truncated {
                    what: "op 26 key package",
                });
            }
            Ok(ClientBinary::KeyPackage(payload))
        }
        OP_COMMIT_WELCOME => {
            if payload.is_empty() {
                return Err(DaveError::Truncated {
                    what: "op 28 commit welcome",
                });
            }
            Ok(ClientBinary::CommitWelcome(payload))
        }
        other => Err(DaveError::UnexpectedOpcode(other)),
    }
}

/// Encodes a client → server frame (tests and the load generator play the client).
pub fn encode_client_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + payload.len());
    out.push(op);
    out.extend_from_slice(payload);
    out
}

/// A binary message to a client, borrowed (what the coordinator emits; what tests decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerBinary<'a> {
    /// op 25: TLS `ExternalSender`.
    ExternalSender(&'a [u8]),
    /// op 27: operation type and the vector's *contents* (the frame carries them as one `<V>`).
    Proposals { op: ProposalsOp, contents: &'a [u8] },
    /// op 29: transition id + the commit MLSMessage as received.
    AnnounceCommit {
        transition_id: TransitionId,
        commit: &'a [u8],
    },
    /// op 30: transition id + the Welcome.
    Welcome {
        transition_id: TransitionId,
        welcome: &'a [u8],
    },
}

impl ServerBinary<'_> {
    pub fn opcode(&self) -> u8 {
        match self {
            Self::ExternalSender(_) => OP_EXTERNAL_SENDER,
            Self::Proposals { .. } => OP_PROPOSALS,
            Self::AnnounceCommit { .. } => OP_ANNOUNCE_COMMIT,
            Self::Welcome { .. } => OP_WELCOME,
        }
    }

    /// The payload after the opcode (what davey's `process_*` and `set_external_sender` take,
    /// except op 27 whose `<V>` davey decodes itself).
    pub fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), DaveError> {
        match self {
            Self::ExternalSender(b) => out.extend_from_slice(b),
            Self::Proposals { op, contents } => {
                out.push(*op as u8);
                write_vector(out, contents, "op 27 proposals")?;
            }
            Self::AnnounceCommit {
                transition_id,
                commit,
            } => {
                out.extend_from_slice(&transition_id.0.to_be_bytes());
                out.extend_from_slice(commit);
            }
            Self::Welcome {
                transition_id,
                welcome,
            } => {
                out.extend_from_slice(&transition_id.0.to_be_bytes());
                out.extend_from_slice(welcome);
            }
        }
        Ok(())
    }

    /// The whole frame; `seq` is `Some` on gateway v8 (NATIVE-VOICE.md §0).
    pub fn encode_frame(&self, seq: Option<u16>) -> Result<Vec<u8>, DaveError> {
        let mut out = Vec::new();
        if let Some(seq) = seq {
            out.extend_from_slice(&seq.to_be_bytes());
        }
        out.push(self.opcode());
        self.encode_payload(&mut out)?;
        Ok(out)
    }
}

/// Decodes a server → client frame (the client side, for tests and fuzzing).
pub fn decode_server_frame(
    frame: &[u8],
    with_seq: bool,
) -> Result<(Option<u16>, ServerBinary<'_>), DaveError> {
    if frame.len() > MAX_CLIENT_FRAME + 2 {
        return Err(DaveError::TooLarge {
            what: "binary frame",
            len: frame.len(),
            limit: MAX_CLIENT_FRAME + 2,
            limit_name: "MAX_CLIENT_FRAME + 2",
        });
    }
    let mut r = Reader::new(frame);
    let seq = if with_seq {
        Some(r.u16("binary frame seq")?)
    } else {
        None
    };
    let op = r.u8("binary frame opcode")?;
    let msg = match op {
        OP_EXTERNAL_SENDER => ServerBinary::ExternalSender(r.take(r.remaining().len(), "op 25")?),
        OP_PROPOSALS => {
            let op = match r.u8("op 27 operation type")? {
                0 => ProposalsOp::Append,
                1 => ProposalsOp::Revoke,
                v => {
                    return Err(DaveError::Unexpected {
                        what: "op 27 operation type",
                        value: v.into(),
                    })
                }
            };
            let contents = r.vector("op 27 proposals")?;
            r.finish("op 27")?;
            ServerBinary::Proposals { op, contents }
        }
        OP_ANNOUNCE_COMMIT => {
            let transition_id = TransitionId(r.u16("op 29 transition id")?);
            ServerBinary::AnnounceCommit {
                transition_id,
                commit: r.remaining(),
            }
        }
        OP_WELCOME => {
            let transition_id = TransitionId(r.u16("op 30 transition id")?);
            ServerBinary::Welcome {
                transition_id,
                welcome: r.remaining(),
            }
        }
        other => return Err(DaveError::UnexpectedOpcode(other)),
    };
    Ok((seq, msg))
}

/// Splits op 27 revoke contents into 32-byte refs.
pub fn decode_revoke_refs(contents: &[u8]) -> Result<Vec<[u8; 32]>, DaveError> {
    let mut r = Reader::new(contents);
    let mut refs = Vec::new();
    while !r.is_empty() {
        let v = r.vector("op 27 proposal ref")?;
        let arr: [u8; 32] = v.try_into().map_err(|_| DaveError::Unexpected {
            what: "op 27 proposal ref length",
            value: v.len() as u64,
        })?;
        refs.push(arr);
    }
    Ok(refs)
}

/// Builds op 27 revoke contents from refs.
pub fn encode_revoke_refs(refs: &[[u8; 32]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(refs.len() * 33);
    for r in refs {
        out.push(32);
        out.extend_from_slice(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_table() {
        // (bytes, Ok(len, prefix) | Err kind)
        let ok: &[(&[u8], usize, usize)] = &[
            (&[0x00], 0, 1),
            (&[0x3f], 63, 1),
            (&[0x40, 0x40], 64, 2),
            (&[0x7f, 0xff], 16_383, 2),
            (&[0x80, 0x00, 0x40, 0x00], 16_384, 4),
            (&[0xbf, 0xff, 0xff, 0xff], (1 << 30) - 1, 4),
            (&[0x25, 0xff], 37, 1), // RFC 9420 example (single byte 0x25 = 37)
            (&[0x7b, 0xbd], 15_293, 2), // RFC 9420 example
        ];
        for (b, len, pre) in ok {
            assert_eq!(read_varint(b, "t").unwrap(), (*len, *pre), "{b:02x?}");
        }
        for b in [
            &[0x40, 0x3f][..],
            &[0x40, 0x00],
            &[0x80, 0x00, 0x3f, 0xff],
            &[0x80, 0, 0, 1],
        ] {
            assert_eq!(
                read_varint(b, "t"),
                Err(DaveError::VarintNonMinimal { what: "t" }),
                "{b:02x?}"
            );
        }
        for b in [&[0xc0][..], &[0xff, 0, 0, 0, 0, 0, 0, 0]] {
            assert_eq!(
                read_varint(b, "t"),
                Err(DaveError::VarintReserved { what: "t" })
            );
        }
        for b in [&[][..], &[0x40], &[0x80, 0, 0]] {
            assert_eq!(read_varint(b, "t"), Err(DaveError::Truncated { what: "t" }));
        }
    }

    #[test]
    fn varint_roundtrip_is_minimal() {
        for len in [0, 1, 63, 64, 65, 16_383, 16_384, 100_000, MAX_VECTOR] {
            let mut out = Vec::new();
            write_varint(&mut out, len, "t").unwrap();
            assert_eq!(read_varint(&out, "t").unwrap(), (len, out.len()));
            let expect = if len < 64 {
                1
            } else if len < 16_384 {
                2
            } else {
                4
            };
            assert_eq!(out.len(), expect);
        }
        let mut out = Vec::new();
        assert!(matches!(
            write_varint(&mut out, MAX_VECTOR + 1, "t"),
            Err(DaveError::TooLarge {
                limit_name: "MAX_VECTOR",
                ..
            })
        ));
    }

    #[test]
    fn reader_vector_bounds() {
        let mut r = Reader::new(&[0x03, 1, 2]);
        assert_eq!(r.vector("v"), Err(DaveError::Truncated { what: "v" }));
        let mut r = Reader::new(&[0x02, 1, 2, 9]);
        assert_eq!(r.vector("v").unwrap(), &[1, 2]);
        assert_eq!(
            r.finish("end"),
            Err(DaveError::Trailing {
                what: "end",
                extra: 1
            })
        );
        // 4-byte claim above MAX_VECTOR is refused by its limit, not by slicing.
        let mut r = Reader::new(&[0xbf, 0xff, 0xff, 0xff]);
        assert!(matches!(
            r.vector("v"),
            Err(DaveError::TooLarge {
                limit_name: "MAX_VECTOR",
                ..
            })
        ));
    }

    #[test]
    fn client_frames() {
        assert_eq!(
            decode_client_frame(&[26, 1, 2]).unwrap(),
            ClientBinary::KeyPackage(&[1, 2])
        );
        assert_eq!(
            decode_client_frame(&[28, 9]).unwrap(),
            ClientBinary::CommitWelcome(&[9])
        );
        assert_eq!(
            decode_client_frame(&[]),
            Err(DaveError::Truncated {
                what: "binary frame"
            })
        );
        assert_eq!(
            decode_client_frame(&[26]),
            Err(DaveError::Truncated {
                what: "op 26 key package"
            })
        );
        assert_eq!(
            decode_client_frame(&[27, 0]),
            Err(DaveError::UnexpectedOpcode(27))
        );
        let big = vec![26u8; MAX_KEY_PACKAGE + 2];
        assert!(matches!(
            decode_client_frame(&big),
            Err(DaveError::TooLarge {
                limit_name: "MAX_KEY_PACKAGE",
                ..
            })
        ));
        let huge = vec![28u8; MAX_CLIENT_FRAME + 1];
        assert!(matches!(
            decode_client_frame(&huge),
            Err(DaveError::TooLarge {
                limit_name: "MAX_CLIENT_FRAME",
                ..
            })
        ));
    }

    #[test]
    fn server_frames_roundtrip_both_framings() {
        let refs = [[7u8; 32], [8u8; 32]];
        let revoke = encode_revoke_refs(&refs);
        let msgs = [
            ServerBinary::ExternalSender(&[1, 2, 3]),
            ServerBinary::Proposals {
                op: ProposalsOp::Append,
                contents: &[5; 100],
            },
            ServerBinary::Proposals {
                op: ProposalsOp::Revoke,
                contents: &revoke,
            },
            ServerBinary::AnnounceCommit {
                transition_id: TransitionId(513),
                commit: &[0, 1],
            },
            ServerBinary::Welcome {
                transition_id: TransitionId(1),
                welcome: &[0, 1, 2],
            },
        ];
        for m in msgs {
            for seq in [None, Some(0xbeef)] {
                let frame = m.encode_frame(seq).unwrap();
                let at = if seq.is_some() { 2 } else { 0 };
                assert_eq!(frame[at], m.opcode());
                assert_eq!(
                    decode_server_frame(&frame, seq.is_some()).unwrap(),
                    (seq, m)
                );
            }
        }
        // op 27 with 100 bytes of contents uses the 2-byte prefix: [op][type][0x40 0x64].
        let f = msgs[1].encode_frame(None).unwrap();
        assert_eq!(&f[..4], &[27, 0, 0x40, 100]);
        assert_eq!(decode_revoke_refs(&revoke).unwrap(), refs.to_vec());
        assert!(decode_revoke_refs(&[31; 32]).is_err());
        assert!(decode_server_frame(&[27, 2, 0], false).is_err());
        assert!(decode_server_frame(&[27, 0, 0, 0], false).is_err());
    }
}
