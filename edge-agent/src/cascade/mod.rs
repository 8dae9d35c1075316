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
//!
//! Shape: the decisions live in [`CascadeCore`] (`core.rs`), a sans-IO state machine fed
//! inputs and drained of [`Output`]s, tested on a simulated clock (`tests.rs`). This file is
//! its tokio shell: [`CascadeHandle`] and one task that waits for an export, a trunk event, a
//! command or the core's timeout, hands it to the core and carries out what it asks — the
//! trunks' queues, the node's handle and signaling's event channel are only touched here.

mod core;
mod edge_rooms;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lodge_sfu::shell::{Exported, SfuHandle};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

pub use self::core::{
    CascadeCore, ClusterEvent, NodeCommand, Output, Role, StreamMedia, TrunkId, TrunkView,
    STREAM_IDLE, SWEEP_INTERVAL,
};
pub use self::edge_rooms::EdgeRooms;
use crate::trunk::{Peer, Trunk, TrunkCommand, TrunkEvent, TrunkStats};
use crate::wire::Control;

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

/// The shell's side of a trunk: its queue and figures (the core keeps what it means).
struct Link {
    cmd: mpsc::Sender<TrunkCommand>,
    stats: watch::Receiver<TrunkStats>,
    /// Exports dropped because the trunk's queue was full.
    dropped: u64,
    done: Option<oneshot::Sender<()>>,
}

/// Trunk messages waiting in a trunk's queue before new exports are dropped.
const TRUNK_QUEUE: usize = 8192;

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

/// The shell: waits for an export, a trunk event, a command or the core's timeout, feeds it
/// to the [`CascadeCore`] and carries out what the core asks, before waiting again.
async fn run(
    role: Role,
    sfu: SfuHandle,
    mut exports: mpsc::Receiver<Exported>,
    mut cmds: mpsc::Receiver<Cmd>,
    events: mpsc::UnboundedSender<ClusterEvent>,
) {
    let mut core = CascadeCore::new(role, Instant::now());
    let (tev_tx, mut tev_rx) = mpsc::channel::<(TrunkId, Option<TrunkEvent>)>(4096);
    let mut links: HashMap<TrunkId, Link> = HashMap::new();
    // One timer, moved only when the core's timeout moves: most wake-ups are exports, and
    // registering a fresh timer for each would cost every packet.
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    loop {
        drain(&mut core, &mut links, &sfu, &events).await;
        let wake = core
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        if sleep.deadline() != wake {
            sleep.as_mut().reset(wake);
        }
        tokio::select! {
            x = exports.recv() => match x {
                None => break,
                Some(Exported::Packet(x)) => core.handle_export(Instant::now(), x),
                Some(Exported::End(from)) => core.handle_export_end(from),
            },
            ev = tev_rx.recv() => {
                let Some((id, ev)) = ev else { break };
                match ev {
                    Some(TrunkEvent::Media(d)) => core.handle_trunk_media(id, d),
                    Some(TrunkEvent::Notice(n)) => core.handle_trunk_notice(id, n),
                    None => core.handle_trunk_down(id),
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
                        info!(trunk = id, peer = %peer.node, region = %peer.region, "trunk up");
                        links.insert(id, Link { cmd: ctx, stats: srx, dropped: 0, done: Some(done) });
                        core.handle_trunk_up(id, peer);
                    }
                    Cmd::App { id, msg } => core.send_app(id, msg),
                    Cmd::Interest { room, nodes } => core.set_interest(room, &nodes),
                    Cmd::Close { id } => {
                        // Dropping the trunk's command sender ends its driver; the trunk then
                        // reports down through the usual path (until then, what the core
                        // sends it is dropped).
                        if let Some(l) = links.get_mut(&id) {
                            l.cmd = mpsc::channel(1).0;
                        }
                    }
                    Cmd::Report(reply) => {
                        let r = core.trunks().map(|t| {
                            let l = links.get(&t.id);
                            TrunkReport {
                                id: t.id,
                                node: t.peer.node.clone(),
                                region: t.peer.region.clone(),
                                voice_endpoint: t.peer.voice_endpoint.clone(),
                                load: t.load,
                                streams_out: t.streams_out,
                                streams_in: t.streams_in,
                                rooms_of_interest: t.rooms_of_interest,
                                dropped_queue_full: l.map_or(0, |l| l.dropped),
                                stats: l.map(|l| *l.stats.borrow()).unwrap_or_default(),
                            }
                        }).collect();
                        let _ = reply.send(r);
                    }
                }
            }
            _ = &mut sleep => core.handle_timeout(Instant::now()),
        }
    }
}

/// Carry out everything the core produced, in order. Trunk media and stream opens/closes are
/// never waited for (a busy trunk must not hold up the node's other trunks); control
/// messages and node commands are.
async fn drain(
    core: &mut CascadeCore,
    links: &mut HashMap<TrunkId, Link>,
    sfu: &SfuHandle,
    events: &mpsc::UnboundedSender<ClusterEvent>,
) {
    while let Some(o) = core.poll_output() {
        match o {
            Output::Open {
                trunk,
                speaker,
                stream,
                room,
                user,
                ssrc,
                first,
            } => {
                let Some(l) = links.get_mut(&trunk) else {
                    continue;
                };
                let open = TrunkCommand::OpenAs {
                    stream,
                    room,
                    user,
                    ssrc,
                };
                if l.cmd.try_send(open).is_err() {
                    l.dropped += 1;
                    core.handle_open_dropped(trunk, speaker);
                    continue;
                }
                if l.cmd.try_send(media(first)).is_err() {
                    l.dropped += 1;
                }
            }
            Output::Media { trunk, media: m } => {
                if let Some(l) = links.get_mut(&trunk) {
                    if l.cmd.try_send(media(m)).is_err() {
                        l.dropped += 1;
                    }
                }
            }
            Output::Close { trunk, stream } => {
                if let Some(l) = links.get(&trunk) {
                    let _ = l.cmd.try_send(TrunkCommand::Close { stream });
                }
            }
            Output::Control { trunk, msg } => {
                if let Some(l) = links.get(&trunk) {
                    let _ = l.cmd.send(TrunkCommand::App(msg)).await;
                }
            }
            Output::Node(c) => match c {
                NodeCommand::ExportAll => sfu.set_export_all(true).await,
                NodeCommand::SetExported { room, on } => sfu.set_exported(room, on).await,
                NodeCommand::AddRemote {
                    trunk,
                    stream,
                    room,
                    user,
                    ssrc,
                } => match sfu.add_remote(room, user, ssrc).await {
                    Ok(idx) => core.handle_remote_added(trunk, stream, idx),
                    Err(e) => warn!(trunk, error = %e, "cannot add a remote speaker"),
                },
                NodeCommand::RemoveRemote(idx) => sfu.remove_remote(idx).await,
                NodeCommand::RemoteRtp(p) => sfu.remote_rtp(p).await,
            },
            Output::Cluster(ev) => {
                if let ClusterEvent::TrunkDown { id, peer } = &ev {
                    if let Some(mut l) = links.remove(id) {
                        info!(trunk = id, peer = %peer.node, "trunk down");
                        if let Some(d) = l.done.take() {
                            let _ = d.send(());
                        }
                    }
                }
                let _ = events.send(ev);
            }
        }
    }
}

fn media(m: StreamMedia) -> TrunkCommand {
    TrunkCommand::Media {
        stream: m.stream,
        rtp_ts: m.rtp_ts,
        level: m.level,
        marker: m.marker,
        payload: m.payload,
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
