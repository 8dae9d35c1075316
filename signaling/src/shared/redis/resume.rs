//! Gateway sessions' resume state on Redis, so a client whose node died resumes on another.
//!
//! Per session, under the hash tag `{s:<session>}` (one Redis Cluster slot):
//! - `{s:<session>}:meta`, a hash: `user`, `token_hash`, `intents`, `guilds` (JSON array),
//!   `floor`, `created` (a stream position), `routes` (JSON: route → the position up to which
//!   the holder handled it, written on guild joins, on takeover and every
//!   [`SNAPSHOT_EVERY`] log entries), `node` (who holds it), `ended` (`0`/`1`);
//! - `{s:<session>}:log`, a stream with one entry per sequence number the session handed
//!   out after its floor, id `<seq>-1`, trimmed to exactly `REPLAY_CAP` entries: for a bus
//!   dispatch `route` (`g:<id>`/`u:<id>`), `id` (its position in the route's stream) and
//!   `body` (which body the session got); for a session-specific payload `own`. The payload
//!   itself is never copied: it stays once in the route's stream (`{g:…}:bus`).
//!
//! Both keys expire `RESUME_WINDOW` after their last refresh: on open and adoption, on a
//! session's first log write, and every [`REFRESH_EVERY`] while the session lives on a node.
//!
//! Writes never wait. They go on a queue in the order they happen (so in sequence order per
//! session) and one task per node writes whatever is queued as one pipeline: under load many
//! entries share a round trip, and each delivered dispatch costs one XADD.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use super::bus::{RedisBus, StreamId};
use super::conn::Conn;
use super::keys::Route;
use super::stats::OpKind;
use crate::dispatch::Body;
use crate::gateway::registry::{REPLAY_CAP, RESUME_WINDOW};
use crate::shared::{
    Fut, Logged, NodeId, ResumeStore, SessionMeta, SharedError, SharedResult, StoredSession,
};

/// How often a node renews the keys of the sessions it holds (well inside `RESUME_WINDOW`,
/// so a session's state outlives its node by at least the window minus this).
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Log entries between two snapshots of a session's route positions: half the log, so the
/// log always holds every entry after the last snapshot.
pub const SNAPSHOT_EVERY: u64 = REPLAY_CAP as u64 / 2;
/// Queued writes sent in one pipeline at most.
const BATCH: usize = 1024;
/// Sessions renewed per pipeline.
const REFRESH_CHUNK: usize = 1000;

/// KEYS[1] = meta; ARGV[1] = this node. Marks the session ended if this node holds it.
const END: &str = r"
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'ended', '1')
end
return 0
";

/// KEYS = meta, log; ARGV[1] = this node. Forgets the session if this node holds it (one
/// that another node has taken over is left to that node).
const CLOSE: &str = r"
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
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
    Adopt(Arc<str>, BTreeMap<Route, StreamId>),
    Follow(Arc<str>, Vec<u64>, Option<(Route, StreamId)>),
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
        let writer = Writer {
            conn: conn.clone(),
            me,
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

fn body_name(b: Body) -> String {
    match serde_json::to_value(b) {
        Ok(serde_json::Value::String(s)) => s,
        _ => unreachable!("a Body serializes to its name"),
    }
}

fn body_of(name: &str) -> Option<Body> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// The writing task: the queue, in order, one pipeline per batch; and the renewal of the
/// sessions this node holds.
struct Writer {
    conn: Conn,
    me: NodeId,
    rx: mpsc::UnboundedReceiver<Cmd>,
    /// Sessions held here.
    held: HashMap<Arc<str>, Held>,
}

/// What the writer keeps of a session held here.
#[derive(Default)]
struct Held {
    /// Its log has been given a TTL.
    log_ttl: bool,
    /// Log entries since the last snapshot of `routes`.
    since_snapshot: u64,
    /// Route → the last position logged (or started from).
    routes: BTreeMap<Route, StreamId>,
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

    async fn write(&mut self, batch: &mut Vec<Cmd>) {
        let keys = self.conn.keys.clone();
        let ttl = ttl_ms();
        let mut pipe = redis::pipe();
        let mut n = 0u64;
        for c in batch.drain(..) {
            match c {
                Cmd::Open(m) => {
                    let meta = keys.session_meta(&m.session);
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
                        .ignore();
                    pipe.cmd("PEXPIRE").arg(&meta).arg(ttl).ignore();
                    n += 2;
                    let held = Held {
                        routes: m.routes,
                        ..Held::default()
                    };
                    self.held.insert(m.session.into(), held);
                }
                Cmd::Append {
                    session,
                    seq,
                    entry,
                } => {
                    let log = keys.session_log(&session);
                    let cmd = pipe
                        .cmd("XADD")
                        .arg(&log)
                        .arg("MAXLEN")
                        .arg(REPLAY_CAP)
                        .arg(format!("{seq}-1"));
                    let held = self.held.entry(session.clone()).or_default();
                    match entry {
                        Logged::Shared { route, id, body } => {
                            held.routes.insert(route, id);
                            cmd.arg("route")
                                .arg(route.to_string())
                                .arg("id")
                                .arg(id.to_string())
                                .arg("body")
                                .arg(body_name(body))
                        }
                        Logged::Own => cmd.arg("own").arg(1),
                    }
                    .ignore();
                    n += 1;
                    if !held.log_ttl {
                        // XADD made the key without a TTL: give it one at once.
                        pipe.cmd("PEXPIRE").arg(&log).arg(ttl).ignore();
                        n += 1;
                        held.log_ttl = true;
                    }
                    held.since_snapshot += 1;
                    if held.since_snapshot >= SNAPSHOT_EVERY {
                        held.since_snapshot = 0;
                        pipe.cmd("HSET")
                            .arg(keys.session_meta(&session))
                            .arg("routes")
                            .arg(routes_json(&held.routes))
                            .ignore();
                        n += 1;
                    }
                }
                Cmd::Adopt(session, routes) => {
                    let meta = keys.session_meta(&session);
                    let log = keys.session_log(&session);
                    pipe.cmd("HSET")
                        .arg(&meta)
                        .arg("node")
                        .arg(&self.me.0)
                        .arg("routes")
                        .arg(routes_json(&routes))
                        .ignore();
                    pipe.cmd("PEXPIRE").arg(&meta).arg(ttl).ignore();
                    pipe.cmd("PEXPIRE").arg(&log).arg(ttl).ignore();
                    n += 3;
                    let held = Held {
                        log_ttl: true,
                        since_snapshot: 0,
                        routes,
                    };
                    self.held.insert(session, held);
                }
                Cmd::Follow(session, guilds, joined) => {
                    let held = self.held.entry(session.clone()).or_default();
                    if let Some((r, from)) = joined {
                        let p = held.routes.entry(r).or_insert(from);
                        *p = (*p).max(from);
                    }
                    pipe.cmd("HSET")
                        .arg(keys.session_meta(&session))
                        .arg("guilds")
                        .arg(serde_json::to_string(&guilds).expect("ids serialize"))
                        .arg("routes")
                        .arg(routes_json(&held.routes))
                        .ignore();
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
                        .arg(2)
                        .arg(keys.session_meta(&session))
                        .arg(keys.session_log(&session))
                        .arg(&self.me.0)
                        .ignore();
                    n += 1;
                    self.held.remove(&session);
                }
            }
        }
        if let Err(e) = self.conn.pipe::<()>(OpKind::Resume, n, &pipe).await {
            // The sessions concerned now have a hole in their log (or a stale end): a resume
            // elsewhere sees it and is refused (op 9); nothing is replayed wrongly.
            warn!(error = %e, writes = n, "resume store: a batch of session log writes failed");
        }
    }

    /// Renew the keys of every session held here; forget those whose keys are gone (ended,
    /// or taken over and then closed by another node).
    async fn refresh(&mut self) {
        let keys = self.conn.keys.clone();
        let ttl = ttl_ms();
        let sessions: Vec<Arc<str>> = self.held.keys().cloned().collect();
        for chunk in sessions.chunks(REFRESH_CHUNK) {
            let mut pipe = redis::pipe();
            for s in chunk {
                pipe.cmd("PEXPIRE").arg(keys.session_meta(s)).arg(ttl);
                pipe.cmd("PEXPIRE")
                    .arg(keys.session_log(s))
                    .arg(ttl)
                    .ignore();
            }
            let n = 2 * chunk.len() as u64;
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
        user: num("user")?,
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

fn parse_entry(key: &str, id: &str, fields: &[String]) -> SharedResult<(u64, Logged)> {
    let malformed = |why: String| SharedError::Malformed {
        key: key.to_string(),
        why,
    };
    let seq = id
        .strip_suffix("-1")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed(format!("entry id {id:?}")))?;
    let get = |f: &str| {
        fields
            .chunks(2)
            .find(|p| p.len() == 2 && p[0] == f)
            .map(|p| p[1].as_str())
    };
    if get("own").is_some() {
        return Ok((seq, Logged::Own));
    }
    let bad = || malformed(format!("entry {id} has fields {fields:?}"));
    let route: Route = get("route").and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let sid: StreamId = get("id").and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let body = get("body").and_then(body_of).ok_or_else(bad)?;
    Ok((
        seq,
        Logged::Shared {
            route,
            id: sid,
            body,
        },
    ))
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

    fn adopt(&self, session: &str, routes: BTreeMap<Route, StreamId>) {
        self.queue(Cmd::Adopt(session.into(), routes));
    }

    fn follow(&self, session: &str, guilds: Vec<u64>, joined: Option<(Route, StreamId)>) {
        self.queue(Cmd::Follow(session.into(), guilds, joined));
    }

    fn end(&self, session: &str) {
        self.queue(Cmd::End(session.into()));
    }

    fn close(&self, session: &str) {
        self.queue(Cmd::Close(session.into()));
    }

    fn load<'a>(&'a self, session: &'a str) -> Fut<'a, SharedResult<Option<StoredSession>>> {
        Box::pin(async move {
            let keys = &self.conn.keys;
            let (meta_key, log_key) = (keys.session_meta(session), keys.session_log(session));
            let mut pipe = redis::pipe();
            pipe.cmd("HGETALL").arg(&meta_key);
            pipe.cmd("XRANGE").arg(&log_key).arg("-").arg("+");
            type Entries = Vec<(String, Vec<String>)>;
            let (h, entries): (HashMap<String, String>, Entries) =
                self.conn.pipe(OpKind::Resume, 2, &pipe).await?;
            if h.is_empty() {
                return Ok(None);
            }
            let meta = parse_meta(&meta_key, session, &h)?;
            let log = entries
                .iter()
                .map(|(id, fields)| parse_entry(&log_key, id, fields))
                .collect::<SharedResult<Vec<_>>>()?;
            Ok(Some(StoredSession { meta, log }))
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

    fn meta(session: &str, node: &str) -> SessionMeta {
        SessionMeta {
            session: session.into(),
            user: 7,
            token_hash: "h".into(),
            intents: 513,
            guilds: vec![1, 2],
            floor: 3,
            created: StreamId { ms: 5, seq: 9 },
            routes: [(Route::User(7), StreamId { ms: 4, seq: 0 })].into(),
            node: NodeId(node.into()),
            ended: false,
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    #[tokio::test]
    async fn a_session_round_trips_and_only_its_holder_ends_or_forgets_it() {
        let Some(r) = redis_or_skip("resume-store").await else {
            return;
        };
        let conns = r.conns(2).await;
        let client =
            redis::Client::open(std::env::var("TEST_REDIS_URL").unwrap().as_str()).unwrap();
        let (bus, _rx) = RedisBus::connect(client, conns[0].clone(), NodeId("a".into()))
            .await
            .unwrap();
        let bus = Arc::new(bus);
        let a = RedisResumeStore::new(conns[0].clone(), bus.clone(), NodeId("a".into()));
        let b = RedisResumeStore::new(conns[1].clone(), bus, NodeId("b".into()));
        let p = a.position().await.unwrap();
        assert!(p > StreamId::ZERO);
        a.open(meta("s1", "a"));
        let g = Route::Guild(1);
        let id = StreamId { ms: 10, seq: 0 };
        a.append(
            "s1",
            4,
            Logged::Shared {
                route: g,
                id,
                body: Body::Redacted,
            },
        );
        a.append("s1", 5, Logged::Own);
        settle().await;
        let got = b.load("s1").await.unwrap().expect("stored");
        assert_eq!(got.meta, meta("s1", "a"));
        assert_eq!(
            got.log,
            vec![
                (
                    4,
                    Logged::Shared {
                        route: g,
                        id,
                        body: Body::Redacted
                    }
                ),
                (5, Logged::Own)
            ]
        );
        let ttl: i64 = r
            .cmd(redis::cmd("PTTL").arg(r.keys.session_log("s1")))
            .await;
        assert!(ttl > 0, "the log expires: {ttl}");
        // b takes it over: a's end and close no longer touch it.
        b.adopt("s1", [(g, id)].into());
        settle().await;
        a.end("s1");
        a.close("s1");
        settle().await;
        let got = b.load("s1").await.unwrap().expect("still there");
        assert_eq!(got.meta.node, NodeId("b".into()));
        assert_eq!(got.meta.routes, [(g, id)].into());
        assert!(!got.meta.ended);
        b.end("s1");
        settle().await;
        assert!(a.load("s1").await.unwrap().unwrap().meta.ended);
        b.close("s1");
        settle().await;
        assert_eq!(a.load("s1").await.unwrap(), None);
        assert_eq!(a.load("never").await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_log_keeps_exactly_the_last_replay_cap_entries() {
        let Some(r) = redis_or_skip("resume-cap").await else {
            return;
        };
        let client =
            redis::Client::open(std::env::var("TEST_REDIS_URL").unwrap().as_str()).unwrap();
        let (bus, _rx) = RedisBus::connect(client, r.conn.clone(), NodeId("a".into()))
            .await
            .unwrap();
        let a = RedisResumeStore::new(r.conn.clone(), Arc::new(bus), NodeId("a".into()));
        a.open(meta("s", "a"));
        let total = REPLAY_CAP as u64 + 10;
        for seq in 4..4 + total {
            a.append("s", seq, Logged::Own);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = a.load("s").await.unwrap().unwrap();
        assert_eq!(got.log.len(), REPLAY_CAP);
        assert_eq!(got.log[0].0, 4 + 10);
        assert_eq!(got.log.last().unwrap().0, 3 + total);
    }
}
