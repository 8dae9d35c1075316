//! Lodge's signaling service: the Discord-shaped REST API (v10), the gateway, the voice gateway
//! and the embedded web client, composed with the guild model (`lodge-chat`) and the media node
//! (`lodge-sfu`) into the `lodge` binary.
//!
//! This is the only crate that knows HTTP, WebSocket and JSON.

pub mod account_limits;
pub mod admin;
pub mod app;
pub mod bus_in;
pub mod client_addr;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod dispatch_kind;
pub mod drain;
pub mod error;
pub mod extract;
pub mod gateway;
pub mod http_server;
pub mod hub;
pub mod node_report;
pub mod nodes;
pub mod operator;
pub mod quality;
pub mod ratelimit;
pub mod rest;
pub mod shared;
pub mod tls;
pub mod turn;
pub mod voice;
pub mod web;
pub mod wire;
pub mod ws;

use std::sync::atomic::Ordering;

use tokio::net::{TcpListener, UdpSocket};

pub use app::{router, AppState};
pub use config::Config;

/// A running node (for `lodge serve` and for tests).
pub struct Running {
    pub state: AppState,
    pub http_addr: std::net::SocketAddr,
    pub media_addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The task turning node events into voice messages and call summaries; it ends when the
    /// media loop has stopped and every event it emitted has been handled.
    node_events: tokio::task::JoinHandle<()>,
}

/// How long shutdown waits for the call summaries of the participants it closed to be stored.
pub const SHUTDOWN_SUMMARIES_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind HTTP on {addr}: {err} (is another lodge running? change --http-listen)")]
    Http {
        addr: std::net::SocketAddr,
        err: std::io::Error,
    },
    #[error("cannot bind the UDP media port {addr}: {err} (change --media-listen)")]
    Media {
        addr: std::net::SocketAddr,
        err: std::io::Error,
    },
    #[error("cannot open the database {path}: {err}")]
    Store {
        path: std::path::PathBuf,
        err: lodge_chat::ChatError,
    },
    #[error(
        "cannot reach Redis for the cluster ({0}); check --redis-url and that Redis is running"
    )]
    Redis(shared::SharedError),
    #[error("cannot start the cluster trunk: {0}")]
    Cluster(lodge_edge::EdgeError),
    #[error("cannot serve HTTPS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot create the data directory {path}: {err}")]
    DataDir {
        path: std::path::PathBuf,
        err: std::io::Error,
    },
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!(
                "{}{}{}",
                &url[..s + 3],
                if creds.contains(':') {
                    format!("{user}:***")
                } else {
                    user.to_string()
                },
                &url[at..]
            )
        }
        _ => url.to_string(),
    }
}

/// The media sockets: UDP on `addr`, and with `ice_tcp` a TCP listener on the same address and
/// port number (the node's passive ICE-TCP candidate names the UDP port). When the port is
/// picked by the system (port 0), the TCP one may be taken: a few other UDP ports are tried.
async fn bind_media(
    addr: std::net::SocketAddr,
    ice_tcp: bool,
) -> std::io::Result<(UdpSocket, Option<TcpListener>)> {
    let tries = if addr.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(addr).await?;
        if !ice_tcp {
            return Ok((udp, None));
        }
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, Some(tcp))),
            Err(e) => last = Some(e),
        }
    }
    let e = last.expect("ice_tcp tried at least once");
    Err(std::io::Error::new(
        e.kind(),
        format!("ICE-TCP listener on the media port: {e} (--ice-tcp false turns it off)"),
    ))
}

/// Bind sockets, open storage, start the SFU, serve HTTP.
pub async fn start(mut cfg: Config) -> Result<Running, StartError> {
    // A certificate that cannot be used stops the start before anything is opened.
    let tls = match &cfg.tls {
        Some(files) => {
            let certs = tls::Certs::new(files.clone())?;
            Some((tls::acceptor(certs.clone())?, certs))
        }
        None => None,
    };
    // The data directory holds the database and the trunk key: the owner's only (0700).
    lodge_chat::store::create_private_dir(&cfg.data_dir).map_err(|err| StartError::DataDir {
        path: cfg.data_dir.clone(),
        err,
    })?;
    let store = match &cfg.database_url {
        Some(url) => lodge_chat::Store::open_url(url)
            .await
            .map_err(|err| StartError::Store {
                path: redact_url(url).into(),
                err,
            })?,
        None => lodge_chat::Store::open(&cfg.database)
            .await
            .map_err(|err| StartError::Store {
                path: cfg.database.clone(),
                err,
            })?,
    };
    let store = store.with_password_hashing(cfg.password_hash_concurrency);
    // One UDP socket (and ICE-TCP listener) per media worker: port, port + 1, ... (or each a
    // free port when the configured one is 0).
    // The configuration checked that the range fits below 65536.
    let mut media = Vec::with_capacity(cfg.media_workers);
    for i in 0..cfg.media_workers {
        let mut addr = cfg.media_listen;
        if addr.port() != 0 {
            addr.set_port(addr.port() + i as u16);
        }
        let (udp, tcp) = bind_media(addr, cfg.ice_tcp)
            .await
            .map_err(|err| StartError::Media { addr, err })?;
        media.push(lodge_sfu::shell::MediaSockets { udp, tcp });
    }
    let media_addr = media[0].udp.local_addr().map_err(|err| StartError::Media {
        addr: cfg.media_listen,
        err,
    })?;
    let listener = TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|err| StartError::Http {
            addr: cfg.http_listen,
            err,
        })?;
    let http_addr = listener.local_addr().map_err(|err| StartError::Http {
        addr: cfg.http_listen,
        err,
    })?;
    // Port 0 in the config means "pick one": make the advertised URL match what was bound.
    let scheme = if tls.is_some() { "https" } else { "http" };
    if cfg.http_listen.port() == 0 && cfg.public_url == format!("{scheme}://{}", cfg.http_listen) {
        cfg.public_url = format!("{scheme}://{http_addr}");
    }
    cfg.http_listen = http_addr;
    cfg.media_listen = media_addr;
    let mut node_cfg =
        lodge_sfu::NodeConfig::new(std::net::SocketAddr::new(cfg.public_ip, media_addr.port()));
    node_cfg.max_participants = cfg.max_participants;
    node_cfg.max_room_size = cfg.max_room_size;
    node_cfg.max_participants_per_user = cfg.max_participants_per_user;
    node_cfg.max_participants_per_guild = cfg.max_participants_per_guild;
    node_cfg.connect_timeout = std::time::Duration::from_secs(cfg.voice_connect_timeout_secs);
    node_cfg.direct_send = cfg.media_direct_send;
    let shell_opts = lodge_sfu::shell::ShellOptions {
        media_nice: cfg.media_nice,
        media_realtime: cfg.media_realtime,
        ice_tcp: lodge_sfu::ice_tcp::IceTcpLimits {
            max_connections: cfg.ice_tcp_max_connections,
            max_connections_per_ip: cfg.ice_tcp_max_connections_per_ip,
            ..Default::default()
        },
    };
    let clustered = cfg.trunk_listen.is_some() || cfg.origin.is_some();
    let (sfu, events, exports) =
        lodge_sfu::shell::spawn_workers(media, node_cfg, shell_opts, clustered).map_err(|err| {
            StartError::Media {
                addr: media_addr,
                err,
            }
        })?;
    let cluster = match exports {
        Some(x) => Some(
            cluster::start(&cfg, sfu.clone(), x)
                .await
                .map_err(StartError::Cluster)?,
        ),
        None => None,
    };
    let hub = hub::Hub::new();
    let me = shared::NodeId(cfg.node_name());
    // The switch: alone, everything in this process; with --redis-url, everything shared on
    // Redis. Nothing after this point asks which.
    let (shared, redis) = match cfg.redis_url.clone() {
        None => {
            let (inbox_tx, inbox_rx) = tokio::sync::mpsc::unbounded_channel();
            (
                shared::Shared::local(me, hub.clone(), inbox_tx),
                Err(inbox_rx),
            )
        }
        Some(url) => {
            let (redis, rx) = shared::redis::RedisShared::connect(&url, me)
                .await
                .map_err(StartError::Redis)?;
            let bus = shared::redis::dispatch_bus::RedisDispatchBus::new(redis.bus.clone());
            hub.route_through(bus.clone());
            let shared = redis.shared(bus.clone());
            (shared, Ok((redis, bus, rx)))
        }
    };
    let state = AppState::new(cfg, store, sfu, hub, shared);
    // A cluster node must mint ids no other node mints: without its lease it does not start.
    nodes::lease_id(&state).await.map_err(StartError::Redis)?;
    nodes::announce_once(&state).await;
    match redis {
        Err(inbox_rx) => {
            tokio::spawn(voice::executor::run_inbox(state.clone(), inbox_rx));
        }
        Ok((redis, bus, rx)) => {
            tokio::spawn(bus_in::run(state.clone(), redis.bus.clone(), rx));
            tokio::spawn(nodes::run(state.clone()));
            let _ = state.redis.set(app::RedisParts {
                stats: redis.stats.clone(),
                publish: bus.stats.clone(),
            });
            tracing::info!(node = %state.shared.me, redis = %redis.url, "cluster member: shared state and the bus on Redis");
        }
    }
    let node_events = tokio::spawn(voice::service::run_sfu_events(state.clone(), events));
    tokio::spawn(quality::run_sampler(state.clone()));
    tokio::spawn(voice::e2ee::run_timers(state.clone()));
    if let Some((c, cluster_events)) = cluster {
        let origin = c.role == lodge_edge::cascade::Role::Origin;
        let _ = state.cluster.set(c);
        if origin && state.shared.clustered {
            tokio::spawn(cluster::announce_peers(state.clone()));
        }
        tokio::spawn(cluster::run_events(state.clone(), cluster_events));
    }
    // An edge, or a cluster node with only the media role, serves the voice gateway, health
    // and metrics; the API, the chat gateway and the web client are elsewhere.
    let app = if state.is_edge() || !state.cfg.roles.api {
        crate::app::edge_router(state.clone())
    } else {
        router(state.clone())
    };
    let server = tokio::spawn(http_server::serve(
        listener,
        app,
        state.http_limits.clone(),
        state.http_stats.clone(),
        state.shutdown.subscribe(),
        tls.as_ref().map(|(acceptor, _)| acceptor.clone()),
    ));
    if let Some((_, certs)) = tls {
        let _ = state.tls.set(certs.clone());
        #[cfg(unix)]
        tokio::spawn(tls::watch_reload(certs));
    }
    for range in &state.limits.trusted_proxies {
        if range.prefix_len() < 8 {
            tracing::warn!(
                %range,
                "trusted_proxy {range} is very broad: any client in it can choose the address limits count it under"
            );
        }
    }
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!(http = %http_addr, media = %media_addr, media_workers = state.sfu.workers(), "lodge node ready");
    Ok(Running {
        state,
        http_addr,
        media_addr,
        server,
        node_events,
    })
}

impl Running {
    /// Graceful shutdown: stop taking calls, tell gateway clients to reconnect, close media peers
    /// and store their call summaries, flush the database.
    pub async fn shutdown(self) {
        self.state.ready.store(false, Ordering::Relaxed);
        let _ = self.state.shutdown.send(true);
        self.state.sfu.shutdown().await;
        // The media loop has stopped, so the event stream ends once drained: every participant
        // the shutdown closed has its summary written before the store closes.
        if tokio::time::timeout(SHUTDOWN_SUMMARIES_WAIT, self.node_events)
            .await
            .is_err()
        {
            tracing::warn!(
                wait_s = SHUTDOWN_SUMMARIES_WAIT.as_secs(),
                "shutdown: node events not drained in time; some call summaries may be missing"
            );
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.server).await;
        self.state.store.close().await;
        tracing::info!("lodge node stopped");
    }
}
