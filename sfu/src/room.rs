//! A room: the members of one voice channel on this node and its speaker ranking.

use crate::ids::ParticipantIdx;
use crate::speaker_selector::{SelectorConfig, SpeakerSelector};

pub(crate) struct Room {
    pub members: Vec<ParticipantIdx>,
    pub selector: SpeakerSelector,
    /// Reused per tick to compute one listener's slot map without allocating.
    pub slot_scratch: Vec<Option<ParticipantIdx>>,
}

impl Room {
    pub fn new(cfg: SelectorConfig) -> Self {
        Room {
            members: Vec::new(),
            selector: SpeakerSelector::new(cfg, 1),
            slot_scratch: Vec::with_capacity(16),
        }
    }

    /// A member with `k` slots joined: the ranking must hold k + 1 (nobody hears themself).
    pub fn refresh_capacity(&mut self, k: usize) {
        let cap = (k + 1).max(self.selector.capacity());
        self.selector.set_capacity(cap);
    }

    pub fn set_capacity(&mut self, cap: usize) {
        self.selector.set_capacity(cap);
    }

    pub fn selector_forget(&mut self, idx: ParticipantIdx) {
        self.selector.forget(idx);
    }
}
