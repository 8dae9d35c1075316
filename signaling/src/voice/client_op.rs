//! What a voice gateway client may send, parsed by one pure function the server itself uses
//! (and `fuzz/` fuzzes): a text frame in, a [`ClientOp`] or the close code and reason out. No
//! state, no I/O: whether an op is allowed *now* (identified or not) is the connection's call.

use lodge_sfu::native::CryptoMode;
use lodge_sfu::MAX_SLOTS;
use serde_json::Value;

use super::gateway::{close, MAX_PAYLOAD};
use super::Opcode;

/// One client payload, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOp {
    /// Op 0.
    Identify(Identify),
    /// Op 1.
    SelectProtocol(SelectProtocol),
    /// Op 3; `t` is echoed in the ACK (the nonce under `d.t`, or `d` itself when a number);
    /// `seq_ack` (v8): the last server `seq` the client saw, if it said (it may send -1).
    Heartbeat { t: Value, seq_ack: Option<i64> },
    /// Op 5: the client's speaking flags (1 microphone, 2 soundshare, 4 priority), if it
    /// gave a number. Speakers are selected from their packets, not from this; a native
    /// client's flags are relayed to the others with its user id.
    Speaking { speaking: Option<u64> },
    /// Op 7.
    Resume(Resume),
    /// Op 23 (DAVE): the client is ready for transition `transition_id` (songbird also sends
    /// its `protocol_version`, ignored).
    DaveTransitionReady { transition_id: u16 },
    /// Op 31 (DAVE): the client could not process the commit or Welcome of `transition_id`
    /// and has reset its session (a new key package follows).
    DaveInvalidCommitWelcome { transition_id: u16 },
    /// Any other op (one only the server sends, or no opcode at all), or none.
    Unknown(Option<u64>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identify {
    /// The guild.
    pub server_id: u64,
    pub user_id: u64,
    pub session_id: String,
    pub token: String,
    /// The newest DAVE protocol version the client speaks (`max_dave_protocol_version`;
    /// absent, null or 0: none).
    pub max_dave_protocol_version: u16,
}

/// Op 7: the connection to take up again, and (v8) the last server `seq` the client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub server_id: u64,
    pub session_id: String,
    pub token: String,
    pub seq_ack: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectProtocol {
    pub media: Media,
    /// Speaker slots the client asked for (`d.slots` or `d.data.slots`), 1..=[`MAX_SLOTS`].
    pub slots: Option<usize>,
}

/// What carries the client's media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Media {
    /// `protocol: "webrtc"`: the SDP offer (`d.data.sdp`, or `d.sdp`).
    WebRtc { sdp: String },
    /// `protocol: "udp"`: Discord's native transport, with what the client learnt from IP
    /// discovery (logged only: the node binds the address the discovery came from).
    Udp {
        address: Option<String>,
        port: Option<u16>,
        mode: CryptoMode,
    },
}

/// A payload refused: which op it claimed to be (if any) and the close code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub op: Option<Opcode>,
    pub code: u16,
    pub reason: String,
}

fn refuse(op: Option<Opcode>, code: u16, reason: impl Into<String>) -> Refused {
    Refused {
        op,
        code,
        reason: reason.into(),
    }
}

/// Longest voice token accepted (Lodge issues 32 characters).
pub const MAX_VOICE_TOKEN: usize = 128;

/// Parse one text frame. Never panics; every refusal carries a close code and a reason that
/// names what was wrong (and the limit, for sizes).
pub fn parse(text: &str) -> Result<ClientOp, Refused> {
    if text.len() > MAX_PAYLOAD {
        return Err(refuse(
            None,
            close::DECODE_ERROR,
            format!("payload larger than {MAX_PAYLOAD} bytes"),
        ));
    }
    let msg: Value = serde_json::from_str(text)
        .map_err(|_| refuse(None, close::DECODE_ERROR, "payload is not valid JSON"))?;
    let raw = msg.get("op").and_then(Value::as_u64);
    let d = msg.get("d").unwrap_or(&Value::Null);
    match raw.and_then(|n| Opcode::try_from(n).ok()) {
        Some(Opcode::Identify) => identify(d).map(ClientOp::Identify),
        Some(Opcode::SelectProtocol) => select_protocol(d).map(ClientOp::SelectProtocol),
        Some(Opcode::Heartbeat) => Ok(ClientOp::Heartbeat {
            t: d.get("t").cloned().unwrap_or_else(|| {
                if d.is_number() {
                    d.clone()
                } else {
                    Value::Null
                }
            }),
            seq_ack: d.get("seq_ack").and_then(Value::as_i64),
        }),
        Some(Opcode::Speaking) => Ok(ClientOp::Speaking {
            speaking: d.get("speaking").and_then(Value::as_u64),
        }),
        Some(Opcode::Resume) => resume(d).map(ClientOp::Resume),
        Some(op @ (Opcode::DaveTransitionReady | Opcode::DaveMlsInvalidCommitWelcome)) => {
            let transition_id = d
                .get("transition_id")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| {
                    refuse(
                        Some(op),
                        close::DECODE_ERROR,
                        format!("op {} needs transition_id, 0..=65535", op.code()),
                    )
                })?;
            Ok(if op == Opcode::DaveTransitionReady {
                ClientOp::DaveTransitionReady { transition_id }
            } else {
                ClientOp::DaveInvalidCommitWelcome { transition_id }
            })
        }
        _ => Ok(ClientOp::Unknown(raw)),
    }
}

/// A snowflake given as a string or a number.
fn snowflake(d: &Value, key: &str) -> Option<u64> {
    match d.get(key)? {
        Value::String(v) => v.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn identify(d: &Value) -> Result<Identify, Refused> {
    let bad = |reason: &str| refuse(Some(Opcode::Identify), close::DECODE_ERROR, reason);
    let (Some(server_id), Some(user_id)) = (snowflake(d, "server_id"), snowflake(d, "user_id"))
    else {
        return Err(bad("identify needs server_id and user_id"));
    };
    let session_id = d
        .get("session_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("identify needs session_id"))?;
    let token = d
        .get("token")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("identify needs token"))?;
    // The token becomes a key lookup in the shared store (Redis in a cluster): bounded first.
    if token.len() > MAX_VOICE_TOKEN {
        return Err(refuse(
            Some(Opcode::Identify),
            close::AUTHENTICATION_FAILED,
            format!("voice token longer than {MAX_VOICE_TOKEN} bytes"),
        ));
    }
    let max_dave_protocol_version = match d.get("max_dave_protocol_version") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| bad("max_dave_protocol_version must be an integer 0..=65535"))?,
    };
    Ok(Identify {
        server_id,
        user_id,
        session_id: session_id.to_string(),
        token: token.to_string(),
        max_dave_protocol_version,
    })
}

fn resume(d: &Value) -> Result<Resume, Refused> {
    let bad = |reason: &str| refuse(Some(Opcode::Resume), close::DECODE_ERROR, reason);
    let server_id = snowflake(d, "server_id").ok_or_else(|| bad("resume needs server_id"))?;
    let session_id = d
        .get("session_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("resume needs session_id"))?;
    let token = d
        .get("token")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("resume needs token"))?;
    if token.len() > MAX_VOICE_TOKEN || session_id.len() > MAX_VOICE_TOKEN {
        return Err(refuse(
            Some(Opcode::Resume),
            close::AUTHENTICATION_FAILED,
            format!("voice token or session id longer than {MAX_VOICE_TOKEN} bytes"),
        ));
    }
    Ok(Resume {
        server_id,
        session_id: session_id.to_string(),
        token: token.to_string(),
        seq_ack: d.get("seq_ack").and_then(Value::as_i64),
    })
}

/// Longest address text a Select Protocol may carry (an IPv6 address is at most 45).
const MAX_ADDRESS: usize = 64;

fn select_protocol(d: &Value) -> Result<SelectProtocol, Refused> {
    let bad = |code: u16, reason: String| refuse(Some(Opcode::SelectProtocol), code, reason);
    let protocol = d.get("protocol").and_then(Value::as_str).unwrap_or("");
    let data = d.get("data").unwrap_or(&Value::Null);
    let media = match protocol {
        "webrtc" => {
            let sdp = data
                .get("sdp")
                .or_else(|| d.get("sdp"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    bad(
                        close::DECODE_ERROR,
                        "select protocol needs data.sdp (the SDP offer)".into(),
                    )
                })?;
            Media::WebRtc {
                sdp: sdp.to_string(),
            }
        }
        "udp" => {
            let name = data.get("mode").and_then(Value::as_str).unwrap_or("");
            let mode = CryptoMode::from_name(name).ok_or_else(|| {
                let offered: Vec<&str> = CryptoMode::ALL.iter().map(|m| m.name()).collect();
                bad(
                    close::UNKNOWN_ENCRYPTION_MODE,
                    format!(
                        "encryption mode {name:?} is not supported; use one of {}",
                        offered.join(", ")
                    ),
                )
            })?;
            let address = match data.get("address") {
                None | Some(Value::Null) => None,
                Some(Value::String(a)) if a.len() <= MAX_ADDRESS => Some(a.clone()),
                Some(_) => {
                    return Err(bad(
                        close::DECODE_ERROR,
                        format!("data.address must be a string of at most {MAX_ADDRESS} bytes"),
                    ))
                }
            };
            let port = match data.get("port") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().and_then(|p| u16::try_from(p).ok()).ok_or_else(
                    || bad(close::DECODE_ERROR, "data.port must be 0..=65535".into()),
                )?),
            };
            Media::Udp {
                address,
                port,
                mode,
            }
        }
        other => {
            return Err(bad(
                close::UNKNOWN_PROTOCOL,
                format!(
                    "protocol {other:?} is not available on this node; use \"webrtc\" or \"udp\""
                ),
            ))
        }
    };
    let slots = match d.get("slots").or_else(|| data.get("slots")) {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|k| (1..=MAX_SLOTS as u64).contains(k))
                .ok_or_else(|| {
                    bad(
                        close::DECODE_ERROR,
                        format!("slots must be 1..={MAX_SLOTS}"),
                    )
                })? as usize,
        ),
    };
    Ok(SelectProtocol { media, slots })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(text: &str) -> u16 {
        parse(text).unwrap_err().code
    }

    #[test]
    fn table() {
        assert_eq!(
            parse(r#"{"op":0,"d":{"server_id":"1","user_id":2,"session_id":"s","token":"t"}}"#),
            Ok(ClientOp::Identify(Identify {
                server_id: 1,
                user_id: 2,
                session_id: "s".into(),
                token: "t".into(),
                max_dave_protocol_version: 0,
            }))
        );
        assert_eq!(
            parse(
                r#"{"op":0,"d":{"server_id":"1","user_id":"2","session_id":"s","token":"t","max_dave_protocol_version":1}}"#
            ),
            Ok(ClientOp::Identify(Identify {
                server_id: 1,
                user_id: 2,
                session_id: "s".into(),
                token: "t".into(),
                max_dave_protocol_version: 1,
            }))
        );
        for bad in ["-1", "1.5", "\"1\"", "65536"] {
            assert_eq!(
                code(&format!(
                    r#"{{"op":0,"d":{{"server_id":1,"user_id":2,"session_id":"s","token":"t","max_dave_protocol_version":{bad}}}}}"#
                )),
                close::DECODE_ERROR,
                "{bad}"
            );
        }
        assert_eq!(
            parse(r#"{"op":23,"d":{"transition_id":7,"protocol_version":1}}"#),
            Ok(ClientOp::DaveTransitionReady { transition_id: 7 })
        );
        assert_eq!(
            parse(r#"{"op":31,"d":{"transition_id":0}}"#),
            Ok(ClientOp::DaveInvalidCommitWelcome { transition_id: 0 })
        );
        for bad in [
            r#"{"op":23,"d":{}}"#,
            r#"{"op":31,"d":{"transition_id":70000}}"#,
        ] {
            assert_eq!(code(bad), close::DECODE_ERROR, "{bad}");
        }
        assert_eq!(
            parse(r#"{"op":1,"d":{"protocol":"webrtc","data":{"sdp":"v=0"},"slots":3}}"#),
            Ok(ClientOp::SelectProtocol(SelectProtocol {
                media: Media::WebRtc { sdp: "v=0".into() },
                slots: Some(3)
            }))
        );
        assert_eq!(
            parse(r#"{"op":1,"d":{"protocol":"webrtc","sdp":"v=0","data":{"slots":null}}}"#),
            Ok(ClientOp::SelectProtocol(SelectProtocol {
                media: Media::WebRtc { sdp: "v=0".into() },
                slots: None
            }))
        );
        assert_eq!(
            parse(r#"{"op":3,"d":{"t":1234,"seq_ack":1}}"#),
            Ok(ClientOp::Heartbeat {
                t: json!(1234),
                seq_ack: Some(1)
            })
        );
        assert_eq!(
            parse(r#"{"op":3,"d":99}"#),
            Ok(ClientOp::Heartbeat {
                t: json!(99),
                seq_ack: None
            })
        );
        assert_eq!(
            parse(r#"{"op":3}"#),
            Ok(ClientOp::Heartbeat {
                t: Value::Null,
                seq_ack: None
            })
        );
        assert_eq!(
            parse(r#"{"op":3,"d":{"t":5,"seq_ack":-1}}"#),
            Ok(ClientOp::Heartbeat {
                t: json!(5),
                seq_ack: Some(-1)
            }),
            "discord.js sends -1 before any numbered message"
        );
        assert_eq!(
            parse(r#"{"op":5,"d":{}}"#),
            Ok(ClientOp::Speaking { speaking: None })
        );
        assert_eq!(
            parse(r#"{"op":5,"d":{"speaking":1,"delay":0,"ssrc":3,"user_id":null}}"#),
            Ok(ClientOp::Speaking { speaking: Some(1) })
        );
        assert_eq!(
            parse(
                r#"{"op":1,"d":{"protocol":"udp","data":{"address":"203.0.113.9","port":50000,"mode":"aead_xchacha20_poly1305_rtpsize"}}}"#
            ),
            Ok(ClientOp::SelectProtocol(SelectProtocol {
                media: Media::Udp {
                    address: Some("203.0.113.9".into()),
                    port: Some(50000),
                    mode: CryptoMode::XChaCha20Poly1305Rtpsize
                },
                slots: None
            }))
        );
        assert_eq!(
            parse(r#"{"op":7,"d":{"server_id":"5","session_id":"s","token":"t","seq_ack":9}}"#),
            Ok(ClientOp::Resume(Resume {
                server_id: 5,
                session_id: "s".into(),
                token: "t".into(),
                seq_ack: Some(9)
            }))
        );
        assert_eq!(
            parse(r#"{"op":7,"d":{}}"#).unwrap_err().code,
            close::DECODE_ERROR,
            "a resume names its connection"
        );
        assert_eq!(parse(r#"{"op":42}"#), Ok(ClientOp::Unknown(Some(42))));
        // Ops only the server sends, and DAVE's, are unknown from a client.
        assert_eq!(parse(r#"{"op":8}"#), Ok(ClientOp::Unknown(Some(8))));
        assert_eq!(parse(r#"{"op":26}"#), Ok(ClientOp::Unknown(Some(26))));
        assert_eq!(parse(r#"{"op":"0"}"#), Ok(ClientOp::Unknown(None)));
        assert_eq!(parse("[1,2]"), Ok(ClientOp::Unknown(None)));

        assert_eq!(code("{"), close::DECODE_ERROR);
        assert_eq!(code(&" ".repeat(MAX_PAYLOAD + 1)), close::DECODE_ERROR);
        assert!(parse(&" ".repeat(MAX_PAYLOAD + 1))
            .unwrap_err()
            .reason
            .contains(&MAX_PAYLOAD.to_string()));
        assert_eq!(
            code(r#"{"op":0,"d":{"server_id":"x","user_id":2,"session_id":"s","token":"t"}}"#),
            close::DECODE_ERROR
        );
        assert_eq!(
            code(r#"{"op":0,"d":{"server_id":1,"user_id":2,"token":"t"}}"#),
            close::DECODE_ERROR
        );
        let long = format!(
            r#"{{"op":0,"d":{{"server_id":1,"user_id":2,"session_id":"s","token":"{}"}}}}"#,
            "t".repeat(MAX_VOICE_TOKEN + 1)
        );
        assert_eq!(code(&long), close::AUTHENTICATION_FAILED);
        assert!(parse(&long).unwrap_err().reason.contains("128"));
        assert_eq!(
            code(r#"{"op":0,"d":{"server_id":1,"user_id":2,"session_id":"s","token":7}}"#),
            close::DECODE_ERROR
        );
        for mode in [
            r#"{}"#,
            r#"{"mode":"xsalsa20_poly1305"}"#,
            r#"{"mode":"aead_aes256_gcm"}"#,
            r#"{"mode":7}"#,
        ] {
            let r = parse(&format!(
                r#"{{"op":1,"d":{{"protocol":"udp","data":{mode}}}}}"#
            ))
            .unwrap_err();
            assert_eq!(r.code, close::UNKNOWN_ENCRYPTION_MODE, "{mode}");
            assert!(r.reason.contains("aead_aes256_gcm_rtpsize"), "{}", r.reason);
        }
        let udp = |data: &str| {
            code(&format!(
                r#"{{"op":1,"d":{{"protocol":"udp","data":{{"mode":"aead_aes256_gcm_rtpsize",{data}}}}}}}"#
            ))
        };
        assert_eq!(udp(r#""port":70000"#), close::DECODE_ERROR);
        assert_eq!(udp(r#""port":-1"#), close::DECODE_ERROR);
        assert_eq!(
            udp(&format!(r#""address":"{}""#, "1".repeat(65))),
            close::DECODE_ERROR
        );
        assert_eq!(
            code(r#"{"op":1,"d":{"protocol":"rtp","data":{}}}"#),
            close::UNKNOWN_PROTOCOL
        );
        assert_eq!(
            code(r#"{"op":1,"d":{"protocol":"webrtc","data":{}}}"#),
            close::DECODE_ERROR
        );
        for slots in ["0", "17", "-1", "2.5", "\"3\""] {
            let r = parse(&format!(
                r#"{{"op":1,"d":{{"protocol":"webrtc","data":{{"sdp":"v=0"}},"slots":{slots}}}}}"#
            ))
            .unwrap_err();
            assert_eq!(
                (r.op, r.code),
                (Some(Opcode::SelectProtocol), close::DECODE_ERROR),
                "{slots}"
            );
            assert!(r.reason.contains("1..=16"), "{}", r.reason);
        }
    }
}
