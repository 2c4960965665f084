//! `ringstore-fuzz`: runs the fuzz targets for as long as asked, with a
//! progress bar each and a summary table; failing inputs are saved to the
//! target's corpus as `crash-<hash>.bin` and the exit status is 1.
//!
//! Usage: ringstore-fuzz [--target peer_frame,...] [--duration 60s]
//!        [--iterations N] [--seed N] [--corpus DIR] [--write-corpus]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ringstore_fuzz::Target;

#[derive(Parser, Debug)]
#[command(name = "ringstore-fuzz", about = "Mutation fuzzing of what ringstore decodes from peers and clients")]
struct Args {
    /// Targets (comma-separated): peer_frame, snapshot_stream, entry_codecs, http_request; all by default.
    #[arg(long, value_delimiter = ',')]
    target: Vec<String>,
    /// Time per target (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    duration: Duration,
    /// Inputs per target at most.
    #[arg(long, default_value_t = u64::MAX)]
    iterations: u64,
    /// Seed of the mutations (random if not given; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// The corpus root (one directory per target).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))]
    corpus: PathBuf,
    /// (Re)write each target's seed files from the encoders, then exit.
    #[arg(long)]
    write_corpus: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit()).map(|i| s.split_at(i)).unwrap_or((s, "s"));
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration like 30s or 5m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: the unit is ms, s, m or h")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let targets: Vec<Target> = if args.target.is_empty() {
        Target::ALL.to_vec()
    } else {
        args.target
            .iter()
            .map(|t| Target::parse(t).with_context(|| format!("unknown target {t:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    if args.write_corpus {
        for t in targets {
            let dir = ringstore_fuzz::corpus_dir(&args.corpus, t);
            let n = ringstore_fuzz::write_corpus(&dir, t).with_context(|| format!("writing {}", dir.display()))?;
            println!("{}: {n} seed(s) in {}", t.name(), dir.display());
        }
        return Ok(());
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("ringstore-fuzz: seed {seed}, {:?} per target", args.duration);
    let mut rows = Vec::new();
    let mut failed = false;
    for t in targets {
        let dir = ringstore_fuzz::corpus_dir(&args.corpus, t);
        let corpus = ringstore_fuzz::load_corpus(&dir).with_context(|| format!("reading {}", dir.display()))?;
        let bar = ProgressBar::new(args.duration.as_secs().max(1));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>16} [{bar:30}] {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(t.name());
        let start = Instant::now();
        let report = ringstore_fuzz::run(t, &corpus, args.iterations, seed, Some(start + args.duration), |r| {
            bar.set_position(start.elapsed().as_secs());
            bar.set_message(format!("{} inputs, {} failures", r.runs, r.failures.len()));
        });
        bar.finish_and_clear();
        for f in &report.failures {
            let saved = ringstore_fuzz::save_failure(&dir, f)?;
            eprintln!("{}: {} (input saved to {})", t.name(), f.message, saved.display());
        }
        failed |= !report.failures.is_empty();
        rows.push((t, corpus.len(), report));
    }
    println!(
        "\n{:<16} {:>7} {:>10} {:>9} {:>10} {:>10} {:>12} {:>9}",
        "target", "corpus", "inputs", "inputs/s", "accepted", "rejected", "error kinds", "failures"
    );
    for (t, corpus, r) in &rows {
        let rate = r.runs as f64 / r.elapsed.as_secs_f64().max(1e-9);
        println!(
            "{:<16} {:>7} {:>10} {:>9.0} {:>10} {:>10} {:>12} {:>9}",
            t.name(),
            corpus,
            r.runs,
            rate,
            r.accepted,
            r.rejected,
            r.errors.len(),
            r.failures.len()
        );
    }
    let slowest = rows.iter().map(|(_, _, r)| r.slowest).max().unwrap_or_default();
    println!("slowest input: {slowest:?}; verdict: {}", if failed { "FAILURES (see above)" } else { "clean" });
    std::process::exit(i32::from(failed))
}
