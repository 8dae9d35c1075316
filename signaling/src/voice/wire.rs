//! The voice gateway's framing per version. A client names the version in the URL (`/?v=8`);
//! the two native libraries Lodge serves differ:
//!
//! - **v8** (@discordjs/voice, Lodge's web client): every server message carries a top-level
//!   `seq`, a u16 that wraps and is never 0 (discord.js ignores a 0); heartbeats send
//!   `{t, seq_ack}` and are acknowledged with `{t}`.
//! - **v4 to v7** (songbird 0.6 speaks v4): no `seq`; a heartbeat's `d` is a bare number and the
//!   ACK's `d` is that number again. (Binary DAVE frames also differ: no sequence prefix.)
//!
//! A URL without `v` gets v8, as Lodge always answered. Discord refuses versions below 4; so
//! does Lodge, and anything above 8, with close 4020 naming the supported range.

use serde_json::{json, Value};

/// The oldest version served.
pub const OLDEST: u8 = 4;
/// The newest version served, and the default.
pub const NEWEST: u8 = 8;

/// A connection's voice gateway version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireVersion(u8);

impl WireVersion {
    pub const V8: WireVersion = WireVersion(NEWEST);

    /// The version in a request's query string (`v=<n>`; absent: v8), or why it is refused.
    pub fn from_query(query: Option<&str>) -> Result<WireVersion, String> {
        let Some(v) = query
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("v="))
        else {
            return Ok(WireVersion::V8);
        };
        match v.parse::<u8>() {
            Ok(n) if (OLDEST..=NEWEST).contains(&n) => Ok(WireVersion(n)),
            _ => Err(format!(
                "voice gateway version {v:?} is not served; connect with ?v={OLDEST} to ?v={NEWEST}"
            )),
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }

    /// Whether server messages carry `seq` and heartbeats `seq_ack` (v8).
    pub fn numbered(self) -> bool {
        self.0 >= 8
    }

    /// The `d` of the ACK to a heartbeat whose nonce was `t`.
    pub fn heartbeat_ack(self, t: &Value) -> Value {
        if self.numbered() {
            json!({ "t": t })
        } else {
            t.clone()
        }
    }
}

/// A v8 connection's message numbers: 1, 2, … 65535, 1, … (never 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seq(u16);

impl Seq {
    /// The number of the next message.
    pub fn advance(&mut self) -> u16 {
        self.0 = self.0.checked_add(1).unwrap_or(1);
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_comes_from_the_query_and_defaults_to_8() {
        let v = |q| WireVersion::from_query(q).map(WireVersion::get);
        assert_eq!(v(None), Ok(8));
        assert_eq!(v(Some("")), Ok(8));
        assert_eq!(v(Some("v=8")), Ok(8));
        assert_eq!(v(Some("v=4")), Ok(4));
        assert_eq!(v(Some("encoding=json&v=7")), Ok(7));
        for bad in ["v=3", "v=9", "v=", "v=eight", "v=-1", "v=256"] {
            let e = v(Some(bad)).unwrap_err();
            assert!(e.contains("?v=4 to ?v=8"), "{bad}: {e}");
        }
    }

    #[test]
    fn v8_numbers_and_wraps_the_ack_echoes_t_older_versions_echo_the_bare_nonce() {
        let v8 = WireVersion::V8;
        let v4 = WireVersion::from_query(Some("v=4")).unwrap();
        assert!(v8.numbered() && !v4.numbered());
        assert_eq!(v8.heartbeat_ack(&json!(17)), json!({ "t": 17 }));
        assert_eq!(v4.heartbeat_ack(&json!(17)), json!(17));
    }

    #[test]
    fn seq_starts_at_1_wraps_past_65535_and_skips_0() {
        let mut s = Seq::default();
        assert_eq!(s.advance(), 1);
        let mut last = 1;
        for _ in 0..70_000 {
            let n = s.advance();
            assert_ne!(n, 0);
            assert!(
                (last == u16::MAX && n == 1) || n == last + 1,
                "{last} → {n}"
            );
            last = n;
        }
    }
}
