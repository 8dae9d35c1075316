//! The node-wide bounds (participants on the node, per user, per guild) when the node runs
//! several media workers. Each worker's [`Node`](crate::Node) enforces the bounds over its own
//! participants; a user's calls in two guilds, or a guild's rooms, may sit on different workers,
//! so the handle reserves a seat here before a join is sent to a worker, the worker settles it
//! (seated under the participant's index, or given back when the join failed), and releases it
//! when the participant leaves. Taken on joins and leaves only, never per packet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::SfuError;
use crate::ids::{GuildId, ParticipantIdx, UserId};
use crate::node::NodeConfig;

/// A reserved place under the bounds, settled by the worker that runs the join. Dropped
/// unsettled (the join command never ran: a cancelled caller, a stopped worker), it gives the
/// place back.
pub(crate) struct Seat {
    user: UserId,
    guild: GuildId,
    admission: Arc<Admission>,
    settled: bool,
}

impl Seat {
    /// The join ran: seated as `idx` (node-wide), or `None` when it failed (the place is
    /// given back).
    pub(crate) fn settle(mut self, idx: Option<ParticipantIdx>) {
        self.settled = true;
        let mut c = self.admission.counts();
        match idx {
            Some(i) => {
                c.seated.insert(i, (self.user, self.guild));
            }
            None => give_back(&mut c, self.user, self.guild),
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if !self.settled {
            give_back(&mut self.admission.counts(), self.user, self.guild);
        }
    }
}

impl std::fmt::Debug for Seat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Seat({} in {})", self.user.0, self.guild.0)
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_user: HashMap<UserId, usize>,
    per_guild: HashMap<GuildId, usize>,
    seated: HashMap<ParticipantIdx, (UserId, GuildId)>,
}

pub(crate) struct Admission {
    max_total: usize,
    max_per_user: usize,
    max_per_guild: usize,
    counts: Mutex<Counts>,
}

impl Admission {
    pub(crate) fn new(cfg: &NodeConfig) -> Self {
        Admission {
            max_total: cfg.max_participants,
            max_per_user: cfg.max_participants_per_user,
            max_per_guild: cfg.max_participants_per_guild,
            counts: Mutex::default(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay consistent under every panic point (plain integer updates).
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a place for `user` of `guild`, or the bound that refuses it (the same errors a
    /// node's own bounds give).
    pub(crate) fn reserve(
        self: &Arc<Self>,
        user: UserId,
        guild: GuildId,
    ) -> Result<Seat, SfuError> {
        let mut c = self.counts();
        if c.total >= self.max_total {
            return Err(SfuError::NodeFull {
                limit: self.max_total,
            });
        }
        if c.per_user.get(&user).copied().unwrap_or(0) >= self.max_per_user {
            return Err(SfuError::UserLimit {
                user,
                limit: self.max_per_user,
            });
        }
        if c.per_guild.get(&guild).copied().unwrap_or(0) >= self.max_per_guild {
            return Err(SfuError::GuildLimit {
                guild,
                limit: self.max_per_guild,
            });
        }
        c.total += 1;
        *c.per_user.entry(user).or_default() += 1;
        *c.per_guild.entry(guild).or_default() += 1;
        Ok(Seat {
            user,
            guild,
            admission: self.clone(),
            settled: false,
        })
    }

    /// `idx` is leaving (asked by signaling) or left its worker: its place is free; nothing
    /// for indices not seated (remote speakers, a second release).
    pub(crate) fn release(&self, idx: ParticipantIdx) {
        let mut c = self.counts();
        if let Some((user, guild)) = c.seated.remove(&idx) {
            give_back(&mut c, user, guild);
        }
    }

    /// Seats taken now (reserved or seated).
    #[cfg(test)]
    fn taken(&self) -> usize {
        self.counts().total
    }
}

fn give_back(c: &mut Counts, user: UserId, guild: GuildId) {
    c.total = c.total.saturating_sub(1);
    decrement(&mut c.per_user, user);
    decrement(&mut c.per_guild, guild);
}

fn decrement<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: K) {
    if let Some(n) = m.get_mut(&k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            m.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(total: usize, per_user: usize, per_guild: usize) -> Arc<Admission> {
        let mut cfg = NodeConfig::new("127.0.0.1:1".parse().unwrap());
        cfg.max_participants = total;
        cfg.max_participants_per_user = per_user;
        cfg.max_participants_per_guild = per_guild;
        Arc::new(Admission::new(&cfg))
    }

    #[test]
    fn bounds_hold_across_workers_and_come_back_on_leave_or_failure() {
        let a = admission(3, 2, 10);
        let (u, g) = (UserId(1), GuildId(1));
        // Two seats of one user on different workers: the third is refused by the user bound.
        let s0 = a.reserve(u, g).unwrap();
        s0.settle(Some(ParticipantIdx(0).on_worker(0)));
        let s1 = a.reserve(u, GuildId(2)).unwrap();
        s1.settle(Some(ParticipantIdx(0).on_worker(1)));
        assert!(matches!(
            a.reserve(u, GuildId(3)),
            Err(SfuError::UserLimit { limit: 2, .. })
        ));
        // A failed join gives its place back; the node bound (3) then refuses the fourth.
        let s = a.reserve(UserId(2), g).unwrap();
        s.settle(None);
        let s = a.reserve(UserId(2), g).unwrap();
        s.settle(Some(ParticipantIdx(1).on_worker(1)));
        assert!(matches!(
            a.reserve(UserId(3), g),
            Err(SfuError::NodeFull { limit: 3 })
        ));
        // A leave frees the place; an unknown index (a remote speaker) changes nothing.
        a.release(ParticipantIdx(7).on_worker(1));
        assert_eq!(a.taken(), 3);
        a.release(ParticipantIdx(0).on_worker(1));
        assert_eq!(a.taken(), 2);
        let s = a.reserve(u, GuildId(3)).unwrap();
        s.settle(Some(ParticipantIdx(2).on_worker(0)));
        // Releasing twice does not free a second place.
        a.release(ParticipantIdx(2).on_worker(0));
        a.release(ParticipantIdx(2).on_worker(0));
        assert_eq!(a.taken(), 2);
        // A seat dropped unsettled (its join never ran) gives its place back.
        drop(a.reserve(UserId(9), g).unwrap());
        assert_eq!(a.taken(), 2);
    }

    #[test]
    fn the_guild_bound_spans_workers() {
        let a = admission(100, 10, 2);
        let g = GuildId(9);
        for (i, w) in [(0u32, 0usize), (0, 1)] {
            let s = a.reserve(UserId(u64::from(i) + w as u64), g).unwrap();
            s.settle(Some(ParticipantIdx(i).on_worker(w)));
        }
        assert!(matches!(
            a.reserve(UserId(5), g),
            Err(SfuError::GuildLimit { limit: 2, .. })
        ));
    }
}
