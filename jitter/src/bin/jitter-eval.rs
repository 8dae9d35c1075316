//! `jitter-eval [--seconds N] [--seed S] [--json FILE]`: every impairment profile × every playout
//! strategy; prints a Markdown table (and writes JSON). No audio (that is `lodge-load playout`):
//! delay, concealment, FEC and interruptions only, in under a second, for tuning.

use lodge_jitter::eval::{evaluate, STRATEGIES};
use lodge_jitter::Profile;

fn main() {
    let mut secs = 60;
    let mut seed = 1;
    let mut json: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                secs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage("--seconds needs a number"))
            }
            "--seed" => {
                seed = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage("--seed needs a number"))
            }
            "--json" => json = Some(args.next().unwrap_or_else(|| usage("--json needs a file"))),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let mut all = Vec::new();
    println!("| profile | strategy | mean target | mean delay | p95 delay | concealment | late | FEC-recovered | interruptions | MOS (estimate) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for p in Profile::ALL {
        for s in STRATEGIES {
            let o = evaluate(&p, s, secs, seed);
            println!(
                "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}% | {} | {:.2}% | {} | {:.2} |",
                o.profile,
                o.strategy,
                o.stats.jitter_buffer_target_delay * 1000.0
                    / o.stats.jitter_buffer_emitted_count.max(1) as f64,
                o.mean_delay_ms,
                o.p95_delay_ms,
                o.concealment_pct,
                o.stats.packets_discarded,
                o.fec_recovered_pct,
                o.interruptions,
                o.mos_estimate
            );
            all.push(o);
        }
    }
    if let Some(f) = json {
        let text = serde_json::to_string_pretty(&all).expect("outcomes serialize");
        if let Err(e) = std::fs::write(&f, text) {
            eprintln!("jitter-eval: cannot write {f}: {e}");
            std::process::exit(1);
        }
    }
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("jitter-eval: {msg}");
    }
    eprintln!("usage: jitter-eval [--seconds N (default 60)] [--seed S (default 1)] [--json FILE]");
    std::process::exit(if msg.is_empty() { 0 } else { 2 });
}
