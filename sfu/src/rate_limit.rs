//! A token bucket per participant, so one flooding peer cannot starve the node.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_s: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn new(rate_per_s: u32, burst: u32) -> Self {
        TokenBucket {
            rate_per_s: rate_per_s as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: None,
        }
    }

    /// Take one token; `false` when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate_per_s).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_rate_and_burst_then_refuses() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 10);
        let ok = (0..20).filter(|_| b.take(t0)).count();
        assert_eq!(ok, 10);
        // One second later: 100 more tokens but capped at the burst of 10.
        let ok = (0..20)
            .filter(|_| b.take(t0 + Duration::from_secs(1)))
            .count();
        assert_eq!(ok, 10);
        // Steady 100/s is fine.
        let mut t = t0 + Duration::from_secs(2);
        for _ in 0..500 {
            t += Duration::from_millis(10);
            assert!(b.take(t));
        }
    }
}
