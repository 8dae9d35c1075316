//! ICE-TCP in the deterministic test bed: a caller whose only candidate is an active TCP one
//! (a browser with UDP blocked) reaches the node over RFC 4571 frames, cut anywhere in the
//! stream, and hears and is heard by a UDP caller; without the node's passive candidate it
//! cannot connect at all; TCP frames the node cannot use are counted, never a panic.

mod sim;

use std::net::SocketAddr;
use std::time::Duration;

use lodge_sfu::native::CryptoMode;
use lodge_sfu::DropReason;
use sim::World;

fn two_callers(ice_tcp: bool) -> World {
    let mut w = World::new(|c| c.ice_tcp = ice_tcp);
    w.join(2, World::speaking()).unwrap(); // 0: UDP
    w.join_tcp(2, World::speaking()).unwrap(); // 1: TCP only
    w.clients[0].level = Some(20);
    w.clients[1].level = Some(30);
    w
}

#[test]
fn a_caller_that_reaches_the_node_only_over_tcp_hears_and_is_heard() {
    let mut w = two_callers(true);
    for a in &w.answers {
        assert!(
            a.lines().any(|l| l.starts_with("a=candidate:")
                && l.contains(" tcp ")
                && l.contains("127.0.0.1 50000 typ host tcptype passive")),
            "every answer offers the passive TCP candidate:\n{a}"
        );
    }
    w.run(Duration::from_secs(4));
    assert!(w.clients.iter().all(|c| c.connected), "both connect");
    let (udp_c, tcp_c) = (&w.clients[0], &w.clients[1]);
    assert!(
        tcp_c.heard_from(0) > 150,
        "TCP caller heard {}",
        tcp_c.heard_from(0)
    );
    assert!(
        udp_c.heard_from(1) > 150,
        "UDP caller heard {}",
        udp_c.heard_from(1)
    );
    // The TCP caller's traffic, both ways, was TCP frames only.
    let from_tcp = w.carried[&tcp_c.addr];
    assert_eq!(from_tcp.udp, 0, "{from_tcp:?}");
    assert!(from_tcp.tcp_frames > 150, "{from_tcp:?}");
    let from_node = w.carried[&w.node_addr];
    assert!(from_node.tcp_frames > 150, "{from_node:?}");
    assert_eq!(w.carried[&udp_c.addr].tcp_frames, 0);
    let s = w.node.stats();
    assert!(s.tcp_frames_in >= from_tcp.tcp_frames as u64 && s.tcp_frames_out > 150);
    assert!(w.node.tcp_peer_known(tcp_c.addr));
    assert_eq!(s.drops.total(), 0, "{:?}", s.drops);
}

#[test]
fn without_the_passive_candidate_a_tcp_only_caller_never_connects() {
    let mut w = two_callers(false);
    assert!(
        !w.answers.iter().any(|a| a.contains(" tcp ")),
        "no TCP candidate"
    );
    w.run(Duration::from_secs(4));
    assert!(w.clients[0].connected);
    assert!(!w.clients[1].connected, "no pair to try: UDP only offered");
    assert_eq!(w.clients[0].heard_from(1), 0);
    assert_eq!(w.node.stats().tcp_frames_in, 0);
}

#[test]
fn tcp_frames_the_node_cannot_use_are_counted() {
    let mut w = two_callers(true);
    let nat = w
        .join_native(1, CryptoMode::Aes256GcmRtpsize, World::speaking())
        .unwrap();
    w.run(Duration::from_secs(2));
    assert!(w.clients.iter().all(|c| c.connected));
    let count = |w: &World, r: DropReason| w.node.stats().drops.get(r);
    let stranger: SocketAddr = "127.0.0.99:1234".parse().unwrap();

    // IP discovery is UDP only.
    let native_ssrc = w.natives[nat].ssrc;
    w.inject_tcp(stranger, &sim::discovery_request(native_ssrc));
    assert_eq!(count(&w, DropReason::NotOverTcp), 1);
    assert!(w.natives[nat].discovered.len() == 1, "no answer over TCP");

    // Longer than a datagram, empty, junk, a STUN naming nobody, RTP from nobody.
    w.inject_tcp(stranger, &[0x80; 1501]);
    assert_eq!(count(&w, DropReason::Oversized), 1);
    let before = count(&w, DropReason::UnknownPeer) + count(&w, DropReason::Malformed);
    w.inject_tcp(stranger, &[]);
    w.inject_tcp(stranger, b"junk");
    let mut rtp = vec![0x80, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 7];
    rtp.extend_from_slice(&[1; 40]);
    w.inject_tcp(stranger, &rtp);
    assert_eq!(
        count(&w, DropReason::UnknownPeer) + count(&w, DropReason::Malformed),
        before + 3
    );
    let mut stun = vec![0, 1, 0, 12, 0x21, 0x12, 0xA4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    stun.extend_from_slice(&[0, 6, 0, 8]);
    stun.extend_from_slice(b"nobody:x");
    w.inject_tcp(stranger, &stun);
    assert_eq!(count(&w, DropReason::UnknownUsername), 1);

    // A native participant's own packet, over TCP from its address: not its transport, so it
    // names nobody (its UDP address proves nothing for TCP).
    let native_addr = w.natives[nat].addr;
    let pkt = w.natives[nat].packet(&[100; 40]);
    let unknown = count(&w, DropReason::UnknownPeer);
    w.inject_tcp(native_addr, &pkt);
    assert_eq!(count(&w, DropReason::UnknownPeer), unknown + 1);
    assert!(!w.node.tcp_peer_known(native_addr));

    // Nor does a UDP caller's proven address count for a TCP peer with the same address.
    let udp_addr = w.clients[0].addr;
    let unknown = count(&w, DropReason::UnknownPeer);
    w.inject_tcp(udp_addr, &rtp);
    assert_eq!(count(&w, DropReason::UnknownPeer), unknown + 1);

    // The call goes on, and a closed connection is forgotten until a STUN check proves it
    // again (the client's consent checks do, on the same simulated connection).
    let tcp_addr = w.clients[1].addr;
    assert!(w.node.tcp_peer_known(tcp_addr));
    w.node.handle_tcp_closed(tcp_addr);
    assert!(!w.node.tcp_peer_known(tcp_addr));
    let heard = w.clients[1].heard_from(0);
    w.run(Duration::from_secs(8));
    assert!(
        w.node.tcp_peer_known(tcp_addr),
        "re-proven by a consent check"
    );
    assert!(w.clients[1].heard_from(0) > heard + 100);
}
