//! Runtime control through the admin API (`/api/v10/admin/*`, the operator token): per-guild
//! switches, the node-wide kill switch for voice joins, rate limits and the log filter changed
//! while the node runs, each change visible in `/metrics`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SECRET: &str = "0123456789abcdef-admin";
const OP: &str = "Operator 0123456789abcdef-admin";

async fn admin_node() -> Node {
    node_with(|a| a.operator_token = Some(SECRET.into())).await
}

async fn switch(n: &Node, guild: &str, body: Value) -> Value {
    let (st, v) = n
        .req(
            "PATCH",
            &format!("/admin/guilds/{guild}"),
            Some(OP),
            Some(body),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn settings(n: &Node, body: Value) -> Value {
    let (st, v) = n
        .req("PATCH", "/admin/settings", Some(OP), Some(body))
        .await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn say(n: &Node, token: &str, channel: &str, content: &str) -> (u16, Value) {
    n.req(
        "POST",
        &format!("/channels/{channel}/messages"),
        Some(token),
        Some(json!({ "content": content })),
    )
    .await
}

/// Skip to the next LODGE_VOICE_ERROR or VOICE_SERVER_UPDATE of the session: (event, d).
async fn op4_outcome(w: &mut Ws) -> (String, Value) {
    loop {
        let v = json(w).await;
        if v["op"] == 0 && (v["t"] == "LODGE_VOICE_ERROR" || v["t"] == "VOICE_SERVER_UPDATE") {
            return (v["t"].as_str().unwrap().to_string(), v["d"].clone());
        }
    }
}

#[tokio::test]
async fn without_an_operator_token_the_admin_api_says_how_to_turn_it_on() {
    let n = node().await;
    let (st, v) = n.req("GET", "/admin/settings", Some(OP), None).await;
    assert_eq!(st, 404, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("LODGE_OPERATOR_TOKEN"),
        "{v}"
    );
}

#[tokio::test]
async fn only_the_operator_token_opens_the_admin_api() {
    let n = admin_node().await;
    let (_, user) = n.user("mallory").await;
    let (st, v) = n.req("GET", "/admin/settings", None, None).await;
    assert_eq!(st, 401, "{v}");
    let (st, v) = n.req("GET", "/admin/settings", Some(&user), None).await;
    assert_eq!((st, v["code"].as_u64()), (403, Some(50001)), "{v}");
    let (st, v) = n
        .req(
            "PATCH",
            "/admin/settings",
            Some("Operator 0123456789abcdef-guess"),
            Some(json!({ "joins_frozen": true })),
        )
        .await;
    assert_eq!(st, 401, "{v}");
    let (st, v) = n.req("GET", "/admin/settings", Some(OP), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["joins_frozen"], false,
        "the refused PATCH changed nothing"
    );
    assert_eq!(v["rate_limit_route"], 50);
    // Guessing is bounded per address, like user tokens.
    let mut limited = false;
    for i in 0..20 {
        let bad = format!("Operator wrong-guess-number-{i:04}");
        let (st, _) = n.req("GET", "/admin/settings", Some(&bad), None).await;
        if st == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "wrong operator tokens are not rate limited");
}

#[tokio::test]
async fn a_frozen_guild_refuses_new_messages_until_unfrozen() {
    let n = admin_node().await;
    let (_, owner) = n.user("owner").await;
    let (g, text, _) = n.guild(&owner).await;
    let (_, other_text, _) = {
        let (_, t) = n.user("other").await;
        let (g2, text2, v2) = n.guild(&t).await;
        let (st, _) = say(&n, &t, &text2, "elsewhere").await;
        assert_eq!(st, 200);
        (g2, (t, text2), v2)
    };
    let v = switch(&n, &g, json!({ "messages_frozen": true })).await;
    assert_eq!(
        (v["messages_frozen"].as_bool(), v["voice_off"].as_bool()),
        (Some(true), Some(false))
    );

    let (st, v) = say(&n, &owner, &text, "hello?").await;
    assert_eq!((st, v["code"].as_u64()), (403, Some(40004)), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("messages_frozen"),
        "{v}"
    );
    // Only that guild: another guild's channel still takes messages.
    let (st, _) = say(&n, &other_text.0, &other_text.1, "still here").await;
    assert_eq!(st, 200);

    let (st, list) = n.req("GET", "/admin/guilds", Some(OP), None).await;
    assert_eq!(st, 200);
    assert_eq!(list["guilds"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["guilds"][0]["guild_id"], g.as_str());

    let m = metrics(&n).await;
    let series = format!("lodge_admin_guild_switch{{guild_id=\"{g}\",switch=\"messages_frozen\"}}");
    assert_eq!(metric(&m, &series), Some(1.0), "{m}");
    assert_eq!(
        metric(
            &m,
            "lodge_admin_guilds_switched{switch=\"messages_frozen\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "lodge_admin_refusals_total{switch=\"messages_frozen\"}"),
        Some(1.0)
    );

    switch(&n, &g, json!({ "messages_frozen": false })).await;
    let (st, v) = say(&n, &owner, &text, "back").await;
    assert_eq!(st, 200, "{v}");
    let (_, list) = n.req("GET", "/admin/guilds", Some(OP), None).await;
    assert_eq!(
        list["guilds"],
        json!([]),
        "a guild back at its defaults is not kept"
    );
    let m = metrics(&n).await;
    assert_eq!(metric(&m, &series), None);
    assert_eq!(
        metric(&m, "lodge_admin_changes_total{setting=\"messages_frozen\"}"),
        Some(2.0)
    );
}

#[tokio::test]
async fn the_kill_switch_refuses_new_voice_joins_while_calls_go_on() {
    let n = admin_node().await;
    let mut a = member(&n, "alice").await;
    let (g, text, voice) = n.guild(&a.token).await;
    dispatch(&mut a.gw, "GUILD_CREATE").await;
    let mut b = member(&n, "bob").await;
    n.invite_and_join(&a.token, &text, &b.token).await;
    dispatch(&mut b.gw, "GUILD_CREATE").await;
    let mut c = member(&n, "carol").await;
    n.invite_and_join(&a.token, &text, &c.token).await;
    dispatch(&mut c.gw, "GUILD_CREATE").await;

    let (_va, mut ca) = voice_call(&mut a, &g, &voice, 2).await;
    let (_vb, mut cb) = voice_call(&mut b, &g, &voice, 2).await;

    let v = settings(&n, json!({ "joins_frozen": true })).await;
    assert_eq!(v["joins_frozen"], true);
    assert_eq!(
        metric(&metrics(&n).await, "lodge_admin_joins_frozen"),
        Some(1.0)
    );

    // Carol's join is refused, and told why.
    send(&mut c.gw, json!({ "op": 4, "d": { "guild_id": g, "channel_id": voice, "self_mute": false, "self_deaf": false } })).await;
    let (t, d) = op4_outcome(&mut c.gw).await;
    assert_eq!(t, "LODGE_VOICE_ERROR", "{d}");
    assert!(
        d["message"].as_str().unwrap().contains("joins_frozen"),
        "{d}"
    );
    // Alice, already in the call, may still mute (an op 4 for her own channel is no join).
    send(&mut a.gw, json!({ "op": 4, "d": { "guild_id": g, "channel_id": voice, "self_mute": true, "self_deaf": false } })).await;
    let vs = dispatch(&mut b.gw, "VOICE_STATE_UPDATE").await;
    assert_eq!(
        (vs["user_id"].as_str(), vs["self_mute"].as_bool()),
        (Some(a.id.as_str()), Some(true))
    );
    send(&mut a.gw, json!({ "op": 4, "d": { "guild_id": g, "channel_id": voice, "self_mute": false, "self_deaf": false } })).await;
    let vs = dispatch(&mut b.gw, "VOICE_STATE_UPDATE").await;
    assert_eq!(vs["self_mute"], false);

    // The call in progress goes on: both hear each other.
    let ha = tokio::spawn(async move { ca.run(Duration::from_secs(3), Some(1), 20).await });
    let hb = tokio::spawn(async move { cb.run(Duration::from_secs(3), Some(2), 25).await });
    let (heard_a, heard_b) = (ha.await.unwrap(), hb.await.unwrap());
    assert!(
        heard_a.iter().filter(|h| h.1 == 2).count() > 50,
        "alice heard {} packets of bob while joins were frozen",
        heard_a.len()
    );
    assert!(
        heard_b.iter().filter(|h| h.1 == 1).count() > 50,
        "bob heard {} packets of alice while joins were frozen",
        heard_b.len()
    );

    // Released: Carol joins.
    settings(&n, json!({ "joins_frozen": false })).await;
    send(&mut c.gw, json!({ "op": 4, "d": { "guild_id": g, "channel_id": voice, "self_mute": false, "self_deaf": false } })).await;
    let (t, d) = op4_outcome(&mut c.gw).await;
    assert_eq!(t, "VOICE_SERVER_UPDATE", "{d}");

    let m = metrics(&n).await;
    assert_eq!(metric(&m, "lodge_admin_joins_frozen"), Some(0.0));
    assert_eq!(
        metric(&m, "lodge_admin_changes_total{setting=\"joins_frozen\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "lodge_admin_refusals_total{switch=\"joins_frozen\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn voice_off_ends_the_guilds_calls_and_refuses_joins() {
    let n = admin_node().await;
    let mut a = member(&n, "alice").await;
    let (g, _, voice) = n.guild(&a.token).await;
    dispatch(&mut a.gw, "GUILD_CREATE").await;
    let (mut va, _ca) = voice_call(&mut a, &g, &voice, 1).await;

    switch(&n, &g, json!({ "voice_off": true })).await;
    // Alice's call ends: her voice state leaves the channel and her voice socket closes.
    let vs = loop {
        let vs = dispatch(&mut a.gw, "VOICE_STATE_UPDATE").await;
        if vs["channel_id"].is_null() {
            break vs;
        }
    };
    assert_eq!(vs["user_id"].as_str(), Some(a.id.as_str()));
    let (code, _) = closed(&mut va).await;
    assert!(code >= 4000, "voice socket closed with {code}");

    send(&mut a.gw, json!({ "op": 4, "d": { "guild_id": g, "channel_id": voice, "self_mute": false, "self_deaf": false } })).await;
    let (t, d) = op4_outcome(&mut a.gw).await;
    assert_eq!(t, "LODGE_VOICE_ERROR", "{d}");
    assert!(d["message"].as_str().unwrap().contains("voice_off"), "{d}");

    switch(&n, &g, json!({ "voice_off": false })).await;
    let (t, d) = op4_outcome_after_join(&mut a, &g, &voice).await;
    assert_eq!(t, "VOICE_SERVER_UPDATE", "{d}");
}

async fn op4_outcome_after_join(m: &mut Member, g: &str, voice: &str) -> (String, Value) {
    send(&mut m.gw, json!({ "op": 4, "d": { "guild_id": g, "channel_id": voice, "self_mute": false, "self_deaf": false } })).await;
    op4_outcome(&mut m.gw).await
}

#[tokio::test]
async fn a_slot_cap_refuses_a_connection_asking_for_more() {
    let n = admin_node().await;
    let mut a = member(&n, "alice").await;
    let (g, _, voice) = n.guild(&a.token).await;
    dispatch(&mut a.gw, "GUILD_CREATE").await;
    let v = switch(&n, &g, json!({ "max_slots": 2 })).await;
    assert_eq!(v["max_slots"], 2);

    let (token, endpoint) = voice_join(&mut a.gw, &g, &voice, false).await;
    let (mut v, _) = voice_identify(&endpoint, &g, &a.id, &a.session, &token)
        .await
        .unwrap();
    let c = VoiceClient::new(3).await;
    send(
        &mut v,
        json!({ "op": 1, "d": { "protocol": "webrtc", "data": { "sdp": c.offer }, "slots": 3 } }),
    )
    .await;
    let (code, reason) = closed(&mut v).await;
    assert_eq!(code, 4014, "{reason}");
    assert!(reason.contains("max_slots"), "{reason}");
    assert!(reason.contains("at most 2"), "{reason}");

    // Within the cap the connection is answered.
    let (_v, _c) = voice_call(&mut a, &g, &voice, 2).await;
    let m = metrics(&n).await;
    assert_eq!(
        metric(
            &m,
            &format!("lodge_admin_guild_switch{{guild_id=\"{g}\",switch=\"max_slots\"}}")
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "lodge_admin_refusals_total{switch=\"max_slots\"}"),
        Some(1.0)
    );
    // Lifting the cap.
    let v = switch(&n, &g, json!({ "max_slots": null })).await;
    assert!(v["max_slots"].is_null(), "{v}");
}

#[tokio::test]
async fn a_slot_cap_clamps_a_native_connection() {
    let n = admin_node().await;
    let mut a = member(&n, "alice").await;
    let (g, _, voice) = n.guild(&a.token).await;
    dispatch(&mut a.gw, "GUILD_CREATE").await;
    switch(&n, &g, json!({ "max_slots": 1 })).await;

    let (token, endpoint) = voice_join(&mut a.gw, &g, &voice, false).await;
    let (mut v, _) = voice_identify(&endpoint, &g, &a.id, &a.session, &token)
        .await
        .unwrap();
    let mode = "aead_aes256_gcm_rtpsize";
    send(
        &mut v,
        json!({ "op": 1, "d": { "protocol": "udp", "data": { "address": "127.0.0.1", "port": 9, "mode": mode }, "slots": 3 } }),
    )
    .await;
    let sd = loop {
        let m = json(&mut v).await;
        if m["op"] == 4 {
            break m;
        }
    };
    assert_eq!(sd["d"]["mode"], mode, "{sd}");
    // The node report is rebuilt at most once a second.
    let mut stats = Value::Null;
    for _ in 0..30 {
        let (st, v) = n.req("GET", "/voice/stats", Some(&a.token), None).await;
        assert_eq!(st, 200, "{v}");
        stats = v;
        if !stats["peers"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peers = stats["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{stats}");
    assert_eq!(
        peers[0]["slots"].as_array().map(Vec::len),
        Some(1),
        "a native caller asking for 3 slots in a guild capped at 1: {stats}"
    );
}

#[tokio::test]
async fn a_rate_limit_reload_changes_what_is_enforced() {
    let n = admin_node().await;
    let (_, token) = n.user("busy").await;
    let me = |n: &Node| {
        n.http
            .get(n.url("/users/@me"))
            .header("Authorization", token.clone())
            .send()
    };
    let res = me(&n).await.unwrap();
    assert_eq!(res.headers()["x-ratelimit-limit"], "50");

    let v = settings(&n, json!({ "rate_limit_route": 2 })).await;
    assert_eq!(v["rate_limit_route"], 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut statuses = Vec::new();
    let mut refusal = Value::Null;
    for _ in 0..3 {
        let res = me(&n).await.unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            refusal = res.json().await.unwrap();
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert!(
        refusal["message"].as_str().unwrap().contains("2 requests"),
        "{refusal}"
    );
    assert_eq!(
        metric(
            &metrics(&n).await,
            "lodge_admin_rate_limit{limit=\"route\"}"
        ),
        Some(2.0)
    );

    // The operator is not held to the limit it set.
    for _ in 0..5 {
        let (st, v) = n.req("GET", "/admin/settings", Some(OP), None).await;
        assert_eq!(st, 200, "{v}");
    }
    settings(&n, json!({ "rate_limit_route": 50 })).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        let res = me(&n).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-ratelimit-limit"], "50");
    }
    assert_eq!(
        metric(
            &metrics(&n).await,
            "lodge_admin_changes_total{setting=\"rate_limit_route\"}"
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_limit_and_changes_nothing() {
    let n = admin_node().await;
    let (_, owner) = n.user("owner").await;
    let (g, _, _) = n.guild(&owner).await;
    let refused = |v: &Value, field: &str| {
        v["errors"][field]["_errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (st, v) = n
        .req(
            "PATCH",
            "/admin/settings",
            Some(OP),
            Some(json!({ "joins_frozen": true, "rate_limit_route": 0 })),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        refused(&v, "rate_limit_route").contains("1..=100000"),
        "{v}"
    );
    let (st, v) = n
        .req(
            "PATCH",
            "/admin/settings",
            Some(OP),
            Some(json!({ "rate_limit_global": 1_000_000 })),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        refused(&v, "rate_limit_global").contains("1..=100000"),
        "{v}"
    );
    let (_, v) = n.req("GET", "/admin/settings", Some(OP), None).await;
    assert_eq!(
        v["joins_frozen"], false,
        "a refused PATCH changed something"
    );

    let (st, v) = n
        .req(
            "PATCH",
            &format!("/admin/guilds/{g}"),
            Some(OP),
            Some(json!({ "voice_off": true, "max_slots": 17 })),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(refused(&v, "max_slots").contains("1..=16"), "{v}");
    let (_, v) = n
        .req("GET", &format!("/admin/guilds/{g}"), Some(OP), None)
        .await;
    assert_eq!(v["voice_off"], false, "a refused PATCH changed something");

    let (st, v) = n
        .req(
            "PATCH",
            &format!("/admin/guilds/{g}"),
            Some(OP),
            Some(json!({ "messages_frozn": true })),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("messages_frozn"),
        "{v}"
    );
    let (st, v) = n
        .req(
            "PATCH",
            "/admin/guilds/12345",
            Some(OP),
            Some(json!({ "voice_off": true })),
        )
        .await;
    assert_eq!((st, v["code"].as_u64()), (404, Some(10004)), "{v}");
    // A node whose logger cannot be reloaded says so.
    let (st, v) = n
        .req(
            "PATCH",
            "/admin/settings",
            Some(OP),
            Some(json!({ "log_filter": "debug" })),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        refused(&v, "log_filter").contains("cannot be reloaded"),
        "{v}"
    );
}
