//! The Rebalancer on real `ringstore node` processes: a node joins under
//! write load and takes its share of replicas and leaders; a drained node
//! ends with nothing and can be killed losing nothing; a node kept down
//! past `down_after_s` has its replicas re-created; bad requests move
//! nothing. Every test checks that no acknowledged write is lost.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use awc::http::StatusCode;
use common::*;
use ringstore_testkit::ProcCluster;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_ringstore");
/// 50 ms ticks: dozens of replicas in four processes share two cores.
const FLAGS: [&str; 6] = ["--raft-tick-ms", "50", "--raft-election-ticks", "10", "--shards", "16"];
const ALL_SHARDS: usize = 17;

/// Replicas and actual leaders per node from `/v1/cluster`, if every shard
/// has a leader.
async fn shape(url: &str) -> Option<(BTreeMap<u64, usize>, BTreeMap<u64, usize>, Value)> {
    let v = json_of(url, "/v1/cluster").await?;
    let (mut replicas, mut leaders) = (BTreeMap::new(), BTreeMap::new());
    let shards = v["shards"].as_array()?;
    for s in shards {
        for r in s["replicas"].as_array()? {
            *replicas.entry(r.as_u64()?).or_insert(0) += 1;
        }
        *leaders.entry(s["leader"].as_u64()?).or_insert(0) += 1;
    }
    (shards.len() == ALL_SHARDS).then_some((replicas, leaders, v))
}

/// Nodes with their states, and each shard's replica set (the order, which
/// names the preferred leader, may change as leaders even out).
async fn membership(url: &str) -> (Value, Vec<Vec<u64>>) {
    let v = json_of(url, "/v1/cluster").await.expect("cluster view");
    let sets = v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut r: Vec<u64> = s["replicas"].as_array().unwrap().iter().filter_map(Value::as_u64).collect();
            r.sort_unstable();
            r
        })
        .collect();
    (v["nodes"].clone(), sets)
}

fn spread(counts: &BTreeMap<u64, usize>, nodes: &[u64]) -> usize {
    let c: Vec<usize> = nodes.iter().map(|n| counts.get(n).copied().unwrap_or(0)).collect();
    c.iter().max().unwrap() - c.iter().min().unwrap()
}

/// Waits until the nodes `all` hold replicas and leaders within one of
/// each other with the Rebalancer idle; on timeout, fails with what the
/// Rebalancer and the map said last and the tail of every node's log.
async fn wait_balanced(c: &ProcCluster, via: u64, all: &[u64], within: Duration) {
    let url = c.url(via);
    let start = std::time::Instant::now();
    loop {
        if let Some((replicas, leaders, _)) = shape(&url).await {
            if rebalance_idle(&url).await && spread(&replicas, all) <= 1 && spread(&leaders, all) <= 1 {
                return;
            }
        }
        if start.elapsed() > within {
            let job = json_of(&url, "/v1/rebalance").await;
            let map = json_of(&url, "/v1/cluster").await;
            let logs: Vec<String> = c
                .ids()
                .iter()
                .map(|id| {
                    let log = c.log(*id);
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    format!("--- node {id} ---\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
                })
                .collect();
            let keep = keep_logs(c, "rebalance");
            panic!(
                "not balanced within {within:?} (logs in {})\nrebalance: {}\ncluster: {}\n{}",
                keep.display(),
                job.map_or("-".into(), |v| v.to_string()),
                map.map_or("-".into(), |v| v.to_string()),
                logs.join("\n")
            );
        }
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn rebalance_idle(url: &str) -> bool {
    json_of(url, "/v1/rebalance").await.is_some_and(|v| v["state"] == "idle" && v["moves"] == json!([]))
}

async fn put_config(url: &str, body: Value) -> Resp {
    call("PUT", url, "/v1/rebalance/config", &[], body.to_string().into_bytes()).await
}

async fn started(n: u64) -> ProcCluster {
    let c = ProcCluster::start(Path::new(BIN), n, &FLAGS, None).expect("processes start");
    let urls: Vec<String> = c.ids().iter().map(|i| c.url(*i)).collect();
    eventually(Duration::from_secs(60), "every node answers and every shard has a leader", || {
        let urls = urls.clone();
        async move {
            for u in &urls {
                if shape(u).await.is_none() {
                    return false;
                }
            }
            true
        }
    })
    .await;
    c
}

#[actix_rt::test]
async fn a_fourth_node_joins_under_write_load_and_takes_its_share_of_replicas_and_leaders() {
    let mut c = started(3).await;
    let u1 = c.url(1);
    assert_eq!(put_config(&u1, json!({ "max_concurrent_moves": 3 })).await.status, StatusCode::OK);
    let writers = Writers::start(c.ids().iter().map(|i| c.url(*i)).collect(), 8, 10_000);
    actix_rt::time::sleep(Duration::from_secs(2)).await;

    // A dry run shows the moves and the balance after, and records nothing.
    let before = json_of(&u1, "/v1/cluster").await.unwrap()["epoch"].clone();
    let dry = call("POST", &u1, "/v1/cluster/nodes?dry_run=true", &[], br#"{"peer":"127.0.0.1:1"}"#.to_vec()).await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.text());
    let p = &dry.json()["preview"];
    let after: Vec<u64> = p["after"].as_array().unwrap().iter().map(|n| n["replicas"].as_u64().unwrap()).collect();
    assert_eq!(after.len(), 4, "{p}");
    assert!(after.iter().all(|r| (12..=13).contains(r)), "51 replicas over 4 nodes: {p}");
    assert_eq!(json_of(&u1, "/v1/cluster").await.unwrap()["epoch"], before, "a dry run changes nothing");

    c.join(4, 1).expect("node 4 starts with --join");
    let nodes = [1, 2, 3, 4];
    wait_balanced(&c, 1, &nodes, Duration::from_secs(240)).await;
    let (acks, fails) = writers.stop_counting().await;
    assert!(acks.len() > 100, "writes flowed throughout: {}", acks.len());
    // A client sees only retryable 503s (and none of those in most runs).
    assert!(fails.keys().all(|k| k == "503"), "client errors other than 503: {fails:?}");
    let v = json_of(&u1, "/v1/rebalance").await.unwrap();
    assert!(v["moves_done"].as_u64().unwrap() >= 12, "{v}");
    assert_eq!(v["moves_rolled_back"], 0, "{v}");

    let urls: Vec<String> = nodes.iter().map(|i| c.url(*i)).collect();
    let lost = lost_writes(&acks, &urls).await;
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost: {:?}", lost.len(), acks.len(), lost);
    // The new node serves reads of data written before it joined.
    let (k, v, _) = acks.first().unwrap().clone();
    assert_eq!(get(&c.url(4), &k).await.body, v.as_bytes());
    // The map says node 4 is up; its metrics show the replicas it runs.
    let cluster = json_of(&u1, "/v1/cluster").await.unwrap();
    let n4 = cluster["nodes"].as_array().unwrap().iter().find(|n| n["id"] == 4).cloned().unwrap();
    assert_eq!(n4["state"], "up", "{cluster}");
}

#[actix_rt::test]
async fn a_drained_node_ends_with_no_replicas_and_its_kill_loses_nothing() {
    let mut c = started(4).await;
    let u2 = c.url(2);
    assert_eq!(put_config(&u2, json!({ "max_concurrent_moves": 3 })).await.status, StatusCode::OK);
    let writers = Writers::start([2, 3, 4].iter().map(|i| c.url(*i)).collect(), 8, 10_000);
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    // Node 1 leads shards (the meta shard's preferred leader is node 1).
    let (_, leaders, _) = shape(&u2).await.unwrap();
    assert!(leaders.get(&1).copied().unwrap_or(0) > 0, "node 1 leads something: {leaders:?}");

    let r = call("POST", &u2, "/v1/cluster/nodes/1/drain", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    eventually(Duration::from_secs(240), "node 1 is drained and removed", || {
        let u2 = u2.clone();
        async move {
            let Some((replicas, leaders, v)) = shape(&u2).await else { return false };
            let removed = v["nodes"].as_array().unwrap().iter().any(|n| n["id"] == 1 && n["state"] == "removed");
            removed && !replicas.contains_key(&1) && !leaders.contains_key(&1) && rebalance_idle(&u2).await
        }
    })
    .await;
    c.kill9(1).unwrap();
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let (acks, fails) = writers.stop_counting().await;
    assert!(fails.keys().all(|k| k == "503"), "client errors other than 503: {fails:?}");
    let urls: Vec<String> = [2, 3, 4].iter().map(|i| c.url(*i)).collect();
    let lost = lost_writes(&acks, &urls).await;
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost: {:?}", lost.len(), acks.len(), lost);
    let (replicas, _, _) = shape(&u2).await.expect("every shard still led");
    assert_eq!(replicas.values().sum::<usize>(), ALL_SHARDS * 3, "three replicas each: {replicas:?}");
}

#[actix_rt::test]
async fn a_node_down_past_down_after_s_has_its_replicas_recreated() {
    let mut c = started(4).await;
    let u1 = c.url(1);
    let r = put_config(&u1, json!({ "down_after_s": 3, "max_concurrent_moves": 4 })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["down_after_s"], 3);
    let writers = Writers::start([1, 2, 3].iter().map(|i| c.url(*i)).collect(), 4, 10_000);
    c.kill9(4).unwrap();
    eventually(Duration::from_secs(240), "every shard is back to three live replicas", || {
        let u1 = u1.clone();
        async move {
            let Some((replicas, _, v)) = shape(&u1).await else { return false };
            let down = v["nodes"].as_array().unwrap().iter().any(|n| n["id"] == 4 && n["state"] == "down");
            down && !replicas.contains_key(&4) && replicas.values().sum::<usize>() == ALL_SHARDS * 3
        }
    })
    .await;
    let (acks, _) = writers.stop_counting().await;
    let urls: Vec<String> = [1, 2, 3].iter().map(|i| c.url(*i)).collect();
    let lost = lost_writes(&acks, &urls).await;
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost: {:?}", lost.len(), acks.len(), lost);
}

#[actix_rt::test]
async fn bad_joins_drains_and_settings_are_refused_with_json_errors_and_move_nothing() {
    let c = started(3).await;
    let u1 = c.url(1);
    let before = membership(&u1).await;
    let post = |path: &'static str, body: &'static str| {
        let u1 = u1.clone();
        async move { call("POST", &u1, path, &[], body.as_bytes().to_vec()).await }
    };

    let r = post("/v1/cluster/nodes", r#"{"peer":"127.0.0.1:9","cluster_id":"00000000000000ff"}"#).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::CONFLICT, "cluster_mismatch"), "{}", r.text());
    let r = post("/v1/cluster/nodes", r#"{"peer":"127.0.0.1:9","id":2}"#).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::CONFLICT, "id_taken"), "{}", r.text());
    let r = post("/v1/cluster/nodes", r#"{"peer":"no-port"}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = post("/v1/cluster/nodes", r#"{"peer":"127.0.0.1:9","extra":1}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = post("/v1/cluster/nodes/9/drain", "").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::NOT_FOUND, "unknown_node"), "{}", r.text());
    let r = post("/v1/cluster/nodes/x/drain", "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // Three nodes, three replicas per shard: nowhere to move node 1's.
    let r = post("/v1/cluster/nodes/1/drain", "").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::CONFLICT, "no_room"), "{}", r.text());
    assert!(r.text().contains("add a node first"), "{}", r.text());
    let r = post("/v1/cluster/nodes/1/drain?dry_run=true", "").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    for bad in [json!({ "max_bytes_per_sec": 1 }), json!({ "max_concurrent_moves": 0 }), json!({ "down_after_s": 0 })] {
        let r = put_config(&u1, bad.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
    }
    let r = call("PUT", &u1, "/v1/rebalance/config", &[], vec![b'{'; 5000]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    let r = call("GET", &u1, "/v1/rebalance/pause", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(membership(&u1).await, before, "nothing was recorded");

    // Pause and resume are recorded and shown.
    assert_eq!(post("/v1/rebalance/pause", "").await.json()["paused"], true);
    assert_eq!(json_of(&u1, "/v1/rebalance").await.unwrap()["state"], "paused");
    assert_eq!(post("/v1/rebalance/resume", "").await.json()["paused"], false);
    let v = json_of(&c.url(2), "/v1/rebalance").await.unwrap();
    assert_eq!(v["state"], "idle", "every node tells the same: {v}");
}

/// The first move in progress whose data is still being copied.
async fn copying_move(url: &str) -> Option<Value> {
    let v = json_of(url, "/v1/rebalance").await?;
    v["moves"].as_array()?.iter().find(|m| m["state"] == "snapshot" || m["state"] == "catching_up").cloned()
}

async fn meta_leader(url: &str) -> Option<u64> {
    let v = json_of(url, "/v1/cluster").await?;
    v["shards"].as_array()?.iter().find(|s| s["id"] == 0)?["leader"].as_u64()
}

/// Waits for a move that is copying data, seen from any of `urls`; on
/// timeout, fails keeping the nodes' logs and the last job view.
async fn wait_copying(c: &ProcCluster, ids: &[u64]) -> Value {
    let start = std::time::Instant::now();
    loop {
        for id in ids {
            if let Some(m) = copying_move(&c.url(*id)).await {
                return m;
            }
        }
        if start.elapsed() > Duration::from_secs(120) {
            let keep = keep_logs(c, "rebalance");
            let job = json_of(&c.url(ids[0]), "/v1/rebalance").await;
            panic!(
                "no move copied data within 120 s (logs in {})\nrebalance: {}",
                keep.display(),
                job.map_or("-".into(), |v| v.to_string())
            );
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Copies every node's log out of the cluster's temp dir, for a post-mortem.

#[actix_rt::test]
async fn kill_9_of_the_target_the_source_and_the_meta_leader_mid_move_loses_no_acknowledged_write() {
    let mut c = started(3).await;
    let u1 = c.url(1);
    // About 3 MB over 16 shards, copied at 64 KiB/s one move at a time:
    // each move spends seconds sending its snapshot.
    let value = vec![b'v'; 1000];
    for batch in 0..60 {
        let puts = (0..50).map(|i| {
            let (url, value) = (c.url(1 + (i % 3) as u64), value.clone());
            async move { put(&url, &format!("bulk-{batch}-{i}"), &value).await.status }
        });
        assert!(futures::future::join_all(puts).await.iter().all(|s| *s == StatusCode::OK));
    }
    let r = put_config(&u1, json!({ "max_bytes_per_sec": 65536, "max_concurrent_moves": 1 })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let writers = Writers::start([1, 2, 3].iter().map(|i| c.url(*i)).collect(), 4, 10_000);
    c.join(4, 1).expect("node 4 joins");

    // 1. The target dies while its snapshot streams: the move rolls back.
    let m = wait_copying(&c, &[1, 2, 3]).await;
    assert_eq!(m["to"], 4, "{m}");
    c.kill9(4).unwrap();
    eventually(Duration::from_secs(60), "the move to the dead node rolls back", || {
        let u1 = u1.clone();
        async move { json_of(&u1, "/v1/rebalance").await.is_some_and(|v| v["moves_rolled_back"].as_u64() >= Some(1)) }
    })
    .await;
    c.spawn(4).unwrap();

    // 2. The source dies mid-move: the move completes from the others.
    let m = wait_copying(&c, &[1, 2, 3]).await;
    let source = m["from"].as_u64().expect("a move from a node");
    c.kill9(source).unwrap();
    let alive: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|n| *n != source).collect();
    let shard = m["shard"].clone();
    eventually(Duration::from_secs(90), "the move off the dead source finishes", || {
        let url = c.url(alive[0]);
        let shard = shard.clone();
        async move {
            json_of(&url, "/v1/rebalance")
                .await
                .is_some_and(|v| v["moves"].as_array().is_some_and(|ms| ms.iter().all(|m| m["shard"] != shard)))
        }
    })
    .await;
    c.spawn(source).unwrap();

    // 3. The meta leader dies mid-move: its successor resumes the job.
    let m = wait_copying(&c, &[1, 2, 3, 4]).await;
    let leader = meta_leader(&c.url(4)).await.expect("the meta shard has a leader");
    c.kill9(leader).unwrap();
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    c.spawn(leader).unwrap();
    let _ = m;

    // Faster now, adjusted while the job runs; then everything settles.
    let all = [1, 2, 3, 4];
    // Through whichever node answers (the restarted one may still start).
    let urls: Vec<String> = all.iter().map(|i| c.url(*i)).collect();
    eventually(Duration::from_secs(30), "the settings change while moves run", || {
        let urls = urls.clone();
        async move {
            let body = json!({ "max_bytes_per_sec": 64 << 20, "max_concurrent_moves": 3 }).to_string();
            for u in &urls {
                let client = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
                let sent = client.put(format!("{u}/v1/rebalance/config")).send_body(body.clone()).await;
                if sent.is_ok_and(|r| r.status() == StatusCode::OK) {
                    return true;
                }
            }
            false
        }
    })
    .await;
    wait_balanced(&c, 2, &all, Duration::from_secs(240)).await;
    let acks = writers.stop().await;
    let urls: Vec<String> = all.iter().map(|i| c.url(*i)).collect();
    let lost = lost_writes(&acks, &urls).await;
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost: {:?}", lost.len(), acks.len(), lost);
    for batch in [0, 59] {
        let r = get(&c.url(4), &format!("bulk-{batch}-7")).await;
        assert_eq!(r.body, value, "bulk data survives every move");
    }
}
