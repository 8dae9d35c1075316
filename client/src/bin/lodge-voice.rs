//! `lodge-voice`: join a voice channel from the command line with `lodge-client`. Play a tone
//! or a WAV file, record the mix and each speaker to WAV files, print live call figures. For
//! bots, tests and support ("what does the channel sound like from here?").

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use lodge_client::audio_io::{NullSink, Silence, Sink, Source, Tee, Tone, WavRecorder, WavSource};
use lodge_client::{Call, CallStats, CryptoMode, JoinOptions};

#[derive(Parser, Debug)]
#[command(
    name = "lodge-voice",
    version,
    about = "Join a Lodge voice channel: play a tone or a WAV file, record each speaker, print live call figures",
    long_about = "Join a Lodge voice channel as a native (UDP mode) client.\n\n\
        It logs in with a token, joins the channel, sends a tone, a WAV file or nothing, plays \
        out everyone else through Lodge's adaptive jitter buffer, and can record the mix and \
        each speaker to WAV files (user-<id>.wav). Live figures are printed every few \
        seconds. Ctrl-C leaves the channel cleanly.\n\n\
        With a build that has sound devices (--features sound-card), --microphone and \
        --speakers make it a voice chat client.\n\n\
        Example:\n  lodge-voice --url http://127.0.0.1:8080 --token \"$TOKEN\" \\\n    \
        --guild 123 --channel 456 --tone 440 --record ./heard --duration 30"
)]
struct Args {
    /// The server's address: http://HOST:PORT, or https://HOST for a node behind TLS (its
    /// own --tls-cert, or a proxy); the gateways are then reached over wss://.
    #[arg(long, env = "LODGE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A PEM file of CA certificates to trust besides the public web roots, for a server whose
    /// certificate a private CA signed.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The Authorization value: a user token (from /auth/register or /auth/login) or "Bot <token>".
    #[arg(
        long,
        env = "LODGE_TOKEN",
        hide_env_values = true,
        required_unless_present = "list_devices",
        default_value = ""
    )]
    token: String,
    /// The guild (server) id.
    #[arg(long, required_unless_present = "list_devices", default_value = "")]
    guild: String,
    /// The voice channel id.
    #[arg(long, required_unless_present = "list_devices", default_value = "")]
    channel: String,
    /// Send a sine tone of this frequency (Hz).
    #[arg(long, conflicts_with_all = ["play", "microphone"])]
    tone: Option<f32>,
    /// Send the microphone (the default input device, or --input-device). Needs a build with
    /// `--features sound-card`.
    #[arg(long, conflicts_with = "play")]
    microphone: bool,
    /// Play the call on the speakers (the default output device, or --output-device). Needs a
    /// build with `--features sound-card`.
    #[arg(long)]
    speakers: bool,
    /// The input device for --microphone, by name (see --list-devices).
    #[arg(long, requires = "microphone")]
    input_device: Option<String>,
    /// The output device for --speakers, by name (see --list-devices).
    #[arg(long, requires = "speakers")]
    output_device: Option<String>,
    /// List the sound devices and exit.
    #[arg(long, exclusive = true)]
    list_devices: bool,
    /// Send this WAV file (16-bit PCM, any rate, mono or stereo).
    #[arg(long)]
    play: Option<PathBuf>,
    /// Start the file again when it ends.
    #[arg(long = "loop", requires = "play")]
    looped: bool,
    /// Record the mix (mix.wav) and each speaker (user-<id>.wav) into this directory.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Leave after this many seconds (default: stay until Ctrl-C, or until the file ends).
    #[arg(long)]
    duration: Option<f64>,
    /// Transport encryption to ask for.
    #[arg(long, value_enum, default_value_t = Mode::Aes)]
    mode: Mode,
    /// Join without DAVE (end-to-end encryption). The call then runs with transport encryption
    /// only while this client is in it, and channels that require DAVE refuse it. By default
    /// lodge-voice takes part in DAVE and prints the call's privacy code, which members compare
    /// to know no one else holds the keys.
    #[arg(long)]
    no_dave: bool,
    /// Join muted.
    #[arg(long)]
    mute: bool,
    /// Join deafened.
    #[arg(long)]
    deaf: bool,
    /// Send only while the voice activity detector hears speech (for files of speech).
    #[arg(long)]
    vad: bool,
    /// Seconds between live figure lines (0: none).
    #[arg(long, default_value_t = 2.0)]
    stats_every: f64,
    /// Send media through this UDP relay (e.g. `lodge-load relay`, an impairment proxy in front
    /// of the node) instead of straight to the node.
    #[arg(long)]
    via: Option<std::net::SocketAddr>,
    /// On leaving, write the final figures as JSON here: per speaker, under WebRTC's getStats
    /// names (jitterBufferDelay, concealedSamples, ...), for side-by-side comparisons.
    #[arg(long)]
    stats_json: Option<PathBuf>,
    /// Opus bitrate in bits per second to start at. The node's receiver reports then move it
    /// (and FEC) with the loss and round trip on the way up, between 8 and 64 kbps.
    #[arg(long, default_value_t = 32_000)]
    bitrate: u32,
    /// Keep the bitrate and FEC as given instead of adapting them to the receiver reports.
    #[arg(long)]
    fixed_bitrate: bool,
    /// Play out on the jitter buffer's delay quantile alone, without weighing delay against
    /// late packets by the measured round trip to the node (the default uses half of it as
    /// the path's one-way delay). For comparisons.
    #[arg(long)]
    playout_ignores_rtt: bool,
    /// Take commands on standard input, one per line, while in the call: mute, unmute, deaf,
    /// undeaf, rebind (a new local port, as after a network change), volume USER GAIN,
    /// ptt press|release|off, stats (one line `@@ {json}`, the --stats-json figures), leave.
    /// Each is answered with `ok: <command>` or `error: <why>`. For scripts and bots.
    #[arg(long)]
    commands: bool,
}

/// One line of `--commands` input, carried out on `call`: the answer to print, and whether to
/// leave.
fn command(call: &Call, line: &str) -> (String, bool) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let done = |r: Result<(), lodge_client::ClientError>| match r {
        Ok(()) => format!("ok: {}", words.join(" ")),
        Err(e) => format!("error: {e}"),
    };
    let answer = match words.as_slice() {
        [] => return (String::new(), false),
        ["mute"] => done(call.set_mute(true)),
        ["unmute"] => done(call.set_mute(false)),
        ["deaf"] => done(call.set_deaf(true)),
        ["undeaf"] => done(call.set_deaf(false)),
        ["rebind"] => done(call.rebind()),
        ["ptt", "press"] => done(call.set_push_to_talk(Some(true))),
        ["ptt", "release"] => done(call.set_push_to_talk(Some(false))),
        ["ptt", "off"] => done(call.set_push_to_talk(None)),
        ["volume", user, gain] => match (user.parse::<u64>(), gain.parse::<f32>()) {
            (Ok(u), Ok(g)) if (0.0..=4.0).contains(&g) => done(call.set_volume(u, g)),
            _ => "error: volume takes a user id and a gain from 0 to 4".into(),
        },
        ["stats"] => format!("@@ {}", stats_json(&call.stats())),
        ["leave"] => return ("ok: leave".into(), true),
        _ => format!(
            "error: unknown command {line:?} (mute, unmute, deaf, undeaf, rebind, \
             volume USER GAIN, ptt press|release|off, stats, leave)"
        ),
    };
    (answer, false)
}

/// Standard input's lines, read on a thread of their own (a closed input ends the stream).
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// aead_aes256_gcm_rtpsize
    Aes,
    /// aead_xchacha20_poly1305_rtpsize
    Xchacha,
}

fn print_stats(s: &CallStats, secs: f64) {
    println!(
        "[{secs:6.1} s] sent {} packets, received {} ({} undecryptable, {} DAVE dropped), {} speaker(s)",
        s.packets_sent,
        s.packets_received,
        s.packets_undecryptable,
        s.packets_dave_dropped,
        s.speakers.iter().filter(|x| !x.left).count()
    );
    if let Some(d) = &s.dave {
        let e2ee = match (d.protocol_version, d.in_group, &d.privacy_code) {
            (0, ..) => "transport encryption only (someone in the call has no DAVE)".to_string(),
            (_, true, Some(code)) => format!(
                "end-to-end encrypted (DAVE), privacy code {}",
                grouped(code)
            ),
            _ => "end-to-end encrypted call (DAVE): joining its group, nothing sent until then"
                .into(),
        };
        println!("           {e2ee}");
    }
    if s.packets_sent > 0 {
        let up = match &s.remote_inbound {
            Some(r) => format!(
                "uplink loss {:.1}% ({} lost), jitter {:.1} ms, RTT {}",
                r.fraction_lost * 100.0,
                r.packets_lost,
                r.jitter_ms,
                r.round_trip_time_ms
                    .map(|t| format!("{t:.0} ms"))
                    .unwrap_or_else(|| "?".into())
            ),
            None => "no receiver report yet".into(),
        };
        println!(
            "           sending at {} kbps, FEC {}: {up}",
            s.target_bitrate_bps / 1000,
            if s.fec {
                format!("on ({}%)", s.expected_loss_pct)
            } else {
                "off".into()
            }
        );
    }
    for sp in &s.speakers {
        let j = &sp.jitter;
        let delay_ms = if j.jitter_buffer_emitted_count > 0 {
            j.jitter_buffer_delay / j.jitter_buffer_emitted_count as f64 * 1e3
        } else {
            0.0
        };
        // Audio made up for lost or late packets, however it played (not a sender's pauses).
        let concealed = j.concealment_ratio() * 100.0;
        let mut who = sp
            .user
            .map(|u| format!("user {u}"))
            .unwrap_or_else(|| format!("ssrc {}", sp.ssrc));
        if sp.left {
            who.push_str(" (left)");
        }
        // Decoded audio's wait for its output tick, after the playout delay.
        let output_ms = sp.queue_delay_s / sp.queue_samples.max(1) as f64 * 1e3;
        println!(
            "           {who}: {} packets, playout delay {delay_ms:.0} ms (target {:.0}) + {output_ms:.0} ms to the output, concealed {concealed:.1}%, FEC {}, discarded {}",
            j.packets_received, sp.target_delay_ms, j.fec_packets_received, j.packets_discarded
        );
    }
}

/// A privacy code as it is shown to people: groups of five digits.
fn grouped(code: &str) -> String {
    let digits: Vec<char> = code.chars().collect();
    digits
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The final figures, per speaker, under getStats names (as an inbound-rtp audio stream).
fn stats_json(s: &CallStats) -> serde_json::Value {
    let speakers: Vec<_> = s
        .speakers
        .iter()
        .map(|sp| {
            let j = &sp.jitter;
            serde_json::json!({
                "ssrc": sp.ssrc,
                "userId": sp.user.map(|u| u.to_string()),
                "packetsReceived": j.packets_received,
                "packetsDiscarded": j.packets_discarded,
                "fecPacketsReceived": j.fec_packets_received,
                "jitterBufferDelay": j.jitter_buffer_delay,
                "jitterBufferTargetDelay": j.jitter_buffer_target_delay,
                "jitterBufferEmittedCount": j.jitter_buffer_emitted_count,
                "totalSamplesReceived": j.total_samples_received,
                "concealedSamples": j.concealed_samples,
                "silentConcealedSamples": j.silent_concealed_samples,
                // Not a W3C name: the part of silentConcealedSamples played through lost audio.
                "silentOutageSamples": j.silent_outage_samples,
                "concealmentEvents": j.concealment_events,
                "insertedSamplesForDeceleration": j.inserted_samples_for_deceleration,
                "removedSamplesForAcceleration": j.removed_samples_for_acceleration,
                "targetDelayMs": sp.target_delay_ms,
                // Not a W3C name: decoded audio's wait for its 10 ms tick, summed per sample
                // (s); jitterBufferDelay leaves it out, as WebRTC's does.
                "lodgeQueueDelay": sp.queue_delay_s,
                "lodgeQueueSamples": sp.queue_samples,
                // Not a W3C name: times the playout moved its decisions a tick earlier.
                "lodgePhaseShifts": sp.phase_shifts,
                "left": sp.left,
            })
        })
        .collect();
    serde_json::json!({
        "packetsSent": s.packets_sent,
        "packetsReceived": s.packets_received,
        "packetsUndecryptable": s.packets_undecryptable,
        "packetsDaveDropped": s.packets_dave_dropped,
        "framesHeldForDave": s.frames_held_for_dave,
        "dave": s.dave.as_ref().map(|d| serde_json::json!({
            "protocolVersion": d.protocol_version,
            "inGroup": d.in_group,
            "epoch": d.epoch,
            "privacyCode": d.privacy_code,
            "framesEncrypted": d.frames_encrypted,
            "framesDecrypted": d.frames_decrypted,
            "framesPassedPlain": d.frames_passed_plain,
            "invalidCommits": d.invalid_commits,
            "transitionsExecuted": d.transitions_executed,
        })),
        "targetBitrate": s.target_bitrate_bps,
        "fec": s.fec,
        "remoteInbound": s.remote_inbound.map(|r| serde_json::json!({
            "fractionLost": r.fraction_lost,
            "packetsLost": r.packets_lost,
            "jitter": r.jitter_ms / 1e3,
            "roundTripTime": r.round_trip_time_ms.map(|t| t / 1e3),
            "reportsReceived": r.reports_received,
        })),
        "speakers": speakers,
    })
}

#[cfg(feature = "sound-card")]
mod devices {
    use anyhow::Result;
    use lodge_client::audio_io::{Sink, Source};
    use lodge_client::sound_card::{self, MicSource, SpeakerSink};

    pub fn list() -> Result<()> {
        let (inputs, outputs) = sound_card::devices()?;
        for (what, list) in [("input", inputs), ("output", outputs)] {
            println!("{what} devices:");
            if list.is_empty() {
                println!("  (none found)");
            }
            for d in list {
                println!("  {d}");
            }
        }
        Ok(())
    }

    pub fn microphone(name: Option<&str>) -> Result<Box<dyn Source>> {
        let m = MicSource::open(name)?;
        println!("microphone: {}", m.device);
        Ok(Box::new(m))
    }

    pub fn speakers(name: Option<&str>) -> Result<Box<dyn Sink>> {
        let s = SpeakerSink::open(name)?;
        println!("speakers: {}", s.device);
        Ok(Box::new(s))
    }
}

#[cfg(not(feature = "sound-card"))]
mod devices {
    use anyhow::{bail, Result};
    use lodge_client::audio_io::{Sink, Source};

    const HOW: &str = "this lodge-voice was built without sound devices: build it with `cargo build --release -p lodge-client --features sound-card` (needs libasound2-dev on Linux)";

    pub fn list() -> Result<()> {
        bail!(HOW)
    }
    pub fn microphone(_: Option<&str>) -> Result<Box<dyn Source>> {
        bail!(HOW)
    }
    pub fn speakers(_: Option<&str>) -> Result<Box<dyn Sink>> {
        bail!(HOW)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    if a.list_devices {
        return devices::list();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "lodge_client=info".into()),
        )
        .init();
    let mut o = JoinOptions::new(&a.url, &a.token, &a.guild, &a.channel);
    o.ca_file = a.ca_file.clone();
    o.mode = match a.mode {
        Mode::Aes => CryptoMode::ALL[0],
        Mode::Xchacha => CryptoMode::ALL[1],
    };
    o.self_mute = a.mute;
    o.self_deaf = a.deaf;
    o.dave = !a.no_dave;
    o.engine.voice_activity = a.vad;
    o.media_via = a.via;
    o.engine.encoder.bitrate_bps = a.bitrate;
    o.engine.adaptive_bitrate = !a.fixed_bitrate;
    o.engine.playout_from_rtt = !a.playout_ignores_rtt;
    o.engine
        .encoder
        .validate()
        .context("--bitrate must be 6000..=510000")?;
    let mut file_secs = None;
    let source: Box<dyn Source> = match (&a.tone, &a.play) {
        _ if a.microphone => devices::microphone(a.input_device.as_deref())?,
        (Some(hz), _) => {
            if !(20.0..=20_000.0).contains(hz) {
                bail!("--tone must be 20..=20000 Hz (got {hz})");
            }
            Box::new(Tone::new(*hz, 8_000.0))
        }
        (None, Some(p)) => {
            let s = WavSource::open(p, a.looped)
                .with_context(|| format!("{} is not a usable WAV file", p.display()))?;
            if !a.looped {
                file_secs = Some(s.len_secs());
            }
            Box::new(s)
        }
        (None, None) => {
            // A listener: voice activity detection on silence sends nothing.
            o.engine.voice_activity = true;
            Box::new(Silence)
        }
    };
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(dir) = &a.record {
        sinks.push(Box::new(WavRecorder::create(dir).with_context(|| {
            format!("cannot record into {}", dir.display())
        })?));
    }
    if a.speakers {
        sinks.push(devices::speakers(a.output_device.as_deref())?);
    }
    let sink: Box<dyn Sink> = match sinks.len() {
        0 => Box::new(NullSink),
        1 => sinks.pop().expect("one"),
        _ => Box::new(Tee(sinks)),
    };
    let call = Call::join(o, source, sink).await.with_context(|| {
        format!(
            "joining channel {} of guild {} at {}",
            a.channel, a.guild, a.url
        )
    })?;
    println!(
        "joined as user {} (ssrc {}); Ctrl-C to leave",
        call.user_id(),
        call.ssrc()
    );
    let started = tokio::time::Instant::now();
    let limit = a.duration.or(file_secs.map(|s| s + 0.5));
    let mut every = tokio::time::interval(Duration::from_secs_f64(a.stats_every.max(0.2)));
    every.tick().await;
    let mut lines = a.commands.then(stdin_lines);
    loop {
        let left =
            limit.map(|l| Duration::from_secs_f64((l - started.elapsed().as_secs_f64()).max(0.0)));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { println!("leaving"); break; }
            why = call.ended() => bail!("the call ended: {why}"),
            _ = async { tokio::time::sleep(left.unwrap_or(Duration::MAX)).await }, if left.is_some() => break,
            _ = every.tick(), if a.stats_every > 0.0 => print_stats(&call.stats(), started.elapsed().as_secs_f64()),
            line = async { lines.as_mut().expect("guarded").recv().await }, if lines.is_some() => {
                let Some(line) = line else {
                    // Input closed: no more commands, the call goes on.
                    lines = None;
                    continue;
                };
                let (answer, leave) = command(&call, &line);
                if !answer.is_empty() {
                    println!("{answer}");
                }
                if leave {
                    break;
                }
            }
        }
    }
    let last = call.stats();
    call.leave().await.context("the call ended with an error")?;
    print_stats(&last, started.elapsed().as_secs_f64());
    if let Some(p) = &a.stats_json {
        std::fs::write(p, stats_json(&last).to_string())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(dir) = &a.record {
        println!("recordings in {}", dir.display());
    }
    Ok(())
}
