//! The node's media workers and the one handle that routes to them.
//!
//! A node runs `N` media workers, each a single-threaded loop on a thread of its own owning one
//! [`Node`](crate::Node) and its own sockets (a UDP port, and the ICE-TCP listener on the same
//! number). A room lives on one worker, chosen by a hash of its id ([`worker_for_room`]), so
//! every path into a room (a WebRTC join, a native client's IP discovery and join, a remote
//! speaker from a trunk, its packets) reaches the same worker without asking anyone: the ICE
//! candidate and the voice gateway's Ready name that worker's port. Workers share nothing on
//! the packet path; the node-wide bounds ([`Admission`]) are settled on joins and leaves.
//!
//! Participant indices that leave a worker carry its number (see
//! [`ParticipantIdx::on_worker`]), so `leave`, `set_flags`, `remove_remote` and `remote_rtp`
//! go straight to the worker named in the index, one channel hop, as with a single worker.
//!
//! A worker whose thread stops (a panic outside the per-call guard) takes only its rooms with
//! it: the others keep serving; [`SfuHandle::workers_running`] says how many are left, and
//! [`SfuHandle::is_running`] is false from then on, so readiness fails and the node is replaced.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::admission::{Admission, Seat};
use crate::error::SfuError;
use crate::ids::{GuildId, ParticipantIdx, RoomId, Ssrc, UserId, MAX_WORKERS};
use crate::node::{JoinAnswer, JoinRequest, NativeAnswer, NativeJoin, NodeConfig, NodeEvent};
use crate::participant::VoiceFlags;
use crate::shell::{
    spawn_worker, Command, Exported, ForwardDelay, MediaSockets, NodeReport, RemotePacket,
    ShellOptions, WorkerHandle, WorkerSinks, EXPORT_QUEUE,
};

/// The worker a room lives on among `workers`: a fixed mix of the room id (snowflakes differ
/// mostly in their low and time bits), so every caller of the node agrees without a table.
pub fn worker_for_room(room: RoomId, workers: usize) -> usize {
    // splitmix64's finaliser: every input bit moves every output bit.
    let mut z = room.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % workers.max(1) as u64) as usize
}

fn stopped() -> SfuError {
    SfuError::Rtc("media node stopped".into())
}

/// Cheap, cloneable handle to the node's media workers.
#[derive(Clone)]
pub struct SfuHandle {
    workers: Arc<[WorkerHandle]>,
    admission: Arc<Admission>,
    /// Full reports built (each walks every participant on every worker's thread, so callers
    /// share a cached one; this lets tests and metrics check they do).
    reports_built: Arc<AtomicU64>,
}

impl SfuHandle {
    /// How many media workers the node runs.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The worker `room` lives on.
    pub fn worker_for_room(&self, room: RoomId) -> usize {
        worker_for_room(room, self.workers.len())
    }

    /// The first worker's media address (the node's only one with a single worker).
    pub fn local_addr(&self) -> SocketAddr {
        self.workers[0].local_addr
    }

    /// Every worker's media address, by worker number.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|w| w.local_addr).collect()
    }

    /// The media port a caller of `room` must send to (its worker's).
    pub fn port_for_room(&self, room: RoomId) -> u16 {
        self.workers[self.worker_for_room(room)].local_addr.port()
    }

    /// Whether every media worker is still running (its command channel is open). Costs the
    /// media threads nothing: a readiness probe uses this instead of a report.
    pub fn is_running(&self) -> bool {
        self.workers.iter().all(|w| !w.tx.is_closed())
    }

    /// Media workers still running.
    pub fn workers_running(&self) -> usize {
        self.workers.iter().filter(|w| !w.tx.is_closed()).count()
    }

    /// Participants on the node (as of each worker loop's last wake-up), remote speakers not
    /// counted: the cheap figure load reports need, without a full report.
    pub fn participants(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.participants.load(Ordering::Relaxed))
            .sum()
    }

    /// How many full reports the node has built since start.
    pub fn reports_built(&self) -> u64 {
        self.reports_built.load(Ordering::Relaxed)
    }

    fn worker(&self, idx: ParticipantIdx) -> Option<&WorkerHandle> {
        self.workers.get(idx.worker())
    }

    async fn ask<T>(&self, w: usize, cmd: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.workers[w].tx.send(cmd(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Reserve a place under the node-wide bounds and send the join `cmd` builds to `room`'s
    /// worker, which settles the seat. A seat that never reaches the worker (stopped, or this
    /// future dropped) gives its place back when dropped.
    async fn admit<T>(
        &self,
        room: RoomId,
        user: UserId,
        guild: GuildId,
        cmd: impl FnOnce(Seat, oneshot::Sender<Result<T, SfuError>>) -> Command,
    ) -> Result<T, SfuError> {
        let seat = self.admission.reserve(user, guild)?;
        self.ask(self.worker_for_room(room), |tx| cmd(seat, tx))
            .await
            .ok_or_else(stopped)?
    }

    /// Admit a WebRTC participant on its room's worker (see [`Node::join`](crate::Node::join)).
    pub async fn join(&self, req: JoinRequest) -> Result<JoinAnswer, SfuError> {
        let (room, user, guild) = (req.room, req.user, req.guild);
        self.admit(room, user, guild, |seat, tx| Command::Join(req, seat, tx))
            .await
    }

    /// Admit a native (UDP mode) participant (see [`Node::join_native`](crate::Node::join_native)).
    pub async fn join_native(&self, req: NativeJoin) -> Result<NativeAnswer, SfuError> {
        let (room, user, guild) = (req.room, req.user, req.guild);
        self.admit(room, user, guild, |seat, tx| {
            Command::JoinNative(req, seat, tx)
        })
        .await
    }

    /// Remove a participant. Its place under the node-wide bounds is free at once, so a join
    /// that follows (a takeover, a move) is not refused while the worker catches up.
    pub async fn leave(&self, idx: ParticipantIdx) {
        self.admission.release(idx);
        if let Some(w) = self.worker(idx) {
            let _ = w.tx.send(Command::Leave(idx.local())).await;
        }
    }

    pub async fn set_flags(&self, idx: ParticipantIdx, flags: VoiceFlags) {
        if let Some(w) = self.worker(idx) {
            let _ = w.tx.send(Command::SetFlags(idx.local(), flags)).await;
        }
    }

    /// A full report, built on the media threads (O(participants)) and merged: prefer a shared,
    /// cached copy (signaling's `NodeReports`) over calling this per request. A stopped
    /// worker's rooms are missing from it ([`workers_running`](Self::workers_running) says so);
    /// `None` when no worker runs.
    pub async fn report(&self) -> Option<NodeReport> {
        self.reports_built.fetch_add(1, Ordering::Relaxed);
        let mut merged: Option<(NodeReport, hdrhistogram::Histogram<u64>)> = None;
        for w in 0..self.workers.len() {
            let Some(r) = self.ask(w, Command::Report).await else {
                continue;
            };
            merged = Some(match merged {
                None => (r.report, r.delay),
                Some((mut m, mut h)) => {
                    m.add(r.report);
                    // Same bounds in every worker: adding cannot fail.
                    let _ = h.add(&r.delay);
                    (m, h)
                }
            });
        }
        merged.map(|(mut m, h)| {
            m.forward_delay = ForwardDelay::of(&h);
            m
        })
    }

    /// Add a speaker connected to another node, on its room's worker (see
    /// [`Node::add_remote`](crate::Node::add_remote)).
    pub async fn add_remote(
        &self,
        room: RoomId,
        user: UserId,
        voice_ssrc: Option<Ssrc>,
    ) -> Result<ParticipantIdx, SfuError> {
        let w = self.worker_for_room(room);
        self.ask(w, |tx| Command::AddRemote(room, user, voice_ssrc, tx))
            .await
            .ok_or_else(stopped)?
    }

    pub async fn remove_remote(&self, idx: ParticipantIdx) {
        if let Some(w) = self.worker(idx) {
            let _ = w.tx.send(Command::RemoveRemote(idx.local())).await;
        }
    }

    /// Feed a remote speaker's packet, straight to the speaker's worker.
    pub async fn remote_rtp(&self, mut p: RemotePacket) {
        if let Some(w) = self.worker(p.idx) {
            p.idx = p.idx.local();
            let _ = w.tx.send(Command::RemoteRtp(p)).await;
        }
    }

    pub async fn set_exported(&self, room: RoomId, on: bool) {
        let w = self.worker_for_room(room);
        let _ = self.workers[w]
            .tx
            .send(Command::SetExported(room, on))
            .await;
    }

    pub async fn set_export_all(&self, on: bool) {
        for w in self.workers.iter() {
            let _ = w.tx.send(Command::SetExportAll(on)).await;
        }
    }

    /// Close every peer and stop the workers.
    pub async fn shutdown(&self) {
        for w in 0..self.workers.len() {
            self.ask(w, Command::Shutdown).await;
        }
    }

    /// Test hook: make worker `w`'s thread panic outside the per-call guard, as a bug in the
    /// loop itself would, to show the other workers carry on. Not for production use.
    #[doc(hidden)]
    pub async fn crash_worker_for_tests(&self, w: usize) {
        let _ = self.workers[w].tx.send(Command::Crash).await;
    }
}

/// Spawn a node with one media worker on `sockets`. Events for signaling arrive on the
/// returned receiver.
pub fn spawn(
    sockets: impl Into<MediaSockets>,
    cfg: NodeConfig,
    opts: ShellOptions,
) -> std::io::Result<(SfuHandle, mpsc::UnboundedReceiver<NodeEvent>)> {
    let (h, ev, _) = spawn_workers(vec![sockets.into()], cfg, opts, false)?;
    Ok((h, ev))
}

/// [`spawn`] for a node in a cluster: exported speaker packets arrive on the third receiver.
#[allow(clippy::type_complexity)]
pub fn spawn_cascading(
    sockets: impl Into<MediaSockets>,
    cfg: NodeConfig,
    opts: ShellOptions,
) -> std::io::Result<(
    SfuHandle,
    mpsc::UnboundedReceiver<NodeEvent>,
    mpsc::Receiver<Exported>,
)> {
    let (h, ev, ex) = spawn_workers(vec![sockets.into()], cfg, opts, true)?;
    Ok((h, ev, ex.expect("exports requested")))
}

/// Spawn one media worker per entry of `sockets` (worker `i` serves on `sockets[i]`, its
/// node's candidates naming that port). With `cascading`, every worker's exported speaker
/// packets arrive on the third receiver.
#[allow(clippy::type_complexity)]
pub fn spawn_workers(
    sockets: Vec<MediaSockets>,
    cfg: NodeConfig,
    opts: ShellOptions,
    cascading: bool,
) -> std::io::Result<(
    SfuHandle,
    mpsc::UnboundedReceiver<NodeEvent>,
    Option<mpsc::Receiver<Exported>>,
)> {
    if sockets.is_empty() || sockets.len() > MAX_WORKERS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "a node runs 1..={MAX_WORKERS} media workers, not {}",
                sockets.len()
            ),
        ));
    }
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (ex_tx, ex_rx) = if cascading {
        let (t, r) = mpsc::channel(EXPORT_QUEUE);
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    let admission = Arc::new(Admission::new(&cfg));
    let sinks = WorkerSinks {
        events: ev_tx,
        exports: ex_tx,
        admission: admission.clone(),
    };
    let workers = sockets
        .into_iter()
        .enumerate()
        .map(|(i, s)| spawn_worker(i, s, cfg.clone(), opts, sinks.clone()))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok((
        SfuHandle {
            workers: workers.into(),
            admission,
            reports_built: Arc::default(),
        },
        ev_rx,
        ex_rx,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_spread_over_workers_and_stay_put() {
        // Consecutive snowflakes (same millisecond, rising sequence) and ids a few ms apart.
        let base = 1_579_107_656_327_495_680u64;
        for n in [2usize, 3, 8] {
            let mut per = vec![0usize; n];
            for i in 0..4_000u64 {
                let room = RoomId(base + if i % 2 == 0 { i } else { i << 22 });
                let w = worker_for_room(room, n);
                assert_eq!(w, worker_for_room(room, n), "placement is a function");
                per[w] += 1;
            }
            let fair = 4_000 / n;
            for c in &per {
                assert!(
                    c.abs_diff(fair) < fair / 5,
                    "{n} workers: {per:?} is not within 20% of {fair} each"
                );
            }
        }
        assert_eq!(worker_for_room(RoomId(base), 1), 0);
    }
}
