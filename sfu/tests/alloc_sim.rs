//! Heap allocations on the forward path, counted per thread by this test binary's allocator.
//! A forwarded copy is encrypted into a buffer the shell handed back (`Node::recycle`), so in a
//! steady room the node allocates only for the incoming packet (one, shared by every listener),
//! and nothing per copy.

mod sim;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use lodge_sfu::native::CryptoMode;

use sim::fanout::{forward_once, next_packet, room, Speaker};
use sim::World;

struct PerThread;

thread_local! {
    // Const-initialised: reading it never allocates (the allocator calls it).
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for PerThread {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: PerThread = PerThread;

fn allocs() -> u64 {
    ALLOCS.with(|a| a.get())
}

/// Allocations per forwarded copy over `rounds` speaker packets into a room of `n` listeners.
fn allocations_per_copy(w: &mut World, n: usize, rounds: usize, recycle: bool) -> f64 {
    let mut s = Speaker::after(w);
    // Warm up: sessions, pools and queues reach their working size.
    for _ in 0..50 {
        let (from, pkt) = next_packet(w, &mut s);
        forward_once(w, from, &pkt, recycle);
    }
    let (mut total, mut copies) = (0u64, 0usize);
    for _ in 0..rounds {
        let (from, pkt) = next_packet(w, &mut s);
        let a0 = allocs();
        copies += forward_once(w, from, &pkt, recycle);
        total += allocs() - a0;
    }
    assert!(
        copies >= rounds * n,
        "{copies} copies for {rounds} packets to {n} listeners"
    );
    total as f64 / copies as f64
}

#[test]
fn a_forwarded_copy_allocates_nothing_once_buffers_come_back() {
    let n = 20;
    let mut w = room(n);
    let with = allocations_per_copy(&mut w, n, 300, true);
    eprintln!("with recycling: {with:.3} allocations per copy");
    // The incoming packet's payload (shared by the 20 copies) is 1/20 = 0.05 per copy; the
    // occasional RTCP or stats event adds a little. Every copy allocating would be ≥ 1.
    assert!(
        with < 0.1,
        "{with:.3} allocations per forwarded copy with recycling"
    );

    // The counter does see the per-copy datagram when buffers are not handed back.
    let mut w = room(n);
    let without = allocations_per_copy(&mut w, n, 300, false);
    eprintln!("without: {without:.3}");
    assert!(
        without >= 1.0,
        "{without:.3} allocations per copy without recycling"
    );
}

#[test]
fn native_listeners_copies_reuse_buffers_too() {
    let mut w = room(2);
    let natives = 10;
    for i in 0..natives {
        // Both modes: AES-256-GCM and XChaCha20-Poly1305 seal into the pooled buffer.
        let mode = if i % 2 == 0 {
            CryptoMode::Aes256GcmRtpsize
        } else {
            CryptoMode::XChaCha20Poly1305Rtpsize
        };
        w.join_native(3, mode, World::speaking()).unwrap();
    }
    w.clients[0].level = Some(10);
    w.run(Duration::from_millis(1500));
    w.clients[0].level = None;
    assert!(
        w.natives.iter().all(|c| c.heard_from(0) > 0),
        "every native listener hears the speaker"
    );
    let per_copy = allocations_per_copy(&mut w, 2 + natives, 300, true);
    eprintln!("native room: {per_copy:.3} allocations per copy");
    assert!(
        per_copy < 0.15,
        "{per_copy:.3} allocations per copy (native listeners)"
    );
}
