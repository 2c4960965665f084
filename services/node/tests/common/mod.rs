//! Shared fixtures for the in-process cluster tests: a cluster with fast
//! Raft timing in a temp dir, and a small HTTP client that returns status,
//! headers and body without panicking on error statuses.

#![allow(dead_code)]

use std::time::Duration;

use awc::http::StatusCode;
use ringstore_node::cluster::{ClusterConfig, LocalCluster};
use ringstore_shared::config::RaftConfig;

pub const TICK_MS: u64 = 30;
pub const ELECTION_TICKS: usize = 10;

pub fn fast_raft() -> RaftConfig {
    RaftConfig {
        tick_interval_ms: TICK_MS,
        election_ticks: ELECTION_TICKS,
        heartbeat_ticks: 2,
        ttl_sweep_interval_ms: 100,
        ..RaftConfig::default()
    }
}

pub fn election_timeout() -> Duration {
    Duration::from_millis(TICK_MS * ELECTION_TICKS as u64)
}

pub struct TestCluster {
    pub cluster: LocalCluster,
    pub dir: tempfile::TempDir,
}

pub async fn start(tune: impl FnOnce(&mut ClusterConfig)) -> TestCluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = ClusterConfig::new(dir.path());
    cfg.raft = fast_raft();
    tune(&mut cfg);
    let cluster = LocalCluster::start(cfg).await.expect("cluster starts");
    cluster.wait_leader(Duration::from_secs(10)).await.expect("a leader is elected");
    TestCluster { cluster, dir }
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: awc::http::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn client() -> awc::Client {
    awc::Client::builder().timeout(Duration::from_secs(30)).finish()
}

/// Sends a request; `path` is appended to `base` as-is (already encoded).
pub async fn call(method: &str, base: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client().request(method, format!("{base}{path}"));
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut res = req.send_body(body).await.unwrap_or_else(|e| panic!("request to {base}{path} failed: {e}"));
    let body = res.body().limit(8 * 1024 * 1024).await.expect("response body").to_vec();
    Resp { status: res.status(), headers: res.headers().clone(), body }
}

pub async fn put(base: &str, key: &str, value: &[u8]) -> Resp {
    call("PUT", base, &format!("/v1/kv/{key}"), &[], value.to_vec()).await
}

pub async fn get(base: &str, key: &str) -> Resp {
    call("GET", base, &format!("/v1/kv/{key}"), &[], vec![]).await
}

pub async fn get_stale(base: &str, key: &str) -> Resp {
    call("GET", base, &format!("/v1/kv/{key}?consistency=stale"), &[], vec![]).await
}

/// Polls `f` every 20 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if f().await {
            return;
        }
        assert!(start.elapsed() < within, "not true within {within:?}: {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}
