//! The HTTP accept loop, with the limits `axum::serve` does not have.
//!
//! - **Connection caps.** At most `max_connections` TCP connections on the HTTP port, and at
//!   most `max_connections_per_addr` from one address (IPv6 by its /64; trusted proxies are
//!   exempt, since every client behind them shares their address). Upgraded WebSockets count
//!   until they close: the permits live in the connection's I/O object, which the upgrade hands
//!   on. A connection over a cap gets a bare `503` and is closed at once.
//! - **Timeouts**, by what the connection is doing ([`Phase`]): a request head must arrive
//!   within `header_timeout` (from accept, or from its first byte on a kept-alive connection); a
//!   kept-alive connection may wait `idle_timeout` for its next request; a request (its body
//!   read and its handler) must be answered within `request_timeout`. Upgraded connections are
//!   the WebSocket code's business (heartbeats, zombie timeouts).
//!
//! Every connection dropped for a limit is logged with the limit's name (at most one line per
//! limit per 10 s, with the count of those not logged). Graceful shutdown stops accepting, lets
//! in-flight requests finish and waits for the connections to close.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower_service::Service;

use crate::client_addr::{limit_key, redact, Cidr};

/// The HTTP server's limits.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time for a request head to arrive (`http_header_timeout_secs`).
    pub header_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request (`http_idle_timeout_secs`).
    pub idle_timeout: Duration,
    /// Time to read a request's body and answer it (`http_request_timeout_secs`).
    pub request_timeout: Duration,
    /// Open connections on the node (`max_http_connections`).
    pub max_connections: usize,
    /// Open connections per client address (`max_http_connections_per_ip`).
    pub max_connections_per_addr: usize,
    /// Peers exempt from the per-address cap (`trusted_proxy`).
    pub trusted_proxies: Vec<Cidr>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_addr: 256,
            trusted_proxies: Vec::new(),
        }
    }
}

/// What a connection is doing, which decides the timeout that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Receiving a request head (a new connection starts here).
    Head = 0,
    /// Kept alive between requests.
    Idle = 1,
    /// A request is being read and answered.
    Busy = 2,
}

/// A connection's phase and when it began (ms since the connection was accepted). Written by
/// the connection's I/O and service, read by its watchdog: all on the connection's one task.
struct Clock {
    accepted: Instant,
    phase: AtomicU8,
    since_ms: AtomicU64,
    /// Wakes the watchdog to re-arm its timer for the new phase.
    changed: tokio::sync::Notify,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            accepted: Instant::now(),
            phase: AtomicU8::new(Phase::Head as u8),
            since_ms: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn enter(&self, p: Phase) {
        let ms = self.accepted.elapsed().as_millis() as u64;
        self.since_ms.store(ms, Ordering::Relaxed);
        self.phase.store(p as u8, Ordering::Relaxed);
        self.changed.notify_one();
    }

    fn get(&self) -> (Phase, u64) {
        let phase = match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Head,
            1 => Phase::Idle,
            _ => Phase::Busy,
        };
        (phase, self.since_ms.load(Ordering::Relaxed))
    }
}

/// Open connections per address key.
#[derive(Default)]
struct PerAddr(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place under the per-address cap; given back on drop.
struct AddrSlot {
    table: Arc<PerAddr>,
    key: IpAddr,
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        let mut m = self.table.0.lock().expect("per-address table lock");
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// A connection's socket with its permits (held until the socket closes, also after an
/// upgrade) and its phase clock (bytes arriving between requests start a new head).
struct Tracked {
    inner: TcpStream,
    clock: Arc<Clock>,
    _permit: OwnedSemaphorePermit,
    _slot: Option<AddrSlot>,
    stats: Arc<HttpStats>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && self.clock.get().0 == Phase::Idle
        {
            self.clock.enter(Phase::Head);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Log at most one line per limit per 10 s, counting the lines held back.
#[derive(Default)]
struct Throttle {
    last: Mutex<Option<std::time::Instant>>,
    held_back: AtomicU64,
}

impl Throttle {
    fn note(&self, log: impl FnOnce(u64)) {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().expect("log throttle lock");
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(10)) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        drop(last);
        log(self.held_back.swap(0, Ordering::Relaxed));
    }
}

/// Counts of connections refused or closed by each limit (for `/metrics` and tests).
#[derive(Default)]
pub struct HttpStats {
    /// Open connections (WebSockets included).
    pub open: AtomicU64,
    pub refused_node_cap: AtomicU64,
    pub refused_addr_cap: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub request_timeouts: AtomicU64,
    /// TLS handshakes that failed (not TLS, a certificate the client refused, too slow).
    pub tls_handshake_failures: AtomicU64,
    log_node_cap: Throttle,
    log_tls: Throttle,
    log_addr_cap: Throttle,
    log_timeout: [Throttle; 3],
    log_accept: Throttle,
}

/// A bare 503 for connections over a cap (written if the socket takes it at once).
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: 64\r\nconnection: close\r\n\r\n{\"code\": 0, \"message\": \"503: Too many connections, retry later\"}";

/// Connections being refused at once; past it a refused connection is just dropped.
const MAX_REFUSING: usize = 1024;

/// Answer a connection over a cap with the 503 and close it cleanly: FIN after the response,
/// then read what the client sent (closing with unread data would be a reset, and the client
/// might never see the 503). At most 1 s per connection, `MAX_REFUSING` at once.
fn refuse(stream: TcpStream, refusing: &Arc<AtomicUsize>, tls: bool) {
    if tls {
        // A plain-text answer means nothing inside a TLS handshake: just close.
        return;
    }
    if refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        refusing.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let refusing = refusing.clone();
    tokio::spawn(async move {
        let mut s = stream;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            s.write_all(REFUSAL).await?;
            s.shutdown().await?;
            let mut buf = [0u8; 1024];
            while s.read(&mut buf).await? > 0 {}
            Ok::<_, io::Error>(())
        })
        .await;
        refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Resolves once shutdown is asked for (or its sender is gone).
async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Serve `app` on `listener` until `shutdown` turns true, then drain.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stats: Arc<HttpStats>,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_addr = Arc::new(PerAddr::default());
    let refusing = Arc::new(AtomicUsize::new(0));
    // Each connection task holds a sender; all dropped = all connections done.
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    stats.log_accept.note(|held| tracing::warn!(error = %e, held_back = held, "accept failed"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopping(&mut shutdown) => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.refused_node_cap.fetch_add(1, Ordering::Relaxed);
            stats.log_node_cap.note(|held| {
                tracing::warn!(
                    limit = "max_http_connections",
                    max = limits.max_connections,
                    peer = %redact(peer.ip()),
                    held_back = held,
                    "connection refused: the node's connection cap is reached"
                )
            });
            refuse(stream, &refusing, tls.is_some());
            continue;
        };
        let slot = if limits.trusted_proxies.iter().any(|c| c.contains(peer.ip())) {
            None
        } else {
            let key = limit_key(peer.ip());
            let mut m = per_addr.0.lock().expect("per-address table lock");
            let n = m.entry(key).or_insert(0);
            if *n >= limits.max_connections_per_addr {
                drop(m);
                stats.refused_addr_cap.fetch_add(1, Ordering::Relaxed);
                stats.log_addr_cap.note(|held| {
                    tracing::warn!(
                        limit = "max_http_connections_per_ip",
                        max = limits.max_connections_per_addr,
                        peer = %redact(peer.ip()),
                        held_back = held,
                        "connection refused: this address's connection cap is reached"
                    )
                });
                refuse(stream, &refusing, tls.is_some());
                continue;
            }
            *n += 1;
            Some(AddrSlot {
                table: per_addr.clone(),
                key,
            })
        };
        let clock = Arc::new(Clock::new());
        let io = Tracked {
            inner: stream,
            clock: clock.clone(),
            _permit: permit,
            _slot: slot,
            stats: stats.clone(),
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(
            io,
            peer,
            app.clone(),
            clock,
            limits.clone(),
            stats.clone(),
            shutdown.clone(),
            alive_tx.clone(),
            tls.clone(),
        ));
    }
    drop(listener);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    io: Tracked,
    peer: SocketAddr,
    app: Router,
    clock: Arc<Clock>,
    limits: Arc<HttpLimits>,
    stats: Arc<HttpStats>,
    shutdown: watch::Receiver<bool>,
    alive: tokio::sync::mpsc::Sender<()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let Some(tls) = tls else {
        return drive(io, peer, app, clock, limits, stats, shutdown, alive).await;
    };
    // The handshake counts against the head timeout: a client that opens the port and says
    // nothing is closed as soon as one that sends half a request head.
    match tokio::time::timeout(limits.header_timeout, tls.accept(io)).await {
        Ok(Ok(stream)) => drive(stream, peer, app, clock, limits, stats, shutdown, alive).await,
        Ok(Err(e)) => {
            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
            stats.log_tls.note(|held| {
                tracing::info!(
                    error = %e,
                    peer = %redact(peer.ip()),
                    held_back = held,
                    "TLS handshake failed (a plain-HTTP client on the HTTPS port, or a client that does not trust the certificate)"
                )
            });
        }
        Err(_) => {
            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
            stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serve HTTP/1.1 (and upgrades) on one connection, plain or TLS, closing it when the limit of
/// its current phase runs out.
#[allow(clippy::too_many_arguments)]
async fn drive<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    clock: Arc<Clock>,
    limits: Arc<HttpLimits>,
    stats: Arc<HttpStats>,
    mut shutdown: watch::Receiver<bool>,
    _alive: tokio::sync::mpsc::Sender<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_clock = clock.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        service_clock.enter(Phase::Busy);
        req.extensions_mut().insert(ConnectInfo(peer));
        let clock = service_clock.clone();
        let mut app = app.clone();
        async move {
            let res = app.call(req).await;
            clock.enter(Phase::Idle);
            res
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The watchdog below keeps the head timeout (hyper's would also cut idle connections).
        .header_read_timeout(None)
        .keep_alive(true);
    let mut conn = pin!(builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades());
    let mut draining = false;
    loop {
        let (phase, since_ms) = clock.get();
        let (limit, name, i, what) = match phase {
            Phase::Head => (
                limits.header_timeout,
                "http_header_timeout_secs",
                0,
                "request head not received in time",
            ),
            Phase::Idle => (
                limits.idle_timeout,
                "http_idle_timeout_secs",
                1,
                "idle keep-alive connection",
            ),
            Phase::Busy => (
                limits.request_timeout,
                "http_request_timeout_secs",
                2,
                "request not read and answered in time",
            ),
        };
        let deadline = clock.accepted + Duration::from_millis(since_ms) + limit;
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::trace!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(deadline) => {
                if clock.get() != (phase, since_ms) {
                    continue;
                }
                [&stats.header_timeouts, &stats.idle_timeouts, &stats.request_timeouts][i]
                    .fetch_add(1, Ordering::Relaxed);
                // An idle connection closing is routine; the others are worth a line.
                if phase != Phase::Idle {
                    stats.log_timeout[i].note(|held| {
                        tracing::info!(
                            limit = name,
                            secs = limit.as_secs_f64(),
                            peer = %redact(peer.ip()),
                            held_back = held,
                            "connection closed: {what}"
                        )
                    });
                }
                return;
            }
            _ = clock.changed.notified() => continue,
            _ = stopping(&mut shutdown), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The HTTP server's and the password pool's figures in Prometheus text.
pub fn write_metrics(out: &mut String, s: &crate::app::AppState) {
    use std::fmt::Write;
    let h = &s.http_stats;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(out, "# HELP lodge_http_connections Open TCP connections on the HTTP port (WebSockets included)\n# TYPE lodge_http_connections gauge\nlodge_http_connections {}", n(&h.open));
    let _ = writeln!(out, "# HELP lodge_http_connections_closed_total Connections refused or closed by a limit, by the limit's name\n# TYPE lodge_http_connections_closed_total counter");
    for (limit, v) in [
        ("max_http_connections", &h.refused_node_cap),
        ("max_http_connections_per_ip", &h.refused_addr_cap),
        ("http_header_timeout_secs", &h.header_timeouts),
        ("http_idle_timeout_secs", &h.idle_timeouts),
        ("http_request_timeout_secs", &h.request_timeouts),
    ] {
        let _ = writeln!(
            out,
            "lodge_http_connections_closed_total{{limit=\"{limit}\"}} {}",
            n(v)
        );
    }
    let _ = writeln!(out, "# HELP lodge_tls_handshake_failures_total TLS handshakes on the HTTPS port that failed or timed out\n# TYPE lodge_tls_handshake_failures_total counter\nlodge_tls_handshake_failures_total {}", n(&h.tls_handshake_failures));
    if let Some(c) = s.tls.get() {
        c.write_metrics(out);
    }
    let p = s.store.passwords();
    let _ = writeln!(out, "# HELP lodge_password_hashes_running Password hashes running on the hashing threads\n# TYPE lodge_password_hashes_running gauge\nlodge_password_hashes_running {}", p.running());
    let _ = writeln!(out, "# HELP lodge_password_hashes_refused_total Logins and registrations refused with 503 because the hashing pool was full\n# TYPE lodge_password_hashes_refused_total counter\nlodge_password_hashes_refused_total {}", p.refused());
}
