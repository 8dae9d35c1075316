//! DAVE (Discord's MLS-based voice end-to-end encryption): Lodge as the MLS delivery service and
//! external sender for one call, as a pure state machine ([`DaveCall`]).
//!
//! docs/design/NATIVE-VOICE.md §3 is the protocol brief; this module is its step 6. The gateway
//! (step 7) feeds [`DaveCall`] what participants do and sends what it polls.
//!
//! # What the server holds, and what it cannot do
//! - **One P-256 external-sender key pair per call** ([`mls::ExternalSenderKey`]), generated when
//!   the call starts, kept in memory only, dropped with the call, never persisted or logged. Its
//!   public half goes to every DAVE participant (op 25) and is pinned in the group's
//!   external_senders extension; with it Lodge signs Add/Remove proposals.
//! - Per call: the protocol version in force, the group's epoch and a mirror of which user holds
//!   which leaf ([`mls::LeafMirror`]), each participant's validated key package until it is
//!   committed, the proposals sent this epoch (bytes, ref, recipients) and the transitions in
//!   flight. That is the whitepaper's "group ID, epoch, ciphersuite, and each member's leaf index"
//!   plus bookkeeping.
//! - **No media keys.** Media keys are exported from the MLS epoch secret, which only members
//!   derive (from Welcome/commit path secrets encrypted to their HPKE keys). Lodge is not a
//!   member, never sees a path secret, and so cannot decrypt DAVE media; the SFU forwards DAVE
//!   frames opaque.
//! - **The trust boundary**: Lodge *can* propose adding any key package, i.e. a malicious server
//!   could try to add a listener. Clients accept an Add only for users the gateway announced by
//!   op 11 (davey `expected_user_ids`, libdave `IsRecognizedUserID`) and members can compare the
//!   displayed privacy code (epoch authenticator) out of band. Lodge's honesty is the op 11 list.
//!
//! # Shape (sans-IO, HOUSE-STYLE.md)
//! Handlers: [`DaveCall::handle_join`], [`DaveCall::handle_leave`],
//! [`DaveCall::handle_binary`] (ops 26 and 28), [`DaveCall::handle_transition_ready`] (op 23),
//! [`DaveCall::handle_invalid_commit_welcome`] (op 31), [`DaveCall::handle_timeout`].
//! Polls: [`DaveCall::poll_output`] until `None` after every handler, [`DaveCall::poll_timeout`]
//! for the next deadline. `now` is always passed in; nothing here reads a clock or does I/O.
//! Handlers return `Err` for input that was refused (dropped; the caller counts the reason);
//! a refused binary frame (op 26/28) leaves the state and the output queue unchanged (the
//! `dave_binary` fuzz target asserts it).
//!
//! # Commit validity
//! As the whitepaper asks: a PublicMessage commit from a member (a pending participant's own
//! group: leaf 0) for the current epoch whose refs are *exactly* the unrevoked proposals Lodge
//! sent to its author this epoch, with a Welcome iff it adds. "Exactly" matters: davey commits
//! again on every op 27 and, when it sees a commit of its own announced, merges its *latest*
//! pending commit — accepting an older, smaller commit from the same author would split the
//! group. The first valid commit per epoch wins; later ones are refused as stale.
//!
//! # Where Lodge differs from the whitepaper
//! - The Welcome is forwarded whole to each joiner (not trimmed to its own secrets).

pub mod mls;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openmls::prelude::KeyPackage;

use mls::{ExternalSenderKey, LeafMirror, ProposalRef};
use wire::{ClientBinary, ProposalsOp, ServerBinary};

/// The DAVE protocol version Lodge speaks (the only one there is).
pub const DAVE_VERSION: u16 = 1;
/// DAVE participants per call (a Welcome's inline tree grows with it): a call larger than
/// this runs without DAVE (a joiner past it counts as a participant without DAVE, which
/// downgrades the call).
pub const MAX_PARTICIPANTS: usize = 100;
/// Participants per call the coordinator tracks at all (the media node's own bound).
pub const MAX_TRACKED: usize = 10_000;
/// Outstanding proposals per epoch: at most one add per participant and one remove per leaf.
pub const MAX_PROPOSALS_PER_EPOCH: usize = 2 * MAX_PARTICIPANTS;
/// Transitions in flight; beyond this the oldest is executed at once.
pub const MAX_TRANSITIONS: usize = 8;
/// How long a transition waits for op 23 from every recipient before op 22 goes out anyway.
/// The whitepaper implies about two seconds; Discord's exact value is unconfirmed.
pub const TRANSITION_TIMEOUT: Duration = Duration::from_secs(2);

/// A user (snowflake). Also the MLS credential identity, 8 bytes big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(pub u64);

/// The voice channel; its 8-byte big-endian form is the MLS group id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelId(pub u64);

/// A DAVE transition id. 0 means "(re)initialisation, execute now" (no op 23 expected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransitionId(pub u16);

/// Everything this module refuses, one variant per reason (each is a drop the caller counts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DaveError {
    #[error("{what}: truncated")]
    Truncated { what: &'static str },
    #[error("{what}: {len} bytes is over {limit_name} = {limit}")]
    TooLarge {
        what: &'static str,
        len: usize,
        limit: usize,
        limit_name: &'static str,
    },
    #[error("{what}: vector length prefix 0b11 is reserved")]
    VarintReserved { what: &'static str },
    #[error("{what}: vector length is not minimally encoded")]
    VarintNonMinimal { what: &'static str },
    #[error("{what}: {extra} trailing bytes")]
    Trailing { what: &'static str, extra: usize },
    #[error("{what}: unexpected value {value}")]
    Unexpected { what: &'static str, value: u64 },
    #[error("binary opcode {0} is not accepted here")]
    UnexpectedOpcode(u8),
    #[error("key package refused: {0}")]
    KeyPackage(&'static str),
    #[error("commit refused: {0}")]
    CommitShape(&'static str),
    #[error("commit from {user:?} refused: {reason}")]
    CommitRefused { user: UserId, reason: &'static str },
    #[error("commit from {user:?} for epoch {got}, current epoch is {current}")]
    StaleEpoch {
        user: UserId,
        got: u64,
        current: u64,
    },
    #[error("{0:?} is not in this call")]
    UnknownParticipant(UserId),
    #[error("{0:?} is already in this call")]
    AlreadyJoined(UserId),
    #[error("call is full: MAX_TRACKED = {limit}")]
    CallFull { limit: usize },
    #[error("too many proposals this epoch: MAX_PROPOSALS_PER_EPOCH = {limit}")]
    TooManyProposals { limit: usize },
    #[error("{0:?} sent a DAVE message while the call is not using DAVE")]
    NotInDaveMode(UserId),
    #[error("{0:?} is already a member; a key package needs op 31 first")]
    AlreadyMember(UserId),
    #[error("mls {what}: {detail}")]
    Mls { what: &'static str, detail: String },
}

impl DaveError {
    /// Stable snake_case name for metrics (`lodge_dave_refused_total{reason=…}`).
    pub fn kind(&self) -> &'static str {
        match self {
            DaveError::Truncated { .. }
            | DaveError::TooLarge { .. }
            | DaveError::VarintReserved { .. }
            | DaveError::VarintNonMinimal { .. }
            | DaveError::Trailing { .. }
            | DaveError::Unexpected { .. } => "malformed",
            DaveError::UnexpectedOpcode(_) => "unexpected_opcode",
            DaveError::KeyPackage(_) => "key_package",
            DaveError::CommitShape(_) | DaveError::CommitRefused { .. } => "commit_refused",
            DaveError::StaleEpoch { .. } => "stale_epoch",
            DaveError::UnknownParticipant(_) => "unknown_participant",
            DaveError::AlreadyJoined(_) => "already_joined",
            DaveError::CallFull { .. } => "call_full",
            DaveError::TooManyProposals { .. } => "too_many_proposals",
            DaveError::NotInDaveMode(_) => "not_in_dave_mode",
            DaveError::AlreadyMember(_) => "already_member",
            DaveError::Mls { .. } => "mls",
        }
    }

    /// Every name [`DaveError::kind`] gives, for exporting zeroes too.
    pub const KINDS: [&'static str; 12] = [
        "malformed",
        "unexpected_opcode",
        "key_package",
        "commit_refused",
        "stale_epoch",
        "unknown_participant",
        "already_joined",
        "call_full",
        "too_many_proposals",
        "not_in_dave_mode",
        "already_member",
        "mls",
    ];
}

/// A message for one participant. JSON ops carry their `d`; binary ops their payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaveMessage {
    /// op 21
    PrepareTransition {
        protocol_version: u16,
        transition_id: TransitionId,
    },
    /// op 22
    ExecuteTransition { transition_id: TransitionId },
    /// op 24
    PrepareEpoch { protocol_version: u16, epoch: u64 },
    /// op 25 (binary)
    ExternalSender(Arc<[u8]>),
    /// op 27 (binary): the vector's contents.
    Proposals {
        op: ProposalsOp,
        contents: Arc<[u8]>,
    },
    /// op 29 (binary)
    AnnounceCommit {
        transition_id: TransitionId,
        commit: Arc<[u8]>,
    },
    /// op 30 (binary)
    Welcome {
        transition_id: TransitionId,
        welcome: Arc<[u8]>,
    },
}

impl DaveMessage {
    pub fn opcode(&self) -> u8 {
        match self {
            Self::PrepareTransition { .. } => 21,
            Self::ExecuteTransition { .. } => 22,
            Self::PrepareEpoch { .. } => 24,
            Self::ExternalSender(_) => wire::OP_EXTERNAL_SENDER,
            Self::Proposals { .. } => wire::OP_PROPOSALS,
            Self::AnnounceCommit { .. } => wire::OP_ANNOUNCE_COMMIT,
            Self::Welcome { .. } => wire::OP_WELCOME,
        }
    }

    /// `d` of a JSON op (21, 22, 24); `None` for binary ops.
    pub fn json_data(&self) -> Option<serde_json::Value> {
        use serde_json::json;
        match self {
            Self::PrepareTransition {
                protocol_version,
                transition_id,
            } => Some(
                json!({"protocol_version": protocol_version, "transition_id": transition_id.0}),
            ),
            Self::ExecuteTransition { transition_id } => {
                Some(json!({"transition_id": transition_id.0}))
            }
            Self::PrepareEpoch {
                protocol_version,
                epoch,
            } => Some(json!({"protocol_version": protocol_version, "epoch": epoch})),
            _ => None,
        }
    }

    /// The binary form of ops 25/27/29/30; `None` for JSON ops.
    pub fn binary(&self) -> Option<ServerBinary<'_>> {
        match self {
            Self::ExternalSender(b) => Some(ServerBinary::ExternalSender(b)),
            Self::Proposals { op, contents } => Some(ServerBinary::Proposals { op: *op, contents }),
            Self::AnnounceCommit {
                transition_id,
                commit,
            } => Some(ServerBinary::AnnounceCommit {
                transition_id: *transition_id,
                commit,
            }),
            Self::Welcome {
                transition_id,
                welcome,
            } => Some(ServerBinary::Welcome {
                transition_id: *transition_id,
                welcome,
            }),
            _ => None,
        }
    }
}

/// One message to one participant, in the order it must be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub to: UserId,
    pub msg: DaveMessage,
}

/// Counters for /voice/stats (step 7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaveStats {
    pub commits_accepted: u64,
    pub transitions_executed: u64,
    pub transitions_timed_out: u64,
    pub downgrades: u64,
    pub upgrades: u64,
    pub sole_member_resets: u64,
}

impl DaveStats {
    /// Add `other`'s counts to these (a node's totals over its calls).
    pub fn add(&mut self, other: &DaveStats) {
        self.commits_accepted += other.commits_accepted;
        self.transitions_executed += other.transitions_executed;
        self.transitions_timed_out += other.transitions_timed_out;
        self.downgrades += other.downgrades;
        self.upgrades += other.upgrades;
        self.sole_member_resets += other.sole_member_resets;
    }
}

#[derive(Debug)]
struct Participant {
    max_version: u16,
    /// Validated key package not yet committed. Invariant: `Some` only while `leaf` is `None`.
    key_package: Option<KeyPackage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProposalKind {
    Add(UserId),
    Remove { user: UserId, leaf: u32 },
}

#[derive(Debug)]
struct SentProposal {
    r#ref: ProposalRef,
    bytes: Arc<[u8]>,
    kind: ProposalKind,
    /// Who was sent it (a commit may only reference proposals sent to its author).
    recipients: BTreeSet<UserId>,
}

#[derive(Debug)]
struct Transition {
    id: TransitionId,
    recipients: BTreeSet<UserId>,
    /// Recipients whose op 23 has not arrived. Invariant: ⊆ `recipients`.
    awaiting: BTreeSet<UserId>,
    deadline: Instant,
}

/// The DAVE coordinator of one call (a Room's voice channel). See the module docs.
#[derive(Debug)]
pub struct DaveCall {
    channel: ChannelId,
    key: ExternalSenderKey,
    /// Whether the channel allows DAVE at all (a channel could also require it: step 7, 4017).
    allow_dave: bool,
    /// Protocol version in force: `DAVE_VERSION` iff every participant's max ≥ 1 and DAVE is
    /// allowed (changes through downgrade/upgrade).
    version: u16,
    participants: BTreeMap<UserId, Participant>,
    /// `None` = no established group (epoch 0, every DAVE participant pending).
    group: Option<(u64, LeafMirror)>,
    /// Proposals sent in the current epoch and not revoked.
    proposals: Vec<SentProposal>,
    transitions: Vec<Transition>,
    last_transition: u16,
    out: VecDeque<Output>,
    stats: DaveStats,
}

impl DaveCall {
    /// A new, empty call. Generates the call's external-sender key.
    pub fn new(channel: ChannelId, allow_dave: bool) -> Result<Self, DaveError> {
        Ok(Self {
            channel,
            key: ExternalSenderKey::generate()?,
            allow_dave,
            version: if allow_dave { DAVE_VERSION } else { 0 },
            participants: BTreeMap::new(),
            group: None,
            proposals: Vec::new(),
            transitions: Vec::new(),
            last_transition: 0,
            out: VecDeque::new(),
            stats: DaveStats::default(),
        })
    }

    /// The protocol version in force (op 4's `dave_protocol_version` for a joiner).
    pub fn protocol_version(&self) -> u16 {
        self.version
    }

    /// The current epoch (0 while no group is established).
    pub fn epoch(&self) -> u64 {
        self.group.as_ref().map_or(0, |g| g.0)
    }

    /// The leaves `user` holds in the group (none before a group exists).
    fn leaves_of(&self, user: UserId) -> Vec<u32> {
        self.group
            .as_ref()
            .map(|g| {
                g.1.members()
                    .filter(|(_, u)| *u == user)
                    .map(|(l, _)| l)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Established members by leaf.
    pub fn members(&self) -> Vec<(u32, UserId)> {
        self.group
            .as_ref()
            .map(|g| g.1.members().collect())
            .unwrap_or_default()
    }

    /// Participants in the call (with or without DAVE).
    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    pub fn stats(&self) -> &DaveStats {
        &self.stats
    }

    /// The op 25 body.
    pub fn external_sender_package(&self) -> &[u8] {
        self.key.package()
    }

    // ----- polls -------------------------------------------------------------------------

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The earliest transition deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.transitions.iter().map(|t| t.deadline).min()
    }

    // ----- handlers ----------------------------------------------------------------------

    /// A participant joined (after Identify). Returns op 4's `dave_protocol_version` for it; the
    /// outputs queued here (op 25 for a DAVE joiner) must be sent after op 4.
    pub fn handle_join(
        &mut self,
        now: Instant,
        user: UserId,
        max_version: u16,
    ) -> Result<u16, DaveError> {
        if self.participants.contains_key(&user) {
            return Err(DaveError::AlreadyJoined(user));
        }
        if self.participants.len() >= MAX_TRACKED {
            return Err(DaveError::CallFull { limit: MAX_TRACKED });
        }
        let max_version = if self.participants.len() >= MAX_PARTICIPANTS {
            0
        } else {
            max_version
        };
        let was_empty = self.participants.is_empty();
        self.participants.insert(
            user,
            Participant {
                max_version,
                key_package: None,
            },
        );
        let desired = self.desired_version();
        if was_empty {
            self.version = desired;
        } else if self.version > desired {
            self.downgrade(now);
        }
        if self.version >= DAVE_VERSION {
            self.send(user, DaveMessage::ExternalSender(self.key.package().into()));
        }
        Ok(self.version)
    }

    /// A participant left the call (Client Disconnect).
    pub fn handle_leave(&mut self, _now: Instant, user: UserId) -> Result<(), DaveError> {
        if self.participants.remove(&user).is_none() {
            return Err(DaveError::UnknownParticipant(user));
        }
        self.forget_in_transitions(user);
        if self.participants.is_empty() {
            self.reset_group();
            self.version = if self.allow_dave { DAVE_VERSION } else { 0 };
            return Ok(());
        }
        if self.version < DAVE_VERSION {
            if self.desired_version() >= DAVE_VERSION {
                self.upgrade();
            }
            return Ok(());
        }
        self.revoke_adds_of(user);
        let leaves = self.leaves_of(user);
        if leaves.is_empty() {
            return Ok(());
        }
        let present = self.present_members();
        if present.is_empty() {
            // Nobody left to commit: pending participants start a group among themselves.
            self.reset_group();
            self.reissue_pending_adds()?;
        } else if present.len() == 1 && self.pending_with_key_package().is_empty() {
            self.sole_member_reset();
        } else {
            for leaf in leaves {
                if !self.removing(leaf) {
                    self.propose_remove(user, leaf)?;
                }
            }
        }
        Ok(())
    }

    /// A binary frame from a participant (op 26 or 28; anything else is refused).
    pub fn handle_binary(
        &mut self,
        now: Instant,
        user: UserId,
        frame: &[u8],
    ) -> Result<(), DaveError> {
        match wire::decode_client_frame(frame)? {
            ClientBinary::KeyPackage(kp) => self.handle_key_package(user, kp),
            ClientBinary::CommitWelcome(cw) => self.handle_commit_welcome(now, user, cw),
        }
    }

    /// op 23.
    pub fn handle_transition_ready(
        &mut self,
        now: Instant,
        user: UserId,
        id: TransitionId,
    ) -> Result<(), DaveError> {
        if !self.participants.contains_key(&user) {
            return Err(DaveError::UnknownParticipant(user));
        }
        if let Some(t) = self.transitions.iter_mut().find(|t| t.id == id) {
            t.awaiting.remove(&user);
        }
        self.execute_ready(now);
        Ok(())
    }

    /// op 31: `user` could not process a commit or welcome and has reset its session; its new
    /// key package follows. Its leaf (if any) is proposed for removal.
    pub fn handle_invalid_commit_welcome(
        &mut self,
        now: Instant,
        user: UserId,
        id: TransitionId,
    ) -> Result<(), DaveError> {
        let _ = id;
        if !self.participants.contains_key(&user) {
            return Err(DaveError::UnknownParticipant(user));
        }
        if self.version < DAVE_VERSION {
            return Err(DaveError::NotInDaveMode(user));
        }
        self.forget_in_transitions(user);
        self.execute_ready(now);
        self.revoke_adds_of(user);
        if let Some(p) = self.participants.get_mut(&user) {
            p.key_package = None;
        }
        let leaves = self.leaves_of(user);
        if leaves.is_empty() {
            return Ok(());
        }
        let others = self
            .present_members()
            .into_iter()
            .filter(|u| *u != user)
            .count();
        if others == 0 {
            // Nobody left to commit the removal: the group is gone.
            self.reset_group();
            self.reissue_pending_adds()?;
        } else {
            for leaf in leaves {
                if !self.removing(leaf) {
                    self.propose_remove(user, leaf)?;
                }
            }
        }
        Ok(())
    }

    /// Executes transitions whose deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.transitions)
            .into_iter()
            .partition(|t| t.deadline <= now);
        self.transitions = keep;
        for t in due {
            self.stats.transitions_timed_out += 1;
            self.execute(t);
        }
    }

    // ----- inputs behind handle_binary ---------------------------------------------------

    fn handle_key_package(&mut self, user: UserId, bytes: &[u8]) -> Result<(), DaveError> {
        if !self.participants.contains_key(&user) {
            return Err(DaveError::UnknownParticipant(user));
        }
        if self.version < DAVE_VERSION {
            return Err(DaveError::NotInDaveMode(user));
        }
        if self.present_members().contains(&user) {
            return Err(DaveError::AlreadyMember(user));
        }
        if self.proposals.len() >= MAX_PROPOSALS_PER_EPOCH {
            return Err(DaveError::TooManyProposals {
                limit: MAX_PROPOSALS_PER_EPOCH,
            });
        }
        let kp = mls::validate_key_package(bytes, user)?;
        // A new key package replaces the old one (the client reset): its add is void.
        self.revoke_adds_of(user);
        if let Some(p) = self.participants.get_mut(&user) {
            p.key_package = Some(kp);
        }
        self.propose_add(user)
    }

    fn handle_commit_welcome(
        &mut self,
        now: Instant,
        user: UserId,
        payload: &[u8],
    ) -> Result<(), DaveError> {
        let refuse = |reason| DaveError::CommitRefused { user, reason };
        if !self.participants.contains_key(&user) {
            return Err(DaveError::UnknownParticipant(user));
        }
        if self.version < DAVE_VERSION {
            return Err(DaveError::NotInDaveMode(user));
        }
        let info = mls::parse_commit_welcome(payload, self.channel)?;
        let current = self.epoch();
        if info.epoch != current {
            return Err(DaveError::StaleEpoch {
                user,
                got: info.epoch,
                current,
            });
        }
        match &self.group {
            Some((_, leaves)) => {
                if leaves.user_at(info.sender_leaf) != Some(user) || self.removing(info.sender_leaf)
                {
                    return Err(refuse("sender leaf is not the author's leaf"));
                }
            }
            None => {
                if info.sender_leaf != 0 {
                    return Err(refuse("a pending group's committer is leaf 0"));
                }
                if self
                    .participants
                    .get(&user)
                    .is_none_or(|p| p.key_package.is_none())
                {
                    return Err(refuse("author has no key package"));
                }
            }
        }
        if info.refs.is_empty() {
            return Err(refuse("commit covers no proposal"));
        }
        let mut covered = Vec::with_capacity(info.refs.len());
        for r in &info.refs {
            let Some(i) = self.proposals.iter().position(|p| p.r#ref == *r) else {
                return Err(refuse("unknown or revoked proposal ref"));
            };
            if !self.proposals[i].recipients.contains(&user) {
                return Err(refuse("proposal was not sent to the author"));
            }
            if covered.contains(&i) {
                return Err(refuse("duplicate proposal ref"));
            }
            covered.push(i);
        }
        // Exactly the proposals sent to the author: a client re-commits on every op 27, and
        // merges its *latest* pending commit when it sees its own commit announced, so a commit
        // superseded by a later one from the same author must never win.
        let sent_to_author = self
            .proposals
            .iter()
            .filter(|p| p.recipients.contains(&user))
            .count();
        if covered.len() != sent_to_author {
            return Err(refuse(
                "commit does not cover exactly the proposals sent to its author",
            ));
        }
        let kinds: Vec<ProposalKind> = covered.iter().map(|&i| self.proposals[i].kind).collect();
        let removes: Vec<u32> = kinds
            .iter()
            .filter_map(|k| match k {
                ProposalKind::Remove { leaf, .. } => Some(*leaf),
                ProposalKind::Add(_) => None,
            })
            .collect();
        let adds: Vec<UserId> = kinds
            .iter()
            .filter_map(|k| match k {
                ProposalKind::Add(u) => Some(*u),
                ProposalKind::Remove { .. } => None,
            })
            .collect();
        if adds.is_empty() != info.welcome.is_none() {
            return Err(refuse("a Welcome must come with adds, and only with adds"));
        }

        // Accepted: the first valid commit for this epoch.
        self.stats.commits_accepted += 1;
        let (mut leaves, old_members) = match self.group.take() {
            Some((_, leaves)) => {
                let old: BTreeSet<UserId> = leaves.members().map(|(_, u)| u).collect();
                (leaves, old)
            }
            None => (LeafMirror::new_group(user), BTreeSet::from([user])),
        };
        if let Some(p) = self.participants.get_mut(&user) {
            // A pending committer is leaf 0 of the group it just created.
            p.key_package = None;
        }
        let placed = leaves.apply(&removes, &adds);
        let added: BTreeSet<UserId> = placed.iter().map(|(u, _)| *u).collect();
        for u in &added {
            if let Some(p) = self.participants.get_mut(u) {
                p.key_package = None;
            }
        }
        let in_group: BTreeSet<UserId> = leaves.members().map(|(_, u)| u).collect();
        self.group = Some((current + 1, leaves));
        let uncovered: Vec<SentProposal> = std::mem::take(&mut self.proposals)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !covered.contains(i))
            .map(|(_, p)| p)
            .collect();

        // op 29 to members that stay (a re-added member had reset: it gets the Welcome), op 30
        // to the added; the transition executes when all of them are ready.
        let id = self.next_transition_id();
        let commit: Arc<[u8]> = info.commit.into();
        let mut recipients = BTreeSet::new();
        for u in old_members.intersection(&in_group) {
            if self.participants.contains_key(u) && !added.contains(u) {
                recipients.insert(*u);
                self.send(
                    *u,
                    DaveMessage::AnnounceCommit {
                        transition_id: id,
                        commit: commit.clone(),
                    },
                );
            }
        }
        if let Some(welcome) = info.welcome {
            let welcome: Arc<[u8]> = welcome.into();
            for u in &added {
                if self.participants.contains_key(u) {
                    recipients.insert(*u);
                    self.send(
                        *u,
                        DaveMessage::Welcome {
                            transition_id: id,
                            welcome: welcome.clone(),
                        },
                    );
                }
            }
        }
        self.start_transition(now, id, recipients);

        // What the commit did not cover is re-issued at the new epoch: adds of users still
        // pending, removes of leaves still held; and leaves of users who left meanwhile (an add
        // raced their leave) are proposed for removal.
        for p in uncovered {
            match p.kind {
                ProposalKind::Add(u) => {
                    if self
                        .participants
                        .get(&u)
                        .is_some_and(|p| p.key_package.is_some())
                    {
                        self.propose_add(u)?;
                    }
                }
                ProposalKind::Remove { user: u, leaf } => {
                    if self
                        .group
                        .as_ref()
                        .is_some_and(|g| g.1.user_at(leaf) == Some(u))
                        && !self.removing(leaf)
                    {
                        self.propose_remove(u, leaf)?;
                    }
                }
            }
        }
        let gone: Vec<(UserId, u32)> = self
            .group
            .as_ref()
            .map(|g| {
                g.1.members()
                    .filter(|(_, u)| !self.participants.contains_key(u))
                    .map(|(l, u)| (u, l))
                    .collect()
            })
            .unwrap_or_default();
        for (u, leaf) in gone {
            if !self.removing(leaf) {
                self.propose_remove(u, leaf)?;
            }
        }
        Ok(())
    }

    // ----- internals ---------------------------------------------------------------------

    fn desired_version(&self) -> u16 {
        if self.allow_dave
            && self
                .participants
                .values()
                .all(|p| p.max_version >= DAVE_VERSION)
        {
            DAVE_VERSION
        } else {
            0
        }
    }

    fn send(&mut self, to: UserId, msg: DaveMessage) {
        self.out.push_back(Output { to, msg });
    }

    fn next_transition_id(&mut self) -> TransitionId {
        self.last_transition = self.last_transition.checked_add(1).unwrap_or(1);
        TransitionId(self.last_transition)
    }

    /// Members that are in the call and not being removed (deduplicated, by leaf order).
    fn present_members(&self) -> Vec<UserId> {
        let mut out = Vec::new();
        if let Some((_, leaves)) = &self.group {
            for (leaf, u) in leaves.members() {
                if self.participants.contains_key(&u) && !self.removing(leaf) && !out.contains(&u) {
                    out.push(u);
                }
            }
        }
        out
    }

    /// Whether a Remove of `leaf` is outstanding this epoch.
    fn removing(&self, leaf: u32) -> bool {
        self.proposals
            .iter()
            .any(|p| matches!(p.kind, ProposalKind::Remove { leaf: l, .. } if l == leaf))
    }

    /// Re-proposes every pending participant's add (after the group changed under them).
    fn reissue_pending_adds(&mut self) -> Result<(), DaveError> {
        for u in self.pending_with_key_package() {
            if !self
                .proposals
                .iter()
                .any(|p| p.kind == ProposalKind::Add(u))
            {
                self.propose_add(u)?;
            }
        }
        Ok(())
    }

    fn pending_with_key_package(&self) -> Vec<UserId> {
        self.participants
            .iter()
            .filter(|(_, p)| p.key_package.is_some())
            .map(|(u, _)| *u)
            .collect()
    }

    fn reset_group(&mut self) {
        self.group = None;
        self.proposals.clear();
    }

    fn start_transition(&mut self, now: Instant, id: TransitionId, recipients: BTreeSet<UserId>) {
        if recipients.is_empty() {
            return;
        }
        if self.transitions.len() >= MAX_TRANSITIONS {
            let oldest = self.transitions.remove(0);
            self.execute(oldest);
        }
        self.transitions.push(Transition {
            id,
            awaiting: recipients.clone(),
            recipients,
            deadline: now + TRANSITION_TIMEOUT,
        });
    }

    fn forget_in_transitions(&mut self, user: UserId) {
        for t in &mut self.transitions {
            t.awaiting.remove(&user);
            t.recipients.remove(&user);
        }
    }

    /// Executes every transition nobody is waiting on any more.
    fn execute_ready(&mut self, _now: Instant) {
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.transitions)
            .into_iter()
            .partition(|t| t.awaiting.is_empty());
        self.transitions = keep;
        for t in done {
            self.execute(t);
        }
    }

    fn execute(&mut self, t: Transition) {
        self.stats.transitions_executed += 1;
        for u in t.recipients {
            if self.participants.contains_key(&u) {
                self.send(
                    u,
                    DaveMessage::ExecuteTransition {
                        transition_id: t.id,
                    },
                );
            }
        }
    }

    /// Issues `user`'s add with its stored key package. Established: to every member.
    /// Unestablished: to every other pending participant with a key package, and `user` gets
    /// theirs (each pending member builds the first commit of its own pending group).
    fn propose_add(&mut self, user: UserId) -> Result<(), DaveError> {
        let Some(kp) = self
            .participants
            .get(&user)
            .and_then(|p| p.key_package.clone())
        else {
            return Ok(());
        };
        if self.proposals.len() >= MAX_PROPOSALS_PER_EPOCH {
            return Err(DaveError::TooManyProposals {
                limit: MAX_PROPOSALS_PER_EPOCH,
            });
        }
        let epoch = self.epoch();
        let (bytes, r) = self.key.propose_add(&kp, self.channel, epoch)?;
        let bytes: Arc<[u8]> = bytes.into();
        let recipients: BTreeSet<UserId> = if self.group.is_some() {
            self.present_members().into_iter().collect()
        } else {
            self.pending_with_key_package()
                .into_iter()
                .filter(|u| *u != user)
                .collect()
        };
        for to in &recipients {
            self.send(
                *to,
                DaveMessage::Proposals {
                    op: ProposalsOp::Append,
                    contents: bytes.clone(),
                },
            );
        }
        if self.group.is_none() {
            // The joiner gets the adds already in flight for the other pending participants.
            let mut batch = Vec::new();
            for p in &mut self.proposals {
                if let ProposalKind::Add(other) = p.kind {
                    if other != user && !p.recipients.contains(&user) {
                        p.recipients.insert(user);
                        batch.extend_from_slice(&p.bytes);
                    }
                }
            }
            if !batch.is_empty() {
                self.send(
                    user,
                    DaveMessage::Proposals {
                        op: ProposalsOp::Append,
                        contents: batch.into(),
                    },
                );
            }
        }
        self.proposals.push(SentProposal {
            r#ref: r,
            bytes,
            kind: ProposalKind::Add(user),
            recipients,
        });
        Ok(())
    }

    fn propose_remove(&mut self, user: UserId, leaf: u32) -> Result<(), DaveError> {
        if self.proposals.len() >= MAX_PROPOSALS_PER_EPOCH {
            return Err(DaveError::TooManyProposals {
                limit: MAX_PROPOSALS_PER_EPOCH,
            });
        }
        let epoch = self.epoch();
        let (bytes, r) = self.key.propose_remove(leaf, self.channel, epoch)?;
        let bytes: Arc<[u8]> = bytes.into();
        let recipients: BTreeSet<UserId> = self
            .present_members()
            .into_iter()
            .filter(|u| *u != user)
            .collect();
        for to in &recipients {
            self.send(
                *to,
                DaveMessage::Proposals {
                    op: ProposalsOp::Append,
                    contents: bytes.clone(),
                },
            );
        }
        self.proposals.push(SentProposal {
            r#ref: r,
            bytes,
            kind: ProposalKind::Remove { user, leaf },
            recipients,
        });
        Ok(())
    }

    /// Revokes every add of `user` still outstanding, towards the participants that got it.
    fn revoke_adds_of(&mut self, user: UserId) {
        let (revoked, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.proposals)
            .into_iter()
            .partition(|p| p.kind == ProposalKind::Add(user));
        self.proposals = keep;
        let mut per_recipient: BTreeMap<UserId, Vec<ProposalRef>> = BTreeMap::new();
        for p in revoked {
            for to in p.recipients {
                if to != user && self.participants.contains_key(&to) {
                    per_recipient.entry(to).or_default().push(p.r#ref);
                }
            }
        }
        for (to, refs) in per_recipient {
            let contents = wire::encode_revoke_refs(&refs);
            self.send(
                to,
                DaveMessage::Proposals {
                    op: ProposalsOp::Revoke,
                    contents: contents.into(),
                },
            );
        }
    }

    /// One member left with nobody to add: it restarts as a pending group (op 24 epoch 1 +
    /// op 21 transition 0), then sends a fresh key package.
    fn sole_member_reset(&mut self) {
        self.stats.sole_member_resets += 1;
        let members = self.present_members();
        self.reset_group();
        for u in members {
            if let Some(p) = self.participants.get_mut(&u) {
                p.key_package = None;
            }
            self.send(
                u,
                DaveMessage::PrepareEpoch {
                    protocol_version: DAVE_VERSION,
                    epoch: 1,
                },
            );
            self.send(
                u,
                DaveMessage::PrepareTransition {
                    protocol_version: DAVE_VERSION,
                    transition_id: TransitionId(0),
                },
            );
        }
    }

    /// A participant without DAVE joined: everyone on DAVE prepares version 0 (op 21), executes
    /// on op 23s or timeout (op 22). The group is forgotten at once.
    fn downgrade(&mut self, now: Instant) {
        self.stats.downgrades += 1;
        let was_dave: BTreeSet<UserId> = self
            .participants
            .iter()
            .filter(|(_, p)| p.max_version >= DAVE_VERSION)
            .map(|(u, _)| *u)
            .collect();
        self.version = 0;
        self.reset_group();
        for t in std::mem::take(&mut self.transitions) {
            self.execute(t);
        }
        for p in self.participants.values_mut() {
            p.key_package = None;
        }
        let id = self.next_transition_id();
        for u in &was_dave {
            self.send(
                *u,
                DaveMessage::PrepareTransition {
                    protocol_version: 0,
                    transition_id: id,
                },
            );
        }
        self.start_transition(now, id, was_dave);
    }

    /// The last participant without DAVE left: op 24 (epoch 1) and op 25 to everyone, who then
    /// send key packages and build the group as in a fresh call.
    fn upgrade(&mut self) {
        self.stats.upgrades += 1;
        self.version = DAVE_VERSION;
        self.reset_group();
        for t in std::mem::take(&mut self.transitions) {
            self.execute(t);
        }
        let users: Vec<UserId> = self.participants.keys().copied().collect();
        for u in users {
            self.send(
                u,
                DaveMessage::PrepareEpoch {
                    protocol_version: DAVE_VERSION,
                    epoch: 1,
                },
            );
            self.send(u, DaveMessage::ExternalSender(self.key.package().into()));
        }
    }
}

#[cfg(test)]
mod tests;
