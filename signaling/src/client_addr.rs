//! The client's address: the TCP peer, or — only when the peer is a trusted reverse proxy
//! (`--trusted-proxy CIDR`) — the rightmost address in `X-Forwarded-For` that is not itself a
//! trusted proxy. Anyone can write `X-Forwarded-For`; only the hops we trust appended to it
//! honestly, so the first untrusted hop from the right is the furthest we can believe.
//!
//! Limits key on [`limit_key`]: an IPv4 address, or an IPv6 address's /64 (one subscriber's
//! usual allocation), so rotating through the addresses of one's own /64 gains nothing.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// An address range, `203.0.113.0/24` or `fd00::/8` (a bare address is a range of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                mask(u32::from(n) as u128, 32, self.prefix)
                    == mask(u32::from(a) as u128, 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                mask(u128::from(n), 128, self.prefix) == mask(u128::from(a), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `bits`-wide address.
fn mask(v: u128, bits: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        v >> (bits - prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address range such as 10.0.0.0/8 or fd00::/8"))?;
        let net = net.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Most `X-Forwarded-For` entries looked at (a chain of proxies is short).
const MAX_HOPS: usize = 32;

/// Where a request came from. `peer` is the TCP peer.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trusted.iter().any(|c| c.contains(client)) {
        return client;
    }
    // Several X-Forwarded-For headers form one list, in order.
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.iter().rev().take(MAX_HOPS) {
        let Some(ip) = parse_hop(entry) else {
            // Garbage from here on: the last hop we could verify is the client.
            return client;
        };
        client = ip;
        if !trusted.iter().any(|c| c.contains(ip)) {
            return ip;
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:443`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

/// The address a limit is counted against: IPv4 as is, IPv6 by its /64.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// An address for a log line: enough to tell callers apart, not to name a subscriber
/// (IPv4 without its last octet, IPv6 by its /48).
pub fn redact(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.x", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

/// The client address of a request, put in its extensions by the rate limiter.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

#[cfg(test)]
mod tests {
    use super::*;

    fn h(xff: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in xff {
            m.append("x-forwarded-for", v.parse().unwrap());
        }
        m
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "v4-mapped v6 is v4");
        assert!(!c.contains(ip("fd00::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("192.0.2.1")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        for bad in ["", "10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let t: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let table: &[(&str, &[&str], &str)] = &[
            // Untrusted peer: the header is ignored, whatever it says.
            ("198.51.100.1", &["203.0.113.9"], "198.51.100.1"),
            // Trusted peer: the rightmost untrusted hop.
            ("10.0.0.1", &["203.0.113.9"], "203.0.113.9"),
            (
                "10.0.0.1",
                &["1.1.1.1, 203.0.113.9, 10.0.0.5"],
                "203.0.113.9",
            ),
            // Two headers are one list.
            ("10.0.0.1", &["1.1.1.1", "203.0.113.9"], "203.0.113.9"),
            // Only proxies in the chain: the leftmost.
            ("10.0.0.1", &["10.0.0.7, 10.0.0.5"], "10.0.0.7"),
            // Garbage stops the walk at the last verified hop.
            ("10.0.0.1", &["203.0.113.9, nonsense"], "10.0.0.1"),
            ("10.0.0.1", &["1.1.1.1, nonsense, 10.0.0.3"], "10.0.0.3"),
            // Ports and brackets are tolerated.
            ("10.0.0.1", &["[2001:db8::1]:443"], "2001:db8::1"),
            ("10.0.0.1", &["203.0.113.9:5000"], "203.0.113.9"),
            // No header from a proxy: the proxy.
            ("10.0.0.1", &[], "10.0.0.1"),
        ];
        for (peer, xff, want) in table {
            assert_eq!(resolve(ip(peer), &h(xff), &t), ip(want), "{peer} {xff:?}");
        }
        assert_eq!(
            resolve(ip("10.0.0.1"), &h(&["203.0.113.9"]), &[]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn keys_and_redaction() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(redact(ip("192.0.2.1")), "192.0.2.x");
        assert_eq!(redact(ip("2001:db8:1:2::1")), "2001:db8:1::/48");
    }
}
