//! The in-process implementations: one node, nothing shared with anyone, no Redis. Exactly
//! the behaviour Lodge had before the cluster: the registry knows only this node, every room
//! is hosted here, voice states and tokens live in this process, the bus is the hub. The
//! in-process limits and presences are the per-process code where it always was
//! (`gateway/session_start.rs`, `ratelimit.rs`, `gateway/presence.rs`).

use lodge_ids::{ChannelId, GuildId, UserId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::*;
use crate::hub::Hub;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ready<'a, T: Send + 'a>(v: T) -> Fut<'a, T> {
    Box::pin(std::future::ready(v))
}

/// The registry of a node alone: itself, while announced.
#[derive(Default)]
pub struct LocalRegistry {
    me: Mutex<Option<NodeInfo>>,
}

impl Registry for LocalRegistry {
    fn announce<'a>(&'a self, me: &'a NodeInfo, _ttl: Duration) -> Fut<'a, SharedResult<bool>> {
        let was = lock(&self.me).replace(me.clone()).is_some();
        ready(Ok(was))
    }
    fn live_nodes(&self) -> Fut<'_, SharedResult<Vec<NodeInfo>>> {
        ready(Ok(lock(&self.me).iter().cloned().collect()))
    }
    fn lease_id<'a>(&'a self, _me: &'a NodeId, _ttl: Duration) -> Fut<'a, SharedResult<u16>> {
        ready(Ok(0))
    }
    fn withdraw<'a>(&'a self, id: &'a NodeId) -> Fut<'a, SharedResult<()>> {
        let mut me = lock(&self.me);
        if me.as_ref().is_some_and(|m| &m.id == id) {
            *me = None;
        }
        ready(Ok(()))
    }
}

/// Room homes in this process (with one node, always this node).
#[derive(Default)]
pub struct LocalPlacement {
    rooms: Mutex<HashMap<(GuildId, ChannelId), RoomHome>>,
    epoch: Mutex<u64>,
}

impl Placement for LocalPlacement {
    fn home<'a>(
        &'a self,
        guild: GuildId,
        channel: ChannelId,
        candidate: &'a NodeId,
        alive: &'a [NodeId],
    ) -> Fut<'a, SharedResult<RoomHome>> {
        let mut rooms = lock(&self.rooms);
        if let Some(h) = rooms
            .get(&(guild, channel))
            .filter(|h| alive.contains(&h.node))
        {
            return ready(Ok(h.clone()));
        }
        let mut e = lock(&self.epoch);
        *e += 1;
        let h = RoomHome {
            node: candidate.clone(),
            epoch: *e,
        };
        rooms.insert((guild, channel), h.clone());
        ready(Ok(h))
    }
    fn current(
        &self,
        guild: GuildId,
        channel: ChannelId,
    ) -> Fut<'_, SharedResult<Option<RoomHome>>> {
        ready(Ok(lock(&self.rooms).get(&(guild, channel)).cloned()))
    }
    fn release<'a>(
        &'a self,
        guild: GuildId,
        channel: ChannelId,
        home: &'a RoomHome,
    ) -> Fut<'a, SharedResult<()>> {
        let mut rooms = lock(&self.rooms);
        if rooms.get(&(guild, channel)) == Some(home) {
            rooms.remove(&(guild, channel));
        }
        ready(Ok(()))
    }
}

/// Voice states in this process.
#[derive(Default)]
pub struct LocalVoiceStates {
    by_guild: Mutex<HashMap<GuildId, HashMap<UserId, String>>>,
}

impl LocalVoiceStates {
    /// The one compare-and-set (capped or not), under one lock around the check, the count
    /// and the write, so no other join can slip in between.
    fn swap_now(
        &self,
        guild: GuildId,
        user: UserId,
        expected: Option<&str>,
        new: Option<&str>,
        cap: Option<ChannelCap>,
    ) -> Swapped {
        let mut m = lock(&self.by_guild);
        let g = m.entry(guild).or_default();
        let outcome = if g.get(&user).map(String::as_str) != expected {
            Swapped::Changed
        } else if cap.is_some_and(|cap| {
            let marker = cap.marker();
            let entering = new.is_some_and(|v| v.contains(&marker))
                && !expected.is_some_and(|v| v.contains(&marker));
            entering
                && g.iter()
                    .filter(|(u, v)| **u != user && v.contains(&marker))
                    .count()
                    >= cap.limit as usize
        }) {
            Swapped::Full
        } else {
            match new {
                Some(v) => g.insert(user, v.to_string()),
                None => g.remove(&user),
            };
            Swapped::Done
        };
        if g.is_empty() {
            m.remove(&guild);
        }
        outcome
    }
}

impl VoiceStates for LocalVoiceStates {
    fn get(&self, guild: GuildId, user: UserId) -> Fut<'_, SharedResult<Option<String>>> {
        let m = lock(&self.by_guild);
        ready(Ok(m.get(&guild).and_then(|g| g.get(&user)).cloned()))
    }
    fn guild(&self, guild: GuildId) -> Fut<'_, SharedResult<Vec<(UserId, String)>>> {
        let m = lock(&self.by_guild);
        let v = m
            .get(&guild)
            .map(|g| g.iter().map(|(u, s)| (*u, s.clone())).collect())
            .unwrap_or_default();
        ready(Ok(v))
    }
    fn swap<'a>(
        &'a self,
        guild: GuildId,
        user: UserId,
        expected: Option<&'a str>,
        new: Option<&'a str>,
    ) -> Fut<'a, SharedResult<bool>> {
        ready(Ok(
            self.swap_now(guild, user, expected, new, None) == Swapped::Done
        ))
    }
    fn swap_capped<'a>(
        &'a self,
        guild: GuildId,
        user: UserId,
        expected: Option<&'a str>,
        new: Option<&'a str>,
        cap: ChannelCap,
    ) -> Fut<'a, SharedResult<Swapped>> {
        ready(Ok(self.swap_now(guild, user, expected, new, Some(cap))))
    }
    fn guilds(&self) -> Fut<'_, SharedResult<Vec<GuildId>>> {
        ready(Ok(lock(&self.by_guild).keys().copied().collect()))
    }
}

/// Voice tokens in this process, each expiring after its TTL.
#[derive(Default)]
pub struct LocalVoiceTokens {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl VoiceTokens for LocalVoiceTokens {
    fn issue<'a>(
        &'a self,
        token: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> Fut<'a, SharedResult<()>> {
        let now = Instant::now();
        let mut t = lock(&self.tokens);
        t.retain(|_, (_, exp)| *exp > now);
        t.insert(token.to_string(), (value.to_string(), now + ttl));
        ready(Ok(()))
    }
    fn redeem<'a>(&'a self, token: &'a str) -> Fut<'a, SharedResult<Option<String>>> {
        let now = Instant::now();
        let v = lock(&self.tokens)
            .remove(token)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v);
        ready(Ok(v))
    }
    fn exists<'a>(&'a self, token: &'a str) -> Fut<'a, SharedResult<bool>> {
        let now = Instant::now();
        let t = lock(&self.tokens);
        ready(Ok(t.get(token).is_some_and(|(_, exp)| *exp > now)))
    }
}

/// The bus of a node alone: a dispatch goes straight to the hub; a message to this node goes
/// to its inbox (there are no other nodes).
pub struct LocalBus {
    hub: Hub,
    me: NodeId,
    inbox: mpsc::UnboundedSender<String>,
}

impl LocalBus {
    pub fn new(hub: Hub, me: NodeId, inbox: mpsc::UnboundedSender<String>) -> Self {
        LocalBus { hub, me, inbox }
    }
}

impl Bus for LocalBus {
    fn publish(&self, d: Arc<Dispatch>) {
        self.hub.deliver(d);
    }
    fn to_node<'a>(&'a self, node: &'a NodeId, msg: String) -> Fut<'a, SharedResult<()>> {
        if *node == self.me {
            let _ = self.inbox.send(msg);
            ready(Ok(()))
        } else {
            ready(Err(SharedError::Unavailable(format!(
                "node {node} is not this node and there is no cluster"
            ))))
        }
    }
    fn watch_guild(&self, _guild: GuildId, _on: bool) {}
    fn watch_user(&self, _user: UserId, _on: bool) {}
    fn synced(&self) -> Fut<'_, ()> {
        ready(())
    }
}

/// The resume store of a node alone: nothing leaves the process (a session resumes from its
/// node's memory, and there is no other node to resume on).
pub struct LocalResume;

impl ResumeStore for LocalResume {
    fn position(&self) -> Fut<'_, SharedResult<StreamId>> {
        ready(Ok(StreamId::ZERO))
    }
    fn open(&self, _meta: SessionMeta) {}
    fn append(&self, _session: &str, _seq: u64, _entry: Logged) {}
    fn adopt(
        &self,
        _session: &str,
        _routes: std::collections::BTreeMap<Route, StreamId>,
        _floor: u64,
        _log: Vec<(u64, Logged)>,
    ) {
    }
    fn follow(&self, _session: &str, _guilds: Vec<GuildId>, _joined: Option<(Route, StreamId)>) {}
    fn end(&self, _session: &str) {}
    fn close(&self, _session: &str) {}
    fn load<'a>(
        &'a self,
        _session: &'a str,
        _acked: u64,
    ) -> Fut<'a, SharedResult<Option<StoredSession>>> {
        ready(Ok(None))
    }
    fn payloads<'a>(
        &'a self,
        at: &'a [(Route, StreamId)],
    ) -> Fut<'a, SharedResult<Vec<Option<String>>>> {
        ready(Ok(vec![None; at.len()]))
    }
    fn route_intact(&self, _route: Route, _after: StreamId) -> Fut<'_, SharedResult<bool>> {
        ready(Ok(false))
    }
    fn route_after(
        &self,
        _route: Route,
        _after: StreamId,
        _count: usize,
    ) -> Fut<'_, SharedResult<Vec<(StreamId, String)>>> {
        ready(Ok(Vec::new()))
    }
}

impl Shared {
    /// One node, in-process state only.
    pub fn local(me: NodeId, hub: Hub, inbox: mpsc::UnboundedSender<String>) -> Shared {
        Shared {
            bus: Arc::new(LocalBus::new(hub, me.clone(), inbox)),
            me,
            registry: Arc::new(LocalRegistry::default()),
            placement: Arc::new(LocalPlacement::default()),
            voice_states: Arc::new(LocalVoiceStates::default()),
            voice_tokens: Arc::new(LocalVoiceTokens::default()),
            start_budgets: Arc::new(crate::gateway::session_start::SessionStarts::default()),
            rate_limits: Arc::new(crate::ratelimit::RateLimiter::default()),
            accounts: Arc::new(crate::account_limits::LocalAccounts::default()),
            presences: Arc::new(crate::gateway::presence::LocalPresences::default()),
            guild_switches: Arc::new(super::guild_switches::LocalGuildSwitches::default()),
            resume: Arc::new(LocalResume),
            clustered: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<T>(f: Fut<'_, T>) -> T {
        futures_util::FutureExt::now_or_never(f).expect("local state never waits")
    }

    #[test]
    fn voice_state_swaps_are_compare_and_set() {
        let s = LocalVoiceStates::default();
        assert!(block(s.swap(GuildId(1), UserId(2), None, Some("a"))).unwrap());
        assert!(
            !block(s.swap(GuildId(1), UserId(2), None, Some("b"))).unwrap(),
            "a second insert loses"
        );
        assert!(!block(s.swap(GuildId(1), UserId(2), Some("x"), Some("b"))).unwrap());
        assert!(block(s.swap(GuildId(1), UserId(2), Some("a"), Some("b"))).unwrap());
        assert_eq!(
            block(s.get(GuildId(1), UserId(2))).unwrap().as_deref(),
            Some("b")
        );
        assert!(block(s.swap(GuildId(1), UserId(2), Some("b"), None)).unwrap());
        assert!(block(s.guilds()).unwrap().is_empty());
    }

    #[test]
    fn tokens_are_single_use_and_expire() {
        let t = LocalVoiceTokens::default();
        block(t.issue("k", "v", Duration::from_secs(60))).unwrap();
        assert_eq!(block(t.redeem("k")).unwrap().as_deref(), Some("v"));
        assert_eq!(block(t.redeem("k")).unwrap(), None);
        block(t.issue("k", "v", Duration::ZERO)).unwrap();
        assert_eq!(block(t.redeem("k")).unwrap(), None, "expired");
    }

    #[test]
    fn a_room_keeps_its_live_home_and_moves_with_a_new_epoch_when_it_dies() {
        let p = LocalPlacement::default();
        let (a, b) = (NodeId("a".into()), NodeId("b".into()));
        let h1 = block(p.home(GuildId(1), ChannelId(2), &a, &[a.clone(), b.clone()])).unwrap();
        assert_eq!(h1.node, a);
        let h2 = block(p.home(GuildId(1), ChannelId(2), &b, &[a.clone(), b.clone()])).unwrap();
        assert_eq!(h2, h1, "the live home stays");
        let h3 = block(p.home(GuildId(1), ChannelId(2), &b, std::slice::from_ref(&b))).unwrap();
        assert_eq!(h3.node, b);
        assert!(h3.epoch > h1.epoch);
        block(p.release(GuildId(1), ChannelId(2), &h1)).unwrap();
        assert_eq!(
            block(p.current(GuildId(1), ChannelId(2))).unwrap(),
            Some(h3.clone()),
            "a stale release is ignored"
        );
        block(p.release(GuildId(1), ChannelId(2), &h3)).unwrap();
        assert_eq!(block(p.current(GuildId(1), ChannelId(2))).unwrap(), None);
    }
}
