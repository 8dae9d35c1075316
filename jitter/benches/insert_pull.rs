//! Cost of one `insert` + one `pull` per frame (decode excluded), with mild reordering; once
//! with the quantile target alone and once with the path delay known (the E-model target, which
//! rescans the histogram every 8th packet).
//! `cargo bench -p lodge-jitter --bench insert_pull`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use lodge_jitter::{BufferConfig, JitterBuffer};

fn run(c: &mut Criterion, name: &str, cfg: BufferConfig) {
    c.bench_function(name, |b| {
        let mut jb = JitterBuffer::new(cfg);
        let payload = vec![0u8; 80];
        let mut i: u64 = 0;
        b.iter(|| {
            // Every 7th packet swaps with its neighbour (reordering inside the buffer); every
            // 50th is 60 ms late (a tail for the histogram).
            let k = if i % 7 == 3 {
                i + 1
            } else if i % 7 == 4 {
                i - 1
            } else {
                i
            };
            let late = if i.is_multiple_of(50) { 60.0 } else { 0.0 };
            let now = i as f64 * 20.0;
            jb.insert(
                now + 30.0 + (i % 5) as f64 + late,
                k as u16,
                (k as u32).wrapping_mul(960),
                payload.clone(),
            );
            black_box(jb.pull(now + 35.0));
            i += 1;
        })
    });
}

fn bench(c: &mut Criterion) {
    run(c, "insert_pull_per_frame", BufferConfig::default());
    run(
        c,
        "insert_pull_per_frame_path_delay_known",
        BufferConfig {
            network_delay_ms: Some(150.0),
            ..BufferConfig::default()
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
