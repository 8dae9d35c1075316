//! Demultiplexing received datagrams to participants, and learning their addresses.
//!
//! Two ways in: a UDP datagram on the media socket ([`Node::handle_datagram`]) and one RFC 4571
//! frame of an ICE-TCP connection ([`Node::handle_tcp_frame`]). Both take the same steps (STUN
//! by USERNAME, then the source address); they differ in what may arrive. Native (Discord UDP
//! mode) participants and their IP discovery are UDP only, and a TCP peer is looked up among
//! proven TCP connections only (`by_tcp`), never among UDP addresses.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::Input;
use tracing::{debug, trace};

use super::{Node, Transport};
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
        self.receive(now, Transport::Udp, source, destination, buf)
    }

    /// Feed one frame (RFC 4571: the bytes after the 2-byte length) of the ICE-TCP connection
    /// whose peer is `source`. Its destination is the passive candidate the node advertised
    /// (`public_addr`), whatever address the shell accepted it on: a connection to the media
    /// port is a connection to that candidate, also behind a port forward.
    pub fn handle_tcp_frame(&mut self, now: Instant, source: SocketAddr, buf: &[u8]) {
        self.stats.tcp_frames_in += 1;
        let destination = self.cfg.public_addr;
        self.receive(now, Transport::Tcp, source, destination, buf)
    }

    /// The ICE-TCP connection whose peer is `source` ended: its address no longer names anyone
    /// (a later connection from the same address must pass a STUN check again). The
    /// participant stays: ICE moves to another pair, or its idle timeout removes it.
    pub fn handle_tcp_closed(&mut self, source: SocketAddr) {
        let Some(idx) = self.by_tcp.remove(&source) else {
            return;
        };
        if let Some(Kind::WebRtc(w)) = self.participant_mut(idx).map(|p| &mut p.kind) {
            w.remotes.retain(|r| *r != (Transport::Tcp, source));
        }
    }

    /// The ICE-TCP connection whose peer is `source` passed a STUN check for a participant (the
    /// shell closes connections that do not within a few seconds).
    pub fn tcp_peer_known(&self, source: SocketAddr) -> bool {
        self.by_tcp.contains_key(&source)
    }

    fn receive(
        &mut self,
        now: Instant,
        transport: Transport,
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
            if transport == Transport::Tcp {
                return self.drop_datagram(DropReason::NotOverTcp, None);
            }
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
            let known = match transport {
                Transport::Udp => self.by_addr.get(&source),
                Transport::Tcp => self.by_tcp.get(&source),
            };
            match known {
                Some(i) => *i,
                None => {
                    // A native participant's packet from a new address (NAT rebinding), or
                    // its first before discovery bound one: it must authenticate.
                    if transport == Transport::Udp {
                        if let Some(i) = self.native_claimed(buf) {
                            return self.native_datagram(now, i, source, buf, true);
                        }
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
            if transport == Transport::Tcp {
                return self.drop_datagram(DropReason::NotOverTcp, Some(idx));
            }
            return self.native_datagram(now, idx, source, buf, false);
        }
        let Ok(contents) = DatagramRecv::try_from(buf) else {
            return self.drop_datagram(DropReason::Malformed, Some(idx));
        };
        let proto = match transport {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
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
        if !w.rtc().accepts(&input) {
            return self.drop_datagram(DropReason::Rejected, Some(idx));
        }
        let media = is_rtp(buf);
        if let Err(e) = w.rtc_for_datagram(media).handle_input(input) {
            trace!(%idx, error = %e, "datagram refused by WebRTC stack");
            return self.drop_datagram(DropReason::Rejected, Some(idx));
        }
        p.last_recv = Some(now);
        if stun {
            self.learn_address(idx, transport, source);
        }
        // In RTP mode str0m reports every RTP packet that authenticates; one that does not
        // vanishes inside it. Notice that here so it is counted like every other drop.
        let rtp_before = self.stats.rtp_in;
        self.drain_with(idx, now, media);
        if media && self.stats.rtp_in == rtp_before {
            self.drop_datagram(DropReason::DecryptFailed, Some(idx));
        }
    }
}

impl Node {
    /// A STUN check from `source` over `transport` authenticated for `idx`: its media may come
    /// from there. The peer keeps its last `MAX_REMOTES` addresses; an address belongs to
    /// whoever proved it last (NAT rebinding, a reused port).
    fn learn_address(&mut self, idx: ParticipantIdx, transport: Transport, source: SocketAddr) {
        let Some(Kind::WebRtc(w)) = self.participant_mut(idx).map(|p| &mut p.kind) else {
            return;
        };
        let key = (transport, source);
        if w.remotes.contains(&key) {
            return;
        }
        w.remotes.push(key);
        let evicted = (w.remotes.len() > MAX_REMOTES).then(|| w.remotes.remove(0));
        if let Some((t, old)) = evicted {
            let map = self.addr_map(t);
            if map.get(&old) == Some(&idx) {
                map.remove(&old);
            }
        }
        if let Some(prev) = self.addr_map(transport).insert(source, idx) {
            if prev != idx {
                match self.participant_mut(prev).map(|p| &mut p.kind) {
                    Some(Kind::WebRtc(pw)) => pw.remotes.retain(|r| *r != key),
                    Some(Kind::Native(n))
                        if transport == Transport::Udp && n.addr == Some(source) =>
                    {
                        n.addr = None;
                        n.addr_proven = false;
                    }
                    _ => {}
                }
            }
        }
        debug!(%idx, transport = transport.as_str(), "participant address learned from STUN");
    }
}

/// RTP, not RTCP (RFC 5761 demultiplexing: version 2, payload type outside 64..=95).
fn is_rtp(buf: &[u8]) -> bool {
    buf.len() >= 12 && buf[0] >> 6 == 2 && !(64..=95).contains(&(buf[1] & 0x7f))
}
