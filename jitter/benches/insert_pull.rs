//! Cost of one `insert` + one `pull` per frame (decode excluded), with mild reordering.
//! `cargo bench -p lodge-jitter --bench insert_pull`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use lodge_jitter::{BufferConfig, JitterBuffer};

fn bench(c: &mut Criterion) {
    c.bench_function("insert_pull_per_frame", |b| {
        let mut jb = JitterBuffer::new(BufferConfig::default());
        let payload = vec![0u8; 80];
        let mut i: u64 = 0;
        b.iter(|| {
            // Every 7th packet swaps with its neighbour (reordering inside the buffer).
            let k = if i % 7 == 3 {
                i + 1
            } else if i % 7 == 4 {
                i - 1
            } else {
                i
            };
            let now = i as f64 * 20.0;
            jb.insert(
                now + 30.0 + (i % 5) as f64,
                k as u16,
                (k as u32).wrapping_mul(960),
                payload.clone(),
            );
            black_box(jb.pull(now + 35.0));
            i += 1;
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
