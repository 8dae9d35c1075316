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
        // The adaptive buffer and the static schedule alike.
        let cfg = if seed % 2 == 0 {
            BufferConfig::default()
        } else {
            BufferConfig {
                static_delay_ms: Some(40.0),
                ..BufferConfig::default()
            }
        };
        let mut jb = JitterBuffer::new(cfg);
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

/// One packet in 20 lost (5%, never two in a row) on a path with up to 4 ms of jitter, pulled
/// at a random phase: the target it settles on, and how many of the losses were rebuilt from
/// FEC, of how many.
fn isolated_losses_low_jitter(fec: bool, seed: u64) -> (f64, usize, usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut jb = JitterBuffer::new(BufferConfig {
        use_fec: fec,
        ..BufferConfig::default()
    });
    let phase = rng.gen_range(0.0..20.0);
    // In order: 4 ms of jitter cannot reorder packets 20 ms apart.
    let arrivals: Vec<(f64, u32)> = (0..1500u32)
        .filter(|i| i % 20 != 7)
        .map(|i| (i as f64 * 20.0 + 30.0 + rng.gen_range(0.0..4.0), i))
        .collect();
    let lost = (0..1500u32).filter(|i| i % 20 == 7).count();
    let (mut next, mut rebuilt) = (0, 0);
    for tick in 0..1510u32 {
        let now = tick as f64 * 20.0 + phase;
        while next < arrivals.len() && arrivals[next].0 <= now {
            let (at, i) = arrivals[next];
            jb.insert(at, i as u16, i * 960, vec![1]);
            next += 1;
        }
        if let Pulled::Fec { .. } = jb.pull(now) {
            rebuilt += 1;
        }
    }
    (jb.target_delay_ms(), rebuilt, lost)
}

#[test]
fn with_fec_a_lossy_path_holds_one_frame_plus_its_jitter_not_two_frames() {
    for seed in 1..6 {
        // With FEC the packet after a loss must be here when the lost frame is due: a frame
        // plus the jitter it arrives within (5 ms bins), not a flat two frames.
        let (target, rebuilt, lost) = isolated_losses_low_jitter(true, seed);
        assert!(
            (25.0..40.0).contains(&target),
            "seed {seed}: target {target} ms"
        );
        assert_eq!(
            rebuilt, lost,
            "seed {seed}: every isolated loss rebuilt from FEC"
        );
        // Without FEC two frames, so a burst does not run the buffer dry.
        let (target, rebuilt, _) = isolated_losses_low_jitter(false, seed);
        assert_eq!(target, 40.0, "seed {seed}");
        assert_eq!(rebuilt, 0);
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
        out.push(kind(&jb.pull(now + 40.0)));
    }
    let s: String = out.iter().collect();
    assert!(s.contains(&"S".repeat(40)), "{s}");
    // Every packet is played (the last one or two may still be buffered when the loop ends).
    assert!(s.matches('F').count() >= 98, "{s}");
    assert!(s.matches('C').count() <= 4, "{s}");
    assert_eq!(jb.stats().interruptions, 0);
}

/// `frames` packets at 20 ms (each arriving 25 ms after it was due, pulled 35 ms later),
/// without FEC, minus those in `lost`: the final statistics.
fn with_outage(cfg: BufferConfig, frames: u32, lost: std::ops::Range<u32>) -> JitterStats {
    let mut jb = JitterBuffer::new(BufferConfig {
        use_fec: false,
        ..cfg
    });
    for i in 0..frames {
        let now = i as f64 * 20.0;
        if !lost.contains(&i) {
            jb.insert(now + 25.0, i as u16, i * 960, vec![1]);
        }
        jb.pull(now + 60.0);
    }
    jb.finish();
    jb.stats().clone()
}

#[test]
fn a_long_outage_counts_as_an_interruption() {
    // 200 ms outage while later packets keep arriving after it.
    let st = with_outage(BufferConfig::default(), 100, 40..50);
    assert_eq!(st.interruptions, 1, "{st:?}");
    // A few frames of PLC while the packets might only be late, then silence: the silence is
    // silent concealment (W3C), and concealment of loss by Lodge's measure all the same (nine
    // or ten frames: a stretch on the way may already have covered one).
    let lost = st.loss_concealed_samples() / 960;
    assert!((9..=10).contains(&lost), "{lost} frames, {st:?}");
    assert_eq!(
        st.silent_concealed_samples, st.silent_outage_samples,
        "no DTX here: {st:?}"
    );
    let plc = (st.concealed_samples - st.silent_concealed_samples) / 960;
    assert!(
        (2..=5).contains(&plc),
        "PLC before silence: {plc} frames, {st:?}"
    );
}

#[test]
fn an_outage_of_over_100_packets_is_loss_not_a_pause() {
    // 3 s without packets mid-stream (150 sequence numbers lost), then the stream goes on: the
    // buffer resynchronises, and the quiet spell counts as an outage (one interruption, its
    // silence as silent concealment of loss), not as a sender's pause.
    for cfg in [BufferConfig::default(), static_buffer(40.0)] {
        let st = with_outage(cfg, 400, 100..250);
        assert_eq!(st.interruptions, 1, "{st:?}");
        let lost = st.loss_concealed_samples() / 960;
        assert!(
            lost >= 140,
            "the outage is concealment of loss: {lost} frames, {st:?}"
        );
        assert!(st.silent_outage_samples >= 130 * 960, "{st:?}");
    }
}

#[test]
fn adaptive_target_beats_the_same_loop_with_a_pinned_target() {
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
        // Less delay than the pinned 80 ms target; on busy Wi-Fi, where the adaptive target
        // sits above 80 ms, less concealment for it instead.
        let busy = p.name == Profile::BUSY_WIFI.name;
        assert!(
            (!busy && a.mean_delay_ms() < f80.mean_delay_ms())
                || (busy && a.concealment_ratio() < f80.concealment_ratio()),
            "{}: adaptive {} ms {} vs fixed 80 {} ms {}",
            p.name,
            a.mean_delay_ms(),
            a.concealment_ratio(),
            f80.mean_delay_ms(),
            f80.concealment_ratio()
        );
    }
    // The good-Wi-Fi goal, over eight networks (one seed alone swings by ±4 ms).
    let good: f64 = (1..=8)
        .map(|seed| {
            simulate(Profile::GOOD_WIFI, adaptive, 60, seed)
                .0
                .mean_delay_ms()
        })
        .sum::<f64>()
        / 8.0;
    assert!(good <= 60.0, "good wifi delay {good}");
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

fn static_buffer(ms: f64) -> BufferConfig {
    BufferConfig {
        static_delay_ms: Some(ms),
        use_fec: false,
        ..BufferConfig::default()
    }
}

/// One letter per pull, for readable assertions on a run of decisions.
fn kind(p: &Pulled) -> char {
    match p {
        Pulled::Frame { .. } => 'F',
        Pulled::Silence => 'S',
        Pulled::Conceal { .. } => 'C',
        Pulled::Stretch => 'T',
        Pulled::Waiting => 'W',
        Pulled::Fec { .. } => 'E',
    }
}

#[test]
fn a_static_schedule_never_moves_and_discards_what_misses_its_slot() {
    // Transit 30 ms, except packet 20 (90 ms: misses a 40 ms schedule) and packet 30 (55 ms:
    // within it).
    let mut jb = JitterBuffer::new(static_buffer(40.0));
    let mut arrivals: Vec<(f64, u16)> = (0..60u16)
        .map(|i| {
            let transit = match i {
                20 => 90.0,
                30 => 55.0,
                _ => 30.0,
            };
            (i as f64 * 20.0 + transit, i)
        })
        .collect();
    arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut out, mut next) = (String::new(), 0);
    let mut delays = Vec::new();
    for tick in 0..80u32 {
        let now = tick as f64 * 20.0;
        while next < arrivals.len() && arrivals[next].0 <= now {
            let (at, s) = arrivals[next];
            jb.insert(at, s, s as u32 * 960, vec![s as u8]);
            next += 1;
        }
        let before = jb.stats().jitter_buffer_delay;
        let p = jb.pull(now);
        if let Pulled::Frame { .. } = p {
            delays.push((jb.stats().jitter_buffer_delay - before) / 960.0 * 1000.0);
        }
        out.push(kind(&p));
    }
    let st = jb.stats();
    // The first packet arrives at 30 ms and plays at the first pull 40 ms later (80 ms); then one
    // frame per pull, the late one concealed and discarded when it comes.
    assert!(out.starts_with("WWWWF"), "{out}");
    let playing = &out[..out.rfind('F').unwrap()];
    assert_eq!(playing.matches('C').count(), 1, "{out}");
    assert_eq!(out.matches('F').count(), 59, "{out}");
    assert_eq!(st.packets_discarded, 1);
    assert_eq!(st.inserted_samples_for_deceleration, 0);
    assert_eq!(st.removed_samples_for_acceleration, 0);
    // Every on-time packet waited the same 50 ms (30 ms transit, first played at 80 ms);
    // packet 30 waited 25 ms less.
    let fifty = delays.iter().filter(|d| (**d - 50.0).abs() < 1e-6).count();
    assert_eq!(fifty, 58, "{delays:?}");
    assert!(delays.iter().any(|d| (d - 25.0).abs() < 1e-6), "{delays:?}");
}

#[test]
fn a_static_schedule_tells_dtx_from_an_outage() {
    // 40 frames, a 1 s pause (DTX: the sequence runs on), 40 frames, a 400 ms outage (a
    // sequence gap), 40 frames.
    let mut jb = JitterBuffer::new(static_buffer(40.0));
    let mut seq = 0u16;
    let mut out = String::new();
    for i in 0..200u32 {
        let now = i as f64 * 20.0;
        let sending = i < 190 && !(40..90).contains(&i) && !(130..150).contains(&i);
        if sending {
            jb.insert(now + 30.0, seq, i * 960, vec![1]);
        }
        if sending || (130..150).contains(&i) {
            seq = seq.wrapping_add(1);
        }
        out.push(kind(&jb.pull(now + 45.0)));
    }
    jb.finish();
    let st = jb.stats();
    assert_eq!(out.matches('F').count(), 120, "{out}");
    // The pause is comfort silence, the outage concealment (one interruption of 400 ms); so is
    // the quiet after the last packet, once the call is finished. Of the outage, what played
    // as silence once concealment gave up is silent concealment by the W3C's definition, and
    // still concealment of loss by Lodge's own measure.
    let after_last = out.len() - out.rfind('F').unwrap() - 1;
    // Played frames lag the sent ones by the frames waited at the start ('W').
    let lag = out.find('F').unwrap();
    let outage = &out[130 + lag..150 + lag];
    let outage_silence = outage.matches('S').count() as u64;
    assert!(
        outage.starts_with('C') && outage_silence >= 15,
        "a few frames of PLC, then silence: {outage}"
    );
    assert_eq!(
        st.silent_outage_samples / 960,
        outage_silence,
        "{out} {st:?}"
    );
    assert_eq!(
        st.silent_concealed_samples / 960,
        50 + after_last as u64 + outage_silence,
        "{out} {st:?}"
    );
    assert_eq!(
        (st.concealed_samples - st.silent_concealed_samples) / 960,
        20 - outage_silence,
        "{out} {st:?}"
    );
    assert_eq!(st.loss_concealed_samples() / 960, 20, "{out} {st:?}");
    assert_eq!(st.interruptions, 1);
    assert_eq!(st.packets_discarded, 0);
}

#[test]
fn only_audio_from_packets_counts_as_buffer_delay() {
    // As in WebRTC: concealed frames add to totalSamplesReceived and concealedSamples, not to
    // jitterBufferEmittedCount or jitterBufferDelay.
    let mut jb = JitterBuffer::new(static_buffer(40.0));
    for i in 0..100u32 {
        let now = i as f64 * 20.0;
        if i % 10 != 5 {
            jb.insert(now + 30.0, i as u16, i * 960, vec![1]);
        }
        jb.pull(now + 45.0);
    }
    let st = jb.stats();
    let concealed = st.concealed_samples - st.silent_concealed_samples;
    assert_eq!(concealed / 960, 10, "{st:?}");
    assert_eq!(
        st.jitter_buffer_emitted_count + concealed,
        st.total_samples_received
    );
    assert!((st.mean_delay_ms() - 55.0).abs() < 1e-6, "{st:?}");
}

#[test]
fn a_route_change_breaks_a_static_schedule_but_not_the_adaptive_buffer() {
    // 4G handover: the path gets 80 ms longer for 20 s. A static 80 ms schedule loses the
    // packets that come later than it allows; the adaptive buffer follows the new path.
    let (fixed, _) = simulate(Profile::HANDOVER_4G, static_buffer(80.0), 60, 11);
    let (adaptive, played) = simulate(
        Profile::HANDOVER_4G,
        BufferConfig {
            use_fec: false,
            ..BufferConfig::default()
        },
        60,
        11,
    );
    assert!(played.windows(2).all(|w| w[1] > w[0]));
    assert!(
        adaptive.concealment_ratio() * 3.0 < fixed.concealment_ratio(),
        "adaptive {:?} vs static {:?}",
        adaptive,
        fixed
    );
    assert!(fixed.packets_discarded > 50, "{fixed:?}");
}

#[test]
fn an_averaged_level_stretches_less_on_jittery_paths() {
    // The buffer alone (whole-frame stretching, no caller queue): averaging the level before
    // deciding trims the stretching by about a quarter here for a little less delay. In
    // lodge-client, which stretches by pitch periods and queues the rest, the averaged level
    // matters more (client/src/playout.rs tests, docs/neteq/report.md).
    let instantaneous = BufferConfig {
        level_filter_frames: 1,
        ..BufferConfig::default()
    };
    let stretched =
        |s: &JitterStats| s.inserted_samples_for_deceleration + s.removed_samples_for_acceleration;
    for p in [Profile::BUSY_WIFI, Profile::HANDOVER_4G] {
        let (avg, _) = simulate(p.clone(), BufferConfig::default(), 60, 7);
        let (inst, _) = simulate(p.clone(), instantaneous, 60, 7);
        eprintln!(
            "{:12} averaged: stretched {} samples, {:.1} ms, {:.2}% | instantaneous: {} samples, {:.1} ms, {:.2}%",
            p.name,
            stretched(&avg),
            avg.mean_delay_ms(),
            avg.concealment_ratio() * 100.0,
            stretched(&inst),
            inst.mean_delay_ms(),
            inst.concealment_ratio() * 100.0
        );
        assert!(
            stretched(&avg) * 5 < stretched(&inst) * 4,
            "{}: a fifth less at least",
            p.name
        );
        assert!(avg.mean_delay_ms() < inst.mean_delay_ms(), "{}", p.name);
        assert!(
            avg.concealment_ratio() <= inst.concealment_ratio() + 0.0005,
            "{}: concealment within 0.05 points",
            p.name
        );
    }
}

/// The level a caller can read after each pull: what is held beyond the frame about to play,
/// the caller's queue included, against the target; nothing before playout starts.
#[test]
fn the_level_over_target_counts_the_callers_queue() {
    let run = |queued_ms: f64| -> Vec<Option<f64>> {
        let mut jb = JitterBuffer::new(BufferConfig::default());
        jb.pull(0.0);
        let mut seen = vec![jb.level_over_target_ms()];
        // Four frames at once, then one every 20 ms: a level of about three frames.
        for i in 0..4u32 {
            jb.insert(0.0, i as u16, i * 960, vec![7; 40]);
        }
        for t in 0..50u32 {
            let now = t as f64 * 20.0 + 1.0;
            jb.insert(now, (t + 4) as u16, (t + 4) * 960, vec![7; 40]);
            jb.set_queued_ms(queued_ms);
            jb.pull(now);
            seen.push(jb.level_over_target_ms());
        }
        seen
    };
    let (bare, queued) = (run(0.0), run(7.0));
    assert_eq!(bare[0], None, "nothing before playout starts");
    let first = 1;
    for (a, b) in bare.iter().zip(&queued).skip(first) {
        let (a, b) = (a.expect("playing"), b.expect("playing"));
        // The queue adds to the level one for one (the target does not depend on it).
        assert!((b - a - 7.0).abs() < 1e-9, "{a} {b}");
    }
    // Two frames over its target for good (speech is dropped only 2.5 frames over): the
    // excess a caller's level moves give back.
    assert!(bare[10..].iter().all(|a| a.unwrap() >= 39.0), "{bare:?}");
}
