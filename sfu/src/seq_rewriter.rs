//! Makes one continuous RTP stream out of the packets of whichever speaker currently owns a slot.
//!
//! A listener's slot is a single SSRC on the wire. When the speaker behind it changes, the new
//! speaker's sequence numbers and timestamps are shifted so that the listener sees no jump:
//! the sequence number continues at +1 and the timestamp advances by the wall-clock time that
//! passed (at least one frame), so the receiver's jitter buffer neither stalls nor rushes.
//! Everything is wrap-aware: incoming 16-bit sequence numbers are extended, timestamps use
//! wrapping arithmetic, and packets that arrive late from before a switch are refused (`None`).

use std::time::{Duration, Instant};

/// Extends 16-bit RTP sequence numbers to 64 bits, choosing the value closest to the highest seen.
#[derive(Debug, Clone, Copy)]
pub struct SeqExtender {
    max: Option<u64>,
}

impl SeqExtender {
    pub const fn new() -> Self {
        SeqExtender { max: None }
    }

    pub fn extend(&mut self, seq: u16) -> u64 {
        let Some(max) = self.max else {
            // Start one cycle up so that slightly older packets do not underflow.
            let v = (1u64 << 16) + seq as u64;
            self.max = Some(v);
            return v;
        };
        let roc = max >> 16;
        let candidates = [roc.wrapping_sub(1), roc, roc + 1];
        let mut best = (roc << 16) | seq as u64;
        let mut best_dist = u64::MAX;
        for r in candidates {
            if r == u64::MAX {
                continue;
            }
            let v = (r << 16) | seq as u64;
            let d = v.abs_diff(max);
            if d < best_dist {
                best_dist = d;
                best = v;
            }
        }
        if best > max {
            self.max = Some(best);
        }
        best
    }
}

impl Default for SeqExtender {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Copy)]
struct Source {
    ssrc: u32,
    ext: SeqExtender,
    /// out_seq = in_ext + seq_offset (mod 2^64)
    seq_offset: u64,
    /// out_ts = in_ts + ts_offset (mod 2^32)
    ts_offset: u32,
    /// Output sequence numbers at or below this belong to an earlier source.
    floor: u64,
}

/// Output numbering of one slot.
#[derive(Debug, Clone)]
pub struct SeqRewriter {
    clock_rate: u32,
    min_gap: u32,
    /// Highest output sequence number emitted so far and the timestamp and time it went with.
    last_seq: u64,
    last_ts: u32,
    last_at: Option<Instant>,
    src: Option<Source>,
    switches: u64,
}

/// A rewritten packet's new numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Extended output sequence number (the upper bits are the SRTP rollover counter).
    pub seq: u64,
    pub timestamp: u32,
    /// The first packet after a change of speaker.
    pub switched: bool,
}

impl SeqRewriter {
    /// `initial_seq`/`initial_ts` are where the output stream starts (normally random).
    /// `frame` is the minimum timestamp advance across a switch (one Opus frame).
    pub fn new(initial_seq: u16, initial_ts: u32, clock_rate: u32, frame: Duration) -> Self {
        let min_gap = (frame.as_micros() as u64 * clock_rate as u64 / 1_000_000) as u32;
        SeqRewriter {
            clock_rate,
            min_gap: min_gap.max(1),
            // Output starts at ROC 0: the first packet gets `initial_seq`.
            last_seq: (initial_seq as u64).wrapping_sub(1),
            last_ts: initial_ts.wrapping_sub(min_gap.max(1)),
            last_at: None,
            src: None,
            switches: 0,
        }
    }

    /// How many times the source behind this slot changed.
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// Rewrite one packet of `ssrc`. `None` means drop it: it is older than the last switch.
    pub fn rewrite(&mut self, now: Instant, ssrc: u32, seq: u16, ts: u32) -> Option<Rewritten> {
        let switched = self.src.map(|s| s.ssrc != ssrc).unwrap_or(true);
        if switched {
            let gap = match self.last_at {
                Some(at) => {
                    let elapsed = now.saturating_duration_since(at);
                    let samples = elapsed.as_micros() as u64 * self.clock_rate as u64 / 1_000_000;
                    (samples.min(u32::MAX as u64 / 2) as u32).max(self.min_gap)
                }
                None => self.min_gap,
            };
            let mut ext = SeqExtender::new();
            let in_ext = ext.extend(seq);
            let out_seq = self.last_seq.wrapping_add(1);
            let out_ts = self.last_ts.wrapping_add(gap);
            self.src = Some(Source {
                ssrc,
                ext,
                seq_offset: out_seq.wrapping_sub(in_ext),
                ts_offset: out_ts.wrapping_sub(ts),
                floor: self.last_seq,
            });
            if self.last_at.is_some() {
                self.switches += 1;
            }
        }
        let src = self.src.as_mut().expect("set above when switching");
        let in_ext = src.ext.extend(seq);
        let out_seq = in_ext.wrapping_add(src.seq_offset);
        // Compare in the signed domain: anything at or behind the floor predates this source.
        if (out_seq.wrapping_sub(src.floor) as i64) <= 0 {
            return None;
        }
        let out_ts = ts.wrapping_add(src.ts_offset);
        if (out_seq.wrapping_sub(self.last_seq) as i64) > 0 {
            self.last_seq = out_seq;
            self.last_ts = out_ts;
            self.last_at = Some(now);
        }
        Some(Rewritten {
            seq: out_seq,
            timestamp: out_ts,
            switched,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);

    fn rw(seq: u16, ts: u32) -> SeqRewriter {
        SeqRewriter::new(seq, ts, 48_000, FRAME)
    }

    #[test]
    fn extender_table() {
        // (sequence of inputs, expected low-relative outputs)
        let cases: &[(&[u16], &[i64])] = &[
            (&[10, 11, 12], &[0, 1, 2]),
            (&[65534, 65535, 0, 1], &[0, 1, 2, 3]),
            (&[5, 3, 6], &[0, -2, 1]),
            (&[65535, 2, 65534], &[0, 3, -1]),
            (&[0, 32767, 32768, 1], &[0, 32767, 32768, 1]),
            (
                &[0, 32767, 32768, 65535, 2],
                &[0, 32767, 32768, 65535, 65538],
            ),
        ];
        for (inputs, expect) in cases {
            let mut e = SeqExtender::new();
            let first = e.extend(inputs[0]) as i64;
            let mut got = vec![0i64];
            for s in &inputs[1..] {
                got.push(e.extend(*s) as i64 - first);
            }
            assert_eq!(&got[..], *expect, "inputs {inputs:?}");
        }
    }

    #[test]
    fn continuous_within_one_source_across_wraps() {
        let t0 = Instant::now();
        let mut r = rw(65530, u32::MAX - 2000);
        let mut prev: Option<Rewritten> = None;
        for i in 0..100u32 {
            let seq = 65520u16.wrapping_add(i as u16);
            let ts = (u32::MAX - 5000).wrapping_add(i * 960);
            let out = r.rewrite(t0 + FRAME * i, 1, seq, ts).unwrap();
            if let Some(p) = prev {
                assert_eq!(out.seq, p.seq + 1);
                assert_eq!(out.timestamp, p.timestamp.wrapping_add(960));
            } else {
                assert_eq!(out.seq as u16, 65530);
            }
            prev = Some(out);
        }
        // 65530 + 99 crosses the 16-bit boundary: the extended value carries the ROC.
        assert!(prev.unwrap().seq > 65535);
    }

    #[test]
    fn switch_continues_numbering_and_advances_time() {
        let t0 = Instant::now();
        let mut r = rw(100, 1000);
        for i in 0..10u32 {
            r.rewrite(t0 + FRAME * i, 0xA, 5000 + i as u16, 7_000_000 + i * 960)
                .unwrap();
        }
        // B starts 100 ms after A's last packet, with wildly different numbering near wrap.
        let at = t0 + FRAME * 9 + Duration::from_millis(100);
        let first_b = r.rewrite(at, 0xB, 65535, u32::MAX - 100).unwrap();
        assert!(first_b.switched);
        assert_eq!(first_b.seq, 110);
        assert_eq!(first_b.timestamp, 1000 + 9 * 960 + 4800);
        let second_b = r
            .rewrite(at + FRAME, 0xB, 0, (u32::MAX - 100).wrapping_add(960))
            .unwrap();
        assert_eq!(second_b.seq, 111);
        assert_eq!(second_b.timestamp, first_b.timestamp + 960);
        assert_eq!(r.switches(), 1);
    }

    #[test]
    fn back_to_back_switch_advances_at_least_a_frame() {
        let t0 = Instant::now();
        let mut r = rw(0, 0);
        let a = r.rewrite(t0, 1, 10, 10).unwrap();
        let b = r.rewrite(t0, 2, 500, 99).unwrap();
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(b.timestamp, a.timestamp + 960);
    }

    #[test]
    fn late_packet_from_before_switch_is_refused() {
        let t0 = Instant::now();
        let mut r = rw(0, 0);
        r.rewrite(t0, 1, 10, 0).unwrap();
        r.rewrite(t0, 2, 20, 0).unwrap();
        r.rewrite(t0, 2, 21, 960).unwrap();
        // Reordered packet of the new source from before its first one: would collide.
        assert_eq!(r.rewrite(t0, 2, 19, 0), None);
        // Reordering inside the source's own range is allowed.
        r.rewrite(t0, 2, 23, 2880).unwrap();
        assert!(r.rewrite(t0, 2, 22, 1920).is_some());
    }

    /// Fuzz-style property: random sources, switches, reordering, wraps. Output sequence numbers
    /// of in-order packets are strictly consecutive, and no output repeats a value from an
    /// earlier source.
    #[test]
    fn randomized_switches_stay_continuous() {
        use rand::{Rng, SeedableRng};
        for seed in 0..50u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let t0 = Instant::now();
            let mut r = rw(rng.gen(), rng.gen());
            let mut now = t0;
            let mut last: Option<Rewritten> = None;
            for _ in 0..40 {
                let ssrc: u32 = rng.gen();
                let mut seq: u16 = rng.gen();
                let mut ts: u32 = rng.gen();
                for _ in 0..rng.gen_range(1..300) {
                    now += FRAME;
                    let out = r.rewrite(now, ssrc, seq, ts).expect("in-order packet");
                    if let Some(p) = last {
                        assert_eq!(out.seq, p.seq + 1, "seed {seed}");
                        let dts = out.timestamp.wrapping_sub(p.timestamp);
                        assert!((960..48_000 * 10).contains(&dts), "seed {seed}: dts {dts}");
                    }
                    last = Some(out);
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(960);
                }
                now += Duration::from_millis(rng.gen_range(0..2000));
            }
        }
    }
}
