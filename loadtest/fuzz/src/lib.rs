//! Fuzzing of everything ringstore decodes from a peer or a client: peer
//! frames, snapshot chunk streams, the codecs of Raft entries and stored
//! records, and the parsing of request paths, headers, queries and bodies.
//!
//! A seeded mutation fuzzer on the stable toolchain, not cargo-fuzz: the
//! decoders live in crates that link RocksDB, and cargo-fuzz's nightly,
//! sanitizer-instrumented build would compile RocksDB's C++ a second time
//! on every fresh machine. Inputs start from a corpus (`corpus/<target>/`,
//! valid encodings written by `ringstore-fuzz --write-corpus`, plus any
//! input that once failed) and are mutated: bit flips, interesting
//! integers, inserted, removed and repeated runs, truncation, splices of
//! two inputs. Each target checks what must always hold:
//! - nothing panics (caught per input, with the input saved);
//! - a decoded value encodes and decodes back to itself (entry codecs);
//! - a refused request is a 4xx, never a 5xx (request parsing);
//! - no input takes longer than [`SLOW_INPUT`] (no quadratic blow-up).
//!
//! Layout: [`mutate`] (the mutator), [`targets`] (what each target runs
//! and checks), [`seeds`] (the valid encodings the corpus starts from).
//! `make test` runs a fixed-seed round of each target (tests/fuzz.rs);
//! `ringstore-fuzz` runs them for as long as asked.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub mod mutate;
pub mod seeds;
pub mod targets;

pub use targets::Target;

/// One input taking longer than this (unoptimised build) is a failure.
pub const SLOW_INPUT: Duration = Duration::from_secs(2);
/// Inputs grow to at most this many bytes.
pub const INPUT_BYTES_MAX: usize = 64 * 1024;

/// What one input did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Decoded or accepted.
    Accepted,
    /// Refused with an error, as it should be; the label groups errors.
    Rejected(String),
}

/// An input that broke a rule.
#[derive(Debug, Clone)]
pub struct Failure {
    pub input: Vec<u8>,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub runs: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Rejections by label: which error paths were reached.
    pub errors: BTreeMap<String, u64>,
    pub failures: Vec<Failure>,
    pub slowest: Duration,
    pub elapsed: Duration,
}

/// Runs `target` on mutations of `corpus` until `iterations` inputs or
/// `until`, whichever first; `progress` is called every 1,000 runs.
pub fn run(
    target: Target,
    corpus: &[Vec<u8>],
    iterations: u64,
    seed: u64,
    until: Option<Instant>,
    mut progress: impl FnMut(&Report),
) -> Report {
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed ^ target.salt());
    let mut report = Report::default();
    // The corpus itself first: every seed must pass as it is.
    let mut queue: Vec<Vec<u8>> = corpus.to_vec();
    for i in 0..iterations {
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        let input = match queue.pop() {
            Some(seed_input) => seed_input,
            None if corpus.is_empty() => mutate::fresh(&mut rng),
            None => {
                let base = &corpus[rng.gen_range(0..corpus.len())];
                let other = &corpus[rng.gen_range(0..corpus.len())];
                mutate::mutate(&mut rng, base, other)
            }
        };
        let t = Instant::now();
        let verdict = catch_unwind(AssertUnwindSafe(|| target.check(&input)));
        let took = t.elapsed();
        report.runs += 1;
        report.slowest = report.slowest.max(took);
        match verdict {
            Ok(Ok(Verdict::Accepted)) => report.accepted += 1,
            Ok(Ok(Verdict::Rejected(label))) => {
                report.rejected += 1;
                *report.errors.entry(label).or_default() += 1;
            }
            Ok(Err(broken)) => report.failures.push(Failure { input: input.clone(), message: broken }),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                report.failures.push(Failure { input: input.clone(), message: format!("panicked: {what}") });
            }
        }
        if took > SLOW_INPUT {
            report.failures.push(Failure { input, message: format!("took {took:?} (limit {SLOW_INPUT:?})") });
        }
        if (i + 1) % 1000 == 0 {
            report.elapsed = start.elapsed();
            progress(&report);
        }
    }
    report.elapsed = start.elapsed();
    report
}

/// The corpus directory of `target` under `root` (`loadtest/fuzz/corpus`).
pub fn corpus_dir(root: &Path, target: Target) -> PathBuf {
    root.join(target.name())
}

/// Every file of a target's corpus, in name order.
pub fn load_corpus(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths.into_iter().filter(|p| p.is_file()).map(std::fs::read).collect()
}

/// Writes the seeds of `target` as `seed-NNN.bin` (replacing earlier seeds;
/// saved failures, `crash-*.bin`, stay).
pub fn write_corpus(dir: &Path, target: Target) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seed-")) {
            std::fs::remove_file(p)?;
        }
    }
    let seeds = seeds::of(target);
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}.bin")), s)?;
    }
    Ok(seeds.len())
}

/// Saves a failing input as `crash-<hash>.bin`, so it stays in the corpus
/// as a regression case once fixed.
pub fn save_failure(dir: &Path, f: &Failure) -> std::io::Result<PathBuf> {
    let hash = ringstore_shared::hash::hash64(&f.input);
    let p = dir.join(format!("crash-{hash:016x}.bin"));
    std::fs::create_dir_all(dir)?;
    std::fs::write(&p, &f.input)?;
    Ok(p)
}
