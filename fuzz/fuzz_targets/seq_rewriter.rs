//! The slot rewriter under arbitrary sources, sequence numbers, timestamps and clock steps:
//! never a panic, and an output sequence number is never handed to two different sources.
#![no_main]
use std::collections::HashMap;
use std::time::{Duration, Instant};

use lodge_sfu::seq_rewriter::SeqRewriter;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let t0 = Instant::now();
    let mut now = t0;
    let mut r = SeqRewriter::new(
        u16::from_le_bytes([data[0], data[1]]),
        u32::from_le_bytes([data[2], data[3], data[4], data[5]]),
        48_000,
        Duration::from_millis(20),
    );
    let mut owner: HashMap<u64, u32> = HashMap::new();
    for op in data[6..].chunks_exact(8) {
        let ssrc = (op[0] % 4) as u32;
        let seq = u16::from_le_bytes([op[1], op[2]]);
        let ts = u32::from_le_bytes([op[3], op[4], op[5], op[6]]);
        now += Duration::from_millis(op[7] as u64);
        if let Some(out) = r.rewrite(now, ssrc, seq, ts) {
            let prev = *owner.entry(out.seq).or_insert(ssrc);
            assert_eq!(prev, ssrc, "output seq {} given to two sources", out.seq);
        }
    }
});
