//! Which transport nonce counters a native session has accepted. A native client's packets
//! carry a 32-bit counter (the AEAD nonce); an attacker who captured one could send it again
//! and it would authenticate, so the node keeps the highest counter seen and a 64-bit mask of
//! the ones below it. Counters compare by serial-number arithmetic (RFC 1982): songbird starts
//! at a random value and both clients wrap at 2³², so "newer" means "ahead by less than 2³¹".
//! The window starts at the first packet that authenticates.

/// Counters within this distance below the highest are remembered; older ones are refused.
pub const WINDOW: u32 = 64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// The highest counter accepted, once one was.
    top: Option<u32>,
    /// Bit `i`: counter `top - i` was accepted.
    seen: u64,
}

impl ReplayWindow {
    /// Whether `counter` is new (and, if so, record it). Call only for packets that
    /// authenticated: a forged packet must not move the window.
    pub fn accept(&mut self, counter: u32) -> bool {
        let Some(top) = self.top else {
            self.top = Some(counter);
            self.seen = 1;
            return true;
        };
        let ahead = counter.wrapping_sub(top) as i32;
        if ahead > 0 {
            self.seen = if ahead as u32 >= WINDOW {
                1
            } else {
                (self.seen << ahead) | 1
            };
            self.top = Some(counter);
            return true;
        }
        let behind = top.wrapping_sub(counter);
        if behind >= WINDOW {
            return false;
        }
        let bit = 1u64 << behind;
        if self.seen & bit != 0 {
            return false;
        }
        self.seen |= bit;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_is_accepted_once_in_any_order_within_the_window() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(100));
        assert!(!w.accept(100), "a replay");
        assert!(w.accept(102));
        assert!(w.accept(101), "late but new");
        assert!(!w.accept(101));
        assert!(w.accept(102 - 63), "the oldest the window holds");
        assert!(!w.accept(102 - 64), "older than the window");
        assert!(w.accept(1000), "a jump ahead");
        assert!(!w.accept(102), "now far behind");
    }

    #[test]
    fn the_counter_wraps() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(u32::MAX - 1));
        assert!(w.accept(u32::MAX));
        assert!(w.accept(0), "0 follows 2^32-1");
        assert!(w.accept(1));
        assert!(!w.accept(u32::MAX), "behind across the wrap");
        assert!(
            w.accept(u32::MAX - 2),
            "still inside the window across the wrap"
        );
    }

    #[test]
    fn half_the_space_away_is_behind_not_ahead() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(10));
        assert!(
            !w.accept(10u32.wrapping_add(1 << 31)),
            "2^31 ahead counts as behind"
        );
        assert!(w.accept(10 + (1 << 31) - 1), "just under 2^31 ahead is new");
    }

    #[test]
    fn a_random_order_of_unique_counters_within_the_window_is_all_accepted_once() {
        // Deterministic shuffle of 0..64 around a start near the wrap.
        let start = u32::MAX - 20;
        let mut order: Vec<u32> = (0..64).collect();
        let mut x = 0x2545_f491u32;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            order.swap(i, x as usize % (i + 1));
        }
        let mut w = ReplayWindow::default();
        assert!(w.accept(start.wrapping_add(63)), "the newest first");
        for o in &order[..] {
            let c = start.wrapping_add(*o);
            assert_eq!(w.accept(c), *o != 63, "counter {o}");
        }
        for o in 0..64u32 {
            assert!(!w.accept(start.wrapping_add(o)), "replay of {o}");
        }
    }
}
