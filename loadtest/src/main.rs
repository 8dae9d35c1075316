//! `lodge-load`: load generator and call-quality evaluation for Lodge.
//!
//! - `lodge-load chat`: crowds of gateway sessions and message senders; delivery latency.
//! - `lodge-load playout`: the jitter buffer and adaptive Opus on impaired networks with real
//!   speech; Markdown/JSON report and PNG plots.
//! - `lodge-load voice`: crowds of WebRTC callers in voice channels; what listeners hear.
//! - `lodge-load merge`: one voice report from the JSON reports of a scenario's shards.
//! - `lodge-load relay`: a UDP relay that impairs one flow (e.g. an edge's trunk to its origin).
//! - `lodge-load neteq-report`: Chromium's NetEq against lodge-client on the same paths.

mod api;
mod chat;
mod hist;
mod neteq;
mod nodes;
pub(crate) mod playout;
mod shard;
mod speech;
mod voice;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lodge-load",
    version,
    about = "Load generator and call-quality evaluation for Lodge"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// M gateway sessions in one guild; R messages/s into one channel; create→dispatch latency.
    Chat(chat::ChatArgs),
    /// Real speech through Opus, every impairment profile and every playout strategy (fixed
    /// 40/80 ms static schedules, adaptive, and the adaptive loop with its target pinned at
    /// 80 ms, each with and without FEC), plus the bitrate controller on a bottleneck trace.
    /// Writes report.md, report.json and PNG plots.
    Playout(playout::PlayoutArgs),
    /// N WebRTC callers in R voice channels through the real API; speakers send Opus speech in
    /// talk spurts; listeners measure loss, jitter, mouth-to-ear delay and (probes) MOS.
    Voice(Box<voice::VoiceArgs>),
    /// Merge the JSON reports of a voice scenario's shards (`lodge-load voice --shard I/N`, run
    /// on several machines) into one report with its plots: histograms added exactly, counters
    /// summed. Refuses reports of different scenarios or holding the same shard.
    Merge(voice::merge::MergeArgs),
    /// A UDP relay that impairs the one flow through it with a named profile (both directions),
    /// e.g. between an edge and its origin: point the edge's --origin at the relay.
    Relay(voice::RelayArgs),
    /// The NetEq side-by-side report (tests/neteq/run.sh): Chromium's and lodge-client's
    /// playout of the same speech on the same impaired paths, one table and one plot.
    NeteqReport(neteq::NeteqReportArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Chat(a) => chat::run(a).await,
        Cmd::Playout(a) => playout::run(a),
        Cmd::Voice(a) => voice::run(*a).await,
        Cmd::Merge(a) => voice::merge::run(a),
        Cmd::Relay(a) => voice::relay(a).await,
        Cmd::NeteqReport(a) => neteq::run(a),
    };
    match r {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lodge-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
