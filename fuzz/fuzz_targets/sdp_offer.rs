//! Arbitrary SDP offers through the node's join (str0m's parser, then Lodge's classification
//! of the media lines into one send line and K slots): never a panic; a refused offer leaves
//! nothing behind; an accepted one has 1..=16 slots and can leave again.
#![no_main]
use std::time::Instant;

use lodge_sfu::{GuildId, JoinRequest, Node, NodeConfig, RoomId, UserId, VoiceFlags, MAX_SLOTS};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(offer) = std::str::from_utf8(data) else {
        return;
    };
    let now = Instant::now();
    let mut node = Node::new(NodeConfig::new("127.0.0.1:50000".parse().unwrap()));
    let req = JoinRequest {
        room: RoomId(1),
        guild: GuildId(1),
        user: UserId(1),
        offer: offer.to_string(),
        flags: VoiceFlags::default(),
    };
    match node.join(now, req) {
        Ok(a) => {
            assert!((1..=MAX_SLOTS).contains(&a.slots.len()), "{} slots", a.slots.len());
            assert!(a.answer.starts_with("v=0"));
            assert_eq!(node.participant_count(), 1);
            node.leave(now, a.idx);
            assert_eq!(node.participant_count(), 0);
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert_eq!(node.participant_count(), 0, "a refused offer left a participant");
        }
    }
    while node.poll_output().is_some() {}
});
