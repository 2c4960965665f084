//! The load generator against a real in-process cluster (what `ringstore
//! dev` runs): a 3-second YCSB-A run with zipfian keys must report non-zero
//! throughput for both operations, ordered percentiles, no errors, and a plot.

use std::time::Duration;

use ringstore_node::cluster::{ClusterConfig, LocalCluster};

#[actix_rt::test]
async fn a_three_second_workload_reports_sane_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(ClusterConfig::new(dir.path().join("cluster"))).await.unwrap();
    cluster.wait_leader(Duration::from_secs(10)).await.unwrap();
    let endpoints = cluster.node_ids().iter().map(|id| cluster.url(*id).unwrap()).collect::<Vec<_>>().join(",");
    let out = dir.path().join("report.json");
    let args: Vec<String> = [
        "--endpoints",
        &endpoints,
        "--workload",
        "a",
        "--dist",
        "zipfian",
        "--keys",
        "1000",
        "--preload",
        "200",
        "--clients",
        "8",
        "--duration",
        "3s",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let status = actix_rt::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ringstore-loadtest")).args(args).status()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "loadtest exited with {status}");

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    for op in ["put", "get"] {
        let s = &report["operations"][op];
        let f = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("{op}.{k} missing in {s}"));
        assert!(f("ops_per_sec") > 0.0, "{op}: {s}");
        assert!(f("count") > 0.0);
        assert_eq!(f("errors"), 0.0, "{op}: {s}");
        assert!(0.0 < f("p50_ms") && f("p50_ms") <= f("p99_ms"), "{op}: {s}");
        assert!(f("p99_ms") <= f("p999_ms") && f("p999_ms") <= f("max_ms"), "{op}: {s}");
        assert!(f("max_ms") < 10_000.0, "{op}: {s}");
    }
    assert_eq!(report["timeline_ops_per_sec"].as_array().unwrap().len(), 3);
    let svg = std::fs::read_to_string(out.with_extension("svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
    cluster.shutdown().await.unwrap();
}
