//! Voice through real sockets: op 4, voice gateway (WebRTC mode), str0m clients over UDP, op 5
//! slot announcements, mute, bad and expired tokens, bad offers.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn two_clients_talk_through_the_node() {
    let n = node().await;
    let mut a = member(&n, "alice").await;
    let (g, text, voice) = n.guild(&a.token).await;
    dispatch(&mut a.gw, "GUILD_CREATE").await;
    let mut b = member(&n, "bob").await;
    n.invite_and_join(&a.token, &text, &b.token).await;
    dispatch(&mut b.gw, "GUILD_CREATE").await;

    // Alice joins: everyone sees her voice state, she gets the voice server.
    let (ta, endpoint) = voice_join(&mut a.gw, &g, &voice, false).await;
    assert_eq!(
        endpoint,
        n.http_addr().to_string(),
        "endpoint is host:port without a scheme"
    );
    let vs = dispatch(&mut b.gw, "VOICE_STATE_UPDATE").await;
    assert_eq!(
        (vs["user_id"].as_str(), vs["channel_id"].as_str()),
        (Some(a.id.as_str()), Some(voice.as_str()))
    );
    let (tb, _) = voice_join(&mut b.gw, &g, &voice, false).await;
    let (st, states) = n
        .req(
            "GET",
            &format!("/guilds/{g}/voice-states"),
            Some(&a.token),
            None,
        )
        .await;
    assert_eq!((st, states.as_array().unwrap().len()), (200, 2));

    let (mut va, ready) = voice_identify(&endpoint, &g, &a.id, &a.session, &ta)
        .await
        .unwrap();
    // The port of the media worker that runs the channel's room.
    let sfu = &n.run.as_ref().unwrap().state.sfu;
    assert_eq!(
        ready["port"].as_u64().unwrap(),
        sfu.port_for_room(lodge_sfu::RoomId(voice.parse().unwrap())) as u64
    );
    let (mut vb, _) = voice_identify(&endpoint, &g, &b.id, &b.session, &tb)
        .await
        .unwrap();

    let mut ca = VoiceClient::new(2).await;
    let mut cb = VoiceClient::new(2).await;
    send(
        &mut va,
        json!({ "op": 1, "d": { "protocol": "webrtc", "data": { "sdp": ca.offer }, "slots": 2 } }),
    )
    .await;
    let sd = json(&mut va).await;
    assert_eq!(
        (sd["op"].as_u64(), sd["d"]["mode"].as_str()),
        (Some(4), Some("webrtc")),
        "{sd}"
    );
    let a_slots: Vec<u64> = sd["d"]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ssrc"].as_u64().unwrap())
        .collect();
    assert_eq!(a_slots.len(), 2);
    let answer = sd["d"]["sdp"].as_str().unwrap();
    assert!(answer.contains("a=ice-lite"), "answer is not ICE-lite");
    assert!(
        answer.contains("urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
        "audio-level extension not negotiated"
    );
    assert!(answer.contains("opus/48000/2"));
    assert_eq!(
        answer.matches("a=sendonly").count(),
        2,
        "slots must be send-only from the server"
    );
    ca.accept(sd["d"]["sdp"].as_str().unwrap());
    send(
        &mut vb,
        json!({ "op": 1, "d": { "protocol": "webrtc", "data": { "sdp": cb.offer } } }),
    )
    .await;
    // Bob is told Alice is connected (op 11, possibly before his own session description).
    let mut before = Vec::new();
    let sd = loop {
        let m = json(&mut vb).await;
        if m["op"] == 4 {
            break m;
        }
        before.push(m);
    };
    cb.accept(sd["d"]["sdp"].as_str().unwrap());
    let cc = match before.into_iter().find(|m| m["op"] == 11) {
        Some(m) => m,
        None => json(&mut vb).await,
    };
    assert_eq!(
        (cc["op"].as_u64(), cc["d"]["user_ids"].clone()),
        (Some(11), json!([a.id]))
    );

    // Both talk for 3 s over real UDP.
    let ha = tokio::spawn(async move {
        let h = ca.run(Duration::from_secs(3), Some(1), 20).await;
        (ca, h)
    });
    let hb = tokio::spawn(async move {
        let h = cb.run(Duration::from_secs(3), Some(2), 25).await;
        (cb, h)
    });
    let msgs_a = collect(&mut va, Duration::from_secs(3)).await;
    let (mut ca, heard_a) = ha.await.unwrap();
    let (mut cb, heard_b) = hb.await.unwrap();
    assert!(
        heard_a.iter().filter(|h| h.1 == 2).count() > 80,
        "alice heard {} of bob",
        heard_a.len()
    );
    assert!(
        heard_b.iter().filter(|h| h.1 == 1).count() > 80,
        "bob heard {} of alice",
        heard_b.len()
    );
    assert!(
        !heard_a.iter().any(|h| h.1 == 1) && !heard_b.iter().any(|h| h.1 == 2),
        "someone heard themself"
    );
    // Op 5 told Alice which slot carries Bob, and that slot carried Bob's packets.
    let sp = msgs_a
        .iter()
        .find(|m| m["op"] == 5 && m["d"]["speaking"] == 1)
        .expect("no op 5 speaking announcement");
    assert_eq!(sp["d"]["user_id"].as_str().unwrap(), b.id);
    let bob_slot = sp["d"]["ssrc"].as_u64().unwrap();
    assert!(a_slots.contains(&bob_slot));
    assert!(heard_a.iter().all(|h| h.0 as u64 == bob_slot));
    assert!(msgs_a
        .iter()
        .any(|m| m["op"] == 11 && m["d"]["user_ids"] == json!([b.id])));

    // Heartbeat on the voice gateway.
    send(
        &mut va,
        json!({ "op": 3, "d": { "t": 1234, "seq_ack": 1 } }),
    )
    .await;
    let ack = op(&mut va, 6).await;
    assert_eq!(ack["d"]["t"], 1234);

    // Alice mutes (gateway op 4): Bob is told within 1 s and stops hearing her.
    send(&mut a.gw, json!({ "op": 4, "d": { "guild_id": g, "channel_id": voice, "self_mute": true, "self_deaf": false } })).await;
    let vs = dispatch(&mut b.gw, "VOICE_STATE_UPDATE").await;
    assert_eq!(vs["self_mute"], true);
    let hb = tokio::spawn(async move { cb.run(Duration::from_secs(3), Some(2), 25).await });
    let ha = tokio::spawn(async move { ca.run(Duration::from_secs(3), Some(1), 20).await });
    let msgs_b = collect(&mut vb, Duration::from_millis(1000)).await;
    let off = msgs_b
        .iter()
        .find(|m| m["op"] == 5 && m["d"]["speaking"] == 0)
        .expect("no speaking:0 within 1 s of muting");
    assert_eq!(off["d"]["user_id"].as_str().unwrap(), a.id);
    let heard_b = hb.await.unwrap();
    let _ = ha.await.unwrap();
    // After the first second nothing from Alice reaches Bob (allow in-flight packets at the start).
    let from_alice = heard_b.iter().filter(|h| h.1 == 1).count();
    assert!(
        from_alice < 10,
        "bob still heard {from_alice} packets of muted alice"
    );

    // The node's figures.
    let (_, stats) = n.req("GET", "/voice/stats", Some(&a.token), None).await;
    assert!(stats["rtp_forwarded"].as_u64().unwrap() > 200, "{stats}");
    let alice_peer = stats["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user"] == a.id.as_str())
        .unwrap();
    assert!(
        alice_peer["drops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d[0] == "muted"),
        "{alice_peer}"
    );
    let metrics = n
        .http
        .get(format!("{}/metrics", n.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("lodge_participants 2"), "{metrics}");
    assert!(
        !metrics.contains(&a.id) && !metrics.contains("127.0.0.1"),
        "metrics leak ids or addresses"
    );
    assert!(
        metrics.contains("lodge_participant_mos_estimate_count 2"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "lodge_channel_participants{{channel=\"{voice}\"}} 2"
    )));
    // Every metric the Grafana dashboard queries is served.
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/lodge-voice-node.json"
    ))
    .unwrap();
    let dash: Value = serde_json::from_str(&dash).expect("the Grafana dashboard is valid JSON");
    let mut names = std::collections::BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let mut rest = t["expr"].as_str().unwrap();
            while let Some(i) = rest.find("lodge_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for n in &names {
        assert!(
            metrics.lines().any(|l| l.starts_with(n.as_str())),
            "the dashboard queries {n}, which /metrics does not serve"
        );
    }
    // Someone outside the guild sees node totals but no participants.
    let (_, eve) = n.user("eve").await;
    let (_, stats) = n.req("GET", "/voice/stats", Some(&eve), None).await;
    assert_eq!(stats["peers"], json!([]));
    assert_eq!(stats["participants"], 2);

    // The live quality view lists the channel with both participants and a MOS estimate.
    let (st, q) = n.req("GET", "/quality/node", Some(&a.token), None).await;
    assert_eq!(st, 200, "{q}");
    let ch = q["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == voice.as_str())
        .expect("the voice channel in the live view");
    assert_eq!(ch["participants"].as_array().unwrap().len(), 2, "{ch}");
    assert!(
        ch["participants"][0]["mos_estimate"].as_f64().unwrap() > 3.5,
        "{ch}"
    );
    assert!(
        !q.to_string().contains("127.0.0.1"),
        "no addresses in the view"
    );
    let (_, q) = n.req("GET", "/quality/node", Some(&eve), None).await;
    assert_eq!(q["channels"], json!([]));

    // Leaving (op 4 with null) closes the voice connection and tells the guild.
    send(
        &mut b.gw,
        json!({ "op": 4, "d": { "guild_id": g, "channel_id": null } }),
    )
    .await;
    let (code, _) = closed(&mut vb).await;
    assert_eq!(code, 4014);
    let left = loop {
        let v = dispatch(&mut a.gw, "VOICE_STATE_UPDATE").await;
        if v["channel_id"].is_null() {
            break v;
        }
    };
    assert_eq!(left["user_id"].as_str(), Some(b.id.as_str()));
    let gone = loop {
        let m = json(&mut va).await;
        if m["op"] == 13 {
            break m;
        }
    };
    assert_eq!(gone["d"]["user_id"].as_str().unwrap(), b.id);

    // Bob's call left one quality summary behind.
    let mut calls = Value::Null;
    for _ in 0..40 {
        let (st, c) = n
            .req(
                "GET",
                &format!("/quality/calls?user_id={}", b.id),
                Some(&a.token),
                None,
            )
            .await;
        assert_eq!(st, 200, "{c}");
        if !c.as_array().unwrap().is_empty() {
            calls = c;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = &calls[0];
    assert_eq!(
        (call["guild_id"].as_str(), call["channel_id"].as_str()),
        (Some(g.as_str()), Some(voice.as_str())),
        "{call}"
    );
    assert!(call["packets_in"].as_u64().unwrap() > 100, "{call}");
    assert!(call["duration_ms"].as_i64().unwrap() >= 5_000, "{call}");
    assert!(call["mos_estimate"].as_f64().unwrap() > 3.5, "{call}");
    assert_eq!(call["end_reason"], "requested");
    // Filters, limits and visibility.
    let (_, c) = n
        .req(
            "GET",
            &format!("/quality/calls?channel_id={voice}&mos_below=2"),
            Some(&a.token),
            None,
        )
        .await;
    assert_eq!(c, json!([]));
    let (_, c) = n.req("GET", "/quality/calls", Some(&eve), None).await;
    assert_eq!(c, json!([]), "eve is not in the guild");
    let (st, e) = n
        .req("GET", "/quality/calls?limit=abc", Some(&a.token), None)
        .await;
    assert_eq!((st, e["code"].as_u64()), (400, Some(50035)), "{e}");
    let (st, e) = n
        .req("GET", "/quality/calls?limit=5000", Some(&a.token), None)
        .await;
    assert_eq!(st, 400, "{e}");
    assert!(e.to_string().contains("1..=200"), "the limit is named: {e}");
    let (st, _) = n.req("GET", "/quality/calls", None, None).await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn voice_tokens_are_single_use_bound_and_expire() {
    let n = node_with(|a| a.voice_token_ttl = Some(1)).await;
    let mut a = member(&n, "alice").await;
    let (g, _, voice) = n.guild(&a.token).await;

    // Wrong session: refused, and the token is burnt.
    let (t, ep) = voice_join(&mut a.gw, &g, &voice, false).await;
    let err = voice_identify(&ep, &g, &a.id, "not-my-session", &t)
        .await
        .unwrap_err();
    assert_eq!(err.0, 4004);
    assert_eq!(
        voice_identify(&ep, &g, &a.id, &a.session, &t)
            .await
            .unwrap_err()
            .0,
        4004,
        "burnt token"
    );

    // Used token: the second use fails.
    let (t, ep) = voice_join(&mut a.gw, &g, &voice, false).await;
    let (_v1, _) = voice_identify(&ep, &g, &a.id, &a.session, &t)
        .await
        .unwrap();
    assert_eq!(
        voice_identify(&ep, &g, &a.id, &a.session, &t)
            .await
            .unwrap_err()
            .0,
        4004
    );
    drop(_v1);

    // Expired token (ttl 1 s here).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (t, ep) = voice_join(&mut a.gw, &g, &voice, false).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (code, reason) = voice_identify(&ep, &g, &a.id, &a.session, &t)
        .await
        .unwrap_err();
    assert_eq!(code, 4004);
    assert!(reason.contains("expired"), "{reason}");

    // Unknown token, and messages before identify.
    assert_eq!(
        voice_identify(&ep, &g, &a.id, &a.session, "garbage")
            .await
            .unwrap_err()
            .0,
        4004
    );
    let mut v = ws(&format!("ws://{ep}/?v=8")).await;
    json(&mut v).await;
    send(
        &mut v,
        json!({ "op": 1, "d": { "protocol": "webrtc", "data": { "sdp": "v=0" } } }),
    )
    .await;
    assert_eq!(closed(&mut v).await.0, 4003);
    let mut v = ws(&format!("ws://{ep}/?v=8")).await;
    json(&mut v).await;
    send(&mut v, json!({ "op": 0, "d": "x".repeat(70_000) })).await;
    assert_eq!(closed(&mut v).await.0, 4002);
}

#[tokio::test]
async fn bad_offers_and_permissions_get_clear_errors() {
    let n = node().await;
    let mut a = member(&n, "alice").await;
    let (g, text, voice) = n.guild(&a.token).await;

    async fn select(a: &mut Member, g: &str, voice: &str, d: Value) -> (u16, String) {
        let (t, ep) = voice_join(&mut a.gw, g, voice, false).await;
        let (mut v, _) = voice_identify(&ep, g, &a.id, &a.session, &t).await.unwrap();
        send(&mut v, json!({ "op": 1, "d": d })).await;
        let r = closed(&mut v).await;
        // The voice state goes away with the connection.
        dispatch(&mut a.gw, "VOICE_STATE_UPDATE").await;
        r
    }

    let (code, reason) = select(
        &mut a,
        &g,
        &voice,
        json!({ "protocol": "udp", "data": { "address": "127.0.0.1", "port": 1, "mode": "x" } }),
    )
    .await;
    assert_eq!(code, 4016, "an unknown encryption mode: {reason}");
    assert!(reason.contains("aead_aes256_gcm_rtpsize"), "{reason}");
    let (code, reason) = select(
        &mut a,
        &g,
        &voice,
        json!({ "protocol": "rtp", "data": { "address": "127.0.0.1", "port": 1, "mode": "x" } }),
    )
    .await;
    assert_eq!(code, 4012, "an unknown protocol: {reason}");
    let (code, reason) = select(
        &mut a,
        &g,
        &voice,
        json!({ "protocol": "webrtc", "data": { "sdp": "this is not sdp" } }),
    )
    .await;
    assert_eq!(code, 4002);
    assert!(reason.contains("SDP"), "{reason}");
    let c = VoiceClient::new(0).await;
    let (code, reason) = select(
        &mut a,
        &g,
        &voice,
        json!({ "protocol": "webrtc", "data": { "sdp": c.offer } }),
    )
    .await;
    assert_eq!(code, 4002);
    assert!(reason.contains("1 to 16"), "{reason}");
    let c = VoiceClient::new(17).await;
    let (code, reason) = select(
        &mut a,
        &g,
        &voice,
        json!({ "protocol": "webrtc", "data": { "sdp": c.offer } }),
    )
    .await;
    assert_eq!(code, 4002);
    assert!(reason.contains("1 to 16"), "{reason}");
    let c = VoiceClient::new(2).await;
    let (code, reason) = select(
        &mut a,
        &g,
        &voice,
        json!({ "protocol": "webrtc", "data": { "sdp": c.offer }, "slots": 3 }),
    )
    .await;
    assert_eq!(code, 4002);
    assert!(reason.contains("slots"), "{reason}");

    // No CONNECT: op 4 is refused with a reason.
    let mut b = member(&n, "bob").await;
    n.invite_and_join(&a.token, &text, &b.token).await;
    let (st, _) = n
        .req(
            "PUT",
            &format!("/channels/{voice}/permissions/{g}"),
            Some(&a.token),
            Some(json!({ "type": 0, "allow": "0", "deny": (1u64 << 20).to_string() })),
        )
        .await;
    assert_eq!(st, 204);
    send(&mut b.gw, json!({ "op": 4, "d": { "guild_id": g, "channel_id": voice, "self_mute": false, "self_deaf": false } })).await;
    let e = dispatch(&mut b.gw, "LODGE_VOICE_ERROR").await;
    assert_eq!(e["code"], 50013);
    assert!(e["message"].as_str().unwrap().contains("CONNECT"));
    // A text channel is not a voice channel.
    send(
        &mut b.gw,
        json!({ "op": 4, "d": { "guild_id": g, "channel_id": text } }),
    )
    .await;
    let e = dispatch(&mut b.gw, "LODGE_VOICE_ERROR").await;
    assert_eq!(e["code"], 50035);
}

#[tokio::test]
async fn speak_permission_revoked_mid_call_stops_forwarding() {
    let n = node().await;
    let mut a = member(&n, "alice").await;
    let (g, text, voice) = n.guild(&a.token).await;
    let mut b = member(&n, "bob").await;
    n.invite_and_join(&a.token, &text, &b.token).await;
    dispatch(&mut b.gw, "GUILD_CREATE").await;

    let (ta, ep) = voice_join(&mut a.gw, &g, &voice, false).await;
    let (tb, _) = voice_join(&mut b.gw, &g, &voice, false).await;
    let (mut va, _) = voice_identify(&ep, &g, &a.id, &a.session, &ta)
        .await
        .unwrap();
    let (mut vb, _) = voice_identify(&ep, &g, &b.id, &b.session, &tb)
        .await
        .unwrap();
    let mut ca = VoiceClient::new(1).await;
    let mut cb = VoiceClient::new(1).await;
    for (v, c) in [(&mut va, &mut ca), (&mut vb, &mut cb)] {
        send(v, json!({ "op": 1, "d": { "protocol": "webrtc", "data": { "sdp": c.offer }, "slots": 1 } })).await;
        let sd = loop {
            let m = json(v).await;
            if m["op"] == 4 {
                break m;
            }
        };
        c.accept(sd["d"]["sdp"].as_str().unwrap());
    }
    let hb = tokio::spawn(async move {
        let h = cb.run(Duration::from_secs(2), Some(2), 20).await;
        (cb, h)
    });
    let heard = ca.run(Duration::from_secs(2), None, 127).await;
    let (mut cb, _) = hb.await.unwrap();
    assert!(
        heard.iter().filter(|h| h.1 == 2).count() > 40,
        "alice did not hear bob before the change"
    );

    // Deny SPEAK to @everyone in the voice channel; Bob is not the owner.
    let (st, _) = n
        .req(
            "PUT",
            &format!("/channels/{voice}/permissions/{g}"),
            Some(&a.token),
            Some(json!({ "type": 0, "deny": (1u64 << 21).to_string() })),
        )
        .await;
    assert_eq!(st, 204);
    let vs = loop {
        let v = dispatch(&mut a.gw, "VOICE_STATE_UPDATE").await;
        if v["user_id"] == b.id.as_str() && v["suppress"] == true {
            break v;
        }
    };
    assert_eq!(vs["mute"], true);
    let hb = tokio::spawn(async move { cb.run(Duration::from_secs(3), Some(2), 20).await });
    let ha = tokio::spawn(async move { ca.run(Duration::from_secs(3), None, 127).await });
    let msgs = collect(&mut va, Duration::from_secs(1)).await;
    assert!(
        msgs.iter()
            .any(|m| m["op"] == 5 && m["d"]["speaking"] == 0 && m["d"]["user_id"] == b.id.as_str()),
        "no speaking:0 for bob: {msgs:?}"
    );
    let heard = ha.await.unwrap();
    hb.await.unwrap();
    assert!(
        heard.iter().filter(|h| h.1 == 2).count() < 5,
        "bob is still forwarded without SPEAK"
    );
    let (_, stats) = n.req("GET", "/voice/stats", Some(&a.token), None).await;
    let bob_peer = stats["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user"] == b.id.as_str())
        .unwrap()
        .clone();
    assert_eq!(bob_peer["can_speak"], false);
    assert!(
        bob_peer["drops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d[0] == "no_speak_permission"),
        "{bob_peer}"
    );
}

/// With --turn-url and --turn-secret, each voice connection's Ready carries the relays and a
/// credential coturn accepts (`use-auth-secret`): `<expiry>:<user id>` signed with the secret.
#[tokio::test]
async fn ready_hands_out_turn_relays_with_a_short_lived_credential() {
    let secret = "lodge-test-turn-secret-0123";
    let n = node_with(|a| {
        a.turn_url = Some(vec![
            "turn:10.0.0.1:3478?transport=tcp".parse().unwrap(),
            "turns:turn.example.com:5349?transport=tcp".parse().unwrap(),
        ]);
        a.turn_secret = Some(secret.into());
        a.turn_credential_ttl_secs = Some(600);
    })
    .await;
    let mut a = member(&n, "alice").await;
    let (g, _, voice) = n.guild(&a.token).await;
    let (t, ep) = voice_join(&mut a.gw, &g, &voice, false).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (_v, ready) = voice_identify(&ep, &g, &a.id, &a.session, &t)
        .await
        .unwrap();
    let servers = ready["ice_servers"].as_array().expect("ice_servers");
    assert_eq!(servers.len(), 1, "{ready}");
    let s = &servers[0];
    assert_eq!(
        s["urls"],
        json!([
            "turn:10.0.0.1:3478?transport=tcp",
            "turns:turn.example.com:5349?transport=tcp"
        ])
    );
    let username = s["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, a.id, "the user id names who relays");
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (before + 600..=before + 602).contains(&expiry),
        "expires after the ttl: {expiry} vs now {before}"
    );
    assert_eq!(
        s["credential"].as_str().unwrap(),
        lodge_signaling::turn::credential(secret, username)
    );

    // Without TURN configured: an empty list, so clients need no special case.
    let n = node().await;
    let mut b = member(&n, "bob").await;
    let (g, _, voice) = n.guild(&b.token).await;
    let (t, ep) = voice_join(&mut b.gw, &g, &voice, false).await;
    let (_v, ready) = voice_identify(&ep, &g, &b.id, &b.session, &t)
        .await
        .unwrap();
    assert_eq!(ready["ice_servers"], json!([]));
}

#[tokio::test]
async fn each_voice_gateway_version_gets_its_own_framing() {
    let n = node().await;
    let mut a = member(&n, "alice").await;
    let (g, _text, voice) = n.guild(&a.token).await;
    let (token, ep) = voice_join(&mut a.gw, &g, &voice, false).await;

    // v4 (songbird): no `seq` anywhere, the heartbeat nonce is a bare number and so is the ACK.
    let mut v = ws(&format!("ws://{ep}/?v=4")).await;
    let hello = json(&mut v).await;
    assert_eq!(
        (hello["op"].as_u64(), hello["d"]["v"].as_u64()),
        (Some(8), Some(4))
    );
    assert!(hello.get("seq").is_none(), "{hello}");
    send(&mut v, json!({ "op": 0, "d": { "server_id": g, "user_id": a.id, "session_id": a.session, "token": token } })).await;
    let ready = json(&mut v).await;
    assert_eq!(ready["op"], 2, "{ready}");
    assert!(ready.get("seq").is_none(), "{ready}");
    send(&mut v, json!({ "op": 3, "d": 1_234_567_u64 })).await;
    let ack = op(&mut v, 6).await;
    assert_eq!(ack["d"], json!(1_234_567_u64), "{ack}");
    assert!(ack.get("seq").is_none(), "{ack}");

    // v8: messages numbered from 1 but for Hello and the ACKs, which belong to one socket;
    // the ACK echoes `t`.
    let mut v = ws(&format!("ws://{ep}/?v=8")).await;
    let hello = json(&mut v).await;
    assert_eq!(hello["d"]["v"].as_u64(), Some(8));
    assert!(hello.get("seq").is_none(), "{hello}");
    send(&mut v, json!({ "op": 3, "d": { "t": 99, "seq_ack": -1 } })).await;
    let ack = json(&mut v).await;
    assert_eq!(
        (ack["op"].as_u64(), &ack["d"]),
        (Some(6), &json!({ "t": 99 }))
    );
    assert!(ack.get("seq").is_none(), "{ack}");

    // Outside 4..=8: closed with 4020, naming the range.
    for q in ["v=3", "v=9", "v=x"] {
        let mut v = ws(&format!("ws://{ep}/?{q}")).await;
        let (code, reason) = closed(&mut v).await;
        assert_eq!(code, 4020, "{q}: {reason}");
        assert!(reason.contains("?v=4 to ?v=8"), "{q}: {reason}");
    }
}

#[tokio::test]
async fn a_dropped_voice_socket_resumes_with_what_it_missed_or_ends_after_the_grace() {
    let n = node_with(|a| a.voice_resume_secs = Some(2)).await;
    let mut a = member(&n, "alice").await;
    let (g, text, voice) = n.guild(&a.token).await;
    dispatch(&mut a.gw, "GUILD_CREATE").await;
    let mut b = member(&n, "bob").await;
    n.invite_and_join(&a.token, &text, &b.token).await;
    dispatch(&mut b.gw, "GUILD_CREATE").await;

    let (ta, ep) = voice_join(&mut a.gw, &g, &voice, false).await;
    let (mut va, _) = voice_identify(&ep, &g, &a.id, &a.session, &ta)
        .await
        .unwrap();
    let mut ca = VoiceClient::new(1).await;
    send(
        &mut va,
        json!({ "op": 1, "d": { "protocol": "webrtc", "data": { "sdp": ca.offer } } }),
    )
    .await;
    let sd = json(&mut va).await;
    assert_eq!(sd["op"], 4, "{sd}");
    ca.accept(sd["d"]["sdp"].as_str().unwrap());
    let last_seen = sd["seq"]
        .as_i64()
        .expect("v8 numbers the session description");

    // Alice's socket drops without a close frame; her call goes on.
    drop(va);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = metrics(&n).await;
    assert!(m.contains("lodge_voice_parked 1"), "{m}");

    // Bob joins meanwhile: the Clients Connect for Alice waits in her parked connection.
    let (tb, _) = voice_join(&mut b.gw, &g, &voice, false).await;
    let (mut vb, _) = voice_identify(&ep, &g, &b.id, &b.session, &tb)
        .await
        .unwrap();
    let cb = VoiceClient::new(1).await;
    send(
        &mut vb,
        json!({ "op": 1, "d": { "protocol": "webrtc", "data": { "sdp": cb.offer } } }),
    )
    .await;

    // A wrong token and an unknown session are refused without touching the connection.
    let resume = |token: &str, session: &str| json!({ "op": 7, "d": { "server_id": g, "session_id": session, "token": token, "seq_ack": last_seen } });
    let mut v = ws(&format!("ws://{ep}/?v=8")).await;
    json(&mut v).await;
    send(&mut v, resume("not-the-token", &a.session)).await;
    assert_eq!(closed(&mut v).await.0, 4004);
    let mut v = ws(&format!("ws://{ep}/?v=8")).await;
    json(&mut v).await;
    send(&mut v, resume(&ta, "no-such-session")).await;
    assert_eq!(closed(&mut v).await.0, 4006);

    // Alice resumes: op 9 first, then Bob's Clients Connect, numbered after what she saw.
    let mut v = ws(&format!("ws://{ep}/?v=8")).await;
    json(&mut v).await;
    send(&mut v, resume(&ta, &a.session)).await;
    let resumed = json(&mut v).await;
    assert_eq!(resumed["op"], 9, "{resumed}");
    let cc = loop {
        let m = json(&mut v).await;
        if m["op"] == 11 {
            break m;
        }
    };
    assert_eq!(cc["d"]["user_ids"], json!([b.id]));
    assert!(cc["seq"].as_i64().unwrap() > last_seen, "{cc}");
    // The connection works as before: heartbeats are acknowledged.
    send(
        &mut v,
        json!({ "op": 3, "d": { "t": 5, "seq_ack": cc["seq"] } }),
    )
    .await;
    let ack = op(&mut v, 6).await;
    assert_eq!(ack["d"]["t"], 5);

    // Dropped again and never resumed: after the grace Alice leaves the channel.
    drop(v);
    loop {
        let vs = dispatch(&mut b.gw, "VOICE_STATE_UPDATE").await;
        if vs["user_id"].as_str() == Some(a.id.as_str()) && vs["channel_id"].is_null() {
            break;
        }
    }
    let m = metrics(&n).await;
    assert!(
        m.contains("lodge_voice_resumes_total{outcome=\"resumed\"} 1")
            && m.contains("lodge_voice_resumes_total{outcome=\"expired\"} 1")
            && m.contains("lodge_voice_parked 0"),
        "{m}"
    );
    drop(vb);
}

/// Op 7 may name a connection whose socket this node still holds open: the client stopped
/// hearing from it (its heartbeats went unacknowledged) before the node stopped hearing from
/// the client. With the right token the resume takes it over and the old socket is let go;
/// another token leaves it alone.
#[tokio::test]
async fn a_resume_takes_over_a_voice_connection_whose_socket_is_still_open() {
    let n = node_with(|_| {}).await;
    let mut a = member(&n, "alice").await;
    let (g, _, voice) = n.guild(&a.token).await;
    dispatch(&mut a.gw, "GUILD_CREATE").await;
    let (ta, ep) = voice_join(&mut a.gw, &g, &voice, false).await;
    let (mut va, _) = voice_identify(&ep, &g, &a.id, &a.session, &ta)
        .await
        .unwrap();
    let resume = |token: &str| json!({ "op": 7, "d": { "server_id": g, "session_id": a.session, "token": token, "seq_ack": 1 } });
    let acked = |t: u64| json!({ "op": 3, "d": { "t": t, "seq_ack": 1 } });

    // Another token: refused (nothing is parked), and the open connection goes on.
    let mut v = ws(&format!("ws://{ep}/?v=8")).await;
    json(&mut v).await;
    send(&mut v, resume("not-the-token")).await;
    assert_eq!(closed(&mut v).await.0, 4006);
    send(&mut va, acked(7)).await;
    assert_eq!(op(&mut va, 6).await["d"]["t"], 7);

    // The right token: op 9 on the new socket, and the old one is let go.
    let mut v = ws(&format!("ws://{ep}/?v=8")).await;
    json(&mut v).await;
    send(&mut v, resume(&ta)).await;
    let resumed = json(&mut v).await;
    assert_eq!(resumed["op"], 9, "{resumed}");
    tokio::time::timeout(Duration::from_secs(5), closed(&mut va))
        .await
        .expect("the old socket is let go");
    send(&mut v, acked(8)).await;
    assert_eq!(op(&mut v, 6).await["d"]["t"], 8);
    let m = metrics(&n).await;
    assert!(
        m.contains("lodge_voice_resumes_total{outcome=\"resumed\"} 1"),
        "{m}"
    );
}
