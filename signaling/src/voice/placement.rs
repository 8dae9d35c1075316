//! Which node hosts a voice channel's room, and the endpoint a caller is sent to.

use super::state::Home;
use crate::app::AppState;
use crate::shared::{NodeId, RoomHome, SharedError};
use lodge_ids::{ChannelId, GuildId};

/// The room's home: its current home while that node is registered and not draining, or else
/// the node that claims it — among media nodes that are not draining, the caller's region
/// first, then the fewest participants. With one node, always this node, unless it is
/// draining: then no room is placed (503).
pub async fn room_home(
    s: &AppState,
    guild: GuildId,
    channel: ChannelId,
    region: &str,
) -> Result<RoomHome, SharedError> {
    let nodes = s.shared.registry.live_nodes().await?;
    // A draining node takes no new rooms, and a join into a room it still hosts claims the
    // room's next home (the drain moves the callers there; `drain.rs`).
    let alive: Vec<NodeId> = nodes
        .iter()
        .filter(|n| n.roles.media && !n.draining)
        .map(|n| n.id.clone())
        .collect();
    let candidate = nodes
        .iter()
        .filter(|n| n.roles.media && !n.draining)
        .min_by_key(|n| (n.region != region, n.load, &n.id))
        .map(|n| n.id.clone())
        .or_else(|| {
            let here = s.cfg.roles.media && !s.drain.is_draining() && !*s.shutdown.borrow();
            here.then(|| s.shared.me.clone())
        })
        .ok_or_else(|| {
            SharedError::Unavailable(
                "no node with the media role is registered (or all are draining)".into(),
            )
        })?;
    s.shared
        .placement
        .home(guild, channel, &candidate, &alive)
        .await
}

/// The least busy edge of `region` trunked to the room's home `via` (this node's own trunks,
/// or another node's as its registration lists them), counting the caller as placed there.
pub async fn edge_for(s: &AppState, via: &RoomHome, region: &str) -> Option<String> {
    if via.node == s.shared.me {
        return s.cluster.get().and_then(|c| c.place(region));
    }
    let nodes = s.shared.registry.live_nodes().await.ok()?;
    let n = nodes.into_iter().find(|n| n.id == via.node)?;
    n.edges
        .into_iter()
        .filter(|e| e.region == region)
        .min_by(|a, b| (a.load, &a.node).cmp(&(b.load, &b.node)))
        .map(|e| e.node)
}

/// `host:port` of a home's voice gateway, as VOICE_SERVER_UPDATE's `endpoint`.
pub async fn endpoint(s: &AppState, home: &Home) -> String {
    match home {
        Home::Edge { via, edge } if via.node == s.shared.me => s
            .cluster
            .get()
            .and_then(|c| c.endpoint_of(edge))
            .unwrap_or_else(|| s.cfg.public_host()),
        Home::Edge { via, edge } => match s.shared.registry.live_nodes().await {
            Ok(nodes) => nodes
                .into_iter()
                .find(|n| n.id == via.node)
                .and_then(|n| n.edges.into_iter().find(|e| e.node == *edge))
                .map(|e| e.voice_endpoint)
                .unwrap_or_else(|| {
                    tracing::warn!(node = %via.node, %edge, "an edge is not in its node's registration; sending the caller here");
                    s.cfg.public_host()
                }),
            Err(e) => {
                tracing::warn!(error = %e, "node registry unreachable; sending the caller here");
                s.cfg.public_host()
            }
        },
        Home::Node(h) if h.node == s.shared.me => s.cfg.node_host(),
        Home::Node(h) => match s.shared.registry.live_nodes().await {
            Ok(nodes) => nodes
                .into_iter()
                .find(|n| n.id == h.node)
                .map(|n| n.endpoint)
                .unwrap_or_else(|| {
                    tracing::warn!(node = %h.node, "a room's home is not registered; sending the caller here");
                    s.cfg.public_host()
                }),
            Err(e) => {
                tracing::warn!(error = %e, "node registry unreachable; sending the caller here");
                s.cfg.public_host()
            }
        },
    }
}
