//! The tokio shell: owns the UDP socket and the clock, drives the [`Node`], and takes commands
//! from signaling through a channel. One task owns the node, so the node needs no lock; it runs
//! on a thread of its own (`lodge-media`, a single-threaded runtime), apart from signaling's.
//!
//! Receiving is batched with quinn-udp (recvmmsg and GRO on Linux): per wake-up the shell reads up
//! to [`RECV_ROUNDS`] batches, so a busy socket costs a few receive syscalls and one timer check
//! per batch, not per datagram. What each datagram causes is sent before the next is handled,
//! in one `sendmmsg` ([`SendBatch`]: each copy goes to a different listener, so GSO does not
//! apply), so a packet waits only for the datagrams ahead of it. The time from a batch's return to each send
//! is recorded ([`ForwardDelay`], `/metrics` `lodge_forward_delay_seconds`).
//!
//! With an ICE-TCP listener (on the media socket's address and port number), the loop also
//! accepts TCP connections and feeds their frames to the node; the node's TCP transmits go back
//! on their connection, UDP ones into the batch (see [`crate::ice_tcp`] for the bounds).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::IoSliceMut;

use tokio::io::Interest;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::admission::{Admission, Seat};
use crate::error::SfuError;
use crate::ice_tcp::{IceTcp, IceTcpLimits, IceTcpReport, Wake};
use crate::ids::{ParticipantIdx, RoomId, UserId};
pub use crate::node::RemotePacket;
use crate::node::{
    Export, JoinAnswer, JoinRequest, NativeAnswer, NativeJoin, Node, NodeConfig, NodeEvent,
    NodeOutput, ParticipantReport, Transport,
};
use crate::participant::VoiceFlags;
use crate::send_batch::SendBatch;
pub use crate::workers::{spawn, spawn_cascading, spawn_workers, SfuHandle};
use crate::DropReason;

/// Kernel receive/send buffer asked for on the media socket (the kernel may cap it). Large
/// enough to absorb bursts (Linux's 208 KiB default dropped ~0.5% at 500 callers), small
/// enough that an overloaded node drops rather than queueing seconds of audio (4 MiB gave
/// 0.5 s of mouth-to-ear delay at 1,000 callers on 2 cores).
pub const SOCKET_BUFFER_BYTES: usize = 1 << 20;

/// recvmmsg calls per wake-up (each up to `quinn_udp::BATCH_SIZE` datagrams, 32 on Linux).
pub const RECV_ROUNDS: usize = 4;

/// Time a wake-up may spend receiving before the loop runs due timers and flushes (checked
/// between receive rounds; a round already begun finishes).
pub const RECV_BUDGET: Duration = Duration::from_millis(2);

pub(crate) enum Command {
    Join(
        JoinRequest,
        Seat,
        oneshot::Sender<Result<JoinAnswer, SfuError>>,
    ),
    JoinNative(
        NativeJoin,
        Seat,
        oneshot::Sender<Result<NativeAnswer, SfuError>>,
    ),
    Leave(ParticipantIdx),
    SetFlags(ParticipantIdx, VoiceFlags),
    Report(oneshot::Sender<WorkerReport>),
    Shutdown(oneshot::Sender<()>),
    AddRemote(
        RoomId,
        UserId,
        Option<crate::ids::Ssrc>,
        oneshot::Sender<Result<ParticipantIdx, SfuError>>,
    ),
    RemoveRemote(ParticipantIdx),
    RemoteRtp(RemotePacket),
    SetExported(RoomId, bool),
    SetExportAll(bool),
    /// Test hook: the worker's thread panics outside the per-call guard (see
    /// [`SfuHandle::crash_worker_for_tests`]).
    Crash,
}

/// What the node hands to the cascade.
#[derive(Debug)]
pub enum Exported {
    Packet(Export),
    /// The speaker is no longer exported (muted or gone).
    End(ParticipantIdx),
}

/// Where one worker's loop sends what is not a datagram. Participant indices leave the worker
/// tagged with its number ([`ParticipantIdx::on_worker`]).
struct Sinks {
    worker: usize,
    /// Events, exports (speaker packets for other nodes; full = dropped and counted, never
    /// waited for) and the node-wide admission, shared with the other workers.
    shared: WorkerSinks,
    exports_dropped: u64,
}

/// Node-wide figures plus every participant, for the JSON endpoint and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeReport {
    /// WebRTC participants (callers on this node).
    pub participants: usize,
    /// Speakers on other nodes fed to this one by trunks.
    pub remote_speakers: usize,
    pub rooms: usize,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    /// Of those, copies written and sealed in the forward loop (`NodeConfig::direct_send`).
    pub rtp_direct: u64,
    /// Times a slot read its direct-send context from its session.
    pub direct_context_reads: u64,
    /// Forwarded packets written to str0m's queue (the direct send declined), and those of
    /// them that did not leave in the same call.
    pub rtp_queued: u64,
    pub rtp_deferred: u64,
    /// Speaker packets handed to trunks, and those dropped because the trunk side lagged.
    pub exported: u64,
    pub exports_dropped: u64,
    /// IP discovery requests answered; keepalives from native participants.
    pub native_discovery: u64,
    pub native_keepalives: u64,
    /// Sender reports from native participants, each answered with a receiver report.
    pub native_reports: u64,
    /// Speaker packets whose payload is a DAVE frame (end-to-end encrypted).
    pub dave_frames_in: u64,
    /// Of the datagrams in and out: frames on ICE-TCP connections.
    pub tcp_frames_in: u64,
    pub tcp_frames_out: u64,
    /// The ICE-TCP listener's connections, refusals and closes; `None` without one.
    pub ice_tcp: Option<IceTcpReport>,
    pub drops: Vec<(&'static str, u64)>,
    pub peers: Vec<ParticipantReport>,
    /// Receive → send inside the node since start, µs (see [`ForwardDelay`]).
    pub forward_delay: ForwardDelay,
}

impl NodeReport {
    /// Fold another worker's report into this one (sums, peers appended; the forward delay is
    /// recomputed by the caller from the merged histograms).
    pub(crate) fn add(&mut self, o: NodeReport) {
        self.participants += o.participants;
        self.remote_speakers += o.remote_speakers;
        self.rooms += o.rooms;
        self.datagrams_in += o.datagrams_in;
        self.datagrams_out += o.datagrams_out;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.rtp_in += o.rtp_in;
        self.rtp_forwarded += o.rtp_forwarded;
        self.rtp_direct += o.rtp_direct;
        self.direct_context_reads += o.direct_context_reads;
        self.rtp_queued += o.rtp_queued;
        self.rtp_deferred += o.rtp_deferred;
        self.exported += o.exported;
        self.exports_dropped += o.exports_dropped;
        self.native_discovery += o.native_discovery;
        self.native_keepalives += o.native_keepalives;
        self.native_reports += o.native_reports;
        self.dave_frames_in += o.dave_frames_in;
        self.tcp_frames_in += o.tcp_frames_in;
        self.tcp_frames_out += o.tcp_frames_out;
        self.ice_tcp = match (self.ice_tcp.take(), o.ice_tcp) {
            (Some(mut a), Some(b)) => {
                a.add(&b);
                Some(a)
            }
            (a, b) => a.or(b),
        };
        // Every worker lists DropReason::ALL in the same order.
        for ((_, n), (_, m)) in self.drops.iter_mut().zip(o.drops) {
            *n += m;
        }
        self.peers.extend(o.peers);
    }
}

/// How long datagrams spend inside the node: from the moment a receive batch returned from the
/// kernel to the moment each datagram a received datagram caused (forwarded copies, STUN and
/// RTCP answers) was handed back to the kernel. Datagrams that timers cause (RTCP reports,
/// retransmissions) have no receive moment and are not recorded. Time spent in the socket
/// buffers on either side is not included (no kernel timestamps).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ForwardDelay {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Cumulative counts at each bound of [`FORWARD_DELAY_BUCKETS_US`] (datagrams that took
    /// ≤ it), so a scraper can take two readings and get the delay between them.
    pub buckets: [u64; FORWARD_DELAY_BUCKETS_US.len()],
    /// Sum of all recorded delays, µs.
    pub sum_us: f64,
}

/// Upper bounds of the exported forward-delay buckets, µs.
pub const FORWARD_DELAY_BUCKETS_US: [u64; 14] = [
    50, 100, 200, 300, 500, 750, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 1_000_000,
];

/// One media worker's half of the handle: its command channel and its gauges. The node-wide
/// [`SfuHandle`] routes to these.
#[derive(Clone)]
pub(crate) struct WorkerHandle {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) local_addr: SocketAddr,
    /// WebRTC and native participants, refreshed by the media loop on every wake-up.
    pub(crate) participants: Arc<AtomicUsize>,
}

/// A worker's report before it is merged with the others': its delay histogram goes along so
/// the node-wide percentiles are computed from every datagram, not averaged.
pub(crate) struct WorkerReport {
    pub(crate) report: NodeReport,
    pub(crate) delay: hdrhistogram::Histogram<u64>,
}

/// How the shell runs (as opposed to what the node does, [`NodeConfig`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ShellOptions {
    /// Bounds of the ICE-TCP listener, when there is one.
    pub ice_tcp: IceTcpLimits,
    /// Nice value of the media thread (-20..19; 0 = unchanged). Lowering it needs root or
    /// CAP_SYS_NICE; when refused, the thread logs a warning and runs at its normal priority.
    pub media_nice: i32,
    /// Real-time FIFO priority of the media thread (1..99; 0 = off, the normal scheduler).
    /// Needs root or CAP_SYS_NICE; when refused, the thread logs a warning and carries on.
    pub media_realtime: u8,
}

/// The sockets a node serves media on: the UDP socket, and optionally the ICE-TCP listener
/// (same address, same port number; its presence is what makes the node offer a passive TCP
/// candidate, whatever `NodeConfig::ice_tcp` said).
pub struct MediaSockets {
    pub udp: UdpSocket,
    pub tcp: Option<TcpListener>,
}

impl From<UdpSocket> for MediaSockets {
    fn from(udp: UdpSocket) -> Self {
        MediaSockets { udp, tcp: None }
    }
}

/// Exports waiting for the trunks before new ones are dropped (about 1 s of 200 speakers).
pub(crate) const EXPORT_QUEUE: usize = 10_000;

/// Where a worker's loop sends what is not a datagram, shared by all workers of a node.
#[derive(Clone)]
pub(crate) struct WorkerSinks {
    pub(crate) events: mpsc::UnboundedSender<NodeEvent>,
    pub(crate) exports: Option<mpsc::Sender<Exported>>,
    pub(crate) admission: Arc<Admission>,
}

/// Start media worker `worker` on `sockets`: a thread of its own (`lodge-media-N`) with a
/// single-threaded runtime, owning one [`Node`] (its `public_addr` port set to the socket's).
pub(crate) fn spawn_worker(
    worker: usize,
    sockets: MediaSockets,
    mut cfg: NodeConfig,
    opts: ShellOptions,
    sinks: WorkerSinks,
) -> std::io::Result<WorkerHandle> {
    let MediaSockets { udp: socket, tcp } = sockets;
    let local_addr = socket.local_addr()?;
    cfg.ice_tcp = tcp.is_some();
    cfg.public_addr.set_port(local_addr.port());
    let (tx, rx) = mpsc::channel(1024);
    let mut node = Node::new(cfg);
    node.set_seed(seed_from_clock() ^ worker as u64);
    let sinks = Sinks {
        worker,
        shared: sinks,
        exports_dropped: 0,
    };
    // The media loop gets a thread and a single-threaded runtime of its own: signaling (gateway
    // fan-out, JSON, the database) then never holds up a packet by occupying the runtime's
    // workers; the OS schedules the two independently. Everything crosses by channel.
    // The runtime is built and the socket registered with it here, so a failure reaches the
    // caller instead of leaving a thread that never serves.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (socket, ice_tcp) = {
        let _in_media_runtime = rt.enter();
        let udp = UdpSocket::from_std(socket.into_std()?)?;
        let tcp = match tcp {
            Some(l) => Some(IceTcp::new(
                TcpListener::from_std(l.into_std()?)?,
                opts.ice_tcp,
            )),
            None => None,
        };
        (udp, tcp)
    };
    // Participants on the worker, published for the handle to read without a command.
    let participants = Arc::new(AtomicUsize::new(0));
    let gauge = participants.clone();
    std::thread::Builder::new()
        .name(format!("lodge-media-{worker}"))
        .spawn(move || {
            set_thread_priority(opts);
            rt.block_on(run(Arc::new(socket), ice_tcp, node, rx, sinks, gauge));
        })?;
    Ok(WorkerHandle {
        tx,
        local_addr,
        participants,
    })
}

/// Give the calling (media) thread the priority `opts` asks for: real-time FIFO if set, else
/// the nice value if not 0. Refusal (no root or CAP_SYS_NICE) is a warning, not an error.
fn set_thread_priority(opts: ShellOptions) {
    let (what, value, r) = if opts.media_realtime > 0 {
        let p = opts.media_realtime;
        ("real-time FIFO priority", i32::from(p), set_realtime(p))
    } else if opts.media_nice != 0 {
        ("nice value", opts.media_nice, set_nice(opts.media_nice))
    } else {
        return;
    };
    match r {
        Ok(()) => info!(value, "media thread {what} set"),
        Err(e) => warn!(
            value,
            error = %e,
            "cannot set the media thread's {what}; it runs at normal priority (this needs root or CAP_SYS_NICE on Linux)"
        ),
    }
}

#[cfg(target_os = "linux")]
fn set_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid has no preconditions; setpriority with PRIO_PROCESS and a thread id
    // changes only that thread's nice value.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(target_os = "linux")]
fn set_realtime(priority: u8) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority as libc::c_int,
    };
    // SAFETY: pthread_self is always valid for the calling thread, and `param` outlives the
    // call.
    match unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) } {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

#[cfg(not(target_os = "linux"))]
fn set_nice(_: i32) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(not(target_os = "linux"))]
fn set_realtime(_: u8) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

fn seed_from_clock() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
}

/// The next ICE-TCP event, or never without a listener.
async fn next_tcp(tcp: &mut Option<IceTcp>) -> Wake {
    match tcp {
        Some(t) => t.next().await,
        None => std::future::pending().await,
    }
}

async fn run(
    socket: Arc<UdpSocket>,
    mut tcp: Option<IceTcp>,
    mut node: Node,
    mut rx: mpsc::Receiver<Command>,
    mut sinks: Sinks,
    participants: Arc<AtomicUsize>,
) {
    let local = socket.local_addr().expect("bound socket has an address");
    let udp = match quinn_udp::UdpSocketState::new((&*socket).into()) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the UDP socket for batched I/O");
            return;
        }
    };
    // Kernel socket buffers: a burst of datagrams arriving while the node fans out the previous
    // ones must wait in the kernel, not be dropped there. Capped by net.core.rmem_max/wmem_max.
    for (what, r) in [
        (
            "receive",
            udp.set_recv_buffer_size((&*socket).into(), SOCKET_BUFFER_BYTES),
        ),
        (
            "send",
            udp.set_send_buffer_size((&*socket).into(), SOCKET_BUFFER_BYTES),
        ),
    ] {
        if let Err(e) = r {
            warn!(error = %e, "cannot enlarge the UDP {what} buffer");
        }
    }
    if let Ok(n) = udp.recv_buffer_size((&*socket).into()) {
        if n < SOCKET_BUFFER_BYTES {
            info!(
                bytes = n,
                wanted = SOCKET_BUFFER_BYTES,
                "UDP receive buffer is smaller than wanted; raise net.core.rmem_max for bursts"
            );
        }
    }
    // Receive buffers, allocated once: room for GRO-coalesced datagrams in each.
    let buf_len = 2048 * udp.gro_segments().max(1);
    let mut storage: Vec<Vec<u8>> = (0..quinn_udp::BATCH_SIZE)
        .map(|_| vec![0u8; buf_len])
        .collect();
    let mut metas = [quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE];
    let mut last_log = Instant::now();
    let mut panics: u64 = 0;
    // 1 µs .. 10 s at 2 significant digits: fixed size, no allocation when recording.
    let mut delay = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 2)
        .expect("static histogram bounds are valid");
    let mut batch = SendBatch::default();
    let w = sinks.worker;
    info!(worker = w, %local, ice_tcp = tcp.is_some(), "media worker listening");
    loop {
        let deadline = node
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(500));
        tokio::select! {
            r = socket.readable() => {
                if let Err(e) = r {
                    warn!(error = %e, "UDP socket failed");
                    continue;
                }
                // Up to RECV_ROUNDS recvmmsg calls of BATCH_SIZE datagrams each (GRO buffers may
                // hold several datagrams of `stride` bytes), within RECV_BUDGET and not past a due
                // timer, so a flood of datagrams never starves the node's timers and flushes.
                // The first round always runs: a timer that fell due during the last flush must
                // not keep the socket from being read.
                let woke = Instant::now();
                for round in 0..RECV_ROUNDS {
                    let t = Instant::now();
                    if round > 0 && (t >= deadline || t.duration_since(woke) >= RECV_BUDGET) {
                        break;
                    }
                    let mut it = storage.iter_mut();
                    let mut slices: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                        std::array::from_fn(|_| IoSliceMut::new(it.next().expect("storage has BATCH_SIZE buffers")));
                    let got = socket.try_io(Interest::READABLE, || udp.recv((&*socket).into(), &mut slices, &mut metas));
                    let n = match got {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => { warn!(error = %e, "UDP receive failed"); break }
                    };
                    let now = Instant::now();
                    for (meta, buf) in metas.iter().zip(storage.iter()).take(n) {
                        let dst = SocketAddr::new(meta.dst_ip.unwrap_or(local.ip()), local.port());
                        let stride = meta.stride.max(1);
                        for seg in buf[..meta.len].chunks(stride) {
                            guarded(&mut panics, || node.handle_datagram(now, meta.addr, dst, seg));
                            // Send what this datagram caused before handling the next: sends are
                            // one syscall per datagram either way, and a packet then waits only
                            // for the datagrams ahead of it, not for the whole batch.
                            flush(&socket, &mut batch, &mut tcp, &mut node, &mut sinks, Some(now), &mut delay).await;
                        }
                    }
                }
            }
            cmd = rx.recv() => {
                let now = Instant::now();
                match cmd {
                    Some(Command::Join(req, seat, reply)) => {
                        let r = node.join(now, req).map(|mut a| { a.idx = a.idx.on_worker(w); a });
                        seat.settle(r.as_ref().ok().map(|a| a.idx));
                        let _ = reply.send(r);
                    }
                    Some(Command::JoinNative(req, seat, reply)) => {
                        let r = node.join_native(now, req).map(|mut a| { a.idx = a.idx.on_worker(w); a });
                        seat.settle(r.as_ref().ok().map(|a| a.idx));
                        let _ = reply.send(r);
                    }
                    Some(Command::Leave(idx)) => node.leave(now, idx),
                    Some(Command::SetFlags(idx, f)) => { let _ = node.set_flags(now, idx, f); }
                    Some(Command::Report(reply)) => {
                        let report = report(&node, w, sinks.exports_dropped, tcp.as_ref());
                        let _ = reply.send(WorkerReport { report, delay: delay.clone() });
                    }
                    Some(Command::AddRemote(room, user, ssrc, reply)) => {
                        let _ = reply.send(node.add_remote(now, room, user, ssrc).map(|i| i.on_worker(w)));
                    }
                    Some(Command::RemoveRemote(idx)) => { if node.is_remote(idx) { node.leave(now, idx) } }
                    Some(Command::RemoteRtp(p)) => {
                        guarded(&mut panics, || node.remote_rtp(now, p));
                        flush(&socket, &mut batch, &mut tcp, &mut node, &mut sinks, Some(now), &mut delay).await;
                    }
                    Some(Command::SetExported(room, on)) => node.set_exported(room, on),
                    Some(Command::SetExportAll(on)) => node.set_export_all(on),
                    Some(Command::Crash) => panic!("media worker {w} stopped on request (test hook)"),
                    Some(Command::Shutdown(done)) => {
                        node.close_all(now);
                        flush(&socket, &mut batch, &mut tcp, &mut node, &mut sinks, None, &mut delay).await;
                        if let Some(t) = &mut tcp {
                            t.close_all();
                        }
                        info!("media node stopped; all peers closed");
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                }
            }
            w = next_tcp(&mut tcp) => {
                let now = Instant::now();
                match w {
                    Wake::Frame(peer, data) => {
                        guarded(&mut panics, || node.handle_tcp_frame(now, peer, &data));
                        flush(&socket, &mut batch, &mut tcp, &mut node, &mut sinks, Some(now), &mut delay).await;
                    }
                    Wake::Closed(peer) => node.handle_tcp_closed(peer),
                    Wake::Nothing => {}
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        let now = Instant::now();
        if node.poll_timeout().is_some_and(|t| t <= now) {
            guarded(&mut panics, || node.handle_timeout(now));
        }
        // What timers caused (RTCP reports, retransmissions, queued RTP str0m released late:
        // `rtp_deferred`, counted apart) has no receive moment, so no delay is recorded for it.
        flush(
            &socket, &mut batch, &mut tcp, &mut node, &mut sinks, None, &mut delay,
        )
        .await;
        if let Some(t) = &mut tcp {
            t.sweep(now, &node);
        }
        participants.store(
            node.participant_count() - node.remote_count(),
            Ordering::Relaxed,
        );
        if now.duration_since(last_log) > Duration::from_secs(30) && node.participant_count() > 0 {
            last_log = now;
            let s = node.stats();
            info!(
                participants = node.participant_count(),
                rooms = node.room_count(),
                rtp_in = s.rtp_in,
                rtp_forwarded = s.rtp_forwarded,
                drops = s.drops.total(),
                "media node stats"
            );
        }
    }
}

/// A bug in handling one datagram or timer must not take the whole node down: catch the panic,
/// log it, count it, and keep serving everyone else. (Isolation is per call, not per room yet.)
fn guarded(panics: &mut u64, f: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        *panics += 1;
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panics = *panics, message = %msg, "media node recovered from a panic; please report this bug");
    }
}

/// Send everything the node wants sent and pass its events on. With `received_at`, each
/// datagram's time inside the node is recorded in `delay`.
#[allow(clippy::too_many_arguments)]
async fn flush(
    socket: &UdpSocket,
    batch: &mut SendBatch,
    tcp: &mut Option<IceTcp>,
    node: &mut Node,
    sinks: &mut Sinks,
    received_at: Option<Instant>,
    delay: &mut hdrhistogram::Histogram<u64>,
) {
    while let Some(o) = node.poll_output() {
        match o {
            NodeOutput::Transmit(t) if t.transport == Transport::Udp => batch.push(t),
            // Queued on its connection at once; no delay is recorded for TCP (the connection's
            // task writes it).
            NodeOutput::Transmit(t) => {
                if let Some(closed) = tcp.as_mut().and_then(|c| c.send(t)) {
                    node.handle_tcp_closed(closed);
                }
            }
            NodeOutput::Event(mut e) => {
                tag_event(&mut e, sinks.worker);
                if let NodeEvent::Left { idx, .. } = &e {
                    sinks.shared.admission.release(*idx);
                }
                let _ = sinks.shared.events.send(e);
            }
            NodeOutput::Export(mut x) => {
                if let Some(tx) = &sinks.shared.exports {
                    x.from = x.from.on_worker(sinks.worker);
                    if tx.try_send(Exported::Packet(x)).is_err() {
                        sinks.exports_dropped += 1;
                    }
                }
            }
            NodeOutput::ExportEnd(i) => {
                if let Some(tx) = &sinks.shared.exports {
                    // Dropped when full: the stream then ends by going idle.
                    let _ = tx.try_send(Exported::End(i.on_worker(sinks.worker)));
                }
            }
        }
    }
    if batch.is_empty() {
        return;
    }
    // One sendmmsg for everything this input caused (each copy to a different listener).
    let n = batch.send_all(socket, |b| node.recycle(b)).await;
    if let Some(r) = received_at {
        let us = r.elapsed().as_micros().max(1) as u64;
        delay.saturating_record_n(us, n as u64);
    }
}

/// A node event's participant indices as the node-wide ones.
fn tag_event(e: &mut NodeEvent, worker: usize) {
    match e {
        NodeEvent::Connected { idx, .. } | NodeEvent::Left { idx, .. } => {
            *idx = idx.on_worker(worker)
        }
        NodeEvent::SlotChanged { listener, .. } => *listener = listener.on_worker(worker),
    }
}

fn report(node: &Node, worker: usize, exports_dropped: u64, tcp: Option<&IceTcp>) -> NodeReport {
    let s = node.stats();
    NodeReport {
        participants: node.participant_count() - node.remote_count(),
        remote_speakers: node.remote_count(),
        rooms: node.room_count(),
        datagrams_in: s.datagrams_in,
        datagrams_out: s.datagrams_out,
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
        rtp_in: s.rtp_in,
        rtp_forwarded: s.rtp_forwarded,
        rtp_direct: s.rtp_direct,
        direct_context_reads: s.direct_context_reads,
        rtp_queued: s.rtp_queued,
        rtp_deferred: s.rtp_deferred,
        exported: s.exported,
        exports_dropped,
        native_discovery: s.native_discovery,
        native_keepalives: s.native_keepalives,
        native_reports: s.native_reports,
        dave_frames_in: s.dave_frames_in,
        tcp_frames_in: s.tcp_frames_in,
        tcp_frames_out: s.tcp_frames_out,
        ice_tcp: tcp.map(IceTcp::report),
        drops: DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), s.drops.get(*r)))
            .collect(),
        peers: node
            .reports()
            .into_iter()
            .map(|mut p| {
                p.idx = ParticipantIdx(p.idx).on_worker(worker).0;
                p
            })
            .collect(),
        // Computed by the handle from every worker's histogram (`WorkerReport::delay`).
        forward_delay: ForwardDelay::default(),
    }
}

impl ForwardDelay {
    pub(crate) fn of(delay: &hdrhistogram::Histogram<u64>) -> ForwardDelay {
        ForwardDelay {
            count: delay.len(),
            p50_us: delay.value_at_quantile(0.5),
            p99_us: delay.value_at_quantile(0.99),
            p999_us: delay.value_at_quantile(0.999),
            max_us: delay.max(),
            buckets: FORWARD_DELAY_BUCKETS_US.map(|b| delay.count_between(0, b)),
            sum_us: delay.mean() * delay.len() as f64,
        }
    }
}
