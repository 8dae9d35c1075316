//! The trunk over real QUIC on loopback: authentication both ways, media in datagrams, control
//! on the stream, bad peers counted and contained, loss repaired through an impairment relay.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lodge_edge::tls::Identity;
use lodge_edge::trunk::{self, Hello, Origin, Trunk, TrunkCommand, TrunkEvent, TrunkStats};
use lodge_edge::EdgeError;
use lodge_jitter::{Impairment, Profile};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const TOKEN: &str = "test-cluster-token-0123456789";

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn hello(token: &str, node: &str) -> Hello {
    Hello {
        token: token.into(),
        node: node.into(),
        region: "eu-test".into(),
        voice_endpoint: "127.0.0.1:9".into(),
    }
}

struct Running {
    cmd: mpsc::Sender<TrunkCommand>,
    events: mpsc::Receiver<TrunkEvent>,
    stats: watch::Receiver<TrunkStats>,
    task: JoinHandle<EdgeError>,
}

fn start(t: Trunk) -> Running {
    let (cmd, cmd_rx) = mpsc::channel(4096);
    let (ev_tx, events) = mpsc::channel(4096);
    let (st_tx, stats) = watch::channel(TrunkStats::default());
    let task = tokio::spawn(t.run(cmd_rx, ev_tx, st_tx));
    Running {
        cmd,
        events,
        stats,
        task,
    }
}

async fn open(r: &Running, room: u64, user: u64) -> u16 {
    let (tx, rx) = oneshot::channel();
    r.cmd
        .send(TrunkCommand::Open {
            room,
            user,
            reply: tx,
        })
        .await
        .unwrap();
    rx.await.unwrap().unwrap()
}

async fn media(r: &Running, stream: u16, i: u32, payload: Bytes) {
    r.cmd
        .send(TrunkCommand::Media {
            stream,
            rtp_ts: i * 960,
            level: 20,
            marker: false,
            payload,
        })
        .await
        .unwrap();
}

/// Media and notices until `quiet` passes without an event.
async fn collect_all(
    r: &mut Running,
    quiet: Duration,
) -> (Vec<lodge_edge::Delivered>, Vec<lodge_edge::Notice>) {
    let (mut got, mut notices) = (Vec::new(), Vec::new());
    while let Ok(Some(e)) = tokio::time::timeout(quiet, r.events.recv()).await {
        match e {
            TrunkEvent::Media(m) => got.push(m),
            TrunkEvent::Notice(n) => notices.push(n),
        }
    }
    (got, notices)
}

async fn collect(r: &mut Running, quiet: Duration) -> Vec<lodge_edge::Delivered> {
    collect_all(r, quiet).await.0
}

async fn origin() -> (Arc<Origin>, String) {
    let id = Identity::generate().unwrap();
    let o = Origin::bind(local(), &id, TOKEN, "origin-1").unwrap();
    (Arc::new(o), id.fingerprint())
}

#[tokio::test]
async fn media_flows_both_ways_with_little_overhead() {
    let (o, fp) = origin().await;
    let addr = o.local_addr();
    let (edge_trunk, origin_peer) = trunk::connect(local(), addr, &fp, &hello(TOKEN, "edge-a"))
        .await
        .unwrap();
    assert_eq!(origin_peer.node, "origin-1");
    let (origin_trunk, edge_peer) = o.accept().await.unwrap();
    assert_eq!(
        (edge_peer.node.as_str(), edge_peer.region.as_str()),
        ("edge-a", "eu-test")
    );
    let conn = edge_trunk.connection();
    let mut edge = start(edge_trunk);
    let mut org = start(origin_trunk);

    // Edge → origin: one speaker, 1,000 packets of 60 bytes.
    let s = open(&edge, 77, 1001).await;
    tokio::time::sleep(Duration::from_millis(50)).await; // StreamOpen before the datagrams
    let before = conn.stats().udp_tx.bytes;
    // One at a time (QUIC would pack a burst into shared packets and hide the per-packet cost).
    for i in 0..1000u32 {
        media(&edge, s, i, Bytes::from(vec![(i % 251) as u8; 60])).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    edge.cmd
        .send(TrunkCommand::App(lodge_edge::Control::Interest {
            room: 77,
            on: true,
        }))
        .await
        .unwrap();
    let (got, notices) = collect_all(&mut org, Duration::from_millis(500)).await;
    let sent_bytes = conn.stats().udp_tx.bytes - before;
    assert_eq!(
        notices,
        vec![
            lodge_edge::Notice::Opened {
                stream: s,
                room: 77,
                user: 1001,
                ssrc: None
            },
            lodge_edge::Notice::App(lodge_edge::Control::Interest { room: 77, on: true }),
        ]
    );
    assert_eq!(got.len(), 1000, "every packet on a clean path");
    assert!(got
        .iter()
        .all(|m| m.room == 77 && m.user == 1001 && m.payload.len() == 60));
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, m)| m.rtp_ts == i as u32 * 960),
        "in order"
    );
    let overhead = sent_bytes as f64 / 1000.0 - 60.0;
    println!("trunk overhead per forwarded packet: {overhead:.1} bytes (UDP payload − Opus payload, ACKs included)");
    assert!(overhead <= 40.0, "overhead {overhead:.1} bytes per packet");

    // Origin → edge: another speaker the edge's listeners need.
    let s2 = open(&org, 77, 2002).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..100u32 {
        media(&org, s2, i, Bytes::from_static(b"opus")).await;
    }
    let back = collect(&mut edge, Duration::from_millis(500)).await;
    assert_eq!(back.len(), 100);
    assert!(back.iter().all(|m| m.user == 2002));

    drop(edge.cmd);
    let why = tokio::time::timeout(Duration::from_secs(5), org.task)
        .await
        .expect("the origin notices the edge closing")
        .unwrap();
    // The connection or its control stream, whichever the driver noticed first.
    assert!(
        matches!(why, EdgeError::Connection(_) | EdgeError::ControlStream(_)),
        "{why}"
    );
    assert_eq!(
        o.counters()
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn wrong_credentials_and_garbage_hellos_are_refused_and_counted() {
    use std::sync::atomic::Ordering::Relaxed;
    let (o, fp) = origin().await;
    let addr = o.local_addr();
    // Wrong cluster token.
    let e = trunk::connect(local(), addr, &fp, &hello("not-the-token", "edge-x"))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&e, EdgeError::Refused(why) if why.contains("wrong cluster token")),
        "{e}"
    );
    // An origin with a different certificate than the pinned one.
    let other = Identity::generate().unwrap().fingerprint();
    let e = trunk::connect(local(), addr, &other, &hello(TOKEN, "edge-y"))
        .await
        .err()
        .expect("pin mismatch");
    assert!(matches!(&e, EdgeError::Connect { .. }), "{e}");
    // A peer that passes TLS and then sends garbage instead of a hello.
    let mut ep = quinn::Endpoint::new(
        lodge_edge::tls::endpoint_config(),
        None,
        std::net::UdpSocket::bind(local()).unwrap(),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    ep.set_default_client_config(
        lodge_edge::tls::client_config(lodge_edge::tls::parse_fingerprint(&fp).unwrap()).unwrap(),
    );
    let c = ep.connect(addr, "lodge-origin").unwrap().await.unwrap();
    let (mut s, _r) = c.open_bi().await.unwrap();
    s.write_all(&[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o'])
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), c.closed())
        .await
        .unwrap();
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed}"
    );
    // A good edge still gets in.
    let (_t, _) = trunk::connect(local(), addr, &fp, &hello(TOKEN, "edge-z"))
        .await
        .unwrap();
    let (_accepted, peer) = o.accept().await.unwrap();
    assert_eq!(peer.node, "edge-z");
    let cnt = o.counters();
    // The pin mismatch fails on the edge's side; the origin sees the aborted handshake (at the
    // latest when its 5 s handshake limit runs out).
    let until = Instant::now() + Duration::from_secs(8);
    while cnt.failed.load(Relaxed) < 2 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cnt.accepted.load(Relaxed), 1);
    assert_eq!(cnt.refused.load(Relaxed), 1);
    assert_eq!(
        cnt.failed.load(Relaxed),
        2,
        "garbage hello and the aborted TLS handshake"
    );
}

#[tokio::test]
async fn a_misbehaving_trunk_is_counted_and_does_not_disturb_another() {
    let (o, fp) = origin().await;
    let addr = o.local_addr();
    let (bad, _) = trunk::connect(local(), addr, &fp, &hello(TOKEN, "bad"))
        .await
        .unwrap();
    let (bad_at_origin, p1) = o.accept().await.unwrap();
    let (good, _) = trunk::connect(local(), addr, &fp, &hello(TOKEN, "good"))
        .await
        .unwrap();
    let (good_at_origin, p2) = o.accept().await.unwrap();
    let (bad_o, good_o) = if p1.node == "bad" {
        (bad_at_origin, good_at_origin)
    } else {
        assert_eq!(p2.node, "bad");
        (good_at_origin, bad_at_origin)
    };
    let raw = bad.connection();
    let _bad = start(bad);
    let mut bad_o = start(bad_o);
    let good = start(good);
    let mut good_o = start(good_o);

    // Garbage, datagrams for a stream never opened, then a flood.
    raw.send_datagram(Bytes::from_static(b"\xffgarbage"))
        .unwrap();
    raw.send_datagram(
        lodge_edge::Media {
            stream: 999,
            seq: 0,
            rtp_ts: 0,
            level: 0,
            marker: false,
            repair: false,
            payload: Bytes::from_static(b"x"),
        }
        .encode(),
    )
    .unwrap();
    let s = open(&good, 5, 55).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let flood = tokio::spawn(async move {
        let junk = Bytes::from(vec![1u8; 200]);
        for _ in 0..30_000 {
            let _ = raw.send_datagram(junk.clone());
            tokio::task::yield_now().await;
        }
    });
    for i in 0..200u32 {
        media(&good, s, i, Bytes::from_static(b"voice")).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let got = collect(&mut good_o, Duration::from_millis(500)).await;
    flood.await.unwrap();
    // The trunks share the origin's UDP socket, so a flood can cost the good trunk a datagram in
    // the kernel's buffer (what no application can prevent); in the application it is untouched.
    assert!(
        got.len() >= 196,
        "the good trunk lost {} of 200",
        200 - got.len()
    );
    assert_eq!(good_o.stats.borrow().session.dropped_flood, 0);
    assert!(collect(&mut bad_o, Duration::from_millis(300))
        .await
        .is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = bad_o.stats.borrow().session;
    println!("misbehaving trunk at the origin: {c:?}");
    // The flood's datagrams parse as media of a stream never opened (kind 1, stream 0x0101).
    assert!(c.dropped_malformed >= 1, "{c:?}");
    assert!(
        c.dropped_unknown_stream + c.dropped_flood > 10_000,
        "the flood was counted: {c:?}"
    );
    assert_eq!(c.media_in, 0);
    assert_eq!(good_o.stats.borrow().session.dropped_malformed, 0);
}

/// A UDP relay between an edge and its origin that impairs both directions.
async fn impairing_relay(origin: SocketAddr, profile: Profile) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind(local()).await.unwrap());
    let back = Arc::new(UdpSocket::bind(local()).await.unwrap());
    let addr = front.local_addr().unwrap();
    let t0 = Instant::now();
    let edge: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    // Edge → origin.
    {
        let (front, back, edge) = (front.clone(), back.clone(), edge.clone());
        let mut imp = Impairment::new(profile.clone(), 11);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *edge.lock().unwrap() = Some(from);
                for at in imp.send(t0.elapsed(), n) {
                    let (back, data) = (back.clone(), buf[..n].to_vec());
                    tokio::spawn(async move {
                        tokio::time::sleep_until(t0 + at).await;
                        let _ = back.send_to(&data, origin).await;
                    });
                }
            }
        });
    }
    // Origin → edge.
    {
        let mut imp = Impairment::new(profile, 12);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, _)) = back.recv_from(&mut buf).await {
                let Some(to) = *edge.lock().unwrap() else {
                    continue;
                };
                for at in imp.send(t0.elapsed(), n) {
                    let (front, data) = (front.clone(), buf[..n].to_vec());
                    tokio::spawn(async move {
                        tokio::time::sleep_until(t0 + at).await;
                        let _ = front.send_to(&data, to).await;
                    });
                }
            }
        });
    }
    addr
}

#[tokio::test]
async fn bursty_loss_on_the_trunk_is_repaired() {
    // 5% loss in bursts (Gilbert-Elliott, mean burst 2.5 packets), 40 ms ± 10 ms one way.
    let profile = Profile {
        name: "trunk_5pct_bursty",
        base_delay_ms: 40.0,
        jitter_ms: 10.0,
        p_good_to_bad: 0.05 * 0.4 / 0.95,
        p_bad_to_good: 0.4,
        loss_bad: 1.0,
        ..Profile::WIRED
    };
    assert!((profile.expected_loss() - 0.05).abs() < 1e-9);
    let (o, fp) = origin().await;
    let relay = impairing_relay(o.local_addr(), profile).await;
    let (edge_t, _) = trunk::connect(local(), relay, &fp, &hello(TOKEN, "edge-lossy"))
        .await
        .unwrap();
    let (origin_t, _) = o.accept().await.unwrap();
    let edge = start(edge_t);
    let mut org = start(origin_t);
    // Two speakers at 50 packets/s for 12 s.
    let (a, b) = (open(&edge, 9, 1).await, open(&edge, 9, 2).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let n = 600u32;
    let receiver = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(Some(e)) =
            tokio::time::timeout(Duration::from_secs(2), org.events.recv()).await
        {
            if let TrunkEvent::Media(m) = e {
                got.push((m, t0.elapsed()));
            }
        }
        (got, org)
    });
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    // When each packet really left: delay is measured from there, so a sender the scheduler
    // held back (a busy CI machine) does not count as trunk delay.
    let mut sent_at = Vec::with_capacity(n as usize);
    for i in 0..n {
        tick.tick().await;
        sent_at.push(t0.elapsed());
        for s in [a, b] {
            media(&edge, s, i, Bytes::from(vec![s as u8; 80])).await;
        }
    }
    let (got, org) = receiver.await.unwrap();
    let mut seen = HashSet::new();
    let mut late_ms = Vec::new();
    for (m, at) in &got {
        assert!(seen.insert((m.user, m.rtp_ts)), "a packet delivered twice");
        let sent = sent_at[(m.rtp_ts / 960) as usize];
        late_ms.push(at.saturating_sub(sent).as_secs_f64() * 1000.0);
    }
    late_ms.sort_by(f64::total_cmp);
    let c = org.stats.borrow().session;
    let loss = 1.0 - seen.len() as f64 / (2 * n) as f64;
    let p99 = late_ms[(late_ms.len() as f64 * 0.99) as usize];
    let q = |f: f64| late_ms[((late_ms.len() as f64 * f) as usize).min(late_ms.len() - 1)];
    println!(
        "5% bursty loss, 40±10 ms: {} of {} delivered (loss after repair {:.2}%), {} recovered by NACK, {} abandoned, {} NACKs; delivery delay p50/p95/p98/p99/p99.5/max {:.0}/{:.0}/{:.0}/{:.0}/{:.0}/{:.0} ms",
        seen.len(),
        2 * n,
        loss * 100.0,
        c.repair.recovered,
        c.repair.abandoned,
        c.repair.nacked,
        q(0.5),
        q(0.95),
        q(0.98),
        p99,
        q(0.995),
        q(1.0)
    );
    assert!(c.repair.recovered > 20, "repairs happened: {c:?}");
    assert!(
        loss <= 0.005,
        "loss after repair {:.2}% > 0.5%",
        loss * 100.0
    );
    // One repair round costs the gap's detection (the next packet after the burst, plus the
    // reorder wait) and a round trip: about 150-250 ms here, which bounds p98. The last percent
    // holds packets whose NACK was lost too (a burst takes both directions' datagrams at once),
    // a second round later: p99 sits on that cliff (250-410 ms in runs on this machine), so it
    // is not asserted. Every packet still arrives within the repair window, which opens when
    // the gap is seen (up to ~150 ms after the send, for a long burst on this path).
    let p98 = q(0.98);
    assert!(
        p98 < 320.0,
        "repaired packets arrive in time for a jitter buffer: p98 {p98:.0} ms"
    );
    let window = lodge_edge::repair::RepairConfig::default()
        .give_up_after
        .as_secs_f64()
        * 1000.0;
    assert!(
        q(1.0) < window + 200.0,
        "every packet arrives within the repair window ({window} ms after its gap is seen): max {:.0} ms",
        q(1.0)
    );
}
