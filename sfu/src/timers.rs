//! When each participant's WebRTC session next needs `handle_timeout`, kept in a min-heap so
//! the node's wake-up costs O(log N) instead of a scan over every participant.
//!
//! Entries are never removed in place. A participant remembers the time of its one live entry
//! (`armed`); an entry whose time differs from that is stale and skipped when it comes up. A
//! new deadline is pushed only when it is earlier than the armed one: a later deadline waits
//! for the armed entry to fire and is pushed then, so the heap grows by at most one entry per
//! deadline that moves earlier, not one per packet.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, u32)>>,
}

impl TimerQueue {
    /// Make sure participant `idx` is woken no later than `at`. `armed` is the participant's
    /// record of its live entry.
    pub fn arm(&mut self, idx: u32, at: Instant, armed: &mut Option<Instant>) {
        if armed.is_none_or(|a| at < a) {
            self.heap.push(Reverse((at, idx)));
            *armed = Some(at);
        }
    }

    /// The earliest entry's time (it may be stale: an early, harmless wake-up).
    pub fn peek(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// The next entry due at `now`: (its time, participant). The caller checks it against the
    /// participant's `armed` time and skips it when they differ.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, u32)> {
        match self.heap.peek() {
            Some(Reverse((t, _))) if *t <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_later_deadline_does_not_push_and_an_earlier_one_does() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let mut armed = None;
        q.arm(3, t0 + Duration::from_millis(50), &mut armed);
        q.arm(3, t0 + Duration::from_millis(80), &mut armed);
        assert_eq!(q.len(), 1);
        assert_eq!(armed, Some(t0 + Duration::from_millis(50)));
        q.arm(3, t0 + Duration::from_millis(10), &mut armed);
        assert_eq!(q.len(), 2);
        assert_eq!(q.peek(), Some(t0 + Duration::from_millis(10)));
        // Nothing is due before its time; due entries come out in time order.
        assert_eq!(q.pop_due(t0), None);
        let (t, i) = q.pop_due(t0 + Duration::from_millis(60)).expect("due");
        assert_eq!((t, i), (t0 + Duration::from_millis(10), 3));
        // The 50 ms entry is stale now (armed says 10 ms): the caller can tell.
        let (t, _) = q.pop_due(t0 + Duration::from_millis(60)).expect("due");
        assert_ne!(Some(t), armed);
        assert_eq!(q.pop_due(t0 + Duration::from_millis(60)), None);
    }

    #[test]
    fn many_participants_come_out_in_deadline_order() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let mut armed = vec![None; 100];
        for i in 0..100u32 {
            let at = t0 + Duration::from_micros(((i * 7919) % 100) as u64 * 10);
            q.arm(i, at, &mut armed[i as usize]);
        }
        let mut last = t0;
        let mut n = 0;
        while let Some((t, _)) = q.pop_due(t0 + Duration::from_secs(1)) {
            assert!(t >= last);
            last = t;
            n += 1;
        }
        assert_eq!(n, 100);
    }
}
