//! Just enough STUN (RFC 8489) to demultiplex: is this datagram STUN, and what USERNAME does it
//! carry. Full parsing and integrity checks are str0m's job once we know whose datagram it is.

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;
const HEADER_LEN: usize = 20;

/// A first byte of 0..=3 (RFC 7983 demultiplexing) plus the magic cookie marks STUN.
pub fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= HEADER_LEN && buf[0] < 4 && buf[4..8] == MAGIC_COOKIE
}

/// The local ufrag of a STUN binding request's USERNAME (`local:remote` from our side), or
/// `None` when the datagram is not well-formed STUN or carries no USERNAME.
pub fn local_ufrag(buf: &[u8]) -> Option<&str> {
    if !is_stun(buf) {
        return None;
    }
    let body_len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if !body_len.is_multiple_of(4) || HEADER_LEN + body_len > buf.len() {
        return None;
    }
    let mut rest = &buf[HEADER_LEN..HEADER_LEN + body_len];
    while rest.len() >= 4 {
        let typ = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let padded = (len + 3) & !3;
        if 4 + len > rest.len() {
            return None;
        }
        if typ == ATTR_USERNAME {
            let name = std::str::from_utf8(&rest[4..4 + len]).ok()?;
            return name.split(':').next();
        }
        rest = rest.get(4 + padded..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &[u8]) -> Vec<u8> {
        let padded = (username.len() + 3) & !3;
        let mut v = vec![0x00, 0x01];
        v.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
        v.extend_from_slice(&MAGIC_COOKIE);
        v.extend_from_slice(&[7; 12]);
        v.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        v.extend_from_slice(&(username.len() as u16).to_be_bytes());
        v.extend_from_slice(username);
        v.resize(v.len() + padded - username.len(), 0);
        v
    }

    #[test]
    fn table() {
        let ok = binding_request(b"srvfrag:clifrag");
        assert_eq!(local_ufrag(&ok), Some("srvfrag"));
        let no_colon = binding_request(b"abc");
        assert_eq!(local_ufrag(&no_colon), Some("abc"));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short", vec![0, 1, 0, 0]),
            ("rtp", vec![0x80; 40]),
            ("truncated body", ok[..ok.len() - 4].to_vec()),
            ("bad utf8", binding_request(&[0xff, 0xfe])),
            ("attr longer than body", {
                let mut v = ok.clone();
                v[22] = 0xff;
                v
            }),
        ];
        for (name, buf) in cases {
            assert_eq!(local_ufrag(&buf), None, "{name}");
        }
    }

    #[test]
    fn every_prefix_and_byte_flip_is_safe() {
        let ok = binding_request(b"srvfrag:clifrag");
        for n in 0..ok.len() {
            let _ = local_ufrag(&ok[..n]);
        }
        for i in 0..ok.len() {
            for b in [0u8, 1, 0x7f, 0xff] {
                let mut v = ok.clone();
                v[i] = b;
                let _ = local_ufrag(&v);
            }
        }
    }
}
