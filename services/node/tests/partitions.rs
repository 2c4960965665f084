//! Availability under network partitions, on three `ringstore node`
//! processes × 16 shards, each node on a loopback address of its own with
//! its peer traffic cut by iptables rules this test creates (and always
//! removes). Clients stay pinned to one node each, as behind a load
//! balancer, and every request is recorded.
//!
//! 1. Isolating the node that leads the most shards: after 2 s the two
//!    majority nodes serve at least half their rate from before the cut,
//!    the cut-off node answers 503 quickly instead of at the deadline, and
//!    no acknowledged write is lost.
//! 2. A bridge (only the link between two nodes is cut; the third sees
//!    both): every node keeps serving, since a node passes a request on to
//!    a leader its asker cannot reach, and nothing acknowledged is lost.
//!
//! Every write is create-only (`If-None-Match: *`) on a fresh key, so a
//! write applied twice would answer 412: writes in flight at the cut are
//! retried by the router at the new leader and must apply exactly once.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use ringstore_testkit::netfilter::Partition;
use ringstore_testkit::ProcCluster;

const BIN: &str = env!("CARGO_BIN_EXE_ringstore");
/// The default shape and timing: 16 shards, 100 ms ticks, 1 s election timeout.
const FLAGS: [&str; 2] = ["--shards", "16"];
const ALL_SHARDS: usize = 17;
const CLIENTS_PER_NODE: usize = 4;
const REQUEST_TIMEOUT_MS: u64 = 5000;

/// One finished request of a pinned client.
#[derive(Debug, Clone)]
struct Call {
    node: u64,
    start: Instant,
    end: Instant,
    /// 0: no HTTP answer at all.
    status: u16,
    key: String,
    value: String,
}

/// Clients that each create fresh keys (`If-None-Match: *`) through one
/// node only, until stopped (bounded by a count as well).
struct PinnedClients {
    calls: Rc<RefCell<Vec<Call>>>,
    stop: Rc<std::cell::Cell<bool>>,
    handles: Vec<actix_rt::task::JoinHandle<()>>,
}

impl PinnedClients {
    fn start(nodes: &[(u64, String)], per_node: usize) -> Self {
        let calls: Rc<RefCell<Vec<Call>>> = Rc::default();
        let stop: Rc<std::cell::Cell<bool>> = Rc::default();
        let client = awc::Client::builder().timeout(Duration::from_millis(REQUEST_TIMEOUT_MS + 2000)).finish();
        let mut handles = Vec::new();
        for (node, url) in nodes {
            for c in 0..per_node {
                let (calls, stop, client, url, node) =
                    (calls.clone(), stop.clone(), client.clone(), url.clone(), *node);
                handles.push(actix_rt::spawn(async move {
                    for i in 0..200_000u64 {
                        if stop.get() {
                            break;
                        }
                        let (key, value) = (format!("n{node}-c{c}-{i}"), format!("v{node}-{c}-{i}"));
                        let start = Instant::now();
                        let res = client
                            .put(format!("{url}/v1/kv/{key}"))
                            .insert_header(("X-Request-Timeout", REQUEST_TIMEOUT_MS.to_string()))
                            .insert_header(("If-None-Match", "*"))
                            .send_body(value.clone())
                            .await;
                        let status = res.map(|r| r.status().as_u16()).unwrap_or(0);
                        calls.borrow_mut().push(Call { node, start, end: Instant::now(), status, key, value });
                        if status != 200 {
                            // As a client honouring Retry-After would, but briefly.
                            actix_rt::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }));
            }
        }
        PinnedClients { calls, stop, handles }
    }

    async fn stop(self) -> Vec<Call> {
        self.stop.set(true);
        for h in self.handles {
            h.await.expect("client task");
        }
        self.calls.take()
    }
}

/// Successes per second of `nodes`' clients for requests that ended in `[from, to)`.
fn ok_rate(calls: &[Call], nodes: &[u64], from: Instant, to: Instant) -> f64 {
    let n = calls.iter().filter(|c| nodes.contains(&c.node) && c.status == 200 && c.end >= from && c.end < to).count();
    n as f64 / (to - from).as_secs_f64()
}

/// Leaders per node as node `url` reports them, or `None` until every
/// shard (the meta shard too) has one.
async fn leaders(url: &str) -> Option<BTreeMap<u64, usize>> {
    let body = try_get(&format!("{url}/v1/cluster")).await?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let shards = v["shards"].as_array()?;
    let led: Vec<u64> = shards.iter().filter_map(|s| s["leader"].as_u64()).collect();
    if led.len() != ALL_SHARDS {
        return None;
    }
    let mut per = BTreeMap::new();
    for l in led {
        *per.entry(l).or_insert(0) += 1;
    }
    Some(per)
}

async fn start_cluster() -> (ProcCluster, BTreeMap<u64, usize>) {
    let c = ProcCluster::start_partitionable(Path::new(BIN), 3, &FLAGS).expect("three processes start");
    let u1 = c.url(1);
    let start = Instant::now();
    loop {
        if let Some(per) = leaders(&u1).await {
            // Every node must also be ready (its replicas know their leaders).
            let mut ready = true;
            for id in c.ids() {
                ready &= try_get(&format!("{}/readyz", c.url(id))).await.is_some();
            }
            if ready {
                return (c, per);
            }
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the cluster did not become ready");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn assert_nothing_acknowledged_lost(c: &ProcCluster, calls: &[Call]) {
    let twice: Vec<&Call> = calls.iter().filter(|c| c.status == 412).collect();
    assert!(twice.is_empty(), "create-only writes of fresh keys answered 412, so applied twice: {twice:?}");
    let acks: Vec<Ack> =
        calls.iter().filter(|c| c.status == 200).map(|c| (c.key.clone(), c.value.clone(), c.end)).collect();
    assert!(!acks.is_empty());
    let urls: Vec<String> = c.ids().iter().map(|i| c.url(*i)).collect();
    let lost = lost_writes(&acks, &urls).await;
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost: {:?}", lost.len(), acks.len(), lost);
}

fn summary(calls: &[Call], node: u64, from: Instant, to: Instant) -> String {
    let mine: Vec<&Call> = calls.iter().filter(|c| c.node == node && c.end >= from && c.end < to).collect();
    let mut by: BTreeMap<u16, usize> = BTreeMap::new();
    for c in &mine {
        *by.entry(c.status).or_default() += 1;
    }
    format!("node {node}: {by:?}")
}

#[actix_rt::test]
async fn isolating_the_leader_heavy_node_keeps_the_majority_serving_and_the_cut_off_node_fails_fast() {
    let (c, per) = start_cluster().await;
    let (&cut, _) = per.iter().max_by_key(|(_, n)| **n).expect("a leader");
    let majority: Vec<u64> = c.ids().into_iter().filter(|i| *i != cut).collect();
    eprintln!("leaders per node {per:?}; isolating node {cut}");
    let nodes: Vec<(u64, String)> = c.ids().iter().map(|i| (*i, c.url(*i))).collect();
    let clients = PinnedClients::start(&nodes, CLIENTS_PER_NODE);
    actix_rt::time::sleep(Duration::from_secs(3)).await;

    let partition = Partition::new().expect("iptables");
    let others: Vec<_> = majority.iter().map(|i| c.ip(*i)).collect();
    let cut_at = Instant::now();
    partition.isolate(c.ip(cut), &others).expect("cut");
    actix_rt::time::sleep(Duration::from_secs(5)).await;
    let healed_at = Instant::now();
    partition.heal().expect("heal");
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let calls = clients.stop().await;
    drop(partition);

    let before = ok_rate(&calls, &majority, cut_at - Duration::from_secs(2), cut_at);
    let during = ok_rate(&calls, &majority, cut_at + Duration::from_secs(2), healed_at);
    let report: Vec<String> = c.ids().iter().map(|n| summary(&calls, *n, cut_at, healed_at)).collect();
    eprintln!("majority ok/s before {before:.0}, during {during:.0}; during the cut {report:?}");
    assert!(before > 20.0, "the cluster served before the cut: {before:.0}/s");
    assert!(during >= 0.5 * before, "majority rate during the cut {during:.0}/s < half of {before:.0}/s; {report:?}");
    // Writes in flight to the cut-off leader are retried at the new one
    // (once, by request id): the majority's clients see no error at all.
    let failed: Vec<&Call> =
        calls.iter().filter(|k| majority.contains(&k.node) && k.status != 200 && k.end >= cut_at).collect();
    assert!(failed.is_empty(), "majority clients saw errors: {failed:?}; {report:?}");

    // The cut-off node: nothing succeeds once its leases are gone, and what
    // it answers in the last two seconds of the cut is a quick 503, not a
    // wait for the 5 s deadline.
    let late: Vec<&Call> = calls
        .iter()
        .filter(|k| k.node == cut && k.start >= healed_at - Duration::from_secs(2) && k.end < healed_at)
        .collect();
    assert!(late.len() >= 10, "the cut-off node answered its clients: {report:?}");
    assert!(late.iter().all(|k| k.status == 503), "cut-off node answers 503: {report:?}");
    let mut ms: Vec<u128> = late.iter().map(|k| (k.end - k.start).as_millis()).collect();
    ms.sort_unstable();
    let p90 = ms[ms.len() * 9 / 10];
    eprintln!("cut-off node's late 503s: {} answered, p50 {} ms, p90 {p90} ms", ms.len(), ms[ms.len() / 2]);
    assert!(p90 < 1000, "the cut-off node fails fast: p90 {p90} ms");

    // Healed: the cut-off node serves again and nothing acknowledged is lost.
    let after = ok_rate(&calls, &[cut], healed_at + Duration::from_secs(1), healed_at + Duration::from_secs(2));
    assert!(after > 0.0, "the healed node serves again: {}", summary(&calls, cut, healed_at, Instant::now()));
    assert_nothing_acknowledged_lost(&c, &calls).await;
}

#[actix_rt::test]
async fn a_bridge_partition_leaves_every_node_serving() {
    let (c, per) = start_cluster().await;
    let mut by_load: Vec<(u64, usize)> = per.into_iter().collect();
    by_load.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    // Cut the busiest leader from the next one; the third sees both.
    let (a, b) = (by_load[0].0, if by_load.len() > 1 { by_load[1].0 } else { by_load[0].0 % 3 + 1 });
    eprintln!("cutting the link between nodes {a} and {b}");
    let nodes: Vec<(u64, String)> = c.ids().iter().map(|i| (*i, c.url(*i))).collect();
    let clients = PinnedClients::start(&nodes, CLIENTS_PER_NODE);
    actix_rt::time::sleep(Duration::from_secs(3)).await;

    let partition = Partition::new().expect("iptables");
    let cut_at = Instant::now();
    partition.cut(c.ip(a), c.ip(b)).expect("cut");
    actix_rt::time::sleep(Duration::from_secs(5)).await;
    let healed_at = Instant::now();
    partition.heal().expect("heal");
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let calls = clients.stop().await;
    drop(partition);

    let all = c.ids();
    let before = ok_rate(&calls, &all, cut_at - Duration::from_secs(2), cut_at);
    let during = ok_rate(&calls, &all, cut_at + Duration::from_secs(2), healed_at);
    let report: Vec<String> = all.iter().map(|n| summary(&calls, *n, cut_at, healed_at)).collect();
    eprintln!("ok/s before {before:.0}, during {during:.0}; during the cut {report:?}");
    assert!(during >= 0.5 * before, "rate during the bridge {during:.0}/s < half of {before:.0}/s; {report:?}");
    for n in &all {
        let r = ok_rate(&calls, &[*n], cut_at + Duration::from_secs(2), healed_at);
        assert!(r > 0.0, "node {n}'s clients are served during the bridge; {report:?}");
    }
    assert_nothing_acknowledged_lost(&c, &calls).await;
}
