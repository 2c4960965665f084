//! `ringstore-partition`: what clients see while one node of a
//! three-process cluster is cut off from its peers (iptables, on loopback
//! addresses of the run's own) or paused (`SIGSTOP`).
//!
//! A fixed-rate YCSB-A load (half reads, half writes, uniform over the
//! keys) is sent to all three nodes evenly, as behind a load balancer, open
//! loop: a request is sent on schedule whether or not earlier ones have
//! answered. After a steady period, the node that leads the most shards is
//! faulted for `--fault-secs`, then healed. The summary says:
//! - the longest time with no successful request cluster-wide,
//! - the majority nodes' successful ops/s from 2 s into the fault until it
//!   ends, as a fraction of their rate before it,
//! - how fast the faulted node's clients got their errors (p50/p99),
//! - errors by status.
//!
//! Usage: ringstore-partition [--fault isolate|pause|both] [--rate 600] [--fault-secs 5] [--bin PATH]
//!        [--out partition.json] [--plot partition.svg] [-- NODE FLAGS...]
//! Needs root (iptables) for `isolate`.

#[path = "../plot.rs"]
// Each binary uses part of the plot helpers.
#[allow(dead_code)]
mod plot;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use ringstore_testkit::netfilter::Partition;
use ringstore_testkit::ProcCluster;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Fault {
    /// Drop the node's peer traffic both ways; its client port stays reachable.
    Isolate,
    /// SIGSTOP the node, SIGCONT at the end.
    Pause,
    Both,
}

#[derive(Parser, Debug)]
#[command(
    name = "ringstore-partition",
    about = "Availability of a 3-process ringstore cluster while one node is cut off"
)]
struct Args {
    #[arg(long, value_enum, default_value_t = Fault::Both)]
    fault: Fault,
    /// Requests per second, all nodes together.
    #[arg(long, default_value_t = 600)]
    rate: u64,
    #[arg(long, default_value_t = 5)]
    fault_secs: u64,
    /// Steady load before the fault.
    #[arg(long, default_value_t = 5)]
    before_secs: u64,
    /// Load after healing.
    #[arg(long, default_value_t = 3)]
    after_secs: u64,
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// The `ringstore` binary (default: next to this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    #[arg(long)]
    out: Option<PathBuf>,
    /// SVG timeline of successful ops/s (100 ms buckets) and p99 latency.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Extra flags for every `ringstore node` (default: `--shards 16`).
    #[arg(last = true)]
    node_flags: Vec<String>,
}

/// Requests one node may have outstanding; more are counted as shed by the
/// load generator, so a stalled node cannot grow its memory without bound.
const IN_FLIGHT_MAX_PER_NODE: usize = 2_000;
const REQUEST_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, Clone)]
struct Call {
    node: u64,
    sent: Instant,
    end: Instant,
    /// 0: no HTTP answer; 1: shed by the generator.
    status: u16,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!((10..=20_000).contains(&args.rate), "--rate must be 10..=20000");
    anyhow::ensure!((3..=60).contains(&args.fault_secs), "--fault-secs must be 3..=60");
    anyhow::ensure!((3..=60).contains(&args.before_secs), "--before-secs must be 3..=60");
    anyhow::ensure!((1..=60).contains(&args.after_secs), "--after-secs must be 1..=60");
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("ringstore"),
    };
    anyhow::ensure!(bin.exists(), "{} not found (build it, or pass --bin)", bin.display());
    let faults = match args.fault {
        Fault::Both => vec![Fault::Isolate, Fault::Pause],
        f => vec![f],
    };
    actix_rt::System::new().block_on(async {
        let mut reports = Vec::new();
        for f in faults {
            reports.push(run(&args, &bin, f).await?);
        }
        if let Some(out) = &args.out {
            std::fs::write(out, serde_json::to_vec_pretty(&reports)?)?;
            println!("report written to {}", out.display());
        }
        Ok(())
    })
}

async fn leader_counts(url: &str) -> Option<Vec<(u64, usize)>> {
    let client = awc::Client::builder().timeout(Duration::from_secs(2)).finish();
    let v: serde_json::Value = client.get(format!("{url}/v1/cluster")).send().await.ok()?.json().await.ok()?;
    let shards = v["shards"].as_array()?;
    let leaders: Vec<u64> = shards.iter().filter_map(|s| s["leader"].as_u64()).collect();
    if leaders.len() != shards.len() {
        return None;
    }
    let mut per: std::collections::BTreeMap<u64, usize> = Default::default();
    for l in leaders {
        *per.entry(l).or_default() += 1;
    }
    Some(per.into_iter().collect())
}

async fn run(args: &Args, bin: &std::path::Path, fault: Fault) -> anyhow::Result<serde_json::Value> {
    let default_flags = vec!["--shards".to_string(), "16".to_string()];
    let flags = if args.node_flags.is_empty() { &default_flags } else { &args.node_flags };
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let c = ProcCluster::start_partitionable(bin, 3, &flags)?;
    let start = Instant::now();
    let per = loop {
        if let Some(per) = leader_counts(&c.url(1)).await {
            break per;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "no leader for every shard within 60 s");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    };
    let victim = per.iter().max_by_key(|(_, n)| *n).map(|(id, _)| *id).context("a leader")?;
    let majority: Vec<u64> = c.ids().into_iter().filter(|i| *i != victim).collect();

    let calls: Rc<RefCell<Vec<Call>>> = Rc::default();
    let in_flight: Rc<RefCell<Vec<usize>>> = Rc::new(RefCell::new(vec![0; 4]));
    let client = awc::Client::builder()
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS + 2000))
        .connector(awc::Connector::new().limit(0))
        .finish();
    let total = Duration::from_secs(args.before_secs + args.fault_secs + args.after_secs);
    let every = Duration::from_secs_f64(1.0 / args.rate as f64);
    let pb = ProgressBar::new(total.as_secs());
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} s").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(format!("{fault:?} node {victim}"));
    let t0 = Instant::now();
    let fault_at = t0 + Duration::from_secs(args.before_secs);
    let heal_at = fault_at + Duration::from_secs(args.fault_secs);
    let mut partition = None;
    let (mut faulted, mut healed) = (false, false);
    let mut rng = rand::thread_rng();
    for i in 0u64.. {
        let due = t0 + every * i as u32;
        if due >= t0 + total {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let now = Instant::now();
        if !faulted && now >= fault_at {
            faulted = true;
            match fault {
                Fault::Isolate => {
                    let p = Partition::new()?;
                    let others: Vec<_> = majority.iter().map(|i| c.ip(*i)).collect();
                    p.isolate(c.ip(victim), &others)?;
                    partition = Some(p);
                }
                _ => c.pause(victim)?,
            }
        }
        if faulted && !healed && now >= heal_at {
            healed = true;
            match partition.take() {
                Some(p) => p.heal()?,
                None => c.resume(victim)?,
            }
        }
        pb.set_position(t0.elapsed().as_secs());
        let node = (i % 3) + 1;
        if in_flight.borrow()[node as usize] >= IN_FLIGHT_MAX_PER_NODE {
            calls.borrow_mut().push(Call { node, sent: now, end: now, status: 1 });
            continue;
        }
        in_flight.borrow_mut()[node as usize] += 1;
        let url = format!("{}/v1/kv/k{}", c.url(node), rng.gen_range(0..args.keys));
        let write = rng.gen_bool(0.5);
        let (client, calls, in_flight) = (client.clone(), calls.clone(), in_flight.clone());
        actix_rt::spawn(async move {
            let req = if write { client.put(&url) } else { client.get(&url) };
            let req = req.insert_header(("X-Request-Timeout", REQUEST_TIMEOUT_MS.to_string()));
            let res = if write { req.send_body("v".repeat(256)).await } else { req.send().await };
            // A GET of a key not written yet is a 404: served all the same.
            let status = match res.map(|r| r.status().as_u16()) {
                Ok(404) => 200,
                Ok(s) => s,
                Err(_) => 0,
            };
            in_flight.borrow_mut()[node as usize] -= 1;
            calls.borrow_mut().push(Call { node, sent: now, end: Instant::now(), status });
        });
    }
    // Let what is still in flight finish (bounded by the request timeout).
    let drain = Instant::now();
    while in_flight.borrow().iter().sum::<usize>() > 0
        && drain.elapsed() < Duration::from_millis(REQUEST_TIMEOUT_MS + 3000)
    {
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    pb.finish_and_clear();
    drop(partition);
    let calls = calls.take();
    summarize(args, fault, victim, &majority, &calls, t0, fault_at, heal_at)
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &Args,
    fault: Fault,
    victim: u64,
    majority: &[u64],
    calls: &[Call],
    t0: Instant,
    fault_at: Instant,
    heal_at: Instant,
) -> anyhow::Result<serde_json::Value> {
    let ok = |c: &&Call| c.status == 200;
    let rate = |nodes: &[u64], from: Instant, to: Instant| {
        calls.iter().filter(ok).filter(|c| nodes.contains(&c.node) && c.end >= from && c.end < to).count() as f64
            / (to - from).as_secs_f64()
    };
    let before = rate(majority, fault_at - Duration::from_secs(3), fault_at);
    let during = rate(majority, fault_at + Duration::from_secs(2), heal_at);
    // Longest stretch without a success, cluster-wide, from 1 s before the
    // fault until 2 s after healing.
    let mut ends: Vec<Instant> = calls
        .iter()
        .filter(ok)
        .map(|c| c.end)
        .filter(|e| *e >= fault_at - Duration::from_secs(1) && *e <= heal_at + Duration::from_secs(2))
        .collect();
    ends.sort_unstable();
    ends.insert(0, fault_at - Duration::from_secs(1));
    let gap = ends.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let mut victim_err: Vec<f64> = calls
        .iter()
        .filter(|c| c.node == victim && c.sent >= fault_at && c.end <= heal_at && c.status >= 500)
        .map(|c| (c.end - c.sent).as_secs_f64() * 1000.0)
        .collect();
    victim_err.sort_by(f64::total_cmp);
    // Once the fault is noticed (link timeout, leader step-down), what is
    // left is the fail-fast path itself.
    let mut victim_err_late: Vec<f64> = calls
        .iter()
        .filter(|c| {
            c.node == victim && c.sent >= fault_at + Duration::from_secs(2) && c.end <= heal_at && c.status >= 500
        })
        .map(|c| (c.end - c.sent).as_secs_f64() * 1000.0)
        .collect();
    victim_err_late.sort_by(f64::total_cmp);
    let victim_answered = calls.iter().filter(|c| c.node == victim && c.sent >= fault_at && c.sent < heal_at).count();
    let majority_errors = calls
        .iter()
        .filter(|c| majority.contains(&c.node) && c.sent >= fault_at && c.sent < heal_at && c.status != 200)
        .count();
    let mut by_status: std::collections::BTreeMap<u16, usize> = Default::default();
    for c in calls.iter().filter(|c| c.sent >= fault_at && c.sent < heal_at) {
        *by_status.entry(c.status).or_default() += 1;
    }
    println!(
        "{fault:?} of node {victim} (the busiest leader) for {} s, {} req/s YCSB-A over 3 nodes:",
        args.fault_secs, args.rate
    );
    println!("  longest time with no successful request (cluster-wide): {:>6.0} ms", gap.as_secs_f64() * 1000.0);
    println!(
        "  majority ops/s before / during (from 2 s in):            {before:>6.0} / {during:.0} = {:.2}",
        during / before.max(f64::MIN_POSITIVE)
    );
    println!(
        "  faulted node's 5xx answers: {}, p50 {:.0} ms, p99 {:.0} ms (of {} requests sent to it)",
        victim_err.len(),
        plot::percentile(&victim_err, 0.5),
        plot::percentile(&victim_err, 0.99),
        victim_answered
    );
    println!(
        "  of those sent from 2 s into the fault: {}, p50 {:.0} ms, p99 {:.0} ms",
        victim_err_late.len(),
        plot::percentile(&victim_err_late, 0.5),
        plot::percentile(&victim_err_late, 0.99)
    );
    println!("  requests to the majority nodes during the fault that failed: {majority_errors}");
    println!("  requests sent during the fault by status (0: no answer, 1: shed): {by_status:?}");
    if let Some(p) = &args.plot {
        let buckets = ((heal_at + Duration::from_secs(args.after_secs) - t0).as_millis() / 100) as usize + 1;
        let points = calls
            .iter()
            .filter(ok)
            .map(|c| (((c.end - t0).as_millis() / 100) as usize, (c.end - c.sent).as_secs_f64() * 1000.0));
        // 100 ms buckets: ten per second.
        let (ops, p99) = plot::series(points, buckets, 10);
        let path = p.with_file_name(format!(
            "{}-{}.svg",
            p.file_stem().and_then(|s| s.to_str()).unwrap_or("partition"),
            format!("{fault:?}").to_lowercase()
        ));
        let title = format!(
            "{fault:?} of node {victim} from {} s to {} s: successful ops/s (100 ms buckets) and p99 ms",
            args.before_secs,
            args.before_secs + args.fault_secs
        );
        std::fs::write(&path, plot::svg(&title, &ops, &p99)).with_context(|| format!("writing {}", path.display()))?;
        println!("  plot written to {}", path.display());
    }
    Ok(serde_json::json!({
        "fault": format!("{fault:?}").to_lowercase(), "node": victim, "rate": args.rate, "fault_secs": args.fault_secs,
        "longest_gap_ms": gap.as_secs_f64() * 1000.0,
        "majority_ok_per_s_before": before, "majority_ok_per_s_during": during,
        "majority_ratio": during / before.max(f64::MIN_POSITIVE),
        "majority_errors": majority_errors,
        "faulted_node_5xx": victim_err.len(),
        "faulted_node_5xx_p50_ms": plot::percentile(&victim_err, 0.5),
        "faulted_node_5xx_p99_ms": plot::percentile(&victim_err, 0.99),
        "faulted_node_5xx_from_2s_p99_ms": plot::percentile(&victim_err_late, 0.99),
        "by_status": by_status,
    }))
}
