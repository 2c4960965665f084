//! A real Prometheus server (Debian's `prometheus`, installed by
//! scripts/install-deps.sh) scrapes a running cluster; the test drives
//! traffic and asserts through Prometheus's HTTP query API that the request
//! counter and the latency histogram moved. It fails, never skips, when
//! Prometheus is missing.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use awc::http::StatusCode;
use common::*;

use ringstore_testkit::{free_port, KillOnDrop};

/// Runs an instant query; the first sample's value, if any.
async fn query(prom: &str, q: &str) -> Option<f64> {
    let url = format!("{prom}/api/v1/query?query={}", percent_encode(q));
    let mut res = client().get(url).send().await.ok()?;
    let body: serde_json::Value = res.json().await.ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[actix_rt::test]
async fn a_real_prometheus_sees_request_counters_and_latency_histograms_move() {
    let bin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("prometheus is not installed: run scripts/install-deps.sh (make test does)");
    let tc = start(|_| {}).await;
    let targets: Vec<String> = tc
        .cluster
        .node_ids()
        .iter()
        .map(|id| tc.cluster.url(*id).unwrap().trim_start_matches("http://").to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ringstore\n    static_configs:\n      - targets: {targets:?}\n"
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let port = free_port();
    let _prom = KillOnDrop(
        Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let prom = format!("http://127.0.0.1:{port}");

    // Every target is up before traffic starts.
    eventually(Duration::from_secs(30), "prometheus scrapes all three nodes", || {
        let p = prom.clone();
        async move { query(&p, "sum(up{job=\"ringstore\"})").await == Some(3.0) }
    })
    .await;

    let url = tc.cluster.url(1).unwrap();
    for i in 0..50 {
        assert_eq!(put(&url, &format!("p{i}"), b"v").await.status, StatusCode::OK);
        assert_eq!(get(&url, &format!("p{i}")).await.status, StatusCode::OK);
    }

    // In one process the three nodes share one registry, so take one target's view.
    let puts = "max(sum by (instance) (ringstore_http_requests_total{method=\"PUT\",status=\"200\"}))";
    let gets = "max(sum by (instance) (ringstore_http_request_duration_seconds_count{method=\"GET\"}))";
    // Leaders per shard (the data shard and the meta shard), deduplicated
    // over the three targets that share the registry.
    let leaders = "sum by (shard) (max by (node, shard) (ringstore_raft_is_leader))";
    eventually(Duration::from_secs(30), "PUT counter reaches 50 in prometheus", || {
        let p = prom.clone();
        async move { query(&p, puts).await.is_some_and(|v| v >= 50.0) }
    })
    .await;
    eventually(Duration::from_secs(30), "GET latency histogram counts 50", || {
        let p = prom.clone();
        async move { query(&p, gets).await.is_some_and(|v| v >= 50.0) }
    })
    .await;
    let p99 = "histogram_quantile(0.99, sum by (le) (ringstore_http_request_duration_seconds_bucket{method=\"PUT\"}))";
    let v = query(&prom, p99).await.expect("p99 is computable from the histogram");
    assert!(v > 0.0 && v < 10.0, "p99 {v}");
    let (most, least) = (format!("max({leaders})"), format!("min({leaders})"));
    eventually(Duration::from_secs(30), "exactly one leader per shard", || {
        let (p, most, least) = (prom.clone(), most.clone(), least.clone());
        async move { query(&p, &most).await == Some(1.0) && query(&p, &least).await == Some(1.0) }
    })
    .await;

    // promtool lints the exposition itself: format and naming conventions.
    let text = call("GET", &url, "/metrics", &[], vec![]).await.body;
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), &text).unwrap();
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    tc.shutdown().await;
}
