//! Discord's permission bits and its computation, as one pure function.
//!
//! Order (Discord's documented algorithm): the guild owner has everything; otherwise start from
//! `@everyone`'s permissions, OR every role of the member; ADMINISTRATOR grants everything and
//! skips overwrites. Then the channel's overwrites apply: `@everyone`'s deny then allow, all the
//! member's roles' denies then allows (combined), then the member's own deny then allow.

use lodge_ids::{RoleId, UserId};
use serde::{Deserialize, Serialize};

/// A permission bit set (Discord's bit positions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Permissions(pub u64);

impl Permissions {
    pub const CREATE_INSTANT_INVITE: u64 = 1 << 0;
    pub const KICK_MEMBERS: u64 = 1 << 1;
    pub const BAN_MEMBERS: u64 = 1 << 2;
    pub const ADMINISTRATOR: u64 = 1 << 3;
    pub const MANAGE_CHANNELS: u64 = 1 << 4;
    pub const MANAGE_GUILD: u64 = 1 << 5;
    pub const ADD_REACTIONS: u64 = 1 << 6;
    pub const VIEW_AUDIT_LOG: u64 = 1 << 7;
    pub const VIEW_CHANNEL: u64 = 1 << 10;
    pub const SEND_MESSAGES: u64 = 1 << 11;
    pub const SEND_TTS_MESSAGES: u64 = 1 << 12;
    pub const MANAGE_MESSAGES: u64 = 1 << 13;
    pub const READ_MESSAGE_HISTORY: u64 = 1 << 16;
    pub const MENTION_EVERYONE: u64 = 1 << 17;
    pub const CONNECT: u64 = 1 << 20;
    pub const SPEAK: u64 = 1 << 21;
    pub const MUTE_MEMBERS: u64 = 1 << 22;
    pub const DEAFEN_MEMBERS: u64 = 1 << 23;
    pub const MOVE_MEMBERS: u64 = 1 << 24;
    pub const USE_VAD: u64 = 1 << 25;
    pub const CHANGE_NICKNAME: u64 = 1 << 26;
    pub const MANAGE_NICKNAMES: u64 = 1 << 27;
    pub const MANAGE_ROLES: u64 = 1 << 28;
    pub const ALL: u64 = (1 << 51) - 1;

    /// What `@everyone` gets in a new guild: see, talk, join voice, invite.
    pub const DEFAULT_EVERYONE: u64 = Self::CREATE_INSTANT_INVITE
        | Self::ADD_REACTIONS
        | Self::VIEW_CHANNEL
        | Self::SEND_MESSAGES
        | Self::READ_MESSAGE_HISTORY
        | Self::CONNECT
        | Self::SPEAK
        | Self::USE_VAD;

    pub fn has(self, bits: u64) -> bool {
        self.0 & bits == bits
    }
}

/// An overwrite's target kind, as Discord numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OverwriteKind {
    Role = 0,
    Member = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overwrite {
    pub target: u64,
    pub kind: OverwriteKind,
    pub allow: u64,
    pub deny: u64,
}

/// Everything the computation needs, gathered by the store.
#[derive(Debug, Clone)]
pub struct PermissionInput<'a> {
    pub guild_id: u64,
    pub owner_id: u64,
    pub user_id: u64,
    /// `@everyone`'s permissions (the role whose id equals the guild id).
    pub everyone: u64,
    /// (role id, permissions) of the member's roles, `@everyone` excluded.
    pub roles: &'a [(u64, u64)],
    /// The channel's overwrites; empty for guild-level permissions.
    pub overwrites: &'a [Overwrite],
}

/// A member's permissions from what the store holds: the guild, all its roles, the member's
/// role ids and (for channel permissions) the channel.
pub fn of_member(
    guild: &crate::Guild,
    roles: &[crate::Role],
    member_role_ids: &[RoleId],
    channel: Option<&crate::Channel>,
    user_id: UserId,
) -> Permissions {
    let everyone = roles
        .iter()
        .find(|r| r.id == RoleId::everyone(guild.id))
        .map(|r| r.permissions)
        .unwrap_or(0);
    let member_roles: Vec<(u64, u64)> = roles
        .iter()
        .filter(|r| member_role_ids.contains(&r.id))
        .map(|r| (r.id.get(), r.permissions))
        .collect();
    compute(&PermissionInput {
        guild_id: guild.id.get(),
        owner_id: guild.owner_id.get(),
        user_id: user_id.get(),
        everyone,
        roles: &member_roles,
        overwrites: channel.map(|c| c.overwrites.as_slice()).unwrap_or(&[]),
    })
}

/// Discord's permission computation.
pub fn compute(input: &PermissionInput<'_>) -> Permissions {
    if input.user_id == input.owner_id {
        return Permissions(Permissions::ALL);
    }
    let mut base = input.everyone;
    for (_, p) in input.roles {
        base |= p;
    }
    if base & Permissions::ADMINISTRATOR != 0 {
        return Permissions(Permissions::ALL);
    }
    let mut perms = base;
    if let Some(o) = input
        .overwrites
        .iter()
        .find(|o| o.kind == OverwriteKind::Role && o.target == input.guild_id)
    {
        perms &= !o.deny;
        perms |= o.allow;
    }
    let (mut allow, mut deny) = (0u64, 0u64);
    for o in input
        .overwrites
        .iter()
        .filter(|o| o.kind == OverwriteKind::Role)
    {
        if input.roles.iter().any(|(r, _)| *r == o.target) {
            allow |= o.allow;
            deny |= o.deny;
        }
    }
    perms &= !deny;
    perms |= allow;
    if let Some(o) = input
        .overwrites
        .iter()
        .find(|o| o.kind == OverwriteKind::Member && o.target == input.user_id)
    {
        perms &= !o.deny;
        perms |= o.allow;
    }
    Permissions(perms)
}

#[cfg(test)]
mod tests {
    use super::*;
    const G: u64 = 100;
    const OWNER: u64 = 1;
    const U: u64 = 2;
    const MOD: u64 = 500;
    const MUTED: u64 = 501;
    use Permissions as P;

    fn run(everyone: u64, roles: &[(u64, u64)], ow: &[Overwrite], user: u64) -> u64 {
        compute(&PermissionInput {
            guild_id: G,
            owner_id: OWNER,
            user_id: user,
            everyone,
            roles,
            overwrites: ow,
        })
        .0
    }
    fn role_ow(target: u64, allow: u64, deny: u64) -> Overwrite {
        Overwrite {
            target,
            kind: OverwriteKind::Role,
            allow,
            deny,
        }
    }
    fn member_ow(target: u64, allow: u64, deny: u64) -> Overwrite {
        Overwrite {
            target,
            kind: OverwriteKind::Member,
            allow,
            deny,
        }
    }

    #[test]
    fn table() {
        let d = P::DEFAULT_EVERYONE;
        #[rustfmt::skip]
        type Case = (&'static str, u64, Vec<(u64, u64)>, Vec<Overwrite>, u64, u64, bool);
        let cases: Vec<Case> = vec![
            // (name, everyone, roles, overwrites, user, bits to test, expected)
            (
                "owner has all even if denied",
                0,
                vec![],
                vec![role_ow(G, 0, P::ALL)],
                OWNER,
                P::SPEAK,
                true,
            ),
            (
                "everyone default can connect",
                d,
                vec![],
                vec![],
                U,
                P::CONNECT | P::SPEAK,
                true,
            ),
            (
                "everyone lacks mute",
                d,
                vec![],
                vec![],
                U,
                P::MUTE_MEMBERS,
                false,
            ),
            (
                "role adds mute",
                d,
                vec![(MOD, P::MUTE_MEMBERS)],
                vec![],
                U,
                P::MUTE_MEMBERS,
                true,
            ),
            (
                "admin skips overwrites",
                0,
                vec![(MOD, P::ADMINISTRATOR)],
                vec![member_ow(U, 0, P::VIEW_CHANNEL)],
                U,
                P::VIEW_CHANNEL,
                true,
            ),
            (
                "everyone overwrite denies view",
                d,
                vec![],
                vec![role_ow(G, 0, P::VIEW_CHANNEL)],
                U,
                P::VIEW_CHANNEL,
                false,
            ),
            (
                "role overwrite allow beats everyone deny",
                d,
                vec![(MOD, 0)],
                vec![
                    role_ow(G, 0, P::VIEW_CHANNEL),
                    role_ow(MOD, P::VIEW_CHANNEL, 0),
                ],
                U,
                P::VIEW_CHANNEL,
                true,
            ),
            (
                "role allow beats another role's deny",
                d,
                vec![(MOD, 0), (MUTED, 0)],
                vec![role_ow(MUTED, 0, P::SPEAK), role_ow(MOD, P::SPEAK, 0)],
                U,
                P::SPEAK,
                true,
            ),
            (
                "role deny removes speak",
                d,
                vec![(MUTED, 0)],
                vec![role_ow(MUTED, 0, P::SPEAK)],
                U,
                P::SPEAK,
                false,
            ),
            (
                "member deny beats role allow",
                d,
                vec![(MOD, 0)],
                vec![role_ow(MOD, P::SPEAK, 0), member_ow(U, 0, P::SPEAK)],
                U,
                P::SPEAK,
                false,
            ),
            (
                "member allow beats everyone deny",
                d,
                vec![],
                vec![role_ow(G, 0, P::CONNECT), member_ow(U, P::CONNECT, 0)],
                U,
                P::CONNECT,
                true,
            ),
            (
                "overwrite of a role the user lacks is ignored",
                d,
                vec![],
                vec![role_ow(MUTED, 0, P::SPEAK)],
                U,
                P::SPEAK,
                true,
            ),
            (
                "member overwrite for someone else is ignored",
                d,
                vec![],
                vec![member_ow(99, 0, P::SPEAK)],
                U,
                P::SPEAK,
                true,
            ),
        ];
        for (name, everyone, roles, ow, user, bits, expect) in cases {
            let got = run(everyone, &roles, &ow, user);
            assert_eq!(got & bits == bits, expect, "{name}: got {got:#x}");
        }
    }
}
