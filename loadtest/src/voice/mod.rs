//! `lodge-load voice`: N WebRTC callers in R voice channels through the real API.
//!
//! Setup registers one account per caller, creates a guild with R voice channels and joins
//! everyone. Callers then join at the given rate, each exactly as a client: gateway op 4, voice
//! gateway, a str0m WebRTC client on its own UDP socket (spread over 127.0.0.x). The first S
//! callers of each channel speak (talk spurts of real Opus speech with the audio level); the rest
//! listen. Every caller measures what it receives; a share of them ("probes") also run the
//! jitter buffer and decode. A live line shows progress; the end prints a Markdown report and
//! writes JSON.

mod due;
mod frame_clock;
mod janus;
mod media;
pub mod merge;
mod plot;
mod proxy;
mod report;
mod signal;
mod speaker_runtime;
mod talk;
mod tally;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lodge_codec::audio::rfc6464_level;
use lodge_codec::{EncoderSettings, OpusEncoder};
use serde_json::json;
use tokio::sync::watch;

use crate::api::Api;
use crate::nodes::Nodes;
use crate::shard::Shard;
use frame_clock::FrameClock;
use media::{CallerStats, Client, Shared, Speaking};
use speaker_runtime::SpeakerRuntime;
use talk::TalkParams;
use tally::Tally;

/// What carries the callers' media to a Lodge node.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// WebRTC (str0m: ICE, DTLS-SRTP, 1 send + K receive lines), as the browser client.
    Webrtc,
    /// Discord's native UDP voice with aead_aes256_gcm_rtpsize, as game clients and bots
    /// (@discordjs/voice, songbird) speak it: much cheaper per caller than WebRTC.
    Udp,
    /// Native UDP voice with aead_xchacha20_poly1305_rtpsize.
    UdpXchacha,
}

impl Transport {
    fn native_mode(self) -> Option<lodge_sfu::native::CryptoMode> {
        use lodge_sfu::native::CryptoMode;
        match self {
            Transport::Webrtc => None,
            Transport::Udp => Some(CryptoMode::Aes256GcmRtpsize),
            Transport::UdpXchacha => Some(CryptoMode::XChaCha20Poly1305Rtpsize),
        }
    }
}

/// Which server the callers call.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Lodge node (REST, gateway, voice gateway; `--url` is its HTTP base).
    Lodge,
    /// A Janus VideoRoom through Janus's HTTP API (`--url` is e.g. http://10.77.0.1:8088/janus):
    /// the baseline. One audio-only room per channel; listeners subscribe to every speaker of
    /// their room (no slots), so compare with one speaker per channel.
    Janus,
}

#[derive(Args, Clone)]
pub struct VoiceArgs {
    /// Base URL of the server: a Lodge node, or Janus's HTTP API path with `--target janus`.
    /// Give it several times (or comma-separated) to load a cluster of Lodge nodes: caller k
    /// (in join order) registers, joins the guild and connects its gateway through node k mod N
    /// (that node's own GET /gateway), and the report adds a per-node table.
    #[arg(
        long = "url",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub urls: Vec<String>,
    /// The server under test.
    #[arg(long, value_enum, default_value_t = Target::Lodge)]
    pub target: Target,
    /// What carries the callers' media (Lodge only).
    #[arg(long, value_enum, default_value_t = Transport::Webrtc)]
    pub transport: Transport,
    /// Callers in total.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub callers: usize,
    /// Voice channels the callers are spread over (round robin).
    #[arg(long, short = 'c', default_value_t = 1)]
    pub channels: usize,
    /// Speakers per channel (the rest listen).
    #[arg(long, short = 's', default_value_t = 2)]
    pub speakers: usize,
    /// Speaker slots each caller receives (K).
    #[arg(long, default_value_t = 3)]
    pub slots: usize,
    /// Callers joining per second.
    #[arg(long, default_value_t = 20.0)]
    pub join_rate: f64,
    /// Seconds of measurement once every caller has joined.
    #[arg(long, short = 'd', default_value_t = 20)]
    pub duration: u64,
    /// Share of listeners that also run the jitter buffer and Opus decode (0..1).
    #[arg(long, default_value_t = 0.1)]
    pub probes: f64,
    /// Mean talk spurt, ms (exponential).
    #[arg(long, default_value_t = 1500)]
    pub talk_ms: u64,
    /// Mean pause between spurts, ms (exponential).
    #[arg(long, default_value_t = 1000)]
    pub pause_ms: u64,
    /// Seed of the talk model and the impairment.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Impair every caller's path to the node with this profile (wired, good_wifi, busy_wifi,
    /// 4g_handover, congested_3g, bursty_10, bursty_3), through a userspace UDP proxy per caller.
    #[arg(long)]
    pub profile: Option<String>,
    /// Speech sample (16-bit PCM WAV); default: synthesised with espeak-ng.
    #[arg(long)]
    pub speech: Option<PathBuf>,
    /// Callers per source address; addresses count up from `--source-ip`.
    #[arg(long, default_value_t = 1000)]
    pub callers_per_ip: usize,
    /// First source address of the callers' media sockets (the next ones follow in its /24).
    /// Inside a network namespace use the veth address the server can reach.
    #[arg(long, default_value = "127.0.0.2")]
    pub source_ip: Ipv4Addr,
    /// Registrations, invite joins and signaling handshakes run this many at a time.
    #[arg(long, default_value_t = 16)]
    pub parallelism: usize,
    /// PID of a local node: its CPU seconds (from /proc) go into the report. With several
    /// --url, give one PID per URL in the same order (repeated or comma-separated): the report
    /// then shows each node's CPU and CPU per forwarded packet, and their sum.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Run shard I of N (0-based, e.g. 2/8) of the scenario the other options describe, so that
    /// N generator machines together run it without sharing a caller or a channel: shard I
    /// takes the channels whose index is I mod N and the callers of those channels, with the
    /// caller numbers (in their user names), speaker/probe roles and seeds they have in the
    /// unsharded run, in a guild of its own, joining at its share of --join-rate. `lodge-load merge` combines the shards'
    /// JSON reports. N may not exceed --channels.
    #[arg(long, default_value_t = Shard::WHOLE)]
    pub shard: Shard,
    /// Write the JSON report here (the Markdown report goes to stdout).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write report.md, report.json and PNG plots (mouth-to-ear CDF, MOS distribution, packets
    /// per second over time, join times) into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Fail (exit 1) unless every caller joined, nothing failed, and every listener heard its
    /// channel's speakers.
    #[arg(long)]
    pub strict: bool,
    /// Region hints for a Lodge cluster, comma-separated: caller i asks for region
    /// i mod N in its voice state update, so the origin places it on an edge of that region
    /// ("origin" or an unknown region keeps it on the origin).
    #[arg(long, value_delimiter = ',')]
    pub regions: Vec<String>,
    /// The last K callers (in join order) join only once the file `--go-file` exists, e.g.
    /// after a test has restarted something, so they join a call already under way.
    #[arg(long, default_value_t = 0, requires = "go_file")]
    pub late: usize,
    /// The file whose appearance lets the `--late` callers join.
    #[arg(long)]
    pub go_file: Option<PathBuf>,
    /// Do not resume a caller's gateway session (op 6 at READY's resume_gateway_url) when its
    /// gateway connection drops; count the drop as the caller's error instead. By default a
    /// caller resumes, as real clients do, and follows the VOICE_SERVER_UPDATE it then gets.
    #[arg(long)]
    pub no_resume: bool,
    /// Join an existing guild through this invite code instead of creating one, and call in
    /// the voice channels given by --channel-id: the crowd then shares a call with other
    /// clients (a browser, lodge-voice). Not with --shard or --target janus.
    #[arg(long, requires = "channel_id")]
    pub invite: Option<String>,
    /// With --invite: the voice channel ids to call in (one per --channels; repeated or
    /// comma-separated).
    #[arg(long, value_delimiter = ',', requires = "invite")]
    pub channel_id: Vec<String>,
}

#[derive(Args, Clone)]
pub struct RelayArgs {
    /// Address to listen on (the client side), e.g. 127.0.0.5:0 (port 0 picks one).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where to relay to (the server side).
    #[arg(long)]
    pub to: SocketAddr,
    /// Impairment profile (a caller profile or trunk_bursty_5).
    #[arg(long, default_value = "trunk_bursty_5")]
    pub profile: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Impair RTP only (loss, jitter, bandwidth cap) and only delay everything else (DTLS, STUN,
    /// RTCP, keepalives) by the profile's base delay, so two relays with one seed carrying the
    /// same RTP stream impair it identically, and a round trip measured over RTCP still sees
    /// the path's length.
    #[arg(long)]
    pub rtp_only: bool,
}

/// `lodge-load relay`: impair one UDP flow until Ctrl-C. Prints the bound address first.
pub async fn relay(a: RelayArgs) -> Result<bool> {
    let p = lodge_jitter::Profile::by_name(&a.profile).with_context(|| {
        format!(
            "unknown --profile {:?}; known: trunk_bursty_5 and the caller profiles",
            a.profile
        )
    })?;
    let (stop_tx, stop) = watch::channel(false);
    let addr = proxy::start(a.listen, a.to, p.clone(), a.seed, a.rtp_only, stop).await?;
    println!(
        "relay {addr} -> {} ({}, expected loss {:.1}%)",
        a.to,
        p.name,
        p.expected_loss() * 100.0
    );
    tokio::signal::ctrl_c().await?;
    let _ = stop_tx.send(true);
    Ok(true)
}

fn profile(a: &VoiceArgs) -> Result<Option<lodge_jitter::Profile>> {
    a.profile
        .as_deref()
        .map(|n| {
            lodge_jitter::Profile::by_name(n).with_context(|| {
                let names: Vec<&str> = lodge_jitter::Profile::ALL.iter().map(|p| p.name).collect();
                format!("unknown --profile {n:?}; known: {}", names.join(", "))
            })
        })
        .transpose()
}

fn validate(a: &VoiceArgs) -> Result<()> {
    profile(a)?;
    let urls = crate::nodes::normalize(&a.urls)?;
    crate::nodes::check_pids(&a.server_pid, urls.len())?;
    if a.target == Target::Janus && (urls.len() > 1 || !a.shard.is_whole()) {
        bail!("--target janus takes one --url and no --shard (its rooms are numbered per run)");
    }
    if a.shard.count > a.channels {
        bail!(
            "--shard {}: {} shards need at least as many --channels (a shard owns whole channels; there are {})",
            a.shard, a.shard.count, a.channels
        );
    }
    if a.callers == 0 || a.channels == 0 {
        bail!("--callers and --channels must be at least 1");
    }
    if a.invite.is_some() {
        if a.channel_id.len() != a.channels {
            bail!(
                "--invite: give one --channel-id per channel ({} given, --channels {})",
                a.channel_id.len(),
                a.channels
            );
        }
        if a.shard != Shard::WHOLE || matches!(a.target, Target::Janus) {
            bail!("--invite joins an existing Lodge guild: not with --shard or --target janus");
        }
    }
    if a.channels > a.callers {
        bail!(
            "--channels ({}) cannot exceed --callers ({}): a channel needs a caller",
            a.channels,
            a.callers
        );
    }
    let per_channel = a.callers / a.channels;
    if a.speakers > per_channel {
        bail!("--speakers ({}) is more than the {per_channel} callers each channel gets; lower it or add callers", a.speakers);
    }
    if !(1..=16).contains(&a.slots) {
        bail!("--slots must be 1..=16 (the voice gateway's limit)");
    }
    if !(a.join_rate > 0.0 && a.join_rate <= 1000.0) {
        bail!("--join-rate must be in (0, 1000] callers per second");
    }
    if !(0.0..=1.0).contains(&a.probes) {
        bail!("--probes is a share: 0..=1");
    }
    if a.callers_per_ip == 0 || a.callers_per_ip > 20_000 {
        bail!("--callers-per-ip must be 1..=20000 (each caller needs a local UDP port and two TCP connections)");
    }
    let mine = a.shard.callers(a.callers, a.channels).len();
    let ips = mine.div_ceil(a.callers_per_ip);
    let room = 255 - a.source_ip.octets()[3] as usize;
    if ips > room {
        bail!("{mine} callers at {} per address need {ips} source addresses; from --source-ip {} only {room} are left in its /24 (raise --callers-per-ip)", a.callers_per_ip, a.source_ip);
    }
    if a.transport != Transport::Webrtc && a.target == Target::Janus {
        bail!("--transport udp is Discord's native voice: Lodge only (Janus speaks WebRTC)");
    }
    if a.transport != Transport::Webrtc && a.profile.is_some() {
        bail!("--profile is not supported with --transport udp yet (the proxy sits on WebRTC's candidates)");
    }
    if a.target == Target::Janus && a.profile.is_some() {
        bail!("--profile is not supported with --target janus (the proxy rewrites Lodge's answer only)");
    }
    if a.talk_ms < 20 || a.pause_ms < 20 {
        bail!("--talk-ms and --pause-ms must be at least one frame (20 ms)");
    }
    if a.parallelism == 0 {
        bail!("--parallelism must be at least 1");
    }
    if a.late >= a.callers.max(1) {
        bail!(
            "--late ({}) must leave at least one caller joining first (--callers {})",
            a.late,
            a.callers
        );
    }
    Ok(())
}

/// Opus at 32 kbps, 20 ms, in-band FEC: the speech every speaker sends.
fn encode_speech(pcm: &[i16]) -> Result<Vec<(Vec<u8>, u8)>> {
    let mut enc = OpusEncoder::new(EncoderSettings {
        bitrate_bps: 32_000,
        fec: true,
        expected_loss_pct: 5,
        ..EncoderSettings::default()
    })?;
    pcm.chunks_exact(960)
        .map(|f| Ok((enc.encode(f)?.to_vec(), rfc6464_level(f))))
        .collect()
}

/// One reading at the edge of the measurement window.
struct Window {
    at: Instant,
    /// Each node's (RTP in, forwarded) counters, in `--url` order.
    nodes: Vec<Option<(u64, u64)>>,
    /// Each node's CPU seconds (empty without `--server-pid`).
    server_cpu: Vec<Option<f64>>,
    own_cpu: Option<f64>,
    rcvbuf_errors: Option<u64>,
    /// Whole-machine CPU jiffies (busy, total) from /proc/stat.
    machine: Option<(u64, u64)>,
    delivered: u64,
    /// Each node's cumulative forward-delay buckets (upper bound µs, count).
    delay_buckets: Vec<Vec<(u64, u64)>>,
}

impl Window {
    fn now(a: &VoiceArgs, metrics: &[Option<String>], shared: &Shared) -> Window {
        Window {
            at: Instant::now(),
            nodes: metrics
                .iter()
                .map(|m| m.as_deref().and_then(node_counters))
                .collect(),
            server_cpu: a.server_pid.iter().map(|&p| cpu_seconds(p)).collect(),
            own_cpu: cpu_seconds(std::process::id()),
            rcvbuf_errors: udp_rcvbuf_errors(),
            machine: machine_jiffies(),
            delivered: shared.rtp_in.load(Ordering::Relaxed),
            delay_buckets: metrics
                .iter()
                .map(|m| m.as_deref().map(node_delay_buckets).unwrap_or_default())
                .collect(),
        }
    }
}

/// The nodes' delay buckets added up (a cluster's histogram); empty unless every node has the
/// same buckets.
fn sum_buckets(nodes: &[Vec<(u64, u64)>]) -> Vec<(u64, u64)> {
    let Some(first) = nodes.first() else {
        return Vec::new();
    };
    let same = nodes
        .iter()
        .all(|n| n.len() == first.len() && n.iter().zip(first).all(|(x, y)| x.0 == y.0));
    if !same {
        return Vec::new();
    }
    first
        .iter()
        .enumerate()
        .map(|(i, &(le, _))| (le, nodes.iter().map(|n| n[i].1).sum()))
        .collect()
}

/// The sum of every element, or `None` if any is missing (or there are none).
fn sum_all<T: std::iter::Sum<T> + Copy>(v: &[Option<T>]) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    v.iter()
        .copied()
        .collect::<Option<Vec<T>>>()
        .map(|x| x.into_iter().sum())
}

/// Busy and total CPU time of the whole machine, in jiffies (/proc/stat's first line; idle and
/// iowait count as not busy).
fn machine_jiffies() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some((total - v[3] - v[4], total))
}

/// `(label value, sample value)` of every line of a metric family with one label: lines
/// starting `prefix` (e.g. `lodge_dropped_total{reason="`).
fn labelled<'m>(metrics: &'m str, prefix: &'m str) -> impl Iterator<Item = (&'m str, &'m str)> {
    metrics.lines().filter_map(move |l| {
        let (label, value) = l.strip_prefix(prefix)?.split_once("\"} ")?;
        Some((label, value.trim()))
    })
}

/// The node's cumulative forward-delay histogram buckets (`le` in µs, count); `+Inf` last, as
/// `u64::MAX`.
fn node_delay_buckets(metrics: &str) -> Vec<(u64, u64)> {
    labelled(metrics, "lodge_forward_delay_hist_seconds_bucket{le=\"")
        .filter_map(|(le, n)| {
            let le = if le == "+Inf" {
                u64::MAX
            } else {
                (le.parse::<f64>().ok()? * 1e6).round() as u64
            };
            Some((le, n.parse().ok()?))
        })
        .collect()
}

/// Delay quantiles over the window from two bucket readings (linear inside a bucket).
fn window_delay(start: &[(u64, u64)], end: &[(u64, u64)]) -> Option<report::WindowDelay> {
    if start.len() != end.len() || end.is_empty() {
        return None;
    }
    let diff: Vec<(u64, u64)> = start
        .iter()
        .zip(end)
        .map(|(a, b)| (b.0, b.1.saturating_sub(a.1)))
        .collect();
    let total = diff.last()?.1;
    if total == 0 {
        return None;
    }
    let quantile = |q: f64| -> Option<f64> {
        let want = q * total as f64;
        let (mut lo_bound, mut lo_count) = (0u64, 0u64);
        for &(le, c) in &diff {
            if c as f64 >= want {
                if le == u64::MAX {
                    return None; // beyond the last finite bucket
                }
                let span = (c - lo_count).max(1) as f64;
                let f = (want - lo_count as f64) / span;
                return Some((lo_bound as f64 + f * (le - lo_bound) as f64) / 1000.0);
            }
            (lo_bound, lo_count) = (le, c);
        }
        None
    };
    let within_1ms = diff.iter().find(|(le, _)| *le == 1_000).map(|(_, c)| *c)?;
    Some(report::WindowDelay {
        count: total,
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        p999_ms: quantile(0.999),
        within_1ms_pct: within_1ms as f64 / total as f64 * 100.0,
    })
}

struct Setup {
    guild: String,
    /// This shard's channels: the scenario's channel `c` is `channels[shard.local_channel(c)]`.
    channels: Vec<String>,
    /// (user id, token) per caller of this shard, in join order.
    callers: Vec<(u64, String)>,
    /// Each node's gateway URL, in `--url` order.
    gateway_urls: Vec<String>,
}

/// Accounts for this shard's callers (`plan`: their global indices; caller k registers and
/// joins through node k mod N), a guild with this shard's channels, and every node's gateway.
async fn setup(nodes: &Nodes, a: &VoiceArgs, plan: &[usize]) -> Result<Setup> {
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64 % 0xFFFF_FFFF)
            .unwrap_or(0)
    );
    let bar = ProgressBar::new(plan.len() as u64).with_style(ProgressStyle::with_template(
        "registering {bar:40} {pos}/{len} accounts",
    )?);
    let sem = Arc::new(tokio::sync::Semaphore::new(a.parallelism));
    let mut tasks = Vec::new();
    for (k, &i) in plan.iter().enumerate() {
        let (api, sem, bar, name) = (
            nodes.api(k).clone(),
            sem.clone(),
            bar.clone(),
            format!("lv{run_id}_{i}"),
        );
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            let (st, v) = api
                .call(
                    reqwest::Method::POST,
                    "/auth/register",
                    None,
                    Some(json!({ "username": name, "password": "load-test-password" })),
                )
                .await?;
            if st != 201 {
                bail!("registering a load-test account failed ({st}): {v}");
            }
            bar.inc(1);
            let id = v["user"]["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .context("user id in the register response")?;
            Ok((id, v["token"].as_str().context("token")?.to_string()))
        }));
    }
    let mut callers = Vec::new();
    for t in tasks {
        callers.push(t.await??);
    }
    bar.finish_and_clear();
    if let Some(code) = &a.invite {
        let guild = join_by_invite(nodes, &callers, code, &sem, 0).await?;
        return Ok(Setup {
            guild,
            channels: a.channel_id.clone(),
            callers,
            gateway_urls: gateway_urls(nodes).await?,
        });
    }
    let owner = callers[0].1.clone();
    let api = nodes.api(0);
    let (st, g) = api
        .call(
            reqwest::Method::POST,
            "/guilds",
            Some(&owner),
            Some(json!({ "name": format!("voice load {run_id}") })),
        )
        .await?;
    if st != 201 {
        bail!("creating the guild failed ({st}): {g}");
    }
    let guild = g["id"].as_str().context("guild id")?.to_string();
    let mut channels: Vec<String> = g["channels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] == 2)
        .filter_map(|c| c["id"].as_str().map(str::to_string))
        .take(1)
        .collect();
    let wanted = a.shard.channels(a.channels);
    while channels.len() < wanted.len() {
        let (st, c) = api
            .call(
                reqwest::Method::POST,
                &format!("/guilds/{guild}/channels"),
                Some(&owner),
                Some(json!({ "name": format!("Voice {}", wanted[channels.len()] + 1), "type": 2 })),
            )
            .await?;
        if st != 201 {
            bail!("creating a voice channel failed ({st}): {c}");
        }
        channels.push(c["id"].as_str().context("channel id")?.to_string());
    }
    let text = g["channels"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == 0)
        .and_then(|c| c["id"].as_str())
        .context("text channel")?
        .to_string();
    let (st, inv) = api
        .call(
            reqwest::Method::POST,
            &format!("/channels/{text}/invites"),
            Some(&owner),
            Some(json!({ "max_age": 3600 })),
        )
        .await?;
    if st != 200 && st != 201 {
        bail!("creating an invite failed ({st}): {inv}");
    }
    let code = inv["code"].as_str().context("invite code")?.to_string();
    join_by_invite(nodes, &callers, &code, &sem, 1).await?;
    Ok(Setup {
        guild,
        channels,
        callers,
        gateway_urls: gateway_urls(nodes).await?,
    })
}

/// Callers from `skip` on join the guild of invite `code` (caller k through node k mod N); the
/// guild's id.
async fn join_by_invite(
    nodes: &Nodes,
    callers: &[(u64, String)],
    code: &str,
    sem: &Arc<tokio::sync::Semaphore>,
    skip: usize,
) -> Result<String> {
    let mut tasks = Vec::new();
    for (k, (_, t)) in callers.iter().enumerate().skip(skip) {
        let (api, sem, t, code) = (
            nodes.api(k).clone(),
            sem.clone(),
            t.clone(),
            code.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            let (st, v) = api
                .call(
                    reqwest::Method::POST,
                    &format!("/invites/{code}"),
                    Some(&t),
                    None,
                )
                .await?;
            if st != 200 {
                bail!("joining the guild by invite {code} failed ({st}): {v}");
            }
            Ok(v["guild"]["id"].as_str().map(str::to_string))
        }));
    }
    let mut guild = None;
    for t in tasks {
        guild = guild.or(t.await??);
    }
    Ok(guild.unwrap_or_default())
}

/// Every node's gateway URL, in `--url` order.
async fn gateway_urls(nodes: &Nodes) -> Result<Vec<String>> {
    let mut urls = Vec::with_capacity(nodes.len());
    for node in &nodes.apis {
        let (_, gw) = node
            .call(reqwest::Method::GET, "/gateway", None, None)
            .await?;
        urls.push(format!(
            "{}?v=10&encoding=json",
            gw["url"]
                .as_str()
                .with_context(|| format!("gateway url from {}", node.base))?
        ));
    }
    Ok(urls)
}

/// Every node's Prometheus text, in `--url` order (`None` where it cannot be read).
async fn fetch_all_metrics(nodes: &Nodes, target: Target) -> Vec<Option<String>> {
    futures_util::future::join_all(nodes.apis.iter().map(|api| fetch_metrics(api, target))).await
}

/// The node's Prometheus text, or `None` when it cannot be read (or the target is Janus).
async fn fetch_metrics(api: &Api, target: Target) -> Option<String> {
    if target != Target::Lodge {
        return None;
    }
    let r = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .ok()?;
    r.text().await.ok()
}

/// (rtp received, rtp forwarded) from the node's metrics.
fn node_counters(metrics: &str) -> Option<(u64, u64)> {
    let get = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((
        get("lodge_rtp_received_total")?,
        get("lodge_rtp_forwarded_total")?,
    ))
}

/// The node's non-zero drop counters by reason (since it started).
fn node_drops(metrics: &str) -> Vec<(String, u64)> {
    labelled(metrics, "lodge_dropped_total{reason=\"")
        .filter_map(|(reason, n)| {
            let n = n.parse::<u64>().ok()?;
            (n > 0).then(|| (reason.to_string(), n))
        })
        .collect()
}

/// The node's receive → send delay quantiles (p50, p99, p99.9, max) in ms, since it started.
fn node_forward_delay(metrics: &str) -> Option<[f64; 4]> {
    let q = |quantile: &str| {
        labelled(metrics, "lodge_forward_delay_seconds{quantile=\"")
            .find(|(l, _)| *l == quantile)
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .map(|s| s * 1000.0)
    };
    Some([q("0.5")?, q("0.99")?, q("0.999")?, q("1")?])
}

/// The kernel's count of UDP datagrams dropped because a socket's receive buffer was full
/// (system-wide, /proc/net/snmp RcvbufErrors): on one machine, the sign that the generator or
/// the node could not keep up.
fn udp_rcvbuf_errors() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = s.lines().filter(|l| l.starts_with("Udp:"));
    let (head, vals) = (lines.next()?, lines.next()?);
    let i = head.split_whitespace().position(|k| k == "RcvbufErrors")?;
    vals.split_whitespace().nth(i)?.parse().ok()
}

/// Caller `i`'s media source address.
fn source_ip(a: &VoiceArgs, i: usize) -> IpAddr {
    let [p, q, r, last] = a.source_ip.octets();
    IpAddr::V4(Ipv4Addr::new(p, q, r, last + (i / a.callers_per_ip) as u8))
}

/// CPU seconds (user + system) of a local process, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SC_CLK_TCK is 100 on Linux for every architecture we run on.
    Some(ticks / 100.0)
}

pub async fn run(a: VoiceArgs) -> Result<bool> {
    validate(&a)?;
    for &pid in &a.server_pid {
        cpu_seconds(pid).with_context(|| {
            format!("cannot read /proc/{pid}/stat: is --server-pid a running local process?")
        })?;
    }
    let nodes = Nodes::new(&a.urls)?;
    let shard = a.shard;
    // This shard's callers by global index, in join order.
    let plan = shard.callers(a.callers, a.channels);
    let scratch = std::env::temp_dir().join(format!("lodge-load-speech-{}", std::process::id()));
    let (pcm, source) = crate::speech::load(60, a.speech.as_deref(), &scratch)?;
    let _ = std::fs::remove_dir_all(&scratch);
    let frames = encode_speech(&pcm)?;
    eprintln!(
        "speech: {source}; {} Opus frames, mean {:.0} bytes",
        frames.len(),
        frames.iter().map(|f| f.0.len()).sum::<usize>() as f64 / frames.len() as f64
    );
    let (s, janus) = match a.target {
        Target::Lodge => {
            let s = setup(&nodes, &a, &plan).await?;
            eprintln!(
                "setup: {} accounts in guild {} with {} voice channel(s)",
                s.callers.len(),
                s.guild,
                s.channels.len()
            );
            (s, None)
        }
        Target::Janus => {
            let j = Arc::new(janus::Janus::new(
                nodes.apis[0].http.clone(),
                &nodes.apis[0].base,
            ));
            let rooms = janus::create_rooms(&j, a.channels, a.speakers).await?;
            eprintln!("setup: {} Janus VideoRoom(s) (audio only)", rooms.len());
            // Janus needs no accounts: a caller's "user id" is its feed id (index + 1).
            let s = Setup {
                guild: String::new(),
                channels: rooms.iter().map(u64::to_string).collect(),
                callers: plan
                    .iter()
                    .map(|&i| (i as u64 + 1, String::new()))
                    .collect(),
                gateway_urls: vec![String::new()],
            };
            (s, Some(j))
        }
    };

    // Who speaks: the first `speakers` callers of each channel (callers go round robin), i.e.
    // the callers with a global index below speakers × channels.
    let is_speaker = |i: usize| i / a.channels < a.speakers;
    let speaker_users: Vec<u64> = plan
        .iter()
        .enumerate()
        .filter(|&(_, &i)| is_speaker(i))
        .map(|(k, _)| s.callers[k].0)
        .collect();
    // Per channel, its speakers' user ids (what a Janus subscriber subscribes to).
    let channel_speakers: Vec<Vec<u64>> = (0..a.channels)
        .map(|c| {
            plan.iter()
                .enumerate()
                .filter(|&(_, &i)| i % a.channels == c && is_speaker(i))
                .map(|(k, _)| s.callers[k].0)
                .collect()
        })
        .collect();
    let shared = Arc::new(Shared::new(frames, &speaker_users)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let on_error: Arc<dyn Fn(String) + Send + Sync> = {
        let errors = errors.clone();
        Arc::new(move |e: String| errors.lock().expect("errors lock").push(e))
    };
    let talk = TalkParams {
        mean_talk: Duration::from_millis(a.talk_ms),
        mean_pause: Duration::from_millis(a.pause_ms),
    };
    let listeners_total = plan.len() - speaker_users.len();
    let probe_every = if a.probes > 0.0 {
        (1.0 / a.probes).round().max(1.0) as usize
    } else {
        usize::MAX
    };

    // Speakers run on a thread and runtime of their own, woken by the frame clock at their own
    // phase: on the main runtime, thousands of listeners' packets would delay and bunch their
    // sends into bursts no set of independent callers produces.
    let clock = FrameClock::start().context("starting the speakers' frame clock")?;
    let speaker_rt = SpeakerRuntime::start().context("starting the speakers' runtime")?;
    let started = Instant::now();
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // Gateway sessions the callers resumed after their gateway connection dropped.
    let gateway_resumes: Arc<signal::Resumes> = Arc::default();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.parallelism));
    // (node, caller task) per caller.
    let mut handles = Vec::with_capacity(plan.len());
    let mut speaker_no = 0usize;
    // A shard joins at its share of the scenario's rate, so the shards together join at it.
    let join_rate = a.join_rate * plan.len() as f64 / a.callers as f64;
    let join_gap = Duration::from_secs_f64(1.0 / join_rate);
    let bar = ProgressBar::new(plan.len() as u64).with_style(ProgressStyle::with_template(
        "{elapsed_precise} {bar:30} {pos}/{len} joined  {msg}",
    )?);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut last = (0u64, 0u64, Instant::now());
    let mut timeline: Vec<serde_json::Value> = Vec::new();
    let mut next_join = tokio::time::Instant::now();
    // The next caller to start, by position in `plan` (its global index is `plan[k]`).
    let mut k = 0usize;
    let mut measure: Option<Window> = None;
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_join), if k < plan.len() => {
                if k + a.late >= plan.len() && !a.go_file.as_deref().is_some_and(Path::exists) {
                    // A late caller: wait for the go file.
                    next_join = tokio::time::Instant::now() + Duration::from_millis(50);
                    continue;
                }
                next_join += join_gap;
                let i = plan[k];
                let node = nodes.of(k);
                let speaking = is_speaker(i).then(|| {
                    speaker_no += 1;
                    Speaking { index: speaker_no - 1, talk, seed: a.seed.wrapping_mul(1_000_003).wrapping_add(i as u64), clock: clock.clone() }
                });
                // Every probe_every-th listener by global listener number (listeners are the
                // callers from speakers × channels on), as in the unsharded run.
                let probe = speaking.is_none()
                    && (i - a.speakers * a.channels).is_multiple_of(probe_every);
                let ip = source_ip(&a, k);
                let (user, token) = s.callers[k].clone();
                let channel = s.channels[shard.local_channel(i % a.channels)].clone();
                let (guild, gw, shared, stop, on_error, sem, slots) = (
                    s.guild.clone(), s.gateway_urls[node % s.gateway_urls.len()].clone(), shared.clone(), stop_rx.clone(),
                    on_error.clone(), sem.clone(), a.slots,
                );
                let native_mode = a.transport.native_mode();
                let on_error2 = on_error.clone();
                let muted = speaking.is_none();
                let impair = profile(&a)?.map(|p| (p, a.seed.wrapping_mul(7_777).wrapping_add(i as u64)));
                let (janus, feeds) = (janus.clone(), channel_speakers[i % a.channels].clone());
                let region = (!a.regions.is_empty()).then(|| a.regions[i % a.regions.len()].clone());
                let resumes = (!a.no_resume).then(|| gateway_resumes.clone());
                let rt = if speaking.is_some() { speaker_rt.handle.clone() } else { tokio::runtime::Handle::current() };
                handles.push((node, rt.spawn(async move {
                    let t0 = Instant::now();
                    if let Some(j) = janus {
                        let room: u64 = channel.parse()?;
                        let mut phases = (0.0, 0.0);
                        let (client, slots, session) = {
                            let _p = sem.acquire().await;
                            phases.0 = t0.elapsed().as_secs_f64() * 1000.0;
                            let r = if speaking.is_some() {
                                let mut client = Client::new(ip, 0).await?;
                                let (session, answer) = janus::publish(&j, room, user, &client.offer).await?;
                                client.accept(&answer)?;
                                (client, signal::SlotMap::default(), session)
                            } else {
                                let (session, handle, offer) = janus::subscribe(&j, room, &feeds).await?;
                                let (client, answer) = Client::answering(ip, &offer).await?;
                                janus::start(&j, session, handle, &answer).await?;
                                (client, janus::slot_map(&offer, &feeds), session)
                            };
                            phases.1 = t0.elapsed().as_secs_f64() * 1000.0;
                            r
                        };
                        tokio::spawn(janus::keep_alive(j, session, stop.clone()));
                        let (_never, mut no_moves) = tokio::sync::mpsc::unbounded_channel();
                        return client.run(shared, slots, speaking, probe, t0, stop, &mut no_moves).await
                            .map(|(mut st, _)| {
                                (st.queued_ms, st.signaled_ms) = (Some(phases.0), Some(phases.1));
                                (st, probe)
                            });
                    }
                    let (client, call, phases) = {
                        let _p = sem.acquire().await;
                        let queued = t0.elapsed().as_secs_f64() * 1000.0;
                        let (client, call) = match native_mode {
                            None => {
                                let client = Client::new(ip, slots).await?;
                                let select = signal::Select::WebRtc { offer: &client.offer };
                                let call = signal::join(&gw, &token, user, &guild, &channel, select, slots, muted, region.as_deref(), resumes, stop.clone(), on_error).await?;
                                (client, call)
                            }
                            Some(mode) => {
                                let mut client = Client::native(ip).await?;
                                let select = signal::Select::Udp { client: &mut client, mode };
                                let call = signal::join(&gw, &token, user, &guild, &channel, select, slots, muted, region.as_deref(), resumes, stop.clone(), on_error).await?;
                                (client, call)
                            }
                        };
                        (client, call, (queued, t0.elapsed().as_secs_f64() * 1000.0))
                    };
                    let mut client = client;
                    let answer = match impair {
                        _ if native_mode.is_some() => String::new(),
                        Some((p, seed)) => {
                            let node = proxy::candidate_addr(&call.answer_sdp).context("no host candidate in the answer")?;
                            let via = proxy::start(SocketAddr::new(ip, 0), node, p, seed, false, stop.clone()).await?;
                            proxy::rewrite_candidates(&call.answer_sdp, node, via)
                        }
                        None => call.answer_sdp.clone(),
                    };
                    if native_mode.is_none() {
                        client.accept(&answer)?;
                    }
                    let mut call = call;
                    let (mut slot_map, mut started) = (call.slots.clone(), t0);
                    let mut total: Option<CallerStats> = None;
                    let mut rejoined = 0u32;
                    loop {
                        let (st, mv) = client.run(shared.clone(), slot_map.clone(), speaking.clone(), probe, started, stop.clone(), &mut call.moved).await?;
                        match total.as_mut() {
                            None => total = Some(st),
                            Some(t) => t.merge(st),
                        }
                        let Some((vtoken, endpoint)) = mv else { break };
                        // The server moved the call (its node went away, or is draining):
                        // leave the old voice connection and reconnect there.
                        call.voice_lost.retire();
                        started = call.voice_lost.at.lock().expect("lost lock").take().unwrap_or_else(Instant::now);
                        let map = match native_mode {
                            None => {
                                client = Client::new(ip, slots).await?;
                                let select = signal::Select::WebRtc { offer: &client.offer };
                                let (answer, map) = signal::voice(&endpoint, &guild, user, &call.session_id, &vtoken,
                                    select, slots, call.voice_lost.clone(), stop.clone()).await?;
                                client.accept(&answer)?;
                                map
                            }
                            Some(mode) => {
                                client = Client::native(ip).await?;
                                let select = signal::Select::Udp { client: &mut client, mode };
                                let (_, map) = signal::voice(&endpoint, &guild, user, &call.session_id, &vtoken,
                                    select, slots, call.voice_lost.clone(), stop.clone()).await?;
                                map
                            }
                        };
                        slot_map = map;
                        rejoined += 1;
                    }
                    let lost = call.voice_lost.count.load(Ordering::Relaxed);
                    let mut total = total.expect("at least one segment");
                    if lost > rejoined {
                        total.media_at_end = false;
                        on_error2(format!("voice gateway connection lost and not rejoined: {}",
                            call.voice_lost.last.lock().expect("lost lock")));
                    }
                    (total.queued_ms, total.signaled_ms) = (Some(phases.0), Some(phases.1));
                    Ok((total, probe))
                })));
                k += 1;
                bar.set_position(k as u64);
            }
            _ = ticker.tick() => {
                let (out, inn) = (shared.rtp_out.load(Ordering::Relaxed), shared.rtp_in.load(Ordering::Relaxed));
                let dt = last.2.elapsed().as_secs_f64().max(1e-3);
                let (pps_out, pps_in) = ((out - last.0) as f64 / dt, (inn - last.1) as f64 / dt);
                last = (out, inn, Instant::now());
                let p99 = {
                    let mut h = shared.live.lock().expect("live lock");
                    let v = if h.is_empty() { None } else { Some(h.value_at_quantile(0.99) as f64 / 1000.0) };
                    h.reset();
                    v
                };
                let connected = shared.connected.load(Ordering::Relaxed);
                let nerr = errors.lock().expect("errors lock").len();
                bar.set_message(format!(
                    "{connected} connected, {pps_out:.0} pps out, {pps_in:.0} pps in, m2e p99 {}, {nerr} errors{}",
                    p99.map(|v| format!("{v:.1} ms")).unwrap_or_else(|| "–".into()),
                    measure.as_ref().map(|m| format!(", measuring {:.0}/{} s", m.at.elapsed().as_secs_f64(), a.duration)).unwrap_or_default(),
                ));
                timeline.push(json!({ "t_s": started.elapsed().as_secs_f64(), "connected": connected,
                    "pps_out": pps_out, "pps_in": pps_in, "m2e_p99_ms": p99 }));
                let done_joining = k == plan.len() && (connected as usize == plan.len()
                    || handles.iter().filter(|h| h.1.is_finished()).count() + connected as usize >= plan.len()
                    || started.elapsed() > Duration::from_secs_f64(plan.len() as f64 / join_rate + 60.0));
                if measure.is_none() && done_joining {
                    let m = fetch_all_metrics(&nodes, a.target).await;
                    measure = Some(Window::now(&a, &m, &shared));
                }
                if let Some(m) = &measure {
                    if m.at.elapsed() >= Duration::from_secs(a.duration) { break; }
                }
            }
            _ = &mut ctrl_c => {
                eprintln!("interrupted: stopping the callers and writing a partial report");
                interrupted = true;
                break;
            }
        }
    }
    // One scrape at the end serves the window's counters, the delay quantiles and the drops.
    let end_metrics = fetch_all_metrics(&nodes, a.target).await;
    let window_end = Window::now(&a, &end_metrics, &shared);
    let _ = stop_tx.send(true);
    bar.finish_and_clear();
    let mut tallies: Vec<Tally> = (0..nodes.len())
        .map(|n| Tally {
            callers: (0..plan.len()).filter(|&k| nodes.of(k) == n).count() as u64,
            ..Tally::default()
        })
        .collect();
    for (node, h) in handles {
        match tokio::time::timeout(Duration::from_secs(10), h).await {
            Ok(Ok(Ok((st, _probe)))) => tallies[node].add_caller(&st, a.speakers),
            Ok(Ok(Err(e))) => on_error(format!("caller failed: {e:#}")),
            Ok(Err(e)) => on_error(format!("caller task failed: {e}")),
            Err(_) => on_error("caller did not stop within 10 s".into()),
        }
    }
    let errors = errors.lock().expect("errors lock").clone();
    let server = measure.map(|w0| {
        let w1 = &window_end;
        let cpu = |w: &Window, n: usize| w.server_cpu.get(n).copied().flatten();
        let node_windows: Vec<report::NodeWindow> = (0..nodes.len())
            .map(|n| report::NodeWindow {
                counters: match (w0.nodes[n], w1.nodes[n]) {
                    (Some(c0), Some(c1)) => {
                        Some((c1.0.saturating_sub(c0.0), c1.1.saturating_sub(c0.1)))
                    }
                    _ => None,
                },
                cpu_seconds: cpu(w1, n).zip(cpu(&w0, n)).map(|(b, a)| b - a),
                forward_delay: window_delay(&w0.delay_buckets[n], &w1.delay_buckets[n]),
            })
            .collect();
        let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        report::ServerWindow {
            udp_rcvbuf_drops: match (w0.rcvbuf_errors, w1.rcvbuf_errors) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
            seconds: (w1.at - w0.at).as_secs_f64(),
            node: node_windows
                .iter()
                .map(|n| n.counters)
                .collect::<Option<Vec<_>>>()
                .filter(|v| !v.is_empty())
                .map(|v| v.iter().fold((0, 0), |s, c| (s.0 + c.0, s.1 + c.1))),
            delivered: w1.delivered.saturating_sub(w0.delivered),
            cpu_seconds: if a.server_pid.is_empty() {
                None
            } else {
                sum_all(
                    &node_windows
                        .iter()
                        .map(|n| n.cpu_seconds)
                        .collect::<Vec<_>>(),
                )
            },
            generator_cpu_seconds: diff(w0.own_cpu, w1.own_cpu),
            machine_busy_pct: match (w0.machine, w1.machine) {
                (Some(a), Some(b)) if b.1 > a.1 => {
                    Some((b.0 - a.0) as f64 / (b.1 - a.1) as f64 * 100.0)
                }
                _ => None,
            },
            forward_delay: window_delay(
                &sum_buckets(&w0.delay_buckets),
                &sum_buckets(&w1.delay_buckets),
            ),
            nodes: node_windows,
        }
    });
    let run = report::Run {
        scenario: report::Scenario::of(&a, &source),
        shards: report::Shards {
            count: shard.count,
            indices: vec![shard.index],
        },
        plan: report::Plan {
            channels: shard.channels(a.channels).len() as u64,
            speakers: speaker_users.len() as u64,
            listeners: listeners_total as u64,
        },
        nodes: nodes.urls().into_iter().zip(tallies).collect(),
        errors,
        server,
        // A whole-life summary is one node's; with several nodes, see the per-node window.
        forward_delay_ms: match &end_metrics[..] {
            [one] => one.as_deref().and_then(node_forward_delay),
            _ => None,
        },
        node_drops: sum_drops(end_metrics.iter().flatten().map(|m| node_drops(m))),
        timeline,
        interrupted,
        started_unix_ms,
        merged_reports: None,
    };
    let mut rep = report::render(&run);
    gateway_resumes.add_to(&mut rep);
    println!("{}", rep.markdown);
    write_outputs(&rep, a.out.as_deref(), a.report.as_deref())?;
    if a.strict && !rep.strict_failures.is_empty() {
        for why in &rep.strict_failures {
            eprintln!("strict: {why}");
        }
        return Ok(false);
    }
    Ok(!interrupted)
}

/// Drop counters of several nodes added up by reason (first-seen order).
fn sum_drops(nodes: impl Iterator<Item = Vec<(String, u64)>>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for (reason, n) in nodes.flatten() {
        match out.iter_mut().find(|(r, _)| *r == reason) {
            Some(e) => e.1 += n,
            None => out.push((reason, n)),
        }
    }
    out
}

/// report.md, report.json and the plots into `out`; the JSON alone to `json_path`.
pub(crate) fn write_outputs(
    rep: &report::Report,
    out: Option<&Path>,
    json_path: Option<&Path>,
) -> Result<()> {
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        crate::playout::plot::register_font()?;
        let timeline = rep.json["timeline"].as_array().cloned().unwrap_or_default();
        plot::m2e_cdf(&dir.join("m2e-cdf.png"), &rep.m2e)?;
        plot::pps(&dir.join("pps.png"), &timeline)?;
        plot::join(&dir.join("join.png"), &rep.join_ms)?;
        if !rep.mos.is_empty() {
            plot::mos(&dir.join("mos.png"), &rep.mos)?;
        }
        let md = format!(
            "{}\n![mouth-to-ear CDF](m2e-cdf.png)\n\n![packets per second](pps.png)\n\n![join times](join.png)\n{}",
            rep.markdown,
            if rep.mos.is_empty() { "" } else { "\n![MOS of the probes](mos.png)\n" }
        );
        std::fs::write(dir.join("report.md"), md)?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&rep.json)?,
        )?;
        eprintln!("report, JSON and plots written to {}", dir.display());
    }
    if let Some(p) = json_path {
        std::fs::write(p, serde_json::to_string_pretty(&rep.json)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("report written to {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_delay_over_the_window_from_two_bucket_readings() {
        let scrape = |counts: [u64; 4]| {
            format!(
                "lodge_forward_delay_hist_seconds_bucket{{le=\"0.0005\"}} {}\n\
                 lodge_forward_delay_hist_seconds_bucket{{le=\"0.001\"}} {}\n\
                 lodge_forward_delay_hist_seconds_bucket{{le=\"0.01\"}} {}\n\
                 lodge_forward_delay_hist_seconds_bucket{{le=\"+Inf\"}} {}\n",
                counts[0], counts[1], counts[2], counts[3]
            )
        };
        // Before the window: 1,000 slow datagrams (joins). In it: 900 ≤ 0.5 ms, 90 in
        // 0.5–1 ms, 10 in 1–10 ms.
        let w0 = node_delay_buckets(&scrape([0, 0, 1000, 1000]));
        let w1 = node_delay_buckets(&scrape([900, 990, 2000, 2000]));
        assert_eq!(w0[0], (500, 0));
        assert_eq!(w1.last(), Some(&(u64::MAX, 2000)));
        let d = window_delay(&w0, &w1).expect("a window");
        assert_eq!(d.count, 1000);
        assert!((d.within_1ms_pct - 99.0).abs() < 1e-9);
        let p50 = d.p50_ms.expect("finite");
        assert!((p50 - 500.0 / 900.0 * 0.5).abs() < 1e-9, "{p50}");
        let p99 = d.p99_ms.expect("finite");
        assert!((p99 - 1.0).abs() < 1e-9, "p99 at the 1 ms bound: {p99}");
        assert!(d.p999_ms.expect("finite") > 1.0);
        // Nothing forwarded in the window: no figure rather than a made-up one.
        assert!(window_delay(&w1, &w1).is_none());
    }

    #[test]
    fn reads_the_node_metrics_it_needs() {
        let m = "lodge_rtp_received_total 12\nlodge_rtp_received_total_x 99\n\
                 lodge_rtp_forwarded_total 340\n\
                 lodge_dropped_total{reason=\"muted\"} 0\nlodge_dropped_total{reason=\"stale\"} 3\n\
                 lodge_forward_delay_seconds{quantile=\"0.5\"} 0.0005\n\
                 lodge_forward_delay_seconds{quantile=\"0.99\"} 0.002\n\
                 lodge_forward_delay_seconds{quantile=\"0.999\"} 0.004\n\
                 lodge_forward_delay_seconds{quantile=\"1\"} 0.01\n";
        assert_eq!(node_counters(m), Some((12, 340)));
        assert_eq!(node_drops(m), vec![("stale".to_string(), 3)]);
        assert_eq!(node_forward_delay(m), Some([0.5, 2.0, 4.0, 10.0]));
        assert_eq!(node_counters(""), None);
    }
}
