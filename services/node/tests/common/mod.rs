//! Shared fixtures for the in-process cluster tests: a cluster with fast
//! Raft timing in a temp dir, and a small HTTP client that returns status,
//! headers and body without panicking on error statuses.

#![allow(dead_code)]

use std::time::Duration;

use awc::http::StatusCode;
use ringstore_node::cluster::{ClusterConfig, LocalCluster};
use ringstore_shared::config::RaftConfig;

pub const TICK_MS: u64 = 30;
/// 600 ms: ten missed heartbeats (every 2 ticks) before a follower stands,
/// so a busy 2-core machine delaying a heartbeat by a few hundred
/// milliseconds does not start an election.
pub const ELECTION_TICKS: usize = 20;

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
    let tc = TestCluster { cluster, dir };
    tc.wait_ready(Duration::from_secs(20)).await;
    tc
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // A test that returns with nodes running leaves their RocksDBs
        // closing on storage threads while the test binary exits, which
        // can crash the exit after every test has passed.
        let running: Vec<_> = self.cluster.node_ids().into_iter().filter(|i| self.cluster.is_running(*i)).collect();
        if !std::thread::panicking() && !running.is_empty() {
            panic!("a test ended with nodes {running:?} running: end it with `tc.shutdown().await`");
        }
    }
}

impl TestCluster {
    /// Stops every node and waits until their RocksDBs are closed.
    pub async fn shutdown(mut self) {
        self.cluster.shutdown().await.expect("cluster shuts down");
    }

    /// Waits until every running node answers `/readyz` with 200: each of
    /// its replicas knows its shard's leader.
    pub async fn wait_ready(&self, within: Duration) {
        let urls: Vec<String> = self.cluster.node_ids().into_iter().filter_map(|i| self.cluster.url(i)).collect();
        eventually(within, "every node is ready", || {
            let urls = urls.clone();
            async move {
                for u in &urls {
                    if try_get(&format!("{u}/readyz")).await.is_none() {
                        return false;
                    }
                }
                true
            }
        })
        .await;
    }
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

/// A write acknowledged with 200: key, value, when.
pub type Ack = (String, String, std::time::Instant);

/// `n` writers, each PUTting fresh keys (`w{writer}-{n}`) until stopped,
/// spread over `urls` and moving to the next node on any failure (a killed
/// node, 503, timeout: not acknowledged). Bounded by `stop` and a count.
pub struct Writers {
    acks: std::rc::Rc<std::cell::RefCell<Vec<Ack>>>,
    /// Failed attempts by HTTP status (or "no_answer").
    fails: std::rc::Rc<std::cell::RefCell<std::collections::BTreeMap<String, usize>>>,
    stop: std::rc::Rc<std::cell::Cell<bool>>,
    handles: Vec<actix_rt::task::JoinHandle<()>>,
}

impl Writers {
    pub fn start(urls: Vec<String>, n: usize, timeout_ms: u64) -> Self {
        let urls = std::rc::Rc::new(urls);
        let acks: std::rc::Rc<std::cell::RefCell<Vec<Ack>>> = Default::default();
        let stop: std::rc::Rc<std::cell::Cell<bool>> = Default::default();
        let fails: std::rc::Rc<std::cell::RefCell<std::collections::BTreeMap<String, usize>>> = Default::default();
        let client = awc::Client::builder().timeout(Duration::from_millis(timeout_ms + 1000)).finish();
        let handles = (0..n)
            .map(|w| {
                let (urls, acks, stop, client) = (urls.clone(), acks.clone(), stop.clone(), client.clone());
                let fails = fails.clone();
                actix_rt::spawn(async move {
                    let mut target = w % urls.len();
                    for i in 0..100_000u64 {
                        if stop.get() {
                            break;
                        }
                        let (key, value) = (format!("w{w}-{i}"), format!("value-{w}-{i}"));
                        let res = client
                            .put(format!("{}/v1/kv/{key}", urls[target]))
                            .insert_header(("X-Request-Timeout", timeout_ms.to_string()))
                            .send_body(value.clone())
                            .await;
                        match res {
                            Ok(r) if r.status() == StatusCode::OK => {
                                acks.borrow_mut().push((key, value, std::time::Instant::now()))
                            }
                            other => {
                                let label = other.map_or("no_answer".to_string(), |r| r.status().as_u16().to_string());
                                *fails.borrow_mut().entry(label).or_default() += 1;
                                target = (target + 1) % urls.len();
                                actix_rt::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Writers { acks, fails, stop, handles }
    }

    pub fn acked(&self) -> usize {
        self.acks.borrow().len()
    }

    /// Stops the writers and returns every acknowledged write, in order.
    pub async fn stop(self) -> Vec<Ack> {
        self.stop_counting().await.0
    }

    /// Like [`Writers::stop`], with the failed attempts by HTTP status.
    pub async fn stop_counting(self) -> (Vec<Ack>, std::collections::BTreeMap<String, usize>) {
        self.stop.set(true);
        for h in self.handles {
            h.await.expect("writer task");
        }
        (self.acks.take(), self.fails.take())
    }
}

/// The acknowledged writes that a linearizable read (spread over `urls`)
/// does not return with their value.
pub async fn lost_writes(acks: &[Ack], urls: &[String]) -> Vec<String> {
    let mut lost = Vec::new();
    for chunk in acks.chunks(64) {
        let reads = chunk.iter().enumerate().map(|(j, (k, _, _))| get(&urls[j % urls.len()], k));
        for ((k, v, _), r) in chunk.iter().zip(futures::future::join_all(reads).await) {
            if r.status != StatusCode::OK || r.body != v.as_bytes() {
                lost.push(k.clone());
            }
        }
    }
    lost
}

/// Waits for a child process without blocking the runtime that serves the
/// cluster (polls every 20 ms).
pub async fn wait_child(c: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = c.try_wait().expect("try_wait") {
            return s;
        }
        assert!(start.elapsed() < within, "child did not exit within {within:?}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A GET that treats a node not (yet) listening, or any non-200, as "no
/// answer" (a restarting process).
pub async fn try_get(url: &str) -> Option<Vec<u8>> {
    let client = awc::Client::builder().timeout(Duration::from_secs(3)).finish();
    let mut r = client.get(url).send().await.ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    r.body().limit(8 * 1024 * 1024).await.ok().map(|b| b.to_vec())
}

/// The JSON a GET of `url` + `path` answers, through [`try_get`].
pub async fn json_of(url: &str, path: &str) -> Option<serde_json::Value> {
    serde_json::from_slice(&try_get(&format!("{url}{path}")).await?).ok()
}

/// A stale read through [`try_get`].
pub async fn stale_body(url: &str, key: &str) -> Option<Vec<u8>> {
    try_get(&format!("{url}/v1/kv/{key}?consistency=stale")).await
}

/// Copies every node's log to `<tmp>/ringstore-<what>-failure-<pid>/`, so
/// a failed process test leaves its evidence behind; returns the folder.
pub fn keep_logs(c: &ringstore_testkit::ProcCluster, what: &str) -> std::path::PathBuf {
    let keep = std::env::temp_dir().join(format!("ringstore-{what}-failure-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&keep);
    for id in c.ids() {
        let _ = std::fs::copy(c.log_path(id), keep.join(format!("node-{id}.log")));
    }
    keep
}
