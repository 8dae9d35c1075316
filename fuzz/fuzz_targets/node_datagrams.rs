//! Arbitrary datagrams from arbitrary loopback addresses at a node: never a panic, every unused
//! datagram counted.
#![no_main]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lodge_sfu::{Node, NodeConfig};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let node_addr: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let mut node = Node::new(NodeConfig::new(node_addr));
    let mut rest = data;
    let mut n = 0u64;
    while rest.len() >= 3 {
        let len = (rest[0] as usize).min(rest.len() - 2);
        let from: SocketAddr = format!("127.0.0.{}:{}", rest[1], 1000 + rest[1] as u16)
            .parse()
            .unwrap();
        let dgram = &rest[2..2 + len];
        node.handle_datagram(t0 + Duration::from_millis(n), from, node_addr, dgram);
        n += 1;
        rest = &rest[2 + len..];
    }
    node.handle_timeout(t0 + Duration::from_secs(60));
    while node.poll_output().is_some() {}
    assert_eq!(
        node.stats().drops.total(),
        n,
        "a datagram was neither used nor counted"
    );
});
