//! The call's media, sans-IO: one 20 ms frame of capture in → at most one datagram out;
//! datagrams in → per-speaker playout; one tick (up to a frame) of mixed playout out. Time is passed in, so
//! tests drive it with a simulated clock; the shell (`call.rs`) owns the socket and the ticks.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use lodge_codec::audio::Vad;
use lodge_codec::controller::{BitrateController, ControllerConfig};
use lodge_codec::{EncoderSettings, OpusEncoder};
use lodge_jitter::{BufferConfig, JitterStats};
use lodge_sfu::native::rtcp::{self, Report, SenderReport};
use lodge_sfu::native::{is_dave_frame, CryptoMode, TransportCipher};

use crate::dave::{DaveStatus, SharedDave};
use crate::error::ClientError;
use crate::playout::{SpeakerPlayout, FRAME};

/// Opus's 3-byte silence frame: sent five times when a talk spurt ends, as Discord's clients
/// do, so receivers' decoders fade out instead of concealing.
const OPUS_SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];
const SILENCE_FRAMES: u8 = 5;
/// A speaker with no packet for this long is forgotten (its buffer and decoder freed).
const SPEAKER_IDLE_MS: f64 = 10_000.0;
/// After a user leaves, packets of theirs still in flight are ignored for this long (rather
/// than starting a new playout for an SSRC nobody names).
const GONE_MS: f64 = 2_000.0;
/// Final figures of this many departed speakers are kept for `stats`.
const MAX_DEPARTED: usize = 64;
/// Sender reports awaiting an answer at most (an answer slower than this many seconds is not
/// taken).
const AWAITING_MAX: usize = 4;
/// A sender report goes out this often while we send (the node answers each with a receiver
/// report on how our voice reaches it).
const REPORT_MS: f64 = 1_000.0;
/// The adaptive bitrate's floor and ceiling unless the starting rate lies outside them.
const ADAPT_MIN_BPS: u32 = 8_000;
const ADAPT_MAX_BPS: u32 = 64_000;

/// How the engine encodes and plays out.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub encoder: EncoderSettings,
    pub jitter: BufferConfig,
    /// Send only while the voice activity detector hears speech (plus its hangover); off: send
    /// every frame while unmuted (a tone, a file).
    pub voice_activity: bool,
    /// Drive the Opus bitrate and FEC from the node's receiver reports (`lodge_codec`'s
    /// controller, starting at `encoder.bitrate_bps`, between 8 and 64 kbps unless the start
    /// lies outside); off: the encoder keeps `encoder` as given.
    pub adaptive_bitrate: bool,
    /// Give each speaker's jitter buffer half the measured round trip to the node (from the
    /// receiver reports, smoothed) as the one-way network delay, so its target weighs delay
    /// against late packets by the E-model: a long path buys less buffer, a short one more
    /// (see `lodge_jitter::BufferConfig::network_delay_ms`). Off: the buffer's quantile target
    /// alone, or `jitter.network_delay_ms` as given.
    pub playout_from_rtt: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            encoder: EncoderSettings::default(),
            jitter: BufferConfig::default(),
            voice_activity: true,
            adaptive_bitrate: true,
            playout_from_rtt: true,
        }
    }
}

/// How our voice reaches the node, from its latest receiver report (getStats'
/// remote-inbound-rtp names).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RemoteInbound {
    /// Lost since the previous report (0..1).
    pub fraction_lost: f64,
    /// Lost since the start.
    pub packets_lost: i64,
    pub jitter_ms: f64,
    /// `None` until a report echoes one of our sender reports.
    pub round_trip_time_ms: Option<f64>,
    pub reports_received: u64,
}

/// Live counters of the call, named as WebRTC's getStats names what it can.
#[derive(Debug, Clone, Default)]
pub struct CallStats {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    /// Datagrams that did not open under the session key (or were not RTP): dropped.
    pub packets_undecryptable: u64,
    /// Frames end-to-end encryption (DAVE) refused, dropped: an encrypted frame no key of ours
    /// opens (or one in a call without DAVE), a plain frame in a DAVE call outside a
    /// downgrade's passthrough, a frame from an SSRC the voice gateway has not named yet.
    pub packets_dave_dropped: u64,
    /// Captured frames not sent because the call runs DAVE and we are not in its group yet
    /// (plain voice must not reach the server in an end-to-end encrypted call).
    pub frames_held_for_dave: u64,
    /// The call's DAVE state (`None`: we did not take part in DAVE).
    pub dave: Option<DaveStatus>,
    /// Sender reports sent; the node's answers are in `remote_inbound`.
    pub reports_sent: u64,
    pub remote_inbound: Option<RemoteInbound>,
    /// What the encoder runs at now (the controller's last decision when adaptive).
    pub target_bitrate_bps: u32,
    pub fec: bool,
    pub expected_loss_pct: u8,
    pub speakers: Vec<SpeakerStats>,
}

#[derive(Debug, Clone)]
pub struct SpeakerStats {
    pub ssrc: u32,
    /// From the voice gateway's op 5; `None` until it names the SSRC.
    pub user: Option<u64>,
    pub jitter: JitterStats,
    pub target_delay_ms: f64,
    /// Decoded audio's wait for its tick, summed per sample (s): the output side, which
    /// `jitter.jitter_buffer_delay` leaves out as WebRTC's does (NetEq's sync buffer).
    pub queue_delay_s: f64,
    /// The samples taken from that queue (what `queue_delay_s` is summed over).
    pub queue_samples: u64,
    /// Times the playout moved its decisions a tick earlier to meet the packets.
    pub phase_shifts: u64,
    pub decode_errors: u64,
    /// The speaker left (op 13) or went quiet for 10 s: these are its final figures.
    pub left: bool,
}

/// What the user controls during a call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Controls {
    pub mute: bool,
    pub deaf: bool,
    /// Push-to-talk: `Some(pressed)` sends only while pressed; `None` is open mic (or VAD).
    pub push_to_talk: Option<bool>,
}

pub struct VoiceEngine {
    t0: Instant,
    ssrc: u32,
    cipher: TransportCipher,
    /// End-to-end encryption of the frames, inside the transport's (the voice gateway's task
    /// keeps the group).
    dave: Option<SharedDave>,
    counter: u32,
    seq: u16,
    ts: u32,
    enc: OpusEncoder,
    vad: Option<Vad>,
    jitter: BufferConfig,
    pub controls: Controls,
    sending: bool,
    silence_left: u8,
    speaking_changed: Option<bool>,
    speakers: HashMap<u32, SpeakerPlayout>,
    /// SSRCs whose user left, and when (ms).
    gone: HashMap<u32, f64>,
    departed: Vec<SpeakerStats>,
    users: HashMap<u32, u64>,
    volumes: HashMap<u64, f32>,
    stats: CallStats,
    frame: [i16; FRAME],
    acc: [i32; FRAME],
    controller: Option<BitrateController>,
    next_report_ms: f64,
    sent_at_last_report: u64,
    /// Our latest sender reports not answered yet (their NTP middle bits, and whether we sent
    /// voice in the second before): a receiver report counts only as the answer to one of
    /// them, once, so a captured report replayed later cannot steer the encoder.
    awaiting: VecDeque<(u32, bool)>,
    playout_from_rtt: bool,
    /// The round trip to the node, smoothed over the reports (ms).
    smoothed_rtt_ms: Option<f64>,
}

impl VoiceEngine {
    /// An engine sending as `ssrc` (voice Ready's), sealing in `mode` with `key` (Session
    /// Description's).
    pub fn new(
        now: Instant,
        ssrc: u32,
        mode: CryptoMode,
        key: &[u8; 32],
        cfg: EngineConfig,
    ) -> Result<VoiceEngine, ClientError> {
        let start = cfg.encoder.bitrate_bps;
        let controller = cfg.adaptive_bitrate.then(|| {
            BitrateController::new(ControllerConfig {
                min_bps: ADAPT_MIN_BPS.min(start),
                max_bps: ADAPT_MAX_BPS.max(start),
                start_bps: start,
            })
        });
        let stats = CallStats {
            target_bitrate_bps: start,
            fec: cfg.encoder.fec,
            expected_loss_pct: cfg.encoder.expected_loss_pct,
            ..Default::default()
        };
        Ok(VoiceEngine {
            t0: now,
            ssrc,
            cipher: TransportCipher::new(mode, key),
            dave: None,
            // The node numbers its packets to us from 0 under the same key: starting in the
            // upper half keeps the two directions' nonces apart for 2^31 packets.
            counter: rand::random::<u32>() | 0x8000_0000,
            seq: rand::random(),
            ts: rand::random(),
            enc: OpusEncoder::new(cfg.encoder)?,
            vad: cfg.voice_activity.then(Vad::default),
            jitter: cfg.jitter,
            controls: Controls::default(),
            sending: false,
            silence_left: 0,
            speaking_changed: None,
            speakers: HashMap::new(),
            gone: HashMap::new(),
            departed: Vec::new(),
            users: HashMap::new(),
            volumes: HashMap::new(),
            stats,
            frame: [0; FRAME],
            acc: [0; FRAME],
            controller,
            next_report_ms: REPORT_MS,
            sent_at_last_report: 0,
            awaiting: VecDeque::with_capacity(AWAITING_MAX),
            playout_from_rtt: cfg.playout_from_rtt,
            smoothed_rtt_ms: None,
        })
    }

    /// Our clock as an NTP-format time for sender reports (only the node's echo of it is
    /// compared with it, so any epoch does; one second in, so no stamp is 0, which means
    /// "none" in a report).
    fn ntp_secs(&self, now: Instant) -> f64 {
        1.0 + self.ms(now) / 1e3
    }

    /// A sealed sender report when one is due: once a second, sending or not (a listener's
    /// report, with no packets, still measures the round trip its playout uses). The node
    /// answers each with a receiver report (`receive` takes it in).
    pub fn poll_report(&mut self, now: Instant) -> Option<Vec<u8>> {
        let now_ms = self.ms(now);
        if now_ms < self.next_report_ms {
            return None;
        }
        self.next_report_ms = now_ms + REPORT_MS;
        let sending = self.stats.packets_sent != self.sent_at_last_report;
        self.sent_at_last_report = self.stats.packets_sent;
        let sr = SenderReport {
            ssrc: self.ssrc,
            ntp: rtcp::ntp_from_secs(self.ntp_secs(now)),
            rtp_ts: self.ts,
            packets: self.stats.packets_sent as u32,
            octets: self.stats.bytes_sent as u32,
        };
        let pkt = rtcp::seal_sender_report(&self.cipher, &sr, self.counter);
        self.counter = self.counter.wrapping_add(1);
        self.stats.reports_sent += 1;
        if self.awaiting.len() == AWAITING_MAX {
            self.awaiting.pop_front();
        }
        self.awaiting.push_back((sr.ntp_middle(), sending));
        Some(pkt)
    }

    /// A receiver report from the node: the uplink's figures, and the encoder follows the
    /// controller's decision.
    fn take_report(&mut self, now: Instant, d: &mut [u8]) {
        let Some(Report::Receiver { block: Some(b), .. }) = rtcp::open(&self.cipher, d) else {
            self.stats.packets_undecryptable += 1;
            return;
        };
        if b.ssrc != self.ssrc {
            return;
        }
        // Only the answer to a report of ours still awaiting one, and only once.
        let Some(at) = self.awaiting.iter().position(|(l, _)| *l == b.lsr) else {
            return;
        };
        let (_, sending) = self.awaiting[at];
        self.awaiting.drain(..=at);
        let rtt = b.rtt_ms(rtcp::ntp_middle(self.ntp_secs(now)));
        if let Some(r) = rtt {
            self.path_delay(r);
        }
        let prev = self.stats.remote_inbound.unwrap_or_default();
        let mut r = RemoteInbound {
            round_trip_time_ms: rtt.or(prev.round_trip_time_ms),
            reports_received: prev.reports_received + 1,
            ..prev
        };
        // The uplink's figures describe our voice: a second without any keeps the last ones.
        if sending {
            r.fraction_lost = b.loss_fraction();
            r.packets_lost = i64::from(b.cumulative_lost);
            r.jitter_ms = b.jitter_ms();
        }
        self.stats.remote_inbound = Some(r);
        let now_ms = self.ms(now);
        // A second in which we sent nothing says nothing about how our voice gets through.
        let Some(c) = self.controller.as_mut().filter(|_| sending) else {
            return;
        };
        let d = c.handle_report(now_ms, b.loss_fraction(), b.jitter_ms(), rtt.unwrap_or(0.0));
        // Frame length and DTX stay as configured: capture runs in 20 ms frames, and voice
        // activity already stops sending in silence.
        let s = EncoderSettings {
            bitrate_bps: d.bitrate_bps.max(6_000),
            fec: d.fec,
            expected_loss_pct: d.expected_loss_pct,
            ..*self.enc.settings()
        };
        if s != *self.enc.settings() && self.enc.apply(s).is_ok() {
            self.stats.target_bitrate_bps = s.bitrate_bps;
            self.stats.fec = s.fec;
            self.stats.expected_loss_pct = s.expected_loss_pct;
        }
    }

    /// A new round-trip sample: smoothed (1/4 weight, as the reports come once a second), and
    /// half of it handed to every speaker's buffer as our leg's one-way delay (the speaker's
    /// own leg to the node is not known here). A sample is taken as at most three times the
    /// smoothed value and 2 s: one report held up (a stall, or on the path) must not swing
    /// the playout target.
    fn path_delay(&mut self, rtt_ms: f64) {
        let s = match self.smoothed_rtt_ms {
            Some(s) => 0.75 * s + 0.25 * rtt_ms.min(3.0 * s + 10.0).min(2_000.0),
            None => rtt_ms.min(2_000.0),
        };
        self.smoothed_rtt_ms = Some(s);
        if !self.playout_from_rtt {
            return;
        }
        self.jitter.network_delay_ms = Some(s / 2.0);
        for p in self.speakers.values_mut() {
            p.set_network_delay_ms(Some(s / 2.0));
        }
    }

    fn ms(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.t0).as_secs_f64() * 1e3
    }

    /// One captured 20 ms frame (48 kHz mono): the datagram to send, if any. Muted, push-to-
    /// talk released or (with voice activity on) quiet: nothing, after five silence frames.
    pub fn capture(&mut self, pcm: &[i16]) -> Result<Option<Vec<u8>>, ClientError> {
        let mut wants = !self.controls.mute && self.controls.push_to_talk.unwrap_or(true);
        if let Some(vad) = &mut self.vad {
            // The detector sees every frame, so its hangover is right when sending resumes.
            wants &= vad.is_speech(pcm);
        }
        // RFC 3551: the marker bit flags the first packet of a talk spurt.
        let mut marker = false;
        let payload: &[u8] = if wants {
            if !self.sending {
                self.sending = true;
                self.speaking_changed = Some(true);
                marker = true;
            }
            self.silence_left = 0;
            self.enc.encode(pcm)?
        } else {
            if self.sending {
                self.sending = false;
                self.silence_left = SILENCE_FRAMES;
                self.speaking_changed = Some(false);
            }
            if self.silence_left == 0 {
                // Media time runs on while silent: the next spurt's timestamp shows the gap.
                self.ts = self.ts.wrapping_add(FRAME as u32);
                return Ok(None);
            }
            self.silence_left -= 1;
            &OPUS_SILENCE
        };
        let encrypted;
        let payload = match &self.dave {
            Some(d) => match crate::dave::lock(d).encrypt(payload) {
                Ok(Cow::Borrowed(f)) => f,
                Ok(Cow::Owned(f)) => {
                    encrypted = f;
                    &encrypted[..]
                }
                Err(_) => {
                    self.stats.frames_held_for_dave += 1;
                    self.ts = self.ts.wrapping_add(FRAME as u32);
                    return Ok(None);
                }
            },
            None => payload,
        };
        let pkt =
            self.cipher
                .seal_opus(self.ssrc, self.seq, self.ts, marker, payload, self.counter);
        self.counter = self.counter.wrapping_add(1);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME as u32);
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += pkt.len() as u64;
        Ok(Some(pkt))
    }

    /// One sealed Opus silence frame, next in our numbering: an authenticated packet that
    /// moves our address on the node after a network change without sounding. `None` while
    /// a spurt is being sent (its next packet moves the address; a frame here would shift it).
    pub fn silence_packet(&mut self) -> Option<Vec<u8>> {
        if self.sending {
            return None;
        }
        let pkt = self.cipher.seal_opus(
            self.ssrc,
            self.seq,
            self.ts,
            false,
            &OPUS_SILENCE,
            self.counter,
        );
        self.counter = self.counter.wrapping_add(1);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME as u32);
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += pkt.len() as u64;
        Some(pkt)
    }

    /// Encrypt and decrypt frames end to end with this DAVE membership (`None`: the call
    /// runs without our DAVE).
    pub fn set_dave(&mut self, dave: Option<SharedDave>) {
        self.dave = dave;
    }

    /// The call moved to another voice connection (a VOICE_SERVER_UPDATE followed): send as
    /// `ssrc` under `key` in `mode` from now on (and `set_dave` with its DAVE membership). The old connection's speakers end (their
    /// figures kept, as when they leave) and its reports are no longer awaited; a talk spurt in
    /// progress is announced again (op 5) on the new connection. Controls, volumes, the
    /// encoder and the counters carry on.
    pub fn retarget(&mut self, ssrc: u32, mode: CryptoMode, key: &[u8; 32]) {
        self.ssrc = ssrc;
        self.cipher = TransportCipher::new(mode, key);
        self.counter = rand::random::<u32>() | 0x8000_0000;
        let old: Vec<(u32, SpeakerPlayout)> = self.speakers.drain().collect();
        for (s, p) in &old {
            self.depart(*s, p);
        }
        self.users.clear();
        self.gone.clear();
        self.awaiting.clear();
        if self.sending {
            self.speaking_changed = Some(true);
        }
    }

    /// Whether we started or stopped talking since the last call (for the voice gateway's
    /// op 5).
    pub fn take_speaking_change(&mut self) -> Option<bool> {
        self.speaking_changed.take()
    }

    /// One datagram from the node. Anything that does not open under the key is dropped and
    /// counted; a valid packet goes into its speaker's buffer.
    pub fn receive(&mut self, now: Instant, datagram: &mut [u8]) {
        if rtcp::is_rtcp(datagram) {
            return self.take_report(now, datagram);
        }
        let now_ms = self.ms(now);
        let Ok(o) = self.cipher.open(datagram) else {
            self.stats.packets_undecryptable += 1;
            return;
        };
        let d = &*datagram;
        let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        let seq = u16::from_be_bytes([d[2], d[3]]);
        let ts = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
        let opus = &d[o.payload];
        self.stats.packets_received += 1;
        self.stats.bytes_received += d.len() as u64;
        if ssrc == self.ssrc {
            return;
        }
        if self.gone.get(&ssrc).is_some_and(|t| now_ms - t < GONE_MS) {
            return;
        }
        let decrypted;
        let opus = match &self.dave {
            Some(d) => {
                let user = self.users.get(&ssrc).copied();
                match crate::dave::lock(d).decrypt(user, opus) {
                    Ok(Cow::Borrowed(f)) => f,
                    Ok(Cow::Owned(f)) => {
                        decrypted = f;
                        &decrypted[..]
                    }
                    Err(_) => {
                        self.stats.packets_dave_dropped += 1;
                        return;
                    }
                }
            }
            None if is_dave_frame(opus) => {
                self.stats.packets_dave_dropped += 1;
                return;
            }
            None => opus,
        };
        let p = match self.speakers.entry(ssrc) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let Ok(p) = SpeakerPlayout::new(self.jitter, now_ms) else {
                    return;
                };
                e.insert(p)
            }
        };
        p.insert(now_ms, seq, ts, opus);
    }

    /// The voice gateway named `ssrc` as `user`'s voice (op 5).
    pub fn set_user(&mut self, ssrc: u32, user: u64) {
        self.users.insert(ssrc, user);
        self.gone.remove(&ssrc);
    }

    /// `user` left the call (at `now`): their SSRCs' playout ends, its figures are kept.
    pub fn user_gone(&mut self, now: Instant, user: u64) {
        let now_ms = self.ms(now);
        let gone: Vec<u32> = self
            .users
            .iter()
            .filter(|(_, u)| **u == user)
            .map(|(s, _)| *s)
            .collect();
        self.gone.retain(|_, t| now_ms - *t < GONE_MS);
        for s in gone {
            if let Some(p) = self.speakers.remove(&s) {
                self.depart(s, &p);
            }
            self.users.remove(&s);
            self.gone.insert(s, now_ms);
        }
    }

    fn speaker_stats(&self, ssrc: u32, p: &SpeakerPlayout, left: bool) -> SpeakerStats {
        let (queue_delay_s, queue_samples) = p.queue_delay();
        SpeakerStats {
            ssrc,
            user: self.users.get(&ssrc).copied(),
            jitter: p.stats(),
            target_delay_ms: p.target_delay_ms(),
            queue_delay_s,
            queue_samples,
            phase_shifts: p.phase_shifts,
            decode_errors: p.decode_errors,
            left,
        }
    }

    fn depart(&mut self, ssrc: u32, p: &SpeakerPlayout) {
        let st = self.speaker_stats(ssrc, p, true);
        if self.departed.len() == MAX_DEPARTED {
            self.departed.remove(0);
        }
        self.departed.push(st);
    }

    /// Playback gain for `user` (1.0 unchanged, 0.0 silent, up to 4.0).
    pub fn set_volume(&mut self, user: u64, gain: f32) {
        self.volumes.insert(user, gain.clamp(0.0, 4.0));
    }

    /// One tick of playout (`mix.len()` samples, at most a 20 ms frame; a call ticks every
    /// 10 ms): each speaker's decoded audio goes to `each` (SSRC, user, samples: for
    /// per-speaker recording), their sum at each user's volume into `mix`. Deafened: `mix` is
    /// silence (`each` still sees what arrives).
    pub fn playout(
        &mut self,
        now: Instant,
        mix: &mut [i16],
        mut each: impl FnMut(u32, Option<u64>, &[i16]),
    ) {
        let n = mix.len().min(FRAME);
        let mix = &mut mix[..n];
        let now_ms = self.ms(now);
        let idle: Vec<u32> = self
            .speakers
            .iter()
            .filter(|(_, p)| now_ms - p.last_packet_ms >= SPEAKER_IDLE_MS)
            .map(|(s, _)| *s)
            .collect();
        for s in idle {
            if let Some(p) = self.speakers.remove(&s) {
                self.depart(s, &p);
            }
        }
        self.acc.fill(0);
        for (ssrc, p) in self.speakers.iter_mut() {
            if !p.pull(now_ms, &mut self.frame[..n]) {
                continue;
            }
            let user = self.users.get(ssrc).copied();
            each(*ssrc, user, &self.frame[..n]);
            let gain = user
                .and_then(|u| self.volumes.get(&u))
                .copied()
                .unwrap_or(1.0);
            for (a, s) in self.acc.iter_mut().zip(&self.frame[..n]) {
                *a += (*s as f32 * gain) as i32;
            }
        }
        if self.controls.deaf {
            mix.fill(0);
            return;
        }
        for (m, a) in mix.iter_mut().zip(self.acc.iter()) {
            *m = (*a).clamp(i16::MIN as i32, i16::MAX as i32) as i16;
        }
    }

    pub fn stats(&self) -> CallStats {
        let mut s = self.stats.clone();
        s.speakers = self
            .speakers
            .iter()
            .map(|(ssrc, p)| self.speaker_stats(*ssrc, p, false))
            .collect();
        s.speakers.sort_by_key(|x| x.ssrc);
        s.dave = self.dave.as_ref().map(|d| crate::dave::lock(d).status());
        s.speakers.extend(self.departed.iter().cloned());
        s
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tone(i: usize, hz: f32) -> Vec<i16> {
        (0..FRAME)
            .map(|k| {
                let t = (i * FRAME + k) as f32 / 48_000.0;
                ((t * hz * std::f32::consts::TAU).sin() * 8_000.0) as i16
            })
            .collect()
    }

    fn pair() -> (VoiceEngine, VoiceEngine, Instant) {
        let t0 = Instant::now();
        let key = [7u8; 32];
        let cfg = EngineConfig {
            voice_activity: false,
            ..Default::default()
        };
        let mode = CryptoMode::ALL[0];
        let a = VoiceEngine::new(t0, 11, mode, &key, cfg.clone()).unwrap();
        let b = VoiceEngine::new(t0, 13, mode, &key, cfg).unwrap();
        (a, b, t0)
    }

    /// Run `frames` frames of a 440 Hz tone from `a` to `b` over a perfect network; the
    /// energy `b` played out.
    fn talk(
        a: &mut VoiceEngine,
        b: &mut VoiceEngine,
        t0: Instant,
        from: usize,
        frames: usize,
    ) -> f64 {
        let mut energy = 0.0;
        let mut mix = [0i16; FRAME];
        for i in from..from + frames {
            let now = t0 + Duration::from_millis(20 * i as u64);
            if let Some(mut d) = a.capture(&tone(i, 440.0)).unwrap() {
                b.receive(now, &mut d);
            }
            b.playout(now, &mut mix, |_, _, _| {});
            energy += mix.iter().map(|s| (*s as f64).powi(2)).sum::<f64>();
        }
        energy / (frames * FRAME) as f64
    }

    #[test]
    fn a_tone_is_heard_and_mute_and_deafen_silence_it() {
        let (mut a, mut b, t0) = pair();
        b.set_user(11, 500);
        let heard = talk(&mut a, &mut b, t0, 0, 50);
        assert!(heard > 1e6, "the tone is played out: mean power {heard}");
        assert_eq!(a.take_speaking_change(), Some(true));
        let st = b.stats();
        assert_eq!(st.speakers.len(), 1);
        assert_eq!(st.speakers[0].user, Some(500));
        assert!(st.speakers[0].jitter.packets_received >= 49);

        a.controls.mute = true;
        let sent = a.stats().packets_sent;
        talk(&mut a, &mut b, t0, 50, 20);
        assert_eq!(
            a.stats().packets_sent,
            sent + 5,
            "five silence frames, then nothing"
        );
        assert_eq!(a.take_speaking_change(), Some(false));
        let muted = talk(&mut a, &mut b, t0, 70, 20);
        assert!(
            muted < 1.0,
            "nothing plays while the speaker is muted: {muted}"
        );

        a.controls.mute = false;
        b.controls.deaf = true;
        let deaf = talk(&mut a, &mut b, t0, 90, 30);
        assert_eq!(deaf, 0.0, "a deafened listener plays nothing");
        b.controls.deaf = false;
        b.set_volume(500, 0.0);
        let zero = talk(&mut a, &mut b, t0, 120, 30);
        assert_eq!(zero, 0.0, "volume 0 silences that user");
    }

    /// In a DAVE call whose group we are not in yet, our voice is held back, and plain
    /// voice from others is not played (the server could have made it up). Once the call is
    /// at version 0, both go plain again; an encrypted frame there is dropped and counted.
    #[test]
    fn an_end_to_end_encrypted_call_neither_sends_nor_plays_plain_voice() {
        use crate::dave::DaveMember;
        let (mut a, mut b, t0) = pair();
        b.set_user(11, 500);
        a.set_dave(Some(DaveMember::new(500, 1, 1).shared()));
        b.set_dave(Some(DaveMember::new(501, 1, 1).shared()));
        assert_eq!(talk(&mut a, &mut b, t0, 0, 10), 0.0);
        let st = a.stats();
        assert_eq!((st.packets_sent, st.frames_held_for_dave), (0, 10));
        assert_eq!(
            st.dave.map(|d| (d.protocol_version, d.in_group)),
            Some((1, false))
        );

        // A plain sender in the same DAVE call: its voice is refused.
        let (mut plain, _, _) = pair();
        let heard = talk(&mut plain, &mut b, t0, 10, 10);
        assert_eq!(heard, 0.0);
        assert_eq!(b.stats().packets_dave_dropped, 10);
        assert!(b.stats().speakers.is_empty());

        // A call at version 0: plain both ways.
        a.set_dave(Some(DaveMember::new(500, 1, 0).shared()));
        b.set_dave(Some(DaveMember::new(501, 1, 0).shared()));
        assert!(talk(&mut a, &mut b, t0, 20, 50) > 1e6);
        // Ciphertext, an 8-byte tag, nonce 5, the supplemental size (12) and the marker.
        let mut frame = vec![0x78, 1, 2, 3, 4, 5];
        frame.extend_from_slice(&[0xA5; 8]);
        frame.extend_from_slice(&[5, 12, 0xFA, 0xFA]);
        assert!(is_dave_frame(&frame));
        let mut d = TransportCipher::new(CryptoMode::ALL[0], &[7u8; 32])
            .seal_opus(11, 999, 96_000, false, &frame, 5);
        let dropped = b.stats().packets_dave_dropped;
        b.receive(t0 + std::time::Duration::from_secs(2), &mut d);
        assert_eq!(b.stats().packets_dave_dropped, dropped + 1);
    }

    #[test]
    fn garbage_and_foreign_keys_are_counted_not_played() {
        let (mut a, mut b, t0) = pair();
        let mut junk = vec![0x80u8; 40];
        b.receive(t0, &mut junk);
        let other = TransportCipher::new(CryptoMode::ALL[0], &[9u8; 32]);
        let mut forged = other.seal_opus(11, 1, 960, false, &[1, 2, 3, 4], 1);
        b.receive(t0, &mut forged);
        let mut short = vec![0x80u8; 3];
        b.receive(t0, &mut short);
        assert_eq!(b.stats().packets_undecryptable, 3);
        assert!(b.stats().speakers.is_empty());
        // Our own packets reflected back are not a speaker.
        let mut own = b.capture(&tone(0, 440.0)).unwrap().unwrap();
        b.receive(t0, &mut own);
        assert!(b.stats().speakers.is_empty());
        let _ = &mut a;
    }

    #[test]
    fn a_speaker_who_leaves_keeps_its_figures_and_late_packets_start_nothing() {
        let (mut a, mut b, t0) = pair();
        b.set_user(11, 500);
        talk(&mut a, &mut b, t0, 0, 50);
        let late = a.capture(&tone(50, 440.0)).unwrap().unwrap();
        b.user_gone(t0 + Duration::from_millis(1000), 500);
        let mut l = late.clone();
        b.receive(t0 + Duration::from_millis(1020), &mut l);
        let st = b.stats();
        assert_eq!(st.speakers.len(), 1, "{:?}", st.speakers);
        let s = &st.speakers[0];
        assert!(
            s.left && s.user == Some(500) && s.jitter.packets_received >= 49,
            "{s:?}"
        );
        // Named again (a rejoin under the same SSRC), it plays again.
        b.set_user(11, 500);
        let mut l = late;
        b.receive(t0 + Duration::from_millis(1040), &mut l);
        assert_eq!(b.stats().speakers.iter().filter(|s| !s.left).count(), 1);
    }

    #[test]
    fn push_to_talk_sends_only_while_pressed() {
        let (mut a, _, _) = pair();
        a.controls.push_to_talk = Some(false);
        for i in 0..10 {
            assert!(a.capture(&tone(i, 440.0)).unwrap().is_none());
        }
        a.controls.push_to_talk = Some(true);
        let first = a.capture(&tone(10, 440.0)).unwrap().expect("pressed: sent");
        let second = a.capture(&tone(11, 440.0)).unwrap().expect("still pressed");
        // RTP marker (byte 1, top bit): the first packet of the spurt only.
        assert_eq!(first[1] & 0x80, 0x80);
        assert_eq!(second[1] & 0x80, 0);
        let seq = |p: &[u8]| u16::from_be_bytes([p[2], p[3]]);
        let ts = |p: &[u8]| u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        assert_eq!(seq(&second), seq(&first).wrapping_add(1));
        assert_eq!(ts(&second), ts(&first).wrapping_add(FRAME as u32));
    }

    /// The node's answer to `sr` (as `lodge_sfu` builds it), `held_ms` after the SR arrived.
    fn answer(a: &VoiceEngine, sr: &mut [u8], fraction: u8, lost: i32, held_ms: u32) -> Vec<u8> {
        let key = [7u8; 32];
        let c = TransportCipher::new(CryptoMode::ALL[0], &key);
        let Some(Report::Sender(s)) = rtcp::open(&c, sr) else {
            panic!("not an SR");
        };
        assert_eq!(s.ssrc, a.ssrc());
        let b = rtcp::ReportBlock {
            ssrc: s.ssrc,
            fraction_lost: fraction,
            cumulative_lost: lost,
            highest_seq: 1000,
            jitter: 960,
            lsr: s.ntp_middle(),
            dlsr: held_ms * 65536 / 1000,
        };
        rtcp::seal_receiver_report(&c, 0, &b, 7)
    }

    #[test]
    fn receiver_reports_drive_the_bitrate_and_fec_and_show_the_uplink() {
        let (mut a, _, t0) = pair();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(
            a.poll_report(at(500)).is_none(),
            "the first SR after a second"
        );
        // A listener reports too: the answer measures the round trip (100 ms here), whose half
        // its playout takes as the path's delay, and does not move the encoder, which sent
        // nothing in that second.
        let start = a.stats();
        let mut sr = a
            .poll_report(at(1_000))
            .expect("an SR while only listening");
        let mut rr = answer(&a, &mut sr, 255, 0, 0);
        a.receive(at(1_100), &mut rr);
        let st = a.stats();
        assert_eq!(
            (st.target_bitrate_bps, st.fec, st.expected_loss_pct),
            (start.target_bitrate_bps, start.fec, start.expected_loss_pct),
            "{st:?}"
        );
        let owd = a.jitter.network_delay_ms.expect("the path delay");
        assert!((owd - 50.0).abs() < 0.1, "{owd}");
        let r = st.remote_inbound.unwrap();
        assert_eq!(
            (r.fraction_lost, r.reports_received),
            (0.0, 1),
            "a second without voice leaves the uplink's figures: {r:?}"
        );
        for i in 0..50 {
            a.capture(&tone(i, 440.0)).unwrap();
        }
        let mut sr = a
            .poll_report(at(2_000))
            .expect("an SR once a second while sending");
        assert!(a.poll_report(at(2_500)).is_none(), "not twice a second");
        let before = a.stats();
        assert_eq!(before.target_bitrate_bps, 32_000);
        // 25% lost, answered 10 ms after the SR arrived, back 50 ms after it left: a 40 ms
        // round trip.
        let mut rr = answer(&a, &mut sr, 64, 12, 10);
        let mut replayed = rr.clone();
        a.receive(at(2_050), &mut rr);
        let st = a.stats();
        let r = st.remote_inbound.expect("the report's figures");
        assert_eq!(r.fraction_lost, 0.25);
        assert_eq!(r.packets_lost, 12);
        assert_eq!(r.jitter_ms, 20.0);
        let rtt = r.round_trip_time_ms.expect("an RTT");
        assert!((rtt - 40.0).abs() < 0.5, "{rtt}");
        // Smoothed: a quarter of the way from 100 ms to 40 ms, halved.
        let owd = a.jitter.network_delay_ms.unwrap();
        assert!((owd - 42.5).abs() < 0.1, "{owd}");
        assert!(
            st.fec && st.expected_loss_pct >= 25,
            "FEC on against the loss: {st:?}"
        );
        assert!(
            st.target_bitrate_bps < 32_000,
            "heavy loss cuts the rate: {}",
            st.target_bitrate_bps
        );
        assert_eq!(st.packets_received, 0, "a report is not media");
        assert_eq!(st.packets_undecryptable, 0);
        // The same report again (a replay, or a duplicate): taken once only.
        a.receive(at(2_100), &mut replayed);
        assert_eq!(a.stats().remote_inbound.unwrap().reports_received, 2);

        // Clean reports for 30 s: the rate climbs back; FEC goes off once the smoothed loss
        // has stayed under 0.5% for 10 s (it decays by 0.8 a report: ~18 s from 25%).
        let cut = st.target_bitrate_bps;
        for k in 3..33u64 {
            for i in 0..50 {
                a.capture(&tone(i, 440.0)).unwrap();
            }
            let mut sr = a.poll_report(at(k * 1_000)).expect("an SR");
            let mut rr = answer(&a, &mut sr, 0, 12, 0);
            a.receive(at(k * 1_000 + 40), &mut rr);
        }
        let st = a.stats();
        assert!(
            st.target_bitrate_bps > cut,
            "{} after {cut}",
            st.target_bitrate_bps
        );
        assert!(!st.fec, "no loss for 30 s: FEC off");
        assert_eq!(st.remote_inbound.unwrap().reports_received, 32);

        // A forged report changes nothing; with adaptation off, reports only inform.
        let mut forged = rtcp::seal_receiver_report(
            &TransportCipher::new(CryptoMode::ALL[0], &[1; 32]),
            0,
            &rtcp::ReportBlock {
                ssrc: a.ssrc(),
                fraction_lost: 255,
                ..Default::default()
            },
            9,
        );
        a.receive(at(40_000), &mut forged);
        assert_eq!(a.stats().packets_undecryptable, 1);
        assert_eq!(a.stats().target_bitrate_bps, st.target_bitrate_bps);
        let cfg = EngineConfig {
            voice_activity: false,
            adaptive_bitrate: false,
            playout_from_rtt: false,
            ..Default::default()
        };
        let mut fixed = VoiceEngine::new(t0, 11, CryptoMode::ALL[0], &[7; 32], cfg).unwrap();
        fixed.capture(&tone(0, 440.0)).unwrap();
        let mut sr = fixed.poll_report(at(1_000)).unwrap();
        let mut rr = answer(&fixed, &mut sr, 128, 50, 0);
        fixed.receive(at(1_020), &mut rr);
        let st = fixed.stats();
        assert_eq!(st.remote_inbound.unwrap().fraction_lost, 0.5);
        assert_eq!(st.target_bitrate_bps, 32_000, "fixed: the rate stays");
        assert!(st.remote_inbound.unwrap().round_trip_time_ms.is_some());
        assert_eq!(
            fixed.jitter.network_delay_ms, None,
            "playout without the RTT"
        );
    }
}
