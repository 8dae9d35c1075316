//! The call's media, sans-IO: one 20 ms frame of capture in → at most one datagram out;
//! datagrams in → per-speaker playout; one frame of mixed playout out. Time is passed in, so
//! tests drive it with a simulated clock; the shell (`call.rs`) owns the socket and the ticks.

use std::collections::HashMap;
use std::time::Instant;

use lodge_codec::audio::Vad;
use lodge_codec::{EncoderSettings, OpusEncoder};
use lodge_jitter::{BufferConfig, JitterStats};
use lodge_sfu::native::{is_dave_frame, CryptoMode, TransportCipher};

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

/// How the engine encodes and plays out.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub encoder: EncoderSettings,
    pub jitter: BufferConfig,
    /// Send only while the voice activity detector hears speech (plus its hangover); off: send
    /// every frame while unmuted (a tone, a file).
    pub voice_activity: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            encoder: EncoderSettings::default(),
            jitter: BufferConfig::default(),
            voice_activity: true,
        }
    }
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
    /// DAVE frames (end-to-end encrypted voice) this client cannot decrypt yet: dropped.
    pub packets_dave_dropped: u64,
    pub speakers: Vec<SpeakerStats>,
}

#[derive(Debug, Clone)]
pub struct SpeakerStats {
    pub ssrc: u32,
    /// From the voice gateway's op 5; `None` until it names the SSRC.
    pub user: Option<u64>,
    pub jitter: JitterStats,
    pub target_delay_ms: f64,
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
        Ok(VoiceEngine {
            t0: now,
            ssrc,
            cipher: TransportCipher::new(mode, key),
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
            stats: CallStats::default(),
            frame: [0; FRAME],
            acc: [0; FRAME],
        })
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

    /// Whether we started or stopped talking since the last call (for the voice gateway's
    /// op 5).
    pub fn take_speaking_change(&mut self) -> Option<bool> {
        self.speaking_changed.take()
    }

    /// One datagram from the node. Anything that does not open under the key is dropped and
    /// counted; a valid packet goes into its speaker's buffer.
    pub fn receive(&mut self, now: Instant, datagram: &mut [u8]) {
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
        if is_dave_frame(opus) {
            self.stats.packets_dave_dropped += 1;
            return;
        }
        if self.gone.get(&ssrc).is_some_and(|t| now_ms - t < GONE_MS) {
            return;
        }
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
        SpeakerStats {
            ssrc,
            user: self.users.get(&ssrc).copied(),
            jitter: p.stats(),
            target_delay_ms: p.target_delay_ms(),
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

    /// One 20 ms frame of playout: each speaker's decoded frame goes to `each` (SSRC, user,
    /// samples: for per-speaker recording), their sum at each user's volume into `mix`.
    /// Deafened: `mix` is silence (`each` still sees what arrives).
    pub fn playout(
        &mut self,
        now: Instant,
        mix: &mut [i16; FRAME],
        mut each: impl FnMut(u32, Option<u64>, &[i16]),
    ) {
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
            if !p.pull(now_ms, &mut self.frame) {
                continue;
            }
            let user = self.users.get(ssrc).copied();
            each(*ssrc, user, &self.frame);
            let gain = user
                .and_then(|u| self.volumes.get(&u))
                .copied()
                .unwrap_or(1.0);
            for (a, s) in self.acc.iter_mut().zip(self.frame.iter()) {
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
}
