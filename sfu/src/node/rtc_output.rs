//! Draining one WebRTC session's outputs: transmits, timers, events, received RTP.

use std::time::Instant;

use str0m::{Event, IceConnectionState, Output};
use tracing::{debug, info, warn};

use super::forward::Inbound;
use super::{Node, NodeEvent, NodeOutput, Transmit, Transport};
use crate::ids::ParticipantIdx;
use crate::participant::{Kind, Participant};
use crate::stats::ParticipantStats;

impl Node {
    /// Drain one participant's WebRTC outputs into the node's queue, forwarding its RTP.
    pub(super) fn drain(&mut self, idx: ParticipantIdx, now: Instant) {
        self.drain_with(idx, now, false)
    }

    /// [`Node::drain`]; `after_media`: right after an incoming media packet, whose drain keeps
    /// the session's direct-send contexts (`WebRtcPeer::rtc_for_datagram`).
    pub(super) fn drain_with(&mut self, idx: ParticipantIdx, now: Instant, after_media: bool) {
        loop {
            let Some(Participant {
                kind: Kind::WebRtc(w),
                stats,
                room,
                user,
                ..
            }) = self
                .participants
                .get_mut(idx.0 as usize)
                .and_then(|s| s.as_mut())
            else {
                return;
            };
            let out = match w.rtc_for_datagram(after_media).poll_output() {
                Ok(o) => o,
                Err(e) => {
                    warn!(%idx, error = %e, "WebRTC session failed");
                    w.gone = true;
                    return;
                }
            };
            match out {
                Output::Timeout(t) => {
                    w.next_timeout = t;
                    self.timers.arm(idx.0, t, &mut w.armed);
                    return;
                }
                Output::Transmit(t) => {
                    self.out.push_back(NodeOutput::Transmit(Transmit {
                        transport: Transport::of(t.proto),
                        destination: t.destination,
                        contents: t.contents.into(),
                    }));
                }
                Output::Event(ev) => match ev {
                    Event::RtpPacket(pkt) => {
                        let pt_ok = pkt.header.payload_type == w.opus_pt;
                        self.forward(now, idx, Inbound::from_rtp(pkt), pt_ok)
                    }
                    Event::Connected => {
                        w.connected = true;
                        info!(%idx, "participant connected (ICE + DTLS done)");
                        let (room, user) = (*room, *user);
                        self.out.push_back(NodeOutput::Event(NodeEvent::Connected {
                            idx,
                            room,
                            user,
                        }));
                    }
                    other => session_event(idx, other, stats, &mut w.gone),
                },
            }
        }
    }
}

/// A session event that is neither media nor the connection coming up: the session's figures
/// (str0m emits them when the session is driven by time, which for a listener is mostly while a
/// packet is forwarded to it) and its end. Used by [`Node::drain`] and by the forward loop.
pub(super) fn session_event(
    idx: ParticipantIdx,
    ev: Event,
    stats: &mut ParticipantStats,
    gone: &mut bool,
) {
    match ev {
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
            debug!(%idx, "ICE disconnected");
            *gone = true;
        }
        Event::MediaIngressStats(s) => {
            stats.loss_in = s.loss.or(stats.loss_in);
            stats.jitter_in_ms = Some(s.jitter as f32 / 48.0);
            if let Some(rtt) = s.rtt {
                stats.rtt_ms = Some(rtt.as_secs_f32() * 1000.0);
            }
        }
        Event::MediaEgressStats(s) => {
            stats.loss_out = s.loss.or(stats.loss_out);
            if let Some(rtt) = s.rtt {
                stats.rtt_ms = Some(rtt.as_secs_f32() * 1000.0);
            }
            if let Some(r) = s.remote {
                stats.jitter_out_ms = Some(r.jitter as f32 / 48.0);
            }
        }
        Event::PeerStats(s) => {
            if let Some(rtt) = s.rtt {
                stats.rtt_ms = Some(rtt.as_secs_f32() * 1000.0);
            }
        }
        Event::Closed => *gone = true,
        _ => {}
    }
}
