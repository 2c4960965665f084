//! `ringstore-chaos`: runs the fault suite against real `ringstore node`
//! processes and prints the checked verdict. Needs root (iptables) and,
//! for the delay and clock-skew faults, a ringstore built with failpoints
//! (the test build, or `cargo build --release -p ringstore --features failpoints`).
//!
//! Usage: ringstore-chaos [--duration 2h] [--seed N] [--nodes 5] [--faults kill,pause,...]
//!        [--hold 6s] [--quiet 4s] [--bin PATH] [--out DIR] [-- NODE FLAGS...]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ringstore_chaos::run::{self, Config};
use ringstore_chaos::schedule::FaultKind;

#[derive(Parser, Debug)]
#[command(
    name = "ringstore-chaos",
    about = "Faults on a ringstore cluster, with histories checked for linearizability, lock safety and lost writes"
)]
struct Args {
    /// How long faults are injected (e.g. 90s, 20m, 2h); at least one round of every fault by default.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Seed of the schedule and the clients (random if not given; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// Which faults (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Vec<FaultKind>,
    /// About how long each fault lasts.
    #[arg(long, value_parser = parse_duration, default_value = "6s")]
    hold: Duration,
    /// Calm between faults.
    #[arg(long, value_parser = parse_duration, default_value = "4s")]
    quiet: Duration,
    #[arg(long, default_value_t = 8)]
    register_clients: usize,
    #[arg(long, default_value_t = 4)]
    lock_clients: usize,
    #[arg(long, default_value_t = 2)]
    append_clients: usize,
    /// Search steps per key before its verdict is "unknown".
    #[arg(long, default_value_t = 20_000_000)]
    budget: u64,
    /// Arms a failpoint on every node at the start, NAME=ACTIONS (e.g.
    /// `bug_read_lease_never_expires=return`): a planted bug the checkers
    /// should catch. Repeatable.
    #[arg(long = "failpoint", value_parser = parse_failpoint)]
    failpoints: Vec<(String, String)>,
    /// The ringstore binary (default: `ringstore` beside this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// History, report and timelines go here (default: chaos-<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Flags for every node (after `--`).
    #[arg(last = true)]
    node_flags: Vec<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: expected a number and s, m or h"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("{s:?}: unit must be ms, s, m or h")),
    }
}

fn parse_failpoint(s: &str) -> Result<(String, String), String> {
    let (name, actions) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=ACTIONS"))?;
    Ok((name.to_string(), actions.to_string()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let kinds = if args.faults.is_empty() { FaultKind::ALL.to_vec() } else { args.faults.clone() };
    let bin = match args.bin {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("ringstore"),
    };
    anyhow::ensure!(bin.exists(), "{} does not exist (build it, or pass --bin)", bin.display());
    let duration = args.duration.unwrap_or_else(|| Config::one_round(kinds.len(), args.hold, args.quiet));
    let cfg = Config {
        bin,
        nodes: args.nodes,
        node_flags: args.node_flags,
        seed,
        duration,
        hold: args.hold,
        quiet: args.quiet,
        kinds,
        register_clients: args.register_clients,
        lock_clients: args.lock_clients,
        append_clients: args.append_clients,
        out: args.out.unwrap_or_else(|| PathBuf::from(format!("chaos-{seed}"))),
        budget: args.budget,
        progress: true,
        failpoints: args.failpoints,
    };
    eprintln!(
        "ringstore-chaos: seed {seed}, {} nodes, faults for {:?}; output in {}",
        cfg.nodes,
        cfg.duration,
        cfg.out.display()
    );
    let report = run::run(&cfg).context("the run")?;
    println!("{report}");
    println!("history, report and timelines: {}", cfg.out.display());
    if !report.valid() || report.nemesis_error.is_some() {
        std::process::exit(1);
    }
    Ok(())
}
