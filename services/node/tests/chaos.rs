//! The fault suite's short schedule (`make test`): five `ringstore node`
//! processes of this build (which has run-time failpoints for the delay
//! and clock-skew nemeses), register, lock and list-append clients, and
//! every nemesis at least once; the histories must check clean.
//! `ringstore-chaos --duration 2h` runs the long schedules. Needs root
//! (iptables), as CI has: it fails, never skips, without.

use std::sync::Mutex;
use std::time::Duration;

use ringstore_chaos::run::{self, Config};
use ringstore_chaos::schedule::FaultKind;

/// One cluster at a time: two would share two cores and each look slow.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn every_nemesis_fires_and_the_histories_stay_linearizable_lock_safe_and_complete() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ringstore_testkit::netfilter::available().expect("the fault suite needs iptables as root");
    let out = tempfile::tempdir().unwrap();
    let (hold, quiet) = (Duration::from_secs(4), Duration::from_secs(3));
    let seed = std::env::var("RINGSTORE_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261204);
    let cfg = Config {
        bin: env!("CARGO_BIN_EXE_ringstore").into(),
        nodes: 5,
        node_flags: vec!["--shards".into(), "4".into()],
        seed,
        duration: Config::one_round(FaultKind::ALL.len(), hold, quiet),
        hold,
        quiet,
        kinds: FaultKind::ALL.to_vec(),
        register_clients: 6,
        lock_clients: 4,
        append_clients: 2,
        out: out.path().to_path_buf(),
        budget: 5_000_000,
        progress: false,
        failpoints: Vec::new(),
    };
    let report = run::run(&cfg).expect("the chaos run");
    println!("{report}");
    for kind in FaultKind::ALL {
        assert!(report.faults.get(&kind).is_some_and(|f| f.count > 0), "{kind:?} never fired:\n{report}");
    }
    assert!(report.registers.ok > 300, "too few register calls to say anything:\n{report}");
    assert!(report.grants > 10 && report.fenced_writes.ok > 10, "too few lock sections:\n{report}");
    assert!(report.appends.ok > 30, "too few appends:\n{report}");
    assert!(report.valid(), "seed {seed}: anomalies (history in a kept copy below)\n{report}\n{}", keep(out));
}

/// Keeps the run's directory (history.json, timelines) for a failed run.
fn keep(out: tempfile::TempDir) -> String {
    let path = out.keep();
    format!("history, report and timelines kept in {}", path.display())
}

/// The checker is shown to work on the real system, not only on crafted
/// histories: with a planted bug (a leader's read lease that never ends,
/// test builds only) a paused or cut-off leader serves reads after a new
/// leader has taken writes, and the run must say so. Whether a client's
/// read lands on the deposed leader in its short window is chance, so up
/// to five runs (seeds 7 to 11) are made; one catch is the proof. (Three
/// were not always enough on CI's loaded two cores: seeds 7, 8 and 9 all
/// missed once on 2026-12-04, and seed 7 caught it on the next run.)
#[test]
fn a_planted_stale_read_bug_is_caught_by_the_checker() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ringstore_testkit::netfilter::available().expect("the fault suite needs iptables as root");
    let mut reports = Vec::new();
    for seed in 7..12 {
        let out = tempfile::tempdir().unwrap();
        let (hold, quiet) = (Duration::from_secs(4), Duration::from_secs(2));
        let kinds = vec![FaultKind::Pause, FaultKind::PartitionLeaderMinority];
        let cfg = Config {
            bin: env!("CARGO_BIN_EXE_ringstore").into(),
            nodes: 3,
            node_flags: vec!["--shards".into(), "2".into()],
            seed,
            duration: Config::one_round(kinds.len(), hold, quiet) * 3,
            hold,
            quiet,
            kinds,
            register_clients: 8,
            lock_clients: 0,
            append_clients: 0,
            out: out.path().to_path_buf(),
            budget: 5_000_000,
            progress: false,
            failpoints: vec![("bug_read_lease_never_expires".into(), "return".into())],
        };
        let report = run::run(&cfg).expect("the chaos run");
        println!("{report}");
        if let Some(f) = report.linearizability_failures.first() {
            assert!(!f.window.is_empty() && f.window.len() < 50, "the proof is not a small window:\n{report}");
            assert!(out.path().join("violation-0.svg").exists());
            return;
        }
        reports.push(report.to_string());
    }
    panic!("the planted stale reads went unnoticed in five runs:\n{}", reports.join("\n"));
}
