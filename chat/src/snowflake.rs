//! Snowflake ids: 42 bits of milliseconds since 2015-01-01 (Discord's epoch), 5 bits worker,
//! 5 bits process, 12 bits increment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// Generates unique, time-ordered ids. Lock-free; shared by every writer of a node.
#[derive(Debug)]
pub struct Snowflakes {
    /// The worker and process bits, in place (a cluster node's leased id; 0 alone).
    worker: AtomicU64,
    /// (ms << 12) | increment of the last id handed out.
    last: AtomicU64,
}

impl Snowflakes {
    pub fn new(worker: u8, process: u8) -> Self {
        Snowflakes {
            worker: AtomicU64::new(((worker as u64 & 31) << 17) | ((process as u64 & 31) << 12)),
            last: AtomicU64::new(0),
        }
    }

    /// Use the 10-bit id `id` (worker and process bits together) from now on: every node of a
    /// cluster mints with its own, so two nodes never make the same id in one millisecond.
    pub fn set_id(&self, id: u16) {
        self.worker
            .store(((id as u64) & 0x3ff) << 12, Ordering::Relaxed);
    }

    pub fn next(&self) -> u64 {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let now = now_ms.saturating_sub(DISCORD_EPOCH_MS) << 12;
        let mut cur = self.last.load(Ordering::Relaxed);
        loop {
            // Monotonic even if the clock steps back or 4096 ids are taken in one millisecond.
            let next = if now > cur { now } else { cur + 1 };
            match self
                .last
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let ms = next >> 12;
                    let inc = next & 0xfff;
                    return (ms << 22) | self.worker.load(Ordering::Relaxed) | inc;
                }
                Err(c) => cur = c,
            }
        }
    }
}

/// Milliseconds since the Unix epoch encoded in a snowflake.
pub fn timestamp_ms(id: u64) -> u64 {
    (id >> 22) + DISCORD_EPOCH_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_with_different_ids_never_collide() {
        let (a, b) = (Snowflakes::new(0, 0), Snowflakes::new(0, 0));
        a.set_id(1);
        b.set_id(1023);
        let ids: std::collections::HashSet<u64> =
            (0..5000).flat_map(|_| [a.next(), b.next()]).collect();
        assert_eq!(ids.len(), 10_000);
        assert_eq!((a.next() >> 12) & 0x3ff, 1);
        assert_eq!((b.next() >> 12) & 0x3ff, 1023);
    }

    #[test]
    fn unique_and_ordered() {
        let s = Snowflakes::new(1, 2);
        let ids: Vec<u64> = (0..10_000).map(|_| s.next()).collect();
        assert!(ids.windows(2).all(|w| w[1] > w[0]));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(timestamp_ms(ids[0]).abs_diff(now) < 5_000);
        assert_eq!((ids[0] >> 17) & 31, 1);
        assert_eq!((ids[0] >> 12) & 31, 2);
    }
}
