//! Demultiplexing received datagrams to participants, and learning their addresses.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::Input;
use tracing::{debug, trace};

use super::Node;
use crate::drop_reason::DropReason;
use crate::ids::ParticipantIdx;
use crate::participant::{Kind, MAX_REMOTES};

impl Node {
    /// Feed one received UDP datagram.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        buf: &[u8],
    ) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += buf.len() as u64;
        if buf.len() > self.cfg.max_datagram {
            return self.drop_datagram(DropReason::Oversized, None);
        }
        // IP discovery first: its first bytes fall in STUN's range (RFC 7983), and only its
        // exact shape and length tell it apart (see `native/discovery.rs`).
        if let Some(ssrc) = crate::native::discovery_request(buf) {
            return self.native_discovery(now, source, ssrc);
        }
        let stun = crate::stun::is_stun(buf);
        let idx = if stun {
            match crate::stun::local_ufrag(buf) {
                None => return self.drop_datagram(DropReason::Malformed, None),
                Some(u) => match self.by_ufrag.get(u) {
                    Some(i) => *i,
                    None => return self.drop_datagram(DropReason::UnknownUsername, None),
                },
            }
        } else {
            match self.by_addr.get(&source) {
                Some(i) => *i,
                None => {
                    // A native participant's packet from a new address (NAT rebinding), or
                    // its first before discovery bound one: it must authenticate.
                    if let Some(i) = self.native_claimed(buf) {
                        return self.native_datagram(now, i, source, buf, true);
                    }
                    // A keepalive before discovery (discord.js sends one at once) is normal.
                    let reason = if buf.len() < 12 {
                        DropReason::UnknownPeer
                    } else if DatagramRecv::try_from(buf).is_err() {
                        DropReason::Malformed
                    } else {
                        DropReason::UnknownPeer
                    };
                    return self.drop_datagram(reason, None);
                }
            }
        };
        if !stun
            && matches!(
                self.participant(idx).map(|p| &p.kind),
                Some(Kind::Native(_))
            )
        {
            return self.native_datagram(now, idx, source, buf, false);
        }
        let Ok(contents) = DatagramRecv::try_from(buf) else {
            return self.drop_datagram(DropReason::Malformed, Some(idx));
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        let p = self.participants[idx.0 as usize]
            .as_mut()
            .expect("maps only hold live participants");
        if !p.rate.take(now) {
            return self.drop_datagram(DropReason::OverRate, Some(idx));
        }
        let Kind::WebRtc(w) = &mut p.kind else {
            // Remote speakers have no address or ufrag in the maps; a native peer's STUN.
            return self.drop_datagram(DropReason::UnknownPeer, None);
        };
        if !w.rtc.accepts(&input) {
            return self.drop_datagram(DropReason::Rejected, Some(idx));
        }
        if let Err(e) = w.rtc.handle_input(input) {
            trace!(%idx, error = %e, "datagram refused by WebRTC stack");
            return self.drop_datagram(DropReason::Rejected, Some(idx));
        }
        p.last_recv = Some(now);
        if stun {
            self.learn_address(idx, source);
        }
        // In RTP mode str0m reports every RTP packet that authenticates; one that does not
        // vanishes inside it. Notice that here so it is counted like every other drop.
        let rtp_before = self.stats.rtp_in;
        self.drain(idx, now);
        if is_rtp(buf) && self.stats.rtp_in == rtp_before {
            self.drop_datagram(DropReason::DecryptFailed, Some(idx));
        }
    }
}

impl Node {
    /// A STUN check from `source` authenticated for `idx`: its media may come from there. The
    /// peer keeps its last `MAX_REMOTES` addresses; an address belongs to whoever proved it
    /// last (NAT rebinding, a reused port).
    fn learn_address(&mut self, idx: ParticipantIdx, source: SocketAddr) {
        let Some(Kind::WebRtc(w)) = self.participant_mut(idx).map(|p| &mut p.kind) else {
            return;
        };
        if w.remotes.contains(&source) {
            return;
        }
        w.remotes.push(source);
        let evicted = (w.remotes.len() > MAX_REMOTES).then(|| w.remotes.remove(0));
        if let Some(old) = evicted {
            if self.by_addr.get(&old) == Some(&idx) {
                self.by_addr.remove(&old);
            }
        }
        if let Some(prev) = self.by_addr.insert(source, idx) {
            if prev != idx {
                match self.participant_mut(prev).map(|p| &mut p.kind) {
                    Some(Kind::WebRtc(pw)) => pw.remotes.retain(|a| *a != source),
                    Some(Kind::Native(n)) if n.addr == Some(source) => {
                        n.addr = None;
                        n.addr_proven = false;
                    }
                    _ => {}
                }
            }
        }
        debug!(%idx, "participant address learned from STUN");
    }
}

/// RTP, not RTCP (RFC 5761 demultiplexing: version 2, payload type outside 64..=95).
fn is_rtp(buf: &[u8]) -> bool {
    buf.len() >= 12 && buf[0] >> 6 == 2 && !(64..=95).contains(&(buf[1] & 0x7f))
}
