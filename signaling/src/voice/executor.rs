//! The one door to voice state: read a caller's state from the shared store, apply an input
//! (`control.rs`, pure), store the result with compare-and-set (a concurrent change from
//! another task or node makes this re-read and re-apply), then carry out the effects: dispatches
//! through the hub (the bus, in a cluster), the voice token and VOICE_SERVER_UPDATE, and
//! commands for the caller's home — this node's own connections, another node's inbox, or an
//! edge's trunk.

use lodge_ids::{ChannelId, GuildId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{debug, warn};

use super::control::{self, Effect, HomeCmd, Input, Refusal};
use super::state::{Home, VoiceState};
use super::VoiceOut;
use crate::app::AppState;
use crate::hub::{DispatchKind, Target};
use crate::shared::{ChannelCap, SharedError, Swapped};

/// Why an input was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("refused: {0:?}")]
    Refused(Refusal),
    /// The channel is at its `user_limit` (the limit).
    #[error("the voice channel is full (user_limit {0})")]
    Full(u32),
    #[error(transparent)]
    Shared(#[from] SharedError),
}

/// What a message on a node's inbox carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NodeMsg {
    /// A command for a caller this node hosts.
    Home(HomeCmd),
    /// A command for a caller hosted by the edge `edge`, which trunks to this node: carry it
    /// over the trunk.
    Edge { edge: String, cmd: HomeCmd },
    /// A gateway session of this node was resumed on another: drop this copy.
    SessionMoved(crate::gateway::Moved),
}

/// What applying an input did.
#[derive(Debug)]
pub struct Applied {
    /// The state after the input.
    pub state: Option<VoiceState>,
    /// A voice token was issued (a join, a move, a new home).
    pub issued_token: bool,
}

fn parse(guild: GuildId, user: UserId, raw: &str) -> Result<VoiceState, SharedError> {
    serde_json::from_str(raw).map_err(|e| SharedError::Malformed {
        key: format!("voice state {guild}/{user}"),
        why: e.to_string(),
    })
}

/// Read one caller's voice state.
pub async fn state(
    s: &AppState,
    guild: GuildId,
    user: UserId,
) -> Result<Option<VoiceState>, SharedError> {
    let raw = s.shared.voice_states.get(guild, user).await?;
    raw.map(|r| parse(guild, user, &r)).transpose()
}

/// Every voice state of a guild, by channel then user.
pub async fn guild_states(s: &AppState, guild: GuildId) -> Result<Vec<VoiceState>, SharedError> {
    let mut v = Vec::new();
    for (user, raw) in s.shared.voice_states.guild(guild).await? {
        v.push(parse(guild, user, &raw)?);
    }
    v.sort_by_key(|st| (st.channel_id, st.user_id));
    Ok(v)
}

/// Apply `input` to the caller (guild, user) and carry out its effects.
pub async fn run(
    s: &AppState,
    guild: GuildId,
    user: UserId,
    input: &Input,
) -> Result<Applied, ExecError> {
    run_capped(s, guild, user, input, None).await
}

/// [`run`], refusing ([`ExecError::Full`]) to put the caller into `cap`'s channel when it is at
/// its limit; the count and the write are one atomic step of the shared store.
pub async fn run_capped(
    s: &AppState,
    guild: GuildId,
    user: UserId,
    input: &Input,
    cap: Option<ChannelCap>,
) -> Result<Applied, ExecError> {
    loop {
        let raw = s.shared.voice_states.get(guild, user).await?;
        let cur = raw.as_deref().map(|r| parse(guild, user, r)).transpose()?;
        let t = control::apply(guild, user, cur.as_ref(), input).map_err(ExecError::Refused)?;
        let issued_token = t
            .effects
            .iter()
            .any(|e| matches!(e, Effect::ServerUpdate { .. }));
        let state = match t.next {
            None => cur,
            Some(next) => {
                let new_raw = next
                    .as_ref()
                    .map(|st| serde_json::to_string(st).expect("a voice state serializes"));
                let vs = &s.shared.voice_states;
                let (old, new) = (raw.as_deref(), new_raw.as_deref());
                let stored = match cap {
                    None => vs.swap(guild, user, old, new).await?,
                    Some(cap) => match vs.swap_capped(guild, user, old, new, cap).await? {
                        Swapped::Done => true,
                        Swapped::Changed => false,
                        Swapped::Full => return Err(ExecError::Full(cap.limit)),
                    },
                };
                if !stored {
                    debug!(%guild, %user, "voice state changed meanwhile; applying again");
                    continue;
                }
                next
            }
        };
        for e in t.effects {
            perform(s, guild, user, e).await;
        }
        return Ok(Applied {
            state,
            issued_token,
        });
    }
}

async fn perform(s: &AppState, guild: GuildId, user: UserId, e: Effect) {
    const VSU: DispatchKind = DispatchKind::VoiceStateUpdate;
    match e {
        Effect::StateUpdate { channel_id, json } => s.hub.send(
            Target::Guild(guild),
            Some(guild),
            Some(channel_id),
            VSU,
            json,
        ),
        Effect::Moved {
            from,
            to,
            json,
            left,
        } => s
            .hub
            .send_move(guild, ChannelId(from), ChannelId(to), VSU, json, left),
        Effect::Left {
            channel_id,
            session_id,
            json,
        } => {
            // The leave names no channel, but it goes only to sessions that may view the
            // channel left: to anyone else it would say who had been in a channel they cannot
            // see. A member who lost sight of the channel (that is why they were disconnected)
            // still hears of their own leave on their session.
            let sees_it = s
                .visibility
                .can_view(&s.store, s.hub.epoch(guild), guild, channel_id, user)
                .await;
            if !sees_it {
                s.hub.send(
                    Target::Session {
                        user,
                        session: session_id,
                    },
                    Some(guild),
                    None,
                    VSU,
                    json.clone(),
                );
            }
            s.hub.send(
                Target::Guild(guild),
                Some(guild),
                Some(channel_id),
                VSU,
                json,
            );
        }
        Effect::ServerUpdate {
            token,
            pending,
            home,
        } => {
            let value = serde_json::to_string(&pending).expect("a token serializes");
            let ttl = std::time::Duration::from_secs(s.cfg.voice_token_ttl);
            if let Err(e) = s.shared.voice_tokens.issue(&token, &value, ttl).await {
                warn!(%guild, %user, error = %e, "voice token not stored; the caller cannot connect");
                return;
            }
            let endpoint = super::placement::endpoint(s, &home).await;
            s.hub.send(
                Target::Session {
                    user,
                    session: pending.session_id,
                },
                Some(guild),
                None,
                DispatchKind::VoiceServerUpdate,
                json!({ "token": token, "guild_id": guild.to_string(), "endpoint": endpoint }),
            );
        }
        Effect::Home(home, cmd) => to_home(s, home, cmd).await,
    }
}

/// Deliver a command to a caller's home.
pub async fn to_home(s: &AppState, home: Home, cmd: HomeCmd) {
    match home {
        Home::Edge { via, edge } if via.node == s.shared.me => {
            crate::cluster::to_edge(s, &edge, cmd).await
        }
        Home::Edge { via, edge } => to_node(s, &via.node, NodeMsg::Edge { edge, cmd }).await,
        Home::Node(h) if h.node == s.shared.me => apply_here(s, cmd).await,
        Home::Node(h) => to_node(s, &h.node, NodeMsg::Home(cmd)).await,
    }
}

async fn to_node(s: &AppState, node: &crate::shared::NodeId, msg: NodeMsg) {
    let msg = serde_json::to_string(&msg).expect("a command serializes");
    if let Err(e) = s.shared.bus.to_node(node, msg).await {
        warn!(node = %node, error = %e, "could not reach a caller's home node");
    }
}

/// A command for a caller hosted on this node.
pub async fn apply_here(s: &AppState, cmd: HomeCmd) {
    match cmd {
        HomeCmd::Place { state, token } => crate::cluster::place_here(s, state, token, None).await,
        HomeCmd::Flags { state } => {
            let part = {
                let mut v = s.voice();
                let id = v.conn_of(state.guild_id, state.user_id, state.generation);
                id.and_then(|id| v.conns.get_mut(&id)).and_then(|c| {
                    c.state = Some(state.clone());
                    c.participant
                })
            };
            if let Some(p) = part {
                s.sfu.set_flags(p, state.flags()).await;
            }
        }
        HomeCmd::Remove {
            guild_id,
            user_id,
            generation,
            code,
            reason,
        } => {
            let conn = {
                let mut v = s.voice();
                v.conn_of(guild_id, user_id, generation)
                    .and_then(|id| v.remove_conn(id))
            };
            let Some(conn) = conn else { return };
            let _ = conn.tx.send(VoiceOut::Close(code, reason));
            super::service::notify_others(
                s,
                guild_id,
                conn.channel_id,
                user_id,
                super::client_disconnect(user_id.get()),
            );
            super::e2ee::conn_removed(s, &conn);
            if let Some(p) = conn.participant {
                s.sfu.leave(p).await;
            }
        }
    }
}

/// A message another node sent this one.
pub async fn handle_node_msg(s: &AppState, raw: &str) {
    match serde_json::from_str::<NodeMsg>(raw) {
        Ok(NodeMsg::Home(cmd)) => apply_here(s, cmd).await,
        Ok(NodeMsg::Edge { edge, cmd }) => crate::cluster::to_edge(s, &edge, cmd).await,
        Ok(NodeMsg::SessionMoved(m)) => crate::gateway::session_moved(s, &m),
        Err(e) => warn!(error = %e, "malformed message on this node's inbox; dropped"),
    }
}

/// Messages sent to this node in-process (a node alone), until the bus ends.
pub async fn run_inbox(s: AppState, mut rx: tokio::sync::mpsc::UnboundedReceiver<String>) {
    while let Some(raw) = rx.recv().await {
        handle_node_msg(&s, &raw).await;
    }
}
