//! The voice side under abuse and at shutdown: a voice client that stops reading is closed
//! instead of growing the node's memory, and the call summaries of participants a shutdown
//! closes are stored before the store closes.

mod common;

use lodge_ids::{ChannelId, GuildId, UserId};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

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
            GuildId(gid),
            ChannelId(cid),
            UserId(0),
            json!({ "op": 13, "d": { "user_id": i.to_string(), "pad": pad } }),
        );
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Closed as soon as its outbox overflows: before even a blocked write's 5 s deadline (and
    // well within the heartbeat timeout of 27.5 s).
    let deadline = Instant::now() + lodge_signaling::voice::outbox::WRITE_TIMEOUT;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stores_the_summaries_of_the_calls_it_ends() {
    let mut n = node().await;
    let owner = member(&n, "owner").await;
    let (g, text, voice) = n.guild(&owner.token).await;
    // Several calls: the old shutdown closed the store while their summaries were still being
    // written one after another.
    let mut ids = Vec::new();
    let mut calls = Vec::new();
    let mut members = Vec::new();
    for i in 0..6 {
        let mut m = member(&n, &format!("caller{i}")).await;
        n.invite_and_join(&owner.token, &text, &m.token).await;
        calls.push(voice_call(&mut m, &g, &voice, 1).await);
        ids.push(m.id.clone());
        members.push(m);
    }
    let mut runs = Vec::new();
    for (i, (v, mut c)) in calls.into_iter().enumerate() {
        runs.push(tokio::spawn(async move {
            c.run(Duration::from_secs(2), Some(i as u8), 20).await;
            assert!(c.rtc.is_connected(), "call {i} never connected");
            (v, c)
        }));
    }
    let mut keep = Vec::new();
    for r in runs {
        keep.push(r.await.unwrap());
    }

    let cfg = n.run.as_ref().unwrap().state.cfg.clone();
    n.run.take().unwrap().shutdown().await;

    let store = match &cfg.database_url {
        Some(url) => lodge_chat::Store::open_url(url).await.unwrap(),
        None => lodge_chat::Store::open(&cfg.database).await.unwrap(),
    };
    let stored = store
        .calls(&lodge_chat::CallQuery {
            any_guild: true,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut users: Vec<String> = stored.iter().map(|c| c.user_id.to_string()).collect();
    users.sort();
    ids.sort();
    assert_eq!(users, ids, "calls ended by the shutdown left no summary");
    assert!(stored.iter().all(|c| c.packets_in > 0), "{stored:?}");
    store.close().await;
}

#[tokio::test]
async fn a_user_cannot_hold_more_participants_than_the_node_allows() {
    let n = node().await;
    let mut a = member(&n, "alice").await;
    // One voice state per guild: five guilds, five joins that never connect media.
    let limit =
        lodge_sfu::NodeConfig::new("127.0.0.1:1".parse().unwrap()).max_participants_per_user;
    let mut open = Vec::new();
    for i in 0..=limit {
        let (g, _, voice) = n.guild(&a.token).await;
        let (t, ep) = voice_join(&mut a.gw, &g, &voice, false).await;
        let (mut v, _) = voice_identify(&ep, &g, &a.id, &a.session, &t)
            .await
            .unwrap();
        let c = VoiceClient::new(1).await;
        send(
            &mut v,
            json!({ "op": 1, "d": { "protocol": "webrtc", "data": { "sdp": c.offer } } }),
        )
        .await;
        let m = match next(&mut v).await {
            Frame::Json(m) => m,
            Frame::Closed(code, reason) => {
                assert_eq!(i, limit, "join {i} refused: {code} {reason}");
                assert_eq!(code, 4014, "{reason}");
                assert!(reason.contains("max_participants_per_user"), "{reason}");
                assert!(
                    reason.contains(&format!("{limit} participants")),
                    "{reason}"
                );
                return;
            }
        };
        assert_eq!(m["op"], 4, "{m}");
        open.push((v, c));
    }
    panic!(
        "join {} beyond max_participants_per_user was accepted",
        limit + 1
    );
}

/// A voice channel's `user_limit` holds when members join at the same moment: the count and
/// the state write are one atomic step, so racing joins never overfill it. Members who may
/// move others still get in, as on Discord.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_joins_never_overfill_a_capped_channel() {
    let n = node().await;
    let mut owner = member(&n, "owner").await;
    let (g, text, _) = n.guild(&owner.token).await;
    let (st, c) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&owner.token),
            Some(json!({ "name": "pair", "type": 2, "user_limit": 2 })),
        )
        .await;
    assert_eq!(st, 201, "{c}");
    let pair = c["id"].as_str().unwrap().to_string();
    let mut members = Vec::new();
    for i in 0..5 {
        let mut m = member(&n, &format!("caller{i}")).await;
        n.invite_and_join(&owner.token, &text, &m.token).await;
        dispatch(&mut m.gw, "GUILD_CREATE").await;
        members.push(m);
    }
    // Every op 4 is on the wire before any answer is read.
    for m in members.iter_mut() {
        send(&mut m.gw, json!({ "op": 4, "d": { "guild_id": g, "channel_id": pair, "self_mute": false, "self_deaf": false } })).await;
    }
    let (mut admitted, mut refused) = (0, 0);
    for m in members.iter_mut() {
        let v = loop {
            let v = json(&mut m.gw).await;
            let t = v["t"].as_str().unwrap_or("");
            if t == "VOICE_SERVER_UPDATE" || t == "LODGE_VOICE_ERROR" {
                break v;
            }
        };
        if v["t"] == "VOICE_SERVER_UPDATE" {
            admitted += 1;
        } else {
            assert_eq!(v["d"]["code"], 50035, "{v}");
            let msg = v["d"]["message"].as_str().unwrap();
            assert!(msg.contains("user_limit 2"), "the limit is named: {msg}");
            refused += 1;
        }
    }
    assert_eq!((admitted, refused), (2, 3));
    // The owner (who may move members) still gets in.
    let (_t, _ep) = voice_join(&mut owner.gw, &g, &pair, false).await;
}
