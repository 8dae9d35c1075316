//! What every gateway session's VIEW_CHANNEL check needs, fetched once per visibility epoch and
//! shared by all sessions.
//!
//! A dispatch for a channel (a voice state, a message) reaches every session in the guild, and
//! each must know whether its user may see that channel. Fetched per session, the first
//! dispatch for each channel cost every session the guild, its roles, the channel and the
//! membership from the database: 2,000 callers joining 100 voice channels made ~1 million queries
//! and held joins up for tens of seconds. Here the guild with its roles and each channel are
//! fetched once, each member's role ids once, all until the hub's epoch moves (any GUILD_* or
//! CHANNEL_* dispatch); concurrent first lookups of one key wait for a single fetch.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use lodge_chat::{Channel, ChatError, Guild, Role, Store};
use tokio::sync::OnceCell;

/// More cached members than this (across guilds) and the member map starts over.
const MAX_MEMBERS: usize = 200_000;

type Slot<T> = Arc<OnceCell<Arc<T>>>;

#[derive(Default)]
struct Maps {
    epoch: u64,
    guilds: HashMap<u64, Slot<(Guild, Vec<Role>)>>,
    channels: HashMap<u64, Slot<Channel>>,
    members: HashMap<(u64, u64), Slot<Option<Vec<u64>>>>,
}

#[derive(Default)]
pub struct VisibilityCache {
    maps: Mutex<Maps>,
}

impl VisibilityCache {
    /// May `user` see `channel` of `guild`, as of `epoch`? Errors (unknown guild or channel, a
    /// database failure) mean no.
    pub async fn can_view(
        &self,
        store: &Store,
        epoch: u64,
        guild: u64,
        channel: u64,
        user: u64,
    ) -> bool {
        let view = async {
            let g = self.slot(epoch, |m| &mut m.guilds, guild);
            let g = g
                .get_or_try_init(|| async {
                    let gd = store.guild(guild).await?;
                    let roles = store.roles(guild).await?;
                    Ok::<_, ChatError>(Arc::new((gd, roles)))
                })
                .await?
                .clone();
            let c = self.slot(epoch, |m| &mut m.channels, channel);
            let c = c
                .get_or_try_init(|| async {
                    Ok::<_, ChatError>(Arc::new(store.channel(channel).await?))
                })
                .await?
                .clone();
            if c.guild_id != guild {
                return Ok(false);
            }
            let m = self.slot(epoch, |m| &mut m.members, (guild, user));
            let mine = m
                .get_or_try_init(|| async {
                    Ok::<_, ChatError>(Arc::new(store.member_role_ids(&g.0, user).await?))
                })
                .await?
                .clone();
            let Some(mine) = mine.as_ref() else {
                return Ok(false);
            };
            Ok::<_, ChatError>(
                lodge_chat::permissions::of_member(&g.0, &g.1, mine, Some(&c), user)
                    .has(lodge_chat::Permissions::VIEW_CHANNEL),
            )
        };
        view.await.unwrap_or(false)
    }

    /// The shared cell for `key` under `epoch`; a newer epoch empties every map first. A cell
    /// handed out under an epoch that has since passed is filled but no longer shared.
    fn slot<K: Eq + Hash + Copy, T>(
        &self,
        epoch: u64,
        map: impl FnOnce(&mut Maps) -> &mut HashMap<K, Slot<T>>,
        key: K,
    ) -> Slot<T> {
        let mut maps = self
            .maps
            .lock()
            .expect("visibility cache lock is never held across a panic");
        if maps.epoch != epoch {
            if epoch < maps.epoch {
                // A caller that read an older epoch: answer it without polluting the cache.
                return Arc::new(OnceCell::new());
            }
            *maps = Maps {
                epoch,
                ..Maps::default()
            };
        }
        if maps.members.len() > MAX_MEMBERS {
            maps.members.clear();
        }
        map(&mut maps).entry(key).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_epoch_empties_the_maps_and_an_older_one_is_not_shared() {
        let cache = VisibilityCache::default();
        let a = cache.slot(1, |m| &mut m.channels, 7u64);
        let b = cache.slot(1, |m| &mut m.channels, 7u64);
        assert!(Arc::ptr_eq(&a, &b), "one cell per key within an epoch");
        let c = cache.slot(2, |m| &mut m.channels, 7u64);
        assert!(!Arc::ptr_eq(&a, &c), "a new epoch starts over");
        let old = cache.slot(1, |m| &mut m.channels, 7u64);
        assert!(!Arc::ptr_eq(&old, &c), "a stale reader gets a private cell");
        let again = cache.slot(2, |m| &mut m.channels, 7u64);
        assert!(
            Arc::ptr_eq(&again, &c),
            "…and does not reset the current epoch"
        );
    }
}
