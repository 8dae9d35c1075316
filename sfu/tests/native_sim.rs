//! Native (Discord UDP mode) participants in the simulated world: discovery, AEAD both ways,
//! speakers under their own SSRCs, mixed rooms with WebRTC, bad packets, rebinding, liveness,
//! DAVE frames reaching only listeners that do DAVE, sender reports answered with receiver
//! reports on the uplink, and native and trunk-fed speakers' levels carried to browsers.

mod sim;

use std::time::Duration;

use lodge_sfu::native::rtcp::{self, Report};
use lodge_sfu::native::{user_ssrc, CryptoMode, TransportCipher};
use lodge_sfu::node::size_level;
use lodge_sfu::ParticipantIdx;
use lodge_sfu::{DropReason, GuildId, LeaveReason, NativeJoin, NodeEvent, RoomId, UserId};
use sim::{discovery_request, World};

const AES: CryptoMode = CryptoMode::Aes256GcmRtpsize;
const XCHACHA: CryptoMode = CryptoMode::XChaCha20Poly1305Rtpsize;

fn drops(w: &World, r: DropReason) -> u64 {
    w.node.stats().drops.get(r)
}

#[test]
fn native_clients_hear_each_other_under_the_speakers_own_ssrc() {
    let mut w = World::new(|_| {});
    let a = w.join_native(2, AES, World::speaking()).unwrap();
    let b = w.join_native(2, XCHACHA, World::speaking()).unwrap();
    // Discovery answered each with the address it asked from; the join bound it.
    w.run(Duration::from_millis(50));
    assert_eq!(
        w.natives[a].discovered,
        vec![(w.natives[a].ssrc, "127.0.1.10".into(), 41000)]
    );
    let connected = w
        .events
        .iter()
        .filter(|(_, e)| matches!(e, NodeEvent::Connected { .. }))
        .count();
    assert_eq!(connected, 2, "one Connected per native participant");
    w.natives[a].bytes = Some(120);
    w.natives[b].bytes = Some(90);
    w.run(Duration::from_secs(2));
    for (me, other) in [(a, b), (b, a)] {
        let (me_c, other_c) = (&w.natives[me], &w.natives[other]);
        assert_eq!(me_c.heard_from(me_c.n), 0, "{me} heard itself");
        assert!(me_c.unopened == 0, "every packet opened under its own key");
        let from: Vec<_> = me_c
            .heard
            .iter()
            .filter(|h| h.speaker == other_c.n)
            .collect();
        assert!(
            from.len() > 80,
            "{me} heard {} packets of {other}",
            from.len()
        );
        assert!(from.iter().all(|h| h.ssrc == other_c.ssrc && h.pt == 120));
        // Passed through as the speaker numbered them: consecutive from its first packets (the
        // ones before the selector's first tick ranked it are not forwarded).
        assert!(
            (1000..1005).contains(&from[0].seq),
            "first seq {}",
            from[0].seq
        );
        assert!(from
            .windows(2)
            .all(|p| p[1].seq == p[0].seq.wrapping_add(1)));
        assert!(from
            .windows(2)
            .all(|p| p[1].ts == p[0].ts.wrapping_add(960)));
    }
    assert_eq!(w.natives[b].heard[0].len, 120, "the Opus payload unchanged");
}

#[test]
fn a_mixed_room_webrtc_and_native_hear_each_other() {
    let mut w = World::new(|_| {});
    let web = w.join(2, World::speaking()).unwrap();
    let nat = w.join_native(2, AES, World::speaking()).unwrap();
    w.run(Duration::from_millis(1500));
    assert!(w.clients[web].connected);
    w.clients[web].level = Some(30);
    w.natives[nat].bytes = Some(120);
    w.run(Duration::from_secs(3));
    let web_user = w.clients[web].user;
    let heard_web: Vec<_> = w.natives[nat]
        .heard
        .iter()
        .filter(|h| h.speaker == w.clients[web].n)
        .collect();
    assert!(
        heard_web.len() > 80,
        "native heard {} web packets",
        heard_web.len()
    );
    assert!(
        heard_web
            .iter()
            .all(|h| h.ssrc == user_ssrc(GuildId(1), web_user).0),
        "a WebRTC speaker reaches native listeners under its user SSRC"
    );
    let n = w.natives[nat].n;
    assert!(
        w.clients[web].heard_from(n) > 80,
        "web heard {} native packets",
        w.clients[web].heard_from(n)
    );
    // Only the WebRTC listener's slots are announced (op 5 per slot); native listeners get
    // none (signaling maps user SSRCs once).
    let nat_idx = w.natives[nat].idx.unwrap();
    assert!(!w.events.iter().any(
        |(_, e)| matches!(e, NodeEvent::SlotChanged { listener, .. } if *listener == nat_idx)
    ));
}

#[test]
fn a_native_listener_hears_the_loudest_k_by_packet_size() {
    let mut w = World::new(|_| {});
    let sizes = [30, 200, 60, 140];
    for s in sizes {
        let i = w.join_native(1, AES, World::speaking()).unwrap();
        w.natives[i].bytes = Some(s);
    }
    let l = w.join_native(2, AES, World::speaking()).unwrap();
    w.run(Duration::from_secs(3));
    let heard: Vec<usize> = (0..4)
        .map(|i| w.natives[l].heard_from(w.natives[i].n))
        .collect();
    assert!(
        heard[1] > 100 && heard[3] > 100,
        "the two busiest: {heard:?}"
    );
    assert!(
        heard[0] < 20 && heard[2] < 20,
        "quieter ones barely: {heard:?}"
    );
}

#[test]
fn bad_native_packets_are_dropped_and_counted() {
    let mut w = World::new(|_| {});
    let a = w.join_native(2, AES, World::speaking()).unwrap();
    let b = w.join_native(2, AES, World::speaking()).unwrap();
    w.run(Duration::from_millis(100));
    let addr = w.natives[a].addr;
    let good = w.natives[a].packet(&[7u8; 80]);
    w.inject(addr, &good);
    w.inject(addr, &good);
    assert_eq!(
        drops(&w, DropReason::Replayed),
        1,
        "a replay authenticates but is refused"
    );
    let wrong = TransportCipher::new(AES, &[9; 32]);
    let mut forged = vec![0u8; 12 + 80 + 20];
    let mut h = [0u8; 12];
    h[0] = 0x80;
    h[1] = 120;
    h[8..12].copy_from_slice(&w.natives[a].ssrc.to_be_bytes());
    let n = wrong.seal(&h, &[1; 80], 77, &mut forged).unwrap();
    forged.truncate(n);
    w.inject(addr, &forged);
    assert_eq!(drops(&w, DropReason::DecryptFailed), 1);
    // Too short for header + tag + counter; RTCP; garbage of every small length.
    w.inject(addr, &good[..20]);
    assert_eq!(drops(&w, DropReason::Malformed), 1);
    // RTP bytes relabelled as an SR do not open as RTCP; an RTCP type the node does not use
    // is counted as unexpected.
    let mut rtcp = good.clone();
    rtcp[1] = 200;
    w.inject(addr, &rtcp);
    assert_eq!(drops(&w, DropReason::DecryptFailed), 2);
    let mut app = good.clone();
    app[1] = 222;
    w.inject(addr, &app);
    assert_eq!(drops(&w, DropReason::UnexpectedStream), 1);
    for len in 0..120 {
        w.inject(addr, &vec![0x90; len]);
        w.inject("127.9.9.9:9".parse().unwrap(), &vec![0x80; len]);
    }
    // A keepalive from nowhere, a discovery of the wrong length.
    w.inject("127.9.9.9:1".parse().unwrap(), &[0, 0, 0, 1, 0, 0, 0, 0]);
    w.inject("127.9.9.9:1".parse().unwrap(), &discovery_request(5)[..73]);
    // Nothing of that reached b, and a is still heard once it talks.
    w.natives[a].bytes = Some(100);
    w.run(Duration::from_secs(1));
    assert!(w.natives[b].heard.len() > 20);
    assert!(w.natives[b]
        .heard
        .iter()
        .all(|h| h.speaker == w.natives[a].n));
}

#[test]
fn a_native_peer_moves_only_on_an_authenticated_packet_once_proven() {
    let mut w = World::new(|_| {});
    let a = w.join_native(2, AES, World::speaking()).unwrap();
    let b = w.join_native(2, AES, World::speaking()).unwrap();
    w.natives[a].bytes = Some(100);
    w.natives[b].bytes = Some(100);
    w.run(Duration::from_secs(1));
    let before = w.natives[a].heard.len();
    assert!(before > 30);
    // An attacker's discovery for a's SSRC is answered but does not steal a proven address.
    let attacker: std::net::SocketAddr = "127.66.0.1:666".parse().unwrap();
    w.inject(attacker, &discovery_request(w.natives[a].ssrc));
    w.run(Duration::from_millis(500));
    assert!(w.natives[a].heard.len() > before + 15, "a still hears b");
    // a's NAT rebinds: its next packets come from a new port and move it there.
    let moved: std::net::SocketAddr = "127.0.1.10:52000".parse().unwrap();
    w.natives[a].addr = moved;
    let mid = w.natives[a].heard.len();
    w.run(Duration::from_secs(1));
    assert!(
        w.natives[a].heard.len() > mid + 30,
        "a hears b at its new address"
    );
    assert_eq!(w.node.participant_count(), 2);
}

#[test]
fn native_liveness_keepalives_idle_and_never_discovered() {
    let mut w = World::new(|_| {});
    let kept = w.join_native(2, AES, World::speaking()).unwrap();
    let silent = w.join_native(2, AES, World::speaking()).unwrap();
    w.natives[kept].keepalive = Some(Duration::from_secs(5));
    // A native join whose client never did discovery nor sent anything.
    let lost = w
        .node
        .join_native(
            w.now,
            NativeJoin {
                room: RoomId(1),
                guild: GuildId(1),
                user: UserId(999),
                mode: AES,
                key: [3; 32],
                slots: 1,
                flags: World::speaking(),
                dave: false,
            },
        )
        .unwrap();
    w.run(Duration::from_secs(17));
    let left = |idx| {
        w.events.iter().find_map(|(_, e)| match e {
            NodeEvent::Left { idx: i, reason, .. } if *i == idx => Some(*reason),
            _ => None,
        })
    };
    assert_eq!(
        left(w.natives[kept].idx.unwrap()),
        None,
        "keepalives keep it"
    );
    assert_eq!(
        left(w.natives[silent].idx.unwrap()),
        Some(LeaveReason::Idle)
    );
    assert_eq!(left(lost.idx), Some(LeaveReason::ConnectTimeout));
    // Its SSRC is free again: the same user may join natively anew.
    let again = w.node.join_native(
        w.now,
        NativeJoin {
            room: RoomId(1),
            guild: GuildId(1),
            user: UserId(999),
            mode: AES,
            key: [3; 32],
            slots: 1,
            flags: World::speaking(),
            dave: false,
        },
    );
    assert!(again.is_ok());
    let dup = w.node.join_native(
        w.now,
        NativeJoin {
            room: RoomId(2),
            guild: GuildId(1),
            user: UserId(999),
            mode: AES,
            key: [3; 32],
            slots: 1,
            flags: World::speaking(),
            dave: false,
        },
    );
    assert!(matches!(dup, Err(lodge_sfu::SfuError::SsrcInUse(_))));
}

#[test]
fn a_remote_speaker_reaches_native_listeners_under_the_ssrc_its_home_named() {
    let mut w = World::new(|_| {});
    w.node.set_exported(RoomId(1), true);
    let l = w.join_native(2, AES, World::speaking()).unwrap();
    // The speaker's home derived its user SSRC; the trunk carried it here.
    let home_ssrc = user_ssrc(GuildId(1), UserId(77));
    let remote = w
        .node
        .add_remote(w.now, RoomId(1), UserId(77), Some(home_ssrc))
        .unwrap();
    w.feed_remote(remote, 77, 60);
    let heard: Vec<_> = w.natives[l]
        .heard
        .iter()
        .filter(|h| h.speaker == 77)
        .collect();
    assert!(heard.len() > 40, "heard {}", heard.len());
    assert!(heard.iter().all(|h| h.ssrc == home_ssrc.0));
    // And relayed on to other nodes with the same SSRC.
    assert!(w
        .exports
        .iter()
        .filter(|(_, x)| x.user == UserId(77))
        .all(|(_, x)| x.voice_ssrc == home_ssrc));
}

#[test]
fn native_and_trunk_fed_speakers_reach_browsers_with_their_level() {
    let mut w = World::new(|_| {});
    let web = w.join(3, World::speaking()).unwrap();
    let nat = w.join_native(2, AES, World::speaking()).unwrap();
    w.run(Duration::from_millis(1500));
    assert!(w.clients[web].connected);
    w.natives[nat].bytes = Some(120);
    let remote = w
        .node
        .add_remote(w.now, RoomId(1), UserId(77), None)
        .unwrap();
    w.feed_remote(remote, 77, 100);
    let n = w.natives[nat].n;
    let native_level = -(size_level(120) as i8);
    for (speaker, level) in [(n, native_level), (77, -20)] {
        let heard: Vec<_> = w.clients[web]
            .heard
            .iter()
            .filter(|h| h.speaker == speaker)
            .collect();
        assert!(heard.len() > 40, "speaker {speaker}: heard {}", heard.len());
        // str0m leaves the extension out unless both its fields are set: without a V bit the
        // browser would see no level at all for these speakers.
        assert!(
            heard
                .iter()
                .all(|h| h.audio_level == (Some(level), Some(true))),
            "speaker {speaker}: {:?}",
            heard.iter().map(|h| h.audio_level).collect::<Vec<_>>()
        );
    }
}

fn is_dave(p: &[u8]) -> bool {
    p.ends_with(&[0xFA, 0xFA])
}

/// Whom `listener`'s slots carry, as the node reports it.
fn slot_speakers(w: &World, listener: ParticipantIdx) -> Vec<Option<UserId>> {
    w.node
        .reports()
        .into_iter()
        .find(|r| r.idx == listener.0)
        .map(|r| r.slots.into_iter().map(|s| s.speaker).collect())
        .unwrap_or_default()
}

#[test]
fn dave_frames_reach_only_listeners_that_do_dave() {
    let mut w = World::new(|_| {});
    w.node.set_exported(RoomId(1), true);
    let s = w.join_native_dave(2, AES, World::speaking(), true).unwrap();
    let d = w
        .join_native_dave(2, XCHACHA, World::speaking(), true)
        .unwrap();
    let n = w.join_native(2, AES, World::speaking()).unwrap();
    let web = w.join(2, World::speaking()).unwrap();
    w.run(Duration::from_millis(1500));
    assert!(w.clients[web].connected);
    let (s_n, s_user) = (w.natives[s].n, w.natives[s].user);
    let (n_idx, web_idx) = (w.natives[n].idx.unwrap(), w.clients[web].idx.unwrap());

    // Plain Opus from the DAVE-capable speaker: everyone hears it.
    w.natives[s].bytes = Some(100);
    w.run(Duration::from_secs(1));
    let heard_plain = |w: &World| {
        (
            w.natives[d].heard_from(s_n),
            w.natives[n].heard_from(s_n),
            w.clients[web].heard_from(s_n),
        )
    };
    let (d0, n0, web0) = heard_plain(&w);
    assert!(d0 > 30 && n0 > 30 && web0 > 30, "{:?}", heard_plain(&w));
    assert_eq!(drops(&w, DropReason::DaveToNonDave), 0);
    assert!(slot_speakers(&w, n_idx).contains(&Some(s_user)));

    // DAVE frames: the DAVE listener gets each byte for byte; the others none.
    w.natives[s].dave_frames = true;
    let exports_before = w.exports.len();
    w.run(Duration::from_secs(2));
    let (d1, n1, web1) = heard_plain(&w);
    let d_dave: Vec<_> = w.natives[d].heard[..]
        .iter()
        .filter(|h| h.speaker == s_n && is_dave(&h.payload))
        .collect();
    assert!(d_dave.len() > 90, "DAVE listener got {}", d_dave.len());
    assert!(d1 - d0 >= d_dave.len());
    for h in &d_dave {
        assert_eq!(
            Some(h.payload.as_slice()),
            w.natives[s].sent_payload(h.seq),
            "a DAVE frame is forwarded untouched (seq {})",
            h.seq
        );
        assert!(lodge_sfu::native::is_dave_frame(&h.payload));
    }
    assert!(w.natives[d].unopened == 0);
    assert!(!w.natives[n].heard.iter().any(|h| is_dave(&h.payload)));
    assert!(!w.clients[web].heard.iter().any(|h| is_dave(&h.payload)));
    // At most the packets still in flight when the speaker switched reach them (plain ones).
    assert!(n1 - n0 <= 2 && web1 - web0 <= 2, "{:?}", heard_plain(&w));
    // Each skipped delivery is counted, until the next tick freed both listeners' slots.
    let skipped = drops(&w, DropReason::DaveToNonDave);
    assert!(
        (2..=8).contains(&skipped),
        "{skipped} skipped deliveries: the tick did not free the slots"
    );
    assert!(!slot_speakers(&w, n_idx).contains(&Some(s_user)));
    assert!(!slot_speakers(&w, web_idx).contains(&Some(s_user)));
    assert!(w.events.iter().any(|(_, e)| matches!(
        e,
        NodeEvent::SlotChanged { listener, speaker: None, .. } if *listener == web_idx
    )));
    // Ranked (and exported) at the Opus frame's size, not the DAVE frame's.
    let levels: Vec<u8> = w.exports[exports_before..]
        .iter()
        .filter(|(_, x)| x.user == s_user && is_dave(&x.payload))
        .map(|(_, x)| x.level)
        .collect();
    assert!(levels.len() > 90);
    assert!(levels.iter().all(|l| *l == size_level(100)), "{levels:?}");
    assert_ne!(size_level(100), size_level(112));

    // Plain Opus again: the slots come back and everyone hears it.
    w.natives[s].dave_frames = false;
    w.run(Duration::from_secs(1));
    let (d2, n2, web2) = heard_plain(&w);
    assert!(
        d2 - d1 > 40 && n2 - n1 > 40 && web2 - web1 > 40,
        "{:?}",
        heard_plain(&w)
    );
    assert_eq!(drops(&w, DropReason::DaveToNonDave), skipped);
    assert!(slot_speakers(&w, n_idx).contains(&Some(s_user)));
}

#[test]
fn a_listener_without_dave_hears_the_next_speaker_instead() {
    let mut w = World::new(|_| {});
    // One slot each: a loud DAVE speaker and a quieter plain one compete for it.
    let s = w.join_native_dave(1, AES, World::speaking(), true).unwrap();
    let p = w.join_native(1, AES, World::speaking()).unwrap();
    let d = w.join_native_dave(1, AES, World::speaking(), true).unwrap();
    let n = w.join_native(1, XCHACHA, World::speaking()).unwrap();
    let web = w.join(1, World::speaking()).unwrap();
    w.natives[s].bytes = Some(200);
    w.natives[s].dave_frames = true;
    w.natives[p].bytes = Some(60);
    w.run(Duration::from_secs(3));
    assert!(w.clients[web].connected);
    let (s_n, p_n) = (w.natives[s].n, w.natives[p].n);
    // The DAVE listener hears the louder one; the others get the plain speaker in its place.
    assert!(
        w.natives[d].heard_from(s_n) > 100,
        "d: {}",
        w.natives[d].heard_from(s_n)
    );
    assert!(w.natives[d].heard_from(p_n) < 10);
    assert!(
        w.natives[n].heard_from(p_n) > 100,
        "n: {}",
        w.natives[n].heard_from(p_n)
    );
    assert!(
        w.clients[web].heard_from(p_n) > 50,
        "web: {}",
        w.clients[web].heard_from(p_n)
    );
    assert_eq!(w.natives[n].heard_from(s_n), 0);
    assert_eq!(w.clients[web].heard_from(s_n), 0);
    // The plain speaker cannot hear the DAVE one and nobody else talks: its slot stays free.
    assert_eq!(w.natives[p].heard_from(s_n), 0);
    assert!(drops(&w, DropReason::DaveToNonDave) <= 10);
}

#[test]
fn a_sender_report_is_answered_with_the_uplinks_loss_and_an_echo_for_the_round_trip() {
    let mut w = World::new(|_| {});
    let a = w.join_native(2, AES, World::speaking()).unwrap();
    let b = w.join_native(2, XCHACHA, World::speaking()).unwrap();
    w.natives[a].bytes = Some(100);
    // One frame in five never reaches the node: 20% uplink loss.
    w.natives[a].lose_every = Some(5);
    w.run(Duration::from_secs(2));
    assert!(w.natives[a].reports.is_empty(), "no SR, no RR");
    let addr = w.natives[a].addr;
    let sr = w.natives[a].sender_report(1000.25);
    let replay = sr.clone();
    w.inject(addr, &sr);
    w.run(Duration::from_millis(50));
    assert_eq!(w.node.stats().native_reports, 1);
    let got: Vec<_> = w.natives[a].reports.iter().map(|(_, r)| *r).collect();
    let [Report::Receiver {
        ssrc: 0,
        block: Some(blk),
    }] = got[..]
    else {
        panic!("one RR from the node: {got:?}");
    };
    assert_eq!(blk.ssrc, w.natives[a].ssrc);
    assert!(
        (0.18..=0.22).contains(&blk.loss_fraction()),
        "20% lost: {blk:?}"
    );
    assert!((18..=22).contains(&blk.cumulative_lost), "{blk:?}");
    assert_eq!(blk.lsr, rtcp::ntp_middle(1000.25), "the SR's stamp echoed");
    assert_eq!(blk.dlsr, 0, "answered at once");
    assert!(
        blk.jitter_ms() < 1.0,
        "the simulated path has no jitter: {blk:?}"
    );
    let peer = w
        .node
        .reports()
        .into_iter()
        .find(|p| Some(p.idx) == w.natives[a].idx.map(|i| i.0))
        .expect("a's report");
    assert!(
        peer.stats
            .loss_in
            .is_some_and(|l| (0.18..=0.22).contains(&l)),
        "the node's own figures show the uplink loss: {:?}",
        peer.stats.loss_in
    );
    // The next interval starts from here: loss stops, the next report says so.
    w.natives[a].lose_every = None;
    w.run(Duration::from_secs(1));
    let sr = w.natives[a].sender_report(1001.5);
    w.inject(addr, &sr);
    w.run(Duration::from_millis(50));
    let Some((
        _,
        Report::Receiver {
            block: Some(b2), ..
        },
    )) = w.natives[a].reports.last()
    else {
        panic!("a second RR");
    };
    // A frame lost just before the first SR is counted only once a later one arrives, so at
    // most that one falls into this interval (1 of ~50: 5/256).
    assert!(b2.fraction_lost <= 5, "{b2:?}");
    assert!(
        b2.cumulative_lost - blk.cumulative_lost <= 1,
        "{blk:?} then {b2:?}"
    );
    assert_eq!(w.natives[a].unopened, 0);

    // Replayed, forged, or in another's name: dropped and counted, never answered.
    w.inject(addr, &replay);
    assert_eq!(drops(&w, DropReason::Replayed), 1);
    let mut forged = rtcp::seal_sender_report(
        &TransportCipher::new(AES, &[9; 32]),
        &rtcp::SenderReport {
            ssrc: w.natives[a].ssrc,
            ntp: 1,
            rtp_ts: 0,
            packets: 0,
            octets: 0,
        },
        5_000,
    );
    w.inject(addr, &forged);
    assert_eq!(drops(&w, DropReason::DecryptFailed), 1);
    forged.truncate(20);
    w.inject(addr, &forged);
    assert_eq!(drops(&w, DropReason::Malformed), 1);
    let other = w.natives[b].ssrc;
    let c = &mut w.natives[a];
    let theirs = rtcp::seal_sender_report(
        &c.cipher,
        &rtcp::SenderReport {
            ssrc: other,
            ntp: 1,
            rtp_ts: 0,
            packets: 0,
            octets: 0,
        },
        c.counter,
    );
    c.counter += 1;
    w.inject(addr, &theirs);
    assert_eq!(drops(&w, DropReason::UnexpectedStream), 1);
    w.run(Duration::from_millis(50));
    assert_eq!(w.node.stats().native_reports, 2);

    // A valid SR from another address is not answered and moves nothing: a's next SR, from
    // its own address, is answered there.
    let sr = w.natives[a].sender_report(1002.0);
    w.inject("127.0.5.5:999".parse().unwrap(), &sr);
    w.run(Duration::from_millis(50));
    assert_eq!(
        w.node.stats().native_reports,
        2,
        "no answer to an SR from elsewhere"
    );
    let had = w.natives[a].reports.len();
    let sr = w.natives[a].sender_report(1003.0);
    w.inject(addr, &sr);
    w.run(Duration::from_millis(50));
    assert_eq!(w.node.stats().native_reports, 3);
    assert_eq!(
        w.natives[a].reports.len(),
        had + 1,
        "answered at a's own address"
    );
}
