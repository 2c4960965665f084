//! A fixed-seed round of every fuzz target over the committed corpus, in
//! `make test`: no panic, no broken rule, no slow input; and the round
//! reaches both sides of each decoder (accepted and refused inputs, and
//! several distinct refusals), so it is not fuzzing a wall.
//! `RINGSTORE_FUZZ_SEED` / `RINGSTORE_FUZZ_ITERATIONS` change the round.

use std::path::Path;

use ringstore_fuzz::{corpus_dir, load_corpus, seeds, Target};

fn round(target: Target, min_error_kinds: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let corpus = load_corpus(&corpus_dir(&root, target)).expect("the corpus is committed");
    assert!(
        corpus.len() >= seeds::of(target).len(),
        "{}: the committed corpus lacks seeds; run `cargo run -p ringstore-fuzz -- --write-corpus`",
        target.name()
    );
    let seed = std::env::var("RINGSTORE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261204);
    let iterations = std::env::var("RINGSTORE_FUZZ_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let r = ringstore_fuzz::run(target, &corpus, iterations, seed, None, |_| {});
    let shown: Vec<String> = r.failures.iter().take(5).map(|f| format!("{} on {:02x?}", f.message, f.input)).collect();
    assert!(
        r.failures.is_empty(),
        "{}: {} failure(s), seed {seed}:\n{}",
        target.name(),
        r.failures.len(),
        shown.join("\n")
    );
    assert_eq!(r.runs, iterations);
    assert!(r.accepted >= corpus.len() as u64, "{}: every seed is accepted, and more: {r:?}", target.name());
    assert!(r.rejected > iterations / 10, "{}: mutations must reach the refusals: {r:?}", target.name());
    assert!(r.errors.len() >= min_error_kinds, "{}: only {:?}", target.name(), r.errors.keys().collect::<Vec<_>>());
}

#[test]
fn peer_frames() {
    round(Target::PeerFrame, 8);
}

#[test]
fn snapshot_streams() {
    round(Target::SnapshotStream, 4);
}

#[test]
fn entry_codecs() {
    round(Target::EntryCodecs, 6);
}

#[test]
fn http_requests() {
    round(Target::HttpRequest, 13);
}

/// The seeds are what the encoders write today: an encoder change that
/// forgets the corpus is caught here.
#[test]
fn the_committed_seeds_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for t in Target::ALL {
        for (i, s) in seeds::of(t).iter().enumerate() {
            let path = corpus_dir(&root, t).join(format!("seed-{i:03}.bin"));
            let committed = std::fs::read(&path).unwrap_or_default();
            // Nothing in the seeds depends on time or randomness.
            assert_eq!(
                &committed,
                s,
                "{} differs from the encoder; run `cargo run -p ringstore-fuzz -- --write-corpus`",
                path.display()
            );
        }
    }
}
