//! One run: start the cluster, drive the workloads while the nemesis
//! follows its schedule, heal, read the final state, check everything,
//! and report.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use ringstore_testkit::ProcCluster;

use crate::history::{Call, Outcome, RegisterOp};
use crate::linearizable::{self, Check};
use crate::nemesis::{self, FaultRecord, Nemesis};
use crate::report::{FaultSummary, KeyFailure, Report, WorkloadSummary};
use crate::schedule::{self, FaultKind};
use crate::timeline::{self, Band};
use crate::workload::{self, Ctx, Recorded};
use crate::{locks, sets};

#[derive(Clone, Debug)]
pub struct Config {
    /// The `ringstore` binary.
    pub bin: PathBuf,
    pub nodes: u64,
    /// Extra flags for every node.
    pub node_flags: Vec<String>,
    pub seed: u64,
    /// How long the fault schedule runs.
    pub duration: Duration,
    pub hold: Duration,
    pub quiet: Duration,
    pub kinds: Vec<FaultKind>,
    pub register_clients: usize,
    pub lock_clients: usize,
    pub append_clients: usize,
    /// Where the history, report and timelines go.
    pub out: PathBuf,
    /// Search steps per key before a key's verdict is "unknown".
    pub budget: u64,
    pub progress: bool,
    /// Failpoints armed on every node once it is ready, `(name, actions)`:
    /// how a planted bug shows the checkers catching it.
    pub failpoints: Vec<(String, String)>,
}

impl Config {
    /// The duration in which every kind fires once with these holds.
    pub fn one_round(kinds: usize, hold: Duration, quiet: Duration) -> Duration {
        (hold.mul_f64(1.25) + quiet) * kinds as u32
    }
}

/// Calm before the first fault and after the last, so the report has a
/// baseline and the final state settles.
const CALM: Duration = Duration::from_secs(4);
const READY_WITHIN: Duration = Duration::from_secs(90);

pub fn run(cfg: &Config) -> anyhow::Result<Report> {
    let kinds: Vec<FaultKind> = cfg.kinds.iter().copied().filter(|k| k.min_nodes() <= cfg.nodes).collect();
    anyhow::ensure!(cfg.nodes >= 3, "the fault suite needs at least 3 nodes");
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let steps = schedule::plan(cfg.seed, &kinds, cfg.duration, cfg.hold, cfg.quiet);
    let flags: Vec<&str> = cfg.node_flags.iter().map(String::as_str).collect();
    let cluster = ProcCluster::start_partitionable(&cfg.bin, cfg.nodes, &flags)?;
    let urls: Vec<(u64, String)> = cluster.ids().into_iter().map(|i| (i, cluster.url(i))).collect();
    let start = Instant::now();
    let log: Arc<Mutex<Vec<FaultRecord>>> = Arc::default();
    let mut nemesis = Nemesis::new(cluster, start, log.clone())?;

    let pb = if cfg.progress { ProgressBar::new(0) } else { ProgressBar::hidden() };
    let total = CALM * 2 + steps.last().map(|s| s.at + s.hold).unwrap_or_default();
    pb.set_length(total.as_secs());
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    // The nemesis on its own thread: it waits for the cluster (and, if the
    // schedule needs them, for failpoints to answer), then says go.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let pb2 = pb.clone();
    let needs_failpoints = kinds.iter().any(|k| k.needs_failpoints()) || !cfg.failpoints.is_empty();
    let plant = cfg.failpoints.clone();
    let probe_urls = urls.clone();
    let nemesis_thread = std::thread::spawn(move || {
        let r = actix_rt::System::new().block_on(async {
            nemesis.wait_ready(READY_WITHIN).await?;
            if needs_failpoints {
                let client = awc::Client::default();
                for (_, url) in &probe_urls {
                    nemesis::failpoint(&client, url, "chaos_probe", Some("off")).await?;
                    for (name, actions) in &plant {
                        nemesis::failpoint(&client, url, name, Some(actions)).await?;
                    }
                }
            }
            let _ = ready_tx.send(());
            nemesis.run(&steps, Instant::now() + CALM, &pb2, READY_WITHIN).await
        });
        (nemesis, r)
    });
    if ready_rx.recv().is_err() {
        let (_, r) = nemesis_thread.join().map_err(|_| anyhow::anyhow!("the nemesis thread panicked"))?;
        r.context("starting the cluster")?;
        anyhow::bail!("the nemesis stopped before the cluster was ready");
    }
    let ctx = Ctx::new(urls.clone(), start, 2);
    let finals = actix_rt::System::new().block_on(drive(cfg, ctx.clone(), &nemesis_thread, &pb, total));
    let (nemesis, result) = nemesis_thread.join().map_err(|_| anyhow::anyhow!("the nemesis thread panicked"))?;
    pb.finish_and_clear();
    // The nodes' logs go with the history (their data dirs do not outlive the run).
    for id in nemesis.cluster.ids() {
        std::fs::write(cfg.out.join(format!("node-{id}.log")), nemesis.cluster.log(id))?;
    }
    // A nemesis that failed ends the schedule early; what the clients
    // recorded until then is still a history worth checking.
    let nemesis_error = result.err().map(|e| format!("{e:#}"));

    let faults = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let rec = std::mem::take(&mut *ctx.rec.borrow_mut());
    let mut report = check(cfg, &rec, &finals, &faults, start.elapsed())?;
    report.nemesis_error = nemesis_error;
    write_outputs(cfg, &rec, &finals, &faults, &report)?;
    drop(nemesis); // stops the nodes, removes the firewall chain
    Ok(report)
}

/// Runs the clients until the nemesis is done (plus calm), then reads the
/// final lists.
async fn drive(
    cfg: &Config,
    ctx: Rc<Ctx>,
    nemesis: &std::thread::JoinHandle<(Nemesis, anyhow::Result<()>)>,
    pb: &ProgressBar,
    total: Duration,
) -> BTreeMap<String, Option<Vec<u64>>> {
    let mut tasks = Vec::new();
    let seed = cfg.seed;
    for c in 0..cfg.register_clients {
        tasks.push(actix_rt::spawn(workload::register_client(ctx.clone(), client_seed(seed, c))));
    }
    for c in 0..cfg.lock_clients {
        let lock = ctx.locks[c % ctx.locks.len()].clone();
        tasks.push(actix_rt::spawn(workload::lock_client(ctx.clone(), client_seed(seed, 100 + c), lock)));
    }
    for c in 0..cfg.append_clients {
        tasks.push(actix_rt::spawn(workload::append_client(ctx.clone(), client_seed(seed, 200 + c))));
    }
    let hard_stop = Instant::now() + total + READY_WITHIN + Duration::from_secs(30);
    while !nemesis.is_finished() && Instant::now() < hard_stop {
        pb.set_position(ctx.start.elapsed().as_secs());
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    actix_rt::time::sleep(CALM).await;
    ctx.stop.set(true);
    for t in tasks {
        let _ = t.await;
    }
    workload::final_lists(&ctx, Duration::from_secs(30)).await
}

/// Each client's own stream of choices, from the run's seed.
fn client_seed(seed: u64, client: usize) -> u64 {
    seed ^ ((client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn in_window(t: u64, f: &FaultRecord) -> bool {
    t >= f.start_us && t < f.end_us
}

fn check(
    cfg: &Config,
    rec: &Recorded,
    finals: &BTreeMap<String, Option<Vec<u64>>>,
    faults: &[FaultRecord],
    elapsed: Duration,
) -> anyhow::Result<Report> {
    let mut failures = Vec::new();
    let (mut unknown, mut keys_ok) = (0usize, 0usize);
    let mut phantoms = Vec::new();
    for (key, h) in &rec.registers {
        match linearizable::check(&h.calls, cfg.budget) {
            Check::Linearizable => keys_ok += 1,
            Check::Unknown => unknown += 1,
            Check::Violation => {
                let (window, until_us) = linearizable::explain(&h.calls, cfg.budget).unwrap_or_default();
                failures.push(KeyFailure {
                    key: key.clone(),
                    window: window.iter().map(|i| h.calls[*i].clone()).collect(),
                    until_us,
                });
            }
        }
        for i in linearizable::phantom_stale_reads(&h.calls, &h.stale_reads) {
            phantoms.push(format!("{key}: stale read of {:?} that no write wrote", h.stale_reads[i].op));
        }
    }
    let lock_anomalies: Vec<String> =
        locks::check(&rec.grants, &rec.fenced_writes).iter().map(|a| a.to_string()).collect();
    let finals_map: HashMap<String, Option<Vec<u64>>> = finals.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let set_anomalies: Vec<String> = sets::check(&rec.appends, &finals_map).iter().map(|a| a.to_string()).collect();

    let count = |outcomes: &mut dyn Iterator<Item = Outcome>| {
        let mut s = WorkloadSummary::default();
        for o in outcomes {
            match o {
                Outcome::Ok => s.ok += 1,
                Outcome::Fail => s.fail += 1,
                Outcome::Info => s.info += 1,
            }
        }
        s
    };
    let reg_calls: Vec<&Call<RegisterOp>> = rec.registers.values().flat_map(|h| h.calls.iter()).collect();
    let registers = count(&mut reg_calls.iter().map(|c| c.outcome));
    let stale = count(&mut rec.registers.values().flat_map(|h| h.stale_reads.iter()).map(|c| c.outcome));
    let fenced = count(&mut rec.fenced_writes.iter().map(locks::outcome_of));
    let appends = count(&mut rec.appends.iter().map(|a| a.outcome));

    // Availability: successful answers inside each fault and outside all.
    let calm_secs = {
        let fault_us: u64 = faults.iter().map(|f| f.end_us - f.start_us).sum();
        (elapsed.as_micros() as u64).saturating_sub(fault_us) as f64 / 1e6
    };
    let calm: Vec<bool> =
        rec.answers.iter().filter(|(t, _)| !faults.iter().any(|f| in_window(*t, f))).map(|(_, ok)| *ok).collect();
    let calm_ok = calm.iter().filter(|ok| **ok).count();
    let mut by_kind: BTreeMap<FaultKind, FaultSummary> = BTreeMap::new();
    for f in faults {
        let s = by_kind.entry(f.kind).or_default();
        s.count += 1;
        s.secs += (f.end_us - f.start_us) as f64 / 1e6;
        for (_, ok) in rec.answers.iter().filter(|(t, _)| in_window(*t, f)) {
            s.answers += 1;
            s.ok_answers += usize::from(*ok);
        }
        s.register_calls += reg_calls.iter().filter(|c| in_window(c.invoke_us, f)).count();
    }
    Ok(Report {
        seed: cfg.seed,
        nodes: cfg.nodes,
        elapsed,
        registers,
        stale_reads: stale,
        register_keys: rec.registers.len(),
        keys_linearizable: keys_ok,
        keys_unknown: unknown,
        grants: rec.grants.len(),
        fenced_writes: fenced,
        appends,
        append_keys: finals.len(),
        not_sent: rec.not_sent,
        refused: rec.refused,
        calm_ok_per_sec: calm_ok as f64 / calm_secs.max(0.001),
        calm_ok_share: calm_ok as f64 / calm.len().max(1) as f64,
        faults: by_kind,
        linearizability_failures: failures,
        stale_read_anomalies: phantoms,
        lock_anomalies,
        set_anomalies,
        nemesis_error: None,
    })
}

fn write_outputs(
    cfg: &Config,
    rec: &Recorded,
    finals: &BTreeMap<String, Option<Vec<u64>>>,
    faults: &[FaultRecord],
    report: &Report,
) -> anyhow::Result<()> {
    let history = serde_json::json!({
        "seed": cfg.seed,
        "nodes": cfg.nodes,
        "faults": faults,
        "registers": rec.registers,
        "grants": rec.grants,
        "fenced_writes": rec.fenced_writes,
        "appends": rec.appends,
        "final_lists": finals,
    });
    std::fs::write(cfg.out.join("history.json"), serde_json::to_vec(&history)?)?;
    std::fs::write(cfg.out.join("report.txt"), report.to_string())?;
    for (i, f) in report.linearizability_failures.iter().enumerate() {
        let calls: Vec<&Call<RegisterOp>> = f.window.iter().collect();
        let bands: Vec<Band<'_>> =
            faults.iter().map(|x| Band { from_us: x.start_us, to_us: x.end_us, label: x.what.as_str() }).collect();
        let svg = timeline::svg(&format!("not linearizable: {}", f.key), &calls, f.until_us, &bands);
        std::fs::write(cfg.out.join(format!("violation-{i}.svg")), svg)?;
    }
    Ok(())
}
