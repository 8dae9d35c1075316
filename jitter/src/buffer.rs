//! The adaptive playout buffer. Sans-IO: `insert(now, …)` when a packet arrives, `pull(now)`
//! once per frame; `now` is always passed in.
//!
//! What `pull` decides, in order:
//! 1. Not started: wait until the first packet has been buffered for the target delay.
//! 2. Too much audio buffered (above target by more than a frame): drop a frame
//!    (acceleration), preferably one flagged low-energy.
//! 3. Too little (below target by more than a frame) while audio is waiting: stretch (play a
//!    concealment-like frame without consuming), preferably before a low-energy frame.
//! 4. The next packet is here: play it (or comfort silence up to it across a DTX gap).
//! 5. It is missing but the one after is here: rebuild it from that packet's in-band FEC.
//! 6. It is missing and nothing is buffered (underrun): expand (PLC) *without* consuming it,
//!    so a late packet still plays; if a later packet shows it lost, the expansion stands in
//!    for it. After a while with nothing arriving, treat the gap as silence (DTX or outage).
//! 7. It is missing, later packets are here and no FEC: conceal (PLC) and move on.

use std::collections::BTreeMap;

use crate::delay_manager::{DelayConfig, DelayManager, QualityContext};
use crate::stats::JitterStats;
use crate::unwrap::{SeqUnwrapper, TsUnwrapper};

/// Buffer configuration.
#[derive(Debug, Clone, Copy)]
pub struct BufferConfig {
    pub clock_rate: u32,
    /// Samples per frame (960 = 20 ms at 48 kHz).
    pub frame_samples: u32,
    /// Most packets held; beyond it the oldest is discarded.
    pub max_packets: usize,
    pub delay: DelayConfig,
    /// A constant target instead of the adaptive one, ms: the same control loop (stretch on
    /// underrun, accelerate when over), only the target is pinned. An ablation, for comparisons.
    pub fixed_delay_ms: Option<f64>,
    /// A static playout schedule, ms: the classic fixed jitter buffer. The first packet plays
    /// this long after it arrived and every later frame exactly one frame of media time after
    /// the one before; nothing is stretched or dropped, a packet that misses its slot is
    /// discarded late, and the schedule never moves (except to resynchronise after an outage
    /// of more than 100 packets). Overrides `fixed_delay_ms`. For comparisons.
    pub static_delay_ms: Option<f64>,
    /// Use in-band FEC from the next packet when a packet is missing.
    pub use_fec: bool,
    /// One-way network delay (RTT/2 from RTCP), ms, when known. With it the adaptive target
    /// weighs delay against late loss by the E-model: on a long path (where every further ms of
    /// mouth-to-ear delay costs more) it accepts some late packets rather than covering a heavy
    /// jitter tail; see [`JitterBuffer::target_delay_ms`]. `None`: the quantile target alone.
    pub network_delay_ms: Option<f64>,
    /// Frames over which the buffer level is averaged (an exponential average) before it may
    /// stretch or drop: a single early or late burst moves the level for a moment without
    /// moving the average, so jitter alone does not make the buffer decelerate into every dip
    /// and accelerate out of every burst. 1: decide on the instantaneous level alone (the
    /// behaviour before). 32 (640 ms) is the default, picked over 16 and 64 on the jittery
    /// profiles of tests/neteq/run.sh (seed 7; no value was best on every profile); in this
    /// crate's simulation it stretches about a quarter less on busy Wi-Fi and 4G handover for
    /// a little less delay (tests/buffer.rs).
    pub level_filter_frames: u32,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            clock_rate: 48_000,
            frame_samples: 960,
            max_packets: 250,
            delay: DelayConfig::default(),
            fixed_delay_ms: None,
            static_delay_ms: None,
            use_fec: true,
            network_delay_ms: None,
            level_filter_frames: 32,
        }
    }
}

/// What to play for one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// Not playing yet (filling to the target delay).
    Waiting,
    /// Decode this packet.
    Frame { seq: u64, payload: Vec<u8> },
    /// Decode the missing frame `seq` from the in-band FEC of the following packet's payload.
    Fec { seq: u64, next_payload: Vec<u8> },
    /// Packet loss concealment (decoder PLC) for the missing frame `seq`.
    Conceal { seq: u64 },
    /// Play one frame of PLC/time-stretched audio without consuming anything: deceleration,
    /// or an underrun while the next packet is late (counted as concealment then).
    Stretch,
    /// Comfort silence (the sender is in DTX or has stopped).
    Silence,
}

/// What `insert` did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Buffered,
    Duplicate,
    Late,
    Overflow,
}

#[derive(Debug, Clone)]
struct Packet {
    ts: u64,
    payload: Vec<u8>,
    low_energy: bool,
    arrival_ms: f64,
}

pub struct JitterBuffer {
    cfg: BufferConfig,
    packets: BTreeMap<u64, Packet>,
    seqs: SeqUnwrapper,
    tss: TsUnwrapper,
    delay: DelayManager,
    /// Playout position: the next sequence number and media timestamp to play.
    next_seq: u64,
    next_ts: u64,
    playing: bool,
    first_arrival_ms: Option<f64>,
    last_arrival_ms: f64,
    conceal_run: u32,
    empty_run: u32,
    /// The buffer ran dry and the sender seems quiet: frames are silence until we know better.
    silent_mode: bool,
    /// Frames played in silent mode, not yet known to be DTX (silence) or an outage (loss).
    unclassified: u32,
    /// How many of `unclassified` were played as PLC rather than as silence.
    unclassified_plc: u32,
    /// Concealed frames with an empty buffer just before silent mode (maybe DTX, maybe loss).
    speculative: u32,
    /// The previous frame was a stretch.
    stretched: bool,
    /// Hand the frames dropped for acceleration to the caller (`take_accelerated`).
    keep_accelerated: bool,
    accelerated: Option<(u64, Vec<u8>)>,
    /// The last pull was a deliberate deceleration.
    decelerated: bool,
    /// See [`JitterBuffer::level_over_target_ms`].
    level_over: Option<f64>,
    /// Share of recent frames found missing (exponential average over ~100 frames).
    loss_avg: f64,
    /// The buffer level beyond the frame about to play, averaged over
    /// `level_filter_frames` pulls, ms; stretching and dropping move it at once by what they
    /// add or remove.
    level_avg: Option<f64>,
    /// Decoded audio the caller holds and has not played yet, ms (`set_queued_ms`).
    queued_ms: f64,
    stats: JitterStats,
    loss: LossEstimate,
    /// The quality-based target (recomputed every few packets), when the path delay is known.
    quality_target: Option<f64>,
}

/// Network loss seen in the sequence numbers (late packets count as arrived), as exponential
/// averages over ~500 expected packets: lost, and lost together with the next packet.
#[derive(Debug, Clone, Default)]
struct LossEstimate {
    highest: Option<u64>,
    lost: f64,
    pairs: f64,
}

impl LossEstimate {
    const ALPHA: f64 = 1.0 / 500.0;

    fn arrived(&mut self, seq: u64) {
        let a = Self::ALPHA;
        match self.highest {
            Some(h) if seq <= h => {
                // A late or reordered packet was counted lost when the gap opened.
                self.lost = (self.lost - a).max(0.0);
            }
            Some(h) => {
                let gap = (seq - h - 1).min(100);
                for i in 0..gap {
                    self.lost += a * (1.0 - self.lost);
                    let pair = if i + 1 < gap { 1.0 } else { 0.0 };
                    self.pairs += a * (pair - self.pairs);
                }
                self.lost -= a * self.lost;
                self.pairs -= a * self.pairs;
                self.highest = Some(seq);
            }
            None => self.highest = Some(seq),
        }
    }
}

/// Codec lookahead added to mouth-to-ear delay (Opus: 6.5 ms), for the quality-based target.
const CODEC_LOOKAHEAD_MS: f64 = 6.5;

/// Above this recent loss share, an adaptive buffer holds a floor. With FEC, one frame plus the
/// jitter quantile (at most two frames): the packet after a lost one carries its FEC and must be
/// here when the lost frame is due, so the buffer keeps that packet's frame and the lateness it
/// may arrive with; a flat two frames held ~5 ms more than that on low-jitter lossy paths (the
/// NetEq comparison's bursty profiles, docs/BENCHMARKS.md). Without FEC, two
/// frames, because a loss burst longer than a one-frame buffer runs it dry, and the first packet
/// after the burst then plays only if it is not even slightly late: each burst costs an extra
/// concealed frame (measured: 310 vs 307 frames of 3,000 at 10% bursty loss) for ~20 ms less
/// delay.
const LOSS_HEADROOM: f64 = 0.005;

impl JitterBuffer {
    pub fn new(cfg: BufferConfig) -> Self {
        JitterBuffer {
            cfg,
            packets: BTreeMap::new(),
            seqs: SeqUnwrapper::default(),
            tss: TsUnwrapper::default(),
            delay: DelayManager::new(cfg.delay),
            next_seq: 0,
            next_ts: 0,
            playing: false,
            first_arrival_ms: None,
            last_arrival_ms: 0.0,
            conceal_run: 0,
            empty_run: 0,
            silent_mode: false,
            unclassified: 0,
            unclassified_plc: 0,
            speculative: 0,
            stretched: false,
            keep_accelerated: false,
            accelerated: None,
            decelerated: false,
            level_over: None,
            loss_avg: 0.0,
            level_avg: None,
            queued_ms: 0.0,
            stats: JitterStats::default(),
            loss: LossEstimate::default(),
            quality_target: None,
        }
    }

    pub fn stats(&self) -> &JitterStats {
        &self.stats
    }

    /// Current target delay, ms: the delay histogram's quantile; lowered, when the path delay is
    /// known, to the delay that maximises the E-model's R (late packets cost R through the
    /// loss impairment, buffering through the delay impairment, steeply past 177 ms
    /// mouth-to-ear); while packets are being lost, at least a frame plus the jitter quantile
    /// with FEC, two frames without ([`LOSS_HEADROOM`]).
    pub fn target_delay_ms(&self) -> f64 {
        if let Some(d) = self.cfg.static_delay_ms.or(self.cfg.fixed_delay_ms) {
            return d;
        }
        let t = self.quality_target.unwrap_or(self.delay.target_ms());
        match self.loss_floor_ms() {
            Some(floor) => t.max(floor).min(self.cfg.delay.max_delay_ms),
            None => t,
        }
    }

    /// The least audio to hold beyond the frame about to play while packets are being lost
    /// ([`LOSS_HEADROOM`]), ms; `None` while they are not.
    fn loss_floor_ms(&self) -> Option<f64> {
        (self.loss_avg > LOSS_HEADROOM).then(|| {
            let frame = self.frame_ms();
            if self.cfg.use_fec {
                // A lost frame is rebuilt from the next packet: hold one frame for that packet
                // plus the jitter it may arrive within.
                (frame + self.delay.quantile_ms()).min(2.0 * frame)
            } else {
                2.0 * frame
            }
        })
    }

    /// The one-way network delay changed (a new RTT measurement), ms; `None` if unknown.
    pub fn set_network_delay_ms(&mut self, ms: Option<f64>) {
        self.cfg.network_delay_ms = ms;
        self.update_quality_target();
    }

    fn update_quality_target(&mut self) {
        self.quality_target = self.cfg.network_delay_ms.map(|net| {
            self.delay.quality_target_ms(&QualityContext {
                other_delay_ms: net + 2.0 * self.frame_ms() + CODEC_LOOKAHEAD_MS,
                network_loss: self.loss.lost,
                pair_loss: self.loss.pairs,
                fec: self.cfg.use_fec,
                late_margin_ms: self.frame_ms(),
            })
        });
    }

    fn note_frame(&mut self, lost: bool) {
        self.loss_avg = self.loss_avg * 0.99 + if lost { 0.01 } else { 0.0 };
    }

    fn frame_ms(&self) -> f64 {
        self.cfg.frame_samples as f64 * 1000.0 / self.cfg.clock_rate as f64
    }

    fn ms_of(&self, samples: u64) -> f64 {
        samples as f64 * 1000.0 / self.cfg.clock_rate as f64
    }

    /// Audio buffered ahead of the playout position, ms (including the next frame).
    pub fn buffered_ms(&self) -> f64 {
        match self.packets.values().next_back() {
            Some(last) if self.playing => {
                self.ms_of((last.ts + self.cfg.frame_samples as u64).saturating_sub(self.next_ts))
            }
            Some(last) => {
                let first = self
                    .packets
                    .values()
                    .next()
                    .map(|p| p.ts)
                    .unwrap_or(last.ts);
                self.ms_of(last.ts + self.cfg.frame_samples as u64 - first)
            }
            None => 0.0,
        }
    }

    /// A packet arrived. `now_ms` is the receiver's clock in ms.
    pub fn insert(&mut self, now_ms: f64, seq: u16, rtp_ts: u32, payload: Vec<u8>) -> Inserted {
        self.insert_frame(now_ms, seq, rtp_ts, payload, false)
    }

    /// Like [`Self::insert`], with a hint that the frame is low-energy (silence, a pause), where
    /// dropping or stretching is inaudible.
    pub fn insert_frame(
        &mut self,
        now_ms: f64,
        seq: u16,
        rtp_ts: u32,
        payload: Vec<u8>,
        low_energy: bool,
    ) -> Inserted {
        self.stats.packets_received += 1;
        let s = self.seqs.unwrap(seq as u64);
        let ts = self.tss.unwrap(rtp_ts as u64);
        if self.playing && s < self.next_seq {
            self.stats.packets_discarded += 1;
            return Inserted::Late;
        }
        if self.packets.contains_key(&s) {
            self.stats.packets_discarded += 1;
            return Inserted::Duplicate;
        }
        self.delay.update(now_ms, self.ms_of(ts));
        self.loss.arrived(s);
        if self.cfg.network_delay_ms.is_some()
            && (self.stats.packets_received.is_multiple_of(8) || self.quality_target.is_none())
        {
            self.update_quality_target();
        }
        self.first_arrival_ms.get_or_insert(now_ms);
        self.last_arrival_ms = now_ms;
        self.packets.insert(
            s,
            Packet {
                ts,
                payload,
                low_energy,
                arrival_ms: now_ms,
            },
        );
        if self.packets.len() > self.cfg.max_packets {
            // Keep the newest: drop the oldest buffered packet.
            if let Some((&k, _)) = self.packets.iter().next() {
                self.packets.remove(&k);
                self.stats.packets_discarded += 1;
                if self.playing && k >= self.next_seq {
                    self.next_seq = k + 1;
                    if let Some(p) = self.packets.get(&self.next_seq) {
                        self.next_ts = p.ts;
                    }
                }
                return Inserted::Overflow;
            }
        }
        Inserted::Buffered
    }

    /// Count one played frame. `buffered_ms` is how long the packet it was decoded from (the
    /// packet itself, or the next one for an FEC rebuild) waited in the buffer; `None` for audio
    /// made up locally (concealment, stretching, comfort silence). As in WebRTC, only audio that
    /// came out of a packet adds to jitterBufferDelay and jitterBufferEmittedCount.
    fn emitted(&mut self, buffered_ms: Option<f64>, concealed: bool, silent: bool) {
        let n = self.cfg.frame_samples as u64;
        if let Some(d) = buffered_ms {
            self.stats.jitter_buffer_delay += d / 1000.0 * n as f64;
            self.stats.jitter_buffer_target_delay += self.target_delay_ms() / 1000.0 * n as f64;
            self.stats.jitter_buffer_emitted_count += n;
        }
        self.stats.total_samples_received += n;
        if concealed {
            self.stats.concealed_samples += n;
            if silent {
                self.stats.silent_concealed_samples += n;
            }
        }
        if concealed && !silent {
            if self.conceal_run == 0 {
                self.stats.concealment_events += 1;
            }
            self.conceal_run += 1;
        } else {
            self.end_conceal_run();
        }
    }

    fn end_conceal_run(&mut self) {
        let ms = self.conceal_run as f64 * self.frame_ms();
        if ms >= 150.0 {
            self.stats.interruptions += 1;
            self.stats.total_interruption_duration += ms / 1000.0;
        }
        self.conceal_run = 0;
    }

    /// For a caller that time-stretches decoded audio itself (a client with the PCM): keep
    /// each frame this buffer drops for acceleration, to be taken with
    /// [`JitterBuffer::take_accelerated`] after the pull that dropped it, so the caller can
    /// decode it (keeping its decoder continuous) and remove about a frame of audio where it
    /// shows least. Off by default: the frame is simply dropped.
    pub fn keep_accelerated(&mut self, on: bool) {
        self.keep_accelerated = on;
    }

    /// The frame (sequence, payload) the last `pull` dropped for acceleration, if it dropped
    /// one and [`JitterBuffer::keep_accelerated`] is on. The pull's own result is the frame
    /// after it.
    pub fn take_accelerated(&mut self) -> Option<(u64, Vec<u8>)> {
        self.accelerated.take()
    }

    /// Whether the last `pull`'s `Pulled::Stretch` was a deliberate deceleration (packets are
    /// waiting, the buffer is below its target) rather than an underrun: a caller with decoded
    /// audio can lengthen it by whole pitch periods instead of concealing.
    pub fn decelerated(&self) -> bool {
        self.decelerated
    }

    /// How far the level (audio held beyond the frame about to play, the caller's queue
    /// included) was over the target at the last `pull`, ms; `None` before playout starts, in
    /// a pause, or with a static delay. A caller that shortens decoded audio itself can give
    /// back an excess that lasts (see [`JitterBuffer::note_shortened`]).
    pub fn level_over_target_ms(&self) -> Option<f64> {
        self.level_over
    }

    /// The caller removed `ms` of decoded audio: the averaged level follows at once, as it does
    /// when this buffer drops a frame, so one excess is not answered twice.
    pub fn note_shortened(&mut self, ms: f64) {
        if let Some(a) = self.level_avg.as_mut() {
            *a -= ms;
        }
    }

    /// Decoded audio the caller holds between this buffer and its output and has not played
    /// yet, ms: it counts toward the level the buffer steers to its target. A caller that
    /// stretches the decoded audio itself (by whole pitch periods, not whole frames) keeps
    /// leftovers that the buffer would otherwise not see. Default 0.
    pub fn set_queued_ms(&mut self, ms: f64) {
        self.queued_ms = ms.max(0.0);
    }

    /// One frame of playout.
    pub fn pull(&mut self, now_ms: f64) -> Pulled {
        self.accelerated = None;
        self.decelerated = false;
        self.level_over = None;
        if let Some(d) = self.cfg.static_delay_ms {
            return self.pull_static(now_ms, d);
        }
        let frame = self.cfg.frame_samples as u64;
        let frame_ms = self.frame_ms();
        let target = self.target_delay_ms();
        // The frame about to play counts toward the target.
        if !self.begin(now_ms, target - frame_ms) {
            return Pulled::Waiting;
        }
        let buffered = self.buffered_ms();
        // Audio held beyond the frame about to play, against the target.
        let level = (buffered - frame_ms).max(0.0) + self.queued_ms;
        let k = 1.0 / self.cfg.level_filter_frames.max(1) as f64;
        let avg = match self.level_avg {
            Some(a) => a + (level - a) * k,
            None => level,
        };
        // Over a pause (silent mode) the level means nothing: the next spurt starts afresh.
        self.level_avg = (!self.silent_mode).then_some(avg);

        if !self.silent_mode {
            let over = level - target;
            self.level_over = Some(over);
            // Acceleration: drop the next frame when holding clearly more than the target, now
            // and on average.
            if let Some(p) = self.packets.get(&self.next_seq) {
                let over_avg = avg - target;
                if ((over > frame_ms && p.low_energy) || over > 2.5 * frame_ms)
                    && over_avg > frame_ms / 2.0
                {
                    self.level_avg = Some(avg - frame_ms);
                    let p = self
                        .packets
                        .remove(&self.next_seq)
                        .expect("just looked it up");
                    self.stats.removed_samples_for_acceleration += frame;
                    self.next_seq += 1;
                    self.next_ts = p.ts + frame;
                    if self.keep_accelerated {
                        self.accelerated = Some((self.next_seq - 1, p.payload));
                    }
                }
            }
            // Deceleration: stretch while audio is waiting but less than the target — only while
            // packets keep coming (not into a pause) and never twice in a row.
            let flowing = now_ms - self.last_arrival_ms < 2.0 * frame_ms;
            if let Some(p) = self
                .packets
                .get(&self.next_seq)
                .filter(|_| flowing && !self.stretched)
            {
                let under = target - level;
                let under_avg = target - avg;
                if ((under >= frame_ms / 2.0 && p.low_energy) || under >= frame_ms)
                    && under_avg >= frame_ms / 2.0
                {
                    self.level_avg = Some(avg + frame_ms);
                    self.stretched = true;
                    self.decelerated = true;
                    self.stats.inserted_samples_for_deceleration += frame;
                    self.emitted(None, false, false);
                    return Pulled::Stretch;
                }
            }
        }

        self.stretched = false;
        let seq = self.next_seq;
        if self.packets.contains_key(&seq) {
            // The stream continues without a sequence gap: what we played as silence was DTX.
            self.classify_quiet(false);
            self.speculative = 0;
            self.empty_run = 0;
            let p = self.packets.get(&seq).expect("checked");
            if p.ts >= self.next_ts + frame {
                // DTX gap: the sender skipped time; play comfort silence until its timestamp.
                self.next_ts += frame;
                self.emitted(None, true, true);
                return Pulled::Silence;
            }
            let p = self.packets.remove(&seq).expect("checked");
            self.note_frame(false);
            self.next_seq += 1;
            self.next_ts = p.ts + frame;
            self.emitted(Some(now_ms - p.arrival_ms), false, false);
            return Pulled::Frame {
                seq,
                payload: p.payload,
            };
        }
        if let Some((&first, fp)) = self.packets.iter().next() {
            self.empty_run = 0;
            if self.speculative > 0 && !self.silent_mode {
                // The buffer ran dry and we expanded while waiting for `seq`; a later packet
                // shows it is lost, and the expansion already filled its time: skip it.
                self.speculative -= 1;
                self.note_frame(true);
                self.next_seq += 1;
                self.next_ts += frame;
                return self.pull(now_ms);
            }
            self.speculative = 0;
            if self.silent_mode {
                // Packets resume after a sequence gap: the quiet spell was an outage. Its time
                // has passed; continue from what is buffered.
                let ts = fp.ts;
                self.classify_quiet(true);
                self.next_seq = first;
                self.next_ts = ts;
                return self.pull(now_ms);
            }
            self.note_frame(true);
            self.next_seq += 1;
            self.next_ts += frame;
            if self.cfg.use_fec {
                if let Some(next) = self.packets.get(&(seq + 1)) {
                    let (payload, arrived) = (next.payload.clone(), next.arrival_ms);
                    self.stats.fec_packets_received += 1;
                    self.emitted(Some(now_ms - arrived), false, false);
                    return Pulled::Fec {
                        seq,
                        next_payload: payload,
                    };
                }
            }
            self.emitted(None, true, false);
            return Pulled::Conceal { seq };
        }
        // Nothing buffered.
        self.empty_run += 1;
        if self.silent_mode
            || (self.empty_run > 3 && now_ms - self.last_arrival_ms > 4.0 * frame_ms)
        {
            if !self.silent_mode {
                // The last few "losses" may have been the start of DTX: take them back until
                // we know which it was.
                self.silent_mode = true;
                let spec = self.speculative;
                // The expansion did not consume packets, but media time has run on.
                self.next_ts += spec as u64 * frame;
                self.stats.concealed_samples -= spec as u64 * frame;
                self.conceal_run = self.conceal_run.saturating_sub(spec);
                if self.conceal_run == 0 && spec > 0 {
                    self.stats.concealment_events = self.stats.concealment_events.saturating_sub(1);
                }
                self.unclassified += spec;
                self.unclassified_plc += spec;
                self.speculative = 0;
            }
            // Media time keeps running, so the next packet plays when its time comes.
            self.next_ts += frame;
            self.unclassified += 1;
            self.emitted_plain();
            return Pulled::Silence;
        }
        // Underrun: `seq` may only be late. Expand (PLC) without consuming it, so that it still
        // plays if it comes (the delay grows by a frame and acceleration wins it back later);
        // if a later packet shows it lost, the expansion stands in for it.
        self.speculative += 1;
        self.emitted(None, true, false);
        Pulled::Stretch
    }

    /// Start playing once the first packet has waited `wait_ms` (the playout position becomes
    /// the oldest buffered packet), and resynchronise after an outage of more than 100 packets
    /// (the position jumps to what is buffered). `false`: still waiting.
    fn begin(&mut self, now_ms: f64, wait_ms: f64) -> bool {
        let oldest = self.packets.iter().next().map(|(&s, p)| (s, p.ts));
        if !self.playing {
            let (Some(first), Some((s, ts))) = (self.first_arrival_ms, oldest) else {
                return false;
            };
            if now_ms - first < wait_ms {
                return false;
            }
            (self.next_seq, self.next_ts) = (s, ts);
            self.playing = true;
        }
        if let Some((s, ts)) = oldest.filter(|&(s, _)| s > self.next_seq + 100) {
            // Over 100 sequence numbers missing: an outage (a sender's pause keeps its
            // numbering), whatever was played meanwhile.
            if self.silent_mode {
                self.classify_quiet(true);
            }
            (self.next_seq, self.next_ts) = (s, ts);
        }
        true
    }

    /// One frame of a static schedule (see [`BufferConfig::static_delay_ms`]). Every pull is the
    /// next frame of media time; what is buffered for it plays, anything older is late.
    fn pull_static(&mut self, now_ms: f64, delay_ms: f64) -> Pulled {
        let frame = self.cfg.frame_samples as u64;
        let frame_ms = self.frame_ms();
        if !self.begin(now_ms, delay_ms) {
            return Pulled::Waiting;
        }
        let slot = self.next_ts;
        self.next_ts += frame;
        // Whatever was meant for an earlier slot missed it; the slots it missed were
        // concealment, not a pause.
        while let Some(e) = self.packets.first_entry() {
            if e.get().ts + frame / 2 >= slot {
                break;
            }
            let s = *e.key();
            e.remove();
            self.stats.packets_discarded += 1;
            self.next_seq = self.next_seq.max(s + 1);
            self.classify_quiet(true);
        }
        let Some((s, ts)) = self.packets.iter().next().map(|(&s, p)| (s, p.ts)) else {
            // Nothing here: late, lost, or the sender is quiet; the next packet tells which
            // (see below). The decoder conceals while packets were coming until just now, and
            // plays silence after that. The sequence number is not used up: its packet is late
            // (and will be discarded) or the sender paused (and will resume with it).
            self.silent_mode = true;
            self.unclassified += 1;
            self.emitted_plain();
            return if now_ms - self.last_arrival_ms > 4.0 * frame_ms {
                Pulled::Silence
            } else {
                self.unclassified_plc += 1;
                Pulled::Conceal { seq: self.next_seq }
            };
        };
        if self.silent_mode {
            // A quiet spell ends: it was DTX if the sequence numbers run on, else an outage.
            self.classify_quiet(s > self.next_seq);
        }
        if ts < slot + frame / 2 {
            let p = self.packets.remove(&s).expect("just looked it up");
            self.note_frame(false);
            self.next_seq = s + 1;
            self.emitted(Some(now_ms - p.arrival_ms), false, false);
            return Pulled::Frame {
                seq: s,
                payload: p.payload,
            };
        }
        if s == self.next_seq {
            // The stream runs on without a sequence gap, later in media time: a DTX gap.
            self.emitted(None, true, true);
            return Pulled::Silence;
        }
        // This slot's packet is missing and later ones are here.
        let seq = self.next_seq;
        self.next_seq += 1;
        self.note_frame(true);
        if self.cfg.use_fec && s == seq + 1 && ts < slot + frame + frame / 2 {
            let p = &self.packets[&s];
            let (payload, arrived) = (p.payload.clone(), p.arrival_ms);
            self.stats.fec_packets_received += 1;
            self.emitted(Some(now_ms - arrived), false, false);
            return Pulled::Fec {
                seq,
                next_payload: payload,
            };
        }
        self.emitted(None, true, false);
        Pulled::Conceal { seq }
    }

    /// Count a frame as played without classifying it (yet).
    fn emitted_plain(&mut self) {
        self.stats.total_samples_received += self.cfg.frame_samples as u64;
    }

    /// Leave silent mode: the frames played quietly were DTX silence (`loss == false`) or an
    /// outage that concealment covered (`loss == true`). In an outage the frames played as
    /// PLC are concealment and those played as silence are *silent* concealment, as the W3C
    /// statistics define silentConcealedSamples (concealed samples that play as silence or
    /// comfort noise) and as NetEq counts the expansion once it has faded to nothing. The
    /// whole outage still counts toward interruptions.
    fn classify_quiet(&mut self, loss: bool) {
        let n = self.cfg.frame_samples as u64;
        let q = self.unclassified as u64;
        let plc = (self.unclassified_plc as u64).min(q);
        self.silent_mode = false;
        self.unclassified = 0;
        self.unclassified_plc = 0;
        if q == 0 {
            return;
        }
        self.stats.concealed_samples += q * n;
        if loss {
            self.stats.silent_concealed_samples += (q - plc) * n;
            self.stats.silent_outage_samples += (q - plc) * n;
            if self.conceal_run == 0 {
                self.stats.concealment_events += 1;
            }
            self.conceal_run += q as u32;
        } else {
            self.stats.silent_concealed_samples += q * n;
            self.end_conceal_run();
        }
    }

    /// Close any open concealment run (call at the end of a call for final statistics).
    pub fn finish(&mut self) {
        self.classify_quiet(false);
        self.end_conceal_run();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_estimate_tells_single_losses_from_pairs() {
        // (case, lost positions in every 50 packets, expected lost share, expected pair share)
        let cases: [(&str, &[u64], f64, f64); 3] = [
            ("no loss", &[], 0.0, 0.0),
            ("2% single losses", &[10], 0.02, 0.0),
            (
                "a 3-packet burst per 50: 6% lost, 4% in pairs",
                &[10, 11, 12],
                0.06,
                0.04,
            ),
        ];
        for (name, lost, want_lost, want_pairs) in cases {
            let mut e = LossEstimate::default();
            for s in 0..20_000u64 {
                if !lost.contains(&(s % 50)) {
                    e.arrived(s);
                }
            }
            assert!((e.lost - want_lost).abs() < 0.01, "{name}: lost {}", e.lost);
            assert!(
                (e.pairs - want_pairs).abs() < 0.01,
                "{name}: pairs {}",
                e.pairs
            );
        }
        // A late packet was counted lost when its gap opened, and is taken back.
        let mut e = LossEstimate::default();
        for s in 0..5_000u64 {
            if s % 50 != 10 {
                e.arrived(s);
            }
            if s % 50 == 12 {
                e.arrived(s - 2);
            }
        }
        assert!(e.lost < 0.005, "late packets are not losses: {}", e.lost);
    }
}
