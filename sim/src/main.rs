//! `ferry-sim`: run seeds of the deployment simulator and report.
//!
//! `ferry-sim --seeds 1..1000` runs 1,000 random deployments and ends with
//! one JSON line; `--seed N --trace` replays one with its event trace;
//! `--scenario NAME` runs a named regression; `--inject-bug NAME` turns on a
//! deliberate fault in the core to show that the checks catch it.

use clap::Parser;
use ferry_sim::{run, Options, Outcome};
use ferry_sync::Bugs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Parser)]
#[command(version, about = "Simulate a whole ferry deployment from a seed, in virtual time")]
struct Args {
    /// Seeds to run, as FIRST..LAST (both included).
    #[arg(long, default_value = "1..100")]
    seeds: String,
    /// Run this one seed (overrides --seeds).
    #[arg(long)]
    seed: Option<u64>,
    /// A named scenario instead of random deployments: large-backlog,
    /// interrupted-sync, hub-restart, trickle, lost-tail, revocation, or `all`.
    #[arg(long)]
    scenario: Option<String>,
    /// Turn on a deliberate fault in the core: claims-never-released,
    /// skip-policy-check, duplicate-after-reconnect, drop-acked-append-on-crash,
    /// relay-forges, trust-unclean-tail, admit-revoked.
    #[arg(long)]
    inject_bug: Option<String>,
    /// Print the event trace of every seed run (use with --seed).
    #[arg(long)]
    trace: bool,
    /// Stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Model nodes that forget their stateless-reset key when they restart
    /// (peers then notice a restart only at their idle timeout).
    #[arg(long)]
    no_stateless_reset: bool,
    /// Let a seed converge at a live round (every 300 s on a connection
    /// pushed both ways) instead of failing it: by default an event that a
    /// push should have carried and did not is a stall.
    #[arg(long)]
    lenient_pushes: bool,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("--seeds takes FIRST..LAST, not {s}"))?;
    let a: u64 = a.parse().map_err(|_| format!("bad first seed in {s}"))?;
    let b: u64 = b
        .trim_start_matches('=')
        .parse()
        .map_err(|_| format!("bad last seed in {s}"))?;
    if b < a {
        return Err(format!("empty seed range {s}"));
    }
    Ok((a, b))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let bugs = match args.inject_bug.as_deref() {
        None => Bugs::default(),
        Some(name) => match Bugs::parse(name) {
            Some(b) => b,
            None => {
                eprintln!("error: no bug named {name}; known: {}", Bugs::NAMES.join(", "));
                return std::process::ExitCode::from(2);
            }
        },
    };
    let opts = Options {
        bugs,
        keep_trace: args.trace,
        stateless_reset: !args.no_stateless_reset,
        strict_pushes: !args.lenient_pushes,
        authenticate_logs: true,
    };
    let scenarios: Vec<Option<String>> = match args.scenario.as_deref() {
        None => vec![None],
        Some("all") => ferry_sim::scenario::NAMES.iter().map(|s| Some(s.to_string())).collect(),
        Some(s) => vec![Some(s.to_string())],
    };
    let (first, last) = match args.seed {
        Some(s) => (s, s),
        None => match parse_range(&args.seeds) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    let jobs: Vec<(u64, Option<String>)> = (first..=last)
        .flat_map(|seed| scenarios.iter().map(move |s| (seed, s.clone())))
        .collect();
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let results: Mutex<Vec<(Outcome, Option<String>)>> = Mutex::new(Vec::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= jobs.len() || stop.load(Ordering::Relaxed) {
                    return;
                }
                let (seed, scenario) = &jobs[i];
                let outcome = run(*seed, scenario.as_deref(), opts.clone());
                if outcome.failure.is_some() && args.fail_fast {
                    stop.store(true, Ordering::Relaxed);
                }
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((outcome, scenario.clone()));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(o, s)| (o.seed, s.clone()));
    let mut failures = 0;
    let mut first_failing = None;
    let mut virtual_secs = 0.0;
    let (mut received, mut duplicates, mut unproved) = (0, 0, 0);
    for (o, scenario) in &results {
        virtual_secs += o.virtual_secs;
        received += o.events_received;
        duplicates += o.duplicates;
        unproved += o.events_unproved;
        if args.trace {
            for line in &o.trace {
                println!("{line}");
            }
            println!("seed {} trace hash {:016x}", o.seed, o.trace_hash);
        }
        if let Some(why) = &o.failure {
            failures += 1;
            first_failing.get_or_insert(o.seed);
            let mut replay = format!("cargo run --release -p ferry-sim -- --seed {} --trace", o.seed);
            if let Some(s) = scenario {
                replay.push_str(&format!(" --scenario {s}"));
            }
            if let Some(b) = &args.inject_bug {
                replay.push_str(&format!(" --inject-bug {b}"));
            }
            eprintln!("seed {} failed: {why}\n  replay: {replay}", o.seed);
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "seeds": results.len(),
            "failures": failures,
            "first_failing_seed": first_failing,
            "virtual_hours": (virtual_secs / 3600.0 * 10.0).round() / 10.0,
            "wall_seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "events_received": received,
            "duplicates": duplicates,
            // Refused for want of a proof: forged (relay-forges), or the
            // frame carrying them lost its proof to a broken connection.
            "events_unproved": unproved,
        })
    );
    if failures > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
