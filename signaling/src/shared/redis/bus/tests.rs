//! The bus transport against a real redis-server (`TEST_REDIS_URL`), several nodes in one
//! process, each with its own connections.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use super::super::test_support::{test_url, unique_prefix};
use super::super::RedisShared;
use super::*;

const WAIT: Duration = Duration::from_secs(5);

async fn node(url: &str, prefix: &str, id: &str) -> (RedisShared, RedisBusRx) {
    RedisShared::connect_with_prefix(url, NodeId(id.into()), prefix)
        .await
        .expect("connect")
}

async fn next(rx: &mut RedisBusRx) -> BusIncoming {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a bus message within 5 s")
        .expect("the bus is open")
}

/// Nothing arrives for a while.
async fn quiet(rx: &mut RedisBusRx) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.try_recv(), None);
}

#[test]
fn stream_ids_parse_and_order() {
    let id: StreamId = "1700000000000-12".parse().unwrap();
    assert_eq!(
        id,
        StreamId {
            ms: 1_700_000_000_000,
            seq: 12
        }
    );
    assert_eq!(id.to_string(), "1700000000000-12");
    assert!(id < "1700000000001-0".parse().unwrap());
    for bad in ["", "1", "1-", "-1", "a-1", "1-2-3"] {
        assert!(bad.parse::<StreamId>().is_err(), "{bad:?}");
    }
    assert_eq!(
        parse_dispatch(b"5-1 {\"t\":1} x"),
        Some((StreamId { ms: 5, seq: 1 }, "{\"t\":1} x".to_string()))
    );
    assert_eq!(parse_dispatch(b"nospace"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_publishers_one_order_and_only_watched_routes() {
    let Some(url) = test_url("bus order") else {
        return;
    };
    let prefix = unique_prefix("bus order");
    let (a, _arx) = node(&url, &prefix, "a").await;
    let (b, mut brx) = node(&url, &prefix, "b").await;
    let (c, _crx) = node(&url, &prefix, "c").await;
    b.bus.watch_guild(GuildId(7), true);
    b.bus.synced().await;

    let publishers = [
        ("a", a.bus.clone()),
        ("b", b.bus.clone()),
        ("c", c.bus.clone()),
    ];
    let tasks = publishers.map(|(name, bus)| {
        tokio::spawn(async move {
            for i in 0..100 {
                bus.publish_raw(Route::Guild(GuildId(7)), format!("{name}:{i}"))
                    .await
                    .unwrap();
                if name == "a" {
                    // Interleaved with guild 7: a guild B does not watch.
                    bus.publish_raw(Route::Guild(GuildId(8)), format!("unwatched:{i}"))
                        .await
                        .unwrap();
                }
            }
        })
    });
    for t in tasks {
        t.await.unwrap();
    }

    let mut got = Vec::new();
    while got.len() < 300 {
        match next(&mut brx).await {
            BusIncoming::Dispatch { route, id, payload } => {
                assert_eq!(route, Route::Guild(GuildId(7)), "{payload}");
                got.push((id, payload));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    quiet(&mut brx).await;

    let stream = b
        .bus
        .read_after(Route::Guild(GuildId(7)), StreamId::ZERO, 1000)
        .await
        .unwrap();
    assert_eq!(got, stream, "pub/sub order is the stream's order");
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ids grow");
    let mut last: HashMap<&str, i32> = HashMap::new();
    for (_, p) in &got {
        let (name, i) = p.split_once(':').unwrap();
        let i: i32 = i.parse().unwrap();
        let prev = last.insert(name, i).unwrap_or(-1);
        assert_eq!(i, prev + 1, "{name}'s publishes arrive in its order");
    }
    assert_eq!(last.len(), 3);
    assert!(b.stats.published_bytes() > 0);
    assert!(a.stats.ops(OpKind::Publish) == 200);
}

#[tokio::test]
async fn messages_to_a_node_reach_only_that_node() {
    let Some(url) = test_url("bus to_node") else {
        return;
    };
    let prefix = unique_prefix("bus to_node");
    let (a, mut arx) = node(&url, &prefix, "a").await;
    let (_b, mut brx) = node(&url, &prefix, "b").await;
    let (_c, mut crx) = node(&url, &prefix, "c").await;
    assert!(a
        .bus
        .to_node(&NodeId("b".into()), "hello b".into())
        .await
        .unwrap());
    assert_eq!(next(&mut brx).await, BusIncoming::Node("hello b".into()));
    assert!(
        !a.bus
            .to_node(&NodeId("gone".into()), "x".into())
            .await
            .unwrap(),
        "nobody listens for a node that is not connected"
    );
    assert!(a
        .bus
        .to_node(&NodeId("a".into()), "self".into())
        .await
        .unwrap());
    assert_eq!(next(&mut arx).await, BusIncoming::Node("self".into()));
    quiet(&mut crx).await;
    quiet(&mut brx).await;
}

#[tokio::test]
async fn watches_are_counted() {
    let Some(url) = test_url("bus watch count") else {
        return;
    };
    let prefix = unique_prefix("bus watch count");
    let (a, _arx) = node(&url, &prefix, "a").await;
    let (b, mut brx) = node(&url, &prefix, "b").await;
    let user = Route::User(UserId(42));
    b.bus.watch_user(UserId(42), true);
    b.bus.watch_user(UserId(42), true);
    b.bus.watch_user(UserId(42), false);
    b.bus.synced().await;
    assert_eq!(b.bus.watched(), 1);
    a.bus.publish_raw(user, "one".into()).await.unwrap();
    assert!(
        matches!(next(&mut brx).await, BusIncoming::Dispatch { route, payload, .. }
            if route == user && payload == "one"),
        "still watched after one of two unwatches"
    );

    b.bus.watch_user(UserId(42), false);
    b.bus.watch_user(UserId(42), false); // one too many: ignored
    b.bus.synced().await;
    assert_eq!(b.bus.watched(), 0);
    a.bus.publish_raw(user, "two".into()).await.unwrap();
    quiet(&mut brx).await;

    b.bus.watch_user(UserId(42), true);
    b.bus.synced().await;
    a.bus.publish_raw(user, "three".into()).await.unwrap();
    assert!(
        matches!(next(&mut brx).await, BusIncoming::Dispatch { payload, .. } if payload == "three")
    );
}

#[tokio::test]
async fn a_route_is_read_back_after_a_position() {
    let Some(url) = test_url("bus read_after") else {
        return;
    };
    let prefix = unique_prefix("bus read_after");
    let (a, _arx) = node(&url, &prefix, "a").await;
    let g = Route::Guild(GuildId(3));
    assert_eq!(a.bus.oldest(g).await.unwrap(), None);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(a.bus.publish_raw(g, format!("m{i}")).await.unwrap());
    }
    assert_eq!(a.bus.oldest(g).await.unwrap(), Some(ids[0]));
    let page = a.bus.read_after(g, ids[1], 2).await.unwrap();
    assert_eq!(page, vec![(ids[2], "m2".into()), (ids[3], "m3".into())]);
    assert!(a.bus.read_after(g, ids[4], 10).await.unwrap().is_empty());
    assert!(a.stats.ops(OpKind::StreamRead) >= 4);
}

/// A redis-server of this test's own (killing pub/sub clients or restarting the shared one
/// would disturb the tests running beside it), stopped when dropped.
struct OwnRedis {
    port: u16,
}

impl OwnRedis {
    fn script(&self, arg: &str) -> String {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis.sh"))
            .arg(arg)
            .env("REDIS_PORT", self.port.to_string())
            .output()
            .expect("scripts/redis.sh runs");
        assert!(out.status.success(), "redis.sh {arg}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
    fn cli(&self, args: &[&str]) {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.script("stop");
    }
}

async fn dispatch(rx: &mut RedisBusRx) -> (StreamId, String) {
    match next(rx).await {
        BusIncoming::Dispatch { id, payload, .. } => (id, payload),
        other => panic!("expected a dispatch, got {other:?}"),
    }
}

/// Publish, retrying while the command connection reconnects.
async fn publish_eventually(bus: &RedisBus, route: Route, payload: &str) -> StreamId {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match bus.publish_raw(route, payload.into()).await {
            Ok(id) => return id,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%e, "retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no publish within {WAIT:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_survives_a_killed_connection_and_a_restart() {
    if test_url("bus reconnect").is_none() {
        return;
    }
    let server = OwnRedis { port: 56391 };
    server.script("stop"); // a leftover of an interrupted run
    let url = server.script("start");
    let prefix = unique_prefix("bus reconnect");
    let (a, _arx) = node(&url, &prefix, "a").await;
    let (b, mut brx) = node(&url, &prefix, "b").await;
    let g = Route::Guild(GuildId(7));
    b.bus.watch_guild(GuildId(7), true);
    b.bus.synced().await;
    a.bus.publish_raw(g, "before".into()).await.unwrap();
    let (seen, p) = dispatch(&mut brx).await;
    assert_eq!(p, "before");

    // The server drops every pub/sub connection.
    server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(next(&mut brx).await, BusIncoming::Lost);
    assert!(!b.stats.up());
    // Published while B is away (it waits 100 ms before reconnecting).
    let gap = a.bus.publish_raw(g, "gap".into()).await.unwrap();
    assert_eq!(next(&mut brx).await, BusIncoming::Reconnected);
    assert!(b.stats.up());
    let missed = b.bus.read_after(g, seen, 100).await.unwrap();
    assert_eq!(
        missed,
        vec![(gap, "gap".into())],
        "the gap is read back from the stream"
    );
    a.bus.publish_raw(g, "after kill".into()).await.unwrap();
    let mut after = dispatch(&mut brx).await.1;
    if after == "gap" {
        // Only if the publish above took longer than B's first reconnection attempt.
        after = dispatch(&mut brx).await.1;
    }
    assert_eq!(after, "after kill");

    // The server goes away and comes back (empty: no persistence, no scripts loaded).
    server.script("stop");
    assert_eq!(next(&mut brx).await, BusIncoming::Lost);
    let err = a.bus.publish_raw(g, "lost".into()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SharedError::Unavailable(_)), "{msg}");
    assert!(msg.contains("Redis at redis://127.0.0.1:56391/0"), "{msg}");
    let mut metrics = String::new();
    a.stats.write_metrics(&mut metrics);
    assert!(metrics.contains("lodge_redis_up 0"), "{metrics}");

    assert_eq!(server.script("start"), url);
    assert_eq!(next(&mut brx).await, BusIncoming::Reconnected);
    publish_eventually(&a.bus, g, "after restart").await;
    assert_eq!(dispatch(&mut brx).await.1, "after restart");
    assert!(a.stats.up());
    assert!(a
        .bus
        .to_node(&NodeId("b".into()), "inbox too".into())
        .await
        .unwrap());
    assert_eq!(next(&mut brx).await, BusIncoming::Node("inbox too".into()));
}
