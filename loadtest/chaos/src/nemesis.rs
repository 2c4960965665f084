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
use crate::schedule::{FaultKind, Step};

#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// What was done, e.g. "kill n3" or "cut {1,2} | {3,4,5}".
    pub what: String,
    pub start_us: Micros,
    pub end_us: Micros,
}

/// Who leads how many shards, from any node that answers.
async fn leaders(client: &awc::Client, urls: &[String]) -> BTreeMap<NodeId, usize> {
    for url in urls {
        let Ok(mut res) = client.get(format!("{url}/v1/cluster")).send().await else { continue };
        let Ok(body) = res.json::<serde_json::Value>().limit(4 << 20).await else { continue };
        let mut counts = BTreeMap::new();
        for s in body["shards"].as_array().into_iter().flatten() {
            if let Some(l) = s["leader"].as_u64() {
                *counts.entry(l).or_insert(0) += 1;
            }
        }
        if !counts.is_empty() {
            return counts;
        }
    }
    BTreeMap::new()
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
    for url in urls {
        let Ok(mut res) = client.get(format!("{url}/v1/cluster")).send().await else { continue };
        let Ok(body) = res.json::<serde_json::Value>().limit(4 << 20).await else { continue };
        return body["nodes"].as_array().into_iter().flatten().any(|n| n["id"] == id && n["state"] == "removed");
    }
    false
}

/// Data shards in the cluster map (0 if no node answers).
async fn shard_count(client: &awc::Client, urls: &[String]) -> usize {
    for url in urls {
        let Ok(mut res) = client.get(format!("{url}/v1/cluster")).send().await else { continue };
        let Ok(body) = res.json::<serde_json::Value>().limit(4 << 20).await else { continue };
        if let Some(shards) = body["shards"].as_array() {
            // The meta shard (0) holds the map, not keys.
            return shards.iter().filter(|s| s["id"].as_u64() != Some(0)).count();
        }
    }
    0
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
        let n = ids.len();
        let counts = leaders(client, &self.urls()).await;
        let busiest =
            ids.iter().copied().max_by_key(|i| (counts.get(i).copied().unwrap_or(0), u64::MAX - i)).unwrap_or(1);
        let mut by_fewest = ids.clone();
        by_fewest.sort_by_key(|i| (counts.get(i).copied().unwrap_or(0), *i));
        // Even picks hit the busiest leader, odd ones any node.
        let target = if step.pick.is_multiple_of(2) { busiest } else { ids[(step.pick / 2) as usize % n] };
        let mut order = ids.clone();
        let r = (step.pick % n as u64) as usize;
        order.rotate_left(r);
        let ip = |id: NodeId| self.cluster.ip(id);
        match step.kind {
            FaultKind::Kill => {
                self.cluster.kill9(target)?;
                Ok((format!("kill -9 n{target}"), Undo::Restart(target)))
            }
            FaultKind::Pause => {
                self.cluster.pause(target)?;
                Ok((format!("SIGSTOP n{target}"), Undo::Resume(target)))
            }
            FaultKind::PartitionLeaderMinority | FaultKind::PartitionLeaderMajority => {
                let minority_len = (n - 1) / 2;
                let minority: Vec<NodeId> = if step.kind == FaultKind::PartitionLeaderMinority {
                    let mut m = vec![busiest];
                    m.extend(by_fewest.iter().copied().filter(|i| *i != busiest).take(minority_len - 1));
                    m
                } else {
                    by_fewest.iter().copied().take(minority_len).collect()
                };
                let majority: Vec<NodeId> = ids.iter().copied().filter(|i| !minority.contains(i)).collect();
                for a in &minority {
                    for b in &majority {
                        self.partition.cut(ip(*a), ip(*b))?;
                    }
                }
                Ok((format!("cut {minority:?} | {majority:?}"), Undo::Heal))
            }
            FaultKind::Bridge => {
                // order[0] bridges; the rest split in two halves.
                let bridge = order[0];
                let rest = &order[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                for x in a {
                    for y in b {
                        self.partition.cut(ip(*x), ip(*y))?;
                    }
                }
                Ok((format!("bridge n{bridge} between {a:?} and {b:?}"), Undo::Heal))
            }
            FaultKind::Ring => {
                for i in 0..n {
                    for j in (i + 1)..n {
                        let adjacent = j == i + 1 || (i == 0 && j == n - 1);
                        if !adjacent {
                            self.partition.cut(ip(order[i]), ip(order[j]))?;
                        }
                    }
                }
                Ok((format!("ring {order:?}"), Undo::Heal))
            }
            FaultKind::Loss => {
                let pct = step.param.clamp(0, 100) as u8;
                for i in 0..n {
                    for j in (i + 1)..n {
                        self.partition.lose(ip(ids[i]), ip(ids[j]), pct)?;
                    }
                }
                Ok((format!("lose {pct}% between all nodes"), Undo::Heal))
            }
            FaultKind::Delay => {
                let running: Vec<NodeId> = ids.iter().copied().filter(|i| self.cluster.is_running(*i)).collect();
                for id in &running {
                    failpoint(
                        client,
                        &self.cluster.url(*id),
                        "peer_raft_delay_ms",
                        Some(&format!("return({})", step.param)),
                    )
                    .await?;
                }
                Ok((
                    format!("delay Raft {} ms into every node", step.param),
                    Undo::Disarm(running, "peer_raft_delay_ms"),
                ))
            }
            FaultKind::LeaderTransfer => {
                let url = self.cluster.url(busiest);
                let res = client.post(format!("{url}/v1/node/handover")).timeout(Duration::from_secs(30)).send().await;
                anyhow::ensure!(
                    res.as_ref().is_ok_and(|r| r.status().is_success()),
                    "handover on n{busiest}: {:?}",
                    res.map(|r| r.status())
                );
                let status = self.cluster.terminate(busiest, Duration::from_secs(30))?;
                Ok((format!("hand over and stop n{busiest} ({status})"), Undo::Restart(busiest)))
            }
            FaultKind::Split => {
                let shards = shard_count(client, &self.urls()).await;
                if shards >= SPLIT_SHARDS_MAX {
                    return Ok((format!("split skipped ({shards} shards)"), Undo::Nothing));
                }
                let urls = self.urls();
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
            FaultKind::JoinDrain => {
                let id = self.cluster.ids().into_iter().max().unwrap_or(0) + 1;
                let via = ids[(step.pick % n as u64) as usize];
                self.cluster.join(id, via)?;
                Ok((format!("join n{id} via n{via}, then drain it"), Undo::Drain(id)))
            }
            FaultKind::ClockSkew => {
                failpoint(
                    client,
                    &self.cluster.url(target),
                    "clock_offset_ms",
                    Some(&format!("return({})", step.param)),
                )
                .await?;
                Ok((format!("clock of n{target} {:+} ms", step.param), Undo::Disarm(vec![target], "clock_offset_ms")))
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
                    let res = client.post(format!("{url}/v1/cluster/nodes/{id}/drain")).send().await;
                    if res.is_ok_and(|r| r.status().is_success()) {
                        break;
                    }
                    anyhow::ensure!(Instant::now() < deadline, "n{id} could not be drained");
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
