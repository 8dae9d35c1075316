//! `lodge-client`'s DAVE member against Lodge's coordinator (`lodge_signaling`'s `DaveCall`),
//! sans-IO: a gateway in miniature carries the coordinator's messages to the members (binary
//! ones through the wire codec, with their sequence numbers) and the members' answers back.
//! Then the members' frames go from one to another: encrypted, decrypted, refused.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lodge_client::dave::{DaveDrop, DaveMember, DaveOut};
use lodge_sfu::native::is_dave_frame;
use lodge_signaling::voice::dave::{ChannelId, DaveCall, TransitionId, UserId, TRANSITION_TIMEOUT};
use serde_json::json;

const CHANNEL: u64 = 0x0123_4567_89ab_cdef;

/// An Opus frame as an encoder might make it (TOC byte, then data).
fn opus(n: u8) -> Vec<u8> {
    let mut f = vec![0x78];
    f.extend((0..60u8).map(|i| i.wrapping_mul(n).wrapping_add(7)));
    f
}

struct Gateway {
    call: DaveCall,
    members: BTreeMap<u64, DaveMember>,
    /// Participants without DAVE (they have no member).
    plain: Vec<u64>,
    now: Instant,
    seq: u16,
    /// Corrupt the next Welcome delivered to this user.
    corrupt_welcome_for: Option<u64>,
    /// A user whose op 11 announcement is delivered to no one.
    unannounced: Option<u64>,
    /// (to, user): this op 11 announcement is not delivered.
    hidden: Option<(u64, u64)>,
}

impl Gateway {
    fn new() -> Self {
        Self {
            call: DaveCall::new(ChannelId(CHANNEL), true).unwrap(),
            members: BTreeMap::new(),
            plain: Vec::new(),
            now: Instant::now(),
            seq: 0,
            corrupt_welcome_for: None,
            unannounced: None,
            hidden: None,
        }
    }

    fn ids(&self) -> Vec<u64> {
        self.members.keys().chain(&self.plain).copied().collect()
    }

    fn announce(&mut self, to: u64, users: &[u64]) {
        let users: Vec<String> = users
            .iter()
            .filter(|u| self.unannounced != Some(**u) && self.hidden != Some((to, **u)))
            .map(|u| u.to_string())
            .collect();
        if let Some(m) = self.members.get_mut(&to) {
            m.handle_json(11, &json!({ "user_ids": users }));
        }
    }

    /// `id` joins, with DAVE or without; everyone already in hears op 11 for it, and it hears
    /// op 11 for them after op 4 (as the node sends them).
    fn join(&mut self, id: u64, dave: bool) {
        for other in self.ids() {
            self.announce(other, &[id]);
        }
        let others = self.ids();
        let v = self
            .call
            .handle_join(self.now, UserId(id), if dave { 1 } else { 0 })
            .unwrap();
        if dave {
            self.members.insert(id, DaveMember::new(id, CHANNEL, v));
            self.announce(id, &others);
        } else {
            assert_eq!(v, 0);
            self.plain.push(id);
        }
        self.pump();
    }

    fn leave(&mut self, id: u64) {
        self.members.remove(&id);
        self.plain.retain(|u| *u != id);
        for m in self.members.values_mut() {
            m.handle_json(13, &json!({ "user_id": id.to_string() }));
        }
        self.call.handle_leave(self.now, UserId(id)).unwrap();
        self.pump();
    }

    fn deliver(&mut self) -> bool {
        let mut moved = false;
        while let Some(o) = self.call.poll_output() {
            moved = true;
            let Some(m) = self.members.get_mut(&o.to.0) else {
                continue;
            };
            match o.msg.json_data() {
                Some(d) => m.handle_json(o.msg.opcode().into(), &d),
                None => {
                    self.seq = self.seq.wrapping_add(1);
                    let mut frame = o
                        .msg
                        .binary()
                        .unwrap()
                        .encode_frame(Some(self.seq))
                        .unwrap();
                    if o.msg.opcode() == 30 && self.corrupt_welcome_for == Some(o.to.0) {
                        self.corrupt_welcome_for = None;
                        let n = frame.len();
                        frame[n - 5] ^= 0xff;
                    }
                    m.handle_binary(&frame[2..]);
                }
            }
        }
        moved
    }

    fn collect(&mut self) -> bool {
        let mut moved = false;
        for (id, m) in &mut self.members {
            let user = UserId(*id);
            while let Some(o) = m.poll_output() {
                moved = true;
                let r = match o {
                    DaveOut::Binary(b) => self.call.handle_binary(self.now, user, &b),
                    DaveOut::Json(v) => {
                        let t = TransitionId(v["d"]["transition_id"].as_u64().unwrap() as u16);
                        match v["op"].as_u64() {
                            Some(23) => self.call.handle_transition_ready(self.now, user, t),
                            Some(31) => self.call.handle_invalid_commit_welcome(self.now, user, t),
                            other => panic!("unexpected op {other:?} from a member"),
                        }
                    }
                };
                // A refusal is the coordinator's business (e.g. a stale commit); the state
                // checks below say whether the call converged.
                let _ = r;
            }
        }
        moved
    }

    fn pump(&mut self) {
        assert!(self.pump_for(100), "no quiescence after 100 rounds");
    }

    /// Up to `rounds` rounds of delivery; whether everything settled.
    fn pump_for(&mut self, rounds: usize) -> bool {
        for _ in 0..rounds {
            let a = self.deliver();
            let b = self.collect();
            if !a && !b {
                return true;
            }
        }
        false
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.call.handle_timeout(self.now);
        self.pump();
    }

    fn m(&mut self, id: u64) -> &mut DaveMember {
        self.members.get_mut(&id).unwrap()
    }

    /// Every member is in one group: same epoch, same privacy code, DAVE in force.
    fn assert_one_group(&self) -> String {
        let st: Vec<_> = self.members.values().map(|m| m.status()).collect();
        for s in &st {
            assert_eq!(s.protocol_version, 1, "{st:?}");
            assert!(s.in_group, "{st:?}");
        }
        assert!(st.windows(2).all(|w| w[0].epoch == w[1].epoch), "{st:?}");
        assert!(
            st.windows(2)
                .all(|w| w[0].privacy_code == w[1].privacy_code),
            "{st:?}"
        );
        st[0].privacy_code.clone().unwrap()
    }

    /// `from`'s frame reaches `to`: returns what `to` would play.
    fn say(&mut self, from: u64, to: u64, n: u8) -> Result<Vec<u8>, DaveDrop> {
        let plain = opus(n);
        let wire = self.m(from).encrypt(&plain)?.into_owned();
        self.m(to)
            .decrypt(Some(from), &wire)
            .map(|f| f.into_owned())
    }
}

#[test]
fn members_form_one_group_and_hear_each_other_only_encrypted() {
    let mut g = Gateway::new();
    g.join(1, true);
    // Alone in a DAVE call: no group yet, so nothing of ours may go out.
    assert!(!g.m(1).status().in_group);
    assert_eq!(g.m(1).encrypt(&opus(1)), Err(DaveDrop::NotInGroup));
    // Opus silence carries nothing and goes as it is.
    assert_eq!(
        &*g.m(1).encrypt(&[0xF8, 0xFF, 0xFE]).unwrap(),
        &[0xF8, 0xFF, 0xFE]
    );

    g.join(2, true);
    g.join(3, true);
    let code = g.assert_one_group();
    assert_eq!(code.len(), 30, "30 digits: {code}");

    let plain = opus(3);
    let wire = g.m(1).encrypt(&plain).unwrap().into_owned();
    assert!(is_dave_frame(&wire), "a DAVE frame on the wire");
    assert_ne!(
        &wire[..plain.len()],
        &plain[..],
        "the Opus bytes are not readable"
    );
    for to in [2, 3] {
        assert_eq!(&*g.m(to).decrypt(Some(1), &wire).unwrap(), &plain[..]);
    }
    assert_eq!(g.say(3, 2, 9).unwrap(), opus(9));
    // The frame claimed for another sender does not open; neither does one from an SSRC the
    // gateway never named, nor a plain frame once the join's grace is over.
    assert_eq!(g.m(2).decrypt(Some(3), &wire), Err(DaveDrop::Undecryptable));
    assert_eq!(g.m(2).decrypt(None, &wire), Err(DaveDrop::UnknownSender));
    let mut tampered = wire.clone();
    tampered[2] ^= 1;
    assert_eq!(
        g.m(2).decrypt(Some(1), &tampered),
        Err(DaveDrop::Undecryptable)
    );
    assert_eq!(g.m(2).decrypt(Some(1), &plain), Err(DaveDrop::Unencrypted));

    let st = g.m(2).status();
    assert_eq!(st.frames_decrypted, 2, "{st:?}");
    assert_eq!(g.m(1).status().frames_encrypted, 1);

    // A member leaves: the others move to a new epoch with a new code, and still hear each other.
    g.leave(3);
    let after = g.assert_one_group();
    assert_ne!(after, code, "a new group, a new privacy code");
    assert_eq!(g.say(1, 2, 4).unwrap(), opus(4));
    assert_eq!(g.say(2, 1, 5).unwrap(), opus(5));
}

#[test]
fn a_member_without_dave_downgrades_the_call_and_its_leaving_upgrades_it() {
    let mut g = Gateway::new();
    g.join(1, true);
    g.join(2, true);
    g.assert_one_group();

    // A participant without DAVE: the call goes down to transport encryption only.
    g.join(9, false);
    g.advance(TRANSITION_TIMEOUT);
    for id in [1, 2] {
        let st = g.m(id).status();
        assert_eq!(st.protocol_version, 0, "{id}: {st:?}");
        assert!(st.transitions_executed >= 1);
    }
    // Frames go plain, and plain frames are heard, from everyone (9's too).
    let plain = opus(6);
    assert_eq!(&*g.m(1).encrypt(&plain).unwrap(), &plain[..]);
    assert_eq!(g.say(1, 2, 6).unwrap(), plain);
    assert_eq!(&*g.m(2).decrypt(Some(9), &plain).unwrap(), &plain[..]);

    // It leaves: the call upgrades, a new group forms, and frames are encrypted again.
    g.leave(9);
    g.advance(TRANSITION_TIMEOUT);
    g.assert_one_group();
    let wire = g.m(2).encrypt(&plain).unwrap().into_owned();
    assert!(is_dave_frame(&wire));
    assert_eq!(&*g.m(1).decrypt(Some(2), &wire).unwrap(), &plain[..]);
}

#[test]
fn a_welcome_that_does_not_process_is_answered_with_op_31_and_the_member_comes_in_after() {
    let mut g = Gateway::new();
    g.join(1, true);
    g.join(2, true);
    g.corrupt_welcome_for = Some(3);
    g.join(3, true);
    assert_eq!(g.m(3).status().invalid_commits, 1, "op 31 sent once");
    g.advance(TRANSITION_TIMEOUT);
    g.assert_one_group();
    assert_eq!(g.say(3, 1, 8).unwrap(), opus(8));
    assert_eq!(g.say(1, 3, 2).unwrap(), opus(2));
}

#[test]
fn members_do_not_add_a_user_the_voice_gateway_never_announced() {
    let mut g = Gateway::new();
    g.join(1, true);
    g.join(2, true);
    let code = g.assert_one_group();
    // The server proposes adding 3, but no member was told (op 11) that 3 is in the call:
    // they refuse to commit the add, so 3 never gets the group's keys.
    g.unannounced = Some(3);
    let accepted = g.call.stats().commits_accepted;
    g.join(3, true);
    assert_eq!(
        g.call.stats().commits_accepted,
        accepted,
        "no commit adding 3 was made"
    );
    g.advance(TRANSITION_TIMEOUT);
    assert!(!g.m(3).status().in_group, "{:?}", g.m(3).status());
    assert_eq!(g.m(3).encrypt(&opus(1)), Err(DaveDrop::NotInGroup));
    g.members.remove(&3).unwrap();
    assert_eq!(
        g.assert_one_group(),
        code,
        "1 and 2 stay in their group as it was"
    );
    assert_eq!(g.say(1, 2, 3).unwrap(), opus(3));
}

#[test]
fn a_welcome_into_a_group_holding_an_unannounced_user_is_refused() {
    let mut g = Gateway::new();
    g.join(1, true);
    g.join(2, true);
    // 3 joins but is never told (op 11) that 2 is in the call; 1 and 2 were told about 3, so
    // they commit its add, and the Welcome's group holds 2: 3 refuses it (op 31) and keeps
    // refusing on every new try, so it never takes the group's keys.
    g.hidden = Some((3, 2));
    for id in g.ids() {
        g.announce(id, &[3]);
    }
    let v = g.call.handle_join(g.now, UserId(3), 1).unwrap();
    g.members.insert(3, DaveMember::new(3, CHANNEL, v));
    g.announce(3, &[1, 2]);
    let _ = g.pump_for(60);
    let st = g.m(3).status();
    assert!(st.invalid_commits >= 1, "{st:?}");
    assert!(!st.in_group, "{st:?}");
    assert_eq!(g.m(3).encrypt(&opus(1)), Err(DaveDrop::NotInGroup));
}
