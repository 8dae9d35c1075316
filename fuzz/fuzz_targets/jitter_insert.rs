//! Arbitrary insert/pull sequences: never a panic; decoded frames come out in order, none twice.
//! An odd first byte runs the static schedule (the evaluation's fixed buffer) instead of the
//! adaptive buffer.
#![no_main]
use lodge_jitter::{BufferConfig, JitterBuffer, Pulled};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let cfg = match data.first() {
        Some(b) if b & 1 == 1 => BufferConfig {
            static_delay_ms: Some(40.0),
            ..BufferConfig::default()
        },
        _ => BufferConfig::default(),
    };
    let mut jb = JitterBuffer::new(cfg);
    let mut now = 0.0;
    let mut last: Option<u64> = None;
    for op in data.chunks_exact(8) {
        now += op[0] as f64;
        if op[1] & 1 == 0 {
            let seq = u16::from_le_bytes([op[2], op[3]]);
            let ts = u32::from_le_bytes([op[4], op[5], op[6], op[7]]);
            jb.insert(now, seq, ts, op.to_vec());
        } else if let Pulled::Frame { seq, .. } | Pulled::Fec { seq, .. } = jb.pull(now) {
            if let Some(l) = last {
                assert!(seq > l, "frame {seq} after {l}");
            }
            last = Some(seq);
        }
    }
});
