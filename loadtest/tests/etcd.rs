//! The etcd driver against a real etcd (Debian's etcd-server, installed by
//! scripts/install-deps.sh): a single member on free loopback ports, a
//! 2-second workload A; the report must show both operations, no errors.
//! Fails, never skips, when etcd is missing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringstore_testkit::{free_port, KillOnDrop};

#[test]
fn the_load_generator_drives_a_real_etcd() {
    let etcd = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("etcd is not installed: run scripts/install-deps.sh (make test does)");
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let _etcd = KillOnDrop(
        Command::new(etcd)
            .args(["--name", "t1", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t1={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts"),
    );
    // Wait until etcd accepts connections (bounded).
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "etcd did not listen within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = dir.path().join("etcd.json");
    let status = Command::new(env!("CARGO_BIN_EXE_ringstore-loadtest"))
        .args(["--system", "etcd", "--endpoints", &client_url, "--workload", "a", "--keys", "100"])
        .args(["--preload", "50", "--clients", "4", "--duration", "2s", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "loadtest against etcd exited with {status}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    for op in ["get", "put"] {
        let s = &report["operations"][op];
        assert!(s["ops_per_sec"].as_f64().unwrap() > 0.0, "{op}: {s}");
        assert_eq!(s["errors"].as_u64(), Some(0), "{op}: {s}");
        assert!(s["p50_ms"].as_f64().unwrap() <= s["p99_ms"].as_f64().unwrap());
    }
}
