//! The physical limit: synced writes straight into RocksDB, through the
//! same `Engine` ringstore uses, with no Raft, no network and no HTTP.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use ringstore_storage::Engine;

use crate::report::{OpRecorder, RunResult};
use crate::Args;

pub fn run(args: &Args) -> anyhow::Result<RunResult> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let engine = Engine::open(&dir, "loadtest")?;
    let value: Vec<u8> = (0..args.value_size).map(|i| (i % 251) as u8).collect();
    let done = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..args.clients)
        .map(|_| {
            let (engine, done, completed, value) = (engine.clone(), done.clone(), completed.clone(), value.clone());
            let (keys, batch) = (args.keys, args.batch);
            std::thread::spawn(move || -> anyhow::Result<OpRecorder> {
                let mut rec = OpRecorder::default();
                let mut rng = rand::thread_rng();
                while !done.load(Ordering::Relaxed) {
                    let ks: Vec<Vec<u8>> = (0..batch).map(|_| rng.gen_range(0..keys).to_be_bytes().to_vec()).collect();
                    let t = Instant::now();
                    engine.raw_put_batch(&ks, &value, true)?;
                    // Each key of a batch counts as one write; latency is the batch's.
                    for _ in 0..batch {
                        rec.ok(t.elapsed());
                    }
                    completed.fetch_add(batch as u64, Ordering::Relaxed);
                }
                Ok(rec)
            })
        })
        .collect();
    let mut timeline = Vec::new();
    let mut last = 0;
    while start.elapsed() < args.duration {
        std::thread::sleep(args.duration.saturating_sub(start.elapsed()).min(Duration::from_secs(1)));
        let now = completed.load(Ordering::Relaxed);
        timeline.push(now - last);
        last = now;
    }
    done.store(true, Ordering::Relaxed);
    let mut put = OpRecorder::default();
    for h in handles {
        match h.join() {
            Ok(r) => put.merge(r?),
            Err(_) => anyhow::bail!("a writer thread panicked"),
        }
    }
    Ok(RunResult {
        ops: [("put", put)].into_iter().collect(),
        elapsed: start.elapsed(),
        timeline,
        p99_timeline: Vec::new(),
        peak_rss_bytes: None,
    })
}
