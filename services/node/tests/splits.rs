//! The ring grows on real `ringstore node` processes: `POST
//! /v1/cluster/shards` splits shards in place while clients write; every
//! acknowledged write stays readable, a scan returns every key exactly
//! once, no client request fails (retries stay within its deadline), key
//! counts stay exact, and locks keep their holders and token order.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use awc::http::StatusCode;
use common::*;
use ringstore_shared::hash::key_point;
use ringstore_testkit::ProcCluster;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_ringstore");
const FLAGS: [&str; 6] = ["--raft-tick-ms", "50", "--raft-election-ticks", "10", "--shards", "4"];

async fn started(n: u64, data_shards: usize) -> ProcCluster {
    let count = data_shards.to_string();
    let mut flags = FLAGS.to_vec();
    flags[5] = &count;
    let c = ProcCluster::start(Path::new(BIN), n, &flags, None).expect("processes start");
    every_node_routes(&c, data_shards).await;
    c
}

/// Waits (60 s at most) until every node routes by `data_shards` led
/// shards and the meta shard holds the map (`GET /v1/rebalance` reads it
/// there; until the keepers have written the bootstrap map, map edits
/// answer 503).
async fn every_node_routes(c: &ProcCluster, data_shards: usize) {
    let urls: Vec<String> = c.ids().iter().map(|i| c.url(*i)).collect();
    let start = std::time::Instant::now();
    'wait: loop {
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        for u in &urls {
            if !all_led(u, data_shards).await || json_of(u, "/v1/rebalance").await.is_none() {
                if start.elapsed() > Duration::from_secs(60) {
                    let r = call("GET", u, "/v1/rebalance", &[], vec![]).await;
                    let keep = keep_logs(c, "splits");
                    panic!(
                        "{u}: not every shard led and the map stored within 60 s (logs in {}): {:?} {} {}",
                        keep.display(),
                        json_of(u, "/v1/cluster").await,
                        r.status,
                        r.text()
                    );
                }
                continue 'wait;
            }
        }
        return;
    }
}

/// The map this node routes by lists `data_shards` data shards (and the
/// meta shard), each with a leader.
async fn all_led(url: &str, data_shards: usize) -> bool {
    let Some(v) = json_of(url, "/v1/cluster").await else { return false };
    let Some(shards) = v["shards"].as_array() else { return false };
    shards.len() == data_shards + 1 && shards.iter().all(|s| s["leader"].as_u64().is_some())
}

async fn post_json(url: &str, path: &str, body: Value) -> Resp {
    let h = [("content-type", "application/json"), ("x-request-timeout", "10000")];
    call("POST", url, path, &h, body.to_string().into_bytes()).await
}

/// Every key under `prefix`, page by page, in the order the scan returns them.
async fn scan_all(url: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let path = match &cursor {
            None => format!("/v1/kv?prefix={prefix}&limit=1000&keys_only=true"),
            Some(c) => format!("/v1/kv?prefix={prefix}&limit=1000&keys_only=true&cursor={c}"),
        };
        let r = call("GET", url, &path, &[("x-request-timeout", "20000")], vec![]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = r.json();
        keys.extend(v["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap().to_string()));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return keys,
        }
    }
    panic!("the scan did not end");
}

/// Waits until every node routes by `data_shards` led shards and the
/// Rebalancer is idle, restarting (without their environment) the nodes
/// whose process exited, and at least `restarts` of them; returns those it
/// restarted. On timeout fails with the map, the job and where the nodes'
/// logs were kept.
async fn grown(c: &mut ProcCluster, data_shards: usize, restarts: usize, within: Duration) -> Vec<u64> {
    let urls: Vec<String> = c.ids().iter().map(|i| c.url(*i)).collect();
    let start = std::time::Instant::now();
    let mut restarted = Vec::new();
    loop {
        for id in c.reap_exited() {
            restarted.push(id);
            c.spawn(id).expect("restart");
        }
        let mut done = restarted.len() >= restarts;
        for u in &urls {
            done = done && all_led(u, data_shards).await;
        }
        if done && json_of(&urls[0], "/v1/rebalance").await.is_some_and(|v| v["state"] == "idle") {
            return restarted;
        }
        if start.elapsed() > within {
            let keep = keep_logs(c, "splits");
            panic!(
                "not {data_shards} shards and idle within {within:?} (restarted {restarted:?}; logs in {}): {:?} {:?}",
                keep.display(),
                json_of(&urls[0], "/v1/cluster").await,
                json_of(&urls[0], "/v1/rebalance").await
            );
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/v1/cluster` once no data shard's keys are being counted (for a moment
/// after a split they are `null`).
async fn counted_cluster(url: &str) -> Value {
    let start = std::time::Instant::now();
    loop {
        let v = json_of(url, "/v1/cluster").await.expect("cluster view");
        let shards = v["shards"].as_array().expect("shards");
        if shards.iter().filter(|s| s["id"] != 0).all(|s| s["key_count"].is_u64() && s["bytes"].is_u64()) {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "keys still being counted after 30 s: {v}");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The count of a histogram on a node's `/metrics`.
async fn histogram_count(url: &str, name: &str) -> u64 {
    let r = call("GET", url, "/metrics", &[], vec![]).await;
    let prefix = format!("{name}_count");
    r.text().lines().filter(|l| l.starts_with(&prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}

#[actix_rt::test]
async fn four_shards_grow_to_eight_under_write_load_losing_nothing() {
    let mut c = started(3, 4).await;
    let urls: Vec<String> = c.ids().iter().map(|i| c.url(*i)).collect();
    let u1 = c.url(1);

    // Locks held across the splits, on names spread over every shard.
    let mut locks = Vec::new();
    for i in 0..24 {
        let name = format!("lock-{i}");
        let r = post_json(&u1, &format!("/v1/locks/{name}/acquire"), json!({"owner": "a", "ttl_ms": 120_000})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = r.json();
        locks.push((name, v["session"].as_str().unwrap().to_string(), v["token"].as_u64().unwrap()));
    }

    let writers = Writers::start(urls.clone(), 8, 10_000);
    actix_rt::time::sleep(Duration::from_secs(2)).await;

    // A dry run names the four splits and records nothing.
    let epoch = json_of(&u1, "/v1/cluster").await.unwrap()["epoch"].clone();
    let dry = post_json(&u1, "/v1/cluster/shards?dry_run=true", json!({"add": 4})).await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.text());
    let sources: BTreeSet<u64> =
        dry.json()["splits"].as_array().unwrap().iter().map(|s| s["source"].as_u64().unwrap()).collect();
    assert_eq!(sources, BTreeSet::from([1, 2, 3, 4]), "{}", dry.text());
    assert_eq!(json_of(&u1, "/v1/cluster").await.unwrap()["epoch"], epoch, "a dry run changes nothing");
    // Bad requests are refused with JSON errors.
    for bad in [json!({"add": 0}), json!({"add": 100_000}), json!({"more": 1}), json!("x")] {
        let r = post_json(&u1, "/v1/cluster/shards", bad.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "bad_request", "{}", r.text());
    }

    // Each key's version before the splits (half of them move).
    let mut versions = Vec::new();
    for i in 0..32 {
        let key = format!("wversion-{i}"); // under the scanned prefix, so the key counts add up
        let r = call("PUT", &u1, &format!("/v1/kv/{key}"), &[], b"before".to_vec()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        versions.push((key, r.json()["version"].as_u64().unwrap()));
    }

    let r = post_json(&u1, "/v1/cluster/shards", json!({"add": 4})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["target_shards"], 8);

    grown(&mut c, 8, 0, Duration::from_secs(120)).await;
    // Versions keep growing on the keys that moved to the new shards: an
    // If-Match taken before a split must never match a later value.
    for (key, before) in &versions {
        let r = call("PUT", &u1, &format!("/v1/kv/{key}"), &[], b"after".to_vec()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let after = r.json()["version"].as_u64().unwrap();
        assert!(after > *before, "{key}: version {before} before the splits, {after} after");
        let stale =
            call("PUT", &u1, &format!("/v1/kv/{key}"), &[("If-Match", &format!("\"{before}\""))], b"x".to_vec()).await;
        assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{key}: {}", stale.text());
    }
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let (acks, fails) = writers.stop_counting().await;
    assert!(acks.len() > 500, "writers made progress: {}", acks.len());
    assert!(fails.is_empty(), "no client request failed (retries stay within the deadline): {fails:?}");
    let lost = lost_writes(&acks, &urls).await;
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);

    // Every key once, and the shards' exact counts add up to them.
    let scanned = scan_all(&u1, "w").await;
    let distinct: BTreeSet<&String> = scanned.iter().collect();
    assert_eq!(distinct.len(), scanned.len(), "a scan returns every key exactly once");
    for (k, _, _) in &acks {
        assert!(distinct.contains(k), "acknowledged {k} missing from the scan");
    }
    let cluster = counted_cluster(&u1).await;
    let shards = cluster["shards"].as_array().unwrap();
    let counted: u64 = shards.iter().filter_map(|s| s["key_count"].as_u64()).sum();
    assert_eq!(counted, scanned.len() as u64, "key counts stay exact across splits: {cluster}");
    // Each split's two sides got their counts off the storage thread, on
    // every replica (three nodes hold each of the four sources): the source
    // scans the side it gave away and derives its own from the rest.
    let counts: u64 =
        futures::future::join_all(urls.iter().map(|u| histogram_count(u, "ringstore_shard_stats_count_seconds")))
            .await
            .into_iter()
            .sum();
    assert!(counts >= 4 * 2 * 3, "every replica has counts for both sides of every split: {counts}");
    for s in shards.iter().filter(|s| s["id"].as_u64().unwrap() > 4) {
        assert!(s["key_count"].as_u64().unwrap() > 0, "a new shard took keys: {s}");
    }

    // The new shards took their held locks into their lock index (which
    // sweeps the leases) from the sources: none lost, none on both sides.
    let metrics = call("GET", &u1, "/metrics", &[], vec![]).await.text();
    let held: Vec<(u64, i64)> = metrics
        .lines()
        .filter(|l| l.starts_with("ringstore_locks_held{"))
        .filter_map(|l| {
            let shard = l.split("shard=\"").nth(1)?.split('"').next()?.parse().ok()?;
            Some((shard, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    assert_eq!(held.iter().map(|(_, n)| n).sum::<i64>(), 24, "node 1 indexes each held lock once: {held:?}");
    assert!(held.iter().any(|(s, n)| *s > 4 && *n > 0), "new shards index the locks they took: {held:?}");

    // Locks kept their holders; the next holder's token is larger.
    for (name, session, token) in &locks {
        let st = json_of(&u1, &format!("/v1/locks/{name}")).await.expect("lock status");
        assert_eq!(st["token"].as_u64(), Some(*token), "{name}: {st}");
        let other =
            post_json(&urls[1], &format!("/v1/locks/{name}/acquire"), json!({"owner": "b", "ttl_ms": 5000})).await;
        assert_eq!(other.status, StatusCode::CONFLICT, "{name} is still held: {}", other.text());
        let rel =
            post_json(&urls[2], &format!("/v1/locks/{name}/release"), json!({"session": session, "token": token}))
                .await;
        assert_eq!(rel.status, StatusCode::OK, "{name}: {}", rel.text());
        let next =
            post_json(&urls[1], &format!("/v1/locks/{name}/acquire"), json!({"owner": "b", "ttl_ms": 5000})).await;
        assert_eq!(next.status, StatusCode::OK, "{name}: {}", next.text());
        assert!(next.json()["token"].as_u64().unwrap() > *token, "{name}: tokens keep growing");
    }

    // The splits are visible in metrics.
    let metrics = call("GET", &u1, "/metrics", &[], vec![]).await.text();
    assert!(metrics.contains("ringstore_shard_splits_total"), "split metric exported");
}

#[actix_rt::test]
async fn the_ring_keeps_its_shards_per_node_as_a_node_joins() {
    let mut c = started(3, 4).await;
    let u1 = c.url(1);
    let writers = Writers::start(c.ids().iter().map(|i| c.url(*i)).collect(), 4, 10_000);
    // Two shards per up node: six for three nodes.
    let h = [("content-type", "application/json")];
    let r = call("PUT", &u1, "/v1/rebalance/config", &h, br#"{"shards_per_node": 2}"#.to_vec()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["shards_per_node"], 2);
    let bad = call("PUT", &u1, "/v1/rebalance/config", &h, br#"{"shards_per_node": 100000}"#.to_vec()).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text());
    grown(&mut c, 6, 0, Duration::from_secs(120)).await;

    // A fourth node: eight shards, and the new node holds its share.
    c.join(4, 1).expect("node 4 joins");
    let urls: Vec<String> = c.ids().iter().map(|i| c.url(*i)).collect();
    grown(&mut c, 8, 0, Duration::from_secs(240)).await;
    let v = json_of(&u1, "/v1/rebalance").await.unwrap();
    assert_eq!((v["shards"].as_u64(), v["wanted_shards"].as_u64()), (Some(8), Some(8)), "{v}");
    let n4 = v["nodes"].as_array().unwrap().iter().find(|n| n["id"] == 4).cloned().unwrap();
    // 9 shards (8 data and meta) of 3 replicas (meta: 3) over 4 nodes.
    assert!(n4["replicas"].as_u64().unwrap() >= 6, "node 4 holds its share: {v}");

    let (acks, fails) = writers.stop_counting().await;
    assert!(fails.keys().all(|k| k == "503"), "client errors other than retryable 503s: {fails:?}");
    let lost = lost_writes(&acks, &urls).await;
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost: {:?}", lost.len(), acks.len(), lost);
}

/// `kill -9` (an abort at a failpoint) at each step of a split: the split
/// carries on when the nodes come back, and nothing is lost or doubled.
/// `split_recorded` and `split_before_finish` stop the meta leader's node;
/// `split_applied` stops every node, each right after its replica of the
/// source wrote the split and before it started the new shard's replica.
#[actix_rt::test]
async fn a_split_carries_on_after_a_crash_at_each_of_its_steps() {
    for fp in ["split_recorded", "split_applied", "split_before_finish"] {
        let armed = format!("{fp}=1*return");
        let mut c =
            ProcCluster::start_env(Path::new(BIN), 3, &FLAGS, &[("FAILPOINTS", &armed)]).expect("processes start");
        let urls: Vec<String> = c.ids().iter().map(|i| c.url(*i)).collect();
        every_node_routes(&c, 4).await;
        // Restarted nodes run without the failpoint.
        c.set_env(&[]);
        let writers = Writers::start(urls.clone(), 4, 10_000);
        actix_rt::time::sleep(Duration::from_secs(1)).await;
        let r = post_json(&urls[0], "/v1/cluster/shards", json!({"add": 1})).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{fp}: {}", r.text());

        let crashed = grown(&mut c, 5, 1, Duration::from_secs(120)).await;
        if fp == "split_applied" {
            assert_eq!(crashed.len(), 3, "every replica of the source stopped at the failpoint");
        }
        let acks = writers.stop().await;
        let lost = lost_writes(&acks, &urls).await;
        assert!(lost.is_empty(), "{fp}: {} of {} acknowledged writes lost: {:?}", lost.len(), acks.len(), lost);
        let scanned = scan_all(&urls[0], "w").await;
        let distinct: BTreeSet<&String> = scanned.iter().collect();
        assert_eq!(distinct.len(), scanned.len(), "{fp}: a scan returns every key exactly once");
        assert!(acks.iter().all(|(k, _, _)| distinct.contains(k)), "{fp}: every acknowledged key is scanned");
        let cluster = counted_cluster(&urls[0]).await;
        let counted: u64 = cluster["shards"].as_array().unwrap().iter().filter_map(|s| s["key_count"].as_u64()).sum();
        assert_eq!(counted, scanned.len() as u64, "{fp}: key counts stay exact: {cluster}");
    }
}

/// `PUT /v1/rebalance/config`, retried on 503 as its documentation says
/// (the meta shard could not commit: 18 processes share two cores here).
async fn put_config(url: &str, body: Value) {
    let h = [("content-type", "application/json")];
    for _ in 0..5 {
        let r = call("PUT", url, "/v1/rebalance/config", &h, body.to_string().into_bytes()).await;
        if r.status == StatusCode::OK {
            return;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        eprintln!("PUT /v1/rebalance/config: {}; again", r.text());
        actix_rt::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("PUT /v1/rebalance/config kept failing");
}

#[actix_rt::test]
async fn a_shard_over_the_size_limit_splits_until_none_is() {
    let mut c = started(3, 2).await;
    let urls: Vec<String> = c.ids().iter().map(|i| c.url(*i)).collect();
    // About 100 KiB per shard against a 64 KiB limit: each splits once.
    let value = vec![b'v'; 1000];
    for chunk in (0..200).collect::<Vec<u32>>().chunks(20) {
        let keys: Vec<(usize, String)> = chunk.iter().map(|i| (*i as usize % 3, format!("big-{i}"))).collect();
        let puts = keys.iter().map(|(n, k)| put(&urls[*n], k, &value));
        for r in futures::future::join_all(puts).await {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
    }
    put_config(&urls[0], json!({"split_max_bytes": 64 * 1024})).await;
    grown(&mut c, 4, 0, Duration::from_secs(120)).await;
    let cluster = counted_cluster(&urls[0]).await;
    for s in cluster["shards"].as_array().unwrap().iter().filter(|s| s["id"] != 0) {
        assert!(s["bytes"].as_u64().unwrap() <= 64 * 1024, "every shard under the limit: {cluster}");
    }
    let counted: u64 = cluster["shards"].as_array().unwrap().iter().filter_map(|s| s["key_count"].as_u64()).sum();
    assert_eq!(counted, 200, "{cluster}");
    for i in 0..200 {
        assert_eq!(get(&urls[i % 3], &format!("big-{i}")).await.body, value, "big-{i}");
    }
    let v = json_of(&urls[0], "/v1/rebalance").await.unwrap();
    assert_eq!(v["split_max_bytes"], 64 * 1024, "{v}");
}

/// The shard owning `key` in the map `cluster` (its `?ranges=true` view).
fn owner(cluster: &Value, key: &str) -> u64 {
    let p = key_point(key.as_bytes());
    for s in cluster["shards"].as_array().unwrap() {
        for r in s["ranges"].as_array().into_iter().flatten() {
            let (lo, hi) = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
            if (lo..=hi).contains(&p) {
                return s["id"].as_u64().unwrap();
            }
        }
    }
    panic!("no shard owns {key}: {cluster}");
}

/// Keeps `clients` loops reading and writing `keys` until `stop`.
fn hammer(
    urls: Vec<String>,
    keys: Vec<String>,
    clients: usize,
    stop: std::rc::Rc<std::cell::Cell<bool>>,
) -> Vec<actix_rt::task::JoinHandle<u64>> {
    (0..clients)
        .map(|c| {
            let (urls, keys, stop) = (urls.clone(), keys.clone(), stop.clone());
            actix_rt::spawn(async move {
                let mut ok = 0;
                for i in 0..1_000_000usize {
                    if stop.get() {
                        break;
                    }
                    let (url, key) = (&urls[(c + i) % urls.len()], &keys[(c * 7 + i) % keys.len()]);
                    let r = if i % 4 == 0 { put(url, key, b"x").await } else { get(url, key).await };
                    ok += (r.status == StatusCode::OK) as u64;
                }
                ok
            })
        })
        .collect()
}

#[actix_rt::test]
async fn a_hot_key_range_is_split_and_its_load_lands_on_two_shards() {
    let c = started(3, 2).await;
    let urls: Vec<String> = c.ids().iter().map(|i| c.url(*i)).collect();
    let before = json_of(&urls[0], "/v1/cluster?ranges=true").await.unwrap();
    // Twenty hot keys, all in shard 1.
    let hot: Vec<String> =
        (0..10_000).map(|i| format!("hot-{i}")).filter(|k| owner(&before, k) == 1).take(20).collect();
    for k in &hot {
        assert_eq!(put(&urls[0], k, b"x").await.status, StatusCode::OK);
    }
    put_config(&urls[0], json!({"split_load_qps": 50})).await;
    let stop = std::rc::Rc::new(std::cell::Cell::new(false));
    let loops = hammer(urls.clone(), hot.clone(), 8, stop.clone());
    let start = std::time::Instant::now();
    let after = loop {
        let v = json_of(&urls[0], "/v1/cluster?ranges=true").await.unwrap();
        if v["shards"].as_array().unwrap().len() >= 4 {
            break v;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let keep = keep_logs(&c, "splits");
            panic!(
                "no split by load within 90 s (logs in {}): {v} {:?}",
                keep.display(),
                json_of(&urls[0], "/v1/rebalance").await
            );
        }
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    };
    stop.set(true);
    let served: u64 = futures::future::join_all(loops).await.into_iter().map(|r| r.unwrap()).sum();
    assert!(served > 500, "the load ran: {served}");
    let mut by_shard = std::collections::BTreeMap::new();
    for k in &hot {
        *by_shard.entry(owner(&after, k)).or_insert(0) += 1;
    }
    assert_eq!(by_shard.len(), 2, "the hot keys now live on two shards: {by_shard:?}");
    assert!(by_shard.values().all(|n| *n >= 5), "each side took a fair part of them: {by_shard:?}");
    assert!(by_shard.contains_key(&1) && by_shard.keys().any(|s| *s > 2), "{by_shard:?}");
    for k in &hot {
        assert_eq!(get(&urls[1], k).await.status, StatusCode::OK, "{k}");
    }
}

#[actix_rt::test]
async fn one_hot_key_is_reported_and_not_split() {
    let c = started(3, 2).await;
    let urls: Vec<String> = c.ids().iter().map(|i| c.url(*i)).collect();
    assert_eq!(put(&urls[0], "solo", b"x").await.status, StatusCode::OK);
    put_config(&urls[0], json!({"split_load_qps": 50})).await;
    let stop = std::rc::Rc::new(std::cell::Cell::new(false));
    let loops = hammer(urls.clone(), vec!["solo".to_string()], 8, stop.clone());
    let mut reported = None;
    for _ in 0..100 {
        actix_rt::time::sleep(Duration::from_millis(200)).await;
        let v = json_of(&urls[0], "/v1/rebalance").await.unwrap();
        if let Some(h) = v["hot_keys"].as_array().and_then(|h| h.first()) {
            reported = Some(h.clone());
            break;
        }
    }
    let h = reported.expect("the hot key is reported within 20 s");
    assert_eq!(h["key"], "solo", "{h}");
    assert!(h["share_pct"].as_u64().unwrap() >= 80, "{h}");
    // Longer than a load split waits: still two shards.
    actix_rt::time::sleep(Duration::from_secs(8)).await;
    let metrics = call("GET", &urls[0], "/metrics", &[], vec![]).await.text();
    stop.set(true);
    futures::future::join_all(loops).await;
    let v = json_of(&urls[0], "/v1/cluster").await.unwrap();
    assert_eq!(v["shards"].as_array().unwrap().len(), 3, "no split for one key: {v}");
    assert!(metrics.contains("ringstore_shard_hot_key"), "hot key gauge exported");
}
