//! The gateway's limits, tried as an abuser would: identify loops, sessions per user,
//! connections that never identify or stop heartbeating, unsupported versions, privileged
//! intents, member requests, and token revocation.

mod common;

use std::time::{Duration, Instant};

use common::{closed, dispatch, gateway, json, send, ws, Frame};
use futures_util::StreamExt;
use lodge_ids::UserId;
use serde_json::{json, Value};

async fn identify(n: &common::Node, token: &str, intents: u64) -> common::Ws {
    let mut w = ws(&n.gateway_url()).await;
    assert_eq!(json(&mut w).await["op"], 10);
    send(
        &mut w,
        json!({ "op": 2, "d": { "token": token, "intents": intents, "properties": {} } }),
    )
    .await;
    w
}

/// The first frame after an Identify: READY's op 0, op 9, or a close.
async fn identify_outcome(n: &common::Node, token: &str) -> (Option<common::Ws>, String) {
    let mut w = identify(n, token, 513).await;
    match common::next(&mut w).await {
        Frame::Json(v) if v["t"] == "READY" => (Some(w), "ready".into()),
        Frame::Json(v) if v["op"] == 9 => (Some(w), "invalid session".into()),
        Frame::Json(v) => panic!("unexpected {v}"),
        Frame::Closed(c, r) => (None, format!("{c} {r}")),
    }
}

fn state(n: &common::Node) -> &lodge_signaling::AppState {
    &n.run.as_ref().unwrap().state
}

#[tokio::test]
async fn session_start_limit_is_enforced_and_reported() {
    let n = common::node_with(|a| {
        a.session_start_total = Some(3);
        a.session_start_max_concurrency = Some(2);
    })
    .await;
    let (_, alice) = n.user("alice").await;
    let (_, bob) = n.user("bob").await;
    assert_eq!(identify_outcome(&n, &alice).await.1, "ready");
    assert_eq!(identify_outcome(&n, &alice).await.1, "ready");
    assert_eq!(
        identify_outcome(&n, &alice).await.1,
        "invalid session",
        "a third identify within 5 s is over max_concurrency 2"
    );
    let (st, v) = n.req("GET", "/gateway/bot", Some(&alice), None).await;
    assert_eq!(st, 200);
    let l = &v["session_start_limit"];
    assert_eq!(
        (
            l["total"].as_u64(),
            l["remaining"].as_u64(),
            l["max_concurrency"].as_u64()
        ),
        (Some(3), Some(1), Some(2)),
        "the refused identify used nothing: {v}"
    );
    assert!(l["reset_after"].as_u64().unwrap() > 86_000_000);
    assert_eq!(identify_outcome(&n, &bob).await.1, "ready", "per user");
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    assert_eq!(identify_outcome(&n, &alice).await.1, "ready");
    let (_, outcome) = identify_outcome(&n, &alice).await;
    assert!(
        outcome.starts_with("4008") && outcome.contains("session_start_limit"),
        "the day's total is used up: {outcome}"
    );
}

#[tokio::test]
async fn an_identify_loop_holds_at_most_the_per_user_cap() {
    let n = common::node_with(|a| {
        a.max_sessions_per_user = Some(3);
        a.session_start_max_concurrency = Some(1000);
    })
    .await;
    let (alice_id, alice) = n.user("alice").await;
    let uid: u64 = alice_id.parse().unwrap();
    // Identify and drop, 40 times: each left a resumable session before.
    let mut first_sid = None;
    for _ in 0..40 {
        let (w, ready) = gateway(&n, &alice).await;
        first_sid.get_or_insert(ready["session_id"].as_str().unwrap().to_string());
        drop(w);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = state(&n)
        .sessions
        .of_user(UserId(uid))
        .iter()
        .filter(|s| !s.lock().unwrap().ended)
        .count();
    assert!(held <= 3, "{held} sessions held");
    // The first session was evicted: it cannot be resumed.
    let mut w = ws(&n.gateway_url()).await;
    json(&mut w).await;
    send(
        &mut w,
        json!({ "op": 6, "d": { "token": alice, "session_id": first_sid.unwrap(), "seq": 2 } }),
    )
    .await;
    assert_eq!(json(&mut w).await["op"], 9);
    // Three live connections fill the cap; a fourth is refused, naming the limit.
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(gateway(&n, &alice).await.0);
    }
    let (_, outcome) = identify_outcome(&n, &alice).await;
    assert!(
        outcome.starts_with("4008") && outcome.contains("max_sessions_per_user"),
        "{outcome}"
    );
}

#[tokio::test]
async fn silent_connections_are_closed() {
    let n = common::node_with(|a| {
        a.identify_timeout_secs = Some(1);
        a.heartbeat_interval_ms = Some(300);
    })
    .await;
    let (_, alice) = n.user("alice").await;
    // Never identifies (heartbeats alone do not count).
    let mut w = ws(&n.gateway_url()).await;
    let hello = json(&mut w).await;
    assert_eq!(hello["d"]["heartbeat_interval"], 300);
    let t0 = Instant::now();
    let (code, reason) = loop {
        send(&mut w, json!({ "op": 1, "d": null })).await;
        match common::next(&mut w).await {
            Frame::Closed(c, r) => break (c, r),
            Frame::Json(ack) => assert_eq!(ack["op"], 11),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code, 4003, "{reason}");
    assert!(reason.contains("identified within 1 s"), "{reason}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    // Identified, then stops heartbeating: a zombie.
    let (mut w, _) = gateway(&n, &alice).await;
    let t0 = Instant::now();
    assert_eq!(closed(&mut w).await.0, 4009);
    assert!(t0.elapsed() < Duration::from_secs(2));
    // Before Identify only Heartbeat, Identify and Resume are taken.
    for op in [3, 4, 8] {
        let mut w = ws(&n.gateway_url()).await;
        json(&mut w).await;
        send(
            &mut w,
            json!({ "op": op, "d": { "guild_id": "1", "query": "", "limit": 0 } }),
        )
        .await;
        assert_eq!(closed(&mut w).await.0, 4003, "op {op} before identify");
    }
}

/// A client that floods reads the close code that names its fault: the server reads what the
/// client sent before and waits for its close frame, instead of closing with unread data,
/// which resets the connection, and a client that reads after that reset sees 1006 (as the
/// abuse suite once did; this test read 1006 on the old close). Then the server ends the
/// connection once the handshake is done.
#[tokio::test]
async fn a_flooding_client_reads_4008_not_a_reset() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::{Error, Message};
    let n = common::node().await;
    let (_, alice) = n.user("alice").await;
    let (mut w, _) = gateway(&n, &alice).await;
    // 80 payloads beyond the 120 allowed stay unread on the server when it stops reading.
    for _ in 0..200 {
        w.feed(Message::Text(
            json!({ "op": 1, "d": null }).to_string().into(),
        ))
        .await
        .unwrap();
    }
    w.flush().await.unwrap();
    // Long enough for the server to have closed, and for a reset to have arrived.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, reason) = closed(&mut w).await;
    assert_eq!(code, 4008, "{reason}");
    assert!(reason.contains("120 payloads"), "{reason}");
    // Our close reply goes out with this read; the server then ends the connection (tungstenite
    // reports a reset after a completed close as a plain close too: the 4008 above is the check
    // that the reset is gone).
    let end = tokio::time::timeout(Duration::from_secs(3), w.next())
        .await
        .expect("the server ends the connection after the handshake");
    assert!(
        matches!(
            end,
            None | Some(Err(Error::ConnectionClosed | Error::AlreadyClosed))
        ),
        "the connection ended with {end:?}"
    );
}

#[tokio::test]
async fn versions_encodings_and_the_connection_cap() {
    let n = common::node_with(|a| a.max_gateway_connections = Some(2)).await;
    let addr = n.http_addr();
    // A refused connection holds its slot until the closing handshake ends: reading on sends
    // our close reply and waits for the server to hang up.
    let mut w = ws(&format!("ws://{addr}/gateway?v=6&encoding=json")).await;
    assert_eq!(closed(&mut w).await.0, 4012, "unsupported version");
    let _ = w.next().await;
    let mut w = ws(&format!("ws://{addr}/gateway?v=10&encoding=etf")).await;
    assert_eq!(closed(&mut w).await.0, 4002, "unsupported encoding");
    let _ = w.next().await;
    let mut a = ws(&n.gateway_url()).await;
    let mut b = ws(&n.gateway_url()).await;
    json(&mut a).await;
    json(&mut b).await;
    match tokio_tungstenite::connect_async(n.gateway_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 503);
            let body =
                String::from_utf8_lossy(res.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("max_gateway_connections"), "{body}");
        }
        other => panic!(
            "a third connection must be refused: {:?}",
            other.map(|_| ())
        ),
    }
    drop(a);
    // The slot frees when a connection ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if tokio_tungstenite::connect_async(n.gateway_url())
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn privileged_intents_can_be_disallowed_for_bots() {
    let n = common::node_with(|a| a.bot_privileged_intents = Some(false)).await;
    let (st, v) = n
        .req(
            "POST",
            "/auth/register",
            None,
            Some(json!({ "username": "robo", "password": "password-123", "bot": true })),
        )
        .await;
    assert_eq!(st, 201);
    let bot = v["token"].as_str().unwrap().to_string();
    let mut w = identify(&n, &bot, 1 | 2).await;
    let (code, reason) = closed(&mut w).await;
    assert_eq!(code, 4014, "{reason}");
    let mut w = identify(&n, &bot, 1 | 512 | 32768).await;
    assert_eq!(dispatch(&mut w, "READY").await["user"]["bot"], true);
    // People are not bots: the setting does not apply to them.
    let (_, alice) = n.user("alice").await;
    let mut w = identify(&n, &alice, 1 | 2 | 256).await;
    dispatch(&mut w, "READY").await;
}

/// Next frame that is GUILD_MEMBERS_CHUNK or RATE_LIMITED.
async fn chunk(w: &mut common::Ws) -> Value {
    loop {
        let v = json(w).await;
        if v["t"] == "GUILD_MEMBERS_CHUNK" || v["t"] == "RATE_LIMITED" {
            return v;
        }
    }
}

#[tokio::test]
async fn request_guild_members_answers_in_chunks() {
    let n = common::node().await;
    let (alice_id, alice) = n.user("alice").await;
    let (bob_id, bob) = n.user("bob").await;
    let (carol_id, carol) = n.user("carol").await;
    let (g, text, _) = n.guild(&alice).await;
    n.invite_and_join(&alice, &text, &bob).await;
    n.invite_and_join(&alice, &text, &carol).await;
    let (mut w, _) = gateway(&n, &bob).await;

    send(
        &mut w,
        json!({ "op": 8, "d": { "guild_id": g, "query": "CA", "limit": 10, "nonce": "q1" } }),
    )
    .await;
    let c = chunk(&mut w).await;
    let d = &c["d"];
    assert_eq!(
        (d["chunk_index"].as_u64(), d["chunk_count"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(d["nonce"], "q1");
    let ids: Vec<&str> = d["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [carol_id.as_str()], "case-insensitive prefix");

    send(&mut w, json!({ "op": 8, "d": { "guild_id": g, "user_ids": [alice_id, "999"], "presences": true } })).await;
    let d = chunk(&mut w).await["d"].clone();
    assert_eq!(
        d["members"][0]["user"]["id"].as_str(),
        Some(alice_id.as_str())
    );
    assert_eq!(d["not_found"], json!(["999"]));
    assert!(d["presences"].is_array());

    send(
        &mut w,
        json!({ "op": 8, "d": { "guild_id": g, "query": "", "limit": 0 } }),
    )
    .await;
    let d = chunk(&mut w).await["d"].clone();
    let mut all: Vec<String> = d["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"]["id"].as_str().unwrap().to_string())
        .collect();
    all.sort();
    let mut want = vec![alice_id.clone(), bob_id.clone(), carol_id.clone()];
    want.sort();
    assert_eq!(all, want, "everyone");

    send(
        &mut w,
        json!({ "op": 8, "d": { "guild_id": g, "query": "", "limit": 0, "nonce": "again" } }),
    )
    .await;
    let r = chunk(&mut w).await;
    assert_eq!(r["t"], "RATE_LIMITED", "{r}");
    assert_eq!(
        (r["d"]["opcode"].as_u64(), r["d"]["meta"]["nonce"].as_str()),
        (Some(8), Some("again"))
    );
    assert!(r["d"]["retry_after"].as_f64().unwrap() > 25.0);

    // Listing without a query needs GUILD_MEMBERS.
    let mut w2 = identify(&n, &carol, 1 | 512).await;
    dispatch(&mut w2, "READY").await;
    send(
        &mut w2,
        json!({ "op": 8, "d": { "guild_id": g, "query": "", "limit": 0 } }),
    )
    .await;
    assert_eq!(closed(&mut w2).await.0, 4014);
    // A guild the session is not in gets nothing; a heartbeat ACK comes next.
    send(
        &mut w,
        json!({ "op": 8, "d": { "guild_id": "12345", "query": "a", "limit": 1 } }),
    )
    .await;
    send(&mut w, json!({ "op": 1, "d": null })).await;
    loop {
        let v = json(&mut w).await;
        assert_ne!(v["t"], "GUILD_MEMBERS_CHUNK", "{v}");
        if v["op"] == 11 {
            break;
        }
    }
}

async fn login(n: &common::Node, name: &str) -> String {
    let (st, v) = n
        .req(
            "POST",
            "/auth/login",
            None,
            Some(json!({ "username": name, "password": "password-123" })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn revoking_a_token_ends_its_sessions_and_their_voice() {
    let n = common::node().await;
    let (_, first) = n.user("alice").await;
    let second = login(&n, "alice").await;
    let (g, _, voice) = n.guild(&first).await;
    let (mut wa, _) = gateway(&n, &first).await;
    let (mut wb, _) = gateway(&n, &second).await;
    let mut live = ws(&format!("ws://{}/api/v10/quality/live", n.http_addr())).await;
    send(&mut live, json!({ "token": first })).await;
    assert!(
        json(&mut live).await["t"] == "snapshot",
        "the live view starts"
    );
    common::voice_join(&mut wa, &g, &voice, false).await;
    let (_, vs) = n
        .req(
            "GET",
            &format!("/guilds/{g}/voice-states"),
            Some(&second),
            None,
        )
        .await;
    assert_eq!(vs.as_array().unwrap().len(), 1, "{vs}");

    let (st, _) = n.req("POST", "/auth/logout", Some(&first), None).await;
    assert_eq!(st, 204);
    let (code, reason) = closed(&mut wa).await;
    assert_eq!(code, 4004, "{reason}");
    assert_eq!(
        closed(&mut live).await.0,
        4004,
        "the live-quality socket too"
    );
    let (_, vs) = n
        .req(
            "GET",
            &format!("/guilds/{g}/voice-states"),
            Some(&second),
            None,
        )
        .await;
    assert_eq!(vs, json!([]), "the revoked session's voice ended");
    // The other token's session lives on.
    send(&mut wb, json!({ "op": 1, "d": null })).await;
    loop {
        if json(&mut wb).await["op"] == 11 {
            break;
        }
    }
    let third = login(&n, "alice").await;
    let (st, _) = n.req("POST", "/auth/logout-all", Some(&third), None).await;
    assert_eq!(st, 204);
    assert_eq!(closed(&mut wb).await.0, 4004);
    for t in [&first, &second, &third] {
        assert_eq!(n.req("GET", "/users/@me", Some(t), None).await.0, 401);
    }
}
