//! `ringstore lock NAME [--ttl 10s] [--wait 60s] -- COMMAND...`: runs
//! COMMAND while holding the lock.
//!
//! The lease is refreshed in the background every third of its TTL. The
//! command gets the fencing token in `RINGSTORE_LOCK_TOKEN` (and the name
//! in `RINGSTORE_LOCK_NAME`) to pass to what it protects, e.g. as a
//! `Fencing-Token` header. If the lease is lost (a refresh is refused, or
//! none succeeded before the local deadline), the command is sent SIGTERM:
//! it no longer holds the lock. The lock is released when the command
//! exits, and `ringstore lock` exits with the command's status (75 if the
//! lock could not be acquired within `--wait`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use ringstore_client::{LockClient, LockError};
use tracing::warn;

/// Exit status when the lock was not acquired (BSD `EX_TEMPFAIL`).
pub const EXIT_NOT_ACQUIRED: i32 = 75;

#[derive(Args, Debug, Clone)]
pub struct LockArgs {
    /// Lock name.
    pub name: String,
    /// Lease length; refreshed every third of it while COMMAND runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ttl: Duration,
    /// How long to wait in the lock's queue.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub wait: Duration,
    /// Owner id [default: ringstore-lock-<pid>].
    #[arg(long)]
    pub owner: Option<String>,
    /// Node URLs, comma-separated.
    #[arg(
        long,
        env = "RINGSTORE_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080,http://127.0.0.1:8081,http://127.0.0.1:8082"
    )]
    pub endpoints: Vec<String>,
    /// The command to run while holding the lock.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?} (e.g. 500ms, 10s, 2m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    }
}

/// Returns the exit status for the process.
pub async fn run(a: LockArgs) -> anyhow::Result<i32> {
    let client = LockClient::new(a.endpoints.clone());
    let owner = a.owner.clone().unwrap_or_else(|| format!("ringstore-lock-{}", std::process::id()));
    let mut lease = match client.acquire(&a.name, &owner, a.ttl, a.wait).await {
        Ok(l) => l,
        Err(LockError::Held { holder, lease_remaining_ms }) => {
            eprintln!(
                "ringstore lock: {} is held by {} (lease {} ms left); gave up after {:?}",
                a.name,
                holder.as_deref().unwrap_or("?"),
                lease_remaining_ms.unwrap_or(0),
                a.wait
            );
            return Ok(EXIT_NOT_ACQUIRED);
        }
        Err(e) => return Err(e).context("acquiring the lock"),
    };
    let mut child = Command::new(&a.command[0])
        .args(&a.command[1..])
        .env("RINGSTORE_LOCK_TOKEN", lease.token.to_string())
        .env("RINGSTORE_LOCK_NAME", &a.name)
        .stdin(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {:?}", a.command[0]))?;
    let every = (a.ttl / 3).max(Duration::from_millis(50));
    let mut next_refresh = Instant::now() + every;
    let mut lost = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if !lost && Instant::now() >= next_refresh {
            match client.refresh(&lease, a.ttl).await {
                Ok(l) => lease = l,
                Err(e) => warn!("refreshing lock {}: {e}", a.name),
            }
            next_refresh = Instant::now() + every;
        }
        if !lost && Instant::now() >= lease.valid_until {
            lost = true;
            eprintln!("ringstore lock: lost the lease on {}; stopping the command", a.name);
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    if !lost {
        if let Err(e) = client.release(&lease).await {
            warn!("releasing lock {}: {e}", a.name);
        }
    }
    #[cfg(unix)]
    let code = {
        use std::os::unix::process::ExitStatusExt;
        status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    };
    #[cfg(not(unix))]
    let code = status.code().unwrap_or(1);
    Ok(code)
}
