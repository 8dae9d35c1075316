//! The selector tick: re-rank each room's speakers and re-map its listeners' slots.

use std::time::Instant;

use super::{Node, NodeEvent, NodeOutput};
use crate::ids::RoomId;
use crate::speaker_selector::{assign_slots, Candidate as SelCandidate};

impl Node {
    pub(super) fn tick(&mut self, now: Instant) {
        let mut rooms = std::mem::take(&mut self.scratch_rooms);
        rooms.clear();
        rooms.extend(self.rooms.keys().copied());
        for r in &rooms {
            self.tick_room(now, *r);
        }
        self.scratch_rooms = rooms;
    }

    /// Re-rank a room's speakers and re-map every listener's slots.
    pub(super) fn tick_room(&mut self, now: Instant, room_id: RoomId) {
        let Node {
            participants,
            rooms,
            scratch_candidates,
            scratch_changes,
            slot_map,
            out,
            ..
        } = self;
        let Some(room) = rooms.get_mut(&room_id) else {
            return;
        };
        scratch_candidates.clear();
        for m in &room.members {
            if let Some(p) = participants[m.0 as usize].as_ref() {
                scratch_candidates.push(SelCandidate {
                    idx: *m,
                    eligible: p.connected() && p.flags.forwardable(),
                    level: p.level,
                });
            }
        }
        room.selector.update(now, scratch_candidates);
        let ranked = room.selector.ranked();
        for &li in &room.members {
            scratch_changes.clear();
            let Some(l) = participants[li.0 as usize].as_ref() else {
                continue;
            };
            room.slot_scratch.clear();
            room.slot_scratch.extend_from_slice(slot_map.speakers(li));
            // A listener without DAVE cannot hear a speaker whose voice is DAVE-encrypted
            // (the forward loop would skip every packet): its slot goes to the next speaker.
            let hears_dave = l.hears_dave();
            let audible = |s: crate::ids::ParticipantIdx| {
                hears_dave
                    || !participants[s.0 as usize]
                        .as_ref()
                        .is_some_and(|p| p.sends_dave)
            };
            assign_slots(li, &mut room.slot_scratch, ranked, audible, |n, w| {
                scratch_changes.push((n, w))
            });
            for &(n, who) in scratch_changes.iter() {
                slot_map.assign(li, n, who);
                // Native listeners' slots carry no SSRC of their own: nothing to announce.
                let Some(ssrc) = l.slot_ssrc(n) else {
                    continue;
                };
                let listener_user = l.user;
                let speaker_user = who
                    .and_then(|w| participants[w.0 as usize].as_ref())
                    .map(|w| w.user);
                out.push_back(NodeOutput::Event(NodeEvent::SlotChanged {
                    listener: li,
                    listener_user,
                    room: room_id,
                    slot: n,
                    ssrc,
                    speaker: speaker_user,
                }));
            }
        }
    }
}
