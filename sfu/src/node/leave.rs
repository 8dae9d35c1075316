//! Participants leaving: asked, timed out, closed, or the node shutting down.

use std::collections::HashMap;
use std::time::Instant;

use tracing::info;

use super::{LeaveReason, Node, NodeEvent, NodeOutput, Transport};
use crate::ids::ParticipantIdx;
use crate::participant::Kind;

impl Node {
    /// Remove a participant (left the channel, moved, kicked). Unknown indices are ignored.
    pub fn leave(&mut self, _now: Instant, idx: ParticipantIdx) {
        self.remove(idx, LeaveReason::Requested);
    }

    /// Close every peer (shutdown). Each participant gets a Left event.
    pub fn close_all(&mut self, _now: Instant) {
        for i in 0..self.participants.len() {
            if self.participants[i].is_some() {
                self.remove(ParticipantIdx(i as u32), LeaveReason::Requested);
            }
        }
    }

    pub(super) fn reap(&mut self, now: Instant) {
        for i in 0..self.participants.len() {
            // Remote speakers are never reaped: their trunk removes them.
            let reason = match self.participants[i].as_ref().map(|p| (p, &p.kind)) {
                Some((_, Kind::WebRtc(w))) if w.gone => Some(LeaveReason::Closed),
                Some((p, Kind::WebRtc(w))) if w.connected => p
                    .last_recv
                    .is_some_and(|t| now.saturating_duration_since(t) > self.cfg.idle_timeout)
                    .then_some(LeaveReason::Idle),
                Some((_, Kind::WebRtc(w))) => (now.saturating_duration_since(w.joined_at)
                    > self.cfg.connect_timeout)
                    .then_some(LeaveReason::ConnectTimeout),
                Some((p, Kind::Native(n))) if n.addr.is_some() => p
                    .last_recv
                    .is_some_and(|t| {
                        now.saturating_duration_since(t) > self.cfg.native_idle_timeout
                    })
                    .then_some(LeaveReason::Idle),
                Some((_, Kind::Native(n))) => (now.saturating_duration_since(n.joined_at)
                    > self.cfg.connect_timeout)
                    .then_some(LeaveReason::ConnectTimeout),
                Some((_, Kind::Remote(_))) | None => None,
            };
            if let Some(r) = reason {
                self.remove(ParticipantIdx(i as u32), r);
            }
        }
    }

    pub(super) fn remove(&mut self, idx: ParticipantIdx, reason: LeaveReason) {
        let Some(mut p) = self
            .participants
            .get_mut(idx.0 as usize)
            .and_then(|s| s.take())
        else {
            return;
        };
        self.free.push(idx.0);
        self.count -= 1;
        match &mut p.kind {
            Kind::WebRtc(w) => {
                release(&mut self.per_guild, w.guild);
                release(&mut self.per_user, p.user);
                self.by_ufrag.remove(&w.ufrag);
                for (t, addr) in &w.remotes {
                    let map = match t {
                        Transport::Udp => &mut self.by_addr,
                        Transport::Tcp => &mut self.by_tcp,
                    };
                    if map.get(addr) == Some(&idx) {
                        map.remove(addr);
                    }
                }
                w.rtc_mut().disconnect();
            }
            Kind::Native(n) => {
                release(&mut self.per_guild, n.guild);
                release(&mut self.per_user, p.user);
                if self.native.by_ssrc.get(&p.voice_ssrc) == Some(&idx) {
                    self.native.by_ssrc.remove(&p.voice_ssrc);
                }
                if let Some(a) = n.addr {
                    if self.by_addr.get(&a) == Some(&idx) {
                        self.by_addr.remove(&a);
                    }
                }
            }
            Kind::Remote(_) => self.remote_count -= 1,
        }
        // Free every slot that carried this participant, and forget its own subscriptions.
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.members.retain(|m| *m != idx);
            room.selector_forget(idx);
        }
        let Node {
            participants,
            slot_map,
            out,
            ..
        } = self;
        slot_map.remove(idx, |listener, slot| {
            let l = participants[listener.0 as usize]
                .as_ref()
                .expect("the slot map holds only live participants");
            if let Some(ssrc) = l.slot_ssrc(slot) {
                out.push_back(NodeOutput::Event(NodeEvent::SlotChanged {
                    listener,
                    listener_user: l.user,
                    room: l.room,
                    slot,
                    ssrc,
                    speaker: None,
                }));
            }
        });
        let room_empty = self
            .rooms
            .get(&p.room)
            .is_some_and(|r| r.members.is_empty());
        if room_empty {
            self.rooms.remove(&p.room);
        } else if let Some(room) = self.rooms.get_mut(&p.room) {
            let max_k = room
                .members
                .iter()
                .filter_map(|m| self.participants[m.0 as usize].as_ref())
                .map(|m| m.slot_count())
                .max();
            room.set_capacity(max_k.unwrap_or(0) + 1);
        }
        info!(%idx, room = p.room.0, user = p.user.0, ?reason, packets_in = p.stats.packets_in,
              packets_out = p.stats.packets_out, loss_in = ?p.stats.loss_in, rtt_ms = ?p.stats.rtt_ms,
              "participant left");
        if self.export_all || self.exported.contains(&p.room) {
            self.out.push_back(NodeOutput::ExportEnd(idx));
        }
        if p.is_remote() {
            return; // signaling never saw it join
        }
        self.out.push_back(NodeOutput::Event(NodeEvent::Left {
            idx,
            room: p.room,
            user: p.user,
            reason,
            stats: Box::new(p.stats.clone()),
        }));
    }
}

/// One participant fewer under `key` (the entry goes at zero, so the maps hold only keys with
/// participants).
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let std::collections::hash_map::Entry::Occupied(mut e) = counts.entry(key) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
}
