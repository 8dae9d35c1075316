//! The state several nodes share, behind one switch. Each kind of shared state is a trait with
//! two implementations: in-process ([`local`], one node: today's behaviour, no Redis) and Redis
//! (`redis/`, a cluster of equal nodes). [`Shared`] holds one of each kind, chosen once at
//! start from `--redis-url`; handlers only ever see the traits, never which one is behind them
//! (LiveKit's local/Redis router switch is the model).
//!
//! Keys in Redis carry hash tags so a Redis Cluster can shard them later: everything about a
//! guild is under `{g:<guild>}`, about a user under `{u:<user>}`, about a gateway session under
//! `{s:<session>}`. Node-wide keys (the registry) are few and small.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dispatch::Dispatch;

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
        guild: u64,
        channel: u64,
        candidate: &'a NodeId,
        alive: &'a [NodeId],
    ) -> Fut<'a, SharedResult<RoomHome>>;
    /// The room's current home, if any.
    fn current(&self, guild: u64, channel: u64) -> Fut<'_, SharedResult<Option<RoomHome>>>;
    /// The room emptied: forget its home, but only if it is still `home` (a newer placement
    /// is left alone).
    fn release<'a>(
        &'a self,
        guild: u64,
        channel: u64,
        home: &'a RoomHome,
    ) -> Fut<'a, SharedResult<()>>;
}

/// Voice states, one per (guild, user), stored as opaque serialized values. Writes are
/// compare-and-set against the value read, so two nodes changing one user's state at once
/// cannot both win (the loser reads again and re-applies).
pub trait VoiceStates: Send + Sync {
    fn get(&self, guild: u64, user: u64) -> Fut<'_, SharedResult<Option<String>>>;
    /// Every state of the guild: (user, value).
    fn guild(&self, guild: u64) -> Fut<'_, SharedResult<Vec<(u64, String)>>>;
    /// Replace `expected` (None: no state) with `new` (None: delete). False when the stored
    /// value was not `expected`.
    fn swap<'a>(
        &'a self,
        guild: u64,
        user: u64,
        expected: Option<&'a str>,
        new: Option<&'a str>,
    ) -> Fut<'a, SharedResult<bool>>;
    /// Guilds that have at least one voice state (for sweeps after a node is lost).
    fn guilds(&self) -> Fut<'_, SharedResult<Vec<u64>>>;
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
    fn watch_guild(&self, guild: u64, on: bool);
    fn watch_user(&self, user: u64, on: bool);
    /// Resolves once every watch asked for so far is in effect (a session subscribes, waits
    /// for this, then reads its snapshot: nothing published after the snapshot is missed).
    fn synced(&self) -> Fut<'_, ()>;
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
    /// Presence per user, with live connections counted per node.
    pub presences: Arc<dyn limits::Presences>,
    /// False for the in-process implementation: one node, nothing to coordinate.
    pub clustered: bool,
}
