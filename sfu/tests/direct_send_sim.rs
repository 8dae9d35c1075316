//! Direct sends (`NodeConfig::direct_send`): WebRTC listeners' copies written and sealed in the
//! forward loop from each slot's context instead of through the listener's str0m session. The
//! listeners are real str0m sessions: a wrong key, IV, rollover counter or header makes them
//! drop the packet, so what they heard is the check.

mod sim;

use std::time::Duration;

use sim::World;

/// One packet as a listener heard it: sequence number, timestamp, payload, RFC 6464 values.
type Copy = (u64, u32, Vec<u8>, (Option<i8>, Option<bool>));

/// One packet as a listener heard it, by its slot's index: sequence number, timestamp,
/// payload.
type BySlot = (Option<usize>, u64, u32, Vec<u8>);

/// What listeners 1.. of a `fanout::room_with(4)` hear of 300 packets from client 0, numbered
/// from just below the 16-bit wrap (so the rollover counter steps), and the node's counts.
fn heard(direct_send: bool) -> (Vec<Vec<Copy>>, u64, u64) {
    let mut w = sim::fanout::room_with(4, |c| {
        c.direct_send = direct_send;
        c.slot_numbering_start = Some((65_500, 4_294_960_000));
    });
    let start: Vec<usize> = w.clients.iter().map(|c| c.heard.len()).collect();
    let s0 = w.node.stats().clone();
    let mut s = sim::fanout::Speaker::after(&w);
    sim::fanout::deliver(&mut w, &mut s, 300);
    w.run(Duration::from_millis(100));
    let s1 = w.node.stats();
    let heard = w.clients[1..]
        .iter()
        .zip(&start[1..])
        .map(|(c, &k)| {
            c.heard[k..]
                .iter()
                .map(|h| (h.seq, h.ts, h.payload.clone(), h.audio_level))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    (
        heard,
        s1.rtp_forwarded - s0.rtp_forwarded,
        s1.rtp_direct - s0.rtp_direct,
    )
}

#[test]
fn direct_copies_are_the_packets_the_session_would_send() {
    let (on, forwarded, direct) = heard(true);
    let (off, _, none) = heard(false);
    assert_eq!(none, 0, "direct sends with the switch off");
    assert_eq!(on.len(), 4);
    assert!(
        on.iter().all(|l| l.len() >= 300),
        "each listener heard the 300 packets: {:?}",
        on.iter().map(Vec::len).collect::<Vec<_>>()
    );
    // Past the wrap: the rollover counter went up by one, and the listeners still decrypted.
    assert!(on.iter().all(|l| l.last().unwrap().0 > 65_536));
    assert!(
        direct * 10 >= forwarded * 9 && forwarded >= 1200,
        "{direct} of {forwarded} copies sent directly"
    );
    assert_eq!(on, off, "the same numbers, payloads and levels either way");
}

/// The session still reports on a stream it no longer sends itself: the listener's sessions
/// read the same packet and byte counts in the node's sender reports whether the copies went
/// directly or through the session, and the listener's receiver reports reach its report.
#[test]
fn sender_reports_count_direct_copies() {
    let reported = |direct_send: bool| {
        let mut w = World::connected(2, 1, |c| c.direct_send = direct_send);
        w.clients[0].level = Some(30);
        w.run(Duration::from_secs(8));
        assert!(w.clients[1].heard_from(0) > 300);
        let stats = w.node.stats();
        let listener = w
            .node
            .reports()
            .into_iter()
            .find(|p| p.stats.packets_out > 300);
        let listener = listener.expect("the listener got the speaker's packets");
        assert!(
            listener.stats.jitter_out_ms.is_some(),
            "egress figures missing: {:?}",
            listener.stats
        );
        let slot = w.clients[1].slot_mids[0];
        let sr = w.clients[1].sender_reported.get(&slot).copied();
        (sr, stats.rtp_direct, stats.rtp_forwarded)
    };
    let (on, direct, forwarded) = reported(true);
    let (off, none, _) = reported(false);
    assert_eq!(none, 0);
    assert!(
        direct * 10 >= forwarded * 9,
        "{direct} of {forwarded} direct"
    );
    let (packets, bytes) = on.expect("the listener read a sender report");
    assert!(
        packets > 100 && bytes > 100 * 60,
        "{packets} packets, {bytes} bytes"
    );
    assert_eq!(on, off, "the same counts either way");
}

/// Listeners that speak too (every caller of a real room sends while its microphone is on):
/// their own media arriving 50 times a second must not make their slots read their contexts
/// again (`WebRtcPeer::rtc_for_datagram`), and they hear the same packets as through the session.
#[test]
fn listeners_that_speak_keep_their_contexts() {
    let run = |direct_send: bool| {
        let mut w = World::connected(5, 3, |c| c.direct_send = direct_send);
        for (i, c) in w.clients.iter_mut().enumerate() {
            c.level = Some(20 + 5 * i as u8);
        }
        w.run(Duration::from_secs(5));
        // By slot, not SSRC or mid: str0m draws both at random.
        let heard: Vec<Vec<BySlot>> = w
            .clients
            .iter()
            .map(|c| {
                let slot = |m| c.slot_mids.iter().position(|s| *s == m);
                c.heard
                    .iter()
                    .map(|h| (slot(h.mid), h.seq, h.ts, h.payload.clone()))
                    .collect()
            })
            .collect();
        (heard, w.node.stats().clone())
    };
    let (on, s) = run(true);
    let (off, _) = run(false);
    assert!(s.rtp_forwarded > 2_000, "forwarded {}", s.rtp_forwarded);
    assert!(
        s.rtp_direct * 10 >= s.rtp_forwarded * 9,
        "{} of {} direct",
        s.rtp_direct,
        s.rtp_forwarded
    );
    // Reads: each slot's first, then one after each receiver report, timeout or STUN check
    // of its listener, not one per incoming media packet (250 a second here).
    assert!(
        s.direct_context_reads * 20 <= s.rtp_direct,
        "{} context reads for {} direct copies",
        s.direct_context_reads,
        s.rtp_direct
    );
    assert!(on.iter().all(|l| l.len() > 300));
    // Not `assert_eq!`: thousands of packets would fill the screen.
    assert!(
        on == off,
        "the packets differ with and without direct sends"
    );
}
