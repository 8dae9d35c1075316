//! Gateway sessions that outlive their WebSocket: sequence numbers, the replay buffer and the
//! attached connection. A session stays resumable for [`RESUME_WINDOW`] after its connection
//! drops; [`REPLAY_CAP`] bounds what is kept (beyond it, Resume gets Invalid Session).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lodge_chat::User;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::hub::{frame, Dispatch};

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
    /// A hub dispatch, full or redacted (MESSAGE_CONTENT) for this session.
    Shared(Arc<Dispatch>, bool),
    /// A session-specific payload (READY, GUILD_CREATE at identify, RESUMED).
    Own(&'static str, Arc<str>),
}

impl Entry {
    pub fn render(&self, seq: u64) -> String {
        match self {
            Entry::Shared(d, redacted) => {
                let body = if *redacted {
                    d.redacted.as_ref().unwrap_or(&d.json)
                } else {
                    &d.json
                };
                frame(d.t, seq, body)
            }
            Entry::Own(t, json) => frame(t, seq, json),
        }
    }
}

pub struct Session {
    pub id: String,
    pub user: User,
    pub intents: u64,
    pub guilds: HashSet<u64>,
    pub seq: u64,
    buffer: VecDeque<(u64, Entry)>,
    /// Attached connection: (connection id, frames for it).
    live: Option<(u64, mpsc::Sender<String>)>,
    detached_at: Option<Instant>,
    /// Set when the buffer dropped entries the client has not acknowledged (cannot resume).
    pub gap_from: Option<u64>,
    pub ended: bool,
    /// Channel → may view, valid while the hub's epoch equals `visible_epoch`.
    pub visible: HashMap<u64, bool>,
    pub visible_epoch: u64,
}

/// Why a resume is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ResumeError {
    Unknown,
    WrongUser,
    TooOld,
}

impl Session {
    pub fn new(id: String, user: User, intents: u64, guilds: HashSet<u64>) -> Self {
        Session {
            id,
            user,
            intents,
            guilds,
            seq: 0,
            buffer: VecDeque::new(),
            live: None,
            detached_at: None,
            gap_from: None,
            ended: false,
            visible: HashMap::new(),
            visible_epoch: 0,
        }
    }

    /// Assign the next sequence number, keep the entry for replay, and hand it to the attached
    /// connection. Returns false when the connection was too slow and got detached.
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
        self.buffer.push_back((seq, e));
        while self.buffer.len() > REPLAY_CAP {
            if let Some((s, _)) = self.buffer.pop_front() {
                self.gap_from = Some(s);
            }
        }
        ok
    }

    /// Record an entry already sent directly on the socket (identify/resume paths).
    pub fn record(&mut self, e: Entry) -> (u64, String) {
        self.seq += 1;
        let f = e.render(self.seq);
        self.buffer.push_back((self.seq, e));
        (self.seq, f)
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
        if acked > self.seq {
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

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, SessionRef>>,
}

impl Sessions {
    pub fn insert(&self, s: Session) -> SessionRef {
        let id = s.id.clone();
        let r = Arc::new(Mutex::new(s));
        self.map
            .lock()
            .expect("sessions lock")
            .insert(id, r.clone());
        r
    }

    pub fn get(&self, id: &str) -> Option<SessionRef> {
        self.map.lock().expect("sessions lock").get(id).cloned()
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().expect("sessions lock").remove(id);
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("sessions lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (live, detached) counts.
    pub fn counts(&self) -> (usize, usize) {
        let m = self.map.lock().expect("sessions lock");
        let live = m
            .values()
            .filter(|s| s.lock().map(|s| s.is_live()).unwrap_or(false))
            .count();
        (live, m.len() - live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(n: u64) -> Entry {
        Entry::Own("X", format!("{{\"n\":{n}}}").into())
    }

    #[test]
    fn replay_in_order_and_bounded() {
        let mut s = Session::new(
            "s".into(),
            User {
                id: 1,
                username: "u".into(),
                bot: false,
            },
            0,
            HashSet::new(),
        );
        for i in 0..10 {
            s.push(own(i));
        }
        let r = s.replay_after(7).unwrap();
        assert_eq!(r.len(), 3);
        assert!(r[0].contains("\"s\":8") && r[2].contains("\"s\":10"));
        assert_eq!(s.replay_after(10).unwrap().len(), 0);
        assert_eq!(s.replay_after(11).unwrap_err(), ResumeError::TooOld);
        for i in 0..REPLAY_CAP as u64 {
            s.push(own(i));
        }
        assert_eq!(
            s.replay_after(5).unwrap_err(),
            ResumeError::TooOld,
            "entries were dropped"
        );
        assert!(s.replay_after(20).is_ok());
    }

    #[test]
    fn slow_connection_is_detached() {
        let mut s = Session::new(
            "s".into(),
            User {
                id: 1,
                username: "u".into(),
                bot: false,
            },
            0,
            HashSet::new(),
        );
        let (tx, _rx) = mpsc::channel(2);
        s.attach(1, tx);
        assert!(s.push(own(1)) && s.push(own(2)));
        assert!(!s.push(own(3)), "third frame overflows a queue of 2");
        assert!(!s.is_live());
        assert_eq!(
            s.replay_after(0).unwrap().len(),
            3,
            "nothing is lost for a resume"
        );
    }
}
