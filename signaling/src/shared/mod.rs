//! The state several nodes share, behind one switch. Each kind of shared state is a trait with
//! two implementations: in-process ([`local`], one node: today's behaviour, no Redis) and Redis
//! (`redis/`, a cluster of equal nodes). [`Shared`] holds one of each kind, chosen once at
//! start from `--redis-url`; handlers only ever see the traits, never which one is behind them
//! (LiveKit's local/Redis router switch is the model).
//!
//! Keys in Redis carry hash tags so a Redis Cluster can shard them later: everything about a
//! guild is under `{g:<guild>}`, about a user under `{u:<user>}`, about a gateway session under
//! `{s:<session>}`. Node-wide keys (the registry) are few and small.

use lodge_ids::{ChannelId, GuildId, UserId};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dispatch::{Body, Dispatch};
use redis::{Route, StreamId};

pub mod guild_switches;
pub mod limits;
pub mod local;
pub mod redis;

/// A boxed future, so the traits stay object-safe.
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why shared state could not be read or written. Handlers turn it into a 503.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("the shared state (Redis) is unreachable: {0}")]
    Unavailable(String),
    #[error("malformed shared state under {key}: {why}")]
    Malformed { key: String, why: String },
}

pub type SharedResult<T> = Result<T, SharedError>;

/// A node's name in the cluster (`--node-id`, default: the public host:port).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a node serves (`--roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    /// REST and the gateway.
    pub api: bool,
    /// The voice gateway and the UDP media port: the node can host rooms.
    pub media: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        api: true,
        media: true,
    };

    /// `api,media`, `api`, `media` (also `gateway`, the same as `api`).
    pub fn parse(s: &str) -> Result<Roles, String> {
        let mut r = Roles {
            api: false,
            media: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "api" | "gateway" => r.api = true,
                "media" => r.media = true,
                other => {
                    return Err(format!(
                        "unknown role {other:?} in --roles; use api, media or api,media"
                    ))
                }
            }
        }
        if !r.api && !r.media {
            return Err("--roles names no role; use api, media or api,media".into());
        }
        Ok(r)
    }
}

/// A node as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// `host:port` of its HTTP listener: the voice endpoint and `resume_gateway_url`.
    pub endpoint: String,
    pub region: String,
    pub roles: Roles,
    /// Media participants it hosts (placement weighs this).
    pub load: u32,
    /// Draining: it takes no new rooms.
    pub draining: bool,
    /// Where edges trunk to it (`--trunk-listen`), if it accepts trunks.
    #[serde(default)]
    pub trunk: Option<TrunkAdvert>,
    /// The edges trunked to it now (placement on any node reads them here).
    #[serde(default)]
    pub edges: Vec<EdgeInfo>,
}

/// A node's trunk listener as edges reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrunkAdvert {
    /// `host:port` (UDP).
    pub addr: String,
    /// The trunk certificate fingerprint (`sha256:…`).
    pub fingerprint: String,
}

/// An edge as the node it trunks to knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeInfo {
    /// The edge's name (its hello).
    pub node: String,
    pub region: String,
    /// `host:port` of the edge's voice gateway (VOICE_SERVER_UPDATE's endpoint).
    pub voice_endpoint: String,
    /// Participants the edge reported, and callers placed on it since.
    pub load: u32,
}

/// The node registry: each node announces itself with a time to live and renews it; a node
/// that stops renewing is gone for the others once the TTL runs out.
pub trait Registry: Send + Sync {
    /// Register or renew `me` for `ttl`. True when it was still registered (a renewal);
    /// false when its registration was gone (first start, a pause longer than the TTL, or the
    /// registry lost its data): the node then re-asserts what it hosts.
    fn announce<'a>(&'a self, me: &'a NodeInfo, ttl: Duration) -> Fut<'a, SharedResult<bool>>;
    /// Every node whose registration has not expired.
    fn live_nodes(&self) -> Fut<'_, SharedResult<Vec<NodeInfo>>>;
    /// Lease (or renew) this node's 10-bit id for snowflakes, unique among live nodes for
    /// `ttl` after each call. Returns the id held now (it changes only if the lease was lost).
    fn lease_id<'a>(&'a self, me: &'a NodeId, ttl: Duration) -> Fut<'a, SharedResult<u16>>;
    /// Leave the registry at once (clean shutdown).
    fn withdraw<'a>(&'a self, id: &'a NodeId) -> Fut<'a, SharedResult<()>>;
}

/// Where a room (a voice channel) is hosted, and the fencing epoch of that placement: it grows
/// every time the room gets a new home, so a node that still thinks it hosts the room can tell
/// it does not (its epoch is older).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomHome {
    pub node: NodeId,
    pub epoch: u64,
}

/// Room placement: a voice channel has at most one home node at a time.
pub trait Placement: Send + Sync {
    /// The room's home. If it has one whose node is still registered (`alive`), that one;
    /// otherwise `candidate` claims it atomically with a new epoch. Two nodes racing to claim
    /// get the same answer.
    fn home<'a>(
        &'a self,
        guild: GuildId,
        channel: ChannelId,
        candidate: &'a NodeId,
        alive: &'a [NodeId],
    ) -> Fut<'a, SharedResult<RoomHome>>;
    /// The room's current home, if any.
    fn current(
        &self,
        guild: GuildId,
        channel: ChannelId,
    ) -> Fut<'_, SharedResult<Option<RoomHome>>>;
    /// The room emptied: forget its home, but only if it is still `home` (a newer placement
    /// is left alone).
    fn release<'a>(
        &'a self,
        guild: GuildId,
        channel: ChannelId,
        home: &'a RoomHome,
    ) -> Fut<'a, SharedResult<()>>;
}

/// Voice states, one per (guild, user), stored as opaque serialized values. Writes are
/// compare-and-set against the value read, so two nodes changing one user's state at once
/// cannot both win (the loser reads again and re-applies).
pub trait VoiceStates: Send + Sync {
    fn get(&self, guild: GuildId, user: UserId) -> Fut<'_, SharedResult<Option<String>>>;
    /// Every state of the guild: (user, value).
    fn guild(&self, guild: GuildId) -> Fut<'_, SharedResult<Vec<(UserId, String)>>>;
    /// Replace `expected` (None: no state) with `new` (None: delete). False when the stored
    /// value was not `expected`.
    fn swap<'a>(
        &'a self,
        guild: GuildId,
        user: UserId,
        expected: Option<&'a str>,
        new: Option<&'a str>,
    ) -> Fut<'a, SharedResult<bool>>;
    /// [`VoiceStates::swap`] that also refuses ([`Swapped::Full`]) when it would put the
    /// user into `cap.channel_id` while `cap.limit` other users' states are already there.
    /// The check and the write are one atomic step, so concurrent joins on any nodes never
    /// overfill a channel.
    fn swap_capped<'a>(
        &'a self,
        guild: GuildId,
        user: UserId,
        expected: Option<&'a str>,
        new: Option<&'a str>,
        cap: ChannelCap,
    ) -> Fut<'a, SharedResult<Swapped>>;
    /// Guilds that have at least one voice state (for sweeps after a node is lost).
    fn guilds(&self) -> Fut<'_, SharedResult<Vec<GuildId>>>;
}

/// A voice channel's `user_limit` as a capped swap enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelCap {
    pub channel_id: ChannelId,
    pub limit: u32,
}

impl ChannelCap {
    /// The text every stored state in this channel contains, and no other state does (see
    /// [`crate::voice::state::channel_marker`]).
    pub fn marker(&self) -> String {
        crate::voice::state::channel_marker(self.channel_id)
    }
}

/// What a capped swap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swapped {
    Done,
    /// The stored value was not the one expected.
    Changed,
    /// The channel is at its limit.
    Full,
}

/// Single-use voice tokens: issued by whichever node handled op 4, redeemed by the node that
/// hosts the room. A token can be redeemed once, anywhere.
pub trait VoiceTokens: Send + Sync {
    fn issue<'a>(
        &'a self,
        token: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> Fut<'a, SharedResult<()>>;
    /// The token's value, removing it whatever happens next.
    fn redeem<'a>(&'a self, token: &'a str) -> Fut<'a, SharedResult<Option<String>>>;
    /// Whether the token is there to redeem (an edge waits for one still on its way).
    fn exists<'a>(&'a self, token: &'a str) -> Fut<'a, SharedResult<bool>>;
}

/// The bus: gateway dispatches to every node that has sessions for them, in publish order per
/// guild (per user for dispatches without a guild), and messages to one node.
pub trait Bus: Send + Sync {
    /// Publish a dispatch: queued at once, in call order (never waits). Every node watching
    /// its route — the guild for guild-wide dispatches, the user for those aimed at a user or
    /// a session — hands it to its hub, in the order the bus accepted the publishes.
    fn publish(&self, d: Arc<Dispatch>);
    /// Send a serialized message to one node's inbox.
    fn to_node<'a>(&'a self, node: &'a NodeId, msg: String) -> Fut<'a, SharedResult<()>>;
    /// This node wants a guild's (or a user's) dispatches while it has sessions for them;
    /// calls count (two sessions in a guild: watched until both unwatch).
    fn watch_guild(&self, guild: GuildId, on: bool);
    fn watch_user(&self, user: UserId, on: bool);
    /// Resolves once every watch asked for so far is in effect (a session subscribes, waits
    /// for this, then reads its snapshot: nothing published after the snapshot is missed).
    fn synced(&self) -> Fut<'_, ()>;
}

/// A gateway session as the resume store keeps it, so another node can take it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMeta {
    pub session: String,
    pub user: UserId,
    /// `lodge_chat::token_hash` of the token it identified with.
    pub token_hash: String,
    pub intents: u64,
    pub guilds: Vec<GuildId>,
    /// The sequence number of its last payload that is never logged (READY and the identify
    /// GUILD_CREATEs): a resume must have seen it.
    pub floor: u64,
    /// A position on every route's stream before each dispatch published after the session's
    /// bus watches took effect (from Redis's clock, taken right after they did): a route with
    /// nothing in the log is read from here when the session is taken over.
    pub created: StreamId,
    /// Per route, a position up to which the session's node had handled the route's
    /// dispatches when it last said so (on a guild join, on takeover, and with each new mark of
    /// the Redis store, so a read from any mark holds everything after it): where a route
    /// whose entries were all trimmed from the log, or that has none yet, is read from.
    pub routes: std::collections::BTreeMap<Route, StreamId>,
    /// The node holding the session.
    pub node: NodeId,
    /// Ended on its node (token revoked, evicted, invalidated): never resumable.
    pub ended: bool,
}

/// One entry of a session's resume log: what the session got under one sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// A bus dispatch: its route, its position in the route's stream (the payload stays
    /// there, once) and the body the session got.
    Shared {
        route: Route,
        id: StreamId,
        body: Body,
    },
    /// A session-specific payload (RESUMED, a member chunk): it took a sequence number but is
    /// not replayed (as a node's own replay buffer does not keep it).
    Own,
}

/// What the resume store holds of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub meta: SessionMeta,
    /// (sequence number, entry), oldest first: at most the last `REPLAY_CAP`, from a little
    /// before the acknowledged number `load` was given.
    pub log: Vec<(u64, Logged)>,
    /// False when entries the log should hold may be gone (the holder's delivery log was
    /// trimmed past where the session's entries start): nothing can be shown complete.
    pub intact: bool,
}

/// Gateway sessions' recent dispatches, kept where another node can read them, so a client
/// whose node died resumes elsewhere. The in-process implementation keeps nothing (a node
/// alone resumes from its own memory). Writes never wait: they are queued and written in
/// order, in batches, off the delivery path.
pub trait ResumeStore: Send + Sync {
    /// A position before every dispatch published from now on, on every route.
    fn position(&self) -> Fut<'_, SharedResult<StreamId>>;
    /// A session identified on this node.
    fn open(&self, meta: SessionMeta);
    /// The session got `entry` as sequence number `seq` (called in sequence order).
    fn append(&self, session: &str, seq: u64, entry: Logged);
    /// This node took the session over from the node in its meta; `routes` as in
    /// [`SessionMeta::routes`], up to where the log and the catch-up read reach; the client
    /// had acknowledged `floor`, and `log` is what the stored log holds after it (logged
    /// again by this node, which now keeps the session's log).
    fn adopt(
        &self,
        session: &str,
        routes: std::collections::BTreeMap<Route, StreamId>,
        floor: u64,
        log: Vec<(u64, Logged)>,
    );
    /// The session's guilds changed; `joined`: the route it now watches and the position it
    /// starts from.
    fn follow(&self, session: &str, guilds: Vec<GuildId>, joined: Option<(Route, StreamId)>);
    /// The session was ended on this node: it must not be resumed anywhere.
    fn end(&self, session: &str);
    /// The session expired on this node: forget it (unless another node has taken it over).
    fn close(&self, session: &str);
    /// The session's meta and log, if it is known; the log from at least a little before
    /// `acked + 1` (what a resume acknowledging `acked` needs) to its end.
    fn load<'a>(
        &'a self,
        session: &'a str,
        acked: u64,
    ) -> Fut<'a, SharedResult<Option<StoredSession>>>;
    /// The payloads of logged dispatches, by their route and position (`None`: gone).
    fn payloads<'a>(
        &'a self,
        at: &'a [(Route, StreamId)],
    ) -> Fut<'a, SharedResult<Vec<Option<String>>>>;
    /// Whether a route's stream still holds every dispatch after `after`.
    fn route_intact(&self, route: Route, after: StreamId) -> Fut<'_, SharedResult<bool>>;
    /// Up to `count` dispatches of a route's stream after `after`, oldest first.
    fn route_after(
        &self,
        route: Route,
        after: StreamId,
        count: usize,
    ) -> Fut<'_, SharedResult<Vec<(StreamId, String)>>>;
}

/// One node's view of everything shared: the switch.
#[derive(Clone)]
pub struct Shared {
    pub me: NodeId,
    pub registry: Arc<dyn Registry>,
    pub placement: Arc<dyn Placement>,
    pub voice_states: Arc<dyn VoiceStates>,
    pub voice_tokens: Arc<dyn VoiceTokens>,
    pub bus: Arc<dyn Bus>,
    /// `session_start_limit`: identifies per user.
    pub start_budgets: Arc<dyn limits::StartBudgets>,
    /// REST rate limits: the global and route windows per caller.
    pub rate_limits: Arc<dyn limits::RateLimits>,
    /// The account endpoints' limits: login back-off, registrations and invalid tokens.
    pub accounts: Arc<dyn limits::AccountCounters>,
    /// Presence per user, with live connections counted per node.
    pub presences: Arc<dyn limits::Presences>,
    /// The operator's per-guild switches (voice off, messages frozen, slot cap).
    pub guild_switches: Arc<dyn guild_switches::GuildSwitchStore>,
    pub resume: Arc<dyn ResumeStore>,
    /// False for the in-process implementation: one node, nothing to coordinate.
    pub clustered: bool,
}
