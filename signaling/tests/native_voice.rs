//! Discord's native voice transport ("UDP mode") end to end through a real node: Ready's SSRC,
//! IP discovery on the media port, Select Protocol `udp`, Session Description's key, AEAD
//! media both ways, op 5 SSRC mapping, and a mixed call with a WebRTC participant. The native
//! client here is hand-rolled from the protocol (docs/design/NATIVE-VOICE.md) on a real UDP
//! socket.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use lodge_sfu::native::{CryptoMode, TransportCipher};
use serde_json::{json, Value};
use tokio::net::UdpSocket;

/// A native client's media side.
struct UdpClient {
    sock: UdpSocket,
    ssrc: u32,
    server: SocketAddr,
    cipher: Option<TransportCipher>,
    seq: u16,
    ts: u32,
    counter: u32,
}

impl UdpClient {
    async fn new(ready: &Value) -> UdpClient {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = SocketAddr::new(
            ready["ip"].as_str().unwrap().parse().unwrap(),
            ready["port"].as_u64().unwrap() as u16,
        );
        UdpClient {
            sock,
            ssrc: ready["ssrc"].as_u64().unwrap() as u32,
            server,
            cipher: None,
            seq: 1,
            ts: 960,
            counter: 7,
        }
    }

    /// IP discovery: (address text, port) as the node saw us.
    async fn discover(&self) -> (String, u16) {
        let mut req = [0u8; 74];
        req[..4].copy_from_slice(&[0, 1, 0, 70]);
        req[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        self.sock.send_to(&req, self.server).await.unwrap();
        let mut buf = [0u8; 200];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), self.sock.recv_from(&mut buf))
            .await
            .expect("no discovery answer")
            .unwrap();
        assert_eq!(n, 74);
        assert_eq!(&buf[..4], &[0, 2, 0, 70]);
        assert_eq!(u32::from_be_bytes(buf[4..8].try_into().unwrap()), self.ssrc);
        let end = buf[8..72].iter().position(|b| *b == 0).unwrap();
        (
            String::from_utf8(buf[8..8 + end].to_vec()).unwrap(),
            u16::from_be_bytes([buf[72], buf[73]]),
        )
    }

    fn key(&mut self, mode: CryptoMode, sd: &Value) {
        let key: Vec<u8> = sd["secret_key"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(key.len(), 32);
        self.cipher = Some(TransportCipher::new(mode, &key.try_into().unwrap()));
    }

    /// Send a 20 ms frame of `bytes` bytes starting with `tag` (if any) and receive for `dur`;
    /// returns (ssrc, first payload byte) of every packet that opened, and how many did not.
    async fn run(
        &mut self,
        dur: Duration,
        tag: Option<u8>,
        bytes: usize,
    ) -> (Vec<(u32, u8)>, usize) {
        let end = tokio::time::Instant::now() + dur;
        let mut next_send = tokio::time::Instant::now();
        let mut heard = Vec::new();
        let mut bad = 0;
        let mut buf = vec![0u8; 2000];
        loop {
            let now = tokio::time::Instant::now();
            if now >= end {
                return (heard, bad);
            }
            if now >= next_send {
                next_send = now + Duration::from_millis(20);
                if let Some(tag) = tag {
                    let pkt = self.packet(&vec![tag; bytes]);
                    self.sock.send_to(&pkt, self.server).await.unwrap();
                }
            }
            let wake = next_send.min(end);
            if let Ok(r) = tokio::time::timeout_at(wake, self.sock.recv_from(&mut buf)).await {
                let (n, _) = r.unwrap();
                let pkt = &mut buf[..n];
                match self.cipher.as_ref().unwrap().open(pkt) {
                    Ok(o) => heard.push((
                        u32::from_be_bytes(pkt[8..12].try_into().unwrap()),
                        pkt[o.payload.start],
                    )),
                    Err(_) => bad += 1,
                }
            }
        }
    }

    fn packet(&mut self, payload: &[u8]) -> Vec<u8> {
        let out = self.cipher.as_ref().unwrap().seal_opus(
            self.ssrc,
            self.seq,
            self.ts,
            false,
            payload,
            self.counter,
        );
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(960);
        self.counter = self.counter.wrapping_add(1);
        out
    }
}

/// Select Protocol `udp` after discovery; returns op 4's `d` and the messages before it.
async fn select_udp(v: &mut Ws, c: &mut UdpClient, mode: CryptoMode) -> (Value, Vec<Value>) {
    let (address, port) = c.discover().await;
    assert_eq!(address, "127.0.0.1");
    assert_eq!(port, c.sock.local_addr().unwrap().port());
    send(
        v,
        json!({ "op": 1, "d": { "protocol": "udp", "data": { "address": address, "port": port, "mode": mode.name() } } }),
    )
    .await;
    let mut before = Vec::new();
    loop {
        let m = json(v).await;
        if m["op"] == 4 {
            c.key(mode, &m["d"]);
            return (m["d"].clone(), before);
        }
        before.push(m);
    }
}

/// op 5 messages in `msgs`: user id → ssrc.
fn ssrc_map(msgs: &[Value]) -> HashMap<String, u32> {
    msgs.iter()
        .filter(|m| m["op"] == 5)
        .map(|m| {
            (
                m["d"]["user_id"].as_str().unwrap().to_string(),
                m["d"]["ssrc"].as_u64().unwrap() as u32,
            )
        })
        .collect()
}

#[tokio::test]
async fn native_and_webrtc_callers_share_a_call() {
    let n = node().await;
    let (mut a, mut b, g, text, voice) = guild_of_two(&n).await;
    let mut c = member(&n, "carol").await;
    n.invite_and_join(&a.token, &text, &c.token).await;

    let (ta, endpoint) = voice_join(&mut a.gw, &g, &voice, false).await;
    let (tb, _) = voice_join(&mut b.gw, &g, &voice, false).await;
    let (tc, _) = voice_join(&mut c.gw, &g, &voice, false).await;

    // Alice: native, AES-GCM. Ready names the modes and her SSRC (odd: never STUN's cookie).
    let (mut va, ready_a) = voice_identify(&endpoint, &g, &a.id, &a.session, &ta)
        .await
        .unwrap();
    assert_eq!(
        ready_a["modes"],
        json!(["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"])
    );
    assert_eq!(ready_a["ssrc"].as_u64().unwrap() % 2, 1);
    let mut ua = UdpClient::new(&ready_a).await;
    let (sd, _) = select_udp(&mut va, &mut ua, CryptoMode::Aes256GcmRtpsize).await;
    assert_eq!(sd["mode"], "aead_aes256_gcm_rtpsize");
    assert_eq!(sd["dave_protocol_version"], 0);
    assert_eq!(sd["audio_codec"], "opus");

    // Bob: native, XChaCha. He learns Alice's SSRC from an op 5 before any voice.
    let (mut vb, ready_b) = voice_identify(&endpoint, &g, &b.id, &b.session, &tb)
        .await
        .unwrap();
    let mut ub = UdpClient::new(&ready_b).await;
    let (_, before_b) = select_udp(&mut vb, &mut ub, CryptoMode::XChaCha20Poly1305Rtpsize).await;
    let mut b_msgs = before_b;
    b_msgs.extend(collect(&mut vb, Duration::from_millis(200)).await);
    assert_eq!(
        ssrc_map(&b_msgs).get(&a.id),
        Some(&ua.ssrc),
        "bob got op 5 for alice: {b_msgs:?}"
    );

    // Carol: WebRTC (the browser path).
    let (mut vc, ready_c) = voice_identify(&endpoint, &g, &c.id, &c.session, &tc)
        .await
        .unwrap();
    let mut cc = VoiceClient::new(2).await;
    send(
        &mut vc,
        json!({ "op": 1, "d": { "protocol": "webrtc", "data": { "sdp": cc.offer }, "slots": 2 } }),
    )
    .await;
    let sd = loop {
        let m = json(&mut vc).await;
        if m["op"] == 4 {
            break m;
        }
    };
    cc.accept(sd["d"]["sdp"].as_str().unwrap());

    // Alice says she speaks: bob hears of it with her user id and the SSRC the node knows.
    send(
        &mut va,
        json!({ "op": 5, "d": { "speaking": 1, "delay": 0, "ssrc": ua.ssrc } }),
    )
    .await;

    // Everybody talks at once for a while.
    let dur = Duration::from_secs(4);
    let ((ha, bad_a), (hb, bad_b), hc) = tokio::join!(
        ua.run(dur, Some(1), 120),
        ub.run(dur, Some(2), 100),
        cc.run(dur, Some(3), 20)
    );
    assert_eq!(
        (bad_a, bad_b),
        (0, 0),
        "every packet to a native client opens"
    );

    let a_msgs = collect(&mut va, Duration::from_millis(300)).await;
    b_msgs.extend(collect(&mut vb, Duration::from_millis(300)).await);
    let carol_ssrc = ready_c["ssrc"].as_u64().unwrap() as u32;
    assert_eq!(ssrc_map(&a_msgs).get(&b.id), Some(&ub.ssrc), "{a_msgs:?}");
    assert_eq!(
        ssrc_map(&a_msgs).get(&c.id),
        Some(&carol_ssrc),
        "{a_msgs:?}"
    );
    assert_eq!(ssrc_map(&b_msgs).get(&c.id), Some(&carol_ssrc));
    assert!(
        b_msgs
            .iter()
            .any(|m| m["op"] == 5 && m["d"]["user_id"] == a.id && m["d"]["speaking"] == 1),
        "alice's op 5 relayed: {b_msgs:?}"
    );

    let count = |h: &[(u32, u8)], ssrc: u32, tag: u8| {
        h.iter().filter(|(s, t)| *s == ssrc && *t == tag).count()
    };
    // Native listeners hear each speaker under its own SSRC.
    assert!(
        count(&hb, ua.ssrc, 1) > 100,
        "bob heard alice {}",
        count(&hb, ua.ssrc, 1)
    );
    assert!(
        count(&hb, carol_ssrc, 3) > 100,
        "bob heard carol {}",
        count(&hb, carol_ssrc, 3)
    );
    assert!(
        count(&ha, ub.ssrc, 2) > 100,
        "alice heard bob {}",
        count(&ha, ub.ssrc, 2)
    );
    assert!(count(&ha, carol_ssrc, 3) > 100);
    assert_eq!(count(&ha, ua.ssrc, 1), 0, "nobody hears themselves");
    // The WebRTC participant hears both native speakers on its slots.
    let tags = |t: u8| hc.iter().filter(|(_, x)| *x == t).count();
    assert!(
        tags(1) > 100 && tags(2) > 100,
        "carol heard {} / {}",
        tags(1),
        tags(2)
    );
    assert_eq!(tags(3), 0);

    // A client flipping its speaking flags in a loop: each change would fan out to everyone,
    // so changes beyond the relay budget (2/s, burst 10) are dropped and counted.
    for i in 0..200 {
        send(
            &mut va,
            json!({ "op": 5, "d": { "speaking": i % 2, "delay": 0, "ssrc": ua.ssrc } }),
        )
        .await;
    }
    let flood = collect(&mut vb, Duration::from_millis(500)).await;
    let relayed = flood
        .iter()
        .filter(|m| m["op"] == 5 && m["d"]["user_id"] == a.id)
        .count();
    assert!((1..=12).contains(&relayed), "{relayed} op 5 relayed of 200");
    let dropped = metric(
        &metrics(&n).await,
        "lodge_voice_speaking_relays_dropped_total",
    )
    .expect("the relay counter is exported");
    // Half the 200 repeat the flags last relayed (not a change); nearly all the rest are over
    // the budget.
    assert!(dropped >= 85.0, "{dropped} relays dropped");
}
