//! A mixed call (issue #15): in one voice channel, an unmodified songbird 0.6 speaker and
//! listener (Discord's native UDP voice) and three headless Chromium web clients (WebRTC), each
//! browser speaking a steady tone of its own frequency and loudness. The guild's operator caps
//! speaker slots at 2 (`max_slots`; the browsers ask for 2 with `?slots=2`), so five participants
//! and four speakers share two slots per listener.
//!
//! Loudness ranks the speakers: the loud browser (-9 dBov, by its RFC 6464 header), the songbird
//! speaker (ranked by Opus packet size: its 128 kbit/s frames count as very loud), then the mid
//! (-33 dBov) and quiet (-48 dBov) browsers, each step wider than the selector's 6 dB hysteresis.
//! Asserted, once the call has settled:
//! - the songbird listener decodes, per SSRC, the two loudest — the loud browser's tone and the
//!   songbird speaker's, each where it belongs — and not a packet from the mid or quiet browser;
//!   in its mix the two tones are present and the other two absent;
//! - every browser hears exactly the top two speakers other than itself (the songbird speaker
//!   always among them) and finds the songbird speaker's tone in that slot's decoded audio
//!   (WebAudio; `tests/browser/mixed-call.mjs` asserts this and reports it).
//!
//! The songbird pair joins first and negotiates DAVE; the first browser (which has none)
//! downgrades the call (op 21/22 for version 0), so what is asserted afterwards runs without it,
//! and the node's counters must show that downgrade. Chromium and playwright-core are
//! required, not optional: `scripts/setup.sh` installs both, and without them the test fails.

mod common;
mod songbird_rig;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use songbird::driver::{Channels, DecodeConfig, DecodeMode, SampleRate};
use songbird::events::{CoreEvent, Event, EventContext, EventHandler};
use songbird::{Config, ConnectionInfo, Driver};
use songbird_rig::{id, tone, tone_share, trusted_tls_endpoint};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const OPERATOR: &str = "mixed-call-operator-token";
/// Speaker slots per listener: the guild's cap, and what the browsers ask for.
const SLOTS: usize = 2;
/// The songbird speaker.
const NATIVE: Speaker = Speaker {
    name: "alice",
    hz: 440.0,
    amp: 0.4,
};
/// The browsers, loudest first.
const BROWSERS: [Speaker; 3] = [
    Speaker {
        name: "loud",
        hz: 700.0,
        amp: 0.5,
    },
    Speaker {
        name: "mid",
        hz: 1000.0,
        amp: 0.032,
    },
    Speaker {
        name: "quiet",
        hz: 1300.0,
        amp: 0.0056,
    },
];
/// Everyone who speaks, loudest first (as the node should rank them).
const RANKING: [&str; 4] = ["loud", "alice", "mid", "quiet"];
/// How long the listener records once the browsers agree the call has settled.
const WINDOW: Duration = Duration::from_secs(3);

#[derive(Clone, Copy)]
struct Speaker {
    name: &'static str,
    hz: f32,
    amp: f32,
}

fn speaker(name: &str) -> Speaker {
    std::iter::once(NATIVE)
        .chain(BROWSERS)
        .find(|s| s.name == name)
        .expect("every ranked name is a speaker")
}

/// One 20 ms playout tick of the songbird listener: per SSRC that had a packet, the sealed
/// payload's size (Opus and AEAD tag) and the decoded mono PCM.
type Tick = HashMap<u32, (usize, Vec<i16>)>;

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Tick>>>);

#[async_trait]
impl EventHandler for Recorder {
    async fn act(&self, ctx: &EventContext<'_>) -> Option<Event> {
        if let EventContext::VoiceTick(tick) = ctx {
            let t = tick
                .speaking
                .iter()
                .filter_map(|(ssrc, d)| {
                    let p = d.packet.as_ref()?;
                    // In songbird 0.6.1's VoiceTick, `payload_end_pad` is where the payload
                    // ends within the RTP body (not a count from the end, as documented).
                    let bytes = p.payload_end_pad.saturating_sub(p.payload_offset);
                    Some((*ssrc, (bytes, d.decoded_voice.clone().unwrap_or_default())))
                })
                .collect();
            self.0.lock().unwrap().push(t);
        }
        None
    }
}

impl Recorder {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn since(&self, from: usize) -> Vec<Tick> {
        self.0.lock().unwrap()[from..].to_vec()
    }
}

/// Heartbeat and drain a gateway session the test no longer reads: the call may outlive one
/// heartbeat interval, and a silent session would be closed (its voice state with it).
fn keep_alive(mut gw: Ws) {
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = beat.tick() => send(&mut gw, json!({ "op": 1, "d": null })).await,
                frame = gw.next() => if !matches!(frame, Some(Ok(_))) { return },
            }
        }
    });
}

/// The browser half: `node tests/browser/mixed-call.mjs`, its `@@` reports sent to the returned
/// channel, its log echoed into the test's output.
fn browsers(env: &[(&str, String)]) -> (Child, mpsc::UnboundedReceiver<Value>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        chromium.exists(),
        "Chromium not found at {} (set CHROMIUM, or run scripts/setup.sh, which installs it)",
        chromium.display()
    );
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in {} (scripts/setup.sh runs npm ci there)",
        dir.display()
    );
    let mut child = Command::new("node")
        .arg("mixed-call.mjs")
        .current_dir(&dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (scripts/setup.sh installs nodejs)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("[browsers] {line}");
            if let Some(report) = line.strip_prefix("@@ ") {
                let _ = tx.send(serde_json::from_str(report).expect("a report is JSON"));
            }
        }
    });
    (child, rx)
}

async fn report(rx: &mut mpsc::UnboundedReceiver<Value>, event: &str, within: Duration) -> Value {
    let v = tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("the browsers sent no `{event}` within {within:?}"))
        .unwrap_or_else(|| panic!("mixed-call.mjs exited before `{event}` (its log is above)"));
    assert_eq!(v["event"], event, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn songbird_and_browsers_share_a_call_with_more_speakers_than_slots() {
    let n = node_with(|a| a.operator_token = Some(OPERATOR.into())).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = trusted_tls_endpoint(n.http_addr(), dir.path()).await;

    let (mut alice, mut bob, g, text, voice) = guild_of_two(&n).await;
    let (st, sw) = n
        .req(
            "PATCH",
            &format!("/admin/guilds/{g}"),
            Some(&format!("Operator {OPERATOR}")),
            Some(json!({ "max_slots": SLOTS })),
        )
        .await;
    assert_eq!((st, &sw["max_slots"]), (200, &json!(SLOTS)), "{sw}");
    let (st, inv) = n
        .req(
            "POST",
            &format!("/channels/{text}/invites"),
            Some(&alice.token),
            Some(json!({ "max_uses": 0 })),
        )
        .await;
    assert_eq!(st, 200, "{inv}");

    // The songbird listener (bob) and speaker (alice).
    let (ta, _) = voice_join(&mut alice.gw, &g, &voice, false).await;
    let (tb, _) = voice_join(&mut bob.gw, &g, &voice, false).await;
    let info = |m: &Member, token: String| ConnectionInfo {
        channel_id: id(&voice).into(),
        endpoint: endpoint.clone(),
        guild_id: id(&g).into(),
        session_id: m.session.clone(),
        token,
        user_id: id(&m.id).into(),
    };
    let recorder = Recorder::default();
    let mut listener = Driver::new(Config::default().decode_mode(DecodeMode::Decode(
        DecodeConfig::new(Channels::Mono, SampleRate::Hz48000),
    )));
    listener.add_global_event(CoreEvent::VoiceTick.into(), recorder.clone());
    tokio::time::timeout(Duration::from_secs(10), listener.connect(info(&bob, tb)))
        .await
        .expect("bob's driver did not connect in 10 s")
        .expect("bob's driver refused");
    let mut talker = Driver::new(Config::default());
    tokio::time::timeout(Duration::from_secs(10), talker.connect(info(&alice, ta)))
        .await
        .expect("alice's driver did not connect in 10 s")
        .expect("alice's driver refused");
    let track = talker.play_input(tone(NATIVE.hz, NATIVE.amp, 80));
    let alice_id = alice.id.clone();
    keep_alive(alice.gw);
    keep_alive(bob.gw);

    // The browsers join and settle.
    let speakers: Vec<Value> = BROWSERS
        .iter()
        .map(|s| json!({ "name": s.name, "hz": s.hz, "amp": s.amp }))
        .collect();
    let (mut child, mut rx) = browsers(&[
        ("LODGE_URL", n.base.clone()),
        ("INVITE", inv["code"].as_str().unwrap().to_string()),
        ("SLOTS", SLOTS.to_string()),
        ("SPEAKERS", json!(speakers).to_string()),
        (
            "NATIVE",
            json!({ "name": NATIVE.name, "id": alice_id, "hz": NATIVE.hz }).to_string(),
        ),
        ("RANKING", json!(RANKING).to_string()),
    ]);
    let joined = report(&mut rx, "joined", Duration::from_secs(60)).await;
    let heard = report(&mut rx, "heard", Duration::from_secs(45)).await;
    assert_eq!(
        heard["ok"], true,
        "the browsers do not hear the top {SLOTS} speakers with the songbird tone among them: {:#}",
        heard["browsers"]
    );
    // The songbird pair ran DAVE until a browser joined: the call was downgraded, not refused.
    let m = metrics(&n).await;
    let downgrades = metric(&m, "lodge_dave_events_total{event=\"downgrade\"}");
    assert!(downgrades >= Some(1.0), "downgrades: {downgrades:?}");
    assert_eq!(metric(&m, "lodge_dave_calls{state=\"e2ee\"}"), Some(0.0));

    // What the songbird listener decodes meanwhile, per speaker.
    let from = recorder.len();
    tokio::time::sleep(WINDOW).await;
    let ticks = recorder.since(from);
    assert!(
        track.get_info().await.is_ok(),
        "the songbird tone still plays"
    );
    let guild = lodge_sfu::GuildId(g.parse().unwrap());
    let ssrc = |name: &str| {
        let user = joined["users"][name].as_str().unwrap().parse().unwrap();
        lodge_sfu::native::user_ssrc(guild, lodge_sfu::UserId(user)).0
    };
    let summary: Vec<String> = RANKING
        .iter()
        .map(|name| {
            let got: Vec<usize> = ticks
                .iter()
                .filter_map(|t| t.get(&ssrc(name)).map(|(b, _)| *b))
                .collect();
            let mean = got.iter().sum::<usize>() / got.len().max(1);
            format!("{name}: {} packets, {mean} bytes on average", got.len())
        })
        .collect();
    let summary = format!("bob decoded in {} ticks: {summary:?}", ticks.len());
    println!("{summary}");
    assert!(ticks.len() >= 100, "{summary}");
    let mut mix = vec![0i32; ticks.len() * 960];
    for (rank, name) in RANKING.iter().enumerate() {
        let s = speaker(name);
        let mut pcm = Vec::new();
        for (i, t) in ticks.iter().enumerate() {
            if let Some((_, p)) = t.get(&ssrc(name)) {
                pcm.extend_from_slice(p);
                for (m, x) in mix[i * 960..].iter_mut().zip(p) {
                    *m += i32::from(*x);
                }
            }
        }
        let packets = ticks.iter().filter(|t| t.contains_key(&ssrc(name))).count();
        if rank < SLOTS {
            assert!(
                packets * 10 >= ticks.len() * 9,
                "{name} ({} Hz) is among the top {SLOTS} but bob hears it in {packets} of {} ticks; {summary}",
                s.hz,
                ticks.len()
            );
            let share = tone_share(&pcm, s.hz);
            assert!(
                share > 0.5,
                "{name}'s stream to bob holds {share:.2} of its power at {} Hz; {summary}",
                s.hz
            );
        } else {
            assert_eq!(
                packets, 0,
                "{name} ({} Hz) ranks below the top {SLOTS} yet reached bob; {summary}",
                s.hz
            );
        }
    }
    let mix: Vec<i16> = mix
        .into_iter()
        .map(|x| x.clamp(i16::MIN.into(), i16::MAX.into()) as i16)
        .collect();
    let shares: Vec<(&str, f32)> = RANKING
        .iter()
        .map(|name| (*name, tone_share(&mix, speaker(name).hz)))
        .collect();
    println!("tone shares of bob's mix: {shares:?}");
    for (rank, (name, share)) in shares.iter().enumerate() {
        if rank < SLOTS {
            assert!(
                *share > 0.1,
                "{name}'s tone is missing from bob's mix: {shares:?}"
            );
        } else {
            assert!(*share < 0.01, "{name}'s tone is in bob's mix: {shares:?}");
        }
    }

    // Done: the browsers hang up and the script ends cleanly.
    drop(child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("mixed-call.mjs did not exit within 20 s of being told to")
        .unwrap();
    assert!(status.success(), "mixed-call.mjs failed: {status}");
    talker.leave();
    listener.leave();
}
