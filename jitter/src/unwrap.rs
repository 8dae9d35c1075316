//! Extending 16-bit sequence numbers and 32-bit timestamps to 64 bits, wrap-aware.

/// Extends a wrapping counter of `BITS` bits to u64, choosing the value closest to the highest
/// seen (so reordering across the wrap is handled).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unwrapper<const BITS: u32> {
    max: Option<u64>,
}

impl<const BITS: u32> Unwrapper<BITS> {
    pub fn unwrap(&mut self, v: u64) -> u64 {
        let span = 1u64 << BITS;
        let v = v & (span - 1);
        let Some(max) = self.max else {
            // Start one cycle up so that packets just before the first one stay positive.
            let e = span + v;
            self.max = Some(e);
            return e;
        };
        let cycle = max >> BITS;
        let mut best = (cycle << BITS) | v;
        for c in [cycle.wrapping_sub(1), cycle + 1] {
            if c == u64::MAX {
                continue;
            }
            let cand = (c << BITS) | v;
            if cand.abs_diff(max) < best.abs_diff(max) {
                best = cand;
            }
        }
        if best > max {
            self.max = Some(best);
        }
        best
    }
}

pub type SeqUnwrapper = Unwrapper<16>;
pub type TsUnwrapper = Unwrapper<32>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_both_ways() {
        let mut s = SeqUnwrapper::default();
        let a = s.unwrap(65534);
        assert_eq!(s.unwrap(65535), a + 1);
        assert_eq!(s.unwrap(0), a + 2);
        assert_eq!(s.unwrap(65533), a - 1, "late packet from before the wrap");
        assert_eq!(s.unwrap(1), a + 3);
        let mut t = TsUnwrapper::default();
        let b = t.unwrap(u32::MAX as u64 - 959);
        assert_eq!(t.unwrap(0), b + 960);
        assert_eq!(t.unwrap(960), b + 1920);
    }
}
