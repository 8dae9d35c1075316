//! What a gateway client may send, parsed once into typed ops. Everything a client can get
//! wrong is caught here and named with the close code Discord uses for it, so the connection
//! loop only dispatches. A pure function of the frame's text: fuzzed (`fuzz/`, target
//! `gateway_payload`).

use lodge_ids::GuildId;
use serde_json::Value;

use super::{close, intents, Opcode};

/// Client payloads larger than this close the connection with 4002.
pub const MAX_PAYLOAD: usize = 4096;
/// Members listed in one GUILD_MEMBERS_CHUNK; larger answers are split.
pub const MEMBERS_PER_CHUNK: usize = 1000;
/// `user_ids` in one Request Guild Members, at most (Discord's limit).
pub const MAX_MEMBER_IDS: usize = 100;
/// `limit` of a Request Guild Members query, at most.
pub const MAX_MEMBER_QUERY_LIMIT: u32 = 100;
/// A longer `nonce` is ignored, as Discord ignores it.
pub const MAX_NONCE_BYTES: usize = 32;

/// A parsed client payload.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOp {
    /// op 1, with the last sequence number the client saw.
    Heartbeat(Option<u64>),
    /// op 2.
    Identify(Identify),
    /// op 3; its `d` is checked by the presence module.
    PresenceUpdate(Value),
    /// op 4; its `d` is checked by the voice service.
    VoiceStateUpdate(Value),
    /// op 6.
    Resume(Resume),
    /// op 8.
    RequestGuildMembers(RequestMembers),
}

/// Whether a connection that has not identified yet may send this payload: Heartbeat,
/// Identify and Resume only (checked before parsing, so nothing else is even looked at).
pub fn allowed_before_identify(v: &Value) -> bool {
    matches!(
        v.get("op").and_then(Value::as_u64).map(Opcode::try_from),
        Some(Ok(Opcode::Heartbeat | Opcode::Identify | Opcode::Resume))
    )
}

#[derive(Debug, Clone, PartialEq)]
pub struct Identify {
    pub token: String,
    /// The intents asked for (all when absent).
    pub intents: u64,
    /// `[shard_id, num_shards]`.
    pub shard: Option<[u64; 2]>,
    /// GUILD_CREATE member list size, clamped to 50..=250.
    pub large_threshold: u32,
    /// The initial presence, if the client sent an object.
    pub presence: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    pub token: String,
    pub session_id: String,
    pub seq: u64,
}

/// Request Guild Members: either a query (a name prefix; "" with limit 0 means everyone) or
/// a list of user ids.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestMembers {
    pub guild_id: GuildId,
    pub select: MemberSelect,
    pub presences: bool,
    pub nonce: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MemberSelect {
    /// Members whose username or nickname starts with `prefix` (case-insensitive); `limit` 0
    /// with an empty prefix lists every member.
    Query {
        prefix: String,
        limit: u32,
    },
    UserIds(Vec<u64>),
}

impl MemberSelect {
    /// Lists the whole guild (needs the GUILD_MEMBERS intent, as Discord requires).
    pub fn is_everyone(&self) -> bool {
        matches!(self, MemberSelect::Query { prefix, limit } if prefix.is_empty() && *limit == 0)
    }

    /// An empty query lists members by no name at all: it needs the GUILD_MEMBERS intent.
    pub fn needs_members_intent(&self) -> bool {
        matches!(self, MemberSelect::Query { prefix, .. } if prefix.is_empty())
    }
}

/// Why a payload closes the connection: a close code and a reason for the client.
pub type Refusal = (u16, String);

fn refuse(code: u16, reason: impl Into<String>) -> Refusal {
    (code, reason.into())
}

/// Parse one text frame. `Err` carries the close code to send.
pub fn parse(text: &str) -> Result<ClientOp, Refusal> {
    if text.len() > MAX_PAYLOAD {
        return Err(refuse(
            close::DECODE_ERROR,
            format!("payload larger than {MAX_PAYLOAD} bytes"),
        ));
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|_| refuse(close::DECODE_ERROR, "payload is not valid JSON"))?;
    parse_value(v)
}

/// Parse a payload already decoded as JSON.
pub fn parse_value(mut v: Value) -> Result<ClientOp, Refusal> {
    let op = v
        .get("op")
        .and_then(Value::as_u64)
        .ok_or_else(|| refuse(close::DECODE_ERROR, "payload needs a numeric op"))?;
    let d = v.get_mut("d").map(Value::take).unwrap_or(Value::Null);
    let unknown = || refuse(close::UNKNOWN_OPCODE, format!("unknown opcode {op}"));
    match Opcode::try_from(op).map_err(|_| unknown())? {
        Opcode::Heartbeat => match d {
            Value::Null => Ok(ClientOp::Heartbeat(None)),
            Value::Number(n) if n.as_u64().is_some() => Ok(ClientOp::Heartbeat(n.as_u64())),
            _ => Err(refuse(
                close::DECODE_ERROR,
                "heartbeat d must be the last sequence number or null",
            )),
        },
        Opcode::Identify => identify(&d).map(ClientOp::Identify),
        Opcode::PresenceUpdate => Ok(ClientOp::PresenceUpdate(d)),
        Opcode::VoiceStateUpdate => Ok(ClientOp::VoiceStateUpdate(d)),
        Opcode::Resume => resume(&d).map(ClientOp::Resume),
        Opcode::RequestGuildMembers => request_members(&d).map(ClientOp::RequestGuildMembers),
        // What only the server sends is no client payload.
        Opcode::Dispatch
        | Opcode::Reconnect
        | Opcode::InvalidSession
        | Opcode::Hello
        | Opcode::HeartbeatAck => Err(unknown()),
    }
}

fn string_field<'a>(d: &'a Value, key: &str, what: &str) -> Result<&'a str, Refusal> {
    d.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| refuse(close::DECODE_ERROR, format!("{what} needs {key}")))
}

/// A snowflake sent as a JSON string (Discord's form) or a number.
fn snowflake(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn identify(d: &Value) -> Result<Identify, Refusal> {
    let token = string_field(d, "token", "identify")?;
    let token = crate::extract::token_from_header(token);
    if token.is_empty() || token.len() > 200 {
        return Err(refuse(
            close::AUTHENTICATION_FAILED,
            "authentication failed",
        ));
    }
    let intents = match d.get("intents") {
        None | Some(Value::Null) => intents::ALL,
        Some(v) => v
            .as_u64()
            .filter(|i| *i <= intents::ALL)
            .ok_or_else(|| refuse(close::INVALID_INTENTS, "invalid intents"))?,
    };
    let shard = match d.get("shard") {
        None | Some(Value::Null) => None,
        Some(sh) => {
            let pair = sh.as_array().and_then(|a| match a.as_slice() {
                [i, n] => i.as_u64().zip(n.as_u64()),
                _ => None,
            });
            match pair {
                Some((i, n)) if n >= 1 && i < n => Some([i, n]),
                _ => return Err(refuse(close::INVALID_SHARD, "invalid shard")),
            }
        }
    };
    let large_threshold = d
        .get("large_threshold")
        .and_then(Value::as_u64)
        .unwrap_or(super::payloads::MAX_GUILD_CREATE_MEMBERS as u64)
        .clamp(50, 250) as u32;
    Ok(Identify {
        token: token.to_string(),
        intents,
        shard,
        large_threshold,
        presence: d.get("presence").filter(|p| p.is_object()).cloned(),
    })
}

fn resume(d: &Value) -> Result<Resume, Refusal> {
    let token = string_field(d, "token", "resume")?;
    let session_id = string_field(d, "session_id", "resume")?;
    if session_id.len() > 64 {
        return Err(refuse(close::DECODE_ERROR, "session_id is too long"));
    }
    Ok(Resume {
        token: crate::extract::token_from_header(token).to_string(),
        session_id: session_id.to_string(),
        seq: d.get("seq").and_then(Value::as_u64).unwrap_or(0),
    })
}

fn request_members(d: &Value) -> Result<RequestMembers, Refusal> {
    let bad = |m: &str| refuse(close::DECODE_ERROR, format!("request guild members: {m}"));
    let guild_id = snowflake(d.get("guild_id")).ok_or_else(|| bad("needs guild_id"))?;
    let nonce = d
        .get("nonce")
        .and_then(Value::as_str)
        .filter(|n| n.len() <= MAX_NONCE_BYTES)
        .map(str::to_string);
    let presences = d.get("presences").and_then(Value::as_bool).unwrap_or(false);
    let select = match (d.get("query"), d.get("user_ids")) {
        (Some(_), Some(u)) if !u.is_null() => return Err(bad("send query or user_ids, not both")),
        (_, Some(u)) if !u.is_null() => {
            let ids: Vec<u64> = match u {
                Value::Array(a) => a
                    .iter()
                    .map(|x| snowflake(Some(x)))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad("user_ids must be snowflakes"))?,
                one => {
                    vec![snowflake(Some(one)).ok_or_else(|| bad("user_ids must be snowflakes"))?]
                }
            };
            if ids.len() > MAX_MEMBER_IDS {
                return Err(bad(&format!("at most {MAX_MEMBER_IDS} user_ids")));
            }
            MemberSelect::UserIds(ids)
        }
        (Some(q), _) => {
            let prefix = q.as_str().ok_or_else(|| bad("query must be a string"))?;
            if prefix.chars().count() > 100 {
                return Err(bad("query is longer than 100 characters"));
            }
            let limit = d
                .get("limit")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("needs limit"))?;
            let limit = u32::try_from(limit).unwrap_or(u32::MAX);
            if (!prefix.is_empty() || limit != 0) && limit > MAX_MEMBER_QUERY_LIMIT {
                return Err(bad(&format!(
                    "limit is at most {MAX_MEMBER_QUERY_LIMIT} (0 with an empty query lists everyone)"
                )));
            }
            MemberSelect::Query {
                prefix: prefix.to_string(),
                limit,
            }
        }
        (None, _) => return Err(bad("needs query or user_ids")),
    };
    Ok(RequestMembers {
        guild_id: GuildId(guild_id),
        select,
        presences,
        nonce,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_ids::GuildId;

    fn code(text: &str) -> u16 {
        parse(text).unwrap_err().0
    }

    #[test]
    fn refusals_carry_discords_close_codes() {
        let table: &[(&str, u16)] = &[
            ("not json", close::DECODE_ERROR),
            ("{\"d\":null}", close::DECODE_ERROR),
            ("{\"op\":\"1\"}", close::DECODE_ERROR),
            ("{\"op\":99,\"d\":null}", close::UNKNOWN_OPCODE),
            ("{\"op\":10,\"d\":null}", close::UNKNOWN_OPCODE),
            ("{\"op\":0,\"d\":null}", close::UNKNOWN_OPCODE),
            ("{\"op\":5,\"d\":null}", close::UNKNOWN_OPCODE),
            ("{\"op\":1,\"d\":\"x\"}", close::DECODE_ERROR),
            ("{\"op\":2,\"d\":{}}", close::DECODE_ERROR),
            ("{\"op\":2,\"d\":{\"token\":\"\"}}", close::AUTHENTICATION_FAILED),
            (
                "{\"op\":2,\"d\":{\"token\":\"t\",\"intents\":-1}}",
                close::INVALID_INTENTS,
            ),
            (
                "{\"op\":2,\"d\":{\"token\":\"t\",\"intents\":67108864}}",
                close::INVALID_INTENTS,
            ),
            (
                "{\"op\":2,\"d\":{\"token\":\"t\",\"shard\":[1,1]}}",
                close::INVALID_SHARD,
            ),
            ("{\"op\":6,\"d\":{\"token\":\"t\"}}", close::DECODE_ERROR),
            ("{\"op\":8,\"d\":{\"query\":\"\",\"limit\":0}}", close::DECODE_ERROR),
            (
                "{\"op\":8,\"d\":{\"guild_id\":\"1\",\"query\":\"a\",\"limit\":1000}}",
                close::DECODE_ERROR,
            ),
            (
                "{\"op\":8,\"d\":{\"guild_id\":\"1\",\"query\":\"a\",\"user_ids\":[\"2\"],\"limit\":1}}",
                close::DECODE_ERROR,
            ),
        ];
        for (text, want) in table {
            assert_eq!(code(text), *want, "{text}");
        }
        let big = format!("{{\"op\":1,\"d\":\"{}\"}}", "x".repeat(MAX_PAYLOAD));
        assert_eq!(code(&big), close::DECODE_ERROR);
    }

    /// Found by the `gateway_payload` fuzz target: one prefix is stripped, once, so a token
    /// sent as "Bot Bearer x" is "Bearer x", and stays that when sent again with a prefix.
    #[test]
    fn one_token_prefix_is_stripped_once() {
        let token =
            |t: &str| match parse(&serde_json::json!({ "op": 2, "d": { "token": t } }).to_string())
            {
                Ok(ClientOp::Identify(i)) => i.token,
                other => panic!("{other:?}"),
            };
        let first = token("Bot Bearer B(\\\\=\\]\r\u{c}\r");
        assert_eq!(first, "Bearer B(\\\\=\\]");
        assert_eq!(token(&format!("Bot {first}")), first);
        assert_eq!(token("  abc  "), "abc");
    }

    #[test]
    fn accepted_payloads() {
        assert_eq!(
            parse("{\"op\":1,\"d\":7}").unwrap(),
            ClientOp::Heartbeat(Some(7))
        );
        let ClientOp::Identify(i) = parse(
            "{\"op\":2,\"d\":{\"token\":\"Bot abc\",\"intents\":513,\"shard\":[0,1],\"large_threshold\":9999}}",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (i.token.as_str(), i.intents, i.shard, i.large_threshold),
            ("abc", 513, Some([0, 1]), 250)
        );
        let ClientOp::RequestGuildMembers(r) = parse(
            "{\"op\":8,\"d\":{\"guild_id\":\"5\",\"query\":\"\",\"limit\":0,\"presences\":true,\"nonce\":\"n1\"}}",
        )
        .unwrap() else {
            panic!()
        };
        assert!(r.select.is_everyone() && r.presences);
        assert_eq!((r.guild_id, r.nonce.as_deref()), (GuildId(5), Some("n1")));
        let ClientOp::RequestGuildMembers(r) = parse(&format!(
            "{{\"op\":8,\"d\":{{\"guild_id\":5,\"user_ids\":\"6\",\"nonce\":\"{}\"}}}}",
            "n".repeat(33)
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(r.select, MemberSelect::UserIds(vec![6]));
        assert_eq!(r.nonce, None, "a nonce over 32 bytes is ignored");
        for (op, before) in [
            (1, true),
            (2, true),
            (6, true),
            (3, false),
            (4, false),
            (8, false),
            (0, false),
            (10, false),
            (99, false),
        ] {
            assert_eq!(
                allowed_before_identify(&serde_json::json!({ "op": op })),
                before,
                "op {op}"
            );
        }
    }
}
