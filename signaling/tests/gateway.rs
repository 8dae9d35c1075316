//! The gateway through a real WebSocket: Hello, Identify, READY/GUILD_CREATE, heartbeats, close
//! codes, dispatch filtering.

mod common;

use common::{closed, dispatch, gateway, json, send, ws};
use serde_json::json;

#[tokio::test]
async fn hello_identify_ready_guild_create_heartbeat() {
    let n = common::node().await;
    let (alice_id, alice) = n.user("alice").await;
    let (g, _text, voice) = n.guild(&alice).await;

    let mut w = ws(&n.gateway_url()).await;
    let hello = json(&mut w).await;
    assert_eq!(hello["op"], 10);
    assert!(hello["d"]["heartbeat_interval"].as_u64().unwrap() > 1000);
    send(&mut w, json!({ "op": 1, "d": null })).await;
    assert_eq!(json(&mut w).await["op"], 11);
    send(&mut w, json!({ "op": 2, "d": { "token": format!("Bot {alice}"), "intents": 513, "properties": {}, "shard": [0, 1] } })).await;
    let ready = json(&mut w).await;
    assert_eq!(
        (
            ready["op"].as_u64(),
            ready["t"].as_str(),
            ready["s"].as_u64()
        ),
        (Some(0), Some("READY"), Some(1))
    );
    let d = &ready["d"];
    assert_eq!(d["v"], 10);
    assert_eq!(d["user"]["id"].as_str().unwrap(), alice_id);
    assert_eq!(d["guilds"], json!([{ "id": g, "unavailable": true }]));
    assert_eq!(d["shard"], json!([0, 1]));
    assert!(d["session_id"].as_str().unwrap().len() >= 16);
    assert_eq!(
        d["resume_gateway_url"].as_str().unwrap(),
        format!("ws://{}/gateway", n.http_addr())
    );
    let gc = json(&mut w).await;
    assert_eq!(
        (gc["t"].as_str(), gc["s"].as_u64()),
        (Some("GUILD_CREATE"), Some(2))
    );
    let gd = &gc["d"];
    assert_eq!(gd["unavailable"], false);
    assert_eq!(gd["channels"].as_array().unwrap().len(), 2);
    assert!(gd["channels"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == voice.as_str() && c["type"] == 2));
    assert_eq!(gd["roles"][0]["name"], "@everyone");
    assert_eq!(gd["members"][0]["user"]["id"].as_str().unwrap(), alice_id);
    assert_eq!(gd["voice_states"], json!([]));
}

#[tokio::test]
async fn close_codes() {
    let n = common::node().await;
    let (_, alice) = n.user("alice").await;
    let url = n.gateway_url();

    let mut w = ws(&url).await;
    json(&mut w).await;
    send(
        &mut w,
        json!({ "op": 2, "d": { "token": "nope", "intents": 0, "properties": {} } }),
    )
    .await;
    assert_eq!(closed(&mut w).await.0, 4004, "bad token");

    let mut w = ws(&url).await;
    json(&mut w).await;
    send(&mut w, json!({ "op": 4, "d": {} })).await;
    assert_eq!(closed(&mut w).await.0, 4003, "op before identify");

    let mut w = ws(&url).await;
    json(&mut w).await;
    w.send_text("{not json").await;
    assert_eq!(closed(&mut w).await.0, 4002, "invalid JSON");

    let mut w = ws(&url).await;
    json(&mut w).await;
    send(&mut w, json!({ "op": 1, "d": "x".repeat(5000) })).await;
    let (code, reason) = closed(&mut w).await;
    assert_eq!(code, 4002, "oversized");
    assert!(reason.contains("4096"));

    let (mut w, _) = gateway(&n, &alice).await;
    send(
        &mut w,
        json!({ "op": 2, "d": { "token": alice, "properties": {} } }),
    )
    .await;
    assert_eq!(closed(&mut w).await.0, 4005, "identify twice");

    let (mut w, _) = gateway(&n, &alice).await;
    send(&mut w, json!({ "op": 99, "d": null })).await;
    assert_eq!(closed(&mut w).await.0, 4001, "unknown opcode");

    let mut w = ws(&url).await;
    json(&mut w).await;
    send(
        &mut w,
        json!({ "op": 2, "d": { "token": alice, "properties": {}, "shard": [2, 1] } }),
    )
    .await;
    assert_eq!(closed(&mut w).await.0, 4010, "invalid shard");

    // Rate limit: 120 payloads per minute.
    let (mut w, _) = gateway(&n, &alice).await;
    for _ in 0..125 {
        send(&mut w, json!({ "op": 1, "d": null })).await;
    }
    assert_eq!(closed(&mut w).await.0, 4008, "rate limited");

    // Resume is not available yet: op 9 false.
    let mut w = ws(&url).await;
    json(&mut w).await;
    send(
        &mut w,
        json!({ "op": 6, "d": { "token": alice, "session_id": "x", "seq": 1 } }),
    )
    .await;
    let v = json(&mut w).await;
    assert_eq!((v["op"].as_u64(), v["d"].as_bool()), (Some(9), Some(false)));
}

trait SendText {
    async fn send_text(&mut self, t: &str);
}

impl SendText for common::Ws {
    async fn send_text(&mut self, t: &str) {
        use futures_util::SinkExt;
        self.send(tokio_tungstenite::tungstenite::Message::Text(
            t.to_string().into(),
        ))
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn dispatches_follow_membership_and_view_channel() {
    let n = common::node().await;
    let (bob_id, bob) = n.user("bob").await;
    let (_, alice) = n.user("alice").await;
    let (g, text, _) = n.guild(&alice).await;
    let (mut wa, _) = gateway(&n, &alice).await;
    let (mut wb, ready) = gateway(&n, &bob).await;
    assert_eq!(ready["guilds"], json!([]));

    n.invite_and_join(&alice, &text, &bob).await;
    let gc = dispatch(&mut wb, "GUILD_CREATE").await;
    assert_eq!(gc["id"].as_str().unwrap(), g);
    let add = dispatch(&mut wa, "GUILD_MEMBER_ADD").await;
    assert_eq!(add["user"]["id"].as_str().unwrap(), bob_id);

    // A hidden channel is announced to Alice, not to Bob; a visible one to both.
    let (st, _) = n.req("POST", &format!("/guilds/{g}/channels"), Some(&alice), Some(json!({ "name": "hidden", "permission_overwrites": [{ "id": g, "type": 0, "deny": "1024" }] }))).await;
    assert_eq!(st, 201);
    let (st, _) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&alice),
            Some(json!({ "name": "visible" })),
        )
        .await;
    assert_eq!(st, 201);
    assert_eq!(dispatch(&mut wa, "CHANNEL_CREATE").await["name"], "hidden");
    assert_eq!(dispatch(&mut wa, "CHANNEL_CREATE").await["name"], "visible");
    assert_eq!(
        dispatch(&mut wb, "CHANNEL_CREATE").await["name"],
        "visible",
        "bob must not see the hidden channel"
    );
}

#[tokio::test]
async fn graceful_shutdown_tells_clients_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let d2 = data.clone();
    let db_url = lodge_chat::store::testing::database_url_from_env().await;
    let u2 = db_url.clone();
    let mut n = common::node_with(move |a| {
        a.data_dir = Some(d2);
        a.database_url = u2;
    })
    .await;
    let (_, alice) = n.user("alice").await;
    let (g, _, _) = n.guild(&alice).await;
    let (mut w, _) = gateway(&n, &alice).await;
    dispatch(&mut w, "GUILD_CREATE").await;

    n.run.take().unwrap().shutdown().await;
    let reconnect = loop {
        let v = json(&mut w).await;
        if v["op"] != 0 {
            break v;
        }
    };
    assert_eq!(reconnect["op"], 7, "clients are asked to reconnect");
    assert_eq!(closed(&mut w).await.0, 1012);

    // A new node on the same database has everything that was acknowledged.
    let d3 = data.clone();
    let n2 = common::node_with(move |a| {
        a.data_dir = Some(d3);
        a.database_url = db_url;
    })
    .await;
    let (_, ready) = gateway(&n2, &alice).await;
    assert_eq!(ready["guilds"][0]["id"].as_str().unwrap(), g);
}

#[tokio::test]
async fn resume_replays_missed_dispatches_in_order() {
    let n = common::node().await;
    let (_, alice) = n.user("alice").await;
    let (_, bob) = n.user("bob").await;
    let (_, text, _) = n.guild(&alice).await;
    n.invite_and_join(&alice, &text, &bob).await;
    let (mut w, ready) = gateway(&n, &bob).await;
    let sid = ready["session_id"].as_str().unwrap().to_string();
    let mut last_seq;
    loop {
        let v = json(&mut w).await;
        if v["t"] == "GUILD_CREATE" {
            last_seq = v["s"].as_u64().unwrap();
            break;
        }
    }
    n.req(
        "POST",
        &format!("/channels/{text}/messages"),
        Some(&alice),
        Some(json!({ "content": "before drop" })),
    )
    .await;
    let v = loop {
        let v = json(&mut w).await;
        assert_eq!(
            v["s"].as_u64().unwrap(),
            last_seq + 1,
            "sequence numbers are consecutive"
        );
        last_seq += 1;
        if v["t"] == "MESSAGE_CREATE" {
            break v;
        }
    };
    assert_eq!(v["d"]["content"], "before drop");
    drop(w); // the connection dies without a close handshake

    for i in 0..5 {
        let (st, _) = n
            .req(
                "POST",
                &format!("/channels/{text}/messages"),
                Some(&alice),
                Some(json!({ "content": format!("missed {i}") })),
            )
            .await;
        assert_eq!(st, 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // Wrong user: invalid session.
    let mut w = ws(&n.gateway_url()).await;
    json(&mut w).await;
    send(
        &mut w,
        json!({ "op": 6, "d": { "token": alice, "session_id": sid, "seq": last_seq } }),
    )
    .await;
    assert_eq!(json(&mut w).await["op"], 9);

    let mut w = ws(&n.gateway_url()).await;
    json(&mut w).await;
    send(
        &mut w,
        json!({ "op": 6, "d": { "token": bob, "session_id": sid, "seq": last_seq } }),
    )
    .await;
    let mut got = Vec::new();
    let mut expect = last_seq + 1;
    loop {
        let v = json(&mut w).await;
        assert_eq!(v["op"], 0, "{v}");
        assert_eq!(v["s"].as_u64().unwrap(), expect, "sequence gap or repeat");
        expect += 1;
        if v["t"] == "RESUMED" {
            break;
        }
        if v["t"] == "MESSAGE_CREATE" {
            got.push(v["d"]["content"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        got,
        (0..5).map(|i| format!("missed {i}")).collect::<Vec<_>>(),
        "none missing, none twice, in order"
    );
    // Live again.
    n.req(
        "POST",
        &format!("/channels/{text}/messages"),
        Some(&alice),
        Some(json!({ "content": "after resume" })),
    )
    .await;
    let v = dispatch(&mut w, "MESSAGE_CREATE").await;
    assert_eq!(v["content"], "after resume");

    // Acknowledging more than was sent is not resumable.
    drop(w);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut w = ws(&n.gateway_url()).await;
    json(&mut w).await;
    send(
        &mut w,
        json!({ "op": 6, "d": { "token": bob, "session_id": sid, "seq": 10_000 } }),
    )
    .await;
    assert_eq!(json(&mut w).await["op"], 9);
}

#[tokio::test]
async fn presence_follows_connections_and_op3() {
    let n = common::node().await;
    let (alice_id, alice) = n.user("alice").await;
    let (_, bob) = n.user("bob").await;
    let (_, text, _) = n.guild(&alice).await;
    n.invite_and_join(&alice, &text, &bob).await;
    // Bob asks for presences (GUILDS | GUILD_PRESENCES).
    let mut wb = ws(&n.gateway_url()).await;
    json(&mut wb).await;
    send(
        &mut wb,
        json!({ "op": 2, "d": { "token": bob, "intents": 1 | 256, "properties": {} } }),
    )
    .await;
    dispatch(&mut wb, "READY").await;

    let mut wa = ws(&n.gateway_url()).await;
    json(&mut wa).await;
    send(&mut wa, json!({ "op": 2, "d": { "token": alice, "intents": 1, "properties": {}, "presence": { "status": "dnd", "activities": [], "since": null, "afk": false } } })).await;
    dispatch(&mut wa, "READY").await;
    let of_alice = |v: &serde_json::Value| v["user"]["id"] == alice_id.as_str();
    let p = loop {
        let p = dispatch(&mut wb, "PRESENCE_UPDATE").await;
        if of_alice(&p) {
            break p;
        }
    };
    assert_eq!(p["status"], "dnd");

    send(
        &mut wa,
        json!({ "op": 3, "d": { "status": "idle", "activities": [], "since": 0, "afk": true } }),
    )
    .await;
    assert_eq!(dispatch(&mut wb, "PRESENCE_UPDATE").await["status"], "idle");

    // A new session of bob sees alice in GUILD_CREATE's presences.
    let (mut wb2, _) = gateway(&n, &bob).await;
    let gc = dispatch(&mut wb2, "GUILD_CREATE").await;
    let pa = gc["presences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| of_alice(p))
        .expect("alice's presence in GUILD_CREATE")
        .clone();
    assert_eq!(pa["status"], "idle");

    // Invisible looks offline; disconnecting the last connection is offline too.
    send(&mut wa, json!({ "op": 3, "d": { "status": "invisible", "activities": [], "since": 0, "afk": false } })).await;
    assert_eq!(
        dispatch(&mut wb, "PRESENCE_UPDATE").await["status"],
        "offline"
    );
    send(
        &mut wa,
        json!({ "op": 3, "d": { "status": "online", "activities": [], "since": 0, "afk": false } }),
    )
    .await;
    assert_eq!(
        dispatch(&mut wb, "PRESENCE_UPDATE").await["status"],
        "online"
    );
    drop(wa);
    assert_eq!(
        dispatch(&mut wb, "PRESENCE_UPDATE").await["status"],
        "offline"
    );

    // A bad status closes with 4002.
    let (mut w, _) = gateway(&n, &alice).await;
    send(&mut w, json!({ "op": 3, "d": { "status": "sleepy" } })).await;
    assert_eq!(closed(&mut w).await.0, 4002);
}

#[tokio::test]
async fn a_large_guilds_member_list_still_holds_the_session_and_counts_everyone() {
    // 51 members, GUILD_CREATE lists at most 50 (large_threshold): the newest member (the
    // highest user id, so not on the first page) still finds itself there, and member_count is
    // the guild's total, not the list's length.
    let n = common::node_with(|a| {
        a.rate_limit_route = Some(100_000);
        a.rate_limit_global = Some(100_000);
    })
    .await;
    let (_, owner) = n.user("owner").await;
    let (g, text, _) = n.guild(&owner).await;
    let mut last = None;
    for i in 0..50 {
        let (id, tok) = n.user(&format!("member{i}")).await;
        n.invite_and_join(&owner, &text, &tok).await;
        last = Some((id, tok));
    }
    let (last_id, last_tok) = last.unwrap();
    let mut w = ws(&n.gateway_url()).await;
    assert_eq!(json(&mut w).await["op"], 10);
    send(&mut w, json!({ "op": 2, "d": { "token": last_tok, "intents": 1,
        "large_threshold": 50, "properties": { "os": "linux", "browser": "test", "device": "test" } } })).await;
    let gc = dispatch(&mut w, "GUILD_CREATE").await;
    assert_eq!(gc["id"].as_str().unwrap(), g);
    assert_eq!(gc["member_count"], 51);
    assert_eq!(gc["large"], true);
    let members = gc["members"].as_array().unwrap();
    assert!(members.len() <= 51, "{}", members.len());
    assert!(
        members.iter().any(|m| m["user"]["id"] == last_id.as_str()),
        "the session's own member is listed"
    );
    assert!(gc["joined_at"].is_string(), "{}", gc["joined_at"]);
}
