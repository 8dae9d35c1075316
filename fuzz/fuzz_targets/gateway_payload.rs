//! Gateway payloads: `client_op::parse`, the function the gateway itself reads every client
//! frame with. Never a panic; every refusal carries a close code of the 4000 range and a
//! reason; what is accepted is within the protocol's bounds and parses the same once
//! re-encoded.
#![no_main]
use lodge_signaling::gateway::client_op::{
    allowed_before_identify, parse, ClientOp, MemberSelect, MAX_MEMBER_IDS,
    MAX_MEMBER_QUERY_LIMIT, MAX_NONCE_BYTES,
};
use serde_json::{json, Value};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        let _ = allowed_before_identify(&v);
    }
    match parse(text) {
        Err((code, reason)) => {
            assert!((4000..5000).contains(&code), "close code {code}");
            assert!(!reason.is_empty());
        }
        Ok(ClientOp::Identify(i)) => {
            assert!(!i.token.is_empty() && i.token.len() <= 200);
            assert!((50..=250).contains(&i.large_threshold));
            if let Some([shard, count]) = i.shard {
                assert!(shard < count);
            }
            // Re-sent with a prefix, as a client sends it: the parsed token is bare, and a bare
            // token that itself starts with "Bearer " would lose that on a second parse.
            let again = json!({ "op": 2, "d": {
                "token": format!("Bot {}", i.token), "intents": i.intents, "shard": i.shard,
                "large_threshold": i.large_threshold, "presence": i.presence,
            }});
            let Ok(ClientOp::Identify(j)) = parse(&again.to_string()) else {
                panic!("a re-sent identify is refused");
            };
            // The presence is opaque JSON passed on as it is; its floats need not survive
            // a print and a parse bit for bit (found by the fuzzer), so only its presence
            // is compared.
            assert_eq!(
                (&j.token, j.intents, j.shard, j.large_threshold, j.presence.is_some()),
                (&i.token, i.intents, i.shard, i.large_threshold, i.presence.is_some())
            );
        }
        Ok(ClientOp::RequestGuildMembers(r)) => {
            if let Some(n) = &r.nonce {
                assert!(n.len() <= MAX_NONCE_BYTES);
            }
            match &r.select {
                MemberSelect::UserIds(ids) => assert!(ids.len() <= MAX_MEMBER_IDS),
                MemberSelect::Query { prefix, limit } => {
                    assert!(r.select.is_everyone() || *limit <= MAX_MEMBER_QUERY_LIMIT);
                    assert!(prefix.chars().count() <= 100);
                }
            }
        }
        Ok(ClientOp::Resume(r)) => assert!(r.session_id.len() <= 64),
        Ok(_) => {}
    }
});
