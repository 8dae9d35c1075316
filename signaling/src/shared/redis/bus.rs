//! The bus's transport on Redis: payloads (already serialized) to a route — a guild, or a
//! user for dispatches without a guild — and messages to one node's inbox.
//!
//! Publishing is one Lua script: XADD the payload to the route's stream
//! (`{g:<guild>}:bus` / `{u:<user>}:bus`, trimmed to about [`STREAM_LEN`] entries), then
//! PUBLISH `"<stream id> <payload>"` on the route's channel (`{g:<guild>}:ch` /
//! `{u:<user>}:ch`). A script runs alone on the server, so the order of a route's stream is
//! the order its subscribers receive, whoever published; a subscriber that missed some (its
//! connection dropped) reads the gap back from the stream with [`RedisBus::read_after`].
//!
//! Receiving uses one dedicated pub/sub connection per node, owned by a task: it subscribes
//! to the node's inbox (`lodge:node:<id>:inbox`) at once and to a route's channel while the
//! node watches that route ([`RedisBus::watch`], reference counted). When the connection is
//! lost the task yields [`BusIncoming::Lost`], reconnects with a back-off of 100 ms doubling
//! to 2 s, subscribes again to everything watched, then yields [`BusIncoming::Reconnected`].
//!
//! One publisher's order: a publish enters the command connection when its future is first
//! polled, so publishes awaited one after another (or issued from one task in turn) reach
//! the stream in that order.

use lodge_ids::{GuildId, UserId};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSub, PubSubSink, PubSubStream};
use redis::{Client, Msg, Script};
use tokio::sync::{mpsc, oneshot};

use super::conn::{unavailable, Conn};
use super::keys::{Keys, Route};
use super::stats::{OpKind, RedisStats};
use crate::shared::{NodeId, SharedError, SharedResult};

/// About how many dispatches a route's stream keeps (`MAXLEN ~`): the window a node can read
/// back after losing its subscription.
pub const STREAM_LEN: u32 = 10_000;

/// Back-off between reconnection attempts: 100 ms, doubling, at most 2 s.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A PING on the pub/sub connection this often; no answer within as long again means the
/// connection is gone even if TCP has not noticed.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// How long one connect or subscribe may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// KEYS[1] = the route's stream; ARGV = payload, channel, stream length. Returns the id.
const PUBLISH: &str = r"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'd', ARGV[1])
redis.call('PUBLISH', ARGV[2], id .. ' ' .. ARGV[1])
return id
";

/// KEYS[1] = a route's stream. `""` when nothing was ever trimmed from it (or it does not
/// exist); otherwise the id of its first entry (everything trimmed is older).
const INTACT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return '' end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local added, len, first
for i = 1, #info, 2 do
  if info[i] == 'entries-added' then added = info[i + 1] end
  if info[i] == 'length' then len = info[i + 1] end
  if info[i] == 'first-entry' then first = info[i + 1] end
end
if added ~= nil and added == len then return '' end
if not first then return '0-0' end
return first[1]
";

/// A Redis stream entry id, `<ms>-<seq>`: the position of a dispatch in its route's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// Before every entry: `read_after(route, StreamId::ZERO, n)` reads from the start.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').ok_or(())?;
        Ok(StreamId {
            ms: ms.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// What the bus hands this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusIncoming {
    /// A payload published to a watched route, with its position in the route's stream.
    Dispatch {
        route: Route,
        id: StreamId,
        payload: String,
    },
    /// A message to this node's inbox.
    Node(String),
    /// The pub/sub connection is gone: publishes from now until [`BusIncoming::Reconnected`]
    /// are not delivered (read them back with [`RedisBus::read_after`]).
    Lost,
    /// Subscribed again to the inbox and every watched route.
    Reconnected,
}

/// The receiving end of a node's bus.
pub struct RedisBusRx {
    rx: mpsc::UnboundedReceiver<BusIncoming>,
}

impl RedisBusRx {
    /// The next message; `None` once the bus is dropped.
    pub async fn recv(&mut self) -> Option<BusIncoming> {
        self.rx.recv().await
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<BusIncoming> {
        self.rx.try_recv().ok()
    }
}

/// Subscription changes, in the order the watch counts changed.
enum SubCmd {
    Watch(Route),
    Unwatch(Route),
    /// Answered once every earlier change is confirmed by Redis.
    Sync(oneshot::Sender<()>),
}

/// A node's bus transport on Redis. Publishing uses the shared command connection; receiving
/// uses a task with its own pub/sub connection.
pub struct RedisBus {
    conn: Conn,
    me: NodeId,
    publish: Script,
    intact: Script,
    /// Route → how many times it is watched; the task subscribes while the count is > 0.
    watched: Mutex<HashMap<Route, u32>>,
    subs: mpsc::UnboundedSender<SubCmd>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RedisBus {
    /// Open the pub/sub connection, subscribe to `me`'s inbox and start the receiving task.
    pub async fn connect(
        client: Client,
        conn: Conn,
        me: NodeId,
    ) -> SharedResult<(RedisBus, RedisBusRx)> {
        let inbox = conn.keys.inbox(&me);
        let pubsub = open(&client, &conn.url, std::slice::from_ref(&inbox)).await?;
        conn.stats.count(OpKind::Subscribe, 1);
        let (subs_tx, subs_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let task = Subscriber {
            client,
            keys: conn.keys.clone(),
            stats: conn.stats.clone(),
            url: conn.url.clone(),
            inbox,
            watched: HashMap::new(),
            subs: subs_rx,
            out: out_tx,
            syncs: Vec::new(),
        };
        conn.stats.set_bus_up(true);
        tokio::spawn(task.run(pubsub));
        let bus = RedisBus {
            conn,
            me,
            publish: Script::new(PUBLISH),
            intact: Script::new(INTACT),
            watched: Mutex::new(HashMap::new()),
            subs: subs_tx,
        };
        Ok((bus, RedisBusRx { rx: out_rx }))
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// Append `payload` to the route's stream and publish it to the route's watchers; returns
    /// its stream position.
    pub async fn publish_raw(&self, route: Route, payload: String) -> SharedResult<StreamId> {
        let k = &self.conn.keys;
        let stream = k.stream(route);
        let mut inv = self.publish.key(&stream);
        inv.arg(&payload).arg(k.channel(route)).arg(STREAM_LEN);
        self.conn.stats.add_published_bytes(payload.len());
        let id: String = self.conn.script(OpKind::Publish, &inv).await?;
        id.parse().map_err(|()| SharedError::Malformed {
            key: stream,
            why: format!("XADD returned {id:?}"),
        })
    }

    /// Send `msg` to one node's inbox. False when no node was subscribed to it (the node is
    /// gone, or between connections).
    pub async fn to_node(&self, node: &NodeId, msg: String) -> SharedResult<bool> {
        self.conn.stats.add_published_bytes(msg.len());
        let c = redis::cmd("PUBLISH")
            .arg(self.conn.keys.inbox(node))
            .arg(msg)
            .to_owned();
        let receivers: u64 = self.conn.cmd(OpKind::Publish, &c).await?;
        Ok(receivers > 0)
    }

    /// Up to `count` dispatches of the route's stream after `after`, oldest first.
    pub async fn read_after(
        &self,
        route: Route,
        after: StreamId,
        count: usize,
    ) -> SharedResult<Vec<(StreamId, String)>> {
        let stream = self.conn.keys.stream(route);
        let c = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .to_owned();
        let entries: Vec<(String, Vec<String>)> = self.conn.cmd(OpKind::StreamRead, &c).await?;
        entries
            .into_iter()
            .map(|(id, mut fields)| {
                let malformed = |why: String| SharedError::Malformed {
                    key: stream.clone(),
                    why,
                };
                let id = id
                    .parse()
                    .map_err(|()| malformed(format!("entry id {id:?}")))?;
                // Fields are [`d`, payload].
                if fields.len() != 2 || fields[0] != "d" {
                    return Err(malformed(format!("entry {id} has fields {fields:?}")));
                }
                Ok((id, fields.swap_remove(1)))
            })
            .collect()
    }

    /// The payloads at given positions of their routes' streams (`XRANGE id id` each, in one
    /// pipeline); `None` where the stream no longer holds it (trimmed, or Redis lost it).
    pub async fn read_at(&self, at: &[(Route, StreamId)]) -> SharedResult<Vec<Option<String>>> {
        if at.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (route, id) in at {
            pipe.cmd("XRANGE")
                .arg(self.conn.keys.stream(*route))
                .arg(id.to_string())
                .arg(id.to_string());
        }
        type Entries = Vec<(String, Vec<String>)>;
        let got: Vec<Entries> = self
            .conn
            .pipe(OpKind::StreamRead, at.len() as u64, &pipe)
            .await?;
        Ok(got
            .into_iter()
            .map(|entries| {
                let (_, mut fields) = entries.into_iter().next()?;
                // Fields are [`d`, payload].
                (fields.len() == 2 && fields[0] == "d").then(|| fields.swap_remove(1))
            })
            .collect())
    }

    /// Whether the route's stream still holds every dispatch it was given after `after`:
    /// nothing was trimmed, or what was is older than `after`. (A missing stream holds
    /// nothing and lost nothing this node can tell.)
    pub async fn intact_after(&self, route: Route, after: StreamId) -> SharedResult<bool> {
        let stream = self.conn.keys.stream(route);
        let inv = self.intact.key(&stream);
        let first: String = self.conn.script(OpKind::StreamRead, &inv).await?;
        if first.is_empty() {
            return Ok(true);
        }
        let first: StreamId = first.parse().map_err(|()| SharedError::Malformed {
            key: stream,
            why: format!("first entry id {first:?}"),
        })?;
        Ok(first <= after)
    }

    /// The oldest dispatch the route's stream still holds. A reader whose last position is
    /// older than this may have missed dispatches trimmed away (it must be told, not resumed).
    pub async fn oldest(&self, route: Route) -> SharedResult<Option<StreamId>> {
        Ok(self
            .read_after(route, StreamId::ZERO, 1)
            .await?
            .first()
            .map(|(id, _)| *id))
    }

    /// Watch a route (`on`) or stop watching it. Counted: a route watched twice is watched
    /// until it is unwatched twice. Subscribing happens in the background, in call order;
    /// [`RedisBus::synced`] waits for it.
    pub fn watch(&self, route: Route, on: bool) {
        let mut w = lock(&self.watched);
        let change = if on {
            let n = w.entry(route).or_insert(0);
            *n += 1;
            (*n == 1).then_some(SubCmd::Watch(route))
        } else {
            match w.get_mut(&route) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    None
                }
                Some(_) => {
                    w.remove(&route);
                    Some(SubCmd::Unwatch(route))
                }
                None => {
                    tracing::warn!(?route, "bus: unwatched a route that was not watched");
                    None
                }
            }
        };
        // Sent under the lock, so the task sees changes in the order the counts changed.
        if let Some(c) = change {
            let _ = self.subs.send(c);
        }
    }

    pub fn watch_guild(&self, guild: GuildId, on: bool) {
        self.watch(Route::Guild(guild), on);
    }

    pub fn watch_user(&self, user: UserId, on: bool) {
        self.watch(Route::User(user), on);
    }

    /// Routes watched now.
    pub fn watched(&self) -> usize {
        lock(&self.watched).len()
    }

    /// Wait until every earlier watch change is confirmed by Redis (after a reconnection if
    /// the connection is down).
    pub async fn synced(&self) {
        let (tx, rx) = oneshot::channel();
        if self.subs.send(SubCmd::Sync(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// A pub/sub connection subscribed to `channels`.
async fn open(client: &Client, url: &str, channels: &[String]) -> SharedResult<PubSub> {
    let step = async {
        let mut ps = client.get_async_pubsub().await?;
        // SUBSCRIBE takes many channels at once (one round trip for a resubscription).
        for chunk in channels.chunks(1000) {
            ps.subscribe(chunk).await?;
        }
        Ok::<_, redis::RedisError>(ps)
    };
    match tokio::time::timeout(STEP_TIMEOUT, step).await {
        Ok(r) => r.map_err(|e| unavailable(url, "bus subscribe", &e)),
        Err(_) => Err(SharedError::Unavailable(format!(
            "Redis at {url}: bus subscribe: timed out after {STEP_TIMEOUT:?}"
        ))),
    }
}

/// Why serving one connection ended.
enum End {
    /// The bus or its receiver was dropped: stop.
    Closed,
    Lost(String),
}

/// The receiving task: owns the pub/sub connection and the set of subscribed channels.
struct Subscriber {
    client: Client,
    keys: Arc<Keys>,
    stats: Arc<RedisStats>,
    url: Arc<str>,
    inbox: String,
    /// Channel → route, for every watched route: what to subscribe after a reconnection, and
    /// the filter for messages that arrive after an unwatch but before Redis confirmed it.
    watched: HashMap<String, Route>,
    subs: mpsc::UnboundedReceiver<SubCmd>,
    out: mpsc::UnboundedSender<BusIncoming>,
    /// Syncs that came in while disconnected, answered once subscribed again.
    syncs: Vec<oneshot::Sender<()>>,
}

impl Subscriber {
    async fn run(mut self, first: PubSub) {
        let mut pubsub = first;
        loop {
            let (mut sink, mut stream) = pubsub.split();
            let why = match self.serve(&mut sink, &mut stream).await {
                End::Closed => return,
                End::Lost(why) => why,
            };
            self.stats.set_bus_up(false);
            tracing::warn!(url = %self.url, %why, "bus: lost the Redis pub/sub connection");
            if self.out.send(BusIncoming::Lost).is_err() {
                return;
            }
            drop((sink, stream));
            pubsub = match self.reconnect().await {
                Some(p) => p,
                None => return,
            };
            self.stats.set_bus_up(true);
            tracing::info!(url = %self.url, routes = self.watched.len(), "bus: reconnected to Redis");
            for s in self.syncs.drain(..) {
                let _ = s.send(());
            }
            if self.out.send(BusIncoming::Reconnected).is_err() {
                return;
            }
        }
    }

    /// Apply a subscription change to the set only (while disconnected).
    fn note(&mut self, c: SubCmd) {
        match c {
            SubCmd::Watch(r) => {
                self.watched.insert(self.keys.channel(r), r);
            }
            SubCmd::Unwatch(r) => {
                self.watched.remove(&self.keys.channel(r));
            }
            SubCmd::Sync(tx) => self.syncs.push(tx),
        }
    }

    async fn reconnect(&mut self) -> Option<PubSub> {
        let mut delay = BACKOFF_MIN;
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(BACKOFF_MAX);
            // Take the changes made meanwhile, so the resubscription is the current set.
            loop {
                match self.subs.try_recv() {
                    Ok(c) => self.note(c),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return None,
                }
            }
            if self.out.is_closed() {
                return None;
            }
            let mut channels: Vec<String> = self.watched.keys().cloned().collect();
            channels.push(self.inbox.clone());
            self.stats.count(OpKind::Subscribe, 1);
            match open(&self.client, &self.url, &channels).await {
                Ok(p) => return Some(p),
                Err(e) => tracing::debug!(error = %e, ?delay, "bus: reconnection failed"),
            }
        }
    }

    async fn serve(&mut self, sink: &mut PubSubSink, stream: &mut PubSubStream) -> End {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.tick().await;
        loop {
            // Not biased: a flood of messages must not starve watch changes or the keepalive.
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(m) => {
                        if !self.deliver(m) {
                            return End::Closed;
                        }
                    }
                    None => return End::Lost("the connection closed".into()),
                },
                c = self.subs.recv() => {
                    let Some(c) = c else { return End::Closed };
                    if let Err(why) = self.apply(sink, c).await {
                        return End::Lost(why);
                    }
                }
                _ = keepalive.tick() => {
                    let ping = tokio::time::timeout(KEEPALIVE, sink.ping::<redis::Value>());
                    match ping.await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return End::Lost(format!("ping: {e}")),
                        Err(_) => return End::Lost("ping: no answer".into()),
                    }
                }
            }
        }
    }

    async fn apply(&mut self, sink: &mut PubSubSink, c: SubCmd) -> Result<(), String> {
        let (sub, channel) = match c {
            SubCmd::Sync(tx) => {
                let _ = tx.send(());
                return Ok(());
            }
            SubCmd::Watch(r) => {
                let ch = self.keys.channel(r);
                self.watched.insert(ch.clone(), r);
                (true, ch)
            }
            SubCmd::Unwatch(r) => {
                let ch = self.keys.channel(r);
                // From here on, messages still in flight for it are dropped.
                self.watched.remove(&ch);
                (false, ch)
            }
        };
        self.stats.count(OpKind::Subscribe, 1);
        let step = async {
            if sub {
                sink.subscribe(&channel).await
            } else {
                sink.unsubscribe(&channel).await
            }
        };
        match tokio::time::timeout(STEP_TIMEOUT, step).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("subscribe {channel}: {e}")),
            Err(_) => Err(format!("subscribe {channel}: no answer")),
        }
    }

    /// Hand one pub/sub message on. False: the receiver is gone.
    fn deliver(&mut self, m: Msg) -> bool {
        let channel = m.get_channel_name();
        let incoming = if channel == self.inbox {
            match std::str::from_utf8(m.get_payload_bytes()) {
                Ok(s) => BusIncoming::Node(s.to_string()),
                Err(_) => {
                    tracing::warn!("bus: dropped a node message that is not UTF-8");
                    return true;
                }
            }
        } else if let Some(&route) = self.watched.get(channel) {
            match parse_dispatch(m.get_payload_bytes()) {
                Some((id, payload)) => BusIncoming::Dispatch { route, id, payload },
                None => {
                    tracing::warn!(?route, "bus: dropped a malformed dispatch");
                    return true;
                }
            }
        } else {
            // Unwatched meanwhile.
            tracing::trace!(channel, "bus: dropped a dispatch of an unwatched route");
            return true;
        };
        self.out.send(incoming).is_ok()
    }
}

/// `"<stream id> <payload>"`.
fn parse_dispatch(bytes: &[u8]) -> Option<(StreamId, String)> {
    let s = std::str::from_utf8(bytes).ok()?;
    let (id, payload) = s.split_once(' ')?;
    Some((id.parse().ok()?, payload.to_string()))
}

#[cfg(test)]
mod tests;
