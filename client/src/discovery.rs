//! IP discovery from the client's side (the layout is in `lodge_sfu::native::discovery`): ask
//! the node's media port which address and port it sees us at, before Select Protocol.

use std::net::SocketAddr;
use std::time::Duration;

use lodge_sfu::native::discovery::DISCOVERY_LEN;
use tokio::net::UdpSocket;

use crate::error::{protocol, ClientError};

/// A request for `ssrc`.
pub fn request(ssrc: u32) -> [u8; DISCOVERY_LEN] {
    let mut req = [0u8; DISCOVERY_LEN];
    req[..4].copy_from_slice(&[0, 1, 0, 70]);
    req[4..8].copy_from_slice(&ssrc.to_be_bytes());
    req
}

/// The (address text, port) of a response to our request for `ssrc`, or `None` if `d` is not
/// one.
pub fn response(d: &[u8], ssrc: u32) -> Option<(String, u16)> {
    if d.len() != DISCOVERY_LEN || d[..4] != [0, 2, 0, 70] || d[4..8] != ssrc.to_be_bytes() {
        return None;
    }
    let end = d[8..72].iter().position(|b| *b == 0).unwrap_or(64);
    let addr = std::str::from_utf8(&d[8..8 + end]).ok()?.to_string();
    Some((addr, u16::from_be_bytes([d[72], d[73]])))
}

/// Ask `server` up to five times, a second apart (UDP may lose either datagram).
pub async fn discover(
    sock: &UdpSocket,
    server: SocketAddr,
    ssrc: u32,
) -> Result<(String, u16), ClientError> {
    let req = request(ssrc);
    let mut buf = [0u8; 1500];
    for _ in 0..5 {
        sock.send_to(&req, server).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(r) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
            let (n, from) = r?;
            if from != server {
                continue;
            }
            if let Some(found) = response(&buf[..n], ssrc) {
                return Ok(found);
            }
        }
    }
    Err(protocol(format!(
        "no IP discovery answer from {server} in 5 s: is its UDP port reachable?"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_sfu::ids::Ssrc;
    use lodge_sfu::native::discovery::{discovery_request, discovery_response};

    #[test]
    fn our_request_is_the_nodes_and_its_answer_reads_back() {
        assert_eq!(discovery_request(&request(77)), Some(Ssrc(77)));
        let from: SocketAddr = "127.0.0.5:40123".parse().unwrap();
        let answer = discovery_response(Ssrc(77), from);
        assert_eq!(response(&answer, 77), Some(("127.0.0.5".into(), 40123)));
        assert_eq!(
            response(&answer, 78),
            None,
            "another SSRC's answer is not ours"
        );
        assert_eq!(response(&answer[..70], 77), None);
    }
}
