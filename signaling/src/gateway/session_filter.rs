//! Which dispatches a gateway session gets, and which of their bodies: the per-session half of
//! the hub's fan-out (the hub rules out only what intents and targets rule out cheaply).
//!
//! In order: the target and guild membership (`addressed`, which also keeps the session's
//! guild set current), intents, MESSAGE_CONTENT (the redacted body), then what the session's
//! user may see (`visible_body`): a member the dispatch is about must still be in the guild;
//! the dispatch's channel must be viewable (a move's leave body when only the channel left is);
//! a reply to another channel loses its `referenced_message` unless that channel is readable.
//! Permissions are cached per session, guild and channel until the guild's visibility epoch
//! moves (`Hub::epoch`); their inputs are shared by all sessions (`visibility.rs`).

use lodge_ids::{ChannelId, GuildId, UserId};
use std::collections::HashMap;

use lodge_chat::{Permissions, User};

use super::intents;
use super::registry::{Session, SessionRef};
use crate::app::AppState;
use crate::hub::{Body, Dispatch, DispatchKind, Target};

/// VIEW_CHANNEL and READ_MESSAGE_HISTORY: what it takes to see a referenced message.
const READ: u64 = Permissions::VIEW_CHANNEL | Permissions::READ_MESSAGE_HISTORY;

fn lock(s: &SessionRef) -> std::sync::MutexGuard<'_, Session> {
    s.lock()
        .expect("a session lock is never held across a panic")
}

/// The body of `d` this session's user may see, if any: `body` when the user may view the
/// dispatch's channel (for a reply to another channel, without the referenced message unless
/// they may read that channel too); for a move (`d.left`), the leave body when they may view
/// only the channel left; nothing when they may view neither, or when the member the dispatch
/// is about (`d.about`) is no longer in the guild.
pub(super) async fn visible_body(
    s: &AppState,
    sref: &SessionRef,
    user: UserId,
    d: &Dispatch,
    body: Body,
) -> Option<Body> {
    let Some(g) = d.guild_id else {
        return Some(body);
    };
    if let Some(member) = d.about {
        if !s
            .visibility
            .is_member(&s.store, s.hub.epoch(g), g, member)
            .await
        {
            return None;
        }
    }
    let Some(ch) = d.channel_id else {
        return Some(body);
    };
    if permissions_in(s, sref, user, g, ch)
        .await
        .has(Permissions::VIEW_CHANNEL)
    {
        return match &d.reference {
            Some(r)
                if !permissions_in(s, sref, user, g, r.channel_id)
                    .await
                    .has(READ) =>
            {
                Some(body.unreferenced())
            }
            _ => Some(body),
        };
    }
    match &d.left {
        Some(l)
            if permissions_in(s, sref, user, g, l.channel_id)
                .await
                .has(Permissions::VIEW_CHANNEL) =>
        {
            Some(Body::Left)
        }
        _ => None,
    }
}

/// The session's user's permissions in a channel, cached until permissions in that guild may
/// have changed.
async fn permissions_in(
    s: &AppState,
    sref: &SessionRef,
    user: UserId,
    guild: GuildId,
    channel: ChannelId,
) -> Permissions {
    let epoch = s.hub.epoch(guild);
    {
        let mut g = lock(sref);
        let cache = g
            .visible
            .entry(guild)
            .or_insert_with(|| (epoch, HashMap::new()));
        if cache.0 != epoch {
            *cache = (epoch, HashMap::new());
        }
        if let Some(p) = cache.1.get(&channel) {
            return *p;
        }
    }
    let perms = s
        .visibility
        .permissions(&s.store, epoch, guild, channel, user)
        .await;
    let mut g = lock(sref);
    // Only cache what was computed under the epoch that is still current.
    if let Some(cache) = g.visible.get_mut(&guild) {
        if cache.0 == epoch {
            cache.1.insert(channel, perms);
        }
    }
    perms
}

/// Is the dispatch for this session (before the VIEW_CHANNEL check)? Keeps the guild set
/// current. Returns the user and the body for them (full, or redacted for MESSAGE_CONTENT).
pub(super) fn addressed(sref: &SessionRef, d: &Dispatch) -> Option<(UserId, Body)> {
    let mut g = lock(sref);
    let me: &User = &g.user;
    let uid = me.id;
    let ok = d.targets(&g.id, uid)
        && match &d.target {
            Target::Guild(gid) => g.guilds.contains(gid),
            _ => true,
        };
    if !ok {
        return None;
    }
    if let Some(gid) = d.guild_id {
        match (d.t, &d.target) {
            (DispatchKind::GuildCreate, Target::User(_)) => {
                g.guilds.insert(gid);
            }
            (DispatchKind::GuildDelete, _) => {
                g.guilds.remove(&gid);
                g.visible.remove(&gid);
            }
            _ => {}
        }
    }
    if !d.wanted_with(g.intents) {
        return None;
    }
    let redacted = d.redacted.is_some()
        && g.intents & intents::MESSAGE_CONTENT == 0
        && !d.full_for.contains(&uid);
    Some((uid, if redacted { Body::Redacted } else { Body::Full }))
}
