//! One loud speaker and N listeners that all hear it, for measuring the forward path: the
//! criterion bench (`benches/forward.rs`) and the allocation test (`tests/alloc_sim.rs`).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use lodge_sfu::NodeOutput;
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use str0m::Output;

use super::World;

/// A room with one loud speaker (client 0) and `n` listeners, speaker selected everywhere.
pub fn room(n: usize) -> World {
    room_with(n, |_| {})
}

/// [`room`] on a node whose configuration `config` adjusts.
pub fn room_with(n: usize, config: impl FnOnce(&mut lodge_sfu::NodeConfig)) -> World {
    let mut w = World::new(|c| {
        c.max_packet_rate = u32::MAX / 2;
        config(c);
    });
    for _ in 0..=n {
        w.join(3, World::speaking()).unwrap();
    }
    w.run(Duration::from_millis(1500));
    w.clients[0].level = Some(10);
    w.run(Duration::from_millis(500));
    w.clients[0].level = None;
    w.run(Duration::from_millis(100));
    assert!(
        w.clients[1..].iter().all(|c| c.heard_from(0) > 0),
        "speaker not selected by every listener"
    );
    w
}

/// The speaker's next RTP sequence number and timestamp.
pub struct Speaker {
    pub seq: u64,
    pub ts: u32,
}

impl Speaker {
    /// Numbering that follows what client 0 sent while the room was set up.
    pub fn after(w: &World) -> Speaker {
        Speaker {
            seq: w.clients[0].seq + 10,
            ts: w.clients[0].ts.wrapping_add(96_000),
        }
    }
}

/// Encrypt the speaker's next packet (not timed).
pub fn next_packet(w: &mut World, s: &mut Speaker) -> (SocketAddr, Vec<u8>) {
    // 20 ms of simulated life for everyone (STUN consent, RTCP, timers), not timed.
    w.run(Duration::from_millis(20));
    let now = w.now;
    let c = &mut w.clients[0];
    let ext = ExtensionValues {
        audio_level: Some(-10),
        voice_activity: Some(true),
        ..Default::default()
    };
    let mut payload = vec![0u8; 80];
    payload[0] = 0x78; // an Opus TOC byte (SILK WB 20 ms)
    {
        let mut api = c.rtc.direct_api();
        let tx = api.stream_tx_by_mid(c.send_mid, None).unwrap();
        tx.write_rtp(RtpWrite::new(c.pt, SeqNo::from(s.seq), s.ts, now, payload).ext_vals(ext));
    }
    s.seq += 1;
    s.ts = s.ts.wrapping_add(960);
    let _ = c.rtc.handle_input(str0m::Input::Timeout(now));
    // Whatever else the speaker sends now (STUN consent, RTCP) still reaches the node, untimed:
    // dropping it would let the node time the speaker out.
    let mut other = Vec::new();
    let addr = c.addr;
    let rtp = loop {
        match c.rtc.poll_output().unwrap() {
            Output::Transmit(t) => {
                let v: Vec<u8> = t.contents.into();
                // RTP (not RTCP) to the node.
                if v.len() > 1
                    && (128..192).contains(&v[0])
                    && !(200..=207).contains(&(v[1] & 0x7f | 0x80))
                {
                    break v;
                }
                other.push(v);
            }
            Output::Timeout(_) => {
                let _ = c.rtc.handle_input(str0m::Input::Timeout(now));
            }
            Output::Event(_) => {}
        }
    };
    let node_addr = w.node_addr;
    for v in other {
        w.node.handle_datagram(now, addr, node_addr, &v);
    }
    // Answers to those go the simulated way on the next run.
    w.drain_node();
    (addr, rtp)
}

/// `n` of the speaker's packets through the node the simulated way: each after 20 ms of
/// simulated life (`next_packet`), its copies on the simulated network to the listeners.
pub fn deliver(w: &mut World, s: &mut Speaker, n: usize) {
    for _ in 0..n {
        let (from, pkt) = next_packet(w, s);
        let (now, node_addr) = (w.now, w.node_addr);
        w.node.handle_datagram(now, from, node_addr, &pkt);
        w.drain_node();
    }
}

/// The node receives the speaker's packet and everything it sends is taken; with `recycle`,
/// each datagram's storage is handed back as the shell does once it is sent. Returns how many
/// datagrams the node sent.
pub fn forward_once(w: &mut World, from: SocketAddr, pkt: &[u8], recycle: bool) -> usize {
    let now = w.now;
    let node_addr = w.node_addr;
    w.node.handle_datagram(now, from, node_addr, pkt);
    let mut sent = 0;
    while let Some(o) = w.node.poll_output() {
        if let NodeOutput::Transmit(t) = o {
            sent += 1;
            black_box(&t.contents);
            if recycle {
                w.node.recycle(t.contents);
            }
        }
    }
    sent
}
