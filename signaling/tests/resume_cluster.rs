//! Cross-node Resume: a client whose gateway node died resumes on another node of the cluster
//! with every dispatch it missed, in order, none twice. Two nodes in this process on one Redis
//! and one fresh PostgreSQL database; node A runs on its own runtime, which is dropped without
//! any graceful step to kill it (it withdraws nothing, flushes nothing, says nothing).
//!
//! Needs `TEST_REDIS_URL=$(./scripts/redis.sh) TEST_POSTGRES_URL=$(./scripts/postgres.sh)`;
//! without them it prints a notice and passes.

mod common;

use std::time::Duration;

use common::{env, json, send, ws, Node, Ws};
use serde_json::{json, Value};

fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

async fn cluster_node(ip: &str, id: String, redis: String, db: String) -> Node {
    common::cluster_node(ip, id, redis, db, |_| {}).await
}

/// Post `content` in `channel` through `node`.
async fn say(node: &Node, token: &str, channel: &str, content: &str) {
    let (st, v) = node
        .req(
            "POST",
            &format!("/channels/{channel}/messages"),
            Some(token),
            Some(json!({ "content": content })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

/// Frames until a MESSAGE_CREATE with `content`; every frame is recorded.
async fn until_message(w: &mut Ws, content: &str, seen: &mut Vec<Value>) {
    loop {
        let v = json(w).await;
        if v["op"] != 0 {
            continue;
        }
        seen.push(v.clone());
        if v["t"] == "MESSAGE_CREATE" && v["d"]["content"] == content {
            return;
        }
    }
}

async fn resume(node: &Node, token: &str, session: &str, seq: u64) -> Ws {
    let mut w = ws(&node.gateway_url()).await;
    assert_eq!(json(&mut w).await["op"], 10);
    send(
        &mut w,
        json!({ "op": 6, "d": { "token": token, "session_id": session, "seq": seq } }),
    )
    .await;
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_node_died_resumes_on_another_with_nothing_missed() {
    let (Some(redis), Some(pg)) = (env("TEST_REDIS_URL"), env("TEST_POSTGRES_URL")) else {
        println!(
            "skipped (resume_cluster): needs TEST_REDIS_URL=$(./scripts/redis.sh) and \
             TEST_POSTGRES_URL=$(./scripts/postgres.sh)"
        );
        return;
    };
    let db = lodge_chat::store::testing::fresh_postgres(&pg).await;
    let run = suffix();

    // Node A on a runtime of its own: dropping that runtime kills A outright.
    let rt_a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (r, d) = (redis.clone(), db.clone());
    let a = rt_a
        .spawn(cluster_node("127.0.0.2", format!("a-{run}"), r, d))
        .await
        .unwrap();
    let b = cluster_node("127.0.0.3", format!("b-{run}"), redis, db).await;

    let (_, alice) = a.user("alice").await;
    let (_, bob) = a.user("bob").await;
    let (_, text, _) = a.guild(&alice).await;
    a.invite_and_join(&alice, &text, &bob).await;

    // Bob on A, with its messages coming through A and through B.
    let (mut w, ready) = common::gateway(&a, &bob).await;
    let sid = ready["session_id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    for i in 0..6 {
        let via = if i % 2 == 0 { &a } else { &b };
        let content = format!("before {i}");
        say(via, &alice, &text, &content).await;
        until_message(&mut w, &content, &mut seen).await;
    }
    let last = seen.last().unwrap()["s"].as_u64().unwrap();
    for (i, f) in seen.iter().enumerate().skip(1) {
        assert_eq!(
            f["s"].as_u64(),
            Some(seen[i - 1]["s"].as_u64().unwrap() + 1),
            "consecutive before the death"
        );
    }
    // Let A's log writer catch up with what it delivered (it batches off the delivery path),
    // then kill A: no shutdown, no withdrawal, no goodbye.
    tokio::time::sleep(Duration::from_millis(300)).await;
    rt_a.shutdown_background();
    drop(w);

    let mut meanwhile = Vec::new();
    for i in 0..5 {
        let content = format!("meanwhile {i}");
        say(&b, &alice, &text, &content).await;
        meanwhile.push(content);
    }

    // Another user's token, and a sequence number from before READY: op 9.
    let acked = last - 3;
    let mut w = resume(&b, &alice, &sid, acked).await;
    assert_eq!(json(&mut w).await["op"], 9, "another user's token");
    let mut w = resume(&b, &bob, &sid, 1).await;
    assert_eq!(json(&mut w).await["op"], 9, "older than the resume window");
    let mut w = resume(&b, &bob, &sid, last + 50).await;
    assert_eq!(json(&mut w).await["op"], 9, "more than was ever sent");

    // The real resume on B.
    let mut w = resume(&b, &bob, &sid, acked).await;
    let mut expect = acked + 1;
    let mut replayed = Vec::new();
    loop {
        let v = json(&mut w).await;
        assert_eq!(v["op"], 0, "{v}");
        assert_eq!(v["s"].as_u64(), Some(expect), "a gap or a repeat: {v}");
        expect += 1;
        if v["t"] == "RESUMED" {
            break;
        }
        replayed.push(v);
    }
    let mut on_b = replayed.clone();
    let (missed, after): (Vec<&Value>, Vec<&Value>) = replayed
        .iter()
        .partition(|v| v["s"].as_u64().unwrap() <= last);
    let was: Vec<&Value> = seen
        .iter()
        .filter(|v| v["s"].as_u64().unwrap() > acked)
        .collect();
    assert_eq!(
        missed, was,
        "the three the client missed, as it first got them"
    );
    let contents: Vec<&str> = after
        .iter()
        .filter(|v| v["t"] == "MESSAGE_CREATE")
        .map(|v| v["d"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents, meanwhile,
        "every message created meanwhile, in order"
    );

    // Live on B from here, with no repeat of what the catch-up read.
    say(&b, &alice, &text, "after").await;
    loop {
        let v = json(&mut w).await;
        assert_eq!(v["s"].as_u64(), Some(expect), "{v}");
        expect += 1;
        on_b.push(v.clone());
        if v["t"] == "MESSAGE_CREATE" {
            assert_eq!(v["d"]["content"], "after");
            break;
        }
    }

    // Dropped again, it resumes on B from B's own memory, including what B took over.
    drop(w);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // (RESUMED took a number but, as on one node, is not replayed.)
    let mut w = resume(&b, &bob, &sid, acked).await;
    let mut again = Vec::new();
    loop {
        let v = json(&mut w).await;
        if v["t"] == "RESUMED" {
            let before = again.last().map_or(0, |l: &Value| l["s"].as_u64().unwrap());
            assert_eq!(v["s"].as_u64(), Some(before + 1));
            break;
        }
        again.push(v);
    }
    // (Presences of the drop itself may follow.)
    assert_eq!(
        again[..on_b.len()],
        on_b[..],
        "the same frames again, then RESUMED"
    );
    std::mem::forget(a); // its runtime is gone; its handles are inert
}

/// A client that reconnects to another node while its node is alive moves there; the old
/// node drops its copy (and a later resume on the old node takes it back from Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_between_live_nodes_and_back() {
    let (Some(redis), Some(pg)) = (env("TEST_REDIS_URL"), env("TEST_POSTGRES_URL")) else {
        println!("skipped (resume_cluster): needs TEST_REDIS_URL and TEST_POSTGRES_URL");
        return;
    };
    let db = lodge_chat::store::testing::fresh_postgres(&pg).await;
    let run = suffix();
    let a = cluster_node("127.0.0.4", format!("a-{run}"), redis.clone(), db.clone()).await;
    let b = cluster_node("127.0.0.5", format!("b-{run}"), redis, db).await;
    let (_, alice) = a.user("alice").await;
    let (_, text, _) = a.guild(&alice).await;
    let (mut w, ready) = common::gateway(&a, &alice).await;
    let sid = ready["session_id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    say(&b, &alice, &text, "one").await;
    until_message(&mut w, "one", &mut seen).await;
    let last = seen.last().unwrap()["s"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // To B while A still holds it: A's connection is closed, B carries on.
    let mut wb = resume(&b, &alice, &sid, last).await;
    let last = resumed(&mut wb, last).await;
    let (code, _) = common::closed(&mut w).await;
    assert_eq!(code, 4000, "A dropped its copy");
    say(&a, &alice, &text, "two").await;
    let last = consecutive_until(&mut wb, "two", last).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // And back to A.
    drop(wb);
    let mut wa = resume(&a, &alice, &sid, last).await;
    let last = resumed(&mut wa, last).await;
    say(&b, &alice, &text, "three").await;
    consecutive_until(&mut wa, "three", last).await;
}

/// Frames numbered on from `acked` up to RESUMED (what came after `acked`, say presences);
/// returns RESUMED's number.
async fn resumed(w: &mut Ws, acked: u64) -> u64 {
    let mut expect = acked + 1;
    loop {
        let v = json(w).await;
        assert_eq!(v["s"].as_u64(), Some(expect), "{v}");
        assert_ne!(
            v["t"], "MESSAGE_CREATE",
            "nothing the client acknowledged: {v}"
        );
        if v["t"] == "RESUMED" {
            return expect;
        }
        expect += 1;
    }
}

/// Frames numbered on from `after` (presences may come between) until the one message
/// `content`; returns its number.
async fn consecutive_until(w: &mut Ws, content: &str, after: u64) -> u64 {
    let mut seen = Vec::new();
    until_message(w, content, &mut seen).await;
    for (i, f) in seen.iter().enumerate() {
        assert_eq!(f["s"].as_u64(), Some(after + 1 + i as u64), "{seen:?}");
    }
    let messages = seen.iter().filter(|f| f["t"] == "MESSAGE_CREATE").count();
    assert_eq!(messages, 1, "no message twice: {seen:?}");
    seen.last().unwrap()["s"].as_u64().unwrap()
}
