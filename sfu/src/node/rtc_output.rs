//! Draining one WebRTC session's outputs: transmits, timers, events, received RTP.

use std::time::Instant;

use str0m::{Event, IceConnectionState, Output};
use tracing::{debug, info, warn};

use super::forward::Inbound;
use super::{Node, NodeEvent, NodeOutput, Transmit};
use crate::ids::ParticipantIdx;

impl Node {
    /// Drain one participant's WebRTC outputs into the node's queue, forwarding its RTP.
    pub(super) fn drain(&mut self, idx: ParticipantIdx, now: Instant) {
        loop {
            let Some(p) = self
                .participants
                .get_mut(idx.0 as usize)
                .and_then(|s| s.as_mut())
            else {
                return;
            };
            let Some(rtc) = p.rtc.as_mut() else {
                return;
            };
            let out = match rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    warn!(%idx, error = %e, "WebRTC session failed");
                    p.gone = true;
                    return;
                }
            };
            match out {
                Output::Timeout(t) => {
                    p.next_timeout = t;
                    self.timers.arm(idx.0, t, &mut p.armed);
                    return;
                }
                Output::Transmit(t) => {
                    self.out.push_back(NodeOutput::Transmit(Transmit {
                        destination: t.destination,
                        contents: t.contents.into(),
                    }));
                }
                Output::Event(ev) => match ev {
                    Event::RtpPacket(pkt) => {
                        let pt_ok = pkt.header.payload_type == p.opus_pt;
                        self.forward(now, idx, Inbound::from_rtp(pkt), pt_ok)
                    }
                    Event::Connected => {
                        p.connected = true;
                        info!(%idx, "participant connected (ICE + DTLS done)");
                        let (room, user) = (p.room, p.user);
                        self.out.push_back(NodeOutput::Event(NodeEvent::Connected {
                            idx,
                            room,
                            user,
                        }));
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        debug!(%idx, "ICE disconnected");
                        p.gone = true;
                    }
                    Event::MediaIngressStats(s) => {
                        p.stats.loss_in = s.loss.or(p.stats.loss_in);
                        p.stats.jitter_in_ms = Some(s.jitter as f32 / 48.0);
                        if let Some(rtt) = s.rtt {
                            p.stats.rtt_ms = Some(rtt.as_secs_f32() * 1000.0);
                        }
                    }
                    Event::MediaEgressStats(s) => {
                        p.stats.loss_out = s.loss.or(p.stats.loss_out);
                        if let Some(rtt) = s.rtt {
                            p.stats.rtt_ms = Some(rtt.as_secs_f32() * 1000.0);
                        }
                        if let Some(r) = s.remote {
                            p.stats.jitter_out_ms = Some(r.jitter as f32 / 48.0);
                        }
                    }
                    Event::PeerStats(s) => {
                        if let Some(rtt) = s.rtt {
                            p.stats.rtt_ms = Some(rtt.as_secs_f32() * 1000.0);
                        }
                    }
                    Event::Closed => p.gone = true,
                    _ => {}
                },
            }
        }
    }
}
