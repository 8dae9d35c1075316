//! Typed snowflake ids shared by Lodge's crates.
//!
//! Each id is a `u64` snowflake in a newtype, so a guild id cannot be passed where a user id is
//! expected. The types change no format anywhere:
//!
//! - `Display` prints the bare number, so `format!("{id}")` and `.to_string()` (which build the
//!   Discord-shaped JSON, where snowflakes are strings) give what a bare `u64` gave.
//! - serde is `transparent`: an id serializes as a JSON number, exactly as the `u64` it
//!   replaces, so JSON stored in Redis keeps its bytes. Code that must send a snowflake as a
//!   string (Discord shapes, the sfu's reports) says so at the use site, with [`as_string`].
//! - SQL binds stay `i64`/`u64`: convert with [`GuildId::get`] at the store boundary.
//!
//! ```
//! use lodge_ids::{ChannelId, GuildId};
//!
//! let g = GuildId::from(41771983423143937);
//! assert_eq!(g.to_string(), "41771983423143937");
//! assert_eq!("41771983423143937".parse::<GuildId>().unwrap(), g);
//! assert_eq!(ChannelId(7).get(), 7);
//! ```

use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;

macro_rules! snowflake_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize,
            serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The snowflake as a number (SQL binds, arithmetic on the timestamp bits).
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                $name(v)
            }
        }

        impl From<$name> for u64 {
            fn from(id: $name) -> u64 {
                id.0
            }
        }

        /// The bare number, as a `u64` prints.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        /// Snowflake text: decimal digits, as Discord sends ids.
        impl FromStr for $name {
            type Err = ParseIntError;
            fn from_str(s: &str) -> Result<Self, ParseIntError> {
                s.parse().map($name)
            }
        }

        /// The bare number, as a `u64` is written.
        #[cfg(feature = "redis")]
        impl redis::ToRedisArgs for $name {
            fn write_redis_args<W>(&self, out: &mut W)
            where
                W: ?Sized + redis::RedisWrite,
            {
                self.0.write_redis_args(out)
            }
            fn describe_numeric_behavior(&self) -> redis::NumericBehavior {
                redis::NumericBehavior::NumberIsInteger
            }
        }

        /// Read as a `u64` is read (an integer reply or decimal text).
        #[cfg(feature = "redis")]
        impl redis::FromRedisValue for $name {
            fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
                u64::from_redis_value(v).map($name)
            }
        }

        impl AsString for $name {
            fn as_u64(&self) -> u64 {
                self.0
            }
        }
    };
}

snowflake_id!(
    /// A guild (server).
    GuildId
);
snowflake_id!(
    /// A channel: text, voice or category. A voice channel on a node is the sfu's room.
    ChannelId
);
snowflake_id!(
    /// A user (or bot) account.
    UserId
);
snowflake_id!(
    /// A message in a channel.
    MessageId
);
snowflake_id!(
    /// A role in a guild (the @everyone role's id is the guild's).
    RoleId
);

impl RoleId {
    /// A guild's `@everyone` role: its id is the guild's.
    pub const fn everyone(guild: GuildId) -> RoleId {
        RoleId(guild.0)
    }
}

/// Ids that can be written as snowflake strings by [`as_string`].
pub trait AsString {
    fn as_u64(&self) -> u64;
}

/// `#[serde(serialize_with = "lodge_ids::as_string")]`: write an id as a JSON string
/// (`"123"`), as Discord does, since snowflakes exceed JavaScript's 2^53.
pub fn as_string<T: AsString, S: serde::Serializer>(id: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&id.as_u64())
}

/// `#[serde(serialize_with = "lodge_ids::option_as_string")]`: `Some(id)` as a JSON string,
/// `None` as `null`.
pub fn option_as_string<T: AsString, S: serde::Serializer>(
    id: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.collect_str(&id.as_u64()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formats every store and wire depends on: these must not change.
    #[test]
    fn formats_are_those_of_a_bare_u64() {
        let big = u64::MAX; // beyond 2^53 and i64::MAX: no float or sign on the way
        let g = GuildId(big);
        assert_eq!(g.to_string(), big.to_string());
        assert_eq!(format!("{g}"), "18446744073709551615");
        assert_eq!(format!("{:?}", ChannelId(5)), "ChannelId(5)");
        // JSON: a number, like the u64 it replaces (Redis voice states depend on it).
        assert_eq!(serde_json::to_string(&ChannelId(42)).unwrap(), "42");
        assert_eq!(
            serde_json::to_string(&UserId(big)).unwrap(),
            "18446744073709551615"
        );
        assert_eq!(
            serde_json::from_str::<MessageId>("42").unwrap(),
            MessageId(42)
        );
        assert_eq!(serde_json::to_string(&Some(RoleId(3))).unwrap(), "3");
        assert_eq!(serde_json::to_string(&None::<RoleId>).unwrap(), "null");

        #[derive(serde::Serialize)]
        struct Shape {
            #[serde(serialize_with = "as_string")]
            user: UserId,
            #[serde(serialize_with = "option_as_string")]
            speaker: Option<UserId>,
            #[serde(serialize_with = "option_as_string")]
            none: Option<GuildId>,
            channel_id: ChannelId,
        }
        let s = Shape {
            user: UserId(big),
            speaker: Some(UserId(7)),
            none: None,
            channel_id: ChannelId(9),
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"user":"18446744073709551615","speaker":"7","none":null,"channel_id":9}"#
        );
    }

    #[test]
    fn parses_snowflake_text_only() {
        assert_eq!("123".parse::<UserId>(), Ok(UserId(123)));
        assert_eq!(
            "18446744073709551615".parse::<GuildId>(),
            Ok(GuildId(u64::MAX))
        );
        assert!("".parse::<UserId>().is_err());
        assert!("-1".parse::<UserId>().is_err());
        assert!("12a".parse::<ChannelId>().is_err());
        assert!("18446744073709551616".parse::<RoleId>().is_err());
        assert_eq!(u64::from(MessageId::from(8)), 8);
        assert_eq!(RoleId::everyone(GuildId(9)), RoleId(9));
    }
}
