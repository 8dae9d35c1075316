//! The voice gateway's opcodes (Discord voice gateway v8), and [`payload`], which builds every
//! payload the voice gateway sends.

use serde_json::{json, Value};

use crate::gateway::opcode::opcodes;

opcodes! {
    /// Voice gateway opcodes (Discord's numbering, v8). 10 and 12 are retired. 21–31 are
    /// DAVE's (end-to-end encryption, `e2ee.rs`); 25–30 travel as binary frames.
    pub enum Opcode {
        /// Client → server.
        Identify = 0,
        /// Client → server: Lodge takes an SDP offer (`protocol: "webrtc"`).
        SelectProtocol = 1,
        /// Server → client.
        Ready = 2,
        /// Client → server.
        Heartbeat = 3,
        /// Server → client: Lodge's SDP answer and the slot list.
        SessionDescription = 4,
        /// Both ways: Lodge announces which user a slot's SSRC carries.
        Speaking = 5,
        /// Server → client.
        HeartbeatAck = 6,
        /// Client → server.
        Resume = 7,
        /// Server → client.
        Hello = 8,
        /// Server → client.
        Resumed = 9,
        /// Server → client: users already in or newly joining the channel.
        ClientsConnect = 11,
        /// Server → client: a user left the channel.
        ClientDisconnect = 13,
        DavePrepareTransition = 21,
        DaveExecuteTransition = 22,
        DaveTransitionReady = 23,
        DavePrepareEpoch = 24,
        DaveMlsExternalSender = 25,
        DaveMlsKeyPackage = 26,
        DaveMlsProposals = 27,
        DaveMlsCommitWelcome = 28,
        DaveMlsAnnounceCommitTransition = 29,
        DaveMlsWelcome = 30,
        DaveMlsInvalidCommitWelcome = 31,
    }
}

/// A voice gateway payload: `{"op":…,"d":…}`.
pub fn payload(op: Opcode, d: Value) -> Value {
    json!({ "op": op.code(), "d": d })
}

/// Op 13: `user` left the channel.
pub fn client_disconnect(user: u64) -> Value {
    payload(
        Opcode::ClientDisconnect,
        json!({ "user_id": user.to_string() }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::UnknownOpcode;

    #[test]
    fn numbers_are_discords_and_parse_back() {
        let codes: Vec<u8> = Opcode::ALL.iter().map(|o| o.code()).collect();
        let mut expected = vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13];
        expected.extend(21..=31);
        assert_eq!(codes, expected);
        for o in Opcode::ALL {
            assert_eq!(Opcode::try_from(u64::from(o.code())), Ok(*o));
        }
        for n in [10, 12, 14, 20, 32, u64::MAX] {
            assert_eq!(Opcode::try_from(n), Err(UnknownOpcode(n)));
        }
        assert_eq!(
            payload(Opcode::HeartbeatAck, json!({ "t": 5 })),
            json!({ "op": 6, "d": { "t": 5 } })
        );
        assert_eq!(
            client_disconnect(7),
            json!({ "op": 13, "d": { "user_id": "7" } })
        );
    }
}
