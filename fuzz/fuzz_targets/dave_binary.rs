//! DAVE binary input under arbitrary bytes: the client frame decoder (ops 26, 28), the commit +
//! Welcome parser, key package validation (structural walk, then openmls), the server frame
//! decoder, revoke refs and the MLS varint — and a live coordinator fed the same bytes as a
//! participant's frame. Never a panic; a refused frame leaves the coordinator unchanged.
//! (tls_codec's debug assertions are off under cfg(fuzzing); the unit test
//! `decoders_never_panic_on_garbage` covers them in a debug build.)
#![no_main]
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use lodge_signaling::voice::dave::{mls, wire, ChannelId, DaveCall, UserId};

const CHANNEL: ChannelId = ChannelId(0x1234_5678_9abc_def0);

fn call() -> &'static Mutex<(DaveCall, Instant)> {
    static CALL: OnceLock<Mutex<(DaveCall, Instant)>> = OnceLock::new();
    CALL.get_or_init(|| {
        let now = Instant::now();
        let mut c = DaveCall::new(CHANNEL, true).expect("key generation");
        c.handle_join(now, UserId(1), 1).expect("empty call");
        c.handle_join(now, UserId(2), 1).expect("room for two");
        while c.poll_output().is_some() {}
        Mutex::new((c, now))
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wire::read_varint(data, "fuzz");
    let _ = wire::decode_client_frame(data);
    let _ = wire::decode_server_frame(data, true);
    let _ = wire::decode_server_frame(data, false);
    let _ = wire::decode_revoke_refs(data);
    if let Ok(info) = mls::parse_commit_welcome(data, CHANNEL) {
        assert_eq!(info.commit.len() + info.welcome.map_or(0, <[u8]>::len), data.len());
    }
    let _ = mls::validate_key_package(data, UserId(1));

    let mut guard = call().lock().unwrap_or_else(|p| p.into_inner());
    let (c, now) = &mut *guard;
    let epoch = c.epoch();
    if c.handle_binary(*now, UserId(1), data).is_err() {
        assert_eq!(c.epoch(), epoch, "a refused frame changes nothing");
        assert!(c.poll_output().is_none(), "a refused frame sends nothing");
    }
    while c.poll_output().is_some() {}
});
