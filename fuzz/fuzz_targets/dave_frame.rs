//! The DAVE media-frame check (`lodge_sfu::native::dave_frame`) under arbitrary bytes: never a
//! panic; whatever passes has the shape it claims (marker, a sane supplemental size, the Opus
//! size inside); a longer ciphertext in front of a frame keeps it a frame; and a frame built
//! from the input as a DAVE sender builds one (nonce, in-order ranges) always passes.
#![no_main]
use lodge_sfu::native::dave_frame::{
    is_dave_frame, opus_len, supplemental_len, DAVE_MAGIC, DAVE_MIN_SUPPLEMENTAL, DAVE_TAG_LEN,
};

fn uleb(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Arbitrary bytes.
    match supplemental_len(data) {
        Some(sup) => {
            assert!(is_dave_frame(data));
            assert!(data.ends_with(&DAVE_MAGIC));
            assert_eq!(data[data.len() - 3] as usize, sup);
            assert!((DAVE_MIN_SUPPLEMENTAL..=data.len()).contains(&sup));
            assert_eq!(opus_len(data), data.len() - sup);
            let mut longer = vec![0x55u8; 1 + data.len() % 7];
            longer.extend_from_slice(data);
            assert_eq!(
                supplemental_len(&longer),
                Some(sup),
                "more ciphertext in front"
            );
        }
        None => {
            assert!(!is_dave_frame(data));
            assert_eq!(opus_len(data), data.len());
        }
    }

    // A frame built from the input: 4 bytes of nonce, one byte of range count, two bytes
    // (gap, length) per range, the rest is the ciphertext the ranges fall in.
    if data.len() < 5 {
        return;
    }
    let nonce = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let count = (data[4] % 4) as usize;
    let Some(spec) = data.get(5..5 + 2 * count) else {
        return;
    };
    let ciphertext = &data[5 + 2 * count..];
    let mut ranges = Vec::new();
    let mut at = 0usize;
    for pair in spec.chunks(2) {
        let (offset, len) = (at + pair[0] as usize, pair[1] as usize);
        if offset + len > ciphertext.len() {
            break;
        }
        ranges.push((offset, len));
        at = offset + len;
    }
    let mut frame = ciphertext.to_vec();
    frame.extend_from_slice(&[0xEE; DAVE_TAG_LEN]);
    uleb(nonce as u64, &mut frame);
    for &(o, l) in &ranges {
        uleb(o as u64, &mut frame);
        uleb(l as u64, &mut frame);
    }
    let sup = frame.len() - ciphertext.len() + 3;
    frame.push(sup as u8);
    frame.extend_from_slice(&DAVE_MAGIC);
    assert_eq!(
        supplemental_len(&frame),
        Some(sup),
        "a well-formed frame: {ranges:?}"
    );
    assert_eq!(opus_len(&frame), ciphertext.len());
});
