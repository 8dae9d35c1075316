//! The node operator's per-guild switches (`PATCH /api/v10/admin/guilds/{id}`): voice off,
//! message creation frozen, a cap on speaker slots. They hold on every node of a cluster, so
//! they live behind the switch like the rest of the shared state: [`LocalGuildSwitches`] for a
//! node alone, `redis/guild_switches.rs` in a cluster. A guild with every switch at its default
//! is not stored at all, so listing the switched guilds (for `/metrics`) stays cheap.
//!
//! Both implementations store a guild's switches as fields (see [`GuildSwitches::fields`]):
//! only the fields a change names are written, so two operators changing different switches
//! of one guild at once cannot undo each other.

use std::collections::BTreeMap;
use std::sync::Mutex;

use lodge_ids::GuildId;
use serde::Serialize;

use super::{Fut, SharedError, SharedResult};

/// One guild's switches. The default is "nothing switched".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GuildSwitches {
    /// No one may join (or be moved into) the guild's voice channels; turning it on ends the
    /// calls in progress.
    pub voice_off: bool,
    /// No one may post messages in the guild's channels.
    pub messages_frozen: bool,
    /// The most speaker slots a voice connection of the guild may ask for (`None`: the
    /// node's own bound, 1..=`lodge_sfu::MAX_SLOTS`).
    pub max_slots: Option<u8>,
}

/// A change to some of a guild's switches; `None` leaves a switch as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchChange {
    pub voice_off: Option<bool>,
    pub messages_frozen: Option<bool>,
    /// `Some(None)` lifts the cap.
    pub max_slots: Option<Option<u8>>,
}

/// Stored field names.
const VOICE_OFF: &str = "voice_off";
const MESSAGES_FROZEN: &str = "messages_frozen";
const MAX_SLOTS: &str = "max_slots";

impl GuildSwitches {
    pub fn is_default(&self) -> bool {
        *self == GuildSwitches::default()
    }

    /// `self` with `c` applied.
    pub fn with(mut self, c: &SwitchChange) -> GuildSwitches {
        if let Some(v) = c.voice_off {
            self.voice_off = v;
        }
        if let Some(v) = c.messages_frozen {
            self.messages_frozen = v;
        }
        if let Some(v) = c.max_slots {
            self.max_slots = v;
        }
        self
    }

    /// The stored form of a change: each field it names with its value, `""` for a switch back
    /// at its default (the field is removed).
    pub fn fields(c: &SwitchChange) -> Vec<(&'static str, String)> {
        let flag = |on: bool| if on { "1".to_string() } else { String::new() };
        let mut f = Vec::new();
        if let Some(v) = c.voice_off {
            f.push((VOICE_OFF, flag(v)));
        }
        if let Some(v) = c.messages_frozen {
            f.push((MESSAGES_FROZEN, flag(v)));
        }
        if let Some(v) = c.max_slots {
            f.push((MAX_SLOTS, v.map(|n| n.to_string()).unwrap_or_default()));
        }
        f
    }

    /// Read back what [`GuildSwitches::fields`] stored (`key` names it in errors).
    pub fn from_fields<'a>(
        key: &str,
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> SharedResult<GuildSwitches> {
        let mut g = GuildSwitches::default();
        for (name, value) in fields {
            match name {
                VOICE_OFF => g.voice_off = value == "1",
                MESSAGES_FROZEN => g.messages_frozen = value == "1",
                MAX_SLOTS => {
                    g.max_slots = Some(value.parse().map_err(|_| SharedError::Malformed {
                        key: key.to_string(),
                        why: format!("max_slots is {value:?}"),
                    })?)
                }
                // A field a newer node wrote: ignored, not fatal.
                _ => {}
            }
        }
        Ok(g)
    }
}

/// The per-guild switches, wherever they are kept.
pub trait GuildSwitchStore: Send + Sync {
    /// A guild's switches (the default when none is set).
    fn get(&self, guild: GuildId) -> Fut<'_, SharedResult<GuildSwitches>>;
    /// Apply `change` in one atomic step; returns the switches before and after it.
    fn change<'a>(
        &'a self,
        guild: GuildId,
        change: &'a SwitchChange,
    ) -> Fut<'a, SharedResult<(GuildSwitches, GuildSwitches)>>;
    /// Every guild with a switch that is not at its default, by id.
    fn all(&self) -> Fut<'_, SharedResult<Vec<(GuildId, GuildSwitches)>>>;
}

/// A node alone: a map under a lock.
#[derive(Default)]
pub struct LocalGuildSwitches {
    by_guild: Mutex<BTreeMap<GuildId, GuildSwitches>>,
}

impl LocalGuildSwitches {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<GuildId, GuildSwitches>> {
        self.by_guild
            .lock()
            .expect("the guild switch map is never held across a panic")
    }
}

impl GuildSwitchStore for LocalGuildSwitches {
    fn get(&self, guild: GuildId) -> Fut<'_, SharedResult<GuildSwitches>> {
        let g = self.map().get(&guild).copied().unwrap_or_default();
        Box::pin(std::future::ready(Ok(g)))
    }

    fn change<'a>(
        &'a self,
        guild: GuildId,
        change: &'a SwitchChange,
    ) -> Fut<'a, SharedResult<(GuildSwitches, GuildSwitches)>> {
        let mut m = self.map();
        let old = m.get(&guild).copied().unwrap_or_default();
        let new = old.with(change);
        if new.is_default() {
            m.remove(&guild);
        } else {
            m.insert(guild, new);
        }
        Box::pin(std::future::ready(Ok((old, new))))
    }

    fn all(&self) -> Fut<'_, SharedResult<Vec<(GuildId, GuildSwitches)>>> {
        let all = self.map().iter().map(|(g, s)| (*g, *s)).collect();
        Box::pin(std::future::ready(Ok(all)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<T>(f: Fut<'_, T>) -> T {
        futures_util::FutureExt::now_or_never(f).expect("local state never waits")
    }

    #[test]
    fn a_change_touches_only_the_switches_it_names_and_defaults_are_not_kept() {
        let s = LocalGuildSwitches::default();
        let g = GuildId(7);
        let freeze = SwitchChange {
            messages_frozen: Some(true),
            ..Default::default()
        };
        let (old, new) = block(s.change(g, &freeze)).unwrap();
        assert!(old.is_default());
        assert!(new.messages_frozen && !new.voice_off);
        let cap = SwitchChange {
            max_slots: Some(Some(4)),
            ..Default::default()
        };
        let (_, new) = block(s.change(g, &cap)).unwrap();
        assert_eq!((new.messages_frozen, new.max_slots), (true, Some(4)));
        assert_eq!(block(s.all()).unwrap(), vec![(g, new)]);
        let lift = SwitchChange {
            messages_frozen: Some(false),
            max_slots: Some(None),
            ..Default::default()
        };
        block(s.change(g, &lift)).unwrap();
        assert!(block(s.get(g)).unwrap().is_default());
        assert!(block(s.all()).unwrap().is_empty());
    }

    #[test]
    fn the_stored_fields_read_back_as_written() {
        let c = SwitchChange {
            voice_off: Some(true),
            messages_frozen: Some(false),
            max_slots: Some(Some(3)),
        };
        let f = GuildSwitches::fields(&c);
        let kept = f.iter().filter(|(_, v)| !v.is_empty());
        let back = GuildSwitches::from_fields("k", kept.map(|(n, v)| (*n, v.as_str()))).unwrap();
        assert_eq!(back, GuildSwitches::default().with(&c));
        assert!(GuildSwitches::from_fields("k", [("max_slots", "lots")]).is_err());
    }
}
