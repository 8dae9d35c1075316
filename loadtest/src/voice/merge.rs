//! `lodge-load merge`: one report from the JSON reports of a scenario's shards
//! (`lodge-load voice --shard I/N` on several machines).
//!
//! Exact where it can be: each node's tally (counters and hdrhistograms) is added, never
//! percentiles averaged; probes are concatenated; callers' deliveries and the generators' CPU
//! are summed. What every shard read from the same nodes over its own window (node CPU and
//! counters, node-added delay, drops) is left out rather than added up twice. Reports of
//! different scenarios, of different shard counts, or holding the same shard are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::report::{self, Plan, Run, Scenario, ServerWindow, Shards};
use super::tally::Tally;

#[derive(Args, Clone)]
pub struct MergeArgs {
    /// The shards' JSON reports (`lodge-load voice --shard I/N --report FILE`, or the
    /// report.json of `--out`); merged reports may be merged again.
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// Write report.md, report.json and the plots (as `lodge-load voice --out` does) here.
    #[arg(long)]
    pub out: PathBuf,
    /// Fail (exit 1) if the merged run fails the voice run's strict checks, or a shard is
    /// missing.
    #[arg(long)]
    pub strict: bool,
}

/// Why reports cannot be merged. Every variant names the files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    #[error("no reports to merge")]
    Empty,
    #[error("{file}: {why}")]
    Malformed { file: PathBuf, why: String },
    #[error("{file} is a {kind:?} report; only `lodge-load voice` reports can be merged")]
    NotVoice { file: PathBuf, kind: String },
    #[error("{first} and {other} are reports of different scenarios: {field} is {a} in one and {b} in the other")]
    DifferentScenario {
        first: PathBuf,
        other: PathBuf,
        field: String,
        a: String,
        b: String,
    },
    #[error("{first} splits the scenario into {a} shards and {other} into {b}")]
    DifferentShardCount {
        first: PathBuf,
        other: PathBuf,
        a: usize,
        b: usize,
    },
    #[error("{first} and {other} both hold shard {index}/{count}: each shard may be merged once")]
    OverlappingShards {
        first: PathBuf,
        other: PathBuf,
        index: usize,
        count: usize,
    },
}

/// One report to merge, already read.
pub struct Input {
    pub file: PathBuf,
    pub json: Value,
}

fn field<T: DeserializeOwned>(inp: &Input, key: &str) -> Result<T, MergeError> {
    serde_json::from_value(inp.json[key].clone()).map_err(|e| MergeError::Malformed {
        file: inp.file.clone(),
        why: format!("\"{key}\": {e} (was it written by this version of lodge-load voice?)"),
    })
}

/// The first differing field of two scenarios, as (name, one value, the other).
fn scenario_difference(a: &Scenario, b: &Scenario) -> Option<(String, String, String)> {
    let (Ok(Value::Object(x)), Ok(Value::Object(y))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return (a != b).then(|| ("scenario".into(), format!("{a:?}"), format!("{b:?}")));
    };
    x.iter().find(|(k, v)| y.get(*k) != Some(v)).map(|(k, v)| {
        (
            k.clone(),
            v.to_string(),
            y.get(k).map(Value::to_string).unwrap_or_default(),
        )
    })
}

/// The merged run, ready to render.
pub fn merge(inputs: &[Input]) -> Result<Run, MergeError> {
    let first = inputs.first().ok_or(MergeError::Empty)?;
    for inp in inputs {
        let kind = inp.json["scenario"]
            .as_str()
            .unwrap_or("unknown")
            .to_string();
        if kind != "voice" {
            return Err(MergeError::NotVoice {
                file: inp.file.clone(),
                kind,
            });
        }
    }
    let scenario: Scenario = field(first, "scenario_params")?;
    let first_shards: Shards = field(first, "shards")?;
    // Which file holds each shard index.
    let mut holder: BTreeMap<usize, &Path> = BTreeMap::new();
    let mut plan = Plan::default();
    let mut nodes: Vec<(String, Tally)> = Vec::new();
    let mut errors = Vec::new();
    let mut interrupted = false;
    let mut merged_reports = 0;
    let mut timelines = Vec::new();
    let mut servers: Vec<Option<ServerWindow>> = Vec::new();
    for inp in inputs {
        let sc: Scenario = field(inp, "scenario_params")?;
        if let Some((field, a, b)) = scenario_difference(&scenario, &sc) {
            return Err(MergeError::DifferentScenario {
                first: first.file.clone(),
                other: inp.file.clone(),
                field,
                a,
                b,
            });
        }
        let shards: Shards = field(inp, "shards")?;
        if shards.count != first_shards.count {
            return Err(MergeError::DifferentShardCount {
                first: first.file.clone(),
                other: inp.file.clone(),
                a: first_shards.count,
                b: shards.count,
            });
        }
        for &index in &shards.indices {
            if let Some(prev) = holder.insert(index, &inp.file) {
                return Err(MergeError::OverlappingShards {
                    first: prev.to_path_buf(),
                    other: inp.file.clone(),
                    index,
                    count: shards.count,
                });
            }
        }
        let p: Plan = field(inp, "plan")?;
        plan.channels += p.channels;
        plan.speakers += p.speakers;
        plan.listeners += p.listeners;
        let node_list: Vec<Value> = field(inp, "nodes")?;
        for n in &node_list {
            let url = n["url"].as_str().unwrap_or("?").to_string();
            let tally: Tally =
                serde_json::from_value(n["tally"].clone()).map_err(|e| MergeError::Malformed {
                    file: inp.file.clone(),
                    why: format!("the tally of node {url}: {e}"),
                })?;
            match nodes.iter_mut().find(|(u, _)| *u == url) {
                Some((_, t)) => t.merge(&tally),
                None => nodes.push((url, tally)),
            }
        }
        let errs: Vec<String> = field(inp, "errors")?;
        let prefix = match &shards.indices[..] {
            [one] if shards.count > 1 => format!("shard {one}/{}: ", shards.count),
            _ => String::new(),
        };
        errors.extend(errs.into_iter().map(|e| format!("{prefix}{e}")));
        interrupted |= inp.json["interrupted"].as_bool().unwrap_or(false);
        merged_reports += inp.json["merged_reports"].as_u64().unwrap_or(1) as usize;
        let started: u64 = field(inp, "started_unix_ms")?;
        let timeline: Vec<Value> = field(inp, "timeline")?;
        timelines.push((started, timeline));
        servers.push(generator_side(&inp.json["server"]));
    }
    let started_unix_ms = timelines.iter().map(|t| t.0).min().unwrap_or(0);
    Ok(Run {
        scenario,
        shards: Shards {
            count: first_shards.count,
            indices: holder.keys().copied().collect(),
        },
        plan,
        nodes,
        errors,
        server: sum_servers(servers),
        forward_delay_ms: None,
        node_drops: Vec::new(),
        timeline: merge_timelines(&timelines),
        interrupted,
        started_unix_ms,
        merged_reports: Some(merged_reports),
    })
}

/// The generator-side figures of a report's "server" object (what adds up across machines).
fn generator_side(s: &Value) -> Option<ServerWindow> {
    Some(ServerWindow {
        seconds: s["window_s"].as_f64()?,
        delivered: s["rtp_delivered"].as_u64()?,
        generator_cpu_seconds: s["generator_cpu_seconds"].as_f64(),
        udp_rcvbuf_drops: s["udp_rcvbuf_drops"].as_u64(),
        ..ServerWindow::default()
    })
}

/// Deliveries, generator CPU and kernel drops summed; the window is the longest shard's.
fn sum_servers(servers: Vec<Option<ServerWindow>>) -> Option<ServerWindow> {
    let all: Vec<ServerWindow> = servers.into_iter().collect::<Option<_>>()?;
    let sum_f = |f: fn(&ServerWindow) -> Option<f64>| {
        all.iter()
            .map(f)
            .collect::<Option<Vec<f64>>>()
            .map(|v| v.iter().sum())
    };
    let sum_u = |f: fn(&ServerWindow) -> Option<u64>| {
        all.iter()
            .map(f)
            .collect::<Option<Vec<u64>>>()
            .map(|v| v.iter().sum())
    };
    Some(ServerWindow {
        seconds: all.iter().map(|s| s.seconds).fold(0.0, f64::max),
        delivered: all.iter().map(|s| s.delivered).sum(),
        generator_cpu_seconds: sum_f(|s| s.generator_cpu_seconds),
        udp_rcvbuf_drops: sum_u(|s| s.udp_rcvbuf_drops),
        ..ServerWindow::default()
    })
}

/// The shards' per-second timelines on one wall clock (second 0 = the earliest start): callers
/// connected and packets per second added per second. A live p99 cannot be added, so the merged
/// timeline has none.
fn merge_timelines(timelines: &[(u64, Vec<Value>)]) -> Vec<Value> {
    let t0 = timelines.iter().map(|t| t.0).min().unwrap_or(0);
    let mut seconds: BTreeMap<u64, [f64; 3]> = BTreeMap::new();
    for (start, points) in timelines {
        // One point per second and shard (the last one if two fall into the same second).
        let mut mine: BTreeMap<u64, [f64; 3]> = BTreeMap::new();
        for p in points {
            let at = (start - t0) as f64 / 1000.0 + p["t_s"].as_f64().unwrap_or(0.0);
            let get = |k: &str| p[k].as_f64().unwrap_or(0.0);
            mine.insert(
                at.round() as u64,
                [get("connected"), get("pps_out"), get("pps_in")],
            );
        }
        for (s, v) in mine {
            let e = seconds.entry(s).or_insert([0.0; 3]);
            for (a, b) in e.iter_mut().zip(v) {
                *a += b;
            }
        }
    }
    seconds
        .into_iter()
        .map(|(s, [c, o, i])| {
            serde_json::json!({ "t_s": s as f64, "connected": c, "pps_out": o, "pps_in": i, "m2e_p99_ms": null })
        })
        .collect()
}

/// `lodge-load merge`: read, merge, print the Markdown and write the report with its plots.
pub fn run(a: MergeArgs) -> Result<bool> {
    let mut inputs = Vec::with_capacity(a.reports.len());
    for file in &a.reports {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let json = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", file.display()))?;
        inputs.push(Input {
            file: file.clone(),
            json,
        });
    }
    let run = merge(&inputs)?;
    let rep = report::render(&run);
    println!("{}", rep.markdown);
    super::write_outputs(&rep, Some(&a.out), None)?;
    if a.strict && !rep.strict_failures.is_empty() {
        for why in &rep.strict_failures {
            eprintln!("strict: {why}");
        }
        return Ok(false);
    }
    Ok(true)
}
