//! The forward path: one incoming SRTP Opus packet (audio-level extension included) from a
//! selected speaker, decrypted, rewritten and re-encrypted into N listeners' slots.
//!
//! `cargo bench -p lodge-sfu --bench forward` reports time per incoming packet (criterion) and,
//! on stdout, ns and heap allocations per *forwarded* packet, counted by a global allocator.

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lodge_sfu::NodeOutput;
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use str0m::Output;

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

/// A room with one loud speaker (client 0) and `n` listeners, speaker selected everywhere.
fn room(n: usize) -> sim::World {
    let mut w = sim::World::new(|c| c.max_packet_rate = u32::MAX / 2);
    for _ in 0..=n {
        w.join(3, sim::World::speaking()).unwrap();
    }
    w.run(Duration::from_millis(1500));
    w.clients[0].level = Some(10);
    w.run(Duration::from_millis(500));
    w.clients[0].level = None;
    w.run(Duration::from_millis(100));
    assert!(
        w.clients[1..].iter().all(|c| c.heard_from(0) > 0),
        "speaker not selected by every listener"
    );
    w
}

struct Speaker {
    seq: u64,
    ts: u32,
}

/// Encrypt the speaker's next packet (not timed).
fn next_packet(w: &mut sim::World, s: &mut Speaker) -> (SocketAddr, Vec<u8>) {
    // 20 ms of simulated life for everyone (STUN consent, RTCP, timers), not timed.
    w.run(Duration::from_millis(20));
    let now = w.now;
    let c = &mut w.clients[0];
    let ext = ExtensionValues {
        audio_level: Some(-10),
        voice_activity: Some(true),
        ..Default::default()
    };
    let mut payload = vec![0u8; 80];
    payload[0] = 0x78; // an Opus TOC byte (SILK WB 20 ms)
    {
        let mut api = c.rtc.direct_api();
        let tx = api.stream_tx_by_mid(c.send_mid, None).unwrap();
        tx.write_rtp(RtpWrite::new(c.pt, SeqNo::from(s.seq), s.ts, now, payload).ext_vals(ext));
    }
    s.seq += 1;
    s.ts = s.ts.wrapping_add(960);
    let _ = c.rtc.handle_input(str0m::Input::Timeout(now));
    // Whatever else the speaker sends now (STUN consent, RTCP) still reaches the node, untimed:
    // dropping it would let the node time the speaker out.
    let mut other = Vec::new();
    let addr = c.addr;
    let rtp = loop {
        match c.rtc.poll_output().unwrap() {
            Output::Transmit(t) => {
                let v: Vec<u8> = t.contents.into();
                // RTP (not RTCP) to the node.
                if v.len() > 1
                    && (128..192).contains(&v[0])
                    && !(200..=207).contains(&(v[1] & 0x7f | 0x80))
                {
                    break v;
                }
                other.push(v);
            }
            Output::Timeout(_) => {
                let _ = c.rtc.handle_input(str0m::Input::Timeout(now));
            }
            Output::Event(_) => {}
        }
    };
    let node_addr = w.node_addr;
    for v in other {
        w.node.handle_datagram(now, addr, node_addr, &v);
    }
    // Answers to those go the simulated way on the next run.
    w.drain_node();
    (addr, rtp)
}

fn forward_once(w: &mut sim::World, from: SocketAddr, pkt: &[u8]) -> usize {
    let now = w.now;
    let node_addr = w.node_addr;
    w.node.handle_datagram(now, from, node_addr, pkt);
    let mut sent = 0;
    while let Some(o) = w.node.poll_output() {
        if let NodeOutput::Transmit(t) = o {
            sent += 1;
            black_box(&t.contents);
        }
    }
    sent
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward");
    println!("\n| listeners | ns per forwarded packet | heap allocations per forwarded packet |\n|---|---|---|");
    let mut table = Vec::new();
    for n in [1usize, 10, 100] {
        let mut w = room(n);
        let seq0 = w.clients[0].seq;
        let mut s = Speaker {
            seq: seq0 + 10,
            ts: w.clients[0].ts.wrapping_add(96_000),
        };
        // Direct measurement with the allocation counter.
        let rounds = if n == 100 { 200 } else { 1000 };
        let (mut ns, mut allocs, mut fwd) = (0u128, 0u64, 0usize);
        for _ in 0..rounds {
            let (from, pkt) = next_packet(&mut w, &mut s);
            let a0 = ALLOCS.load(Ordering::Relaxed);
            let t0 = Instant::now();
            fwd += forward_once(&mut w, from, &pkt);
            ns += t0.elapsed().as_nanos();
            allocs += ALLOCS.load(Ordering::Relaxed) - a0;
        }
        assert!(fwd >= rounds * n, "forwarded {fwd} for {rounds} packets to {n} listeners; rtp_in {} drops {:?} participants {}",
            w.node.stats().rtp_in, w.node.stats().drops.iter().filter(|d| d.1 > 0).collect::<Vec<_>>(), w.node.participant_count());
        table.push(format!(
            "| {n} | {:.0} | {:.2} |",
            ns as f64 / fwd as f64,
            allocs as f64 / fwd as f64
        ));
        println!("{}", table.last().unwrap());

        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("fanout_{n}"), |b| {
            // Encrypting the speaker's packet is the client's work: prepare it outside the timing.
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (from, pkt) = next_packet(&mut w, &mut s);
                    let t0 = Instant::now();
                    black_box(forward_once(&mut w, from, &pkt));
                    total += t0.elapsed();
                }
                total
            })
        });
    }
    g.finish();
    println!("\nforward path summary:\n| listeners | ns per forwarded packet | heap allocations per forwarded packet |\n|---|---|---|");
    for row in table {
        println!("{row}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
