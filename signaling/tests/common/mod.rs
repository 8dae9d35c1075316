//! Test harness: a real node on loopback ports, HTTP and WebSocket clients, str0m voice clients.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lodge_signaling::config::{Config, ServeArgs};
use lodge_signaling::Running;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct Node {
    pub run: Option<Running>,
    pub base: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a node run as a process (its own
/// listener is bound later, so another test may take the port in between: callers retry or
/// accept that).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn node() -> Node {
    node_with(|_| {}).await
}

pub async fn node_with(f: impl FnOnce(&mut ServeArgs)) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut args = ServeArgs {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        media_listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.path().to_path_buf()),
        // Two media workers whatever the machine: rooms then spread over two ports, and every
        // voice test crosses the routing between them.
        media_workers: Some(2),
        ..Default::default()
    };
    // The same suite runs on PostgreSQL when TEST_POSTGRES_URL names an admin URL.
    args.database_url = lodge_chat::store::testing::database_url_from_env().await;
    // Suites register many accounts from 127.0.0.1; tests of that limit set their own.
    args.registrations_per_ip_per_hour = Some(100_000);
    f(&mut args);
    let cfg = Config::load(&args, std::iter::empty()).unwrap();
    let run = lodge_signaling::start(cfg).await.unwrap();
    let base = format!("http://{}", run.http_addr);
    Node {
        run: Some(run),
        base,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

/// A test setting from the environment (`TEST_REDIS_URL`, `TEST_POSTGRES_URL`), if set.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A cluster member on `ip` (a loopback address of its own) named `id`, on one Redis and
/// one database; `f` sets anything else.
pub async fn cluster_node(
    ip: &str,
    id: String,
    redis: String,
    db: String,
    f: impl FnOnce(&mut ServeArgs),
) -> Node {
    node_with(move |a| {
        a.http_listen = Some(format!("{ip}:0").parse().unwrap());
        a.media_listen = Some(format!("{ip}:0").parse().unwrap());
        a.redis_url = Some(redis);
        a.database_url = Some(db);
        a.node_id = Some(id);
        f(a);
    })
    .await
}

impl Node {
    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v10{}", self.base, path)
    }

    pub async fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.http.request(m, self.url(path));
        if let Some(t) = token {
            r = r.header("Authorization", t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            },
        )
    }

    /// Register and return (user id, token).
    pub async fn user(&self, name: &str) -> (String, String) {
        let (st, v) = self
            .req(
                "POST",
                "/auth/register",
                None,
                Some(json!({ "username": name, "password": "password-123" })),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        (
            v["user"]["id"].as_str().unwrap().to_string(),
            v["token"].as_str().unwrap().to_string(),
        )
    }

    /// Create a guild; returns (guild id, text channel id, voice channel id).
    pub async fn guild(&self, token: &str) -> (String, String, String) {
        let (st, g) = self
            .req(
                "POST",
                "/guilds",
                Some(token),
                Some(json!({ "name": "Test Den" })),
            )
            .await;
        assert_eq!(st, 201, "{g}");
        let chans = g["channels"].as_array().unwrap();
        let text = chans.iter().find(|c| c["type"] == 0).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let voice = chans.iter().find(|c| c["type"] == 2).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        (g["id"].as_str().unwrap().to_string(), text, voice)
    }

    pub async fn invite_and_join(&self, owner: &str, text: &str, joiner: &str) {
        let (st, inv) = self
            .req(
                "POST",
                &format!("/channels/{text}/invites"),
                Some(owner),
                None,
            )
            .await;
        assert_eq!(st, 200, "{inv}");
        let (st, v) = self
            .req(
                "POST",
                &format!("/invites/{}", inv["code"].as_str().unwrap()),
                Some(joiner),
                None,
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }

    pub fn gateway_url(&self) -> String {
        format!(
            "ws://{}/gateway?v=10&encoding=json",
            self.run.as_ref().unwrap().http_addr
        )
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.run.as_ref().unwrap().http_addr
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn ws(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

pub enum Frame {
    Json(Value),
    Closed(u16, String),
}

pub async fn next(ws: &mut Ws) -> Frame {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no frame within 10 s")
        {
            Some(Ok(Message::Text(t))) => return Frame::Json(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(Some(c)))) => {
                return Frame::Closed(c.code.into(), c.reason.to_string())
            }
            Some(Ok(Message::Close(None))) | None => return Frame::Closed(1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Frame::Closed(1006, e.to_string()),
        }
    }
}

pub async fn json(ws: &mut Ws) -> Value {
    match next(ws).await {
        Frame::Json(v) => v,
        Frame::Closed(c, r) => panic!("closed {c} {r}"),
    }
}

pub async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        match next(ws).await {
            Frame::Closed(c, r) => return (c, r),
            Frame::Json(_) => continue,
        }
    }
}

/// Next message with opcode `op` (skipping others), e.g. a heartbeat ACK (6).
pub async fn op(ws: &mut Ws, op: u64) -> Value {
    loop {
        let v = json(ws).await;
        if v["op"] == op {
            return v;
        }
    }
}

/// Next dispatch of type `t` (skipping others).
pub async fn dispatch(ws: &mut Ws, t: &str) -> Value {
    loop {
        let v = json(ws).await;
        if v["op"] == 0 && v["t"] == t {
            return v["d"].clone();
        }
    }
}

/// Connected and identified gateway session; returns (ws, READY).
pub async fn gateway(node: &Node, token: &str) -> (Ws, Value) {
    let mut w = ws(&node.gateway_url()).await;
    let hello = json(&mut w).await;
    assert_eq!(hello["op"], 10);
    send(&mut w, json!({ "op": 2, "d": { "token": token, "intents": 131071, "properties": { "os": "linux", "browser": "test", "device": "test" } } })).await;
    let ready = dispatch(&mut w, "READY").await;
    (w, ready)
}

// ---------- voice ----------

/// A registered user with an identified gateway session.
pub struct Member {
    pub id: String,
    pub token: String,
    pub gw: Ws,
    pub session: String,
}

pub async fn member(n: &Node, name: &str) -> Member {
    let (id, token) = n.user(name).await;
    let (gw, ready) = gateway(n, &token).await;
    Member {
        id,
        token,
        session: ready["session_id"].as_str().unwrap().to_string(),
        gw,
    }
}

/// Alice owns a guild and Bob joined it by invite (both with identified gateway sessions,
/// Alice past GUILD_CREATE): (alice, bob, guild, text channel, voice channel).
pub async fn guild_of_two(n: &Node) -> (Member, Member, String, String, String) {
    let mut a = member(n, "alice").await;
    let (g, text, voice) = n.guild(&a.token).await;
    dispatch(&mut a.gw, "GUILD_CREATE").await;
    let b = member(n, "bob").await;
    n.invite_and_join(&a.token, &text, &b.token).await;
    (a, b, g, text, voice)
}

/// Gateway op 4 join; returns (token, endpoint) from VOICE_SERVER_UPDATE.
pub async fn voice_join(
    w: &mut Ws,
    guild: &str,
    channel: &str,
    self_mute: bool,
) -> (String, String) {
    send(w, json!({ "op": 4, "d": { "guild_id": guild, "channel_id": channel, "self_mute": self_mute, "self_deaf": false } })).await;
    let d = dispatch(w, "VOICE_SERVER_UPDATE").await;
    assert_eq!(d["guild_id"].as_str().unwrap(), guild);
    (
        d["token"].as_str().unwrap().to_string(),
        d["endpoint"].as_str().unwrap().to_string(),
    )
}

/// Open the voice gateway and identify; returns the socket and Ready's `d`, or the close.
pub async fn voice_identify(
    endpoint: &str,
    guild: &str,
    user: &str,
    session: &str,
    token: &str,
) -> Result<(Ws, Value), (u16, String)> {
    let mut v = ws(&format!("ws://{endpoint}/?v=8")).await;
    let hello = json(&mut v).await;
    assert_eq!(hello["op"], 8);
    assert!(hello["d"]["heartbeat_interval"].as_u64().unwrap() > 1000);
    send(&mut v, json!({ "op": 0, "d": { "server_id": guild, "user_id": user, "session_id": session, "token": token } })).await;
    match next(&mut v).await {
        Frame::Json(r) => {
            assert_eq!(r["op"], 2, "{r}");
            Ok((v, r["d"].clone()))
        }
        Frame::Closed(c, r) => Err((c, r)),
    }
}

/// Join `voice` of `g` (op 4, the voice gateway, Select Protocol with `slots` speaker slots):
/// the voice socket and a client whose offer was answered.
pub async fn voice_call(m: &mut Member, g: &str, voice: &str, slots: usize) -> (Ws, VoiceClient) {
    let (t, ep) = voice_join(&mut m.gw, g, voice, false).await;
    let (mut v, _) = voice_identify(&ep, g, &m.id, &m.session, &t).await.unwrap();
    let mut c = VoiceClient::new(slots).await;
    send(
        &mut v,
        json!({ "op": 1, "d": { "protocol": "webrtc", "data": { "sdp": c.offer }, "slots": slots } }),
    )
    .await;
    let sd = loop {
        let m = json(&mut v).await;
        if m["op"] == 4 {
            break m;
        }
    };
    c.accept(sd["d"]["sdp"].as_str().unwrap());
    (v, c)
}

/// A libwebrtc-like voice client on str0m over a real UDP socket.
pub struct VoiceClient {
    pub rtc: str0m::Rtc,
    pub sock: tokio::net::UdpSocket,
    pub send_mid: str0m::media::Mid,
    pub pt: str0m::media::Pt,
    pending: Option<str0m::change::SdpPendingOffer>,
    pub offer: String,
    /// Next RTP sequence number and timestamp (kept across runs: SRTP refuses replays).
    seq: u64,
    ts: u32,
}

/// What a client heard: (slot ssrc, first payload byte = speaker tag).
pub type Heard = Vec<(u32, u8)>;

impl VoiceClient {
    pub async fn new(slots: usize) -> VoiceClient {
        use str0m::media::{Direction, MediaKind};
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let now = std::time::Instant::now();
        let mut rtc = str0m::Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        rtc.add_local_candidate(str0m::Candidate::host(sock.local_addr().unwrap(), "udp").unwrap());
        let mut api = rtc.sdp_api();
        let send_mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        for _ in 0..slots {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        let (offer, pending) = api.apply().unwrap();
        let pt = rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == str0m::format::Codec::Opus)
            .unwrap()
            .pt();
        VoiceClient {
            rtc,
            sock,
            send_mid,
            pt,
            pending: Some(pending),
            offer: offer.to_sdp_string(),
            seq: 1000,
            ts: 5000,
        }
    }

    pub fn accept(&mut self, answer: &str) {
        let a = str0m::change::SdpAnswer::from_sdp_string(answer).unwrap();
        self.rtc
            .sdp_api()
            .accept_answer(self.pending.take().unwrap(), a)
            .unwrap();
    }

    /// Run the client for `dur`: network I/O, timers, and (if `tag` is set) a 20 ms Opus-sized
    /// packet with audio level `level` whose first byte is `tag`. Returns what it heard.
    pub async fn run(&mut self, dur: Duration, tag: Option<u8>, level: u8) -> Heard {
        use str0m::net::{Protocol, Receive};
        use str0m::{Event, Input, Output};
        let end = tokio::time::Instant::now() + dur;
        let mut heard = Vec::new();
        let mut buf = vec![0u8; 2000];
        let mut next_send = tokio::time::Instant::now();
        let local = self.sock.local_addr().unwrap();
        loop {
            let timeout = loop {
                match self.rtc.poll_output().unwrap() {
                    Output::Timeout(t) => break t,
                    Output::Transmit(t) => {
                        self.sock.send_to(&t.contents, t.destination).await.unwrap();
                    }
                    Output::Event(Event::RtpPacket(p)) => {
                        heard.push((*p.header.ssrc, p.payload.first().copied().unwrap_or(0)))
                    }
                    Output::Event(_) => {}
                }
            };
            let now = tokio::time::Instant::now();
            if now >= end {
                return heard;
            }
            if let Some(tag) = tag {
                if now >= next_send && self.rtc.is_connected() {
                    next_send = now + Duration::from_millis(20);
                    let ext = str0m::rtp::ExtensionValues {
                        audio_level: Some(-(level as i8)),
                        voice_activity: Some(true),
                        ..Default::default()
                    };
                    let mut api = self.rtc.direct_api();
                    if let Some(tx) = api.stream_tx_by_mid(self.send_mid, None) {
                        tx.write_rtp(
                            str0m::rtp::RtpWrite::new(
                                self.pt,
                                self.seq.into(),
                                self.ts,
                                std::time::Instant::now(),
                                vec![tag; 80],
                            )
                            .ext_vals(ext),
                        );
                        self.seq += 1;
                        self.ts = self.ts.wrapping_add(960);
                    }
                    continue;
                }
            }
            let wake = tokio::time::Instant::from_std(timeout)
                .min(next_send.max(now + Duration::from_millis(1)))
                .min(end);
            tokio::select! {
                r = self.sock.recv_from(&mut buf) => {
                    let (n, src) = r.unwrap();
                    if let Ok(contents) = buf[..n].try_into() {
                        let _ = self.rtc.handle_input(Input::Receive(std::time::Instant::now(), Receive { proto: Protocol::Udp, source: src, destination: local, contents }));
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    self.rtc.handle_input(Input::Timeout(std::time::Instant::now())).unwrap();
                }
            }
        }
    }
}

/// Read voice gateway messages for `dur`, collecting them (a close fails the test).
pub async fn collect(v: &mut Ws, dur: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + dur;
    while let Ok(f) = tokio::time::timeout_at(end, next(v)).await {
        match f {
            Frame::Json(j) => out.push(j),
            Frame::Closed(c, r) => panic!("voice gateway closed {c} {r}"),
        }
    }
    out
}

/// The node's /metrics text.
pub async fn metrics(n: &Node) -> String {
    let res = n.http.get(format!("{}/metrics", n.base)).send().await;
    res.unwrap().text().await.unwrap()
}

/// The value of the metric line starting with `series` (name and labels).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
