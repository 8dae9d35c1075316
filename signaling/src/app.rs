//! Shared state and the HTTP router.

use std::ops::Deref;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;
use lodge_chat::Store;
use lodge_sfu::shell::SfuHandle;

use crate::config::Config;
use crate::extract::MAX_BODY_BYTES;
use crate::hub::Hub;
use crate::shared::Shared;
use crate::voice::VoiceConns;

pub struct Inner {
    pub cfg: Config,
    pub store: Store,
    pub sfu: SfuHandle,
    pub hub: Hub,
    /// The voice connections this node hosts.
    pub voice: Mutex<VoiceConns>,
    /// Everything shared with other nodes (in-process when the node is alone): the switch.
    pub shared: Shared,
    /// In a cluster: Redis's counters.
    pub redis: std::sync::OnceLock<RedisParts>,
    /// The other nodes of the cluster, as the registry last showed them.
    pub nodes: crate::nodes::ClusterView,
    pub sessions: crate::gateway::registry::Sessions,
    pub ready: AtomicBool,
    pub limits: crate::ratelimit::Limits,
    pub rate_limiter: crate::ratelimit::RateLimiter,
    /// Timeouts and connection caps of the HTTP server, and what they refused.
    pub http_limits: crate::http_server::HttpLimits,
    pub http_stats: std::sync::Arc<crate::http_server::HttpStats>,
    /// The HTTPS certificate, when the node serves TLS itself.
    pub tls: std::sync::OnceLock<Arc<crate::tls::Certs>>,
    /// Login back-off and registrations per address.
    pub account_limiter: crate::account_limits::AccountLimiter,
    pub shutdown: tokio::sync::watch::Sender<bool>,
    pub telemetry: Mutex<crate::quality::Telemetry>,
    /// Set when this node is an origin or an edge of a cluster.
    pub cluster: std::sync::OnceLock<crate::cluster::Cluster>,
    /// Shared inputs of the gateway's VIEW_CHANNEL checks (per guild visibility epoch).
    pub visibility: crate::gateway::visibility::VisibilityCache,
    /// Open gateway WebSocket connections (capped by `max_gateway_connections`).
    pub gateway_conns: std::sync::atomic::AtomicUsize,
    /// Identifies per user: `session_start_limit`.
    pub session_starts: crate::gateway::session_start::StartLimiter,
    /// Token revocations, for long-lived connections that authenticated with a token (the
    /// live-quality socket) to close themselves.
    pub revoked: tokio::sync::broadcast::Sender<Revoked>,
    /// The node report every reader shares (at most one built per second).
    pub reports: crate::node_report::NodeReports,
    /// Open `/quality/live` sockets, bounded per viewer and node-wide.
    pub live_sockets: crate::rest::quality::LiveSockets,
    /// Runtime control: the kill switch, the log filter, what the operator changed.
    pub admin: crate::admin::Admin,
    /// Draining before a stop (SIGTERM, the admin API): see [`crate::drain`].
    pub drain: crate::drain::Drain,
}

/// What a cluster member keeps of its Redis connection, for /metrics.
pub struct RedisParts {
    pub stats: Arc<crate::shared::redis::RedisStats>,
    pub publish: Arc<crate::shared::redis::dispatch_bus::PublishStats>,
}

/// A token (or, with `token_hash: None`, every token of the user) was revoked.
#[derive(Debug, Clone)]
pub struct Revoked {
    pub user: u64,
    pub token_hash: Option<String>,
}

impl Revoked {
    /// Whether a connection of `user` that authenticated with the token hashed `token_hash`
    /// must close.
    pub fn applies_to(&self, user: u64, token_hash: &str) -> bool {
        self.user == user && self.token_hash.as_deref().is_none_or(|h| h == token_hash)
    }
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(cfg: Config, store: Store, sfu: SfuHandle, hub: Hub, shared: Shared) -> Self {
        let secs = std::time::Duration::from_secs;
        let limits = crate::ratelimit::Limits::new(
            cfg.rate_limit_route,
            cfg.rate_limit_global,
            secs(1),
            cfg.trusted_proxy.clone(),
        );
        let account_limits = crate::account_limits::AccountLimits {
            login_free_failures: cfg.login_failures_before_backoff,
            login_backoff_base: secs(1),
            login_backoff_max: secs(cfg.login_backoff_max_secs),
            registrations_per_hour: cfg.registrations_per_ip_per_hour,
        };
        let http_limits = crate::http_server::HttpLimits {
            header_timeout: secs(cfg.http_header_timeout_secs),
            idle_timeout: secs(cfg.http_idle_timeout_secs),
            request_timeout: secs(cfg.http_request_timeout_secs),
            max_connections: cfg.max_http_connections,
            max_connections_per_addr: match cfg.max_http_connections_per_ip {
                0 => usize::MAX,
                n => n,
            },
            trusted_proxies: cfg.trusted_proxy.clone(),
        };
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let session_starts = crate::gateway::session_start::StartLimiter::new(
            crate::gateway::session_start::StartLimits {
                total: cfg.session_start_total,
                max_concurrency: cfg.session_start_max_concurrency,
            },
            shared.start_budgets.clone(),
        );
        AppState(Arc::new(Inner {
            voice: Mutex::new(VoiceConns::new()),
            shared,
            nodes: Default::default(),
            redis: std::sync::OnceLock::new(),
            cfg,
            store,
            sfu,
            hub,
            sessions: Default::default(),
            ready: AtomicBool::new(false),
            limits,
            rate_limiter: Default::default(),
            account_limiter: crate::account_limits::AccountLimiter::new(account_limits),
            http_limits,
            http_stats: Default::default(),
            tls: std::sync::OnceLock::new(),
            shutdown,
            telemetry: Default::default(),
            cluster: std::sync::OnceLock::new(),
            visibility: Default::default(),
            gateway_conns: Default::default(),
            session_starts,
            revoked: tokio::sync::broadcast::channel(64).0,
            reports: Default::default(),
            live_sockets: Default::default(),
            admin: Default::default(),
            drain: Default::default(),
        }))
    }

    /// This node is an edge: it serves callers the origin places on it.
    pub fn is_edge(&self) -> bool {
        self.cluster.get().map(|c| c.role) == Some(lodge_edge::cascade::Role::Edge)
    }

    /// The shared node report (see [`crate::node_report`]); `None` when the media node stopped.
    pub async fn node_report(&self) -> Option<Arc<lodge_sfu::shell::NodeReport>> {
        self.reports.get(&self.sfu).await
    }

    pub fn telemetry(&self) -> std::sync::MutexGuard<'_, crate::quality::Telemetry> {
        self.telemetry
            .lock()
            .expect("telemetry lock is never held across a panic")
    }

    pub fn voice(&self) -> std::sync::MutexGuard<'_, VoiceConns> {
        self.voice
            .lock()
            .expect("voice registry lock is never held across a panic")
    }
}

fn api_routes(state: &AppState) -> Router<AppState> {
    use crate::rest::*;
    Router::new()
        .route("/auth/register", post(auth::register))
        .route("/auth/login", post(auth::login))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/logout-all", post(auth::logout_all))
        .route("/gateway", get(ops::gateway))
        .route("/gateway/bot", get(ops::gateway_bot))
        .route("/users/@me", get(users::me))
        .route("/users/@me/guilds", get(users::my_guilds))
        .route("/users/{id}", get(users::user))
        .route("/oauth2/applications/@me", get(users::application))
        .route("/applications/@me", get(users::application))
        .route("/guilds", post(guilds::create))
        .route(
            "/guilds/{id}",
            get(guilds::get)
                .patch(guilds::update)
                .delete(guilds::remove),
        )
        .route(
            "/guilds/{id}/channels",
            get(guilds::channels).post(guilds::create_channel),
        )
        .route("/guilds/{id}/members", get(guilds::members))
        .route(
            "/guilds/{id}/members/{user}",
            get(guilds::member)
                .patch(roles::update_member)
                .delete(guilds::kick),
        )
        .route(
            "/guilds/{id}/members/{user}/roles/{role}",
            put(roles::add_member_role).delete(roles::remove_member_role),
        )
        .route("/guilds/{id}/roles", get(guilds::roles).post(roles::create))
        .route(
            "/guilds/{id}/roles/{role}",
            axum::routing::patch(roles::update).delete(roles::delete),
        )
        .route("/guilds/{id}/bans", get(bans::list))
        .route(
            "/guilds/{id}/bans/{user}",
            get(bans::get).put(bans::ban).delete(bans::unban),
        )
        .route("/guilds/{id}/voice-states", get(guilds::voice_states))
        .route("/guilds/{id}/messages/search", get(messages::search))
        .route(
            "/channels/{id}",
            get(channels::get)
                .patch(channels::update)
                .delete(channels::remove),
        )
        .route(
            "/channels/{id}/permissions/{target}",
            put(channels::put_overwrite).delete(channels::delete_overwrite),
        )
        .route("/channels/{id}/invites", post(channels::create_invite))
        .route(
            "/channels/{id}/messages",
            get(messages::list).post(messages::create),
        )
        .route(
            "/channels/{id}/messages/{msg}",
            get(messages::get)
                .patch(messages::edit)
                .delete(messages::delete),
        )
        .route(
            "/channels/{id}/messages/{msg}/reactions/{emoji}",
            get(messages::reactors),
        )
        .route(
            "/channels/{id}/messages/{msg}/reactions/{emoji}/@me",
            put(messages::react).delete(messages::unreact),
        )
        .route("/channels/{id}/typing", post(messages::typing))
        .route(
            "/invites/{code}",
            get(channels::get_invite).post(channels::accept_invite),
        )
        .route("/voice/stats", get(ops::voice_stats))
        .route("/quality/calls", get(quality::calls))
        .route("/quality/node", get(quality::node))
        .route("/quality/live", get(quality::live))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::ratelimit::middleware,
        ))
        // After the rate limiter's layer: the operator is not held to the limits it sets
        // (a wrong operator token is bounded per address by the `Operator` extractor).
        .route(
            "/admin/settings",
            get(admin::get_settings).patch(admin::patch_settings),
        )
        .route("/admin/drain", post(admin::drain))
        .route("/admin/guilds", get(admin::list_guilds))
        .route(
            "/admin/guilds/{id}",
            get(admin::get_guild).patch(admin::patch_guild),
        )
        .fallback(ops::api_not_found)
}

/// An edge (or a media-only cluster node) serves its callers' voice gateway, health and
/// metrics; the API, the chat gateway and the web client are the origin's (the API nodes').
pub fn edge_router(state: AppState) -> Router {
    Router::new()
        .route("/", get(crate::web::index_or_voice))
        .route("/healthz", get(crate::rest::ops::healthz))
        .route("/readyz", get(crate::rest::ops::readyz))
        .route("/metrics", get(crate::rest::ops::metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(crate::web::nosniff))
        .with_state(state)
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .nest("/api/v10", api_routes(&state))
        .nest("/api/v9", api_routes(&state))
        .route("/gateway", get(crate::gateway::ws_handler))
        .route("/", get(crate::web::index_or_voice))
        .route("/app.js", get(crate::web::app_js))
        .route("/style.css", get(crate::web::style_css))
        .route("/dashboard", get(crate::web::dashboard))
        .route("/dashboard.js", get(crate::web::dashboard_js))
        .route("/dashboard.css", get(crate::web::dashboard_css))
        .route(
            "/favicon.ico",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .route("/healthz", get(crate::rest::ops::healthz))
        .route("/readyz", get(crate::rest::ops::readyz))
        .route("/metrics", get(crate::rest::ops::metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(crate::web::nosniff))
        .with_state(state)
}
