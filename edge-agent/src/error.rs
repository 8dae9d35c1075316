//! The edge crate's one error type.

use std::net::SocketAddr;
use std::time::Duration;

use crate::wire::{HEADER_LEN, MAX_CONTROL_BYTES, MAX_PAYLOAD};

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("trunk datagram of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    ShortDatagram(usize),
    #[error("trunk datagram payload of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    OversizedDatagram(usize),
    #[error("unknown trunk datagram kind {0:#04x}")]
    UnknownDatagramKind(u8),
    #[error("control message of {0} bytes exceeds the limit of {MAX_CONTROL_BYTES}")]
    ControlTooLarge(usize),
    #[error("malformed control message: {0}")]
    BadControl(String),
    #[error("unexpected control message: {0}")]
    UnexpectedControl(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("the origin refused the trunk: {0}")]
    Refused(String),
    #[error("no hello from the peer within {0:?}")]
    HelloTimeout(Duration),
    #[error("connecting to the origin at {addr} failed: {why}")]
    Connect { addr: SocketAddr, why: String },
    #[error("the trunk connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("the control stream failed: {0}")]
    ControlStream(String),
    #[error("the peer does not accept QUIC datagrams")]
    NoDatagrams,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
