//! What the cluster's bus brings this node: dispatches (to the hub, in the route's order),
//! messages for the callers this node hosts, and connection trouble. After the bus's
//! connection comes back, each watched route is read back from its stream from the last
//! position delivered here, so a short interruption loses nothing; when that cannot be proven
//! (the stream was trimmed past it, or Redis restarted and the stream is gone), or a gap
//! marker arrives (a node could not publish), the sessions of that route are told with op 9
//! that they may have missed events.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{info, warn};

use crate::app::AppState;
use crate::dispatch::Dispatch;
use crate::shared::redis::dispatch_bus::GAP_MARKER;
use crate::shared::redis::{BusIncoming, RedisBus, RedisBusRx, Route, StreamId};

/// How many entries one catch-up read asks for.
const CATCH_UP_PAGE: usize = 1000;

pub async fn run(s: AppState, raw: Arc<RedisBus>, mut rx: RedisBusRx) {
    let mut last: HashMap<Route, StreamId> = HashMap::new();
    while let Some(m) = rx.recv().await {
        match m {
            BusIncoming::Dispatch { route, id, payload } => {
                if last.get(&route).is_some_and(|l| *l >= id) {
                    continue; // already delivered by a catch-up read
                }
                last.insert(route, id);
                deliver(&s, route, id, &payload);
            }
            BusIncoming::Node(msg) => crate::voice::executor::handle_node_msg(&s, &msg).await,
            BusIncoming::Lost => {
                warn!("lost the bus connection to Redis: dispatches wait until it is back");
            }
            BusIncoming::Reconnected => {
                let routes: Vec<(Route, StreamId)> = last.iter().map(|(r, i)| (*r, *i)).collect();
                let (mut caught_up, mut told) = (0usize, 0usize);
                for (route, from) in routes {
                    match catch_up(&s, &raw, route, from, &mut last).await {
                        Ok(n) => caught_up += n,
                        Err(why) => {
                            told += crate::gateway::invalidate_route(&s, route, why);
                            last.remove(&route);
                        }
                    }
                }
                info!(
                    read_back = caught_up,
                    sessions_told = told,
                    "bus reconnected to Redis"
                );
            }
        }
    }
}

/// Deliver what the route's stream holds after `from`. Err when continuity cannot be shown.
async fn catch_up(
    s: &AppState,
    raw: &RedisBus,
    route: Route,
    from: StreamId,
    last: &mut HashMap<Route, StreamId>,
) -> Result<usize, &'static str> {
    const GONE: &str = "the bus lost its history (Redis restarted); events may have been missed";
    match raw.oldest(route).await {
        Ok(Some(oldest)) if oldest <= from => {}
        Ok(_) => return Err(GONE),
        Err(_) => return Err("the bus is unreachable; events may have been missed"),
    }
    let mut n = 0;
    let mut pos = from;
    loop {
        let page = raw
            .read_after(route, pos, CATCH_UP_PAGE)
            .await
            .map_err(|_| "the bus is unreachable; events may have been missed")?;
        let len = page.len();
        for (id, payload) in page {
            pos = id;
            last.insert(route, id);
            deliver(s, route, id, &payload);
            n += 1;
        }
        if len < CATCH_UP_PAGE {
            return Ok(n);
        }
    }
}

fn deliver(s: &AppState, route: Route, id: StreamId, payload: &str) {
    if payload == GAP_MARKER {
        crate::gateway::invalidate_route(
            s,
            route,
            "a node could not publish events while Redis was unreachable; events may have been missed",
        );
        return;
    }
    match serde_json::from_str::<Dispatch>(payload) {
        Ok(mut d) => {
            // Sessions' resume logs name the dispatch by where it sits on the bus.
            d.bus = Some((route, id));
            s.hub.deliver(Arc::new(d))
        }
        Err(e) => warn!(?route, error = %e, "malformed dispatch on the bus; dropped"),
    }
}
