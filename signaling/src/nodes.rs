//! This node in the registry: what it announces about itself.

use crate::app::AppState;
use crate::shared::NodeInfo;

/// How long a registration lives unless renewed.
pub const NODE_TTL: std::time::Duration = std::time::Duration::from_secs(3);

/// What this node is now.
pub fn info(s: &AppState) -> NodeInfo {
    NodeInfo {
        id: s.shared.me.clone(),
        endpoint: s.cfg.public_host(),
        region: s.cfg.region.clone(),
        roles: s.cfg.roles,
        load: s.sfu.participants() as u32,
        draining: !s.ready.load(std::sync::atomic::Ordering::Relaxed) && *s.shutdown.borrow(),
    }
}

/// Register this node (once; a cluster renews it on a timer).
pub async fn announce_once(s: &AppState) {
    if let Err(e) = s.shared.registry.announce(&info(s), NODE_TTL).await {
        tracing::warn!(error = %e, "could not register this node");
    }
}
