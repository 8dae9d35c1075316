//! The STUN USERNAME extractor must never panic and never read past the datagram.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(u) = lodge_sfu::stun::local_ufrag(data) {
        assert!(u.len() <= data.len());
        assert!(lodge_sfu::stun::is_stun(data));
    }
});
