//! The coordinator against real DAVE clients: each member is a `davey::DaveSession` (0.1.5, what
//! songbird 0.6.1 links) driven exactly as songbird's `driver/tasks/ws.rs` drives it from gateway
//! ops. Every server message goes through the binary codec (v4 framing, as songbird reads it).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use davey::{DaveSession, MediaType, ProposalsOperationType};

use super::wire::{self, ProposalsOp, ServerBinary};
use super::*;

const CHANNEL: ChannelId = ChannelId(0x1234_5678_9abc_def0);

/// What a client sends back to the gateway.
#[derive(Debug, Clone)]
enum ClientMsg {
    Binary(Vec<u8>),
    Ready(TransitionId),
    Invalid(TransitionId),
}

/// A songbird-like client: its DAVE session and the state ws.rs keeps beside it.
struct Client {
    user: UserId,
    session: Option<DaveSession>,
    /// songbird's `dave_protocol_version`.
    version: u16,
    pending_transitions: HashMap<u16, u16>,
    /// op 11/13 users (self included), passed as `expected_user_ids`.
    recognized: Vec<u64>,
    outbox: Vec<ClientMsg>,
    /// Test hook: corrupt the next Welcome this client receives.
    corrupt_next_welcome: bool,
    /// Test hook: corrupt the next announced commit this client receives.
    corrupt_next_commit: bool,
    invalid_sent: usize,
}

impl Client {
    fn new(user: UserId, recognized: Vec<u64>) -> Self {
        Self {
            user,
            session: None,
            version: 0,
            pending_transitions: HashMap::new(),
            recognized,
            outbox: Vec::new(),
            corrupt_next_welcome: false,
            corrupt_next_commit: false,
            invalid_sent: 0,
        }
    }

    /// op 4 (songbird `init_cipher`): a session and a key package when DAVE is on.
    fn on_session_description(&mut self, dave_version: u16) {
        self.version = dave_version;
        if let Some(v) = NonZeroU16::new(dave_version) {
            let mut s = DaveSession::new(v, self.user.0, CHANNEL.0, None).unwrap();
            let kp = s.create_key_package().unwrap();
            self.session = Some(s);
            self.outbox
                .push(ClientMsg::Binary(wire::encode_client_frame(
                    wire::OP_KEY_PACKAGE,
                    &kp,
                )));
        }
    }

    fn reinit(&mut self) {
        if let Some(v) = NonZeroU16::new(self.version) {
            let kp = match &mut self.session {
                Some(s) => {
                    s.reinit(v, self.user.0, CHANNEL.0, None).unwrap();
                    s.create_key_package().unwrap()
                }
                None => {
                    let mut s = DaveSession::new(v, self.user.0, CHANNEL.0, None).unwrap();
                    let kp = s.create_key_package().unwrap();
                    self.session = Some(s);
                    kp
                }
            };
            self.outbox
                .push(ClientMsg::Binary(wire::encode_client_frame(
                    wire::OP_KEY_PACKAGE,
                    &kp,
                )));
        } else if let Some(s) = &mut self.session {
            s.reset().unwrap();
            s.set_passthrough_mode(true, Some(10));
        }
    }

    fn execute(&mut self, id: u16) {
        if let Some(v) = self.pending_transitions.remove(&id) {
            self.version = v;
        }
    }

    fn handle(&mut self, msg: &DaveMessage) {
        match msg {
            DaveMessage::PrepareTransition {
                protocol_version,
                transition_id,
            } => {
                self.pending_transitions
                    .insert(transition_id.0, *protocol_version);
                if transition_id.0 == 0 {
                    self.execute(0);
                } else if *protocol_version == 0 {
                    if let Some(s) = &mut self.session {
                        s.set_passthrough_mode(true, Some(120));
                    }
                    self.outbox.push(ClientMsg::Ready(*transition_id));
                }
            }
            DaveMessage::ExecuteTransition { transition_id } => self.execute(transition_id.0),
            DaveMessage::PrepareEpoch {
                protocol_version,
                epoch,
            } => {
                if *epoch == 1 {
                    self.version = *protocol_version;
                    self.reinit();
                }
            }
            _ => {
                // Binary: through the codec, as the gateway would frame it for songbird (v4).
                let frame = msg.binary().unwrap().encode_frame(None).unwrap();
                let (seq, decoded) = wire::decode_server_frame(&frame, false).unwrap();
                assert_eq!(seq, None);
                self.handle_binary(&frame, decoded);
            }
        }
    }

    fn handle_binary(&mut self, frame: &[u8], msg: ServerBinary<'_>) {
        let recognized = self.recognized.clone();
        match msg {
            ServerBinary::ExternalSender(b) => {
                if let Some(s) = &mut self.session {
                    let _ = s.set_external_sender(b);
                }
            }
            ServerBinary::Proposals { op, .. } => {
                let op = match op {
                    ProposalsOp::Append => ProposalsOperationType::APPEND,
                    ProposalsOp::Revoke => ProposalsOperationType::REVOKE,
                };
                // davey takes the `<V>` itself: the frame after [op][operation_type].
                let Some(s) = &mut self.session else { return };
                if let Ok(Some(cw)) = s.process_proposals(op, &frame[2..], Some(&recognized)) {
                    let mut payload = cw.commit;
                    payload.extend_from_slice(&cw.welcome.unwrap_or_default());
                    self.outbox
                        .push(ClientMsg::Binary(wire::encode_client_frame(
                            wire::OP_COMMIT_WELCOME,
                            &payload,
                        )));
                }
            }
            ServerBinary::AnnounceCommit {
                transition_id,
                commit,
            } => {
                let Some(s) = &mut self.session else { return };
                let mut commit = commit.to_vec();
                if std::mem::take(&mut self.corrupt_next_commit) {
                    let n = commit.len();
                    commit[n - 3] ^= 0xff; // inside the membership tag
                }
                match s.process_commit(&commit) {
                    Ok(()) if transition_id.0 != 0 => {
                        self.pending_transitions
                            .insert(transition_id.0, self.version);
                        self.outbox.push(ClientMsg::Ready(transition_id));
                    }
                    Ok(()) => {}
                    Err(_) => {
                        self.invalid_sent += 1;
                        self.outbox.push(ClientMsg::Invalid(transition_id));
                        self.reinit();
                    }
                }
            }
            ServerBinary::Welcome {
                transition_id,
                welcome,
            } => {
                let Some(s) = &mut self.session else { return };
                let mut welcome = welcome.to_vec();
                if std::mem::take(&mut self.corrupt_next_welcome) {
                    let n = welcome.len();
                    welcome[n - 5] ^= 0xff;
                }
                match s.process_welcome(&welcome) {
                    Ok(()) if transition_id.0 != 0 => {
                        self.pending_transitions
                            .insert(transition_id.0, self.version);
                        self.outbox.push(ClientMsg::Ready(transition_id));
                    }
                    Ok(()) => {}
                    Err(_) => {
                        self.invalid_sent += 1;
                        self.outbox.push(ClientMsg::Invalid(transition_id));
                        self.reinit();
                    }
                }
            }
        }
    }
}

/// The gateway's role in miniature: routes the coordinator's outputs to the clients and the
/// clients' messages back, one round at a time.
struct Harness {
    call: DaveCall,
    clients: BTreeMap<UserId, Client>,
    now: Instant,
    refused: Vec<DaveError>,
    /// Every output the coordinator produced, for order assertions.
    log: Vec<Output>,
    /// Feed client messages in reverse user order (to vary who commits first).
    reverse: bool,
}

impl Harness {
    fn new() -> Self {
        Self {
            call: DaveCall::new(CHANNEL, true).unwrap(),
            clients: BTreeMap::new(),
            now: Instant::now(),
            refused: Vec::new(),
            log: Vec::new(),
            reverse: false,
        }
    }

    fn join_no_pump(&mut self, id: u64, max_version: u16) {
        let user = UserId(id);
        for c in self.clients.values_mut() {
            c.recognized.push(id); // op 11
        }
        let mut recognized: Vec<u64> = self.clients.keys().map(|u| u.0).collect();
        recognized.push(id);
        let mut c = Client::new(user, recognized);
        let v = self.call.handle_join(self.now, user, max_version).unwrap();
        c.on_session_description(v);
        self.clients.insert(user, c);
    }

    fn join(&mut self, id: u64, max_version: u16) {
        self.join_no_pump(id, max_version);
        self.pump();
    }

    fn leave_no_pump(&mut self, id: u64) {
        self.clients.remove(&UserId(id));
        for c in self.clients.values_mut() {
            c.recognized.retain(|u| *u != id); // op 13
        }
        self.call.handle_leave(self.now, UserId(id)).unwrap();
    }

    fn leave(&mut self, id: u64) {
        self.leave_no_pump(id);
        self.pump();
    }

    /// Delivers every queued server output to its client.
    fn deliver(&mut self) -> bool {
        let mut moved = false;
        while let Some(o) = self.call.poll_output() {
            moved = true;
            self.log.push(o.clone());
            if let Some(c) = self.clients.get_mut(&o.to) {
                c.handle(&o.msg);
            }
        }
        moved
    }

    /// Feeds every client's queued messages to the coordinator.
    fn collect(&mut self) -> bool {
        let mut users: Vec<UserId> = self.clients.keys().copied().collect();
        if self.reverse {
            users.reverse();
        }
        let mut moved = false;
        for u in users {
            let msgs = std::mem::take(&mut self.clients.get_mut(&u).unwrap().outbox);
            for m in msgs {
                moved = true;
                let r = match m {
                    ClientMsg::Binary(f) => self.call.handle_binary(self.now, u, &f),
                    ClientMsg::Ready(t) => self.call.handle_transition_ready(self.now, u, t),
                    ClientMsg::Invalid(t) => {
                        self.call.handle_invalid_commit_welcome(self.now, u, t)
                    }
                };
                if let Err(e) = r {
                    self.refused.push(e);
                }
            }
        }
        moved
    }

    fn pump(&mut self) {
        for _ in 0..100 {
            let a = self.deliver();
            let b = self.collect();
            if !a && !b {
                return;
            }
        }
        panic!("no quiescence after 100 rounds");
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.call.handle_timeout(self.now);
        self.pump();
    }

    fn session(&self, id: u64) -> &DaveSession {
        self.clients[&UserId(id)].session.as_ref().unwrap()
    }

    /// All DAVE clients form one group with Lodge's view of it: same epoch and epoch
    /// authenticator (privacy code), the leaves Lodge mirrors, and every member decrypts every
    /// other member's Opus frame.
    fn assert_converged(&mut self, ids: &[u64]) {
        assert_eq!(self.call.protocol_version(), DAVE_VERSION);
        let epoch = self.call.epoch();
        assert!(epoch >= 1, "no group established");
        let members = self.call.members();
        let mut want: Vec<u64> = ids.to_vec();
        want.sort_unstable();
        let mut got: Vec<u64> = members.iter().map(|(_, u)| u.0).collect();
        got.sort_unstable();
        assert_eq!(got, want, "Lodge's leaf mirror");
        let auth = self
            .session(ids[0])
            .get_epoch_authenticator()
            .unwrap()
            .as_slice()
            .to_vec();
        let code = self
            .session(ids[0])
            .voice_privacy_code()
            .unwrap()
            .to_string();
        for &id in ids {
            let c = &self.clients[&UserId(id)];
            let s = c.session.as_ref().unwrap();
            assert!(s.is_ready(), "{id} not ready");
            assert_eq!(s.epoch().unwrap().as_u64(), epoch, "{id} epoch");
            assert_eq!(
                s.get_epoch_authenticator().unwrap().as_slice(),
                &auth[..],
                "{id} authenticator"
            );
            assert_eq!(s.voice_privacy_code().unwrap(), code, "{id} privacy code");
            let leaf = members.iter().find(|(_, u)| u.0 == id).unwrap().0;
            assert_eq!(s.own_leaf_index().unwrap().u32(), leaf, "{id} leaf");
            let mut users = s.get_user_ids().unwrap();
            users.sort_unstable();
            assert_eq!(users, want, "{id} group members");
            assert!(
                c.pending_transitions.is_empty(),
                "{id} has unexecuted transitions"
            );
            assert_eq!(c.version, DAVE_VERSION);
        }
        assert_eq!(self.call.poll_timeout(), None, "transition still waiting");
        for &a in ids {
            let frame: Vec<u8> = (0..60u8)
                .map(|i| i.wrapping_mul(7).wrapping_add(a as u8))
                .collect();
            let ct = self
                .clients
                .get_mut(&UserId(a))
                .unwrap()
                .session
                .as_mut()
                .unwrap()
                .encrypt_opus(&frame)
                .unwrap()
                .into_owned();
            assert_ne!(ct, frame);
            assert_eq!(&ct[ct.len() - 2..], &[0xfa, 0xfa], "DAVE magic marker");
            for &b in ids {
                if a == b {
                    continue;
                }
                let s = self
                    .clients
                    .get_mut(&UserId(b))
                    .unwrap()
                    .session
                    .as_mut()
                    .unwrap();
                let pt = s
                    .decrypt(a, MediaType::AUDIO, &ct)
                    .unwrap_or_else(|e| panic!("{b} decrypting {a}: {e:?}"));
                assert_eq!(pt, frame, "{b} decrypting {a}");
            }
        }
    }

    fn count_ops(&self, op: u8) -> usize {
        self.log.iter().filter(|o| o.msg.opcode() == op).count()
    }
}

#[test]
fn first_joiner_gets_external_sender_and_waits_alone() {
    let mut h = Harness::new();
    h.join(1, 1);
    assert_eq!(h.log.len(), 1);
    assert!(matches!(
        &h.log[0],
        Output {
            to: UserId(1),
            msg: DaveMessage::ExternalSender(_)
        }
    ));
    assert_eq!(h.call.epoch(), 0);
    assert!(h.refused.is_empty(), "{:?}", h.refused);
    assert!(!h.session(1).is_ready());
}

#[test]
fn two_join_one_commit_wins_welcome_to_the_other() {
    let mut h = Harness::new();
    h.join(1, 1);
    h.join(2, 1);
    h.assert_converged(&[1, 2]);
    assert_eq!(h.call.epoch(), 1);
    // 1 commits first (fed first): op 29 to 1 only, op 30 to 2; 2's commit loses.
    let announce: Vec<_> = h
        .log
        .iter()
        .filter(|o| o.msg.opcode() == 29)
        .map(|o| o.to)
        .collect();
    let welcome: Vec<_> = h
        .log
        .iter()
        .filter(|o| o.msg.opcode() == 30)
        .map(|o| o.to)
        .collect();
    assert_eq!(announce, vec![UserId(1)]);
    assert_eq!(welcome, vec![UserId(2)]);
    assert!(
        h.refused.iter().all(|e| matches!(
            e,
            DaveError::StaleEpoch {
                user: UserId(2),
                ..
            }
        )),
        "{:?}",
        h.refused
    );
    assert_eq!(h.refused.len(), 1);
    assert_eq!(h.count_ops(22), 2);
    assert_eq!(h.call.stats().commits_accepted, 1);
}

#[test]
fn three_join_sequentially() {
    let mut h = Harness::new();
    for id in 1..=3 {
        h.join(id, 1);
    }
    h.assert_converged(&[1, 2, 3]);
    assert_eq!(h.call.epoch(), 2);
}

#[test]
fn five_join_sequentially_and_concurrently() {
    let mut h = Harness::new();
    for id in 1..=5 {
        h.join(id, 1);
        if id >= 2 {
            h.assert_converged(&(1..=id).collect::<Vec<_>>());
        }
    }
    assert_eq!(h.call.epoch(), 4);

    // Five at once into an empty call: every pending member proposes a group; one wins.
    let mut h = Harness::new();
    for id in 11..=15 {
        h.join_no_pump(id, 1);
    }
    h.pump();
    h.assert_converged(&[11, 12, 13, 14, 15]);
    assert_eq!(h.call.stats().commits_accepted, 1);
}

#[test]
fn concurrent_commits_first_valid_wins_in_either_order() {
    for reverse in [false, true] {
        let mut h = Harness::new();
        h.reverse = reverse;
        for id in 1..=3 {
            h.join(id, 1);
        }
        h.refused.clear();
        let accepted = h.call.stats().commits_accepted;
        h.join(4, 1);
        h.assert_converged(&[1, 2, 3, 4]);
        assert_eq!(h.call.stats().commits_accepted, accepted + 1);
        // the other two members' commits for the same epoch were refused as stale
        let stale = h
            .refused
            .iter()
            .filter(|e| matches!(e, DaveError::StaleEpoch { .. }))
            .count();
        assert_eq!(stale, 2, "{:?}", h.refused);
        let winner = if reverse { UserId(3) } else { UserId(1) };
        let last29 = h.log.iter().rev().find(|o| o.msg.opcode() == 29).unwrap();
        let DaveMessage::AnnounceCommit { commit, .. } = &last29.msg else {
            unreachable!()
        };
        let info = mls::parse_commit_welcome(commit, CHANNEL).unwrap();
        let winner_leaf = h
            .call
            .members()
            .into_iter()
            .find(|(_, u)| *u == winner)
            .unwrap()
            .0;
        assert_eq!(info.sender_leaf, winner_leaf);
    }
}

#[test]
fn leave_proposes_remove_and_group_shrinks() {
    let mut h = Harness::new();
    for id in 1..=4 {
        h.join(id, 1);
    }
    h.leave(2);
    h.assert_converged(&[1, 3, 4]);
    // The freed leaf is reused by the next joiner (leftmost blank).
    h.join(5, 1);
    h.assert_converged(&[1, 3, 4, 5]);
    assert!(h.call.members().contains(&(1, UserId(5))));
    h.leave(1);
    h.leave(5);
    h.assert_converged(&[3, 4]);
}

#[test]
fn pending_joiner_leaving_is_revoked() {
    let mut h = Harness::new();
    for id in 1..=2 {
        h.join(id, 1);
    }
    let epoch = h.call.epoch();
    // 3's key package reaches Lodge and the add goes out; 1 and 2 commit to it …
    h.join_no_pump(3, 1);
    h.collect(); // 3's key package
    h.deliver(); // add 3 → 1, 2; they queue commits
                 // … but 3 leaves before any commit is seen: the add is revoked.
    h.leave_no_pump(3);
    h.pump();
    let revokes: Vec<_> = h
        .log
        .iter()
        .filter(|o| {
            matches!(
                o.msg,
                DaveMessage::Proposals {
                    op: ProposalsOp::Revoke,
                    ..
                }
            )
        })
        .map(|o| o.to)
        .collect();
    assert_eq!(revokes, vec![UserId(1), UserId(2)]);
    assert_eq!(
        h.call.epoch(),
        epoch,
        "a commit adding a departed user must not win"
    );
    assert!(h.refused.iter().any(|e| matches!(
        e,
        DaveError::CommitRefused {
            reason: "unknown or revoked proposal ref",
            ..
        }
    )));
    h.assert_converged(&[1, 2]);
    h.join(4, 1);
    h.assert_converged(&[1, 2, 4]);
}

#[test]
fn sole_member_resets_then_regroups() {
    let mut h = Harness::new();
    h.join(1, 1);
    h.join(2, 1);
    h.leave(2);
    let tail: Vec<_> = h.log.iter().rev().take(2).rev().cloned().collect();
    assert_eq!(
        tail,
        vec![
            Output {
                to: UserId(1),
                msg: DaveMessage::PrepareEpoch {
                    protocol_version: 1,
                    epoch: 1
                }
            },
            Output {
                to: UserId(1),
                msg: DaveMessage::PrepareTransition {
                    protocol_version: 1,
                    transition_id: TransitionId(0)
                }
            },
        ]
    );
    assert_eq!(h.call.epoch(), 0);
    assert_eq!(h.call.stats().sole_member_resets, 1);
    h.join(3, 1);
    h.assert_converged(&[1, 3]);
}

#[test]
fn downgrade_when_non_dave_joins_and_upgrade_when_it_leaves() {
    let mut h = Harness::new();
    for id in 1..=3 {
        h.join(id, 1);
    }
    h.join(9, 0);
    assert_eq!(h.call.protocol_version(), 0);
    for id in [1, 2, 3, 9] {
        assert_eq!(
            h.clients[&UserId(id)].version,
            0,
            "{id} executed the downgrade"
        );
    }
    assert_eq!(h.call.stats().downgrades, 1);
    assert_eq!(h.call.poll_timeout(), None);
    // A DAVE-capable joiner into a downgraded call stays on version 0.
    h.join(4, 1);
    assert_eq!(h.clients[&UserId(4)].version, 0);
    // Garbage or late DAVE input while at version 0 is refused.
    assert!(matches!(
        h.call.handle_binary(h.now, UserId(1), &[26, 0, 1]),
        Err(DaveError::NotInDaveMode(UserId(1)))
    ));
    h.leave(9);
    assert_eq!(h.call.stats().upgrades, 1);
    h.assert_converged(&[1, 2, 3, 4]);
}

#[test]
fn transition_executes_on_timeout_without_every_ready() {
    let mut h = Harness::new();
    h.join(1, 1);
    h.join(2, 1);
    h.join(3, 1);
    // A downgrade whose op 23 from 2 never comes.
    h.join_no_pump(9, 0);
    h.deliver();
    h.clients.get_mut(&UserId(2)).unwrap().outbox.clear();
    h.collect();
    h.deliver();
    assert!(h.call.poll_timeout().is_some());
    assert_eq!(
        h.clients[&UserId(1)].version,
        1,
        "not executed before the deadline"
    );
    h.advance(TRANSITION_TIMEOUT);
    assert_eq!(h.call.stats().transitions_timed_out, 1);
    for id in [1, 2, 3] {
        assert_eq!(h.clients[&UserId(id)].version, 0);
    }
}

#[test]
fn invalid_welcome_recovers() {
    let mut h = Harness::new();
    h.join(1, 1);
    h.join(2, 1);
    h.join_no_pump(3, 1);
    h.clients.get_mut(&UserId(3)).unwrap().corrupt_next_welcome = true;
    h.pump();
    assert_eq!(h.clients[&UserId(3)].invalid_sent, 1);
    h.assert_converged(&[1, 2, 3]);
}

#[test]
fn stale_and_foreign_commits_are_refused_without_effect() {
    let mut h = Harness::new();
    h.join(1, 1);
    h.join(2, 1);
    // Replay the accepted commit (epoch 0) now that the group is at epoch 1.
    let DaveMessage::AnnounceCommit { commit, .. } = h
        .log
        .iter()
        .find(|o| o.msg.opcode() == 29)
        .unwrap()
        .msg
        .clone()
    else {
        unreachable!()
    };
    let frame = wire::encode_client_frame(wire::OP_COMMIT_WELCOME, &commit);
    assert_eq!(
        h.call.handle_binary(h.now, UserId(1), &frame),
        Err(DaveError::StaleEpoch {
            user: UserId(1),
            got: 0,
            current: 1
        })
    );
    // The same bytes from the other member, and from a stranger.
    assert!(h.call.handle_binary(h.now, UserId(2), &frame).is_err());
    assert_eq!(
        h.call.handle_binary(h.now, UserId(77), &frame),
        Err(DaveError::UnknownParticipant(UserId(77)))
    );
    // A key package for someone else's identity.
    let mut other = DaveSession::new(NonZeroU16::new(1).unwrap(), 5, CHANNEL.0, None).unwrap();
    let kp = wire::encode_client_frame(wire::OP_KEY_PACKAGE, &other.create_key_package().unwrap());
    h.join_no_pump(3, 1);
    h.clients.get_mut(&UserId(3)).unwrap().outbox.clear();
    assert!(matches!(
        h.call.handle_binary(h.now, UserId(3), &kp),
        Err(DaveError::KeyPackage(_))
    ));
    // A member sending a key package without op 31.
    let kp1 = {
        let s = h
            .clients
            .get_mut(&UserId(1))
            .unwrap()
            .session
            .as_mut()
            .unwrap();
        wire::encode_client_frame(wire::OP_KEY_PACKAGE, &s.create_key_package().unwrap())
    };
    assert_eq!(
        h.call.handle_binary(h.now, UserId(1), &kp1),
        Err(DaveError::AlreadyMember(UserId(1)))
    );
    while h.call.poll_output().is_some() {}
    h.leave(3);
    assert_eq!(h.call.epoch(), 1);
    h.assert_converged(&[1, 2]);
}

#[test]
fn garbage_binary_is_refused_and_changes_nothing() {
    let mut h = Harness::new();
    h.join(1, 1);
    h.join(2, 1);
    let epoch = h.call.epoch();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..2000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 400) as usize;
        let mut f: Vec<u8> = (0..len)
            .map(|j| (seed >> (j % 57)) as u8 ^ j as u8)
            .collect();
        if !f.is_empty() {
            f[0] = [26, 28, 25, 0, 255][i % 5];
        }
        assert!(h
            .call
            .handle_binary(h.now, UserId(1 + (i % 2) as u64), &f)
            .is_err());
    }
    assert_eq!(h.call.poll_output(), None);
    assert_eq!(h.call.epoch(), epoch);
    h.assert_converged(&[1, 2]);
}

/// Random bytes (and random mutations of real messages) into every decoder: errors, never a
/// panic. Runs in a debug build, where tls_codec's debug assertions are live.
#[test]
fn decoders_never_panic_on_garbage() {
    let mut a = DaveSession::new(NonZeroU16::new(1).unwrap(), 1, CHANNEL.0, None).unwrap();
    let kp = a.create_key_package().unwrap();
    let mut h = Harness::new();
    h.join(1, 1);
    h.join(2, 1);
    h.join(3, 1);
    let real: Vec<Vec<u8>> = h
        .log
        .iter()
        .filter_map(|o| o.msg.binary().map(|b| b.encode_frame(None).unwrap()))
        .chain([kp.clone()])
        .collect();
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..4000 {
        let base = &real[i % real.len()];
        let mut b = base.clone();
        match next() % 4 {
            0 => b.truncate((next() as usize) % (b.len() + 1)),
            1 => {
                for _ in 0..(1 + next() % 4) {
                    let at = (next() as usize) % b.len().max(1);
                    if let Some(x) = b.get_mut(at) {
                        *x = next() as u8;
                    }
                }
            }
            2 => {
                let at = (next() as usize) % b.len().max(1);
                if let Some(x) = b.get_mut(at) {
                    *x |= 0xc0; // reserved vector prefix: tls_codec debug-asserts on it
                }
            }
            _ => b = (0..(next() % 300)).map(|_| next() as u8).collect(),
        }
        let _ = wire::decode_client_frame(&b);
        let _ = wire::decode_server_frame(&b, i % 2 == 0);
        let _ = wire::decode_revoke_refs(&b);
        let _ = wire::read_varint(&b, "fuzz");
        let _ = mls::parse_commit_welcome(&b, CHANNEL);
        let _ = mls::parse_commit_welcome(b.get(3..).unwrap_or_default(), CHANNEL);
        let _ = mls::validate_key_package(&b, UserId(1));
    }
}

#[test]
fn proposal_refs_match_what_davey_commits_to() {
    // Lodge's ProposalRef must equal openmls's: a commit from davey lists them by ref, and the
    // coordinator accepted it only if every ref was one it computed. Checked directly here.
    let mut h = Harness::new();
    h.join(1, 1);
    h.join_no_pump(2, 1);
    h.collect();
    h.collect();
    h.deliver();
    let sent: Vec<[u8; 32]> = h
        .log
        .iter()
        .filter(|o| o.to == UserId(1) && o.msg.opcode() == 27)
        .map(|o| {
            let DaveMessage::Proposals { contents, .. } = &o.msg else {
                unreachable!()
            };
            mls::proposal_ref(contents).unwrap()
        })
        .collect();
    let ClientMsg::Binary(f) = h.clients[&UserId(1)].outbox[0].clone() else {
        panic!()
    };
    let info = mls::parse_commit_welcome(&f[1..], CHANNEL).unwrap();
    assert_eq!(info.refs, sent);
    assert!(info.welcome.is_some());
}

#[test]
fn invalid_commit_recovers_by_remove_and_re_add() {
    let mut h = Harness::new();
    for id in 1..=3 {
        h.join(id, 1);
    }
    // 2 cannot process the commit that adds 4: it sends op 31, resets and sends a new key
    // package; Lodge proposes removing its old leaf, then adding it again.
    h.join_no_pump(4, 1);
    h.clients.get_mut(&UserId(2)).unwrap().corrupt_next_commit = true;
    h.pump();
    assert_eq!(h.clients[&UserId(2)].invalid_sent, 1);
    assert!(h.call.stats().commits_accepted >= 3);
    h.assert_converged(&[1, 2, 3, 4]);
}

/// Regenerates the `dave_binary` fuzz seeds from a real 3-member session:
/// `cargo nextest run -p lodge-signaling --lib write_dave_fuzz_seeds --run-ignored only`.
#[test]
#[ignore = "writes fuzz/corpus/dave_binary; run by hand"]
fn write_dave_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dave_binary");
    std::fs::create_dir_all(&dir).unwrap();
    let mut h = Harness::new();
    h.join(1, 1);
    let kp = {
        let s = h
            .clients
            .get_mut(&UserId(1))
            .unwrap()
            .session
            .as_mut()
            .unwrap();
        s.create_key_package().unwrap()
    };
    std::fs::write(
        dir.join("key_package_frame"),
        wire::encode_client_frame(26, &kp),
    )
    .unwrap();
    std::fs::write(dir.join("key_package_bare"), &kp).unwrap();
    // A commit + Welcome as a client sends it (op 28), captured before Lodge sees it.
    h.join_no_pump(2, 1);
    h.collect();
    h.deliver();
    let ClientMsg::Binary(cw) = h.clients[&UserId(1)].outbox[0].clone() else {
        panic!()
    };
    std::fs::write(dir.join("commit_welcome_frame"), &cw).unwrap();
    std::fs::write(dir.join("commit_welcome_payload"), &cw[1..]).unwrap();
    h.pump();
    h.join(3, 1);
    h.leave(3);
    let mut kinds = std::collections::BTreeSet::new();
    for o in &h.log {
        if let Some(b) = o.msg.binary() {
            let name = format!("server_op{}_{}", o.msg.opcode(), kinds.len());
            if kinds.insert((
                o.msg.opcode(),
                matches!(
                    o.msg,
                    DaveMessage::Proposals {
                        op: ProposalsOp::Revoke,
                        ..
                    }
                ),
            )) {
                std::fs::write(dir.join(name), b.encode_frame(Some(7)).unwrap()).unwrap();
            }
        }
    }
    std::fs::write(dir.join("varint_4byte"), [0x80, 0x00, 0x40, 0x00]).unwrap();
}

#[test]
fn json_ops_have_the_protocol_shapes() {
    use serde_json::json;
    let t = TransitionId(7);
    let cases = [
        (
            DaveMessage::PrepareTransition {
                protocol_version: 0,
                transition_id: t,
            },
            21,
            json!({"protocol_version": 0, "transition_id": 7}),
        ),
        (
            DaveMessage::ExecuteTransition { transition_id: t },
            22,
            json!({"transition_id": 7}),
        ),
        (
            DaveMessage::PrepareEpoch {
                protocol_version: 1,
                epoch: 1,
            },
            24,
            json!({"protocol_version": 1, "epoch": 1}),
        ),
    ];
    for (m, op, d) in cases {
        assert_eq!(m.opcode(), op);
        assert_eq!(m.json_data(), Some(d));
        assert!(m.binary().is_none());
    }
    let b = DaveMessage::ExternalSender(vec![1u8].into());
    assert_eq!((b.opcode(), b.json_data()), (25, None));
}
