//! A cluster of real `ringstore node` processes on 127.0.0.1, talking over
//! the TCP peer transport: forwarding from any node, `kill -9` of the
//! leader under load, a follower paused past log compaction, restart with
//! the stored identity, refusal of a foreign data dir, graceful SIGTERM,
//! garbage on the peer port (a protobuf group bomb included), and a
//! tokens file reread on SIGHUP.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use common::*;
use ringstore_node::identity::{cluster_id, parse_initial_cluster};
use ringstore_peer::wire;
use ringstore_testkit::ProcCluster;

const BIN: &str = env!("CARGO_BIN_EXE_ringstore");
/// 50 ms ticks: several clusters of three processes share two cores here.
/// One shard: these tests follow the one leader of the cluster (the
/// 16-shard process tests are in sharding.rs).
const FAST: [&str; 6] = ["--raft-tick-ms", "50", "--raft-election-ticks", "10", "--shards", "1"];

fn start(extra: &[&str]) -> ProcCluster {
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend_from_slice(extra);
    ProcCluster::start(Path::new(BIN), 3, &args, None).expect("three processes start")
}

async fn leader(c: &ProcCluster) -> u64 {
    c.wait_leader(Duration::from_secs(15)).await.unwrap_or_else(|e| panic!("{e}; node 1 log:\n{}", c.log(1)))
}

async fn applied(c: &ProcCluster, id: u64) -> u64 {
    c.replica(id).await.and_then(|r| r["applied_index"].as_u64()).unwrap_or(0)
}

/// Sum of the samples of metric `name` whose labels contain every `labels` item.
async fn metric(c: &ProcCluster, id: u64, name: &str, labels: &[&str]) -> f64 {
    let r = call("GET", &c.url(id), "/metrics", &[], vec![]).await;
    r.text()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[actix_rt::test]
async fn three_processes_form_a_cluster_and_any_node_serves_any_request() {
    let c = start(&[]);
    let l = leader(&c).await;
    for id in c.ids() {
        let r = put(&c.url(id), &format!("from-{id}"), format!("v{id}").as_bytes()).await;
        assert_eq!(r.status, StatusCode::OK, "PUT via node {id}: {}", r.text());
    }
    for reader in c.ids() {
        for writer in c.ids() {
            let r = get(&c.url(reader), &format!("from-{writer}")).await;
            assert_eq!(r.status, StatusCode::OK, "GET via node {reader}");
            assert_eq!(r.body, format!("v{writer}").as_bytes());
        }
    }
    // Every replica applies every write: stale reads converge everywhere.
    for id in c.ids() {
        let url = c.url(id);
        eventually(Duration::from_secs(10), "stale read on every node", || {
            let url = url.clone();
            async move { get_stale(&url, "from-3").await.status == StatusCode::OK }
        })
        .await;
    }
    // A follower forwards deletes too, and the leader hint never leaks.
    let follower = c.ids().into_iter().find(|i| *i != l).unwrap();
    let r = call("DELETE", &c.url(follower), "/v1/kv/from-1", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(!r.text().contains("not_leader"));
    assert!(metric(&c, 1, "ringstore_peer_sent_bytes_total", &[]).await > 0.0);
    every_metric_family_is_exported_in_prometheus_text(&c, follower).await;
}

/// A process's `/metrics`: every line a comment or a well-formed sample,
/// and every family an operator alerts or graphs on present.
async fn every_metric_family_is_exported_in_prometheus_text(c: &ProcCluster, id: u64) {
    let text = call("GET", &c.url(id), "/metrics", &[], vec![]).await.text();
    let mut names = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(rest.starts_with("HELP ") || rest.starts_with("TYPE "), "comment: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample without value: {line}"));
        assert!(value.parse::<f64>().is_ok(), "value of {line}");
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_'), "name of {line}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "labels of {line}");
        }
        names.insert(name.to_string());
    }
    let families = [
        // HTTP: requests by route, method and status; latency.
        "ringstore_http_requests_total",
        "ringstore_http_request_duration_seconds_bucket",
        // Raft per shard.
        "ringstore_raft_term",
        "ringstore_raft_is_leader",
        "ringstore_raft_commit_index",
        "ringstore_raft_applied_index",
        "ringstore_raft_proposals_total",
        "ringstore_raft_ready_rounds_total",
        "ringstore_raft_messages_sent_total",
        "ringstore_raft_snapshots_total",
        "ringstore_raft_pending_requests",
        // RocksDB: write and sync latency, SST and pending compaction bytes.
        "ringstore_rocksdb_write_seconds_bucket",
        "ringstore_rocksdb_wal_sync_seconds_bucket",
        "ringstore_rocksdb_wal_sync_readies_bucket",
        "ringstore_rocksdb_sst_bytes",
        "ringstore_rocksdb_pending_compaction_bytes",
        // Peer transport: queue depth, reconnects, bytes, drops.
        "ringstore_peer_queue_depth",
        "ringstore_peer_connected",
        "ringstore_peer_connects_total",
        "ringstore_peer_sent_bytes_total",
        "ringstore_peer_received_bytes_total",
        "ringstore_peer_dropped_total",
        "ringstore_peer_forwarded_requests_total",
        // Locks.
        "ringstore_locks_held",
        "ringstore_lock_waiters",
        "ringstore_lock_events_total",
        // Routers: map epoch, refreshes, WrongShard and other retries.
        "ringstore_router_map_epoch",
        "ringstore_router_map_refreshes_total",
        "ringstore_router_retries_total",
    ];
    let missing: Vec<&str> = families.iter().copied().filter(|f| !names.contains(*f)).collect();
    assert!(missing.is_empty(), "families missing from node {id}'s /metrics: {missing:?}");
    assert!(text.contains("reason=\"wrong_shard\""), "WrongShard retries are a series from the start");
}

#[actix_rt::test]
async fn kill_9_of_the_leader_under_16_writers_loses_no_acknowledged_write() {
    let mut c = start(&[]);
    let old = leader(&c).await;
    let writers = Writers::start(c.ids().iter().map(|i| c.url(*i)).collect(), 16, 2000);
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    let before = writers.acked();
    assert!(before > 0, "writes flow before the kill");
    c.kill9(old).unwrap();
    let killed_at = Instant::now();
    actix_rt::time::sleep(Duration::from_secs(4)).await;
    let acks = writers.stop().await;
    let after = acks.iter().filter(|(_, _, t)| *t > killed_at).count();
    assert!(after > 0, "writes resume on the survivors ({before} before the kill, none after)");
    let new = leader(&c).await;
    assert_ne!(new, old);
    // Every acknowledged write is there, read linearizably via a survivor.
    let missing = lost_writes(&acks, &[c.url(new)]).await;
    assert!(missing.is_empty(), "{} of {} acknowledged writes lost: {:?}", missing.len(), acks.len(), &missing[..]);
    // The killed node rejoins and catches up.
    c.spawn(old).unwrap();
    let (k, v, _) = acks.last().unwrap().clone();
    let old_url = c.url(old);
    eventually(Duration::from_secs(20), "the restarted node has the last write", || {
        let (url, k, v) = (old_url.clone(), k.clone(), v.clone());
        async move { stale_body(&url, &k).await.as_deref() == Some(v.as_bytes()) }
    })
    .await;
}

#[actix_rt::test]
async fn a_follower_paused_past_log_compaction_catches_up_by_snapshot() {
    let c = start(&["--raft-log-gc-threshold", "200", "--raft-log-gc-keep", "20"]);
    let l = leader(&c).await;
    let follower = c.ids().into_iter().find(|i| *i != l).unwrap();
    let before = metric(&c, follower, "ringstore_raft_snapshots_total", &["kind=\"applied\""]).await;
    c.pause(follower).unwrap();
    let url = c.url(l);
    for batch in 0..25 {
        let puts = (0..20).map(|i| {
            let url = url.clone();
            async move { put(&url, &format!("k{batch}-{i}"), format!("v{batch}-{i}").as_bytes()).await.status }
        });
        for s in futures::future::join_all(puts).await {
            assert_eq!(s, StatusCode::OK, "two of three nodes keep committing");
        }
    }
    let target = applied(&c, l).await;
    assert!(target > 500);
    // The paused follower's log position is long compacted away on the leader.
    let first_index = c.replica(l).await.unwrap()["first_index"].as_u64().unwrap();
    c.resume(follower).unwrap();
    eventually(Duration::from_secs(20), "the resumed follower applies up to the leader", || async {
        applied(&c, follower).await >= target
    })
    .await;
    assert!(first_index > 20, "the leader compacted its log (first index {first_index})");
    let snapshots = metric(&c, follower, "ringstore_raft_snapshots_total", &["kind=\"applied\""]).await;
    assert!(snapshots > before, "the follower caught up by snapshot; log:\n{}", c.log(follower));
    assert!(c.log(follower).contains("received snapshot"));
    assert_eq!(get_stale(&c.url(follower), "k24-19").await.body, b"v24-19");
    // The key count came with the snapshot: the same on both.
    let count = |id| {
        let c = &c;
        async move { c.replica(id).await.and_then(|r| r["key_count"].as_u64()) }
    };
    assert_eq!(count(follower).await, Some(500));
    assert_eq!(count(l).await, Some(500));
    assert!(metric(&c, follower, "ringstore_peer_snapshot_chunks_total", &["direction=\"received\""]).await >= 1.0);
}

#[actix_rt::test]
async fn a_restarted_node_rejoins_with_its_identity_and_a_foreign_data_dir_is_refused() {
    let mut c = start(&[]);
    let l = leader(&c).await;
    let follower = c.ids().into_iter().find(|i| *i != l).unwrap();
    c.kill9(follower).unwrap();
    assert_eq!(put(&c.url(l), "while-down", b"x").await.status, StatusCode::OK);
    // Restart without --initial-cluster: the data dir says who it is.
    let args: Vec<String> = c.args(follower).into_iter().take(9).collect();
    assert!(!args.iter().any(|a| a == "--initial-cluster"));
    let mut args = args;
    args.extend(FAST.iter().map(|s| s.to_string()));
    c.spawn_with(follower, &args).unwrap();
    let url = c.url(follower);
    eventually(Duration::from_secs(15), "the restarted node catches up", || {
        let url = url.clone();
        async move { stale_body(&url, "while-down").await.is_some() }
    })
    .await;
    assert!(c.log(follower).contains("rejoining with the stored identity"));

    // A one-node cluster of its own, stopped gracefully: a foreign data dir.
    let other = ProcCluster::start(Path::new(BIN), 1, &FAST, None).unwrap();
    let mut other = other;
    other.wait_leader(Duration::from_secs(15)).await.unwrap();
    let status = other.terminate(1, Duration::from_secs(20)).unwrap();
    assert!(status.success(), "graceful stop exits 0: {status:?}\n{}", other.log(1));
    let foreign = other.data_dir(1);

    // Node 1 of cluster `c` started on it is refused, clearly.
    let mut args = c.args(1);
    let at = args.iter().position(|a| a == "--data-dir").unwrap();
    args[at + 1] = foreign.display().to_string();
    let http_at = args.iter().position(|a| a == "--http").unwrap();
    args[http_at + 1] = format!("127.0.0.1:{}", ringstore_testkit::free_port());
    let peer_at = args.iter().position(|a| a == "--peer-addr").unwrap();
    args[peer_at + 1] = format!("127.0.0.1:{}", ringstore_testkit::free_port());
    let log = other.dir().join("refused.log");
    let out = c.command(&args, &log).unwrap().status().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!out.success(), "a foreign data dir must be refused:\n{text}");
    assert!(text.contains("belongs to cluster"), "{text}");
    // And under another node id.
    let id_at = args.iter().position(|a| a == "--id").unwrap();
    args[id_at + 1] = "2".into();
    let out = c.command(&args, &log).unwrap().status().unwrap();
    assert!(!out.success());
    assert!(std::fs::read_to_string(&log).unwrap().contains("belongs to node 1, but the node was started as --id 2"));
}

#[actix_rt::test]
async fn sigterm_hands_leadership_over_finishes_requests_and_exits_0() {
    let mut c = start(&[]);
    let l = leader(&c).await;
    assert_eq!(put(&c.url(l), "before", b"1").await.status, StatusCode::OK);
    let started = Instant::now();
    let status = c.terminate(l, Duration::from_secs(20)).unwrap();
    assert!(status.success(), "exit status {status:?}; log:\n{}", c.log(l));
    let log = c.log(l);
    assert!(log.contains("leadership handed over"), "{log}");
    assert!(log.contains("stopped cleanly"));
    let new = leader(&c).await;
    assert_ne!(new, l);
    // A handover, not an election timeout plus a restart: well under the
    // 20 s bound above; the survivors serve at once.
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(put(&c.url(new), "after", b"2").await.status, StatusCode::OK);
    assert_eq!(get(&c.url(new), "before").await.body, b"1");
    // Restarted, the node rejoins as a follower with its data.
    c.spawn(l).unwrap();
    let url = c.url(l);
    eventually(Duration::from_secs(15), "the restarted node has the write made while it was down", || {
        let url = url.clone();
        async move { stale_body(&url, "after").await.as_deref() == Some(b"2".as_slice()) }
    })
    .await;
}

/// Reads until the peer closes the connection (or `within` passes).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {} // e.g. a reject frame before the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if start.elapsed() > within {
            return false;
        }
    }
}

#[actix_rt::test]
async fn garbage_and_oversized_frames_on_the_peer_port_are_disconnected() {
    let c = start(&[]);
    leader(&c).await;
    let port = c.peer_port(1);
    let wait = Duration::from_secs(8);

    // Bytes that are not a frame at all.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed_within(&mut s, wait), "garbage closes the connection");

    // A hello from another cluster gets a reject frame, then a close.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut buf = Vec::new();
    wire::encode_hello(&mut buf, &wire::Hello { cluster_id: 1, from: 2, to: 1 });
    s.write_all(&buf).unwrap();
    let mut header = [0u8; 4];
    s.read_exact(&mut header).unwrap();
    let mut body = vec![0u8; wire::frame_len(header).unwrap()];
    s.read_exact(&mut body).unwrap();
    match wire::decode(&body).unwrap() {
        wire::Frame::Reject { reason, .. } => assert_eq!(reason, wire::RejectReason::ClusterMismatch),
        f => panic!("expected a reject, got {f:?}"),
    }
    assert!(closed_within(&mut s, wait));

    // A valid hello, then a frame header announcing 1 GiB.
    let members = parse_initial_cluster(c.initial_cluster()).unwrap();
    let id = cluster_id("ringstore", &members, 1);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut buf = Vec::new();
    wire::encode_hello(&mut buf, &wire::Hello { cluster_id: id, from: 2, to: 1 });
    s.write_all(&buf).unwrap();
    s.read_exact(&mut header).unwrap();
    let mut body = vec![0u8; wire::frame_len(header).unwrap()];
    s.read_exact(&mut body).unwrap();
    assert!(matches!(wire::decode(&body).unwrap(), wire::Frame::Welcome { .. }));
    s.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    assert!(closed_within(&mut s, wait), "an oversized frame closes the connection");

    // A valid header with an undecodable body.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut buf = Vec::new();
    wire::encode_hello(&mut buf, &wire::Hello { cluster_id: id, from: 3, to: 1 });
    buf.extend_from_slice(&5u32.to_be_bytes());
    buf.extend_from_slice(&[4, 0xff, 0xff, 0xff, 0xff]);
    s.write_all(&buf).unwrap();
    assert!(closed_within(&mut s, wait), "a bad frame body closes the connection");

    // A Raft frame whose message is 200,000 nested protobuf groups (the
    // shape of RUSTSEC-2024-0437): refused before protobuf sees it, and
    // the link is closed.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut buf = Vec::new();
    wire::encode_hello(&mut buf, &wire::Hello { cluster_id: id, from: 3, to: 1 });
    let bomb: Vec<u8> = std::iter::repeat_n([0x93u8, 0x03], 200_000).flatten().collect();
    let mut body = vec![4u8]; // a Raft frame
    body.extend_from_slice(&1u64.to_be_bytes());
    body.extend_from_slice(&1u32.to_be_bytes());
    body.extend_from_slice(&(bomb.len() as u32).to_be_bytes());
    body.extend_from_slice(&bomb);
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    s.write_all(&buf).unwrap();
    assert!(closed_within(&mut s, wait), "a group bomb closes the connection");
    assert!(c.is_running(1), "and the node lives");

    // The node keeps serving, and the refusals were counted.
    let r = put(&c.url(1), "still-serving", b"yes").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(get(&c.url(2), "still-serving").await.body, b"yes");
    let refused: HashMap<&str, f64> = [
        ("bad_hello", metric(&c, 1, "ringstore_peer_refused_total", &["reason=\"bad_hello\""]).await),
        ("cluster_mismatch", metric(&c, 1, "ringstore_peer_refused_total", &["reason=\"cluster_mismatch\""]).await),
        ("bad_frame", metric(&c, 1, "ringstore_peer_refused_total", &["reason=\"bad_frame\""]).await),
    ]
    .into_iter()
    .collect();
    assert!(refused.values().all(|v| *v >= 1.0), "{refused:?}");
}

#[actix_rt::test]
async fn a_lock_held_across_a_kill_9_of_the_leader_stays_held_with_its_token() {
    let mut c = start(&[]);
    let l = leader(&c).await;
    let other = c.ids().into_iter().find(|i| *i != l).unwrap();
    let lock = ringstore_client::LockClient::new(vec![c.url(other)]);
    let lease = lock.acquire("proc-lock", "a", Duration::from_secs(5), Duration::ZERO).await.unwrap();
    c.kill9(l).unwrap();
    leader(&c).await;
    let s = lock.status("proc-lock").await.unwrap();
    assert_eq!((s.holder.as_deref(), s.token), (Some("a"), Some(lease.token)), "not freed early: {s:?}");
    match lock.acquire("proc-lock", "b", Duration::from_secs(5), Duration::ZERO).await {
        Err(ringstore_client::LockError::Held { holder, .. }) => assert_eq!(holder.as_deref(), Some("a")),
        other => panic!("expected held, got {other:?}"),
    }
    assert_eq!(lock.release(&lease).await.unwrap(), 0);
    let next = lock.acquire("proc-lock", "b", Duration::from_secs(5), Duration::ZERO).await.unwrap();
    assert!(next.token > lease.token);
}

#[actix_rt::test]
async fn nodes_with_a_tokens_file_refuse_strangers_and_reread_it_on_sighup() {
    use ringstore_api::auth::hash_token;
    let (app, ops) = ("rs_app-process-test", "rs_ops-process-test");
    let entry = |name: &str, token: &str, scopes: &str| {
        format!("[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = {scopes}\n\n", hash_token(token))
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    std::fs::write(&file, entry("app", app, "[\"read\", \"write\"]") + &entry("ops", ops, "[\"admin\"]")).unwrap();
    let c = start(&["--auth-tokens", file.to_str().unwrap()]);
    leader(&c).await;
    let url = c.url(1);
    let with = |t: &str| format!("Bearer {t}");
    assert_eq!(call("PUT", &url, "/v1/kv/p", &[], b"x".to_vec()).await.status, StatusCode::UNAUTHORIZED);
    let r = call("PUT", &url, "/v1/kv/p", &[("authorization", &with(app))], b"x".to_vec()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // `ringstore status` takes an admin token; without one it says why.
    let status = |token: Option<&str>| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["status", "--endpoint", &url]).env_remove("RINGSTORE_TOKEN");
        if let Some(t) = token {
            cmd.env("RINGSTORE_TOKEN", t);
        }
        cmd.output().expect("ringstore status runs")
    };
    let out = status(Some(ops));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = status(None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));

    // The app token is withdrawn: after SIGHUP every node refuses it.
    std::fs::write(&file, entry("ops", ops, "[\"admin\"]")).unwrap();
    for id in c.ids() {
        let pid = c.pid(id).expect("running").to_string();
        assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    }
    for id in c.ids() {
        let url = c.url(id);
        eventually(Duration::from_secs(10), "the token is refused after SIGHUP", || {
            let url = url.clone();
            async move {
                call("GET", &url, "/v1/kv/p", &[("authorization", &format!("Bearer {app}"))], vec![]).await.status
                    == StatusCode::UNAUTHORIZED
            }
        })
        .await;
        assert!(c.log(id).contains("tokens file read again"), "node {id} logs the reload");
    }
}
