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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Shard;
    use crate::voice::media::{CallerStats, ProbeStats};
    use crate::voice::report::render;
    use serde_json::json;

    const CALLERS: usize = 47;
    const CHANNELS: usize = 6;
    const SPEAKERS: usize = 2;

    fn scenario() -> Scenario {
        Scenario {
            target: "lodge".into(),
            transport: "webrtc".into(),
            callers: CALLERS,
            channels: CHANNELS,
            speakers: SPEAKERS,
            slots: 3,
            join_rate: 20.0,
            duration_s: 20,
            talk_ms: 1500,
            pause_ms: 1000,
            seed: 1,
            probes: 0.25,
            profile: None,
            speech: "test".into(),
        }
    }

    /// What caller `i` measured: distinct, deterministic figures per caller (one never
    /// connects, some lose packets, every fourth listener probes).
    fn caller(i: usize) -> CallerStats {
        let mut m2e_us = crate::hist::micros();
        for j in 0..(i % 7 + 3) {
            m2e_us
                .record_n((1_000 + 37 * i + 911 * j) as u64, (i % 5 + 1) as u64)
                .unwrap();
        }
        let connected = i != 13;
        CallerStats {
            connect_ms: connected.then_some(150.0 + 11.0 * i as f64),
            queued_ms: connected.then_some(i as f64),
            signaled_ms: connected.then_some(60.0 + 2.0 * i as f64),
            rtp_sent: if i < SPEAKERS * CHANNELS { 500 } else { 0 },
            received: if connected { 900 + i as u64 } else { 0 },
            gaps: (i % 4) as u64,
            jitter_ms: vec![0.25 + i as f64 / 100.0, 1.5],
            m2e_us,
            repeated: 3,
            unmatched: (i % 2) as u64,
            probe: (i >= SPEAKERS * CHANNELS && i.is_multiple_of(4)).then_some(ProbeStats {
                concealment_pct: i as f64 / 50.0,
                mean_buffer_delay_ms: 40.0 + i as f64,
                frames: 1000,
            }),
            input_errors: 0,
            reordered: (i % 3) as u64,
            rtp_datagrams: 1000 + i as u64,
            gap_sizes: [(i % 4) as u64, 0, 0, 0, 0],
            rejoins: (i == 20) as u32,
            rejoin_ms: if i == 20 { vec![812.0] } else { vec![] },
            media_at_end: connected,
        }
    }

    /// The run of one shard as `lodge-load voice` assembles it (callers dealt to the nodes in
    /// join order).
    fn run_of(shard: Shard, urls: &[&str], scenario: &Scenario) -> Run {
        let plan = shard.callers(CALLERS, CHANNELS);
        let mut nodes: Vec<(String, Tally)> = urls
            .iter()
            .enumerate()
            .map(|(n, u)| {
                let callers = (0..plan.len()).filter(|k| k % urls.len() == n).count() as u64;
                (
                    u.to_string(),
                    Tally {
                        callers,
                        ..Tally::default()
                    },
                )
            })
            .collect();
        for (k, &i) in plan.iter().enumerate() {
            nodes[k % urls.len()].1.add_caller(&caller(i), SPEAKERS);
        }
        let speakers = plan.iter().filter(|&&i| i / CHANNELS < SPEAKERS).count() as u64;
        Run {
            scenario: scenario.clone(),
            shards: Shards {
                count: shard.count,
                indices: vec![shard.index],
            },
            plan: Plan {
                channels: shard.channels(CHANNELS).len() as u64,
                speakers,
                listeners: plan.len() as u64 - speakers,
            },
            nodes,
            errors: Vec::new(),
            server: None,
            forward_delay_ms: None,
            node_drops: Vec::new(),
            timeline: vec![
                json!({ "t_s": 1.0, "connected": plan.len(), "pps_out": 100.0, "pps_in": 300.0, "m2e_p99_ms": 9.0 }),
            ],
            interrupted: false,
            started_unix_ms: 1_000_000 + 2_000 * shard.index as u64,
            merged_reports: None,
        }
    }

    fn input(name: &str, run: &Run) -> Input {
        Input {
            file: PathBuf::from(name),
            json: render(run).json,
        }
    }

    fn shard(index: usize, count: usize) -> Shard {
        Shard { index, count }
    }

    /// The main table of a Markdown report (its "| measure | value |" rows).
    fn main_table(md: &str) -> Vec<&str> {
        md.lines()
            .skip_while(|l| !l.starts_with("| measure |"))
            .take_while(|l| l.starts_with('|'))
            .filter(|l| !l.starts_with("| node drops"))
            .collect()
    }

    fn sorted_probes(t: &mut Tally) {
        t.probes
            .sort_by(|a, b| a.mos_estimate.total_cmp(&b.mos_estimate));
    }

    #[test]
    fn merging_the_shards_equals_running_the_union() {
        for urls in [
            &["http://127.0.0.2:8080"][..],
            &["http://a:1", "http://b:1"][..],
        ] {
            let sc = scenario();
            let whole = run_of(Shard::WHOLE, urls, &sc);
            let inputs: Vec<Input> = (0..3)
                .map(|i| input(&format!("shard-{i}.json"), &run_of(shard(i, 3), urls, &sc)))
                .collect();
            let merged = merge(&inputs).expect("disjoint shards of one scenario merge");
            assert_eq!(merged.shards.indices, [0, 1, 2]);
            assert_eq!(merged.plan, whole.plan);
            // The tallies (histograms bucket by bucket, every counter) are the union's, and
            // those are what every caller measured, counted one by one without any merging.
            let mut direct = Tally {
                callers: CALLERS as u64,
                ..Tally::default()
            };
            for i in 0..CALLERS {
                direct.add_caller(&caller(i), SPEAKERS);
            }
            let (mut got, mut want) = (merged.total(), whole.total());
            sorted_probes(&mut got);
            sorted_probes(&mut want);
            sorted_probes(&mut direct);
            assert_eq!(got, direct);
            assert_eq!(want, direct);
            assert!(!direct.jitter_us.is_empty() && !direct.rejoin_ms.is_empty());
            assert_eq!(got.callers, CALLERS as u64);
            assert_eq!(got.connected, CALLERS as u64 - 1);
            // And so is every figure printed from them.
            let (m, w) = (render(&merged), render(&whole));
            assert_eq!(main_table(&m.markdown), main_table(&w.markdown));
            for key in [
                "callers",
                "connected",
                "loss_pct",
                "mouth_to_ear_ms",
                "join_ms",
                "jitter_ms",
                "gap_sizes",
                "join_phases_ms",
                "rejoin_ms",
                "channels",
            ] {
                assert_eq!(m.json[key], w.json[key], "{key}");
            }
            assert!(m
                .markdown
                .contains("Merged from 3 reports: shard(s) 0, 1, 2 of 3"));
            assert!(m
                .strict_failures
                .iter()
                .any(|f| f.contains("1 callers heard nothing")));
        }
    }

    #[test]
    fn a_merged_report_merges_again_and_missing_shards_are_named() {
        let sc = scenario();
        let urls = ["http://127.0.0.2:8080"];
        let first_two = merge(&[
            input("s0.json", &run_of(shard(0, 3), &urls, &sc)),
            input("s1.json", &run_of(shard(1, 3), &urls, &sc)),
        ])
        .unwrap();
        let partial = render(&first_two);
        assert!(partial
            .strict_failures
            .iter()
            .any(|f| f.contains("shards [2] of 3 are missing")));
        let all = merge(&[
            Input {
                file: "s01.json".into(),
                json: partial.json,
            },
            input("s2.json", &run_of(shard(2, 3), &urls, &sc)),
        ])
        .unwrap();
        assert_eq!(all.merged_reports, Some(3));
        assert_eq!(
            all.total().m2e_us,
            run_of(Shard::WHOLE, &urls, &sc).total().m2e_us
        );
    }

    #[test]
    fn overlapping_shards_and_other_scenarios_are_refused() {
        let sc = scenario();
        let urls = ["http://127.0.0.2:8080"];
        let s0 = || input("a/shard-0.json", &run_of(shard(0, 2), &urls, &sc));
        let again = input("b/shard-0.json", &run_of(shard(0, 2), &urls, &sc));
        let e = merge(&[s0(), again]).err().expect("the same shard twice");
        assert!(
            matches!(
                e,
                MergeError::OverlappingShards {
                    index: 0,
                    count: 2,
                    ..
                }
            ),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("a/shard-0.json") && msg.contains("b/shard-0.json"),
            "{msg}"
        );

        let thirds = input("third.json", &run_of(shard(1, 3), &urls, &sc));
        let e = merge(&[s0(), thirds])
            .err()
            .expect("different shard counts");
        assert!(
            matches!(e, MergeError::DifferentShardCount { a: 2, b: 3, .. }),
            "{e}"
        );

        let other = Scenario {
            seed: 2,
            ..sc.clone()
        };
        let e = merge(&[
            s0(),
            input("seed2.json", &run_of(shard(1, 2), &urls, &other)),
        ])
        .err()
        .expect("another scenario");
        match &e {
            MergeError::DifferentScenario { field, other, .. } => {
                assert_eq!(field, "seed");
                assert_eq!(other, Path::new("seed2.json"));
            }
            _ => panic!("wrong refusal: {e}"),
        }

        let chat = Input {
            file: "chat.json".into(),
            json: json!({ "scenario": "chat" }),
        };
        let e = merge(&[s0(), chat]).err().expect("a chat report");
        assert!(e.to_string().contains("chat.json"), "{e}");
        assert!(matches!(merge(&[]), Err(MergeError::Empty)));
    }

    #[test]
    fn timelines_are_aligned_on_the_wall_clock_and_generator_figures_summed() {
        let sc = scenario();
        let urls = ["http://127.0.0.2:8080"];
        let with_server = |s: Shard| {
            let mut r = run_of(s, &urls, &sc);
            r.server = Some(ServerWindow {
                seconds: 20.0 + s.index as f64,
                delivered: 1_000,
                generator_cpu_seconds: Some(1.5),
                node: Some((5, 50)),
                cpu_seconds: Some(9.0),
                ..ServerWindow::default()
            });
            r
        };
        let merged = merge(&[
            input("s0.json", &with_server(shard(0, 2))),
            input("s1.json", &with_server(shard(1, 2))),
        ])
        .unwrap();
        // Shard 1 started 2 s after shard 0: their seconds 1 are seconds 1 and 3 merged.
        let t: Vec<(f64, f64)> = merged
            .timeline
            .iter()
            .map(|p| (p["t_s"].as_f64().unwrap(), p["connected"].as_f64().unwrap()))
            .collect();
        let (c0, c1) = (
            shard(0, 2).callers(CALLERS, CHANNELS).len() as f64,
            shard(1, 2).callers(CALLERS, CHANNELS).len() as f64,
        );
        assert_eq!(t, [(1.0, c0), (3.0, c1)]);
        assert!(merged.timeline[0]["m2e_p99_ms"].is_null());
        let s = merged.server.as_ref().unwrap();
        assert_eq!((s.delivered, s.seconds), (2_000, 21.0));
        assert_eq!(s.generator_cpu_seconds, Some(3.0));
        // Node-side figures are the same nodes read twice: not added up.
        assert_eq!((s.node, s.cpu_seconds), (None, None));
    }

    #[test]
    fn the_per_node_table_appears_only_for_several_nodes() {
        let sc = scenario();
        let one = render(&run_of(Shard::WHOLE, &["http://127.0.0.2:8080"], &sc));
        assert!(!one.markdown.contains("| node | callers |"));
        let two = render(&run_of(Shard::WHOLE, &["http://a:1", "http://b:1"], &sc));
        let rows: Vec<&str> = two
            .markdown
            .lines()
            .filter(|l| l.starts_with("| http://"))
            .collect();
        assert_eq!(rows.len(), 2, "{}", two.markdown);
        // 47 callers dealt round robin: 24 to the first node, 23 to the second (caller 13,
        // which never connects, went to the second).
        assert!(
            rows[0].starts_with("| http://a:1 | 24 | 24 |"),
            "{}",
            rows[0]
        );
        assert!(
            rows[1].starts_with("| http://b:1 | 23 | 22 |"),
            "{}",
            rows[1]
        );
        assert_eq!(two.json["nodes"][1]["connected"], 22);
    }
}
