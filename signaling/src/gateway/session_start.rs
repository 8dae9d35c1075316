//! `session_start_limit`, enforced: how many Identifies a user may make per 24 hours (`total`)
//! and per 5 seconds (`max_concurrency`), as `GET /gateway/bot` announces them. Time is passed
//! in, so the rules are tested without waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window `total` counts over.
pub const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// The window `max_concurrency` counts over.
pub const BURST_WINDOW: Duration = Duration::from_secs(5);
/// Users tracked before expired windows are swept out.
const SWEEP_AT: usize = 100_000;

/// The limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct StartLimits {
    pub total: u32,
    pub max_concurrency: u32,
}

/// What `GET /gateway/bot` reports for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    pub total: u32,
    pub remaining: u32,
    pub reset_after: Duration,
    pub max_concurrency: u32,
}

/// Why an Identify is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartRefused {
    /// More than `max_concurrency` in 5 s: Invalid Session (op 9), retry shortly.
    TooFast,
    /// The day's `total` is used up; `reset_after` until it refills.
    Exhausted { reset_after: Duration },
}

struct Budget {
    day_start: Instant,
    used: u32,
    recent: VecDeque<Instant>,
}

pub struct SessionStarts {
    limits: StartLimits,
    users: Mutex<HashMap<u64, Budget>>,
}

impl SessionStarts {
    pub fn new(limits: StartLimits) -> Self {
        SessionStarts {
            limits,
            users: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits(&self) -> StartLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Budget>> {
        self.users
            .lock()
            .expect("session start lock is never held across a panic")
    }

    /// Count one Identify of `user` at `now`, or refuse it (a refusal uses nothing up).
    pub fn try_start(&self, user: u64, now: Instant) -> Result<Remaining, StartRefused> {
        let l = self.limits;
        let mut m = self.lock();
        if m.len() >= SWEEP_AT {
            m.retain(|_, b| now.duration_since(b.day_start) < DAY);
        }
        let b = m.entry(user).or_insert_with(|| Budget {
            day_start: now,
            used: 0,
            recent: VecDeque::new(),
        });
        if now.duration_since(b.day_start) >= DAY {
            b.day_start = now;
            b.used = 0;
        }
        while b
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= BURST_WINDOW)
        {
            b.recent.pop_front();
        }
        let reset_after = DAY.saturating_sub(now.duration_since(b.day_start));
        if b.used >= l.total {
            return Err(StartRefused::Exhausted { reset_after });
        }
        if b.recent.len() >= l.max_concurrency as usize {
            return Err(StartRefused::TooFast);
        }
        b.used += 1;
        b.recent.push_back(now);
        Ok(Remaining {
            total: l.total,
            remaining: l.total - b.used,
            reset_after,
            max_concurrency: l.max_concurrency,
        })
    }

    /// What is left for `user` at `now`, without using any.
    pub fn remaining(&self, user: u64, now: Instant) -> Remaining {
        let l = self.limits;
        let m = self.lock();
        let (used, reset_after) = match m.get(&user) {
            Some(b) if now.duration_since(b.day_start) < DAY => {
                (b.used, DAY - now.duration_since(b.day_start))
            }
            _ => (0, DAY),
        };
        Remaining {
            total: l.total,
            remaining: l.total.saturating_sub(used),
            reset_after,
            max_concurrency: l.max_concurrency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_day_budget_then_reset() {
        let s = SessionStarts::new(StartLimits {
            total: 5,
            max_concurrency: 2,
        });
        let t0 = Instant::now();
        assert_eq!(s.try_start(1, t0).unwrap().remaining, 4);
        assert_eq!(s.try_start(1, t0).unwrap().remaining, 3);
        assert_eq!(s.try_start(1, t0), Err(StartRefused::TooFast));
        assert_eq!(s.remaining(1, t0).remaining, 3, "a refusal uses nothing");
        assert!(s.try_start(2, t0).is_ok(), "users are separate");
        let t1 = t0 + BURST_WINDOW;
        assert!(s.try_start(1, t1).is_ok());
        assert!(s.try_start(1, t1).is_ok());
        let t2 = t1 + BURST_WINDOW;
        assert_eq!(s.try_start(1, t2).unwrap().remaining, 0);
        match s.try_start(1, t2 + BURST_WINDOW) {
            Err(StartRefused::Exhausted { reset_after }) => {
                assert_eq!(reset_after, DAY - 3 * BURST_WINDOW)
            }
            other => panic!("{other:?}"),
        }
        let next_day = t0 + DAY;
        assert_eq!(s.try_start(1, next_day).unwrap().remaining, 4);
        assert_eq!(s.remaining(1, next_day).reset_after, DAY);
    }
}
