//! Picks who is heard. Levels come from the RFC 6464 audio-level header extension (0 = loudest,
//! 127 = silence, in -dBov); no audio is decoded.
//!
//! Three steps, each cheap:
//! 1. Per packet, [`SpeakerLevel::observe`] smooths the level: fast attack so a new talker is
//!    noticed within a few packets, slow release so a speaker is not dropped between words.
//! 2. Per tick (every [`SelectorConfig::tick`]), [`SpeakerSelector::update`] ranks the room:
//!    an outsider replaces the weakest selected speaker only when louder by
//!    [`SelectorConfig::hysteresis_db`] or when that speaker fell silent for longer than
//!    [`SelectorConfig::hang`]. A silent speaker keeps its seat while nobody needs it, so its
//!    next talk spurt is forwarded from the first packet.
//! 3. [`assign_slots`] maps the ranking onto one listener's K slots, keeping incumbents in their
//!    slot (so a listener's streams do not reshuffle) and never giving a listener their own voice.

use std::time::{Duration, Instant};

use crate::ids::ParticipantIdx;

/// Tunables of speaker selection, with the reasons for the defaults.
#[derive(Debug, Clone, Copy)]
pub struct SelectorConfig {
    /// How often slots are re-decided. 50 ms: a new speaker gets a slot within about
    /// tick + three packets of attack (< 150 ms), well inside the 300 ms goal.
    pub tick: Duration,
    /// Loudness above which a speaker counts as talking, in dB above silence (127 - level).
    /// 127 - 72 = -72 dBov: quieter than any real voice through a microphone.
    pub active_above: f32,
    /// A challenger must be this much louder than the weakest selected speaker (dB).
    pub hysteresis_db: f32,
    /// A selected speaker who stops talking keeps the slot this long (pauses between words).
    pub hang: Duration,
    /// Attack and release smoothing per packet (0..1, weight of the new sample).
    pub attack: f32,
    pub release: f32,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        SelectorConfig {
            tick: Duration::from_millis(50),
            active_above: 55.0,
            hysteresis_db: 6.0,
            hang: Duration::from_millis(1000),
            attack: 0.5,
            release: 0.08,
        }
    }
}

/// Smoothed loudness of one sender, updated per packet without allocation.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpeakerLevel {
    /// dB above silence: 127 - level, smoothed.
    loudness: f32,
    last_heard: Option<Instant>,
    last_active: Option<Instant>,
}

impl SpeakerLevel {
    /// `level` is the RFC 6464 value (0..=127, -dBov). Values above 127 are clamped.
    pub fn observe(&mut self, now: Instant, level: u8, cfg: &SelectorConfig) {
        let loud = 127.0 - level.min(127) as f32;
        let w = if loud > self.loudness {
            cfg.attack
        } else {
            cfg.release
        };
        self.loudness += w * (loud - self.loudness);
        self.last_heard = Some(now);
        if self.loudness > cfg.active_above {
            self.last_active = Some(now);
        }
    }

    pub fn loudness(&self) -> f32 {
        self.loudness
    }

    /// Talking now (loud and heard recently).
    pub fn is_active(&self, now: Instant, cfg: &SelectorConfig) -> bool {
        self.loudness > cfg.active_above
            && self
                .last_heard
                .is_some_and(|t| now.saturating_duration_since(t) < cfg.hang / 2)
    }

    /// Within the hang time of having talked.
    pub fn is_holding(&self, now: Instant, cfg: &SelectorConfig) -> bool {
        self.last_active
            .is_some_and(|t| now.saturating_duration_since(t) < cfg.hang)
    }

    /// Forget everything (on mute): the speaker must talk again to be selected.
    pub fn reset(&mut self) {
        *self = SpeakerLevel::default();
    }
}

/// One room member as the selector sees it on a tick.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub idx: ParticipantIdx,
    /// May be forwarded at all (connected, not muted, has SPEAK).
    pub eligible: bool,
    pub level: SpeakerLevel,
}

/// The room's ranking of selected speakers, loudest first.
#[derive(Debug, Clone)]
pub struct SpeakerSelector {
    cfg: SelectorConfig,
    capacity: usize,
    selected: Vec<(ParticipantIdx, f32)>,
}

impl SpeakerSelector {
    /// `capacity` is the largest K in the room plus one (a listener never hears themself).
    pub fn new(cfg: SelectorConfig, capacity: usize) -> Self {
        SpeakerSelector {
            cfg,
            capacity,
            selected: Vec::with_capacity(capacity.max(1) + 1),
        }
    }

    pub fn config(&self) -> &SelectorConfig {
        &self.cfg
    }

    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        if self.selected.capacity() < capacity + 1 {
            self.selected.reserve(capacity + 1 - self.selected.len());
        }
        self.selected.truncate(capacity);
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Drop a participant that left.
    pub fn forget(&mut self, idx: ParticipantIdx) {
        self.selected.retain(|(i, _)| *i != idx);
    }

    /// Selected speakers, loudest first, with their smoothed loudness.
    pub fn ranked(&self) -> &[(ParticipantIdx, f32)] {
        &self.selected
    }

    /// Re-rank. `candidates` are all room members; order does not matter.
    pub fn update(&mut self, now: Instant, candidates: &[Candidate]) {
        let cfg = self.cfg;
        // Refresh incumbents; drop those gone or ineligible. A silent incumbent keeps its seat
        // until a challenger needs it (below): dropping it on silence alone would cut the first
        // packets of its next talk spurt while it waits to be re-selected.
        self.selected.retain_mut(
            |(idx, loud)| match candidates.iter().find(|c| c.idx == *idx) {
                Some(c) if c.eligible => {
                    *loud = c.level.loudness();
                    true
                }
                _ => false,
            },
        );
        // Challengers, loudest first (no allocation: repeated max search, n is a room size).
        let mut taken_floor = f32::INFINITY;
        loop {
            let best = candidates
                .iter()
                .filter(|c| c.eligible && c.level.is_active(now, &cfg))
                .filter(|c| !self.selected.iter().any(|(i, _)| *i == c.idx))
                .filter(|c| c.level.loudness() <= taken_floor)
                .max_by(|a, b| a.level.loudness().total_cmp(&b.level.loudness()));
            let Some(best) = best else { break };
            taken_floor = best.level.loudness();
            let loud = best.level.loudness();
            if self.selected.len() < self.capacity {
                self.selected.push((best.idx, loud));
                continue;
            }
            // Full: replace the weakest incumbent if clearly beaten or no longer talking.
            let (wi, weakest) = self
                .selected
                .iter()
                .enumerate()
                .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
                .map(|(i, s)| (i, *s))
                .expect("capacity > 0 and full");
            let weakest_holding = candidates
                .iter()
                .find(|c| c.idx == weakest.0)
                .is_some_and(|c| c.level.is_holding(now, &cfg));
            if loud > weakest.1 + cfg.hysteresis_db || !weakest_holding {
                self.selected[wi] = (best.idx, loud);
            } else {
                break;
            }
            // Guard against equal loudness looping forever on the same candidate.
            taken_floor = loud - f32::EPSILON.max(loud.abs() * 1e-6);
        }
        self.selected.sort_by(|a, b| b.1.total_cmp(&a.1));
    }
}

/// Map `ranked` speakers onto one listener's slots. Calls `changed(slot, new)` for every slot
/// whose speaker changes. Incumbents that are still among the listener's top K keep their slot.
/// Speakers the listener cannot hear (`audible` false: DAVE voice for a listener without DAVE)
/// are passed over, so the next ranked speaker gets the slot; the ranking itself is the room's
/// and holds only the largest K + 1, so such a listener may be left with free slots.
pub fn assign_slots(
    listener: ParticipantIdx,
    slots: &mut [Option<ParticipantIdx>],
    ranked: &[(ParticipantIdx, f32)],
    audible: impl Fn(ParticipantIdx) -> bool,
    mut changed: impl FnMut(usize, Option<ParticipantIdx>),
) {
    let k = slots.len();
    let wanted = || {
        ranked
            .iter()
            .map(|(i, _)| *i)
            .filter(|i| *i != listener && audible(*i))
            .take(k)
    };
    // Free slots whose speaker is no longer wanted.
    for (n, slot) in slots.iter_mut().enumerate() {
        if let Some(cur) = *slot {
            if !wanted().any(|w| w == cur) {
                *slot = None;
                changed(n, None);
            }
        }
    }
    // Give newcomers the free slots, lowest index first.
    for w in wanted() {
        if slots.contains(&Some(w)) {
            continue;
        }
        if let Some(n) = slots.iter().position(|s| s.is_none()) {
            slots[n] = Some(w);
            changed(n, Some(w));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: u32) -> ParticipantIdx {
        ParticipantIdx(i)
    }

    struct Sim {
        t0: Instant,
        cfg: SelectorConfig,
        levels: Vec<SpeakerLevel>,
    }

    impl Sim {
        fn new(n: usize) -> Self {
            Sim {
                t0: Instant::now(),
                cfg: SelectorConfig::default(),
                levels: vec![SpeakerLevel::default(); n],
            }
        }
        /// Feed `ms` of 20 ms packets with the given RFC 6464 levels per speaker.
        fn run(&mut self, sel: &mut SpeakerSelector, from_ms: u64, ms: u64, lv: &[u8]) {
            let mut t = from_ms;
            while t < from_ms + ms {
                let now = self.t0 + Duration::from_millis(t);
                for (i, l) in lv.iter().enumerate() {
                    self.levels[i].observe(now, *l, &self.cfg);
                }
                if t.is_multiple_of(60) {
                    let c: Vec<Candidate> = self
                        .levels
                        .iter()
                        .enumerate()
                        .map(|(i, l)| Candidate {
                            idx: p(i as u32),
                            eligible: true,
                            level: *l,
                        })
                        .collect();
                    sel.update(now, &c);
                }
                t += 20;
            }
        }
    }

    fn ids(sel: &SpeakerSelector) -> Vec<u32> {
        sel.ranked().iter().map(|(i, _)| i.0).collect()
    }

    #[test]
    fn loudest_are_selected_and_silence_is_not() {
        let mut s = Sim::new(4);
        let mut sel = SpeakerSelector::new(s.cfg, 2);
        s.run(&mut sel, 0, 400, &[30, 127, 20, 50]);
        assert_eq!(ids(&sel), vec![2, 0]);
    }

    #[test]
    fn close_challenger_does_not_flap_but_clear_one_wins() {
        let mut s = Sim::new(3);
        let mut sel = SpeakerSelector::new(s.cfg, 2);
        s.run(&mut sel, 0, 400, &[30, 32, 127]);
        assert_eq!(ids(&sel), vec![0, 1]);
        // Speaker 2 slightly louder than 1 (2 dB): stays out.
        s.run(&mut sel, 400, 1000, &[30, 32, 30]);
        assert_eq!(ids(&sel), vec![0, 1]);
        // Clearly louder (12 dB): takes the weakest place.
        s.run(&mut sel, 1400, 300, &[30, 32, 20]);
        assert_eq!(ids(&sel), vec![2, 0]);
    }

    #[test]
    fn a_silent_speaker_keeps_the_seat_until_a_challenger_needs_it() {
        let mut s = Sim::new(3);
        let mut sel = SpeakerSelector::new(s.cfg, 2);
        s.run(&mut sel, 0, 400, &[30, 30, 127]);
        assert_eq!(ids(&sel).len(), 2);
        // 1 stops talking; nobody else wants a seat: it keeps it, so its next talk spurt is
        // forwarded from the first packet.
        s.run(&mut sel, 400, 3000, &[30, 127, 127]);
        let mut got = ids(&sel);
        got.sort();
        assert_eq!(got, vec![0, 1]);
        // 2 starts talking while 1 has been silent past the hang time: 2 takes the seat.
        s.run(&mut sel, 3000, 3400, &[30, 127, 30]);
        let mut got = ids(&sel);
        got.sort();
        assert_eq!(got, vec![0, 2]);
    }

    #[test]
    fn slots_keep_incumbents_and_skip_self() {
        let mut slots = [None; 2];
        let mut changes = vec![];
        let ranked = [(p(1), 90.0), (p(2), 80.0), (p(3), 70.0)];
        assign_slots(
            p(1),
            &mut slots,
            &ranked,
            |_| true,
            |n, w| changes.push((n, w)),
        );
        assert_eq!(slots, [Some(p(2)), Some(p(3))]);
        changes.clear();
        // 4 becomes loudest; 2 remains; 3 falls off; 4 takes 3's slot; 2 does not move.
        let ranked = [(p(4), 95.0), (p(1), 90.0), (p(2), 80.0), (p(3), 70.0)];
        assign_slots(
            p(1),
            &mut slots,
            &ranked,
            |_| true,
            |n, w| changes.push((n, w)),
        );
        assert_eq!(slots, [Some(p(2)), Some(p(4))]);
        assert_eq!(changes, vec![(1, None), (1, Some(p(4)))]);
    }

    #[test]
    fn slots_pass_over_inaudible_speakers() {
        let mut slots = [None; 2];
        let mut changes = vec![];
        let ranked = [(p(2), 95.0), (p(3), 90.0), (p(4), 80.0)];
        // 2 turns out inaudible to listener 1 (DAVE voice, no DAVE): 3 and 4 get the slots.
        assign_slots(p(1), &mut slots, &ranked, |_| true, |_, _| {});
        assert_eq!(slots, [Some(p(2)), Some(p(3))]);
        assign_slots(
            p(1),
            &mut slots,
            &ranked,
            |i| i != p(2),
            |n, w| changes.push((n, w)),
        );
        assert_eq!(slots, [Some(p(4)), Some(p(3))], "3 keeps its slot");
        assert_eq!(changes, vec![(0, None), (0, Some(p(4)))]);
        // Nobody audible left: the slots are freed, not filled with what cannot be heard.
        changes.clear();
        assign_slots(
            p(1),
            &mut slots,
            &ranked,
            |_| false,
            |n, w| changes.push((n, w)),
        );
        assert_eq!(slots, [None, None]);
        assert_eq!(changes, vec![(0, None), (1, None)]);
    }
}
