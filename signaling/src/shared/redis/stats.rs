//! What this node asks of Redis, counted: commands by kind, bytes of bus payload published,
//! errors, and whether Redis is reachable. Read by `/metrics` (Prometheus text) and by the
//! scaling figures (Redis operations and bytes per join, message, presence change).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// The kinds of Redis work, one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Node registry: announce, live nodes, withdraw.
    Registry,
    /// Room placement: claim, read, release.
    Placement,
    /// Voice states.
    Voice,
    /// Voice tokens.
    Token,
    /// Bus publishes: dispatches to a route, messages to a node.
    Publish,
    /// Bus reads: stream ranges read back to resume a route.
    StreamRead,
    /// Bus subscriptions: SUBSCRIBE and UNSUBSCRIBE on the pub/sub connection.
    Subscribe,
    /// `session_start_limit`: one script per Identify (and per `GET /gateway/bot`).
    SessionStart,
    /// REST rate limits: one script per request.
    RateLimit,
    /// Presence: one script per change, one pipelined read per snapshot.
    Presence,
    /// Gateway sessions' resume state: meta, log appends and refreshes, loads.
    Resume,
    /// The operator's per-guild switches: one read per check, one script per change.
    Admin,
}

impl OpKind {
    pub const ALL: [OpKind; 12] = [
        OpKind::Registry,
        OpKind::Placement,
        OpKind::Voice,
        OpKind::Token,
        OpKind::Publish,
        OpKind::StreamRead,
        OpKind::Subscribe,
        OpKind::SessionStart,
        OpKind::RateLimit,
        OpKind::Presence,
        OpKind::Resume,
        OpKind::Admin,
    ];

    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Registry => "registry",
            OpKind::Placement => "placement",
            OpKind::Voice => "voice",
            OpKind::Token => "token",
            OpKind::Publish => "publish",
            OpKind::StreamRead => "stream_read",
            OpKind::Subscribe => "subscribe",
            OpKind::SessionStart => "session_start",
            OpKind::RateLimit => "rate_limit",
            OpKind::Presence => "presence",
            OpKind::Resume => "resume",
            OpKind::Admin => "admin",
        }
    }
}

/// Counters, shared by every Redis implementation of one node. An operation is one command
/// or one script call sent to Redis (a pipeline counts each command in it).
#[derive(Debug)]
pub struct RedisStats {
    ops: [AtomicU64; OpKind::ALL.len()],
    errors: AtomicU64,
    /// Payload bytes handed to Redis by bus publishes (a dispatch's payload is sent once per
    /// publish; Redis keeps it in the stream and fans it out to subscribers).
    published_bytes: AtomicU64,
    /// The command connection's last answer was not a connection failure.
    commands_up: AtomicBool,
    /// The bus's pub/sub connection is subscribed.
    bus_up: AtomicBool,
}

impl Default for RedisStats {
    fn default() -> Self {
        RedisStats {
            ops: Default::default(),
            errors: AtomicU64::new(0),
            published_bytes: AtomicU64::new(0),
            commands_up: AtomicBool::new(true),
            bus_up: AtomicBool::new(true),
        }
    }
}

impl RedisStats {
    pub fn count(&self, kind: OpKind, n: u64) {
        self.ops[kind as usize].fetch_add(n, Relaxed);
    }

    pub fn ops(&self, kind: OpKind) -> u64 {
        self.ops[kind as usize].load(Relaxed)
    }

    pub fn add_published_bytes(&self, n: usize) {
        self.published_bytes.fetch_add(n as u64, Relaxed);
    }

    pub fn published_bytes(&self) -> u64 {
        self.published_bytes.load(Relaxed)
    }

    pub fn error(&self, connection_lost: bool) {
        self.errors.fetch_add(1, Relaxed);
        if connection_lost {
            self.commands_up.store(false, Relaxed);
        }
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    pub fn commands_ok(&self) {
        self.commands_up.store(true, Relaxed);
    }

    pub fn set_bus_up(&self, up: bool) {
        self.bus_up.store(up, Relaxed);
    }

    /// Both connections work, as far as this node last saw.
    pub fn up(&self) -> bool {
        self.commands_up.load(Relaxed) && self.bus_up.load(Relaxed)
    }

    /// Append the counters in Prometheus text format.
    pub fn write_metrics(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP lodge_redis_ops_total Commands and scripts sent to Redis, by kind.\n\
             # TYPE lodge_redis_ops_total counter"
        );
        for k in OpKind::ALL {
            let _ = writeln!(
                out,
                "lodge_redis_ops_total{{kind=\"{}\"}} {}",
                k.as_str(),
                self.ops(k)
            );
        }
        let _ = writeln!(
            out,
            "# HELP lodge_redis_errors_total Redis commands that failed.\n\
             # TYPE lodge_redis_errors_total counter\n\
             lodge_redis_errors_total {}\n\
             # HELP lodge_redis_published_bytes_total Bus payload bytes published to Redis.\n\
             # TYPE lodge_redis_published_bytes_total counter\n\
             lodge_redis_published_bytes_total {}\n\
             # HELP lodge_redis_up Whether this node reaches Redis (commands and the bus).\n\
             # TYPE lodge_redis_up gauge\n\
             lodge_redis_up {}",
            self.errors(),
            self.published_bytes(),
            u8::from(self.up())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text() {
        let s = RedisStats::default();
        s.count(OpKind::Publish, 3);
        s.count(OpKind::Registry, 1);
        s.add_published_bytes(42);
        s.set_bus_up(false);
        let mut out = String::new();
        s.write_metrics(&mut out);
        for line in [
            "lodge_redis_ops_total{kind=\"publish\"} 3",
            "lodge_redis_ops_total{kind=\"registry\"} 1",
            "lodge_redis_ops_total{kind=\"token\"} 0",
            "lodge_redis_published_bytes_total 42",
            "lodge_redis_up 0",
            "# TYPE lodge_redis_ops_total counter",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
    }
}
