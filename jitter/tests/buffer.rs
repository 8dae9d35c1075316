//! The playout buffer under orderly, hostile and simulated-network input.

use lodge_jitter::{BufferConfig, JitterBuffer, JitterStats, Profile, Pulled};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn simulate(profile: Profile, cfg: BufferConfig, secs: u64, seed: u64) -> (JitterStats, Vec<u64>) {
    let run = lodge_jitter::eval::simulate(&profile, cfg, secs, seed);
    (run.stats, run.played)
}

#[test]
fn hostile_orders_losses_and_duplicates_never_break_order() {
    for seed in 0..200u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let start: u16 = rng.gen();
        let ts0: u32 = rng.gen();
        let mut pkts: Vec<(u16, u32)> = (0..200u32)
            .map(|i| (start.wrapping_add(i as u16), ts0.wrapping_add(i * 960)))
            .collect();
        pkts.retain(|_| rng.gen_bool(0.85));
        let dups: Vec<_> = pkts.iter().filter(|_| rng.gen_bool(0.1)).copied().collect();
        pkts.extend(dups);
        // Local shuffles (bounded reordering) plus a few far jumps.
        for w in pkts.chunks_mut(rng.gen_range(2..8)) {
            w.shuffle(&mut rng);
        }
        let mut jb = JitterBuffer::new(BufferConfig::default());
        // Decoded frames (packets and FEC rebuilds) must come out in order, none twice.
        // (A concealment may later turn out to have covered a DTX pause and be played after all.)
        let mut out = Vec::new();
        let mut now = 0.0;
        for (i, (s, ts)) in pkts.iter().enumerate() {
            jb.insert(now + rng.gen_range(0.0..30.0), *s, *ts, vec![1, 2, 3]);
            if i % 2 == 0 {
                now += 20.0;
                if let Pulled::Frame { seq, .. } | Pulled::Fec { seq, .. } = jb.pull(now) {
                    out.push(seq);
                }
            }
        }
        for _ in 0..300 {
            now += 20.0;
            if let Pulled::Frame { seq, .. } | Pulled::Fec { seq, .. } = jb.pull(now) {
                out.push(seq);
            }
        }
        assert!(
            out.windows(2).all(|w| w[1] > w[0]),
            "seed {seed}: out of order or twice: {out:?}"
        );
    }
}

#[test]
fn plays_in_order_across_16_and_32_bit_wrap() {
    let mut jb = JitterBuffer::new(BufferConfig::default());
    let mut frames = Vec::new();
    for i in 0..200u32 {
        let now = i as f64 * 20.0;
        jb.insert(
            now + 25.0,
            65_400u16.wrapping_add(i as u16),
            (u32::MAX - 50 * 960).wrapping_add(i * 960),
            vec![(i % 256) as u8],
        );
        if let Pulled::Frame { payload, .. } = jb.pull(now + 30.0) {
            frames.push(payload[0] as u32);
        }
    }
    assert!(frames.len() > 190, "{}", frames.len());
    assert!(
        frames.windows(2).all(|w| w[1] == (w[0] + 1) % 256),
        "{frames:?}"
    );
    assert_eq!(jb.stats().concealed_samples, 0);
}

#[test]
fn single_losses_are_rebuilt_from_fec_or_concealed_without() {
    for fec in [true, false] {
        let mut jb = JitterBuffer::new(BufferConfig {
            use_fec: fec,
            ..BufferConfig::default()
        });
        let mut kinds = Vec::new();
        for i in 0..100u32 {
            let now = i as f64 * 20.0;
            if i % 10 != 5 {
                jb.insert(now + 25.0, i as u16, i * 960, vec![1]);
            }
            // Pull with a frame of slack so the packet after a loss is already here.
            kinds.push(match jb.pull(now + 10.0) {
                Pulled::Fec { .. } => 'F',
                Pulled::Conceal { .. } => 'C',
                Pulled::Frame { .. } => '.',
                _ => ' ',
            });
        }
        let s = jb.stats();
        if fec {
            assert!(s.fec_packets_received >= 8, "{kinds:?} {s:?}");
            assert_eq!(s.concealed_samples, 0, "{kinds:?}");
        } else {
            assert_eq!(s.fec_packets_received, 0);
            assert!(s.concealment_events >= 8, "{s:?}");
        }
        assert_eq!(s.interruptions, 0);
    }
}

#[test]
fn dtx_gap_plays_silence_then_resumes() {
    let mut jb = JitterBuffer::new(BufferConfig::default());
    let mut out = Vec::new();
    // 50 frames, then the sender is silent for 1 s (timestamps jump, sequence continues).
    for i in 0..150u32 {
        let now = i as f64 * 20.0;
        let talking = !(50..100).contains(&i);
        if talking {
            let seq = if i < 50 { i } else { i - 50 };
            jb.insert(now + 30.0, seq as u16, i * 960, vec![1]);
        }
        out.push(match jb.pull(now + 40.0) {
            Pulled::Frame { .. } => 'F',
            Pulled::Silence => 'S',
            Pulled::Conceal { .. } => 'C',
            Pulled::Stretch => 'T',
            Pulled::Waiting => 'W',
            Pulled::Fec { .. } => 'E',
        });
    }
    let s: String = out.iter().collect();
    assert!(s.contains(&"S".repeat(40)), "{s}");
    // Every packet is played (the last one or two may still be buffered when the loop ends).
    assert!(s.matches('F').count() >= 98, "{s}");
    assert!(s.matches('C').count() <= 4, "{s}");
    assert_eq!(jb.stats().interruptions, 0);
}

#[test]
fn a_long_outage_counts_as_an_interruption() {
    let mut jb = JitterBuffer::new(BufferConfig {
        use_fec: false,
        ..BufferConfig::default()
    });
    for i in 0..100u32 {
        let now = i as f64 * 20.0;
        // 200 ms outage while later packets keep arriving after it.
        if !(40..50).contains(&i) {
            jb.insert(now + 25.0, i as u16, i * 960, vec![1]);
        }
        jb.pull(now + 60.0);
    }
    jb.finish();
    assert_eq!(jb.stats().interruptions, 1, "{:?}", jb.stats());
}

#[test]
fn adaptive_beats_fixed_buffers_on_simulated_networks() {
    let adaptive = BufferConfig::default();
    let fixed = |ms| BufferConfig {
        fixed_delay_ms: Some(ms),
        ..BufferConfig::default()
    };
    for p in [
        Profile::WIRED,
        Profile::GOOD_WIFI,
        Profile::BUSY_WIFI,
        Profile::HANDOVER_4G,
    ] {
        let (a, played) = simulate(p.clone(), adaptive, 60, 11);
        let (f80, _) = simulate(p.clone(), fixed(80.0), 60, 11);
        let (f40, _) = simulate(p.clone(), fixed(40.0), 60, 11);

        assert!(played.windows(2).all(|w| w[1] > w[0]), "{}: order", p.name);
        eprintln!(
            "{:12} adaptive {:5.1} ms {:5.2}% | fixed80 {:5.1} ms {:5.2}% | fixed40 {:5.1} ms {:5.2}%",
            p.name,
            a.mean_delay_ms(),
            a.concealment_ratio() * 100.0,
            f80.mean_delay_ms(),
            f80.concealment_ratio() * 100.0,
            f40.mean_delay_ms(),
            f40.concealment_ratio() * 100.0
        );
        assert!(
            a.mean_delay_ms() < f80.mean_delay_ms(),
            "{}: adaptive delay {} vs fixed 80 {}",
            p.name,
            a.mean_delay_ms(),
            f80.mean_delay_ms()
        );
    }
    let (good, _) = simulate(Profile::GOOD_WIFI, adaptive, 60, 5);
    assert!(
        good.mean_delay_ms() <= 60.0,
        "good wifi delay {}",
        good.mean_delay_ms()
    );
    let (busy_a, _) = simulate(Profile::BUSY_WIFI, adaptive, 60, 5);
    let (busy_40, _) = simulate(Profile::BUSY_WIFI, fixed(40.0), 60, 5);
    assert!(
        busy_a.concealment_ratio() < busy_40.concealment_ratio(),
        "busy wifi: adaptive conceals less than fixed 40"
    );
}

#[test]
fn clock_drift_does_not_grow_the_buffer() {
    // Receiver clock 2000 ppm fast for 2 minutes: without rate adjustment the buffer would drain
    // by 240 ms; with it, delay stays near target and concealment stays low.
    let p = Profile {
        name: "drift",
        clock_drift_ppm: 2000.0,
        ..Profile::WIRED
    };
    let (s, _) = simulate(p, BufferConfig::default(), 120, 3);
    assert!(s.concealment_ratio() < 0.01, "{s:?}");
    assert!(
        s.inserted_samples_for_deceleration > 0 || s.removed_samples_for_acceleration > 0,
        "rate adjustment happened"
    );
    assert!(s.mean_delay_ms() < 80.0, "{}", s.mean_delay_ms());
}

#[test]
fn a_late_packet_after_an_underrun_still_plays_and_a_lost_one_is_not_concealed_twice() {
    let cfg = BufferConfig {
        fixed_delay_ms: Some(20.0),
        use_fec: false,
        ..BufferConfig::default()
    };
    // A stall: packets 10..=14 are held back and arrive together at tick 15 (the buffer runs
    // dry meanwhile); everything else is on time.
    let mut jb = JitterBuffer::new(cfg);
    let mut got = Vec::new();
    for tick in 0..40u16 {
        let now = tick as f64 * 20.0;
        if tick < 30 && !(10..=14).contains(&tick) {
            jb.insert(now + 5.0, tick, tick as u32 * 960, vec![tick as u8]);
        }
        if tick == 15 {
            for s in 10..=14u16 {
                jb.insert(now + 1.0, s, s as u32 * 960, vec![s as u8]);
            }
        }
        got.push(jb.pull(now + 10.0));
    }
    let played: Vec<u64> = got
        .iter()
        .filter_map(|p| match p {
            Pulled::Frame { seq, .. } => Some(seq - 65536),
            _ => None,
        })
        .collect();
    // Nothing was thrown away as late: each packet was played or, once the stall was over and
    // too much was buffered, dropped on purpose to catch up (acceleration).
    let st = jb.stats();
    assert_eq!(st.packets_discarded, 0, "{played:?}");
    assert_eq!(
        played.len() as u64 + st.removed_samples_for_acceleration / 960,
        30,
        "{played:?}"
    );
    assert!(played.windows(2).all(|w| w[1] > w[0]), "{played:?}");

    // Packet 10 never comes: one frame of audio is concealed, once (an expansion while
    // waiting for it, if any, stands in for it rather than adding to it).
    let mut jb = JitterBuffer::new(cfg);
    for tick in 0..40u16 {
        let now = tick as f64 * 20.0;
        if tick < 30 && tick != 10 {
            jb.insert(now + 5.0, tick, tick as u32 * 960, vec![tick as u8]);
        }
        jb.pull(now + 10.0);
    }
    jb.finish();
    let st = jb.stats();
    assert_eq!(st.concealment_events, 1);
    assert_eq!(st.concealed_samples - st.silent_concealed_samples, 960);
}
