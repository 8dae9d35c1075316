//! An unmodified songbird 0.6 (the Rust voice library bots use) joins Lodge over Discord's
//! native UDP voice transport: one driver plays a tone, the other receives, decrypts and
//! decodes it, and the tone is found at its frequency. Each driver uses one of the two AEAD
//! modes. songbird offers DAVE (end-to-end encryption) and Lodge runs it: the node's
//! coordinator accepts a commit, both drivers acknowledge the transition, and the voice the
//! node forwards is DAVE frames it cannot read.
//!
//! songbird always connects `wss://{endpoint}`: the test puts a TLS terminator (a CA made here,
//! trusted through SSL_CERT_FILE) in front of the node, as a reverse proxy would be.

mod common;
mod songbird_rig;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use songbird::driver::{CryptoMode, DecodeMode};
use songbird::events::{CoreEvent, Event, EventContext, EventHandler};
use songbird::packet::Packet as _;
use songbird::{Config, ConnectionInfo, Driver};
use songbird_rig::{id, tone, tone_share, trusted_tls_endpoint};

const TONE_HZ: f32 = 440.0;

/// Opus frames per SSRC, as songbird's receive path delivered them after transport and DAVE
/// decryption (its `RtpPacket` event). The test decodes them itself: songbird 0.6.1's own
/// decode (`VoiceTick`'s `decoded_voice`) cuts the payload at the transport trailer only, so a
/// DAVE frame reaches its Opus decoder with the DAVE trailer still attached and decodes as
/// noise (an upstream bug; the event's `payload_end_pad` is right).
#[derive(Clone, Default)]
struct Received(Arc<Mutex<std::collections::HashMap<u32, Vec<Vec<u8>>>>>);

#[async_trait]
impl EventHandler for Received {
    async fn act(&self, ctx: &EventContext<'_>) -> Option<Event> {
        if let EventContext::RtpPacket(p) = ctx {
            let rtp = p.rtp();
            let body = rtp.payload();
            if let Some(opus) =
                body.get(p.payload_offset..body.len().saturating_sub(p.payload_end_pad))
            {
                let mut m = self.0.lock().unwrap();
                m.entry(rtp.get_ssrc()).or_default().push(opus.to_vec());
            }
        }
        None
    }
}

/// Mono PCM of `frames`, decoded in arrival order.
fn decode(frames: &[Vec<u8>]) -> Vec<i16> {
    let mut dec = lodge_codec::OpusDecoder::new(false).unwrap();
    let mut pcm = Vec::new();
    let mut out = vec![0i16; 5760];
    for f in frames {
        let n = dec
            .decode(f, &mut out)
            .expect("every delivered frame is valid Opus");
        pcm.extend_from_slice(&out[..n]);
    }
    pcm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn songbird_drivers_exchange_a_tone_over_udp_mode() {
    // songbird's and davey's warnings (DAVE failures) show when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,songbird=info".to_string()),
        )
        .with_test_writer()
        .try_init();
    let n = node().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = trusted_tls_endpoint(n.http_addr(), dir.path()).await;

    let (mut a, mut b, g, _, voice) = guild_of_two(&n).await;
    let (ta, _) = voice_join(&mut a.gw, &g, &voice, false).await;
    let (tb, _) = voice_join(&mut b.gw, &g, &voice, false).await;
    let info = |m: &Member, token: String| ConnectionInfo {
        channel_id: id(&voice).into(),
        endpoint: endpoint.clone(),
        guild_id: id(&g).into(),
        session_id: m.session.clone(),
        token,
        user_id: id(&m.id).into(),
    };

    // Bob listens (XChaCha20-Poly1305), decoding to mono.
    let received = Received::default();
    let mut listener = Driver::new(
        Config::default()
            .crypto_mode(CryptoMode::XChaCha20Poly1305)
            .decode_mode(DecodeMode::Decrypt),
    );
    listener.add_global_event(CoreEvent::RtpPacket.into(), received.clone());
    tokio::time::timeout(Duration::from_secs(10), listener.connect(info(&b, tb)))
        .await
        .expect("bob's driver did not connect in 10 s")
        .expect("bob's driver refused");

    // Alice speaks (AES-256-GCM).
    let mut speaker = Driver::new(Config::default().crypto_mode(CryptoMode::Aes256Gcm));
    tokio::time::timeout(Duration::from_secs(10), speaker.connect(info(&a, ta)))
        .await
        .expect("alice's driver did not connect in 10 s")
        .expect("alice's driver refused");
    let track = speaker.play_input(tone(TONE_HZ, 0.4, 10));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(track.get_info().await.is_ok(), "the tone still plays");

    let got = received.0.lock().unwrap().clone();
    // The node's side: every packet opened, none replayed, alice forwarded to bob.
    let (_, stats) = n.req("GET", "/voice/stats", Some(&a.token), None).await;
    let drops: std::collections::HashMap<String, u64> =
        serde_json::from_value(serde_json::Value::Object(
            stats["drops"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| (d[0].as_str().unwrap().to_string(), d[1].clone()))
                .collect(),
        ))
        .unwrap();
    assert_eq!(
        (drops["decrypt_failed"], drops["replayed"]),
        (0, 0),
        "{stats}"
    );
    assert!(stats["rtp_forwarded"].as_u64().unwrap() > 100, "{stats}");
    // DAVE: a group of two was made (one commit accepted, the transition acknowledged by
    // both, not timed out) and the call runs end-to-end encrypted.
    let m = metrics(&n).await;
    let dave = |series: &str| metric(&m, series).unwrap_or_else(|| panic!("{series} missing"));
    assert_eq!(dave("lodge_dave_calls{state=\"e2ee\"}"), 1.0, "{m}");
    assert!(dave("lodge_dave_events_total{event=\"commit_accepted\"}") >= 1.0);
    let executed = dave("lodge_dave_events_total{event=\"transition_executed\"}");
    let timed_out = dave("lodge_dave_events_total{event=\"transition_timed_out\"}");
    assert!(
        executed - timed_out >= 1.0,
        "{executed} executed, {timed_out} on timeout"
    );
    assert_eq!(dave("lodge_dave_events_total{event=\"downgrade\"}"), 0.0);
    // The node forwarded DAVE frames it cannot read: after the transition every voice packet
    // (the first few may precede it).
    let (rtp_in, dave_in) = (
        stats["rtp_in"].as_u64().unwrap(),
        stats["dave_frames_in"].as_u64().unwrap(),
    );
    assert!(
        dave_in * 10 >= rtp_in * 9,
        "{dave_in} of {rtp_in} packets were DAVE frames"
    );
    assert_eq!(stats["native_discovery"], 2, "one IP discovery per driver");
    let alice_ssrc = lodge_sfu::native::user_ssrc(
        lodge_sfu::GuildId(g.parse().unwrap()),
        lodge_sfu::UserId(a.id.parse().unwrap()),
    )
    .0;
    let pcm = decode(got.get(&alice_ssrc).unwrap_or_else(|| {
        panic!(
            "bob decoded nothing from alice's SSRC; got {:?}",
            got.keys()
        )
    }));
    // At least 2 s of audio, and the tone dominates its last second.
    assert!(pcm.len() >= 96_000, "{} samples decoded", pcm.len());
    let last = &pcm[pcm.len() - 48_000..];
    let share = tone_share(last, TONE_HZ);
    let off = tone_share(last, 2.0 * TONE_HZ + 37.0);
    assert!(share > 0.5, "440 Hz holds {share:.2} of the power");
    assert!(off < 0.05, "an unrelated frequency holds {off:.2}");
    speaker.leave();
    listener.leave();
}
