//! Three `ringstore node` processes × 16 shards on 127.0.0.1, the default
//! shape of a cluster: `kill -9` of one node while 16 writers run leaves
//! every shard electing among the survivors and serving reads and writes,
//! and loses no acknowledged write.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use common::*;
use ringstore_shared::ring::Ring;
use ringstore_testkit::ProcCluster;

const BIN: &str = env!("CARGO_BIN_EXE_ringstore");
const SHARDS: u64 = 16;
/// The data shards and the meta shard.
const ALL_SHARDS: usize = SHARDS as usize + 1;
/// 50 ms ticks: 48 replicas in three processes share two cores here.
const FLAGS: [&str; 6] = ["--raft-tick-ms", "50", "--raft-election-ticks", "10", "--shards", "16"];

/// The shards (data shards and the meta shard 0) whose leader, as `url`
/// sees them in `/v1/cluster`, is one of `alive`.
async fn shards_led_by(url: &str, alive: &[u64]) -> BTreeSet<u64> {
    let Some(body) = try_get(&format!("{url}/v1/cluster")).await else { return BTreeSet::new() };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else { return BTreeSet::new() };
    let Some(shards) = v["shards"].as_array() else { return BTreeSet::new() };
    shards
        .iter()
        .filter(|s| s["leader"].as_u64().is_some_and(|l| alive.contains(&l)))
        .filter_map(|s| s["id"].as_u64())
        .collect()
}

#[actix_rt::test]
async fn kill_9_of_any_node_keeps_all_16_shards_serving_and_loses_no_acknowledged_write() {
    let mut c = ProcCluster::start(Path::new(BIN), 3, &FLAGS, None).expect("three processes start");
    let all: Vec<u64> = c.ids();
    let u1 = c.url(1);
    eventually(Duration::from_secs(40), "every shard elects a leader", || {
        let (u1, all) = (u1.clone(), all.clone());
        async move { shards_led_by(&u1, &all).await.len() == ALL_SHARDS }
    })
    .await;
    let r = call("GET", &u1, "/v1/cluster", &[], vec![]).await.json();
    assert_eq!(r["shards"].as_array().unwrap().len(), 17, "16 data shards and the meta shard: {r}");

    // 16 writers over all three nodes; node 2 is killed while they run.
    let writers = Writers::start(c.ids().iter().map(|i| c.url(*i)).collect(), 16, 4000);
    actix_rt::time::sleep(Duration::from_millis(2000)).await;
    assert!(writers.acked() > 0, "writes flow before the kill");
    let victim = 2;
    c.kill9(victim).unwrap();
    let killed_at = Instant::now();
    actix_rt::time::sleep(Duration::from_secs(5)).await;
    let acks = writers.stop().await;
    assert!(acks.iter().any(|(_, _, t)| *t > killed_at), "writes resume after the kill");

    // Every shard elects among the survivors.
    let survivors: Vec<u64> = all.iter().copied().filter(|i| *i != victim).collect();
    let s1 = c.url(survivors[0]);
    eventually(Duration::from_secs(40), "every shard, the meta shard too, is led by a survivor", || {
        let (s1, survivors) = (s1.clone(), survivors.clone());
        async move { shards_led_by(&s1, &survivors).await.len() == ALL_SHARDS }
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
    let urls: Vec<String> = survivors.iter().map(|i| c.url(*i)).collect();
    let lost = lost_writes(&acks, &urls).await;
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost: {:?}", lost.len(), acks.len(), lost);

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
        async move { shards_led_by(&url, &all).await.len() == ALL_SHARDS }
    })
    .await;
}
