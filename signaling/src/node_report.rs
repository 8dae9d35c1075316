//! One node report shared by every reader. A full report walks every participant on the media
//! thread, so `/metrics`, `/voice/stats`, `/quality/*` and the telemetry sampler never ask the
//! node for their own: they share the latest one, rebuilt at most once per [`REPORT_MAX_AGE`]
//! however many readers there are. Readers that arrive while a report is being built wait for
//! that one rather than asking for another.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lodge_sfu::shell::{NodeReport, SfuHandle};

/// The oldest a shared report may be before the next reader has a new one built (at most one
/// report per this interval reaches the media thread).
pub const REPORT_MAX_AGE: Duration = Duration::from_secs(1);

/// The latest node report and when it was asked for.
#[derive(Default)]
pub struct NodeReports {
    latest: tokio::sync::Mutex<Option<(Instant, Arc<NodeReport>)>>,
}

impl NodeReports {
    /// The shared report, rebuilt if it is older than [`REPORT_MAX_AGE`]. `None` when the media
    /// node has stopped.
    pub async fn get(&self, sfu: &SfuHandle) -> Option<Arc<NodeReport>> {
        self.get_timed(sfu).await.map(|(_, r)| r)
    }

    /// [`NodeReports::get`] with the moment the report was asked for (rates computed from two
    /// reports must divide by the time between them, not between their readers).
    pub async fn get_timed(&self, sfu: &SfuHandle) -> Option<(Instant, Arc<NodeReport>)> {
        // Held across the build on purpose: concurrent readers wait for this build instead of
        // each asking the media thread for one.
        let mut latest = self.latest.lock().await;
        if let Some((asked, r)) = latest.as_ref() {
            if asked.elapsed() < REPORT_MAX_AGE {
                return Some((*asked, r.clone()));
            }
        }
        let asked = Instant::now();
        let r = Arc::new(sfu.report().await?);
        *latest = Some((asked, r.clone()));
        Some((asked, r))
    }
}
