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
    /// Concealed samples played while the sender was silent (DTX comfort noise).
    pub silent_concealed_samples: u64,
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
    /// Mean playout delay, ms.
    pub fn mean_delay_ms(&self) -> f64 {
        if self.jitter_buffer_emitted_count == 0 {
            0.0
        } else {
            self.jitter_buffer_delay / self.jitter_buffer_emitted_count as f64 * 1000.0
        }
    }

    /// Concealed share of played samples (excluding DTX silence), 0..1.
    pub fn concealment_ratio(&self) -> f64 {
        if self.total_samples_received == 0 {
            0.0
        } else {
            (self.concealed_samples - self.silent_concealed_samples) as f64
                / self.total_samples_received as f64
        }
    }
}
