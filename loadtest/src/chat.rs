//! `lodge-load chat`: M gateway sessions in one guild, R messages per second into one channel
//! through the REST API; create→dispatch latency at every receiver (hdrhistogram), deliveries
//! per second and errors. Progress is shown live; the end prints a table and writes a JSON report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::nodes::Nodes;

#[derive(Args, Clone)]
pub struct ChatArgs {
    /// Base URL of a Lodge node. Give it several times (or comma-separated) to load a cluster:
    /// sessions connect to the nodes round robin (session k to node k mod N, each through that
    /// node's own GET /gateway), registrations and invite joins go round robin too, and message
    /// n is sent through node n mod N; the report then adds a per-node table.
    #[arg(
        long = "url",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    urls: Vec<String>,
    /// Gateway sessions that receive every message.
    #[arg(long, short = 'm', default_value_t = 100)]
    sessions: usize,
    /// Messages per second sent into the channel (all senders together).
    #[arg(long, short = 'r', default_value_t = 20.0)]
    rate: f64,
    /// Seconds of sending (after all sessions are connected).
    #[arg(long, short = 'd', default_value_t = 10)]
    duration: u64,
    /// Accounts the sessions are spread over (each account may hold many sessions).
    #[arg(long, default_value_t = 50)]
    accounts: usize,
    /// Accounts that send (their REST calls share the node's per-caller rate limits).
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Sessions opened in parallel while connecting.
    #[arg(long, default_value_t = 50)]
    connect_parallelism: usize,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// Label for the report (e.g. "sqlite").
    #[arg(long, default_value = "sqlite")]
    label: String,
    /// Fail (exit 1) unless every message reached every session and no error happened.
    #[arg(long)]
    strict: bool,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What one node did: messages sent through it, and deliveries and latency at its sessions.
struct NodeCounters {
    sessions: usize,
    sent: AtomicU64,
    delivered: AtomicU64,
    hist: Mutex<Histogram<u64>>,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    send_errors: AtomicU64,
    rate_limited: AtomicU64,
    delivered: AtomicU64,
    gateway_errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

fn validate(a: &ChatArgs) -> Result<()> {
    if a.sessions == 0 || a.accounts == 0 || a.senders == 0 {
        bail!("--sessions, --accounts and --senders must be at least 1");
    }
    if a.senders > a.accounts {
        bail!(
            "--senders ({}) cannot exceed --accounts ({})",
            a.senders,
            a.accounts
        );
    }
    if !(a.rate > 0.0 && a.rate <= 10_000.0) {
        bail!("--rate must be between 0 and 10000 messages per second");
    }
    if a.sessions > 20_000 {
        bail!("--sessions above 20000 would exhaust local ports on one address");
    }
    Ok(())
}

pub async fn run(a: ChatArgs) -> Result<bool> {
    validate(&a)?;
    let nodes = Nodes::new(&a.urls)?;
    let api = nodes.apis[0].clone();
    let run_id = format!("{:x}", now_us() % 0xFFFF_FFFF);
    eprintln!(
        "setting up: {} accounts, a guild, {} sessions …",
        a.accounts, a.sessions
    );

    // Accounts, guild, invite.
    let mut tokens = Vec::with_capacity(a.accounts);
    for i in 0..a.accounts {
        let (st, v) = nodes.api(i).call(reqwest::Method::POST, "/auth/register", None, Some(json!({ "username": format!("lt{run_id}_{i}"), "password": "load-test-password", "bot": true }))).await?;
        if st != 201 {
            bail!("registering a load-test account failed ({st}): {v}");
        }
        tokens.push(
            v["token"]
                .as_str()
                .context("token in register response")?
                .to_string(),
        );
    }
    let (st, g) = api
        .call(
            reqwest::Method::POST,
            "/guilds",
            Some(&tokens[0]),
            Some(json!({ "name": format!("load test {run_id}") })),
        )
        .await?;
    if st != 201 {
        bail!("creating the guild failed ({st}): {g}");
    }
    let channel = g["channels"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == 0))
        .and_then(|c| c["id"].as_str())
        .context("text channel")?
        .to_string();
    let (_, inv) = api
        .call(
            reqwest::Method::POST,
            &format!("/channels/{channel}/invites"),
            Some(&tokens[0]),
            Some(json!({ "max_age": 3600 })),
        )
        .await?;
    let code = inv["code"].as_str().context("invite code")?.to_string();
    for (i, t) in tokens.iter().enumerate().skip(1) {
        let (st, v) = nodes
            .api(i)
            .call(
                reqwest::Method::POST,
                &format!("/invites/{code}"),
                Some(t),
                None,
            )
            .await?;
        if st != 200 {
            bail!("joining the guild failed ({st}): {v}");
        }
    }
    // Each node's own gateway: a session connects where its node says.
    let mut gw_urls = Vec::with_capacity(nodes.len());
    for node in &nodes.apis {
        let (_, gw) = node
            .call(reqwest::Method::GET, "/gateway", None, None)
            .await?;
        gw_urls.push(format!(
            "{}?v=10&encoding=json",
            gw["url"]
                .as_str()
                .with_context(|| format!("gateway url from {}", node.base))?
        ));
    }
    let per_node: Arc<Vec<NodeCounters>> = Arc::new(
        (0..nodes.len())
            .map(|n| NodeCounters {
                sessions: (0..a.sessions).filter(|&k| nodes.of(k) == n).count(),
                sent: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                hist: Mutex::new(crate::hist::micros()),
            })
            .collect(),
    );

    // Sessions.
    let counters = Arc::new(Counters::default());
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let stop = Arc::new(tokio::sync::Notify::new());
    let pb = ProgressBar::new(a.sessions as u64);
    pb.set_style(ProgressStyle::with_template(
        "connecting {bar:40} {pos}/{len} sessions {msg}",
    )?);
    let mut handles = Vec::with_capacity(a.sessions);
    let sem = Arc::new(tokio::sync::Semaphore::new(a.connect_parallelism.max(1)));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(a.sessions);
    for i in 0..a.sessions {
        let token = tokens[i % tokens.len()].clone();
        let node = nodes.of(i);
        let (url, counters, hist, stop, sem, ready_tx, per_node) = (
            gw_urls[node].clone(),
            counters.clone(),
            hist.clone(),
            stop.clone(),
            sem.clone(),
            ready_tx.clone(),
            per_node.clone(),
        );
        handles.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.ok();
            let sink = Sink {
                counters,
                hist,
                per_node,
                node,
            };
            receiver(url, token, sink, stop, ready_tx, permit).await
        }));
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < a.sessions {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {
                ready += 1;
                pb.inc(1);
            }
            Ok(Some(Err(e))) => bail!("a session failed to connect: {e}"),
            Ok(None) => bail!("sessions ended before all connected"),
            Err(_) => bail!(
                "timed out connecting sessions ({ready}/{} ready after 60 s)",
                a.sessions
            ),
        }
    }
    pb.finish_and_clear();
    eprintln!(
        "{} sessions connected; sending {:.0} msg/s for {} s into one channel",
        a.sessions, a.rate, a.duration
    );

    // Send.
    let total = (a.rate * a.duration as f64).round() as u64;
    let pb = ProgressBar::new(total);
    pb.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} sent  {msg}",
    )?);
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = tokio::task::JoinSet::new();
    for n in 0..total {
        tick.tick().await;
        let token = tokens[(n as usize) % a.senders].clone();
        let node = nodes.of(n as usize);
        let (api, c2, channel, per_node) = (
            nodes.apis[node].clone(),
            counters.clone(),
            channel.clone(),
            per_node.clone(),
        );
        inflight.spawn(async move {
            let counters = c2;
            let content = format!("lt {n} {}", now_us());
            let r = api
                .http
                .post(format!("{}/api/v10/channels/{channel}/messages", api.base))
                .header("Authorization", format!("Bot {token}"))
                .json(&json!({ "content": content }))
                .send()
                .await;
            match r.map(|r| r.status().as_u16()) {
                Ok(200) => {
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    per_node[node].sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(429) => {
                    counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    counters.send_errors.fetch_add(1, Ordering::Relaxed);
                    let what = match other {
                        Ok(st) => format!("HTTP {st}"),
                        Err(e) => format!("{e:#}"),
                    };
                    if let Ok(mut f) = counters.first_error.lock() {
                        f.get_or_insert(what);
                    }
                }
            }
        });
        if n % 20 == 0 {
            let p99 = hist.lock().map(|h| h.value_at_quantile(0.99)).unwrap_or(0);
            pb.set_message(format!(
                "delivered {}  p99 {:.1} ms  errors {}",
                counters.delivered.load(Ordering::Relaxed),
                p99 as f64 / 1000.0,
                counters.send_errors.load(Ordering::Relaxed)
                    + counters.rate_limited.load(Ordering::Relaxed)
                    + counters.gateway_errors.load(Ordering::Relaxed)
            ));
        }
        pb.inc(1);
    }
    while inflight.join_next().await.is_some() {}
    let send_secs = start.elapsed().as_secs_f64();
    // Let the last dispatches arrive.
    let expected = counters.sent.load(Ordering::Relaxed) * a.sessions as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while counters.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    eprintln!(
        "{} deliveries in {wall:.1} s; closing the sessions",
        counters.delivered.load(Ordering::Relaxed)
    );
    stop.notify_waiters();
    for h in handles {
        h.abort();
    }

    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    let node_rows: Vec<NodeRow> = nodes
        .urls()
        .into_iter()
        .zip(per_node.iter())
        .map(|(url, n)| {
            let hist = n
                .hist
                .lock()
                .map(|h| h.clone())
                .unwrap_or_else(|_| crate::hist::micros());
            NodeRow {
                url,
                sessions: n.sessions,
                sent: n.sent.load(Ordering::Relaxed),
                delivered: n.delivered.load(Ordering::Relaxed),
                p50_ms: crate::hist::at(&hist, 0.5, 1000.0),
                p99_ms: crate::hist::at(&hist, 0.99, 1000.0),
                hist,
            }
        })
        .collect();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let delivered = counters.delivered.load(Ordering::Relaxed);
    let sent = counters.sent.load(Ordering::Relaxed);
    let errors = counters.send_errors.load(Ordering::Relaxed)
        + counters.rate_limited.load(Ordering::Relaxed)
        + counters.gateway_errors.load(Ordering::Relaxed);
    let report = json!({
        "scenario": "chat",
        "label": a.label,
        "sessions": a.sessions,
        "accounts": a.accounts,
        "senders": a.senders,
        "target_rate_per_s": a.rate,
        "duration_s": a.duration,
        "sent": sent,
        "send_seconds": send_secs,
        "expected_deliveries": expected,
        "delivered": delivered,
        "deliveries_per_s": delivered as f64 / wall,
        "latency_ms": { "p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": h.max() as f64 / 1000.0, "mean": h.mean() / 1000.0, "samples": h.len() },
        "latency_hist_us": crate::hist::encode(&h),
        "nodes": node_rows.iter().map(|r| json!({
            "url": r.url, "sessions": r.sessions, "sent": r.sent, "delivered": r.delivered,
            "latency_ms": { "p50": r.p50_ms, "p99": r.p99_ms },
            "latency_hist_us": crate::hist::encode(&r.hist),
        })).collect::<Vec<_>>(),
        "errors": {
            "first_send_error": counters.first_error.lock().ok().and_then(|f| f.clone()),
            "send_failed": counters.send_errors.load(Ordering::Relaxed),
            "rate_limited": counters.rate_limited.load(Ordering::Relaxed),
            "gateway": counters.gateway_errors.load(Ordering::Relaxed),
        },
    });
    println!("\n| {} chat load | value |\n|---|---|", a.label);
    println!(
        "| sessions × rate | {} × {:.0} msg/s for {} s |",
        a.sessions, a.rate, a.duration
    );
    println!("| messages sent (200) | {sent} of {total} |");
    println!(
        "| deliveries | {delivered} of {expected} ({:.0}/s) |",
        delivered as f64 / wall
    );
    println!(
        "| create→dispatch p50 / p99 / p99.9 / max | {:.1} / {:.1} / {:.1} / {:.1} ms |",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    println!(
        "| errors (send / 429 / gateway) | {} / {} / {} |",
        counters.send_errors.load(Ordering::Relaxed),
        counters.rate_limited.load(Ordering::Relaxed),
        counters.gateway_errors.load(Ordering::Relaxed)
    );
    if node_rows.len() > 1 {
        print!("\n{}", node_table(&node_rows, a.rate * a.duration as f64));
    }
    if let Some(e) = counters.first_error.lock().ok().and_then(|f| f.clone()) {
        println!("\nfirst send error: {e}");
    }
    if let Some(p) = &a.report {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("report written to {}", p.display());
    }
    Ok(!a.strict || (errors == 0 && delivered == expected && sent == total))
}

/// The send timestamp of a load-test MESSAGE_CREATE (`"content":"lt <n> <µs>"`), found by
/// scanning instead of parsing.
fn lt_timestamp(text: &str) -> Option<u64> {
    if !text.contains("\"t\":\"MESSAGE_CREATE\"") {
        return None;
    }
    let at = text.find("\"content\":\"lt ")? + "\"content\":\"lt ".len();
    let rest = &text[at..];
    let mut parts = rest.split([' ', '"']);
    parts.next()?.parse::<u64>().ok()?;
    parts.next()?.parse::<u64>().ok()
}

/// Per-node figures for the report.
struct NodeRow {
    url: String,
    sessions: usize,
    sent: u64,
    delivered: u64,
    p50_ms: f64,
    p99_ms: f64,
    hist: Histogram<u64>,
}

/// The per-node Markdown table (printed when more than one node is loaded). `planned` is the
/// number of messages the run meant to send, for the sent column's share.
fn node_table(rows: &[NodeRow], planned: f64) -> String {
    let mut t = String::from(
        "| node | sessions | messages sent through it | deliveries at its sessions | create→dispatch p50 / p99 at its sessions |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        t.push_str(&format!(
            "| {} | {} | {} ({:.0}% of {planned:.0}) | {} | {:.1} / {:.1} ms |\n",
            r.url,
            r.sessions,
            r.sent,
            r.sent as f64 / planned.max(1.0) * 100.0,
            r.delivered,
            r.p50_ms,
            r.p99_ms
        ));
    }
    t
}

/// Where a session records what it receives: the run's totals and its node's.
struct Sink {
    counters: Arc<Counters>,
    hist: Arc<Mutex<Histogram<u64>>>,
    per_node: Arc<Vec<NodeCounters>>,
    node: usize,
}

impl Sink {
    fn add(&self, local: &Histogram<u64>) {
        if let Ok(mut h) = self.hist.lock() {
            let _ = h.add(local);
        }
        if let Ok(mut h) = self.per_node[self.node].hist.lock() {
            let _ = h.add(local);
        }
    }
}

/// One gateway session: identify, heartbeat, and time every load-test MESSAGE_CREATE.
async fn receiver(
    url: String,
    token: String,
    sink: Sink,
    stop: Arc<tokio::sync::Notify>,
    ready: tokio::sync::mpsc::Sender<Result<(), String>>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let (ws, _) = match tokio_tungstenite::connect_async(&url).await {
        Ok(w) => w,
        Err(e) => {
            let _ = ready.send(Err(e.to_string())).await;
            return;
        }
    };
    let (mut tx, mut rx) = ws.split();
    let counters = sink.counters.clone();
    let mut permit = permit;
    let mut local =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    let mut hb = tokio::time::interval(Duration::from_secs(40));
    hb.tick().await;
    let mut flush = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            m = rx.next() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        counters.gateway_errors.fetch_add(1, Ordering::Relaxed);
                        if permit.is_some() { let _ = ready.send(Err("gateway closed during connect".into())).await; }
                        return;
                    }
                    Some(Ok(_)) => continue,
                };
                // Fast path: time load-test messages without parsing the whole dispatch (the
                // generator shares the machine with the node; its CPU is the node's headroom).
                if let Some(t) = lt_timestamp(&text) {
                    let _ = local.record(now_us().saturating_sub(t).max(1));
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    sink.per_node[sink.node].delivered.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                match v["op"].as_u64() {
                    Some(10) => {
                        let identify = json!({ "op": 2, "d": { "token": token, "intents": 1 | 512 | 32768, "properties": { "os": "linux", "browser": "lodge-load", "device": "lodge-load" } } });
                        if tx.send(Message::Text(identify.to_string().into())).await.is_err() { return }
                    }
                    Some(9) => {
                        // Invalid Session: this account identified faster than the node's
                        // session_start_limit.max_concurrency allows. Wait 1-5 s, as Discord
                        // asks clients to, and identify again.
                        let wait = Duration::from_millis(1000 + now_us() % 4000);
                        tokio::time::sleep(wait).await;
                        let identify = json!({ "op": 2, "d": { "token": token, "intents": 1 | 512 | 32768, "properties": { "os": "linux", "browser": "lodge-load", "device": "lodge-load" } } });
                        if tx.send(Message::Text(identify.to_string().into())).await.is_err() { return }
                    }
                    Some(0) if v["t"] == "READY" => {
                        permit.take();
                        let _ = ready.send(Ok(())).await;
                    }
                    _ => {}
                }
            }
            _ = hb.tick() => {
                if tx.send(Message::Text(json!({ "op": 1, "d": null }).to_string().into())).await.is_err() { return }
            }
            _ = flush.tick() => {
                if !local.is_empty() {
                    sink.add(&local);
                    local.reset();
                }
            }
            _ = stop.notified() => {
                sink.add(&local);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_timestamps_only_in_load_messages() {
        let m = r#"{"op":0,"t":"MESSAGE_CREATE","s":9,"d":{"id":"1","content":"lt 42 1700000000123456","author":{}}}"#;
        assert_eq!(super::lt_timestamp(m), Some(1_700_000_000_123_456));
        assert_eq!(
            super::lt_timestamp(r#"{"op":0,"t":"MESSAGE_CREATE","d":{"content":"hello"}}"#),
            None
        );
        assert_eq!(
            super::lt_timestamp(r#"{"op":0,"t":"MESSAGE_UPDATE","d":{"content":"lt 1 2"}}"#),
            None
        );
        assert_eq!(
            super::lt_timestamp(r#"{"op":0,"t":"MESSAGE_CREATE","d":{"content":"lt x 2"}}"#),
            None
        );
    }
}
