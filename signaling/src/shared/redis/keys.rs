//! Every Redis key and channel name Lodge uses, in one table (the module docs of
//! [`super`] list the same layout for operators). Names are built here and nowhere else.
//!
//! A prefix (empty in production) goes in front of every name so that tests sharing one
//! redis-server cannot see each other's keys. It sits outside the `{…}` hash tag, so a key's
//! Redis Cluster slot is the same with or without it.

use super::super::limits::{AccountKey, AddrWindow, Caller};
use super::super::NodeId;
use lodge_ids::{ChannelId, GuildId, UserId};

/// What a bus message is addressed to: a guild's dispatches, or a user's dispatches that
/// have no guild (DMs, relationships, the user's own settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    Guild(GuildId),
    User(UserId),
}

impl std::fmt::Display for Route {
    /// `g:<guild>` or `u:<user>` (how a session's resume log names a route).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Guild(g) => write!(f, "g:{g}"),
            Route::User(u) => write!(f, "u:{u}"),
        }
    }
}

impl std::str::FromStr for Route {
    type Err = ();
    fn from_str(s: &str) -> Result<Route, ()> {
        match s.split_once(':') {
            Some(("g", g)) => g.parse().map(Route::Guild).map_err(|_| ()),
            Some(("u", u)) => u.parse().map(Route::User).map_err(|_| ()),
            _ => Err(()),
        }
    }
}

impl Route {
    /// The route's hash tag: `{g:<guild>}` or `{u:<user>}`.
    fn tag(self) -> String {
        match self {
            Route::Guild(g) => format!("{{g:{g}}}"),
            Route::User(u) => format!("{{u:{u}}}"),
        }
    }
}

/// Builds names under one prefix.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `lodge:node:<id>`: the node's [`NodeInfo`](super::super::NodeInfo) as JSON, with the
    /// registration's TTL.
    pub fn node(&self, id: &NodeId) -> String {
        format!("{}lodge:node:{id}", self.prefix)
    }

    /// `lodge:nodes`: the ids of nodes that announced themselves (some may have expired;
    /// readers drop those lazily).
    pub fn nodes(&self) -> String {
        format!("{}lodge:nodes", self.prefix)
    }

    /// `{g:<guild>}:room:<channel>`: the room's home, `"<node> <epoch>"`.
    pub fn room(&self, guild: GuildId, channel: ChannelId) -> String {
        format!("{}{{g:{guild}}}:room:{channel}", self.prefix)
    }

    /// `{g:<guild>}:room:<channel>:epoch`: the room's last placement epoch (a counter that is
    /// never deleted, so epochs only grow).
    pub fn room_epoch(&self, guild: GuildId, channel: ChannelId) -> String {
        format!("{}{{g:{guild}}}:room:{channel}:epoch", self.prefix)
    }

    /// `{g:<guild>}:voice`: hash user → voice state.
    pub fn voice(&self, guild: GuildId) -> String {
        format!("{}{{g:{guild}}}:voice", self.prefix)
    }

    /// `lodge:voice-guilds`: guilds whose voice hash is not empty.
    pub fn voice_guilds(&self) -> String {
        format!("{}lodge:voice-guilds", self.prefix)
    }

    /// `{g:<guild>}:switches`: hash of the operator's switches of the guild that are not at
    /// their default (`shared/guild_switches.rs`).
    pub fn guild_switches(&self, guild: GuildId) -> String {
        format!("{}{{g:{guild}}}:switches", self.prefix)
    }

    /// `lodge:switched-guilds`: guilds whose switches hash is not empty.
    pub fn switched_guilds(&self) -> String {
        format!("{}lodge:switched-guilds", self.prefix)
    }

    /// `{t:<token>}`: a voice token's value until it is redeemed or expires.
    pub fn token(&self, token: &str) -> String {
        format!("{}{{t:{token}}}", self.prefix)
    }

    /// `{g:<guild>}:bus` / `{u:<user>}:bus`: the route's stream of dispatches.
    pub fn stream(&self, route: Route) -> String {
        format!("{}{}:bus", self.prefix, route.tag())
    }

    /// `{g:<guild>}:ch` / `{u:<user>}:ch`: the route's pub/sub channel.
    pub fn channel(&self, route: Route) -> String {
        format!("{}{}:ch", self.prefix, route.tag())
    }

    /// `{s:<session>}:meta`: a gateway session's resume meta (hash), PX = the resume window.
    pub fn session_meta(&self, session: &str) -> String {
        format!("{}{{s:{session}}}:meta", self.prefix)
    }

    /// `{n:<node>}:dlog:<boot>`: what the node's sessions got since it started (`boot`),
    /// one entry per batch of resume writes (stream, trimmed by age), PX = the resume window.
    pub fn node_log(&self, node: &NodeId, boot: u64) -> String {
        format!("{}{{n:{node}}}:dlog:{boot}", self.prefix)
    }

    /// `lodge:node:<id>:inbox`: the pub/sub channel of messages to one node.
    pub fn inbox(&self, node: &NodeId) -> String {
        format!("{}lodge:node:{node}:inbox", self.prefix)
    }

    /// `{u:<user>}:starts:day`: the user's identifies in the current day window (a counter
    /// whose PX is what is left of the window).
    pub fn starts_day(&self, user: UserId) -> String {
        format!("{}{{u:{user}}}:starts:day", self.prefix)
    }

    /// `{u:<user>}:starts:burst`: the user's identifies of the last burst window (a sorted set
    /// scored by the server's time in ms).
    pub fn starts_burst(&self, user: UserId) -> String {
        format!("{}{{u:{user}}}:starts:burst", self.prefix)
    }

    /// `{u:<user>}:rl:<window>` or `{a:<address>}:rl:<window>`: a REST window's count, PX =
    /// what is left of the window; `window` is `global` or a route bucket in hex.
    pub fn rate(&self, caller: Caller, window: &str) -> String {
        match caller {
            Caller::User(u) => format!("{}{{u:{u}}}:rl:{window}", self.prefix),
            Caller::Addr(a) => format!("{}{{a:{a}}}:rl:{window}", self.prefix),
        }
    }

    /// `{a:<address>}:acct:fail`, `{n:<hash>}:acct:login`, `{n:<hash>}:acct:register`: an
    /// account limit's failure record (hash of `c` count, `u` blocked until, `l` last failure,
    /// Redis ms), PX = the time it is remembered.
    pub fn account(&self, key: AccountKey) -> String {
        match key {
            AccountKey::Addr(a) => format!("{}{{a:{a}}}:acct:fail", self.prefix),
            AccountKey::Username(h) => format!("{}{{n:{h:016x}}}:acct:login", self.prefix),
            AccountKey::Registering(h) => format!("{}{{n:{h:016x}}}:acct:register", self.prefix),
        }
    }

    /// `{a:<address>}:acct:<window>`: an address's registrations or invalid tokens in the
    /// current window (a counter, PX = what is left of the window).
    pub fn addr_window(&self, addr: std::net::IpAddr, w: AddrWindow) -> String {
        format!("{}{{a:{addr}}}:acct:{}", self.prefix, w.name())
    }

    /// `{u:<user>}:presence`: hash of the user's `status`, `activities` (JSON), `total`
    /// connections and `n:<node>` connections per node.
    pub fn presence(&self, user: UserId) -> String {
        format!("{}{{u:{user}}}:presence", self.prefix)
    }

    /// `lodge:node:<id>:presence`: users with gateway connections on the node.
    pub fn node_presence(&self, node: &NodeId) -> String {
        format!("{}lodge:node:{node}:presence", self.prefix)
    }

    /// The route a channel name from [`Keys::channel`] stands for.
    pub fn route_of_channel(&self, channel: &str) -> Option<Route> {
        let rest = channel.strip_prefix(&self.prefix)?.strip_suffix(":ch")?;
        let rest = rest.strip_prefix('{')?.strip_suffix('}')?;
        if let Some(g) = rest.strip_prefix("g:") {
            g.parse().ok().map(Route::Guild)
        } else if let Some(u) = rest.strip_prefix("u:") {
            u.parse().ok().map(Route::User)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_and_its_hash_tags() {
        let k = Keys::new("t1:");
        let n = NodeId("10.0.0.1:8080".into());
        let table = [
            (k.node(&n), "t1:lodge:node:10.0.0.1:8080"),
            (k.nodes(), "t1:lodge:nodes"),
            (k.room(GuildId(5), ChannelId(6)), "t1:{g:5}:room:6"),
            (
                k.room_epoch(GuildId(5), ChannelId(6)),
                "t1:{g:5}:room:6:epoch",
            ),
            (k.voice(GuildId(5)), "t1:{g:5}:voice"),
            (k.voice_guilds(), "t1:lodge:voice-guilds"),
            (k.token("abc"), "t1:{t:abc}"),
            (k.stream(Route::Guild(GuildId(5))), "t1:{g:5}:bus"),
            (k.stream(Route::User(UserId(9))), "t1:{u:9}:bus"),
            (k.channel(Route::Guild(GuildId(5))), "t1:{g:5}:ch"),
            (k.channel(Route::User(UserId(9))), "t1:{u:9}:ch"),
            (k.inbox(&n), "t1:lodge:node:10.0.0.1:8080:inbox"),
            (k.starts_day(UserId(9)), "t1:{u:9}:starts:day"),
            (k.starts_burst(UserId(9)), "t1:{u:9}:starts:burst"),
            (
                k.rate(Caller::User(UserId(9)), "global"),
                "t1:{u:9}:rl:global",
            ),
            (
                k.rate(Caller::Addr([10, 0, 0, 1].into()), "00ff"),
                "t1:{a:10.0.0.1}:rl:00ff",
            ),
            (k.presence(UserId(9)), "t1:{u:9}:presence"),
            (k.node_presence(&n), "t1:lodge:node:10.0.0.1:8080:presence"),
            (k.session_meta("abc"), "t1:{s:abc}:meta"),
            (k.node_log(&n, 42), "t1:{n:10.0.0.1:8080}:dlog:42"),
        ];
        for (got, want) in table {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn channel_names_map_back_to_routes() {
        let k = Keys::new("p:");
        for r in [Route::Guild(GuildId(7)), Route::User(UserId(u64::MAX))] {
            assert_eq!(k.route_of_channel(&k.channel(r)), Some(r));
            assert_eq!(r.to_string().parse(), Ok(r));
        }
        for bad in [
            "{g:7}:ch",
            "p:{g:x}:ch",
            "p:{s:1}:ch",
            "p:{g:7}:bus",
            "p:lodge:nodes",
        ] {
            assert_eq!(k.route_of_channel(bad), None, "{bad}");
        }
    }
}
