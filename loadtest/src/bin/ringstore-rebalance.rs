//! `ringstore-rebalance`: what clients see while a fourth node joins a
//! three-process cluster holding `--data-mb` of data and the Rebalancer
//! moves its share of replicas and leaders to it.
//!
//! 1. Three `ringstore node` processes (16 shards) are loaded with values
//!    of 256 B to 4 KiB (uniform) until the data reaches `--data-mb`.
//! 2. A fixed-rate YCSB-A load (half reads, half updates, uniform over the
//!    loaded keys) runs open loop against the three nodes, as behind a load
//!    balancer, for the whole run.
//! 3. After `--before-secs`, node 4 starts with `--join`; the run watches
//!    `/v1/cluster` and `/v1/rebalance` until the job is done, then keeps the
//!    load `--after-secs` more.
//!
//! With `--grow N` no node joins: `POST /v1/cluster/shards {"add": N}`
//! grows the ring instead (splits in place, then replica moves to even
//! out), and the summary adds each split's fence (how long the keys it
//! gave away were refused, from the nodes' logs).
//!
//! The summary says: the time until replicas are balanced within 10% and
//! until the job is done, foreground p50/p99/max before, during and after
//! the moves, bytes moved and bytes/s, and every failed request by status.
//! Measuring starts once the preload's compactions are done.
//!
//! Usage: ringstore-rebalance [--data-mb 1024] [--rate 400] [--nodes 3]
//!        [--grow 0] [--bin PATH] [--out rebalance.json]
//!        [--plot rebalance.svg] [-- NODE FLAGS...]

// Each binary uses part of the plot helpers.
#[path = "../plot.rs"]
#[allow(dead_code)]
mod plot;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use ringstore_testkit::ProcCluster;

#[derive(Parser, Debug)]
#[command(name = "ringstore-rebalance", about = "Foreground latency while a fourth node joins and replicas move")]
struct Args {
    /// Data loaded before the join (key and value bytes), in MiB.
    #[arg(long, default_value_t = 1024)]
    data_mb: u64,
    /// Foreground requests per second, all nodes together.
    #[arg(long, default_value_t = 400)]
    rate: u64,
    /// Nodes the cluster starts with.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Instead of a node joining, add this many shards.
    #[arg(long, default_value_t = 0)]
    grow: u64,
    /// Steady load before node 4 joins.
    #[arg(long, default_value_t = 20)]
    before_secs: u64,
    /// Load after the job is done.
    #[arg(long, default_value_t = 10)]
    after_secs: u64,
    /// Give up on the job after this long.
    #[arg(long, default_value_t = 1800)]
    max_secs: u64,
    /// Preload requests in flight.
    #[arg(long, default_value_t = 64)]
    preload_concurrency: usize,
    /// The `ringstore` binary (default: next to this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    #[arg(long)]
    out: Option<PathBuf>,
    /// SVG timeline of successful ops/s and p99 latency, join and end marked.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Copy the nodes' logs here at the end (set `RINGSTORE_LOG` for more).
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Extra flags for every `ringstore node` (default: `--shards 16`).
    #[arg(last = true)]
    node_flags: Vec<String>,
}

const VALUE_MIN: usize = 256;
const VALUE_MAX: usize = 4096;
const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// The longest wait for the preload's compactions before measuring.
const SETTLE_MAX: Duration = Duration::from_secs(180);
/// Foreground requests one node may have outstanding; more are counted as
/// shed by the generator, so a stalled node cannot grow memory unbounded.
const IN_FLIGHT_MAX_PER_NODE: usize = 2_000;

/// One look at the job: when, replicas per node, `/v1/rebalance`.
type Observation = (Instant, Option<BTreeMap<u64, usize>>, Option<serde_json::Value>);

#[derive(Debug, Clone, Copy)]
struct Call {
    sent: Instant,
    end: Instant,
    /// 0: no HTTP answer; 1: shed by the generator.
    status: u16,
    /// The key's number, the node asked, and whether it was an update:
    /// what the slowest requests are listed with.
    key: u64,
    node: u64,
    write: bool,
}

/// The value size of key `i`, the same in every run.
fn value_len(i: u64) -> usize {
    rand::rngs::StdRng::seed_from_u64(i).gen_range(VALUE_MIN..=VALUE_MAX)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!((1..=65_536).contains(&args.data_mb), "--data-mb must be 1..=65536");
    anyhow::ensure!((10..=20_000).contains(&args.rate), "--rate must be 10..=20000");
    anyhow::ensure!((5..=600).contains(&args.before_secs), "--before-secs must be 5..=600");
    anyhow::ensure!((1..=600).contains(&args.after_secs), "--after-secs must be 1..=600");
    anyhow::ensure!((60..=7200).contains(&args.max_secs), "--max-secs must be 60..=7200");
    anyhow::ensure!((1..=1024).contains(&args.preload_concurrency), "--preload-concurrency must be 1..=1024");
    anyhow::ensure!((3..=8).contains(&args.nodes), "--nodes must be 3..=8");
    anyhow::ensure!(args.grow <= 1024, "--grow must be 0..=1024");
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("ringstore"),
    };
    anyhow::ensure!(bin.exists(), "{} not found (build it, or pass --bin)", bin.display());
    actix_rt::System::new().block_on(async {
        let report = run(&args, &bin).await?;
        if let Some(out) = &args.out {
            std::fs::write(out, serde_json::to_vec_pretty(&report)?)?;
            println!("report written to {}", out.display());
        }
        Ok(())
    })
}

async fn get_json(client: &awc::Client, url: &str) -> Option<serde_json::Value> {
    let mut r = client.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().limit(64 << 20).await.ok()
}

/// Replicas per node, as the map places them.
async fn replica_counts(client: &awc::Client, url: &str) -> Option<BTreeMap<u64, usize>> {
    let v = get_json(client, &format!("{url}/v1/cluster")).await?;
    let mut per = BTreeMap::new();
    for s in v["shards"].as_array()? {
        for r in s["replicas"].as_array()? {
            *per.entry(r.as_u64()?).or_insert(0usize) += 1;
        }
    }
    Some(per)
}

async fn every_shard_led(client: &awc::Client, url: &str) -> bool {
    let Some(v) = get_json(client, &format!("{url}/v1/cluster")).await else { return false };
    v["shards"].as_array().is_some_and(|s| s.iter().all(|s| s["leader"].as_u64().is_some()))
}

/// A node's `/metrics` text, or `None` if it did not answer.
async fn metrics_text(admin: &awc::Client, url: &str) -> Option<String> {
    let mut r = admin.get(format!("{url}/metrics")).send().await.ok()?;
    let body = r.body().limit(16 << 20).await.ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// Bytes RocksDB still has to compact on every node together
/// (`ringstore_rocksdb_pending_compaction_bytes`), or `None` if a node
/// did not answer.
async fn pending_compaction(c: &ProcCluster, admin: &awc::Client) -> Option<u64> {
    let mut total = 0u64;
    for id in c.ids() {
        for l in metrics_text(admin, &c.url(id)).await?.lines() {
            if l.starts_with("ringstore_rocksdb_pending_compaction_bytes") {
                total += l.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
            }
        }
    }
    Some(total)
}

/// Waits (at most [`SETTLE_MAX`]) until the preload's compactions are
/// done: they would otherwise land in whichever window they happen to
/// fall, and the before/during comparison would measure them instead of
/// the job. Returns the seconds waited.
async fn settle(c: &ProcCluster, admin: &awc::Client) -> f64 {
    let start = Instant::now();
    let mut quiet = 0;
    let mut last = None;
    while start.elapsed() < SETTLE_MAX && quiet < 3 {
        last = pending_compaction(c, admin).await;
        quiet = if last == Some(0) { quiet + 1 } else { 0 };
        actix_rt::time::sleep(Duration::from_secs(1)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    match last {
        Some(0) => println!("compactions settled {secs:.0} s after the preload"),
        Some(b) => println!("compactions still pending after {secs:.0} s ({} MiB): measuring anyway", b >> 20),
        None => println!("could not read the nodes' pending compactions: measuring anyway"),
    }
    secs
}

/// Each split's fence as the Rebalancer logged it: `(fence, upper bound)`
/// in ms (the fence runs from the source's apply to the map listing the
/// new shard; the bound from the proposal).
fn split_fences(c: &ProcCluster) -> Vec<(f64, f64)> {
    let field = |line: &str, name: &str| -> Option<f64> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        line[at..].trim_start_matches('"').split(|ch: char| !(ch.is_ascii_digit() || ch == '.')).next()?.parse().ok()
    };
    let mut lines: Vec<String> = c
        .ids()
        .iter()
        .flat_map(|id| {
            let log = c.log(*id);
            log.lines()
                .filter(|l| l.contains("split done") || l.contains("split:") || l.contains("split recorded"))
                .map(|l| format!("node {id}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort_by(|a, b| a.split_once(": ").map(|x| x.1).cmp(&b.split_once(": ").map(|x| x.1)));
    for l in &lines {
        println!("  {l}");
    }
    lines
        .iter()
        .filter(|l| l.contains("split done"))
        .filter_map(|l| Some((field(l, "fence_ms")?, field(l, "fence_upper_ms")?)))
        .collect()
}

/// Every node within 10% of the mean replica count.
fn within_10_percent(per: &BTreeMap<u64, usize>, nodes: &[u64]) -> bool {
    let counts: Vec<f64> = nodes.iter().map(|n| per.get(n).copied().unwrap_or(0) as f64).collect();
    let mean = counts.iter().sum::<f64>() / counts.len() as f64;
    counts.iter().all(|c| (c - mean).abs() <= 0.1 * mean)
}

async fn preload(args: &Args, c: &ProcCluster, client: &awc::Client) -> anyhow::Result<(u64, u64, f64)> {
    let target = args.data_mb << 20;
    let mut keys = 0u64;
    let mut bytes = 0u64;
    while bytes < target {
        bytes += format!("k{keys}").len() as u64 + value_len(keys) as u64;
        keys += 1;
    }
    let pb = ProgressBar::new(target);
    pb.set_style(
        ProgressStyle::with_template("preload [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let urls: Vec<String> = c.ids().iter().map(|i| c.url(*i)).collect();
    let next = Rc::new(std::cell::Cell::new(0u64));
    let failed = Rc::new(std::cell::Cell::new(0u64));
    let workers = (0..args.preload_concurrency).map(|w| {
        let (next, failed, client, urls, pb) = (next.clone(), failed.clone(), client.clone(), urls.clone(), pb.clone());
        async move {
            loop {
                let i = next.get();
                if i >= keys {
                    break;
                }
                next.set(i + 1);
                let len = value_len(i);
                let url = format!("{}/v1/kv/k{i}", urls[(i as usize + w) % urls.len()]);
                // Retried (bounded): a preload that skips keys would make the
                // data smaller than asked.
                let mut ok = false;
                for _ in 0..20 {
                    let r = client
                        .put(&url)
                        .insert_header(("X-Request-Timeout", REQUEST_TIMEOUT_MS.to_string()))
                        .send_body(vec![b'v'; len])
                        .await;
                    if r.is_ok_and(|r| r.status().is_success()) {
                        ok = true;
                        break;
                    }
                    actix_rt::time::sleep(Duration::from_millis(100)).await;
                }
                failed.set(failed.get() + !ok as u64);
                pb.inc((format!("k{i}").len() + len) as u64);
            }
        }
    });
    futures::future::join_all(workers).await;
    pb.finish_and_clear();
    anyhow::ensure!(failed.get() == 0, "{} preload writes failed", failed.get());
    let secs = start.elapsed().as_secs_f64();
    println!(
        "preloaded {keys} keys, {:.0} MiB in {secs:.0} s ({:.1} MiB/s)",
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / secs
    );
    Ok((keys, bytes, secs))
}

async fn run(args: &Args, bin: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let default_flags = vec!["--shards".to_string(), "16".to_string()];
    let flags = if args.node_flags.is_empty() { &default_flags } else { &args.node_flags };
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut c = ProcCluster::start(bin, args.nodes, &flags, None)?;
    let admin = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let start = Instant::now();
    while !every_shard_led(&admin, &c.url(1)).await {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "no leader for every shard within 60 s");
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    let client = awc::Client::builder()
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS + 2000))
        .connector(awc::Connector::new().limit(0))
        .finish();
    let (keys, data_bytes, preload_secs) = preload(args, &c, &client).await?;
    let settle_secs = settle(&c, &admin).await;

    let shards_before = get_json(&admin, &format!("{}/v1/rebalance", c.url(1)))
        .await
        .and_then(|v| v["shards"].as_u64())
        .context("GET /v1/rebalance")?;
    let all_nodes: Vec<u64> = (1..=args.nodes + u64::from(args.grow == 0)).collect();
    let calls: Rc<RefCell<Vec<Call>>> = Rc::default();
    let in_flight: Rc<RefCell<Vec<usize>>> = Rc::new(RefCell::new(vec![0; args.nodes as usize + 1]));
    let every = Duration::from_secs_f64(1.0 / args.rate as f64);
    let t0 = Instant::now();
    let join_at = t0 + Duration::from_secs(args.before_secs);
    let give_up = join_at + Duration::from_secs(args.max_secs);
    let (mut joined, mut balanced_at, mut done_at) = (false, None::<Instant>, None::<Instant>);
    let mut bytes_moved = 0u64;
    let mut moves_done = 0u64;
    let mut next_poll = join_at;
    let pb = ProgressBar::new_spinner();
    let mut rng = rand::thread_rng();
    let poll: Rc<RefCell<Option<Observation>>> = Rc::default();
    let mut polling = false;
    for i in 0u64.. {
        let due = t0 + every * i as u32;
        if done_at.is_some_and(|d| due >= d + Duration::from_secs(args.after_secs)) || due >= give_up {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let now = Instant::now();
        if !joined && now >= join_at {
            joined = true;
            if args.grow > 0 {
                let url = format!("{}/v1/cluster/shards", c.url(1));
                let body = serde_json::json!({ "add": args.grow }).to_string();
                let r = admin.post(&url).insert_header(("content-type", "application/json")).send_body(body).await;
                anyhow::ensure!(r.is_ok_and(|r| r.status().as_u16() == 202), "POST /v1/cluster/shards failed");
            } else {
                c.join(args.nodes + 1, 1)?;
            }
        }
        // Watch the job once a second, off the request schedule.
        if let Some((at, counts, job)) = poll.borrow_mut().take() {
            polling = false;
            if let Some(per) = counts {
                if balanced_at.is_none() && within_10_percent(&per, &all_nodes) {
                    balanced_at = Some(at);
                }
            }
            if let Some(v) = job {
                bytes_moved = v["bytes_done"].as_u64().unwrap_or(bytes_moved);
                moves_done = v["moves_done"].as_u64().unwrap_or(moves_done);
                let progressed = match args.grow {
                    0 => v["moves_done"].as_u64().unwrap_or(0) > 0,
                    _ => v["shards"].as_u64().is_some_and(|s| s >= shards_before + args.grow),
                };
                let idle = v["state"] == "idle" && progressed;
                if done_at.is_none() && idle {
                    done_at = Some(at);
                }
                pb.set_message(format!(
                    "{:.0} s after join: {} moves done, {} MiB moved, state {}",
                    (at - join_at).as_secs_f64(),
                    moves_done,
                    bytes_moved >> 20,
                    v["state"].as_str().unwrap_or("?")
                ));
                pb.tick();
            }
        }
        if joined && !polling && now >= next_poll && (done_at.is_none() || balanced_at.is_none()) {
            polling = true;
            next_poll = now + Duration::from_secs(1);
            let (admin, url, poll) = (admin.clone(), c.url(1), poll.clone());
            actix_rt::spawn(async move {
                let counts = replica_counts(&admin, &url).await;
                let job = get_json(&admin, &format!("{url}/v1/rebalance")).await;
                *poll.borrow_mut() = Some((Instant::now(), counts, job));
            });
        }
        let node = (i % args.nodes) + 1;
        if in_flight.borrow()[node as usize] >= IN_FLIGHT_MAX_PER_NODE {
            calls.borrow_mut().push(Call { sent: now, end: now, status: 1, key: 0, node, write: false });
            continue;
        }
        in_flight.borrow_mut()[node as usize] += 1;
        let k = rng.gen_range(0..keys);
        let url = format!("{}/v1/kv/k{k}", c.url(node));
        let write = rng.gen_bool(0.5);
        let (client, calls, in_flight) = (client.clone(), calls.clone(), in_flight.clone());
        actix_rt::spawn(async move {
            let req = if write { client.put(&url) } else { client.get(&url) };
            let req = req.insert_header(("X-Request-Timeout", REQUEST_TIMEOUT_MS.to_string()));
            let res = if write { req.send_body(vec![b'u'; value_len(k)]).await } else { req.send().await };
            let status = res.map_or(0, |r| r.status().as_u16());
            in_flight.borrow_mut()[node as usize] -= 1;
            calls.borrow_mut().push(Call { sent: now, end: Instant::now(), status, key: k, node, write });
        });
    }
    let drain = Instant::now();
    while in_flight.borrow().iter().sum::<usize>() > 0
        && drain.elapsed() < Duration::from_millis(REQUEST_TIMEOUT_MS + 3000)
    {
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    pb.finish_and_clear();
    let done_at = done_at.context("the rebalance job did not finish within --max-secs")?;
    let calls = calls.take();
    let fences = split_fences(&c);
    if let Some(dir) = &args.keep_logs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for id in c.ids() {
            let to = dir.join(format!("node-{id}.log"));
            std::fs::copy(c.log_path(id), &to).with_context(|| format!("copying node {id}'s log"))?;
        }
        println!("  node logs kept in {}", dir.display());
    }
    // Where a split's apply spends its time, per node (the source's writes
    // wait for it): the count of the keys given away and the new replica's start.
    for id in c.ids() {
        let Some(text) = metrics_text(&admin, &c.url(id)).await else { continue };
        for l in text.lines() {
            if l.starts_with("ringstore_shard_split_apply_seconds_sum")
                || l.starts_with("ringstore_shard_split_apply_seconds_count")
            {
                println!("  node {id}: {l}");
            }
        }
    }
    summarize(
        args,
        &calls,
        &fences,
        t0,
        join_at,
        balanced_at,
        done_at,
        bytes_moved,
        moves_done,
        (keys, data_bytes, preload_secs, settle_secs),
    )
}

/// Latencies (ms) of successful calls sent in `[from, to)`, sorted, and the
/// successful ops/s over the window.
fn window(calls: &[Call], from: Instant, to: Instant) -> (Vec<f64>, f64) {
    let mut l: Vec<f64> = calls
        .iter()
        .filter(|c| ok(c.status) && c.sent >= from && c.sent < to)
        .map(|c| (c.end - c.sent).as_secs_f64() * 1000.0)
        .collect();
    l.sort_by(f64::total_cmp);
    let rate = l.len() as f64 / (to - from).as_secs_f64().max(1e-9);
    (l, rate)
}

/// 200, and 404 for a read of a key not there (never here: every key is
/// preloaded, but a miss is an answer, not a failure).
fn ok(status: u16) -> bool {
    status == 200 || status == 404
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &Args,
    calls: &[Call],
    fences: &[(f64, f64)],
    t0: Instant,
    join_at: Instant,
    balanced_at: Option<Instant>,
    done_at: Instant,
    bytes_moved: u64,
    moves_done: u64,
    (keys, data_bytes, preload_secs, settle_secs): (u64, u64, f64, f64),
) -> anyhow::Result<serde_json::Value> {
    let (before, before_rate) = window(calls, t0 + Duration::from_secs(2), join_at);
    // Wall-clock time of the start, to set the slowest requests against
    // the nodes' logs.
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let join_unix_ms = since_epoch.saturating_sub(join_at.elapsed()).as_millis() as u64;
    let (during, during_rate) = window(calls, join_at, done_at);
    // The new configuration in steady state (more shards, replicas moved):
    // what of "during" is the job and what the cluster it leaves behind.
    let (after, after_rate) = window(calls, done_at, done_at + Duration::from_secs(args.after_secs));
    // When the slowest requests of the job were sent (s after its start):
    // set against the split and count log lines, they say what they met.
    let mut slow: Vec<(f64, f64, &Call)> = calls
        .iter()
        .filter(|c| ok(c.status) && c.sent >= join_at && c.sent < done_at)
        .map(|c| ((c.sent - join_at).as_secs_f64(), (c.end - c.sent).as_secs_f64() * 1000.0, c))
        .collect();
    slow.sort_by(|a, b| b.1.total_cmp(&a.1));
    slow.truncate(20);
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for c in calls.iter().filter(|c| !ok(c.status)) {
        *by_status.entry(c.status).or_default() += 1;
    }
    let errors: usize = by_status.values().sum();
    let move_secs = (done_at - join_at).as_secs_f64();
    let balanced_secs = balanced_at.map(|b| (b - join_at).as_secs_f64());
    let what = match args.grow {
        0 => format!("{} -> {} nodes", args.nodes, args.nodes + 1),
        n => format!("{} nodes, +{n} shards", args.nodes),
    };
    println!(
        "{what} with {:.0} MiB ({keys} keys, {VALUE_MIN}-{VALUE_MAX} B values), YCSB-A at {} req/s throughout:",
        data_bytes as f64 / 1048576.0,
        args.rate
    );
    match balanced_secs {
        Some(s) => println!("  replicas balanced within 10%:        {s:>8.1} s after the join"),
        None => println!("  replicas balanced within 10%:        never seen"),
    }
    println!("  job done ({moves_done} moves, leaders even): {move_secs:>8.1} s after the start");
    let mut fence: Vec<f64> = fences.iter().map(|f| f.0).collect();
    let mut upper: Vec<f64> = fences.iter().map(|f| f.1).collect();
    fence.sort_by(f64::total_cmp);
    upper.sort_by(f64::total_cmp);
    if !fence.is_empty() {
        println!(
            "  split fence p50 / p99 / max:  {:>6.1} / {:>6.1} / {:>6.1} ms over {} splits (bound from the proposal: max {:.1} ms)",
            plot::percentile(&fence, 0.5),
            plot::percentile(&fence, 0.99),
            fence.last().copied().unwrap_or(0.0),
            fence.len(),
            upper.last().copied().unwrap_or(0.0)
        );
    }
    println!(
        "  bytes moved: {:.0} MiB, {:.1} MiB/s over the job",
        bytes_moved as f64 / 1048576.0,
        bytes_moved as f64 / 1048576.0 / move_secs.max(1e-9)
    );
    println!(
        "  foreground p50 / p99 / max before:  {:>6.1} / {:>6.1} / {:>6.1} ms ({before_rate:.0} ok/s)",
        plot::percentile(&before, 0.5),
        plot::percentile(&before, 0.99),
        before.last().copied().unwrap_or(0.0)
    );
    println!(
        "  foreground p50 / p99 / max during:  {:>6.1} / {:>6.1} / {:>6.1} ms ({during_rate:.0} ok/s)",
        plot::percentile(&during, 0.5),
        plot::percentile(&during, 0.99),
        during.last().copied().unwrap_or(0.0)
    );
    println!(
        "  foreground p50 / p99 / max after:   {:>6.1} / {:>6.1} / {:>6.1} ms ({after_rate:.0} ok/s)",
        plot::percentile(&after, 0.5),
        plot::percentile(&after, 0.99),
        after.last().copied().unwrap_or(0.0)
    );
    println!("  failed requests: {errors} (by status, 0: no answer, 1: shed: {by_status:?})");
    let shown: Vec<String> = slow.iter().take(8).map(|(t, ms, _)| format!("{ms:.0} ms at {t:.2} s")).collect();
    println!("  slowest during the job (sent after its start): {}", shown.join(", "));
    if let Some(p) = &args.plot {
        let end = calls.iter().map(|c| c.end).max().unwrap_or(done_at);
        let secs = (end - t0).as_secs() as usize + 1;
        let points = calls
            .iter()
            .filter(|c| ok(c.status))
            .map(|c| ((c.end - t0).as_secs() as usize, (c.end - c.sent).as_secs_f64() * 1000.0));
        let (ops, p99) = plot::series(points, secs, 1);
        let start_label = if args.grow > 0 { "shards added" } else { "a node joins" };
        let mut marks = vec![((join_at - t0).as_secs() as usize, start_label)];
        if let Some(b) = balanced_at {
            marks.push(((b - t0).as_secs() as usize, "within 10%"));
        }
        marks.push(((done_at - t0).as_secs() as usize, "done"));
        let title = format!(
            "{what}, {:.0} MiB, YCSB-A {} req/s: successful ops/s and p99 ms per second",
            data_bytes as f64 / 1048576.0,
            args.rate
        );
        std::fs::write(p, plot::svg_marked(&title, &ops, &p99, &marks))
            .with_context(|| format!("writing {}", p.display()))?;
        println!("  plot written to {}", p.display());
    }
    Ok(serde_json::json!({
        "data_bytes": data_bytes, "keys": keys, "preload_secs": preload_secs, "settle_secs": settle_secs, "rate": args.rate,
        "balanced_within_10pct_secs": balanced_secs, "job_secs": move_secs, "moves_done": moves_done,
        "bytes_moved": bytes_moved, "bytes_per_sec": bytes_moved as f64 / move_secs.max(1e-9),
        "nodes": args.nodes, "grow": args.grow,
        "split_fence_ms": { "p50": plot::percentile(&fence, 0.5), "p99": plot::percentile(&fence, 0.99),
            "max": fence.last(), "upper_max": upper.last(), "splits": fence.len() },
        "before": { "p50_ms": plot::percentile(&before, 0.5), "p99_ms": plot::percentile(&before, 0.99),
            "max_ms": before.last(), "ok_per_s": before_rate },
        "during": { "p50_ms": plot::percentile(&during, 0.5), "p99_ms": plot::percentile(&during, 0.99),
            "max_ms": during.last(), "ok_per_s": during_rate },
        "after": { "p50_ms": plot::percentile(&after, 0.5), "p99_ms": plot::percentile(&after, 0.99),
            "max_ms": after.last(), "ok_per_s": after_rate },
        "failed": errors, "failed_by_status": by_status,
        "slowest_during": slow.iter().map(|(t, ms, c)| serde_json::json!({
            "sent_s": t,
            "sent_unix_ms": join_unix_ms + (t * 1000.0) as u64,
            "ms": ms,
            "key": format!("k{}", c.key),
            "op": if c.write { "PUT" } else { "GET" },
            "node": c.node,
        })).collect::<Vec<_>>(),
    }))
}
