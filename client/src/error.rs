//! The client crate's one error type.

use std::io;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server's REST API answered with an error (status, Discord-style JSON body).
    #[error("HTTP {status} from {url}: {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("could not reach {url}: {}", chain(source.as_ref()))]
    Connect {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The gateway or voice gateway closed the connection (Discord close code and reason).
    #[error("{which} closed the connection: {code} {reason}")]
    Closed {
        which: &'static str,
        code: u16,
        reason: String,
    },
    /// The server sent something the protocol does not allow at this step.
    #[error("{0}")]
    Protocol(String),
    #[error("no answer from the server within {0} s: {1}")]
    Timeout(u64, &'static str),
    /// TLS could not be set up (a CA file that does not read).
    #[error("TLS: {0}")]
    Tls(String),
    #[error("network: {0}")]
    Io(#[from] io::Error),
    #[error("audio: {0}")]
    Codec(#[from] lodge_codec::CodecError),
    /// A sound device could not be found or opened.
    #[error("audio device: {0}")]
    Audio(String),
    /// The call's task is gone (it ended with an error reported by `leave`).
    #[error("the call has ended")]
    Ended,
}

/// An error with its causes (HTTP and TLS libraries keep the telling part, e.g. "invalid peer
/// certificate: UnknownIssuer", in a source).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !s.contains(&more) {
            s.push_str(": ");
            s.push_str(&more);
        }
        cause = c.source();
    }
    s
}

pub(crate) fn protocol(why: impl Into<String>) -> ClientError {
    ClientError::Protocol(why.into())
}
