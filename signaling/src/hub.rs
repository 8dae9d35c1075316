//! In-process fan-out of gateway dispatches to the sessions that can want them.
//! (With several nodes this becomes Redis pub/sub behind the same interface; see ARCHITECTURE.)
//!
//! A dispatch's `d` is serialized once, when it is published, not once per receiver. Each
//! session subscribes with its intents, and once identified with its id and user; the hub then
//! skips a session that a dispatch's intent or its session/user target rules out, so a crowd
//! of sessions without GUILD_VOICE_STATES is not woken for every voice state change. What the
//! hub cannot rule out cheaply (guild membership, VIEW_CHANNEL) the session still filters, and
//! each session's queue keeps publish order. A voice move is one dispatch with two bodies (the
//! move, and a leave for sessions that may view only the channel left), so a session never
//! sees the two halves of a move out of order or one without the other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::dispatch::with_redacted;
pub use crate::dispatch::{frame, Body, Dispatch, DispatchKind, Left, Reference, Target};
use lodge_ids::{ChannelId, GuildId, UserId};

/// Dispatches queued for one session before it counts as fallen behind (its session is then
/// invalidated: it cannot be resumed faithfully).
pub const SESSION_QUEUE: usize = 8192;

#[derive(Clone)]
pub struct Hub {
    subs: Arc<Mutex<Subscribers>>,
    epochs: Arc<Epochs>,
    /// In a cluster, the bus every dispatch goes through (to this node's sessions too, so
    /// every node sees one order); unset, dispatches go straight to this node's sessions.
    bus: Arc<std::sync::OnceLock<Arc<dyn crate::shared::Bus>>>,
}

/// Visibility epochs per guild. A guild's epoch moves before any dispatch that may change who
/// can see what in it (roles, overwrites, membership, channels), so visibility caches of that
/// guild know when to recompute; other guilds' caches stay valid (a rename in one guild must
/// not make every session on the node re-read its permissions). Values come from one counter,
/// so a guild's epoch only ever grows and never repeats an earlier value.
#[derive(Default)]
struct Epochs {
    next: std::sync::atomic::AtomicU64,
    by_guild: Mutex<HashMap<GuildId, u64>>,
}

#[derive(Default)]
struct Subscribers {
    next_id: u64,
    by_id: HashMap<u64, Subscriber>,
}

struct Subscriber {
    intents: u64,
    /// (session id, user id) once identified; until then every target is delivered.
    addressee: Option<(String, UserId)>,
    tx: mpsc::Sender<Arc<Dispatch>>,
}

impl Subscriber {
    /// Could the session want this dispatch? Rules out only what the session's own filter
    /// (`gateway::session`) would drop without side effects, by the same rules: a session or
    /// user target that is someone else, or an intent the session lacks. GUILD_CREATE and
    /// GUILD_DELETE always pass: they keep the session's guild set current.
    fn may_want(&self, d: &Dispatch) -> bool {
        self.addressee
            .as_ref()
            .is_none_or(|(sid, uid)| d.targets(sid, *uid))
            && (d.t.keeps_guild_set() || d.wanted_with(self.intents))
    }
}

/// One session's queue of dispatches. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    subs: Arc<Mutex<Subscribers>>,
    rx: mpsc::Receiver<Arc<Dispatch>>,
}

/// Why a subscription ended: its queue filled up, so dispatches were lost for it. (The hub
/// drops a session's sender only then: the subscription itself keeps the registry alive.)
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Lagged,
}

impl Subscription {
    /// The next dispatch, in publish order.
    pub async fn recv(&mut self) -> Result<Arc<Dispatch>, Ended> {
        self.rx.recv().await.ok_or(Ended::Lagged)
    }

    /// The session identified: from now on dispatches for other sessions and users skip it.
    pub fn identified(&self, session_id: &str, user_id: UserId) {
        if let Some(s) = lock(&self.subs).by_id.get_mut(&self.id) {
            s.addressee = Some((session_id.to_string(), user_id));
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.subs).by_id.remove(&self.id);
    }
}

fn lock(m: &Mutex<Subscribers>) -> std::sync::MutexGuard<'_, Subscribers> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn new() -> Self {
        Hub {
            subs: Arc::default(),
            epochs: Arc::default(),
            bus: Arc::default(),
        }
    }

    /// The guild's current visibility epoch; read it before computing a permission to cache.
    pub fn epoch(&self, guild: GuildId) -> u64 {
        let m = self
            .epochs
            .by_guild
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.get(&guild).copied().unwrap_or(0)
    }

    /// Permissions in `guild` may change: its cached visibility is stale from now on.
    pub fn invalidate(&self, guild: GuildId) {
        let e = self
            .epochs
            .next
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        self.epochs
            .by_guild
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(guild, e);
    }

    /// A queue for a session that asked for `intents` (subscribe before reading any snapshot,
    /// so nothing falls between the two).
    pub fn subscribe(&self, intents: u64) -> Subscription {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let mut subs = lock(&self.subs);
        let id = subs.next_id;
        subs.next_id += 1;
        subs.by_id.insert(
            id,
            Subscriber {
                intents,
                addressee: None,
                tx,
            },
        );
        Subscription {
            id,
            subs: self.subs.clone(),
            rx,
        }
    }

    /// Publish through `bus` from now on (a cluster's bus; set once at start).
    pub fn route_through(&self, bus: Arc<dyn crate::shared::Bus>) {
        let _ = self.bus.set(bus);
    }

    /// A dispatch published on this node: through the cluster's bus, or to the sessions here.
    fn publish(&self, d: Dispatch) {
        let d = Arc::new(d);
        match self.bus.get() {
            Some(bus) => bus.publish(d),
            None => self.deliver(d),
        }
    }

    /// Hand a dispatch to every local session that may want it (the bus calls this for
    /// dispatches published anywhere in the cluster).
    pub fn deliver(&self, d: Arc<Dispatch>) {
        let mut subs = lock(&self.subs);
        let mut gone: Vec<u64> = Vec::new();
        for (id, s) in subs.by_id.iter() {
            if !s.may_want(&d) {
                continue;
            }
            if s.tx.try_send(d.clone()).is_err() {
                // Full: the session fell behind. (Closed cannot happen: the receiver's owner
                // removes its entry when it drops.)
                gone.push(*id);
            }
        }
        for id in gone {
            // Dropping the sender ends the session's queue after what it already holds.
            subs.by_id.remove(&id);
        }
    }

    pub fn send(
        &self,
        target: Target,
        guild_id: Option<GuildId>,
        channel_id: Option<ChannelId>,
        t: DispatchKind,
        d: Value,
    ) {
        if t.changes_visibility() {
            // A guild event without a guild (a user's GUILD_CREATE) moves nothing: the
            // membership change behind it invalidates its guild where it happens.
            if let Some(g) = guild_id {
                self.invalidate(g);
            }
        }
        let json: Arc<str> = d.to_string().into();
        self.publish(Dispatch {
            target,
            channel_id,
            guild_id,
            t,
            json,
            redacted: None,
            full_for: Vec::new(),
            left: None,
            reference: None,
            about: None,
            bus: None,
        });
    }

    /// A guild event about one member (a presence): dropped for every session once `member`
    /// has left the guild, even if it was published after (from a guild list read before).
    pub fn send_about(&self, guild_id: GuildId, member: UserId, t: DispatchKind, d: Value) {
        self.publish(Dispatch {
            target: Target::Guild(guild_id),
            channel_id: None,
            guild_id: Some(guild_id),
            t,
            json: d.to_string().into(),
            redacted: None,
            full_for: Vec::new(),
            left: None,
            reference: None,
            about: Some(member),
            bus: None,
        });
    }

    /// A move from channel `from` to channel `to` of a guild: `d` for sessions that may view
    /// `to`, `left` (the same event saying the subject left, `channel_id: null`) for those that
    /// may view only `from`, nothing for the others. Both bodies are serialized once, here.
    pub fn send_move(
        &self,
        guild_id: GuildId,
        from: ChannelId,
        to: ChannelId,
        t: DispatchKind,
        d: Value,
        left: Value,
    ) {
        if t.changes_visibility() {
            self.invalidate(guild_id);
        }
        self.publish(Dispatch {
            target: Target::Guild(guild_id),
            channel_id: Some(to),
            guild_id: Some(guild_id),
            t,
            json: d.to_string().into(),
            redacted: None,
            full_for: Vec::new(),
            left: (from != to).then(|| Left {
                channel_id: from,
                json: left.to_string().into(),
            }),
            reference: None,
            about: None,
            bus: None,
        });
    }

    /// A message event: also publish the redacted form for sessions without MESSAGE_CONTENT.
    pub fn send_message(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        t: DispatchKind,
        d: Value,
        full_for: Vec<UserId>,
    ) {
        self.send_reply(guild_id, channel_id, t, d, full_for, None);
    }

    /// A message event that may reply to a message in another channel: `unreferenced` is that
    /// channel and `d` without the referenced message, for sessions that may not read it.
    /// Every body (full and redacted, with and without the reference) is serialized here.
    pub fn send_reply(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        t: DispatchKind,
        d: Value,
        full_for: Vec<UserId>,
        unreferenced: Option<(ChannelId, Value)>,
    ) {
        let (json, redacted) = with_redacted(d);
        let reference = unreferenced.map(|(channel_id, d)| {
            let (json, redacted) = with_redacted(d);
            Reference {
                channel_id,
                json,
                redacted,
            }
        });
        self.publish(Dispatch {
            target: Target::Guild(guild_id),
            channel_id: Some(channel_id),
            guild_id: Some(guild_id),
            t,
            json,
            redacted: Some(redacted),
            full_for,
            left: None,
            reference,
            about: None,
            bus: None,
        });
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::intents;
    use lodge_ids::{ChannelId, GuildId, UserId};
    use serde_json::json;
    use DispatchKind as K;

    fn drain(sub: &mut Subscription) -> Vec<DispatchKind> {
        let mut out = Vec::new();
        while let Ok(d) = sub.rx.try_recv() {
            out.push(d.t);
        }
        out
    }

    #[test]
    fn sessions_are_skipped_for_intents_they_lack_and_targets_that_are_not_theirs() {
        let hub = Hub::new();
        let mut crowd = hub.subscribe(intents::GUILDS);
        let mut bot = hub.subscribe(intents::GUILDS | intents::GUILD_VOICE_STATES);
        let mut early = hub.subscribe(intents::GUILDS);
        crowd.identified("crowd-session", UserId(1));
        bot.identified("bot-session", UserId(2));
        // `early` has not identified yet: it gets every target, as the session filter decides.
        hub.send(
            Target::Guild(GuildId(9)),
            Some(GuildId(9)),
            None,
            K::VoiceStateUpdate,
            json!({}),
        );
        hub.send(
            Target::Session {
                user: UserId(2),
                session: "bot-session".into(),
            },
            Some(GuildId(9)),
            None,
            K::VoiceServerUpdate,
            json!({}),
        );
        hub.send(
            Target::User(UserId(1)),
            None,
            None,
            K::GuildCreate,
            json!({}),
        );
        hub.send(
            Target::Guild(GuildId(9)),
            Some(GuildId(9)),
            Some(ChannelId(5)),
            K::ChannelUpdate,
            json!({}),
        );
        assert_eq!(drain(&mut crowd), [K::GuildCreate, K::ChannelUpdate]);
        assert_eq!(
            drain(&mut bot),
            [K::VoiceStateUpdate, K::VoiceServerUpdate, K::ChannelUpdate]
        );
        assert_eq!(
            drain(&mut early),
            [K::VoiceServerUpdate, K::GuildCreate, K::ChannelUpdate]
        );
    }

    #[test]
    fn guild_create_and_delete_pass_without_the_guilds_intent() {
        let hub = Hub::new();
        let mut s = hub.subscribe(intents::GUILD_MESSAGES);
        s.identified("s", UserId(1));
        hub.send(
            Target::User(UserId(1)),
            None,
            None,
            K::GuildCreate,
            json!({}),
        );
        hub.send(
            Target::Guild(GuildId(3)),
            Some(GuildId(3)),
            None,
            K::GuildUpdate,
            json!({}),
        );
        hub.send(
            Target::Guild(GuildId(3)),
            Some(GuildId(3)),
            None,
            K::GuildDelete,
            json!({}),
        );
        assert_eq!(drain(&mut s), [K::GuildCreate, K::GuildDelete]);
    }

    #[test]
    fn visibility_epochs_move_per_guild() {
        let hub = Hub::new();
        let (a, b) = (hub.epoch(GuildId(1)), hub.epoch(GuildId(2)));
        hub.send(
            Target::Guild(GuildId(1)),
            Some(GuildId(1)),
            None,
            K::GuildRoleUpdate,
            json!({}),
        );
        assert_ne!(
            hub.epoch(GuildId(1)),
            a,
            "a role change in guild 1 moves guild 1"
        );
        assert_eq!(hub.epoch(GuildId(2)), b, "…and not guild 2");
        let a = hub.epoch(GuildId(1));
        hub.send(
            Target::Guild(GuildId(1)),
            Some(GuildId(1)),
            None,
            K::GuildUpdate,
            json!({}),
        );
        assert_eq!(hub.epoch(GuildId(1)), a, "a rename changes nobody's view");
        hub.send(
            Target::Guild(GuildId(2)),
            Some(GuildId(2)),
            Some(ChannelId(9)),
            K::ChannelUpdate,
            json!({}),
        );
        assert!(
            hub.epoch(GuildId(2)) > a,
            "epochs never repeat across guilds"
        );
    }

    #[test]
    fn a_move_is_one_dispatch_in_publish_order_with_both_bodies() {
        let hub = Hub::new();
        let mut s = hub.subscribe(intents::ALL);
        s.identified("s", UserId(1));
        hub.send(
            Target::Guild(GuildId(3)),
            Some(GuildId(3)),
            Some(ChannelId(10)),
            K::VoiceStateUpdate,
            json!({ "channel_id": "10" }),
        );
        hub.send_move(
            GuildId(3),
            ChannelId(10),
            ChannelId(20),
            K::VoiceStateUpdate,
            json!({ "channel_id": "20" }),
            json!({ "channel_id": null }),
        );
        hub.send(
            Target::Guild(GuildId(3)),
            Some(GuildId(3)),
            Some(ChannelId(20)),
            K::VoiceStateUpdate,
            json!({ "channel_id": "20", "self_mute": true }),
        );
        let got: Vec<Arc<Dispatch>> = std::iter::from_fn(|| s.rx.try_recv().ok()).collect();
        assert_eq!(got.len(), 3, "one dispatch per event, in publish order");
        let mv = &got[1];
        assert_eq!(
            (mv.channel_id, mv.left.as_ref().map(|l| l.channel_id)),
            (Some(ChannelId(20)), Some(ChannelId(10)))
        );
        assert_eq!(mv.body(Body::Full), r#"{"channel_id":"20"}"#);
        assert_eq!(mv.body(Body::Left), r#"{"channel_id":null}"#);
        assert!(got[0].left.is_none() && got[2].left.is_none());
        assert_eq!(
            got[2].body(Body::Left),
            got[2].body(Body::Full),
            "no leave body: the full one"
        );
        // Rejoining the same channel is no move.
        hub.send_move(
            GuildId(3),
            ChannelId(20),
            ChannelId(20),
            K::VoiceStateUpdate,
            json!({}),
            json!({}),
        );
        assert!(s.rx.try_recv().unwrap().left.is_none());
    }

    #[test]
    fn a_cross_channel_reply_carries_four_bodies_serialized_once() {
        let hub = Hub::new();
        let mut s = hub.subscribe(intents::ALL);
        s.identified("s", UserId(1));
        let d = json!({ "content": "see staff", "referenced_message": { "content": "secret" } });
        let without = json!({ "content": "see staff", "referenced_message": null });
        hub.send_reply(
            GuildId(3),
            ChannelId(10),
            K::MessageCreate,
            d,
            vec![UserId(1)],
            Some((ChannelId(20), without)),
        );
        let d = s.rx.try_recv().unwrap();
        assert_eq!(
            d.reference.as_ref().map(|r| r.channel_id),
            Some(ChannelId(20))
        );
        let body = |b| serde_json::from_str::<Value>(d.body(b)).unwrap();
        assert_eq!(body(Body::Full)["referenced_message"]["content"], "secret");
        assert_eq!(body(Body::Redacted)["content"], "");
        assert_eq!(
            body(Body::Redacted)["referenced_message"]["content"],
            "",
            "the quoted message is redacted too"
        );
        assert_eq!(
            body(Body::Unreferenced),
            json!({ "content": "see staff", "referenced_message": null })
        );
        let r = body(Body::Redacted.unreferenced());
        assert_eq!(
            (r["content"].clone(), r["referenced_message"].clone()),
            (json!(""), Value::Null)
        );
        // A message without a cross-channel reference has only the two bodies.
        hub.send_message(
            GuildId(3),
            ChannelId(10),
            K::MessageCreate,
            json!({ "content": "x" }),
            vec![],
        );
        let d = s.rx.try_recv().unwrap();
        assert!(d.reference.is_none());
        assert_eq!(d.body(Body::Unreferenced), d.body(Body::Full));
        assert_eq!(d.body(Body::UnreferencedRedacted), d.body(Body::Redacted));
    }

    #[test]
    fn a_presence_names_the_member_it_is_about() {
        let hub = Hub::new();
        let mut s = hub.subscribe(intents::GUILDS);
        s.identified("s", UserId(1));
        hub.send_about(GuildId(3), UserId(7), K::PresenceUpdate, json!({}));
        assert!(
            s.rx.try_recv().is_err(),
            "without GUILD_PRESENCES the session is not woken"
        );
        let mut p = hub.subscribe(intents::GUILD_PRESENCES);
        p.identified("p", UserId(2));
        hub.send_about(GuildId(3), UserId(7), K::PresenceUpdate, json!({}));
        let d = p.rx.try_recv().unwrap();
        assert_eq!(
            (d.target.clone(), d.about),
            (Target::Guild(GuildId(3)), Some(UserId(7)))
        );
    }

    #[tokio::test]
    async fn a_full_queue_ends_as_lagged_after_what_it_holds_and_others_go_on() {
        let hub = Hub::new();
        let mut slow = hub.subscribe(intents::ALL);
        let mut fast = hub.subscribe(intents::ALL);
        for i in 0..=SESSION_QUEUE {
            hub.send(
                Target::Guild(GuildId(1)),
                Some(GuildId(1)),
                None,
                K::TypingStart,
                json!({ "i": i }),
            );
            if i % 1000 == 0 {
                drain(&mut fast);
            }
        }
        drain(&mut fast);
        let mut got = 0;
        loop {
            match slow.recv().await {
                Ok(_) => got += 1,
                Err(e) => {
                    assert_eq!(e, Ended::Lagged);
                    break;
                }
            }
        }
        assert_eq!(
            got, SESSION_QUEUE,
            "what was queued before the overflow is kept"
        );
        hub.send(
            Target::Guild(GuildId(1)),
            Some(GuildId(1)),
            None,
            K::TypingStart,
            json!({}),
        );
        assert_eq!(drain(&mut fast), [K::TypingStart], "the others go on");
        // Dropping a subscription unsubscribes it.
        drop(fast);
        assert_eq!(lock(&hub.subs).by_id.len(), 0);
    }
}
