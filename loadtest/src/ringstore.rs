//! Clients against ringstore (HTTP) or etcd (its native gRPC KV API),
//! running the same workload: closed loop (each client waits for its
//! answer) or open loop (`--rate`: requests start on a schedule and
//! latency counts from the scheduled start, so a stall is not hidden by
//! coordinated omission).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};

use crate::keys::{KeyDist, Zipfian, ZIPF_THETA};
use crate::report::{peak_rss_bytes, OpRecorder, RunResult};
use crate::{Args, Dist, System};

/// One system's way of doing a GET and a PUT. `Ok(())` is a valid answer
/// (a GET of a key never written included).
#[derive(Clone)]
enum Backend {
    Http { client: awc::Client, base: String },
    // Boxed: the gRPC client is ~400 bytes, the HTTP one ~64.
    Etcd { kv: Box<etcd_client::KvClient> },
}

impl Backend {
    async fn get(&mut self, key: u64) -> Result<(), String> {
        match self {
            Backend::Http { client, base } => match client.get(format!("{base}/v1/kv/lt/{key}")).send().await {
                Ok(mut r) if r.status().is_success() || r.status().as_u16() == 404 => {
                    r.body().await.map(|_| ()).map_err(|e| e.to_string())
                }
                Ok(mut r) => {
                    Err(format!("{} {}", r.status(), String::from_utf8_lossy(&r.body().await.unwrap_or_default())))
                }
                Err(e) => Err(e.to_string()),
            },
            // etcd's default range read is linearizable, like ringstore's GET.
            Backend::Etcd { kv } => kv.get(format!("lt/{key}"), None).await.map(|_| ()).map_err(|e| e.to_string()),
        }
    }

    async fn put(&mut self, key: u64, value: &[u8]) -> Result<(), String> {
        match self {
            Backend::Http { client, base } => {
                match client.put(format!("{base}/v1/kv/lt/{key}")).send_body(value.to_vec()).await {
                    Ok(mut r) if r.status().is_success() => r.body().await.map(|_| ()).map_err(|e| e.to_string()),
                    Ok(mut r) => {
                        Err(format!("{} {}", r.status(), String::from_utf8_lossy(&r.body().await.unwrap_or_default())))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Backend::Etcd { kv } => {
                kv.put(format!("lt/{key}"), value.to_vec(), None).await.map(|_| ()).map_err(|e| e.to_string())
            }
        }
    }

    /// `keys.len()` puts in one `POST /v1/kv:batch`; an error if any failed.
    async fn put_batch(&mut self, keys: &[u64], value_b64: &str) -> Result<(), String> {
        let Backend::Http { client, base } = self else { return Err("batches are ringstore's".into()) };
        let ops: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| serde_json::json!({ "op": "put", "key": format!("lt/{k}"), "value_b64": value_b64 }))
            .collect();
        match client.post(format!("{base}/v1/kv:batch")).send_json(&serde_json::json!({ "ops": ops })).await {
            Ok(mut r) if r.status().is_success() => {
                let v: serde_json::Value = r.json().limit(16 << 20).await.map_err(|e| e.to_string())?;
                match v["failed"].as_u64() {
                    Some(0) => Ok(()),
                    _ => Err(format!(
                        "batch items failed: {}",
                        v["results"]
                            .as_array()
                            .and_then(|r| r.iter().find(|i| i["ok"] == false))
                            .cloned()
                            .unwrap_or_default()
                    )),
                }
            }
            Ok(mut r) => {
                Err(format!("{} {}", r.status(), String::from_utf8_lossy(&r.body().await.unwrap_or_default())))
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

async fn backends(args: &Args) -> anyhow::Result<Vec<Backend>> {
    match args.system {
        System::Ringstore => {
            let mut connector = awc::Connector::new().limit(args.clients.max(PRELOAD_CONCURRENCY) * 2);
            if let Some(ca) = &args.ca {
                connector =
                    connector.rustls_0_23(ringstore_client::tls::client_config(ca).map_err(anyhow::Error::msg)?);
            }
            let client = awc::Client::builder().timeout(Duration::from_secs(10)).connector(connector).finish();
            for e in &args.endpoints {
                let r = client.get(format!("{e}/healthz")).send().await;
                anyhow::ensure!(r.is_ok(), "{e} is not answering /healthz: {:?}", r.err());
            }
            Ok(args.endpoints.iter().map(|base| Backend::Http { client: client.clone(), base: base.clone() }).collect())
        }
        System::Etcd => {
            let mut out = Vec::new();
            // One gRPC connection (HTTP/2, multiplexed) per endpoint.
            for e in &args.endpoints {
                let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(10));
                let c = etcd_client::Client::connect([e.as_str()], Some(opts))
                    .await
                    .map_err(|err| anyhow::anyhow!("connecting to etcd at {e}: {err}"))?;
                out.push(Backend::Etcd { kv: Box::new(c.kv_client()) });
            }
            Ok(out)
        }
        System::Rocksdb | System::Redis => anyhow::bail!("{:?} runs other workloads", args.system),
    }
}

/// Per-second latency of all operations, for the plot (2 significant
/// digits keep each second's histogram small).
type SecondHists = Arc<Mutex<Vec<Histogram<u64>>>>;

/// Keys written per preload request batch of clients.
const PRELOAD_CONCURRENCY: usize = 64;

pub async fn run(args: &Args) -> anyhow::Result<RunResult> {
    let backends = backends(args).await?;
    let value: Arc<Vec<u8>> = Arc::new((0..args.value_size).map(|i| (i % 251) as u8).collect());
    if args.preload > 0 {
        preload(&backends, args, &value).await?;
    }
    let dist = Arc::new(match args.dist {
        Dist::Uniform => KeyDist::Uniform { n: args.keys },
        Dist::Zipfian => KeyDist::Zipfian(Zipfian::new(args.keys.max(2), ZIPF_THETA)),
    });
    let read_fraction = args.workload.read_fraction();
    let per_write = args.batch;
    let value_b64: Arc<String> = Arc::new({
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(value.as_slice())
    });
    let done = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let seconds: SecondHists = Arc::new(Mutex::new(Vec::new()));
    // Open loop: each client starts one request every `interval`.
    let interval = args.rate.map(|r| Duration::from_secs_f64(args.clients as f64 / r.max(1e-3)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let mut backend = backends[c % backends.len()].clone();
        let (done, completed, value, dist, seconds, value_b64) =
            (done.clone(), completed.clone(), value.clone(), dist.clone(), seconds.clone(), value_b64.clone());
        let seed = args.seed.wrapping_add(c as u64);
        tasks.push(actix_rt::spawn(async move {
            let (mut put, mut get) = (OpRecorder::default(), OpRecorder::default());
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut next = Instant::now();
            while !done.load(Ordering::Relaxed) {
                let scheduled = match interval {
                    Some(iv) => {
                        next += iv;
                        actix_rt::time::sleep_until((next - iv).into()).await;
                        next - iv
                    }
                    None => Instant::now(),
                };
                let key = dist.next(&mut rng);
                let is_read = rng.gen::<f64>() < read_fraction;
                let res = match (is_read, per_write) {
                    (true, _) => backend.get(key).await,
                    (false, 1) => backend.put(key, &value).await,
                    (false, n) => {
                        let keys: Vec<u64> = std::iter::once(key).chain((1..n).map(|_| dist.next(&mut rng))).collect();
                        backend.put_batch(&keys, &value_b64).await
                    }
                };
                let rec = if is_read { &mut get } else { &mut put };
                let n = if is_read { 1 } else { per_write };
                match res {
                    Ok(()) => {
                        let took = scheduled.elapsed();
                        for _ in 0..n {
                            rec.ok(took);
                        }
                        completed.fetch_add(n as u64, Ordering::Relaxed);
                        let sec = start.elapsed().as_secs() as usize;
                        if let Ok(mut s) = seconds.lock() {
                            while s.len() <= sec {
                                s.push(Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds"));
                            }
                            let _ = s[sec].record((took.as_micros() as u64).clamp(1, 60_000_000));
                        }
                    }
                    Err(e) => rec.err(e),
                }
            }
            (put, get)
        }));
    }
    let timeline = progress(args.duration, &completed).await;
    done.store(true, Ordering::Relaxed);
    let (mut put, mut get) = (OpRecorder::default(), OpRecorder::default());
    for t in tasks {
        let (p, g) = t.await?;
        put.merge(p);
        get.merge(g);
    }
    let elapsed = start.elapsed();
    let p99_timeline = seconds
        .lock()
        .map(|s| s.iter().take(timeline.len()).map(|h| h.value_at_quantile(0.99) as f64 / 1000.0).collect())
        .unwrap_or_default();
    let mut ops = std::collections::BTreeMap::new();
    if put.hist.len() + put.errors > 0 {
        ops.insert("put", put);
    }
    if get.hist.len() + get.errors > 0 {
        ops.insert("get", get);
    }
    Ok(RunResult { ops, elapsed, timeline, p99_timeline, peak_rss_bytes: args.watch_pid.and_then(peak_rss_bytes) })
}

/// Writes keys `0..preload` so reads find them, with a progress bar.
async fn preload(backends: &[Backend], args: &Args, value: &Arc<Vec<u8>>) -> anyhow::Result<()> {
    let pb = ProgressBar::new(args.preload);
    pb.set_style(
        ProgressStyle::with_template("preload {bar:30} {pos}/{len} keys")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut failures = Vec::new();
    let mut next = 0u64;
    while next < args.preload {
        let batch: Vec<u64> = (next..(next + PRELOAD_CONCURRENCY as u64).min(args.preload)).collect();
        next += batch.len() as u64;
        let reqs = batch.iter().map(|k| {
            let mut b = backends[(*k as usize) % backends.len()].clone();
            let v = value.clone();
            let k = *k;
            async move { b.put(k, &v).await }
        });
        for r in futures::future::join_all(reqs).await {
            if let Err(e) = r {
                failures.push(e);
            }
        }
        pb.set_position(next);
    }
    pb.finish_and_clear();
    anyhow::ensure!(failures.is_empty(), "{} preload writes failed, e.g. {:?}", failures.len(), failures.first());
    println!("preloaded {} keys", args.preload);
    Ok(())
}

/// Shows a progress bar for `duration` and returns ops completed per second.
pub(crate) async fn progress(duration: Duration, completed: &AtomicU64) -> Vec<u64> {
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
