//! `ringstore-watch-fanout`: many watchers of one prefix while writers
//! write under it at a set rate. Reports events/s delivered to all
//! watchers, delivery latency (from the write's acknowledgement to a
//! watcher's receipt; an event that beats the ack counts as 0), how many
//! events each watcher missed or saw twice (must be none), and the nodes'
//! memory per watcher (resident memory before and after the watchers
//! connect, from `--pids`).
//!
//! Every watcher counts the events it receives and checks each key's
//! versions only grow; `--probes` of them also time every event.
//!
//! Usage: ringstore-watch-fanout --endpoints URL,URL [--watchers 1000]
//!        [--rate 5000] [--duration 20s] [--probes 20] [--pids 1,2,3] [--out report.json]

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(name = "ringstore-watch-fanout", about = "Watch fan-out: events/s to N watchers of one prefix under writes")]
struct Args {
    /// Node base URLs, comma-separated; watchers and writers spread over them.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Writes per second under the prefix, paced.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Watchers that time every event they get.
    #[arg(long, default_value_t = 20)]
    probes: usize,
    /// Concurrent writers sharing the rate.
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Node process ids, for resident memory per watcher.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    #[arg(long)]
    out: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s:?}"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("bad duration {s:?}")),
    }
}

const KEYS: usize = 1000;
const PREFIX: &str = "fan/";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(!args.endpoints.is_empty(), "--endpoints is required");
    anyhow::ensure!((1..=10_000).contains(&args.watchers), "--watchers must be 1..=10000");
    anyhow::ensure!((1..=100_000).contains(&args.rate), "--rate must be 1..=100000");
    anyhow::ensure!(args.duration <= Duration::from_secs(600), "--duration at most 10m");
    actix_rt::System::new().block_on(run(args))
}

/// Resident memory of `pids` in bytes, summed (0 if unreadable).
fn rss(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum::<u64>()
        * 1024
}

#[derive(Default)]
struct Tally {
    events: u64,
    /// Per watcher: a key's version that did not grow.
    out_of_order: u64,
    connected: usize,
    broken: usize,
}

/// Each key's versions as acknowledged: (key index, version) -> ack time.
type Acks = Rc<RefCell<HashMap<(u32, u64), Instant>>>;
/// A probe's receipts: (key index, version) -> when.
type Seen = Rc<RefCell<Vec<((u32, u64), Instant)>>>;

async fn watcher(url: String, probe: Option<Seen>, tally: Rc<RefCell<Tally>>, until: Instant) {
    let http = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    let Ok(mut res) = http.get(format!("{url}/v1/watch?prefix={PREFIX}")).send().await else {
        tally.borrow_mut().broken += 1;
        return;
    };
    if res.status() != 200 {
        tally.borrow_mut().broken += 1;
        return;
    }
    tally.borrow_mut().connected += 1;
    let mut last: Vec<u64> = vec![0; KEYS];
    let mut buf: Vec<u8> = Vec::new();
    while Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        let chunk = match tokio::time::timeout(left, res.next()).await {
            Ok(Some(Ok(c))) => c,
            Ok(_) => {
                tally.borrow_mut().broken += 1;
                return;
            }
            Err(_) => return,
        };
        let now = Instant::now();
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        let (mut n, mut bad) = (0, 0);
        while let Some(i) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + i];
            start += i + 1;
            // `{"expires_at_ms":..,"index":..,"key":"fan/123",..,"type":"put",..,"version":N}`:
            // parsed by hand, since a thousand watchers parsing JSON would
            // measure this client, not the server.
            let Some(k) = find_after(line, b"\"key\":\"fan/") else { continue };
            let key: u32 = digits(&line[k..]) as u32;
            let Some(v) = find_after(line, b"\"version\":") else { continue };
            let version = digits(&line[v..]);
            n += 1;
            if let Some(l) = last.get_mut(key as usize) {
                if version <= *l {
                    bad += 1;
                }
                *l = version;
            }
            if let Some(p) = &probe {
                p.borrow_mut().push(((key, version), now));
            }
        }
        buf.drain(..start);
        let mut t = tally.borrow_mut();
        t.events += n;
        t.out_of_order += bad;
    }
}

fn find_after(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle).map(|i| i + needle.len())
}

fn digits(s: &[u8]) -> u64 {
    s.iter().take_while(|b| b.is_ascii_digit()).fold(0, |n, b| n * 10 + (b - b'0') as u64)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let rss_before = rss(&args.pids);
    let tally = Rc::new(RefCell::new(Tally::default()));
    let acks: Acks = Rc::default();
    let warmup = Duration::from_secs(3);
    let until = Instant::now() + warmup + args.duration + Duration::from_secs(2);
    let mut probes = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..args.watchers {
        let url = args.endpoints[i % args.endpoints.len()].clone();
        let probe = (i < args.probes).then(Seen::default);
        if let Some(p) = &probe {
            probes.push(p.clone());
        }
        tasks.push(actix_rt::spawn(watcher(url, probe, tally.clone(), until)));
        if i % 100 == 99 {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let connect_until = Instant::now() + Duration::from_secs(30);
    while tally.borrow().connected + tally.borrow().broken < args.watchers && Instant::now() < connect_until {
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    actix_rt::time::sleep(warmup).await;
    let rss_watching = rss(&args.pids);
    let (connected, broken) = (tally.borrow().connected, tally.borrow().broken);
    anyhow::ensure!(connected > 0, "no watcher connected ({broken} refused or broken)");

    let pb = ProgressBar::new(args.duration.as_secs());
    pb.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} s  {msg}").context("progress style")?);
    let writes_start = Instant::now();
    let events_before = tally.borrow().events;
    let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let per_writer = Duration::from_secs_f64(args.writers as f64 / args.rate as f64);
    let written = Rc::new(RefCell::new(0u64));
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let (http, acks, written) = (http.clone(), acks.clone(), written.clone());
        let url = args.endpoints[w % args.endpoints.len()].clone();
        let end = writes_start + args.duration;
        writers.push(actix_rt::spawn(async move {
            let mut next = Instant::now() + per_writer.mul_f64(w as f64 / 64.0);
            let mut n = w;
            while Instant::now() < end {
                actix_rt::time::sleep_until(next.into()).await;
                next += per_writer;
                let key = (n % KEYS) as u32;
                n += 64;
                let Ok(mut r) = http.put(format!("{url}/v1/kv/{PREFIX}{key}")).send_body("v").await else { continue };
                let acked = Instant::now();
                let Ok(body) = r.body().await else { continue };
                if let Some(v) =
                    serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|b| b["version"].as_u64())
                {
                    acks.borrow_mut().insert((key, v), acked);
                    *written.borrow_mut() += 1;
                }
            }
        }));
    }
    for s in 0..args.duration.as_secs() {
        actix_rt::time::sleep_until((writes_start + Duration::from_secs(s + 1)).into()).await;
        pb.set_position(s + 1);
        pb.set_message(format!("{} writes, {} events delivered", written.borrow(), tally.borrow().events));
    }
    for w in writers {
        let _ = w.await;
    }
    let write_secs = writes_start.elapsed().as_secs_f64();
    // Let the last events arrive.
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let events = tally.borrow().events - events_before;
    let delivered_secs = writes_start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    for t in tasks {
        t.abort();
    }

    let written = *written.borrow();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).context("histogram")?;
    let (mut probe_events, mut probe_missing) = (0u64, 0u64);
    let acks = acks.borrow();
    for p in &probes {
        let seen = p.borrow();
        let got: HashMap<(u32, u64), Instant> = seen.iter().copied().collect();
        for (id, acked) in acks.iter() {
            match got.get(id) {
                Some(at) => {
                    probe_events += 1;
                    let us = at.saturating_duration_since(*acked).as_micros() as u64;
                    hist.record(us.max(1)).ok();
                }
                None => probe_missing += 1,
            }
        }
    }
    let per_watcher_bytes = rss_watching.saturating_sub(rss_before) as f64 / connected.max(1) as f64;
    let out_of_order = tally.borrow().out_of_order;
    let report = serde_json::json!({
        "watchers": args.watchers,
        "connected": connected,
        "refused_or_broken": broken,
        "target_writes_per_sec": args.rate,
        "writes_per_sec": written as f64 / write_secs,
        "events_delivered_per_sec": events as f64 / delivered_secs,
        "events_expected_per_sec": (written * connected as u64) as f64 / delivered_secs,
        "latency_ms": {
            "p50": hist.value_at_quantile(0.5) as f64 / 1000.0,
            "p99": hist.value_at_quantile(0.99) as f64 / 1000.0,
            "max": hist.max() as f64 / 1000.0,
        },
        "probe_events": probe_events,
        "probe_missing": probe_missing,
        "out_of_order": out_of_order,
        "rss_before_bytes": rss_before,
        "rss_watching_bytes": rss_watching,
        "memory_per_watcher_bytes": per_watcher_bytes,
    });
    println!(
        "{} watchers ({} connected) of one prefix, writes {:.0}/s (target {}):\n  \
         events delivered {:.0}/s of {:.0}/s written x watchers\n  \
         latency ack -> event p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} probe events, {} missing)\n  \
         out-of-order {}, memory per watcher {:.1} KiB (nodes' RSS {:.1} -> {:.1} MiB)",
        args.watchers,
        connected,
        written as f64 / write_secs,
        args.rate,
        events as f64 / delivered_secs,
        (written * connected as u64) as f64 / delivered_secs,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
        probe_events,
        probe_missing,
        out_of_order,
        per_watcher_bytes / 1024.0,
        rss_before as f64 / 1048576.0,
        rss_watching as f64 / 1048576.0,
    );
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    anyhow::ensure!(out_of_order == 0, "{out_of_order} events came out of order");
    Ok(())
}
