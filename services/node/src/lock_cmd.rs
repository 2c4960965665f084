//! `ringstore lock NAME [--ttl 10s] [--wait 60s] [--grace 10s] -- COMMAND...`:
//! runs COMMAND while holding the lock, and never lets it run without it.
//!
//! - The command gets `RINGSTORE_LOCK_NAME`, `RINGSTORE_LOCK_TOKEN` (the
//!   fencing token) and `RINGSTORE_FENCING_TOKEN` (`NAME:TOKEN`, the
//!   `Fencing-Token` header's format) to fence what it writes.
//! - The lease is refreshed every quarter of its TTL, each attempt bounded
//!   by that quarter, in the background of everything else.
//! - SIGTERM, SIGINT and SIGHUP are passed on to the command; if it has not
//!   exited after `--grace`, it gets SIGKILL. Then the lock is released and
//!   `ringstore lock` exits with the command's status (128 + signal if a
//!   signal ended it), as `flock`, `consul lock` and `etcdctl lock` do.
//! - If the lease cannot be renewed, the command is sent SIGTERM when less
//!   than a quarter of the TTL is left, and SIGKILL just before the lease
//!   ends (whatever the grace): after that the lock may be granted to
//!   someone else. The failure is printed.
//! - A command that cannot be started releases the lock at once (exit 127).
//! - If `ringstore lock` itself is killed with SIGKILL, the kernel kills the
//!   command too (`PR_SET_PDEATHSIG`): no orphan keeps running.
//! - 75 (`EX_TEMPFAIL`): the lock was not acquired within `--wait`.
//!
//! The decision of what to do to the command at each moment is the pure
//! [`Supervision::step`]; the loop only waits, asks it, and acts.

use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use ringstore_client::{Lease, LockClient, LockError};
use tokio::signal::unix::{signal, SignalKind};
use tracing::warn;

/// Exit status when the lock was not acquired (BSD `EX_TEMPFAIL`).
pub const EXIT_NOT_ACQUIRED: i32 = 75;
/// Exit status when the command could not be started (as shells use).
pub const EXIT_NOT_STARTED: i32 = 127;
/// Lease refreshes per TTL; the command is told to stop when less than
/// one such period of lease is left, so two refreshes may fail first.
const REFRESHES_PER_TTL: u32 = 4;
/// How often the loop looks at the command and the lease.
const POLL: Duration = Duration::from_millis(20);
/// Longest a release after the command ended may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args, Debug, Clone)]
pub struct LockArgs {
    /// Lock name.
    pub name: String,
    /// Lease length, with a unit (500ms, 10s, 2m); refreshed every quarter of it.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ttl: Duration,
    /// How long to wait in the lock's queue, with a unit.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub wait: Duration,
    /// After passing on SIGTERM/SIGINT/SIGHUP, how long the command may take
    /// to exit before SIGKILL (never beyond the lease).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
    /// A label for people (status, logs) [default: ringstore-lock-<pid>].
    /// Not an identity: the lock is held by this process's session.
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
    /// A token with the write scope, if the nodes require tokens.
    #[arg(long, env = "RINGSTORE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA (PEM), for https:// endpoints.
    #[arg(long, env = "RINGSTORE_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// The command to run while holding the lock.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// A duration with its unit: `500ms`, `10s`, `2m`. A bare number is
/// refused: `--ttl 500` could mean 500 ms or 500 s.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?} (e.g. 500ms, 10s, 2m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "" => Err(format!("{s:?} has no unit: write {n}ms, {n}s or {n}m")),
        _ => Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    }
}

/// What to do to the command now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Wait,
    /// Ask it to stop (SIGTERM): the lease is running out.
    Term,
    Kill,
}

/// When the command must stop, from the lease alone (signals from outside
/// are passed on by the loop, which then says when it told the command).
#[derive(Debug, Clone, Copy)]
pub struct Supervision {
    pub grace: Duration,
    /// Less lease than this left: ask the command to stop.
    pub stop_margin: Duration,
    /// Less lease than this left: kill it, the lock may be someone else's soon.
    pub kill_margin: Duration,
}

impl Supervision {
    pub fn for_ttl(ttl: Duration, grace: Duration) -> Self {
        Supervision { grace, stop_margin: ttl / REFRESHES_PER_TTL, kill_margin: (ttl / 10).max(POLL * 2).min(ttl / 2) }
    }

    /// `told`: when the command was first asked to stop, if it was.
    pub fn step(&self, now: Instant, valid_until: Instant, told: Option<Instant>) -> Step {
        let left = valid_until.saturating_duration_since(now);
        if left <= self.kill_margin {
            return Step::Kill;
        }
        match told {
            Some(t) if now.saturating_duration_since(t) >= self.grace => Step::Kill,
            Some(_) => Step::Wait,
            None if left <= self.stop_margin => Step::Term,
            None => Step::Wait,
        }
    }
}

fn send(child: &Child, sig: i32) {
    // The child is ours and not yet reaped, so its pid cannot be reused.
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) with a valid signal number; no memory is shared.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn spawn(a: &LockArgs, lease: &Lease) -> std::io::Result<Child> {
    let mut cmd = Command::new(&a.command[0]);
    cmd.args(&a.command[1..])
        .env("RINGSTORE_LOCK_NAME", &a.name)
        .env("RINGSTORE_LOCK_TOKEN", lease.token.to_string())
        .env("RINGSTORE_FENCING_TOKEN", format!("{}:{}", a.name, lease.token))
        .stdin(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            // Should `ringstore lock` die without cleaning up (SIGKILL),
            // the command dies with it rather than run without the lock.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

async fn release(client: &LockClient, lease: &Lease, name: &str) {
    if Instant::now() >= lease.valid_until {
        return; // ended already; a release could only be refused
    }
    match tokio::time::timeout(RELEASE_TIMEOUT, client.release(lease)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!("releasing lock {name}: {e}"),
        Err(_) => warn!("releasing lock {name}: no answer within {RELEASE_TIMEOUT:?}; the lease will end it"),
    }
}

/// Returns the exit status for the process.
pub async fn run(a: LockArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(a.ttl >= Duration::from_millis(100), "--ttl must be at least 100ms");
    // Listen before anything can be started, so no signal is missed.
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    let mut client = LockClient::new(a.endpoints.clone());
    if let Some(t) = &a.token {
        client = client.with_token(t);
    }
    if let Some(ca) = &a.ca {
        client = client.with_tls(&ringstore_client::tls::client_config(ca).map_err(anyhow::Error::msg)?);
    }
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
    let mut child = match spawn(&a, &lease) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringstore lock: cannot start {:?}: {e}; releasing {}", a.command[0], a.name);
            release(&client, &lease, &a.name).await;
            return Ok(EXIT_NOT_STARTED);
        }
    };
    let policy = Supervision::for_ttl(a.ttl, a.grace);
    let every = a.ttl / REFRESHES_PER_TTL;
    let mut next_refresh = Instant::now() + every;
    let mut told: Option<Instant> = None;
    let mut killed = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        let now = Instant::now();
        match policy.step(now, lease.valid_until, told) {
            Step::Wait => {}
            Step::Term => {
                eprintln!(
                    "ringstore lock: the lease on {} could not be renewed and ends in {:?}; stopping the command",
                    a.name,
                    lease.valid_until.saturating_duration_since(now)
                );
                send(&child, libc::SIGTERM);
                told = Some(now);
            }
            Step::Kill if !killed => {
                eprintln!("ringstore lock: the command did not stop in time; killing it");
                send(&child, libc::SIGKILL);
                killed = true;
            }
            Step::Kill => {}
        }
        // One refresh at a time, bounded by the refresh period, while
        // signals and the command are still watched.
        let refresh = async {
            if told.is_some() || Instant::now() < next_refresh {
                return std::future::pending().await;
            }
            tokio::time::timeout(every, client.refresh(&lease, a.ttl)).await
        };
        tokio::select! {
            r = refresh => {
                next_refresh = Instant::now() + every;
                match r {
                    Ok(Ok(l)) => lease = l,
                    Ok(Err(e)) => warn!("refreshing lock {}: {e}", a.name),
                    Err(_) => warn!("refreshing lock {}: no answer within {every:?}", a.name),
                }
            }
            _ = term.recv() => { send(&child, libc::SIGTERM); told.get_or_insert(Instant::now()); }
            _ = int.recv() => { send(&child, libc::SIGINT); told.get_or_insert(Instant::now()); }
            _ = hup.recv() => { send(&child, libc::SIGHUP); told.get_or_insert(Instant::now()); }
            _ = tokio::time::sleep(POLL) => {}
        }
    };
    release(&client, &lease, &a.name).await;
    Ok(exit_code(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("500").unwrap_err().contains("no unit"));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn the_command_is_stopped_before_the_lease_ends_and_killed_at_the_margin() {
        let p = Supervision::for_ttl(Duration::from_secs(4), Duration::from_secs(10));
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(4);
        assert_eq!(p.step(t0, until, None), Step::Wait);
        assert_eq!(p.step(t0 + Duration::from_millis(2900), until, None), Step::Wait);
        assert_eq!(p.step(t0 + Duration::from_millis(3000), until, None), Step::Term, "a quarter left");
        let told = Some(t0 + Duration::from_millis(3000));
        assert_eq!(p.step(t0 + Duration::from_millis(3500), until, told), Step::Wait);
        assert_eq!(
            p.step(t0 + Duration::from_millis(3600), until, told),
            Step::Kill,
            "the grace never outlives the lease"
        );
    }

    #[test]
    fn a_signalled_command_gets_its_grace_then_sigkill() {
        let p = Supervision::for_ttl(Duration::from_secs(60), Duration::from_secs(2));
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(60);
        assert_eq!(p.step(t0 + Duration::from_secs(1), until, Some(t0)), Step::Wait);
        assert_eq!(p.step(t0 + Duration::from_secs(2), until, Some(t0)), Step::Kill);
    }
}
