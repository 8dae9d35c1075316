//! The [`Bus`] of a cluster: dispatches serialized onto [`RedisBus`] routes. A dispatch aimed
//! at a guild goes on the guild's route; one aimed at a user or at one session goes on the
//! user's route (the nodes holding that user's sessions watch it).
//!
//! Publishing never waits: a dispatch is queued and one task publishes the queue in order
//! (one publisher, so this node's dispatches keep their order on every route). A publish that
//! fails (Redis unreachable) loses that dispatch for every node, so the route is remembered as
//! broken and, once Redis answers again, a gap marker is published on it before anything else:
//! every node that receives the marker tells the sessions of that route they may have missed
//! events (op 9), instead of leaving them silently behind.

use lodge_ids::{GuildId, UserId};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

use super::bus::RedisBus;
use super::keys::Route;
use crate::dispatch::{Dispatch, Target};
use crate::shared::{Bus, Fut, NodeId, SharedError, SharedResult};

/// The payload of a gap marker (a dispatch never serializes to this).
pub const GAP_MARKER: &str = "{\"lodge_gap\":true}";

/// The route a dispatch travels on.
pub fn route_of(d: &Dispatch) -> Route {
    match &d.target {
        Target::Guild(g) => Route::Guild(*g),
        Target::User(u) => Route::User(*u),
        Target::Session { user, .. } => Route::User(*user),
    }
}

/// Counters of the publishing side.
#[derive(Default)]
pub struct PublishStats {
    pub published: AtomicU64,
    pub failed: AtomicU64,
    pub gap_markers: AtomicU64,
}

pub struct RedisDispatchBus {
    raw: Arc<RedisBus>,
    queue: mpsc::UnboundedSender<(Route, String)>,
    pub stats: Arc<PublishStats>,
}

impl RedisDispatchBus {
    /// The bus over `raw`, with its publishing task.
    pub fn new(raw: Arc<RedisBus>) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(PublishStats::default());
        tokio::spawn(publisher(raw.clone(), rx, stats.clone()));
        Arc::new(RedisDispatchBus {
            raw,
            queue: tx,
            stats,
        })
    }

    pub fn raw(&self) -> &Arc<RedisBus> {
        &self.raw
    }
}

async fn publisher(
    raw: Arc<RedisBus>,
    mut rx: mpsc::UnboundedReceiver<(Route, String)>,
    stats: Arc<PublishStats>,
) {
    let mut broken: BTreeSet<Route> = BTreeSet::new();
    while let Some((route, payload)) = rx.recv().await {
        // Routes that lost a dispatch get their marker before anything new is published.
        while let Some(r) = broken.first().copied() {
            match raw.publish_raw(r, GAP_MARKER.to_string()).await {
                Ok(_) => {
                    broken.remove(&r);
                    stats.gap_markers.fetch_add(1, Ordering::Relaxed);
                    warn!(?r, "bus: published a gap marker (dispatches were lost while Redis was unreachable)");
                }
                Err(_) => break,
            }
        }
        match raw.publish_raw(route, payload).await {
            Ok(_) => {
                stats.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if stats
                    .failed
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(1000)
                {
                    warn!(error = %e, "bus: a dispatch could not be published; its route's sessions will be told");
                }
                broken.insert(route);
            }
        }
    }
}

impl Bus for RedisDispatchBus {
    fn publish(&self, d: Arc<Dispatch>) {
        let payload = serde_json::to_string(&*d).expect("a dispatch serializes");
        let _ = self.queue.send((route_of(&d), payload));
    }
    fn to_node<'a>(&'a self, node: &'a NodeId, msg: String) -> Fut<'a, SharedResult<()>> {
        Box::pin(async move {
            if self.raw.to_node(node, msg).await? {
                Ok(())
            } else {
                Err(SharedError::Unavailable(format!(
                    "node {node} is not listening on the bus"
                )))
            }
        })
    }
    fn watch_guild(&self, guild: GuildId, on: bool) {
        self.raw.watch_guild(guild, on);
    }
    fn watch_user(&self, user: UserId, on: bool) {
        self.raw.watch_user(user, on);
    }
    fn synced(&self) -> Fut<'_, ()> {
        Box::pin(self.raw.synced())
    }
}
