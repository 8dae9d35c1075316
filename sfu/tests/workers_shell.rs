//! A node of two media workers on real loopback sockets: every path into a room (a WebRTC
//! join, a native join, a remote speaker) lands on the room's worker and is told that worker's
//! port; the node-wide bounds hold across workers; a worker whose thread dies leaves the other
//! serving. Each test is bounded by timeouts of a few seconds.

use std::time::{Duration, Instant};

use lodge_sfu::native::CryptoMode;
use lodge_sfu::shell::{self, MediaSockets, SfuHandle, ShellOptions};
use lodge_sfu::{
    GuildId, JoinRequest, NativeJoin, NodeConfig, NodeEvent, RoomId, SfuError, UserId, VoiceFlags,
};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::UnboundedReceiver;

async fn node(
    workers: usize,
    cfg: impl FnOnce(&mut NodeConfig),
) -> (SfuHandle, UnboundedReceiver<NodeEvent>) {
    let mut sockets = Vec::new();
    for _ in 0..workers {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sockets.push(MediaSockets::from(udp));
    }
    let mut c = NodeConfig::new("127.0.0.1:1".parse().unwrap());
    cfg(&mut c);
    let (h, ev, _) = shell::spawn_workers(sockets, c, ShellOptions::default(), false).unwrap();
    (h, ev)
}

/// A browser-like offer (send one audio stream, receive one) from a client at `local`.
fn offer(local: std::net::SocketAddr) -> String {
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, _pending) = api.apply().unwrap();
    offer.to_sdp_string()
}

fn webrtc(room: RoomId, user: u64) -> JoinRequest {
    JoinRequest {
        room,
        guild: GuildId(1),
        user: UserId(user),
        offer: offer("127.0.0.1:40000".parse().unwrap()),
        flags: VoiceFlags {
            can_speak: true,
            ..Default::default()
        },
    }
}

fn native(room: RoomId, user: u64) -> NativeJoin {
    NativeJoin {
        room,
        guild: GuildId(1),
        user: UserId(user),
        mode: CryptoMode::Aes256GcmRtpsize,
        key: [7; 32],
        slots: 3,
        flags: VoiceFlags {
            can_speak: true,
            ..Default::default()
        },
        dave: false,
    }
}

/// Rooms whose ids put at least two on each of two workers: `(on worker 0, on worker 1)`.
fn rooms_on_both(h: &SfuHandle) -> (Vec<RoomId>, Vec<RoomId>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for id in 1_579_107_656_327_495_680u64.. {
        let r = RoomId(id);
        match h.worker_for_room(r) {
            0 if a.len() < 2 => a.push(r),
            1 if b.len() < 2 => b.push(r),
            _ => {}
        }
        if a.len() == 2 && b.len() == 2 {
            return (a, b);
        }
    }
    unreachable!()
}

/// An IP discovery request to `to` from a fresh socket: whether an answer comes back.
async fn discovery_answered(to: std::net::SocketAddr) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut req = [0u8; 74];
    req[..4].copy_from_slice(&[0, 1, 0, 0x46]);
    req[4..8].copy_from_slice(&0x0101_0101u32.to_be_bytes());
    s.send_to(&req, to).await.unwrap();
    let mut buf = [0u8; 128];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), s.recv_from(&mut buf)).await,
        Ok(Ok((74, _)))
    )
}

#[tokio::test]
async fn every_path_into_a_room_lands_on_its_worker_and_names_its_port() {
    let (h, _ev) = node(2, |_| {}).await;
    assert_eq!(h.workers(), 2);
    let addrs = h.local_addrs();
    assert_ne!(addrs[0].port(), addrs[1].port(), "a port per worker");
    let (on0, on1) = rooms_on_both(&h);
    let mut user = 100;
    for room in on0.iter().chain(&on1).copied() {
        let w = h.worker_for_room(room);
        let port = h.port_for_room(room);
        assert_eq!(port, addrs[w].port());
        // A WebRTC caller: its answer's candidate is the worker's port.
        user += 1;
        let a = h.join(webrtc(room, user)).await.unwrap();
        assert_eq!(a.idx.worker(), w, "{room}: WebRTC join");
        assert!(
            a.answer.contains(&format!("127.0.0.1 {port} typ host")),
            "{room}: the candidate names worker {w}'s port {port}: {}",
            a.answer
        );
        // A native caller and a remote speaker (from a trunk) of the same room.
        user += 1;
        let n = h.join_native(native(room, user)).await.unwrap();
        assert_eq!(n.idx.worker(), w, "{room}: native join");
        user += 1;
        let r = h.add_remote(room, UserId(user), None).await.unwrap();
        assert_eq!(r.worker(), w, "{room}: remote speaker");
        // Each worker answers IP discovery on its own port.
        assert!(discovery_answered(addrs[w]).await);
    }
    let rep = h.report().await.unwrap();
    assert_eq!(
        (rep.rooms, rep.participants, rep.remote_speakers),
        (4, 8, 4),
        "{rep:?}"
    );
    assert_eq!(rep.native_discovery, 4);
    // Every room's participants are on one worker, and the rooms use both.
    let mut by_room = std::collections::HashMap::<RoomId, Vec<usize>>::new();
    for p in &rep.peers {
        by_room
            .entry(p.room)
            .or_default()
            .push(lodge_sfu::ParticipantIdx(p.idx).worker());
    }
    assert_eq!(by_room.len(), 4);
    for (room, ws) in &by_room {
        assert!(
            ws.iter().all(|w| *w == h.worker_for_room(*room)),
            "{room}: {ws:?}"
        );
    }
    // A leave by the node-wide index reaches the right worker.
    let last = on1[1];
    let gone = rep.peers.iter().find(|p| p.room == last).unwrap().idx;
    h.leave(lodge_sfu::ParticipantIdx(gone)).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while h.report().await.unwrap().participants != 7 {
        assert!(Instant::now() < deadline, "the leave reached worker 1");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.shutdown().await;
}

#[tokio::test]
async fn the_node_wide_bounds_hold_across_workers() {
    let (h, mut ev) = node(2, |c| {
        c.max_participants_per_user = 1;
        c.max_participants = 3;
    })
    .await;
    let (on0, on1) = rooms_on_both(&h);
    let a = h.join(webrtc(on0[0], 1)).await.unwrap();
    // The same user in a room on the other worker: refused by the per-user bound, which each
    // worker alone would have let through.
    let e = h.join(webrtc(on1[0], 1)).await.unwrap_err();
    assert!(matches!(e, SfuError::UserLimit { limit: 1, .. }), "{e:?}");
    h.join_native(native(on1[0], 2)).await.unwrap();
    h.join(webrtc(on1[1], 3)).await.unwrap();
    let e = h.join(webrtc(on0[1], 4)).await.unwrap_err();
    assert!(matches!(e, SfuError::NodeFull { limit: 3 }), "{e:?}");
    // A leave gives the place back (once the worker has seen it).
    h.leave(a.idx).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::time::timeout(Duration::from_secs(2), ev.recv()).await {
            Ok(Some(NodeEvent::Left { idx, .. })) if idx == a.idx => break,
            Ok(Some(_)) => {}
            other => panic!("no Left for {}: {other:?}", a.idx),
        }
        assert!(Instant::now() < deadline);
    }
    h.join(webrtc(on1[0], 1)).await.unwrap();
    h.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_dies_leaves_the_others_serving() {
    let (h, _ev) = node(2, |_| {}).await;
    let (on0, on1) = rooms_on_both(&h);
    h.join(webrtc(on0[0], 1)).await.unwrap();
    h.join(webrtc(on1[0], 2)).await.unwrap();
    let addrs = h.local_addrs();
    h.crash_worker_for_tests(1).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while h.workers_running() != 1 {
        assert!(Instant::now() < deadline, "worker 1 stops");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!h.is_running(), "readiness fails with a worker down");
    // Worker 0 still answers on its socket and takes joins; worker 1's rooms are refused.
    assert!(discovery_answered(addrs[0]).await);
    assert!(!discovery_answered(addrs[1]).await);
    h.join(webrtc(on0[1], 3)).await.unwrap();
    let e = h.join(webrtc(on1[1], 4)).await.unwrap_err();
    assert!(e.to_string().contains("stopped"), "{e}");
    // The report covers the worker that runs.
    let rep = h.report().await.unwrap();
    assert_eq!((rep.participants, rep.rooms), (2, 2), "{rep:?}");
    h.shutdown().await;
}
