//! The Redis implementations of the shared state: a cluster of equal nodes, each connected
//! to one Redis, chosen at start by `--redis-url`. [`RedisShared::connect`] builds all of them
//! on one command connection ([`conn`]: an auto-reconnecting multiplexed connection) plus the
//! bus's own pub/sub connection ([`bus`]).
//!
//! # Key layout
//!
//! | key / channel                          | type    | holds                                        |
//! |----------------------------------------|---------|----------------------------------------------|
//! | `lodge:node:<id>`                      | string  | a node's `NodeInfo` JSON, PX = registry TTL  |
//! | `lodge:nodes`                          | set     | node ids that announced (expired ones are dropped by readers) |
//! | `{g:<guild>}:room:<channel>`           | string  | the room's home, `"<node> <epoch>"`          |
//! | `{g:<guild>}:room:<channel>:epoch`     | counter | the room's last placement epoch (never deleted) |
//! | `{g:<guild>}:voice`                    | hash    | user → voice state                           |
//! | `lodge:voice-guilds`                   | set     | guilds with at least one voice state         |
//! | `{t:<token>}`                          | string  | a voice token's value, PX = token TTL, GETDEL to redeem |
//! | `{g:<guild>}:bus`, `{u:<user>}:bus`    | stream  | the route's dispatches, field `d`, `MAXLEN ~ 10000` |
//! | `{g:<guild>}:ch`, `{u:<user>}:ch`      | channel | `"<stream id> <payload>"` for each dispatch  |
//! | `lodge:node:<id>:inbox`                | channel | messages to one node                         |
//! | `{u:<user>}:starts:day`                | counter | identifies in the user's day window, PX = what is left of it |
//! | `{u:<user>}:starts:burst`              | zset    | identifies of the last 5 s, scored by Redis time (ms) |
//! | `{u:<user>}:rl:<window>`, `{a:<addr>}:rl:<window>` | counter | a REST window (`global` or a route bucket), PX = what is left of it |
//! | `{a:<addr>}:acct:fail`, `{n:<hash>}:acct:login`, `{n:<hash>}:acct:register` | hash | an account limit's failure record (count, blocked until, last failure), PX = 15 min after the last failure |
//! | `{a:<addr>}:acct:registrations`, `{a:<addr>}:acct:invalid-tokens` | counter | an address's registrations (hour) or invalid tokens (second), PX = what is left of the window |
//! | `{u:<user>}:presence`                  | hash    | `status`, `activities`, `total` and `n:<node>` connections |
//! | `lodge:node:<id>:presence`             | set     | users with gateway connections on the node   |
//! | `{s:<session>}:meta`                   | hash    | a gateway session's resume meta, PX = resume window ([`resume`]) |
//! | `{g:<guild>}:switches`                 | hash    | the operator's switches of the guild not at their default ([`guild_switches`]) |
//! | `lodge:switched-guilds`                | set     | guilds with a switches hash                  |
//! | `{n:<node>}:dlog:<boot>`               | stream  | what the node's sessions got, one entry per batch of resume writes ([`delivery_log`]), trimmed to the resume window plus a minute, PX = resume window |
//!
//! Everything about a guild shares the hash tag `{g:<guild>}`, so each script touches one
//! Redis Cluster slot. The exceptions are node-wide and small: the registry (two keys, read
//! with plain commands; the pruning script would need a common tag such as `{lodge}` on a
//! cluster), and `lodge:voice-guilds` and `lodge:switched-guilds`, each updated by its script
//! together with a guild's hash — on a cluster each would be one set per shard (see [`voice`]). Bus channels
//! would move to sharded pub/sub (SPUBLISH) on a cluster. The per-node presence set
//! (`lodge:node:<id>:presence`) is the same kind of exception, kept by the presence script
//! together with the user's hash (see [`presence`]).
//!
//! Tests put a prefix in front of every name ([`RedisShared::connect_with_prefix`]), so many
//! can share one server.
//!
//! Every Redis failure reaches callers as [`SharedError::Unavailable`] naming Redis and its
//! URL without the password; [`RedisStats`] counts what each node asks of Redis.
//!
//! ```no_run
//! # async fn start(bus: std::sync::Arc<dyn lodge_signaling::shared::Bus>) -> anyhow::Result<()> {
//! use lodge_signaling::shared::redis::{BusIncoming, RedisShared, Route};
//! use lodge_signaling::shared::NodeId;
//! use lodge_ids::GuildId;
//!
//! let (redis, mut incoming) =
//!     RedisShared::connect("redis://127.0.0.1:6379", NodeId("node-a".into())).await?;
//! let shared = redis.shared(bus); // the switch: every handler sees only the traits
//! assert!(shared.clustered);
//! redis.bus.watch(Route::Guild(GuildId(7)), true);
//! let id = redis.bus.publish_raw(Route::Guild(GuildId(7)), "{\"t\":\"TYPING_START\"}".into()).await?;
//! while let Some(m) = incoming.recv().await {
//!     match m {
//!         BusIncoming::Dispatch { route, id, payload } => { /* to the hub, in order */ }
//!         BusIncoming::Node(msg) => { /* to the voice control plane */ }
//!         BusIncoming::Lost => { /* dispatches may be missed from here on */ }
//!         BusIncoming::Reconnected => { /* read_after(route, last id) for each route */ }
//!     }
//! }
//! # let mut metrics = String::new();
//! # redis.stats.write_metrics(&mut metrics);
//! # let _ = id;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use redis::Client;

use super::{Bus, NodeId, Shared, SharedError, SharedResult};

pub mod accounts;
pub mod bus;
pub mod conn;
pub mod delivery_log;
pub mod dispatch_bus;
pub mod guild_switches;
pub mod keys;
pub mod limits;
pub mod placement;
pub mod presence;
pub mod registry;
pub mod resume;
pub mod stats;
pub mod voice;

pub use accounts::RedisAccounts;
pub use bus::{BusIncoming, RedisBus, RedisBusRx, StreamId};
pub use guild_switches::RedisGuildSwitches;
pub use keys::{Keys, Route};
pub use limits::{RedisRateLimits, RedisStartBudgets};
pub use placement::RedisPlacement;
pub use presence::RedisPresences;
pub use registry::RedisRegistry;
pub use resume::RedisResumeStore;
pub use stats::{OpKind, RedisStats};
pub use voice::{RedisVoiceStates, RedisVoiceTokens};

/// One node's Redis implementations, all on one Redis.
pub struct RedisShared {
    pub me: NodeId,
    pub registry: Arc<RedisRegistry>,
    pub placement: Arc<RedisPlacement>,
    pub voice_states: Arc<RedisVoiceStates>,
    pub voice_tokens: Arc<RedisVoiceTokens>,
    pub start_budgets: Arc<RedisStartBudgets>,
    pub rate_limits: Arc<RedisRateLimits>,
    pub accounts: Arc<RedisAccounts>,
    pub presences: Arc<RedisPresences>,
    pub guild_switches: Arc<RedisGuildSwitches>,
    /// The bus's transport. It carries serialized payloads; the [`Bus`] over it (which
    /// serializes dispatches) is built where the dispatch format lives, and passed to
    /// [`RedisShared::shared`].
    pub bus: Arc<RedisBus>,
    /// Gateway sessions' resume state (over the bus's streams).
    pub resume: Arc<RedisResumeStore>,
    pub stats: Arc<RedisStats>,
    /// The URL without its password, for logs.
    pub url: Arc<str>,
}

impl RedisShared {
    /// Connect to Redis at `url` as node `me`: the command connection and the bus's pub/sub
    /// connection (subscribed to `me`'s inbox). Fails if Redis cannot be reached now; later
    /// losses are reconnected in the background.
    pub async fn connect(url: &str, me: NodeId) -> SharedResult<(RedisShared, RedisBusRx)> {
        Self::connect_with_prefix(url, me, "").await
    }

    /// [`RedisShared::connect`] with every key and channel name under `prefix`.
    pub async fn connect_with_prefix(
        url: &str,
        me: NodeId,
        prefix: &str,
    ) -> SharedResult<(RedisShared, RedisBusRx)> {
        // The parse error never repeats the URL (it may hold a password).
        let client = Client::open(url)
            .map_err(|e| SharedError::Unavailable(format!("the Redis URL is not valid: {e}")))?;
        let keys = Arc::new(Keys::new(prefix));
        let stats = Arc::new(RedisStats::default());
        let conn = conn::Conn::connect(&client, keys, stats.clone()).await?;
        let (bus, rx) = RedisBus::connect(client, conn.clone(), me.clone()).await?;
        tracing::info!(url = %conn.url, node = %me, "connected to Redis");
        let bus = Arc::new(bus);
        let shared = RedisShared {
            resume: Arc::new(RedisResumeStore::new(conn.clone(), bus.clone(), me.clone())),
            me: me.clone(),
            registry: Arc::new(RedisRegistry::new(conn.clone())),
            placement: Arc::new(RedisPlacement::new(conn.clone())),
            voice_states: Arc::new(RedisVoiceStates::new(conn.clone())),
            voice_tokens: Arc::new(RedisVoiceTokens::new(conn.clone())),
            start_budgets: Arc::new(RedisStartBudgets::new(conn.clone())),
            rate_limits: Arc::new(RedisRateLimits::new(conn.clone())),
            accounts: Arc::new(RedisAccounts::new(conn.clone())),
            presences: Arc::new(RedisPresences::new(conn.clone(), me.clone())),
            guild_switches: Arc::new(RedisGuildSwitches::new(conn.clone())),
            bus,
            stats,
            url: conn.url.clone(),
        };
        Ok((shared, rx))
    }

    /// The switch, with every kind of state on Redis and `bus` (a [`Bus`] over
    /// [`RedisShared::bus`]) as the bus.
    pub fn shared(&self, bus: Arc<dyn Bus>) -> Shared {
        Shared {
            me: self.me.clone(),
            registry: self.registry.clone(),
            placement: self.placement.clone(),
            voice_states: self.voice_states.clone(),
            voice_tokens: self.voice_tokens.clone(),
            start_budgets: self.start_budgets.clone(),
            rate_limits: self.rate_limits.clone(),
            accounts: self.accounts.clone(),
            presences: self.presences.clone(),
            guild_switches: self.guild_switches.clone(),
            bus,
            resume: self.resume.clone(),
            clustered: true,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Tests against a real redis-server at `TEST_REDIS_URL` (`TEST_REDIS_URL=$(scripts/redis.sh)`),
    //! each under its own key prefix so they run in parallel on one server; without the
    //! variable they print a notice and pass.

    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::conn::Conn;
    use super::*;

    pub struct TestRedis {
        client: Client,
        pub keys: Arc<Keys>,
        pub conn: Conn,
    }

    impl TestRedis {
        /// `n` more command connections under the same prefix, as `n` nodes would have.
        pub async fn conns(&self, n: usize) -> Vec<Conn> {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let c = Conn::connect(&self.client, self.keys.clone(), self.conn.stats.clone());
                v.push(c.await.expect("TEST_REDIS_URL answers"));
            }
            v
        }

        /// A raw command (test setup and checks); panics on failure.
        pub async fn cmd<T: redis::FromRedisValue>(&self, c: &redis::Cmd) -> T {
            self.conn
                .cmd(OpKind::Registry, c)
                .await
                .expect("redis command")
        }
    }

    pub fn test_url(what: &str) -> Option<String> {
        match std::env::var("TEST_REDIS_URL") {
            Ok(u) if !u.is_empty() => Some(u),
            _ => {
                println!(
                    "skipped ({what}): TEST_REDIS_URL is not set; run with \
                     TEST_REDIS_URL=$(./scripts/redis.sh)"
                );
                None
            }
        }
    }

    /// A prefix no other test (in this run or an earlier one on the same server) uses.
    pub fn unique_prefix(what: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let what: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!("test:{what}:{}:{nanos}:{n}:", std::process::id())
    }

    /// A command connection under a fresh prefix, or `None` (and a notice) without Redis.
    pub async fn redis_or_skip(what: &str) -> Option<TestRedis> {
        let url = test_url(what)?;
        let client = Client::open(url.as_str()).expect("TEST_REDIS_URL parses");
        let keys = Arc::new(Keys::new(unique_prefix(what)));
        let conn = Conn::connect(&client, keys.clone(), Arc::new(RedisStats::default()))
            .await
            .expect("TEST_REDIS_URL answers");
        Some(TestRedis { client, keys, conn })
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::shared::{NodeInfo, Roles};

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable_and_named_without_its_password() {
        // Port 1 on loopback: nothing listens there.
        let Err(e) =
            RedisShared::connect("redis://lodge:secret@127.0.0.1:1/0", NodeId("a".into())).await
        else {
            panic!("connected to nothing");
        };
        let msg = e.to_string();
        assert!(matches!(e, SharedError::Unavailable(_)), "{msg}");
        assert!(
            msg.contains("Redis at redis://lodge@127.0.0.1:1/0"),
            "{msg}"
        );
        assert!(!msg.contains("secret"), "{msg}");
    }

    #[tokio::test]
    async fn connect_builds_a_clustered_switch_on_redis() {
        let Some(url) = test_url("connect") else {
            return;
        };
        let prefix = unique_prefix("connect");
        let me = NodeId("n1".into());
        let (rs, _rx) = RedisShared::connect_with_prefix(&url, me.clone(), &prefix)
            .await
            .unwrap();
        let shared = rs.shared(dispatch_bus::RedisDispatchBus::new(rs.bus.clone()));
        assert!(shared.clustered);
        let info = NodeInfo {
            id: me.clone(),
            endpoint: "127.0.0.1:1".into(),
            region: "eu".into(),
            roles: Roles::ALL,
            load: 0,
            draining: false,
            trunk: None,
            edges: Vec::new(),
        };
        shared
            .registry
            .announce(&info, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(shared.registry.live_nodes().await.unwrap(), vec![info]);
        assert_eq!(
            rs.stats.ops(OpKind::Registry),
            4,
            "SET, SADD, SMEMBERS, MGET"
        );
        let mut m = String::new();
        rs.stats.write_metrics(&mut m);
        assert!(m.contains("lodge_redis_up 1"), "{m}");
    }
}
