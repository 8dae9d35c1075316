//! Who is in which voice channel, the single-use voice tokens, and the live voice gateway
//! connections. Signaling-side state; short critical sections under one std mutex (never held
//! across an await, never touched by the media hot path).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lodge_sfu::ParticipantIdx;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};

use super::outbox::Outbox;
use super::{payload, Opcode};

/// How long a voice token stays valid unless configured otherwise.
pub const VOICE_TOKEN_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceState {
    pub guild_id: u64,
    pub channel_id: u64,
    pub user_id: u64,
    pub session_id: String,
    pub self_mute: bool,
    pub self_deaf: bool,
    pub mute: bool,
    pub deaf: bool,
    pub can_speak: bool,
    /// The media participant once the voice gateway selected a protocol.
    pub participant: Option<ParticipantIdx>,
    /// The voice gateway connection that owns this state.
    pub conn: Option<u64>,
    /// Origin: the edge (trunk) the caller was placed on.
    pub edge: Option<u64>,
    /// Origin: the region the caller asked for (kept to re-place them if their edge dies).
    pub region: String,
}

impl VoiceState {
    pub fn json(&self) -> Value {
        json!({
            "guild_id": self.guild_id.to_string(),
            "channel_id": self.channel_id.to_string(),
            "user_id": self.user_id.to_string(),
            "session_id": self.session_id,
            "deaf": self.deaf,
            "mute": self.mute || !self.can_speak,
            "self_deaf": self.self_deaf,
            "self_mute": self.self_mute,
            "self_stream": false,
            "self_video": false,
            "suppress": !self.can_speak,
            "request_to_speak_timestamp": null,
        })
    }

    pub fn flags(&self) -> lodge_sfu::VoiceFlags {
        lodge_sfu::VoiceFlags {
            self_mute: self.self_mute,
            self_deaf: self.self_deaf,
            server_mute: self.mute,
            server_deaf: self.deaf,
            can_speak: self.can_speak,
        }
    }
}

/// What a voice gateway connection is told from outside its own task.
#[derive(Debug)]
pub enum VoiceOut {
    Json(Value),
    Close(u16, String),
}

#[derive(Debug)]
pub struct PendingToken {
    pub user_id: u64,
    pub guild_id: u64,
    pub channel_id: u64,
    pub session_id: String,
    pub expires: Instant,
}

pub struct VoiceConn {
    pub tx: Outbox,
    pub user_id: u64,
    pub guild_id: u64,
    pub channel_id: u64,
    pub participant: Option<ParticipantIdx>,
    /// Slot SSRC → user currently announced in it.
    pub slots: HashMap<u32, u64>,
}

impl VoiceConn {
    /// Record a slot change and send the matching op 5 (nothing when an empty slot empties).
    pub fn slot_changed(&mut self, ssrc: u32, speaker: Option<u64>) {
        let msg = match speaker {
            Some(u) => {
                self.slots.insert(ssrc, u);
                payload(
                    Opcode::Speaking,
                    json!({ "user_id": u.to_string(), "ssrc": ssrc, "speaking": 1, "delay": 0 }),
                )
            }
            None => match self.slots.remove(&ssrc) {
                Some(prev) => payload(
                    Opcode::Speaking,
                    json!({ "user_id": prev.to_string(), "ssrc": ssrc, "speaking": 0, "delay": 0 }),
                ),
                None => return,
            },
        };
        let _ = self.tx.send(VoiceOut::Json(msg));
    }
}

/// Slot changes kept per participant before its voice connection is mapped (the media node may
/// assign slots between answering the join and the gateway recording the participant).
const MAX_EARLY_SLOT_CHANGES: usize = 64;

pub struct VoiceRegistry {
    pub token_ttl: Duration,
    pub states: HashMap<(u64, u64), VoiceState>,
    pub tokens: HashMap<String, PendingToken>,
    pub conns: HashMap<u64, VoiceConn>,
    pub by_participant: HashMap<ParticipantIdx, u64>,
    /// Slot changes (ssrc, speaker) for participants not yet mapped to a connection; cleared
    /// when the participant is mapped or leaves.
    early_slots: HashMap<ParticipantIdx, Vec<(u32, Option<u64>)>>,
    next_conn: u64,
    /// Voice connections closed because the client did not keep up (outbox full or a write
    /// timed out), since start.
    pub slow_consumers_closed: u64,
}

/// Why a voice token was refused (each maps to a voice gateway close code).
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Unknown,
    Expired,
    Mismatch,
}

impl Default for VoiceRegistry {
    fn default() -> Self {
        VoiceRegistry::new(VOICE_TOKEN_TTL)
    }
}

impl VoiceRegistry {
    pub fn new(token_ttl: Duration) -> Self {
        VoiceRegistry {
            token_ttl,
            states: HashMap::new(),
            tokens: HashMap::new(),
            conns: HashMap::new(),
            by_participant: HashMap::new(),
            early_slots: HashMap::new(),
            next_conn: 0,
            slow_consumers_closed: 0,
        }
    }

    /// A slot of `listener` changed: announce it on its connection, or keep it until the
    /// connection is mapped.
    pub fn slot_changed(&mut self, listener: ParticipantIdx, ssrc: u32, speaker: Option<u64>) {
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

    pub fn issue_token(
        &mut self,
        now: Instant,
        user_id: u64,
        guild_id: u64,
        channel_id: u64,
        session_id: &str,
    ) -> String {
        let token: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        self.insert_token(now, &token, user_id, guild_id, channel_id, session_id);
        token
    }

    /// Accept `token` for this caller (issued here, or by the origin for an edge).
    pub fn insert_token(
        &mut self,
        now: Instant,
        token: &str,
        user_id: u64,
        guild_id: u64,
        channel_id: u64,
        session_id: &str,
    ) {
        self.tokens.retain(|_, t| t.expires > now);
        self.tokens.insert(
            token.to_string(),
            PendingToken {
                user_id,
                guild_id,
                channel_id,
                session_id: session_id.to_string(),
                expires: now + self.token_ttl,
            },
        );
    }

    pub fn has_token(&self, token: &str) -> bool {
        self.tokens.contains_key(token)
    }

    /// Consume a token. It is removed whatever the outcome: single use.
    pub fn redeem(
        &mut self,
        now: Instant,
        token: &str,
        user_id: u64,
        guild_id: u64,
        session_id: &str,
    ) -> Result<PendingToken, TokenError> {
        let t = self.tokens.remove(token).ok_or(TokenError::Unknown)?;
        if t.expires <= now {
            return Err(TokenError::Expired);
        }
        if t.user_id != user_id || t.guild_id != guild_id || t.session_id != session_id {
            return Err(TokenError::Mismatch);
        }
        Ok(t)
    }

    pub fn add_conn(&mut self, conn: VoiceConn) -> u64 {
        self.next_conn += 1;
        self.conns.insert(self.next_conn, conn);
        self.next_conn
    }

    /// Users with a live voice connection in a channel.
    pub fn users_in(&self, guild_id: u64, channel_id: u64) -> Vec<u64> {
        self.conns
            .values()
            .filter(|c| c.guild_id == guild_id && c.channel_id == channel_id)
            .map(|c| c.user_id)
            .collect()
    }

    pub fn guild_states(&self, guild_id: u64) -> Vec<VoiceState> {
        let mut v: Vec<VoiceState> = self
            .states
            .values()
            .filter(|s| s.guild_id == guild_id)
            .cloned()
            .collect();
        v.sort_by_key(|s| (s.channel_id, s.user_id));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_bound_and_expire() {
        let mut r = VoiceRegistry::default();
        let t0 = Instant::now();
        let tok = r.issue_token(t0, 1, 2, 3, "s");
        assert_eq!(
            r.redeem(t0, &tok, 1, 2, "other").unwrap_err(),
            TokenError::Mismatch
        );
        // Mismatch consumed it.
        assert_eq!(
            r.redeem(t0, &tok, 1, 2, "s").unwrap_err(),
            TokenError::Unknown
        );
        let tok = r.issue_token(t0, 1, 2, 3, "s");
        assert_eq!(
            r.redeem(t0 + Duration::from_secs(61), &tok, 1, 2, "s")
                .unwrap_err(),
            TokenError::Expired
        );
        let tok = r.issue_token(t0, 1, 2, 3, "s");
        assert_eq!(
            r.redeem(t0 + Duration::from_secs(59), &tok, 1, 2, "s")
                .unwrap()
                .channel_id,
            3
        );
        assert_eq!(
            r.redeem(t0, &tok, 1, 2, "s").unwrap_err(),
            TokenError::Unknown
        );
    }

    #[test]
    fn slot_changes_before_the_mapping_are_replayed_in_order() {
        let mut r = VoiceRegistry::default();
        let (tx, mut rx) = super::super::outbox::outbox(16);
        let conn = r.add_conn(VoiceConn {
            tx,
            user_id: 1,
            guild_id: 2,
            channel_id: 3,
            participant: None,
            slots: HashMap::new(),
        });
        let idx = ParticipantIdx(7);
        // The node assigns slots before the gateway learns which participant is whose.
        r.slot_changed(idx, 100, Some(10));
        r.slot_changed(idx, 101, Some(11));
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
        assert_eq!(r.conns[&conn].slots, HashMap::from([(101, 11)]));
        // Once mapped, changes go straight out.
        r.slot_changed(idx, 102, Some(12));
        assert!(matches!(rx.try_next(), Some(VoiceOut::Json(_))));
        // What was kept for a participant that leaves unmapped is dropped.
        r.slot_changed(ParticipantIdx(8), 1, Some(1));
        r.participant_left(ParticipantIdx(8));
        assert!(r.early_slots.is_empty());
    }
}
