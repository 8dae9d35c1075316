//! Voice gateway Resume (op 7): when a v8 connection's WebSocket drops, the connection is
//! parked for `voice_resume_secs` (its call goes on: media flows over UDP) and a client that
//! comes back with op 7 gets op 9 and then every numbered message it had not acknowledged,
//! with the numbers they first had. [`ReplayBuffer`] keeps those messages, bounded by count
//! and by bytes; a resume that needs one it no longer holds is refused with 4006, as a resume
//! after the grace period is.

use std::collections::VecDeque;

/// Most messages kept for a resume.
pub const REPLAY_MESSAGES: usize = 128;
/// Most bytes kept for a resume (a DAVE Welcome for a large call is tens of KB).
pub const REPLAY_BYTES: usize = 256 * 1024;

/// Whether `a` comes after `b` in a u16 sequence that wraps (RFC 1982 serial arithmetic).
pub fn after(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

/// One numbered message as written: a JSON text frame, or a binary frame (DAVE's ops 25, 27,
/// 29 and 30) with its sequence number in front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

impl Frame {
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<String> for Frame {
    fn from(t: String) -> Frame {
        Frame::Text(t)
    }
}

impl From<&str> for Frame {
    fn from(t: &str) -> Frame {
        Frame::Text(t.to_string())
    }
}

/// The numbered messages a connection sent that a resume may need again, oldest first.
#[derive(Debug, Default)]
pub struct ReplayBuffer {
    kept: VecDeque<(u16, Frame)>,
    bytes: usize,
    /// The newest message dropped for room, not because the client acknowledged it.
    lost: Option<u16>,
}

impl ReplayBuffer {
    /// Keep message `seq`.
    pub fn push(&mut self, seq: u16, frame: impl Into<Frame>) {
        let frame = frame.into();
        self.bytes += frame.len();
        self.kept.push_back((seq, frame));
        while self.kept.len() > REPLAY_MESSAGES || self.bytes > REPLAY_BYTES {
            let Some((s, t)) = self.kept.pop_front() else {
                break;
            };
            self.bytes -= t.len();
            self.lost = Some(s);
        }
    }

    /// The client has seen everything up to `ack`: forget it.
    pub fn ack(&mut self, ack: u16) {
        while let Some((s, t)) = self.kept.front() {
            if after(*s, ack) {
                break;
            }
            self.bytes -= t.len();
            self.kept.pop_front();
        }
    }

    /// The messages to send again to a client that saw everything up to `ack` (`None`: it
    /// said nothing, so everything kept), or `None` if one of them was dropped for room.
    pub fn replay(&self, ack: Option<u16>) -> Option<Vec<(u16, &Frame)>> {
        if let Some(lost) = self.lost {
            if ack.is_none_or(|a| after(lost, a)) {
                return None;
            }
        }
        Some(
            self.kept
                .iter()
                .filter(|(s, _)| ack.is_none_or(|a| after(*s, a)))
                .map(|(s, f)| (*s, f))
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(r: Option<Vec<(u16, &Frame)>>) -> Option<Vec<u16>> {
        r.map(|v| v.into_iter().map(|(s, _)| s).collect())
    }

    #[test]
    fn a_resume_gets_what_came_after_its_ack_in_order() {
        let mut b = ReplayBuffer::default();
        for s in 3..=7 {
            b.push(s, format!("m{s}"));
        }
        assert_eq!(seqs(b.replay(Some(4))), Some(vec![5, 6, 7]));
        assert_eq!(seqs(b.replay(None)), Some(vec![3, 4, 5, 6, 7]));
        assert_eq!(seqs(b.replay(Some(7))), Some(vec![]));
        b.ack(5);
        assert_eq!(b.len(), 2);
        assert_eq!(seqs(b.replay(Some(5))), Some(vec![6, 7]));
        assert_eq!(b.replay(Some(6)).unwrap()[0].1, &Frame::from("m7"));
        b.push(8, Frame::Binary(vec![0, 8, 29, 1]));
        assert_eq!(
            b.replay(Some(7)).unwrap(),
            vec![(8, &Frame::Binary(vec![0, 8, 29, 1]))],
            "binary frames are kept and replayed like text"
        );
    }

    #[test]
    fn numbers_wrap() {
        let mut b = ReplayBuffer::default();
        for s in [65534, 65535, 1, 2] {
            b.push(s, "x");
        }
        assert_eq!(seqs(b.replay(Some(65535))), Some(vec![1, 2]));
        b.ack(1);
        assert_eq!(seqs(b.replay(Some(1))), Some(vec![2]));
        assert!(after(1, 65535) && !after(65535, 1));
    }

    #[test]
    fn a_message_dropped_for_room_makes_an_older_ack_unresumable() {
        let mut b = ReplayBuffer::default();
        for s in 1..=(REPLAY_MESSAGES as u16 + 10) {
            b.push(s, "x");
        }
        assert_eq!(b.len(), REPLAY_MESSAGES);
        assert_eq!(b.replay(Some(5)), None, "message 6 is gone");
        assert_eq!(b.replay(None), None);
        assert_eq!(
            seqs(b.replay(Some(10))).map(|v| v.len()),
            Some(REPLAY_MESSAGES),
            "everything after 10 is kept"
        );
        let mut big = ReplayBuffer::default();
        big.push(1, "y".repeat(REPLAY_BYTES));
        big.push(2, "z");
        assert_eq!(big.len(), 1, "the byte cap drops the oldest");
        assert_eq!(seqs(big.replay(Some(1))), Some(vec![2]));
        assert_eq!(big.replay(Some(0)), None);
    }
}
