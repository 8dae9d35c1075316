//! In-process fan-out of gateway dispatches. Each gateway session filters what it receives.
//! (With several nodes this becomes Redis pub/sub behind the same interface; see ARCHITECTURE.)
//!
//! A dispatch's `d` is serialized once, when it is published, not once per receiver.

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
    /// `d`, serialized.
    pub json: Arc<str>,
    /// For message events: `d` with content, embeds and attachments emptied, for sessions
    /// without the MESSAGE_CONTENT intent that are neither the author nor mentioned.
    pub redacted: Option<Arc<str>>,
    /// Users who always get the full message (author and mentioned users).
    pub full_for: Vec<u64>,
}

#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<Dispatch>>,
    /// Bumped before any dispatch that may change who can see what (roles, overwrites,
    /// membership, channels), so per-session visibility caches know when to recompute.
    epoch: Arc<std::sync::atomic::AtomicU64>,
}

/// Events after which cached channel visibility may be stale.
fn changes_visibility(t: &str) -> bool {
    t.starts_with("GUILD_") || t.starts_with("CHANNEL_")
}

impl Hub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(8192);
        Hub {
            tx,
            epoch: Default::default(),
        }
    }

    /// Current visibility epoch; read it before computing a permission to cache.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Dispatch>> {
        self.tx.subscribe()
    }

    pub fn send(
        &self,
        target: Target,
        guild_id: Option<u64>,
        channel_id: Option<u64>,
        t: &'static str,
        d: Value,
    ) {
        if changes_visibility(t) {
            self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        let json: Arc<str> = d.to_string().into();
        let _ = self.tx.send(Arc::new(Dispatch {
            target,
            channel_id,
            guild_id,
            t,
            json,
            redacted: None,
            full_for: Vec::new(),
        }));
    }

    /// A message event: also publish the redacted form for sessions without MESSAGE_CONTENT.
    pub fn send_message(
        &self,
        guild_id: u64,
        channel_id: u64,
        t: &'static str,
        mut d: Value,
        full_for: Vec<u64>,
    ) {
        let json: Arc<str> = d.to_string().into();
        if let Some(o) = d.as_object_mut() {
            o.insert("content".into(), Value::String(String::new()));
            o.insert("embeds".into(), Value::Array(vec![]));
            o.insert("attachments".into(), Value::Array(vec![]));
            o.insert("components".into(), Value::Array(vec![]));
        }
        let redacted: Arc<str> = d.to_string().into();
        let _ = self.tx.send(Arc::new(Dispatch {
            target: Target::Guild(guild_id),
            channel_id: Some(channel_id),
            guild_id: Some(guild_id),
            t,
            json,
            redacted: Some(redacted),
            full_for,
        }));
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

/// A dispatch frame for one session: `{"op":0,"t":…,"s":…,"d":…}` around an already-serialized `d`.
pub fn frame(t: &str, seq: u64, d: &str) -> String {
    let mut s = String::with_capacity(d.len() + t.len() + 40);
    s.push_str("{\"op\":0,\"t\":\"");
    s.push_str(t);
    s.push_str("\",\"s\":");
    s.push_str(&seq.to_string());
    s.push_str(",\"d\":");
    s.push_str(d);
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn frame_is_valid_json() {
        let f = super::frame("MESSAGE_CREATE", 7, "{\"content\":\"hi \\\"x\\\"\"}");
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["op"], 0);
        assert_eq!(v["s"], 7);
        assert_eq!(v["d"]["content"], "hi \"x\"");
    }
}
