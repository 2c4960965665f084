//! Three `ringstore node` processes × 16 shards on 127.0.0.1, the default
//! shape of a cluster: `kill -9` of one node while 16 writers run leaves
//! every shard electing among the survivors and serving reads and writes,
//! and loses no acknowledged write.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use common::*;
use ringstore_shared::ring::Ring;
use ringstore_testkit::ProcCluster;

const BIN: &str = env!("CARGO_BIN_EXE_ringstore");
const SHARDS: u64 = 16;
/// 50 ms ticks: 48 replicas in three processes share two cores here.
const FLAGS: [&str; 6] = ["--raft-tick-ms", "50", "--raft-election-ticks", "10", "--shards", "16"];

/// A GET that treats a node not (yet) listening as "no answer".
async fn try_get(url: &str) -> Option<Vec<u8>> {
    let client = awc::Client::builder().timeout(Duration::from_secs(3)).finish();
    let mut r = client.get(url).send().await.ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    r.body().limit(8 * 1024 * 1024).await.ok().map(|b| b.to_vec())
}

/// The data shards whose leader, as `url` sees them in `/v1/cluster`, is
/// one of `alive`.
async fn shards_led_by(url: &str, alive: &[u64]) -> BTreeSet<u64> {
    let Some(body) = try_get(&format!("{url}/v1/cluster")).await else { return BTreeSet::new() };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else { return BTreeSet::new() };
    let Some(shards) = v["shards"].as_array() else { return BTreeSet::new() };
    shards
        .iter()
        .filter(|s| s["id"] != 0 && s["leader"].as_u64().is_some_and(|l| alive.contains(&l)))
        .filter_map(|s| s["id"].as_u64())
        .collect()
}

async fn stale_body(url: &str, key: &str) -> Option<Vec<u8>> {
    try_get(&format!("{url}/v1/kv/{key}?consistency=stale")).await
}

#[actix_rt::test]
async fn kill_9_of_any_node_keeps_all_16_shards_serving_and_loses_no_acknowledged_write() {
    let mut c = ProcCluster::start(Path::new(BIN), 3, &FLAGS, None).expect("three processes start");
    let all: Vec<u64> = c.ids();
    let u1 = c.url(1);
    eventually(Duration::from_secs(40), "every shard elects a leader", || {
        let (u1, all) = (u1.clone(), all.clone());
        async move { shards_led_by(&u1, &all).await.len() == SHARDS as usize }
    })
    .await;
    let r = call("GET", &u1, "/v1/cluster", &[], vec![]).await.json();
    assert_eq!(r["shards"].as_array().unwrap().len(), 17, "16 data shards and the meta shard: {r}");

    // 16 writers over all three nodes; node 2 is killed while they run.
    let urls: Rc<Vec<String>> = Rc::new(c.ids().iter().map(|i| c.url(*i)).collect());
    let acks: Rc<RefCell<Vec<(String, String, Instant)>>> = Rc::default();
    let stop = Rc::new(Cell::new(false));
    let client = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
    let mut writers = Vec::new();
    for w in 0..16usize {
        let (urls, acks, stop, client) = (urls.clone(), acks.clone(), stop.clone(), client.clone());
        writers.push(actix_rt::spawn(async move {
            let mut n = 0u64;
            let mut target = w % urls.len();
            // Bounded by the stop flag (set a few seconds in) and a count.
            while !stop.get() && n < 100_000 {
                let (key, value) = (format!("w{w}-{n}"), format!("value-{w}-{n}"));
                let res = client
                    .put(format!("{}/v1/kv/{key}", urls[target]))
                    .insert_header(("X-Request-Timeout", "4000"))
                    .send_body(value.clone())
                    .await;
                match res {
                    Ok(r) if r.status() == StatusCode::OK => acks.borrow_mut().push((key, value, Instant::now())),
                    // Refused (the killed node), 503 or timeout: not
                    // acknowledged; move to the next node.
                    _ => {
                        target = (target + 1) % urls.len();
                        actix_rt::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                n += 1;
            }
        }));
    }
    actix_rt::time::sleep(Duration::from_millis(2000)).await;
    assert!(!acks.borrow().is_empty(), "writes flow before the kill");
    let victim = 2;
    c.kill9(victim).unwrap();
    let killed_at = Instant::now();
    actix_rt::time::sleep(Duration::from_secs(5)).await;
    stop.set(true);
    for w in writers {
        w.await.unwrap();
    }
    let acks = acks.take();
    assert!(acks.iter().any(|(_, _, t)| *t > killed_at), "writes resume after the kill");

    // Every shard elects among the survivors.
    let survivors: Vec<u64> = all.iter().copied().filter(|i| *i != victim).collect();
    let s1 = c.url(survivors[0]);
    eventually(Duration::from_secs(40), "every shard is led by a survivor", || {
        let (s1, survivors) = (s1.clone(), survivors.clone());
        async move { shards_led_by(&s1, &survivors).await.len() == SHARDS as usize }
    })
    .await;

    // Every shard takes a write and serves it back, through either survivor.
    let ring = Ring::new(1..=SHARDS);
    let mut written = BTreeSet::new();
    for i in 0..2000 {
        let key = format!("after-{i}");
        let shard = ring.owner_of_key(key.as_bytes()).unwrap();
        if !written.insert(shard) {
            continue;
        }
        let url = c.url(survivors[i % survivors.len()]);
        let r = call("PUT", &url, &format!("/v1/kv/{key}"), &[("x-request-timeout", "20000")], b"x".to_vec()).await;
        assert_eq!(r.status, StatusCode::OK, "shard {shard} takes a write: {}", r.text());
        let other = c.url(survivors[(i + 1) % survivors.len()]);
        assert_eq!(get(&other, &key).await.body, b"x", "shard {shard} serves a linearizable read");
        if written.len() == SHARDS as usize {
            break;
        }
    }
    assert_eq!(written.len(), SHARDS as usize);

    // No acknowledged write is lost: read each back linearizably.
    let mut missing = Vec::new();
    for chunk in acks.chunks(64) {
        let reads = chunk.iter().enumerate().map(|(j, (k, _, _))| {
            let url = c.url(survivors[j % survivors.len()]);
            async move { get(&url, k).await }
        });
        let got = futures::future::join_all(reads).await;
        for ((k, v, _), r) in chunk.iter().zip(got) {
            if r.status != StatusCode::OK || r.body != v.as_bytes() {
                missing.push(k.clone());
            }
        }
    }
    assert!(missing.is_empty(), "{} of {} acknowledged writes lost: {:?}", missing.len(), acks.len(), missing);

    // The killed node rejoins all its shards and catches up.
    c.spawn(victim).unwrap();
    let (k, v, _) = acks.last().unwrap().clone();
    let url = c.url(victim);
    eventually(Duration::from_secs(40), "the restarted node has the last acknowledged write", || {
        let (url, k, v) = (url.clone(), k.clone(), v.clone());
        async move { stale_body(&url, &k).await.as_deref() == Some(v.as_bytes()) }
    })
    .await;
    eventually(Duration::from_secs(40), "every shard has a leader again", || {
        let (url, all) = (c.url(victim), all.clone());
        async move { shards_led_by(&url, &all).await.len() == SHARDS as usize }
    })
    .await;
}
