//! The `locks` workload against a real in-process ringstore cluster and a
//! real Redis (Debian's `redis-server`, started here on 127.0.0.1; the test
//! fails, never skips, when it is missing): contended and uncontended runs
//! report pairs with no errors.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringstore_node::cluster::{ClusterConfig, LocalCluster};
use ringstore_testkit::{free_port, KillOnDrop};

async fn loadtest(args: Vec<String>) -> serde_json::Value {
    let out = args[args.iter().position(|a| a == "--out").unwrap() + 1].clone();
    let status = actix_rt::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_ringstore-loadtest")).args(args).status()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "loadtest exited with {status}");
    serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
}

fn args(system: &str, endpoints: &str, mode: &str, out: &std::path::Path) -> Vec<String> {
    ["--system", system, "--endpoints", endpoints, "--workload", "locks", "--lock-mode", mode]
        .iter()
        .map(|s| s.to_string())
        .chain(["--clients", "4", "--duration", "2s", "--out", out.to_str().unwrap()].iter().map(|s| s.to_string()))
        .collect()
}

fn check(report: &serde_json::Value, what: &str) {
    let s = &report["operations"]["lock"];
    assert!(s["ops_per_sec"].as_f64().unwrap() > 0.0, "{what}: {s}");
    assert_eq!(s["errors"].as_u64(), Some(0), "{what}: {s}");
    assert!(s["p50_ms"].as_f64().unwrap() <= s["p99_ms"].as_f64().unwrap(), "{what}: {s}");
}

#[actix_rt::test]
async fn the_locks_workload_runs_against_ringstore_and_redis() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(ClusterConfig::new(dir.path().join("cluster"))).await.unwrap();
    cluster.wait_leader(Duration::from_secs(10)).await.unwrap();
    let endpoints = cluster.node_ids().iter().map(|id| cluster.url(*id).unwrap()).collect::<Vec<_>>().join(",");
    for mode in ["uncontended", "contended"] {
        let out = dir.path().join(format!("ringstore-{mode}.json"));
        check(&loadtest(args("ringstore", &endpoints, mode, &out)).await, mode);
    }
    cluster.shutdown().await.unwrap();

    let bin = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("redis-server is not installed: run scripts/install-deps.sh (make test does)");
    let port = free_port();
    let _redis = KillOnDrop(
        Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "redis did not start");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    for mode in ["uncontended", "contended"] {
        let out = dir.path().join(format!("redis-{mode}.json"));
        check(&loadtest(args("redis", &format!("redis://127.0.0.1:{port}"), mode, &out)).await, mode);
    }
}
