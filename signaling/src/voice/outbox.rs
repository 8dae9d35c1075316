//! A voice connection's outbox: what other tasks tell the connection (op 5 slot changes, op
//! 11/13, closes), bounded. A client that stops reading cannot grow the node's memory: once
//! [`OUTBOX_CAPACITY`] messages wait, the next one marks the connection a slow consumer and its
//! task closes it. The connection's own writes have a deadline too ([`WRITE_TIMEOUT`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::conns::VoiceOut;

/// Messages one voice connection may have waiting to be written (about a minute of busy slot
/// changes; a reading client drains it in milliseconds).
pub const OUTBOX_CAPACITY: usize = 256;
/// A write to a voice client that has not completed in this long closes the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The sending side, kept in the voice registry. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<VoiceOut>,
    overflow: Arc<Overflow>,
}

#[derive(Debug, Default)]
struct Overflow {
    hit: AtomicBool,
    notify: Notify,
}

/// The connection task's side.
pub struct OutboxRx {
    rx: mpsc::Receiver<VoiceOut>,
    overflow: Arc<Overflow>,
}

/// What the connection task takes from its outbox next.
#[derive(Debug)]
pub enum Next {
    Msg(VoiceOut),
    /// The outbox filled: the client is not reading fast enough.
    Overflowed,
    /// Every sender is gone.
    Closed,
}

pub fn outbox(capacity: usize) -> (Outbox, OutboxRx) {
    let (tx, rx) = mpsc::channel(capacity);
    let overflow = Arc::new(Overflow::default());
    (
        Outbox {
            tx,
            overflow: overflow.clone(),
        },
        OutboxRx { rx, overflow },
    )
}

impl Outbox {
    /// Queue a message without waiting. A full outbox drops it and marks the connection a slow
    /// consumer (its task then closes it); false when the message was not queued.
    pub fn send(&self, m: VoiceOut) -> bool {
        match self.tx.try_send(m) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.overflow.hit.swap(true, Ordering::Relaxed) {
                    self.overflow.notify.notify_one();
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Resolves once the outbox has overflowed: the connection races its writes against it, so a
/// client that stopped reading is closed as soon as its outbox fills, not only when a blocked
/// write times out.
#[derive(Clone)]
pub struct OverflowWatch(Arc<Overflow>);

impl OverflowWatch {
    pub async fn overflowed(&self) {
        // The flag is set before the notification; a stored permit wakes a late waiter.
        while !self.0.hit.load(Ordering::Relaxed) {
            self.0.notify.notified().await;
        }
    }
}

impl OutboxRx {
    pub fn watch(&self) -> OverflowWatch {
        OverflowWatch(self.overflow.clone())
    }

    /// The next message, or the news that the outbox overflowed (reported before anything
    /// else once it has).
    pub async fn next(&mut self) -> Next {
        if self.overflow.hit.load(Ordering::Relaxed) {
            return Next::Overflowed;
        }
        tokio::select! {
            biased;
            _ = self.overflow.notify.notified() => Next::Overflowed,
            m = self.rx.recv() => m.map(Next::Msg).unwrap_or(Next::Closed),
        }
    }
}

#[cfg(test)]
impl OutboxRx {
    /// A waiting message, if any (tests).
    pub fn try_next(&mut self) -> Option<VoiceOut> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_outbox_reports_overflow_first_and_queues_nothing_more() {
        let (tx, mut rx) = outbox(2);
        assert!(tx.send(VoiceOut::Json(1.into())));
        assert!(tx.send(VoiceOut::Json(2.into())));
        assert!(!tx.send(VoiceOut::Close(4014, "bye".into())));
        assert!(matches!(rx.next().await, Next::Overflowed));
        assert!(matches!(rx.next().await, Next::Overflowed));
        let (tx, mut rx) = outbox(2);
        assert!(tx.send(VoiceOut::Json(1.into())));
        assert!(matches!(rx.next().await, Next::Msg(VoiceOut::Json(_))));
        drop(tx);
        assert!(matches!(rx.next().await, Next::Closed));
    }
}
