//! A deterministic test bed for the sfu core: a virtual clock, a simulated network and str0m
//! clients that behave like browsers (1 sendonly + K recvonly audio lines, audio-level ext).

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lodge_sfu::{
    JoinAnswer, JoinRequest, Node, NodeConfig, NodeEvent, NodeOutput, RoomId, UserId, VoiceFlags,
};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc};

pub const NODE_ADDR: &str = "127.0.0.1:50000";

/// What a client received on one slot.
#[derive(Debug, Clone)]
pub struct Heard {
    pub at: Instant,
    pub mid: Mid,
    pub ssrc: u32,
    pub seq: u64,
    pub ts: u32,
    /// First payload byte: the speaker's client number (the test's "voice").
    pub speaker: u8,
}

pub struct Client {
    pub n: u8,
    pub addr: SocketAddr,
    pub rtc: Rtc,
    pub send_mid: Mid,
    pub slot_mids: Vec<Mid>,
    pub pt: Pt,
    pub user: UserId,
    pub idx: Option<lodge_sfu::ParticipantIdx>,
    pub heard: Vec<Heard>,
    /// RFC 6464 level to send (0 loud .. 127 silence); None = not sending at all.
    pub level: Option<u8>,
    pub seq: u64,
    pub ts: u32,
    pub next_send: Instant,
    pub timeout: Instant,
    pub connected: bool,
    pub closed: bool,
}

impl Client {
    pub fn new(n: u8, now: Instant, k: usize) -> (Client, String, str0m::change::SdpPendingOffer) {
        let addr: SocketAddr = format!("127.0.0.{}:{}", 10 + n, 40000 + n as u16)
            .parse()
            .unwrap();
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut api = rtc.sdp_api();
        let send_mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let slot_mids: Vec<Mid> = (0..k)
            .map(|_| api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None))
            .collect();
        let (offer, pending) = api.apply().unwrap();
        let pt = rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Opus)
            .unwrap()
            .pt();
        let c = Client {
            n,
            addr,
            rtc,
            send_mid,
            slot_mids,
            pt,
            user: UserId(1000 + n as u64),
            idx: None,
            heard: Vec::new(),
            level: None,
            // Start near the 16-bit and 32-bit wrap so input wrap is exercised.
            seq: 65_400 + n as u64 * 7,
            ts: u32::MAX - 48_000 * (n as u32 + 1),
            next_send: now,
            timeout: now,
            connected: false,
            closed: false,
        };
        (c, offer.to_sdp_string(), pending)
    }

    pub fn heard_from(&self, speaker: u8) -> usize {
        self.heard.iter().filter(|h| h.speaker == speaker).count()
    }
}

struct Packet {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

pub struct World {
    pub t0: Instant,
    pub now: Instant,
    pub node: Node,
    pub clients: Vec<Client>,
    net: VecDeque<Packet>,
    pub latency: Duration,
    pub events: Vec<(Instant, NodeEvent)>,
    /// Speaker packets the node handed out for other nodes.
    pub exports: Vec<(Instant, lodge_sfu::Export)>,
    pub export_ends: Vec<(Instant, lodge_sfu::ParticipantIdx)>,
    pub node_addr: SocketAddr,
}

impl World {
    pub fn new(cfg_fn: impl FnOnce(&mut NodeConfig)) -> World {
        let t0 = Instant::now();
        let node_addr: SocketAddr = NODE_ADDR.parse().unwrap();
        let mut cfg = NodeConfig::new(node_addr);
        cfg_fn(&mut cfg);
        let mut node = Node::new(cfg);
        node.set_seed(7);
        World {
            t0,
            now: t0,
            node,
            clients: Vec::new(),
            net: VecDeque::new(),
            latency: Duration::from_millis(10),
            events: Vec::new(),
            exports: Vec::new(),
            export_ends: Vec::new(),
            node_addr,
        }
    }

    pub fn ms(&self) -> u64 {
        (self.now - self.t0).as_millis() as u64
    }

    pub fn join(&mut self, k: usize, flags: VoiceFlags) -> Result<usize, lodge_sfu::SfuError> {
        let n = self.clients.len() as u8;
        let (mut c, offer, pending) = Client::new(n, self.now, k);
        let JoinAnswer { idx, answer, slots } = self.node.join(
            self.now,
            JoinRequest {
                room: RoomId(1),
                guild: lodge_sfu::GuildId(1),
                user: c.user,
                offer,
                flags,
            },
        )?;
        assert_eq!(slots.len(), k);
        c.rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        c.idx = Some(idx);
        self.clients.push(c);
        Ok(n as usize)
    }

    pub fn speaking() -> VoiceFlags {
        VoiceFlags {
            can_speak: true,
            ..Default::default()
        }
    }

    /// Inject a raw datagram at the node, as if from `from`.
    pub fn inject(&mut self, from: SocketAddr, data: &[u8]) {
        let now = self.now;
        let node_addr = self.node_addr;
        self.node.handle_datagram(now, from, node_addr, data);
        self.drain_node();
    }

    pub fn drain_node(&mut self) {
        while let Some(o) = self.node.poll_output() {
            match o {
                NodeOutput::Transmit(t) => self.net.push_back(Packet {
                    at: self.now + self.latency,
                    from: self.node_addr,
                    to: t.destination,
                    data: t.contents,
                }),
                NodeOutput::Event(e) => self.events.push((self.now, e)),
                NodeOutput::Export(x) => self.exports.push((self.now, x)),
                NodeOutput::ExportEnd(i) => self.export_ends.push((self.now, i)),
            }
        }
    }

    fn drain_client(&mut self, i: usize) {
        let now = self.now;
        let node_addr = self.node_addr;
        let c = &mut self.clients[i];
        loop {
            match c.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    c.timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) => self.net.push_back(Packet {
                    at: now + self.latency,
                    from: c.addr,
                    to: node_addr,
                    data: t.contents.into(),
                }),
                Ok(Output::Event(Event::Connected)) => c.connected = true,
                Ok(Output::Event(Event::RtpPacket(p))) => {
                    let mid = c.slot_mids.iter().copied().find(|m| {
                        c.rtc
                            .direct_api()
                            .stream_rx(&p.header.ssrc)
                            .map(|s| s.mid() == *m)
                            .unwrap_or(false)
                    });
                    c.heard.push(Heard {
                        at: now,
                        mid: mid.unwrap_or_else(|| "?".into()),
                        ssrc: *p.header.ssrc,
                        seq: *p.seq_no,
                        ts: p.header.timestamp,
                        speaker: p.payload.first().copied().unwrap_or(255),
                    })
                }
                Ok(Output::Event(_)) => {}
                Err(e) => panic!("client {} failed: {e}", c.n),
            }
        }
    }

    /// Advance the virtual clock by `d` in 1 ms steps.
    pub fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(1);
            self.step();
        }
    }

    fn step(&mut self) {
        let now = self.now;
        // Deliver due packets.
        let mut due = Vec::new();
        let mut keep = VecDeque::new();
        while let Some(p) = self.net.pop_front() {
            if p.at <= now {
                due.push(p)
            } else {
                keep.push_back(p)
            }
        }
        self.net = keep;
        for p in due {
            if p.to == self.node_addr {
                self.node.handle_datagram(now, p.from, p.to, &p.data);
                self.drain_node();
            } else if let Some(i) = self
                .clients
                .iter()
                .position(|c| c.addr == p.to && !c.closed)
            {
                let c = &mut self.clients[i];
                let Ok(contents) = DatagramRecv::try_from(p.data.as_slice()) else {
                    continue;
                };
                c.rtc
                    .handle_input(Input::Receive(
                        now,
                        Receive {
                            proto: Protocol::Udp,
                            source: p.from,
                            destination: p.to,
                            contents,
                        },
                    ))
                    .unwrap();
                self.drain_client(i);
            }
        }
        // Clients: timers and 20 ms audio frames.
        for i in 0..self.clients.len() {
            if self.clients[i].closed {
                continue;
            }
            if self.clients[i].timeout <= now {
                self.clients[i]
                    .rtc
                    .handle_input(Input::Timeout(now))
                    .unwrap();
            }
            let c = &mut self.clients[i];
            if c.connected && c.next_send <= now {
                c.next_send = now + Duration::from_millis(20);
                if let Some(level) = c.level {
                    let (pt, seq, ts, n) = (c.pt, c.seq, c.ts, c.n);
                    c.seq += 1;
                    c.ts = c.ts.wrapping_add(960);
                    let ext = ExtensionValues {
                        audio_level: Some(-(level as i8)),
                        voice_activity: Some(level < 60),
                        ..Default::default()
                    };
                    let mut payload = vec![n; 60];
                    payload[1] = (seq & 0xff) as u8;
                    let mut api = c.rtc.direct_api();
                    let tx = api.stream_tx_by_mid(c.send_mid, None).expect("send stream");
                    tx.write_rtp(
                        RtpWrite::new(pt, SeqNo::from(seq), ts, now, payload).ext_vals(ext),
                    );
                }
            }
            self.drain_client(i);
        }
        // Node timers.
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
        self.drain_node();
    }

    /// Per-slot sequence of packets as heard by client `i`, keyed by slot SSRC.
    pub fn streams(&self, i: usize) -> BTreeMap<u32, Vec<Heard>> {
        let mut m: BTreeMap<u32, Vec<Heard>> = BTreeMap::new();
        for h in &self.clients[i].heard {
            m.entry(h.ssrc).or_default().push(h.clone());
        }
        m
    }
}
