//! Remote speakers: speakers of a room connected to another node, fed by a trunk.

use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use super::forward::Inbound;
use super::Node;
use crate::drop_reason::DropReason;
use crate::error::SfuError;
use crate::ids::{ParticipantIdx, RoomId, Ssrc, UserId};
use crate::participant::{Kind, Participant, RemoteSpeaker, VoiceFlags};
use crate::rate_limit::TokenBucket;
use crate::room::Room;
use crate::stats::ParticipantStats;

/// A remote speaker's packet, as a trunk delivered it.
#[derive(Debug)]
pub struct RemotePacket {
    pub idx: ParticipantIdx,
    /// Consecutive per speaker (the trunk's sequence number).
    pub seq: u16,
    pub rtp_ts: u32,
    /// RFC 6464 level, 0 loudest … 127 silent.
    pub level: u8,
    pub marker: bool,
    pub payload: Arc<[u8]>,
}

impl Node {
    /// Add a speaker of `room` that is connected to another node and arrives over a trunk: it
    /// is ranked and forwarded like a local speaker, has no WebRTC session and no slots, and is
    /// never timed out (the trunk removes it). No Connected/Left events are emitted for it.
    ///
    /// `voice_ssrc` is the SSRC native listeners here hear it under: the one its home node
    /// derived (`user_ssrc`), which signaling's op 5 names. Without it (a sender that did not
    /// say), a node-local SSRC no op 5 names.
    pub fn add_remote(
        &mut self,
        now: Instant,
        room: RoomId,
        user: UserId,
        voice_ssrc: Option<Ssrc>,
    ) -> Result<ParticipantIdx, SfuError> {
        if self.count >= self.cfg.max_participants {
            return Err(SfuError::NodeFull {
                limit: self.cfg.max_participants,
            });
        }
        let rate = self.cfg.max_packet_rate;
        // A per-node SSRC for the remote source (the slot rewriter tells sources apart by it).
        let ssrc = self.next_rand() as u32;
        let p = Participant {
            user,
            room,
            level: Default::default(),
            flags: VoiceFlags {
                can_speak: true,
                ..VoiceFlags::default()
            },
            stats: ParticipantStats::default(),
            rate: TokenBucket::new(rate, (rate / 4).max(8)),
            last_recv: None,
            voice_ssrc: voice_ssrc.unwrap_or(Ssrc(ssrc)),
            sends_dave: false,
            kind: Kind::Remote(RemoteSpeaker { ssrc }),
        };
        let idx = self.insert(p);
        self.count += 1;
        self.remote_count += 1;
        let sel_cfg = self.cfg.selector;
        let r = self.rooms.entry(room).or_insert_with(|| Room::new(sel_cfg));
        r.members.push(idx);
        if self.next_tick.is_none() {
            self.next_tick = Some(now + self.cfg.selector.tick);
        }
        info!(%idx, room = room.0, user = user.0, "remote speaker added");
        Ok(idx)
    }

    /// A remote speaker's packet from its trunk. Unknown or local indices are dropped (counted).
    pub fn remote_rtp(&mut self, now: Instant, pkt: RemotePacket) {
        let RemotePacket {
            idx,
            seq,
            rtp_ts,
            level,
            marker,
            payload,
        } = pkt;
        let Some(p) = self.participant_mut(idx) else {
            return self.drop_datagram(DropReason::UnknownPeer, None);
        };
        let Kind::Remote(RemoteSpeaker { ssrc }) = p.kind else {
            return self.drop_datagram(DropReason::UnknownPeer, None);
        };
        if !p.rate.take(now) {
            return self.drop_datagram(DropReason::OverRate, Some(idx));
        }
        p.last_recv = Some(now);
        let pkt = Inbound {
            ssrc,
            seq,
            ts: rtp_ts,
            marker,
            audio_level: Some(-(level.min(127) as i8)),
            voice_activity: None,
            dave: crate::native::is_dave_frame(&payload),
            payload,
        };
        self.forward(now, idx, pkt, true);
    }

    /// Whether `idx` is a remote speaker (fed by a trunk).
    pub fn is_remote(&self, idx: ParticipantIdx) -> bool {
        self.participant(idx).is_some_and(Participant::is_remote)
    }
}
