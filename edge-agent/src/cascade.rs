//! Cascading: joins a media node's exported speaker packets to its trunks, and its trunks'
//! media to the node's remote speakers.
//!
//! - On an **edge**, a local speaker who talks in room R is exported (one stream per speaker)
//!   to the node(s) that placed R's callers here — the room's home, whose trunk carried the
//!   `VoicePlace` — and to no other trunk (an edge of a cluster holds trunks to several nodes,
//!   each the home of other rooms). What a trunk sends becomes remote speakers in the edge's
//!   node, ranked and fanned out to the edge's listeners there. Remote speakers are never sent
//!   back.
//! - On an **origin**, a room's speakers go to every edge that declared interest in the room
//!   (`Interest`), local speakers and other edges' speakers alike, never back to the edge a
//!   speaker came from. So an edge receives each active speaker once, however many of its
//!   callers listen.
//!
//! Speaker selection: each node ranks the speakers it sees (its own and the remote ones) with
//! the same selector. Every node sees every talking speaker of the room (talkers are exported,
//! silent ones are not), so all nodes rank the same top speakers; a remote speaker's levels
//! arrive with its packets, one trunk hop (plus the export queue) after the speaker's own node
//! saw them. Nothing else has to be agreed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lodge_sfu::shell::{Exported, RemotePacket, SfuHandle};
use lodge_sfu::{ParticipantIdx, RoomId, Ssrc, UserId};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::trunk::{Peer, Trunk, TrunkCommand, TrunkEvent, TrunkStats};
use crate::wire::Control;
use crate::Notice;

pub type TrunkId = u64;

/// Which side of the trunks this node is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Origin,
    Edge,
}

/// What signaling learns from the cluster.
#[derive(Debug)]
pub enum ClusterEvent {
    TrunkUp {
        id: TrunkId,
        peer: Peer,
    },
    TrunkDown {
        id: TrunkId,
        peer: Peer,
    },
    /// An app-level message from a trunk peer (placement, load, interest is handled here).
    App {
        id: TrunkId,
        msg: Control,
    },
}

/// One trunk as reported on /metrics and the JSON endpoints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrunkReport {
    pub id: TrunkId,
    pub node: String,
    pub region: String,
    pub voice_endpoint: String,
    pub load: u32,
    /// Speakers this node sends on the trunk now, and receives from it.
    pub streams_out: usize,
    pub streams_in: usize,
    pub rooms_of_interest: usize,
    /// Exports dropped because the trunk's queue was full.
    pub dropped_queue_full: u64,
    pub stats: TrunkStats,
}

enum Cmd {
    Add {
        id: TrunkId,
        peer: Peer,
        trunk: Trunk,
        done: oneshot::Sender<()>,
    },
    App {
        id: TrunkId,
        msg: Control,
    },
    /// (Edge role) the nodes that placed this edge's callers in `room` now (empty: no callers).
    Interest {
        room: u64,
        nodes: Vec<String>,
    },
    /// End a trunk (the edge no longer wants it).
    Close {
        id: TrunkId,
    },
    Report(oneshot::Sender<Vec<TrunkReport>>),
}

/// Cheap handle to the cascade task.
#[derive(Clone)]
pub struct CascadeHandle {
    tx: mpsc::Sender<Cmd>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl CascadeHandle {
    /// Hand an established trunk to the cascade; `done` fires when it has ended.
    pub async fn add_trunk(&self, peer: Peer, trunk: Trunk) -> (TrunkId, oneshot::Receiver<()>) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (done, rx) = oneshot::channel();
        let _ = self
            .tx
            .send(Cmd::Add {
                id,
                peer,
                trunk,
                done,
            })
            .await;
        (id, rx)
    }

    /// End a trunk (it is reported down like any other trunk that ends).
    pub async fn close(&self, id: TrunkId) {
        let _ = self.tx.send(Cmd::Close { id }).await;
    }

    /// Send an app-level message to a trunk peer.
    pub async fn send(&self, id: TrunkId, msg: Control) {
        let _ = self.tx.send(Cmd::App { id, msg }).await;
    }

    /// Send an app-level message to every trunk peer (an edge: its origin).
    pub async fn broadcast(&self, msg: Control) {
        for r in self.report().await {
            self.send(r.id, msg.clone()).await;
        }
    }

    /// (Edge) the nodes that placed this edge's callers in `room` (none: no callers left):
    /// their trunks get the room's local speakers, and no other trunk does.
    pub async fn interest(&self, room: u64, nodes: Vec<String>) {
        let _ = self.tx.send(Cmd::Interest { room, nodes }).await;
    }

    pub async fn report(&self) -> Vec<TrunkReport> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Report(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

struct Link {
    peer: Peer,
    cmd: mpsc::Sender<TrunkCommand>,
    stats: watch::Receiver<TrunkStats>,
    /// Rooms the peer wants (origin role: from its Interest messages).
    interest: HashSet<u64>,
    /// Speakers sent on this trunk: node participant → (stream, last packet, room).
    out: HashMap<ParticipantIdx, (u16, Instant, u64)>,
    load: u32,
    dropped: u64,
    next_stream: u16,
    done: Option<oneshot::Sender<()>>,
}

/// Trunk messages waiting in a trunk's queue before new exports are dropped.
const TRUNK_QUEUE: usize = 8192;
/// A speaker who sent nothing for this long has its trunk stream closed.
const STREAM_IDLE: Duration = Duration::from_secs(10);

/// Start the cascade for a node in `role`. `exports` is the node's export receiver
/// ([`lodge_sfu::shell::spawn_cascading`]).
pub fn spawn(
    role: Role,
    sfu: SfuHandle,
    exports: mpsc::Receiver<Exported>,
) -> (CascadeHandle, mpsc::UnboundedReceiver<ClusterEvent>) {
    let (tx, rx) = mpsc::channel(256);
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(run(role, sfu, exports, rx, ev_tx));
    let next_id = Arc::new(std::sync::atomic::AtomicU64::new(1));
    (CascadeHandle { tx, next_id }, ev_rx)
}

async fn run(
    role: Role,
    sfu: SfuHandle,
    mut exports: mpsc::Receiver<Exported>,
    mut cmds: mpsc::Receiver<Cmd>,
    events: mpsc::UnboundedSender<ClusterEvent>,
) {
    if role == Role::Edge {
        sfu.set_export_all(true).await;
    }
    let (tev_tx, mut tev_rx) = mpsc::channel::<(TrunkId, Option<TrunkEvent>)>(4096);
    let mut links: HashMap<TrunkId, Link> = HashMap::new();
    let mut remote: HashMap<(TrunkId, u16), ParticipantIdx> = HashMap::new();
    let mut source: HashMap<ParticipantIdx, TrunkId> = HashMap::new();
    // Edge role: rooms with local callers, by the nodes that placed them (re-announced to a
    // node after a reconnect).
    let mut my_rooms = EdgeRooms::default();
    let mut sweep = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            x = exports.recv() => {
                let x = match x {
                    None => break,
                    Some(Exported::End(from)) => {
                        // Muted or gone: end its streams so other nodes free its slots now.
                        for l in links.values_mut() {
                            if let Some((stream, _, _)) = l.out.remove(&from) {
                                let _ = l.cmd.try_send(TrunkCommand::Close { stream });
                            }
                        }
                        continue;
                    }
                    Some(Exported::Packet(x)) => x,
                };
                for (id, l) in links.iter_mut() {
                    let wanted = match role {
                        Role::Edge => !x.remote && my_rooms.wants(x.room.0, &l.peer.node),
                        Role::Origin => l.interest.contains(&x.room.0) && source.get(&x.from) != Some(id),
                    };
                    if !wanted {
                        continue;
                    }
                    let now = Instant::now();
                    let stream = match l.out.get_mut(&x.from) {
                        Some(s) => { s.1 = now; s.0 }
                        None => {
                            // The cascade numbers its streams itself: nothing to wait for, so a
                            // busy trunk can never hold this loop (and itself) up.
                            let mut s = l.next_stream;
                            while l.out.values().any(|o| o.0 == s) {
                                s = s.wrapping_add(1);
                            }
                            l.next_stream = s.wrapping_add(1);
                            if l.cmd.try_send(TrunkCommand::OpenAs { stream: s, room: x.room.0, user: x.user.0, ssrc: Some(x.voice_ssrc.0) }).is_err() {
                                l.dropped += 1;
                                continue;
                            }
                            l.out.insert(x.from, (s, now, x.room.0));
                            s
                        }
                    };
                    let m = TrunkCommand::Media {
                        stream,
                        rtp_ts: x.rtp_ts,
                        level: x.level,
                        marker: x.marker,
                        payload: Bytes::copy_from_slice(&x.payload),
                    };
                    if l.cmd.try_send(m).is_err() {
                        l.dropped += 1;
                    }
                }
            }
            ev = tev_rx.recv() => {
                let Some((id, ev)) = ev else { break };
                match ev {
                    Some(TrunkEvent::Media(d)) => {
                        if let Some(idx) = remote.get(&(id, d.stream)) {
                            sfu.remote_rtp(RemotePacket {
                                idx: *idx,
                                seq: d.seq,
                                rtp_ts: d.rtp_ts,
                                level: d.level,
                                marker: d.marker,
                                payload: Arc::from(&d.payload[..]),
                            }).await;
                        }
                    }
                    Some(TrunkEvent::Notice(Notice::Opened { stream, room, user, ssrc })) => {
                        if let Some(old) = remote.remove(&(id, stream)) {
                            source.remove(&old);
                            sfu.remove_remote(old).await;
                        }
                        match sfu.add_remote(RoomId(room), UserId(user), ssrc.map(Ssrc)).await {
                            Ok(idx) => {
                                remote.insert((id, stream), idx);
                                source.insert(idx, id);
                            }
                            Err(e) => warn!(trunk = id, error = %e, "cannot add a remote speaker"),
                        }
                    }
                    Some(TrunkEvent::Notice(Notice::Closed { stream })) => {
                        if let Some(idx) = remote.remove(&(id, stream)) {
                            source.remove(&idx);
                            sfu.remove_remote(idx).await;
                        }
                    }
                    Some(TrunkEvent::Notice(Notice::App(Control::Interest { room, on }))) => {
                        if let Some(l) = links.get_mut(&id) {
                            if on {
                                l.interest.insert(room);
                            } else {
                                l.interest.remove(&room);
                                // Nobody there listens any more: end the room's streams now.
                                let ended: Vec<(ParticipantIdx, u16)> = l.out.iter()
                                    .filter(|(_, o)| o.2 == room).map(|(p, o)| (*p, o.0)).collect();
                                for (p, stream) in ended {
                                    l.out.remove(&p);
                                    let _ = l.cmd.try_send(TrunkCommand::Close { stream });
                                }
                            }
                        }
                        let any = links.values().any(|l| l.interest.contains(&room));
                        sfu.set_exported(RoomId(room), any).await;
                    }
                    Some(TrunkEvent::Notice(Notice::App(Control::Load { participants }))) => {
                        if let Some(l) = links.get_mut(&id) { l.load = participants; }
                        let _ = events.send(ClusterEvent::App { id, msg: Control::Load { participants } });
                    }
                    Some(TrunkEvent::Notice(Notice::App(msg))) => {
                        let _ = events.send(ClusterEvent::App { id, msg });
                    }
                    None => {
                        // The trunk ended: its remote speakers leave, its rooms stop exporting.
                        let gone: Vec<(TrunkId, u16)> = remote.keys().filter(|k| k.0 == id).copied().collect();
                        for k in gone {
                            if let Some(idx) = remote.remove(&k) {
                                source.remove(&idx);
                                sfu.remove_remote(idx).await;
                            }
                        }
                        if let Some(mut l) = links.remove(&id) {
                            for room in &l.interest {
                                let any = links.values().any(|o| o.interest.contains(room));
                                sfu.set_exported(RoomId(*room), any).await;
                            }
                            info!(trunk = id, peer = %l.peer.node, "trunk down");
                            if let Some(d) = l.done.take() { let _ = d.send(()); }
                            let _ = events.send(ClusterEvent::TrunkDown { id, peer: l.peer });
                        }
                    }
                }
            }
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    Cmd::Add { id, peer, trunk, done } => {
                        let (ctx, crx) = mpsc::channel(TRUNK_QUEUE);
                        let (etx, mut erx) = mpsc::channel(4096);
                        let (stx, srx) = watch::channel(TrunkStats::default());
                        let fwd = tev_tx.clone();
                        tokio::spawn(async move {
                            while let Some(e) = erx.recv().await {
                                if fwd.send((id, Some(e))).await.is_err() { return; }
                            }
                            let _ = fwd.send((id, None)).await;
                        });
                        let node = peer.node.clone();
                        tokio::spawn(async move {
                            let why = trunk.run(crx, etx, stx).await;
                            info!(trunk = id, peer = %node, reason = %why, "trunk ended");
                        });
                        // An edge re-announces its rooms to a (re)connected origin.
                        if role == Role::Edge {
                            for room in my_rooms.rooms_of(&peer.node) {
                                let _ = ctx.send(TrunkCommand::App(Control::Interest { room, on: true })).await;
                            }
                        }
                        info!(trunk = id, peer = %peer.node, region = %peer.region, "trunk up");
                        let _ = events.send(ClusterEvent::TrunkUp { id, peer: peer.clone() });
                        links.insert(id, Link {
                            peer, cmd: ctx, stats: srx, interest: HashSet::new(), out: HashMap::new(),
                            load: 0, dropped: 0, next_stream: 0, done: Some(done),
                        });
                    }
                    Cmd::App { id, msg } => {
                        if let Some(l) = links.get(&id) {
                            let _ = l.cmd.send(TrunkCommand::App(msg)).await;
                        }
                    }
                    Cmd::Interest { room, nodes } => {
                        let (added, removed) = my_rooms.set(room, &nodes);
                        for l in links.values_mut() {
                            let on = if added.contains(&l.peer.node) {
                                true
                            } else if removed.contains(&l.peer.node) {
                                false
                            } else {
                                continue;
                            };
                            let _ = l.cmd.send(TrunkCommand::App(Control::Interest { room, on })).await;
                            if !on {
                                let ended: Vec<(ParticipantIdx, u16)> = l.out.iter()
                                    .filter(|(_, o)| o.2 == room).map(|(p, o)| (*p, o.0)).collect();
                                for (p, stream) in ended {
                                    l.out.remove(&p);
                                    let _ = l.cmd.try_send(TrunkCommand::Close { stream });
                                }
                            }
                        }
                    }
                    Cmd::Close { id } => {
                        // Dropping the trunk's command sender ends its driver; the trunk then
                        // reports down through the usual path.
                        if let Some(l) = links.get_mut(&id) {
                            l.cmd = mpsc::channel(1).0;
                        }
                    }
                    Cmd::Report(reply) => {
                        let r = links.iter().map(|(id, l)| TrunkReport {
                            id: *id,
                            node: l.peer.node.clone(),
                            region: l.peer.region.clone(),
                            voice_endpoint: l.peer.voice_endpoint.clone(),
                            load: l.load,
                            streams_out: l.out.len(),
                            streams_in: remote.keys().filter(|k| k.0 == *id).count(),
                            rooms_of_interest: l.interest.len(),
                            dropped_queue_full: l.dropped,
                            stats: *l.stats.borrow(),
                        }).collect();
                        let _ = reply.send(r);
                    }
                }
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                for l in links.values_mut() {
                    let idle: Vec<(ParticipantIdx, u16)> = l.out.iter()
                        .filter(|(_, (_, last, _))| now.duration_since(*last) > STREAM_IDLE)
                        .map(|(p, (s, _, _))| (*p, *s)).collect();
                    for (p, s) in idle {
                        l.out.remove(&p);
                        let _ = l.cmd.try_send(TrunkCommand::Close { stream: s });
                    }
                }
            }
        }
    }
}

/// Keep an edge connected to its origin: connect, run the trunk until it ends, reconnect with
/// backoff (0.25 s doubling to 5 s, reset after a trunk that lived). Never returns.
pub async fn keep_edge_connected(
    cascade: CascadeHandle,
    local: std::net::SocketAddr,
    origin: std::net::SocketAddr,
    pin: String,
    hello: crate::trunk::Hello,
    up: watch::Sender<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match crate::trunk::connect(local, origin, &pin, &hello).await {
            Ok((trunk, peer)) => {
                info!(origin = %peer.node, %origin, "connected to the origin");
                let _ = up.send(true);
                let started = Instant::now();
                let (_, done) = cascade.add_trunk(peer, trunk).await;
                let _ = done.await;
                let _ = up.send(false);
                warn!(%origin, "trunk to the origin lost; reconnecting");
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(250);
                }
            }
            Err(e) => {
                let _ = up.send(false);
                warn!(%origin, error = %e, retry_in = ?backoff, "cannot reach the origin");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// (Edge role) The rooms this edge has callers in, and for each the nodes that placed them
/// there: a room's local speakers go only to those nodes' trunks.
#[derive(Debug, Default)]
pub struct EdgeRooms {
    rooms: HashMap<u64, HashSet<String>>,
}

impl EdgeRooms {
    /// The nodes that placed callers of `room` here are now `nodes` (empty: none). Returns
    /// the nodes added and the nodes removed.
    pub fn set(&mut self, room: u64, nodes: &[String]) -> (Vec<String>, Vec<String>) {
        let new: HashSet<String> = nodes.iter().cloned().collect();
        let old = self.rooms.remove(&room).unwrap_or_default();
        let mut added: Vec<String> = new.difference(&old).cloned().collect();
        let mut removed: Vec<String> = old.difference(&new).cloned().collect();
        added.sort();
        removed.sort();
        if !new.is_empty() {
            self.rooms.insert(room, new);
        }
        (added, removed)
    }

    /// Whether `room`'s local speakers go to `node`'s trunk.
    pub fn wants(&self, room: u64, node: &str) -> bool {
        self.rooms.get(&room).is_some_and(|n| n.contains(node))
    }

    /// The rooms `node` placed callers of (announced again when its trunk comes back).
    pub fn rooms_of(&self, node: &str) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .rooms
            .iter()
            .filter(|(_, n)| n.contains(node))
            .map(|(r, _)| *r)
            .collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::EdgeRooms;

    #[test]
    fn two_trunks_two_rooms_each_room_only_on_its_trunk() {
        let (a, b) = ("node-a".to_string(), "node-b".to_string());
        let mut r = EdgeRooms::default();
        assert_eq!(
            r.set(1, std::slice::from_ref(&a)),
            (vec![a.clone()], vec![])
        );
        assert_eq!(
            r.set(2, std::slice::from_ref(&b)),
            (vec![b.clone()], vec![])
        );
        // Placed again by the same node: nothing new to announce.
        assert_eq!(r.set(1, std::slice::from_ref(&a)), (vec![], vec![]));
        assert!(r.wants(1, &a) && !r.wants(1, &b));
        assert!(r.wants(2, &b) && !r.wants(2, &a));
        assert!(!r.wants(3, &a));
        assert_eq!(r.rooms_of(&a), vec![1]);
        assert_eq!(r.rooms_of(&b), vec![2]);
        // Room 1's callers are placed again through node-b (node-a died): node-a is dropped,
        // so a node-a that comes back is not sent room 1 again.
        assert_eq!(
            r.set(1, std::slice::from_ref(&b)),
            (vec![b.clone()], vec![a.clone()])
        );
        assert!(r.wants(1, &b) && !r.wants(1, &a));
        assert_eq!(r.rooms_of(&a), Vec::<u64>::new());
        assert_eq!(r.rooms_of(&b), vec![1, 2]);
        // The room empties.
        assert_eq!(r.set(1, &[]), (vec![], vec![b.clone()]));
        assert!(!r.wants(1, &b));
        assert_eq!(r.set(1, &[]), (vec![], vec![]));
    }
}
