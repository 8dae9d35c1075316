//! Gateway sessions that outlive their WebSocket: sequence numbers, the replay buffer and the
//! attached connection. A session stays resumable for [`RESUME_WINDOW`] after its connection
//! drops; [`REPLAY_CAP`] bounds what is kept (beyond it, Resume gets Invalid Session).
//!
//! Only hub dispatches are kept for replay. Session-specific payloads (READY, GUILD_CREATE at
//! identify, RESUMED, GUILD_MEMBERS_CHUNK) are sent once and never buffered: they are large
//! (a 100-channel guild's GUILD_CREATE is tens of kilobytes) and a client that missed READY or
//! its GUILD_CREATEs must identify again anyway, which the replay floor enforces. A user holds
//! at most `max_sessions_per_user` sessions ([`Sessions::insert_capped`]).

use lodge_ids::{ChannelId, GuildId, UserId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lodge_chat::User;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::hub::{frame, Body, Dispatch, DispatchKind};
use crate::shared::{Logged, ResumeStore};

/// How long a dropped session can be resumed.
pub const RESUME_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Dispatches kept per session for replay. Entries share the published dispatch, so this costs
/// a few words per entry, not a copy of the payload.
pub const REPLAY_CAP: usize = 4096;
/// Frames queued for a live connection before it counts as too slow and is dropped.
pub const LIVE_QUEUE: usize = 2048;

/// A buffered dispatch.
#[derive(Clone)]
pub enum Entry {
    /// A hub dispatch and which of its bodies this session gets.
    Shared(Arc<Dispatch>, Body),
    /// A session-specific payload (READY, GUILD_CREATE at identify, RESUMED, member chunks);
    /// sent, never kept for replay.
    Own(DispatchKind, Arc<str>),
}

impl Entry {
    pub fn render(&self, seq: u64) -> String {
        match self {
            Entry::Shared(d, body) => frame(d.t, seq, d.body(*body)),
            Entry::Own(t, json) => frame(*t, seq, json),
        }
    }
}

pub struct Session {
    pub id: String,
    pub user: User,
    /// Hash of the token the session identified with (`lodge_chat::token_hash`): revoking that
    /// token ends the session.
    pub token_hash: String,
    pub intents: u64,
    pub guilds: HashSet<GuildId>,
    pub seq: u64,
    buffer: VecDeque<(u64, Entry)>,
    /// Attached connection: (connection id, frames for it).
    live: Option<(u64, mpsc::Sender<String>)>,
    detached_at: Option<Instant>,
    /// Set when the buffer dropped entries the client has not acknowledged (cannot resume).
    pub gap_from: Option<u64>,
    pub ended: bool,
    /// Why the session was ended from outside (token revoked, evicted): the close its
    /// connection sends.
    pub end_close: Option<(u16, &'static str)>,
    /// A resume must have seen at least this sequence number (the last payload that was sent
    /// but not kept: READY and the identify GUILD_CREATEs).
    replay_floor: u64,
    /// Guild → (the guild's visibility epoch when cached, channel → the user's permissions).
    pub visible: HashMap<GuildId, (u64, HashMap<ChannelId, lodge_chat::Permissions>)>,
    /// In a cluster: where every sequence number after the floor is logged, so another node
    /// can take the session over (`None` alone, and once the session moved to another node).
    journal: Option<Arc<dyn ResumeStore>>,
    /// Taken over by another node: this copy ends without ending the session's voice or
    /// forgetting its resume state.
    pub moved: bool,
    /// Ended for a reason that must not end its voice (the bus lost dispatches).
    pub keep_voice: bool,
}

/// Why a resume is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ResumeError {
    Unknown,
    WrongUser,
    TooOld,
}

impl Session {
    pub fn new(
        id: String,
        user: User,
        token_hash: String,
        intents: u64,
        guilds: HashSet<GuildId>,
    ) -> Self {
        Session {
            id,
            user,
            token_hash,
            intents,
            guilds,
            seq: 0,
            buffer: VecDeque::new(),
            live: None,
            detached_at: None,
            gap_from: None,
            ended: false,
            end_close: None,
            replay_floor: 0,
            visible: HashMap::new(),
            journal: None,
            moved: false,
            keep_voice: false,
        }
    }

    /// A session taken over from another node: it continues after `seq`, the client has seen
    /// everything up to `acked`, and `replay` (sequence numbers after `acked`) is what it
    /// missed.
    pub fn taken_over(
        mut self,
        seq: u64,
        acked: u64,
        replay: impl IntoIterator<Item = (u64, Entry)>,
    ) -> Self {
        self.seq = seq;
        self.replay_floor = acked;
        self.buffer = replay.into_iter().collect();
        self
    }

    /// Log every sequence number from now on in `journal` (a cluster's resume store).
    pub fn keep_journal(&mut self, journal: Arc<dyn ResumeStore>) {
        self.journal = Some(journal);
    }

    /// The resume store this session logs to, if any (taken: nothing more is logged).
    pub fn take_journal(&mut self) -> Option<Arc<dyn ResumeStore>> {
        self.journal.take()
    }

    /// Log sequence number `seq`. A hub dispatch that did not come over the bus cannot be
    /// named in the log: its number is left out, so the log has a hole there and a resume on
    /// another node that would need it is refused rather than replayed without it.
    fn journal(&self, seq: u64, e: &Entry) {
        let Some(j) = &self.journal else { return };
        match e {
            Entry::Shared(d, body) => {
                if let Some((route, id)) = d.bus {
                    j.append(
                        &self.id,
                        seq,
                        Logged::Shared {
                            route,
                            id,
                            body: *body,
                        },
                    );
                }
            }
            Entry::Own(..) => j.append(&self.id, seq, Logged::Own),
        }
    }

    /// Assign the next sequence number, keep a hub dispatch for replay, and hand the entry to
    /// the attached connection. Returns false when the connection was too slow and got detached.
    pub fn push(&mut self, e: Entry) -> bool {
        self.seq += 1;
        let seq = self.seq;
        let mut ok = true;
        if let Some((_, tx)) = &self.live {
            if tx.try_send(e.render(seq)).is_err() {
                self.live = None;
                self.detached_at = Some(Instant::now());
                ok = false;
            }
        }
        self.journal(seq, &e);
        if matches!(e, Entry::Shared(..)) {
            self.buffer.push_back((seq, e));
            while self.buffer.len() > REPLAY_CAP {
                if let Some((s, _)) = self.buffer.pop_front() {
                    self.gap_from = Some(s);
                }
            }
        }
        ok
    }

    /// Number and render a session-specific payload to be written directly on the socket
    /// (identify/resume paths); it is not kept for replay.
    pub fn record(&mut self, t: DispatchKind, json: &str) -> String {
        self.seq += 1;
        if let Some(j) = &self.journal {
            j.append(&self.id, self.seq, Logged::Own);
        }
        frame(t, self.seq, json)
    }

    /// Everything recorded so far must have reached the client for a resume to be faithful
    /// (called after READY and the identify GUILD_CREATEs).
    pub fn set_replay_floor(&mut self) {
        self.replay_floor = self.seq;
    }

    /// The sequence number a resume must have seen at least.
    pub fn replay_floor(&self) -> u64 {
        self.replay_floor
    }

    /// Dispatches were lost for the session (its hub queue overflowed): it cannot be resumed,
    /// here or anywhere; its connection closes.
    pub fn lost_dispatches(&mut self) {
        if let (Some(j), false) = (&self.journal, self.ended) {
            j.end(&self.id);
        }
        self.ended = true;
        self.detach_all();
    }

    /// End the session from outside: its connection closes with `close`, and it cannot be
    /// resumed.
    pub fn end(&mut self, close: (u16, &'static str)) {
        if let Some(j) = &self.journal {
            if !self.ended {
                j.end(&self.id);
            }
        }
        self.ended = true;
        self.end_close = Some(close);
        self.detach_all();
    }

    /// The session may have missed dispatches: tell its connection (op 9, not resumable) and
    /// end it with `reason`.
    pub fn invalidate(&mut self, reason: &'static str) {
        if let Some((_, tx)) = &self.live {
            let _ = tx.try_send(
                crate::gateway::payload(
                    crate::gateway::Opcode::InvalidSession,
                    serde_json::json!(false),
                )
                .to_string(),
            );
        }
        self.end((4000, reason));
        // The call is not the session's fault: it goes on until its voice connection ends
        // (or the client, identified again, sends op 4 with its new session).
        self.keep_voice = true;
    }

    /// When the session's connection was detached (None while connected).
    pub fn detached_at(&self) -> Option<Instant> {
        self.detached_at
    }

    pub fn attach(&mut self, conn: u64, tx: mpsc::Sender<String>) {
        self.live = Some((conn, tx));
        self.detached_at = None;
    }

    pub fn detach(&mut self, conn: u64) {
        if self.live.as_ref().is_some_and(|(c, _)| *c == conn) {
            self.live = None;
            self.detached_at = Some(Instant::now());
        }
    }

    /// Drop whatever connection is attached (it closes and the client must resume or identify).
    pub fn detach_all(&mut self) {
        if self.live.take().is_some() {
            self.detached_at = Some(Instant::now());
        }
    }

    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.ended
            || self
                .detached_at
                .is_some_and(|t| now.duration_since(t) > RESUME_WINDOW)
    }

    /// Frames after `acked`, if all of them are still buffered.
    pub fn replay_after(&self, acked: u64) -> Result<Vec<String>, ResumeError> {
        if acked > self.seq || acked < self.replay_floor {
            return Err(ResumeError::TooOld);
        }
        if let Some(g) = self.gap_from {
            if acked < g {
                return Err(ResumeError::TooOld);
            }
        }
        Ok(self
            .buffer
            .iter()
            .filter(|(s, _)| *s > acked)
            .map(|(s, e)| e.render(*s))
            .collect())
    }
}

pub type SessionRef = Arc<Mutex<Session>>;

/// Why a user cannot have another session.
#[derive(Debug, PartialEq, Eq)]
pub struct SessionCapFull {
    pub cap: usize,
}

#[derive(Default)]
struct Maps {
    by_id: HashMap<String, SessionRef>,
    by_user: HashMap<UserId, Vec<SessionRef>>,
}

#[derive(Default)]
pub struct Sessions {
    maps: Mutex<Maps>,
}

fn lock_session(s: &SessionRef) -> std::sync::MutexGuard<'_, Session> {
    s.lock()
        .expect("a session lock is never held across a panic")
}

impl Sessions {
    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().expect("sessions lock")
    }

    /// Add a session if its user holds fewer than `cap` sessions that have not ended. At the
    /// cap, the user's session that has been disconnected longest is ended (closed with
    /// `evicted`) to make room; if all of them are connected, the new one is refused. Returns
    /// the session and the one it evicted, whose voice state the caller should clear.
    pub fn insert_capped(
        &self,
        s: Session,
        cap: usize,
        evicted: (u16, &'static str),
    ) -> Result<(SessionRef, Option<SessionRef>), SessionCapFull> {
        let mut m = self.maps();
        let user = s.user.id;
        let mut gone = None;
        let mine = m.by_user.entry(user).or_default();
        mine.retain(|r| !lock_session(r).ended);
        if mine.len() >= cap {
            let oldest = mine
                .iter()
                .enumerate()
                .filter_map(|(i, r)| lock_session(r).detached_at().map(|t| (t, i)))
                .min()
                .map(|(_, i)| i);
            let Some(i) = oldest else {
                return Err(SessionCapFull { cap });
            };
            let r = mine.swap_remove(i);
            lock_session(&r).end(evicted);
            gone = Some(r);
        }
        let id = s.id.clone();
        let r = Arc::new(Mutex::new(s));
        mine.push(r.clone());
        m.by_id.insert(id, r.clone());
        Ok((r, gone))
    }

    /// Whether `user` could add a session now (it holds fewer than `cap` connected ones).
    pub fn has_room(&self, user: UserId, cap: usize) -> bool {
        let m = self.maps();
        let live = m
            .by_user
            .get(&user)
            .map(|v| {
                v.iter()
                    .filter(|r| {
                        let g = lock_session(r);
                        !g.ended && g.detached_at().is_none()
                    })
                    .count()
            })
            .unwrap_or(0);
        live < cap
    }

    /// Every session (for cluster-wide notices).
    pub fn all(&self) -> Vec<SessionRef> {
        self.maps().by_id.values().cloned().collect()
    }

    pub fn get(&self, id: &str) -> Option<SessionRef> {
        self.maps().by_id.get(id).cloned()
    }

    /// The sessions of `user` (ended ones included until they are removed).
    pub fn of_user(&self, user: UserId) -> Vec<SessionRef> {
        self.maps().by_user.get(&user).cloned().unwrap_or_default()
    }

    /// Remove `r` if it is still the session registered under `id` (a session that moved to
    /// another node and came back is a new one under the same id).
    pub fn remove_if(&self, id: &str, r: &SessionRef) {
        let mut m = self.maps();
        if !m.by_id.get(id).is_some_and(|x| Arc::ptr_eq(x, r)) {
            return;
        }
        m.by_id.remove(id);
        let user = lock_session(r).user.id;
        if let Some(v) = m.by_user.get_mut(&user) {
            v.retain(|x| !Arc::ptr_eq(x, r));
            if v.is_empty() {
                m.by_user.remove(&user);
            }
        }
    }

    pub fn remove(&self, id: &str) {
        let mut m = self.maps();
        if let Some(r) = m.by_id.remove(id) {
            let user = lock_session(&r).user.id;
            if let Some(v) = m.by_user.get_mut(&user) {
                v.retain(|x| !Arc::ptr_eq(x, &r));
                if v.is_empty() {
                    m.by_user.remove(&user);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.maps().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (live, detached) counts.
    pub fn counts(&self) -> (usize, usize) {
        let m = self.maps();
        let live = m
            .by_id
            .values()
            .filter(|s| s.lock().map(|s| s.is_live()).unwrap_or(false))
            .count();
        (live, m.by_id.len() - live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Target;

    fn shared(n: u64) -> Entry {
        Entry::Shared(
            Arc::new(Dispatch {
                target: Target::Guild(GuildId(1)),
                channel_id: None,
                guild_id: Some(GuildId(1)),
                t: DispatchKind::MessageCreate,
                json: format!("{{\"n\":{n}}}").into(),
                redacted: None,
                full_for: Vec::new(),
                left: None,
                reference: None,
                about: None,
                bus: None,
            }),
            Body::Full,
        )
    }

    fn session(id: &str, user: UserId) -> Session {
        Session::new(
            id.into(),
            User {
                id: lodge_ids::UserId(user.get()),
                username: "u".into(),
                bot: false,
            },
            "hash".into(),
            0,
            HashSet::new(),
        )
    }

    #[test]
    fn replay_in_order_and_bounded() {
        let mut s = session("s", UserId(1));
        for i in 0..10 {
            s.push(shared(i));
        }
        let r = s.replay_after(7).unwrap();
        assert_eq!(r.len(), 3);
        assert!(r[0].contains("\"s\":8") && r[2].contains("\"s\":10"));
        assert_eq!(s.replay_after(10).unwrap().len(), 0);
        assert_eq!(s.replay_after(11).unwrap_err(), ResumeError::TooOld);
        for i in 0..REPLAY_CAP as u64 {
            s.push(shared(i));
        }
        assert_eq!(
            s.replay_after(5).unwrap_err(),
            ResumeError::TooOld,
            "entries were dropped"
        );
        assert!(s.replay_after(20).is_ok());
    }

    #[test]
    fn session_payloads_are_sent_but_not_kept() {
        let mut s = session("s", UserId(1));
        let ready = s.record(
            DispatchKind::Ready,
            &format!("{{\"pad\":\"{}\"}}", "x".repeat(10_000)),
        );
        assert!(ready.contains("\"s\":1"));
        s.record(DispatchKind::GuildCreate, "{}");
        s.set_replay_floor();
        s.push(shared(1));
        s.push(Entry::Own(DispatchKind::GuildMembersChunk, "{}".into()));
        s.push(shared(2));
        assert_eq!(s.buffer.len(), 2, "only hub dispatches are buffered");
        assert_eq!(
            s.replay_after(1).unwrap_err(),
            ResumeError::TooOld,
            "a client that missed its GUILD_CREATE must identify again"
        );
        let r = s.replay_after(2).unwrap();
        assert_eq!(r.len(), 2);
        assert!(r[0].contains("\"s\":3") && r[1].contains("\"s\":5"));
    }

    #[test]
    fn slow_connection_is_detached() {
        let mut s = session("s", UserId(1));
        let (tx, _rx) = mpsc::channel(2);
        s.attach(1, tx);
        assert!(s.push(shared(1)) && s.push(shared(2)));
        assert!(!s.push(shared(3)), "third frame overflows a queue of 2");
        assert!(!s.is_live());
        assert_eq!(
            s.replay_after(0).unwrap().len(),
            3,
            "nothing is lost for a resume"
        );
    }

    #[test]
    fn a_user_at_the_cap_loses_the_longest_disconnected_session_or_is_refused() {
        let reg = Sessions::default();
        const EVICTED: (u16, &str) = (4009, "evicted");
        let (a, _) = reg
            .insert_capped(session("a", UserId(1)), 2, EVICTED)
            .unwrap();
        let (b, _) = reg
            .insert_capped(session("b", UserId(1)), 2, EVICTED)
            .unwrap();
        let (tx, _rx) = mpsc::channel(1);
        lock_session(&a).attach(1, tx.clone());
        lock_session(&b).attach(2, tx.clone());
        assert!(!reg.has_room(UserId(1), 2));
        assert_eq!(
            reg.insert_capped(session("c", UserId(1)), 2, EVICTED).err(),
            Some(SessionCapFull { cap: 2 }),
            "both connected: refused"
        );
        assert!(
            reg.insert_capped(session("other", UserId(2)), 2, EVICTED)
                .is_ok(),
            "per user"
        );
        lock_session(&b).detach(2);
        std::thread::sleep(Duration::from_millis(2));
        lock_session(&a).detach(1);
        let (_, gone) = reg
            .insert_capped(session("c", UserId(1)), 2, EVICTED)
            .unwrap();
        let gone = gone.expect("one was evicted");
        assert!(Arc::ptr_eq(&gone, &b), "the one disconnected longest");
        let g = lock_session(&b);
        assert!(g.ended && g.end_close == Some(EVICTED));
        drop(g);
        assert!(
            reg.get("b").is_some(),
            "kept until its collector removes it"
        );
        reg.remove("b");
        assert!(reg.get("b").is_none());
        assert_eq!(reg.of_user(UserId(1)).len(), 2);
    }
}
