//! The voice control plane as a pure state machine: one caller's voice state and an input
//! (gateway op 4, a moderator's move or flags, a permission change, the voice connection
//! identifying or ending, the caller's home lost) give the next state and the effects to carry
//! out — dispatches, VOICE_SERVER_UPDATE with a token, commands for the node or edge that hosts
//! the caller. Nothing here reads a clock, a store or a socket: whatever needs I/O (permission
//! checks, placement, a fresh token) is decided before and passed in, and `executor.rs` is the
//! one place that reads the state, applies an input, stores the result (compare-and-set, so
//! concurrent changes from several nodes re-apply on what won) and performs the effects.

use lodge_ids::{ChannelId, GuildId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::state::{left_json, Home, PendingToken, VoiceState};
use crate::shared::NodeId;

/// What may happen to one caller's voice state.
#[derive(Debug, Clone)]
pub enum Input {
    /// Gateway op 4 naming a voice channel (the caller may CONNECT; the channel is not full).
    Join(Join),
    /// Leave the voice channel (op 4 without a channel, a kick, a lost permission, the
    /// session's end, the voice connection's end), unless the guard says the state is not the
    /// one meant.
    Leave(Option<Guard>),
    /// A moderator's server mute/deafen.
    ServerFlags {
        mute: Option<bool>,
        deaf: Option<bool>,
    },
    /// A moderator's move to another channel.
    Move(Placed),
    /// SPEAK granted or taken in the caller's channel.
    SetSpeak(bool),
    /// The voice connection opened with generation `generation`'s token identified on node
    /// `at` (refused unless that node is the caller's home).
    Connected {
        generation: u64,
        channel: ChannelId,
        at: NodeId,
    },
    /// The caller's home is gone (its node died, its edge's trunk dropped): a new home, a new
    /// token.
    Rehome(Placed),
    /// The voice connection of generation `generation` lost its socket and waits for a resume
    /// (op 7): the caller stays in the channel, not connected, so an op 4 meanwhile places
    /// them afresh instead of changing only their flags. A resume connects it again.
    Dropped { generation: u64 },
}

/// Op 4's request, with what was decided before applying it.
#[derive(Debug, Clone)]
pub struct Join {
    pub session_id: String,
    pub self_mute: bool,
    pub self_deaf: bool,
    pub can_speak: bool,
    pub region: String,
    /// Where the caller goes and the token for it, if this turns out to be a (re)join.
    pub placed: Placed,
}

/// A new home for the caller and the token that admits them there.
#[derive(Debug, Clone)]
pub struct Placed {
    pub channel_id: ChannelId,
    pub can_speak: bool,
    pub home: Home,
    pub token: String,
    pub generation: u64,
}

/// Which state a leave is about (a stale leave must not end a newer state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    Session(String),
    Generation(u64),
    /// The caller is still hosted by the edge `edge` through the node `via`.
    Edge {
        via: crate::shared::NodeId,
        edge: String,
    },
}

/// A command for the node or edge hosting a caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HomeCmd {
    /// (Edges only: a node of the cluster reads state and token from the shared store.) Host
    /// this caller; `token` admits them.
    Place { state: VoiceState, token: String },
    /// The caller's flags changed: apply them to their media participant.
    Flags { state: VoiceState },
    /// End the caller's voice connection of `generation` (and its media), telling the others
    /// in the channel.
    Remove {
        guild_id: GuildId,
        user_id: UserId,
        generation: u64,
        code: u16,
        reason: String,
    },
}

/// Something to do once the new state is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// VOICE_STATE_UPDATE to the guild's sessions that may view `channel_id`.
    StateUpdate { channel_id: ChannelId, json: Value },
    /// A move: `json` for sessions that may view `to`, `left` for those that see only `from`.
    Moved {
        from: u64,
        to: u64,
        json: Value,
        left: Value,
    },
    /// A leave, for sessions that may view `channel_id`; the leaver's own session hears it
    /// even if it no longer may.
    Left {
        channel_id: ChannelId,
        session_id: String,
        json: Value,
    },
    /// Store the token, then send VOICE_SERVER_UPDATE (the home's endpoint) to the session.
    ServerUpdate {
        token: String,
        pending: PendingToken,
        home: Home,
    },
    /// Tell the caller's home.
    Home(Home, HomeCmd),
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Moderation of a user who is not in a voice channel (Discord's 40032).
    NotInVoice,
    /// A voice connection whose token no longer matches the state (voice close 4006).
    Stale,
}

/// The result of applying an input: `next` is `None` when the state does not change.
#[derive(Debug, Default)]
pub struct Transition {
    pub next: Option<Option<VoiceState>>,
    pub effects: Vec<Effect>,
}

impl Transition {
    fn put(st: VoiceState, effects: Vec<Effect>) -> Self {
        Transition {
            next: Some(Some(st)),
            effects,
        }
    }
}

pub const MOVED: &str = "moved to another voice channel";
pub const DISCONNECTED: &str = "disconnected from the voice channel";
/// Voice close code for both (Discord's "disconnected": do not reconnect on your own).
pub const CLOSE_DISCONNECTED: u16 = 4014;

fn remove(st: &VoiceState, reason: &str) -> Effect {
    Effect::Home(
        st.home.clone(),
        HomeCmd::Remove {
            guild_id: st.guild_id,
            user_id: st.user_id,
            generation: st.generation,
            code: CLOSE_DISCONNECTED,
            reason: reason.into(),
        },
    )
}

/// Hand the caller to `st.home`: an edge is told first (the caller must not be faster than
/// the edge), then the session gets the token.
fn admit(st: &VoiceState, token: &str, effects: &mut Vec<Effect>) {
    if let Home::Edge { .. } = st.home {
        effects.push(Effect::Home(
            st.home.clone(),
            HomeCmd::Place {
                state: st.clone(),
                token: token.to_string(),
            },
        ));
    }
    effects.push(Effect::ServerUpdate {
        token: token.to_string(),
        pending: PendingToken {
            user_id: st.user_id,
            guild_id: st.guild_id,
            channel_id: st.channel_id,
            session_id: st.session_id.clone(),
            generation: st.generation,
        },
        home: st.home.clone(),
    });
}

/// End the previous placement before a new one: its connection closes (4014 moved), unless
/// the same edge hosts both (the edge replaces the caller when placed again).
fn retire(old: &VoiceState, new_home: &Home, effects: &mut Vec<Effect>) {
    let same_edge = matches!((&old.home, new_home), (Home::Edge { edge: a, .. }, Home::Edge { edge: b, .. }) if a == b);
    if !same_edge {
        effects.push(remove(old, MOVED));
    }
}

fn flags_changed(st: &VoiceState) -> Vec<Effect> {
    vec![
        Effect::StateUpdate {
            channel_id: st.channel_id,
            json: st.json(),
        },
        Effect::Home(st.home.clone(), HomeCmd::Flags { state: st.clone() }),
    ]
}

/// Apply `input` to the caller `(guild_id, user_id)` whose state is `cur`.
pub fn apply(
    guild_id: GuildId,
    user_id: UserId,
    cur: Option<&VoiceState>,
    input: &Input,
) -> Result<Transition, Refusal> {
    match input {
        Input::Join(j) => Ok(join(guild_id, user_id, cur, j)),
        Input::Leave(guard) => {
            let Some(st) = cur else {
                return Err(Refusal::NotInVoice);
            };
            let meant = match guard {
                None => true,
                Some(Guard::Session(s)) => st.session_id == *s,
                Some(Guard::Generation(g)) => st.generation == *g,
                Some(Guard::Edge { via, edge }) => {
                    matches!(&st.home, Home::Edge { via: v, edge: e } if v.node == *via && e == edge)
                }
            };
            if !meant {
                return Ok(Transition::default());
            }
            Ok(Transition {
                next: Some(None),
                effects: vec![
                    remove(st, DISCONNECTED),
                    Effect::Left {
                        channel_id: st.channel_id,
                        session_id: st.session_id.clone(),
                        json: left_json(guild_id, user_id, &st.session_id),
                    },
                ],
            })
        }
        Input::ServerFlags { mute, deaf } => {
            let mut st = cur.cloned().ok_or(Refusal::NotInVoice)?;
            st.mute = mute.unwrap_or(st.mute);
            st.deaf = deaf.unwrap_or(st.deaf);
            let fx = flags_changed(&st);
            Ok(Transition::put(st, fx))
        }
        Input::SetSpeak(speak) => match cur {
            Some(st) if st.can_speak != *speak => {
                let st = VoiceState {
                    can_speak: *speak,
                    ..st.clone()
                };
                let fx = flags_changed(&st);
                Ok(Transition::put(st, fx))
            }
            _ => Ok(Transition::default()),
        },
        Input::Move(p) => {
            let old = cur.ok_or(Refusal::NotInVoice)?;
            let st = VoiceState {
                channel_id: p.channel_id,
                can_speak: p.can_speak,
                home: p.home.clone(),
                generation: p.generation,
                connected: false,
                ..old.clone()
            };
            let mut fx = Vec::new();
            retire(old, &st.home, &mut fx);
            fx.push(Effect::Moved {
                from: old.channel_id.get(),
                to: st.channel_id.get(),
                json: st.json(),
                left: left_json(guild_id, user_id, &old.session_id),
            });
            admit(&st, &p.token, &mut fx);
            Ok(Transition::put(st, fx))
        }
        Input::Connected {
            generation,
            channel,
            at,
        } => match cur {
            Some(st)
                if st.generation == *generation
                    && st.channel_id == *channel
                    && !st.connected
                    && matches!(&st.home, Home::Node(h) if h.node == *at) =>
            {
                let st = VoiceState {
                    connected: true,
                    ..st.clone()
                };
                Ok(Transition::put(st, Vec::new()))
            }
            _ => Err(Refusal::Stale),
        },
        Input::Dropped { generation } => match cur {
            Some(st) if st.generation == *generation && st.connected => {
                let st = VoiceState {
                    connected: false,
                    ..st.clone()
                };
                Ok(Transition::put(st, Vec::new()))
            }
            _ => Ok(Transition::default()),
        },
        Input::Rehome(p) => {
            let Some(old) = cur else {
                return Ok(Transition::default());
            };
            let st = VoiceState {
                home: p.home.clone(),
                generation: p.generation,
                connected: false,
                ..old.clone()
            };
            let mut fx = Vec::new();
            admit(&st, &p.token, &mut fx);
            Ok(Transition::put(st, fx))
        }
    }
}

fn join(guild_id: GuildId, user_id: UserId, cur: Option<&VoiceState>, j: &Join) -> Transition {
    let p = &j.placed;
    // Same channel and session, already connected (or hosted by an edge): only the flags.
    if let Some(st) = cur.filter(|st| {
        st.channel_id == p.channel_id
            && st.session_id == j.session_id
            && (st.connected || matches!(st.home, Home::Edge { .. }))
    }) {
        let st = VoiceState {
            self_mute: j.self_mute,
            self_deaf: j.self_deaf,
            can_speak: j.can_speak,
            ..st.clone()
        };
        let fx = flags_changed(&st);
        return Transition::put(st, fx);
    }
    // Server mute/deafen stick to the member across channel changes, as on Discord.
    let (mute, deaf) = cur.map(|c| (c.mute, c.deaf)).unwrap_or((false, false));
    let st = VoiceState {
        guild_id,
        channel_id: p.channel_id,
        user_id,
        session_id: j.session_id.clone(),
        self_mute: j.self_mute,
        self_deaf: j.self_deaf,
        mute,
        deaf,
        can_speak: j.can_speak,
        home: p.home.clone(),
        generation: p.generation,
        connected: false,
        region: j.region.clone(),
    };
    let mut fx = Vec::new();
    if let Some(old) = cur {
        retire(old, &st.home, &mut fx);
    }
    match cur.filter(|old| old.channel_id != st.channel_id) {
        Some(old) => fx.push(Effect::Moved {
            from: old.channel_id.get(),
            to: st.channel_id.get(),
            json: st.json(),
            left: left_json(guild_id, user_id, &old.session_id),
        }),
        None => fx.push(Effect::StateUpdate {
            channel_id: st.channel_id,
            json: st.json(),
        }),
    }
    admit(&st, &p.token, &mut fx);
    Transition::put(st, fx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::RoomHome;

    fn node(n: &str, epoch: u64) -> Home {
        Home::Node(RoomHome {
            node: NodeId(n.into()),
            epoch,
        })
    }

    fn placed(channel: ChannelId, home: Home, gen: u64) -> Placed {
        Placed {
            channel_id: channel,
            can_speak: true,
            home,
            token: format!("tok{gen}"),
            generation: gen,
        }
    }

    fn join_input(channel: ChannelId, session: &str, home: Home, gen: u64) -> Input {
        Input::Join(Join {
            session_id: session.into(),
            self_mute: false,
            self_deaf: false,
            can_speak: true,
            region: String::new(),
            placed: placed(channel, home, gen),
        })
    }

    fn edge(via: &str, name: &str) -> Home {
        Home::Edge {
            via: RoomHome {
                node: crate::shared::NodeId(via.into()),
                epoch: 1,
            },
            edge: name.into(),
        }
    }

    fn run(cur: &mut Option<VoiceState>, input: Input) -> Vec<Effect> {
        let t = apply(GuildId(1), UserId(2), cur.as_ref(), &input).expect("accepted");
        if let Some(next) = t.next {
            *cur = next;
        }
        t.effects
    }

    fn kinds(fx: &[Effect]) -> Vec<&'static str> {
        fx.iter()
            .map(|e| match e {
                Effect::StateUpdate { .. } => "state",
                Effect::Moved { .. } => "moved",
                Effect::Left { .. } => "left",
                Effect::ServerUpdate { .. } => "server",
                Effect::Home(_, HomeCmd::Place { .. }) => "place",
                Effect::Home(_, HomeCmd::Flags { .. }) => "flags",
                Effect::Home(_, HomeCmd::Remove { .. }) => "remove",
            })
            .collect()
    }

    #[test]
    fn a_join_announces_the_state_and_hands_out_a_token_for_the_home() {
        let mut st = None;
        let fx = run(&mut st, join_input(ChannelId(10), "s", node("a", 1), 7));
        assert_eq!(kinds(&fx), ["state", "server"]);
        let Effect::ServerUpdate {
            token,
            pending,
            home,
        } = &fx[1]
        else {
            unreachable!()
        };
        assert_eq!((token.as_str(), pending.generation), ("tok7", 7));
        assert_eq!((pending.channel_id, home), (ChannelId(10), &node("a", 1)));
        let st = st.unwrap();
        assert!(!st.connected && st.generation == 7);
    }

    #[test]
    fn op4_again_before_connecting_issues_a_new_token_and_after_connecting_only_changes_flags() {
        let mut st = None;
        run(&mut st, join_input(ChannelId(10), "s", node("a", 1), 1));
        let fx = run(&mut st, join_input(ChannelId(10), "s", node("a", 1), 2));
        assert_eq!(
            kinds(&fx),
            ["remove", "state", "server"],
            "not connected: rejoin (the old generation's connection, if any, ends)"
        );
        run(
            &mut st,
            Input::Connected {
                generation: 2,
                channel: ChannelId(10),
                at: NodeId("a".into()),
            },
        );
        let Input::Join(mut j) = join_input(ChannelId(10), "s", node("a", 1), 3) else {
            unreachable!()
        };
        j.self_mute = true;
        let fx = run(&mut st, Input::Join(j));
        assert_eq!(kinds(&fx), ["state", "flags"]);
        let st = st.unwrap();
        assert!(st.self_mute && st.generation == 2 && st.connected);
    }

    #[test]
    fn a_move_retires_the_old_connection_and_carries_the_leave_for_the_old_channel() {
        let mut st = None;
        run(&mut st, join_input(ChannelId(10), "s", node("a", 1), 1));
        run(
            &mut st,
            Input::ServerFlags {
                mute: Some(true),
                deaf: None,
            },
        );
        let fx = run(&mut st, join_input(ChannelId(20), "s", node("b", 4), 2));
        assert_eq!(kinds(&fx), ["remove", "moved", "server"]);
        let Effect::Home(home, HomeCmd::Remove { generation, .. }) = &fx[0] else {
            unreachable!()
        };
        assert_eq!(
            (home, *generation),
            (&node("a", 1), 1),
            "the old home, old generation"
        );
        let Effect::Moved { from, to, left, .. } = &fx[1] else {
            unreachable!()
        };
        assert_eq!((*from, *to), (10, 20));
        assert!(left["channel_id"].is_null());
        assert!(st.unwrap().mute, "server mute sticks across channels");
    }

    #[test]
    fn the_same_edge_is_placed_again_without_a_remove_and_hears_before_the_caller() {
        let mut st = None;
        let fx = run(
            &mut st,
            join_input(ChannelId(10), "s", edge("a", "eu-1"), 1),
        );
        assert_eq!(kinds(&fx), ["state", "place", "server"]);
        let fx = run(
            &mut st,
            Input::Move(Placed {
                channel_id: ChannelId(20),
                ..placed(ChannelId(20), edge("b", "eu-1"), 2)
            }),
        );
        assert_eq!(kinds(&fx), ["moved", "place", "server"]);
        let fx = run(
            &mut st,
            join_input(ChannelId(30), "s", edge("b", "eu-2"), 3),
        );
        assert_eq!(kinds(&fx), ["remove", "moved", "place", "server"]);
    }

    #[test]
    fn guarded_leaves_end_only_the_state_they_name() {
        let mut st = None;
        run(&mut st, join_input(ChannelId(10), "s", node("a", 1), 5));
        for g in [
            Guard::Session("other".into()),
            Guard::Generation(4),
            Guard::Edge {
                via: crate::shared::NodeId("a".into()),
                edge: "eu-1".into(),
            },
        ] {
            assert!(run(&mut st, Input::Leave(Some(g))).is_empty());
            assert!(st.is_some());
        }
        let fx = run(&mut st, Input::Leave(Some(Guard::Generation(5))));
        assert_eq!(kinds(&fx), ["remove", "left"]);
        assert!(st.is_none());
        assert_eq!(
            apply(GuildId(1), UserId(2), None, &Input::Leave(None)).unwrap_err(),
            Refusal::NotInVoice
        );
    }

    #[test]
    fn a_connection_of_an_older_generation_is_refused() {
        let mut st = None;
        run(&mut st, join_input(ChannelId(10), "s", node("a", 1), 1));
        run(&mut st, join_input(ChannelId(10), "s", node("a", 1), 2));
        assert_eq!(
            apply(
                GuildId(1),
                UserId(2),
                st.as_ref(),
                &Input::Connected {
                    generation: 2,
                    channel: ChannelId(10),
                    at: NodeId("b".into()),
                }
            )
            .unwrap_err(),
            Refusal::Stale,
            "only at the caller's home"
        );
        for (g, c) in [(1, 10), (2, 11)] {
            assert_eq!(
                apply(
                    GuildId(1),
                    UserId(2),
                    st.as_ref(),
                    &Input::Connected {
                        generation: g,
                        channel: ChannelId(c),
                        at: NodeId("a".into()),
                    }
                )
                .unwrap_err(),
                Refusal::Stale
            );
        }
        run(
            &mut st,
            Input::Connected {
                generation: 2,
                channel: ChannelId(10),
                at: NodeId("a".into()),
            },
        );
        assert_eq!(
            apply(
                GuildId(1),
                UserId(2),
                st.as_ref(),
                &Input::Connected {
                    generation: 2,
                    channel: ChannelId(10),
                    at: NodeId("a".into()),
                }
            )
            .unwrap_err(),
            Refusal::Stale,
            "a token admits one connection"
        );
    }

    #[test]
    fn rehoming_keeps_the_channel_and_flags_and_sends_only_the_new_server() {
        let mut st = None;
        run(&mut st, join_input(ChannelId(10), "s", node("a", 1), 1));
        run(&mut st, Input::SetSpeak(false));
        let fx = run(
            &mut st,
            Input::Rehome(placed(ChannelId(10), node("b", 2), 9)),
        );
        assert_eq!(kinds(&fx), ["server"], "the dead home needs no remove");
        let st = st.unwrap();
        assert_eq!(
            (st.home, st.generation, st.can_speak),
            (node("b", 2), 9, false)
        );
        assert!(apply(
            GuildId(1),
            UserId(2),
            None,
            &Input::Rehome(placed(ChannelId(10), node("b", 2), 9))
        )
        .unwrap()
        .effects
        .is_empty());
    }

    #[test]
    fn speak_changes_only_when_they_change_something() {
        let mut st = None;
        run(&mut st, join_input(ChannelId(10), "s", node("a", 1), 1));
        assert!(run(&mut st, Input::SetSpeak(true)).is_empty());
        assert_eq!(
            kinds(&run(&mut st, Input::SetSpeak(false))),
            ["state", "flags"]
        );
        assert!(st.unwrap().json()["suppress"].as_bool().unwrap());
    }
}
