//! Closed-loop HTTP clients against ringstore nodes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;

use crate::report::{peak_rss_bytes, OpRecorder, RunResult};
use crate::Args;

pub async fn run(args: &Args) -> anyhow::Result<RunResult> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .connector(awc::Connector::new().limit(args.clients * 2))
        .finish();
    // Fail fast with a clear message if nothing listens.
    for e in &args.endpoints {
        let r = client.get(format!("{e}/healthz")).send().await;
        anyhow::ensure!(r.is_ok(), "{e} is not answering /healthz: {:?}", r.err());
    }
    let done = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let value: Arc<Vec<u8>> = Arc::new((0..args.value_size).map(|i| (i % 251) as u8).collect());
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let client = client.clone();
        let base = args.endpoints[c % args.endpoints.len()].clone();
        let (done, completed, value) = (done.clone(), completed.clone(), value.clone());
        let keys = args.keys;
        tasks.push(actix_rt::spawn(async move {
            let mut rec = OpRecorder::default();
            let mut rng = rand::rngs::StdRng::from_entropy();
            while !done.load(Ordering::Relaxed) {
                let key = rng.gen_range(0..keys);
                let t = Instant::now();
                let res = client.put(format!("{base}/v1/kv/lt/{key}")).send_body(value.as_slice().to_vec()).await;
                match res {
                    Ok(mut r) if r.status().is_success() => {
                        let _ = r.body().await;
                        rec.ok(t.elapsed());
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(mut r) => {
                        let body = r.body().await.map(|b| String::from_utf8_lossy(&b).into_owned());
                        rec.err(format!("{} {}", r.status(), body.unwrap_or_default()));
                    }
                    Err(e) => rec.err(e.to_string()),
                }
            }
            rec
        }));
    }
    let timeline = progress(args.duration, &completed).await;
    done.store(true, Ordering::Relaxed);
    let mut put = OpRecorder::default();
    for t in tasks {
        put.merge(t.await?);
    }
    let elapsed = start.elapsed();
    Ok(RunResult {
        ops: [("put", put)].into_iter().collect(),
        elapsed,
        timeline,
        peak_rss_bytes: args.watch_pid.and_then(peak_rss_bytes),
    })
}

use rand::SeedableRng;

/// Shows a progress bar for `duration` and returns ops completed per second.
async fn progress(duration: Duration, completed: &AtomicU64) -> Vec<u64> {
    let pb = ProgressBar::new(duration.as_secs().max(1));
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let mut timeline = Vec::new();
    let mut last = 0;
    while start.elapsed() < duration {
        let left = duration.saturating_sub(start.elapsed());
        actix_rt::time::sleep(left.min(Duration::from_secs(1))).await;
        let now = completed.load(Ordering::Relaxed);
        timeline.push(now - last);
        pb.set_position(start.elapsed().as_secs());
        pb.set_message(format!("{} ops/s", now - last));
        last = now;
    }
    pb.finish_and_clear();
    timeline
}
