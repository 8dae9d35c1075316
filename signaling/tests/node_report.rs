//! Cheap requests do not make the media thread build reports: `/metrics`, `/readyz`,
//! `/voice/stats` and `/quality/live` share one report built at most once per second, and a
//! user's live-quality sockets are bounded.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A live-quality socket that authenticated and got its first snapshot.
async fn live(n: &Node, token: &str) -> Result<Ws, (u16, String)> {
    let mut w = ws(&format!("ws://{}/api/v10/quality/live", n.http_addr())).await;
    send(&mut w, json!({ "token": token })).await;
    match next(&mut w).await {
        Frame::Json(v) => {
            assert_eq!(v["t"], "snapshot", "{v}");
            Ok(w)
        }
        Frame::Closed(c, r) => Err((c, r)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_share_at_most_one_report_per_second() {
    let n = node().await;
    let (_, token) = n.user("watcher").await;
    let sfu = n.run.as_ref().unwrap().state.sfu.clone();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(live(&n, &token).await.unwrap());
    }
    let before = sfu.reports_built();
    let t0 = Instant::now();
    let window = Duration::from_secs(3);
    let mut readers = Vec::new();
    for i in 0..8 {
        let http = n.http.clone();
        let base = n.base.clone();
        readers.push(tokio::spawn(async move {
            let mut served = 0u32;
            while t0.elapsed() < window {
                let path = if i % 2 == 0 { "/metrics" } else { "/readyz" };
                let r = http.get(format!("{base}{path}")).send().await.unwrap();
                assert_eq!(r.status(), 200, "{path}");
                served += 1;
            }
            served
        }));
    }
    // The live sockets keep ticking meanwhile; read what they send.
    let mut snapshots = 0;
    let end = tokio::time::Instant::now() + window;
    for w in &mut sockets {
        while let Ok(Frame::Json(v)) = tokio::time::timeout_at(end, next(w)).await {
            assert_eq!(v["t"], "snapshot");
            snapshots += 1;
        }
    }
    let mut served = 0;
    for r in readers {
        served += r.await.unwrap();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let built = sfu.reports_built() - before;
    assert!(
        served > 100,
        "only {served} requests served: the test proves nothing"
    );
    assert!(snapshots >= 3, "live sockets sent {snapshots} snapshots");
    assert!(
        built as f64 <= elapsed.ceil() + 1.0,
        "{built} reports built for {served} requests and {snapshots} snapshots in {elapsed:.1} s"
    );
}

#[tokio::test]
async fn a_users_fifth_live_socket_is_refused_naming_the_limit() {
    let n = node().await;
    let (_, token) = n.user("dashboards").await;
    let (_, other) = n.user("someone-else").await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(live(&n, &token).await.unwrap());
    }
    let Err((code, reason)) = live(&n, &token).await else {
        panic!("a fifth socket was accepted");
    };
    assert_eq!(code, 4008, "{reason}");
    assert!(reason.contains("at most 4"), "{reason}");
    // Another user is not affected, and a closed socket gives its place back.
    let _theirs = live(&n, &other).await.unwrap();
    open.pop().unwrap().close(None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match live(&n, &token).await {
            Ok(_) => break,
            Err((4008, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the freed place was not given back: {e:?}"),
        }
    }
}

#[tokio::test]
async fn readyz_asks_the_media_thread_for_nothing() {
    let n = node().await;
    let sfu = n.run.as_ref().unwrap().state.sfu.clone();
    let before = sfu.reports_built();
    for _ in 0..20 {
        let r = n
            .http
            .get(format!("{}/readyz", n.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // The telemetry sampler may have asked for one meanwhile; twenty probes did not.
    assert!(sfu.reports_built() - before <= 1);
}
