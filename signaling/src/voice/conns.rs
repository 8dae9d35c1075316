//! The voice gateway connections this node hosts and their media participants: node-local
//! state (the shared voice states are `state.rs`, behind [`crate::shared::VoiceStates`]).
//! Short critical sections under one std mutex (never held across an await, never touched by
//! the media hot path).

use lodge_ids::{ChannelId, GuildId, UserId};
use std::collections::HashMap;

use lodge_sfu::ParticipantIdx;
use serde_json::{json, Value};

use super::outbox::Outbox;

/// What a voice gateway connection is told from outside its own task.
#[derive(Debug)]
pub enum VoiceOut {
    Json(Value),
    /// A binary frame (DAVE's ops 25, 27, 29, 30): the opcode and payload; the writer puts
    /// the sequence number in front (v8).
    Binary(Vec<u8>),
    Close(u16, String),
    /// Op 7 named this connection while its socket still looks open (the client stopped
    /// hearing from it: a silent, half-dead path): stop using the socket and park as if it
    /// had dropped, so the resume can take the connection up.
    Park,
}

pub struct VoiceConn {
    pub tx: Outbox,
    /// The placement generation whose token opened this connection.
    pub generation: u64,
    /// The caller's voice state as this home last saw it (written back if the shared state
    /// loses it).
    pub state: Option<super::VoiceState>,
    pub user_id: UserId,
    pub guild_id: GuildId,
    pub channel_id: ChannelId,
    pub participant: Option<ParticipantIdx>,
    /// Slot SSRC → user currently announced in it.
    pub slots: HashMap<u32, UserId>,
    /// Selected Discord's native UDP transport: hears every user under the user's own SSRC,
    /// which op 5 maps once per user (WebRTC connections get op 5 per slot instead).
    pub native: bool,
    /// Joined its channel's DAVE call (`e2ee.rs`) at Select Protocol: it leaves it when the
    /// connection ends.
    pub dave: bool,
}

impl VoiceConn {
    /// Record a slot change and send the matching op 5 (nothing when an empty slot empties).
    pub fn slot_changed(&mut self, ssrc: u32, speaker: Option<UserId>) {
        let msg = match speaker {
            Some(u) => {
                self.slots.insert(ssrc, u);
                json!({ "op": 5, "d": { "user_id": u.to_string(), "ssrc": ssrc, "speaking": 1, "delay": 0 } })
            }
            None => match self.slots.remove(&ssrc) {
                Some(prev) => {
                    json!({ "op": 5, "d": { "user_id": prev.to_string(), "ssrc": ssrc, "speaking": 0, "delay": 0 } })
                }
                None => return,
            },
        };
        let _ = self.tx.send(VoiceOut::Json(msg));
    }
}

/// Slot changes kept per participant before its voice connection is mapped (the media node may
/// assign slots between answering the join and the gateway recording the participant).
const MAX_EARLY_SLOT_CHANGES: usize = 64;

pub struct VoiceConns {
    pub conns: HashMap<u64, VoiceConn>,
    /// (guild, user) → the connection hosted here.
    pub by_user: HashMap<(GuildId, UserId), u64>,
    pub by_participant: HashMap<ParticipantIdx, u64>,
    /// Slot changes (ssrc, speaker) for participants not yet mapped to a connection; cleared
    /// when the participant is mapped or leaves.
    early_slots: HashMap<ParticipantIdx, Vec<(u32, Option<UserId>)>>,
    next_conn: u64,
    /// Voice connections closed because the client did not keep up (outbox full or a write
    /// timed out), since start.
    pub slow_consumers_closed: u64,
    /// Connections whose socket dropped, by (guild, gateway session), waiting for op 7.
    pub(crate) parked: HashMap<(GuildId, String), super::gateway::Parked>,
    /// Identified connections whose socket is open, by (guild, gateway session): the task
    /// (a number of its own), the connection and the voice token op 7 must name to take it over.
    pub(crate) live: HashMap<(GuildId, String), (u64, u64, String)>,
    /// Connections taken up again by op 7, and parked ones that were not, since start.
    pub resumes: u64,
    pub resumes_expired: u64,
    /// Op 5 changes not relayed because the connection was over its relay budget.
    pub speaking_relays_dropped: u64,
    /// The DAVE calls of the voice channels with callers here.
    pub dave: super::e2ee::DaveCalls,
}

impl Default for VoiceConns {
    fn default() -> Self {
        VoiceConns::new()
    }
}

impl VoiceConns {
    pub fn new() -> Self {
        VoiceConns {
            conns: HashMap::new(),
            by_user: HashMap::new(),
            by_participant: HashMap::new(),
            parked: HashMap::new(),
            live: HashMap::new(),
            resumes: 0,
            resumes_expired: 0,
            speaking_relays_dropped: 0,
            dave: Default::default(),
            early_slots: HashMap::new(),
            next_conn: 0,
            slow_consumers_closed: 0,
        }
    }

    /// A slot of `listener` changed: announce it on its connection, or keep it until the
    /// connection is mapped.
    pub fn slot_changed(&mut self, listener: ParticipantIdx, ssrc: u32, speaker: Option<UserId>) {
        match self.by_participant.get(&listener).copied() {
            Some(conn_id) => {
                if let Some(conn) = self.conns.get_mut(&conn_id) {
                    conn.slot_changed(ssrc, speaker);
                }
            }
            None => {
                let early = self.early_slots.entry(listener).or_default();
                if early.len() < MAX_EARLY_SLOT_CHANGES {
                    early.push((ssrc, speaker));
                }
            }
        }
    }

    /// Map a media participant to its connection and replay the slot changes that came first.
    pub fn map_participant(&mut self, idx: ParticipantIdx, conn_id: u64) {
        self.by_participant.insert(idx, conn_id);
        let early = self.early_slots.remove(&idx).unwrap_or_default();
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            conn.participant = Some(idx);
            for (ssrc, speaker) in early {
                conn.slot_changed(ssrc, speaker);
            }
        }
    }

    /// The media participant left the node: forget what was kept for it.
    pub fn participant_left(&mut self, idx: ParticipantIdx) {
        self.early_slots.remove(&idx);
    }

    /// Host a connection for (guild, user); a connection already hosted for them is
    /// returned for closing (a client that opened a second one).
    pub fn add_conn(&mut self, conn: VoiceConn) -> (u64, Option<VoiceConn>) {
        self.next_conn += 1;
        let id = self.next_conn;
        let old = self
            .by_user
            .insert((conn.guild_id, conn.user_id), id)
            .and_then(|old| self.remove_conn(old));
        self.conns.insert(id, conn);
        (id, old)
    }

    /// Forget a connection (and its participant mapping).
    pub fn remove_conn(&mut self, id: u64) -> Option<VoiceConn> {
        let c = self.conns.remove(&id)?;
        if self.by_user.get(&(c.guild_id, c.user_id)) == Some(&id) {
            self.by_user.remove(&(c.guild_id, c.user_id));
        }
        if let Some(p) = c.participant {
            self.by_participant.remove(&p);
        }
        Some(c)
    }

    /// The connection hosted for (guild, user) if it belongs to `generation`.
    pub fn conn_of(&self, guild: GuildId, user: UserId, generation: u64) -> Option<u64> {
        self.by_user.get(&(guild, user)).copied().filter(|id| {
            self.conns
                .get(id)
                .is_some_and(|c| c.generation == generation)
        })
    }

    /// Users with a live voice connection in a channel.
    pub fn users_in(&self, guild_id: GuildId, channel_id: ChannelId) -> Vec<UserId> {
        self.conns
            .values()
            .filter(|c| c.guild_id == guild_id && c.channel_id == channel_id)
            .map(|c| c.user_id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_ids::{ChannelId, GuildId, UserId};

    #[test]
    fn slot_changes_before_the_mapping_are_replayed_in_order() {
        let mut r = VoiceConns::default();
        let (tx, mut rx) = super::super::outbox::outbox(16);
        let (conn, _) = r.add_conn(VoiceConn {
            tx,
            generation: 1,
            state: None,
            user_id: UserId(1),
            guild_id: GuildId(2),
            channel_id: ChannelId(3),
            participant: None,
            slots: HashMap::new(),
            native: false,
            dave: false,
        });
        let idx = ParticipantIdx(7);
        // The node assigns slots before the gateway learns which participant is whose.
        r.slot_changed(idx, 100, Some(UserId(10)));
        r.slot_changed(idx, 101, Some(UserId(11)));
        r.slot_changed(idx, 100, None);
        assert!(
            rx.try_next().is_none(),
            "nothing can be sent before the mapping"
        );
        r.map_participant(idx, conn);
        let mut got = Vec::new();
        while let Some(VoiceOut::Json(v)) = rx.try_next() {
            got.push((
                v["d"]["ssrc"].as_u64().unwrap(),
                v["d"]["user_id"].as_str().unwrap().to_string(),
                v["d"]["speaking"].as_u64().unwrap(),
            ));
        }
        assert_eq!(
            got,
            vec![
                (100, "10".into(), 1),
                (101, "11".into(), 1),
                (100, "10".into(), 0)
            ]
        );
        assert_eq!(r.conns[&conn].slots, HashMap::from([(101, UserId(11))]));
        // Once mapped, changes go straight out.
        r.slot_changed(idx, 102, Some(UserId(12)));
        assert!(matches!(rx.try_next(), Some(VoiceOut::Json(_))));
        // What was kept for a participant that leaves unmapped is dropped.
        r.slot_changed(ParticipantIdx(8), 1, Some(UserId(1)));
        r.participant_left(ParticipantIdx(8));
        assert!(r.early_slots.is_empty());
    }
}
