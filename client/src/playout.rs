//! One remote speaker's playout: Lodge's adaptive jitter buffer, an Opus decoder, and time
//! stretching on the decoded audio.
//!
//! The buffer decides what each step plays (packet, in-band FEC, PLC, silence) and when to
//! lengthen or shorten. Here, with the PCM at hand, lengthening repeats whole pitch periods and
//! shortening removes them (`stretch.rs`) instead of playing a concealment frame or dropping a
//! packet outright; where the audio is not periodic enough it falls back to exactly that. So a
//! step yields a variable amount of audio, which goes through a small queue from which each
//! tick (10 ms in a call) takes its share.
//!
//! The buffer decides when the queue runs short, so its decisions fall on the ticks, once per
//! frame, at a phase to the packets' arrival that a call keeps from its start: a packet that
//! arrives just after a decision waits almost a frame before the next one counts it. With ticks
//! shorter than a frame the playout can choose between phases: when every packet over the last
//! second had been waiting a whole tick by the time it was counted, queued audio is removed by
//! whole periods (as acceleration), as much as moves the next decision exactly one tick
//! earlier (no period count fits: no move). Each decision then sees the packets it would have
//! seen a tick later, sooner.
//!
//! The same move is made when the buffer's level was over its target by a tick at every
//! decision for a second (with any tick, a frame too): an excess a passing spike left, which
//! the buffer itself would give back only 2.5 frames over (it drops a frame of speech no
//! sooner). A jittery path's swings, which the target is there to absorb, break the run.

use std::collections::VecDeque;

use lodge_codec::OpusDecoder;
use lodge_jitter::{BufferConfig, JitterBuffer, JitterStats, Pulled};

use crate::error::ClientError;
use crate::stretch;

/// Samples in one 20 ms mono frame at 48 kHz.
pub const FRAME: usize = 960;
/// How much recent audio the stretcher looks at (30 ms).
const HISTORY: usize = 1440;
/// Buffer steps per tick at most (a tick after an acceleration that removed little may need
/// two; more means something is wrong, and the tick plays what it has).
const MAX_STEPS: usize = 3;

/// Frames in a row over which a phase shift looks at the packets' waits (1 s).
const PHASE_WINDOW: u32 = 50;
/// What each of those waits must exceed a tick by (ms): the ticks' own timing wobbles.
const PHASE_MARGIN_MS: f64 = 1.0;

/// Decisions after a declined move (the audio was not periodic) before the next try, its run
/// kept meanwhile.
const RETRY_AFTER: u32 = 5;
const _: () = assert!(RETRY_AFTER < PHASE_WINDOW);

/// Opus in VBR spends bytes on sound: a frame this small is a pause or near silence, where
/// the buffer may drop or stretch first (native clients send no audio-level header; the node
/// ranks them by packet size the same way).
const LOW_ENERGY_BYTES: usize = 24;

fn low_energy(opus: &[u8]) -> bool {
    opus.len() <= LOW_ENERGY_BYTES
}

pub struct SpeakerPlayout {
    jb: JitterBuffer,
    dec: OpusDecoder,
    /// Decoded audio not played yet.
    queue: VecDeque<i16>,
    /// The last `HISTORY` samples put into the queue.
    hist: Vec<i16>,
    /// When the last packet arrived (ms on the engine's clock).
    pub last_packet_ms: f64,
    /// Frames that did not decode (a corrupt packet): played as silence.
    pub decode_errors: u64,
    /// What was really inserted and removed (whole periods, or whole frames on fallback).
    inserted: u64,
    removed: u64,
    /// Decelerations played as PLC (the audio was not periodic): concealment, as NetEq counts
    /// synthetic audio; the buffer counted them as plain frames.
    plc_inserted: u64,
    /// Time played samples waited in the queue, summed per sample (s): the output side's
    /// wait, kept apart from the buffer's (see [`SpeakerPlayout::stats`]).
    queue_delay_s: f64,
    /// Samples taken from the queue (what `queue_delay_s` is summed over).
    queue_samples: u64,
    scratch: Vec<i16>,
    scratch2: Vec<i16>,
    /// Samples the last pull took (the tick).
    tick: usize,
    /// Frames decided in a row so far, and the least time the newest packet had waited at
    /// any of those decisions (ms).
    phase_run: u32,
    phase_min_wait_ms: f64,
    /// The least excess of the buffer's level over its target at those decisions (ms).
    phase_min_excess_ms: f64,
    /// Times the decisions were moved a tick earlier.
    pub phase_shifts: u64,
    /// Whether a level over the target moves them too (off only in tests, to compare).
    level_moves: bool,
}

/// RMS below which audio counts as quiet: about -50 dBFS, well under speech and under the
/// comfort noise of most capture chains.
const QUIET_RMS: f64 = 100.0;

/// Whether `x` is quiet (see [`QUIET_RMS`]); an empty slice is.
fn quiet(x: &[i16]) -> bool {
    let e: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    e <= QUIET_RMS * QUIET_RMS * x.len() as f64
}

impl SpeakerPlayout {
    pub fn new(cfg: BufferConfig, now_ms: f64) -> Result<SpeakerPlayout, ClientError> {
        let mut jb = JitterBuffer::new(cfg);
        jb.keep_accelerated(true);
        Ok(SpeakerPlayout {
            jb,
            dec: OpusDecoder::new(false)?,
            queue: VecDeque::with_capacity(4 * FRAME),
            hist: Vec::with_capacity(HISTORY + 2 * FRAME),
            last_packet_ms: now_ms,
            decode_errors: 0,
            inserted: 0,
            removed: 0,
            plc_inserted: 0,
            queue_delay_s: 0.0,
            queue_samples: 0,
            scratch: vec![0; FRAME],
            scratch2: vec![0; FRAME],
            tick: FRAME,
            phase_run: 0,
            phase_min_wait_ms: 0.0,
            phase_min_excess_ms: 0.0,
            phase_shifts: 0,
            level_moves: true,
        })
    }

    pub fn insert(&mut self, now_ms: f64, seq: u16, rtp_ts: u32, opus: &[u8]) {
        self.last_packet_ms = now_ms;
        self.jb
            .insert_frame(now_ms, seq, rtp_ts, opus.to_vec(), low_energy(opus));
    }

    /// Fill `out` (one tick: at most a frame) with what plays now; false while the buffer is
    /// still filling (then `out` is silence).
    pub fn pull(&mut self, now_ms: f64, out: &mut [i16]) -> bool {
        let tick = out.len().min(FRAME);
        self.tick = tick;
        let mut steps = 0;
        while self.queue.len() < tick && steps < MAX_STEPS {
            steps += 1;
            if !self.step(now_ms) {
                break;
            }
        }
        if self.queue.is_empty() {
            out.fill(0);
            return false;
        }
        let n = self.queue.len().min(tick);
        for (o, s) in out.iter_mut().zip(self.queue.drain(..n)) {
            *o = s;
        }
        out[n..].fill(0);
        self.queue_samples += n as u64;
        // What stays queued waits one more tick.
        self.queue_delay_s += self.queue.len() as f64 / 48_000.0 * tick as f64;
        true
    }

    /// One buffer decision turned into audio on the queue; false while the buffer waits.
    fn step(&mut self, now_ms: f64) -> bool {
        // The buffer steers its level, this queue's leftovers included, to its target: what
        // whole-period stretching leaves over a frame boundary is won back by its own
        // acceleration, not trimmed behind its back.
        self.jb.set_queued_ms(self.queue.len() as f64 / 48.0);
        let pulled = self.jb.pull(now_ms);
        let dropped_one = self.jb.take_accelerated();
        // A packet's frame, played as decided, continues the run a phase move looks at;
        // anything else ends it (a dropped frame changes the decisions' timing, so the waits
        // seen so far are the old phase's).
        let steady = matches!(pulled, Pulled::Frame { .. }) && dropped_one.is_none();
        if !steady {
            self.phase_run = 0;
        }
        if let Some((_, dropped)) = dropped_one {
            // Decoded so the decoder stays continuous, then shortened by whole periods where
            // that joins cleanly; else dropped as the buffer would. What is still queued (not
            // played yet) is shortened with it, aiming to leave nothing over a frame boundary,
            // so the queue adds no lasting delay.
            let mut a = std::mem::take(&mut self.scratch2);
            if matches!(self.dec.decode(&dropped, &mut a), Ok(FRAME)) {
                let want = FRAME + self.queue.len();
                if !self.shorten_with_queue(&a, |h, s| stretch::shorten(h, s, want)) {
                    self.removed += FRAME as u64;
                }
            } else {
                self.removed += FRAME as u64;
            }
            self.scratch2 = a;
        }
        let mut f = std::mem::take(&mut self.scratch);
        let r = match &pulled {
            Pulled::Waiting => {
                self.scratch = f;
                return false;
            }
            Pulled::Frame { payload, .. } => self.dec.decode(payload, &mut f),
            Pulled::Fec { next_payload, .. } => self.dec.decode_fec(next_payload, &mut f),
            Pulled::Stretch if self.jb.decelerated() => {
                // Lengthen by whole periods of what just played; the decoder is not run, so
                // its next frame joins the end of the insertion as it would have joined `hist`.
                // Less when audio is still queued (it already lengthens the playout).
                let want = FRAME.saturating_sub(self.queue.len());
                match stretch::expand(&self.hist, want) {
                    Some(ins) => {
                        self.inserted += ins.len() as u64;
                        self.push(&ins);
                        self.scratch = f;
                        return true;
                    }
                    None => {
                        // No period to repeat: a frame of PLC. Synthetic audio in speech is
                        // concealment, as NetEq counts it; in a quiet passage (the usual reason
                        // there is no period) the frame made up is as quiet, and not heard.
                        self.inserted += FRAME as u64;
                        let r = self.dec.conceal(&mut f);
                        let before = &self.hist[self.hist.len().saturating_sub(FRAME)..];
                        if !(matches!(r, Ok(FRAME)) && quiet(before) && quiet(&f)) {
                            self.plc_inserted += FRAME as u64;
                        }
                        r
                    }
                }
            }
            Pulled::Conceal { .. } | Pulled::Stretch => self.dec.conceal(&mut f),
            Pulled::Silence => {
                f.fill(0);
                Ok(FRAME)
            }
        };
        if !matches!(r, Ok(FRAME)) {
            self.decode_errors += 1;
            f.fill(0);
        }
        self.push(&f);
        self.scratch = f;
        if steady {
            self.steer_phase(now_ms);
        }
        true
    }

    /// After a packet's frame was decided, note how long the newest packet had been waiting
    /// and how far the buffer's level was over its target. Once a second of frames all had a
    /// tick to spare by either, remove queued audio by whole periods so that the next decision
    /// comes exactly one tick earlier: more than the queue holds beyond whole ticks, and at most
    /// a tick more than that (with ticks shorter than a frame, more would take a second
    /// decision in this very tick; with a frame's tick the next decision comes at once, in
    /// this tick, which is the tick earlier).
    /// - By the wait (ticks shorter than a frame only): a tick earlier, every decision would
    ///   have seen the same packets, so only the delay changes.
    /// - By the level: the buffer held more than a tick over its target at every decision, an
    ///   excess a spike that passed left behind (its own acceleration drops a frame of speech
    ///   only 2.5 frames over). The cut is also at most that least excess, so the level stays
    ///   at or above the target, where no deceleration starts: the two cannot feed each other.
    fn steer_phase(&mut self, now_ms: f64) {
        let wait = now_ms - self.last_packet_ms;
        let excess = self.jb.level_over_target_ms().unwrap_or(0.0);
        if self.phase_run == 0 {
            (self.phase_min_wait_ms, self.phase_min_excess_ms) = (wait, excess);
        } else {
            self.phase_min_wait_ms = self.phase_min_wait_ms.min(wait);
            self.phase_min_excess_ms = self.phase_min_excess_ms.min(excess);
        }
        self.phase_run += 1;
        if self.phase_run < PHASE_WINDOW {
            return;
        }
        let spare = self.tick as f64 / 48.0 + PHASE_MARGIN_MS;
        let by_wait = self.tick < FRAME && self.phase_min_wait_ms >= spare;
        let by_level = self.level_moves && self.phase_min_excess_ms >= spare;
        if !by_wait && !by_level {
            self.phase_run = 0;
            return;
        }
        let over = self.queue.len() % self.tick;
        let mut at_most = over + self.tick;
        if !by_wait {
            // The least excess is over a tick and the leftover under one: this still moves.
            at_most = at_most.min((self.phase_min_excess_ms * 48.0) as usize);
        }
        let before = self.queue.len();
        if self.shorten_with_queue(&[], |h, s| stretch::shorten_between(h, s, over, at_most)) {
            self.phase_shifts += 1;
            self.phase_run = 0;
            // The buffer's averaged level follows at once, as after its own drop.
            self.jb
                .note_shortened((before - self.queue.len()) as f64 / 48.0);
        } else {
            // Declined (the audio is not periodic here, or no period count fits): the run is
            // kept, and five decisions on, if they still had the tick to spare, it tries again.
            self.phase_run -= RETRY_AFTER;
        }
    }

    /// What is still queued (not played yet) followed by `next`, shortened by `shorten` (given
    /// what played before it and the segment), and queued in its place. False (nothing
    /// changed) where `shorten` declines.
    fn shorten_with_queue(
        &mut self,
        next: &[i16],
        shorten: impl FnOnce(&[i16], &[i16]) -> Option<Vec<i16>>,
    ) -> bool {
        let q = self.queue.len();
        let mut seg: Vec<i16> = self.queue.iter().copied().collect();
        seg.extend_from_slice(next);
        let cut = self.hist.len() - q.min(self.hist.len());
        let Some(short) = shorten(&self.hist[..cut], &seg) else {
            return false;
        };
        self.removed += (seg.len() - short.len()) as u64;
        self.queue.clear();
        self.hist.truncate(cut);
        self.push(&short);
        true
    }

    fn push(&mut self, samples: &[i16]) {
        self.queue.extend(samples.iter().copied());
        self.hist.extend_from_slice(samples);
        if self.hist.len() > HISTORY {
            self.hist.drain(..self.hist.len() - HISTORY);
        }
    }

    /// The buffer's figures, with the stretching counted as it really happened.
    ///
    /// The playout delay (`jitter_buffer_delay`) is counted as WebRTC counts it: each packet's
    /// wait from arrival until it is decoded, times its samples. Decoded audio waiting in the
    /// queue for its tick is not in it, as NetEq's sync buffer is not in NetEq's; that wait is
    /// [`SpeakerPlayout::queue_delay`].
    pub fn stats(&self) -> JitterStats {
        let mut s = self.jb.stats().clone();
        s.inserted_samples_for_deceleration = self.inserted;
        s.removed_samples_for_acceleration = self.removed;
        s.concealed_samples += self.plc_inserted;
        s
    }

    /// The time decoded samples waited in the queue before their tick took them, summed per
    /// sample (s), and the samples taken: with 10 ms ticks, half of every frame waits one tick.
    pub fn queue_delay(&self) -> (f64, u64) {
        (self.queue_delay_s, self.queue_samples)
    }

    pub fn target_delay_ms(&self) -> f64 {
        self.jb.target_delay_ms()
    }

    /// The path's one-way delay to the node changed (ms; `None`: unknown).
    pub fn set_network_delay_ms(&mut self, ms: Option<f64>) {
        self.jb.set_network_delay_ms(ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_codec::{EncoderSettings, OpusEncoder};

    /// 20 ms frames of a 210 Hz voice-like tone, Opus-encoded.
    fn packets(n: usize) -> Vec<Vec<u8>> {
        packets_at(n, 210.0)
    }

    /// 20 ms frames of a voice-like tone at `hz`, Opus-encoded.
    fn packets_at(n: usize, hz: f64) -> Vec<Vec<u8>> {
        let mut enc = OpusEncoder::new(EncoderSettings::default()).unwrap();
        (0..n)
            .map(|f| {
                let pcm: Vec<i16> = (f * FRAME..(f + 1) * FRAME)
                    .map(|i| {
                        let t = i as f64 / 48_000.0 * hz * std::f64::consts::TAU;
                        (7000.0 * t.sin() + 2000.0 * (2.0 * t).sin()) as i16
                    })
                    .collect();
                enc.encode(&pcm).unwrap().to_vec()
            })
            .collect()
    }

    fn max_step(x: &[i16]) -> i32 {
        x.windows(2)
            .map(|w| (w[1] as i32 - w[0] as i32).abs())
            .max()
            .unwrap()
    }

    /// Packets arrive 100 ms after they were sent, except a group of five every 25 that comes
    /// at once (the path's fastest): each group lifts the level well over the target, so the
    /// buffer accelerates, and the packets after it leave the level under the target while
    /// they keep coming, so it decelerates. No packet is lost or too late for its turn: the
    /// played audio stays as smooth as the clean decode, and what was inserted and removed is
    /// counted in whole periods rather than whole frames.
    #[test]
    fn bursts_are_absorbed_by_whole_periods_without_clicks() {
        let pk = packets(400);
        let mut p = SpeakerPlayout::new(BufferConfig::default(), 0.0).unwrap();
        let mut played = Vec::new();
        let mut frame = [0i16; FRAME];
        let arrival = |k: usize| {
            let sent = k as f64 * 20.0;
            if k > 50 && k % 25 < 5 {
                sent
            } else {
                sent + 100.0
            }
        };
        let mut order: Vec<usize> = (0..pk.len()).collect();
        order.sort_by(|&a, &b| arrival(a).total_cmp(&arrival(b)));
        let mut next = 0usize;
        for tick in 0..420usize {
            let now = tick as f64 * 20.0;
            while next < order.len() && arrival(order[next]) <= now {
                let k = order[next];
                p.insert(now, k as u16, (k * FRAME) as u32, &pk[k]);
                next += 1;
            }
            if p.pull(now, &mut frame) {
                played.extend_from_slice(&frame);
            }
        }
        let s = p.stats();
        assert!(s.removed_samples_for_acceleration > 0, "{s:?}");
        assert!(s.inserted_samples_for_deceleration > 0, "{s:?}");
        // 210 Hz: whole periods are 228 or 229 samples, so the counts are not whole frames.
        assert!(
            !s.removed_samples_for_acceleration
                .is_multiple_of(FRAME as u64)
                || s.removed_samples_for_acceleration < FRAME as u64,
            "removed in periods, not only whole frames: {}",
            s.removed_samples_for_acceleration
        );
        // Smoothness: after the start (skip the first 200 ms of decoder warm-up), no step
        // larger than 1.3x the clean signal's largest.
        let clean: Vec<i16> = (0..48_000)
            .map(|i| {
                let t = i as f64 / 48_000.0 * 210.0 * std::f64::consts::TAU;
                (7000.0 * t.sin() + 2000.0 * (2.0 * t).sin()) as i16
            })
            .collect();
        let own = max_step(&clean);
        let body = &played[9600..played.len() - 9600];
        assert!(
            max_step(body) < own * 13 / 10,
            "largest step {} against the signal's {own}",
            max_step(body)
        );
    }

    /// The same bursts over a quiet passage: there is no period to repeat, so deceleration
    /// inserts PLC frames, which are as quiet as what they lengthen: stretching, not
    /// concealment (nothing was lost). Over a tone the same inserted PLC would be concealment.
    #[test]
    fn decelerating_through_quiet_is_not_concealment() {
        let mut enc = OpusEncoder::new(EncoderSettings::default()).unwrap();
        // Faint noise (±20, about -66 dBFS): nothing periodic to repeat.
        let mut x = 12345u32;
        let mut hush = || -> Vec<i16> {
            (0..FRAME)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    ((x >> 16) % 41) as i16 - 20
                })
                .collect()
        };
        let pk: Vec<Vec<u8>> = (0..400)
            .map(|_| enc.encode(&hush()).unwrap().to_vec())
            .collect();
        let mut p = SpeakerPlayout::new(BufferConfig::default(), 0.0).unwrap();
        let mut frame = [0i16; FRAME];
        let mut next = 0usize;
        for tick in 0..420usize {
            let now = tick as f64 * 20.0;
            let due = (tick + 1).min(pk.len());
            if !(tick % 25 < 10 && tick > 50) {
                while next < due {
                    p.insert(now, next as u16, (next * FRAME) as u32, &pk[next]);
                    next += 1;
                }
            }
            p.pull(now, &mut frame);
        }
        let s = p.stats();
        // Whole PLC frames only: no period was found to repeat.
        let ins = s.inserted_samples_for_deceleration;
        assert!(
            ins >= FRAME as u64 && ins.is_multiple_of(FRAME as u64),
            "{s:?}"
        );
        assert_eq!(p.plc_inserted, 0, "{s:?}");
        assert!(quiet(&hush()) && !quiet(&[7000i16; FRAME]));
    }

    /// What [`played_from`] measured (for [`paced`], its last 20 s).
    struct Paced {
        /// The packets' wait until decoded (ms, as WebRTC counts jitterBufferDelay).
        delay: f64,
        /// The delay to the ear: that wait, the decoded audio's in the queue, and half a tick
        /// (a tick's samples play out over the next tick), ms.
        ear: f64,
        concealed: f64,
        shifts: u64,
        /// Samples inserted by deceleration, and samples concealed.
        inserted: u64,
        concealed_n: u64,
    }

    /// 40 s of packets every 20 ms of a tone at `hz`, arriving `phase_ms` after a tick
    /// (`step_ms` sooner from 20 s on: a shorter route) plus up to `jitter_ms` of uniform
    /// lateness, pulled in ticks of `tick` samples.
    fn paced(hz: f64, phase_ms: f64, step_ms: f64, jitter_ms: f64, tick: usize) -> Paced {
        let mut x = 99u32;
        let arrivals = (0..2000)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let late = (x >> 16) as f64 / 65_536.0 * jitter_ms;
                let sooner = if i >= 1000 { step_ms } else { 0.0 };
                i as f64 * 20.0 + phase_ms - sooner + late
            })
            .collect();
        played_from(hz, arrivals, tick, true, 20_000.0)
    }

    /// 40 s of a tone at `hz` whose `i`th packet arrives at `arrivals[i]` (ms), pulled in ticks
    /// of `tick` samples, with or without moves for a level over the target, measured from
    /// `from_ms` on.
    fn played_from(
        hz: f64,
        arrivals: Vec<f64>,
        tick: usize,
        level_moves: bool,
        from_ms: f64,
    ) -> Paced {
        let pk = packets_at(arrivals.len(), hz);
        let mut arrivals: Vec<(f64, usize)> = arrivals.into_iter().zip(0..).collect();
        arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut p = SpeakerPlayout::new(BufferConfig::default(), 0.0).unwrap();
        p.level_moves = level_moves;
        let mut out = vec![0i16; tick];
        let tick_ms = tick as f64 / 48.0;
        let mut next = 0;
        let mut half = None;
        for t in 0..(40_000.0 / tick_ms) as usize {
            let now = t as f64 * tick_ms;
            if half.is_none() && now >= from_ms {
                half = Some((p.stats(), p.queue_delay()));
            }
            while next < arrivals.len() && arrivals[next].0 <= now {
                let (at, i) = arrivals[next];
                p.insert(at, i as u16, (i * FRAME) as u32, &pk[i]);
                next += 1;
            }
            p.pull(now, &mut out);
        }
        let ((a, (qa, na)), b, (qb, nb)) = (half.unwrap(), p.stats(), p.queue_delay());
        let emitted = (b.jitter_buffer_emitted_count - a.jitter_buffer_emitted_count) as f64;
        let delay = (b.jitter_buffer_delay - a.jitter_buffer_delay) / emitted * 1e3;
        let queue = (qb - qa) / (nb - na) as f64 * 1e3;
        Paced {
            delay,
            ear: delay + queue + tick_ms / 2.0,
            concealed: (b.concealed_samples - a.concealed_samples) as f64
                / (b.total_samples_received - a.total_samples_received) as f64,
            shifts: p.phase_shifts,
            inserted: b.inserted_samples_for_deceleration - a.inserted_samples_for_deceleration,
            concealed_n: b.concealed_samples - a.concealed_samples,
        }
    }

    /// Decisions once per 20 ms tick meet each packet at a phase the call keeps from its start:
    /// after the route shortens by 10 ms, each packet waits 10 ms longer before it counts. With
    /// 10 ms ticks the playout moves its decisions a tick earlier once every packet had a tick
    /// to spare, by removing whole periods that move the next decision by exactly one tick;
    /// voices of several pitches, the lowest with a period longer than a tick (a move fits
    /// only where the queue's leftover allows). On a path whose lateness uses the slack, it
    /// stays put.
    #[test]
    fn with_half_frame_ticks_the_decisions_move_to_meet_the_packets() {
        for hz in [95.0, 170.0, 195.0, 210.0] {
            for phase in [1.0, 7.0, 13.0, 19.0] {
                let whole = paced(hz, phase, 10.0, 0.0, FRAME);
                let half = paced(hz, phase, 10.0, 0.0, FRAME / 2);
                eprintln!(
                    "{hz} Hz, phase {phase} ms: 20 ms ticks {:.1} ms (ear {:.1}), 10 ms ticks {:.1} ms (ear {:.1}, {} moves)",
                    whole.delay, whole.ear, half.delay, half.ear, half.shifts
                );
                let at = format!("{hz} Hz, phase {phase} ms");
                assert_eq!((whole.concealed, half.concealed), (0.0, 0.0), "{at}");
                // A steady path: the level is one frame (20 ms), plus a wait under a tick and
                // the margin once moved.
                if hz > 100.0 {
                    assert!(half.shifts >= 1, "{at}");
                    assert!(half.delay < 20.0 + 11.5, "{at}: {:.1}", half.delay);
                }
                // No move may trade the packets' wait for a longer one in the queue.
                assert!(
                    half.ear <= whole.ear + 0.5,
                    "{at}: ear {:.1} against {:.1}",
                    half.ear,
                    whole.ear
                );
            }
        }
        // Lateness of up to 15 ms: the waits' minimum has no tick to spare, so no move, and
        // nothing more concealed than with whole-frame ticks.
        let whole = paced(210.0, 3.0, 0.0, 15.0, FRAME);
        let half = paced(210.0, 3.0, 0.0, 15.0, FRAME / 2);
        assert_eq!(half.shifts, 0);
        assert!(half.concealed <= whole.concealed + 0.0005);
    }

    /// A steady path stalls for 70 ms at 10 s and then delivers what it held at once: the
    /// buffer, low in target on a steady path, is left holding 3.5 frames beyond it, and
    /// drops speech only while 2.5 frames over. Moving the decisions a tick earlier while the
    /// level stays a tick over the target brings it back without concealing (with 20 ms ticks
    /// too, a frame at a time).
    #[test]
    fn after_a_stall_moves_by_the_level_bring_it_back() {
        let arrivals = |phase: f64| -> Vec<f64> {
            (0..2000)
                .map(|i| {
                    let sent = i as f64 * 20.0 + phase;
                    if (500..504).contains(&i) {
                        500.0 * 20.0 + phase + 70.0
                    } else {
                        sent
                    }
                })
                .collect()
        };
        for tick in [FRAME, FRAME / 2] {
            for phase in [2.0, 11.0] {
                // Measured from 9 s: the stall, the burst and the moves after it.
                let kept = played_from(210.0, arrivals(phase), tick, false, 9_000.0);
                let cut = played_from(210.0, arrivals(phase), tick, true, 9_000.0);
                eprintln!(
                    "tick {tick}, phase {phase}: without level moves {:.1} ms (ear {:.1}), with {:.1} ms (ear {:.1}, {} moves, {} samples inserted against {})",
                    kept.delay, kept.ear, cut.delay, cut.ear, cut.shifts, cut.inserted, kept.inserted
                );
                let at = format!("tick {tick}, phase {phase}");
                assert!(cut.concealed_n <= kept.concealed_n, "{at}");
                assert!(cut.shifts >= 1, "{at}");
                assert!(cut.delay <= kept.delay - 25.0, "{at}");
                assert!(cut.ear <= kept.ear - 20.0, "{at}");
                // No move took the level under its target: nothing more was lengthened.
                assert!(cut.inserted <= kept.inserted, "{at}");
            }
        }
    }

    /// Stretched and concealed shares of 60 s through a profile's impairment, with the
    /// buffer deciding on an averaged or an instantaneous level.
    fn through(profile: lodge_jitter::Profile, level_filter_frames: u32) -> (f64, f64) {
        let (s, _, _) = through_ticks(profile, 7, level_filter_frames, FRAME);
        let n = s.total_samples_received as f64;
        (
            (s.inserted_samples_for_deceleration + s.removed_samples_for_acceleration) as f64 / n,
            s.concealed_samples as f64 / n,
        )
    }

    /// 60 s through a profile's impairment in ticks of `tick` samples: the stats and the
    /// playout's phase shifts.
    fn through_ticks(
        profile: lodge_jitter::Profile,
        seed: u64,
        level_filter_frames: u32,
        tick: usize,
    ) -> (JitterStats, u64, f64) {
        let pk = packets(3000);
        let mut imp = lodge_jitter::Impairment::new(profile, seed);
        let mut arrivals: Vec<(f64, usize)> = Vec::new();
        for (i, p) in pk.iter().enumerate() {
            let sent = std::time::Duration::from_millis(20 * i as u64);
            for a in imp.send(sent, p.len() + 40) {
                arrivals.push((a.as_secs_f64() * 1e3, i));
            }
        }
        arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
        let cfg = BufferConfig {
            level_filter_frames,
            ..BufferConfig::default()
        };
        let mut p = SpeakerPlayout::new(cfg, 0.0).unwrap();
        let mut out = vec![0i16; tick];
        let tick_ms = tick as f64 / 48.0;
        let mut next = 0;
        // The ticks' phase to the sender's frames, different per seed (7 ms for seed 7).
        let offset = (seed as f64 * 20.0 / 7.0 + 7.0) % 20.0;
        for t in 0..(62_000.0 / tick_ms) as usize {
            let now = t as f64 * tick_ms + offset;
            while next < arrivals.len() && arrivals[next].0 <= now {
                let (at, i) = arrivals[next];
                p.insert(at, i as u16, (i * FRAME) as u32, &pk[i]);
                next += 1;
            }
            p.pull(now, &mut out);
        }
        let st = p.stats();
        let queue_ms = p.queue_delay_s / p.queue_samples.max(1) as f64 * 1e3;
        (st, p.phase_shifts, queue_ms)
    }

    /// On jittery paths, 10 ms ticks against whole-frame ones (the ticks' phase to the sender
    /// differs per seed): no more concealment, and an E-model estimate at least as good (less
    /// delay, or less concealment that is worth the delay). The ear's delay is the packet's
    /// wait until decoded, the decoded audio's wait in the queue, and half a tick (a tick's
    /// samples play out over the next tick), on top of the path and the codec.
    #[test]
    fn on_jittery_paths_half_frame_ticks_conceal_no_more_and_score_no_lower() {
        let seeds = 1..=3u64;
        for profile in [
            lodge_jitter::Profile::BUSY_WIFI,
            lodge_jitter::Profile::HANDOVER_4G,
            lodge_jitter::Profile::CONGESTED_3G,
            lodge_jitter::Profile::BURSTY_3,
        ] {
            let name = profile.name;
            let mut sum = [(0.0, 0.0); 2];
            let mut shifts = 0;
            for seed in seeds.clone() {
                for (k, tick) in [FRAME, FRAME / 2].into_iter().enumerate() {
                    let (st, sh, queue_ms) = through_ticks(profile.clone(), seed, 32, tick);
                    let ear = st.mean_delay_ms() + queue_ms + tick as f64 / 96.0;
                    sum[k].0 += ear / 3.0;
                    sum[k].1 += st.concealment_ratio() * 100.0 / 3.0;
                    shifts += sh;
                }
            }
            let [(we, wc), (he, hc)] = sum;
            let mos = |playout: f64, concealed: f64| {
                lodge_jitter::mos_estimate(&lodge_jitter::QualityInput::opus(
                    profile.base_delay_ms + playout + 26.5,
                    concealed,
                ))
            };
            let (wm, hm) = (mos(we, wc), mos(he, hc));
            eprintln!(
                "{name}: 20 ms ticks: ear {we:.1} ms, concealed {wc:.3}%, MOS {wm:.3} | 10 ms ticks: {he:.1} ms, {hc:.3}%, {hm:.3} ({shifts} moves)"
            );
            assert!(
                hc <= wc + 0.05,
                "{name}: concealed {hc:.3}% against {wc:.3}%"
            );
            assert!(hm >= wm - 0.005, "{name}: MOS {hm:.3} against {wm:.3}");
        }
    }

    #[test]
    fn on_jittery_paths_little_is_stretched_and_an_averaged_level_stretches_less() {
        for profile in [
            lodge_jitter::Profile::BUSY_WIFI,
            lodge_jitter::Profile::HANDOVER_4G,
        ] {
            let name = profile.name;
            let (avg_s, avg_c) = through(profile.clone(), 32);
            let (inst_s, inst_c) = through(profile, 1);
            eprintln!(
                "{name}: averaged level: stretched {:.2}%, concealed {:.2}% | instantaneous: {:.2}%, {:.2}%",
                avg_s * 100.0,
                avg_c * 100.0,
                inst_s * 100.0,
                inst_c * 100.0
            );
            // Before the buffer counted this queue (the client trimmed it instead), 3–6% of
            // the audio in this simulation was stretched (5–13% in the NetEq comparison): the
            // trim and the buffer's decelerations fed each other.
            assert!(avg_s < 0.015, "{name}: stretched {:.2}%", avg_s * 100.0);
            assert!(avg_s < inst_s, "{name}: the averaged level stretches less");
            assert!(avg_c <= inst_c + 0.0005, "{name}: for no more concealment");
        }
    }
}
