//! DAVE (Discord's MLS-based voice end-to-end encryption): Lodge as the MLS delivery service and
//! external sender. docs/design/NATIVE-VOICE.md §3; this module is its step 6 (in progress: codecs
//! and the openmls glue).

pub mod mls;
pub mod wire;

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
    #[error("call is full: MAX_PARTICIPANTS = {limit}")]
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
