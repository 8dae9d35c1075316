//! Who hears whom: the listener↔speaker relation of every slot on the node, both sides in one
//! owner.
//!
//! A listener's slot carries at most one speaker; the forward loop needs the other direction
//! (a speaker's packet goes to every slot that carries it) without a scan. Both directions are
//! kept here and changed only together, so they cannot drift:
//!
//! `speakers[l][s] == Some(sp)`  ⇔  `(l, s)` occurs in `subscribers[sp]`, exactly once.
//!
//! Every change checks the entries it touched with `debug_assert!` (O(K + subscribers) per
//! change, so debug runs of large rooms stay usable); `SlotMap::check` (in tests) checks the whole map.
//! Entries are indexed by slab index and keep their capacity when a participant leaves, so a
//! reused index allocates nothing; reading is a slice, so the forward loop allocates nothing.

use crate::ids::ParticipantIdx;

#[derive(Default)]
pub(crate) struct SlotMap {
    /// `speakers[l][s]`: the speaker listener `l` hears in slot `s`. Empty for an index nobody
    /// holds and for a participant without slots (a remote speaker).
    speakers: Vec<Vec<Option<ParticipantIdx>>>,
    /// `subscribers[sp]`: every `(listener, slot)` whose slot carries `sp`, in assignment order
    /// (the order packets are written).
    subscribers: Vec<Vec<(ParticipantIdx, u8)>>,
    /// `live[i]`: index `i` was added and not removed; only live participants are in the map.
    live: Vec<bool>,
}

impl SlotMap {
    /// `idx` enters with `k` empty slots (`k` ≤ 256: slot numbers are stored as `u8`).
    pub fn add(&mut self, idx: ParticipantIdx, k: usize) {
        assert!(k <= 256, "slot numbers are u8");
        let i = idx.0 as usize;
        if self.live.len() <= i {
            self.live.resize(i + 1, false);
            self.speakers.resize_with(i + 1, Vec::new);
            self.subscribers.resize_with(i + 1, Vec::new);
        }
        assert!(!self.live[i], "{idx} added twice");
        self.live[i] = true;
        self.speakers[i].clear();
        self.speakers[i].resize(k, None);
        debug_assert!(
            self.subscribers[i].is_empty(),
            "{idx} left subscribers behind"
        );
    }

    /// Whether `idx` is in the map.
    pub fn contains(&self, idx: ParticipantIdx) -> bool {
        self.live.get(idx.0 as usize).copied().unwrap_or(false)
    }

    /// `idx` leaves: every slot that carried it is emptied — `freed(listener, slot)` is called
    /// for each, in assignment order — and its own slots stop carrying anyone.
    pub fn remove(&mut self, idx: ParticipantIdx, mut freed: impl FnMut(ParticipantIdx, usize)) {
        if !self.contains(idx) {
            return;
        }
        let i = idx.0 as usize;
        // Take the list out so it can be walked while the listeners' entries change; it is
        // put back empty, keeping its capacity.
        let mut subs = std::mem::take(&mut self.subscribers[i]);
        for &(listener, slot) in &subs {
            let s = &mut self.speakers[listener.0 as usize][slot as usize];
            debug_assert_eq!(*s, Some(idx), "subscriber without the slot");
            *s = None;
            freed(listener, slot as usize);
        }
        subs.clear();
        self.subscribers[i] = subs;
        for slot in 0..self.speakers[i].len() {
            if let Some(sp) = self.speakers[i][slot].take() {
                Self::unsubscribe(&mut self.subscribers[sp.0 as usize], idx, slot);
            }
        }
        self.speakers[i].clear();
        self.live[i] = false;
        debug_assert!(
            self.agrees_around(idx),
            "slot map disagrees after removing {idx}"
        );
    }

    /// Put `speaker` (or nobody) in `listener`'s slot `slot`; returns who was there. Both
    /// sides change together.
    pub fn assign(
        &mut self,
        listener: ParticipantIdx,
        slot: usize,
        speaker: Option<ParticipantIdx>,
    ) -> Option<ParticipantIdx> {
        debug_assert!(self.contains(listener), "{listener} is not in the map");
        debug_assert!(
            speaker.is_none_or(|s| self.contains(s) && s != listener),
            "{listener} cannot hear {speaker:?}"
        );
        let old = std::mem::replace(&mut self.speakers[listener.0 as usize][slot], speaker);
        if old != speaker {
            if let Some(o) = old {
                Self::unsubscribe(&mut self.subscribers[o.0 as usize], listener, slot);
            }
            if let Some(s) = speaker {
                self.subscribers[s.0 as usize].push((listener, slot as u8));
            }
        }
        debug_assert!(
            self.agrees_around(listener)
                && old.is_none_or(|o| self.agrees_around(o))
                && speaker.is_none_or(|s| self.agrees_around(s)),
            "slot map disagrees after {listener} slot {slot}: {old:?} -> {speaker:?}"
        );
        old
    }

    /// `listener`'s slots, each with the speaker it carries (empty for an unknown index).
    pub fn speakers(&self, listener: ParticipantIdx) -> &[Option<ParticipantIdx>] {
        self.speakers
            .get(listener.0 as usize)
            .map_or(&[], |v| v.as_slice())
    }

    /// Every `(listener, slot)` carrying `speaker`, in assignment order.
    pub fn subscribers(&self, speaker: ParticipantIdx) -> &[(ParticipantIdx, u8)] {
        self.subscribers
            .get(speaker.0 as usize)
            .map_or(&[], |v| v.as_slice())
    }

    /// Whether the whole map satisfies its invariant (O(all slots); for tests).
    #[cfg(test)]
    pub fn check(&self) -> Result<(), String> {
        for i in 0..self.live.len() {
            let idx = ParticipantIdx(i as u32);
            if !self.agrees_around(idx) {
                return Err(format!("disagreement around {idx}"));
            }
        }
        Ok(())
    }

    fn unsubscribe(subs: &mut Vec<(ParticipantIdx, u8)>, listener: ParticipantIdx, slot: usize) {
        // `remove`, not `swap_remove`: the order is the order packets are written.
        if let Some(pos) = subs
            .iter()
            .position(|&(l, s)| l == listener && s as usize == slot)
        {
            subs.remove(pos);
        }
    }

    /// The invariant for the entries of `idx`, as listener and as speaker; a participant not in
    /// the map holds no slot and is in no one's.
    fn agrees_around(&self, idx: ParticipantIdx) -> bool {
        let live = self.contains(idx);
        let speakers = self.speakers(idx);
        let subs = self.subscribers(idx);
        if !live {
            return speakers.is_empty() && subs.is_empty();
        }
        let as_listener = speakers.iter().enumerate().all(|(slot, sp)| match sp {
            None => true,
            Some(sp) => {
                *sp != idx
                    && self.contains(*sp)
                    && self
                        .subscribers(*sp)
                        .iter()
                        .filter(|&&(l, s)| l == idx && s as usize == slot)
                        .count()
                        == 1
            }
        });
        let as_speaker = subs.iter().enumerate().all(|(n, &(l, s))| {
            self.speakers(l).get(s as usize) == Some(&Some(idx)) && !subs[..n].contains(&(l, s))
        });
        as_listener && as_speaker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: u32) -> ParticipantIdx {
        ParticipantIdx(i)
    }

    #[test]
    fn assigning_updates_both_sides_and_returns_the_previous_speaker() {
        let mut m = SlotMap::default();
        for i in 0..3 {
            m.add(p(i), 2);
        }
        assert_eq!(m.assign(p(0), 1, Some(p(1))), None);
        assert_eq!(m.speakers(p(0)), &[None, Some(p(1))]);
        assert_eq!(m.subscribers(p(1)), &[(p(0), 1)]);
        // Moving slot 1 to another speaker takes it off the first one's list.
        assert_eq!(m.assign(p(0), 1, Some(p(2))), Some(p(1)));
        assert!(m.subscribers(p(1)).is_empty());
        assert_eq!(m.subscribers(p(2)), &[(p(0), 1)]);
        // Re-assigning the same speaker changes nothing and does not duplicate the entry.
        assert_eq!(m.assign(p(0), 1, Some(p(2))), Some(p(2)));
        assert_eq!(m.subscribers(p(2)), &[(p(0), 1)]);
        assert_eq!(m.assign(p(0), 1, None), Some(p(2)));
        assert!(m.subscribers(p(2)).is_empty());
        assert_eq!(m.speakers(p(0)), &[None, None]);
        m.check().unwrap();
    }

    #[test]
    fn subscribers_keep_assignment_order_when_one_leaves_the_middle() {
        let mut m = SlotMap::default();
        for i in 0..4 {
            m.add(p(i), 1);
        }
        for l in 1..4 {
            m.assign(p(l), 0, Some(p(0)));
        }
        m.assign(p(2), 0, None);
        assert_eq!(m.subscribers(p(0)), &[(p(1), 0), (p(3), 0)]);
    }

    #[test]
    fn removing_a_speaker_frees_every_slot_that_carried_it_and_reports_each() {
        let mut m = SlotMap::default();
        for i in 0..4 {
            m.add(p(i), 2);
        }
        m.assign(p(1), 0, Some(p(0)));
        m.assign(p(2), 1, Some(p(0)));
        m.assign(p(0), 0, Some(p(3))); // the leaver is also a listener
        m.assign(p(3), 0, Some(p(1)));
        let mut freed = Vec::new();
        m.remove(p(0), |l, s| freed.push((l, s)));
        assert_eq!(freed, vec![(p(1), 0), (p(2), 1)]);
        assert_eq!(m.speakers(p(1)), &[None, None]);
        assert_eq!(m.speakers(p(2)), &[None, None]);
        assert!(m.speakers(p(0)).is_empty());
        // Its own subscription is gone from the speaker it heard.
        assert!(m.subscribers(p(3)).is_empty());
        assert_eq!(m.subscribers(p(1)), &[(p(3), 0)]);
        assert!(!m.contains(p(0)));
        m.check().unwrap();
        // The index can be reused, with a different K.
        m.add(p(0), 3);
        assert_eq!(m.speakers(p(0)), &[None, None, None]);
        m.check().unwrap();
    }

    #[test]
    fn the_check_notices_a_one_sided_change() {
        let mut m = SlotMap::default();
        m.add(p(0), 1);
        m.add(p(1), 1);
        m.assign(p(0), 0, Some(p(1)));
        m.check().unwrap();
        m.subscribers[1].clear(); // what a hand-kept mirror could forget
        assert!(m.check().is_err());
        m.subscribers[1].push((p(0), 0));
        m.subscribers[1].push((p(0), 0)); // or write twice
        assert!(m.check().is_err());
    }

    #[test]
    #[should_panic(expected = "added twice")]
    fn adding_a_live_index_twice_is_a_bug() {
        let mut m = SlotMap::default();
        m.add(p(0), 1);
        m.add(p(0), 1);
    }

    /// Many random assign/release/leave/join operations, checked against a model of the
    /// relation (`model[l][s]`) and against the invariant after each one.
    #[test]
    fn random_operations_keep_both_sides_in_agreement() {
        const N: u32 = 12;
        for seed in 1..=64u64 {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut rnd = |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let mut m = SlotMap::default();
            let mut model: Vec<Option<Vec<Option<ParticipantIdx>>>> = vec![None; N as usize];
            for _ in 0..2_000 {
                let i = rnd(N as u64) as u32;
                match (rnd(10), model[i as usize].is_some()) {
                    (_, false) => {
                        let k = rnd(4) as usize; // 0 = a remote speaker
                        m.add(p(i), k);
                        model[i as usize] = Some(vec![None; k]);
                    }
                    (0, true) => {
                        let mut freed = Vec::new();
                        m.remove(p(i), |l, s| freed.push((l, s)));
                        model[i as usize] = None;
                        let mut expected = Vec::new();
                        for (l, slots) in model.iter_mut().enumerate() {
                            for (s, sp) in slots.iter_mut().flatten().enumerate() {
                                if *sp == Some(p(i)) {
                                    *sp = None;
                                    expected.push((p(l as u32), s));
                                }
                            }
                        }
                        freed.sort();
                        assert_eq!(freed, expected, "seed {seed}: freed slots");
                    }
                    (r, true) => {
                        let k = model[i as usize].as_ref().unwrap().len();
                        if k == 0 {
                            continue;
                        }
                        let slot = rnd(k as u64) as usize;
                        let who = if r < 4 {
                            None
                        } else {
                            let s = rnd(N as u64) as u32;
                            (s != i && model[s as usize].is_some()).then_some(p(s))
                        };
                        let old = m.assign(p(i), slot, who);
                        let cell = &mut model[i as usize].as_mut().unwrap()[slot];
                        assert_eq!(old, *cell, "seed {seed}: previous speaker");
                        *cell = who;
                    }
                }
                if let Err(e) = m.check() {
                    panic!("seed {seed}: {e}");
                }
                for (l, slots) in model.iter().enumerate() {
                    let l = p(l as u32);
                    match slots {
                        None => assert!(!m.contains(l) && m.speakers(l).is_empty()),
                        Some(slots) => assert_eq!(m.speakers(l), slots.as_slice()),
                    }
                    let mut subs: Vec<_> = m.subscribers(l).to_vec();
                    subs.sort();
                    let mut expected: Vec<_> = model
                        .iter()
                        .enumerate()
                        .flat_map(|(li, s)| {
                            s.iter().flatten().enumerate().filter_map(move |(si, sp)| {
                                (*sp == Some(l)).then_some((p(li as u32), si as u8))
                            })
                        })
                        .collect();
                    expected.sort();
                    assert_eq!(subs, expected, "seed {seed}: subscribers of {l}");
                }
            }
        }
    }
}
