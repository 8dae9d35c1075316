//! The quinn shell around [`TrunkSession`]: an origin that accepts authenticated trunks, an
//! edge that connects to one, and a driver task that moves datagrams, control messages and
//! time between QUIC and the session.
//!
//! Handshake: the edge verifies the origin's certificate against its pin (TLS), opens the one
//! bidirectional control stream and sends `Hello {version, token, node, region}`; the origin
//! answers `Welcome` or `Refused` and closes. Each handshake runs in its own task with a 5 s
//! limit, so a slow or hostile peer never holds up another.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::error::EdgeError;
use crate::session::{Delivered, Notice, TrunkCounters, TrunkSession};
use crate::tls::{self, Identity};
use crate::wire::{Control, VERSION};

/// How long a peer has to complete TLS and the hello exchange.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC application close codes.
pub const CLOSE_REFUSED: u32 = 0x10;
pub const CLOSE_PROTOCOL: u32 = 0x11;
pub const CLOSE_SHUTDOWN: u32 = 0;

/// What an edge says about itself.
#[derive(Debug, Clone)]
pub struct Hello {
    pub token: String,
    pub node: String,
    pub region: String,
    /// `host:port` of the edge's voice gateway.
    pub voice_endpoint: String,
}

/// Who is at the other end of a trunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    /// The edge's region (empty for an origin).
    pub region: String,
    /// The edge's voice gateway `host:port` (empty for an origin).
    pub voice_endpoint: String,
    pub addr: SocketAddr,
}

/// The origin's acceptance figures.
#[derive(Debug, Default)]
pub struct OriginCounters {
    pub accepted: AtomicU64,
    /// Wrong token or protocol version.
    pub refused: AtomicU64,
    /// TLS failures, timeouts, garbage instead of a hello.
    pub failed: AtomicU64,
}

async fn write_control(s: &mut quinn::SendStream, c: &Control) -> Result<(), EdgeError> {
    s.write_all(&c.encode())
        .await
        .map_err(|e| EdgeError::ControlStream(e.to_string()))
}

async fn read_control(r: &mut quinn::RecvStream) -> Result<Control, EdgeError> {
    let mut h = [0u8; 4];
    r.read_exact(&mut h)
        .await
        .map_err(|e| EdgeError::ControlStream(e.to_string()))?;
    let n = Control::frame_len(h)?;
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)
        .await
        .map_err(|e| EdgeError::ControlStream(e.to_string()))?;
    Control::decode(&body)
}

/// An origin's trunk listener.
pub struct Origin {
    endpoint: quinn::Endpoint,
    accepted: tokio::sync::Mutex<mpsc::Receiver<(Trunk, Peer)>>,
    counters: Arc<OriginCounters>,
}

impl Origin {
    /// Listen for edges on `addr` (UDP) with `id`; edges must present `token`.
    pub fn bind(
        addr: SocketAddr,
        id: &Identity,
        token: &str,
        node: &str,
    ) -> Result<Origin, EdgeError> {
        let sock = std::net::UdpSocket::bind(addr)?;
        let endpoint = quinn::Endpoint::new(
            tls::endpoint_config(),
            Some(tls::server_config(id)?),
            sock,
            Arc::new(quinn::TokioRuntime),
        )?;
        let counters = Arc::new(OriginCounters::default());
        let (tx, rx) = mpsc::channel(64);
        let (ep, token, node, c) = (
            endpoint.clone(),
            token.to_string(),
            node.to_string(),
            counters.clone(),
        );
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (tx, token, node, c) = (tx.clone(), token.clone(), node.clone(), c.clone());
                tokio::spawn(async move {
                    let addr = incoming.remote_address();
                    match tokio::time::timeout(HELLO_TIMEOUT, handshake(incoming, &token, &node))
                        .await
                    {
                        Ok(Ok(t)) => {
                            c.accepted.fetch_add(1, Ordering::Relaxed);
                            info!(edge = %t.1.node, region = %t.1.region, %addr, "trunk accepted");
                            let _ = tx.send(t).await;
                        }
                        Ok(Err(EdgeError::Refused(why))) => {
                            c.refused.fetch_add(1, Ordering::Relaxed);
                            warn!(%addr, reason = %why, "trunk refused");
                        }
                        Ok(Err(e)) => {
                            c.failed.fetch_add(1, Ordering::Relaxed);
                            warn!(%addr, error = %e, "trunk handshake failed");
                        }
                        Err(_) => {
                            c.failed.fetch_add(1, Ordering::Relaxed);
                            warn!(%addr, "trunk handshake timed out after {HELLO_TIMEOUT:?}");
                        }
                    }
                });
            }
        });
        Ok(Origin {
            endpoint,
            accepted: tokio::sync::Mutex::new(rx),
            counters,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    pub fn counters(&self) -> Arc<OriginCounters> {
        self.counters.clone()
    }

    /// The next authenticated trunk (refused and failed attempts are counted, never returned).
    pub async fn accept(&self) -> Option<(Trunk, Peer)> {
        self.accepted.lock().await.recv().await
    }
}

async fn handshake(
    incoming: quinn::Incoming,
    token: &str,
    node: &str,
) -> Result<(Trunk, Peer), EdgeError> {
    let addr = incoming.remote_address();
    let conn = incoming.await?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let refuse = |conn: &quinn::Connection, why: String| {
        conn.close(CLOSE_REFUSED.into(), why.as_bytes());
        EdgeError::Refused(why)
    };
    match read_control(&mut recv).await {
        Ok(Control::Hello {
            version,
            token: t,
            node: edge,
            region,
            voice_endpoint,
        }) => {
            let refusal = if version != VERSION {
                Some(format!(
                    "trunk protocol version {version}, this origin speaks {VERSION}"
                ))
            } else if !tls::same_secret(&t, token) {
                Some("wrong cluster token".to_string())
            } else {
                None
            };
            if let Some(why) = refusal {
                let _ = write_control(
                    &mut send,
                    &Control::Refused {
                        reason: why.clone(),
                    },
                )
                .await;
                return Err(refuse(&conn, why));
            }
            write_control(
                &mut send,
                &Control::Welcome {
                    node: node.to_string(),
                },
            )
            .await?;
            let peer = Peer {
                node: edge,
                region,
                voice_endpoint,
                addr,
            };
            Ok((
                Trunk {
                    conn,
                    _endpoint: None,
                    send,
                    recv,
                },
                peer,
            ))
        }
        Ok(other) => {
            conn.close(CLOSE_PROTOCOL.into(), b"expected a hello");
            Err(EdgeError::UnexpectedControl(format!(
                "{other:?} instead of a hello"
            )))
        }
        Err(e) => {
            conn.close(CLOSE_PROTOCOL.into(), b"expected a hello");
            Err(e)
        }
    }
}

/// Connect an edge to its origin at `origin` from `local` (e.g. `0.0.0.0:0`), trusting only the
/// certificate with fingerprint `pin`. Returns the trunk and the origin's node name.
pub async fn connect(
    local: SocketAddr,
    origin: SocketAddr,
    pin: &str,
    hello: &Hello,
) -> Result<(Trunk, Peer), EdgeError> {
    let pin = tls::parse_fingerprint(pin)?;
    let connect_err = |why: String| EdgeError::Connect { addr: origin, why };
    let sock = std::net::UdpSocket::bind(local)?;
    let mut ep = quinn::Endpoint::new(
        tls::endpoint_config(),
        None,
        sock,
        Arc::new(quinn::TokioRuntime),
    )?;
    ep.set_default_client_config(tls::client_config(pin)?);
    let work = async {
        let conn = ep
            .connect(origin, tls::SERVER_NAME)
            .map_err(|e| connect_err(e.to_string()))?
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let (mut send, mut recv) = conn.open_bi().await?;
        write_control(
            &mut send,
            &Control::Hello {
                version: VERSION,
                token: hello.token.clone(),
                node: hello.node.clone(),
                region: hello.region.clone(),
                voice_endpoint: hello.voice_endpoint.clone(),
            },
        )
        .await?;
        match read_control(&mut recv).await {
            Ok(Control::Welcome { node }) => Ok((conn, send, recv, node)),
            Ok(Control::Refused { reason }) => Err(EdgeError::Refused(reason)),
            Ok(other) => Err(EdgeError::UnexpectedControl(format!(
                "{other:?} instead of a welcome"
            ))),
            Err(e) => match conn.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(c)) => Err(EdgeError::Refused(
                    String::from_utf8_lossy(&c.reason).into_owned(),
                )),
                _ => Err(e),
            },
        }
    };
    let (conn, send, recv, node) = tokio::time::timeout(HELLO_TIMEOUT, work)
        .await
        .map_err(|_| connect_err(format!("no welcome within {HELLO_TIMEOUT:?}")))??;
    Ok((
        Trunk {
            conn,
            _endpoint: Some(ep),
            send,
            recv,
        },
        Peer {
            node,
            region: String::new(),
            voice_endpoint: String::new(),
            addr: origin,
        },
    ))
}

/// What the owner asks a running trunk to do.
#[derive(Debug)]
pub enum TrunkCommand {
    /// Start sending `user`'s voice in `room`; the reply is the stream number.
    Open {
        room: u64,
        user: u64,
        reply: oneshot::Sender<Result<u16, EdgeError>>,
    },
    /// Open a stream with a number the sender chose (no reply to wait for).
    OpenAs {
        stream: u16,
        room: u64,
        user: u64,
        /// The SSRC native listeners hear the speaker under (see `Control::StreamOpen`).
        ssrc: Option<u32>,
    },
    Close {
        stream: u16,
    },
    Media {
        stream: u16,
        rtp_ts: u32,
        level: u8,
        marker: bool,
        payload: Bytes,
    },
    /// A message for the layer above on the other side (interest, load, placement).
    App(Control),
}

/// What a running trunk delivers.
#[derive(Debug)]
pub enum TrunkEvent {
    Media(Delivered),
    Notice(Notice),
}

/// A trunk's figures: the session's counters and QUIC's own.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TrunkStats {
    pub session: TrunkCounters,
    pub udp_tx_bytes: u64,
    pub udp_tx_datagrams: u64,
    pub udp_rx_bytes: u64,
    pub rtt_ms: f64,
    pub datagram_send_errors: u64,
    /// Media received but dropped because the owner (the cascade) lagged behind.
    pub dropped_owner_lag: u64,
}

/// An established trunk, before its driver runs.
pub struct Trunk {
    conn: quinn::Connection,
    /// An edge owns its client endpoint; it must live as long as the connection.
    _endpoint: Option<quinn::Endpoint>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Trunk {
    /// The QUIC connection (for diagnostics and tests: its stats, or raw datagrams).
    pub fn connection(&self) -> quinn::Connection {
        self.conn.clone()
    }

    /// Drive the trunk until the connection ends or every command sender is dropped. Returns
    /// why it ended.
    pub async fn run(
        self,
        mut cmds: mpsc::Receiver<TrunkCommand>,
        events: mpsc::Sender<TrunkEvent>,
        stats: watch::Sender<TrunkStats>,
    ) -> EdgeError {
        let Trunk {
            conn,
            _endpoint,
            mut send,
            mut recv,
        } = self;
        // The control stream is read in its own task (reads of a frame are not cancel-safe).
        let (ctl_tx, mut ctl_rx) = mpsc::channel::<Result<Control, EdgeError>>(256);
        let reader = tokio::spawn(async move {
            loop {
                let r = read_control(&mut recv).await;
                let end = r.is_err();
                if ctl_tx.send(r).await.is_err() || end {
                    break;
                }
            }
        });
        let mut session = TrunkSession::default();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut send_errors = 0u64;
        let mut owner_lag = 0u64;
        let publish = |session: &TrunkSession, send_errors: u64, owner_lag: u64| {
            let q = conn.stats();
            stats.send_replace(TrunkStats {
                session: session.counters(),
                udp_tx_bytes: q.udp_tx.bytes,
                udp_tx_datagrams: q.udp_tx.datagrams,
                udp_rx_bytes: q.udp_rx.bytes,
                rtt_ms: conn.rtt().as_secs_f64() * 1000.0,
                datagram_send_errors: send_errors,
                dropped_owner_lag: owner_lag,
            });
        };
        let end = loop {
            let wake = session
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
            tokio::select! {
                d = conn.read_datagram() => match d {
                    Ok(d) => {
                        if let Some(m) = session.handle_datagram(Instant::now(), d) {
                            // Never wait for the owner on the media path: a lagging owner loses
                            // packets (counted), it does not stall the trunk.
                            match events.try_send(TrunkEvent::Media(m)) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(_)) => owner_lag += 1,
                                Err(mpsc::error::TrySendError::Closed(_)) => {
                                    break EdgeError::ControlStream("the trunk's owner went away".into());
                                }
                            }
                        }
                    }
                    Err(e) => break EdgeError::Connection(e),
                },
                c = ctl_rx.recv() => match c {
                    Some(Ok(c)) => {
                        if let Err(e) = session.handle_control(Instant::now(), c) {
                            debug!(error = %e, "control message rejected");
                        }
                    }
                    Some(Err(e)) => {
                        conn.close(CLOSE_PROTOCOL.into(), b"control stream failed");
                        break e;
                    }
                    None => break EdgeError::ControlStream("control reader ended".into()),
                },
                cmd = cmds.recv() => match cmd {
                    Some(TrunkCommand::Media { stream, rtp_ts, level, marker, payload }) => {
                        if let Some(d) = session.send_media(stream, rtp_ts, level, marker, payload) {
                            if conn.send_datagram(d).is_err() {
                                send_errors += 1;
                            }
                        }
                    }
                    Some(TrunkCommand::Open { room, user, reply }) => {
                        let _ = reply.send(session.open_stream(room, user));
                    }
                    Some(TrunkCommand::OpenAs { stream, room, user, ssrc }) => {
                        if let Err(e) = session.open_stream_as(stream, room, user, ssrc) {
                            debug!(error = %e, "stream not opened");
                        }
                    }
                    Some(TrunkCommand::Close { stream }) => session.close_stream(stream),
                    Some(TrunkCommand::App(c)) => session.send_app(c),
                    None => {
                        conn.close(CLOSE_SHUTDOWN.into(), b"shutdown");
                        break EdgeError::ControlStream("shut down".into());
                    }
                },
                _ = tokio::time::sleep_until(wake) => session.handle_timeout(Instant::now()),
                _ = tick.tick() => {
                    session.set_rtt(conn.rtt());
                    publish(&session, send_errors, owner_lag);
                }
            }
            let mut gone = false;
            while let Some(n) = session.poll_notice() {
                if events.send(TrunkEvent::Notice(n)).await.is_err() {
                    gone = true;
                }
            }
            if gone {
                break EdgeError::ControlStream("the trunk's owner went away".into());
            }
            let mut failed = None;
            while let Some(c) = session.poll_control() {
                if let Err(e) = write_control(&mut send, &c).await {
                    failed = Some(e);
                    break;
                }
            }
            if let Some(e) = failed {
                break e;
            }
            while let Some(d) = session.poll_datagram() {
                if conn.send_datagram(d).is_err() {
                    send_errors += 1;
                }
            }
        };
        publish(&session, send_errors, owner_lag);
        reader.abort();
        end
    }
}
