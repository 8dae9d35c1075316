//! DAVE over the voice gateway, from a client's side of the socket: op 4's version, op 25 as a
//! numbered binary frame (replayed as such after a resume), a downgrade when a browser joins (op 21 → op 23 → op 22) and the
//! upgrade when it leaves (op 24, op 25 again), refused binary input counted, and a channel's
//! `require_dave` closing with 4017. (The MLS group itself is proven with real clients in
//! `songbird.rs` and `tests/native-voice/`.)

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A voice gateway frame as a DAVE client sees them.
#[derive(Debug)]
enum In {
    Json(Value),
    /// Sequence number, opcode, payload (v8 framing).
    Binary(u16, u8, Vec<u8>),
    Closed(u16, String),
}

async fn recv(v: &mut Ws) -> In {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), v.next())
            .await
            .expect("no frame within 10 s");
        match m {
            Some(Ok(Message::Text(t))) => return In::Json(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Binary(b))) => {
                assert!(b.len() >= 3, "a binary frame carries seq and opcode");
                return In::Binary(u16::from_be_bytes([b[0], b[1]]), b[2], b[3..].to_vec());
            }
            Some(Ok(Message::Close(Some(c)))) => {
                return In::Closed(c.code.into(), c.reason.to_string())
            }
            Some(Ok(Message::Close(None))) | None => return In::Closed(1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return In::Closed(1006, e.to_string()),
        }
    }
}

/// Frames until one matches `want`, failing on a close.
async fn until(v: &mut Ws, what: &str, want: impl Fn(&In) -> bool) -> In {
    loop {
        let f = recv(v).await;
        if let In::Closed(c, r) = &f {
            panic!("closed {c} {r} while waiting for {what}");
        }
        if want(&f) {
            return f;
        }
    }
}

fn op(f: &In) -> Option<u64> {
    match f {
        In::Json(j) => j["op"].as_u64(),
        In::Binary(_, op, _) => Some(u64::from(*op)),
        In::Closed(..) => None,
    }
}

/// Open the voice gateway and identify with `max_dave_protocol_version` = `max`.
async fn identify(endpoint: &str, g: &str, m: &Member, token: &str, max: Option<u16>) -> Ws {
    let mut v = ws(&format!("ws://{endpoint}/?v=8")).await;
    assert_eq!(json(&mut v).await["op"], 8);
    let mut d = json!({ "server_id": g, "user_id": m.id, "session_id": m.session, "token": token });
    if let Some(max) = max {
        d["max_dave_protocol_version"] = json!(max);
    }
    send(&mut v, json!({ "op": 0, "d": d })).await;
    v
}

async fn select_udp(v: &mut Ws) -> Value {
    send(
        v,
        json!({ "op": 1, "d": { "protocol": "udp", "data": { "address": "127.0.0.1", "port": 9, "mode": "aead_aes256_gcm_rtpsize" } } }),
    )
    .await;
    match until(v, "op 4", |f| op(f) == Some(4)).await {
        In::Json(j) => j,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn dave_runs_over_the_voice_gateway_and_downgrades_for_a_browser() {
    let n = node().await;
    let (mut a, mut b, g, _, voice) = guild_of_two(&n).await;

    // Binary before Identify: not authenticated.
    let (ta, endpoint) = voice_join(&mut a.gw, &g, &voice, false).await;
    let mut early = ws(&format!("ws://{endpoint}/?v=8")).await;
    assert_eq!(json(&mut early).await["op"], 8);
    early
        .send(Message::Binary(vec![26, 0, 1].into()))
        .await
        .unwrap();
    assert!(matches!(recv(&mut early).await, In::Closed(4003, _)));

    // Alice, a native DAVE client: op 4 says version 1, then op 25 (the external sender) as a
    // binary frame numbered right after it.
    let mut va = identify(&endpoint, &g, &a, &ta, Some(1)).await;
    until(&mut va, "Ready", |f| op(f) == Some(2)).await;
    let sd = select_udp(&mut va).await;
    assert_eq!(sd["d"]["dave_protocol_version"], 1, "{sd}");
    let sd_seq = sd["seq"].as_u64().unwrap() as u16;
    match until(&mut va, "op 25", |f| op(f) == Some(25)).await {
        In::Binary(seq, _, payload) => {
            assert_eq!(
                seq,
                sd_seq.wrapping_add(1),
                "binary frames share the JSON numbering"
            );
            // ExternalSender: a 65-byte P-256 key (2-byte length 0x4041) then a basic credential.
            assert_eq!(&payload[..3], &[0x40, 0x41, 0x04], "{payload:02x?}");
        }
        _ => unreachable!(),
    }

    // The socket drops before the client acknowledged op 25: a resume (op 7 with seq_ack = op
    // 4's seq) gets op 9 and then op 25 again, as a binary frame with its first number.
    drop(va);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut va = ws(&format!("ws://{endpoint}/?v=8")).await;
    assert_eq!(json(&mut va).await["op"], 8);
    send(
        &mut va,
        json!({ "op": 7, "d": { "server_id": g, "session_id": a.session, "token": ta, "seq_ack": sd_seq } }),
    )
    .await;
    assert!(matches!(recv(&mut va).await, In::Json(j) if j["op"] == 9));
    match recv(&mut va).await {
        In::Binary(seq, 25, payload) => {
            assert_eq!(seq, sd_seq.wrapping_add(1), "replayed with its number");
            assert_eq!(&payload[..3], &[0x40, 0x41, 0x04]);
        }
        f => panic!("expected op 25 replayed, got {f:?}"),
    }

    // Garbage where a key package belongs, an opcode a client never sends and an ACK for a
    // transition that does not exist: dropped (the first two counted), the connection stays.
    va.send(Message::Binary(vec![26, 0xff, 0xff].into()))
        .await
        .unwrap();
    va.send(Message::Binary(vec![27, 0].into())).await.unwrap();
    send(&mut va, json!({ "op": 23, "d": { "transition_id": 999 } })).await;
    let m = collect(&mut va, Duration::from_millis(300)).await;
    assert!(m.is_empty(), "nothing answers refused input: {m:?}");
    let text = metrics(&n).await;
    assert_eq!(
        metric(&text, "lodge_dave_refused_total{reason=\"key_package\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "lodge_dave_refused_total{reason=\"unexpected_opcode\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&text, "lodge_dave_calls{state=\"e2ee\"}"), Some(1.0));

    // Bob joins from a browser (WebRTC has no DAVE here): the call downgrades. Alice gets op 21
    // for version 0 with a transition id, acknowledges it, and op 22 executes it.
    let (mut vb, _cb) = voice_call(&mut b, &g, &voice, 2).await;
    let prep = match until(&mut va, "op 21", |f| op(f) == Some(21)).await {
        In::Json(j) => j,
        _ => unreachable!(),
    };
    assert_eq!(prep["d"]["protocol_version"], 0, "{prep}");
    let t = prep["d"]["transition_id"].as_u64().unwrap();
    assert_ne!(t, 0, "a downgrade is a numbered transition");
    send(&mut va, json!({ "op": 23, "d": { "transition_id": t } })).await;
    let exec = match until(&mut va, "op 22", |f| op(f) == Some(22)).await {
        In::Json(j) => j,
        _ => unreachable!(),
    };
    assert_eq!(exec["d"]["transition_id"], t);
    let text = metrics(&n).await;
    assert_eq!(
        metric(&text, "lodge_dave_events_total{event=\"downgrade\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&text, "lodge_dave_calls{state=\"e2ee\"}"), Some(0.0));

    // Bob leaves: every remaining participant has DAVE, so the call upgrades (op 24 for a new
    // group at epoch 1, then op 25 again).
    vb.close(None).await.unwrap();
    let epoch = match until(&mut va, "op 24", |f| op(f) == Some(24)).await {
        In::Json(j) => j,
        _ => unreachable!(),
    };
    assert_eq!(epoch["d"], json!({ "protocol_version": 1, "epoch": 1 }));
    until(&mut va, "op 25 after the upgrade", |f| op(f) == Some(25)).await;
    let text = metrics(&n).await;
    assert_eq!(
        metric(&text, "lodge_dave_events_total{event=\"upgrade\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_channel_that_requires_dave_refuses_clients_without_it() {
    let n = node().await;
    let mut a = member(&n, "alice").await;
    let (g, _text, voice) = n.guild(&a.token).await;
    dispatch(&mut a.gw, "GUILD_CREATE").await;
    let (status, _) = n
        .req(
            "PATCH",
            &format!("/channels/{voice}"),
            Some(&a.token),
            Some(json!({ "require_dave": true })),
        )
        .await;
    assert_eq!(status, 200);

    // Without DAVE (the web client's Identify names none): 4017 at Identify.
    let (t, endpoint) = voice_join(&mut a.gw, &g, &voice, false).await;
    let mut v = identify(&endpoint, &g, &a, &t, None).await;
    match recv(&mut v).await {
        In::Closed(code, reason) => {
            assert_eq!(code, 4017);
            assert!(reason.contains("max_dave_protocol_version"), "{reason}");
        }
        f => panic!("expected 4017, got {f:?}"),
    }

    // With DAVE, but over WebRTC (which has none here): 4017 at Select Protocol.
    let (t, endpoint) = voice_join(&mut a.gw, &g, &voice, false).await;
    let mut v = identify(&endpoint, &g, &a, &t, Some(1)).await;
    until(&mut v, "Ready", |f| op(f) == Some(2)).await;
    let c = VoiceClient::new(1).await;
    send(
        &mut v,
        json!({ "op": 1, "d": { "protocol": "webrtc", "data": { "sdp": c.offer }, "slots": 1 } }),
    )
    .await;
    assert!(matches!(recv(&mut v).await, In::Closed(4017, _)));

    // A native client with DAVE joins at version 1.
    let (t, endpoint) = voice_join(&mut a.gw, &g, &voice, false).await;
    let mut v = identify(&endpoint, &g, &a, &t, Some(1)).await;
    until(&mut v, "Ready", |f| op(f) == Some(2)).await;
    let sd = select_udp(&mut v).await;
    assert_eq!(sd["d"]["dave_protocol_version"], 1);
}
