//! What a set of callers measured, in a form that adds up exactly: counters and hdrhistograms
//! (never percentiles) plus the probes' raw figures. A run keeps one `Tally` per node; the run's
//! total, and the merge of shards run on different machines, are sums of tallies.

use hdrhistogram::Histogram;
use lodge_jitter::{mos_estimate, QualityInput};
use serde::{Deserialize, Serialize};

use super::media::CallerStats;
use crate::hist;

/// Opus framing + lookahead, added to network and buffer delay for the MOS estimate.
const CODEC_DELAY_MS: f64 = 26.5;

/// One probe listener's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub mos_estimate: f64,
    pub concealment_pct: f64,
    pub buffer_delay_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Callers planned (whether or not they got as far as reporting).
    pub callers: u64,
    /// Callers whose media connected.
    pub connected: u64,
    /// Callers that received nothing although someone spoke to them.
    pub deaf: u64,
    pub rtp_sent: u64,
    pub received: u64,
    pub gaps: u64,
    pub unmatched: u64,
    pub repeated: u64,
    pub input_errors: u64,
    pub reordered: u64,
    pub rtp_datagrams: u64,
    /// Sequence gaps by size: 1, 2, 3–5, 6–20, more.
    pub gap_sizes: [u64; 5],
    pub rejoins: u64,
    /// Mouth-to-ear delay of every timed packet, µs.
    #[serde(with = "hist::serde_b64")]
    pub m2e_us: Histogram<u64>,
    /// Join → media connected, ms.
    #[serde(with = "hist::serde_b64")]
    pub join_ms: Histogram<u64>,
    /// The phases of each join, ms: waiting for a `--parallelism` slot, signaling, ICE + DTLS.
    #[serde(with = "hist::serde_b64")]
    pub wait_ms: Histogram<u64>,
    #[serde(with = "hist::serde_b64")]
    pub signaling_ms: Histogram<u64>,
    #[serde(with = "hist::serde_b64")]
    pub ice_dtls_ms: Histogram<u64>,
    /// Final RFC 3550 jitter of every slot that received anything, µs.
    #[serde(with = "hist::serde_b64")]
    pub jitter_us: Histogram<u64>,
    /// Voice lost (or moved) → media again, ms, per rejoin.
    #[serde(with = "hist::serde_b64")]
    pub rejoin_ms: Histogram<u64>,
    /// Callers the server moved at least once, and those of them whose call had no media at
    /// the end (a move never completed, or a connection was lost without one).
    #[serde(default)]
    pub moved_callers: u64,
    #[serde(default)]
    pub moved_without_media: u64,
    /// Per moved caller, its longest gap (voice lost or moved → media again), ms: what the
    /// worst-served callers heard, whatever number of moves each had.
    #[serde(default = "hist::millis", with = "hist::serde_b64")]
    pub caller_gap_ms: Histogram<u64>,
    pub probes: Vec<Probe>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            callers: 0,
            connected: 0,
            deaf: 0,
            rtp_sent: 0,
            received: 0,
            gaps: 0,
            unmatched: 0,
            repeated: 0,
            input_errors: 0,
            reordered: 0,
            rtp_datagrams: 0,
            gap_sizes: [0; 5],
            rejoins: 0,
            m2e_us: hist::micros(),
            join_ms: hist::millis(),
            wait_ms: hist::millis(),
            signaling_ms: hist::millis(),
            ice_dtls_ms: hist::millis(),
            jitter_us: hist::micros(),
            rejoin_ms: hist::millis(),
            moved_callers: 0,
            moved_without_media: 0,
            caller_gap_ms: hist::millis(),
            probes: Vec::new(),
        }
    }
}

fn ms(h: &mut Histogram<u64>, v: f64) {
    h.saturating_record(v.max(0.0).round() as u64);
}

impl Tally {
    /// Count one caller's measurements (its `callers` share is counted by whoever planned it).
    /// `speakers_per_channel` decides whether a speaker that heard nobody is deaf: with one
    /// speaker per channel there is nobody to hear.
    pub fn add_caller(&mut self, st: &CallerStats, speakers_per_channel: usize) {
        self.rejoins += st.rejoins as u64;
        for &r in &st.rejoin_ms {
            ms(&mut self.rejoin_ms, r);
        }
        if st.rejoins > 0 {
            self.moved_callers += 1;
            if !st.media_at_end {
                self.moved_without_media += 1;
            }
            if let Some(longest) = st.rejoin_ms.iter().copied().reduce(f64::max) {
                ms(&mut self.caller_gap_ms, longest);
            }
        }
        self.m2e_us
            .add(&st.m2e_us)
            .expect("callers record within the report's µs bounds");
        if let Some(connect) = st.connect_ms {
            self.connected += 1;
            self.join_ms.saturating_record(connect.max(1.0) as u64);
            if let (Some(q), Some(sig)) = (st.queued_ms, st.signaled_ms) {
                ms(&mut self.wait_ms, q);
                ms(&mut self.signaling_ms, sig - q);
                ms(&mut self.ice_dtls_ms, connect - sig);
            }
        }
        self.received += st.received;
        self.gaps += st.gaps;
        self.rtp_sent += st.rtp_sent;
        self.unmatched += st.unmatched;
        self.repeated += st.repeated;
        self.input_errors += st.input_errors;
        self.reordered += st.reordered;
        self.rtp_datagrams += st.rtp_datagrams;
        for (a, b) in self.gap_sizes.iter_mut().zip(st.gap_sizes) {
            *a += b;
        }
        for &j in &st.jitter_ms {
            self.jitter_us
                .saturating_record((j.max(0.0) * 1000.0).round() as u64);
        }
        let alone = st.rtp_sent > 0 && speakers_per_channel == 1;
        if st.received == 0 && !alone {
            self.deaf += 1;
        }
        if let Some(p) = &st.probe {
            let m2e_ms = if st.m2e_us.is_empty() {
                0.0
            } else {
                st.m2e_us.mean() / 1000.0
            };
            self.probes.push(Probe {
                mos_estimate: mos_estimate(&QualityInput::opus(
                    m2e_ms + p.mean_buffer_delay_ms + CODEC_DELAY_MS,
                    p.concealment_pct,
                )),
                concealment_pct: p.concealment_pct,
                buffer_delay_ms: p.mean_buffer_delay_ms,
            });
        }
    }

    /// Add another tally of disjoint callers: counters sum, histograms add bucket by bucket,
    /// probes concatenate.
    pub fn merge(&mut self, o: &Tally) {
        self.callers += o.callers;
        self.connected += o.connected;
        self.deaf += o.deaf;
        self.rtp_sent += o.rtp_sent;
        self.received += o.received;
        self.gaps += o.gaps;
        self.unmatched += o.unmatched;
        self.repeated += o.repeated;
        self.input_errors += o.input_errors;
        self.reordered += o.reordered;
        self.rtp_datagrams += o.rtp_datagrams;
        for (a, b) in self.gap_sizes.iter_mut().zip(o.gap_sizes) {
            *a += b;
        }
        self.rejoins += o.rejoins;
        self.moved_callers += o.moved_callers;
        self.moved_without_media += o.moved_without_media;
        for (a, b) in [
            (&mut self.m2e_us, &o.m2e_us),
            (&mut self.join_ms, &o.join_ms),
            (&mut self.wait_ms, &o.wait_ms),
            (&mut self.signaling_ms, &o.signaling_ms),
            (&mut self.ice_dtls_ms, &o.ice_dtls_ms),
            (&mut self.jitter_us, &o.jitter_us),
            (&mut self.rejoin_ms, &o.rejoin_ms),
            (&mut self.caller_gap_ms, &o.caller_gap_ms),
        ] {
            // The bounds are the same constants everywhere and hdrhistogram resizes when a
            // deserialized one is wider; should it refuse, saturate rather than lose counts.
            if a.add(b).is_err() {
                for v in b.iter_recorded() {
                    a.saturating_record_n(v.value_iterated_to(), v.count_at_value());
                }
            }
        }
        self.probes.extend_from_slice(&o.probes);
    }

    /// Loss seen by listeners, percent: expected − received per slot (RFC 3550 style).
    pub fn loss_pct(&self) -> f64 {
        self.gaps as f64 / (self.received + self.gaps).max(1) as f64 * 100.0
    }
}
