//! `lodge`: the node binary.

use anyhow::Context;
use clap::Parser;
use lodge_signaling::config::{Cli, Command, Config};
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lodge: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with causes), not a backtrace.
            eprintln!("lodge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Config(args) => {
            let cfg = Config::load(&args, std::env::vars())?;
            println!(
                "{}",
                toml::to_string_pretty(&cfg).context("printing the configuration")?
            );
            Ok(())
        }
        Command::Serve(args) => {
            let cfg = Config::load(&args, std::env::vars())?;
            let filter = EnvFilter::try_new(&cfg.log)
                .with_context(|| format!("invalid log filter {:?}", cfg.log))?;
            // Behind a reload layer, so the admin API can change the filter while running.
            let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
            tracing_subscriber::registry()
                .with(filter)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_target(false)
                        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
                )
                .init();
            let log_filter = lodge_signaling::admin::LogFilter::new(&cfg.log, handle);
            let db = match &cfg.database_url {
                Some(u) => lodge_signaling::redact_url(u),
                None => cfg.database.display().to_string(),
            };
            tracing::info!(database = %db, public_url = %cfg.public_url, "starting lodge");
            let node = lodge_signaling::start(cfg).await?;
            // `start` leaves it unset; this is the only place that sets it.
            let _ = node.state.admin.log_filter.set(log_filter);
            match node.state.cluster.get() {
                Some(c) if c.role == lodge_edge::cascade::Role::Edge => println!(
                    "Lodge edge ({}) is running: voice gateway at {}, trunk to the origin {}. Ctrl-C stops it.",
                    c.region,
                    node.state.cfg.public_host(),
                    node.state.cfg.origin.map(|o| o.to_string()).unwrap_or_default()
                ),
                Some(c) => println!(
                    "Lodge origin is running. Open {} in a browser. Edges pin this trunk fingerprint:\n  {}\nCtrl-C stops it.",
                    node.state.cfg.public_url,
                    c.fingerprint.as_deref().unwrap_or("")
                ),
                None => println!(
                    "Lodge is running. Open {} in a browser. Ctrl-C stops it (SIGTERM drains it first).",
                    node.state.cfg.public_url
                ),
            }
            wait_to_stop(&node.state).await;
            tracing::info!("shutting down: closing calls and flushing the database");
            node.shutdown().await;
            Ok(())
        }
    }
}

/// Until the node should stop: SIGINT stops at once; SIGTERM (or the admin API) starts a
/// drain, and the node stops when the drain is done — or at once on a second SIGTERM.
async fn wait_to_stop(s: &lodge_signaling::AppState) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => {
                if s.is_edge() {
                    // An edge's calls belong to its origin's voice states: nothing here can
                    // move them, so it stops as before (its callers' origin re-places them).
                    return;
                }
                if s.drain.is_draining() {
                    tracing::info!("second SIGTERM while draining: stopping now");
                    return;
                }
                lodge_signaling::drain::start(s, "SIGTERM").await;
            }
            _ = s.drain.done() => return,
        }
    }
}
