//! When a simulated speaker talks: a two-state on/off model with exponentially distributed talk
//! spurts and pauses (the classic conversational-speech model; ITU-T P.59 gives mean talk spurts
//! of about 1.0 s and pauses of about 1.6 s for one side of a conversation). A load test wants
//! its speakers busier than one side of a two-person call, so the defaults are 1.5 s talking and
//! 1.0 s pausing (60% activity); both are options.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy)]
pub struct TalkParams {
    pub mean_talk: Duration,
    pub mean_pause: Duration,
}

/// One speaker's on/off state over time (in 20 ms frames).
pub struct Talk {
    p: TalkParams,
    rng: StdRng,
    talking: bool,
    /// Frames left in the current state.
    left: u32,
}

impl Talk {
    pub fn new(p: TalkParams, seed: u64) -> Self {
        let mut t = Talk {
            p,
            rng: StdRng::seed_from_u64(seed),
            talking: false,
            left: 0,
        };
        // Start at a random point of a pause so speakers do not all start at once.
        t.left = t.draw(false) / 2;
        t
    }

    fn draw(&mut self, talking: bool) -> u32 {
        let mean = if talking {
            self.p.mean_talk
        } else {
            self.p.mean_pause
        };
        let frames = mean.as_secs_f64() / 0.02;
        // Exponential with the given mean, at least one frame.
        let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        ((-u.ln() * frames).round() as u32).max(1)
    }

    /// Advance one 20 ms frame; true while talking. The first frame of a spurt is reported by
    /// `starts_spurt` (RTP marker bit).
    pub fn next_frame(&mut self) -> (bool, bool) {
        let mut start = false;
        if self.left == 0 {
            self.talking = !self.talking;
            self.left = self.draw(self.talking);
            start = self.talking;
        }
        self.left -= 1;
        (self.talking, start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_matches_the_means() {
        let p = TalkParams {
            mean_talk: Duration::from_millis(1500),
            mean_pause: Duration::from_millis(1000),
        };
        let mut t = Talk::new(p, 9);
        let (mut on, mut spurts) = (0u32, 0u32);
        let n = 500_000;
        for _ in 0..n {
            let (talking, start) = t.next_frame();
            on += talking as u32;
            spurts += start as u32;
        }
        let activity = on as f64 / n as f64;
        assert!((activity - 0.6).abs() < 0.02, "activity {activity}");
        let mean_spurt_s = on as f64 * 0.02 / spurts as f64;
        assert!(
            (mean_spurt_s - 1.5).abs() < 0.1,
            "mean spurt {mean_spurt_s}"
        );
    }
}
