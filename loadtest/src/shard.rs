//! `--shard I/N`: one of N disjoint parts of a load scenario, so that N generator machines
//! together run the whole scenario without two of them using the same caller or channel.
//!
//! The split is by channel: shard I owns the scenario's channels whose index `c` has
//! `c mod N = I`, and with them every caller that goes to those channels (caller `i` goes to
//! channel `i mod C`, as in an unsharded run). Everything that depends on a caller (its user
//! name, whether it speaks or probes, its talk and impairment seeds) is derived from its global
//! index `i`, so the union of the shards is the unsharded scenario caller for caller.

use std::fmt;
use std::str::FromStr;

/// Shard `index` of `count` (0-based). `0/1` is the whole scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn is_whole(&self) -> bool {
        self.count == 1
    }

    /// Whether the scenario's channel `c` belongs to this shard.
    pub fn owns_channel(&self, c: usize) -> bool {
        c % self.count == self.index
    }

    /// The scenario's channel indices this shard runs, ascending.
    pub fn channels(&self, channels: usize) -> Vec<usize> {
        (0..channels).filter(|&c| self.owns_channel(c)).collect()
    }

    /// The global indices of this shard's callers, ascending (the order they join in).
    pub fn callers(&self, callers: usize, channels: usize) -> Vec<usize> {
        (0..callers)
            .filter(|&i| self.owns_channel(i % channels))
            .collect()
    }

    /// Position of the scenario's channel `c` among this shard's channels.
    pub fn local_channel(&self, c: usize) -> usize {
        c / self.count
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not I/N (e.g. 0/4: the first of four shards)"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("shard index {i:?} is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("shard count {n:?} is not a number"))?;
        if count == 0 {
            return Err("the shard count N must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "shard index {index} is out of range: I counts from 0 to N-1 = {}",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!("2/5".parse(), Ok(Shard { index: 2, count: 5 }));
        assert_eq!(" 0 / 1 ".parse(), Ok(Shard::WHOLE));
        assert!("5/5".parse::<Shard>().unwrap_err().contains("out of range"));
        assert!("0/0".parse::<Shard>().unwrap_err().contains("at least 1"));
        assert!("3".parse::<Shard>().unwrap_err().contains("I/N"));
        assert!("a/2".parse::<Shard>().is_err());
        assert_eq!(Shard { index: 3, count: 8 }.to_string(), "3/8");
    }

    #[test]
    fn shards_partition_callers_and_channels() {
        let (callers, channels, n) = (103, 10, 4);
        let shards: Vec<Shard> = (0..n).map(|index| Shard { index, count: n }).collect();
        let mut all_callers: Vec<usize> = shards
            .iter()
            .flat_map(|s| s.callers(callers, channels))
            .collect();
        all_callers.sort_unstable();
        assert_eq!(all_callers, (0..callers).collect::<Vec<_>>());
        let mut all_channels: Vec<usize> =
            shards.iter().flat_map(|s| s.channels(channels)).collect();
        all_channels.sort_unstable();
        assert_eq!(all_channels, (0..channels).collect::<Vec<_>>());
        // A caller's shard owns its channel, and the local index addresses that channel.
        for s in &shards {
            let mine = s.channels(channels);
            for i in s.callers(callers, channels) {
                let c = i % channels;
                assert_eq!(mine[s.local_channel(c)], c);
            }
        }
        // The whole scenario is one shard of one.
        assert_eq!(Shard::WHOLE.callers(7, 3), (0..7).collect::<Vec<_>>());
    }
}
