//! DAVE, Discord's end-to-end encryption of voice, as a call member: the MLS group kept with
//! the voice gateway's ops 21–31, and each Opus frame encrypted before the transport seals it
//! and decrypted after the transport opens it. The MLS and frame crypto are `davey`'s (the
//! DAVE session Rust clients use); this file is the protocol around it, sans-IO:
//!
//! - handlers: [`DaveMember::handle_json`] (ops 11, 13, 21, 22, 24),
//!   [`DaveMember::handle_binary`] (ops 25, 27, 29, 30);
//! - polls: [`DaveMember::poll_output`] after every handler, until `None`: what to send back
//!   (ops 26 and 28 binary, ops 23 and 31 JSON);
//! - media: [`DaveMember::encrypt`] for what we send, [`DaveMember::decrypt`] for what we hear.
//!
//! The call's protocol version decides what media may be: at 0 (someone in the call has no
//! DAVE) frames are plain Opus and encrypted ones are refused; at 1 frames are DAVE frames, and
//! plain ones are taken only while davey's decryptors allow passthrough: from a downgrade's
//! announcement (op 21 to version 0) until it executes. A fresh group's decryptors refuse
//! plain frames at once, so on an upgrade a peer that still sends plain voice is not heard
//! until it is in the group too (a moment's gap, as with other davey-based clients). While we
//! are not in the group of a DAVE call (or have no session for it), nothing is sent and
//! nothing plain is played: plain voice must not cross the server in a call that is meant to be
//! end-to-end encrypted.
//!
//! Trust: the server may propose adding anyone, and may welcome us into a group it made. We
//! commit proposals only for users the voice gateway announced (op 11, kept in `recognized`;
//! davey checks them), and we take a Welcome only into a group whose every member was announced
//! (checked here: davey 0.1.5 does not). The privacy code ([`DaveStatus::privacy_code`]) lets
//! members compare out of band that no one else is in.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex, MutexGuard};

use davey::{DaveSession, MediaType, ProposalsOperationType};
use lodge_sfu::native::is_dave_frame;
use serde_json::{json, Value};

/// The DAVE protocol version this client speaks (Identify's `max_dave_protocol_version`).
pub const DAVE_VERSION: u16 = 1;

/// Opus's 3-byte silence frame, which DAVE passes unencrypted.
const OPUS_SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];

const OP_EXTERNAL_SENDER: u8 = 25;
const OP_KEY_PACKAGE: u8 = 26;
const OP_PROPOSALS: u8 = 27;
const OP_COMMIT_WELCOME: u8 = 28;
const OP_ANNOUNCE_COMMIT: u8 = 29;
const OP_WELCOME: u8 = 30;

/// What to send the voice gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum DaveOut {
    /// A binary frame: `[opcode][payload]` (op 26 key package, op 28 commit and Welcome).
    Binary(Vec<u8>),
    /// A JSON message (op 23 transition ready, op 31 invalid commit or Welcome).
    Json(Value),
}

/// Why a frame was not played or not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaveDrop {
    /// A DAVE frame in a call without DAVE, or one no key of ours opens.
    Undecryptable,
    /// A plain frame in a DAVE call, outside a downgrade's passthrough.
    Unencrypted,
    /// A DAVE call's frame from an SSRC the voice gateway has not named (op 5).
    UnknownSender,
    /// We are not in the call's group yet: our voice is held back.
    NotInGroup,
}

/// Counters and the state a user may want to see.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DaveStatus {
    /// The call's DAVE protocol version now: 0 is transport encryption only.
    pub protocol_version: u16,
    /// We are in the call's MLS group (media keys in hand).
    pub in_group: bool,
    /// The group's epoch, when in one.
    pub epoch: Option<u64>,
    /// The privacy code members compare to know the call is theirs alone (davey's voice
    /// privacy code: 30 digits, shown in groups of 5), when in a group.
    pub privacy_code: Option<String>,
    /// Our frames that went out encrypted end to end.
    pub frames_encrypted: u64,
    /// DAVE frames we decrypted.
    pub frames_decrypted: u64,
    /// Plain frames taken in a DAVE call: silence, and frames inside a transition's grace.
    pub frames_passed_plain: u64,
    /// Commits and Welcomes we could not process (each answered with op 31 and a fresh key
    /// package).
    pub invalid_commits: u64,
    pub transitions_executed: u64,
}

/// One call's DAVE membership (one voice connection's; a move starts a new one).
pub struct DaveMember {
    user: u64,
    channel: u64,
    session: Option<DaveSession>,
    /// The call's protocol version: op 4's, a (re)started group's (op 24 epoch 1), an executed
    /// transition's (op 22).
    version: u16,
    /// Announced transitions: id → the version they lead to.
    pending: HashMap<u16, u16>,
    /// Users the voice gateway says are in the call (op 11 in, op 13 out), ourselves included.
    recognized: BTreeSet<u64>,
    out: VecDeque<DaveOut>,
    status: DaveStatus,
}

/// The member as the call's tasks share it: the voice gateway's task feeds it, the media loop
/// encrypts and decrypts with it.
pub type SharedDave = Arc<Mutex<DaveMember>>;

/// The shared member, locked. A panic while it was held (none is expected) does not take the
/// call down with it: the lock is taken over. Whatever state the panic left, the frame rules
/// hold: in a DAVE call without a working session nothing plain is sent or played.
pub fn lock(d: &SharedDave) -> MutexGuard<'_, DaveMember> {
    d.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl DaveMember {
    /// Op 4 said the call runs `version` (0: no DAVE now; the call may upgrade later). At 1 a
    /// session starts and its key package is queued (op 26).
    pub fn new(user: u64, channel: u64, version: u16) -> DaveMember {
        let mut m = DaveMember {
            user,
            channel,
            session: None,
            version,
            pending: HashMap::new(),
            recognized: BTreeSet::from([user]),
            out: VecDeque::new(),
            status: DaveStatus::default(),
        };
        m.restart();
        m
    }

    pub fn shared(self) -> SharedDave {
        Arc::new(Mutex::new(self))
    }

    /// A fresh session and key package for the version in force (DAVE), or the old group
    /// dropped and every frame let through for a while (version 0).
    fn restart(&mut self) {
        let Some(v) = NonZeroU16::new(self.version) else {
            if let Some(s) = &mut self.session {
                let _ = s.reset();
                // (davey ignores the expiry when turning passthrough on.)
                s.set_passthrough_mode(true, None);
            }
            return;
        };
        let session = match self.session.take() {
            Some(mut s) => s
                .reinit(v, self.user, self.channel, None)
                .map(|_| s)
                .map_err(|e| e.to_string()),
            None => DaveSession::new(v, self.user, self.channel, None).map_err(|e| e.to_string()),
        };
        let mut s = match session {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("DAVE session could not start: {e}");
                return;
            }
        };
        match s.create_key_package() {
            Ok(kp) => self.out.push_back(binary(OP_KEY_PACKAGE, kp.as_slice())),
            Err(e) => tracing::warn!("DAVE key package could not be made: {e}"),
        }
        self.session = Some(s);
    }

    fn execute(&mut self, id: u16) {
        if let Some(v) = self.pending.remove(&id) {
            if v != self.version {
                tracing::info!(from = self.version, to = v, "DAVE protocol version changed");
            }
            self.version = v;
            self.status.transitions_executed += 1;
        }
    }

    /// A commit or Welcome of transition `id` processed: announce we are ready (op 23) for
    /// the transition to the version in force (id 0 is a (re)start: nothing to announce).
    fn ready_for(&mut self, id: u16) {
        if id != 0 {
            self.pending.insert(id, self.version);
            self.transition_ready(id);
        }
    }

    /// Op 23: we are ready for transition `id`.
    fn transition_ready(&mut self, id: u16) {
        self.out.push_back(DaveOut::Json(
            json!({ "op": 23, "d": { "transition_id": id } }),
        ));
    }

    /// A commit or Welcome of transition `id` did not process: op 31, then start over.
    fn invalid(&mut self, id: u16, what: &str, e: impl std::fmt::Display) {
        tracing::warn!(transition = id, "DAVE {what} could not be processed: {e}");
        self.status.invalid_commits += 1;
        self.out.push_back(DaveOut::Json(
            json!({ "op": 31, "d": { "transition_id": id } }),
        ));
        self.restart();
    }

    /// A JSON message of the voice gateway (other ops are ignored).
    pub fn handle_json(&mut self, op: u64, d: &Value) {
        let u16_of = |k: &str| d[k].as_u64().and_then(|v| u16::try_from(v).ok());
        match op {
            11 => {
                for id in d["user_ids"].as_array().into_iter().flatten() {
                    if let Some(u) = id.as_str().and_then(|u| u.parse().ok()) {
                        self.recognized.insert(u);
                    }
                }
            }
            13 => {
                if let Some(u) = d["user_id"].as_str().and_then(|u| u.parse::<u64>().ok()) {
                    if u != self.user {
                        self.recognized.remove(&u);
                    }
                }
            }
            21 => {
                let (Some(v), Some(id)) = (u16_of("protocol_version"), u16_of("transition_id"))
                else {
                    return;
                };
                if v > DAVE_VERSION {
                    tracing::warn!(
                        version = v,
                        "DAVE transition to a version we do not speak: ignored"
                    );
                    return;
                }
                self.pending.insert(id, v);
                if id == 0 {
                    self.execute(0);
                } else if v == 0 {
                    // A downgrade: others send plain frames once it executes; until then plain
                    // frames pass. (An upgrade's readiness is announced when its commit or
                    // Welcome is processed.)
                    if let Some(s) = &mut self.session {
                        s.set_passthrough_mode(true, None);
                    }
                    self.transition_ready(id);
                }
            }
            22 => {
                if let Some(id) = u16_of("transition_id") {
                    self.execute(id);
                }
            }
            24 => {
                // Epoch 1: the group starts (again) from nothing, at this version.
                if let (Some(v), Some(1)) = (u16_of("protocol_version"), d["epoch"].as_u64()) {
                    if v > DAVE_VERSION {
                        tracing::warn!(
                            version = v,
                            "DAVE epoch of a version we do not speak: ignored"
                        );
                        return;
                    }
                    self.version = v;
                    self.restart();
                }
            }
            _ => {}
        }
    }

    /// A binary message of the voice gateway, without its sequence number: `[opcode][...]`.
    pub fn handle_binary(&mut self, frame: &[u8]) {
        let Some((&op, rest)) = frame.split_first() else {
            return;
        };
        let recognized: Vec<u64> = self.recognized.iter().copied().collect();
        let Some(s) = &mut self.session else {
            return;
        };
        match op {
            OP_EXTERNAL_SENDER => {
                if let Err(e) = s.set_external_sender(rest) {
                    tracing::warn!("DAVE external sender refused: {e}");
                }
            }
            OP_PROPOSALS => {
                let Some((&kind, proposals)) = rest.split_first() else {
                    return;
                };
                let kind = match kind {
                    0 => ProposalsOperationType::APPEND,
                    1 => ProposalsOperationType::REVOKE,
                    _ => return,
                };
                match s.process_proposals(kind, proposals, Some(&recognized)) {
                    Ok(Some(cw)) => {
                        let mut payload = cw.commit;
                        payload.extend_from_slice(&cw.welcome.unwrap_or_default());
                        self.out.push_back(binary(OP_COMMIT_WELCOME, &payload));
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("DAVE proposals refused: {e}"),
                }
            }
            OP_ANNOUNCE_COMMIT | OP_WELCOME if rest.len() >= 2 => {
                let id = u16::from_be_bytes([rest[0], rest[1]]);
                let body = &rest[2..];
                let (what, r) = if op == OP_WELCOME {
                    let r = s.process_welcome(body).map_err(|e| e.to_string());
                    // A Welcome into a group with someone the gateway never announced: refused.
                    let stranger = r.is_ok().then(|| {
                        s.get_user_ids()
                            .unwrap_or_default()
                            .into_iter()
                            .find(|u| !recognized.contains(u))
                    });
                    match stranger.flatten() {
                        Some(u) => (
                            "Welcome",
                            Err(format!(
                                "its group holds user {u}, whom the voice gateway never announced"
                            )),
                        ),
                        None => ("Welcome", r),
                    }
                } else {
                    ("commit", s.process_commit(body).map_err(|e| e.to_string()))
                };
                match r {
                    Ok(()) => self.ready_for(id),
                    Err(e) => self.invalid(id, what, e),
                }
            }
            _ => {}
        }
    }

    pub fn poll_output(&mut self) -> Option<DaveOut> {
        self.out.pop_front()
    }

    fn in_group(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.is_ready())
    }

    /// Our Opus frame as it may go out: DAVE-encrypted in a DAVE call, as it is in a call
    /// without. `Err(NotInGroup)`: a DAVE call we are not in the group of yet (send nothing).
    pub fn encrypt<'a>(&mut self, opus: &'a [u8]) -> Result<Cow<'a, [u8]>, DaveDrop> {
        // Opus silence goes as it is (DAVE leaves it unencrypted: it carries nothing).
        if self.version == 0 || opus == OPUS_SILENCE {
            return Ok(Cow::Borrowed(opus));
        }
        match &mut self.session {
            Some(s) if s.is_ready() => match s.encrypt_opus(opus) {
                Ok(f) => {
                    self.status.frames_encrypted += u64::from(is_dave_frame(&f));
                    Ok(f)
                }
                Err(_) => Err(DaveDrop::NotInGroup),
            },
            _ => Err(DaveDrop::NotInGroup),
        }
    }

    /// A frame `user` sent (`None`: its SSRC has no op 5 yet), as it may be played.
    pub fn decrypt<'a>(
        &mut self,
        user: Option<u64>,
        frame: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, DaveDrop> {
        if self.version == 0 {
            return if is_dave_frame(frame) {
                Err(DaveDrop::Undecryptable)
            } else {
                Ok(Cow::Borrowed(frame))
            };
        }
        let Some(s) = &mut self.session else {
            // A DAVE call without a session (it could not start): nothing is played.
            return Err(if is_dave_frame(frame) {
                DaveDrop::Undecryptable
            } else {
                DaveDrop::Unencrypted
            });
        };
        let user = user.ok_or(DaveDrop::UnknownSender)?;
        match s.decrypt(user, MediaType::AUDIO, frame) {
            Ok(f) => {
                if is_dave_frame(frame) {
                    self.status.frames_decrypted += 1;
                } else {
                    self.status.frames_passed_plain += 1;
                }
                Ok(Cow::Owned(f))
            }
            Err(_) if !is_dave_frame(frame) => Err(DaveDrop::Unencrypted),
            Err(_) => Err(DaveDrop::Undecryptable),
        }
    }

    pub fn status(&self) -> DaveStatus {
        let mut st = self.status.clone();
        st.protocol_version = self.version;
        st.in_group = self.in_group();
        if st.in_group {
            let s = self.session.as_ref().expect("in a group");
            st.epoch = s.epoch().map(|e| e.as_u64());
            st.privacy_code = s.voice_privacy_code().map(str::to_string);
        }
        st
    }
}

fn binary(op: u8, payload: &[u8]) -> DaveOut {
    let mut f = Vec::with_capacity(1 + payload.len());
    f.push(op);
    f.extend_from_slice(payload);
    DaveOut::Binary(f)
}
