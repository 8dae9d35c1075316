//! The voice side under abuse: a voice client that stops reading is closed instead of growing
//! the node's memory.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

struct Member {
    id: String,
    token: String,
    gw: Ws,
    session: String,
}

async fn member(n: &Node, name: &str) -> Member {
    let (id, token) = n.user(name).await;
    let (gw, ready) = gateway(n, &token).await;
    Member {
        id,
        token,
        session: ready["session_id"].as_str().unwrap().to_string(),
        gw,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_client_that_stops_reading_is_closed() {
    let n = node().await;
    let mut a = member(&n, "alice").await;
    let (g, _, voice) = n.guild(&a.token).await;
    let (t, ep) = voice_join(&mut a.gw, &g, &voice, false).await;
    let (_silent, _) = voice_identify(&ep, &g, &a.id, &a.session, &t)
        .await
        .unwrap();
    // From here the client reads nothing. Others' events for its channel keep coming: 48 MB
    // of them, far more than the loopback socket buffers hold.
    let state = n.run.as_ref().unwrap().state.clone();
    let (gid, cid) = (g.parse::<u64>().unwrap(), voice.parse::<u64>().unwrap());
    let pad = "x".repeat(16 * 1024);
    for i in 0..3_000u32 {
        lodge_signaling::voice::service::notify_others(
            &state,
            gid,
            cid,
            0,
            json!({ "op": 13, "d": { "user_id": i.to_string(), "pad": pad } }),
        );
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Closed well within the heartbeat timeout (27.5 s): by the outbox bound or the write
    // deadline, whichever comes first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !state.voice().conns.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the connection of a client that reads nothing is still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state.voice().slow_consumers_closed, 1);
    // The voice state went with it, and the guild was told.
    let vs = dispatch(&mut a.gw, "VOICE_STATE_UPDATE").await;
    let vs = if vs["channel_id"].is_null() {
        vs
    } else {
        dispatch(&mut a.gw, "VOICE_STATE_UPDATE").await
    };
    assert!(vs["channel_id"].is_null(), "{vs}");
    let metrics = n
        .http
        .get(format!("{}/metrics", n.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("lodge_voice_slow_consumers_closed_total 1"),
        "{metrics}"
    );
}
