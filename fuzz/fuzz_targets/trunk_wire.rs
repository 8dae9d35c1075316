//! The trunk's wire format from an untrusted peer: media datagrams and control frames. Never a
//! panic; a datagram that decodes re-encodes to the same bytes; a control message that decodes
//! survives its own framing unchanged; no frame length beyond the limit is accepted.
#![no_main]
use bytes::Bytes;
use lodge_edge::wire::{Control, Media, MAX_CONTROL_BYTES};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        if let Ok(m) = Media::decode(Bytes::copy_from_slice(rest)) {
            assert_eq!(&m.encode()[..], rest, "decode → encode changed the datagram");
            let r = Media::decode(Media::as_repair(&m.encode())).expect("a repair decodes");
            assert!(r.repair && r.payload == m.payload && r.seq == m.seq);
        }
    } else {
        if rest.len() >= 4 {
            if let Ok(n) = Control::frame_len([rest[0], rest[1], rest[2], rest[3]]) {
                assert!(n <= MAX_CONTROL_BYTES);
            }
        }
        if let Ok(c) = Control::decode(rest) {
            let f = c.encode();
            // Re-encoding may escape what the input did not (at most 6 bytes per byte).
            if rest.len() * 6 <= MAX_CONTROL_BYTES {
                let n = Control::frame_len([f[0], f[1], f[2], f[3]]).expect("own frames fit");
                assert_eq!(n, f.len() - 4);
            }
            assert_eq!(Control::decode(&f[4..]).expect("own frames decode"), c);
        }
    }
});
