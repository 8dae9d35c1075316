//! Several nodes. An **origin** (`--trunk-listen`) accepts edge trunks and, when a caller's
//! gateway op 4 carries `"region": "<name>"`, places the call on the least busy edge of that
//! region: it hands the edge the caller's voice state and token over the trunk (`VoicePlace`)
//! and points VOICE_SERVER_UPDATE's `endpoint` at the edge's voice gateway. An **edge**
//! (`--origin`) keeps its trunk up, accepts the callers placed on it exactly like a single
//! node's voice gateway does, and cascades media through [`lodge_edge::cascade`]. Without
//! either flag a node works alone, as before.

use lodge_ids::{ChannelId, GuildId, UserId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lodge_edge::cascade::{CascadeHandle, ClusterEvent, Role, TrunkId, TrunkReport};
use lodge_edge::{Control, PeerNode, VoiceGrant};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::app::AppState;
pub use crate::shared::EdgeInfo;
use crate::shared::TrunkAdvert;
use crate::voice::control::{Guard, HomeCmd};
use crate::voice::executor;
use crate::voice::state::{Home, PendingToken, VoiceState};

/// How an edge dials the nodes it trunks to.
pub struct Dial {
    local: SocketAddr,
    hello: lodge_edge::trunk::Hello,
    /// The seed's fingerprint (`--origin-fingerprint`): its dialer is never dropped.
    seed: String,
}

pub struct Cluster {
    pub role: Role,
    pub cascade: CascadeHandle,
    pub region: String,
    /// Origin: the trunk certificate fingerprint edges pin.
    pub fingerprint: Option<String>,
    /// Origin: where edges reach this node's trunk listener (for the registry).
    pub advert: Option<TrunkAdvert>,
    /// Origin: connected edges.
    edges: Mutex<HashMap<TrunkId, EdgeInfo>>,
    /// Either role: the peer's name for each trunk that is up.
    trunk_nodes: Mutex<HashMap<TrunkId, String>>,
    /// Edge: whether a trunk to a node (any) is up.
    pub origin_up: watch::Receiver<bool>,
    any_up: watch::Sender<bool>,
    /// Edge: which node placed each caller (guild, user) here.
    placer: Mutex<HashMap<(GuildId, UserId), String>>,
    /// Edge: how to dial, the dialers by the fingerprint they pin (and the node's name), and
    /// the node lists each trunk sent.
    dial: Option<Dial>,
    dialers: Mutex<HashMap<String, (tokio::task::JoinHandle<()>, String)>>,
    peer_lists: Mutex<HashMap<TrunkId, Vec<PeerNode>>>,
    /// Origin: handshake outcomes.
    pub acceptance: Option<std::sync::Arc<lodge_edge::trunk::OriginCounters>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    pub fn new(role: Role, cascade: CascadeHandle, region: String) -> Self {
        let (any_up, origin_up) = watch::channel(role == Role::Origin);
        Cluster {
            role,
            cascade,
            region,
            fingerprint: None,
            advert: None,
            edges: Mutex::new(HashMap::new()),
            trunk_nodes: Mutex::new(HashMap::new()),
            origin_up,
            any_up,
            placer: Mutex::new(HashMap::new()),
            dial: None,
            dialers: Mutex::new(HashMap::new()),
            peer_lists: Mutex::new(HashMap::new()),
            acceptance: None,
        }
    }

    fn edges(&self) -> std::sync::MutexGuard<'_, HashMap<TrunkId, EdgeInfo>> {
        locked(&self.edges)
    }

    /// Origin: the least busy edge in `region` (its name), counting the caller as placed there.
    pub fn place(&self, region: &str) -> Option<String> {
        let mut edges = self.edges();
        let (_, e) = edges
            .iter_mut()
            .filter(|(_, e)| e.region == region)
            .min_by_key(|(id, e)| (e.load, **id))?;
        e.load += 1;
        Some(e.node.clone())
    }

    /// Origin: the newest trunk from the edge named `edge`.
    pub fn trunk_of_edge(&self, edge: &str) -> Option<TrunkId> {
        self.edges()
            .iter()
            .filter(|(_, e)| e.node == edge)
            .map(|(id, _)| *id)
            .max()
    }

    pub fn endpoint_of(&self, edge: &str) -> Option<String> {
        self.edges()
            .values()
            .find(|e| e.node == edge)
            .map(|e| e.voice_endpoint.clone())
    }

    /// Origin: the connected edges, one entry per edge name.
    pub fn edge_list(&self) -> Vec<EdgeInfo> {
        let mut v: Vec<EdgeInfo> = self.edges().values().cloned().collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v.dedup_by(|a, b| a.node == b.node);
        v
    }

    pub async fn trunks(&self) -> Vec<TrunkReport> {
        self.cascade.report().await
    }

    /// Edge: the trunk to the node named `node`, if one is up.
    fn trunk_to(&self, node: &str) -> Option<TrunkId> {
        locked(&self.trunk_nodes)
            .iter()
            .filter(|(_, n)| *n == node)
            .map(|(id, _)| *id)
            .max()
    }

    /// Edge: send `msg` about caller (guild, user) to the node that placed them (every trunk
    /// if that is not known).
    pub async fn to_placer(&self, guild: GuildId, user: UserId, msg: Control) {
        let placer = locked(&self.placer).get(&(guild, user)).cloned();
        match placer.and_then(|n| self.trunk_to(&n)) {
            Some(id) => self.cascade.send(id, msg).await,
            None => self.cascade.broadcast(msg).await,
        }
    }

    /// Edge: keep a trunk to every node the trunks listed (and to the seed), drop the others.
    fn reconcile_dialers(&self) {
        let Some(dial) = &self.dial else { return };
        let mut wanted: HashMap<String, PeerNode> = HashMap::new();
        let mut listed = 0usize;
        for list in locked(&self.peer_lists).values() {
            for p in list {
                listed += 1;
                if p.fingerprint != dial.seed
                    && (wanted.len() < MAX_EDGE_TRUNKS || wanted.contains_key(&p.fingerprint))
                {
                    wanted.insert(p.fingerprint.clone(), p.clone());
                }
            }
        }
        if wanted.len() >= MAX_EDGE_TRUNKS && listed > MAX_EDGE_TRUNKS {
            warn!(
                limit = MAX_EDGE_TRUNKS,
                listed, "more media nodes listed than an edge trunks to; the rest are not dialled"
            );
        }
        let mut dialers = locked(&self.dialers);
        let gone: Vec<String> = dialers
            .keys()
            .filter(|f| **f != dial.seed && !wanted.contains_key(*f))
            .cloned()
            .collect();
        for f in gone {
            if let Some((task, node)) = dialers.remove(&f) {
                task.abort();
                info!(%node, "node no longer listed: dropping the trunk to it");
                let ids: Vec<TrunkId> = locked(&self.trunk_nodes)
                    .iter()
                    .filter(|(_, n)| **n == node)
                    .map(|(id, _)| *id)
                    .collect();
                let cascade = self.cascade.clone();
                tokio::spawn(async move {
                    for id in ids {
                        cascade.close(id).await;
                    }
                });
            }
        }
        for (f, p) in wanted {
            if dialers.contains_key(&f) {
                continue;
            }
            let addr = match p.addr.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    warn!(node = %p.node, addr = %p.addr, "a listed node's trunk address is not ip:port; not dialled");
                    continue;
                }
            };
            info!(node = %p.node, %addr, "trunking to another node of the cluster");
            let (tx, _) = watch::channel(false);
            let task = tokio::spawn(lodge_edge::cascade::keep_edge_connected(
                self.cascade.clone(),
                dial.local,
                addr,
                p.fingerprint.clone(),
                dial.hello.clone(),
                tx,
            ));
            dialers.insert(f, (task, p.node));
        }
    }
}

pub fn grant(st: &VoiceState, token: &str) -> VoiceGrant {
    VoiceGrant {
        guild: st.guild_id.get(),
        channel: st.channel_id.get(),
        user: st.user_id.get(),
        session_id: st.session_id.clone(),
        token: token.to_string(),
        self_mute: st.self_mute,
        self_deaf: st.self_deaf,
        mute: st.mute,
        deaf: st.deaf,
        can_speak: st.can_speak,
        generation: st.generation,
    }
}

/// Origin: carry a command for a caller hosted by the edge named `edge` over its trunk.
pub async fn to_edge(s: &AppState, edge: &str, cmd: HomeCmd) {
    let msg = match cmd {
        HomeCmd::Place { state, token } => Control::VoicePlace(grant(&state, &token)),
        HomeCmd::Flags { state } => Control::VoiceUpdate(grant(&state, "")),
        HomeCmd::Remove {
            guild_id, user_id, ..
        } => Control::VoiceRemove {
            guild: guild_id.get(),
            user: user_id.get(),
        },
    };
    match s
        .cluster
        .get()
        .and_then(|c| c.trunk_of_edge(edge).map(|id| (c, id)))
    {
        Some((c, id)) => c.cascade.send(id, msg).await,
        None => warn!(%edge, "a caller's edge has no trunk to this node; command dropped"),
    }
}

/// Edge: the voice state of a caller the origin placed here, as this edge keeps it (hosted
/// here, under the origin's generation).
fn hosted_here(s: &AppState, g: &VoiceGrant) -> VoiceState {
    VoiceState {
        guild_id: GuildId(g.guild),
        channel_id: ChannelId(g.channel),
        user_id: UserId(g.user),
        session_id: g.session_id.clone(),
        self_mute: g.self_mute,
        self_deaf: g.self_deaf,
        mute: g.mute,
        deaf: g.deaf,
        can_speak: g.can_speak,
        home: Home::Node(crate::shared::RoomHome {
            node: s.shared.me.clone(),
            epoch: 0,
        }),
        generation: g.generation,
        connected: false,
        region: String::new(),
    }
}

/// Put `st` in place of whatever this node stores for the caller.
async fn store_state(s: &AppState, st: Option<&VoiceState>, guild: GuildId, user: UserId) {
    let new = st.map(|st| serde_json::to_string(st).expect("a voice state serializes"));
    loop {
        let cur = match s.shared.voice_states.get(guild, user).await {
            Ok(c) => c,
            Err(e) => return warn!(error = %e, "voice state not stored"),
        };
        match s
            .shared
            .voice_states
            .swap(guild, user, cur.as_deref(), new.as_deref())
            .await
        {
            Ok(true) => return,
            Ok(false) => continue,
            Err(e) => return warn!(error = %e, "voice state not stored"),
        }
    }
}

/// Edge: wait up to a second for a voice token the origin is still sending over the trunk
/// (the caller may be faster than the trunk).
pub async fn await_token(s: &AppState, token: &str) {
    if s.cluster.get().map(|c| c.role) != Some(Role::Edge) {
        return;
    }
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if s.shared.voice_tokens.exists(token).await.unwrap_or(false) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every voice state this node stores.
async fn all_states(s: &AppState) -> Vec<VoiceState> {
    let mut all = Vec::new();
    for g in s.shared.voice_states.guilds().await.unwrap_or_default() {
        all.extend(executor::guild_states(s, g).await.unwrap_or_default());
    }
    all
}

/// Handle what the cluster reports, for either role.
pub async fn run_events(s: AppState, mut rx: mpsc::UnboundedReceiver<ClusterEvent>) {
    while let Some(ev) = rx.recv().await {
        let Some(c) = s.cluster.get() else { continue };
        match ev {
            ClusterEvent::TrunkUp { id, peer } => {
                locked(&c.trunk_nodes).insert(id, peer.node.clone());
                if c.role == Role::Origin {
                    c.edges().insert(
                        id,
                        EdgeInfo {
                            node: peer.node,
                            region: peer.region,
                            voice_endpoint: peer.voice_endpoint,
                            load: 0,
                        },
                    );
                } else {
                    let _ = c.any_up.send(true);
                }
            }
            ClusterEvent::TrunkDown { id, peer } => {
                let still = {
                    let mut t = locked(&c.trunk_nodes);
                    t.remove(&id);
                    t.values().any(|n| *n == peer.node)
                };
                if c.role == Role::Origin {
                    c.edges().remove(&id);
                    // A newer trunk from the same edge keeps its callers.
                    if !still {
                        replace_edge(&s, &peer.node).await;
                    }
                } else {
                    locked(&c.peer_lists).remove(&id);
                    let any = !locked(&c.trunk_nodes).is_empty();
                    let _ = c.any_up.send(any);
                    tokio::spawn(node_lost(s.clone(), peer.node));
                }
            }
            ClusterEvent::App { id, msg } => match msg {
                Control::Load { participants } => {
                    if let Some(e) = c.edges().get_mut(&id) {
                        e.load = participants;
                    }
                }
                Control::CallSummary { json } if c.role == Role::Origin => {
                    match serde_json::from_str::<lodge_chat::CallSummary>(&json) {
                        Ok(summary) => match s.store.record_call(summary).await {
                            Ok(_) => s.telemetry().calls_recorded += 1,
                            Err(e) => warn!(error = %e, "could not record an edge's call summary"),
                        },
                        Err(e) => {
                            warn!(trunk = id, error = %e, "malformed call summary from an edge")
                        }
                    }
                }
                Control::VoiceGone { guild, user } if c.role == Role::Origin => {
                    // Only if the caller is still placed on that edge through this node (not
                    // moved meanwhile).
                    let edge = c.edges().get(&id).map(|e| e.node.clone());
                    if let Some(edge) = edge {
                        let via = s.shared.me.clone();
                        crate::voice::service::leave_if(
                            &s,
                            GuildId(guild),
                            UserId(user),
                            Guard::Edge { via, edge },
                        )
                        .await;
                    }
                }
                Control::VoicePlace(g) if c.role == Role::Edge => {
                    let st = hosted_here(&s, &g);
                    let placer = locked(&c.trunk_nodes).get(&id).cloned();
                    place_here(&s, st, g.token, placer.as_deref()).await
                }
                Control::VoiceUpdate(g) if c.role == Role::Edge => update_here(&s, g).await,
                Control::VoiceRemove { guild, user } if c.role == Role::Edge => {
                    let channel = executor::state(&s, GuildId(guild), UserId(user))
                        .await
                        .ok()
                        .flatten()
                        .map(|st| st.channel_id);
                    crate::voice::service::disconnect_user(&s, GuildId(guild), UserId(user)).await;
                    if let Some(ch) = channel {
                        refresh_interest(&s, ch).await;
                    }
                }
                Control::Peers { nodes } if c.role == Role::Edge => {
                    locked(&c.peer_lists).insert(id, nodes);
                    c.reconcile_dialers();
                }
                other => warn!(trunk = id, msg = ?other, "unexpected cluster message"),
            },
        }
    }
}

/// Most nodes an edge keeps trunks to, however many its `Peers` lists name (each trunk is a
/// QUIC connection with its own task and queues).
pub const MAX_EDGE_TRUNKS: usize = 64;

/// Origin: the edge named `edge` went away. Its callers placed through this node get a fresh
/// token and VOICE_SERVER_UPDATE pointing at another edge of the same region, or at a node, and
/// reconnect there.
async fn replace_edge(s: &AppState, edge: &str) {
    let moved: Vec<VoiceState> = all_states(s)
        .await
        .into_iter()
        .filter(|st| {
            matches!(&st.home, Home::Edge { via, edge: e } if via.node == s.shared.me && e == edge)
        })
        .collect();
    if moved.is_empty() {
        return;
    }
    warn!(%edge, callers = moved.len(), "edge lost; moving its callers");
    for st in moved {
        crate::voice::service::rehome(s, &st).await;
    }
}

/// Edge: tell the cascade which nodes placed the callers this edge has in `room` (their trunks
/// get the room's local speakers; none when the room is empty here).
async fn refresh_interest(s: &AppState, room: ChannelId) {
    let Some(c) = s.cluster.get() else { return };
    let states = all_states(s).await;
    let mut nodes: Vec<String> = {
        let placer = locked(&c.placer);
        states
            .iter()
            .filter(|st| st.channel_id == room)
            .filter_map(|st| placer.get(&(st.guild_id, st.user_id)).cloned())
            .collect()
    };
    nodes.sort();
    nodes.dedup();
    c.cascade.interest(room.get(), nodes).await;
}

/// Edge: accept a caller the node `placer` placed here (their earlier connection here, if any,
/// ends); the room's local speakers go to that node.
pub async fn place_here(s: &AppState, st: VoiceState, token: String, placer: Option<&str>) {
    let st = if matches!(&st.home, Home::Node(h) if h.node == s.shared.me) {
        st
    } else {
        hosted_here(s, &grant(&st, &token))
    };
    let before = executor::state(s, st.guild_id, st.user_id)
        .await
        .ok()
        .flatten()
        .map(|b| b.channel_id);
    let old = {
        let mut v = s.voice();
        let id = v.by_user.get(&(st.guild_id, st.user_id)).copied();
        id.and_then(|id| v.remove_conn(id))
    };
    store_state(s, Some(&st), st.guild_id, st.user_id).await;
    let pending = PendingToken {
        user_id: st.user_id,
        guild_id: st.guild_id,
        channel_id: st.channel_id,
        session_id: st.session_id.clone(),
        generation: st.generation,
    };
    let ttl = Duration::from_secs(s.cfg.voice_token_ttl);
    let value = serde_json::to_string(&pending).expect("a token serializes");
    if let Err(e) = s.shared.voice_tokens.issue(&token, &value, ttl).await {
        warn!(error = %e, "voice token not stored");
    }
    if let Some(old) = old {
        let _ = old.tx.send(crate::voice::VoiceOut::Close(
            4014,
            "moved to another voice channel".into(),
        ));
        crate::voice::e2ee::conn_removed(s, &old);
        if let Some(p) = old.participant {
            s.sfu.leave(p).await;
        }
    }
    if let (Some(c), Some(placer)) = (s.cluster.get(), placer) {
        locked(&c.placer).insert((st.guild_id, st.user_id), placer.to_string());
        refresh_interest(s, st.channel_id).await;
        if let Some(b) = before.filter(|b| *b != st.channel_id) {
            refresh_interest(s, b).await;
        }
    }
    info!(
        guild = %st.guild_id,
        channel = %st.channel_id,
        user = %st.user_id,
        "caller placed on this edge"
    );
}

/// Edge: the origin changed a caller's flags.
async fn update_here(s: &AppState, g: VoiceGrant) {
    let Ok(Some(cur)) = executor::state(s, GuildId(g.guild), UserId(g.user)).await else {
        return;
    };
    let st = VoiceState {
        self_mute: g.self_mute,
        self_deaf: g.self_deaf,
        mute: g.mute,
        deaf: g.deaf,
        can_speak: g.can_speak,
        ..cur
    };
    store_state(s, Some(&st), GuildId(g.guild), UserId(g.user)).await;
    executor::apply_here(s, HomeCmd::Flags { state: st }).await;
}

/// How long an edge keeps its callers talking among themselves after losing the trunk to the
/// node that placed them before it tells them (voice close 4015) that the call is broken.
pub const ORIGIN_LOST_GRACE: Duration = Duration::from_secs(5);

/// Edge: the trunk to `node` went down. If no trunk to it is back after the grace time, close
/// the voice connections (4015, "voice server crashed": rejoin) of the callers that node placed
/// here and that no other node placed again meanwhile, instead of leaving them in a call that
/// only hears this edge.
async fn node_lost(s: AppState, node: String) {
    tokio::time::sleep(ORIGIN_LOST_GRACE).await;
    let Some(c) = s.cluster.get() else { return };
    if c.trunk_to(&node).is_some() {
        return;
    }
    let states: Vec<VoiceState> = {
        let all = all_states(&s).await;
        let placer = locked(&c.placer);
        all.into_iter()
            .filter(|st| placer.get(&(st.guild_id, st.user_id)) == Some(&node))
            .collect()
    };
    if !states.is_empty() {
        warn!(
            %node,
            callers = states.len(),
            "node unreachable for {ORIGIN_LOST_GRACE:?}: closing the calls it placed on this edge (4015)"
        );
    }
    let mut rooms: Vec<ChannelId> = states.iter().map(|st| st.channel_id).collect();
    rooms.sort_unstable();
    rooms.dedup();
    for st in states {
        locked(&c.placer).remove(&(st.guild_id, st.user_id));
        store_state(&s, None, st.guild_id, st.user_id).await;
        executor::apply_here(
            &s,
            HomeCmd::Remove {
                guild_id: st.guild_id,
                user_id: st.user_id,
                generation: st.generation,
                code: 4015,
                reason: "this edge lost its origin; rejoin the channel".into(),
            },
        )
        .await;
    }
    for room in rooms {
        refresh_interest(&s, room).await;
    }
}

/// Origin in a cluster: tell each edge trunked here every node that accepts trunks (from the
/// registry), after it connects and whenever the list changes, so it trunks to all of them.
pub async fn announce_peers(s: AppState) {
    let mut sent: HashMap<TrunkId, Vec<PeerNode>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(c) = s.cluster.get() else { continue };
        let mut nodes: Vec<PeerNode> = s
            .nodes
            .get()
            .nodes
            .values()
            .filter(|n| n.roles.media)
            .filter_map(|n| {
                n.trunk.as_ref().map(|t| PeerNode {
                    node: n.id.0.clone(),
                    addr: t.addr.clone(),
                    fingerprint: t.fingerprint.clone(),
                })
            })
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        if nodes.is_empty() {
            continue;
        }
        let trunks: Vec<TrunkId> = c.edges().keys().copied().collect();
        sent.retain(|id, _| trunks.contains(id));
        for id in trunks {
            if sent.get(&id) != Some(&nodes) {
                c.cascade
                    .send(
                        id,
                        Control::Peers {
                            nodes: nodes.clone(),
                        },
                    )
                    .await;
                sent.insert(id, nodes.clone());
            }
        }
    }
}

/// Where edges reach a trunk listener on `listen`: itself, or this node's host with its port
/// when it listens on every address.
fn advertised(cfg: &crate::config::Config, listen: SocketAddr) -> String {
    if !listen.ip().is_unspecified() {
        return listen.to_string();
    }
    let host = cfg.node_host();
    let host = match host.rsplit_once(':') {
        Some((h, _)) => h.to_string(),
        None => host,
    };
    format!("{host}:{}", listen.port())
}

/// Start the cluster side of a node, if configured: returns the cluster and the cascade's
/// event stream for [`run_events`].
pub async fn start(
    cfg: &crate::config::Config,
    sfu: lodge_sfu::shell::SfuHandle,
    exports: mpsc::Receiver<lodge_sfu::shell::Exported>,
) -> Result<(Cluster, mpsc::UnboundedReceiver<ClusterEvent>), lodge_edge::EdgeError> {
    let token = cfg.cluster_token.clone().unwrap_or_default();
    if let Some(addr) = cfg.trunk_listen {
        let id = lodge_edge::tls::Identity::load_or_create(&cfg.data_dir)?;
        let fingerprint = id.fingerprint();
        let origin = lodge_edge::trunk::Origin::bind(addr, &id, &token, &cfg.node_name())?;
        let acceptance = origin.counters();
        let (cascade, events) = lodge_edge::cascade::spawn(Role::Origin, sfu, exports);
        let c2 = cascade.clone();
        tokio::spawn(async move {
            while let Some((trunk, peer)) = origin.accept().await {
                // The origin does not wait for a trunk to end.
                drop(c2.add_trunk(peer, trunk).await);
            }
        });
        info!(trunk = %addr, %fingerprint, "origin: accepting edge trunks");
        let mut c = Cluster::new(Role::Origin, cascade, cfg.region.clone());
        c.advert = Some(TrunkAdvert {
            addr: advertised(cfg, addr),
            fingerprint: fingerprint.clone(),
        });
        c.fingerprint = Some(fingerprint);
        c.acceptance = Some(acceptance);
        return Ok((c, events));
    }
    let origin = cfg.origin.expect("start is only called for a cluster role");
    let (cascade, events) = lodge_edge::cascade::spawn(Role::Edge, sfu.clone(), exports);
    let hello = lodge_edge::trunk::Hello {
        token,
        node: format!("{}-{}", cfg.region, cfg.public_host()),
        region: cfg.region.clone(),
        voice_endpoint: cfg.public_host(),
    };
    let local: SocketAddr = if origin.is_ipv4() {
        SocketAddr::new(cfg.media_listen.ip(), 0)
    } else {
        "[::]:0".parse().expect("valid address")
    };
    let seed = cfg.origin_fingerprint.clone().unwrap_or_default();
    let (tx, _) = watch::channel(false);
    let seed_task = tokio::spawn(lodge_edge::cascade::keep_edge_connected(
        cascade.clone(),
        local,
        origin,
        seed.clone(),
        hello.clone(),
        tx,
    ));
    // Report load to every node it trunks to every 2 s.
    let c2 = cascade.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs(2));
        loop {
            t.tick().await;
            let participants = sfu.participants() as u32;
            for r in c2.report().await {
                c2.send(r.id, Control::Load { participants }).await;
            }
        }
    });
    let mut c = Cluster::new(Role::Edge, cascade, cfg.region.clone());
    locked(&c.dialers).insert(seed.clone(), (seed_task, String::new()));
    c.dial = Some(Dial { local, hello, seed });
    Ok((c, events))
}

/// Trunk metrics: per trunk (labelled by trunk number and the peer's region, never addresses),
/// and the origin's acceptance counters or the edge's trunk state.
pub async fn write_metrics(c: &Cluster, out: &mut String) {
    use std::fmt::Write as _;
    let role = match c.role {
        Role::Origin => "origin",
        Role::Edge => "edge",
    };
    let _ = writeln!(out, "# HELP lodge_cluster_role This node's role in a cluster\n# TYPE lodge_cluster_role gauge\nlodge_cluster_role{{role=\"{role}\"}} 1");
    if c.role == Role::Edge {
        let up = *c.origin_up.borrow() as u8;
        let _ = writeln!(out, "# HELP lodge_origin_up Whether a trunk to a node (the origin, or any node of a cluster) is up\n# TYPE lodge_origin_up gauge\nlodge_origin_up {up}");
    }
    if let Some(oc) = &c.acceptance {
        use std::sync::atomic::Ordering::Relaxed;
        let _ = writeln!(out, "# HELP lodge_trunk_handshakes_total Edge trunk handshakes by outcome\n# TYPE lodge_trunk_handshakes_total counter");
        for (k, v) in [
            ("accepted", oc.accepted.load(Relaxed)),
            ("refused", oc.refused.load(Relaxed)),
            ("failed", oc.failed.load(Relaxed)),
        ] {
            let _ = writeln!(out, "lodge_trunk_handshakes_total{{outcome=\"{k}\"}} {v}");
        }
    }
    let trunks = c.trunks().await;
    type Get = fn(&TrunkReport) -> f64;
    let series: [(&str, &str, &str, Get); 15] = [
        (
            "trunk_streams_out",
            "gauge",
            "Speakers this node sends on the trunk now",
            |t| t.streams_out as f64,
        ),
        (
            "trunk_streams_in",
            "gauge",
            "Speakers this node receives on the trunk now",
            |t| t.streams_in as f64,
        ),
        (
            "trunk_media_sent_total",
            "counter",
            "Media datagrams sent (first transmissions)",
            |t| t.stats.session.media_out as f64,
        ),
        (
            "trunk_media_received_total",
            "counter",
            "Media datagrams received and used",
            |t| t.stats.session.media_in as f64,
        ),
        (
            "trunk_payload_bytes_sent_total",
            "counter",
            "Opus payload bytes sent",
            |t| t.stats.session.payload_bytes_out as f64,
        ),
        (
            "trunk_udp_bytes_sent_total",
            "counter",
            "UDP bytes the trunk sent (QUIC, all frames)",
            |t| t.stats.udp_tx_bytes as f64,
        ),
        (
            "trunk_repairs_sent_total",
            "counter",
            "Retransmissions sent for NACKs",
            |t| t.stats.session.repairs_out as f64,
        ),
        (
            "trunk_recovered_total",
            "counter",
            "Lost packets recovered by NACK",
            |t| t.stats.session.repair.recovered as f64,
        ),
        (
            "trunk_lost_total",
            "counter",
            "Packets lost after repair (given up)",
            |t| t.stats.session.repair.abandoned as f64,
        ),
        (
            "trunk_dropped_malformed_total",
            "counter",
            "Malformed datagrams from the peer",
            |t| t.stats.session.dropped_malformed as f64,
        ),
        (
            "trunk_dropped_unknown_stream_total",
            "counter",
            "Datagrams for streams never opened",
            |t| t.stats.session.dropped_unknown_stream as f64,
        ),
        (
            "trunk_dropped_flood_total",
            "counter",
            "Datagrams over the trunk's rate limit",
            |t| t.stats.session.dropped_flood as f64,
        ),
        (
            "trunk_export_queue_drops_total",
            "counter",
            "Packets not sent because the trunk queue was full",
            |t| t.dropped_queue_full as f64,
        ),
        (
            "trunk_owner_lag_drops_total",
            "counter",
            "Received packets dropped because this node lagged behind its trunk",
            |t| t.stats.dropped_owner_lag as f64,
        ),
        (
            "trunk_rtt_seconds",
            "gauge",
            "QUIC round-trip estimate",
            |t| t.stats.rtt_ms / 1000.0,
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(
            out,
            "# HELP lodge_{name} {help}\n# TYPE lodge_{name} {kind}"
        );
        for t in &trunks {
            let region = if t.region.is_empty() {
                "origin"
            } else {
                t.region.as_str()
            };
            let _ = writeln!(
                out,
                "lodge_{name}{{trunk=\"{}\",region=\"{region}\"}} {}",
                t.id,
                get(t)
            );
        }
    }
}
