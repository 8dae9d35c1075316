//! Draining a node (`POST /api/v10/admin/drain`, as SIGTERM does): the admin endpoint, and a
//! node alone — no other node can take its calls, so they end with a close that says why, new
//! joins are refused, gateway clients get op 7, and the drain finishes once nothing is left.
//! (Moving calls to another node is the rolling-restart suite's, `tests/scale/rolling.sh`.)

mod common;

use std::time::Duration;

use common::*;
use lodge_signaling::drain::Phase;
use serde_json::json;

const SECRET: &str = "0123456789abcdef-drain";
const OP: &str = "Operator 0123456789abcdef-drain";

/// Skip to the next LODGE_VOICE_ERROR or VOICE_SERVER_UPDATE of the session.
async fn op4_outcome(w: &mut Ws) -> (String, serde_json::Value) {
    loop {
        let v = json(w).await;
        if v["op"] == 0 && (v["t"] == "LODGE_VOICE_ERROR" || v["t"] == "VOICE_SERVER_UPDATE") {
            return (v["t"].as_str().unwrap().to_string(), v["d"].clone());
        }
    }
}

/// Frames until op 7, then the close that follows it.
async fn reconnect_and_close(w: &mut Ws) -> (u16, String) {
    loop {
        match next(w).await {
            Frame::Json(v) if v["op"] == 7 => return closed(w).await,
            Frame::Json(_) => continue,
            Frame::Closed(c, r) => panic!("closed {c} {r} without op 7 first"),
        }
    }
}

#[tokio::test]
async fn a_node_alone_drains_its_calls_with_notice_refuses_joins_and_finishes() {
    // Two rooms of one caller each over a 4 s spread: the second room's calls end 2 s in, and
    // the gateway clients' op 7 only after that, so a join tried between is still answered.
    let n = node_with(|a| {
        a.operator_token = Some(SECRET.into());
        a.drain_spread_ms = Some(4000);
        a.drain_timeout_secs = Some(20);
    })
    .await;
    let state = n.run.as_ref().unwrap().state.clone();
    let mut a = member(&n, "alice").await;
    let mut b = member(&n, "bob").await;
    let mut c = member(&n, "carol").await;
    let (g, text, voice1) = n.guild(&a.token).await;
    n.invite_and_join(&a.token, &text, &b.token).await;
    n.invite_and_join(&a.token, &text, &c.token).await;
    let (st, ch) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&a.token),
            Some(json!({ "name": "Second room", "type": 2 })),
        )
        .await;
    assert_eq!(st, 201, "{ch}");
    let voice2 = ch["id"].as_str().unwrap().to_string();
    let (mut va, _ca) = voice_call(&mut a, &g, &voice1, 3).await;
    let (mut vb, _cb) = voice_call(&mut b, &g, &voice2, 3).await;
    let m = metrics(&n).await;
    assert_eq!(metric(&m, "lodge_draining"), Some(0.0), "{m}");
    assert_eq!(
        n.http
            .get(format!("{}/readyz", n.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Only the operator drains a node.
    let (st, v) = n.req("POST", "/admin/drain", None, None).await;
    assert_eq!(st, 401, "{v}");
    let (st, v) = n.req("POST", "/admin/drain", Some(&c.token), None).await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(
        state.drain.phase(),
        Phase::Serving,
        "a refused drain changed nothing"
    );

    let t0 = std::time::Instant::now();
    let (st, plan) = n.req("POST", "/admin/drain", Some(OP), None).await;
    assert_eq!(st, 202, "{plan}");
    assert_eq!(plan["draining"], true, "{plan}");
    assert_eq!(plan["already"], false, "{plan}");
    assert_eq!(plan["calls"], "end", "alone, the calls end: {plan}");
    assert_eq!(
        (plan["callers"].as_u64(), plan["rooms"].as_u64()),
        (Some(2), Some(2)),
        "{plan}"
    );
    assert_eq!(plan["gateway_connections"], 3, "{plan}");
    assert!(
        plan["what"].as_str().unwrap().contains("end with notice"),
        "{plan}"
    );
    // Asked again: the same drain, said so.
    let (st, again) = n.req("POST", "/admin/drain", Some(OP), None).await;
    assert_eq!(st, 202, "{again}");
    assert_eq!(again["already"], true, "{again}");
    assert_eq!(state.drain.phase(), Phase::Draining);
    // A balancer stops sending work here.
    assert_eq!(
        n.http
            .get(format!("{}/readyz", n.base))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(metric(&metrics(&n).await, "lodge_draining"), Some(1.0));

    // The first room's call ends at once with a close a client understands, and why.
    let (code, reason) = closed(&mut va).await;
    assert_eq!(code, 4014, "{reason}");
    assert!(
        reason.contains("no other node can take the call"),
        "{reason}"
    );
    // The guild sees alice leave.
    loop {
        let d = dispatch(&mut c.gw, "VOICE_STATE_UPDATE").await;
        // (Her join before the drain comes first.)
        if d["user_id"] == a.id.as_str() && d["channel_id"].is_null() {
            break;
        }
    }
    // A new join is refused: this node places no room while draining, and there is no other.
    send(&mut c.gw, json!({ "op": 4, "d": { "guild_id": g, "channel_id": voice1, "self_mute": false, "self_deaf": false } })).await;
    let (t, d) = op4_outcome(&mut c.gw).await;
    assert_eq!(t, "LODGE_VOICE_ERROR", "{d}");
    assert!(d["message"].as_str().unwrap().contains("draining"), "{d}");
    assert!(
        t0.elapsed() < Duration::from_millis(1800),
        "the join was tried before the second room's turn"
    );

    // The second room's call ends half way through the spread, not with the first.
    let (code, reason) = closed(&mut vb).await;
    let at = t0.elapsed();
    assert_eq!(code, 4014, "{reason}");
    assert!(
        at >= Duration::from_millis(1800),
        "the rooms were not spread: the second ended after {at:?}"
    );

    // Then every gateway client is told to reconnect (op 7) and closed with 1012.
    for w in [&mut a.gw, &mut b.gw, &mut c.gw] {
        let (code, _) = reconnect_and_close(w).await;
        assert_eq!(code, 1012);
    }
    // Nothing left: the drain is done (lodge serve would stop now), well before its timeout.
    tokio::time::timeout(Duration::from_secs(10), state.drain.done())
        .await
        .expect("the drain finishes once the node hosts nothing");
    assert!(t0.elapsed() < Duration::from_secs(15));
    let m = metrics(&n).await;
    assert_eq!(metric(&m, "lodge_draining"), Some(2.0), "{m}");
    assert_eq!(
        metric(&m, "lodge_drain_calls_ended_total"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "lodge_drain_calls_moved_total"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "lodge_drain_gateway_reconnects_total"),
        Some(3.0),
        "{m}"
    );
    // A gateway client arriving now is sent elsewhere before the upgrade.
    let r = n.http.get(n.url("/gateway")).send().await.unwrap();
    assert_eq!(r.status(), 200, "REST still answers while the node drains");
    let err = tokio_tungstenite::connect_async(n.gateway_url())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
}
