//! Deterministic tests of the sfu core: virtual clock, simulated network, str0m clients.

mod sim;

use std::time::Duration;

use std::sync::Arc;

use lodge_sfu::{
    DropReason, LeaveReason, NodeEvent, ParticipantIdx, RemotePacket, RoomId, UserId, VoiceFlags,
};
use sim::World;

fn connected_world(n: usize, k: usize) -> World {
    World::connected(n, k, |_| {})
}

/// `connected_world`, then everyone talking at the same level for `d`.
fn talking_world(n: usize, k: usize, d: Duration) -> World {
    let mut w = connected_world(n, k);
    for c in &mut w.clients {
        c.level = Some(30);
    }
    w.run(d);
    w
}

/// Ms from `from_ms` until client `listener` first heard `speaker`.
fn first_heard_after(w: &World, listener: usize, speaker: u8, from_ms: u64) -> Option<u64> {
    w.clients[listener]
        .heard
        .iter()
        .find(|h| h.speaker == speaker && (h.at - w.t0).as_millis() as u64 >= from_ms)
        .map(|h| (h.at - w.t0).as_millis() as u64 - from_ms)
}

#[test]
fn three_participants_hear_each_other_and_never_themselves() {
    let w = talking_world(3, 2, Duration::from_secs(3));
    for i in 0..3 {
        let c = &w.clients[i];
        assert_eq!(c.heard_from(i as u8), 0, "client {i} heard itself");
        for j in 0..3 {
            if i != j {
                assert!(
                    c.heard_from(j as u8) > 100,
                    "client {i} heard {} packets of {j}",
                    c.heard_from(j as u8)
                );
            }
        }
    }
    // Every listener got a Speaking-worthy slot event for each other speaker.
    let slot_events = w
        .events
        .iter()
        .filter(|(_, e)| {
            matches!(
                e,
                NodeEvent::SlotChanged {
                    speaker: Some(_),
                    ..
                }
            )
        })
        .count();
    assert!(slot_events >= 6, "{slot_events} slot assignments");
}

#[test]
fn connected_listeners_get_copies_directly_numbered_without_gaps() {
    let w = talking_world(4, 3, Duration::from_secs(3));
    let s = w.node.stats();
    assert!(s.rtp_forwarded > 1000, "forwarded {}", s.rtp_forwarded);
    // Every copy to a connected listener is serialized and sent in the forwarding call
    // (`Rtc::send_rtp_now`), none through str0m's queue.
    assert_eq!(s.rtp_queued, 0, "copies written to str0m's queue");
    assert_eq!(s.rtp_deferred, 0);
    // All but each slot's first copy (which sets its stream's clock rate) are written and
    // sealed in the forward loop (`NodeConfig::direct_send`, on by default).
    assert!(
        s.rtp_direct + 4 * 3 >= s.rtp_forwarded,
        "{} of {} direct",
        s.rtp_direct,
        s.rtp_forwarded
    );
    // What each listener received on a slot is one run of consecutive sequence numbers per
    // stream (str0m's numbering, as the queued path would give).
    for i in 0..4 {
        for (ssrc, heard) in w.streams(i) {
            for pair in heard.windows(2) {
                assert_eq!(
                    pair[1].seq,
                    pair[0].seq + 1,
                    "client {i} stream {ssrc}: a gap or reorder"
                );
            }
        }
    }
}

#[test]
fn new_loud_speaker_takes_a_slot_within_300ms() {
    // K = 1: only one speaker fits, so the newcomer must displace the quiet one.
    let mut w = connected_world(4, 1);
    w.clients[0].level = Some(50);
    w.run(Duration::from_secs(2));
    assert!(w.clients[3].heard_from(0) > 50);
    let start = w.ms();
    w.clients[1].level = Some(10);
    w.run(Duration::from_secs(1));
    let lat =
        first_heard_after(&w, 3, 1, start).expect("listener 3 never heard the new loud speaker");
    assert!(lat <= 300, "switch took {lat} ms");
    // After the switch the old speaker is no longer forwarded to listener 3 (single slot).
    let recent_old = w.clients[3]
        .heard
        .iter()
        .filter(|h| h.speaker == 0 && (h.at - w.t0).as_millis() as u64 > start + 400)
        .count();
    assert_eq!(recent_old, 0);
}

#[test]
fn slot_streams_are_continuous_across_switches_and_wraps() {
    let mut w = World::new(|c| c.slot_numbering_start = Some((65_500, u32::MAX - 30_000)));
    for _ in 0..4 {
        w.join(1, World::speaking()).unwrap();
    }
    w.run(Duration::from_millis(1500));
    // Alternate the loud speaker among clients 0..3 several times; client 3 listens.
    for round in 0..6 {
        let loud = round % 3;
        for (i, c) in w.clients.iter_mut().enumerate().take(3) {
            c.level = Some(if i == loud { 10 } else { 127 });
        }
        w.run(Duration::from_millis(1800));
    }
    let streams = w.streams(3);
    assert_eq!(streams.len(), 1, "one slot, one SSRC");
    let pkts = streams.values().next().unwrap();
    let speakers: std::collections::BTreeSet<u8> = pkts.iter().map(|h| h.speaker).collect();
    assert_eq!(
        speakers.len(),
        3,
        "all three speakers were heard on the one slot: {speakers:?}"
    );
    let mut switches = 0;
    for pair in pkts.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(b.seq, a.seq + 1, "sequence gap at {a:?} -> {b:?}");
        let dts = b.ts.wrapping_sub(a.ts);
        assert!(
            (960..48_000 * 3).contains(&dts),
            "timestamp step {dts} at {a:?} -> {b:?}"
        );
        if a.speaker != b.speaker {
            switches += 1;
        }
    }
    assert!(switches >= 5, "{switches} switches");
    // The slot started at 65500: it crossed the 16-bit wrap; ts started 30000 below 2^32.
    assert!(
        pkts.last().unwrap().seq > 65_535,
        "no 16-bit wrap exercised"
    );
    assert!(
        pkts.first().unwrap().ts > u32::MAX - 40_000 && pkts.last().unwrap().ts < u32::MAX / 2,
        "no 32-bit wrap"
    );
}

#[test]
fn muted_and_no_speak_are_never_forwarded() {
    let mut w = World::new(|_| {});
    w.join(3, World::speaking()).unwrap();
    w.join(
        3,
        VoiceFlags {
            can_speak: false,
            ..Default::default()
        },
    )
    .unwrap();
    w.join(
        3,
        VoiceFlags {
            can_speak: true,
            self_mute: true,
            ..Default::default()
        },
    )
    .unwrap();
    w.join(3, World::speaking()).unwrap();
    w.run(Duration::from_millis(1500));
    for c in &mut w.clients {
        c.level = Some(5);
    }
    w.run(Duration::from_secs(3));
    let l = &w.clients[3];
    assert!(l.heard_from(0) > 100);
    assert_eq!(l.heard_from(1), 0, "no-SPEAK participant was forwarded");
    assert_eq!(l.heard_from(2), 0, "self-muted participant was forwarded");
    assert!(w.node.stats().drops.get(DropReason::NoSpeakPermission) > 100);
    assert!(w.node.stats().drops.get(DropReason::Muted) > 100);

    // Server-mute client 0 mid-call: silence at listeners within 1 s.
    let idx0 = w.clients[0].idx.unwrap();
    let at = w.ms();
    let now = w.now;
    w.node
        .set_flags(
            now,
            idx0,
            VoiceFlags {
                can_speak: true,
                server_mute: true,
                ..Default::default()
            },
        )
        .unwrap();
    w.run(Duration::from_secs(2));
    let late = w.clients[3]
        .heard
        .iter()
        .filter(|h| h.speaker == 0 && (h.at - w.t0).as_millis() as u64 > at + 1000)
        .count();
    assert_eq!(late, 0, "muted speaker still heard after 1 s");
    // The slot was announced as empty.
    assert!(w.events.iter().any(|(t, e)| (*t - w.t0).as_millis() as u64 >= at
        && matches!(e, NodeEvent::SlotChanged { speaker: None, listener, .. } if *listener == w.clients[3].idx.unwrap())));
}

#[test]
fn garbage_datagrams_are_counted_and_the_call_goes_on() {
    use rand::{Rng, SeedableRng};
    let mut w = connected_world(3, 2);
    w.clients[0].level = Some(20);
    w.run(Duration::from_millis(500));
    let before = w.clients[1].heard_from(0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let known = w.clients[2].addr;
    let mut dtls_from_known = 0u64;
    for i in 0..10_000u32 {
        let len = rng.gen_range(0..1600);
        let mut buf: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        match i % 4 {
            // STUN-looking with a random username.
            0 if buf.len() >= 40 => {
                buf[0] = 0;
                buf[1] = 1;
                buf[2] = 0;
                buf[3] = 12;
                buf[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
                buf[20..22].copy_from_slice(&[0, 6]);
                buf[22..24].copy_from_slice(&[0, 8]);
            }
            // RTP/DTLS-looking first byte.
            1 if !buf.is_empty() => buf[0] = if rng.gen() { 0x80 } else { 22 },
            _ => {}
        }
        // A quarter comes from a connected participant's address (spoofed or broken).
        if i % 4 == 3 && !buf.is_empty() && (20..64).contains(&buf[0]) {
            dtls_from_known += 1;
        }
        let from = if i % 4 == 3 {
            known
        } else {
            format!(
                "127.0.{}.{}:{}",
                rng.gen_range(0..255),
                rng.gen_range(1..255),
                rng.gen_range(1024..65535)
            )
            .parse()
            .unwrap()
        };
        w.inject(from, &buf);
        if i % 500 == 0 {
            w.run(Duration::from_millis(20));
        }
    }
    // Every datagram is either counted as a drop or is DTLS-shaped from the connected peer's
    // address: str0m's DTLS stack swallows garbage records after the handshake without a signal.
    let drops = w.node.stats().drops.total();
    assert!(
        drops >= 10_000 - dtls_from_known,
        "only {drops} drops counted ({dtls_from_known} DTLS-shaped from the peer)"
    );
    assert!(
        w.node.stats().drops.get(DropReason::DecryptFailed) > 0,
        "forged SRTP not counted"
    );
    for r in [
        DropReason::UnknownPeer,
        DropReason::Malformed,
        DropReason::UnknownUsername,
        DropReason::Oversized,
    ] {
        assert!(w.node.stats().drops.get(r) > 0, "no drops counted as {r:?}");
    }
    w.run(Duration::from_secs(2));
    assert!(
        w.clients[1].heard_from(0) > before + 50,
        "the call stopped after the garbage"
    );
    assert_eq!(w.node.participant_count(), 3);
}

#[test]
fn closed_tab_is_freed_within_10s() {
    let mut w = connected_world(3, 2);
    for c in &mut w.clients {
        c.level = Some(30);
    }
    w.run(Duration::from_secs(1));
    let at = w.ms();
    w.clients[2].closed = true; // The tab vanishes: no more datagrams, no goodbye.
    w.run(Duration::from_secs(10));
    let left = w.events.iter().find_map(|(t, e)| match e {
        NodeEvent::Left { user, reason, .. } if *user == w.clients[2].user => {
            Some(((*t - w.t0).as_millis() as u64 - at, *reason))
        }
        _ => None,
    });
    let (after, reason) = left.expect("closed tab was never freed");
    assert!(after <= 10_000, "freed after {after} ms");
    assert!(matches!(reason, LeaveReason::Idle | LeaveReason::Closed));
    assert_eq!(w.node.participant_count(), 2);
    // The others keep hearing each other.
    let before = w.clients[0].heard_from(1);
    w.run(Duration::from_secs(1));
    assert!(w.clients[0].heard_from(1) > before + 30);
}

#[test]
fn bad_offers_are_refused_with_clear_errors() {
    let mut w = World::new(|c| c.max_room_size = 2);
    let err = w.node.join(
        w.now,
        lodge_sfu::JoinRequest {
            room: lodge_sfu::RoomId(1),
            guild: lodge_sfu::GuildId(1),
            user: lodge_sfu::UserId(1),
            offer: "v=0 garbage".into(),
            flags: World::speaking(),
        },
    );
    assert!(
        matches!(err, Err(lodge_sfu::SfuError::InvalidSdp(_))),
        "{err:?}"
    );
    // 17 slots: too many.
    let (_, offer, _) = sim::Client::new(0, w.now, 17);
    let err = w
        .node
        .join(
            w.now,
            lodge_sfu::JoinRequest {
                room: lodge_sfu::RoomId(1),
                guild: lodge_sfu::GuildId(1),
                user: lodge_sfu::UserId(1),
                offer,
                flags: World::speaking(),
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("1 to 16"), "{err}");
    // Room limit.
    w.join(1, World::speaking()).unwrap();
    w.join(1, World::speaking()).unwrap();
    let err = w.join(1, World::speaking()).unwrap_err();
    assert!(err.to_string().contains("max_room_size"), "{err}");
}

/// A remote speaker's packet at level 20 whose payload starts with `tag`.
fn rp(idx: ParticipantIdx, seq: u16, rtp_ts: u32, tag: u8) -> RemotePacket {
    RemotePacket {
        idx,
        seq,
        rtp_ts,
        level: 20,
        marker: seq == 0,
        payload: Arc::from(vec![tag; 40]),
    }
}

#[test]
fn remote_speakers_are_heard_and_speakers_are_exported_while_they_talk() {
    let mut w = connected_world(2, 2);
    w.node.set_exported(RoomId(1), true);
    let remote = w
        .node
        .add_remote(w.now, RoomId(1), UserId(77), None)
        .unwrap();
    assert!(w.node.is_remote(remote));
    // A remote speaker talks for 2 s (payload byte 200 tags it in what clients hear).
    for i in 0..100u32 {
        w.node.remote_rtp(w.now, rp(remote, i as u16, i * 960, 200));
        w.drain_node();
        w.run(Duration::from_millis(20));
    }
    for c in &w.clients {
        assert!(
            c.heard_from(200) > 80,
            "client {} heard {}",
            c.n,
            c.heard_from(200)
        );
    }
    assert!(w.events.iter().any(|(_, e)| matches!(
        e,
        NodeEvent::SlotChanged {
            speaker: Some(UserId(77)),
            ..
        }
    )));
    // Its packets are relayed on (to other edges), marked remote.
    let relayed = w
        .exports
        .iter()
        .filter(|(_, x)| x.user == UserId(77) && x.remote)
        .count();
    assert!(relayed >= 95, "{relayed} remote packets exported");
    // A local speaker is exported while talking, not when silent or muted.
    w.clients[0].level = Some(30);
    w.run(Duration::from_secs(1));
    let local = |w: &World| {
        w.exports
            .iter()
            .filter(|(_, x)| x.user == w.clients[0].user && !x.remote)
            .count()
    };
    let talking = local(&w);
    assert!(talking >= 45, "{talking} local packets exported in 1 s");
    let flags = VoiceFlags {
        self_mute: true,
        ..World::speaking()
    };
    let idx = w.clients[0].idx.unwrap();
    w.node.set_flags(w.now, idx, flags).unwrap();
    w.run(Duration::from_secs(1));
    assert_eq!(local(&w), talking, "a muted speaker is never exported");
    assert!(
        w.export_ends.iter().any(|(_, i)| *i == idx),
        "muting ends the speaker's export at once"
    );
    // Not exported rooms export nothing.
    w.node.set_exported(RoomId(1), false);
    let n = w.exports.len();
    w.node.remote_rtp(w.now, rp(remote, 100, 96_000, 200));
    w.drain_node();
    assert_eq!(w.exports.len(), n);
    // Remote packets for an unknown or local index are dropped and counted.
    let drops = w.node.stats().drops.get(DropReason::UnknownPeer);
    w.node.remote_rtp(w.now, rp(ParticipantIdx(999), 0, 0, 1));
    w.node.remote_rtp(w.now, rp(idx, 0, 0, 1));
    assert_eq!(w.node.stats().drops.get(DropReason::UnknownPeer), drops + 2);
    // Removing the remote speaker frees the listeners' slots; it is never reaped as idle.
    w.run(Duration::from_secs(8));
    assert!(w.node.is_remote(remote), "not timed out while silent");
    w.node.leave(w.now, remote);
    w.drain_node();
    assert!(!w.node.is_remote(remote));
    assert!(!w.events.iter().any(|(_, e)| matches!(
        e,
        NodeEvent::Left {
            user: UserId(77),
            ..
        }
    )));
}

/// Join with a fresh browser-like offer for `user` in `guild` (room = guild here); the client
/// behind it never sends a datagram.
fn silent_join(
    w: &mut World,
    user: u64,
    guild: u64,
) -> Result<ParticipantIdx, lodge_sfu::SfuError> {
    let (_, offer, _) = sim::Client::new(200, w.now, 1);
    w.node
        .join(
            w.now,
            lodge_sfu::JoinRequest {
                room: RoomId(guild),
                guild: lodge_sfu::GuildId(guild),
                user: UserId(user),
                offer,
                flags: World::speaking(),
            },
        )
        .map(|a| a.idx)
}

#[test]
fn one_user_or_one_guild_cannot_fill_the_node() {
    let mut w = World::new(|c| {
        c.max_participants_per_user = 2;
        c.max_participants_per_guild = 3;
    });
    silent_join(&mut w, 1, 10).unwrap();
    silent_join(&mut w, 1, 11).unwrap();
    let err = silent_join(&mut w, 1, 12).unwrap_err();
    assert!(
        matches!(err, lodge_sfu::SfuError::UserLimit { limit: 2, .. }) && err.is_limit(),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("max_participants_per_user"),
        "{err}"
    );
    silent_join(&mut w, 2, 10).unwrap();
    let last = silent_join(&mut w, 3, 10).unwrap();
    let err = silent_join(&mut w, 4, 10).unwrap_err();
    assert!(
        matches!(err, lodge_sfu::SfuError::GuildLimit { limit: 3, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("max_participants_per_guild"),
        "{err}"
    );
    // Other guilds and users are unaffected; a participant that leaves gives its place back.
    silent_join(&mut w, 4, 20).unwrap();
    w.node.leave(w.now, last);
    silent_join(&mut w, 4, 10).unwrap();
    assert_eq!(w.node.participant_count(), 5);
}

#[test]
fn joins_that_never_connect_are_reaped_within_ten_seconds() {
    let mut w = connected_world(2, 1);
    let joined_ms = w.ms();
    for user in 0..3 {
        silent_join(&mut w, 100 + user, 1).unwrap();
    }
    assert_eq!(w.node.participant_count(), 5);
    w.run(Duration::from_millis(10_200));
    let reaped: Vec<u64> = w
        .events
        .iter()
        .filter_map(|(t, e)| match e {
            NodeEvent::Left {
                reason: LeaveReason::ConnectTimeout,
                ..
            } => Some((*t - w.t0).as_millis() as u64 - joined_ms),
            _ => None,
        })
        .collect();
    assert_eq!(reaped.len(), 3, "reaped after (ms): {reaped:?}");
    assert!(
        reaped.iter().all(|ms| (10_000..=10_200).contains(ms)),
        "{reaped:?}"
    );
    // The connected callers stay, and the bound's places are free again.
    assert_eq!(w.node.participant_count(), 2);
    for user in 0..3 {
        silent_join(&mut w, 100 + user, 1).unwrap();
    }
}

/// Random joins, leaves, mutes, remote speakers and levels in one room (seeded), checked after
/// every step against what signaling can see: each listener's slots as the SlotChanged events
/// built them must equal the node's report, nobody hears themself or one speaker twice, and a
/// muted speaker or one without SPEAK holds no slot after the tick. (In debug builds the slot
/// map also asserts its two sides agree on every change.)
#[test]
fn random_churn_keeps_every_listeners_slots_consistent() {
    use std::collections::HashMap;
    for seed in 1..=4u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut w = World::new(|_| {});
        // Slots as the events describe them: (listener, slot) -> speaker.
        let mut seen: HashMap<(ParticipantIdx, usize), Option<UserId>> = HashMap::new();
        let mut events_read = 0;
        let mut remotes: Vec<(ParticipantIdx, u16, UserId)> = Vec::new();
        let mut next_remote_user = 9_000u64; // clients are 1000 + n
        let mut muted_users = Vec::new();
        for step in 0..60 {
            let live: Vec<usize> = (0..w.clients.len())
                .filter(|&i| !w.clients[i].closed)
                .collect();
            match rnd(8) {
                0 | 1 if w.clients.len() < 40 => {
                    let k = 1 + rnd(3) as usize;
                    let i = w.join(k, World::speaking()).unwrap();
                    w.clients[i].level = Some(rnd(100) as u8);
                }
                2 if !live.is_empty() => {
                    let i = live[rnd(live.len() as u64) as usize];
                    let idx = w.clients[i].idx.unwrap();
                    let now = w.now;
                    w.node.leave(now, idx);
                    w.clients[i].closed = true;
                }
                3 if !live.is_empty() => {
                    let i = live[rnd(live.len() as u64) as usize];
                    let idx = w.clients[i].idx.unwrap();
                    let flags = VoiceFlags {
                        can_speak: rnd(4) != 0,
                        self_mute: rnd(3) == 0,
                        ..Default::default()
                    };
                    let now = w.now;
                    w.node.set_flags(now, idx, flags).unwrap();
                }
                4 if remotes.len() < 3 => {
                    next_remote_user += 1;
                    let now = w.now;
                    let r = w
                        .node
                        .add_remote(now, RoomId(1), UserId(next_remote_user), None)
                        .unwrap();
                    remotes.push((r, 0, UserId(next_remote_user)));
                }
                5 if !remotes.is_empty() => {
                    let (r, _, _) = remotes.swap_remove(rnd(remotes.len() as u64) as usize);
                    let now = w.now;
                    w.node.leave(now, r);
                }
                _ if !live.is_empty() => {
                    let i = live[rnd(live.len() as u64) as usize];
                    w.clients[i].level = if rnd(4) == 0 {
                        None
                    } else {
                        Some(rnd(127) as u8)
                    };
                }
                _ => {}
            }
            w.drain_node();
            // 200 ms of call, remote speakers talking, so the selector ticks several times.
            for _ in 0..10 {
                for (r, seq, _) in remotes.iter_mut() {
                    let now = w.now;
                    w.node.remote_rtp(now, rp(*r, *seq, *seq as u32 * 960, 200));
                    *seq = seq.wrapping_add(1);
                }
                w.drain_node();
                w.run(Duration::from_millis(20));
            }
            for (_, e) in &w.events[events_read..] {
                match e {
                    NodeEvent::SlotChanged {
                        listener,
                        slot,
                        speaker,
                        ..
                    } => {
                        seen.insert((*listener, *slot), *speaker);
                    }
                    NodeEvent::Left { idx, .. } => seen.retain(|(l, _), _| l != idx),
                    _ => {}
                }
            }
            events_read = w.events.len();

            let reports = w.node.reports();
            muted_users.clear();
            muted_users.extend(
                reports
                    .iter()
                    .filter(|r| !r.can_speak || r.self_mute || r.server_mute)
                    .map(|r| r.user),
            );
            for r in &reports {
                let idx = ParticipantIdx(r.idx);
                let speakers: Vec<UserId> = r.slots.iter().filter_map(|s| s.speaker).collect();
                for (n, s) in r.slots.iter().enumerate() {
                    let from_events = seen.get(&(idx, n)).copied().flatten();
                    assert_eq!(
                        from_events, s.speaker,
                        "seed {seed} step {step}: {idx} slot {n}: events say {from_events:?}, node {:?}",
                        s.speaker
                    );
                }
                assert!(
                    !speakers.contains(&r.user),
                    "seed {seed} step {step}: {idx} hears themself"
                );
                let mut dedup = speakers.clone();
                dedup.sort_by_key(|u| u.0);
                dedup.dedup();
                assert_eq!(
                    dedup.len(),
                    speakers.len(),
                    "seed {seed} step {step}: {idx} hears a speaker twice: {speakers:?}"
                );
                for u in &speakers {
                    assert!(
                        !muted_users.contains(u),
                        "seed {seed} step {step}: muted {u:?} holds a slot of {idx}"
                    );
                    let present = reports.iter().any(|o| o.user == *u)
                        || remotes.iter().any(|(_, _, ru)| ru == u);
                    assert!(
                        present,
                        "seed {seed} step {step}: {u:?} left but holds a slot"
                    );
                }
            }
        }
        // The churn did exercise the relation.
        assert!(
            w.events
                .iter()
                .filter(|(_, e)| matches!(
                    e,
                    NodeEvent::SlotChanged {
                        speaker: Some(_),
                        ..
                    }
                ))
                .count()
                > 20,
            "seed {seed}: too few slot assignments to mean anything"
        );
    }
}

/// A listener's session figures come from str0m's stats events, which fire when its session is
/// driven by time: by its own timer, or while a packet is being forwarded to it (both paths keep
/// them). After a few seconds of one speaker, a pure listener's outbound jitter, from its
/// receiver reports, is in its report.
#[test]
fn a_listeners_egress_stats_reach_its_report() {
    let mut w = connected_world(2, 1);
    w.clients[0].level = Some(30);
    w.run(Duration::from_secs(6));
    assert!(w.clients[1].heard_from(0) > 200);
    let reports = w.node.reports();
    let listener = reports
        .iter()
        .find(|p| p.stats.packets_out > 200)
        .expect("the listener got the speaker's packets");
    let s = &listener.stats;
    assert!(s.jitter_out_ms.is_some(), "egress figures missing: {s:?}");
}

/// The fan-out's prefetch (`NodeConfig::prefetch`) is a hint only: with it on and off, every
/// listener hears the same packets, numbered the same, with the same payloads.
#[test]
fn the_fan_out_prefetch_changes_nothing_a_listener_hears() {
    let heard = |prefetch: bool| {
        let mut w = sim::fanout::room_with(4, |c| {
            c.prefetch = prefetch;
            c.slot_numbering_start = Some((65_500, 4_294_960_000));
        });
        let start: Vec<usize> = w.clients.iter().map(|c| c.heard.len()).collect();
        let mut s = sim::fanout::Speaker::after(&w);
        sim::fanout::deliver(&mut w, &mut s, 60);
        w.run(Duration::from_millis(100));
        w.clients[1..]
            .iter()
            .zip(&start[1..])
            .map(|(c, &k)| {
                // Only client 0 speaks (its packets' payloads are `next_packet`'s, not tagged).
                c.heard[k..]
                    .iter()
                    .map(|h| (h.seq, h.ts, h.payload.clone()))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let (on, off) = (heard(true), heard(false));
    assert_eq!(on.len(), 4);
    assert!(
        on.iter().all(|l| l.len() >= 60),
        "each listener heard the 60 packets: {:?}",
        on.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(on, off);
}
