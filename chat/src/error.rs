//! The chat crate's one error type. Each variant maps to one Discord JSON error.

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    #[error("Unknown {0}")]
    Unknown(&'static str),
    #[error("Missing Permissions: {0}")]
    MissingPermissions(&'static str),
    #[error("401: Unauthorized")]
    Unauthorized,
    #[error("Invalid Form Body: {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("Maximum number of {what} reached ({limit})")]
    Limit { what: &'static str, limit: usize },
    #[error("storage error: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("storage migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("password hashing failed")]
    Hash,
    /// The user is banned from the guild they try to join.
    #[error("The user is banned from this guild.")]
    Banned,
    /// A bounded resource is saturated; try again after `retry_after_secs`.
    #[error("Service busy: {what} is at capacity, retry in {retry_after_secs} s")]
    Busy {
        what: &'static str,
        retry_after_secs: u64,
    },
}

impl ChatError {
    /// Discord's JSON error code for this error.
    pub fn code(&self) -> u32 {
        match self {
            ChatError::Unknown("guild") => 10004,
            ChatError::Unknown("channel") => 10003,
            ChatError::Unknown("invite") => 10006,
            ChatError::Unknown("member") => 10007,
            ChatError::Unknown("role") => 10011,
            ChatError::Unknown("user") => 10013,
            ChatError::Unknown("message") => 10008,
            ChatError::Unknown("emoji") => 10014,
            ChatError::Unknown("ban") => 10026,
            ChatError::Unknown(_) => 10000,
            ChatError::MissingPermissions(_) => 50013,
            ChatError::Unauthorized => 0,
            ChatError::Invalid { .. } => 50035,
            ChatError::Conflict(_) => 50035,
            ChatError::Limit { .. } => 30001,
            ChatError::Banned => 40007,
            _ => 0,
        }
    }

    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ChatError::Unknown(_) => 404,
            ChatError::MissingPermissions(_) | ChatError::Banned => 403,
            ChatError::Unauthorized => 401,
            ChatError::Invalid { .. } | ChatError::Conflict(_) | ChatError::Limit { .. } => 400,
            ChatError::Busy { .. } => 503,
            e if e.is_unreachable() => 503,
            _ => 500,
        }
    }

    /// The database cannot be reached (down, restarting, the pool could not get a
    /// connection in time): the request may succeed later, nothing was written.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ChatError::Storage(
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}
