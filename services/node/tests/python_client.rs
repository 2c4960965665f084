//! The Python client (`clients/python`) against a real in-process
//! cluster: its unittest suite runs with the cluster's endpoints.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

#[actix_rt::test]
async fn the_python_client_passes_its_suite() {
    // Four shards, so prefix watches and cross-shard transactions span some.
    let tc = start(|c| c.shards = 4).await;
    let urls: Vec<String> = tc.cluster.node_ids().into_iter().filter_map(|n| tc.cluster.url(n)).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/python");
    let run = actix_rt::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-m", "unittest", "discover", "-v", "-s", "tests"])
            .current_dir(&root)
            .env("PYTHONPATH", &root)
            .env("RINGSTORE_ENDPOINTS", urls.join(","))
            .output()
    });
    let out = actix_rt::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the suite ends within 2 minutes")
        .expect("the runner thread")
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python suite failed:\n{text}");
    assert!(text.contains("Ran 7 tests"), "{text}");
    tc.shutdown().await;
}
