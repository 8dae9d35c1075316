//! Gateway sessions' resume state on Redis, so a client whose node died resumes on another.
//!
//! Per session, under the hash tag `{s:<session>}`, the hash `{s:<session>}:meta`: `user`,
//! `token_hash`, `intents`, `guilds` (JSON array), `floor`, `created` (a stream position),
//! `routes` (JSON: route → the position up to which the holder handled it), `node` (who holds
//! it), `ended` (`0`/`1`), and where its log is: `boot` (which run of its node), `slot` (its
//! number in that run's delivery log) and `marks`.
//!
//! The log itself is the holder's delivery log (`{n:<node>}:dlog:<boot>`, see
//! [`super::delivery_log`]): one stream entry per batch of writes, naming for each dispatch
//! (route, position in the route's stream, body) the slots and sequence numbers it went to. A
//! dispatch delivered to a thousand sessions of a node costs that node one entry, not a
//! thousand. The payload itself is never copied: it stays once in the route's stream.
//!
//! `marks` (`<seq>:<entry id>`, space separated, oldest first) say where to start reading the
//! delivery log for a session: a mark is the entry holding sequence number `seq`, set on the
//! session's first logged number and then every [`MARK_EVERY`] numbers; marks older than the
//! last `REPLAY_CAP` numbers are dropped. With each new mark the holder writes `routes` too,
//! so a read from any mark to the end gives every route's last position. A resume
//! acknowledging `acked` reads from the last mark at or before `acked + 1`: at most
//! `MARK_EVERY` of the session's numbers before what it replays.
//!
//! The delivery log keeps the entries of the last [`KEEP`] (the resume window and a minute:
//! a session is never resumable longer after its last delivery), trimmed on each write, and
//! expires `RESUME_WINDOW` after its node's last renewal. A read that finds the log trimmed
//! past its mark says so (`StoredSession::intact`), and the resume is refused.
//!
//! Keys expire `RESUME_WINDOW` after their last refresh: on open and adoption, and every
//! [`REFRESH_EVERY`] while the session lives on a node.
//!
//! Writes never wait. They go on a queue in the order they happen (so in sequence order per
//! session) and one task per node writes whatever is queued as one pipeline: one delivery-log
//! entry, the metas of sessions opened, adopted or re-marked, whatever the batch holds.

use lodge_ids::{GuildId, UserId};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use super::bus::{RedisBus, StreamId};
use super::conn::Conn;
use super::delivery_log::{self, IdClock};
use super::keys::Route;
use super::stats::OpKind;
use crate::gateway::registry::{REPLAY_CAP, RESUME_WINDOW};
use crate::shared::{
    Fut, Logged, NodeId, ResumeStore, SessionMeta, SharedError, SharedResult, StoredSession,
};

/// How often a node renews the keys of the sessions it holds (well inside `RESUME_WINDOW`,
/// so a session's state outlives its node by at least the window minus this).
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// A session's logged sequence numbers between two marks (and two snapshots of its routes).
pub const MARK_EVERY: u64 = 128;
/// How long a node's delivery log keeps an entry.
pub const KEEP: Duration = Duration::from_secs(RESUME_WINDOW.as_secs() + 60);
/// Queued writes sent in one pipeline at most.
const BATCH: usize = 4096;
/// How long the writer lets writes gather after the first of a batch: a dispatch's
/// deliveries to all of the node's sessions land in one entry instead of a few dozen.
const LINGER: Duration = Duration::from_millis(2);
/// Sessions renewed per pipeline.
const REFRESH_CHUNK: usize = 1000;

/// KEYS[1] = meta; ARGV[1] = this node. Marks the session ended if this node holds it.
const END: &str = r"
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'ended', '1')
end
return 0
";

/// KEYS[1] = meta; ARGV[1] = this node. Forgets the session if this node holds it (one that
/// another node has taken over is left to that node). Its delivery-log entries age out.
const CLOSE: &str = r"
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
";

/// KEYS[1] = meta; ARGV = this node, routes, marks. Writes the session's routes and marks if
/// this node holds it (never recreating a meta that is gone).
const MARK: &str = r"
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'routes', ARGV[2], 'marks', ARGV[3])
end
return 0
";

enum Cmd {
    Open(SessionMeta),
    Append {
        session: Arc<str>,
        seq: u64,
        entry: Logged,
    },
    Adopt {
        session: Arc<str>,
        routes: BTreeMap<Route, StreamId>,
        floor: u64,
        log: Vec<(u64, Logged)>,
    },
    Follow(Arc<str>, Vec<GuildId>, Option<(Route, StreamId)>),
    End(Arc<str>),
    Close(Arc<str>),
}

/// A node's resume store on Redis.
pub struct RedisResumeStore {
    conn: Conn,
    bus: Arc<RedisBus>,
    queue: mpsc::UnboundedSender<Cmd>,
}

impl RedisResumeStore {
    /// The store, with its writing task.
    pub fn new(conn: Conn, bus: Arc<RedisBus>, me: NodeId) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        // This run's delivery log: a new key per start, so slots never repeat in one log.
        let boot = IdClock::default().tick().ms * 1000 + u64::from(rand::random::<u16>() % 1000);
        let writer = Writer {
            log_key: conn.keys.node_log(&me, boot),
            conn: conn.clone(),
            me,
            boot,
            clock: IdClock::default(),
            next_slot: 0,
            log_ttl: false,
            rx,
            held: HashMap::new(),
        };
        tokio::spawn(writer.run());
        RedisResumeStore {
            conn,
            bus,
            queue: tx,
        }
    }

    fn queue(&self, c: Cmd) {
        let _ = self.queue.send(c);
    }
}

fn ttl_ms() -> u64 {
    RESUME_WINDOW.as_millis() as u64
}

/// The writing task: the queue, in order, one pipeline per batch; and the renewal of the
/// sessions this node holds.
struct Writer {
    conn: Conn,
    me: NodeId,
    boot: u64,
    log_key: String,
    clock: IdClock,
    next_slot: u64,
    /// The delivery log has been given a TTL.
    log_ttl: bool,
    rx: mpsc::UnboundedReceiver<Cmd>,
    /// Sessions held here.
    held: HashMap<Arc<str>, Held>,
}

/// What the writer keeps of a session held here.
struct Held {
    slot: u64,
    /// Logged numbers since the last mark.
    since_mark: u64,
    /// (sequence number, delivery-log entry holding it), oldest first.
    marks: VecDeque<(u64, StreamId)>,
    /// Marks or routes to write to the meta at the end of the batch.
    dirty: bool,
    /// Route → the last position logged (or started from).
    routes: BTreeMap<Route, StreamId>,
}

impl Held {
    fn new(slot: u64, routes: BTreeMap<Route, StreamId>) -> Held {
        Held {
            slot,
            since_mark: 0,
            marks: VecDeque::new(),
            dirty: false,
            routes,
        }
    }

    /// Log `seq` in the batch's entry `at`; a new mark when one is due.
    fn record(&mut self, seq: u64, e: Logged, at: StreamId, entry: &mut delivery_log::Entry) {
        if let Logged::Shared { route, id, .. } = e {
            self.routes.insert(route, id);
        }
        entry.add(self.slot, seq, e);
        if self.marks.is_empty() || self.since_mark >= MARK_EVERY {
            self.put_mark(seq, at);
        }
        self.since_mark += 1;
        while self.marks.len() >= 2 && self.marks[1].0 + REPLAY_CAP as u64 <= seq + 1 {
            self.marks.pop_front();
        }
    }

    fn put_mark(&mut self, seq: u64, at: StreamId) {
        if self.marks.back().map(|m| m.1) != Some(at) {
            self.marks.push_back((seq, at));
        }
        self.since_mark = 0;
        self.dirty = true;
    }
}

fn routes_json(routes: &BTreeMap<Route, StreamId>) -> String {
    let m: BTreeMap<String, String> = routes
        .iter()
        .map(|(r, id)| (r.to_string(), id.to_string()))
        .collect();
    serde_json::to_string(&m).expect("strings serialize")
}

fn parse_routes(json: &str) -> Option<BTreeMap<Route, StreamId>> {
    let m: BTreeMap<String, String> = serde_json::from_str(json).ok()?;
    m.into_iter()
        .map(|(r, id)| Some((r.parse().ok()?, id.parse().ok()?)))
        .collect()
}

fn marks_text(marks: &VecDeque<(u64, StreamId)>) -> String {
    let v: Vec<String> = marks.iter().map(|(s, id)| format!("{s}:{id}")).collect();
    v.join(" ")
}

fn parse_marks(text: &str) -> Option<Vec<(u64, StreamId)>> {
    text.split_whitespace()
        .map(|m| {
            let (s, id) = m.split_once(':')?;
            Some((s.parse().ok()?, id.parse().ok()?))
        })
        .collect()
}

impl Writer {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                c = self.rx.recv() => {
                    let Some(c) = c else { return };
                    batch.push(c);
                    tokio::time::sleep(LINGER).await;
                    while batch.len() < BATCH {
                        match self.rx.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    self.write(&mut batch).await;
                }
                _ = tick.tick() => self.refresh().await,
            }
        }
    }

    fn new_slot(&mut self) -> u64 {
        self.next_slot += 1;
        self.next_slot
    }

    async fn write(&mut self, batch: &mut Vec<Cmd>) {
        let keys = self.conn.keys.clone();
        let ttl = ttl_ms();
        let at = self.clock.tick();
        let mut entry = delivery_log::Entry::default();
        let mut dirty: Vec<Arc<str>> = Vec::new();
        let mut pipe = redis::pipe();
        let mut n = 0u64;
        for c in batch.drain(..) {
            match c {
                Cmd::Open(m) => {
                    let meta = keys.session_meta(&m.session);
                    let slot = self.new_slot();
                    let guilds = serde_json::to_string(&m.guilds).expect("ids serialize");
                    pipe.cmd("HSET")
                        .arg(&meta)
                        .arg("user")
                        .arg(m.user)
                        .arg("token_hash")
                        .arg(&m.token_hash)
                        .arg("intents")
                        .arg(m.intents)
                        .arg("guilds")
                        .arg(guilds)
                        .arg("floor")
                        .arg(m.floor)
                        .arg("created")
                        .arg(m.created.to_string())
                        .arg("routes")
                        .arg(routes_json(&m.routes))
                        .arg("node")
                        .arg(&m.node.0)
                        .arg("ended")
                        .arg(if m.ended { "1" } else { "0" })
                        .arg("boot")
                        .arg(self.boot)
                        .arg("slot")
                        .arg(slot)
                        .arg("marks")
                        .arg("")
                        .ignore();
                    pipe.cmd("PEXPIRE").arg(&meta).arg(ttl).ignore();
                    n += 2;
                    self.held
                        .insert(m.session.into(), Held::new(slot, m.routes));
                }
                Cmd::Append {
                    session,
                    seq,
                    entry: e,
                } => {
                    // A session not held here (closed, or its keys gone) is not logged.
                    let Some(held) = self.held.get_mut(&session) else {
                        continue;
                    };
                    let was = held.dirty;
                    held.record(seq, e, at, &mut entry);
                    if held.dirty && !was {
                        dirty.push(session);
                    }
                }
                Cmd::Adopt {
                    session,
                    routes,
                    floor,
                    log,
                } => {
                    let slot = self.new_slot();
                    let mut held = Held::new(slot, routes);
                    for (seq, e) in log {
                        held.record(seq, e, at, &mut entry);
                    }
                    if held.marks.is_empty() {
                        // Nothing after the acknowledged number yet: the next one is here.
                        held.put_mark(floor + 1, at);
                        entry.mark(slot);
                    }
                    held.dirty = false;
                    let meta = keys.session_meta(&session);
                    pipe.cmd("HSET")
                        .arg(&meta)
                        .arg("node")
                        .arg(&self.me.0)
                        .arg("floor")
                        .arg(floor)
                        .arg("routes")
                        .arg(routes_json(&held.routes))
                        .arg("boot")
                        .arg(self.boot)
                        .arg("slot")
                        .arg(slot)
                        .arg("marks")
                        .arg(marks_text(&held.marks))
                        .ignore();
                    pipe.cmd("PEXPIRE").arg(&meta).arg(ttl).ignore();
                    n += 2;
                    self.held.insert(session, held);
                }
                Cmd::Follow(session, guilds, joined) => {
                    let meta = keys.session_meta(&session);
                    let guilds = serde_json::to_string(&guilds).expect("ids serialize");
                    let cmd = pipe.cmd("HSET").arg(meta).arg("guilds").arg(guilds);
                    if let Some(held) = self.held.get_mut(&session) {
                        if let Some((r, from)) = joined {
                            let p = held.routes.entry(r).or_insert(from);
                            *p = (*p).max(from);
                        }
                        cmd.arg("routes").arg(routes_json(&held.routes));
                    }
                    cmd.ignore();
                    n += 1;
                }
                Cmd::End(session) => {
                    pipe.cmd("EVAL")
                        .arg(END)
                        .arg(1)
                        .arg(keys.session_meta(&session))
                        .arg(&self.me.0)
                        .ignore();
                    n += 1;
                }
                Cmd::Close(session) => {
                    pipe.cmd("EVAL")
                        .arg(CLOSE)
                        .arg(1)
                        .arg(keys.session_meta(&session))
                        .arg(&self.me.0)
                        .ignore();
                    n += 1;
                    self.held.remove(&session);
                }
            }
        }
        if !entry.is_empty() {
            let cut = StreamId {
                ms: at.ms.saturating_sub(KEEP.as_millis() as u64),
                seq: 0,
            };
            let cmd = pipe
                .cmd("XADD")
                .arg(&self.log_key)
                .arg("MINID")
                .arg("~")
                .arg(cut.to_string())
                .arg(at.to_string());
            for (f, v) in entry.take_fields() {
                cmd.arg(f).arg(v);
            }
            cmd.ignore();
            n += 1;
            if !self.log_ttl {
                // XADD made the key without a TTL: give it one at once.
                pipe.cmd("PEXPIRE").arg(&self.log_key).arg(ttl).ignore();
                n += 1;
                self.log_ttl = true;
            }
        }
        for session in dirty {
            let Some(held) = self.held.get_mut(&session) else {
                continue;
            };
            if !held.dirty {
                continue;
            }
            held.dirty = false;
            pipe.cmd("EVAL")
                .arg(MARK)
                .arg(1)
                .arg(keys.session_meta(&session))
                .arg(&self.me.0)
                .arg(routes_json(&held.routes))
                .arg(marks_text(&held.marks))
                .ignore();
            n += 1;
        }
        if n == 0 {
            return;
        }
        if let Err(e) = self.conn.pipe::<()>(OpKind::Resume, n, &pipe).await {
            // The sessions concerned now have a hole in their log (or a stale end): a resume
            // elsewhere sees it and is refused (op 9); nothing is replayed wrongly.
            warn!(error = %e, writes = n, "resume store: a batch of session log writes failed");
        }
    }

    /// Renew the delivery log and the metas of every session held here; forget those whose
    /// meta is gone (ended, or taken over and then closed by another node).
    async fn refresh(&mut self) {
        let keys = self.conn.keys.clone();
        let ttl = ttl_ms();
        if self.log_ttl {
            let cmd = redis::cmd("PEXPIRE").arg(&self.log_key).arg(ttl).clone();
            if let Err(e) = self.conn.cmd::<i64>(OpKind::Resume, &cmd).await {
                warn!(error = %e, "resume store: renewing the delivery log failed");
            }
        }
        let sessions: Vec<Arc<str>> = self.held.keys().cloned().collect();
        for chunk in sessions.chunks(REFRESH_CHUNK) {
            let mut pipe = redis::pipe();
            for s in chunk {
                pipe.cmd("PEXPIRE").arg(keys.session_meta(s)).arg(ttl);
            }
            let n = chunk.len() as u64;
            match self.conn.pipe::<Vec<i64>>(OpKind::Resume, n, &pipe).await {
                Ok(alive) => {
                    for (s, a) in chunk.iter().zip(alive) {
                        if a == 0 {
                            self.held.remove(s);
                        }
                    }
                }
                Err(e) => warn!(error = %e, "resume store: renewing session keys failed"),
            }
        }
    }
}

fn parse_meta(key: &str, session: &str, h: &HashMap<String, String>) -> SharedResult<SessionMeta> {
    let malformed = |why: &str| SharedError::Malformed {
        key: key.to_string(),
        why: why.to_string(),
    };
    let field = |f: &str| h.get(f).ok_or_else(|| malformed(&format!("no field {f}")));
    let num = |f: &str| -> SharedResult<u64> {
        field(f)?
            .parse()
            .map_err(|_| malformed(&format!("field {f} is not a number")))
    };
    Ok(SessionMeta {
        session: session.to_string(),
        user: UserId(num("user")?),
        token_hash: field("token_hash")?.clone(),
        intents: num("intents")?,
        guilds: serde_json::from_str(field("guilds")?)
            .map_err(|_| malformed("field guilds is not a list of ids"))?,
        floor: num("floor")?,
        created: field("created")?
            .parse()
            .map_err(|()| malformed("field created is not a stream id"))?,
        routes: parse_routes(field("routes")?)
            .ok_or_else(|| malformed("field routes is not a map of routes to positions"))?,
        node: NodeId(field("node")?.clone()),
        ended: h.get("ended").is_some_and(|e| e == "1"),
    })
}

/// Where a session's log is: its holder's run, its slot there and its marks.
struct Place {
    boot: u64,
    slot: u64,
    marks: Vec<(u64, StreamId)>,
}

fn parse_place(key: &str, h: &HashMap<String, String>) -> SharedResult<Place> {
    let malformed = |why: &str| SharedError::Malformed {
        key: key.to_string(),
        why: why.to_string(),
    };
    let num = |f: &str| -> SharedResult<u64> {
        h.get(f)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| malformed(&format!("field {f} is not a number")))
    };
    Ok(Place {
        boot: num("boot")?,
        slot: num("slot")?,
        marks: h
            .get("marks")
            .and_then(|m| parse_marks(m))
            .ok_or_else(|| malformed("field marks is not a list of marks"))?,
    })
}

impl ResumeStore for RedisResumeStore {
    fn position(&self) -> Fut<'_, SharedResult<StreamId>> {
        Box::pin(async move {
            let (secs, micros): (u64, u64) =
                self.conn.cmd(OpKind::Resume, &redis::cmd("TIME")).await?;
            let ms = secs * 1000 + micros / 1000;
            // Every entry added from now on has an id of at least `<ms>-0`: the position just
            // before it.
            Ok(match ms.checked_sub(1) {
                Some(before) => StreamId {
                    ms: before,
                    seq: u64::MAX,
                },
                None => StreamId::ZERO,
            })
        })
    }

    fn open(&self, meta: SessionMeta) {
        self.queue(Cmd::Open(meta));
    }

    fn append(&self, session: &str, seq: u64, entry: Logged) {
        self.queue(Cmd::Append {
            session: session.into(),
            seq,
            entry,
        });
    }

    fn adopt(
        &self,
        session: &str,
        routes: BTreeMap<Route, StreamId>,
        floor: u64,
        log: Vec<(u64, Logged)>,
    ) {
        self.queue(Cmd::Adopt {
            session: session.into(),
            routes,
            floor,
            log,
        });
    }

    fn follow(&self, session: &str, guilds: Vec<GuildId>, joined: Option<(Route, StreamId)>) {
        self.queue(Cmd::Follow(session.into(), guilds, joined));
    }

    fn end(&self, session: &str) {
        self.queue(Cmd::End(session.into()));
    }

    fn close(&self, session: &str) {
        self.queue(Cmd::Close(session.into()));
    }

    fn load<'a>(
        &'a self,
        session: &'a str,
        acked: u64,
    ) -> Fut<'a, SharedResult<Option<StoredSession>>> {
        Box::pin(async move {
            let keys = &self.conn.keys;
            let meta_key = keys.session_meta(session);
            let h: HashMap<String, String> = self
                .conn
                .cmd(OpKind::Resume, redis::cmd("HGETALL").arg(&meta_key))
                .await?;
            if h.is_empty() {
                return Ok(None);
            }
            let meta = parse_meta(&meta_key, session, &h)?;
            let place = parse_place(&meta_key, &h)?;
            // The last mark at or before the first number to replay (or the oldest).
            let Some(&(_, start)) = place
                .marks
                .iter()
                .rev()
                .find(|(s, _)| *s <= acked.saturating_add(1))
                .or(place.marks.first())
            else {
                // Nothing logged yet.
                return Ok(Some(StoredSession {
                    meta,
                    log: Vec::new(),
                    intact: true,
                }));
            };
            let log_key = keys.node_log(&meta.node, place.boot);
            let mut pipe = redis::pipe();
            pipe.cmd("XRANGE")
                .arg(&log_key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1);
            pipe.cmd("XRANGE")
                .arg(&log_key)
                .arg(start.to_string())
                .arg("+");
            type Entries = Vec<(String, Vec<String>)>;
            let (first, entries): (Entries, Entries) =
                self.conn.pipe(OpKind::Resume, 2, &pipe).await?;
            // Trimming drops the oldest entries first: nothing from the mark on is missing
            // if the oldest entry left is not after it.
            let intact = first
                .first()
                .and_then(|(id, _)| id.parse::<StreamId>().ok())
                .is_some_and(|oldest| oldest <= start);
            let mut log = Vec::new();
            for (id, fields) in &entries {
                let got = delivery_log::entries_of(place.slot, fields).map_err(|why| {
                    SharedError::Malformed {
                        key: log_key.clone(),
                        why: format!("entry {id}: {why}"),
                    }
                })?;
                log.extend(got);
            }
            log.sort_by_key(|(seq, _)| *seq);
            log.dedup_by_key(|(seq, _)| *seq);
            if log.len() > REPLAY_CAP {
                log.drain(..log.len() - REPLAY_CAP);
            }
            Ok(Some(StoredSession { meta, log, intact }))
        })
    }

    fn payloads<'a>(
        &'a self,
        at: &'a [(Route, StreamId)],
    ) -> Fut<'a, SharedResult<Vec<Option<String>>>> {
        Box::pin(self.bus.read_at(at))
    }

    fn route_intact(&self, route: Route, after: StreamId) -> Fut<'_, SharedResult<bool>> {
        Box::pin(self.bus.intact_after(route, after))
    }

    fn route_after(
        &self,
        route: Route,
        after: StreamId,
        count: usize,
    ) -> Fut<'_, SharedResult<Vec<(StreamId, String)>>> {
        Box::pin(self.bus.read_after(route, after, count))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::dispatch::Body;

    fn meta(session: &str, node: &str) -> SessionMeta {
        SessionMeta {
            session: session.into(),
            user: UserId(7),
            token_hash: "h".into(),
            intents: 513,
            guilds: vec![GuildId(1), GuildId(2)],
            floor: 3,
            created: StreamId { ms: 5, seq: 9 },
            routes: [(Route::User(UserId(7)), StreamId { ms: 4, seq: 0 })].into(),
            node: NodeId(node.into()),
            ended: false,
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    async fn stores(r: &TestRedis, n: usize) -> Vec<RedisResumeStore> {
        let conns = r.conns(n).await;
        let client =
            redis::Client::open(std::env::var("TEST_REDIS_URL").unwrap().as_str()).unwrap();
        let (bus, _rx) = RedisBus::connect(client, conns[0].clone(), NodeId("a".into()))
            .await
            .unwrap();
        let bus = Arc::new(bus);
        conns
            .into_iter()
            .zip(["a", "b", "c"])
            .map(|(c, me)| RedisResumeStore::new(c, bus.clone(), NodeId(me.into())))
            .collect()
    }

    fn shared(guild: GuildId, ms: u64) -> Logged {
        Logged::Shared {
            route: Route::Guild(guild),
            id: StreamId { ms, seq: 0 },
            body: Body::Redacted,
        }
    }

    async fn log_key(r: &TestRedis, session: &str, node: &str) -> String {
        let boot: u64 = r
            .cmd(
                redis::cmd("HGET")
                    .arg(r.keys.session_meta(session))
                    .arg("boot"),
            )
            .await;
        r.keys.node_log(&NodeId(node.into()), boot)
    }

    #[tokio::test]
    async fn a_session_round_trips_and_only_its_holder_ends_or_forgets_it() {
        let Some(r) = redis_or_skip("resume-store").await else {
            return;
        };
        let st = stores(&r, 2).await;
        let (a, b) = (&st[0], &st[1]);
        let p = a.position().await.unwrap();
        assert!(p > StreamId::ZERO);
        a.open(meta("s1", "a"));
        a.append("s1", 4, shared(GuildId(1), 10));
        a.append("s1", 5, Logged::Own);
        settle().await;
        let got = b.load("s1", 3).await.unwrap().expect("stored");
        let mut want = meta("s1", "a");
        // The first logged number is a mark: the routes are written with it.
        want.routes
            .insert(Route::Guild(GuildId(1)), StreamId { ms: 10, seq: 0 });
        assert_eq!(got.meta, want);
        assert!(got.intact);
        assert_eq!(got.log, vec![(4, shared(GuildId(1), 10)), (5, Logged::Own)]);
        let ttl: i64 = r
            .cmd(redis::cmd("PTTL").arg(log_key(&r, "s1", "a").await))
            .await;
        assert!(ttl > 0, "the delivery log expires: {ttl}");
        // b takes it over after seq 4: it logs 5 again, then its own numbers.
        let g = Route::Guild(GuildId(1));
        let id = StreamId { ms: 10, seq: 0 };
        b.adopt("s1", [(g, id)].into(), 4, vec![(5, Logged::Own)]);
        b.append("s1", 6, shared(GuildId(1), 11));
        settle().await;
        a.append("s1", 6, shared(GuildId(1), 99));
        a.end("s1");
        a.close("s1");
        settle().await;
        let got = b.load("s1", 4).await.unwrap().expect("still there");
        assert_eq!(got.meta.node, NodeId("b".into()));
        assert_eq!(got.meta.floor, 4);
        assert!(!got.meta.ended);
        assert_eq!(
            got.log,
            vec![(5, Logged::Own), (6, shared(GuildId(1), 11))],
            "what a logged after the takeover is not the session's"
        );
        b.end("s1");
        settle().await;
        assert!(a.load("s1", 4).await.unwrap().unwrap().meta.ended);
        b.close("s1");
        settle().await;
        assert_eq!(a.load("s1", 4).await.unwrap(), None);
        assert_eq!(a.load("never", 0).await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_adopted_session_with_nothing_to_replay_continues_from_its_floor() {
        let Some(r) = redis_or_skip("resume-adopt-empty").await else {
            return;
        };
        let st = stores(&r, 2).await;
        st[0].open(meta("s", "a"));
        st[0].append("s", 4, Logged::Own);
        settle().await;
        st[1].adopt("s", BTreeMap::new(), 4, Vec::new());
        settle().await;
        let got = st[0].load("s", 4).await.unwrap().unwrap();
        assert!(got.intact);
        assert_eq!((got.meta.floor, got.log), (4, vec![]));
        st[1].append("s", 5, Logged::Own);
        settle().await;
        let got = st[0].load("s", 4).await.unwrap().unwrap();
        assert_eq!(got.log, vec![(5, Logged::Own)]);
    }

    #[tokio::test]
    async fn one_dispatch_to_many_sessions_is_one_delivery_log_entry() {
        let Some(r) = redis_or_skip("resume-fanout").await else {
            return;
        };
        let st = stores(&r, 1).await;
        let a = &st[0];
        let sessions: Vec<String> = (0..200).map(|i| format!("f{i}")).collect();
        for s in &sessions {
            a.open(meta(s, "a"));
        }
        settle().await;
        let key = log_key(&r, "f0", "a").await;
        let before = r.conn.stats.ops(OpKind::Resume);
        for s in &sessions {
            a.append(s, 4, shared(GuildId(1), 10));
        }
        for s in &sessions {
            a.append(s, 5, shared(GuildId(2), 11));
        }
        settle().await;
        let commands = r.conn.stats.ops(OpKind::Resume) - before;
        // One XADD (and its first PEXPIRE) per batch, one mark per session's first number.
        assert!(
            commands <= 2 * 2 + sessions.len() as u64 + 2,
            "{commands} commands for {} deliveries",
            2 * sessions.len()
        );
        let len: u64 = r.cmd(redis::cmd("XLEN").arg(&key)).await;
        assert!(len <= 2, "{len} entries");
        for s in &sessions {
            let got = a.load(s, 3).await.unwrap().unwrap();
            assert_eq!(
                got.log,
                vec![(4, shared(GuildId(1), 10)), (5, shared(GuildId(2), 11))],
                "{s}"
            );
        }
    }

    #[tokio::test]
    async fn the_log_keeps_exactly_the_last_replay_cap_entries_and_reads_from_a_mark() {
        let Some(r) = redis_or_skip("resume-cap").await else {
            return;
        };
        let st = stores(&r, 1).await;
        let a = &st[0];
        a.open(meta("s", "a"));
        a.open(meta("other", "a"));
        let total = REPLAY_CAP as u64 + 10;
        for seq in 4..4 + total {
            a.append("s", seq, Logged::Own);
            a.append("other", seq, shared(GuildId(3), seq));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = a.load("s", 3).await.unwrap().unwrap();
        assert_eq!(got.log.len(), REPLAY_CAP);
        assert_eq!(got.log[0].0, 4 + 10);
        let top = 3 + total;
        assert_eq!(got.log.last().unwrap().0, top);
        // A recent acknowledgement reads from a recent mark: not the whole log.
        let got = a.load("s", top - 5).await.unwrap().unwrap();
        assert!(got.log.len() as u64 <= MARK_EVERY + 6, "{}", got.log.len());
        assert!(got.log.first().unwrap().0 <= top - 4);
        assert_eq!(got.log.last().unwrap().0, top);
        let got = a.load("other", top - 1).await.unwrap().unwrap();
        assert_eq!(got.log.last().unwrap(), &(top, shared(GuildId(3), top)));
    }

    #[tokio::test]
    async fn a_delivery_log_trimmed_past_the_mark_is_not_intact() {
        let Some(r) = redis_or_skip("resume-trimmed").await else {
            return;
        };
        let st = stores(&r, 1).await;
        st[0].open(meta("s", "a"));
        st[0].append("s", 4, Logged::Own);
        settle().await;
        st[0].append("s", 5, Logged::Own);
        settle().await;
        assert!(st[0].load("s", 3).await.unwrap().unwrap().intact);
        let key = log_key(&r, "s", "a").await;
        let _: i64 = r
            .cmd(redis::cmd("XTRIM").arg(&key).arg("MAXLEN").arg(1))
            .await;
        let got = st[0].load("s", 3).await.unwrap().unwrap();
        assert!(!got.intact, "{got:?}");
    }
}
