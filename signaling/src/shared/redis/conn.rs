//! The command connection: one auto-reconnecting [`ConnectionManager`] (multiplexed, so every
//! task of the node shares one TCP connection), with each call counted in [`RedisStats`] and
//! each failure turned into [`SharedError::Unavailable`] naming Redis and its URL (never its
//! password).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, FromRedisValue, Pipeline, RedisError, ScriptInvocation};

use super::keys::Keys;
use super::stats::{OpKind, RedisStats};
use crate::shared::{SharedError, SharedResult};

/// How long one command may take before it counts as a failure (Redis answers in
/// microseconds; a second means it is gone or swamped, and the caller should hear so).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// `redis://[user@]host:port/db`, built from the parsed URL so a password cannot leak into
/// logs or error bodies.
pub fn redacted_url(client: &Client) -> String {
    let info = client.get_connection_info();
    let scheme = match info.addr() {
        redis::ConnectionAddr::Tcp(..) => "redis",
        redis::ConnectionAddr::Unix(..) => "redis+unix",
        _ => "rediss",
    };
    let settings = info.redis_settings();
    let user = settings
        .username()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{}/{}", info.addr(), settings.db())
}

/// The error of an unreachable (or misbehaving) Redis, as handlers see it.
pub fn unavailable(url: &str, what: &str, e: &RedisError) -> SharedError {
    SharedError::Unavailable(format!("Redis at {url}: {what}: {e}"))
}

fn is_connection_failure(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// A handle on the command connection; cheap to clone.
#[derive(Clone)]
pub struct Conn {
    cm: ConnectionManager,
    pub keys: Arc<Keys>,
    pub stats: Arc<RedisStats>,
    /// The redacted URL, for errors and logs.
    pub url: Arc<str>,
}

impl Conn {
    /// Connect (the first connection must succeed; later losses reconnect in the background
    /// with a back-off of 100 ms doubling).
    pub async fn connect(
        client: &Client,
        keys: Arc<Keys>,
        stats: Arc<RedisStats>,
    ) -> SharedResult<Conn> {
        let url: Arc<str> = redacted_url(client).into();
        let config = ConnectionManagerConfig::new()
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(2))
            .set_exponent_base(2.0)
            // A reconnection gives up after 100 + 200 + 400 ms (the command that triggered it
            // fails; the next one tries again), so callers hear of an outage in under a
            // second instead of waiting out a long back-off.
            .set_number_of_retries(3)
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        let cm = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| unavailable(&url, "connect", &e))?;
        Ok(Conn {
            cm,
            keys,
            stats,
            url,
        })
    }

    fn settle<T>(&self, what: &str, r: Result<T, RedisError>) -> SharedResult<T> {
        match r {
            Ok(v) => {
                self.stats.commands_ok();
                Ok(v)
            }
            Err(e) => {
                let lost = is_connection_failure(&e);
                self.stats.error(lost);
                tracing::debug!(url = %self.url, what, error = %e, "redis command failed");
                Err(unavailable(&self.url, what, &e))
            }
        }
    }

    /// Send one command.
    pub async fn cmd<T: FromRedisValue>(&self, kind: OpKind, cmd: &Cmd) -> SharedResult<T> {
        self.stats.count(kind, 1);
        let mut cm = self.cm.clone();
        let r = cmd.query_async(&mut cm).await;
        self.settle(kind.as_str(), r)
    }

    /// Send a pipeline (`n` commands, counted as `n` operations).
    pub async fn pipe<T: FromRedisValue>(
        &self,
        kind: OpKind,
        n: u64,
        pipe: &Pipeline,
    ) -> SharedResult<T> {
        self.stats.count(kind, n);
        let mut cm = self.cm.clone();
        let r = pipe.query_async(&mut cm).await;
        self.settle(kind.as_str(), r)
    }

    /// Run a Lua script (EVALSHA, loading it first if this Redis has not seen it: after a
    /// restart the script cache is empty).
    pub async fn script<T: FromRedisValue>(
        &self,
        kind: OpKind,
        inv: &ScriptInvocation<'_>,
    ) -> SharedResult<T> {
        self.stats.count(kind, 1);
        let mut cm = self.cm.clone();
        let r = inv.invoke_async(&mut cm).await;
        self.settle(kind.as_str(), r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_in_errors_has_no_password() {
        let c = Client::open("redis://lodge:hunter2@10.1.2.3:6380/2").unwrap();
        assert_eq!(redacted_url(&c), "redis://lodge@10.1.2.3:6380/2");
        let c = Client::open("redis://:hunter2@localhost").unwrap();
        assert_eq!(redacted_url(&c), "redis://localhost:6379/0");
    }
}
