//! Three nodes × 16 shards in one process (real RocksDB, real HTTP): the
//! ring spreads keys over every shard, any node routes any key to its
//! shard's leader, each replica holds only its shard's ranges, and a router
//! with a stale map is corrected through `WrongShard` and the meta shard.

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use awc::http::StatusCode;
use common::*;
use ringstore_router::{MapCell, Route, Router, RoutingTable};
use ringstore_shared::apply::Outcome;
use ringstore_shared::cluster_map::{ClusterMap, META_SHARD};
use ringstore_shared::command::{Command, Precondition};
use ringstore_storage::{ShardOp, ShardReply, Transport};

/// The two tests each run 48 replicas in this process; one at a time keeps
/// two cores from starving elections.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A PUT with a deadline that tolerates a loaded CI machine.
async fn put_patient(url: &str, key: &str, value: &[u8]) -> StatusCode {
    call("PUT", url, &format!("/v1/kv/{key}"), &[("x-request-timeout", "20000")], value.to_vec()).await.status
}

#[actix_rt::test]
async fn sixteen_shards_take_twenty_thousand_keys_evenly_and_serve_them_from_any_node() {
    let _serial = SERIAL.lock().await;
    let tc = start(|c| c.shards = 16).await;
    let map = tc.cluster.map().clone();
    let ring = map.ring();
    assert_eq!(ring.shards(), 16);
    // Every shard elects a leader; no node holds two replicas of a shard.
    for (shard, replicas) in map.shards.iter().filter(|(s, _)| **s != META_SHARD) {
        let mut d = replicas.clone();
        d.sort_unstable();
        d.dedup();
        assert_eq!(d.len(), replicas.len());
        let node = replicas[0];
        eventually(Duration::from_secs(20), "every shard has a leader", || async {
            tc.cluster.shard_status(node, *shard).await.is_ok_and(|s| s.leader.is_some())
        })
        .await;
    }
    let urls: Vec<String> = tc.cluster.node_ids().iter().map(|i| tc.cluster.url(*i).unwrap()).collect();
    let n = 20_000usize;
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let puts = chunk.iter().map(|i| {
            let url = urls[i % urls.len()].clone();
            async move { put_patient(&url, &format!("k{i}"), format!("v{i}").as_bytes()).await }
        });
        for s in futures::future::join_all(puts).await {
            assert_eq!(s, StatusCode::OK);
        }
    }
    for chunk in (0..n).step_by(7).collect::<Vec<_>>().chunks(64) {
        let gets = chunk.iter().map(|i| {
            let url = urls[(i + 1) % urls.len()].clone();
            async move { (*i, get(&url, &format!("k{i}")).await) }
        });
        for (i, r) in futures::future::join_all(gets).await {
            assert_eq!(r.status, StatusCode::OK, "k{i}");
            assert_eq!(r.body, format!("v{i}").as_bytes());
        }
    }
    // Keys per shard, as applied by the shards themselves: every write
    // is one entry in exactly one shard's log.
    let mut applied = Vec::new();
    for (shard, replicas) in map.shards.iter().filter(|(s, _)| **s != META_SHARD) {
        let s = tc.cluster.shard_status(replicas[0], *shard).await.unwrap();
        applied.push(s.applied_index);
    }
    let total: u64 = applied.iter().sum();
    assert!(total >= n as u64, "{applied:?}");
    let (min, max) = (*applied.iter().min().unwrap() as f64, *applied.iter().max().unwrap() as f64);
    assert!(max / min <= 1.3, "writes per shard (applied index) spread too wide: {applied:?}");

    // Prefix scans gather every shard, merge in key order, and page.
    let scan_all = |prefix: &'static str, limit: usize, keys_only: bool| {
        let url = urls[2].clone();
        async move {
            let mut keys = Vec::new();
            let mut cursor: Option<String> = None;
            for _ in 0..100 {
                let mut q = format!("/v1/kv?prefix={prefix}&limit={limit}&keys_only={keys_only}");
                if let Some(c) = &cursor {
                    q.push_str(&format!("&cursor={c}"));
                }
                let r = call("GET", &url, &q, &[], vec![]).await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.text());
                let v = r.json();
                for item in v["items"].as_array().unwrap() {
                    assert_eq!(item.get("value_b64").is_none(), keys_only);
                    keys.push(item["key"].as_str().unwrap().to_string());
                }
                match v["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => return keys,
                }
            }
            panic!("too many pages")
        }
    };
    let mut want: Vec<String> = (0..n).map(|i| format!("k{i}")).filter(|k| k.starts_with("k12")).collect();
    want.sort();
    assert_eq!(scan_all("k12", 1000, true).await, want);
    let mut want: Vec<String> = (0..n).map(|i| format!("k{i}")).filter(|k| k.starts_with("k1999")).collect();
    want.sort();
    assert_eq!(scan_all("k1999", 4, false).await, want, "pages of 4 across shards");
    let r = call("GET", &urls[0], "/v1/kv?prefix=k1999&limit=2", &[], vec![]).await;
    assert_eq!(r.json()["items"][0]["value_b64"], "djE5OTk=", "base64 of v1999");
    for bad in ["limit=0", "limit=1001", "cursor=xyz", "nope=1"] {
        let r = call("GET", &urls[0], &format!("/v1/kv?{bad}"), &[], vec![]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }

    // The cluster view: every data shard with its replicas, a leader, and
    // its share of the ring; the shares cover the ring once.
    let r = call("GET", &urls[1], "/v1/cluster", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    let shards = v["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 17, "16 data shards and the meta shard");
    let mut share = 0.0;
    let (mut keys, mut bytes) = (0, 0);
    for s in shards.iter().filter(|s| s["id"] != 0) {
        assert!(s["leader"].as_u64().is_some(), "{s}");
        assert!(s["applied_index"].as_u64().unwrap() > 0);
        assert_eq!(s["replicas"].as_array().unwrap().len(), 3);
        share += s["ring_share"].as_f64().unwrap();
        assert!(s["key_count"].as_u64().unwrap() > 0, "{s}");
        keys += s["key_count"].as_u64().unwrap();
        bytes += s["bytes"].as_u64().unwrap();
    }
    assert!((share - 1.0).abs() < 1e-9, "ring shares sum to {share}");
    // Exact: every key counted once, with its key and value bytes.
    assert_eq!(keys, n as u64);
    let want_bytes: usize = (0..n).map(|i| format!("k{i}").len() + format!("v{i}").len()).sum();
    assert_eq!(bytes, want_bytes as u64);
    // The same as a table, from the binary.
    let endpoint = urls[0].clone();
    let out = actix_rt::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ringstore")).args(["status", "--endpoint", &endpoint]).output()
    })
    .await
    .unwrap()
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    // The epoch moves on as the Rebalancer evens out preferred leaders.
    assert!(table.starts_with("cluster epoch "), "{table}");
    assert!(table.lines().next().unwrap().ends_with(", 3 nodes, 16 data shards (+ meta shard 0)"), "{table}");
    let shard_rows = table.lines().skip(2).take_while(|l| !l.trim_start().starts_with("node")).count();
    assert_eq!(shard_rows, 16, "{table}");
    // Then the nodes (state, replicas, leaders) and the rebalancer.
    assert!(table.contains("\n    1  up              17"), "{table}");
    assert!(table.contains("rebalance: "), "{table}");
    let r = call("GET", &urls[1], "/v1/cluster?ranges=true", &[], vec![]).await;
    let ranges: usize =
        r.json()["shards"].as_array().unwrap().iter().map(|s| s["ranges"].as_array().unwrap().len()).sum();
    assert!(ranges > 1000, "{ranges}");

    stale_router_is_corrected_by_the_meta_shard(&tc, &urls).await;
    tc.shutdown().await;
}

/// A Router whose map is behind (epoch 0, a 4-shard ring) sends most keys
/// to shards that do not own them. Each answers `WrongShard` and applies
/// nothing; the router reads the map from the meta shard, routes by it and
/// retries. The client sees only successes.
async fn stale_router_is_corrected_by_the_meta_shard(tc: &TestCluster, urls: &[String]) {
    let mut stale = ClusterMap::bootstrap(tc.cluster.map().nodes.clone(), 4, 3).unwrap();
    stale.epoch = 0;
    let cell = MapCell::new(1, RoutingTable::from_map(&stale), Default::default());
    let transport: Arc<dyn Transport> = Arc::new(tc.cluster.transport().clone());
    let router = Router::new(1, cell.clone(), transport).start();
    let route =
        |key: Vec<u8>, op: ShardOp, shard: Option<u64>| Route { key, op, timeout: Duration::from_secs(20), shard };
    // The map keepers have written the bootstrap map into the meta shard.
    eventually(Duration::from_secs(20), "the meta shard holds the map", || {
        let r = router.send(route(vec![], ShardOp::ReadMap, Some(META_SHARD)));
        async move { matches!(r.await, Ok(Ok(ShardReply::Map(Some(_))))) }
    })
    .await;
    let wrong_before = metric_sum(&urls[0], "ringstore_router_retries_total", &["node=\"1\"", "wrong_shard"]).await;
    for i in 0..100 {
        let key = format!("stale-{i}").into_bytes();
        let cmd = Command::Put {
            key: key.clone(),
            value: key.clone(),
            ttl_ms: None,
            cond: Precondition::Always,
            fence: None,
        };
        let r = router.send(route(key, ShardOp::write(cmd), None)).await.unwrap();
        assert!(matches!(r, Ok(ShardReply::Outcome(Outcome::Written { .. }))), "stale-{i}: {r:?}");
    }
    // (Epoch 1 or later: the Rebalancer may have evened out preferred leaders.)
    assert!(cell.epoch() >= 1, "the router now routes by the meta shard's map");
    assert_eq!(cell.load().ring().shards(), 16);
    let wrong_after = metric_sum(&urls[0], "ringstore_router_retries_total", &["node=\"1\"", "wrong_shard"]).await;
    assert!(wrong_after > wrong_before, "the stale map was noticed through WrongShard");
    for i in 0..100 {
        let r = get(&urls[i % urls.len()], &format!("stale-{i}")).await;
        assert_eq!(r.body, format!("stale-{i}").as_bytes(), "stale-{i} went to its shard");
    }
    let v = call("GET", &urls[0], "/v1/cluster", &[], vec![]).await.json();
    assert!(v["epoch"].as_u64() >= Some(1), "{v}");
    assert!(v["shards"][0]["leader"].as_u64().is_some(), "the meta shard runs and has a leader: {v}");
}

/// Sum of the samples of metric `name` whose labels contain every `labels` item.
async fn metric_sum(url: &str, name: &str, labels: &[&str]) -> f64 {
    let r = call("GET", url, "/metrics", &[], vec![]).await;
    r.text()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn all_shards_led(tc: &TestCluster, alive: &[u64]) -> bool {
    for (shard, replicas) in tc.cluster.map().shards.iter().filter(|(s, _)| **s != META_SHARD) {
        let mut led = false;
        for n in replicas.iter().filter(|n| alive.contains(n)) {
            if tc.cluster.shard_status(*n, *shard).await.is_ok_and(|s| s.role == "leader") {
                led = true;
            }
        }
        if !led {
            return false;
        }
    }
    true
}

#[actix_rt::test]
async fn losing_a_node_keeps_every_shard_serving_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut tc = start(|c| c.shards = 16).await;
    eventually(Duration::from_secs(30), "every shard has a leader", || all_shards_led(&tc, &[1, 2, 3])).await;
    let url = |tc: &TestCluster, n: u64| tc.cluster.url(n).unwrap();
    let write = |urls: Vec<String>, range: std::ops::Range<usize>| async move {
        for chunk in range.collect::<Vec<_>>().chunks(64) {
            let puts = chunk.iter().map(|i| {
                let u = urls[i % urls.len()].clone();
                async move { put_patient(&u, &format!("x{i}"), format!("v{i}").as_bytes()).await }
            });
            for s in futures::future::join_all(puts).await {
                assert_eq!(s, StatusCode::OK);
            }
        }
    };
    write(vec![url(&tc, 1), url(&tc, 2), url(&tc, 3)], 0..2000).await;
    // Node 1 holds replicas (and leaders) of many shards; it crashes.
    tc.cluster.stop_node(1).await.unwrap();
    eventually(Duration::from_secs(30), "every shard elects among the survivors", || all_shards_led(&tc, &[2, 3]))
        .await;
    let survivors = vec![url(&tc, 2), url(&tc, 3)];
    write(survivors.clone(), 2000..4000).await;
    for chunk in (0..4000).collect::<Vec<_>>().chunks(64) {
        let gets = chunk.iter().map(|i| {
            let u = survivors[i % 2].clone();
            async move { (*i, get(&u, &format!("x{i}")).await) }
        });
        for (i, r) in futures::future::join_all(gets).await {
            assert_eq!(r.status, StatusCode::OK, "x{i} lost");
            assert_eq!(r.body, format!("v{i}").as_bytes());
        }
    }
    tc.cluster.start_node(1).await.unwrap();
    tc.shutdown().await;
}
