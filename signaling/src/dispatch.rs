//! A gateway dispatch as the hub publishes it: who it is for, the channel its VIEW_CHANNEL
//! filter looks at, and its bodies, each serialized once at publish and shared by every
//! session that gets it (`Arc`). Which body a session gets (`Body`) is the session filter's
//! choice (`gateway::session_filter`): full; redacted for MESSAGE_CONTENT; the leave of a move
//! for sessions that may view only the channel left; a reply without its referenced message
//! for sessions that may not read that message's channel.

//!
//! A dispatch is serde-serializable (bodies as the JSON strings they already are, the kind by
//! its name), so it can cross nodes as it is.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::dispatch_kind::{DispatchKind, UnknownDispatchKind};
use crate::gateway::Opcode;
use crate::shared::redis::{Route, StreamId};
use lodge_ids::{ChannelId, GuildId, UserId};

/// Who a dispatch is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// Every session of a member of the guild (filtered by VIEW_CHANNEL when `channel_id` is set).
    Guild(GuildId),
    /// Every session of one user.
    User(UserId),
    /// One gateway session, of `user` (so a bus can route it by user, as it routes `User`).
    Session { user: UserId, session: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    pub target: Target,
    /// Channel the event is about, for VIEW_CHANNEL filtering.
    pub channel_id: Option<ChannelId>,
    pub guild_id: Option<GuildId>,
    pub t: DispatchKind,
    /// `d`, serialized.
    pub json: Arc<str>,
    /// For message events: `d` with content, embeds and attachments emptied, for sessions
    /// without the MESSAGE_CONTENT intent that are neither the author nor mentioned.
    pub redacted: Option<Arc<str>>,
    /// Users who always get the full message (author and mentioned users).
    pub full_for: Vec<UserId>,
    /// For an event that takes something out of one channel into another (a voice move): the
    /// channel left and the body for sessions that may view it but not `channel_id`.
    pub left: Option<Left>,
    /// For a reply to a message in another channel: the bodies without the referenced message,
    /// for sessions whose user may not read that channel.
    pub reference: Option<Reference>,
    /// A member the event is about (a presence): once they are no longer a member of the
    /// guild, sessions drop it, however late it was published.
    pub about: Option<UserId>,
    /// Where the dispatch sits on the cluster's bus: its route and its position in the
    /// route's stream, set by the node that received it (`bus_in`). `None` for in-process
    /// delivery. A session's resume log names dispatches by it instead of copying them.
    #[serde(skip)]
    pub bus: Option<(Route, StreamId)>,
}

/// The other side of a move: sessions whose user may view `channel_id` but not the
/// dispatch's channel get `json` (a leave) instead of the dispatch's body; sessions that may view
/// neither get nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    pub channel_id: ChannelId,
    /// `d` of the leave, serialized.
    pub json: Arc<str>,
}

/// A message event replying to a message in another channel: sessions whose user may not
/// VIEW_CHANNEL and READ_MESSAGE_HISTORY in `channel_id` get `json` (or `redacted`), the reply
/// with `referenced_message: null`, instead of the dispatch's bodies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub channel_id: ChannelId,
    pub json: Arc<str>,
    pub redacted: Arc<str>,
}

/// Which of a dispatch's bodies a session gets (kept in a session's resume log by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Body {
    Full,
    /// `redacted`: a message event for a session without MESSAGE_CONTENT.
    Redacted,
    /// `left.json`: the session may view only the channel left.
    Left,
    /// `reference.json`: the session may not read the referenced message's channel.
    Unreferenced,
    /// `reference.redacted`: both of the above.
    UnreferencedRedacted,
}

impl Body {
    /// The same body without a referenced message from another channel.
    pub fn unreferenced(self) -> Body {
        match self {
            Body::Full => Body::Unreferenced,
            Body::Redacted => Body::UnreferencedRedacted,
            other => other,
        }
    }
}

impl Dispatch {
    /// Whether a session (`session_id` of `user_id`) is this dispatch's session or user
    /// target; a guild target is for every member (membership is the session's to check).
    pub fn targets(&self, session_id: &str, user_id: UserId) -> bool {
        match &self.target {
            Target::Session { user, session } => *user == user_id && session == session_id,
            Target::User(u) => *u == user_id,
            Target::Guild(_) => true,
        }
    }

    /// The serialized `d` a session gets; `json` when the dispatch has no such body.
    pub fn body(&self, body: Body) -> &str {
        match body {
            Body::Full => &self.json,
            Body::Redacted => self.redacted.as_deref().unwrap_or(&self.json),
            Body::Left => self.left.as_ref().map_or(&*self.json, |l| &l.json),
            Body::Unreferenced => self.reference.as_ref().map_or(&*self.json, |r| &r.json),
            Body::UnreferencedRedacted => self
                .reference
                .as_ref()
                .map_or(self.body(Body::Redacted), |r| &r.redacted),
        }
    }

    /// Whether a session with `intents` receives this kind of event.
    pub fn wanted_with(&self, intents: u64) -> bool {
        self.t.wanted_with(intents)
    }
}

/// A message's `d` serialized, and again with content, embeds, attachments and components
/// emptied, in the message and in the message it replies to (for sessions without
/// MESSAGE_CONTENT).
pub(crate) fn with_redacted(mut d: Value) -> (Arc<str>, Arc<str>) {
    fn empty(m: &mut Value) {
        if let Some(o) = m.as_object_mut() {
            o.insert("content".into(), Value::String(String::new()));
            o.insert("embeds".into(), Value::Array(vec![]));
            o.insert("attachments".into(), Value::Array(vec![]));
            o.insert("components".into(), Value::Array(vec![]));
        }
    }
    let json: Arc<str> = d.to_string().into();
    empty(&mut d);
    if let Some(r) = d.get_mut("referenced_message").filter(|r| r.is_object()) {
        empty(r);
    }
    (json, d.to_string().into())
}

/// The start of a dispatch frame, up to the event name.
const FRAME_START: &str = "{\"op\":0,\"t\":\"";
const _: () = assert!(Opcode::Dispatch as u8 == 0, "FRAME_START spells op 0");

/// A dispatch frame for one session: `{"op":0,"t":…,"s":…,"d":…}` around an already-serialized `d`.
pub fn frame(t: DispatchKind, seq: u64, d: &str) -> String {
    let t = t.name();
    let mut s = String::with_capacity(d.len() + t.len() + 40);
    s.push_str(FRAME_START);
    s.push_str(t);
    s.push_str("\",\"s\":");
    s.push_str(&seq.to_string());
    s.push_str(",\"d\":");
    s.push_str(d);
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_valid_json() {
        let f = frame(
            DispatchKind::MessageCreate,
            7,
            "{\"content\":\"hi \\\"x\\\"\"}",
        );
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["op"], 0);
        assert_eq!(v["t"], "MESSAGE_CREATE");
        assert_eq!(v["s"], 7);
        assert_eq!(v["d"]["content"], "hi \"x\"");
    }

    /// What a bus between nodes does to a dispatch: every part comes back as it was.
    #[test]
    fn a_dispatch_survives_serialization_whole() {
        let (json, redacted) = with_redacted(serde_json::json!({
            "content": "see \"staff\"", "referenced_message": { "content": "secret" }
        }));
        let (ref_json, ref_redacted) =
            with_redacted(serde_json::json!({ "content": "see", "referenced_message": null }));
        let all = [
            Dispatch {
                target: Target::Guild(GuildId(3)),
                channel_id: Some(ChannelId(10)),
                guild_id: Some(GuildId(3)),
                t: DispatchKind::MessageCreate,
                json,
                redacted: Some(redacted),
                full_for: vec![UserId(1), UserId(2)],
                left: None,
                reference: Some(Reference {
                    channel_id: ChannelId(20),
                    json: ref_json,
                    redacted: ref_redacted,
                }),
                about: None,
                bus: None,
            },
            Dispatch {
                target: Target::Guild(GuildId(3)),
                channel_id: Some(ChannelId(20)),
                guild_id: Some(GuildId(3)),
                t: DispatchKind::VoiceStateUpdate,
                json: r#"{"channel_id":"20"}"#.into(),
                redacted: None,
                full_for: vec![],
                left: Some(Left {
                    channel_id: ChannelId(10),
                    json: r#"{"channel_id":null}"#.into(),
                }),
                reference: None,
                about: Some(UserId(7)),
                bus: None,
            },
            Dispatch {
                target: Target::Session {
                    user: UserId(7),
                    session: "s1".into(),
                },
                channel_id: None,
                guild_id: None,
                t: DispatchKind::VoiceServerUpdate,
                json: r#"{"token":"t"}"#.into(),
                redacted: None,
                full_for: vec![],
                left: None,
                reference: None,
                about: None,
                bus: None,
            },
            Dispatch {
                target: Target::User(UserId(u64::MAX)),
                channel_id: None,
                guild_id: Some(GuildId(u64::MAX)),
                t: DispatchKind::GuildCreate,
                json: "{}".into(),
                redacted: None,
                full_for: vec![],
                left: None,
                reference: None,
                about: None,
                bus: None,
            },
        ];
        for d in all {
            let wire = serde_json::to_string(&d).unwrap();
            let back: Dispatch = serde_json::from_str(&wire).unwrap();
            assert_eq!(back, d, "{wire}");
            for b in [
                Body::Full,
                Body::Redacted,
                Body::Left,
                Body::Unreferenced,
                Body::UnreferencedRedacted,
            ] {
                assert_eq!(back.body(b), d.body(b));
            }
            assert_eq!(
                (
                    back.targets("s1", UserId(7)),
                    back.targets("s1", UserId(8)),
                    back.targets("s2", UserId(7))
                ),
                (
                    d.targets("s1", UserId(7)),
                    d.targets("s1", UserId(8)),
                    d.targets("s2", UserId(7))
                )
            );
        }
    }

    #[test]
    fn a_session_target_is_that_session_of_that_user() {
        let d = |target| Dispatch {
            target,
            channel_id: None,
            guild_id: None,
            t: DispatchKind::LodgeVoiceError,
            json: "{}".into(),
            redacted: None,
            full_for: vec![],
            left: None,
            reference: None,
            about: None,
            bus: None,
        };
        let s = d(Target::Session {
            user: UserId(7),
            session: "a".into(),
        });
        assert!(s.targets("a", UserId(7)));
        assert!(!s.targets("b", UserId(7)) && !s.targets("a", UserId(8)));
        assert!(d(Target::User(UserId(7))).targets("b", UserId(7)));
    }
}
