//! The gateway's opcodes (v10), and [`payload`], which builds every non-dispatch payload the
//! server sends. Dispatches (op 0) are framed around their pre-serialized body by
//! `dispatch::frame`.

use serde_json::{json, Value};

/// A number that is no opcode of the gateway it came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown opcode {0}")]
pub struct UnknownOpcode(pub u64);

/// Declares an opcode enum (`#[repr(u8)]`, each variant its number) with `code`, `ALL` and
/// `TryFrom<u64>`; shared by the gateway and the voice gateway.
macro_rules! opcodes {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$doc:meta])* $op:ident = $n:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$doc])* $op = $n,)*
        }

        impl $name {
            /// Every opcode, in number order.
            pub const ALL: &'static [$name] = &[$($name::$op,)*];

            /// The number on the wire.
            pub const fn code(self) -> u8 {
                self as u8
            }
        }

        impl TryFrom<u64> for $name {
            type Error = $crate::gateway::UnknownOpcode;

            fn try_from(n: u64) -> Result<Self, Self::Error> {
                match n {
                    $($n => Ok($name::$op),)*
                    _ => Err($crate::gateway::UnknownOpcode(n)),
                }
            }
        }
    };
}
pub(crate) use opcodes;

opcodes! {
    /// Gateway opcodes (Discord's numbering; 5 is unused).
    pub enum Opcode {
        /// Server → client: an event (`t`, `s`, `d`).
        Dispatch = 0,
        /// Both ways: the client's heartbeat; the server asks for one.
        Heartbeat = 1,
        Identify = 2,
        PresenceUpdate = 3,
        VoiceStateUpdate = 4,
        Resume = 6,
        /// Server → client: reconnect and resume.
        Reconnect = 7,
        RequestGuildMembers = 8,
        /// Server → client: `d` says whether the session can be resumed.
        InvalidSession = 9,
        Hello = 10,
        HeartbeatAck = 11,
    }
}

/// A payload other than a dispatch: `{"op":…,"d":…,"s":null,"t":null}`.
pub fn payload(op: Opcode, d: Value) -> Value {
    json!({ "op": op.code(), "d": d, "s": null, "t": null })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_discords_and_parse_back() {
        let expected = [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11];
        let codes: Vec<u8> = Opcode::ALL.iter().map(|o| o.code()).collect();
        assert_eq!(codes, expected);
        for o in Opcode::ALL {
            assert_eq!(Opcode::try_from(u64::from(o.code())), Ok(*o));
        }
        for n in [5, 12, 256, u64::MAX] {
            assert_eq!(Opcode::try_from(n), Err(UnknownOpcode(n)));
        }
        assert_eq!(
            payload(Opcode::InvalidSession, Value::Bool(false)),
            json!({ "op": 9, "d": false, "s": null, "t": null })
        );
    }
}
