//! Loss repair on the trunk (sans-IO, time passed in).
//!
//! The sender keeps its recent datagrams per stream ([`SendHistory`]); the receiver
//! ([`ReceiveTracker`]) notices sequence gaps, waits a few milliseconds in case the packet was
//! only reordered, then asks for it on the control stream (NACK) and asks again every
//! `retry_after` until it arrives, `max_nacks` requests were made, or it is older than
//! `give_up_after` (live audio has no use for it then). Retransmission rather than FEC because a
//! trunk's round trip is short next to a listener's jitter buffer, and it costs nothing when
//! nothing is lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How the receiver asks for lost packets.
#[derive(Debug, Clone, Copy)]
pub struct RepairConfig {
    /// A gap is NACKed only after it persisted this long (reordering on the path is not loss).
    pub reorder_wait: Duration,
    /// Ask again after this long without the packet (about one round trip plus margin; the
    /// trunk sets it from QUIC's RTT estimate).
    pub retry_after: Duration,
    /// Requests per missing packet before giving up.
    pub max_nacks: u8,
    /// A packet missing longer than this is abandoned: too late for live audio.
    pub give_up_after: Duration,
    /// Most missing packets tracked per stream; a longer outage is not repaired.
    pub max_missing: usize,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            reorder_wait: Duration::from_millis(10),
            retry_after: Duration::from_millis(60),
            max_nacks: 4,
            give_up_after: Duration::from_millis(600),
            max_missing: 128,
        }
    }
}

impl RepairConfig {
    /// Retry interval for a measured round trip: 1.25 × RTT + 10 ms, within 20–500 ms.
    pub fn retry_for_rtt(rtt: Duration) -> Duration {
        (rtt + rtt / 4 + Duration::from_millis(10))
            .clamp(Duration::from_millis(20), Duration::from_millis(500))
    }
}

/// Datagrams kept per stream for retransmission: 512 × 20 ms ≈ 10 s of audio.
const HISTORY: usize = 512;

/// The sender's recent datagrams of one stream, by trunk sequence number.
pub struct SendHistory {
    slots: Box<[Option<(u16, Bytes)>]>,
}

impl Default for SendHistory {
    fn default() -> Self {
        SendHistory {
            slots: vec![None; HISTORY].into_boxed_slice(),
        }
    }
}

impl SendHistory {
    pub fn record(&mut self, seq: u16, datagram: Bytes) {
        self.slots[seq as usize % HISTORY] = Some((seq, datagram));
    }

    pub fn get(&self, seq: u16) -> Option<&Bytes> {
        match &self.slots[seq as usize % HISTORY] {
            Some((s, d)) if *s == seq => Some(d),
            _ => None,
        }
    }
}

/// What the receiver counted for one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReceiveStats {
    /// Distinct packets received (first copies).
    pub received: u64,
    /// Copies of packets already received.
    pub duplicates: u64,
    /// Packets that arrived after being NACKed.
    pub recovered: u64,
    /// Packets that arrived late but before any NACK (reordering).
    pub reordered: u64,
    /// NACK requests made (one per sequence number per request).
    pub nacked: u64,
    /// Packets given up on: lost after repair.
    pub abandoned: u64,
    /// Packets too old to place (behind the duplicate window).
    pub too_old: u64,
}

/// How a packet arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// In order or ahead (maybe opening a gap).
    New,
    /// Filled a gap that had been NACKed.
    Recovered,
    /// Filled a gap before it was NACKed.
    Reordered,
    /// Already had it: drop.
    Duplicate,
    /// Behind the window: drop.
    TooOld,
}

impl Arrival {
    /// Whether the packet should be used.
    pub fn is_new(self) -> bool {
        matches!(self, Arrival::New | Arrival::Recovered | Arrival::Reordered)
    }
}

/// Sequence numbers remembered for duplicate detection.
const WINDOW: u64 = 1024;

struct Gap {
    seen_at: Instant,
    nacks: u8,
    next_at: Instant,
}

/// The receiver's view of one stream.
pub struct ReceiveTracker {
    highest: Option<u64>,
    missing: BTreeMap<u64, Gap>,
    /// `ext + 1` of the packet held in each window slot (0 = none).
    seen: Box<[u64]>,
    stats: ReceiveStats,
}

impl Default for ReceiveTracker {
    fn default() -> Self {
        ReceiveTracker {
            highest: None,
            missing: BTreeMap::new(),
            seen: vec![0; WINDOW as usize].into_boxed_slice(),
            stats: ReceiveStats::default(),
        }
    }
}

impl ReceiveTracker {
    pub fn stats(&self) -> ReceiveStats {
        self.stats
    }

    /// Packets currently missing and still being repaired.
    pub fn missing(&self) -> usize {
        self.missing.len()
    }

    /// Extend a 16-bit sequence number to the value nearest the highest seen.
    fn extend(&self, seq: u16) -> u64 {
        let Some(h) = self.highest else {
            // Start well above zero so packets from before the first one still extend.
            return (1 << 16) + seq as u64;
        };
        let base = h & !0xFFFF;
        let candidates = [
            base.wrapping_sub(1 << 16) | seq as u64,
            base | seq as u64,
            (base + (1 << 16)) | seq as u64,
        ];
        *candidates
            .iter()
            .min_by_key(|c| c.abs_diff(h))
            .expect("three candidates")
    }

    pub fn on_packet(&mut self, now: Instant, seq: u16, cfg: &RepairConfig) -> Arrival {
        let ext = self.extend(seq);
        let slot = (ext % WINDOW) as usize;
        if self.seen[slot] == ext + 1 {
            self.stats.duplicates += 1;
            return Arrival::Duplicate;
        }
        if let Some(h) = self.highest {
            if ext + WINDOW <= h {
                self.stats.too_old += 1;
                return Arrival::TooOld;
            }
        }
        self.seen[slot] = ext + 1;
        self.stats.received += 1;
        if let Some(g) = self.missing.remove(&ext) {
            return if g.nacks > 0 {
                self.stats.recovered += 1;
                Arrival::Recovered
            } else {
                self.stats.reordered += 1;
                Arrival::Reordered
            };
        }
        match self.highest {
            Some(h) if ext <= h => {
                // Older than the highest but never missing: it was given up on, or it predates
                // tracking. Usable, counted as reordered.
                self.stats.reordered += 1;
                Arrival::Reordered
            }
            Some(h) => {
                let first = (h + 1).max(ext.saturating_sub(cfg.max_missing as u64));
                self.stats.abandoned += first - (h + 1);
                for g in first..ext {
                    self.missing.insert(
                        g,
                        Gap {
                            seen_at: now,
                            nacks: 0,
                            next_at: now + cfg.reorder_wait,
                        },
                    );
                }
                while self.missing.len() > cfg.max_missing {
                    self.missing.pop_first();
                    self.stats.abandoned += 1;
                }
                self.highest = Some(ext);
                Arrival::New
            }
            None => {
                self.highest = Some(ext);
                Arrival::New
            }
        }
    }

    /// Sequence numbers to NACK now (appended to `out`); abandons what is too old.
    pub fn poll_nacks(&mut self, now: Instant, cfg: &RepairConfig, out: &mut Vec<u16>) {
        let mut abandoned = 0;
        let before = out.len();
        self.missing.retain(|ext, g| {
            if now.saturating_duration_since(g.seen_at) >= cfg.give_up_after
                || (g.nacks >= cfg.max_nacks && now >= g.next_at)
            {
                abandoned += 1;
                return false;
            }
            if now >= g.next_at && g.nacks < cfg.max_nacks {
                out.push(*ext as u16);
                g.nacks += 1;
                g.next_at = now + cfg.retry_after;
            }
            true
        });
        self.stats.abandoned += abandoned;
        self.stats.nacked += (out.len() - before) as u64;
    }

    /// When [`ReceiveTracker::poll_nacks`] has work next.
    pub fn next_timeout(&self, cfg: &RepairConfig) -> Option<Instant> {
        self.missing
            .values()
            .map(|g| g.next_at.min(g.seen_at + cfg.give_up_after))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn history_returns_only_the_exact_sequence_number() {
        let mut h = SendHistory::default();
        h.record(7, Bytes::from_static(b"a"));
        assert_eq!(h.get(7).unwrap(), &Bytes::from_static(b"a"));
        h.record(7 + HISTORY as u16, Bytes::from_static(b"b"));
        assert!(h.get(7).is_none(), "overwritten by a later packet");
        assert!(h.get(8).is_none());
    }

    #[test]
    fn a_gap_is_nacked_after_the_reorder_wait_then_retried_then_abandoned() {
        let cfg = RepairConfig::default();
        let t0 = Instant::now();
        let mut r = ReceiveTracker::default();
        let mut out = Vec::new();
        assert_eq!(r.on_packet(t0, 10, &cfg), Arrival::New);
        assert_eq!(r.on_packet(t0, 13, &cfg), Arrival::New); // 11 and 12 missing
        r.poll_nacks(t0, &cfg, &mut out);
        assert!(
            out.is_empty(),
            "reordering gets {:?} first",
            cfg.reorder_wait
        );
        assert_eq!(r.next_timeout(&cfg), Some(t0 + cfg.reorder_wait));
        r.poll_nacks(t0 + ms(10), &cfg, &mut out);
        assert_eq!(out, vec![11, 12]);
        out.clear();
        r.poll_nacks(t0 + ms(30), &cfg, &mut out);
        assert!(out.is_empty(), "not again before retry_after");
        r.poll_nacks(t0 + ms(70), &cfg, &mut out);
        assert_eq!(out, vec![11, 12]);
        out.clear();
        // 11 arrives (repaired); 12 never does.
        assert_eq!(r.on_packet(t0 + ms(75), 11, &cfg), Arrival::Recovered);
        for t in [130, 190, 250, 310] {
            r.poll_nacks(t0 + ms(t), &cfg, &mut out);
        }
        assert_eq!(out, vec![12, 12], "four requests in all, then given up");
        assert_eq!(r.missing(), 0);
        let s = r.stats();
        assert_eq!(
            (s.received, s.recovered, s.abandoned, s.nacked),
            (3, 1, 1, 6)
        );
    }

    #[test]
    fn reordering_duplicates_and_wrap() {
        let cfg = RepairConfig::default();
        let t = Instant::now();
        let mut r = ReceiveTracker::default();
        assert_eq!(r.on_packet(t, 65534, &cfg), Arrival::New);
        assert_eq!(r.on_packet(t, 0, &cfg), Arrival::New); // 65535 missing, across the wrap
        assert_eq!(r.on_packet(t, 65535, &cfg), Arrival::Reordered);
        assert_eq!(r.on_packet(t, 65535, &cfg), Arrival::Duplicate);
        assert_eq!(r.on_packet(t, 1, &cfg), Arrival::New);
        assert_eq!(r.missing(), 0);
        assert_eq!(r.on_packet(t, 1, &cfg), Arrival::Duplicate);
        // Far behind the window.
        for s in 2..1500u16 {
            r.on_packet(t, s, &cfg);
        }
        assert_eq!(r.on_packet(t, 3, &cfg), Arrival::TooOld);
        assert_eq!(r.stats().duplicates, 2);
    }

    #[test]
    fn a_long_outage_tracks_at_most_max_missing() {
        let cfg = RepairConfig::default();
        let t = Instant::now();
        let mut r = ReceiveTracker::default();
        r.on_packet(t, 0, &cfg);
        r.on_packet(t, 1000, &cfg);
        assert_eq!(r.missing(), cfg.max_missing);
        assert_eq!(r.stats().abandoned, 999 - cfg.max_missing as u64);
    }

    #[test]
    fn any_arrival_order_never_panics_and_counts_add_up() {
        let cfg = RepairConfig::default();
        let t0 = Instant::now();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..50 {
            let mut r = ReceiveTracker::default();
            let mut out = Vec::new();
            let mut sent = 0u64;
            for i in 0..400u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Mostly in order, sometimes lost, duplicated or far off.
                let seq = match x % 20 {
                    0 => continue,
                    1 => (i as u16).wrapping_sub((x >> 8) as u16 % 50),
                    2 => (x >> 16) as u16,
                    _ => i as u16 + round,
                };
                sent += 1;
                r.on_packet(t0 + ms(i * 20), seq, &cfg);
                r.poll_nacks(t0 + ms(i * 20), &cfg, &mut out);
            }
            let s = r.stats();
            assert!(s.received + s.duplicates + s.too_old <= sent);
        }
    }
}
