//! Sound devices (feature `sound-card`) on ALSA's `null` plugin, made the default by a private
//! `~/.asoundrc`, so no sound card is needed. A test binary of its own: it sets `HOME` for
//! ALSA, which must not race with other tests' threads.
#![cfg(feature = "sound-card")]

use std::sync::atomic::Ordering;

use lodge_client::audio_io::{Sink, Source};
use lodge_client::sound_card::{devices, MicSource, SpeakerSink};

#[test]
fn speakers_and_microphone_run_on_alsas_null_device() {
    let home = std::env::temp_dir().join(format!("lodge-alsa-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join(".asoundrc"), "pcm.!default { type null }\n").unwrap();
    // The only test in this process, before its first ALSA call (ALSA reads its
    // configuration once).
    std::env::set_var("HOME", &home);
    let (_, outputs) = devices().unwrap();
    assert!(outputs.iter().any(|d| d == "default"), "{outputs:?}");
    let mut sink = SpeakerSink::open(None).unwrap();
    for _ in 0..10 {
        sink.mixed(&[1000; 960]);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sink.queued() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(sink.queued(), 0, "the device took the 200 ms queued");
    assert_eq!(sink.stats().overflow.load(Ordering::Relaxed), 0);

    let mut mic = MicSource::open(None).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        mic.stats().samples.load(Ordering::Relaxed) >= 960,
        "the device delivered samples"
    );
    let mut f = [7i16; 960];
    assert!(mic.read(&mut f));
    assert!(f.iter().all(|s| *s == 0), "null captures silence");

    let e = SpeakerSink::open(Some("no such device"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("no such device") && e.contains("--list-devices"),
        "{e}"
    );
    drop((sink, mic));
    std::fs::remove_dir_all(home).unwrap();
}
