//! In-process fan-out of gateway dispatches. Each gateway session filters what it receives.
//! (With several nodes this becomes Redis pub/sub behind the same interface; see ARCHITECTURE.)

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

/// Who a dispatch is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every session of a member of the guild (filtered by VIEW_CHANNEL when `channel_id` is set).
    Guild(u64),
    /// Every session of one user.
    User(u64),
    /// One gateway session.
    Session(String),
}

#[derive(Debug)]
pub struct Dispatch {
    pub target: Target,
    /// Channel the event is about, for VIEW_CHANNEL filtering.
    pub channel_id: Option<u64>,
    pub guild_id: Option<u64>,
    pub t: &'static str,
    pub d: Value,
}

#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<Dispatch>>,
}

impl Hub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        Hub { tx }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Dispatch>> {
        self.tx.subscribe()
    }

    pub fn send(&self, target: Target, guild_id: Option<u64>, channel_id: Option<u64>, t: &'static str, d: Value) {
        let _ = self.tx.send(Arc::new(Dispatch { target, channel_id, guild_id, t, d }));
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}
