//! Arbitrary datagrams from arbitrary loopback addresses at a node with two native (UDP mode)
//! participants (one doing DAVE, one not): never a panic, every datagram used (discovery
//! answered, a keepalive, RTP received) or counted as a drop. Addresses 127.0.0.240 and up send
//! ICE-TCP frames instead (natives are UDP only: each one is a drop), and the whole input is
//! also cut into RFC 4571 frames by the shell's decoder (never a panic, never buffering more
//! than one frame plus one push).
#![no_main]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lodge_sfu::native::CryptoMode;
use lodge_sfu::tcp_framing::{FrameDecoder, PREFIX};
use lodge_sfu::{DropReason, GuildId, NativeJoin, Node, NodeConfig, RoomId, UserId, VoiceFlags};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let node_addr: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let mut node = Node::new(NodeConfig::new(node_addr));
    // One does DAVE, one does not: the DAVE frame rule is on the path.
    for (user, mode, dave) in [
        (1, CryptoMode::Aes256GcmRtpsize, true),
        (2, CryptoMode::XChaCha20Poly1305Rtpsize, false),
    ] {
        let join = NativeJoin {
            room: RoomId(1),
            guild: GuildId(1),
            user: UserId(user),
            mode,
            key: [user as u8; 32],
            slots: 2,
            flags: VoiceFlags {
                can_speak: true,
                ..Default::default()
            },
            dave,
        };
        node.join_native(t0, join).unwrap();
    }
    let mut rest = data;
    let mut n = 0u64;
    while rest.len() >= 3 {
        let len = (rest[0] as usize).min(rest.len() - 2);
        let from: SocketAddr = format!("127.0.0.{}:{}", rest[1], 1000 + rest[1] as u16)
            .parse()
            .unwrap();
        let dgram = &rest[2..2 + len];
        let at = t0 + Duration::from_millis(n);
        if rest[1] >= 240 {
            node.handle_tcp_frame(at, from, dgram);
        } else {
            node.handle_datagram(at, from, node_addr, dgram);
        }
        n += 1;
        rest = &rest[2 + len..];
    }
    node.handle_timeout(t0 + Duration::from_secs(60));
    // As the shell does: take every whole frame after each push; an oversized one ends it.
    let mut dec = FrameDecoder::new(1500);
    'stream: for chunk in data.chunks(7) {
        dec.push(chunk);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => assert!(f.len() <= 1500),
                Ok(None) => break,
                Err(_) => break 'stream,
            }
        }
        assert!(dec.pending() < PREFIX + 1500);
    }
    while node.poll_output().is_some() {}
    let s = node.stats();
    // `dave_to_non_dave` counts skipped deliveries of received packets, not datagrams.
    let datagram_drops = s.drops.total() - s.drops.get(DropReason::DaveToNonDave);
    assert_eq!(
        datagram_drops + s.native_discovery + s.native_keepalives + s.native_reports + s.rtp_in,
        n,
        "a datagram was neither used nor counted"
    );
});
