//! A deterministic test bed for the sfu core: a virtual clock, a simulated network and str0m
//! clients that behave like browsers (1 sendonly + K recvonly audio lines, audio-level ext).

#![allow(dead_code)]

pub mod fanout;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lodge_sfu::native::{CryptoMode, TransportCipher};
use lodge_sfu::tcp_framing::{self, FrameDecoder};
use lodge_sfu::{
    JoinAnswer, JoinRequest, NativeJoin, Node, NodeConfig, NodeEvent, NodeOutput, RoomId,
    Transport, UserId, VoiceFlags,
};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{DatagramRecv, Protocol, Receive, TcpType};
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
    pub payload: Vec<u8>,
    /// The RFC 6464 header extension as received: (level in -dBov, voice activity).
    pub audio_level: (Option<i8>, Option<bool>),
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
    /// Reaches the node only over ICE-TCP (an active TCP candidate, no UDP one), as a browser
    /// whose UDP is blocked.
    pub tcp_only: bool,
    /// Per receiving line, the node's packets and payload bytes as its last sender report
    /// on that line counted them.
    pub sender_reported: BTreeMap<Mid, (u64, u64)>,
}

impl Client {
    pub fn new(n: u8, now: Instant, k: usize) -> (Client, String, str0m::change::SdpPendingOffer) {
        Client::with_transport(n, now, k, false)
    }

    pub fn with_transport(
        n: u8,
        now: Instant,
        k: usize,
        tcp_only: bool,
    ) -> (Client, String, str0m::change::SdpPendingOffer) {
        let addr: SocketAddr = format!("127.0.0.{}:{}", 10 + n, 40000 + n as u16)
            .parse()
            .unwrap();
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .set_stats_interval(Some(Duration::from_millis(500)))
            .build(now);
        if tcp_only {
            let c = Candidate::builder()
                .tcp()
                .host(addr)
                .tcptype(TcpType::Active)
                .build()
                .unwrap();
            rtc.add_local_candidate(c);
        } else {
            rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        }
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
            tcp_only,
            sender_reported: BTreeMap::new(),
        };
        (c, offer.to_sdp_string(), pending)
    }

    pub fn heard_from(&self, speaker: u8) -> usize {
        self.heard.iter().filter(|h| h.speaker == speaker).count()
    }
}

/// What a native client received: one packet, opened.
#[derive(Debug, Clone)]
pub struct NativeHeard {
    pub at: Instant,
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub pt: u8,
    /// First payload byte: the speaker's number.
    pub speaker: u8,
    pub len: usize,
    pub payload: Vec<u8>,
}

/// A hand-rolled Discord UDP-mode client: discovery, rtpsize AEAD, 20 ms Opus-sized frames.
pub struct NativeClient {
    /// The speaker number in its payloads (100 + its index, apart from WebRTC clients').
    pub n: u8,
    pub addr: SocketAddr,
    pub user: UserId,
    pub ssrc: u32,
    pub cipher: TransportCipher,
    pub idx: Option<lodge_sfu::ParticipantIdx>,
    pub heard: Vec<NativeHeard>,
    /// Packets it could not open (wrong key, not RTP).
    pub unopened: usize,
    /// Discovery answers: (ssrc, address text, port).
    pub discovered: Vec<(u32, String, u16)>,
    /// Opus payload bytes to send every 20 ms (None = silent, sends nothing).
    pub bytes: Option<usize>,
    pub seq: u16,
    pub ts: u32,
    pub counter: u32,
    pub next_send: Instant,
    /// Send a keepalive this often while not speaking.
    pub keepalive: Option<Duration>,
    pub next_keepalive: Instant,
    /// Wrap each Opus frame as a DAVE frame ([`dave_frame`]) before transport encryption.
    pub dave_frames: bool,
    /// Every payload it sent (before transport encryption), by sequence number.
    pub sent: Vec<(u16, Vec<u8>)>,
    /// Of every this many frames, the first is lost on the way to the node (numbered and
    /// counted as sent, never delivered): uplink loss.
    pub lose_every: Option<u16>,
    /// RTCP the node sent it, opened.
    pub reports: Vec<(Instant, lodge_sfu::native::rtcp::Report)>,
}

impl NativeClient {
    pub fn heard_from(&self, speaker: u8) -> usize {
        self.heard.iter().filter(|h| h.speaker == speaker).count()
    }

    /// The payload it sent under sequence number `seq`.
    pub fn sent_payload(&self, seq: u16) -> Option<&[u8]> {
        self.sent
            .iter()
            .rev()
            .find(|(s, _)| *s == seq)
            .map(|(_, p)| p.as_slice())
    }

    /// A sealed sender report stamped `ntp_secs` (any clock: only echoed back).
    pub fn sender_report(&mut self, ntp_secs: f64) -> Vec<u8> {
        use lodge_sfu::native::rtcp;
        let sr = rtcp::SenderReport {
            ssrc: self.ssrc,
            ntp: rtcp::ntp_from_secs(ntp_secs),
            rtp_ts: self.ts,
            packets: self.sent.len() as u32,
            octets: 0,
        };
        let d = rtcp::seal_sender_report(&self.cipher, &sr, self.counter);
        self.counter = self.counter.wrapping_add(1);
        d
    }

    /// One sealed packet as this client would send it.
    pub fn packet(&mut self, payload: &[u8]) -> Vec<u8> {
        let out = self
            .cipher
            .seal_opus(self.ssrc, self.seq, self.ts, false, payload, self.counter);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(960);
        self.counter = self.counter.wrapping_add(1);
        out
    }
}

/// A DAVE media frame as a DAVE client makes one from `opus` (docs/design/NATIVE-VOICE.md
/// §3.7), built here by hand rather than with the node's parser: the "ciphertext" keeps the
/// first byte (the test's speaker number) and scrambles the rest, then an 8-byte tag, the
/// ULEB128 nonce, no unencrypted ranges, the supplemental size and `FA FA`.
pub fn dave_frame(opus: &[u8], nonce: u32) -> Vec<u8> {
    let mut f: Vec<u8> = opus
        .iter()
        .enumerate()
        .map(|(i, b)| if i == 0 { *b } else { b ^ 0x5C ^ i as u8 })
        .collect();
    let start = f.len();
    f.extend_from_slice(&nonce.to_le_bytes());
    f.extend_from_slice(&[0x7E; 4]);
    let mut v = nonce;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            f.push(b);
            break;
        }
        f.push(b | 0x80);
    }
    let supplemental = f.len() - start + 3;
    f.push(supplemental as u8);
    f.extend_from_slice(&[0xFA, 0xFA]);
    f
}

pub fn discovery_request(ssrc: u32) -> [u8; 74] {
    let mut r = [0u8; 74];
    r[..4].copy_from_slice(&[0, 1, 0, 70]);
    r[4..8].copy_from_slice(&ssrc.to_be_bytes());
    r
}

struct Packet {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    /// UDP: one datagram. TCP: a piece of the `from → to` byte stream (RFC 4571 frames cut
    /// anywhere), reassembled by a [`FrameDecoder`] on arrival.
    transport: Transport,
    data: Vec<u8>,
}

/// Datagrams and TCP frames delivered from one address, by transport.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub udp: usize,
    pub tcp_frames: usize,
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
    pub natives: Vec<NativeClient>,
    /// The receiving end of each `from → to` TCP stream.
    tcp_streams: HashMap<(SocketAddr, SocketAddr), FrameDecoder>,
    /// What arrived from each address (clients and the node alike).
    pub carried: HashMap<SocketAddr, Carried>,
    /// The SDP answers the node gave, by client.
    pub answers: Vec<String>,
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
            natives: Vec::new(),
            tcp_streams: HashMap::new(),
            carried: HashMap::new(),
            answers: Vec::new(),
        }
    }

    /// A world of `n` WebRTC clients that may speak, each hearing `k` slots, on a node
    /// `cfg_fn` configures, after 1.5 s in which every one connected.
    pub fn connected(n: usize, k: usize, cfg_fn: impl FnOnce(&mut NodeConfig)) -> World {
        let mut w = World::new(cfg_fn);
        for _ in 0..n {
            w.join(k, World::speaking()).unwrap();
        }
        w.run(Duration::from_millis(1500));
        for c in &w.clients {
            assert!(c.connected, "client {} did not connect", c.n);
        }
        w
    }

    pub fn ms(&self) -> u64 {
        (self.now - self.t0).as_millis() as u64
    }

    pub fn join(&mut self, k: usize, flags: VoiceFlags) -> Result<usize, lodge_sfu::SfuError> {
        self.join_on(k, flags, false)
    }

    /// A client that has only an active ICE-TCP candidate joins (its UDP is blocked).
    pub fn join_tcp(&mut self, k: usize, flags: VoiceFlags) -> Result<usize, lodge_sfu::SfuError> {
        self.join_on(k, flags, true)
    }

    fn join_on(
        &mut self,
        k: usize,
        flags: VoiceFlags,
        tcp_only: bool,
    ) -> Result<usize, lodge_sfu::SfuError> {
        let n = self.clients.len() as u8;
        let (mut c, offer, pending) = Client::with_transport(n, self.now, k, tcp_only);
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
        self.answers.push(answer.clone());
        c.rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        c.idx = Some(idx);
        self.clients.push(c);
        Ok(n as usize)
    }

    /// A native client joins room 1 as a Discord library does: IP discovery from its address
    /// first, then the join signaling makes after Select Protocol. Returns its index in
    /// `natives`.
    pub fn join_native(
        &mut self,
        k: usize,
        mode: CryptoMode,
        flags: VoiceFlags,
    ) -> Result<usize, lodge_sfu::SfuError> {
        self.join_native_dave(k, mode, flags, false)
    }

    /// As [`World::join_native`], for a client that announced DAVE (`dave`) or not.
    pub fn join_native_dave(
        &mut self,
        k: usize,
        mode: CryptoMode,
        flags: VoiceFlags,
        dave: bool,
    ) -> Result<usize, lodge_sfu::SfuError> {
        let i = self.natives.len();
        let n = 100 + i as u8;
        let addr: SocketAddr = format!("127.0.1.{}:{}", 10 + i, 41000 + i as u16)
            .parse()
            .unwrap();
        let user = UserId(5000 + i as u64);
        let guild = lodge_sfu::GuildId(1);
        let ssrc = lodge_sfu::native::user_ssrc(guild, user).0;
        let key = [n; 32];
        self.inject(addr, &discovery_request(ssrc));
        let ans = self.node.join_native(
            self.now,
            NativeJoin {
                room: RoomId(1),
                guild,
                user,
                mode,
                key,
                slots: k,
                flags,
                dave,
            },
        )?;
        assert_eq!(ans.ssrc.0, ssrc);
        self.drain_node();
        self.natives.push(NativeClient {
            n,
            addr,
            user,
            ssrc,
            cipher: TransportCipher::new(mode, &key),
            idx: Some(ans.idx),
            heard: Vec::new(),
            unopened: 0,
            discovered: Vec::new(),
            bytes: None,
            seq: 1000,
            ts: 5000,
            counter: 0,
            next_send: self.now,
            keepalive: None,
            next_keepalive: self.now,
            dave_frames: false,
            sent: Vec::new(),
            lose_every: None,
            reports: Vec::new(),
        });
        Ok(i)
    }

    pub fn speaking() -> VoiceFlags {
        VoiceFlags {
            can_speak: true,
            ..Default::default()
        }
    }

    /// Inject one ICE-TCP frame at the node, as if on the connection whose peer is `from`.
    pub fn inject_tcp(&mut self, from: SocketAddr, frame: &[u8]) {
        let now = self.now;
        self.node.handle_tcp_frame(now, from, frame);
        self.drain_node();
    }

    /// Queue `payload` on the `from → to` TCP stream, framed and cut in two pieces at a point
    /// that depends on its length (so the far end reassembles frames across pieces).
    fn send_tcp(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        let mut framed = Vec::new();
        tcp_framing::encode(payload, &mut framed).expect("a datagram fits a frame");
        let cut = 1 + (framed.len() * 7) % (framed.len() - 1);
        let at = self.now + self.latency;
        for piece in [&framed[..cut], &framed[cut..]] {
            self.net.push_back(Packet {
                at,
                from,
                to,
                transport: Transport::Tcp,
                data: piece.to_vec(),
            });
        }
    }

    /// Inject a raw datagram at the node, as if from `from`.
    pub fn inject(&mut self, from: SocketAddr, data: &[u8]) {
        let now = self.now;
        let node_addr = self.node_addr;
        self.node.handle_datagram(now, from, node_addr, data);
        self.drain_node();
    }

    /// `packets` packets of the trunk-fed speaker `idx`, one every 20 ms at RFC 6464 level 20,
    /// each payload 60 bytes of `tag`, numbered from 0; the world runs between them.
    pub fn feed_remote(&mut self, idx: lodge_sfu::ParticipantIdx, tag: u8, packets: u32) {
        for i in 0..packets {
            self.node.remote_rtp(
                self.now,
                lodge_sfu::RemotePacket {
                    idx,
                    seq: i as u16,
                    rtp_ts: i * 960,
                    level: 20,
                    marker: i == 0,
                    payload: std::sync::Arc::from(vec![tag; 60]),
                },
            );
            self.drain_node();
            self.run(Duration::from_millis(20));
        }
    }

    pub fn drain_node(&mut self) {
        while let Some(o) = self.node.poll_output() {
            match o {
                NodeOutput::Transmit(t) if t.transport == Transport::Tcp => {
                    self.send_tcp(self.node_addr, t.destination, &t.contents)
                }
                NodeOutput::Transmit(t) => self.net.push_back(Packet {
                    at: self.now + self.latency,
                    from: self.node_addr,
                    to: t.destination,
                    transport: Transport::Udp,
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
        loop {
            let c = &mut self.clients[i];
            match c.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    c.timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) if t.proto == Protocol::Tcp => {
                    let from = c.addr;
                    self.send_tcp(from, t.destination, &t.contents);
                }
                Ok(Output::Transmit(t)) => self.net.push_back(Packet {
                    at: now + self.latency,
                    from: c.addr,
                    to: node_addr,
                    transport: Transport::Udp,
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
                        payload: p.payload.to_vec(),
                        audio_level: (
                            p.header.ext_vals.audio_level,
                            p.header.ext_vals.voice_activity,
                        ),
                    })
                }
                Ok(Output::Event(Event::MediaIngressStats(st))) => {
                    if let Some(r) = st.remote {
                        c.sender_reported.insert(st.mid, (r.packets, r.bytes));
                    }
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
        // TCP pieces become whole frames at the receiving end of their stream.
        let mut arrived = Vec::new();
        for p in due {
            if p.transport == Transport::Udp {
                self.carried.entry(p.from).or_default().udp += 1;
                arrived.push(p);
                continue;
            }
            let dec = self
                .tcp_streams
                .entry((p.from, p.to))
                .or_insert_with(|| FrameDecoder::new(1500));
            dec.push(&p.data);
            while let Some(f) = dec.next_frame().expect("frames within bounds") {
                self.carried.entry(p.from).or_default().tcp_frames += 1;
                arrived.push(Packet {
                    data: f.to_vec(),
                    ..p
                });
            }
        }
        for p in arrived {
            if p.to == self.node_addr && p.transport == Transport::Tcp {
                self.node.handle_tcp_frame(now, p.from, &p.data);
                self.drain_node();
            } else if p.to == self.node_addr {
                self.node.handle_datagram(now, p.from, p.to, &p.data);
                self.drain_node();
            } else if let Some(c) = self.natives.iter_mut().find(|c| c.addr == p.to) {
                let mut data = p.data;
                if data.len() == 74 && data[..2] == [0, 2] {
                    let end = data[8..72].iter().position(|b| *b == 0).unwrap_or(64);
                    c.discovered.push((
                        u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
                        String::from_utf8_lossy(&data[8..8 + end]).into_owned(),
                        u16::from_be_bytes([data[72], data[73]]),
                    ));
                    continue;
                }
                if lodge_sfu::native::rtcp::is_rtcp(&data) {
                    match lodge_sfu::native::rtcp::open(&c.cipher, &mut data) {
                        Some(r) => c.reports.push((now, r)),
                        None => c.unopened += 1,
                    }
                    continue;
                }
                match c.cipher.open(&mut data) {
                    Ok(o) => c.heard.push(NativeHeard {
                        at: now,
                        ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
                        seq: u16::from_be_bytes([data[2], data[3]]),
                        ts: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
                        pt: data[1] & 0x7f,
                        speaker: data[o.payload.clone()].first().copied().unwrap_or(255),
                        len: o.payload.len(),
                        payload: data[o.payload].to_vec(),
                    }),
                    Err(_) => c.unopened += 1,
                }
            } else if let Some(i) = self
                .clients
                .iter()
                .position(|c| c.addr == p.to && !c.closed)
            {
                let c = &mut self.clients[i];
                let Ok(contents) = DatagramRecv::try_from(p.data.as_slice()) else {
                    continue;
                };
                let proto = match p.transport {
                    Transport::Udp => Protocol::Udp,
                    Transport::Tcp => Protocol::Tcp,
                };
                c.rtc
                    .handle_input(Input::Receive(
                        now,
                        Receive {
                            proto,
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
        // Native clients: 20 ms frames while they have something to say, keepalives else.
        let node_addr = self.node_addr;
        for c in &mut self.natives {
            if c.next_send <= now {
                c.next_send = now + Duration::from_millis(20);
                if let Some(bytes) = c.bytes {
                    let mut payload = vec![c.n; bytes.max(2)];
                    payload[1] = (c.seq & 0xff) as u8;
                    payload.truncate(bytes.max(1));
                    if c.dave_frames {
                        payload = dave_frame(&payload, c.counter);
                    }
                    c.sent.push((c.seq, payload.clone()));
                    let lost = c.lose_every.is_some_and(|k| c.seq % k == 0);
                    let data = c.packet(&payload);
                    if lost {
                        continue;
                    }
                    self.net.push_back(Packet {
                        at: now + self.latency,
                        from: c.addr,
                        to: node_addr,
                        transport: Transport::Udp,
                        data,
                    });
                }
            }
            if let Some(every) = c.keepalive {
                if c.next_keepalive <= now {
                    c.next_keepalive = now + every;
                    self.net.push_back(Packet {
                        at: now + self.latency,
                        from: c.addr,
                        to: node_addr,
                        transport: Transport::Udp,
                        data: c.ssrc.to_be_bytes().to_vec(),
                    });
                }
            }
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
