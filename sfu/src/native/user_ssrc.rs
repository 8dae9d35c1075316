//! The SSRC a user speaks under in a guild's voice: what Ready hands a native client, what
//! its packets carry, and what every native listener hears that user's voice under, whatever
//! the user's own transport. A pure function of (guild, user), so signaling (Ready, op 5) and
//! the node (discovery, forwarding) agree without asking each other.
//!
//! Always odd: IP discovery requests carry the SSRC where STUN carries its (even) magic
//! cookie, so a request can never be taken for STUN. A voice state is one per (guild, user),
//! so one SSRC belongs to one participant unless two pairs collide (2⁻³¹ per pair); the node
//! refuses the second native join then (see `Node::join_native`).

use crate::ids::{GuildId, Ssrc, UserId};

pub fn user_ssrc(guild: GuildId, user: UserId) -> Ssrc {
    // SplitMix64's finaliser over both ids: neighbouring snowflakes land far apart.
    let mut x = user.get() ^ guild.get().rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    Ssrc(((x >> 32) as u32) | 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_stable_and_distinct_per_guild() {
        let a = user_ssrc(GuildId(1), UserId(2));
        assert_eq!(a, user_ssrc(GuildId(1), UserId(2)));
        assert_eq!(a.0 & 1, 1);
        assert_ne!(a, user_ssrc(GuildId(3), UserId(2)), "a bot in two guilds");
        let mut seen = std::collections::HashSet::new();
        for u in 0..10_000u64 {
            let s = user_ssrc(GuildId(7), UserId(1_000_000_000_000 + u));
            assert_eq!(s.0 & 1, 1);
            seen.insert(s);
        }
        assert_eq!(seen.len(), 10_000, "consecutive snowflakes do not collide");
    }
}
