//! `lodge-client` against a real node in this process: two clients in one voice channel over
//! the native UDP transport. A tone one way is heard (its frequency, at the other side, per
//! speaker and mixed); mute and deafen take effect; a forced network change (new source port)
//! keeps the call; through a relay that loses a fifth of one client's voice, the node's
//! receiver reports make that client turn FEC on and lower its bitrate; dropped gateway and
//! voice gateway connections are resumed and the call goes on; a moderator's move to another
//! channel is followed.

use std::time::Duration;

use lodge_client::audio_io::{MemorySink, Recorded, Silence, Tone};
use lodge_client::{Call, CryptoMode, JoinOptions};
use lodge_signaling::config::{Config, ServeArgs};
use serde_json::{json, Value};

struct Node {
    _run: lodge_signaling::Running,
    base: String,
    /// REST through this (it trusts the node's certificate when the node serves TLS).
    http: reqwest::Client,
    media: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let args = ServeArgs {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        media_listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.path().to_path_buf()),
        media_workers: Some(1),
        ..Default::default()
    };
    let cfg = Config::load(&args, std::iter::empty()).unwrap();
    let run = lodge_signaling::start(cfg).await.unwrap();
    let base = format!("http://{}", run.http_addr);
    Node {
        media: run.media_addr,
        _run: run,
        base,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

async fn req(
    n: &Node,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Value {
    let http = &n.http;
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = http.request(m, format!("{}/api/v10{path}", n.base));
    if let Some(t) = token {
        r = r.header("Authorization", t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let res = r.send().await.unwrap();
    assert!(
        res.status().is_success(),
        "{method} {path}: {}",
        res.status()
    );
    res.json().await.unwrap()
}

/// Two members of one guild: (tokens, guild id, voice channel id).
async fn guild_of_two(n: &Node) -> ([String; 2], String, String) {
    let (t, g, v) = guild_of(n, &["ana", "ben"]).await;
    ([t[0].clone(), t[1].clone()], g, v)
}

/// Members of one guild, the first its owner: (tokens, guild id, voice channel id).
async fn guild_of(n: &Node, names: &[&str]) -> (Vec<String>, String, String) {
    let mut tokens = Vec::new();
    for name in names {
        let v = req(
            n,
            "POST",
            "/auth/register",
            None,
            Some(json!({ "username": name, "password": "password-123" })),
        )
        .await;
        tokens.push(v["token"].as_str().unwrap().to_string());
    }
    let g = req(
        n,
        "POST",
        "/guilds",
        Some(&tokens[0]),
        Some(json!({ "name": "Den" })),
    )
    .await;
    let chan = |t: u64| {
        g["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (text, voice) = (chan(0), chan(2));
    let inv = req(
        n,
        "POST",
        &format!("/channels/{text}/invites"),
        Some(&tokens[0]),
        None,
    )
    .await;
    for t in &tokens[1..] {
        req(
            n,
            "POST",
            &format!("/invites/{}", inv["code"].as_str().unwrap()),
            Some(t),
            None,
        )
        .await;
    }
    let gid = g["id"].as_str().unwrap().to_string();
    (tokens, gid, voice)
}

/// Power of `pcm` at `hz` (Goertzel), per sample.
fn power_at(pcm: &[i16], hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / 48_000.0;
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s0 = x as f64 + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2) / (pcm.len() as f64).powi(2)
}

fn mean_power(pcm: &[i16]) -> f64 {
    pcm.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / pcm.len().max(1) as f64
}

/// The last `ms` of what the sink holds for `user` and of the mix.
fn tail(r: &std::sync::Mutex<Recorded>, user: u64, ms: usize) -> (Vec<i16>, Vec<i16>) {
    let r = r.lock().unwrap();
    let n = ms * 48;
    let u = r.by_user.get(&user).cloned().unwrap_or_default();
    let m = &r.mixed;
    (
        u[u.len().saturating_sub(n)..].to_vec(),
        m[m.len().saturating_sub(n)..].to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_hear_each_other_and_mute_deafen_and_a_new_port_take_effect() {
    let n = node().await;
    let (tokens, guild, voice) = guild_of_two(&n).await;
    let opts = |t: &str, mode: CryptoMode| {
        let mut o = JoinOptions::new(&n.base, t, &guild, &voice);
        o.bind = "127.0.0.1".parse().unwrap();
        o.mode = mode;
        o.engine.voice_activity = false;
        o
    };
    let ana = Call::join(
        opts(&tokens[0], CryptoMode::ALL[0]),
        Box::new(Tone::new(440.0, 8_000.0)),
        Box::new(MemorySink::default()),
    )
    .await
    .expect("ana joins");
    let heard = MemorySink::default();
    // Ben sends nothing (silence under voice activity detection): after his port changes, only
    // the client's own announcement can move his address on the node.
    let mut ben_opts = opts(&tokens[1], CryptoMode::ALL[1]);
    ben_opts.engine.voice_activity = true;
    let ben = Call::join(ben_opts, Box::new(Silence), Box::new(heard.clone()))
        .await
        .expect("ben joins");
    let a = ana.user_id();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Ben hears Ana's tone, named as Ana (op 5), in his mix and in her own track.
    let (hers, mix) = tail(&heard.0, a, 1000);
    assert!(
        hers.len() >= 48_000,
        "a second of Ana's track: {} samples",
        hers.len()
    );
    let (at, off) = (power_at(&hers, 440.0), power_at(&hers, 1000.0));
    assert!(
        at > 1e5 && at > 100.0 * off,
        "440 Hz dominates: {at:.0} against {off:.0} at 1 kHz"
    );
    assert!(power_at(&mix, 440.0) > 1e5, "and is in the mix");
    let st = ben.stats();
    let sp = st
        .speakers
        .iter()
        .find(|s| s.user == Some(a))
        .expect("Ana in Ben's stats");
    assert!(sp.jitter.packets_received > 100, "{sp:?}");
    assert_eq!(st.packets_undecryptable, 0);

    // Ana mutes: nothing of her plays a second later.
    ana.set_mute(true).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (hers, _) = tail(&heard.0, a, 500);
    assert!(
        mean_power(&hers) < 100.0,
        "Ana is muted: power {}",
        mean_power(&hers)
    );
    ana.set_mute(false).unwrap();

    // Ben deafens: the node stops sending him voice (Discord's rule for a deafened member) and
    // his mix is silent; undeafened, he hears Ana again.
    ben.set_deaf(true).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let deaf_from = ben.stats().packets_received;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let deaf_to = ben.stats().packets_received;
    assert!(
        deaf_to - deaf_from < 5,
        "nothing sent to a deafened member: {deaf_from} → {deaf_to}"
    );
    let (_, mix) = tail(&heard.0, a, 500);
    assert_eq!(mean_power(&mix), 0.0, "a deafened client plays nothing");
    ben.set_deaf(false).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (hers, mix) = tail(&heard.0, a, 500);
    assert!(
        power_at(&hers, 440.0) > 1e5 && power_at(&mix, 440.0) > 1e5,
        "Ana heard again"
    );

    // Ben's network changes (a new source port): the node follows, and he keeps hearing.
    let before = ben.stats().packets_received;
    ben.rebind().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = ben.stats().packets_received;
    assert!(
        after > before + 40,
        "packets keep arriving on the new port: {before} → {after}"
    );
    let (hers, mix) = tail(&heard.0, a, 500);
    assert!(power_at(&hers, 440.0) > 1e5 && power_at(&mix, 440.0) > 1e5);

    assert_eq!(
        ben.stats().packets_sent,
        1,
        "Ben sent only the move's silence frame"
    );
    assert_eq!(ben.ended_reason(), None);

    ben.leave().await.unwrap();
    ana.leave().await.unwrap();
}

/// The CLI end to end: `lodge-voice` joins with `--record`, hears a library client's tone for
/// three seconds, leaves by itself, and leaves WAV files holding that tone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lodge_voice_records_each_speaker_to_wav() {
    let n = node().await;
    let (tokens, guild, voice) = guild_of_two(&n).await;
    let mut o = JoinOptions::new(&n.base, &tokens[0], &guild, &voice);
    o.bind = "127.0.0.1".parse().unwrap();
    o.engine.voice_activity = false;
    let ana = Call::join(
        o,
        Box::new(Tone::new(440.0, 8_000.0)),
        Box::new(MemorySink::default()),
    )
    .await
    .expect("ana joins");
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("heard");
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_lodge-voice"));
    cli.args(["--url", &n.base, "--guild", &guild, "--channel", &voice])
        .args(["--duration", "3", "--stats-every", "1", "--mode", "xchacha"])
        .arg("--record")
        .arg(&rec)
        .env("LODGE_TOKEN", &tokens[1]);
    let out = tokio::task::spawn_blocking(move || cli.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("joined as user"), "{stdout}");
    assert!(
        stdout.contains(&format!("user {}:", ana.user_id())),
        "live figures name Ana: {stdout}"
    );
    let wav = std::fs::read(rec.join(format!("user-{}.wav", ana.user_id()))).unwrap();
    let pcm = lodge_codec::wav::to_48k_mono(&wav).unwrap();
    assert!(pcm.len() > 48_000, "over a second of Ana: {}", pcm.len());
    let last = &pcm[pcm.len() - 48_000..];
    assert!(power_at(last, 440.0) > 1e5 && power_at(last, 440.0) > 100.0 * power_at(last, 1000.0));
    let mix = lodge_codec::wav::to_48k_mono(&std::fs::read(rec.join("mix.wav")).unwrap()).unwrap();
    assert!(power_at(&mix[mix.len() - 48_000..], 440.0) > 1e5);
    ana.leave().await.unwrap();
}

/// A UDP relay between one client and the node that drops one in `every` of the client's
/// voice packets (RTP, not its reports or keepalives) on the way up. Its address is what the
/// client sends to (`media_via`).
async fn lossy_uplink(node: std::net::SocketAddr, every: u64) -> std::net::SocketAddr {
    use std::sync::Arc;
    use tokio::net::UdpSocket;
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let client = Arc::new(std::sync::Mutex::new(None));
    let (f, b, c) = (front.clone(), back.clone(), client.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        let mut voice = 0u64;
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            let d = &buf[..n];
            let is_voice = n > 12 && d[0] >> 6 == 2 && !lodge_sfu::native::rtcp::is_rtcp(d);
            if is_voice {
                voice += 1;
                if voice.is_multiple_of(every) {
                    continue;
                }
            }
            let _ = b.send_to(d, node).await;
        }
    });
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = back.recv_from(&mut buf).await {
            let to = *client.lock().unwrap();
            if let Some(to) = to {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_reports_from_the_node_turn_fec_on_and_lower_the_bitrate_on_a_lossy_uplink() {
    let n = node().await;
    let (tokens, guild, voice) = guild_of_two(&n).await;
    let mut o = JoinOptions::new(&n.base, &tokens[0], &guild, &voice);
    o.bind = "127.0.0.1".parse().unwrap();
    o.engine.voice_activity = false;
    o.media_via = Some(lossy_uplink(n.media, 5).await);
    let ana = Call::join(
        o,
        Box::new(Tone::new(440.0, 8_000.0)),
        Box::new(MemorySink::default()),
    )
    .await
    .expect("ana joins through the relay");
    let heard = MemorySink::default();
    let mut o = JoinOptions::new(&n.base, &tokens[1], &guild, &voice);
    o.bind = "127.0.0.1".parse().unwrap();
    let ben = Call::join(o, Box::new(Silence), Box::new(heard.clone()))
        .await
        .expect("ben joins");
    tokio::time::sleep(Duration::from_secs(5)).await;

    let st = ana.stats();
    let r = st
        .remote_inbound
        .expect("the node answered Ana's sender reports");
    assert!(
        r.reports_received >= 3 && st.reports_sent >= r.reports_received,
        "{st:?}"
    );
    assert!(
        (0.12..=0.28).contains(&r.fraction_lost),
        "a fifth of her voice is lost on the way up: {r:?}"
    );
    assert!(r.packets_lost >= 30, "{r:?}");
    let rtt = r.round_trip_time_ms.expect("an RTT from the echoed SR");
    assert!(rtt < 50.0, "loopback: {rtt} ms");
    assert!(
        st.fec && st.expected_loss_pct >= 15,
        "FEC protects against the loss: {st:?}"
    );
    assert!(
        st.target_bitrate_bps < 32_000,
        "the loss counts as congestion: {} bps",
        st.target_bitrate_bps
    );
    // Ben's direct path loses nothing; he sends nothing, but his reports still measure the
    // round trip his playout uses, and leave his encoder as it was.
    let b = ben.stats();
    let br = b.remote_inbound.expect("a listener's reports are answered");
    assert!(b.reports_sent >= 3 && br.reports_received >= 3, "{b:?}");
    assert!(br.round_trip_time_ms.is_some_and(|r| r < 50.0), "{b:?}");
    assert_eq!(b.target_bitrate_bps, 32_000, "{b:?}");
    // And he still hears Ana: what was lost is concealed or recovered, not silence.
    let (hers, _) = tail(&heard.0, ana.user_id(), 1000);
    assert!(power_at(&hers, 440.0) > 1e5);
    let sp = b
        .speakers
        .iter()
        .find(|s| s.user == Some(ana.user_id()))
        .expect("Ana in Ben's stats");
    assert!(
        sp.jitter.fec_packets_received > 0 || sp.jitter.concealed_samples > 0,
        "losses reached Ben and were repaired: {sp:?}"
    );
    ben.leave().await.unwrap();
    ana.leave().await.unwrap();
}

/// A TCP relay in front of a node's HTTP port that can cut the chat gateway's connections
/// (`GET /gateway…`) or the voice gateway's (`GET /?v=8`) while the others stay up: dropped
/// connections, as a network blip or a restarting load balancer would drop them.
struct GatewayCutter {
    addr: std::net::SocketAddr,
    /// New voice gateway connections wait this long (ms) before the relay passes anything: a
    /// slow path to a new voice server.
    voice_delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// (which WebSocket, the relay task, its freeze switch) per connection.
    #[allow(clippy::type_complexity)]
    conns: std::sync::Arc<
        std::sync::Mutex<
            Vec<(
                Ws,
                tokio::task::AbortHandle,
                tokio::sync::watch::Sender<bool>,
            )>,
        >,
    >,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ws {
    Gateway,
    Voice,
    Other,
}

impl GatewayCutter {
    async fn bind() -> (GatewayCutter, tokio::net::TcpListener) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = GatewayCutter {
            addr: l.local_addr().unwrap(),
            voice_delay_ms: Default::default(),
            conns: Default::default(),
        };
        (c, l)
    }

    fn start(&self, l: tokio::net::TcpListener, to: std::net::SocketAddr) {
        let conns = self.conns.clone();
        let voice_delay = self.voice_delay_ms.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let conns = conns.clone();
                // The request line says which WebSocket this is (wait for enough of it).
                let mut first = [0u8; 16];
                let mut n = 0;
                for _ in 0..100 {
                    n = inbound.peek(&mut first).await.unwrap_or(0);
                    if n >= 12 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let kind = if first[..n].starts_with(b"GET /gateway") {
                    Ws::Gateway
                } else if first[..n].starts_with(b"GET /?v=8") {
                    Ws::Voice
                } else {
                    Ws::Other
                };
                let (freeze, mut frozen) = tokio::sync::watch::channel(false);
                let delay = match kind {
                    Ws::Voice => voice_delay.load(std::sync::atomic::Ordering::Relaxed),
                    _ => 0,
                };
                let task = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let mut out = tokio::net::TcpStream::connect(to).await.unwrap();
                    let stop = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => false,
                        _ = frozen.wait_for(|f| *f) => true,
                    };
                    if stop {
                        // Frozen: nothing passes any more, and nothing is closed either.
                        std::future::pending::<()>().await;
                    }
                });
                conns
                    .lock()
                    .unwrap()
                    .push((kind, task.abort_handle(), freeze));
            }
        });
    }

    /// Drop every open connection of `kind`; how many there were.
    fn cut(&self, kind: Ws) -> usize {
        let mut n = 0;
        for (k, t, _) in self.conns.lock().unwrap().iter() {
            if *k == kind && !t.is_finished() {
                t.abort();
                n += 1;
            }
        }
        n
    }

    /// Stop relaying every open connection of `kind` without closing it (a dead NAT mapping
    /// or middlebox: the client's socket stays open and hears nothing); how many there were.
    fn freeze(&self, kind: Ws) -> usize {
        let mut n = 0;
        for (k, t, f) in self.conns.lock().unwrap().iter() {
            if *k == kind && !t.is_finished() && !*f.borrow() {
                let _ = f.send(true);
                n += 1;
            }
        }
        n
    }

    /// Connections of `kind` still open.
    fn open(&self, kind: Ws) -> usize {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.0 == kind && !c.1.is_finished())
            .count()
    }

    fn connections(&self, kind: Ws) -> usize {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.0 == kind)
            .count()
    }
}

/// A node whose gateway and voice URLs point at a [`GatewayCutter`] in front of it (REST is
/// reached directly); `heartbeat_ms`: both gateways' heartbeat interval, if not Discord's.
async fn node_behind_cutter(heartbeat_ms: Option<u64>) -> (GatewayCutter, Node) {
    let (cutter, listener) = GatewayCutter::bind().await;
    let dir = tempfile::tempdir().unwrap();
    let args = ServeArgs {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        media_listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.path().to_path_buf()),
        media_workers: Some(1),
        public_url: Some(format!("http://{}", cutter.addr)),
        heartbeat_interval_ms: heartbeat_ms,
        voice_heartbeat_interval_ms: heartbeat_ms,
        ..Default::default()
    };
    let run = lodge_signaling::start(Config::load(&args, std::iter::empty()).unwrap())
        .await
        .unwrap();
    cutter.start(listener, run.http_addr);
    let n = Node {
        media: run.media_addr,
        base: format!("http://{}", run.http_addr),
        http: reqwest::Client::new(),
        _run: run,
        _dir: dir,
    };
    (cutter, n)
}

/// The sum of a metric's samples whose labels contain `label`.
async fn metric(base: &str, name: &str, label: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Ana (a 440 Hz tone) and Ben (`ben_hz`, or silence) in `voice` over loopback, every frame
/// sent: each call with the sink of what that client hears.
async fn ana_and_ben(
    n: &Node,
    tokens: &[String; 2],
    guild: &str,
    voice: &str,
    ben_hz: Option<f32>,
) -> (Call, MemorySink, Call, MemorySink) {
    let opts = |t: &str| {
        let mut o = JoinOptions::new(&n.base, t, guild, voice);
        o.bind = "127.0.0.1".parse().unwrap();
        o.engine.voice_activity = false;
        o
    };
    let ana_heard = MemorySink::default();
    let ana = Call::join(
        opts(&tokens[0]),
        Box::new(Tone::new(440.0, 8_000.0)),
        Box::new(ana_heard.clone()),
    )
    .await
    .expect("ana joins");
    let ben_source: Box<dyn lodge_client::audio_io::Source> = match ben_hz {
        Some(hz) => Box::new(Tone::new(hz, 8_000.0)),
        None => Box::new(Silence),
    };
    let ben_heard = MemorySink::default();
    let ben = Call::join(opts(&tokens[1]), ben_source, Box::new(ben_heard.clone()))
        .await
        .expect("ben joins");
    (ana, ana_heard, ben, ben_heard)
}

/// Both clients' gateway connections drop mid-call: each resumes its session (op 6, not a new
/// identify), the call goes on, and a voice state change made after the drop (deafen) reaches
/// the server over the resumed connection. Then their voice gateway connections drop: each
/// resumes its voice connection (voice op 7) inside the node's grace period. Last, both kinds
/// drop at once while a voice state change is asked for: it is made after the resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_gateway_connections_are_resumed_and_the_call_goes_on() {
    let (cutter, n) = node_behind_cutter(None).await;
    let (tokens, guild, voice) = guild_of_two(&n).await;
    let (ana, _, ben, heard) = ana_and_ben(&n, &tokens, &guild, &voice, Some(660.0)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cutter.connections(Ws::Gateway), 2);
    assert_eq!(cutter.connections(Ws::Voice), 2);
    assert_eq!(
        metric(&n.base, "lodge_gateway_sessions", "connected").await,
        2.0
    );

    assert_eq!(
        cutter.cut(Ws::Gateway),
        2,
        "both gateway connections dropped"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ana.ended_reason(), None);
    assert_eq!(ben.ended_reason(), None);
    assert_eq!(cutter.connections(Ws::Gateway), 4, "each came back once");
    // Resumed, not identified anew: the same two sessions, connected again, none left over.
    assert_eq!(
        metric(&n.base, "lodge_gateway_sessions", "connected").await,
        2.0
    );
    assert_eq!(
        metric(&n.base, "lodge_gateway_sessions", "resumable").await,
        0.0
    );
    let (hers, _) = tail(&heard.0, ana.user_id(), 1000);
    assert!(power_at(&hers, 440.0) > 1e5, "Ben still hears Ana");

    // Ana deafens: op 4 goes over the resumed connection, and the node stops sending her voice.
    ana.set_deaf(true).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let from = ana.stats().packets_received;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let to = ana.stats().packets_received;
    assert!(
        to - from < 5,
        "nothing sent to a deafened member: {from} → {to}"
    );
    assert!(to > 100, "she heard Ben before: {to}");

    // The voice gateway connections drop: each is resumed (op 7 → op 9), not joined anew.
    assert_eq!(cutter.cut(Ws::Voice), 2, "both voice connections dropped");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ana.ended_reason(), None);
    assert_eq!(ben.ended_reason(), None);
    assert_eq!(cutter.connections(Ws::Voice), 4, "each came back once");
    assert_eq!(
        metric(&n.base, "lodge_voice_resumes_total", "resumed").await,
        2.0
    );
    let (hers, _) = tail(&heard.0, ana.user_id(), 1000);
    assert!(power_at(&hers, 440.0) > 1e5, "Ben still hears Ana");

    // Both kinds drop at once, and Ana undeafens while they are down: the op 4 asked for during
    // the outage is said after the resume, and the node sends her voice again.
    assert_eq!(cutter.cut(Ws::Gateway) + cutter.cut(Ws::Voice), 4);
    ana.set_deaf(false).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ana.ended_reason(), None);
    assert_eq!(ben.ended_reason(), None);
    assert_eq!(cutter.connections(Ws::Gateway), 6);
    assert_eq!(cutter.connections(Ws::Voice), 6);
    assert_eq!(
        metric(&n.base, "lodge_voice_resumes_total", "resumed").await,
        4.0
    );
    let from = ana.stats().packets_received;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let to = ana.stats().packets_received;
    assert!(
        to - from > 30,
        "undeafened during the outage: Ben's voice reaches her again ({from} → {to})"
    );

    ben.leave().await.unwrap();
    ana.leave().await.unwrap();
}

/// Ana and Ben in a call behind a relay, on a node whose gateways want a heartbeat every
/// second; the relay then stops forwarding both clients' `kind` connections without closing
/// them, and 5 s later both calls must still be on.
async fn silenced(kind: Ws, what: &str) -> (GatewayCutter, Node, Call, Call, MemorySink) {
    let (cutter, n) = node_behind_cutter(Some(1_000)).await;
    let (tokens, guild, voice) = guild_of_two(&n).await;
    let (ana, _, ben, heard) = ana_and_ben(&n, &tokens, &guild, &voice, None).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(cutter.freeze(kind), 2, "both {what} connections go silent");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(ana.ended_reason(), None);
    assert_eq!(ben.ended_reason(), None);
    (cutter, n, ana, ben, heard)
}

/// Ben still hears Ana's tone over the last second; then both leave.
async fn still_heard_then_leave(ana: Call, ben: Call, heard: &MemorySink) {
    let (hers, _) = tail(&heard.0, ana.user_id(), 1000);
    assert!(power_at(&hers, 440.0) > 1e5, "Ben still hears Ana");
    ben.leave().await.unwrap();
    ana.leave().await.unwrap();
}

/// A gateway connection that goes silent without closing (a NAT mapping or a middlebox gone):
/// the client's heartbeat goes unacknowledged, it takes the connection for dead and resumes
/// the session over a new one; the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_gateway_connection_is_noticed_and_resumed() {
    let (cutter, n, ana, ben, heard) = silenced(Ws::Gateway, "gateway").await;
    assert_eq!(
        cutter.connections(Ws::Gateway),
        4,
        "each client noticed and came back over a new connection"
    );
    assert_eq!(
        metric(&n.base, "lodge_gateway_sessions", "connected").await,
        2.0
    );
    still_heard_then_leave(ana, ben, &heard).await;
}

/// The same for the voice gateway: its connections stop carrying anything without closing.
/// Each client's unacknowledged voice heartbeat shows it, and the voice session is resumed
/// (op 7) within the node's grace, with the call going on over UDP meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_voice_connection_is_noticed_and_resumed() {
    let (cutter, n, ana, ben, heard) = silenced(Ws::Voice, "voice").await;
    assert!(
        cutter.connections(Ws::Voice) >= 4,
        "each client noticed and came back over a new voice connection"
    );
    assert_eq!(
        metric(&n.base, "lodge_voice_resumes_total", "resumed").await,
        2.0
    );
    still_heard_then_leave(ana, ben, &heard).await;
}

/// PATCH a member (a moderator's move, as Discord's API shapes it).
/// A second voice channel in `guild`, made by its owner: its id.
async fn second_voice_channel(n: &Node, owner: &str, guild: &str) -> String {
    req(
        n,
        "POST",
        &format!("/guilds/{guild}/channels"),
        Some(owner),
        Some(json!({ "name": "Second", "type": 2 })),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn move_member(n: &Node, token: &str, guild: &str, user: u64, channel: &str) {
    let res = reqwest::Client::new()
        .patch(format!("{}/api/v10/guilds/{guild}/members/{user}", n.base))
        .header("Authorization", token)
        .json(&json!({ "channel_id": channel }))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "move: {}", res.status());
}

/// A moderator moves a client to another voice channel mid-call: the client follows the
/// VOICE_SERVER_UPDATE to a new voice connection (new SSRC and key) instead of ending the
/// call, and its later op 4s name the channel it is in now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderator_move_is_followed_to_the_new_channel() {
    let n = node().await;
    let (tokens, guild, voice) = guild_of_two(&n).await;
    let second = second_voice_channel(&n, &tokens[0], &guild).await;
    let (ana, ana_heard, ben, ben_heard) =
        ana_and_ben(&n, &tokens, &guild, &voice, Some(660.0)).await;
    let (a, b) = (ana.user_id(), ben.user_id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, mix) = tail(&ana_heard.0, b, 500);
    assert!(power_at(&mix, 660.0) > 1e5, "Ana hears Ben");

    // Ana (the owner) moves Ben to the second channel: his call goes on there, apart from her.
    move_member(&n, &tokens[0], &guild, b, &second).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ben.ended_reason(), None, "the move is followed");
    let (_, mix) = tail(&ana_heard.0, b, 500);
    assert!(
        power_at(&mix, 660.0) < 1e3,
        "Ben is no longer in Ana's channel"
    );

    // She follows him: they hear each other again, over Ben's new connection.
    move_member(&n, &tokens[0], &guild, a, &second).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ana.ended_reason(), None);
    let (_, mix) = tail(&ben_heard.0, a, 500);
    assert!(
        power_at(&mix, 440.0) > 1e5,
        "Ben hears Ana in the second channel"
    );
    let (_, mix) = tail(&ana_heard.0, b, 500);
    assert!(
        power_at(&mix, 660.0) > 1e5,
        "Ana hears Ben in the second channel"
    );

    // Ben mutes and unmutes: his op 4s name the second channel, so he stays in it.
    ben.set_mute(true).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, mix) = tail(&ana_heard.0, b, 500);
    assert!(power_at(&mix, 660.0) < 1e3, "Ben is muted");
    ben.set_mute(false).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, mix) = tail(&ana_heard.0, b, 500);
    assert!(
        power_at(&mix, 660.0) > 1e5,
        "Ben is heard again, still in the second channel"
    );
    assert_eq!(ben.ended_reason(), None);

    ben.leave().await.unwrap();
    ana.leave().await.unwrap();
}

/// What `call` knows of the call's DAVE state.
fn dave(call: &Call) -> lodge_client::dave::DaveStatus {
    call.stats().dave.expect("the client takes part in DAVE")
}

/// Two lodge-clients make an end-to-end encrypted call (DAVE): one MLS group, the same privacy
/// code on both sides, every voice frame encrypted and decrypted, the tone heard. A third
/// client without DAVE joins: the call goes down to transport encryption and all three hear
/// each other; it leaves, and the call is end-to-end encrypted again, under a new code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_end_to_end_encrypted_and_a_client_without_dave_takes_it_down_while_it_stays() {
    let n = node().await;
    let (tokens, guild, voice) = guild_of(&n, &["ana", "ben", "cal"]).await;
    let [t0, t1] = [tokens[0].clone(), tokens[1].clone()];
    let (ana, _, ben, heard) = ana_and_ben(&n, &[t0, t1], &guild, &voice, Some(660.0)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a, b) = (dave(&ana), dave(&ben));
    assert_eq!((a.protocol_version, b.protocol_version), (1, 1));
    assert!(a.in_group && b.in_group, "{a:?} {b:?}");
    assert!(a.privacy_code.is_some());
    assert_eq!(a.privacy_code, b.privacy_code, "one group");
    assert!(b.frames_decrypted > 50, "Ben decrypts Ana's voice: {b:?}");
    assert!(a.frames_encrypted > 50, "{a:?}");
    assert_eq!(
        metric(&n.base, "lodge_dave_calls", "e2ee").await,
        1.0,
        "the node runs the call as end-to-end encrypted"
    );
    let (hers, _) = tail(&heard.0, ana.user_id(), 1000);
    assert!(power_at(&hers, 440.0) > 1e5, "Ben hears Ana's tone");
    let code = a.privacy_code.clone();

    // Cal has no DAVE: everyone goes plain while he is in.
    let mut o = JoinOptions::new(&n.base, &tokens[2], &guild, &voice);
    o.bind = "127.0.0.1".parse().unwrap();
    o.engine.voice_activity = false;
    o.dave = false;
    let cal_heard = MemorySink::default();
    let cal = Call::join(
        o,
        Box::new(Tone::new(880.0, 8_000.0)),
        Box::new(cal_heard.clone()),
    )
    .await
    .expect("cal joins without DAVE");
    assert!(cal.stats().dave.is_none());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(dave(&ana).protocol_version, 0, "{:?}", dave(&ana));
    assert_eq!(dave(&ben).protocol_version, 0, "{:?}", dave(&ben));
    assert_eq!(metric(&n.base, "lodge_dave_calls", "e2ee").await, 0.0);
    let (hers, _) = tail(&heard.0, ana.user_id(), 1000);
    assert!(power_at(&hers, 440.0) > 1e5, "Ben still hears Ana");
    let (his, _) = tail(&heard.0, cal.user_id(), 1000);
    assert!(power_at(&his, 880.0) > 1e5, "Ben hears Cal");
    let (hers, _) = tail(&cal_heard.0, ana.user_id(), 1000);
    assert!(power_at(&hers, 440.0) > 1e5, "Cal hears Ana");

    // Cal leaves: end-to-end encryption again, in a new group.
    cal.leave().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (a, b) = (dave(&ana), dave(&ben));
    assert_eq!((a.protocol_version, b.protocol_version), (1, 1));
    assert!(a.in_group && b.in_group, "{a:?} {b:?}");
    assert_eq!(a.privacy_code, b.privacy_code);
    assert_ne!(a.privacy_code, code, "a new group");
    let before = b.frames_decrypted;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(dave(&ben).frames_decrypted > before + 30, "encrypted again");
    let (hers, _) = tail(&heard.0, ana.user_id(), 1000);
    assert!(power_at(&hers, 440.0) > 1e5, "Ben hears Ana");
    assert_eq!(metric(&n.base, "lodge_dave_calls", "e2ee").await, 1.0);
    ben.leave().await.unwrap();
    ana.leave().await.unwrap();
}

/// A channel that requires DAVE: lodge-clients are admitted and heard (before DAVE in the
/// client, the node refused them); one that joins without DAVE is refused, and the error says
/// why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_requires_dave_takes_lodge_clients_and_refuses_one_without_it() {
    let n = node().await;
    let (tokens, guild, voice) = guild_of(&n, &["ana", "ben", "cal"]).await;
    req(
        &n,
        "PATCH",
        &format!("/channels/{voice}"),
        Some(&tokens[0]),
        Some(json!({ "require_dave": true })),
    )
    .await;
    let [t0, t1] = [tokens[0].clone(), tokens[1].clone()];
    let (ana, _, ben, heard) = ana_and_ben(&n, &[t0, t1], &guild, &voice, None).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(dave(&ben).in_group, "{:?}", dave(&ben));
    let (hers, _) = tail(&heard.0, ana.user_id(), 1000);
    assert!(power_at(&hers, 440.0) > 1e5, "Ben hears Ana");

    let mut o = JoinOptions::new(&n.base, &tokens[2], &guild, &voice);
    o.bind = "127.0.0.1".parse().unwrap();
    o.dave = false;
    let e = match Call::join(o, Box::new(Silence), Box::new(MemorySink::default())).await {
        Ok(_) => panic!("a client without DAVE was let into a channel that requires it"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("DAVE"), "{e}");
    assert_eq!(
        dave(&ana).protocol_version,
        1,
        "the call stays end-to-end encrypted"
    );
    ben.leave().await.unwrap();
    ana.leave().await.unwrap();
}

/// A node serving HTTPS and WSS itself (`--tls-cert`/`--tls-key`) with a certificate for
/// `localhost` from a CA made here; the CA's PEM is written to `ca.pem` in its data dir.
async fn tls_node() -> (Node, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Lodge client test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (crt, pem, ca_file) = (
        dir.path().join("node.crt"),
        dir.path().join("node.key"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&crt, leaf.pem()).unwrap();
    std::fs::write(&pem, key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    // The public URL names the port, so it is chosen first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("https://localhost:{port}");
    let args = ServeArgs {
        http_listen: Some(format!("127.0.0.1:{port}").parse().unwrap()),
        media_listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.path().to_path_buf()),
        media_workers: Some(1),
        public_url: Some(base.clone()),
        tls_cert: Some(crt),
        tls_key: Some(pem),
        ..Default::default()
    };
    let run = lodge_signaling::start(Config::load(&args, std::iter::empty()).unwrap())
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let n = Node {
        media: run.media_addr,
        _run: run,
        base,
        http,
        _dir: dir,
    };
    (n, ca_file)
}

/// A node behind TLS (HTTPS for REST, WSS for both gateways), its certificate from a private
/// CA: clients that trust the CA (`ca_file`) make an end-to-end encrypted call over it; one
/// that does not is refused by certificate verification, and the error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_call_through_a_node_that_serves_https_and_wss() {
    let (n, ca_file) = tls_node().await;
    let (tokens, guild, voice) = guild_of(&n, &["ana", "ben"]).await;
    let opts = |t: &str| {
        let mut o = JoinOptions::new(&n.base, t, &guild, &voice);
        o.bind = "127.0.0.1".parse().unwrap();
        o.engine.voice_activity = false;
        o
    };
    let e = match Call::join(
        opts(&tokens[0]),
        Box::new(Silence),
        Box::new(MemorySink::default()),
    )
    .await
    {
        Ok(_) => panic!("a certificate from an untrusted CA was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    let trusting = |t: &str| {
        let mut o = opts(t);
        o.ca_file = Some(ca_file.clone());
        o
    };
    let ana = Call::join(
        trusting(&tokens[0]),
        Box::new(Tone::new(440.0, 8_000.0)),
        Box::new(MemorySink::default()),
    )
    .await
    .expect("ana joins over TLS");
    let heard = MemorySink::default();
    let ben = Call::join(
        trusting(&tokens[1]),
        Box::new(Silence),
        Box::new(heard.clone()),
    )
    .await
    .expect("ben joins over TLS");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (hers, _) = tail(&heard.0, ana.user_id(), 1000);
    assert!(power_at(&hers, 440.0) > 1e5, "Ben hears Ana");
    assert!(dave(&ben).in_group, "{:?}", dave(&ben));
    ben.leave().await.unwrap();
    ana.leave().await.unwrap();
}

/// A sink that notes when each mixed frame was handed over.
#[derive(Clone, Default)]
struct Timed(std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>);

impl lodge_client::audio_io::Sink for Timed {
    fn mixed(&mut self, _frame: &[i16]) {
        self.0.lock().unwrap().push(std::time::Instant::now());
    }
}

/// A move is followed while the call goes on: the new voice connection's handshake (slowed
/// here to 3.5 s by the relay in front of the voice gateway) runs beside the call's loop on a
/// socket of its own, so playout never stops for it (it used to, for the whole handshake).
/// The handshake outlasts the 3 s a call waits for a move after its connection's 4014. (Here
/// the 4014 comes before the VOICE_SERVER_UPDATE; the other order, which `Running::event`
/// also covers, is not staged.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handshake_while_following_a_move_does_not_pause_the_call() {
    let (cutter, n) = node_behind_cutter(None).await;
    let (tokens, guild, voice) = guild_of_two(&n).await;
    let second = second_voice_channel(&n, &tokens[0], &guild).await;
    let mut o = JoinOptions::new(&n.base, &tokens[1], &guild, &voice);
    o.bind = "127.0.0.1".parse().unwrap();
    let ticks = Timed::default();
    let ben = Call::join(o, Box::new(Silence), Box::new(ticks.clone()))
        .await
        .expect("ben joins");
    tokio::time::sleep(Duration::from_secs(1)).await;
    cutter
        .voice_delay_ms
        .store(3_500, std::sync::atomic::Ordering::Relaxed);
    let moved = std::time::Instant::now();
    move_member(&n, &tokens[0], &guild, ben.user_id(), &second).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(ben.ended_reason(), None, "the move is followed");
    assert_eq!(cutter.connections(Ws::Voice), 2, "a new voice connection");
    assert_eq!(
        cutter.open(Ws::Voice),
        1,
        "the call switched to it and closed the old one"
    );
    let t = ticks.0.lock().unwrap().clone();
    // From the last frame before the move on.
    let from = moved - Duration::from_millis(100);
    let during: Vec<_> = t.iter().filter(|x| **x >= from).collect();
    let gap = during
        .windows(2)
        .map(|w| w[1].duration_since(*w[0]))
        .max()
        .unwrap();
    // 10 ms ticks: 500 in 5 s.
    assert!(during.len() > 400, "{} ticks in 5 s", during.len());
    assert!(
        gap < Duration::from_millis(500),
        "playout went on during the handshake: longest gap {gap:?}"
    );
    ben.leave().await.unwrap();
}
