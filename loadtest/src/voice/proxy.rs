//! A userspace UDP proxy that impairs one caller's path to the node with the `lodge_jitter`
//! impairment model (seeded loss bursts, jitter, reordering, duplication, delay steps, a
//! bandwidth cap): one socket per caller, so the node still sees one address per caller. The
//! caller is pointed at the proxy by rewriting the node's ICE candidate in the SDP answer.
//! Both directions are impaired independently (different seeds).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use lodge_jitter::{Impairment, Profile};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::due::Due;
use tokio::time::Instant;

/// A datagram waiting for its (impaired) delivery time.
struct Datagram {
    to: SocketAddr,
    data: Vec<u8>,
}

/// Whether `d` is an RTP packet (RFC 5761: version 2, and not one of the payload types RTCP
/// uses when multiplexed). STUN, DTLS and RTCP are not.
pub fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && d[0] >> 6 == 2 && !(192..=223).contains(&d[1])
}

/// Start a proxy in front of `node` on `bind`; returns the address callers should use. With
/// `rtp_only`, only RTP packets meet the profile's loss, jitter and bandwidth cap, so two
/// proxies with one seed that carry the same RTP stream impair it identically, whatever else
/// each carries (DTLS, STUN, RTCP, keepalives); the rest is only delayed by the profile's base
/// delay, in order, so a round trip measured over it (RTCP) sees the path's length.
pub async fn start(
    bind: SocketAddr,
    node: SocketAddr,
    profile: Profile,
    seed: u64,
    rtp_only: bool,
    mut stop: watch::Receiver<bool>,
) -> Result<SocketAddr> {
    let sock = UdpSocket::bind(bind)
        .await
        .with_context(|| format!("binding the impairment proxy on {bind}"))?;
    let addr = sock.local_addr()?;
    tokio::spawn(async move {
        let start = Instant::now();
        let base_delay = Duration::from_secs_f64(profile.base_delay_ms.max(0.0) / 1000.0);
        let mut up = Impairment::new(profile.clone(), seed.wrapping_mul(2) + 1);
        let mut down = Impairment::new(profile, seed.wrapping_mul(2) + 2);
        let mut client: Option<SocketAddr> = None;
        let mut queue: BinaryHeap<Reverse<Due<Instant, Datagram>>> = BinaryHeap::new();
        let mut order = 0u64;
        let mut buf = vec![0u8; 2048];
        loop {
            let next = queue
                .peek()
                .map(|p| p.0.at)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep_until(next), if !queue.is_empty() => {
                    let now = Instant::now();
                    while queue.peek().is_some_and(|p| p.0.at <= now) {
                        let Reverse(p) = queue.pop().expect("peeked");
                        let _ = sock.send_to(&p.item.data, p.item.to).await;
                    }
                }
                r = sock.recv_from(&mut buf) => {
                    let Ok((n, src)) = r else { continue };
                    let (imp, to) = if src == node {
                        let Some(c) = client else { continue };
                        (&mut down, c)
                    } else {
                        client = Some(src);
                        (&mut up, node)
                    };
                    let sent = start.elapsed();
                    if rtp_only && !is_rtp(&buf[..n]) {
                        let at = start + sent + base_delay;
                        order += 1;
                        queue.push(Reverse(Due { at, order, item: Datagram { to, data: buf[..n].to_vec() } }));
                        continue;
                    }
                    for arrival in imp.send(sent, n) {
                        order += 1;
                        queue.push(Reverse(Due { at: start + arrival, order, item: Datagram { to, data: buf[..n].to_vec() } }));
                    }
                }
            }
        }
    });
    Ok(addr)
}

/// The node's address in an SDP answer (its host candidate).
pub fn candidate_addr(sdp: &str) -> Option<SocketAddr> {
    sdp.lines().find_map(|l| {
        let l = l.trim();
        let c = l.strip_prefix("a=candidate:")?;
        let f: Vec<&str> = c.split_whitespace().collect();
        // foundation component transport priority address port typ …
        if f.len() >= 6 && f[2].eq_ignore_ascii_case("udp") {
            format!("{}:{}", f[4], f[5]).parse().ok()
        } else {
            None
        }
    })
}

/// Point every candidate for `from` at `to` instead.
pub fn rewrite_candidates(sdp: &str, from: SocketAddr, to: SocketAddr) -> String {
    let needle = format!(" {} {} ", from.ip(), from.port());
    let replacement = format!(" {} {} ", to.ip(), to.port());
    sdp.split_inclusive('\n')
        .map(|l| {
            if l.starts_with("a=candidate:") {
                l.replacen(&needle, &replacement, 1)
            } else {
                l.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_rewrites_the_host_candidate() {
        let sdp = "v=0\r\na=ice-lite\r\na=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n";
        let node = candidate_addr(sdp).unwrap();
        assert_eq!(node, "127.0.0.1:50000".parse().unwrap());
        let out = rewrite_candidates(sdp, node, "127.0.0.9:4242".parse().unwrap());
        assert!(
            out.contains("a=candidate:1 1 udp 2130706431 127.0.0.9 4242 typ host\r\n"),
            "{out}"
        );
        assert!(out.starts_with("v=0\r\na=ice-lite\r\n"));
    }

    #[test]
    fn tells_rtp_from_rtcp_stun_and_dtls() {
        let mut rtp = [0u8; 20];
        rtp[0] = 0x80;
        rtp[1] = 0x80 | 111; // marker + Opus
        assert!(is_rtp(&rtp));
        rtp[1] = 200; // RTCP sender report
        assert!(!is_rtp(&rtp));
        assert!(!is_rtp(&[0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42, 0, 0, 0, 0])); // STUN
        assert!(!is_rtp(&[22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0])); // DTLS
        assert!(!is_rtp(&[0x80, 111, 0, 1])); // too short
    }

    #[tokio::test]
    async fn an_rtp_only_proxy_passes_everything_else_only_delayed() {
        let node = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        let drop_all = Profile {
            name: "test",
            loss_good: 1.0,
            base_delay_ms: 60.0,
            ..Profile::WIRED
        };
        let proxy = start(
            "127.0.0.1:0".parse().unwrap(),
            node.local_addr().unwrap(),
            drop_all,
            1,
            true,
            stop,
        )
        .await
        .unwrap();
        let mut rtp = [0u8; 20];
        rtp[0] = 0x80;
        rtp[1] = 111;
        for _ in 0..10 {
            client.send_to(&rtp, proxy).await.unwrap();
        }
        let t0 = std::time::Instant::now();
        client.send_to(b"keepalive", proxy).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), node.recv_from(&mut buf))
            .await
            .expect("the keepalive passes")
            .unwrap();
        assert_eq!(
            &buf[..n],
            b"keepalive",
            "every RTP packet was dropped, nothing else"
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(60),
            "the rest meets the path's base delay: {:?}",
            t0.elapsed()
        );
    }

    #[tokio::test]
    async fn the_proxy_forwards_both_ways_and_drops_per_profile() {
        let node = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        let lossy = Profile {
            name: "test",
            loss_good: 0.5,
            ..Profile::WIRED
        };
        let proxy = start(
            "127.0.0.1:0".parse().unwrap(),
            node.local_addr().unwrap(),
            lossy,
            1,
            false,
            stop,
        )
        .await
        .unwrap();
        let mut buf = [0u8; 64];
        let mut got = 0;
        for i in 0..200u8 {
            client.send_to(&[i], proxy).await.unwrap();
        }
        while let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_millis(300), node.recv_from(&mut buf)).await
        {
            assert_eq!((n, from), (1, proxy));
            got += 1;
        }
        assert!((60..140).contains(&got), "about half of 200 arrive: {got}");
        node.send_to(b"pong", proxy).await.unwrap();
        // The reply may be lost too: send until one arrives.
        let mut back = false;
        for _ in 0..20 {
            node.send_to(b"pong", proxy).await.unwrap();
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(100), client.recv_from(&mut buf)).await
            {
                assert_eq!(&buf[..n], b"pong");
                back = true;
                break;
            }
        }
        assert!(back, "replies reach the caller");
    }
}
