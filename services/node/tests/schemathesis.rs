//! schemathesis (PyPI) against docs/openapi.json on a running cluster with
//! tokens required: every response it provokes, from valid and invalid
//! requests alike, must be documented (status, content type, headers,
//! body schema) and none may be a 5xx. At least 10,000 requests.
//!
//! Two passes: a read/write token over every route (admin routes must
//! answer a documented 403), then an admin token over the admin routes
//! that only read (the ones that change membership, drain or hand over
//! would take the test cluster apart). The watch streams are left out:
//! they are unbounded by design (a progress line every 10 s keeps any read
//! timeout from firing); tests/watch.rs covers them.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ringstore_api::auth::{hash_token, Auth};

const APP: &str = "rs_schemathesis-app-token";
const OPS: &str = "rs_schemathesis-ops-token";
/// Generated cases per operation and phase; with 25 operations this makes
/// well over 10,000 requests.
const MAX_EXAMPLES: &str = "320";

/// Requests node `url` has answered so far (its own request counter).
async fn requests_served(url: &str) -> f64 {
    call("GET", url, "/metrics", &[], vec![])
        .await
        .text()
        .lines()
        .filter(|l| l.starts_with("ringstore_http_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn schemathesis(url: &str, token: &str, extra: &[&str]) -> (bool, String) {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let mut cmd = Command::new("schemathesis");
    cmd.arg("run")
        .arg(&spec)
        .args(["--url", url])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
        ])
        // One worker: with two, hypothesis once crashed inside CPython's
        // ast.parse from two threads ("AST constructor recursion depth
        // mismatch"), a tool failure rather than an API one.
        .args(["--workers", "1", "--max-examples", MAX_EXAMPLES, "--seed", "20261204"])
        // Longer than the longest request (60 s): an acquire may rightly
        // wait up to 59 s in the queue of a lock an earlier case took.
        .args(["--request-timeout", "70"])
        .args(["--exclude-path-regex", "^/v1/watch", "--output-truncate", "true"])
        .args(extra);
    // No state from an earlier run (hypothesis' example database).
    let work = tempfile::tempdir().expect("temp dir");
    cmd.current_dir(work.path());
    let run = actix_rt::task::spawn_blocking(move || cmd.output());
    let out = actix_rt::time::timeout(Duration::from_secs(15 * 60), run)
        .await
        .expect("schemathesis ends within 15 minutes")
        .expect("the runner thread")
        .expect("schemathesis runs (scripts/install-deps.sh installs it)");
    drop(work);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[actix_rt::test]
async fn schemathesis_finds_no_server_error_or_undocumented_answer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    std::fs::write(
        &file,
        format!(
            "[[token]]\nname = \"app\"\nsha256 = \"{}\"\nscopes = [\"read\", \"write\"]\n\n\
             [[token]]\nname = \"ops\"\nsha256 = \"{}\"\nscopes = [\"admin\", \"read\"]\n",
            hash_token(APP),
            hash_token(OPS)
        ),
    )
    .unwrap();
    let auth = Arc::new(Auth::from_file(&file, false).unwrap());
    let tc = start(|c| {
        c.shards = 4;
        c.auth = auth;
    })
    .await;
    let url = tc.cluster.url(1).expect("node 1 serves HTTP");
    let before = requests_served(&url).await;

    let (ok, text) = schemathesis(&url, APP, &[]).await;
    let tail = last_lines(&text, 80);
    assert!(ok, "schemathesis found failures (read/write token):\n{tail}");
    let (ok, admin) =
        schemathesis(&url, OPS, &["--include-path-regex", "^/v1/(cluster|rebalance)$", "--include-method", "GET"])
            .await;
    assert!(ok, "schemathesis found failures (admin token, reading routes):\n{}", last_lines(&admin, 60));

    let served = requests_served(&url).await - before;
    println!("schemathesis: {served} requests answered with 0 failures\n{tail}");
    assert!(served >= 10_000.0, "only {served} requests were made; raise MAX_EXAMPLES");
    tc.shutdown().await;
}
