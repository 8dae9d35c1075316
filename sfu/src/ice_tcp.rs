//! The shell's ICE-TCP side: a TCP listener on the media port's number, for callers whose UDP
//! cannot reach the node (RFC 6544 passive candidate, RFC 4571 framing). Each accepted
//! connection is a task on the media runtime that cuts its stream into frames for the media
//! loop and writes back what the node sends it; the media loop owns the table of connections
//! and feeds the [`Node`] (`handle_tcp_frame`, `handle_tcp_closed`).
//!
//! Everything is bounded, because any host can open a TCP connection without proving anything
//! (UDP datagrams from strangers cost one lookup; a connection costs a socket, a task and
//! buffers until it goes): connections in total and per source IP ([`IceTcpLimits`]), the
//! frame size (a longer one closes the connection), the time to pass a STUN check for some
//! participant (`auth_timeout`: the node then knows the peer, [`Node::tcp_peer_known`]), the
//! time without a whole frame (`idle_timeout`), and the frames waiting to be written (a
//! connection that cannot take them, a slow or stalled reader, is closed rather than let voice
//! queue up behind it). Every refusal and close is counted ([`IceTcpReport`]).
//!
//! Frames are copied once on the way in (into the channel to the media loop) and once on the
//! way out (framed): ICE-TCP is the fallback path, UDP's stays allocation-free.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::node::{Node, Transmit};
use crate::tcp_framing::{self, FrameDecoder};

/// Bounds of the ICE-TCP listener.
#[derive(Debug, Clone, Copy)]
pub struct IceTcpLimits {
    /// Open connections on the node; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Open connections from one IP address (a browser opens one or two per call; an office
    /// behind one NAT address shares this).
    pub max_connections_per_ip: usize,
    /// Longest frame accepted (the node drops longer datagrams anyway); a longer one closes
    /// the connection.
    pub max_frame: usize,
    /// A connection whose peer has not passed a STUN check for a participant this long after
    /// it was accepted is closed.
    pub auth_timeout: Duration,
    /// A connection without a whole frame this long is closed (browsers send an ICE consent
    /// check every few seconds even when muted).
    pub idle_timeout: Duration,
    /// Frames waiting to be written to one connection; one more closes it (about 2.5 s of
    /// voice for a listener with two speaker slots).
    pub write_queue: usize,
}

impl Default for IceTcpLimits {
    fn default() -> Self {
        IceTcpLimits {
            max_connections: 4096,
            max_connections_per_ip: 64,
            max_frame: 1500,
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            write_queue: 256,
        }
    }
}

/// What the ICE-TCP listener did since start, for the node report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IceTcpReport {
    /// Open connections now.
    pub connections: usize,
    pub accepted: u64,
    /// Closed at once: the node's or the address's connection limit was reached.
    pub refused_over_limit: u64,
    /// Closed because the peer passed no STUN check within `auth_timeout`.
    pub closed_unauthenticated: u64,
    /// Closed after `idle_timeout` without a whole frame.
    pub closed_idle: u64,
    /// Closed because its write queue was full (the peer does not read fast enough).
    pub closed_slow: u64,
    /// Closed because a frame was longer than `max_frame`.
    pub closed_oversized: u64,
    /// Closed by the peer (end of stream, reset, or a write error).
    pub closed_by_peer: u64,
    /// Frames the node sent to a connection that no longer existed.
    pub frames_to_gone: u64,
}

impl IceTcpReport {
    /// Add another worker's listener's figures.
    pub fn add(&mut self, o: &IceTcpReport) {
        self.connections += o.connections;
        self.accepted += o.accepted;
        self.refused_over_limit += o.refused_over_limit;
        self.closed_unauthenticated += o.closed_unauthenticated;
        self.closed_idle += o.closed_idle;
        self.closed_slow += o.closed_slow;
        self.closed_oversized += o.closed_oversized;
        self.closed_by_peer += o.closed_by_peer;
        self.frames_to_gone += o.frames_to_gone;
    }
}

/// How often connections are checked for `auth_timeout`.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Read buffer of one connection.
const READ_CHUNK: usize = 4096;
/// Frames in flight from all connections to the media loop (each connection waits when full).
const EVENT_QUEUE: usize = 1024;

/// Why a connection's task ended by itself.
#[derive(Debug, Clone, Copy)]
enum Ended {
    Peer,
    Idle,
    Oversized,
    /// The media loop dropped the connection (its writer's channel closed).
    Dropped,
}

enum ConnEvent {
    Frame {
        id: u64,
        peer: SocketAddr,
        data: Vec<u8>,
    },
    Ended {
        id: u64,
        peer: SocketAddr,
        why: Ended,
    },
}

/// What the media loop must tell the node.
pub(crate) enum Wake {
    Frame(SocketAddr, Vec<u8>),
    Closed(SocketAddr),
    Nothing,
}

struct Conn {
    /// Tells this connection from an earlier one of the same peer address.
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
    task: tokio::task::AbortHandle,
    accepted: Instant,
    /// Passed a STUN check (once true, stays: the idle timeout covers the rest).
    known: bool,
}

/// The listener and its connections, owned by the media loop.
pub(crate) struct IceTcp {
    listener: TcpListener,
    limits: IceTcpLimits,
    /// By peer address: unique per connection to one listening port.
    conns: HashMap<SocketAddr, Conn>,
    per_ip: HashMap<IpAddr, usize>,
    ev_tx: mpsc::Sender<ConnEvent>,
    ev_rx: mpsc::Receiver<ConnEvent>,
    next_id: u64,
    next_sweep: Instant,
    report: IceTcpReport,
}

impl IceTcp {
    /// Must be called inside the media runtime (the listener is registered with it).
    pub(crate) fn new(listener: TcpListener, limits: IceTcpLimits) -> Self {
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        IceTcp {
            listener,
            limits,
            conns: HashMap::new(),
            per_ip: HashMap::new(),
            ev_tx,
            ev_rx,
            next_id: 0,
            next_sweep: Instant::now() + SWEEP_INTERVAL,
            report: IceTcpReport::default(),
        }
    }

    pub(crate) fn report(&self) -> IceTcpReport {
        IceTcpReport {
            connections: self.conns.len(),
            ..self.report.clone()
        }
    }

    /// Wait for a connection (admitted or refused here) or a connection's frame or end.
    /// Cancel-safe: the media loop's `select!` drops it whenever another branch fires.
    pub(crate) async fn next(&mut self) -> Wake {
        tokio::select! {
            r = self.listener.accept() => {
                match r {
                    Ok((stream, peer)) => self.admit(stream, peer),
                    Err(e) => {
                        // Out of descriptors and the like: do not spin on it.
                        warn!(error = %e, "ICE-TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Wake::Nothing
            }
            Some(ev) = self.ev_rx.recv() => match ev {
                ConnEvent::Frame { id, peer, data } => {
                    if self.conns.get(&peer).is_some_and(|c| c.id == id) {
                        Wake::Frame(peer, data)
                    } else {
                        Wake::Nothing
                    }
                }
                ConnEvent::Ended { id, peer, why } => {
                    if self.conns.get(&peer).is_none_or(|c| c.id != id) {
                        return Wake::Nothing;
                    }
                    self.forget(peer);
                    match why {
                        Ended::Peer => self.report.closed_by_peer += 1,
                        Ended::Idle => self.report.closed_idle += 1,
                        Ended::Oversized => self.report.closed_oversized += 1,
                        Ended::Dropped => {}
                    }
                    debug!(?why, "ICE-TCP connection ended");
                    Wake::Closed(peer)
                }
            },
        }
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) {
        let from_ip = self.per_ip.get(&peer.ip()).copied().unwrap_or(0);
        if self.conns.len() >= self.limits.max_connections
            || from_ip >= self.limits.max_connections_per_ip
        {
            self.report.refused_over_limit += 1;
            debug!("ICE-TCP connection refused: over the connection limit");
            return; // dropping the stream closes it
        }
        if let Some(old) = self.conns.remove(&peer) {
            old.task.abort();
            self.release_ip(peer.ip());
        }
        let _ = stream.set_nodelay(true);
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = mpsc::channel(self.limits.write_queue.max(1));
        let task = tokio::spawn(serve(id, peer, stream, rx, self.ev_tx.clone(), self.limits))
            .abort_handle();
        self.conns.insert(
            peer,
            Conn {
                id,
                tx,
                task,
                accepted: Instant::now(),
                known: false,
            },
        );
        *self.per_ip.entry(peer.ip()).or_default() += 1;
        self.report.accepted += 1;
    }

    /// Queue one of the node's TCP transmits on its connection. Returns the peer if that
    /// closed the connection (its write queue was full), for the node to forget.
    pub(crate) fn send(&mut self, t: Transmit) -> Option<SocketAddr> {
        let Some(c) = self.conns.get(&t.destination) else {
            self.report.frames_to_gone += 1;
            return None;
        };
        let mut framed = Vec::with_capacity(tcp_framing::PREFIX + t.contents.len());
        // `None` only for more than a frame can say, which the node never sends.
        tcp_framing::encode(&t.contents, &mut framed)?;
        match c.tx.try_send(framed) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(t.destination);
                self.report.closed_slow += 1;
                debug!("ICE-TCP connection closed: its write queue is full");
                Some(t.destination)
            }
            // The task has ended; its `Ended` event is on the way.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.report.frames_to_gone += 1;
                None
            }
        }
    }

    /// Close connections whose peer has not passed a STUN check in time (at most once per
    /// [`SWEEP_INTERVAL`]). The node never knew them, so it has nothing to forget.
    pub(crate) fn sweep(&mut self, now: Instant, node: &Node) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        let mut late = Vec::new();
        for (peer, c) in &mut self.conns {
            if c.known {
                continue;
            }
            if node.tcp_peer_known(*peer) {
                c.known = true;
            } else if now.duration_since(c.accepted) >= self.limits.auth_timeout {
                late.push(*peer);
            }
        }
        for peer in late {
            self.close(peer);
            self.report.closed_unauthenticated += 1;
            debug!("ICE-TCP connection closed: no STUN check passed in time");
        }
    }

    /// Close every connection (shutdown).
    pub(crate) fn close_all(&mut self) {
        for (_, c) in self.conns.drain() {
            c.task.abort();
        }
        self.per_ip.clear();
    }

    fn close(&mut self, peer: SocketAddr) {
        if let Some(c) = self.conns.get(&peer) {
            c.task.abort();
        }
        self.forget(peer);
    }

    fn forget(&mut self, peer: SocketAddr) {
        if self.conns.remove(&peer).is_some() {
            self.release_ip(peer.ip());
        }
    }

    fn release_ip(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

/// One connection: frames in to the media loop, the node's frames out, until either side
/// ends, a bound is crossed, or the media loop aborts it.
async fn serve(
    id: u64,
    peer: SocketAddr,
    stream: TcpStream,
    mut out: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<ConnEvent>,
    limits: IceTcpLimits,
) {
    let (mut rd, mut wr) = stream.into_split();
    let reading = async {
        let mut dec = FrameDecoder::new(limits.max_frame);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut deadline = tokio::time::Instant::now() + limits.idle_timeout;
        loop {
            let n = match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                Err(_) => return Ended::Idle,
                Ok(Ok(0)) | Ok(Err(_)) => return Ended::Peer,
                Ok(Ok(n)) => n,
            };
            dec.push(&buf[..n]);
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => {
                        deadline = tokio::time::Instant::now() + limits.idle_timeout;
                        let data = f.to_vec();
                        if events
                            .send(ConnEvent::Frame { id, peer, data })
                            .await
                            .is_err()
                        {
                            return Ended::Dropped;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return Ended::Oversized,
                }
            }
        }
    };
    let writing = async {
        while let Some(framed) = out.recv().await {
            if wr.write_all(&framed).await.is_err() {
                return Ended::Peer;
            }
        }
        Ended::Dropped
    };
    let why = tokio::select! {
        w = reading => w,
        w = writing => w,
    };
    let _ = events.send(ConnEvent::Ended { id, peer, why }).await;
}
