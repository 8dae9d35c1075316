//! The cascade core driven through its inputs and outputs only, on a simulated clock: no
//! runtime, no trunk, no node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lodge_sfu::{Export, ParticipantIdx, RoomId, Ssrc, UserId};

use super::core::{CascadeCore, ClusterEvent, NodeCommand, Output, Role, TrunkId};
use crate::session::{Delivered, Notice};
use crate::trunk::Peer;
use crate::wire::Control;

const ROOM: u64 = 100;

fn peer(node: &str) -> Peer {
    Peer {
        node: node.to_string(),
        region: "eu".to_string(),
        voice_endpoint: String::new(),
        addr: "127.0.0.1:4000".parse().expect("a literal address"),
    }
}

fn export(from: u32, room: u64, remote: bool, rtp_ts: u32) -> Export {
    Export {
        room: RoomId(room),
        from: ParticipantIdx(from),
        user: UserId(1000 + u64::from(from)),
        voice_ssrc: Ssrc(2000 + from),
        remote,
        rtp_ts,
        level: 30,
        marker: false,
        payload: Arc::from(&[0xAB; 60][..]),
    }
}

fn delivered(stream: u16, seq: u16) -> Delivered {
    Delivered {
        stream,
        seq,
        room: ROOM,
        user: 7,
        rtp_ts: u32::from(seq) * 960,
        level: 20,
        marker: false,
        recovered: false,
        payload: Bytes::from_static(&[1, 2, 3]),
    }
}

fn drain(core: &mut CascadeCore) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

/// A compact, comparable form of the outputs that concern trunks and signaling.
#[derive(Debug, PartialEq, Eq)]
enum T {
    Open(TrunkId, u16, u32),
    Media(TrunkId, u16, u32),
    Close(TrunkId, u16),
    Interest(TrunkId, u64, bool),
    Exported(u64, bool),
    AddRemote(TrunkId, u16),
    RemoveRemote(u32),
    Rtp(u32, u16),
    Up(TrunkId),
    Down(TrunkId),
    App(TrunkId),
    Other,
}

fn brief(o: &Output) -> T {
    match o {
        Output::Open {
            trunk,
            stream,
            first,
            ..
        } => T::Open(*trunk, *stream, first.rtp_ts),
        Output::Media { trunk, media } => T::Media(*trunk, media.stream, media.rtp_ts),
        Output::Close { trunk, stream } => T::Close(*trunk, *stream),
        Output::Control {
            trunk,
            msg: Control::Interest { room, on },
        } => T::Interest(*trunk, *room, *on),
        Output::Node(NodeCommand::SetExported { room, on }) => T::Exported(room.0, *on),
        Output::Node(NodeCommand::AddRemote { trunk, stream, .. }) => T::AddRemote(*trunk, *stream),
        Output::Node(NodeCommand::RemoveRemote(idx)) => T::RemoveRemote(idx.0),
        Output::Node(NodeCommand::RemoteRtp(p)) => T::Rtp(p.idx.0, p.seq),
        Output::Cluster(ClusterEvent::TrunkUp { id, .. }) => T::Up(*id),
        Output::Cluster(ClusterEvent::TrunkDown { id, .. }) => T::Down(*id),
        Output::Cluster(ClusterEvent::App { id, .. }) => T::App(*id),
        _ => T::Other,
    }
}

fn step(core: &mut CascadeCore) -> Vec<T> {
    let mut v: Vec<T> = drain(core).iter().map(brief).collect();
    // Outputs for different trunks come in the order of a hash map; within a trunk, in order
    // (a stable sort keeps it). Node commands sort first.
    v.sort_by_key(|t| match t {
        T::Open(id, ..)
        | T::Media(id, ..)
        | T::Close(id, ..)
        | T::Interest(id, ..)
        | T::Up(id)
        | T::Down(id)
        | T::App(id) => *id,
        _ => 0,
    });
    v
}

/// An origin with edges `edge-1` … `edge-n` on trunks 1 … n.
fn origin(t0: Instant, n: u64) -> CascadeCore {
    let mut c = CascadeCore::new(Role::Origin, t0);
    for id in 1..=n {
        c.handle_trunk_up(id, peer(&format!("edge-{id}")));
    }
    assert_eq!(step(&mut c), (1..=n).map(T::Up).collect::<Vec<_>>());
    c
}

fn interest(c: &mut CascadeCore, trunk: TrunkId, room: u64, on: bool) {
    c.handle_trunk_notice(trunk, Notice::App(Control::Interest { room, on }));
}

#[test]
fn an_edge_exports_every_room_and_sends_a_room_only_to_the_node_that_placed_it() {
    let t0 = Instant::now();
    let mut c = CascadeCore::new(Role::Edge, t0);
    assert!(matches!(
        drain(&mut c)[..],
        [Output::Node(NodeCommand::ExportAll)]
    ));
    c.handle_trunk_up(1, peer("node-a"));
    c.handle_trunk_up(2, peer("node-b"));
    assert_eq!(step(&mut c), [T::Up(1), T::Up(2)]);

    // No callers placed yet: nothing leaves.
    c.handle_export(t0, export(5, ROOM, false, 960));
    assert_eq!(step(&mut c), []);

    c.set_interest(ROOM, &["node-a".to_string()]);
    assert_eq!(step(&mut c), [T::Interest(1, ROOM, true)]);
    c.handle_export(t0, export(5, ROOM, false, 1920));
    let out = drain(&mut c);
    match &out[..] {
        [Output::Open {
            trunk: 1,
            speaker: ParticipantIdx(5),
            stream: 0,
            room: ROOM,
            user: 1005,
            ssrc: Some(2005),
            first,
        }] => {
            assert_eq!(first.payload.len(), 60);
            assert_eq!((first.stream, first.rtp_ts, first.level), (0, 1920, 30));
        }
        o => panic!("expected one Open on trunk 1, got {o:?}"),
    }
    c.handle_export(t0, export(5, ROOM, false, 2880));
    c.handle_export(t0, export(6, ROOM, false, 2880));
    assert_eq!(step(&mut c), [T::Media(1, 0, 2880), T::Open(1, 1, 2880)]);
    // A remote speaker (from the origin) is never sent back.
    c.handle_export(t0, export(9, ROOM, true, 2880));
    assert_eq!(step(&mut c), []);
    let v: Vec<_> = c.trunks().map(|t| (t.id, t.streams_out)).collect();
    assert!(v.contains(&(1, 2)) && v.contains(&(2, 0)));

    // Node-a no longer places the room's callers, node-b does: the streams move.
    c.set_interest(ROOM, &["node-b".to_string()]);
    let out = step(&mut c);
    assert_eq!(out[0], T::Interest(1, ROOM, false));
    assert!(out.contains(&T::Close(1, 0)) && out.contains(&T::Close(1, 1)));
    assert_eq!(out[3], T::Interest(2, ROOM, true));
    assert_eq!(out.len(), 4);
    c.handle_export(t0, export(5, ROOM, false, 3840));
    assert_eq!(step(&mut c), [T::Open(2, 0, 3840)]);
}

#[test]
fn an_origin_relays_to_interested_edges_and_never_back_to_the_source() {
    let t0 = Instant::now();
    let mut c = origin(t0, 3);
    interest(&mut c, 1, ROOM, true);
    interest(&mut c, 2, ROOM, true);
    assert_eq!(
        step(&mut c),
        [T::Exported(ROOM, true), T::Exported(ROOM, true)]
    );

    // Edge 1 sends a speaker: stream 4 becomes remote speaker 40 in the node.
    c.handle_trunk_notice(
        1,
        Notice::Opened {
            stream: 4,
            room: ROOM,
            user: 7,
            ssrc: Some(77),
        },
    );
    match &drain(&mut c)[..] {
        [Output::Node(NodeCommand::AddRemote {
            trunk: 1,
            stream: 4,
            room: RoomId(ROOM),
            user: UserId(7),
            ssrc: Some(Ssrc(77)),
        })] => {}
        o => panic!("expected AddRemote, got {o:?}"),
    }
    c.handle_remote_added(1, 4, ParticipantIdx(40));
    c.handle_trunk_media(1, delivered(4, 1));
    assert_eq!(step(&mut c), [T::Rtp(40, 1)]);

    // The node exports it (remote, ranked): edge 2 gets it, edge 1 (its source) does not,
    // edge 3 (no interest) does not.
    c.handle_export(t0, export(40, ROOM, true, 960));
    assert_eq!(step(&mut c), [T::Open(2, 0, 960)]);
    // A local speaker goes to both interested edges.
    c.handle_export(t0, export(3, ROOM, false, 960));
    assert_eq!(step(&mut c), [T::Open(1, 0, 960), T::Open(2, 1, 960)]);
    // Another room nobody asked for stays home.
    c.handle_export(t0, export(3, ROOM + 1, false, 960));
    assert_eq!(step(&mut c), []);
}

#[test]
fn the_last_interest_withdrawn_ends_the_rooms_streams_and_its_export() {
    let t0 = Instant::now();
    let mut c = origin(t0, 2);
    interest(&mut c, 1, ROOM, true);
    interest(&mut c, 2, ROOM, true);
    interest(&mut c, 2, ROOM + 1, true);
    drain(&mut c);
    c.handle_export(t0, export(3, ROOM, false, 960));
    c.handle_export(t0, export(4, ROOM + 1, false, 960));
    assert_eq!(
        step(&mut c),
        [T::Open(1, 0, 960), T::Open(2, 0, 960), T::Open(2, 1, 960)]
    );

    interest(&mut c, 1, ROOM, false);
    // Edge 2 still listens: the room stays exported; only edge 1's stream ends.
    assert_eq!(step(&mut c), [T::Exported(ROOM, true), T::Close(1, 0)]);
    interest(&mut c, 2, ROOM, false);
    assert_eq!(step(&mut c), [T::Exported(ROOM, false), T::Close(2, 0)]);
    // The other room's stream on edge 2 is untouched.
    c.handle_export(t0, export(4, ROOM + 1, false, 1920));
    assert_eq!(step(&mut c), [T::Media(2, 1, 1920)]);
}

#[test]
fn trunk_loss_removes_its_speakers_and_a_reconnect_is_told_the_rooms_again() {
    let t0 = Instant::now();
    let mut c = CascadeCore::new(Role::Edge, t0);
    drain(&mut c);
    c.set_interest(ROOM, &["origin".to_string()]);
    c.set_interest(ROOM + 1, &["origin".to_string()]);
    c.handle_trunk_up(1, peer("origin"));
    assert_eq!(
        step(&mut c),
        [
            T::Interest(1, ROOM, true),
            T::Interest(1, ROOM + 1, true),
            T::Up(1)
        ]
    );
    for (stream, idx) in [(0, 10), (1, 11)] {
        c.handle_trunk_notice(
            1,
            Notice::Opened {
                stream,
                room: ROOM,
                user: 7,
                ssrc: None,
            },
        );
        c.handle_remote_added(1, stream, ParticipantIdx(idx));
    }
    c.handle_export(t0, export(5, ROOM, false, 960));
    assert_eq!(
        step(&mut c),
        [T::AddRemote(1, 0), T::AddRemote(1, 1), T::Open(1, 0, 960)]
    );
    assert_eq!(c.trunks().next().map(|t| t.streams_in), Some(2));

    // The trunk dies: both remote speakers leave, then signaling hears of it.
    c.handle_trunk_down(1);
    let out = step(&mut c);
    assert_eq!(out.len(), 3);
    assert!(out.contains(&T::RemoveRemote(10)) && out.contains(&T::RemoveRemote(11)));
    assert_eq!(out[2], T::Down(1));
    assert_eq!(c.trunks().count(), 0);
    // Late media from the dead trunk goes nowhere; exports wait for a trunk.
    c.handle_trunk_media(1, delivered(0, 5));
    c.handle_export(t0 + Duration::from_millis(20), export(5, ROOM, false, 1920));
    assert_eq!(step(&mut c), []);

    // Reconnected (a new trunk id): the rooms are announced again before signaling hears of
    // it, and the speaker's stream is opened afresh.
    c.handle_trunk_up(2, peer("origin"));
    assert_eq!(
        step(&mut c),
        [
            T::Interest(2, ROOM, true),
            T::Interest(2, ROOM + 1, true),
            T::Up(2)
        ]
    );
    c.handle_export(t0 + Duration::from_millis(40), export(5, ROOM, false, 2880));
    assert_eq!(step(&mut c), [T::Open(2, 0, 2880)]);
}

#[test]
fn an_origin_losing_an_edge_stops_exporting_rooms_nobody_else_wants() {
    let t0 = Instant::now();
    let mut c = origin(t0, 2);
    interest(&mut c, 1, ROOM, true);
    interest(&mut c, 1, ROOM + 1, true);
    interest(&mut c, 2, ROOM + 1, true);
    drain(&mut c);
    c.handle_trunk_down(1);
    let mut out = step(&mut c);
    assert_eq!(out.pop(), Some(T::Down(1)));
    out.sort_by_key(|t| match t {
        T::Exported(room, _) => *room,
        _ => 0,
    });
    assert_eq!(out, [T::Exported(ROOM, false), T::Exported(ROOM + 1, true)]);
}

#[test]
fn a_silent_stream_ends_after_the_idle_time_and_a_talking_one_does_not() {
    let t0 = Instant::now();
    let mut c = origin(t0, 1);
    interest(&mut c, 1, ROOM, true);
    drain(&mut c);
    c.handle_export(t0, export(3, ROOM, false, 0));
    c.handle_export(t0, export(4, ROOM, false, 0));
    assert_eq!(step(&mut c), [T::Open(1, 0, 0), T::Open(1, 1, 0)]);

    // Speaker 4 keeps talking every 20 ms; speaker 3 is silent. Run the clock for 15 s,
    // waking for the core's timeouts and the packets, whichever comes first.
    let mut now = t0;
    let mut closed = None;
    let mut next_packet = t0 + Duration::from_millis(20);
    while now < t0 + Duration::from_secs(15) {
        let timeout = c.poll_timeout().expect("the sweep is always scheduled");
        assert!(timeout >= now, "the timeout is never in the past");
        if next_packet <= timeout {
            now = next_packet;
            next_packet += Duration::from_millis(20);
            c.handle_export(now, export(4, ROOM, false, 0));
        } else {
            now = timeout;
            c.handle_timeout(now);
        }
        for o in step(&mut c) {
            match o {
                T::Media(1, 1, _) => {}
                T::Close(1, 0) => closed = Some(now - t0),
                o => panic!("unexpected {o:?}"),
            }
        }
    }
    let closed = closed.expect("the silent stream was closed");
    assert!(
        closed > Duration::from_secs(10) && closed <= Duration::from_secs(12),
        "closed after {closed:?}"
    );
    // Back from silence: a new stream (the number is free again, but the search moves on).
    c.handle_export(now, export(3, ROOM, false, 0));
    assert_eq!(step(&mut c), [T::Open(1, 2, 0)]);
}

#[test]
fn a_timeout_called_early_does_nothing() {
    let t0 = Instant::now();
    let mut c = origin(t0, 1);
    interest(&mut c, 1, ROOM, true);
    c.handle_export(t0, export(3, ROOM, false, 0));
    drain(&mut c);
    let due = c.poll_timeout().expect("scheduled");
    c.handle_timeout(due - Duration::from_millis(1));
    assert_eq!(c.poll_timeout(), Some(due));
    // Late by a long way (the shell was busy): one sweep, and the next is a full interval on.
    let late = t0 + Duration::from_secs(30);
    c.handle_timeout(late);
    assert_eq!(step(&mut c), [T::Close(1, 0)]);
    assert_eq!(c.poll_timeout(), Some(late + super::SWEEP_INTERVAL));
}

#[test]
fn an_open_the_trunk_queue_refused_is_tried_again_with_the_next_packet() {
    let t0 = Instant::now();
    let mut c = origin(t0, 1);
    interest(&mut c, 1, ROOM, true);
    drain(&mut c);
    c.handle_export(t0, export(3, ROOM, false, 960));
    assert_eq!(step(&mut c), [T::Open(1, 0, 960)]);
    c.handle_open_dropped(1, ParticipantIdx(3));
    assert_eq!(c.trunks().next().map(|t| t.streams_out), Some(0));
    c.handle_export(t0, export(3, ROOM, false, 1920));
    assert_eq!(step(&mut c), [T::Open(1, 1, 1920)]);
    c.handle_export(t0, export(3, ROOM, false, 2880));
    assert_eq!(step(&mut c), [T::Media(1, 1, 2880)]);
}

#[test]
fn a_speaker_no_longer_exported_ends_its_streams_on_every_trunk() {
    let t0 = Instant::now();
    let mut c = origin(t0, 2);
    interest(&mut c, 1, ROOM, true);
    interest(&mut c, 2, ROOM, true);
    drain(&mut c);
    c.handle_export(t0, export(3, ROOM, false, 960));
    c.handle_export(t0, export(4, ROOM, false, 960));
    drain(&mut c);
    c.handle_export_end(ParticipantIdx(3));
    assert_eq!(step(&mut c), [T::Close(1, 0), T::Close(2, 0)]);
    c.handle_export_end(ParticipantIdx(3));
    assert_eq!(step(&mut c), []);
    // Its number is not reused while speaker 4 holds stream 1; the next one is 2.
    c.handle_export(t0, export(5, ROOM, false, 960));
    assert_eq!(step(&mut c), [T::Open(1, 2, 960), T::Open(2, 2, 960)]);
}

#[test]
fn trunk_streams_map_to_remote_speakers_until_closed_or_reopened() {
    let t0 = Instant::now();
    let mut c = origin(t0, 1);
    // Media before the stream is known is ignored.
    c.handle_trunk_media(1, delivered(2, 1));
    assert_eq!(step(&mut c), []);
    let opened = Notice::Opened {
        stream: 2,
        room: ROOM,
        user: 7,
        ssrc: None,
    };
    c.handle_trunk_notice(1, opened.clone());
    assert_eq!(step(&mut c), [T::AddRemote(1, 2)]);
    // The node refused it (no answer): the stream's media still goes nowhere.
    c.handle_trunk_media(1, delivered(2, 2));
    assert_eq!(step(&mut c), []);

    c.handle_trunk_notice(1, opened.clone());
    c.handle_remote_added(1, 2, ParticipantIdx(20));
    c.handle_trunk_media(1, delivered(2, 3));
    assert_eq!(step(&mut c), [T::AddRemote(1, 2), T::Rtp(20, 3)]);
    // The peer reuses the stream number for someone else: the old speaker goes first.
    c.handle_trunk_notice(1, opened);
    assert_eq!(step(&mut c), [T::RemoveRemote(20), T::AddRemote(1, 2)]);
    c.handle_remote_added(1, 2, ParticipantIdx(21));
    c.handle_trunk_notice(1, Notice::Closed { stream: 2 });
    c.handle_trunk_media(1, delivered(2, 4));
    assert_eq!(step(&mut c), [T::RemoveRemote(21)]);
    assert_eq!(c.trunks().next().map(|t| t.streams_in), Some(0));
}

#[test]
fn a_remote_speaker_added_after_its_trunk_ended_is_removed_at_once() {
    let t0 = Instant::now();
    let mut c = origin(t0, 1);
    c.handle_trunk_notice(
        1,
        Notice::Opened {
            stream: 0,
            room: ROOM,
            user: 7,
            ssrc: None,
        },
    );
    c.handle_trunk_down(1);
    assert_eq!(step(&mut c), [T::AddRemote(1, 0), T::Down(1)]);
    c.handle_remote_added(1, 0, ParticipantIdx(9));
    assert_eq!(step(&mut c), [T::RemoveRemote(9)]);
}

#[test]
fn app_messages_pass_through_and_load_is_kept_for_reports() {
    let t0 = Instant::now();
    let mut c = origin(t0, 1);
    c.handle_trunk_notice(1, Notice::App(Control::Load { participants: 42 }));
    match &drain(&mut c)[..] {
        [Output::Cluster(ClusterEvent::App {
            id: 1,
            msg: Control::Load { participants: 42 },
        })] => {}
        o => panic!("expected the load for signaling, got {o:?}"),
    }
    assert_eq!(c.trunks().next().map(|t| t.load), Some(42));
    let v = c.trunks().next().expect("one trunk");
    assert_eq!((v.peer.node.as_str(), v.rooms_of_interest), ("edge-1", 0));

    c.send_app(1, Control::Load { participants: 1 });
    c.send_app(9, Control::Load { participants: 1 });
    match &drain(&mut c)[..] {
        [Output::Control {
            trunk: 1,
            msg: Control::Load { participants: 1 },
        }] => {}
        o => panic!("expected one control message on trunk 1, got {o:?}"),
    }
}

#[test]
fn stream_numbers_skip_those_in_use_when_they_wrap() {
    let t0 = Instant::now();
    let mut c = origin(t0, 1);
    interest(&mut c, 1, ROOM, true);
    drain(&mut c);
    // Speaker 0 holds stream 0 while 65,536 others come and go: the numbers wrap around it.
    c.handle_export(t0, export(0, ROOM, false, 0));
    assert_eq!(step(&mut c), [T::Open(1, 0, 0)]);
    for i in 1..=u32::from(u16::MAX) {
        c.handle_export(t0, export(i, ROOM, false, 0));
        c.handle_export_end(ParticipantIdx(i));
        drain(&mut c);
    }
    c.handle_export(t0, export(70_000, ROOM, false, 0));
    assert_eq!(step(&mut c), [T::Open(1, 1, 0)]);
}
