//! Voice gateway payloads: `client_op::parse`, the function the voice gateway itself reads every
//! client frame with. Never a panic; every refusal carries a close code of the 4000 range and a
//! reason; what is accepted is within the protocol's bounds and parses the same once re-encoded.
#![no_main]
use lodge_signaling::voice::client_op::{parse, ClientOp, Media};
use serde_json::json;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Err(r) => {
            assert!((4000..5000).contains(&r.code), "close code {}", r.code);
            assert!(!r.reason.is_empty());
        }
        Ok(ClientOp::Identify(i)) => {
            let again = json!({ "op": 0, "d": {
                "server_id": i.server_id.to_string(), "user_id": i.user_id,
                "session_id": i.session_id, "token": i.token,
                "max_dave_protocol_version": i.max_dave_protocol_version,
            }});
            assert_eq!(parse(&again.to_string()), Ok(ClientOp::Identify(i)));
        }
        Ok(ClientOp::SelectProtocol(p)) => {
            if let Some(k) = p.slots {
                assert!((1..=lodge_sfu::MAX_SLOTS).contains(&k), "slots {k}");
            }
            let data = match &p.media {
                Media::WebRtc { sdp } => json!({ "sdp": sdp }),
                Media::Udp { address, port, mode } => {
                    json!({ "address": address, "port": port, "mode": mode.name() })
                }
            };
            let protocol = match p.media {
                Media::WebRtc { .. } => "webrtc",
                Media::Udp { .. } => "udp",
            };
            let again = json!({ "op": 1, "d": {
                "protocol": protocol, "data": data, "slots": p.slots,
            }});
            assert_eq!(parse(&again.to_string()), Ok(ClientOp::SelectProtocol(p)));
        }
        Ok(op @ ClientOp::DaveTransitionReady { transition_id }) => {
            let again = json!({ "op": 23, "d": { "transition_id": transition_id } });
            assert_eq!(parse(&again.to_string()), Ok(op));
        }
        Ok(op @ ClientOp::DaveInvalidCommitWelcome { transition_id }) => {
            let again = json!({ "op": 31, "d": { "transition_id": transition_id } });
            assert_eq!(parse(&again.to_string()), Ok(op));
        }
        Ok(_) => {}
    }
});
