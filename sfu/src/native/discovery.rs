//! IP discovery: before it selects the UDP protocol, a native client sends the media port a
//! 74-byte request carrying the SSRC from Ready, and reads its own address and port, as the
//! server saw them, from the answer. All fields are big-endian:
//!
//! | bytes | request | response |
//! |---|---|---|
//! | 0..2 | type 1 | type 2 |
//! | 2..4 | 70 (the bytes after this field) | 70 |
//! | 4..8 | SSRC | the same SSRC |
//! | 8..72 | zero | the client's address as text, NUL-padded |
//! | 72..74 | zero | the client's source port |
//!
//! A request cannot be taken for STUN: STUN carries the magic cookie `21 12 A4 42` at bytes
//! 4..8, where a request carries its SSRC, and Lodge hands out odd SSRCs only (the cookie is
//! even). Check for a request before STUN all the same.

use std::net::SocketAddr;

use crate::ids::Ssrc;

/// The length of a request and of its response.
pub const DISCOVERY_LEN: usize = 74;
const REQUEST: [u8; 4] = [0x00, 0x01, 0x00, 0x46];
const RESPONSE: [u8; 4] = [0x00, 0x02, 0x00, 0x46];
const ADDRESS: std::ops::Range<usize> = 8..72;

/// The SSRC an IP discovery request asks about, or `None` if `d` is not one.
pub fn discovery_request(d: &[u8]) -> Option<Ssrc> {
    if d.len() != DISCOVERY_LEN || d[..4] != REQUEST {
        return None;
    }
    Some(Ssrc(u32::from_be_bytes([d[4], d[5], d[6], d[7]])))
}

/// The answer to a request for `ssrc` that came from `from`. An IPv4-mapped IPv6 source is
/// written as the IPv4 address it maps (@discordjs/voice accepts IPv4 only).
pub fn discovery_response(ssrc: Ssrc, from: SocketAddr) -> [u8; DISCOVERY_LEN] {
    let mut out = [0u8; DISCOVERY_LEN];
    out[..4].copy_from_slice(&RESPONSE);
    out[4..8].copy_from_slice(&ssrc.0.to_be_bytes());
    let ip = match from.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    // The longest address text (an IPv6 address, 45 bytes at most) leaves at least one NUL.
    let mut w = SliceWriter {
        buf: &mut out[ADDRESS],
        len: 0,
    };
    let _ = std::fmt::Write::write_fmt(&mut w, format_args!("{ip}"));
    out[72..74].copy_from_slice(&from.port().to_be_bytes());
    out
}

/// `fmt::Write` into a fixed slice (no allocation), refusing to fill its last byte.
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl std::fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end >= self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(ssrc: u32) -> [u8; DISCOVERY_LEN] {
        let mut r = [0u8; DISCOVERY_LEN];
        r[..4].copy_from_slice(&REQUEST);
        r[4..8].copy_from_slice(&ssrc.to_be_bytes());
        r
    }

    /// The address text up to its NUL, as both clients read it.
    fn address(resp: &[u8]) -> &str {
        let field = &resp[ADDRESS];
        let end = field.iter().position(|b| *b == 0).unwrap();
        std::str::from_utf8(&field[..end]).unwrap()
    }

    #[test]
    fn a_request_is_recognised_by_shape_only() {
        assert_eq!(
            discovery_request(&request(0xdead_beef)),
            Some(Ssrc(0xdead_beef))
        );
        let mut long = request(7).to_vec();
        long.push(0);
        assert_eq!(discovery_request(&long), None, "74 bytes exactly");
        assert_eq!(discovery_request(&request(7)[..73]), None);
        let mut answer = request(7);
        answer[1] = 2;
        assert_eq!(
            discovery_request(&answer),
            None,
            "a response is not a request"
        );
        let mut stun = [0u8; DISCOVERY_LEN];
        stun[..8].copy_from_slice(&[0x00, 0x01, 0x00, 0x36, 0x21, 0x12, 0xa4, 0x42]);
        assert_eq!(
            discovery_request(&stun),
            None,
            "a STUN binding request is not one"
        );
    }

    #[test]
    fn the_response_carries_the_ssrc_the_address_and_the_port() {
        let r = discovery_response(Ssrc(42), "203.0.113.7:50123".parse().unwrap());
        assert_eq!(r.len(), 74);
        assert_eq!(&r[..4], &[0, 2, 0, 70]);
        assert_eq!(u32::from_be_bytes([r[4], r[5], r[6], r[7]]), 42);
        assert_eq!(address(&r), "203.0.113.7");
        assert!(r[8 + "203.0.113.7".len()..72].iter().all(|b| *b == 0));
        assert_eq!(u16::from_be_bytes([r[72], r[73]]), 50123);
    }

    #[test]
    fn a_mapped_ipv4_source_is_written_as_ipv4_and_ipv6_fits() {
        let r = discovery_response(Ssrc(1), "[::ffff:10.1.2.3]:9".parse().unwrap());
        assert_eq!(address(&r), "10.1.2.3");
        let longest = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535";
        let r = discovery_response(Ssrc(1), longest.parse().unwrap());
        assert_eq!(
            address(&r).parse::<std::net::Ipv6Addr>().unwrap(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
        );
        assert_eq!(u16::from_be_bytes([r[72], r[73]]), 65535);
    }
}
