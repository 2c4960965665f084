//! `ringstore-failover`: how long a three-process cluster refuses writes
//! after `kill -9` of its leader.
//!
//! Each trial: wait for a leader, keep writers busy on the other two nodes,
//! `kill -9` the leader, and measure the time from the kill to the first
//! acknowledged write that was *sent* after the kill (so no answer from
//! the dead leader counts). Then restart the killed node, wait until it has
//! caught up, and go again. Raft timing is the production default unless
//! flags after `--` say otherwise.
//!
//! Usage: ringstore-failover [--trials 10] [--writers 4] [--bin PATH] [--out failover.json] [-- NODE FLAGS...]

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ringstore_testkit::ProcCluster;

#[derive(Parser, Debug)]
#[command(name = "ringstore-failover", about = "Failover time of a 3-process ringstore cluster after kill -9")]
struct Args {
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Concurrent writers, spread over the surviving nodes.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// The `ringstore` binary (default: next to this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    #[arg(long)]
    out: Option<PathBuf>,
    /// Extra flags for every `ringstore node`.
    #[arg(last = true)]
    node_flags: Vec<String>,
}

/// A trial that has not seen a write this long after the kill failed.
const TRIAL_LIMIT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!((1..=100).contains(&args.trials), "--trials must be 1..=100");
    anyhow::ensure!((1..=64).contains(&args.writers), "--writers must be 1..=64");
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("ringstore"),
    };
    anyhow::ensure!(bin.exists(), "{} not found (build it, or pass --bin)", bin.display());
    actix_rt::System::new().block_on(run(args, bin))
}

async fn run(args: Args, bin: PathBuf) -> anyhow::Result<()> {
    let flags: Vec<&str> = args.node_flags.iter().map(String::as_str).collect();
    let mut c = ProcCluster::start(&bin, 3, &flags, None)?;
    let pb = ProgressBar::new(args.trials as u64);
    pb.set_style(
        ProgressStyle::with_template("failover trials [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results_ms = Vec::new();
    let mut trials = Vec::new();
    let mut trial = 0;
    let mut moved = 0;
    while trial < args.trials {
        let leader = c.wait_leader(Duration::from_secs(30)).await?;
        let survivors: Vec<String> = c.ids().into_iter().filter(|i| *i != leader).map(|i| c.url(i)).collect();
        let Some((ms, acked_before)) = one_trial(&mut c, leader, &survivors, args.writers, trial).await? else {
            // Leadership moved while the writers warmed up: killing a
            // follower measures nothing. Pick the leader again.
            moved += 1;
            anyhow::ensure!(moved <= args.trials, "leadership kept moving before the kill");
            continue;
        };
        results_ms.push(ms);
        trials.push(
            serde_json::json!({ "trial": trial, "killed": leader, "failover_ms": ms, "acked_before": acked_before }),
        );
        pb.set_message(format!("last {ms:.0} ms"));
        pb.inc(1);
        // Bring the node back and let it catch up before the next kill.
        c.spawn(leader)?;
        wait_caught_up(&c, leader).await?;
        trial += 1;
    }
    pb.finish_and_clear();
    let mut sorted = results_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let (min, med, max) = (sorted[0], sorted[sorted.len() / 2], sorted[sorted.len() - 1]);
    println!("failover after kill -9 of the leader, {} trials, {} writers:", args.trials, args.writers);
    for (i, ms) in results_ms.iter().enumerate() {
        println!("  trial {:>2}: {:>7.0} ms", i + 1, ms);
    }
    println!("  min {min:.0} ms, median {med:.0} ms, max {max:.0} ms");
    if moved > 0 {
        println!("  ({moved} picks not killed: leadership moved while the writers warmed up)");
    }
    if let Some(out) = &args.out {
        let report = serde_json::json!({
            "trials": trials,
            "min_ms": min, "median_ms": med, "max_ms": max, "leader_moved_before_kill": moved,
            "writers": args.writers, "node_flags": args.node_flags,
        });
        std::fs::write(out, serde_json::to_vec_pretty(&report)?)?;
        println!("report written to {}", out.display());
    }
    Ok(())
}

/// Kills `leader` while writers run; returns the failover time in ms and
/// the writes acknowledged before, or `None` if `leader` no longer led
/// when the kill was due (nothing killed).
async fn one_trial(
    c: &mut ProcCluster,
    leader: u64,
    survivors: &[String],
    writers: usize,
    trial: usize,
) -> anyhow::Result<Option<(f64, usize)>> {
    let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let killed_at: Rc<RefCell<Option<Instant>>> = Rc::default();
    let first_ack: Rc<RefCell<Option<Instant>>> = Rc::default();
    let acked = Rc::new(RefCell::new(0usize));
    let abandoned: Rc<RefCell<bool>> = Rc::default();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, killed_at, first_ack, acked, abandoned) =
            (client.clone(), killed_at.clone(), first_ack.clone(), acked.clone(), abandoned.clone());
        let url = survivors[w % survivors.len()].clone();
        tasks.push(actix_rt::spawn(async move {
            let start = Instant::now();
            let mut n = 0u64;
            while first_ack.borrow().is_none() && !*abandoned.borrow() && start.elapsed() < TRIAL_LIMIT * 2 {
                let sent = Instant::now();
                let res = client
                    .put(format!("{url}/v1/kv/failover-{trial}-{w}-{n}"))
                    .insert_header(("X-Request-Timeout", "10000"))
                    .send_body("x")
                    .await;
                n += 1;
                let ok = matches!(res, Ok(r) if r.status().is_success());
                if !ok {
                    actix_rt::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                *acked.borrow_mut() += 1;
                let k = *killed_at.borrow();
                if let Some(k) = k {
                    if sent > k {
                        let mut f = first_ack.borrow_mut();
                        if f.is_none() {
                            *f = Some(Instant::now());
                        }
                    }
                }
            }
        }));
    }
    // Let writes flow, then kill.
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let before = *acked.borrow();
    anyhow::ensure!(before > 0, "no writes succeeded before the kill");
    if c.wait_leader(Duration::from_secs(5)).await? != leader {
        *abandoned.borrow_mut() = true;
        for t in tasks {
            t.await.context("writer task")?;
        }
        return Ok(None);
    }
    *killed_at.borrow_mut() = Some(Instant::now());
    c.kill9(leader)?;
    for t in tasks {
        t.await.context("writer task")?;
    }
    let k = killed_at.borrow().context("kill time")?;
    let f = first_ack.borrow().context("no acknowledged write after the kill within the trial limit")?;
    Ok(Some((f.duration_since(k).as_secs_f64() * 1000.0, before)))
}

async fn wait_caught_up(c: &ProcCluster, id: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let leader = c.wait_leader(Duration::from_secs(30)).await?;
        let target = c.replica(leader).await.and_then(|r| r["commit_index"].as_u64()).unwrap_or(u64::MAX);
        let mine = c.replica(id).await.and_then(|r| r["applied_index"].as_u64()).unwrap_or(0);
        if mine >= target {
            return Ok(());
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "node {id} did not catch up within 60 s");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}
