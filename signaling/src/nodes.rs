//! This node in the registry: it announces itself with a time to live and renews it; it watches
//! the other nodes, logs each one that joins or leaves, and when a node is lost, moves the
//! callers whose gateway sessions are here and whose room that node hosted to a new home.

use lodge_ids::{GuildId, UserId};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tracing::{info, warn};

use crate::app::AppState;
use crate::shared::{NodeId, NodeInfo};
use crate::voice::control::Input;
use crate::voice::state::Home;

/// How long a registration lives unless renewed: a node that stops renewing is lost to the
/// others this long after its last renewal (plus up to one [`RENEW_EVERY`]).
pub const NODE_TTL: Duration = Duration::from_secs(2);
/// How often a node renews its registration and reads everyone else's.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);

/// What this node knows of the cluster (for metrics and logs).
#[derive(Default)]
pub struct ClusterView {
    inner: Mutex<View>,
}

#[derive(Default, Clone)]
pub struct View {
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Whether the last renewal reached the registry.
    pub registered: bool,
    pub renewals_failed: u64,
    pub nodes_lost: u64,
    pub callers_rehomed: u64,
    /// The snowflake id this node mints with (a cluster's lease).
    pub id_lease: Option<u16>,
}

impl ClusterView {
    pub fn get(&self) -> View {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn with<R>(&self, f: impl FnOnce(&mut View) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What this node is now.
pub fn info(s: &AppState) -> NodeInfo {
    NodeInfo {
        id: s.shared.me.clone(),
        endpoint: s.cfg.node_host(),
        region: s.cfg.region.clone(),
        roles: s.cfg.roles,
        load: s.sfu.participants() as u32,
        draining: *s.shutdown.borrow() || s.drain.is_draining(),
        trunk: s.cluster.get().and_then(|c| c.advert.clone()),
        edges: s.cluster.get().map(|c| c.edge_list()).unwrap_or_default(),
    }
}

/// How long a snowflake id lease lives unless renewed (renewed with the registration).
pub const ID_LEASE: Duration = Duration::from_secs(60);

/// Lease this node's snowflake id and mint with it; a changed lease is logged.
pub async fn lease_id(s: &AppState) -> Result<(), crate::shared::SharedError> {
    match s.shared.registry.lease_id(&s.shared.me, ID_LEASE).await {
        Ok(id) => {
            let before = s.nodes.with(|v| v.id_lease.replace(id));
            if before != Some(id) {
                s.store.set_id_worker(id);
                info!(node = %s.shared.me, id, "minting ids with this node's leased id");
            }
            Ok(())
        }
        Err(e) => {
            warn!(error = %e, "could not lease this node's id for new snowflakes");
            Err(e)
        }
    }
}

/// Register this node (a cluster then renews it with [`run`]).
pub async fn announce_once(s: &AppState) {
    match s.shared.registry.announce(&info(s), NODE_TTL).await {
        Ok(_) => s.nodes.with(|v| v.registered = true),
        Err(e) => warn!(error = %e, "could not register this node"),
    }
}

/// Renew this node's registration and follow the others', until shutdown.
pub async fn run(s: AppState) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = s.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => {
                // Marked draining for its last TTL (not withdrawn at once), so the others see
                // a departure rather than a failure, place no new room here, and then move
                // what it hosted.
                let _ = s.shared.registry.announce(&info(&s), NODE_TTL).await;
                info!(node = %s.shared.me, "leaving the cluster registry (draining until the registration expires)");
                return;
            }
        }
        let was = s.nodes.get().registered;
        let _ = lease_id(&s).await;
        match s.shared.registry.announce(&info(&s), NODE_TTL).await {
            Ok(renewed) => {
                if !was {
                    info!(node = %s.shared.me, "registered in the cluster");
                    s.nodes.with(|v| v.registered = true);
                }
                if !renewed {
                    // The registry had lost this node (first start, Redis restarted, or this
                    // node was paused past its TTL): what it hosts may be gone from the shared
                    // state, and presence counted under its name before is stale.
                    crate::gateway::presence::node_lost(&s, &s.shared.me).await;
                    reassert(&s).await;
                }
            }
            Err(e) => {
                if was {
                    warn!(error = %e, "cannot renew this node's registration; retrying every {RENEW_EVERY:?}");
                }
                s.nodes.with(|v| {
                    v.registered = false;
                    v.renewals_failed += 1;
                });
                continue;
            }
        }
        let live = match s.shared.registry.live_nodes().await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot read the node registry");
                continue;
            }
        };
        let now: BTreeMap<NodeId, NodeInfo> = live.into_iter().map(|n| (n.id.clone(), n)).collect();
        let before = s
            .nodes
            .with(|v| std::mem::replace(&mut v.nodes, now.clone()));
        for (id, n) in &now {
            match before.get(id) {
                None if *id != s.shared.me => {
                    info!(node = %id, endpoint = %n.endpoint, region = %n.region, "node joined the cluster")
                }
                Some(b) if !b.draining && n.draining => info!(node = %id, "node is draining"),
                _ => {}
            }
        }
        for (id, last) in before
            .iter()
            .filter(|(id, _)| !now.contains_key(*id) && **id != s.shared.me)
        {
            if last.draining {
                info!(node = %id, "node left the cluster (it was draining): moving the calls it hosted for this node's sessions");
            } else {
                warn!(node = %id, "node lost (its registration expired): moving the calls it hosted for this node's sessions");
            }
            s.nodes.with(|v| v.nodes_lost += 1);
            let moved = rehome_lost(&s, id).await;
            s.nodes.with(|v| v.callers_rehomed += moved);
            crate::gateway::presence::node_lost(&s, id).await;
        }
    }
}

/// Callers whose room `lost` hosted and whose gateway session is on this node get a new home
/// and a new VOICE_SERVER_UPDATE. (Every node does this for its own sessions; the room's new
/// home is claimed once, whoever asks first.) Returns how many were moved.
pub async fn rehome_lost(s: &AppState, lost: &NodeId) -> u64 {
    let guilds = match s.shared.voice_states.guilds().await {
        Ok(g) => g,
        Err(e) => {
            warn!(error = %e, "cannot read voice states to move the calls of a lost node");
            return 0;
        }
    };
    let mut moved = 0;
    for g in guilds {
        let states = crate::voice::executor::guild_states(s, g)
            .await
            .unwrap_or_default();
        for st in states {
            let there = match &st.home {
                Home::Node(h) => h.node == *lost,
                // An edge reached through the lost node: placed again through the room's new home.
                Home::Edge { via, .. } => via.node == *lost,
            };
            if !there || s.sessions.get(&st.session_id).is_none() {
                continue;
            }
            if crate::voice::service::rehome(s, &st).await {
                moved += 1;
            }
        }
    }
    if moved > 0 {
        info!(node = %lost, callers = moved, "callers moved off a lost node");
    }
    moved
}

/// Write back what this node hosts — its callers' voice states and their rooms' placement —
/// where the shared state no longer has it (after Redis lost its data). A state someone
/// changed meanwhile is left alone.
pub async fn reassert(s: &AppState) {
    let hosted: Vec<crate::voice::VoiceState> = {
        let v = s.voice();
        v.conns.values().filter_map(|c| c.state.clone()).collect()
    };
    if hosted.is_empty() {
        return;
    }
    let alive: Vec<NodeId> = match s.shared.registry.live_nodes().await {
        Ok(nodes) => nodes.into_iter().map(|n| n.id).collect(),
        Err(_) => return,
    };
    let (mut states, mut fenced, mut rooms) = (0, 0, std::collections::BTreeSet::new());
    for st in hosted {
        let raw = serde_json::to_string(&st).expect("a voice state serializes");
        match s
            .shared
            .voice_states
            .swap(st.guild_id, st.user_id, None, Some(&raw))
            .await
        {
            Ok(true) => states += 1,
            Ok(false) => {
                // The caller has a state: if it no longer names this node and this
                // connection's generation, the caller was moved while this node was away
                // (fenced off): its connection here ends.
                let cur = crate::voice::executor::state(s, st.guild_id, st.user_id).await;
                let ours = matches!(&cur, Ok(Some(c)) if c.generation == st.generation
                    && matches!(&c.home, Home::Node(h) if h.node == s.shared.me));
                if cur.is_ok() && !ours {
                    fenced += 1;
                    crate::voice::executor::apply_here(
                        s,
                        crate::voice::control::HomeCmd::Remove {
                            guild_id: st.guild_id,
                            user_id: st.user_id,
                            generation: st.generation,
                            code: crate::voice::control::CLOSE_DISCONNECTED,
                            reason: "this voice server lost its room to another node; rejoin"
                                .into(),
                        },
                    )
                    .await;
                    continue;
                }
            }
            Err(_) => return,
        }
        rooms.insert((st.guild_id, st.channel_id));
        // The room must be here too; if another node claimed it meanwhile, the caller
        // follows the room there (one room, one home).
        let Ok(home) = s
            .shared
            .placement
            .home(st.guild_id, st.channel_id, &s.shared.me, &alive)
            .await
        else {
            continue;
        };
        if home.node != s.shared.me {
            let (token, generation) = crate::voice::service::fresh_token();
            let placed = crate::voice::control::Placed {
                channel_id: st.channel_id,
                can_speak: st.can_speak,
                home: Home::Node(home),
                token,
                generation,
            };
            let input = Input::Rehome(placed);
            if crate::voice::executor::run(s, st.guild_id, st.user_id, &input)
                .await
                .is_ok()
            {
                fenced += 1;
            }
        }
    }
    warn!(
        states,
        fenced,
        rooms = rooms.len(),
        "the registry had lost this node: wrote back the voice states and rooms it still hosts, ended the connections moved elsewhere meanwhile"
    );
}

/// A session that arrived here (resumed from a lost node): its callers whose home is not a
/// registered node get a new home and a new VOICE_SERVER_UPDATE.
pub async fn rehome_session(s: &AppState, user: UserId, guilds: &[GuildId], session: &str) {
    let live: Vec<NodeId> = match s.shared.registry.live_nodes().await {
        Ok(n) => n.into_iter().map(|n| n.id).collect(),
        Err(_) => return,
    };
    for g in guilds {
        let Ok(Some(st)) = crate::voice::executor::state(s, *g, user).await else {
            continue;
        };
        let orphaned = st.session_id == session
            && matches!(&st.home, Home::Node(h) if !live.contains(&h.node));
        if !orphaned {
            continue;
        }
        if crate::voice::service::rehome(s, &st).await {
            s.nodes.with(|v| v.callers_rehomed += 1);
            info!(
                guild = %g,
                user = %user, "a resumed session's call moved off its lost node"
            );
        }
    }
}

/// Registry metrics.
pub fn write_metrics(s: &AppState, out: &mut String) {
    use std::fmt::Write as _;
    let v = s.nodes.get();
    let _ = writeln!(out, "# HELP lodge_cluster_nodes Nodes registered in the cluster (this one included)\n# TYPE lodge_cluster_nodes gauge\nlodge_cluster_nodes {}", v.nodes.len());
    let _ = writeln!(out, "# HELP lodge_cluster_registered Whether this node's last renewal reached the registry\n# TYPE lodge_cluster_registered gauge\nlodge_cluster_registered {}", v.registered as u8);
    let _ = writeln!(out, "# HELP lodge_cluster_renewals_failed_total Registrations this node could not renew\n# TYPE lodge_cluster_renewals_failed_total counter\nlodge_cluster_renewals_failed_total {}", v.renewals_failed);
    let _ = writeln!(out, "# HELP lodge_cluster_nodes_lost_total Nodes this node saw expire from the registry\n# TYPE lodge_cluster_nodes_lost_total counter\nlodge_cluster_nodes_lost_total {}", v.nodes_lost);
    let _ = writeln!(out, "# HELP lodge_cluster_callers_rehomed_total Callers this node moved off lost nodes\n# TYPE lodge_cluster_callers_rehomed_total counter\nlodge_cluster_callers_rehomed_total {}", v.callers_rehomed);
}
