//! TURN relays for callers whose UDP cannot reach the media port (firewalls that pass only TCP
//! or TLS): Lodge runs no relay itself but hands each voice connection short-lived credentials
//! for a coturn the operator runs, in coturn's shared-secret scheme (`use-auth-secret`, the
//! "TURN REST API" draft):
//!
//! - username   = `<expiry, unix seconds>:<user id>`
//! - credential = base64(HMAC-SHA1(secret, username))
//!
//! coturn recomputes the credential from the same secret and refuses a username whose expiry
//! has passed, so Lodge and coturn share nothing but the secret and a clock.
//!
//! The node itself needs nothing else: it is ICE-lite and answers connectivity checks from
//! whatever address they come from, so a relayed caller is simply a caller at the relay's
//! address.
//!
//! ```
//! use lodge_signaling::turn::{credential, TurnUrl};
//! let url: TurnUrl = "turns:turn.example.com:5349?transport=tcp".parse().unwrap();
//! assert_eq!(url.to_string(), "turns:turn.example.com:5349?transport=tcp");
//! // The same value as `printf '%s' 1765000000:42 | openssl dgst -sha1 -hmac <secret> -binary | base64`.
//! assert_eq!(
//!     credential("lodge-test-secret-0123456789", "1765000000:42"),
//!     "PiKrW8oaDIBqsi0J6MmPUPr0SIE="
//! );
//! ```

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use lodge_ids::UserId;

/// `turn:` (plain TURN over UDP or TCP) or `turns:` (TURN over TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnScheme {
    Turn,
    Turns,
}

impl TurnScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnScheme::Turn => "turn",
            TurnScheme::Turns => "turns",
        }
    }
}

/// The transport between the caller and the relay (the relay always reaches the node by UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnTransport {
    Udp,
    Tcp,
}

impl TurnTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
        }
    }
}

/// One TURN server URL as RFC 7065 writes it: `turn:host[:port][?transport=udp|tcp]` or
/// `turns:host[:port][?transport=tcp]`. Checked when the configuration is read, so a typo is a
/// start-up error rather than callers silently failing to relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnUrl {
    pub scheme: TurnScheme,
    /// A DNS name, an IPv4 address, or an IPv6 address in brackets.
    pub host: String,
    /// Absent: the client's default (3478 for turn:, 5349 for turns:).
    pub port: Option<u16>,
    /// Absent: the client's default (UDP for turn:, TCP for turns:).
    pub transport: Option<TurnTransport>,
}

impl FromStr for TurnUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<TurnUrl, String> {
        let s = s.trim();
        let bad = |why: &str| {
            Err(format!(
                "{s:?} is not a TURN URL ({why}); write turn:host:port?transport=udp|tcp or turns:host:port?transport=tcp"
            ))
        };
        let (scheme, rest) = if let Some(r) = s.strip_prefix("turns:") {
            (TurnScheme::Turns, r)
        } else if let Some(r) = s.strip_prefix("turn:") {
            (TurnScheme::Turn, r)
        } else {
            return bad("it must start with turn: or turns:");
        };
        if rest.starts_with("//") {
            return bad("no // after the scheme");
        }
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let transport = match query {
            None => None,
            Some("transport=udp") => Some(TurnTransport::Udp),
            Some("transport=tcp") => Some(TurnTransport::Tcp),
            Some(_) => return bad("the only query is ?transport=udp or ?transport=tcp"),
        };
        if scheme == TurnScheme::Turns && transport == Some(TurnTransport::Udp) {
            return bad("turns: runs over TLS, which is TCP; browsers do not speak TURN over DTLS");
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else {
                return bad("an IPv6 address needs its closing ]");
            };
            if addr.parse::<Ipv6Addr>().is_err() {
                return bad("not an IPv6 address in the brackets");
            }
            let port = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return bad("only :port may follow the ]"),
                },
            };
            (format!("[{addr}]"), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if !host.starts_with('[') && !is_host_name(&host) && host.parse::<Ipv4Addr>().is_err() {
            return bad("the host must be a DNS name, an IPv4 address or [an IPv6 address]");
        }
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => return bad("the port must be 1 to 65535"),
            },
        };
        Ok(TurnUrl {
            scheme,
            host,
            port,
            transport,
        })
    }
}

/// Letters, digits, '-' and '.', as DNS names are written (no empty labels).
fn is_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl fmt::Display for TurnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.scheme.as_str(), self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if let Some(t) = self.transport {
            write!(f, "?transport={}", t.as_str())?;
        }
        Ok(())
    }
}

impl serde::Serialize for TurnUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TurnUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TurnUrl, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The relays Lodge hands out, the secret it shares with them and how long a credential lasts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TurnConfig {
    pub urls: Vec<TurnUrl>,
    /// coturn's `static-auth-secret`. Never printed or serialized.
    #[serde(skip_serializing)]
    pub secret: String,
    /// How long a handed-out credential stays valid.
    #[serde(serialize_with = "secs")]
    pub ttl: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// One entry of the voice gateway's `ice_servers`, shaped as the browser's `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

impl TurnConfig {
    /// The ICE servers for `user`, valid until `now_unix + ttl`: one entry carrying every URL,
    /// since all of them check the same secret.
    pub fn ice_servers(&self, user: UserId, now_unix: u64) -> Vec<IceServer> {
        let username = username(now_unix + self.ttl.as_secs(), user);
        let credential = credential(&self.secret, &username);
        vec![IceServer {
            urls: self.urls.iter().map(|u| u.to_string()).collect(),
            username,
            credential,
        }]
    }
}

/// The TURN username of `user` until `expires_unix`: `<expiry>:<user id>` (coturn reads the
/// part before the first ':' as the expiry).
pub fn username(expires_unix: u64, user: UserId) -> String {
    format!("{expires_unix}:{}", user.get())
}

/// The TURN password coturn expects for `username` under `use-auth-secret`:
/// base64(HMAC-SHA1(secret, username)).
pub fn credential(secret: &str, username: &str) -> String {
    // SHA-1 is what coturn's scheme specifies; as an HMAC it is not weakened by SHA-1's
    // collision attacks.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = ring::hmac::sign(&key, username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_print_back() {
        for (given, shown) in [
            (
                "turn:10.0.0.1:3478?transport=udp",
                "turn:10.0.0.1:3478?transport=udp",
            ),
            (
                "turn:turn.example.com:3478?transport=tcp",
                "turn:turn.example.com:3478?transport=tcp",
            ),
            (
                "turns:turn.example.com:5349?transport=tcp",
                "turns:turn.example.com:5349?transport=tcp",
            ),
            ("turns:turn.example.com", "turns:turn.example.com"),
            (" turn:[2001:db8::1]:3478 ", "turn:[2001:db8::1]:3478"),
            (
                "turn:[2001:db8::1]?transport=tcp",
                "turn:[2001:db8::1]?transport=tcp",
            ),
        ] {
            let u: TurnUrl = given.parse().unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(u.to_string(), shown);
        }
        let u: TurnUrl = "turns:relay.example.org:443?transport=tcp".parse().unwrap();
        assert_eq!(u.scheme, TurnScheme::Turns);
        assert_eq!(u.host, "relay.example.org");
        assert_eq!(u.port, Some(443));
        assert_eq!(u.transport, Some(TurnTransport::Tcp));
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        for (given, why) in [
            ("stun:10.0.0.1:3478", "turn: or turns:"),
            ("http://turn.example.com", "turn: or turns:"),
            ("turn://turn.example.com:3478", "no //"),
            ("turns:turn.example.com:5349?transport=udp", "DTLS"),
            (
                "turn:turn.example.com:3478?transport=sctp",
                "?transport=udp",
            ),
            ("turn:turn.example.com:0", "port"),
            ("turn:turn.example.com:70000", "port"),
            ("turn:turn.example.com:", "port"),
            ("turn:", "host"),
            ("turn:bad host:3478", "host"),
            ("turn:[2001:db8::1:3478", "closing ]"),
            ("turn:[not-v6]:3478", "IPv6"),
            ("turn:2001:db8::1", "host"),
        ] {
            let e = given.parse::<TurnUrl>().unwrap_err();
            assert!(e.contains(why), "{given}: {e}");
            assert!(
                e.contains(given.trim()),
                "{given}: the message names the input: {e}"
            );
        }
    }

    /// Reference values from `openssl dgst -sha1 -hmac`, an implementation independent of ring.
    #[test]
    fn credential_is_coturns_hmac_sha1() {
        assert_eq!(
            credential("lodge-test-secret-0123456789", "1765000000:42"),
            "PiKrW8oaDIBqsi0J6MmPUPr0SIE="
        );
        assert_eq!(credential("north", "test"), "u58ESqbBwzpctnxL6P0+3aHprBs=");
        assert_ne!(
            credential("lodge-test-secret-0123456789", "1765000001:42"),
            credential("lodge-test-secret-0123456789", "1765000000:42"),
            "the expiry is signed"
        );
    }

    #[test]
    fn ice_servers_carry_every_url_and_a_credential_that_expires_after_the_ttl() {
        let turn = TurnConfig {
            urls: vec![
                "turn:10.0.0.1:3478?transport=tcp".parse().unwrap(),
                "turns:10.0.0.1:5349?transport=tcp".parse().unwrap(),
            ],
            secret: "lodge-test-secret-0123456789".into(),
            ttl: Duration::from_secs(3600),
        };
        let got = turn.ice_servers(UserId(42), 1_764_996_400);
        assert_eq!(
            got,
            vec![IceServer {
                urls: vec![
                    "turn:10.0.0.1:3478?transport=tcp".into(),
                    "turns:10.0.0.1:5349?transport=tcp".into()
                ],
                username: "1765000000:42".into(),
                credential: "PiKrW8oaDIBqsi0J6MmPUPr0SIE=".into(),
            }]
        );
        let shown = serde_json::to_value(&turn).unwrap();
        assert_eq!(shown["ttl"], 3600);
        assert!(!shown.to_string().contains("secret"), "{shown}");
    }
}
