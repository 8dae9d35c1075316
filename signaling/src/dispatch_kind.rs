//! Every gateway event Lodge sends, as one table: its name on the wire (`t`), the intent a
//! session needs to receive it, and whether it may change who can see what in its guild. The
//! hub, the session filter and the registry ask the kind; nothing matches on event names.
//!
//! A kind serializes as its name (`"MESSAGE_CREATE"`), so a dispatch crossing nodes carries
//! the same string a client sees.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::gateway::intents::{
    GUILDS, GUILD_MEMBERS, GUILD_MESSAGES, GUILD_MESSAGE_REACTIONS, GUILD_MESSAGE_TYPING,
    GUILD_MODERATION, GUILD_PRESENCES, GUILD_VOICE_STATES,
};

/// Declares [`DispatchKind`] and its table; each row is
/// `Variant = "NAME", intent (None: always sent), changes visibility;`.
macro_rules! dispatch_kinds {
    ($($(#[$doc:meta])* $kind:ident = $name:literal, $intent:expr, $visibility:literal;)*) => {
        /// A gateway event Lodge sends (the `t` of an op 0 payload).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DispatchKind {
            $($(#[$doc])* $kind,)*
        }

        impl DispatchKind {
            /// Every kind, in table order.
            pub const ALL: &'static [DispatchKind] = &[$(DispatchKind::$kind,)*];

            /// The event's name on the wire.
            pub const fn name(self) -> &'static str {
                match self {
                    $(DispatchKind::$kind => $name,)*
                }
            }

            /// The intent bit a session needs to receive this event; `None`: always sent.
            pub const fn intent(self) -> Option<u64> {
                match self {
                    $(DispatchKind::$kind => $intent,)*
                }
            }

            /// Whether cached channel visibility in the event's guild may be stale after it
            /// (`Hub::send` moves the guild's visibility epoch before publishing it).
            pub const fn changes_visibility(self) -> bool {
                match self {
                    $(DispatchKind::$kind => $visibility,)*
                }
            }
        }
    };
}

dispatch_kinds! {
    // Session payloads: sent to one session, never published through the hub.
    Ready = "READY", None, false;
    Resumed = "RESUMED", None, false;
    GuildMembersChunk = "GUILD_MEMBERS_CHUNK", None, false;
    RateLimited = "RATE_LIMITED", None, false;

    // Guilds. A rename (GUILD_UPDATE) changes nothing anyone can see, and a ban is announced
    // with the GUILD_MEMBER_REMOVE that does, so neither moves the epoch.
    GuildCreate = "GUILD_CREATE", Some(GUILDS), true;
    GuildUpdate = "GUILD_UPDATE", Some(GUILDS), false;
    GuildDelete = "GUILD_DELETE", Some(GUILDS), true;
    GuildRoleCreate = "GUILD_ROLE_CREATE", Some(GUILDS), true;
    GuildRoleUpdate = "GUILD_ROLE_UPDATE", Some(GUILDS), true;
    GuildRoleDelete = "GUILD_ROLE_DELETE", Some(GUILDS), true;
    ChannelCreate = "CHANNEL_CREATE", Some(GUILDS), true;
    ChannelUpdate = "CHANNEL_UPDATE", Some(GUILDS), true;
    ChannelDelete = "CHANNEL_DELETE", Some(GUILDS), true;
    GuildMemberAdd = "GUILD_MEMBER_ADD", Some(GUILD_MEMBERS), true;
    GuildMemberUpdate = "GUILD_MEMBER_UPDATE", Some(GUILD_MEMBERS), true;
    GuildMemberRemove = "GUILD_MEMBER_REMOVE", Some(GUILD_MEMBERS), true;
    GuildBanAdd = "GUILD_BAN_ADD", Some(GUILD_MODERATION), false;
    GuildBanRemove = "GUILD_BAN_REMOVE", Some(GUILD_MODERATION), false;

    // Messages.
    MessageCreate = "MESSAGE_CREATE", Some(GUILD_MESSAGES), false;
    MessageUpdate = "MESSAGE_UPDATE", Some(GUILD_MESSAGES), false;
    MessageDelete = "MESSAGE_DELETE", Some(GUILD_MESSAGES), false;
    MessageDeleteBulk = "MESSAGE_DELETE_BULK", Some(GUILD_MESSAGES), false;
    MessageReactionAdd = "MESSAGE_REACTION_ADD", Some(GUILD_MESSAGE_REACTIONS), false;
    MessageReactionRemove = "MESSAGE_REACTION_REMOVE", Some(GUILD_MESSAGE_REACTIONS), false;
    TypingStart = "TYPING_START", Some(GUILD_MESSAGE_TYPING), false;

    // Presence and voice.
    PresenceUpdate = "PRESENCE_UPDATE", Some(GUILD_PRESENCES), false;
    VoiceStateUpdate = "VOICE_STATE_UPDATE", Some(GUILD_VOICE_STATES), false;
    VoiceServerUpdate = "VOICE_SERVER_UPDATE", None, false;
    /// Lodge's own: why an op 4 was refused (Discord answers nothing).
    LodgeVoiceError = "LODGE_VOICE_ERROR", None, false;
}

impl DispatchKind {
    /// GUILD_CREATE and GUILD_DELETE keep a session's set of guilds current, so they reach
    /// every session they are addressed to, whatever its intents.
    pub const fn keeps_guild_set(self) -> bool {
        matches!(self, DispatchKind::GuildCreate | DispatchKind::GuildDelete)
    }

    /// Whether a session with `intents` receives this kind of event.
    pub const fn wanted_with(self, intents: u64) -> bool {
        match self.intent() {
            Some(bit) => intents & bit != 0,
            None => true,
        }
    }
}

impl fmt::Display for DispatchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no [`DispatchKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dispatch event {0:?}")]
pub struct UnknownDispatchKind(pub String);

impl FromStr for DispatchKind {
    type Err = UnknownDispatchKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DispatchKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownDispatchKind(s.chars().take(64).collect()))
    }
}

impl Serialize for DispatchKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for DispatchKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = DispatchKind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a gateway event name such as \"MESSAGE_CREATE\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DispatchKind, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Name)
    }
}

#[cfg(test)]
mod tests {
    use super::DispatchKind as K;
    use crate::gateway::intents;

    #[test]
    fn names_are_distinct_and_parse_back() {
        for (i, k) in K::ALL.iter().enumerate() {
            assert_eq!(k.name().parse::<K>(), Ok(*k));
            assert!(K::ALL[..i].iter().all(|o| o.name() != k.name()), "{k}");
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
            assert_eq!(serde_json::from_str::<K>(&json).unwrap(), *k);
        }
        assert!("MESSAGE_CREATED".parse::<K>().is_err());
        assert!(serde_json::from_str::<K>("\"message_create\"").is_err());
        assert!(serde_json::from_str::<K>("0").is_err());
    }

    /// The table against the rules it replaced, written out once more.
    #[test]
    fn intents_and_visibility_follow_discords_rules() {
        let cases = [
            (K::GuildCreate, Some(intents::GUILDS), true),
            (K::GuildUpdate, Some(intents::GUILDS), false),
            (K::GuildRoleDelete, Some(intents::GUILDS), true),
            (K::ChannelUpdate, Some(intents::GUILDS), true),
            (K::GuildMemberRemove, Some(intents::GUILD_MEMBERS), true),
            (K::GuildBanAdd, Some(intents::GUILD_MODERATION), false),
            (
                K::VoiceStateUpdate,
                Some(intents::GUILD_VOICE_STATES),
                false,
            ),
            (K::PresenceUpdate, Some(intents::GUILD_PRESENCES), false),
            (K::MessageDeleteBulk, Some(intents::GUILD_MESSAGES), false),
            (
                K::MessageReactionRemove,
                Some(intents::GUILD_MESSAGE_REACTIONS),
                false,
            ),
            (K::TypingStart, Some(intents::GUILD_MESSAGE_TYPING), false),
            (K::VoiceServerUpdate, None, false),
            (K::LodgeVoiceError, None, false),
            (K::Ready, None, false),
        ];
        for (k, intent, visibility) in cases {
            assert_eq!(
                (k.intent(), k.changes_visibility()),
                (intent, visibility),
                "{k}"
            );
        }
        // Every channel event and every guild event but the rename, the bans and the member
        // chunk (never published) moves the epoch, as the name-prefix rule did.
        for k in K::ALL {
            let n = k.name();
            let by_prefix = (n.starts_with("GUILD_")
                && !matches!(
                    k,
                    K::GuildUpdate | K::GuildBanAdd | K::GuildBanRemove | K::GuildMembersChunk
                ))
                || n.starts_with("CHANNEL_");
            assert_eq!(k.changes_visibility(), by_prefix, "{k}");
        }
        assert!(K::VoiceServerUpdate.wanted_with(0));
        assert!(!K::TypingStart.wanted_with(intents::GUILDS));
    }
}
