//! One caller's media: a str0m WebRTC client (RTP mode) on its own UDP socket. Speakers send the
//! pre-encoded speech in talk spurts with the RFC 6464 audio level; every caller counts what it
//! receives per slot (packets, sequence gaps, RFC 3550 jitter, mouth-to-ear delay), and probes
//! also play each slot through the jitter buffer and decode it with Opus.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use lodge_codec::OpusDecoder;
use lodge_jitter::{BufferConfig, JitterBuffer, Pulled};
use lodge_sfu::native::{CryptoMode, TransportCipher};
use lodge_sfu::seq_rewriter::SeqExtender;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::frame_clock::FrameClock;
use super::signal::SlotMap;
use super::talk::{Talk, TalkParams};

/// The speech, encoded once, and what every caller shares.
pub struct Shared {
    pub epoch: Instant,
    /// (Opus payload, RFC 6464 level) per 20 ms frame of the sample.
    pub frames: Vec<(Vec<u8>, u8)>,
    /// Payload hash → frame index, for payloads that occur once in the sample.
    pub frame_of: HashMap<u64, u32>,
    /// User id → speaker index.
    pub speaker_of: HashMap<u64, usize>,
    /// Per speaker, per frame: when it was last sent (µs since `epoch`, 0 = never).
    pub sent_at: Vec<Box<[AtomicU64]>>,
    pub rtp_out: AtomicU64,
    pub rtp_in: AtomicU64,
    pub connected: AtomicU64,
    /// Mouth-to-ear delays of the current progress interval (µs); the progress line reads and
    /// resets it.
    pub live: Mutex<Histogram<u64>>,
}

pub fn payload_hash(p: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    p.hash(&mut h);
    h.finish()
}

impl Shared {
    pub fn new(frames: Vec<(Vec<u8>, u8)>, speakers: &[u64]) -> Result<Self> {
        let mut count: HashMap<u64, (u32, u32)> = HashMap::new();
        for (i, (p, _)) in frames.iter().enumerate() {
            let e = count.entry(payload_hash(p)).or_insert((i as u32, 0));
            e.1 += 1;
        }
        let frame_of = count
            .into_iter()
            .filter(|(_, (_, n))| *n == 1)
            .map(|(h, (i, _))| (h, i))
            .collect();
        let sent_at = speakers
            .iter()
            .map(|_| (0..frames.len()).map(|_| AtomicU64::new(0)).collect())
            .collect();
        Ok(Shared {
            epoch: Instant::now(),
            frame_of,
            speaker_of: speakers.iter().enumerate().map(|(i, u)| (*u, i)).collect(),
            sent_at,
            frames,
            rtp_out: AtomicU64::new(0),
            rtp_in: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            live: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        })
    }

    fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }
}

/// What this caller sends.
#[derive(Clone)]
pub struct Speaking {
    pub index: usize,
    pub talk: TalkParams,
    pub seed: u64,
    /// Wakes this speaker at its own phase (see [`FrameClock`]).
    pub clock: FrameClock,
}

/// Per-slot receive state.
struct SlotRx {
    /// Lowest and highest extended sequence number seen.
    first_seq: u64,
    last_seq: Option<u64>,
    received: u64,
    /// Packets that arrived after a later one (counted, not treated as lost).
    reordered: u64,
    /// RFC 3550 interarrival jitter, in RTP units (48 kHz).
    jitter: f64,
    last_transit: Option<f64>,
    probe: Option<(JitterBuffer, OpusDecoder)>,
}

impl NativeWire {
    /// One frame, sealed: a bare 12-byte header (PT 120) and the Opus payload.
    fn seal(&mut self, seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Result<Vec<u8>> {
        let cipher = self.cipher.as_ref().context("no key before media")?;
        let out = cipher.seal_opus(self.ssrc, seq, ts, marker, payload, self.counter);
        self.counter = self.counter.wrapping_add(1);
        Ok(out)
    }

    /// Open a received packet in place: (SSRC, extended sequence, sequence, timestamp, where
    /// the Opus payload is), or `None` if it is not ours (a discovery answer, garbage, a
    /// wrong key).
    fn open(&mut self, pkt: &mut [u8]) -> Option<(u32, u64, u16, u32, std::ops::Range<usize>)> {
        let o = self.cipher.as_ref()?.open(pkt).ok()?;
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let ext = self.seqs.entry(ssrc).or_default().extend(seq);
        Some((ssrc, ext, seq, ts, o.payload))
    }
}

/// What one caller measures of what it receives, whatever carried it: per SSRC sequence gaps,
/// reordering, RFC 3550 jitter, mouth-to-ear delay against the speakers' send times, and (for a
/// probe) playout through the jitter buffer and Opus decode.
struct RxMeter<'a> {
    shared: &'a Shared,
    slots: &'a SlotMap,
    probe: bool,
    rx: HashMap<u32, SlotRx>,
    /// Mouth-to-ear delays not yet copied into the shared live histogram.
    live_batch: Vec<u64>,
    pcm: Vec<i16>,
}

impl<'a> RxMeter<'a> {
    fn new(shared: &'a Shared, slots: &'a SlotMap, probe: bool) -> Self {
        RxMeter {
            shared,
            slots,
            probe,
            rx: HashMap::new(),
            live_batch: Vec::new(),
            pcm: vec![0i16; 960],
        }
    }

    /// One RTP packet received at `now_us` (µs since the shared epoch): `ext` is its extended
    /// sequence number, `seq` the 16-bit one.
    #[allow(clippy::too_many_arguments)]
    fn on_rtp(
        &mut self,
        st: &mut CallerStats,
        now_us: u64,
        ssrc: u32,
        ext: u64,
        seq: u16,
        timestamp: u32,
        payload: &[u8],
    ) {
        let (shared, probe) = (self.shared, self.probe);
        let s = self.rx.entry(ssrc).or_insert_with(|| SlotRx {
            first_seq: ext,
            last_seq: None,
            received: 0,
            reordered: 0,
            jitter: 0.0,
            last_transit: None,
            probe: if probe {
                OpusDecoder::new(false)
                    .ok()
                    .map(|d| (JitterBuffer::new(BufferConfig::default()), d))
            } else {
                None
            },
        });
        match s.last_seq {
            Some(l) if ext < l => s.reordered += 1,
            Some(l) => {
                if ext > l + 1 {
                    let g = ext - l - 1;
                    let b = match g {
                        1 => 0,
                        2 => 1,
                        3..=5 => 2,
                        6..=20 => 3,
                        _ => 4,
                    };
                    st.gap_sizes[b] += 1;
                }
                s.last_seq = Some(ext);
            }
            None => s.last_seq = Some(ext),
        }
        s.first_seq = s.first_seq.min(ext);
        s.received += 1;
        // RFC 3550 A.8: transit in RTP units; J += (|D| - J) / 16.
        let transit = now_us as f64 * 0.048 - timestamp as f64;
        if let Some(prev) = s.last_transit {
            let d = (transit - prev).abs();
            if d < 48_000.0 {
                s.jitter += (d - s.jitter) / 16.0;
            }
        }
        s.last_transit = Some(transit);
        if let Some((jb, _)) = s.probe.as_mut() {
            jb.insert(now_us as f64 / 1000.0, seq, timestamp, payload.to_vec());
        }
        shared.rtp_in.fetch_add(1, Ordering::Relaxed);
        st.received += 1;
        // Mouth-to-ear: who sends under this SSRC, and when did they send this frame?
        let speaker = self
            .slots
            .lock()
            .expect("slot map lock")
            .get(&ssrc)
            .and_then(|u| shared.speaker_of.get(u).copied());
        let frame = shared.frame_of.get(&payload_hash(payload)).copied();
        match (speaker, frame) {
            (Some(sp), Some(f)) => {
                let sent = shared.sent_at[sp][f as usize].load(Ordering::Relaxed);
                if sent > 0 && now_us >= sent && now_us - sent < 10_000_000 {
                    let d = (now_us - sent).max(1);
                    let _ = st.m2e_us.record(d);
                    self.live_batch.push(d);
                } else {
                    st.unmatched += 1;
                }
            }
            (_, None) => st.repeated += 1,
            (None, Some(_)) => st.unmatched += 1,
        }
    }

    /// A probe plays out `owed` frames of every slot (each at the time it was due).
    fn pull_probes(&mut self, owed: u32, now_ms: f64, tick: Duration) {
        for s in self.rx.values_mut() {
            let Some((jb, dec)) = s.probe.as_mut() else {
                continue;
            };
            for k in (0..owed).rev() {
                let due = now_ms - k as f64 * tick.as_secs_f64() * 1000.0;
                let _ = match jb.pull(due) {
                    Pulled::Waiting | Pulled::Silence => Ok(0),
                    Pulled::Frame { payload, .. } => dec.decode(&payload, &mut self.pcm),
                    Pulled::Fec { next_payload, .. } => {
                        dec.decode_fec(&next_payload, &mut self.pcm)
                    }
                    Pulled::Conceal { .. } | Pulled::Stretch => dec.conceal(&mut self.pcm),
                };
            }
        }
    }

    /// Copy the delays measured since the last flush into the shared live histogram.
    fn flush_live(&mut self) {
        if self.live_batch.is_empty() {
            return;
        }
        if let Ok(mut h) = self.shared.live.lock() {
            for d in self.live_batch.drain(..) {
                let _ = h.record(d);
            }
        }
    }

    /// The call ended: losses, jitter and the probes' figures into `st`.
    fn finish(&mut self, st: &mut CallerStats) {
        // Every probed slot's buffer counts, summed as one stream.
        let mut probe_stats = lodge_jitter::JitterStats::default();
        for s in self.rx.values_mut() {
            // Lost = expected range − received (a late packet is not lost), as RFC 3550 counts.
            if let Some(last) = s.last_seq {
                st.gaps += (last - s.first_seq + 1).saturating_sub(s.received);
            }
            st.reordered += s.reordered;
            if s.received > 1 {
                st.jitter_ms.push(s.jitter / 48.0);
            }
            if let Some((jb, _)) = s.probe.as_mut() {
                jb.finish();
                probe_stats.merge(jb.stats());
            }
        }
        if self.probe {
            st.probe = Some(ProbeStats {
                concealment_pct: probe_stats.concealment_ratio() * 100.0,
                mean_buffer_delay_ms: probe_stats.mean_delay_ms(),
                frames: probe_stats.total_samples_received / 960,
            });
        }
    }
}

/// What a probe measured on all its slots together.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProbeStats {
    pub concealment_pct: f64,
    pub mean_buffer_delay_ms: f64,
    pub frames: u64,
}

/// Everything one caller measured.
pub struct CallerStats {
    /// Join → media connected, ms.
    pub connect_ms: Option<f64>,
    /// Join → the generator let the call start signaling (a `--parallelism` slot), and join →
    /// signaling done (the SDP answer in hand), ms: with `connect_ms`, the phases of a join.
    pub queued_ms: Option<f64>,
    pub signaled_ms: Option<f64>,
    pub rtp_sent: u64,
    pub received: u64,
    pub gaps: u64,
    /// Final RFC 3550 jitter of each slot that received anything, ms.
    pub jitter_ms: Vec<f64>,
    pub m2e_us: Histogram<u64>,
    /// Packets whose payload occurs more than once in the sample (silence): not timeable.
    pub repeated: u64,
    /// Packets with a unique payload that could not be matched to a send time (no slot
    /// announcement for the SSRC yet, or a stale send record).
    pub unmatched: u64,
    pub probe: Option<ProbeStats>,
    /// Datagrams the caller's WebRTC stack refused (SRTP, parse or state errors).
    pub input_errors: u64,
    /// Packets that arrived after a later one of the same slot.
    pub reordered: u64,
    /// RTP datagrams read from the socket (before the WebRTC stack).
    pub rtp_datagrams: u64,
    /// Sequence gaps by size: 1, 2, 3–5, 6–20, more.
    pub gap_sizes: [u64; 5],
    /// Times the server moved the call (a new VOICE_SERVER_UPDATE), and for each the time from
    /// losing the voice connection (or the move) to media flowing again, ms.
    pub rejoins: u32,
    pub rejoin_ms: Vec<f64>,
    /// The call's last segment had media (its connection came up), and no voice connection was
    /// lost without a move after it.
    pub media_at_end: bool,
}

impl CallerStats {
    /// Fold a later segment of the same call (after a move) into this one.
    pub fn merge(&mut self, o: CallerStats) {
        self.rtp_sent += o.rtp_sent;
        self.received += o.received;
        self.gaps += o.gaps;
        self.jitter_ms.extend(o.jitter_ms);
        let _ = self.m2e_us.add(&o.m2e_us);
        self.repeated += o.repeated;
        self.unmatched += o.unmatched;
        self.input_errors += o.input_errors;
        self.reordered += o.reordered;
        self.rtp_datagrams += o.rtp_datagrams;
        for (a, b) in self.gap_sizes.iter_mut().zip(o.gap_sizes) {
            *a += b;
        }
        self.probe = match (self.probe.take(), o.probe) {
            (Some(a), Some(b)) => {
                let n = (a.frames + b.frames).max(1) as f64;
                Some(ProbeStats {
                    concealment_pct: (a.concealment_pct * a.frames as f64
                        + b.concealment_pct * b.frames as f64)
                        / n,
                    mean_buffer_delay_ms: (a.mean_buffer_delay_ms * a.frames as f64
                        + b.mean_buffer_delay_ms * b.frames as f64)
                        / n,
                    frames: a.frames + b.frames,
                })
            }
            (a, b) => a.or(b),
        };
        self.rejoins += 1 + o.rejoins;
        self.rejoin_ms.extend(o.connect_ms);
        self.rejoin_ms.extend(o.rejoin_ms);
        self.media_at_end = o.media_at_end;
    }
}

/// A UDP socket on `ip` and a str0m client (RTP mode, Opus) with it as host candidate.
async fn bind_rtc(ip: IpAddr) -> Result<(UdpSocket, SocketAddr, Rtc)> {
    let sock = UdpSocket::bind(SocketAddr::new(ip, 0))
        .await
        .with_context(|| format!("binding a UDP socket on {ip}"))?;
    let local = sock.local_addr()?;
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    Ok((sock, local, rtc))
}

fn opus_pt(rtc: &Rtc) -> Result<Pt> {
    Ok(rtc
        .codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == str0m::format::Codec::Opus)
        .context("Opus in the codec config")?
        .pt())
}

pub struct Client {
    sock: UdpSocket,
    local: SocketAddr,
    wire: Wire,
    /// The SDP offer (WebRTC); empty for a native caller.
    pub offer: String,
}

/// What carries a caller's media. (One per caller, moved once: the size difference between
/// the variants costs nothing worth a box.)
#[allow(clippy::large_enum_variant)]
enum Wire {
    /// A str0m WebRTC session: ICE, DTLS-SRTP, one send and K receive lines.
    Rtc(RtcWire),
    /// Discord's native UDP transport, as game clients and bots speak it: IP discovery, then
    /// RTP sealed with one of the two AEAD "rtpsize" modes; speakers arrive under their own
    /// SSRCs.
    Native(NativeWire),
}

struct RtcWire {
    rtc: Rtc,
    /// The send transceiver (none for a receive-only subscriber).
    send_mid: Option<Mid>,
    pt: Pt,
    pending: Option<str0m::change::SdpPendingOffer>,
}

struct NativeWire {
    /// The node's media address (Ready's ip and port).
    server: Option<SocketAddr>,
    /// Ours, from Ready.
    ssrc: u32,
    /// From Session Description (op 4).
    cipher: Option<TransportCipher>,
    counter: u32,
    /// Extends each speaker's 16-bit sequence numbers.
    seqs: HashMap<u32, SeqExtender>,
}

/// How often a native caller sends a keepalive (both Discord libraries use 5 s).
const NATIVE_KEEPALIVE: Duration = Duration::from_secs(5);

impl Client {
    /// A client with one send and `slots` receive-only audio transceivers on `ip`.
    pub async fn new(ip: IpAddr, slots: usize) -> Result<Client> {
        let (sock, local, mut rtc) = bind_rtc(ip).await?;
        let mut api = rtc.sdp_api();
        let send_mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        for _ in 0..slots {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        let (offer, pending) = api.apply().context("building the SDP offer")?;
        let pt = opus_pt(&rtc)?;
        Ok(Client {
            sock,
            local,
            wire: Wire::Rtc(RtcWire {
                rtc,
                send_mid: Some(send_mid),
                pt,
                pending: Some(pending),
            }),
            offer: offer.to_sdp_string(),
        })
    }

    /// A native (UDP mode) caller's socket on `ip`; [`Client::discover`] and
    /// [`Client::set_key`] complete it as the voice gateway goes.
    pub async fn native(ip: IpAddr) -> Result<Client> {
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .with_context(|| format!("binding a UDP socket on {ip}"))?;
        let local = sock.local_addr()?;
        Ok(Client {
            sock,
            local,
            wire: Wire::Native(NativeWire {
                server: None,
                ssrc: 0,
                cipher: None,
                counter: rand::random(),
                seqs: HashMap::new(),
            }),
            offer: String::new(),
        })
    }

    /// IP discovery with the node at `server` for `ssrc` (Ready's): the address and port the
    /// node saw us at.
    pub async fn discover(&mut self, server: SocketAddr, ssrc: u32) -> Result<(String, u16)> {
        let Wire::Native(w) = &mut self.wire else {
            bail!("IP discovery is for native callers");
        };
        w.server = Some(server);
        w.ssrc = ssrc;
        let mut req = [0u8; 74];
        req[..4].copy_from_slice(&[0, 1, 0, 70]);
        req[4..8].copy_from_slice(&ssrc.to_be_bytes());
        let mut buf = [0u8; 128];
        // UDP: ask again if an answer does not come.
        for _ in 0..5 {
            self.sock.send_to(&req, server).await?;
            let r =
                tokio::time::timeout(Duration::from_secs(1), self.sock.recv_from(&mut buf)).await;
            let Ok(Ok((74, _))) = r else { continue };
            if buf[..2] != [0, 2] {
                continue;
            }
            let end = buf[8..72].iter().position(|b| *b == 0).unwrap_or(64);
            let addr = String::from_utf8_lossy(&buf[8..8 + end]).into_owned();
            return Ok((addr, u16::from_be_bytes([buf[72], buf[73]])));
        }
        bail!("no IP discovery answer from {server} in 5 s")
    }

    /// The mode and key from Session Description.
    pub fn set_key(&mut self, mode: CryptoMode, key: &[u8; 32]) -> Result<()> {
        let Wire::Native(w) = &mut self.wire else {
            bail!("a transport key is for native callers");
        };
        w.cipher = Some(TransportCipher::new(mode, key));
        Ok(())
    }

    /// A receive-only client answering a server's offer (a Janus VideoRoom subscriber): the
    /// client and its SDP answer.
    pub async fn answering(ip: IpAddr, offer: &str) -> Result<(Client, String)> {
        let (sock, local, mut rtc) = bind_rtc(ip).await?;
        let offer = str0m::change::SdpOffer::from_sdp_string(offer).context("parsing the offer")?;
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .context("answering the offer")?;
        let pt = opus_pt(&rtc)?;
        Ok((
            Client {
                sock,
                local,
                wire: Wire::Rtc(RtcWire {
                    rtc,
                    send_mid: None,
                    pt,
                    pending: None,
                }),
                offer: String::new(),
            },
            answer.to_sdp_string(),
        ))
    }

    pub fn accept(&mut self, answer: &str) -> Result<()> {
        let a = str0m::change::SdpAnswer::from_sdp_string(answer).context("parsing the answer")?;
        let Wire::Rtc(w) = &mut self.wire else {
            bail!("an SDP answer is for WebRTC callers");
        };
        let pending = w.pending.take().context("answer accepted twice")?;
        w.rtc
            .sdp_api()
            .accept_answer(pending, a)
            .context("applying the answer")?;
        Ok(())
    }

    /// Run the call until `stop`, or until the server moves it (the new token and endpoint are
    /// returned with the stats so far).
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        mut self,
        shared: Arc<Shared>,
        slots: SlotMap,
        speaking: Option<Speaking>,
        probe: bool,
        started: Instant,
        mut stop: watch::Receiver<bool>,
        moved: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    ) -> Result<(CallerStats, Option<(String, String)>)> {
        let mut st = CallerStats {
            connect_ms: None,
            queued_ms: None,
            signaled_ms: None,
            rtp_sent: 0,
            received: 0,
            gaps: 0,
            jitter_ms: Vec::new(),
            m2e_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            repeated: 0,
            unmatched: 0,
            probe: None,
            input_errors: 0,
            reordered: 0,
            rtp_datagrams: 0,
            gap_sizes: [0; 5],
            rejoins: 0,
            rejoin_ms: Vec::new(),
            media_at_end: false,
        };
        let mut move_to: Option<(String, String)> = None;
        let mut moves_open = true;
        let mut meter = RxMeter::new(&shared, &slots, probe);
        let mut talk = speaking.as_ref().map(|s| Talk::new(s.talk, s.seed));
        // Each speaker starts at its own place in the sample.
        let mut frame_pos = speaking
            .as_ref()
            .map(|s| (s.seed as usize * 7919) % shared.frames.len())
            .unwrap_or(0);
        let (mut seq, mut ts) = (1u64, 0u32);
        let mut buf = vec![0u8; 2048];
        let tick = Duration::from_millis(20);
        // Only speakers and probes need the 20 ms frame clock; a plain listener wakes for its
        // packets and str0m's timers alone (thousands of idle ticks per second otherwise).
        let ticking = speaking.is_some() || probe;
        let never = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        // A speaker is woken by the frame clock at its phase; a probe uses the runtime's timer
        // (1 ms resolution).
        let mut frame_ticks = speaking
            .as_ref()
            .map(|s| s.clock.ticks(Instant::now() + tick, tick));
        let mut clock_due: Option<Instant> = None;
        let mut next_tick = if ticking && frame_ticks.is_none() {
            tokio::time::Instant::now() + tick
        } else {
            never
        };
        let mut next_flush = Instant::now() + Duration::from_millis(500);
        let mut was_connected = false;
        let mut next_keepalive = Instant::now() + NATIVE_KEEPALIVE;
        loop {
            // Drain what str0m wants to do.
            let timeout = loop {
                let Wire::Rtc(w) = &mut self.wire else {
                    // A native caller has no stack to drain: its keepalive is its only timer.
                    break next_keepalive;
                };
                match w.rtc.poll_output()? {
                    Output::Timeout(t) => break t,
                    Output::Transmit(t) => {
                        let _ = self.sock.send_to(&t.contents, t.destination).await;
                    }
                    Output::Event(Event::RtpPacket(p)) => meter.on_rtp(
                        &mut st,
                        shared.us(p.timestamp),
                        *p.header.ssrc,
                        *p.seq_no,
                        p.header.sequence_number,
                        p.header.timestamp,
                        &p.payload,
                    ),
                    Output::Event(Event::Connected) => {}
                    Output::Event(_) => {}
                }
            };
            let connected = match &self.wire {
                Wire::Rtc(w) => w.rtc.is_connected(),
                Wire::Native(w) => w.cipher.is_some(),
            };
            if !was_connected && connected {
                was_connected = true;
                st.connect_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                shared.connected.fetch_add(1, Ordering::Relaxed);
            }
            if *stop.borrow() || move_to.is_some() {
                break;
            }
            let now = tokio::time::Instant::now();
            let due = match frame_ticks.as_mut() {
                Some(rx) => clock_due.take().map(|d| {
                    // Ticks still queued are frames owed too.
                    let mut extra = 0;
                    while rx.try_recv().is_ok() {
                        extra += 1;
                    }
                    (tokio::time::Instant::from_std(d), extra)
                }),
                None => (now >= next_tick).then_some((next_tick, 0)),
            };
            if let Some((due, extra)) = due {
                // Frames of playout owed since the last tick: a probe's playout clock runs on
                // like a sound card's even when this task wakes late, so it pulls every frame it
                // owes (at most 10); a speaker sends one frame and skips the rest rather than
                // bursting.
                let late = now.saturating_duration_since(due);
                let owed = (1 + extra.max(late.as_millis() / tick.as_millis())).min(10) as u32;
                if frame_ticks.is_none() {
                    next_tick += tick;
                    if next_tick < now {
                        // Fell behind (overloaded generator): skip ahead rather than burst.
                        next_tick = now + tick;
                    }
                }
                if let (Some(t), Some(sp)) = (talk.as_mut(), speaking.as_ref()) {
                    // Frames this speaker's capture clock produced while the task was not
                    // running are skipped (media time keeps pace with the wall clock, as a
                    // real sender's does); the latest is sent.
                    for _ in 1..owed {
                        t.next_frame();
                        ts = ts.wrapping_add(960);
                        frame_pos = (frame_pos + 1) % shared.frames.len();
                    }
                    let (on, start) = t.next_frame();
                    if on && was_connected {
                        let (payload, level) = &shared.frames[frame_pos];
                        let wall = Instant::now();
                        let sent = match &mut self.wire {
                            Wire::Rtc(w) => {
                                let ext = str0m::rtp::ExtensionValues {
                                    audio_level: Some(-(*level as i8)),
                                    voice_activity: Some(true),
                                    ..Default::default()
                                };
                                let mut api = w.rtc.direct_api();
                                let tx = w.send_mid.and_then(|m| api.stream_tx_by_mid(m, None));
                                let sent = tx.is_some();
                                if let Some(tx) = tx {
                                    tx.write_rtp(
                                        str0m::rtp::RtpWrite::new(
                                            w.pt,
                                            seq.into(),
                                            ts,
                                            wall,
                                            payload.clone(),
                                        )
                                        .marker(start)
                                        .ext_vals(ext),
                                    );
                                    // str0m releases queued RTP when time moves: move it now so
                                    // the packet leaves in this wake-up, not at the runtime's
                                    // next timer tick (which lines every speaker due in that
                                    // millisecond up into one burst).
                                    w.rtc.handle_input(Input::Timeout(wall))?;
                                }
                                sent
                            }
                            Wire::Native(w) => {
                                // No audio-level extension: Discord's clients send none (the
                                // node ranks native speakers by packet size).
                                let pkt = w.seal(seq as u16, ts, start, payload)?;
                                let to = w.server.context("no IP discovery before media")?;
                                let _ = self.sock.send_to(&pkt, to).await;
                                next_keepalive = wall + NATIVE_KEEPALIVE;
                                true
                            }
                        };
                        if sent {
                            shared.sent_at[sp.index][frame_pos]
                                .store(shared.us(wall).max(1), Ordering::Relaxed);
                            seq += 1;
                            st.rtp_sent += 1;
                            shared.rtp_out.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Media time runs during pauses too (the receiver sees a DTX-like gap).
                    ts = ts.wrapping_add(960);
                    frame_pos = (frame_pos + 1) % shared.frames.len();
                }
                if probe {
                    meter.pull_probes(owed, shared.us(Instant::now()) as f64 / 1000.0, tick);
                }
                continue;
            }
            if Instant::now() >= next_flush {
                next_flush = Instant::now() + Duration::from_millis(500);
                meter.flush_live();
            }
            let wake = tokio::time::Instant::from_std(timeout).min(next_tick);
            tokio::select! {
                r = self.sock.recv_from(&mut buf) => {
                    if let Ok((n, src)) = r {
                        // RTP (version 2, not an RTCP packet type 200..=206) as it came off the
                        // socket, to tell network loss from loss inside the caller's stack.
                        if n >= 12 && buf[0] >> 6 == 2 && !(200..=206).contains(&buf[1]) {
                            st.rtp_datagrams += 1;
                        }
                        match &mut self.wire {
                            Wire::Rtc(w) => {
                                if let Ok(contents) = buf[..n].try_into() {
                                    if w.rtc.handle_input(Input::Receive(Instant::now(), Receive {
                                        proto: Protocol::Udp, source: src, destination: self.local, contents,
                                    })).is_err() {
                                        st.input_errors += 1;
                                    }
                                }
                            }
                            Wire::Native(w) => {
                                let now_us = shared.us(Instant::now());
                                match w.open(&mut buf[..n]) {
                                    Some((ssrc, ext, seq16, ts, body)) => {
                                        meter.on_rtp(&mut st, now_us, ssrc, ext, seq16, ts, &buf[body]);
                                    }
                                    None => st.input_errors += 1,
                                }
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    match &mut self.wire {
                        Wire::Rtc(w) => w.rtc.handle_input(Input::Timeout(Instant::now()))?,
                        Wire::Native(w) => {
                            let now = Instant::now();
                            if now >= next_keepalive {
                                // Four bytes, our SSRC (as songbird sends them): liveness only.
                                if let Some(to) = w.server {
                                    let _ = self.sock.send_to(&w.ssrc.to_be_bytes(), to).await;
                                }
                                next_keepalive = now + NATIVE_KEEPALIVE;
                            }
                        }
                    }
                }
                d = async { frame_ticks.as_mut().expect("guarded").recv().await }, if frame_ticks.is_some() => {
                    match d {
                        Some(d) => clock_due = Some(d),
                        None => {
                            // The clock is gone: fall back to the runtime's timer.
                            frame_ticks = None;
                            next_tick = tokio::time::Instant::now() + tick;
                        }
                    }
                }
                _ = stop.changed() => {}
                m = moved.recv(), if moves_open => match m {
                    Some(x) => move_to = Some(x),
                    None => moves_open = false,
                },
            }
        }
        meter.finish(&mut st);
        st.media_at_end = was_connected;
        if let Wire::Rtc(w) = &mut self.wire {
            w.rtc.disconnect();
        }
        Ok((st, move_to))
    }
}
