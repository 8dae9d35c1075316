//! Configuration: defaults < TOML file (`--config`) < `LODGE_*` environment < command-line flags.
//! Unknown keys in the file and unknown `LODGE_*` variables are errors, so typos do not pass
//! silently.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(
    name = "lodge",
    version,
    about = "Lodge: a self-hostable voice-first media server with guild chat (Discord-compatible API)",
    long_about = "Lodge runs a voice SFU, a Discord-shaped REST API and gateway, and a web client in one \
process.\n\nQuick start:  lodge serve   then open http://127.0.0.1:8080/\n\nEvery option can also be \
set in a TOML file (--config) or as a LODGE_* environment variable; flags win over the \
environment, which wins over the file."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node: signaling + chat + SFU in one process on a SQLite file.
    Serve(ServeArgs),
    /// Print the effective configuration (after file, environment and flags) and exit.
    Config(ServeArgs),
}

/// The one list of configuration keys. Each key is a flag (`--http-listen`), a `LODGE_*`
/// environment variable and a TOML key (`http_listen`); this table generates all three, so a
/// key cannot be known to one and missing from another. Defaults and range checks live in
/// [`Config::load`].
macro_rules! config_keys {
    ($( $(#[$doc:meta])* $key:ident : $ty:ty = $env:literal $([$($arg:tt)*])? ; )*) => {
        #[derive(Args, Debug, Clone, Default)]
        pub struct ServeArgs {
            /// TOML configuration file. Its keys are the long options with '_' for '-'
            /// (e.g. http_listen = "0.0.0.0:8080"); `lodge config` prints them all.
            #[arg(long, env = "LODGE_CONFIG")]
            pub config: Option<PathBuf>,
            $( $(#[$doc])* #[arg(long, env = $env $(, $($arg)*)?)] pub $key: Option<$ty>, )*
        }

        /// The TOML file's shape: every key optional, unknown keys rejected.
        #[derive(Deserialize, Debug, Default)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $( pub $key: Option<$ty>, )*
        }

        /// Every `LODGE_*` environment variable Lodge reads.
        pub const KNOWN_ENV: &[&str] = &["LODGE_CONFIG", $($env),*];

        /// Every key of the file, in table order.
        pub const KEYS: &[&str] = &[$(stringify!($key)),*];

        impl ServeArgs {
            /// Flags and environment over the file: each key as given, before defaults.
            fn over(&self, file: FileConfig) -> FileConfig {
                FileConfig { $( $key: self.$key.clone().or(file.$key), )* }
            }
        }
    };
}

config_keys! {
    /// Address:port of the HTTP server (REST API, gateways, web client, metrics). [default: 127.0.0.1:8080]
    http_listen: SocketAddr = "LODGE_HTTP_LISTEN";
    /// Address:port of the first media worker's UDP socket (and ICE-TCP listener); worker i
    /// listens on port + i (port 0: each picks a free port). [default: 127.0.0.1:50000]
    media_listen: SocketAddr = "LODGE_MEDIA_LISTEN";
    /// IP address announced in ICE candidates (the address clients reach the media port on).
    /// [default: the media listen address]
    public_ip: IpAddr = "LODGE_PUBLIC_IP";
    /// Base URL clients use to reach the HTTP server, e.g. https://voice.example.com (sets the
    /// gateway url and voice endpoint). [default: http://<http_listen>]
    public_url: String = "LODGE_PUBLIC_URL";
    /// PEM certificate chain for HTTPS/WSS on the HTTP listener (with --tls-key). The files
    /// are read again on SIGHUP: new connections get the new certificate, open ones keep theirs.
    /// Without both, the listener speaks plain HTTP (behind a TLS-terminating proxy, or local).
    /// [default: unset]
    tls_cert: PathBuf = "LODGE_TLS_CERT";
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert. Keep it readable by Lodge's user
    /// only. [default: unset]
    tls_key: PathBuf = "LODGE_TLS_KEY";
    /// Directory for Lodge's data. [default: ./lodge-data]
    data_dir: PathBuf = "LODGE_DATA_DIR";
    /// SQLite database file. [default: <data_dir>/lodge.db]
    database: PathBuf = "LODGE_DATABASE";
    /// Database URL instead of the SQLite file, e.g. postgres://lodge@127.0.0.1/lodge
    /// (PostgreSQL for scale) or sqlite:///path/to/file.db.
    database_url: String = "LODGE_DATABASE_URL";
    /// Log filter (tracing env-filter syntax), e.g. "info" or "lodge_sfu=debug,info". [default: info]
    log: String = "LODGE_LOG";
    /// Most WebRTC participants on this node. [default: 10000]
    max_participants: usize = "LODGE_MAX_PARTICIPANTS";
    /// Most participants in one voice channel. [default: 1000]
    max_room_size: usize = "LODGE_MAX_ROOM_SIZE";
    /// Most voice participants one user may have on this node at once (connecting ones
    /// included); a join beyond it closes with 4014 naming the limit. [default: 4]
    max_participants_per_user: usize = "LODGE_MAX_PARTICIPANTS_PER_USER";
    /// Most voice participants one guild may have on this node at once. [default: 2500]
    max_participants_per_guild: usize = "LODGE_MAX_PARTICIPANTS_PER_GUILD";
    /// Seconds a voice participant has to complete ICE and DTLS after its Select Protocol before
    /// it is removed (its place is held meanwhile). [default: 10]
    voice_connect_timeout_secs: u64 = "LODGE_VOICE_CONNECT_TIMEOUT_SECS";
    /// Seconds a voice connection whose WebSocket dropped is kept (its call goes on) for the
    /// client to resume it with op 7 and get the messages it missed; after that the caller
    /// leaves the channel (a closed tab shows the caller leaving this much later). [default: 5]
    voice_resume_secs: u64 = "LODGE_VOICE_RESUME_SECS";
    /// Milliseconds between voice gateway heartbeats (sent in its Hello and Ready); a voice
    /// connection that misses two intervals is closed. [default: 13750]
    voice_heartbeat_interval_ms: u64 = "LODGE_VOICE_HEARTBEAT_INTERVAL_MS";
    /// Milliseconds a drain (SIGTERM, or POST /api/v10/admin/drain) spreads its work over:
    /// the calls it moves to other nodes (room by room), then the op 7 it sends its gateway
    /// clients, so neither arrives on the other nodes all at once. [default: 5000]
    drain_spread_ms: u64 = "LODGE_DRAIN_SPREAD_MS";
    /// Seconds a draining node waits for its calls and gateway clients to leave before it
    /// exits anyway (what is left then gets the ordinary shutdown: op 7, voice close 1001).
    /// [default: 30]
    drain_timeout_secs: u64 = "LODGE_DRAIN_TIMEOUT_SECS";
    /// Open /quality/live sockets (the dashboard) one user, or the operator, may hold; more are
    /// closed with 4008. [default: 4]
    max_live_sockets_per_viewer: usize = "LODGE_MAX_LIVE_SOCKETS_PER_VIEWER";
    /// Open /quality/live sockets on the node; more get 429 before the upgrade. [default: 256]
    max_live_sockets: usize = "LODGE_MAX_LIVE_SOCKETS";
    /// Seconds a voice token (from VOICE_SERVER_UPDATE) stays valid. [default: 60]
    voice_token_ttl: u64 = "LODGE_VOICE_TOKEN_TTL";
    /// REST requests per second per caller per route bucket (route + channel/guild). [default: 50]
    rate_limit_route: u32 = "LODGE_RATE_LIMIT_ROUTE";
    /// REST requests per second per caller across all routes. [default: 100]
    rate_limit_global: u32 = "LODGE_RATE_LIMIT_GLOBAL";
    /// Scheduling priority (nice, -20..19) of the media threads (every media worker's); lower
    /// runs first. On a machine shared with other busy processes, e.g. -10 keeps packets from
    /// waiting for a time slice.
    /// Below 0 needs root or CAP_SYS_NICE; if refused, Lodge says so and runs at 0. [default: 0]
    media_nice: i32 = "LODGE_MEDIA_NICE" [allow_hyphen_values = true];
    /// Run the media threads (every media worker's) under the real-time FIFO scheduler at this
    /// priority (1..99; 0 = off): each then runs the moment a packet arrives instead of waiting for a time slice, the
    /// way to keep the node's added delay under a millisecond on a machine shared with other
    /// busy processes. Needs root or CAP_SYS_NICE; if refused, Lodge says so and carries on.
    /// The kernel's real-time throttling (kernel.sched_rt_runtime_us) keeps a share of each
    /// second for everything else. Overrides --media-nice. [default: 0]
    media_realtime: u8 = "LODGE_MEDIA_REALTIME";
    /// Media workers: single-threaded loops, each on a thread of its own with its own media
    /// port (media_listen's port + i) and a share of the rooms (every caller of a room is on
    /// its room's worker). Open the whole port range in firewalls. 1..=64. [default: the
    /// number of available cores]
    media_workers: usize = "LODGE_MEDIA_WORKERS";
    /// Write and seal each WebRTC listener's copy in the forward loop from a small per-slot
    /// context (header template, SRTP key, address) instead of through the listener's whole
    /// WebRTC session: about half the media thread's work per copy (docs/BENCHMARKS.md,
    /// "Direct sends"). The same packets either way; false only to compare or to rule it out
    /// when chasing a problem. [default: true]
    media_direct_send: bool = "LODGE_MEDIA_DIRECT_SEND";
    /// A secret that lets the /dashboard page and GET /api/v10/quality/* see every channel on
    /// this node and turns on the admin API (/api/v10/admin/*: runtime control); send it as
    /// "Authorization: Operator <secret>". Without it each user sees the channels of their own
    /// guilds only and the admin API answers 404. Use 16 or more random characters.
    /// [default: unset]
    operator_token: String = "LODGE_OPERATOR_TOKEN" [hide_env_values = true];
    /// Shared secret of a cluster of nodes: edges present it to their origin. 16+ characters.
    /// Needed with --trunk-listen or --origin. [default: unset]
    cluster_token: String = "LODGE_CLUSTER_TOKEN" [hide_env_values = true];
    /// Origin role: accept edge trunks (QUIC) on this UDP address:port. The trunk certificate's
    /// fingerprint, which edges pin, is printed at start-up (it lives in <data_dir>). With
    /// --redis-url every media node may accept trunks: it lists its trunk address and its edges
    /// in the registry, and tells each edge about the other nodes. [default: unset]
    trunk_listen: SocketAddr = "LODGE_TRUNK_LISTEN";
    /// Edge role: the origin's trunk address:port. The edge then serves only the voice gateway
    /// and media for callers the origin places on it. For a cluster of nodes, any node's trunk
    /// address (a seed): the edge learns the other nodes from it and trunks to each. An edge
    /// never uses Redis. [default: unset]
    origin: SocketAddr = "LODGE_ORIGIN";
    /// Edge role: the origin's trunk certificate fingerprint (sha256:…), as the origin printed it.
    origin_fingerprint: String = "LODGE_ORIGIN_FINGERPRINT";
    /// This node's region name; callers whose voice state update carries "region": "<name>" are
    /// placed on an edge (or, in a cluster, a node) of that region. [default: default]
    region: String = "LODGE_REGION";
    /// Cluster of equal nodes: the Redis server they share (live state and the event bus), e.g.
    /// redis://10.0.0.5:6379. Use with --database-url postgres://… (every node must see the
    /// same database). Without it the node works alone and needs no Redis. [default: unset]
    redis_url: String = "LODGE_REDIS_URL" [hide_env_values = true];
    /// This node's name in the cluster (unique, stable across restarts).
    /// [default: the host:port of --public-url]
    node_id: String = "LODGE_NODE_ID";
    /// This node's own base URL (e.g. http://10.0.0.3:8080) when --public-url is a load balancer
    /// in front of the whole cluster: voice callers are sent here for rooms this node hosts,
    /// while gateway clients (and their Resume) use --public-url. [default: --public-url]
    node_url: String = "LODGE_NODE_URL";
    /// What this node serves, comma-separated: api (REST and the gateway), media (the voice
    /// gateway and the UDP media port; rooms can be placed here). [default: api,media]
    roles: String = "LODGE_ROLES";
    /// Milliseconds between gateway heartbeats (sent in Hello); a session that misses one and a
    /// half intervals is closed with 4009. [default: 41250]
    heartbeat_interval_ms: u64 = "LODGE_HEARTBEAT_INTERVAL_MS";
    /// Seconds a new gateway connection has to Identify or Resume before it is closed with 4003.
    /// [default: 20]
    identify_timeout_secs: u64 = "LODGE_IDENTIFY_TIMEOUT_SECS";
    /// Most gateway sessions (connected or resumable) one user may hold on this node; an
    /// Identify beyond it first ends the user's oldest disconnected session, and is refused
    /// (close 4008) when all of them are connected. [default: 16]
    max_sessions_per_user: usize = "LODGE_MAX_SESSIONS_PER_USER";
    /// Identifies one user may make per 24 hours (`session_start_limit.total`); beyond it the
    /// gateway closes with 4008 until the window resets. [default: 1000]
    session_start_total: u32 = "LODGE_SESSION_START_TOTAL";
    /// Identifies one user may make per 5 seconds (`session_start_limit.max_concurrency`); a
    /// faster Identify gets Invalid Session (op 9) and may retry after a few seconds. [default: 5]
    session_start_max_concurrency: u32 = "LODGE_SESSION_START_MAX_CONCURRENCY";
    /// Most open gateway WebSocket connections on this node; beyond it new ones get HTTP 503.
    /// [default: 20000]
    max_gateway_connections: usize = "LODGE_MAX_GATEWAY_CONNECTIONS";
    /// Whether bot accounts may ask for the privileged intents GUILD_MEMBERS and
    /// GUILD_PRESENCES (Discord makes each application enable them); false refuses such an
    /// Identify with 4014. [default: true]
    bot_privileged_intents: bool = "LODGE_BOT_PRIVILEGED_INTENTS";
    /// Address range of a reverse proxy in front of Lodge (e.g. 10.0.0.0/8; repeat the flag or
    /// separate with commas for several). Only from such a peer is X-Forwarded-For believed:
    /// the client is its rightmost address that is not a trusted proxy. Trusted proxies are also
    /// exempt from --max-http-connections-per-ip. [default: none: the TCP peer is the client]
    trusted_proxy: Vec<crate::client_addr::Cidr> = "LODGE_TRUSTED_PROXY" [value_delimiter = ','];
    /// Failed logins per client address, and per username from any address, before back-off
    /// starts: 1 s, then doubling with each further failure up to --login-backoff-max-secs.
    /// [default: 5]
    login_failures_before_backoff: u32 = "LODGE_LOGIN_FAILURES_BEFORE_BACKOFF";
    /// The longest login back-off, in seconds. [default: 60]
    login_backoff_max_secs: u64 = "LODGE_LOGIN_BACKOFF_MAX_SECS";
    /// Account registrations per client address per hour. [default: 20]
    registrations_per_ip_per_hour: u32 = "LODGE_REGISTRATIONS_PER_IP_PER_HOUR";
    /// Password hashes (Argon2, for login and registration) run at once, off the request
    /// threads; up to 4 per slot more wait, further ones get 503 with Retry-After. 0 = half
    /// the CPU cores (at least one), leaving the rest to requests and media. [default: 0]
    password_hash_concurrency: usize = "LODGE_PASSWORD_HASH_CONCURRENCY";
    /// Seconds a client has to send a request's head (request line and headers), from
    /// connecting or from its first byte on a kept-alive connection. [default: 10]
    http_header_timeout_secs: u64 = "LODGE_HTTP_HEADER_TIMEOUT_SECS";
    /// Seconds a kept-alive HTTP connection may wait for its next request. [default: 60]
    http_idle_timeout_secs: u64 = "LODGE_HTTP_IDLE_TIMEOUT_SECS";
    /// Seconds to read a request's body and answer it (WebSockets are not limited once
    /// upgraded). [default: 30]
    http_request_timeout_secs: u64 = "LODGE_HTTP_REQUEST_TIMEOUT_SECS";
    /// Open TCP connections on the HTTP port, WebSockets included; more are refused with 503.
    /// [default: 10000]
    max_http_connections: usize = "LODGE_MAX_HTTP_CONNECTIONS";
    /// Open TCP connections on the HTTP port from one client address (IPv6: one /64); 0 = no
    /// per-address cap. [default: 256]
    max_http_connections_per_ip: usize = "LODGE_MAX_HTTP_CONNECTIONS_PER_IP";
    /// TURN relay (coturn) handed to voice callers whose UDP cannot reach the media port, e.g.
    /// turn:turn.example.com:3478?transport=udp, turn:turn.example.com:3478?transport=tcp,
    /// turns:turn.example.com:5349?transport=tcp (repeat the flag or separate with commas; in
    /// the file a list). Needs --turn-secret. Each voice connection gets these URLs with its
    /// own credential in the voice gateway's Ready (`ice_servers`). [default: none]
    turn_url: Vec<crate::turn::TurnUrl> = "LODGE_TURN_URL" [value_delimiter = ','];
    /// The secret shared with coturn (its `use-auth-secret` and `static-auth-secret=<this>`):
    /// Lodge signs each caller's TURN username `<expiry>:<user id>` with it (HMAC-SHA1).
    /// 16 or more random characters. [default: unset]
    turn_secret: String = "LODGE_TURN_SECRET" [hide_env_values = true];
    /// Seconds a handed-out TURN credential stays valid for starting a relay (60..86400).
    /// coturn checks the expiry when a relay is allocated, so a call relayed before it goes on;
    /// every voice connection gets a fresh credential. [default: 3600, one hour]
    turn_credential_ttl_secs: u64 = "LODGE_TURN_CREDENTIAL_TTL_SECS";
    /// ICE-TCP for voice callers whose UDP cannot reach the media port: a TCP listener on the
    /// media listen address and port number, and a passive TCP candidate (lower priority than
    /// UDP) in every WebRTC answer. Browsers try it before any TURN relay. Native (UDP mode)
    /// clients never use it. false = UDP only. [default: true]
    ice_tcp: bool = "LODGE_ICE_TCP";
    /// Open ICE-TCP connections on the node; more are closed when accepted. [default: 4096]
    ice_tcp_max_connections: usize = "LODGE_ICE_TCP_MAX_CONNECTIONS";
    /// Open ICE-TCP connections from one IP address (a caller opens one or two; callers behind
    /// one NAT address share this). [default: 64]
    ice_tcp_max_connections_per_ip: usize = "LODGE_ICE_TCP_MAX_CONNECTIONS_PER_IP";
}

/// The effective configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    pub http_listen: SocketAddr,
    pub media_listen: SocketAddr,
    pub public_ip: IpAddr,
    pub public_url: String,
    /// HTTPS on the HTTP listener.
    pub tls: Option<crate::tls::TlsFiles>,
    pub data_dir: PathBuf,
    pub database: PathBuf,
    /// Set when a database URL (PostgreSQL) replaces the SQLite file.
    pub database_url: Option<String>,
    pub log: String,
    pub max_participants: usize,
    pub max_room_size: usize,
    pub max_participants_per_user: usize,
    pub max_participants_per_guild: usize,
    pub voice_connect_timeout_secs: u64,
    pub voice_resume_secs: u64,
    pub voice_heartbeat_interval_ms: u64,
    pub drain_spread_ms: u64,
    pub drain_timeout_secs: u64,
    pub max_live_sockets_per_viewer: usize,
    pub max_live_sockets: usize,
    pub voice_token_ttl: u64,
    pub rate_limit_route: u32,
    pub rate_limit_global: u32,
    pub media_nice: i32,
    pub media_workers: usize,
    pub media_direct_send: bool,
    pub media_realtime: u8,
    /// Never printed or serialized.
    #[serde(skip_serializing)]
    pub operator_token: Option<String>,
    /// Never printed or serialized.
    #[serde(skip_serializing)]
    pub cluster_token: Option<String>,
    pub trunk_listen: Option<SocketAddr>,
    pub origin: Option<SocketAddr>,
    pub origin_fingerprint: Option<String>,
    pub region: String,
    /// Never printed or serialized (it may carry a password).
    #[serde(skip_serializing)]
    pub redis_url: Option<String>,
    pub node_id: String,
    pub node_url: Option<String>,
    pub roles: crate::shared::Roles,
    pub heartbeat_interval_ms: u64,
    pub identify_timeout_secs: u64,
    pub max_sessions_per_user: usize,
    pub session_start_total: u32,
    pub session_start_max_concurrency: u32,
    pub max_gateway_connections: usize,
    pub bot_privileged_intents: bool,
    pub trusted_proxy: Vec<crate::client_addr::Cidr>,
    pub login_failures_before_backoff: u32,
    pub login_backoff_max_secs: u64,
    pub registrations_per_ip_per_hour: u32,
    pub password_hash_concurrency: usize,
    pub http_header_timeout_secs: u64,
    pub http_idle_timeout_secs: u64,
    pub http_request_timeout_secs: u64,
    pub max_http_connections: usize,
    pub max_http_connections_per_ip: usize,
    /// TURN relays handed to voice callers; `None` without --turn-url.
    pub turn: Option<crate::turn::TurnConfig>,
    pub ice_tcp: bool,
    pub ice_tcp_max_connections: usize,
    pub ice_tcp_max_connections_per_ip: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("config file {path}: {err}")]
    Parse { path: PathBuf, err: toml::de::Error },
    #[error("unknown environment variable {0}; known LODGE_* variables: {known}", known = KNOWN_ENV.join(", "))]
    UnknownEnv(String),
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Merge file, environment (already folded into `args` by clap) and flags.
    pub fn load(
        args: &ServeArgs,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        for (k, _) in env {
            if k.starts_with("LODGE_") && !KNOWN_ENV.contains(&k.as_str()) {
                return Err(ConfigError::UnknownEnv(k));
            }
        }
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
                    path: path.clone(),
                    err,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|err| ConfigError::Parse {
                    path: path.clone(),
                    err,
                })?
            }
            None => FileConfig::default(),
        };
        let mut v = args.over(file);
        let http_listen = v.http_listen.unwrap_or(([127, 0, 0, 1], 8080).into());
        let media_listen = v.media_listen.unwrap_or(([127, 0, 0, 1], 50000).into());
        let public_ip = v.public_ip.unwrap_or(media_listen.ip());
        if public_ip.is_unspecified() {
            return Err(ConfigError::Invalid(
                "the media port listens on all interfaces; set --public-ip to the address clients reach it on".into(),
            ));
        }
        let tls = match (v.tls_cert.take(), v.tls_key.take()) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "--tls-cert and --tls-key go together: give both for HTTPS, or neither".into(),
                ))
            }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public_url = v
            .public_url
            .take()
            .unwrap_or_else(|| format!("{scheme}://{http_listen}"))
            .trim_end_matches('/')
            .to_string();
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(ConfigError::Invalid(format!(
                "public_url must start with http:// or https://, got {public_url}"
            )));
        }
        let data_dir = v
            .data_dir
            .take()
            .unwrap_or_else(|| PathBuf::from("./lodge-data"));
        let database = v
            .database
            .take()
            .unwrap_or_else(|| data_dir.join("lodge.db"));
        Config {
            http_listen,
            media_listen,
            public_ip,
            public_url,
            tls,
            data_dir,
            database,
            database_url: v.database_url.take(),
            log: v.log.take().unwrap_or_else(|| "info".into()),
            max_participants: v.max_participants.unwrap_or(10_000),
            max_room_size: v.max_room_size.unwrap_or(1_000),
            max_participants_per_user: in_range(
                "max_participants_per_user",
                v.max_participants_per_user.unwrap_or(4),
                1..=1_000,
                "use 1 to 1000",
            )?,
            max_participants_per_guild: in_range(
                "max_participants_per_guild",
                v.max_participants_per_guild.unwrap_or(2_500),
                1..=10_000_000,
                "use at least 1",
            )?,
            max_live_sockets_per_viewer: in_range(
                "max_live_sockets_per_viewer",
                v.max_live_sockets_per_viewer
                    .unwrap_or(crate::rest::quality::MAX_LIVE_PER_VIEWER),
                1..=1_000,
                "use 1 to 1000",
            )?,
            max_live_sockets: in_range(
                "max_live_sockets",
                v.max_live_sockets
                    .unwrap_or(crate::rest::quality::MAX_LIVE_SOCKETS),
                1..=100_000,
                "use 1 to 100000",
            )?,
            voice_connect_timeout_secs: in_range(
                "voice_connect_timeout_secs",
                v.voice_connect_timeout_secs.unwrap_or(10),
                1..=300,
                "use 1 to 300 seconds",
            )?,
            voice_resume_secs: in_range(
                "voice_resume_secs",
                v.voice_resume_secs.unwrap_or(5),
                1..=300,
                "use 1 to 300 seconds",
            )?,
            voice_heartbeat_interval_ms: in_range(
                "voice_heartbeat_interval_ms",
                v.voice_heartbeat_interval_ms
                    .unwrap_or(crate::voice::gateway::HEARTBEAT_INTERVAL_MS),
                1_000..=600_000,
                "use 1000 to 600000 milliseconds (Discord's is 13750; clients beat at most once a second)",
            )?,
            drain_spread_ms: in_range(
                "drain_spread_ms",
                v.drain_spread_ms.unwrap_or(5000),
                0..=600_000,
                "use 0 (all at once) to 600000 ms",
            )?,
            drain_timeout_secs: in_range(
                "drain_timeout_secs",
                v.drain_timeout_secs.unwrap_or(30),
                1..=3600,
                "use 1 to 3600 seconds",
            )?,
            voice_token_ttl: v.voice_token_ttl.unwrap_or(60).clamp(1, 3600),
            rate_limit_route: v.rate_limit_route.unwrap_or(50).max(1),
            rate_limit_global: v.rate_limit_global.unwrap_or(100).max(1),
            media_nice: in_range(
                "media_nice",
                v.media_nice.unwrap_or(0),
                -20..=19,
                "use -20 (first) to 19 (last); 0 is normal",
            )?,
            media_realtime: in_range(
                "media_realtime",
                v.media_realtime.unwrap_or(0),
                0..=99,
                "use 1 (lowest) to 99 (highest) real-time priority, or 0 for off",
            )?,
            media_workers: {
                let n = in_range(
                    "media_workers",
                    v.media_workers.unwrap_or_else(|| {
                        std::thread::available_parallelism().map_or(1, |n| n.get().min(64))
                    }),
                    1..=64,
                    "use 1 to 64 media workers (about one per core)",
                )?;
                let last = usize::from(media_listen.port()) + n - 1;
                if media_listen.port() != 0 && last > usize::from(u16::MAX) {
                    return Err(ConfigError::Invalid(format!(
                        "media_workers {n} from media_listen port {} would need ports up to {last}, past 65535: lower the port or media_workers",
                        media_listen.port()
                    )));
                }
                n
            },
            media_direct_send: v.media_direct_send.unwrap_or(true),
            operator_token: match v.operator_token.take() {
                Some(t) if t.chars().count() < 16 => {
                    return Err(ConfigError::Invalid(
                        "operator_token must be at least 16 characters".into(),
                    ))
                }
                t => t,
            },
            cluster_token: match v.cluster_token.take() {
                Some(t) if t.chars().count() < 16 => {
                    return Err(ConfigError::Invalid(
                        "cluster_token must be at least 16 characters".into(),
                    ))
                }
                t => t,
            },
            trunk_listen: v.trunk_listen,
            origin: v.origin,
            origin_fingerprint: v.origin_fingerprint.take(),
            region: v.region.take().unwrap_or_else(|| "default".into()),
            redis_url: v.redis_url.take(),
            node_id: v.node_id.take().unwrap_or_default(),
            node_url: match v.node_url.take() {
                Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                    return Err(ConfigError::Invalid(
                        "--node-url must be an http:// or https:// URL (this node's own address)"
                            .into(),
                    ))
                }
                u => u,
            },
            roles: match v.roles.take() {
                None => crate::shared::Roles::ALL,
                Some(r) => crate::shared::Roles::parse(&r).map_err(ConfigError::Invalid)?,
            },
            heartbeat_interval_ms: in_range(
                "heartbeat_interval_ms",
                v.heartbeat_interval_ms.unwrap_or(41_250),
                100..=600_000,
                "use 100 to 600000 milliseconds (Discord's is 41250)",
            )?,
            identify_timeout_secs: in_range(
                "identify_timeout_secs",
                v.identify_timeout_secs.unwrap_or(20),
                1..=600,
                "use 1 to 600 seconds",
            )?,
            max_sessions_per_user: in_range(
                "max_sessions_per_user",
                v.max_sessions_per_user.unwrap_or(16),
                1..=10_000,
                "use 1 to 10000",
            )?,
            session_start_total: in_range(
                "session_start_total",
                v.session_start_total.unwrap_or(1000),
                1..=1_000_000,
                "use 1 to 1000000 identifies per 24 hours",
            )?,
            session_start_max_concurrency: in_range(
                "session_start_max_concurrency",
                v.session_start_max_concurrency.unwrap_or(5),
                1..=1000,
                "use 1 to 1000 identifies per 5 seconds",
            )?,
            max_gateway_connections: in_range(
                "max_gateway_connections",
                v.max_gateway_connections.unwrap_or(20_000),
                1..=10_000_000,
                "use at least 1",
            )?,
            bot_privileged_intents: v.bot_privileged_intents.unwrap_or(true),
            trusted_proxy: v.trusted_proxy.take().unwrap_or_default(),
            login_failures_before_backoff: v.login_failures_before_backoff.unwrap_or(5).max(1),
            login_backoff_max_secs: in_range(
                "login_backoff_max_secs",
                v.login_backoff_max_secs.unwrap_or(60),
                1..=86_400,
                "use 1 s to a day",
            )?,
            registrations_per_ip_per_hour: v.registrations_per_ip_per_hour.unwrap_or(20),
            password_hash_concurrency: in_range(
                "password_hash_concurrency",
                v.password_hash_concurrency.unwrap_or(0),
                0..=1024,
                "use 0 (half the cores) or a count of concurrent hashes",
            )?,
            http_header_timeout_secs: in_range(
                "http_header_timeout_secs",
                v.http_header_timeout_secs.unwrap_or(10),
                1..=3600,
                "use 1 to 3600 seconds",
            )?,
            http_idle_timeout_secs: in_range(
                "http_idle_timeout_secs",
                v.http_idle_timeout_secs.unwrap_or(60),
                1..=3600,
                "use 1 to 3600 seconds",
            )?,
            http_request_timeout_secs: in_range(
                "http_request_timeout_secs",
                v.http_request_timeout_secs.unwrap_or(30),
                1..=3600,
                "use 1 to 3600 seconds",
            )?,
            max_http_connections: in_range(
                "max_http_connections",
                v.max_http_connections.unwrap_or(10_000),
                1..=1_000_000,
                "use 1 to 1000000 (mind the process's file descriptor limit)",
            )?,
            max_http_connections_per_ip: v.max_http_connections_per_ip.unwrap_or(256),
            turn: turn_config(
                v.turn_url.take().unwrap_or_default(),
                v.turn_secret.take(),
                v.turn_credential_ttl_secs,
            )?,
            ice_tcp: v.ice_tcp.unwrap_or(true),
            ice_tcp_max_connections: in_range(
                "ice_tcp_max_connections",
                v.ice_tcp_max_connections.unwrap_or(4096),
                1..=1_000_000,
                "use 1 to 1000000 (mind the process's file descriptor limit)",
            )?,
            ice_tcp_max_connections_per_ip: in_range(
                "ice_tcp_max_connections_per_ip",
                v.ice_tcp_max_connections_per_ip.unwrap_or(64),
                1..=1_000_000,
                "use 1 or more",
            )?,
        }
        .checked_cluster()
    }

    /// The cluster settings must fit together.
    fn checked_cluster(self) -> Result<Config, ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.trunk_listen.is_some() && self.origin.is_some() {
            return bad("a node is an origin (--trunk-listen) or an edge (--origin), not both");
        }
        if (self.trunk_listen.is_some() || self.origin.is_some()) && self.cluster_token.is_none() {
            return bad("--trunk-listen and --origin need --cluster-token (the secret edges present to the origin)");
        }
        if self.origin.is_some() && self.origin_fingerprint.is_none() {
            return bad(
                "--origin needs --origin-fingerprint (sha256:…, printed by the origin at start-up)",
            );
        }
        if self.region.is_empty() || self.region.len() > 64 {
            return bad("--region must be 1 to 64 characters");
        }
        if self.redis_url.is_some() {
            if self.origin.is_some() {
                return bad("--redis-url (a cluster member) does not combine with --origin: an edge is not a cluster member; start it with --origin naming any node's --trunk-listen address");
            }
            if !self
                .database_url
                .as_deref()
                .is_some_and(|u| u.starts_with("postgres"))
            {
                return bad("--redis-url needs --database-url postgres://… (every node of a cluster must use the same database; a SQLite file is one node's)");
            }
        } else if self.roles != crate::shared::Roles::ALL {
            return bad("--roles restricts a node of a cluster: it needs --redis-url");
        }
        if self.node_id.len() > 128 || self.node_id.chars().any(|c| c.is_whitespace()) {
            return bad("--node-id must be at most 128 characters without spaces");
        }
        Ok(self)
    }

    /// `host:port` of this node's HTTP server as clients see it (the voice endpoint).
    pub fn public_host(&self) -> String {
        host_of(&self.public_url)
    }

    /// `host:port` of this node itself (its voice gateway): `--node-url`, else `--public-url`.
    pub fn node_host(&self) -> String {
        match &self.node_url {
            Some(u) => host_of(u),
            None => self.public_host(),
        }
    }

    /// This node's name in a cluster: `--node-id`, or its own host:port.
    pub fn node_name(&self) -> String {
        if self.node_id.is_empty() {
            self.node_host()
        } else {
            self.node_id.clone()
        }
    }

    /// The gateway URL handed out by `GET /gateway`.
    pub fn gateway_url(&self) -> String {
        let scheme = if self.public_url.starts_with("https://") {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}/gateway", self.public_host())
    }
}

/// The TURN settings fit together: URLs and a secret, or neither.
fn turn_config(
    urls: Vec<crate::turn::TurnUrl>,
    secret: Option<String>,
    ttl_secs: Option<u64>,
) -> Result<Option<crate::turn::TurnConfig>, ConfigError> {
    let ttl = in_range(
        "turn_credential_ttl_secs",
        ttl_secs.unwrap_or(3600),
        60..=86_400,
        "use 60 seconds to a day",
    )?;
    match (urls.is_empty(), secret) {
        (true, None) => Ok(None),
        (true, Some(_)) => Err(ConfigError::Invalid(
            "--turn-secret is set but no --turn-url: name the relay(s) callers should use".into(),
        )),
        (false, None) => Err(ConfigError::Invalid(
            "--turn-url needs --turn-secret (coturn's static-auth-secret, with use-auth-secret)"
                .into(),
        )),
        (false, Some(s)) if s.chars().count() < 16 => Err(ConfigError::Invalid(
            "turn_secret must be at least 16 characters".into(),
        )),
        (false, Some(secret)) => Ok(Some(crate::turn::TurnConfig {
            urls,
            secret,
            ttl: std::time::Duration::from_secs(ttl),
        })),
    }
}

/// `value` if `range` holds it, else an error naming the key, the value and `hint`.
fn in_range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
    hint: &str,
) -> Result<T, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::Invalid(format!(
            "{key} {value} is out of range: {hint}"
        )))
    }
}

/// `host:port` of a base URL.
fn host_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("lodge.toml");
        std::fs::write(&f, "http_listen = \"127.0.0.1:9000\"\nmedia_listen = \"127.0.0.1:51000\"\nmax_room_size = 5\n").unwrap();
        let args = ServeArgs {
            config: Some(f.clone()),
            media_listen: Some("127.0.0.2:52000".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::load(&args, std::iter::empty()).unwrap();
        assert_eq!(c.http_listen.port(), 9000, "file beats default");
        assert_eq!(c.media_listen.port(), 52000, "flag/env beats file");
        assert_eq!(c.public_ip.to_string(), "127.0.0.2");
        assert_eq!(c.max_room_size, 5);
        assert_eq!(c.gateway_url(), "ws://127.0.0.1:9000/gateway");

        std::fs::write(&f, "htp_listen = \"127.0.0.1:9000\"\n").unwrap();
        let e = Config::load(&args, std::iter::empty())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field") && e.contains("htp_listen"),
            "{e}"
        );

        let e = Config::load(
            &ServeArgs::default(),
            [("LODGE_HTTP_LISTN".to_string(), "x".to_string())].into_iter(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("LODGE_HTTP_LISTN"));

        let bad = ServeArgs {
            media_listen: Some("0.0.0.0:50000".parse().unwrap()),
            ..Default::default()
        };
        assert!(Config::load(&bad, std::iter::empty())
            .unwrap_err()
            .to_string()
            .contains("--public-ip"));
    }

    #[test]
    fn ice_tcp_is_on_by_default_and_can_be_turned_off() {
        let c = Config::load(&ServeArgs::default(), std::iter::empty()).unwrap();
        assert!(c.ice_tcp);
        assert_eq!(
            (c.ice_tcp_max_connections, c.ice_tcp_max_connections_per_ip),
            (4096, 64)
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("lodge.toml");
        std::fs::write(&f, "ice_tcp = false\nice_tcp_max_connections_per_ip = 8\n").unwrap();
        let args = ServeArgs {
            config: Some(f),
            ..Default::default()
        };
        let c = Config::load(&args, std::iter::empty()).unwrap();
        assert!(!c.ice_tcp);
        assert_eq!(c.ice_tcp_max_connections_per_ip, 8);
        let on = ServeArgs {
            ice_tcp: Some(true),
            ..args
        };
        assert!(
            Config::load(&on, std::iter::empty()).unwrap().ice_tcp,
            "the flag beats the file"
        );
        let zero = ServeArgs {
            ice_tcp_max_connections: Some(0),
            ..Default::default()
        };
        assert!(Config::load(&zero, std::iter::empty()).is_err());
        // The flag takes a value, as the other booleans do.
        let a = serve_flags(&["--ice-tcp", "false"]).unwrap();
        assert_eq!(a.ice_tcp, Some(false));
    }

    #[test]
    fn operator_token_is_checked_and_never_serialized() {
        let short = ServeArgs {
            operator_token: Some("short".into()),
            ..Default::default()
        };
        let e = Config::load(&short, std::iter::empty()).unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
        let ok = ServeArgs {
            operator_token: Some("0123456789abcdef-secret".into()),
            ..Default::default()
        };
        let c = Config::load(&ok, std::iter::empty()).unwrap();
        assert_eq!(c.operator_token.as_deref(), Some("0123456789abcdef-secret"));
        let shown = serde_json::to_string(&c).unwrap();
        assert!(!shown.contains("secret"), "{shown}");
    }

    /// `lodge serve <flags>` as clap parses it.
    fn serve_flags(flags: &[&str]) -> Result<ServeArgs, String> {
        let argv = ["lodge", "serve"].iter().chain(flags);
        let cli = <Cli as clap::Parser>::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Serve(a) = cli.command else {
            panic!("serve")
        };
        Ok(a)
    }

    /// Load with these flags and no environment.
    fn load_args(args: ServeArgs) -> Result<Config, String> {
        Config::load(&args, std::iter::empty()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_cluster_node_may_accept_trunks_but_an_edge_is_no_cluster_member() {
        let node = || ServeArgs {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            database_url: Some("postgres://lodge@127.0.0.1/lodge".into()),
            cluster_token: Some("0123456789abcdef-cluster".into()),
            ..Default::default()
        };
        let c = load_args(ServeArgs {
            trunk_listen: Some("127.0.0.1:7443".parse().unwrap()),
            ..node()
        })
        .unwrap();
        assert!(c.trunk_listen.is_some() && c.redis_url.is_some());
        let e = load_args(ServeArgs {
            origin: Some("127.0.0.1:7443".parse().unwrap()),
            origin_fingerprint: Some(format!("sha256:{}", "0".repeat(64))),
            ..node()
        })
        .unwrap_err();
        assert!(
            e.contains("--origin") && e.contains("not a cluster member"),
            "{e}"
        );
    }

    #[test]
    fn direct_sends_are_on_by_default_and_can_be_turned_off() {
        assert!(load_args(ServeArgs::default()).unwrap().media_direct_send);
        let a = serve_flags(&["--media-direct-send", "false"]).unwrap();
        assert!(!load_args(a).unwrap().media_direct_send);
        // Anything but true/false is refused, naming the flag.
        let bad = serve_flags(&["--media-direct-send", "sometimes"]).unwrap_err();
        assert!(bad.contains("--media-direct-send"), "{bad}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("lodge.toml");
        std::fs::write(&f, "media_direct_send = false\n").unwrap();
        let file = ServeArgs {
            config: Some(f),
            ..Default::default()
        };
        assert!(!load_args(file).unwrap().media_direct_send);
    }

    #[test]
    fn media_workers_default_to_the_cores_and_are_bounded() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(64));
        assert_eq!(
            load_args(ServeArgs::default()).unwrap().media_workers,
            cores
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("lodge.toml");
        std::fs::write(&f, "media_workers = 3\n").unwrap();
        let c = load_args(ServeArgs {
            config: Some(f),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.media_workers, 3);
        for bad in [0, 65] {
            let e = load_args(ServeArgs {
                media_workers: Some(bad),
                ..Default::default()
            })
            .unwrap_err();
            assert!(
                e.contains(&format!("media_workers {bad}")) && e.contains("1 to 64"),
                "{e}"
            );
        }
        // Worker i listens on media_listen's port + i: the range must end by 65535.
        let near_top = |n| ServeArgs {
            media_listen: Some("127.0.0.1:65534".parse().unwrap()),
            media_workers: Some(n),
            ..Default::default()
        };
        assert_eq!(load_args(near_top(2)).unwrap().media_workers, 2);
        let e = load_args(near_top(3)).unwrap_err();
        assert!(e.contains("65536") && e.contains("past 65535"), "{e}");
    }

    #[test]
    fn media_nice_from_file_and_its_range() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("lodge.toml");
        std::fs::write(&f, "media_nice = -10\n").unwrap();
        let from_file = ServeArgs {
            config: Some(f.clone()),
            ..Default::default()
        };
        assert_eq!(load_args(from_file).unwrap().media_nice, -10);
        assert_eq!(
            load_args(ServeArgs::default()).unwrap().media_nice,
            0,
            "normal priority unless asked"
        );
        let e = load_args(ServeArgs {
            media_nice: Some(-30),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("media_nice -30") && e.contains("-20"), "{e}");
    }

    #[test]
    fn media_realtime_from_env_and_its_range() {
        let c = Config::load(
            &ServeArgs::default(),
            [("LODGE_MEDIA_REALTIME".to_string(), "10".to_string())].into_iter(),
        );
        // The env var is read by clap in real runs; here it must at least be a known name.
        assert!(c.is_ok(), "{:?}", c.err());
        let asked = ServeArgs {
            media_realtime: Some(20),
            ..Default::default()
        };
        assert_eq!(load_args(asked).unwrap().media_realtime, 20);
        assert_eq!(
            load_args(ServeArgs::default()).unwrap().media_realtime,
            0,
            "off unless asked"
        );
        let e = load_args(ServeArgs {
            media_realtime: Some(120),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("media_realtime 120") && e.contains("99"), "{e}");
    }

    #[test]
    fn trusted_proxies_from_the_file_and_bad_ranges_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("lodge.toml");
        std::fs::write(&f, "trusted_proxy = [\"10.0.0.0/8\", \"fd00::/8\"]\n").unwrap();
        let c = load_args(ServeArgs {
            config: Some(f.clone()),
            ..Default::default()
        })
        .unwrap();
        let shown: Vec<String> = c.trusted_proxy.iter().map(|r| r.to_string()).collect();
        assert_eq!(shown, ["10.0.0.0/8", "fd00::/8"]);
        assert!(load_args(ServeArgs::default())
            .unwrap()
            .trusted_proxy
            .is_empty());
        std::fs::write(&f, "trusted_proxy = [\"10.0.0.0/40\"]\n").unwrap();
        let e = load_args(ServeArgs {
            config: Some(f),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("10.0.0.0/40") && e.contains("prefix"), "{e}");
    }

    #[test]
    fn turn_urls_from_the_file_need_a_secret_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("lodge.toml");
        std::fs::write(
            &f,
            "turn_url = [\"turn:turn.example.com:3478?transport=tcp\", \"turns:turn.example.com:5349?transport=tcp\"]\nturn_secret = \"0123456789abcdef-turn\"\n",
        )
        .unwrap();
        let file = || ServeArgs {
            config: Some(f.clone()),
            ..Default::default()
        };
        let c = load_args(file()).unwrap();
        let turn = c.turn.as_ref().expect("turn configured");
        assert_eq!(turn.urls.len(), 2);
        assert_eq!(turn.ttl.as_secs(), 3600, "one hour unless asked");
        let shown = serde_json::to_string(&c).unwrap();
        assert!(
            shown.contains("turns:turn.example.com:5349")
                && !shown.contains("0123456789abcdef-turn"),
            "urls shown, secret never: {shown}"
        );
        assert!(load_args(ServeArgs::default()).unwrap().turn.is_none());

        let no_secret = load_args(ServeArgs {
            turn_url: Some(vec!["turn:10.0.0.1".parse().unwrap()]),
            ..Default::default()
        })
        .unwrap_err();
        assert!(no_secret.contains("--turn-secret"), "{no_secret}");
        let no_url = load_args(ServeArgs {
            turn_secret: Some("0123456789abcdef-turn".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(no_url.contains("no --turn-url"), "{no_url}");
        let short = load_args(ServeArgs {
            turn_secret: Some("short".into()),
            ..file()
        })
        .unwrap_err();
        assert!(short.contains("at least 16"), "{short}");
        let ttl = load_args(ServeArgs {
            turn_credential_ttl_secs: Some(5),
            ..file()
        })
        .unwrap_err();
        assert!(ttl.contains("turn_credential_ttl_secs 5"), "{ttl}");

        std::fs::write(&f, "turn_url = [\"stun:10.0.0.1:3478\"]\n").unwrap();
        let e = load_args(file()).unwrap_err();
        assert!(
            e.contains("stun:10.0.0.1:3478") && e.contains("turn:"),
            "{e}"
        );
    }

    #[test]
    fn every_key_is_a_flag_an_env_variable_and_a_file_key() {
        assert_eq!(
            KNOWN_ENV.len(),
            KEYS.len() + 1,
            "LODGE_CONFIG plus one per key"
        );
        for (k, env) in KEYS.iter().zip(&KNOWN_ENV[1..]) {
            assert_eq!(
                *env,
                format!("LODGE_{}", k.to_uppercase()),
                "the env name of {k}"
            );
        }
        let toml = KEYS
            .iter()
            .map(|k| format!("{k} = 0"))
            .collect::<Vec<_>>()
            .join("\n");
        // Every key is known to the file parser: a type error, never an unknown field.
        let e = toml::from_str::<FileConfig>(&toml).unwrap_err().to_string();
        assert!(!e.contains("unknown field"), "{e}");
    }
}
