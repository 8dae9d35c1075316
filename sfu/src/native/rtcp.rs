//! Sender and receiver reports on native voice (RFC 3550 §6.4), a Lodge extension.
//!
//! Discord's native clients send no RTCP that Lodge relies on, so the node answers only a
//! client that asks: a sealed sender report (SR) from a native participant gets a sealed
//! receiver report (RR) back at once, describing how the participant's voice reaches the
//! node (loss since the last report, cumulative loss, interarrival jitter) and echoing the
//! SR's timestamp with the delay since it arrived, from which the client computes the round
//! trip. A client that never sends an SR never gets an RR, so unmodified Discord clients see
//! nothing new. `lodge-client` drives its Opus bitrate and FEC from these reports.
//!
//! Sealing is the "rtpsize" idea applied to RTCP: the first [`RTCP_CLEAR`] bytes (header and
//! sender SSRC) are the associated data, the rest is sealed, then tag and nonce counter
//! ([`TransportCipher::seal_rtcp`]). A demultiplexer tells RTCP from RTP by the second byte
//! (RFC 5761: 200..=204 are SR, RR, SDES, BYE, APP).
//!
//! [`Reception`] is the receiver side's bookkeeping (RFC 3550 appendix A.1, A.3 and A.8):
//! extended highest sequence number, expected and received packets, and jitter.

use super::transport_crypto::{TransportCipher, COUNTER_LEN, RTCP_CLEAR, TAG_LEN};

/// RTCP packet types.
pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
/// Bytes of one report block.
const BLOCK_LEN: usize = 24;
/// Bytes of an SR's sender info (NTP timestamp, RTP timestamp, packet and octet counts).
const SENDER_INFO_LEN: usize = 20;
/// The RTP clock of Opus.
const CLOCK_HZ: f64 = 48_000.0;

/// Whether a datagram looks like RTCP (RFC 5761 §4: the second byte is 200..=204 only for
/// RTCP; RTP's payload types there would collide with RTCP's and are not used).
pub fn is_rtcp(d: &[u8]) -> bool {
    d.len() >= RTCP_CLEAR && d[0] >> 6 == 2 && (200..=204).contains(&d[1])
}

/// An SR's sender info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport {
    pub ssrc: u32,
    /// NTP-format timestamp (32.32 fixed point seconds) on the sender's clock; only its middle
    /// 32 bits come back, as LSR.
    pub ntp: u64,
    pub rtp_ts: u32,
    pub packets: u32,
    pub octets: u32,
}

impl SenderReport {
    /// The middle 32 bits of the NTP timestamp: what a receiver report echoes as LSR.
    pub fn ntp_middle(&self) -> u32 {
        (self.ntp >> 16) as u32
    }
}

/// One report block: how the source `ssrc` reaches the reporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Lost since the previous report, as a fraction × 256.
    pub fraction_lost: u8,
    /// Lost since the start (24 bits, signed: duplicates can make it negative).
    pub cumulative_lost: i32,
    pub highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    /// The middle 32 bits of the last SR's NTP timestamp (0: none yet).
    pub lsr: u32,
    /// Delay since that SR arrived, in 1/65536 s.
    pub dlsr: u32,
}

impl ReportBlock {
    pub fn loss_fraction(&self) -> f64 {
        self.fraction_lost as f64 / 256.0
    }

    pub fn jitter_ms(&self) -> f64 {
        self.jitter as f64 / CLOCK_HZ * 1e3
    }

    /// The round trip in ms, from the time (`now_middle`, the NTP middle 32 bits on the clock
    /// that stamped the SR) this report arrived; `None` without an echoed SR.
    pub fn rtt_ms(&self, now_middle: u32) -> Option<f64> {
        if self.lsr == 0 {
            return None;
        }
        let rtt = now_middle.wrapping_sub(self.lsr).wrapping_sub(self.dlsr);
        // A report from before a clock step, or a forged echo, comes out absurd: not a figure.
        (rtt < 65536 * 60).then(|| rtt as f64 / 65536.0 * 1e3)
    }
}

/// A parsed (opened) RTCP packet: the first of a compound, the only one Lodge sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Sender(SenderReport),
    /// A receiver report from `ssrc`, with its first block if it has one.
    Receiver {
        ssrc: u32,
        block: Option<ReportBlock>,
    },
    /// Another RTCP type (SDES, BYE, APP): not used.
    Other(u8),
}

/// Parse an opened RTCP packet (plain bytes, as after [`TransportCipher::open_rtcp`] with the
/// tag and counter cut off). `None` when it is shorter than it says.
pub fn parse(p: &[u8]) -> Option<Report> {
    if p.len() < RTCP_CLEAR || p[0] >> 6 != 2 {
        return None;
    }
    let count = usize::from(p[0] & 0x1f);
    let words = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let len = 4 * (words + 1);
    if p.len() < len {
        return None;
    }
    let p = &p[..len];
    let ssrc = be32(p, 4);
    match p[1] {
        PT_SR => {
            if len < RTCP_CLEAR + SENDER_INFO_LEN {
                return None;
            }
            Some(Report::Sender(SenderReport {
                ssrc,
                ntp: (u64::from(be32(p, 8)) << 32) | u64::from(be32(p, 12)),
                rtp_ts: be32(p, 16),
                packets: be32(p, 20),
                octets: be32(p, 24),
            }))
        }
        PT_RR => {
            if len < RTCP_CLEAR + count * BLOCK_LEN {
                return None;
            }
            let block = (count > 0).then(|| block_at(p, RTCP_CLEAR));
            Some(Report::Receiver { ssrc, block })
        }
        other => Some(Report::Other(other)),
    }
}

fn be32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

fn block_at(p: &[u8], at: usize) -> ReportBlock {
    let lost = be32(p, at + 4);
    // 24-bit two's complement.
    let cumulative_lost = ((lost << 8) as i32) >> 8;
    ReportBlock {
        ssrc: be32(p, at),
        fraction_lost: (lost >> 24) as u8,
        cumulative_lost,
        highest_seq: be32(p, at + 8),
        jitter: be32(p, at + 12),
        lsr: be32(p, at + 16),
        dlsr: be32(p, at + 20),
    }
}

fn header(pt: u8, count: u8, total_len: usize, ssrc: u32) -> [u8; RTCP_CLEAR] {
    let mut h = [0u8; RTCP_CLEAR];
    h[0] = 0x80 | (count & 0x1f);
    h[1] = pt;
    h[2..4].copy_from_slice(&((total_len / 4 - 1) as u16).to_be_bytes());
    h[4..8].copy_from_slice(&ssrc.to_be_bytes());
    h
}

/// Seal `clear` + `body` with `counter` into a fresh datagram.
fn seal(cipher: &TransportCipher, clear: &[u8; RTCP_CLEAR], body: &[u8], counter: u32) -> Vec<u8> {
    let mut out = vec![0u8; RTCP_CLEAR + body.len() + TAG_LEN + COUNTER_LEN];
    let n = cipher
        .seal_rtcp(clear, body, counter, &mut out)
        .expect("a buffer sized for the report always seals");
    out.truncate(n);
    out
}

/// A sealed SR (no report blocks).
pub fn seal_sender_report(cipher: &TransportCipher, sr: &SenderReport, counter: u32) -> Vec<u8> {
    let clear = header(PT_SR, 0, RTCP_CLEAR + SENDER_INFO_LEN, sr.ssrc);
    let mut body = [0u8; SENDER_INFO_LEN];
    body[0..8].copy_from_slice(&sr.ntp.to_be_bytes());
    body[8..12].copy_from_slice(&sr.rtp_ts.to_be_bytes());
    body[12..16].copy_from_slice(&sr.packets.to_be_bytes());
    body[16..20].copy_from_slice(&sr.octets.to_be_bytes());
    seal(cipher, &clear, &body, counter)
}

/// A sealed RR from `reporter` with one block.
pub fn seal_receiver_report(
    cipher: &TransportCipher,
    reporter: u32,
    b: &ReportBlock,
    counter: u32,
) -> Vec<u8> {
    let clear = header(PT_RR, 1, RTCP_CLEAR + BLOCK_LEN, reporter);
    let mut body = [0u8; BLOCK_LEN];
    body[0..4].copy_from_slice(&b.ssrc.to_be_bytes());
    let lost = (u32::from(b.fraction_lost) << 24) | (b.cumulative_lost as u32 & 0x00ff_ffff);
    body[4..8].copy_from_slice(&lost.to_be_bytes());
    body[8..12].copy_from_slice(&b.highest_seq.to_be_bytes());
    body[12..16].copy_from_slice(&b.jitter.to_be_bytes());
    body[16..20].copy_from_slice(&b.lsr.to_be_bytes());
    body[20..24].copy_from_slice(&b.dlsr.to_be_bytes());
    seal(cipher, &clear, &body, counter)
}

/// Open a sealed RTCP datagram in place and parse it.
pub fn open(cipher: &TransportCipher, d: &mut [u8]) -> Option<Report> {
    let o = cipher.open_rtcp(d).ok()?;
    parse(&d[..o.payload.end])
}

/// A receiver's view of one RTP stream: RFC 3550 A.1 (sequence numbers, extended over
/// wraps, a source restarting after a large jump), A.3 (expected and lost), A.8 (jitter).
#[derive(Debug, Clone, Default)]
pub struct Reception {
    started: bool,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    /// A sequence number far off the current one, kept to see whether the next follows it
    /// (then the source restarted).
    bad_seq: Option<u16>,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Interarrival jitter in RTP units (A.8's estimator, in f64 rather than scaled integers).
    jitter: f64,
    transit: Option<i64>,
}

/// How far ahead a sequence number may jump and still count as the same run (A.1's
/// MAX_DROPOUT), and how far behind it may be and still be a late packet (MAX_MISORDER).
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;

impl Reception {
    /// One packet: its sequence number and timestamp, and its arrival on a 48 kHz clock.
    pub fn packet(&mut self, seq: u16, ts: u32, arrival_rtp: u64) {
        if !self.started {
            self.restart(seq);
            self.started = true;
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta < MAX_DROPOUT {
                if seq < self.max_seq {
                    // Wraps after 2^16 wraps of the 16-bit numbers: only a sender jumping on
                    // purpose gets there, and its report is then wrong, not a panic.
                    self.cycles = self.cycles.wrapping_add(1 << 16);
                }
                self.max_seq = seq;
            } else if delta <= u16::MAX - MAX_MISORDER {
                // A big jump: a restart if the next packet follows it, else a stray.
                if self.bad_seq == Some(seq) {
                    self.restart(seq);
                } else {
                    self.bad_seq = Some(seq.wrapping_add(1));
                    return;
                }
            }
            // Else: late or duplicate, counted as received (as A.1 does).
        }
        self.received += 1;
        let transit = arrival_rtp as i64 - i64::from(ts);
        if let Some(prev) = self.transit {
            // Timestamps are 32-bit: a difference beyond half the range is a wrap.
            let d = (transit - prev) as i32 as f64;
            self.jitter += (d.abs() - self.jitter) / 16.0;
        }
        self.transit = Some(transit);
    }

    fn restart(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.cycles = 0;
        self.bad_seq = None;
        self.received = 0;
        self.expected_prior = 0;
        self.received_prior = 0;
    }

    fn extended_max(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    fn expected(&self) -> u64 {
        u64::from(self.extended_max()).saturating_sub(u64::from(self.base_seq)) + 1
    }

    /// Packets received since the start.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Lost over the whole stream as a fraction (0..1), `None` before the first packet.
    pub fn loss_total(&self) -> Option<f64> {
        if !self.started {
            return None;
        }
        let e = self.expected();
        Some(e.saturating_sub(self.received) as f64 / e as f64)
    }

    pub fn jitter_ms(&self) -> f64 {
        self.jitter / CLOCK_HZ * 1e3
    }

    /// The report block for this stream (its source `ssrc`), closing the interval that the
    /// next one's fraction lost covers. `lsr`/`dlsr` as in [`ReportBlock`].
    pub fn report(&mut self, ssrc: u32, lsr: u32, dlsr: u32) -> ReportBlock {
        let expected = if self.started { self.expected() } else { 0 };
        let lost = expected as i64 - self.received as i64;
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: lost.clamp(-0x80_0000, 0x7f_ffff) as i32,
            highest_seq: self.extended_max(),
            jitter: self.jitter as u32,
            lsr,
            dlsr,
        }
    }
}

/// The middle 32 bits of an NTP-format time given in seconds on any clock (the reporter
/// only echoes it): what LSR and a report's arrival are compared in.
pub fn ntp_middle(secs: f64) -> u32 {
    (ntp_from_secs(secs) >> 16) as u32
}

/// A 32.32 fixed-point time from seconds.
pub fn ntp_from_secs(secs: f64) -> u64 {
    let whole = secs.floor();
    ((whole as u64) << 32) | (((secs - whole) * 4_294_967_296.0) as u64 & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::CryptoMode;

    fn cipher() -> TransportCipher {
        TransportCipher::new(CryptoMode::Aes256GcmRtpsize, &[3; 32])
    }

    #[test]
    fn reports_round_trip_sealed_and_refuse_other_keys() {
        let c = cipher();
        let sr = SenderReport {
            ssrc: 77,
            ntp: ntp_from_secs(12.5),
            rtp_ts: 960,
            packets: 50,
            octets: 4000,
        };
        let mut d = seal_sender_report(&c, &sr, 9);
        assert!(is_rtcp(&d));
        let mut forged = d.clone();
        assert_eq!(open(&c, &mut d), Some(Report::Sender(sr)));
        let other = TransportCipher::new(CryptoMode::Aes256GcmRtpsize, &[4; 32]);
        assert_eq!(open(&other, &mut forged), None);
        let b = ReportBlock {
            ssrc: 77,
            fraction_lost: 51,
            cumulative_lost: -3,
            highest_seq: 70_000,
            jitter: 480,
            lsr: sr.ntp_middle(),
            dlsr: 65536 / 10,
        };
        let mut d = seal_receiver_report(&c, 0, &b, 10);
        assert_eq!(
            open(&c, &mut d),
            Some(Report::Receiver {
                ssrc: 0,
                block: Some(b)
            })
        );
        assert!((b.loss_fraction() - 0.2).abs() < 0.01);
        assert_eq!(b.jitter_ms(), 10.0);
        // Sent at 12.5 s, answered 100 ms after it arrived, back at 12.65 s: 50 ms of path.
        let rtt = b.rtt_ms(ntp_middle(12.65)).unwrap();
        assert!((rtt - 50.0).abs() < 0.1, "{rtt}");
    }

    #[test]
    fn short_or_lying_packets_do_not_parse() {
        let c = cipher();
        let sr = SenderReport {
            ssrc: 1,
            ntp: 0,
            rtp_ts: 0,
            packets: 0,
            octets: 0,
        };
        let mut d = seal_sender_report(&c, &sr, 1);
        let o = c.open_rtcp(&mut d).unwrap();
        let plain = d[..o.payload.end].to_vec();
        for n in 0..plain.len() {
            assert_eq!(parse(&plain[..n]), None, "{n} bytes");
        }
        let mut lying = plain.clone();
        lying[0] = 0x81;
        lying[1] = PT_RR;
        // One block announced in a packet too short for it.
        assert_eq!(parse(&lying), None);
        for len in 0..40 {
            let mut junk = vec![0x80u8; len];
            if len > 1 {
                junk[1] = 200;
            }
            assert_eq!(open(&c, &mut junk), None);
        }
    }

    /// Packets every 20 ms (960 ticks) with `lost` of every 10 missing.
    fn stream(r: &mut Reception, from: u16, n: u16, lost_of_10: u16, jitter_ticks: u64) {
        for i in 0..n {
            let seq = from.wrapping_add(i);
            if i % 10 < lost_of_10 {
                continue;
            }
            let wobble = if i % 2 == 0 { jitter_ticks } else { 0 };
            r.packet(
                seq,
                u32::from(i) * 960,
                u64::from(i) * 960 + 100_000 + wobble,
            );
        }
    }

    #[test]
    fn reception_counts_loss_per_interval_across_a_wrap() {
        let mut r = Reception::default();
        stream(&mut r, 65_000, 1000, 0, 0);
        let b = r.report(5, 0, 0);
        assert_eq!(b.fraction_lost, 0);
        assert_eq!(b.cumulative_lost, 0);
        assert_eq!(b.highest_seq, 65_536 + 463, "one wrap");
        assert_eq!(b.jitter, 0);
        let mut r = Reception::default();
        stream(&mut r, 65_000, 1000, 2, 0);
        let b = r.report(5, 0, 0);
        // 20% lost: 0.2 × 256 = 51.2 (the first packet lost is not expected yet: close).
        assert!((50..=52).contains(&b.fraction_lost), "{b:?}");
        assert_eq!(
            b.cumulative_lost, 198,
            "the two lost before the first are not counted"
        );
        // The next interval has no loss.
        stream(&mut r, 65_000u16.wrapping_add(1000), 100, 0, 0);
        let b2 = r.report(5, 0, 0);
        assert_eq!(b2.fraction_lost, 0, "{b2:?}");
        assert_eq!(b2.cumulative_lost, b.cumulative_lost);
    }

    #[test]
    fn reception_measures_jitter_and_survives_strays_and_restarts() {
        let mut r = Reception::default();
        // Every other packet 10 ms late: |D| = 480 each time, so J converges to 480.
        stream(&mut r, 0, 500, 0, 480);
        assert!((r.jitter_ms() - 10.0).abs() < 0.5, "{}", r.jitter_ms());
        let before = r.report(1, 0, 0).highest_seq;
        // A stray packet far ahead changes nothing; two in a row are a restart.
        r.packet(40_000, 0, 0);
        assert_eq!(r.report(1, 0, 0).highest_seq, before);
        r.packet(40_001, 0, 0);
        assert_eq!(r.report(1, 0, 0).highest_seq, 40_001);
        // A late packet is counted, not a wrap.
        r.packet(39_990, 0, 0);
        assert_eq!(r.report(1, 0, 0).highest_seq, 40_001);
    }
}
