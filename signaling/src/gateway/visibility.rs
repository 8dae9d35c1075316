//! What every gateway session's VIEW_CHANNEL check needs, fetched once per guild visibility
//! epoch and shared by all sessions.
//!
//! A dispatch for a channel (a voice state, a message) reaches every session in the guild, and
//! each must know whether its user may see that channel. Fetched per session, the first
//! dispatch for each channel cost every session the guild, its roles, the channel and the
//! membership from the database: 2,000 callers joining 100 voice channels made ~1 million queries
//! and held joins up for tens of seconds. Here the guild with its roles and each channel are
//! fetched once, each member's role ids once, all until that guild's epoch moves (a GUILD_* or
//! CHANNEL_* dispatch of that guild; see `Hub::epoch`); concurrent first lookups of one key wait
//! for a single fetch. Each guild's entries start over on their own: a change in one guild
//! costs the others nothing.

use lodge_ids::{ChannelId, GuildId, RoleId, UserId};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use lodge_chat::{Channel, ChatError, Guild, Permissions, Role, Store};
use tokio::sync::OnceCell;

/// More cached members than this in one guild and that guild's member map starts over.
const MAX_MEMBERS_PER_GUILD: usize = 200_000;
/// More guilds than this and the whole cache starts over.
const MAX_GUILDS: usize = 100_000;

type Slot<T> = Arc<OnceCell<Arc<T>>>;

/// One guild's cached inputs, valid for one epoch of that guild.
#[derive(Default)]
struct GuildMaps {
    epoch: u64,
    guild: Slot<(Guild, Vec<Role>)>,
    channels: HashMap<ChannelId, Slot<Channel>>,
    members: HashMap<UserId, Slot<Option<Vec<RoleId>>>>,
}

#[derive(Default)]
pub struct VisibilityCache {
    guilds: Mutex<HashMap<GuildId, GuildMaps>>,
}

impl VisibilityCache {
    /// May `user` see `channel` of `guild`, as of the guild's `epoch`? Errors (unknown guild
    /// or channel, a database failure) mean no.
    pub async fn can_view(
        &self,
        store: &Store,
        epoch: u64,
        guild: GuildId,
        channel: ChannelId,
        user: UserId,
    ) -> bool {
        self.permissions(store, epoch, guild, channel, user)
            .await
            .has(Permissions::VIEW_CHANNEL)
    }

    /// `user`'s permissions in `channel` of `guild`, as of the guild's `epoch`. Errors (unknown
    /// guild or channel, a channel of another guild, a database failure) and non-members get
    /// none.
    pub async fn permissions(
        &self,
        store: &Store,
        epoch: u64,
        guild: GuildId,
        channel: ChannelId,
        user: UserId,
    ) -> Permissions {
        let perms = async {
            let g = self.guild(store, epoch, guild).await?;
            let c = self.keyed(guild, epoch, |m| &mut m.channels, channel);
            let c = c
                .get_or_try_init(|| async {
                    Ok::<_, ChatError>(Arc::new(store.channel(channel).await?))
                })
                .await?
                .clone();
            if c.guild_id != guild {
                return Ok(Permissions(0));
            }
            let mine = self.member_roles(store, epoch, &g, user).await?;
            let Some(mine) = mine.as_ref() else {
                return Ok(Permissions(0));
            };
            Ok::<_, ChatError>(lodge_chat::permissions::of_member(
                &g.0,
                &g.1,
                mine,
                Some(&c),
                user,
            ))
        };
        perms.await.unwrap_or(Permissions(0))
    }

    /// Is `user` a member of `guild`, as of the guild's `epoch`? Errors mean no.
    pub async fn is_member(&self, store: &Store, epoch: u64, guild: GuildId, user: UserId) -> bool {
        let member = async {
            let g = self.guild(store, epoch, guild).await?;
            Ok::<_, ChatError>(self.member_roles(store, epoch, &g, user).await?.is_some())
        };
        member.await.unwrap_or(false)
    }

    async fn guild(
        &self,
        store: &Store,
        epoch: u64,
        guild: GuildId,
    ) -> Result<Arc<(Guild, Vec<Role>)>, ChatError> {
        let g = self.slot(guild, epoch, |m| &mut m.guild);
        let g = g
            .get_or_try_init(|| async {
                let gd = store.guild(guild).await?;
                let roles = store.roles(guild).await?;
                Ok::<_, ChatError>(Arc::new((gd, roles)))
            })
            .await?;
        Ok(g.clone())
    }

    /// The member's role ids; `None` for someone who is not a member.
    async fn member_roles(
        &self,
        store: &Store,
        epoch: u64,
        g: &(Guild, Vec<Role>),
        user: UserId,
    ) -> Result<Arc<Option<Vec<RoleId>>>, ChatError> {
        let m = self.keyed(g.0.id, epoch, |m| &mut m.members, user);
        let mine = m
            .get_or_try_init(|| async {
                Ok::<_, ChatError>(Arc::new(store.member_role_ids(&g.0, user).await?))
            })
            .await?;
        Ok(mine.clone())
    }

    /// Run `f` on the guild's maps as of `epoch`: a newer epoch empties them first. `None` for
    /// a caller that read an older epoch than the cache holds (it gets a private cell).
    fn with_guild<R>(
        &self,
        guild: GuildId,
        epoch: u64,
        f: impl FnOnce(&mut GuildMaps) -> R,
    ) -> Option<R> {
        let mut all = self
            .guilds
            .lock()
            .expect("visibility cache lock is never held across a panic");
        if all.len() >= MAX_GUILDS && !all.contains_key(&guild) {
            all.clear();
        }
        let maps = all.entry(guild).or_insert_with(|| GuildMaps {
            epoch,
            ..GuildMaps::default()
        });
        if maps.epoch != epoch {
            if epoch < maps.epoch {
                return None;
            }
            *maps = GuildMaps {
                epoch,
                ..GuildMaps::default()
            };
        }
        if maps.members.len() > MAX_MEMBERS_PER_GUILD {
            maps.members.clear();
        }
        Some(f(maps))
    }

    fn slot<T>(
        &self,
        guild: GuildId,
        epoch: u64,
        cell: impl FnOnce(&mut GuildMaps) -> &mut Slot<T>,
    ) -> Slot<T> {
        self.with_guild(guild, epoch, |m| cell(m).clone())
            .unwrap_or_default()
    }

    fn keyed<K: Eq + Hash, T>(
        &self,
        guild: GuildId,
        epoch: u64,
        map: impl FnOnce(&mut GuildMaps) -> &mut HashMap<K, Slot<T>>,
        key: K,
    ) -> Slot<T> {
        self.with_guild(guild, epoch, |m| map(m).entry(key).or_default().clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_ids::{ChannelId, GuildId};

    #[test]
    fn a_newer_epoch_empties_only_its_guild_and_an_older_one_is_not_shared() {
        let cache = VisibilityCache::default();
        let a = cache.keyed(GuildId(1), 1, |m| &mut m.channels, ChannelId(7));
        let b = cache.keyed(GuildId(1), 1, |m| &mut m.channels, ChannelId(7));
        assert!(Arc::ptr_eq(&a, &b), "one cell per key within an epoch");
        let other = cache.keyed(GuildId(2), 1, |m| &mut m.channels, ChannelId(8));
        let c = cache.keyed(GuildId(1), 2, |m| &mut m.channels, ChannelId(7));
        assert!(!Arc::ptr_eq(&a, &c), "a new epoch starts the guild over");
        assert!(
            Arc::ptr_eq(
                &other,
                &cache.keyed(GuildId(2), 1, |m| &mut m.channels, ChannelId(8))
            ),
            "another guild's entries survive"
        );
        let old = cache.keyed(GuildId(1), 1, |m| &mut m.channels, ChannelId(7));
        assert!(!Arc::ptr_eq(&old, &c), "a stale reader gets a private cell");
        let again = cache.keyed(GuildId(1), 2, |m| &mut m.channels, ChannelId(7));
        assert!(
            Arc::ptr_eq(&again, &c),
            "…and does not reset the current epoch"
        );
    }
}
