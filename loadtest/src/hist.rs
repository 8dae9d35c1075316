//! Histograms in reports: serialized exactly (hdrhistogram's V2 + deflate format, base64) so that
//! shards' reports can be merged by adding histograms, never by averaging percentiles.

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

/// Microseconds up to a minute, 3 significant digits: delivery and mouth-to-ear delays.
pub fn micros() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// Milliseconds up to ten minutes, 3 significant digits: join and rejoin times.
pub fn millis() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000, 3).expect("constant bounds are valid")
}

/// The histogram as base64 text (V2 deflate serialization).
pub fn encode(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .expect("serializing into a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// A histogram from [`encode`]'s text; `None` if it is not one.
pub fn decode(text: &str) -> Option<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    Deserializer::new().deserialize(&mut &bytes[..]).ok()
}

/// A serde adapter: `#[serde(with = "crate::hist::serde_b64")]` on a `Histogram<u64>` field.
pub mod serde_b64 {
    use hdrhistogram::Histogram;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        let text = String::deserialize(d)?;
        super::decode(&text).ok_or_else(|| D::Error::custom("not a base64 V2 hdrhistogram"))
    }
}

/// Value at quantile `q` scaled by `1/scale`, or NaN for an empty histogram (as the report
/// prints a missing figure).
pub fn at(h: &Histogram<u64>, q: f64, scale: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64 / scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_counts_exactly() {
        let mut h = micros();
        for v in [1u64, 7, 500, 20_000, 59_000_000] {
            h.record_n(v, v % 13 + 1).unwrap();
        }
        let back = decode(&encode(&h)).expect("decodes");
        assert_eq!(back, h);
        assert_eq!(back.len(), h.len());
        assert_eq!(back.high(), h.high());
        assert!(decode("not base64!").is_none());
        assert!(decode("aGVsbG8=").is_none());
    }
}
