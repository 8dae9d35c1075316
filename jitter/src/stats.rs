//! Receiver statistics named as WebRTC's getStats (RTCInboundRtpStreamStats) names them.

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JitterStats {
    /// Sum over emitted samples of the time each spent buffered, seconds.
    pub jitter_buffer_delay: f64,
    /// Sum over emitted samples of the target delay when emitted, seconds.
    pub jitter_buffer_target_delay: f64,
    pub jitter_buffer_emitted_count: u64,
    pub total_samples_received: u64,
    pub concealed_samples: u64,
    /// Concealed samples played as silence: comfort silence while the sender was quiet (DTX),
    /// and silence played through an outage once concealment gave up (as the W3C statistics
    /// define it, and as NetEq counts its expansion once faded).
    pub silent_concealed_samples: u64,
    /// Of `silent_concealed_samples`, those played through an outage (packets lost), not a
    /// pause in the sending. Not a W3C figure: Lodge's own quality measures
    /// ([`JitterStats::concealment_ratio`]) count these as concealment, since a gap of silence
    /// where speech was lost is heard.
    pub silent_outage_samples: u64,
    pub concealment_events: u64,
    pub inserted_samples_for_deceleration: u64,
    pub removed_samples_for_acceleration: u64,
    /// Late, duplicate or overflowing packets thrown away.
    pub packets_discarded: u64,
    pub packets_received: u64,
    /// Frames rebuilt from the next packet's in-band FEC.
    pub fec_packets_received: u64,
    /// Concealment runs of 150 ms or more.
    pub interruptions: u64,
    /// Total duration of those runs, seconds.
    pub total_interruption_duration: f64,
}

impl JitterStats {
    /// Add another stream's (or another run's) counts to these, as if one longer call: the
    /// derived figures (mean delay, concealment ratio) then weigh every frame alike.
    pub fn merge(&mut self, o: &JitterStats) {
        self.jitter_buffer_delay += o.jitter_buffer_delay;
        self.jitter_buffer_target_delay += o.jitter_buffer_target_delay;
        self.jitter_buffer_emitted_count += o.jitter_buffer_emitted_count;
        self.total_samples_received += o.total_samples_received;
        self.concealed_samples += o.concealed_samples;
        self.silent_concealed_samples += o.silent_concealed_samples;
        self.silent_outage_samples += o.silent_outage_samples;
        self.concealment_events += o.concealment_events;
        self.inserted_samples_for_deceleration += o.inserted_samples_for_deceleration;
        self.removed_samples_for_acceleration += o.removed_samples_for_acceleration;
        self.packets_discarded += o.packets_discarded;
        self.packets_received += o.packets_received;
        self.fec_packets_received += o.fec_packets_received;
        self.interruptions += o.interruptions;
        self.total_interruption_duration += o.total_interruption_duration;
    }

    /// Mean playout delay, ms.
    pub fn mean_delay_ms(&self) -> f64 {
        if self.jitter_buffer_emitted_count == 0 {
            0.0
        } else {
            self.jitter_buffer_delay / self.jitter_buffer_emitted_count as f64 * 1000.0
        }
    }

    /// Samples made up for lost or late audio, however they played (PLC or silence): all
    /// concealment except the comfort silence of a sender's pause.
    pub fn loss_concealed_samples(&self) -> u64 {
        self.concealed_samples - self.silent_concealed_samples + self.silent_outage_samples
    }

    /// Share of played samples made up for lost or late audio
    /// ([`JitterStats::loss_concealed_samples`]), 0..1.
    pub fn concealment_ratio(&self) -> f64 {
        if self.total_samples_received == 0 {
            0.0
        } else {
            self.loss_concealed_samples() as f64 / self.total_samples_received as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_stats_weigh_every_frame_alike() {
        // 10 frames at 20 ms and 30 frames at 60 ms: 50 ms over the 40, not the 40 ms mean of
        // the two means; 4 of 50 frames concealed.
        let run = |frames: u64, delay_s: f64, concealed: u64, total: u64| JitterStats {
            jitter_buffer_delay: delay_s * (frames * 960) as f64,
            jitter_buffer_emitted_count: frames * 960,
            total_samples_received: total * 960,
            concealed_samples: concealed * 960,
            ..JitterStats::default()
        };
        let mut a = run(10, 0.020, 1, 12);
        a.merge(&run(30, 0.060, 3, 38));
        assert!(
            (a.mean_delay_ms() - 50.0).abs() < 1e-9,
            "{}",
            a.mean_delay_ms()
        );
        assert!((a.concealment_ratio() - 0.08).abs() < 1e-12);
    }
}
