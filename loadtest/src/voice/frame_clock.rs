//! Frame ticks for speakers, timed by a thread of their own to the OS's sleep precision (tens
//! of microseconds) instead of tokio's 1 ms timer wheel.
//!
//! With the timer wheel, every speaker whose 20 ms tick falls in the same millisecond wakes at
//! that millisecond's boundary, and a busy runtime stretches that further: the server then
//! receives the speakers' packets in bursts, which independent callers on their own machines
//! never produce. Each speaker here has its own phase (when it started) and is woken at it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::due::Due;

/// Ticks queued for a speaker that has not taken them yet; more are dropped (it is far
/// behind and skips frames anyway).
const QUEUED_TICKS: usize = 8;

/// One speaker's ticks: every `period`, its due time goes down `tx`.
struct Ticker {
    period: Duration,
    tx: mpsc::Sender<Instant>,
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<Due<Instant, Ticker>>>,
    next_id: u64,
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

/// A periodic ticker service; cloning shares the one thread.
#[derive(Clone)]
pub struct FrameClock {
    owner: Arc<Owner>,
}

/// Stops the thread when the last clone of the clock is dropped.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
        self.0.changed.notify_one();
    }
}

impl FrameClock {
    /// Start the clock's thread (`lodge-load-clock`). It ends when the last clone is dropped.
    pub fn start() -> std::io::Result<FrameClock> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let thread_inner = inner.clone();
        std::thread::Builder::new()
            .name("lodge-load-clock".into())
            .spawn(move || run(&thread_inner))?;
        Ok(FrameClock {
            owner: Arc::new(Owner(inner)),
        })
    }

    /// Ticks at `first`, `first + period`, … each delivered as its due time. Dropping the
    /// receiver ends them.
    pub fn ticks(&self, first: Instant, period: Duration) -> mpsc::Receiver<Instant> {
        let inner = &self.owner.0;
        let (tx, rx) = mpsc::channel(QUEUED_TICKS);
        let mut s = inner.state.lock().expect("clock lock");
        let id = s.next_id;
        s.next_id += 1;
        s.heap.push(Reverse(Due {
            at: first,
            order: id,
            item: Ticker { period, tx },
        }));
        drop(s);
        inner.changed.notify_one();
        rx
    }
}

fn run(inner: &Inner) {
    let mut s = inner.state.lock().expect("clock lock");
    while !inner.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        match s.heap.peek().map(|Reverse(e)| e.at) {
            Some(due) if due <= now => {
                let Reverse(mut e) = s.heap.pop().expect("peeked");
                if e.item.tx.is_closed() {
                    continue;
                }
                let _ = e.item.tx.try_send(e.at);
                e.at += e.item.period;
                s.heap.push(Reverse(e));
            }
            next => {
                let wait = next.map_or(Duration::from_millis(100), |due| due - now);
                s = inner.changed.wait_timeout(s, wait).expect("clock lock").0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_come_at_their_phase_in_order() {
        let clock = FrameClock::start().expect("thread");
        let t0 = Instant::now() + Duration::from_millis(5);
        let mut a = clock.ticks(t0, Duration::from_millis(10));
        let mut b = clock.ticks(t0 + Duration::from_micros(2_500), Duration::from_millis(10));
        for k in 0..5u32 {
            let da = a.recv().await.expect("tick");
            let db = b.recv().await.expect("tick");
            assert_eq!(da, t0 + Duration::from_millis(10) * k);
            assert_eq!(
                db,
                t0 + Duration::from_micros(2_500) + Duration::from_millis(10) * k
            );
            // Delivered no earlier than due.
            assert!(Instant::now() >= db);
        }
        drop(a);
        // A dropped receiver is forgotten; the other keeps ticking.
        assert!(b.recv().await.is_some());
    }
}
