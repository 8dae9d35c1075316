//! The forward path: one incoming SRTP Opus packet (audio-level extension included) from a
//! selected speaker, decrypted, rewritten and re-encrypted into N listeners' slots.
//!
//! `cargo bench -p lodge-sfu --bench forward` reports time per incoming packet (criterion) and,
//! on stdout, ns and heap allocations per *forwarded* packet, counted by a global allocator.

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sim::fanout::{forward_once, next_packet, room_with, Speaker};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward");
    println!("\n| listeners | ns per forwarded packet | heap allocations per forwarded packet | per incoming packet |\n|---|---|---|---|");
    let mut table = Vec::new();
    for (n, direct) in [(1usize, false), (10, false), (100, false), (100, true)] {
        let mut w = room_with(n, |c| c.direct_send = direct);
        let name = if direct {
            format!("{n} direct")
        } else {
            n.to_string()
        };
        let mut s = Speaker::after(&w);
        // Direct measurement with the allocation counter.
        let rounds = if n == 100 { 200 } else { 1000 };
        let (mut ns, mut allocs, mut fwd) = (0u128, 0u64, 0usize);
        for _ in 0..rounds {
            let (from, pkt) = next_packet(&mut w, &mut s);
            let a0 = ALLOCS.load(Ordering::Relaxed);
            let t0 = Instant::now();
            fwd += forward_once(&mut w, from, &pkt, true);
            ns += t0.elapsed().as_nanos();
            allocs += ALLOCS.load(Ordering::Relaxed) - a0;
        }
        assert!(fwd >= rounds * n, "forwarded {fwd} for {rounds} packets to {n} listeners; rtp_in {} drops {:?} participants {}",
            w.node.stats().rtp_in, w.node.stats().drops.iter().filter(|d| d.1 > 0).collect::<Vec<_>>(), w.node.participant_count());
        table.push(format!(
            "| {name} | {:.0} | {:.3} | {:.2} |",
            ns as f64 / fwd as f64,
            allocs as f64 / fwd as f64,
            allocs as f64 / rounds as f64
        ));
        println!("{}", table.last().unwrap());

        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("fanout_{}", name.replace(' ', "_")), |b| {
            // Encrypting the speaker's packet is the client's work: prepare it outside the timing.
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (from, pkt) = next_packet(&mut w, &mut s);
                    let t0 = Instant::now();
                    black_box(forward_once(&mut w, from, &pkt, true));
                    total += t0.elapsed();
                }
                total
            })
        });
    }
    // Cache-cold: a room of 20 listeners, with the caches flushed before each packet
    // (untimed), as in a node where 2,000 callers' session state cannot all stay cached and each
    // listener's state is touched once per 20 ms. Two such rooms in two nodes, one with the
    // fan-out's prefetch and one without, take packets in turn, so both see the same machine;
    // medians, as this machine's neighbours make single packets slow at random. Rooms of 100
    // and 250 too (they show whether the prefetch's 16-listener windows suit big rooms), when
    // benchmarking only: CI's test-mode run of this file keeps to 20.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let cold_rooms: &[(usize, usize)] = if benchmarking {
        &[(20, 1000), (100, 300), (250, 120)]
    } else {
        &[(20, 1000)]
    };
    for &(n, rounds) in cold_rooms {
        // Through each listener's session with and without the prefetch, and direct
        // (`NodeConfig::direct_send`, prefetched).
        let mut worlds = [(true, false), (false, false), (true, true)].map(|(prefetch, direct)| {
            let w = room_with(n, |c| {
                c.prefetch = prefetch;
                c.direct_send = direct;
            });
            let s = Speaker::after(&w);
            ((prefetch, direct), w, s, Vec::new(), 0u64, 0usize)
        });
        let mut flush = vec![0u64; 64 << 17]; // 64 MiB, twice the largest cache here
        for _ in 0..rounds {
            for (_, w, s, per_copy, allocs, fwd) in worlds.iter_mut() {
                let (from, pkt) = next_packet(w, s);
                evict(&mut flush);
                let a0 = ALLOCS.load(Ordering::Relaxed);
                let t0 = Instant::now();
                let sent = forward_once(w, from, &pkt, true);
                let ns = t0.elapsed().as_nanos() as f64;
                *allocs += ALLOCS.load(Ordering::Relaxed) - a0;
                *fwd += sent;
                per_copy.push(ns / sent.max(1) as f64);
            }
        }
        for ((prefetch, direct), w, _, per_copy, allocs, fwd) in worlds.iter_mut() {
            assert!(*fwd >= rounds * n);
            if *direct {
                let st = w.node.stats();
                assert!(
                    st.rtp_direct * 10 >= st.rtp_forwarded * 9,
                    "direct sends were declined"
                );
            }
            per_copy.sort_by(f64::total_cmp);
            table.push(format!(
                "| {n}, caches flushed before each packet, {} (median; p10–p90) | {:.0} ({:.0}–{:.0}) | {:.3} | {:.2} |",
                match (*prefetch, *direct) {
                    (_, true) => "direct",
                    (true, false) => "prefetch on",
                    (false, false) => "prefetch off",
                },
                per_copy[rounds / 2],
                per_copy[rounds / 10],
                per_copy[rounds * 9 / 10],
                *allocs as f64 / *fwd as f64,
                *allocs as f64 / rounds as f64
            ));
            println!("{}", table.last().unwrap());
        }
    }
    g.finish();
    println!("\nforward path summary:\n| listeners | ns per forwarded packet | heap allocations per forwarded packet | per incoming packet |\n|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
}

/// Writes every cache line of `buf`, pushing everything else out of the caches.
fn evict(buf: &mut [u64]) {
    for i in (0..buf.len()).step_by(8) {
        buf[i] = buf[i].wrapping_add(1);
    }
    black_box(&buf);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
