//! The codec crate's one error type.

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error("WAV: {0}")]
    Wav(String),
    #[error("opus: {0}")]
    Opus(#[from] audiopus::Error),
}
