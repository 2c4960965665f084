//! Issue 18, hole 2: `ringstore lock -- cmd` under signals and a lost
//! lease, on three `ringstore node` processes. `kill -TERM` of `ringstore
//! lock` used to exit 143 without releasing and leave its command running
//! without the lock; now the command is told, waited for (then killed),
//! the lock released, and the command's status returned; a lease that
//! cannot be renewed stops the command before the lock can be granted
//! elsewhere; and no command outlives `ringstore lock`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use ringstore_client::LockError;
use ringstore_testkit::ProcCluster;

const BIN: &str = env!("CARGO_BIN_EXE_ringstore");

/// A command that records its pid, and on SIGTERM/SIGINT the wall-clock
/// time (ns) it stopped, then exits 7. With `stubborn` it ignores both.
fn script(dir: &Path, stubborn: bool) -> String {
    let d = dir.display();
    let trap = if stubborn {
        "trap '' TERM INT".to_string()
    } else {
        format!("trap 'date +%s%N > {d}/stopped; exit 7' TERM INT")
    };
    format!("echo $$ > {d}/pid; echo $RINGSTORE_FENCING_TOKEN > {d}/token; {trap}; while :; do sleep 0.05; done")
}

fn lock_cmd(endpoints: &str, name: &str, ttl: &str, grace: &str, dir: &Path, stubborn: bool) -> Child {
    Command::new(BIN)
        .args(["lock", name, "--ttl", ttl, "--grace", grace, "--wait", "10s", "--endpoints", endpoints])
        .args(["--", "sh", "-c", &script(dir, stubborn)])
        .env("RINGSTORE_LOG", "warn")
        .spawn()
        .expect("ringstore lock starts")
}

async fn read_when_written(p: &Path, within: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(p) {
            if s.ends_with('\n') {
                return s.trim().to_string();
            }
        }
        assert!(start.elapsed() < within, "{} not written within {within:?}", p.display());
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: &str) -> bool {
    // A reaped process has no /proc entry; a zombie would say "Z".
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

async fn lock_json(url: &str, name: &str) -> serde_json::Value {
    call("GET", url, &format!("/v1/locks/{name}"), &[("x-request-timeout", "10000")], vec![]).await.json()
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

struct Fixture {
    c: ProcCluster,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
        let c = ProcCluster::start(Path::new(BIN), 3, &["--shards", "1"], None).expect("three processes");
        c.wait_leader(Duration::from_secs(30)).await.expect("a leader");
        Fixture { c, dir: tempfile::tempdir().unwrap() }
    }

    fn sub(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

#[actix_rt::test]
async fn ringstore_lock_passes_sigterm_and_sigint_to_its_command_then_releases_and_exits_with_its_status() {
    let f = Fixture::start().await;
    let url = f.c.url(1);
    for (i, sig) in ["-TERM", "-INT", "-HUP"].into_iter().enumerate() {
        let name = format!("signals-{i}");
        let dir = f.sub(&name);
        // --ttl 30s: were the lock not released, it would stay held.
        let mut lock = lock_cmd(&url, &name, "30s", "5s", &dir, false);
        let pid = read_when_written(&dir.join("pid"), Duration::from_secs(20)).await;
        let token = read_when_written(&dir.join("token"), Duration::from_secs(5)).await;
        assert!(token.starts_with(&format!("{name}:")), "the command gets its fencing token: {token}");
        assert_eq!(lock_json(&url, &name).await["held"], true);
        signal(lock.id(), sig);
        let status = wait_child(&mut lock, Duration::from_secs(10)).await;
        if sig == "-HUP" {
            // sh's default for SIGHUP (not trapped here) is to die of it.
            assert_eq!(status.code(), Some(128 + 1), "{sig}: the command's status is passed through");
        } else {
            assert_eq!(status.code(), Some(7), "{sig}: the command's status is passed through");
            assert!(dir.join("stopped").exists(), "{sig} reached the command");
        }
        assert!(!alive(&pid), "{sig}: no orphan");
        assert_eq!(lock_json(&url, &name).await["held"], false, "{sig}: released at once, not at the end of the lease");
    }
}

#[actix_rt::test]
async fn ringstore_lock_kills_a_command_that_ignores_the_signal_after_the_grace() {
    let f = Fixture::start().await;
    let url = f.c.url(2);
    let dir = f.sub("stubborn");
    let mut lock = lock_cmd(&url, "stubborn", "30s", "1s", &dir, true);
    let pid = read_when_written(&dir.join("pid"), Duration::from_secs(20)).await;
    let sent = Instant::now();
    signal(lock.id(), "-TERM");
    let status = wait_child(&mut lock, Duration::from_secs(10)).await;
    assert!(sent.elapsed() >= Duration::from_millis(900), "the command had its grace");
    assert_eq!(status.code(), Some(128 + 9), "SIGKILL ended it");
    assert!(!alive(&pid));
    assert_eq!(lock_json(&url, "stubborn").await["held"], false);

    // kill -9 of `ringstore lock` itself: the kernel kills the command.
    let dir = f.sub("orphan");
    let mut lock = lock_cmd(&url, "orphan", "30s", "1s", &dir, true);
    let pid = read_when_written(&dir.join("pid"), Duration::from_secs(20)).await;
    signal(lock.id(), "-KILL");
    wait_child(&mut lock, Duration::from_secs(5)).await;
    eventually(Duration::from_secs(3), "the command dies with ringstore lock", || {
        let pid = pid.clone();
        async move { !alive(&pid) }
    })
    .await;

    // A command that cannot be started: the lock is released at once, 127.
    let mut lock = Command::new(BIN)
        .args(["lock", "nostart", "--ttl", "30s", "--endpoints", &url, "--", "/nonexistent/command"])
        .env("RINGSTORE_LOG", "warn")
        .spawn()
        .unwrap();
    assert_eq!(wait_child(&mut lock, Duration::from_secs(10)).await.code(), Some(127));
    let s = lock_json(&url, "nostart").await;
    assert_eq!((s["held"].as_bool(), s["last_token"].as_u64().is_some_and(|t| t > 0)), (Some(false), true), "{s}");
}

#[actix_rt::test]
async fn ringstore_lock_stops_its_command_before_a_lease_it_cannot_renew_is_granted_elsewhere() {
    let f = Fixture::start().await;
    // `ringstore lock` talks to node 3 only, which is then paused: its
    // refreshes hang and the lease runs out.
    let (talks_to, other) = (3, 1);
    let dir = f.sub("lost");
    let mut lock = lock_cmd(&f.c.url(talks_to), "lost", "2s", "10s", &dir, false);
    let pid = read_when_written(&dir.join("pid"), Duration::from_secs(20)).await;
    f.c.pause(talks_to).unwrap();
    // Another client, through another node, waits for the lock.
    // Its first try may be forwarded to the paused node (if it led the
    // lock's shard) and come back 503, outcome unknown; it tries again,
    // as a client honouring Retry-After does.
    let client = ringstore_client::LockClient::new(vec![f.c.url(other)]);
    let start = Instant::now();
    let next = loop {
        match client.acquire("lost", "next", Duration::from_secs(5), Duration::from_secs(10)).await {
            Ok(l) => break l,
            Err(e @ (LockError::Server { status: 503, .. } | LockError::Transport(_))) => {
                assert!(start.elapsed() < Duration::from_secs(30), "not granted within 30 s: {e}");
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the lock is granted once the lease ends: {e}"),
        }
    };
    let granted_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let stopped_ns: u128 = read_when_written(&dir.join("stopped"), Duration::from_secs(1)).await.parse().unwrap();
    assert!(
        stopped_ns < granted_ns,
        "the command stopped {} ms before the lock was granted elsewhere",
        (granted_ns.saturating_sub(stopped_ns)) / 1_000_000
    );
    assert!(!alive(&pid), "and is gone");
    f.c.resume(talks_to).unwrap();
    let status = wait_child(&mut lock, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(7));
    // The new holder was not disturbed by a late release.
    let s = client.status("lost").await.unwrap();
    assert_eq!((s.holder.as_deref(), s.token), (Some("next"), Some(next.token)));
}
