//! Native voice's UDP input under arbitrary bytes: IP discovery recognition, and opening
//! rtpsize packets in both AEAD modes, never panic; and whatever header and payload the input
//! describes, a sealed packet opens to exactly that payload.
#![no_main]
use lodge_sfu::native::{clear_header_len, discovery_request, CryptoMode, TransportCipher};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = discovery_request(data);
    let key = [7u8; 32];
    for mode in CryptoMode::ALL {
        let c = TransportCipher::new(mode, &key);
        let mut p = data.to_vec();
        let _ = c.open(&mut p);
        // Round trip: the input's first byte picks the clear header's length when it is one.
        if let Some(h) = clear_header_len(data) {
            let ext = data[0] & 0x10 != 0;
            let (header, payload) = data.split_at(h);
            let mut out = vec![0u8; data.len() + 20];
            let n = c.seal(header, payload, 0x1234_5678, &mut out).expect("room for it");
            match c.open(&mut out[..n]) {
                Ok(o) => {
                    assert_eq!(o.counter, 0x1234_5678);
                    assert_eq!(&out[h..o.payload.end], payload, "sealed bytes come back");
                }
                // Only an extension that claims more than the payload holds is refused.
                Err(_) => assert!(ext, "a sealed packet without extension must open"),
            }
        }
    }
});
