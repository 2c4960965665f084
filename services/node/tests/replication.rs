//! Replication and fault tests on an in-process three-node cluster with
//! real RocksDB in temp dirs and real HTTP on 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use common::*;

#[actix_rt::test]
async fn a_leader_is_elected_and_a_write_reaches_every_replica() {
    let tc = start(|_| {}).await;
    let c = &tc.cluster;
    let leader = c.wait_leader(Duration::from_secs(5)).await.unwrap();
    // Write through a follower: the router forwards to the leader.
    let follower = c.node_ids().into_iter().find(|n| *n != leader).unwrap();
    let r = put(&c.url(follower).unwrap(), "k1", b"v1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for id in c.node_ids() {
        let url = c.url(id).unwrap();
        eventually(Duration::from_secs(5), &format!("node {id} applied k1"), || {
            let url = url.clone();
            async move { get_stale(&url, "k1").await.body == b"v1" }
        })
        .await;
    }
    tc.shutdown().await;
}

#[actix_rt::test]
async fn leader_crash_elects_a_new_leader_and_keeps_every_acknowledged_write() {
    let mut tc = start(|_| {}).await;
    let old = tc.cluster.wait_leader(Duration::from_secs(5)).await.unwrap();
    let survivor = tc.cluster.node_ids().into_iter().find(|n| *n != old).unwrap();
    let url = tc.cluster.url(survivor).unwrap();
    let mut acked = Vec::new();
    for i in 0..30 {
        let r = put(&url, &format!("before-{i}"), format!("v{i}").as_bytes()).await;
        assert_eq!(r.status, StatusCode::OK);
        acked.push(format!("before-{i}"));
    }

    let crashed_at = Instant::now();
    tc.cluster.stop_node(old).await.unwrap();
    let new = tc.cluster.wait_leader(Duration::from_secs(10)).await.unwrap();
    let took = crashed_at.elapsed();
    assert_ne!(new, old);
    // Randomized timeout is at most 2x the base; allow generous scheduling slack.
    assert!(took < election_timeout() * 10, "new leader after {took:?}");

    for i in 0..30 {
        let r = put(&url, &format!("after-{i}"), format!("v{i}").as_bytes()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        acked.push(format!("after-{i}"));
    }
    for k in &acked {
        let r = get(&url, k).await;
        assert_eq!(r.status, StatusCode::OK, "acknowledged {k} lost");
    }

    // The crashed node comes back with its data and catches up.
    tc.cluster.start_node(old).await.unwrap();
    let old_url = tc.cluster.url(old).unwrap();
    eventually(Duration::from_secs(10), "restarted node catches up", || {
        let u = old_url.clone();
        async move { get_stale(&u, "after-29").await.status == StatusCode::OK }
    })
    .await;
    tc.shutdown().await;
}

#[actix_rt::test]
async fn whole_group_restart_recovers_every_write_even_after_log_compaction() {
    let mut tc = start(|cfg| {
        cfg.raft.log_gc_threshold_entries = 20;
        cfg.raft.log_gc_keep_entries = 5;
    })
    .await;
    let url = tc.cluster.url(1).unwrap();
    for i in 0..120 {
        let r = put(&url, &format!("k{i}"), format!("value-{i}").as_bytes()).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // Overwrite and delete some, so recovery must replay the right history.
    for i in 0..10 {
        assert_eq!(put(&url, &format!("k{i}"), b"rewritten").await.status, StatusCode::OK);
    }
    assert_eq!(call("DELETE", &url, "/v1/kv/k119", &[], vec![]).await.status, StatusCode::OK);
    let leader = tc.cluster.wait_leader(Duration::from_secs(5)).await.unwrap();
    let s = tc.cluster.status(leader).await.unwrap();
    assert!(s.first_index > 100, "log was not compacted: {s:?}");

    for id in tc.cluster.node_ids() {
        tc.cluster.stop_node(id).await.unwrap();
    }
    for id in tc.cluster.node_ids() {
        tc.cluster.start_node(id).await.unwrap();
    }
    tc.cluster.wait_leader(Duration::from_secs(10)).await.unwrap();
    let url = tc.cluster.url(2).unwrap();
    for i in 0..119 {
        let r = get(&url, &format!("k{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "k{i} lost after restart");
        let want = if i < 10 { "rewritten".to_string() } else { format!("value-{i}") };
        assert_eq!(r.text(), want);
    }
    assert_eq!(get(&url, "k119").await.status, StatusCode::NOT_FOUND);
    tc.shutdown().await;
}

#[actix_rt::test]
async fn a_partitioned_minority_cannot_commit_and_catches_up_after_healing() {
    let tc = start(|cfg| {
        // Small log so the minority must be brought back by a snapshot.
        cfg.raft.log_gc_threshold_entries = 20;
        cfg.raft.log_gc_keep_entries = 5;
    })
    .await;
    let c = &tc.cluster;
    let old = c.wait_leader(Duration::from_secs(5)).await.unwrap();
    let all = c.node_ids();
    let majority: Vec<u64> = all.iter().copied().filter(|n| *n != old).collect();
    c.transport().isolate(old, &all);

    // The isolated leader cannot commit: its client gets 503, not success.
    let minority_url = c.url(old).unwrap();
    let r = call("PUT", &minority_url, "/v1/kv/lost-write", &[("x-request-timeout", "1500")], b"never".to_vec()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(matches!(r.error_code().as_str(), "unavailable" | "timeout"));

    // The majority elects a leader and keeps accepting writes.
    let maj_url = c.url(majority[0]).unwrap();
    for i in 0..60 {
        let r = put(&maj_url, &format!("m{i}"), b"x").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }

    c.transport().heal();
    eventually(Duration::from_secs(10), "old leader catches up", || {
        let u = minority_url.clone();
        async move { get_stale(&u, "m59").await.status == StatusCode::OK }
    })
    .await;
    // The old leader held only a handful of entries and the leader compacted
    // far past them: it can only have caught up through a snapshot.
    let s = c.status(old).await.unwrap();
    assert!(s.first_index > 20, "expected a snapshot install, status {s:?}");
    // The write that got 503 was never committed anywhere.
    assert_eq!(get(&maj_url, "lost-write").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get_stale(&minority_url, "lost-write").await.status, StatusCode::NOT_FOUND);
    tc.shutdown().await;
}

#[actix_rt::test]
async fn writes_commit_and_replicas_converge_over_a_lossy_slow_network() {
    let tc = start(|_| {}).await;
    let c = &tc.cluster;
    // 1. Every Raft message is delayed 5 ms and 15% are dropped.
    // 2. Raft retransmits; writes still commit, none is lost or duplicated.
    c.transport().set_filter(ringstore_storage::NetFilter {
        drop_rate: 0.15,
        delay: Some(Duration::from_millis(5)),
        ..Default::default()
    });
    let url = c.url(1).unwrap();
    for i in 0..40 {
        let r =
            call("PUT", &url, &format!("/v1/kv/lossy-{i}"), &[("x-request-timeout", "10000")], vec![b'v'; 64]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    c.transport().heal();
    for id in c.node_ids() {
        let u = c.url(id).unwrap();
        eventually(Duration::from_secs(10), &format!("node {id} converges"), || {
            let u = u.clone();
            async move { get_stale(&u, "lossy-39").await.status == StatusCode::OK }
        })
        .await;
        for i in 0..40 {
            assert_eq!(get_stale(&u, &format!("lossy-{i}")).await.status, StatusCode::OK);
        }
    }
    tc.shutdown().await;
}

/// PUTs `value` to key `k` through `url` (1 s per try) until one is
/// acknowledged; fails with `what` once `within` has passed.
async fn put_within(url: &str, value: &[u8], within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let r = call("PUT", url, "/v1/kv/k", &[("x-request-timeout", "1000")], value.to_vec()).await;
        if r.status == StatusCode::OK {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {}", r.text());
    }
}

/// Sum of a counter's series for one node in `/metrics` text.
async fn node_counter(url: &str, name: &str, node: u64) -> f64 {
    let text = call("GET", url, "/metrics", &[], Vec::new()).await.text();
    let label = format!("node=\"{node}\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[actix_rt::test]
async fn a_cut_off_leader_stops_serving_reads_from_its_lease_before_a_new_leader_acknowledges_a_write() {
    let tc = start(|cfg| cfg.shards = 1).await;
    let c = &tc.cluster;
    let old = c.wait_leader(Duration::from_secs(5)).await.unwrap();
    let old_url = c.url(old).unwrap();
    let all = c.node_ids();
    let majority: Vec<u64> = all.iter().copied().filter(|n| *n != old).collect();
    assert_eq!(put(&old_url, "k", b"v1").await.status, StatusCode::OK);
    // Reads on the leader run under its lease (or the test proves nothing).
    for _ in 0..20 {
        assert_eq!(get(&old_url, "k").await.text(), "v1");
    }
    assert!(node_counter(&old_url, "ringstore_raft_lease_reads_total", old).await > 0.0, "no lease read was served");

    c.transport().isolate(old, &all);
    // The majority elects a leader and acknowledges v2 ...
    let maj_url = c.url(majority[0]).unwrap();
    put_within(&maj_url, b"v2", Duration::from_secs(10), "the majority never acknowledged v2").await;
    // ... after which the cut-off leader must never answer a linearizable
    // read with v1: its lease ran out before any follower gave it up.
    for _ in 0..20 {
        let r = call("GET", &old_url, "/v1/kv/k", &[("x-request-timeout", "100")], Vec::new()).await;
        assert!(
            !(r.status == StatusCode::OK && r.text() == "v1"),
            "a stale read: the cut-off leader answered v1 after v2 was acknowledged"
        );
    }
    c.transport().heal();
    tc.shutdown().await;
}

/// The sum of a metric's series that carry every one of `labels`
/// (`name="value"` each).
async fn labelled(url: &str, name: &str, labels: &[String]) -> f64 {
    let text = call("GET", url, "/metrics", &[], Vec::new()).await.text();
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until shard 1's group falls silent: the same leader before and
/// after two election timeouts in which it sent no Raft message (the
/// Rebalancer may move leadership first, to spread leaders). Returns it.
async fn silent_leader(tc: &TestCluster) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leader = tc.cluster.wait_leader(Duration::from_secs(5)).await.unwrap();
        let url = tc.cluster.url(leader).unwrap();
        let labels = [format!("node=\"{leader}\""), "shard=\"1\"".to_string()];
        let sent = labelled(&url, "ringstore_raft_messages_sent_total", &labels).await;
        actix_rt::time::sleep(election_timeout() * 2).await;
        let still = tc.cluster.wait_leader(Duration::from_secs(5)).await.unwrap() == leader;
        if still && labelled(&url, "ringstore_raft_messages_sent_total", &labels).await == sent {
            return leader;
        }
        assert!(Instant::now() < deadline, "shard 1's group never fell silent");
    }
}

#[actix_rt::test]
async fn a_quiet_group_hibernates_wakes_for_a_write_and_fails_over_while_asleep() {
    let mut tc = start(|cfg| cfg.shards = 1).await;
    let all = tc.cluster.node_ids();
    let url = tc.cluster.url(all[0]).unwrap();
    assert_eq!(put(&url, "k", b"v1").await.status, StatusCode::OK);

    // Quiet now, the data shard's group falls asleep: its leader sends
    // nothing, not even heartbeats.
    let leader = silent_leader(&tc).await;
    let mut asleep = 0.0;
    for id in &all {
        asleep += node_counter(&tc.cluster.url(*id).unwrap(), "ringstore_raft_hibernating_replicas", *id).await;
    }
    assert!(asleep >= 3.0, "the three replicas of the silent group count as hibernating: {asleep}");

    // A write wakes the group and is acknowledged; a read sees it.
    assert_eq!(put(&url, "k", b"v2").await.status, StatusCode::OK);
    assert_eq!(get(&url, "k").await.text(), "v2");
    let leader_url = tc.cluster.url(leader).unwrap();
    assert!(node_counter(&leader_url, "ringstore_raft_hibernation_wakes_total", leader).await > 0.0);

    // Asleep again, the leader's node dies. No request comes (status reads
    // wake no one): the sleepers must see it on their own, from the
    // transport, wake, and elect a leader that takes writes.
    let leader = silent_leader(&tc).await;
    let survivor = all.iter().copied().find(|n| *n != leader).unwrap();
    let url = tc.cluster.url(survivor).unwrap();
    tc.cluster.stop_node(leader).await.unwrap();
    let new = tc.cluster.wait_leader(Duration::from_secs(10)).await.unwrap();
    assert_ne!(new, leader);
    // The first survivor to see it wakes for that reason; its vote request
    // may wake the other first.
    let mut woke = 0.0;
    for id in all.iter().filter(|n| **n != leader) {
        let labels = [format!("node=\"{id}\""), "reason=\"leader_unreachable\"".to_string()];
        woke += labelled(&url, "ringstore_raft_hibernation_wakes_total", &labels).await;
    }
    assert!(woke > 0.0, "no survivor woke because its leader's node was gone");
    put_within(&url, b"v3", Duration::from_secs(10), "no write acknowledged after the sleeping leader died").await;
    assert_eq!(get(&url, "k").await.text(), "v3");
    tc.shutdown().await;
}
