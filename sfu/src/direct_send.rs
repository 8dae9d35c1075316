//! A WebRTC listener's copies written and sealed in the forward loop, not through its str0m
//! session: the header from the session's template, the payload sealed with the session's
//! SRTP key (RFC 7714 AES-GCM), the counts handed back to the session before it is next used
//! (`Rtc::send_context` / `Rtc::note_sent_rtp`, third_party/str0m patch 0003).
//!
//! Why: a session's send state is several pointers deep (`Rtc` → session → streams → stream,
//! the codec table, the extension map, the cipher), and in a node with thousands of listeners
//! it has left the caches by the next packet. Here a copy reads the slot, the session's key and
//! the address: a few lines the prefetch names in one pass.
//!
//! Contract with the session (`WebRtcPeer` keeps it; its `rtc` is private to it):
//! - A context read from the session stays valid until a call that may change it. Every
//!   `&mut Rtc` use but the send path's (`send_rtp_now`, `recycle_buffer`) and an incoming
//!   media packet's (`WebRtcPeer::rtc_for_datagram`) bumps [`DirectSession::invalidate`]'s
//!   generation, and a slot re-reads its context (a few hundred ns) the next time it sends.
//! - Sent packets are reported ([`DirectSlot::take_sent`] → `note_sent_rtp`) before any
//!   `&mut Rtc` call, so sender reports, statistics and receiver-report loss see them.
//! - Numbering stays one sequence per SSRC: the slot's rewriter numbers both paths, and a
//!   context exists only while nothing waits in the stream's queue.

use std::net::SocketAddr;
use std::time::Instant;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit};
use str0m::crypto::AeadAes128Gcm;
use str0m::rtp::SeqNo;
use str0m::{RtpHeaderTemplate, SendContext, SentRtp, SrtpSendKey};

use crate::node::Transport;

/// The AES-GCM tag after an SRTP payload (the same for both AEAD profiles).
const TAG_LEN: usize = AeadAes128Gcm::TAG_LEN;

/// What every slot of one session shares: where its copies go and the key they are sealed
/// with, read from the session at `generation`.
#[derive(Default)]
pub(crate) struct DirectSession {
    generation: u64,
    keys: Option<SessionKeys>,
}

struct SessionKeys {
    transport: Transport,
    destination: SocketAddr,
    /// The key the cipher was made from: a new context with the same key keeps the cipher
    /// (its key schedule costs more than the comparison).
    key: SrtpSendKey,
    cipher: Cipher,
}

// Boxed: the expanded key schedules are large next to the rest of the session's state.
enum Cipher {
    Aes128(Box<Aes128Gcm>),
    Aes256(Box<Aes256Gcm>),
}

impl Cipher {
    fn of(key: &SrtpSendKey) -> Cipher {
        match key {
            SrtpSendKey::AeadAes128Gcm { key, .. } => {
                Cipher::Aes128(Box::new(Aes128Gcm::new(key.into())))
            }
            SrtpSendKey::AeadAes256Gcm { key, .. } => {
                Cipher::Aes256(Box::new(Aes256Gcm::new(key.into())))
            }
        }
    }

    fn seal(&self, iv: &[u8; 12], aad: &[u8], body: &mut [u8]) -> Option<[u8; TAG_LEN]> {
        let tag = match self {
            Cipher::Aes128(c) => c.encrypt_in_place_detached(iv.into(), aad, body),
            Cipher::Aes256(c) => c.encrypt_in_place_detached(iv.into(), aad, body),
        };
        tag.ok().map(Into::into)
    }

    fn prefetch(&self) {
        match self {
            Cipher::Aes128(c) => crate::prefetch::prefetch_of(&**c),
            Cipher::Aes256(c) => crate::prefetch::prefetch_of(&**c),
        }
    }
}

impl DirectSession {
    /// Something may have changed what the session's contexts hold: every slot re-reads its
    /// own before its next direct send.
    pub fn invalidate(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Starts fetching the key schedule a seal reads (the forward loop's prefetch).
    pub fn prefetch_key(&self) {
        if let Some(k) = &self.keys {
            k.cipher.prefetch();
        }
    }
}

/// One slot's context: its stream's SSRC and header, valid at a generation of its session.
#[derive(Default)]
pub(crate) struct DirectSlot {
    state: SlotState,
    /// Sent directly since the session was last told.
    sent: Option<SentRtp>,
    /// The session has sent a packet on this slot (which sets the stream's clock rate, a
    /// condition of a context).
    session_sent: bool,
}

#[derive(Default)]
enum SlotState {
    /// Not read at the session's current generation.
    #[default]
    Unread,
    Ready {
        generation: u64,
        ssrc: u32,
        header: RtpHeaderTemplate,
    },
    /// The session declined (not connected, an AES-CM profile, a packet queued, no packet
    /// of this payload type sent yet): copies go through `send_rtp_now` until the session
    /// changes.
    Declined { generation: u64 },
}

/// One copy to send directly.
pub(crate) struct DirectCopy<'a> {
    pub seq: SeqNo,
    pub rtp_time: u32,
    pub marker: bool,
    /// RFC 6464 level in -dBov and the V bit.
    pub audio_level: i8,
    pub voice_activity: bool,
    pub payload: &'a [u8],
}

impl DirectSlot {
    /// The packets sent directly since the last call, for `Rtc::note_sent_rtp`.
    pub fn take_sent(&mut self) -> Option<SentRtp> {
        self.sent.take()
    }

    /// The session just sent on this slot through `send_rtp_now`. After its first such packet
    /// a context it declined before (no packet of the payload type yet) may now be given;
    /// later ones change nothing a context depends on, so a slot that stays declined (an
    /// AES-CM session) does not ask again for every copy.
    pub fn sent_through_session(&mut self) {
        if !self.session_sent {
            self.session_sent = true;
            if matches!(self.state, SlotState::Declined { .. }) {
                self.state = SlotState::Unread;
            }
        }
    }

    /// Writes and seals `copy` into `out` (replacing what it held) if the slot has a context
    /// at the session's generation, reading one through `context` when it has none (counted
    /// in `reads`); `None`: send through the session. Returns where the datagram goes.
    pub fn send(
        &mut self,
        session: &mut DirectSession,
        context: impl FnOnce() -> Option<SendContext>,
        now: Instant,
        copy: &DirectCopy<'_>,
        out: &mut Vec<u8>,
        reads: &mut u64,
    ) -> Option<(Transport, SocketAddr)> {
        let generation = session.generation;
        let (ssrc, header) = match &self.state {
            SlotState::Ready {
                generation: g,
                ssrc,
                header,
            } if *g == generation => (*ssrc, *header),
            SlotState::Declined { generation: g } if *g == generation => return None,
            _ => {
                *reads += 1;
                let Some(ctx) = context() else {
                    self.state = SlotState::Declined { generation };
                    return None;
                };
                session.adopt(&ctx);
                self.state = SlotState::Ready {
                    generation,
                    ssrc: *ctx.ssrc,
                    header: ctx.header,
                };
                (*ctx.ssrc, ctx.header)
            }
        };
        // A slot is ready at the current generation only after `adopt` at that generation.
        let keys = session.keys.as_ref()?;
        let (h, n) = (header.len(), copy.payload.len());
        out.clear();
        out.resize(h + n + TAG_LEN, 0);
        header.write(
            &mut out[..h],
            copy.seq,
            copy.rtp_time,
            copy.marker,
            copy.audio_level,
            copy.voice_activity,
        );
        let (head, rest) = out.split_at_mut(h);
        rest[..n].copy_from_slice(copy.payload);
        let iv = rtp_iv(keys.salt(), ssrc, *copy.seq);
        let tag = keys.cipher.seal(&iv, head, &mut rest[..n])?;
        rest[n..].copy_from_slice(&tag);
        let sent = self.sent.get_or_insert(SentRtp {
            packets: 0,
            payload_bytes: 0,
            datagram_bytes: 0,
            last_seq_no: copy.seq,
            last_rtp_time: copy.rtp_time,
            last_wallclock: now,
            last_sent_at: now,
        });
        sent.packets += 1;
        sent.payload_bytes += n as u64;
        sent.datagram_bytes += out.len() as u64;
        sent.last_seq_no = copy.seq;
        sent.last_rtp_time = copy.rtp_time;
        sent.last_wallclock = now;
        sent.last_sent_at = now;
        Some((keys.transport, keys.destination))
    }
}

impl DirectSession {
    /// Takes the session-wide part of a fresh context: the address always, a new cipher only
    /// for a new key.
    fn adopt(&mut self, ctx: &SendContext) {
        let transport = Transport::of(ctx.proto);
        match &mut self.keys {
            Some(k) if k.key == ctx.srtp => {
                k.transport = transport;
                k.destination = ctx.destination;
            }
            _ => {
                let cipher = Cipher::of(&ctx.srtp);
                self.keys = Some(SessionKeys {
                    transport,
                    destination: ctx.destination,
                    key: ctx.srtp.clone(),
                    cipher,
                });
            }
        }
    }
}

impl SessionKeys {
    fn salt(&self) -> &[u8; 12] {
        match &self.key {
            SrtpSendKey::AeadAes128Gcm { salt, .. } | SrtpSendKey::AeadAes256Gcm { salt, .. } => {
                salt
            }
        }
    }
}

/// RFC 7714 §8.1's IV (str0m's, the same for both AEAD profiles) for the packet with extended
/// sequence number `index`: the rollover counter is its upper bits.
fn rtp_iv(salt: &[u8; 12], ssrc: u32, index: u64) -> [u8; 12] {
    AeadAes128Gcm::rtp_iv(*salt, ssrc, (index >> 16) as u32, index as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_iv_carries_the_rollover_counter() {
        let salt = [0u8; 12];
        let iv = rtp_iv(&salt, 0x0102_0304, (7 << 16) | 0xabcd);
        assert_eq!(iv, [0, 0, 1, 2, 3, 4, 0, 0, 0, 7, 0xab, 0xcd]);
        let salt = [0xff; 12];
        assert_eq!(rtp_iv(&salt, 0, 0), [0xff; 12]);
    }
}
