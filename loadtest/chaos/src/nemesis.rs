//! Carries out a schedule on real `ringstore node` processes: kills and
//! restarts, pauses, partitions and lossy links (iptables, on the
//! cluster's own loopback addresses), Raft latency and clock skew (the
//! nodes' run-time failpoints). Runs on its own thread, records each
//! fault's span on the run's clock, and leaves the cluster whole.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;
use ringstore_testkit::netfilter::Partition;
use ringstore_testkit::{NodeId, ProcCluster};
use serde::Serialize;

use crate::history::Micros;
use crate::schedule::{self, Aim, FaultKind, Step};

#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// What was done, e.g. "kill n3" or "cut {1,2} | {3,4,5}".
    pub what: String,
    pub start_us: Micros,
    pub end_us: Micros,
}

/// The cluster map (`GET /v1/cluster`) from the first node whose answer
/// is `usable`.
async fn cluster_map(
    client: &awc::Client,
    urls: &[String],
    usable: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    for url in urls {
        let Ok(mut res) = client.get(format!("{url}/v1/cluster")).send().await else { continue };
        if let Ok(body) = res.json::<serde_json::Value>().limit(4 << 20).await {
            if usable(&body) {
                return Some(body);
            }
        }
    }
    None
}

/// Who leads how many shards.
async fn leaders(client: &awc::Client, urls: &[String]) -> BTreeMap<NodeId, usize> {
    let mut counts = BTreeMap::new();
    // A node that knows no leader yet is asked past.
    let led = |m: &serde_json::Value| m["shards"].as_array().into_iter().flatten().any(|s| s["leader"].is_u64());
    let map = cluster_map(client, urls, led).await.unwrap_or_default();
    for s in map["shards"].as_array().into_iter().flatten() {
        if let Some(l) = s["leader"].as_u64() {
            *counts.entry(l).or_insert(0) += 1;
        }
    }
    counts
}

/// How long a step waits for the cluster to be ready before it strikes.
const STEP_READY_WITHIN: Duration = Duration::from_secs(30);

/// How long arming a failpoint waits for a node that is starting (the
/// restart that healed the last fault may still be binding its port).
const ARM_WITHIN: Duration = Duration::from_secs(10);

/// Arms a failpoint on a node, retrying while it starts; `false` if it
/// never answered (the fault then spares it, and says so).
async fn arm(client: &awc::Client, url: &str, name: &str, actions: &str) -> bool {
    let until = Instant::now() + ARM_WITHIN;
    loop {
        match failpoint(client, url, name, Some(actions)).await {
            Ok(()) => return true,
            Err(e) if Instant::now() >= until => {
                eprintln!("nemesis: {name} not armed on {url}: {e:#}");
                return false;
            }
            Err(_) => actix_rt::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn nodes_named(ids: &[NodeId]) -> String {
    match ids {
        [] => "no node (none answered)".to_string(),
        ids => ids.iter().map(|i| format!("n{i}")).collect::<Vec<_>>().join(", "),
    }
}

/// Arms (`Some(actions)`) or disarms a failpoint on one node.
pub async fn failpoint(client: &awc::Client, url: &str, name: &str, actions: Option<&str>) -> anyhow::Result<()> {
    let path = format!("{url}/v1/debug/failpoints/{name}");
    let res = match actions {
        Some(a) => client.put(path).send_body(a.to_string()).await,
        None => client.delete(path).send().await,
    };
    let res = res.map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("failpoint {name} on {url}"))?;
    anyhow::ensure!(
        res.status().is_success(),
        "failpoint {name} on {url}: {} (run-time failpoints need a test build of ringstore, or \
         `cargo build --release -p ringstore --features failpoints`)",
        res.status()
    );
    Ok(())
}

pub struct Nemesis {
    pub cluster: ProcCluster,
    partition: Partition,
    start: Instant,
    pub log: Arc<Mutex<Vec<FaultRecord>>>,
}

/// What to undo when a fault ends.
enum Undo {
    Restart(NodeId),
    Resume(NodeId),
    Heal,
    Disarm(Vec<NodeId>, &'static str),
    /// Drain the node until it is removed, then stop and forget it.
    Drain(NodeId),
    Nothing,
}

/// How long a joined node may take to drain before the run fails.
const DRAIN_WITHIN: Duration = Duration::from_secs(180);

/// Splits stop here, so long runs do not grow the ring without end.
const SPLIT_SHARDS_MAX: usize = 32;

/// Whether the map says node `id` is removed (drained of every replica).
async fn removed(client: &awc::Client, urls: &[String], id: NodeId) -> bool {
    let map = cluster_map(client, urls, |_| true).await.unwrap_or_default();
    map["nodes"].as_array().into_iter().flatten().any(|n| n["id"] == id && n["state"] == "removed")
}

/// Data shards in the cluster map (0 if no node answers).
async fn shard_count(client: &awc::Client, urls: &[String]) -> usize {
    let map = cluster_map(client, urls, |m| m["shards"].is_array()).await.unwrap_or_default();
    // The meta shard (0) holds the map, not keys.
    map["shards"].as_array().into_iter().flatten().filter(|s| s["id"].as_u64() != Some(0)).count()
}

impl Nemesis {
    pub fn new(cluster: ProcCluster, start: Instant, log: Arc<Mutex<Vec<FaultRecord>>>) -> anyhow::Result<Self> {
        let partition = Partition::new()?;
        Ok(Nemesis { cluster, partition, start, log })
    }

    fn urls(&self) -> Vec<String> {
        self.cluster.ids().into_iter().filter(|i| self.cluster.is_running(*i)).map(|i| self.cluster.url(i)).collect()
    }

    fn now_us(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    /// Runs every step at its time (from `begin`), then waits for every
    /// node to be ready again (bounded by `recover`).
    pub async fn run(
        &mut self,
        steps: &[Step],
        begin: Instant,
        pb: &ProgressBar,
        recover: Duration,
    ) -> anyhow::Result<()> {
        let client = client();
        for step in steps {
            let at = begin + step.at;
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                pb.set_message("calm".to_string());
                actix_rt::time::sleep(d).await;
            }
            // A node the last fault restarted may still be starting: the
            // next fault aims at a cluster that is up (bounded; a node that
            // does not come back is the next fault's problem, and the
            // history's).
            let _ = self.wait_ready(STEP_READY_WITHIN).await;
            let start_us = self.now_us();
            let (what, undo) = self.inflict(&client, step).await?;
            pb.set_message(what.clone());
            log_fault(&what);
            actix_rt::time::sleep(step.hold).await;
            self.undo(&client, undo).await?;
            self.log.lock().unwrap_or_else(|e| e.into_inner()).push(FaultRecord {
                kind: step.kind,
                what,
                start_us,
                end_us: self.now_us(),
            });
        }
        pb.set_message("recovering".to_string());
        self.wait_ready(recover).await
    }

    async fn inflict(&mut self, client: &awc::Client, step: &Step) -> anyhow::Result<(String, Undo)> {
        let ids = self.cluster.ids();
        let counts = leaders(client, &self.urls()).await;
        match schedule::aim(step, &ids, &counts) {
            Aim::Kill(id) => {
                self.cluster.kill9(id)?;
                Ok((format!("kill -9 n{id}"), Undo::Restart(id)))
            }
            Aim::Pause(id) => {
                self.cluster.pause(id)?;
                Ok((format!("SIGSTOP n{id}"), Undo::Resume(id)))
            }
            Aim::Cut { pairs, shape } => {
                for (a, b) in pairs {
                    self.partition.cut(self.cluster.ip(a), self.cluster.ip(b))?;
                }
                Ok((shape, Undo::Heal))
            }
            Aim::Lose { pairs, percent } => {
                for (a, b) in pairs {
                    self.partition.lose(self.cluster.ip(a), self.cluster.ip(b), percent)?;
                }
                Ok((format!("lose {percent}% between all nodes"), Undo::Heal))
            }
            Aim::Delay { ms } => {
                let running: Vec<NodeId> = ids.iter().copied().filter(|i| self.cluster.is_running(*i)).collect();
                let mut armed = Vec::new();
                for id in running {
                    if arm(client, &self.cluster.url(id), "peer_raft_delay_ms", &format!("return({ms})")).await {
                        armed.push(id);
                    }
                }
                let what = format!("delay Raft {ms} ms into {}", nodes_named(&armed));
                Ok((what, Undo::Disarm(armed, "peer_raft_delay_ms")))
            }
            Aim::Skew { node, ms } => {
                if !arm(client, &self.cluster.url(node), "clock_offset_ms", &format!("return({ms})")).await {
                    return Ok((format!("clock skew skipped (n{node} not answering)"), Undo::Nothing));
                }
                Ok((format!("clock of n{node} {ms:+} ms"), Undo::Disarm(vec![node], "clock_offset_ms")))
            }
            Aim::Transfer(id) => {
                let url = self.cluster.url(id);
                let res = client.post(format!("{url}/v1/node/handover")).timeout(Duration::from_secs(30)).send().await;
                anyhow::ensure!(
                    res.as_ref().is_ok_and(|r| r.status().is_success()),
                    "handover on n{id}: {:?}",
                    res.map(|r| r.status())
                );
                let status = self.cluster.terminate(id, Duration::from_secs(30))?;
                Ok((format!("hand over and stop n{id} ({status})"), Undo::Restart(id)))
            }
            Aim::Split => {
                let urls = self.urls();
                let shards = shard_count(client, &urls).await;
                if shards >= SPLIT_SHARDS_MAX {
                    return Ok((format!("split skipped ({shards} shards)"), Undo::Nothing));
                }
                let url = urls.get((step.pick % urls.len().max(1) as u64) as usize).context("no node is running")?;
                let res = client
                    .post(format!("{url}/v1/cluster/shards"))
                    .timeout(Duration::from_secs(10))
                    .send_body(r#"{"add":2}"#)
                    .await;
                anyhow::ensure!(
                    res.as_ref().is_ok_and(|r| r.status().is_success()),
                    "adding shards: {:?}",
                    res.map(|r| r.status())
                );
                Ok((format!("split: {shards} -> {} shards", shards + 2), Undo::Nothing))
            }
            Aim::Join { via } => {
                let id = ids.iter().max().copied().unwrap_or(0) + 1;
                self.cluster.join(id, via)?;
                Ok((format!("join n{id} via n{via}, then drain it"), Undo::Drain(id)))
            }
        }
    }

    async fn undo(&mut self, client: &awc::Client, undo: Undo) -> anyhow::Result<()> {
        match undo {
            Undo::Restart(id) => self.cluster.spawn(id),
            Undo::Resume(id) => self.cluster.resume(id),
            Undo::Heal => self.partition.heal(),
            Undo::Nothing => Ok(()),
            Undo::Drain(id) => {
                let deadline = Instant::now() + DRAIN_WITHIN;
                // The join may still be on its way into the map: retry.
                loop {
                    let urls = self.urls();
                    let url = urls.first().context("no node is running")?;
                    let answer = match client.post(format!("{url}/v1/cluster/nodes/{id}/drain")).send().await {
                        Ok(r) if r.status().is_success() => break,
                        Ok(mut r) => {
                            let body = r.body().await.unwrap_or_default();
                            // An earlier try whose answer was lost drained it already.
                            if String::from_utf8_lossy(&body).contains("\"node_removed\"") {
                                break;
                            }
                            format!("{}: {}", r.status(), String::from_utf8_lossy(&body))
                        }
                        Err(e) => e.to_string(),
                    };
                    anyhow::ensure!(Instant::now() < deadline, "n{id} could not be drained: {answer}");
                    actix_rt::time::sleep(Duration::from_millis(500)).await;
                }
                while !removed(client, &self.urls(), id).await {
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "n{id} not removed within {DRAIN_WITHIN:?} of its drain"
                    );
                    actix_rt::time::sleep(Duration::from_millis(500)).await;
                }
                self.cluster.forget(id);
                Ok(())
            }
            Undo::Disarm(ids, name) => {
                for id in ids {
                    // A node that restarted meanwhile has it disarmed already.
                    let url = self.cluster.url(id);
                    let mut tries = 0;
                    while let Err(e) = failpoint(client, &url, name, None).await {
                        tries += 1;
                        anyhow::ensure!(tries < 20, "could not disarm {name} on n{id}: {e}");
                        actix_rt::time::sleep(Duration::from_millis(250)).await;
                    }
                }
                Ok(())
            }
        }
    }

    /// Every node running and answering `/readyz` with 200.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let client = client();
        let deadline = Instant::now() + within;
        for id in self.cluster.ids() {
            anyhow::ensure!(self.cluster.is_running(id), "node {id} is not running");
            loop {
                let ok = match client.get(format!("{}/readyz", self.cluster.url(id))).send().await {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                };
                if ok {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "node {id} not ready within {within:?} after the faults");
                actix_rt::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
}

fn client() -> awc::Client {
    awc::Client::builder().timeout(Duration::from_secs(2)).finish()
}

fn log_fault(what: &str) {
    if std::env::var_os("RINGSTORE_CHAOS_VERBOSE").is_some() {
        eprintln!("nemesis: {what}");
    }
}
