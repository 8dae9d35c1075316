//! `session_start_limit`, enforced: how many Identifies a user may make per 24 hours (`total`)
//! and per 5 seconds (`max_concurrency`), as `GET /gateway/bot` announces them.
//!
//! [`StartLimiter`] is what handlers call: it asks the switch's [`StartBudgets`] (this
//! process's [`SessionStarts`] when the node is alone; Redis in a cluster, so a user's
//! identifies count on every node) and, if Redis cannot answer, counts on this node alone
//! until it can (logged): a Redis outage must not stop users from connecting.
//!
//! [`SessionStarts`] is the in-process budget; time is passed in, so its rules are tested
//! without waiting.

use lodge_ids::UserId;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::shared::limits::{Remaining, StartBudgets, StartLimits, StartRefused};
use crate::shared::{Fut, SharedResult};

/// The window `total` counts over.
pub const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// The window `max_concurrency` counts over.
pub const BURST_WINDOW: Duration = Duration::from_secs(5);
/// Users tracked before expired windows are swept out.
const SWEEP_AT: usize = 100_000;

struct Budget {
    day_start: Instant,
    used: u32,
    recent: VecDeque<Instant>,
}

/// The in-process budgets: one node's identifies, per user.
#[derive(Default)]
pub struct SessionStarts {
    users: Mutex<HashMap<UserId, Budget>>,
}

impl SessionStarts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Budget>> {
        self.users
            .lock()
            .expect("session start lock is never held across a panic")
    }

    /// Count one Identify of `user` at `now`, or refuse it (a refusal uses nothing up).
    pub fn try_start_at(
        &self,
        user: UserId,
        l: StartLimits,
        now: Instant,
    ) -> Result<Remaining, StartRefused> {
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
    pub fn remaining_at(&self, user: UserId, l: StartLimits, now: Instant) -> Remaining {
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

impl StartBudgets for SessionStarts {
    fn try_start(
        &self,
        user: UserId,
        limits: StartLimits,
    ) -> Fut<'_, SharedResult<Result<Remaining, StartRefused>>> {
        let r = self.try_start_at(user, limits, Instant::now());
        Box::pin(std::future::ready(Ok(r)))
    }
    fn remaining(&self, user: UserId, limits: StartLimits) -> Fut<'_, SharedResult<Remaining>> {
        let r = self.remaining_at(user, limits, Instant::now());
        Box::pin(std::future::ready(Ok(r)))
    }
}

/// How often a Redis failure is logged at most (each failed call falls back anyway).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The handlers' door to `session_start_limit`: the configured limits and the switch's
/// budgets, with this node's own budgets standing in while Redis is unreachable.
pub struct StartLimiter {
    limits: StartLimits,
    budgets: Arc<dyn StartBudgets>,
    fallback: SessionStarts,
    last_warn: Mutex<Option<Instant>>,
}

impl StartLimiter {
    pub fn new(limits: StartLimits, budgets: Arc<dyn StartBudgets>) -> Self {
        StartLimiter {
            limits,
            budgets,
            fallback: SessionStarts::default(),
            last_warn: Mutex::new(None),
        }
    }

    pub fn limits(&self) -> StartLimits {
        self.limits
    }

    fn warn(&self, e: &crate::shared::SharedError) {
        let now = Instant::now();
        let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            *last = Some(now);
            tracing::warn!(error = %e, "session_start_limit counted on this node alone: the shared budgets cannot be reached");
        }
    }

    /// Count one Identify of `user`, or refuse it.
    pub async fn try_start(&self, user: UserId) -> Result<Remaining, StartRefused> {
        match self.budgets.try_start(user, self.limits).await {
            Ok(r) => r,
            Err(e) => {
                self.warn(&e);
                self.fallback
                    .try_start_at(user, self.limits, Instant::now())
            }
        }
    }

    /// What is left for `user` (this node's own count while the shared one is unreachable).
    pub async fn remaining(&self, user: UserId) -> Remaining {
        match self.budgets.remaining(user, self.limits).await {
            Ok(r) => r,
            Err(e) => {
                self.warn(&e);
                self.fallback
                    .remaining_at(user, self.limits, Instant::now())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_day_budget_then_reset() {
        let l = StartLimits {
            total: 5,
            max_concurrency: 2,
        };
        let s = SessionStarts::default();
        let t0 = Instant::now();
        assert_eq!(s.try_start_at(UserId(1), l, t0).unwrap().remaining, 4);
        assert_eq!(s.try_start_at(UserId(1), l, t0).unwrap().remaining, 3);
        assert_eq!(s.try_start_at(UserId(1), l, t0), Err(StartRefused::TooFast));
        assert_eq!(
            s.remaining_at(UserId(1), l, t0).remaining,
            3,
            "a refusal uses nothing"
        );
        assert!(
            s.try_start_at(UserId(2), l, t0).is_ok(),
            "users are separate"
        );
        let t1 = t0 + BURST_WINDOW;
        assert!(s.try_start_at(UserId(1), l, t1).is_ok());
        assert!(s.try_start_at(UserId(1), l, t1).is_ok());
        let t2 = t1 + BURST_WINDOW;
        assert_eq!(s.try_start_at(UserId(1), l, t2).unwrap().remaining, 0);
        match s.try_start_at(UserId(1), l, t2 + BURST_WINDOW) {
            Err(StartRefused::Exhausted { reset_after }) => {
                assert_eq!(reset_after, DAY - 3 * BURST_WINDOW)
            }
            other => panic!("{other:?}"),
        }
        let next_day = t0 + DAY;
        assert_eq!(s.try_start_at(UserId(1), l, next_day).unwrap().remaining, 4);
        assert_eq!(s.remaining_at(UserId(1), l, next_day).reset_after, DAY);
    }

    struct Down;

    impl StartBudgets for Down {
        fn try_start(
            &self,
            _user: lodge_ids::UserId,
            _limits: StartLimits,
        ) -> Fut<'_, SharedResult<Result<Remaining, StartRefused>>> {
            Box::pin(std::future::ready(Err(
                crate::shared::SharedError::Unavailable("Redis at redis://x: refused".into()),
            )))
        }
        fn remaining(
            &self,
            _user: lodge_ids::UserId,
            _limits: StartLimits,
        ) -> Fut<'_, SharedResult<Remaining>> {
            Box::pin(std::future::ready(Err(
                crate::shared::SharedError::Unavailable("Redis at redis://x: refused".into()),
            )))
        }
    }

    #[tokio::test]
    async fn unreachable_budgets_count_on_this_node() {
        let l = StartLimits {
            total: 5,
            max_concurrency: 1,
        };
        let s = StartLimiter::new(l, Arc::new(Down));
        assert_eq!(s.try_start(UserId(1)).await.unwrap().remaining, 4);
        assert_eq!(s.try_start(UserId(1)).await, Err(StartRefused::TooFast));
        assert_eq!(s.remaining(UserId(1)).await.remaining, 4);
    }
}
