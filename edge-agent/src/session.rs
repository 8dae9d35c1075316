//! One trunk's protocol state, sans-IO: streams in both directions, numbering, the repair
//! history and trackers, limits and counters. The owner feeds it datagrams, control messages
//! and time, and sends what it polls out; it never touches a socket or a clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use lodge_sfu::rate_limit::TokenBucket;

use crate::error::EdgeError;
use crate::repair::{ReceiveStats, ReceiveTracker, RepairConfig, SendHistory};
use crate::wire::{Control, Media};

/// Most streams one side may have open on a trunk (a channel's speakers, all channels).
pub const MAX_STREAMS: usize = 4096;
/// Media datagrams accepted per second from one trunk peer (sustained; bursts up to
/// `RATE_BURST`): 4,000 speakers at 50 packets/s plus repairs. More is a flood and is dropped.
pub const RATE_PER_SEC: u32 = 200_000;
pub const RATE_BURST: u32 = 20_000;
/// Most sequence numbers one NACK may ask for.
pub const MAX_NACK_SEQS: usize = 256;

/// Everything a trunk counted (one side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrunkCounters {
    pub media_out: u64,
    /// Opus payload bytes sent (the Lodge and QUIC overhead is the rest of the UDP bytes).
    pub payload_bytes_out: u64,
    pub repairs_out: u64,
    /// NACKed packets no longer in the history (too old to resend).
    pub repairs_unavailable: u64,
    pub media_in: u64,
    pub dropped_malformed: u64,
    pub dropped_unknown_stream: u64,
    pub dropped_flood: u64,
    pub dropped_duplicate: u64,
    pub dropped_too_old: u64,
    pub control_in: u64,
    pub control_rejected: u64,
    /// Repair figures summed over every stream received (open and closed).
    pub repair: ReceiveStats,
}

/// Something the owner should know about besides media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The peer started a stream: `user`'s voice in `room`.
    Opened {
        stream: u16,
        room: u64,
        user: u64,
        /// The SSRC native listeners hear the speaker under, if the sender named it.
        ssrc: Option<u32>,
    },
    /// The peer ended a stream.
    Closed { stream: u16 },
    /// A message for the layer above the trunk (placement, interest, load).
    App(Control),
}

/// A media packet delivered to the owner, with who it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub stream: u16,
    /// The stream's trunk sequence number (consecutive per stream, like an RTP sequence).
    pub seq: u16,
    pub room: u64,
    pub user: u64,
    pub rtp_ts: u32,
    pub level: u8,
    pub marker: bool,
    /// Arrived through a NACK retransmission (late).
    pub recovered: bool,
    pub payload: Bytes,
}

struct OutStream {
    seq: u16,
    history: SendHistory,
}

struct InStream {
    room: u64,
    user: u64,
    tracker: ReceiveTracker,
}

pub struct TrunkSession {
    cfg: RepairConfig,
    out_streams: HashMap<u16, OutStream>,
    next_stream: u16,
    in_streams: HashMap<u16, InStream>,
    /// Repair figures of closed incoming streams.
    closed_repair: ReceiveStats,
    control_out: VecDeque<Control>,
    datagrams_out: VecDeque<Bytes>,
    notices: VecDeque<Notice>,
    counters: TrunkCounters,
    bucket: TokenBucket,
    nack_scratch: Vec<u16>,
}

impl Default for TrunkSession {
    fn default() -> Self {
        Self::new(RepairConfig::default())
    }
}

fn add(a: &mut ReceiveStats, b: &ReceiveStats) {
    a.received += b.received;
    a.duplicates += b.duplicates;
    a.recovered += b.recovered;
    a.reordered += b.reordered;
    a.nacked += b.nacked;
    a.abandoned += b.abandoned;
    a.too_old += b.too_old;
}

impl TrunkSession {
    pub fn new(cfg: RepairConfig) -> Self {
        TrunkSession {
            cfg,
            out_streams: HashMap::new(),
            next_stream: 0,
            in_streams: HashMap::new(),
            closed_repair: ReceiveStats::default(),
            control_out: VecDeque::new(),
            datagrams_out: VecDeque::new(),
            notices: VecDeque::new(),
            counters: TrunkCounters::default(),
            bucket: TokenBucket::new(RATE_PER_SEC, RATE_BURST),
            nack_scratch: Vec::new(),
        }
    }

    /// The counters, with repair figures summed over all incoming streams.
    pub fn counters(&self) -> TrunkCounters {
        let mut c = self.counters;
        let mut r = self.closed_repair;
        for s in self.in_streams.values() {
            add(&mut r, &s.tracker.stats());
        }
        c.repair = r;
        c
    }

    /// Adapt the NACK retry interval to the trunk's measured round trip.
    pub fn set_rtt(&mut self, rtt: Duration) {
        self.cfg.retry_after = RepairConfig::retry_for_rtt(rtt);
    }

    pub fn repair_config(&self) -> &RepairConfig {
        &self.cfg
    }

    /// Start sending `user`'s voice in `room`: the stream number for [`TrunkSession::send_media`].
    pub fn open_stream(&mut self, room: u64, user: u64) -> Result<u16, EdgeError> {
        if self.out_streams.len() >= MAX_STREAMS {
            return Err(EdgeError::UnexpectedControl(format!(
                "more than {MAX_STREAMS} open streams on one trunk"
            )));
        }
        let mut id = self.next_stream;
        while self.out_streams.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_stream = id.wrapping_add(1);
        self.open_stream_as(id, room, user, None)?;
        Ok(id)
    }

    /// Open a stream with a number the owner chose (it must not be open already), so the owner
    /// never has to wait for the session to answer.
    pub fn open_stream_as(
        &mut self,
        id: u16,
        room: u64,
        user: u64,
        ssrc: Option<u32>,
    ) -> Result<(), EdgeError> {
        if self.out_streams.len() >= MAX_STREAMS || self.out_streams.contains_key(&id) {
            return Err(EdgeError::UnexpectedControl(format!(
                "stream {id} is open already, or {MAX_STREAMS} streams are"
            )));
        }
        self.out_streams.insert(
            id,
            OutStream {
                seq: 0,
                history: SendHistory::default(),
            },
        );
        self.control_out.push_back(Control::StreamOpen {
            stream: id,
            room,
            user,
            ssrc,
        });
        Ok(())
    }

    pub fn close_stream(&mut self, stream: u16) {
        if self.out_streams.remove(&stream).is_some() {
            self.control_out.push_back(Control::StreamClose { stream });
        }
    }

    /// The datagram carrying one packet of `stream` (kept for repair). `None` for a stream that
    /// is not open.
    pub fn send_media(
        &mut self,
        stream: u16,
        rtp_ts: u32,
        level: u8,
        marker: bool,
        payload: Bytes,
    ) -> Option<Bytes> {
        let s = self.out_streams.get_mut(&stream)?;
        let seq = s.seq;
        s.seq = s.seq.wrapping_add(1);
        self.counters.media_out += 1;
        self.counters.payload_bytes_out += payload.len() as u64;
        let d = Media {
            stream,
            seq,
            rtp_ts,
            level,
            marker,
            repair: false,
            payload,
        }
        .encode();
        s.history.record(seq, d.clone());
        Some(d)
    }

    /// A datagram from the peer: the packet to use, or `None` when it was dropped (counted).
    pub fn handle_datagram(&mut self, now: Instant, d: Bytes) -> Option<Delivered> {
        if !self.bucket.take(now) {
            self.counters.dropped_flood += 1;
            return None;
        }
        let m = match Media::decode(d) {
            Ok(m) => m,
            Err(_) => {
                self.counters.dropped_malformed += 1;
                return None;
            }
        };
        let Some(s) = self.in_streams.get_mut(&m.stream) else {
            self.counters.dropped_unknown_stream += 1;
            return None;
        };
        let arrival = s.tracker.on_packet(now, m.seq, &self.cfg);
        if !arrival.is_new() {
            match arrival {
                crate::repair::Arrival::Duplicate => self.counters.dropped_duplicate += 1,
                _ => self.counters.dropped_too_old += 1,
            }
            return None;
        }
        self.counters.media_in += 1;
        Some(Delivered {
            stream: m.stream,
            seq: m.seq,
            room: s.room,
            user: s.user,
            rtp_ts: m.rtp_ts,
            level: m.level,
            marker: m.marker,
            recovered: arrival == crate::repair::Arrival::Recovered,
            payload: m.payload,
        })
    }

    /// A control message from the peer (after the hello exchange). Errors are counted and
    /// returned; the trunk stays up.
    pub fn handle_control(&mut self, _now: Instant, c: Control) -> Result<(), EdgeError> {
        self.counters.control_in += 1;
        let r = match c {
            Control::StreamOpen {
                stream,
                room,
                user,
                ssrc,
            } => {
                if self.in_streams.len() >= MAX_STREAMS && !self.in_streams.contains_key(&stream) {
                    Err(EdgeError::UnexpectedControl(format!(
                        "stream {stream}: the peer already has {MAX_STREAMS} streams open"
                    )))
                } else {
                    self.notices.push_back(Notice::Opened {
                        stream,
                        room,
                        user,
                        ssrc,
                    });
                    if let Some(old) = self.in_streams.insert(
                        stream,
                        InStream {
                            room,
                            user,
                            tracker: ReceiveTracker::default(),
                        },
                    ) {
                        add(&mut self.closed_repair, &old.tracker.stats());
                    }
                    Ok(())
                }
            }
            Control::StreamClose { stream } => match self.in_streams.remove(&stream) {
                Some(old) => {
                    self.notices.push_back(Notice::Closed { stream });
                    add(&mut self.closed_repair, &old.tracker.stats());
                    Ok(())
                }
                None => Err(EdgeError::UnexpectedControl(format!(
                    "close of unknown stream {stream}"
                ))),
            },
            Control::Nack { stream, seqs } => {
                if seqs.len() > MAX_NACK_SEQS {
                    Err(EdgeError::UnexpectedControl(format!(
                        "NACK of {} packets (limit {MAX_NACK_SEQS})",
                        seqs.len()
                    )))
                } else if let Some(s) = self.out_streams.get(&stream) {
                    for q in seqs {
                        match s.history.get(q) {
                            Some(d) => {
                                self.datagrams_out.push_back(Media::as_repair(d));
                                self.counters.repairs_out += 1;
                            }
                            None => self.counters.repairs_unavailable += 1,
                        }
                    }
                    Ok(())
                } else {
                    // The stream closed meanwhile: nothing to resend.
                    Ok(())
                }
            }
            c @ (Control::Interest { .. }
            | Control::Load { .. }
            | Control::VoicePlace(_)
            | Control::VoiceUpdate(_)
            | Control::VoiceRemove { .. }
            | Control::VoiceGone { .. }
            | Control::CallSummary { .. }
            | Control::Peers { .. }) => {
                self.notices.push_back(Notice::App(c));
                Ok(())
            }
            other => Err(EdgeError::UnexpectedControl(format!(
                "{other:?} after the hello exchange"
            ))),
        };
        if r.is_err() {
            self.counters.control_rejected += 1;
        }
        r
    }

    /// Drive repair timers: NACKs for what is missing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let cfg = self.cfg;
        for (id, s) in self.in_streams.iter_mut() {
            self.nack_scratch.clear();
            s.tracker.poll_nacks(now, &cfg, &mut self.nack_scratch);
            if !self.nack_scratch.is_empty() {
                for chunk in self.nack_scratch.chunks(MAX_NACK_SEQS) {
                    self.control_out.push_back(Control::Nack {
                        stream: *id,
                        seqs: chunk.to_vec(),
                    });
                }
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.in_streams
            .values()
            .filter_map(|s| s.tracker.next_timeout(&self.cfg))
            .min()
    }

    /// Queue a message for the layer above on the peer's side.
    pub fn send_app(&mut self, c: Control) {
        self.control_out.push_back(c);
    }

    /// Next notice for the owner.
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    /// Next control message to send.
    pub fn poll_control(&mut self) -> Option<Control> {
        self.control_out.pop_front()
    }

    /// Next datagram to send (repairs).
    pub fn poll_datagram(&mut self) -> Option<Bytes> {
        self.datagrams_out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sessions joined by a lossy in-memory "network": what one sends the other handles.
    fn pump(
        a: &mut TrunkSession,
        b: &mut TrunkSession,
        now: Instant,
        drop: &mut impl FnMut() -> bool,
    ) -> Vec<Delivered> {
        let mut got = Vec::new();
        loop {
            let mut moved = false;
            while let Some(c) = a.poll_control() {
                b.handle_control(now, c).unwrap();
                moved = true;
            }
            while let Some(c) = b.poll_control() {
                a.handle_control(now, c).unwrap();
                moved = true;
            }
            while let Some(d) = a.poll_datagram() {
                if !drop() {
                    got.extend(b.handle_datagram(now, d));
                }
                moved = true;
            }
            if !moved {
                return got;
            }
        }
    }

    #[test]
    fn streams_carry_media_and_repairs_fill_gaps() {
        let t0 = Instant::now();
        let (mut edge, mut origin) = (TrunkSession::default(), TrunkSession::default());
        let s = edge.open_stream(7, 42).unwrap();
        pump(&mut edge, &mut origin, t0, &mut || false);
        let mut x = 99u64;
        let mut lossy = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.is_multiple_of(10) // 10% loss on first transmissions and repairs alike
        };
        let mut delivered = Vec::new();
        for i in 0..500u32 {
            let now = t0 + Duration::from_millis(20 * i as u64);
            let d = edge
                .send_media(s, i * 960, 30, i == 0, Bytes::from(vec![i as u8; 40]))
                .unwrap();
            if !lossy() {
                delivered.extend(origin.handle_datagram(now, d));
            }
            origin.handle_timeout(now);
            delivered.extend(pump(&mut origin, &mut edge, now, &mut lossy));
            delivered.extend(pump(&mut edge, &mut origin, now, &mut lossy));
        }
        // Let the last repairs run out.
        for k in 1..=40u64 {
            let now = t0 + Duration::from_millis(10_000 + 20 * k);
            origin.handle_timeout(now);
            pump(&mut origin, &mut edge, now, &mut lossy);
            delivered.extend(pump(&mut edge, &mut origin, now, &mut lossy));
        }
        assert!(delivered.iter().all(|d| d.room == 7 && d.user == 42));
        let mut ts: Vec<u32> = delivered.iter().map(|d| d.rtp_ts / 960).collect();
        ts.sort();
        ts.dedup();
        assert_eq!(ts.len(), delivered.len(), "nothing delivered twice");
        assert!(
            delivered.len() >= 498,
            "only {} of 500 after repair",
            delivered.len()
        );
        let c = origin.counters();
        assert!(c.repair.recovered > 20, "{c:?}");
        assert!(edge.counters().repairs_out >= c.repair.recovered);
    }

    #[test]
    fn unknown_streams_garbage_and_floods_are_counted_not_fatal() {
        let t = Instant::now();
        let (mut edge, mut origin) = (TrunkSession::default(), TrunkSession::default());
        let s = edge.open_stream(1, 2).unwrap();
        // The datagram arrives before its StreamOpen: unknown stream.
        let d = edge
            .send_media(s, 0, 0, false, Bytes::from_static(b"a"))
            .unwrap();
        assert!(origin.handle_datagram(t, d).is_none());
        assert!(origin
            .handle_datagram(t, Bytes::from_static(b"junk"))
            .is_none());
        pump(&mut edge, &mut origin, t, &mut || false);
        let d = edge
            .send_media(s, 960, 0, false, Bytes::from_static(b"b"))
            .unwrap();
        assert!(origin.handle_datagram(t, d.clone()).is_some());
        assert!(origin.handle_datagram(t, d).is_none(), "duplicate");
        // A flood in one instant: only the burst passes.
        let mut passed = 0;
        for i in 0..(RATE_BURST + 500) {
            let d = edge
                .send_media(s, 1920 + i * 960, 0, false, Bytes::from_static(b"c"))
                .unwrap();
            passed += origin.handle_datagram(t, d).is_some() as u32;
        }
        assert!(passed <= RATE_BURST && passed > RATE_BURST - 10);
        let c = origin.counters();
        assert_eq!(
            (
                c.dropped_unknown_stream,
                c.dropped_malformed,
                c.dropped_duplicate
            ),
            (1, 1, 1)
        );
        assert!(c.dropped_flood >= 500);
        // Bad control is rejected and counted; the session carries on.
        assert!(origin
            .handle_control(
                t,
                Control::Nack {
                    stream: 0,
                    seqs: vec![0; MAX_NACK_SEQS + 1]
                }
            )
            .is_err());
        assert!(origin
            .handle_control(t, Control::StreamClose { stream: 999 })
            .is_err());
        assert_eq!(origin.counters().control_rejected, 2);
    }
}
