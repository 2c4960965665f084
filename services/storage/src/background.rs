//! Threads for bulk scans off the storage threads: follower snapshots and
//! key counts after a split. They run at a lower CPU priority, so on a
//! small machine the storage threads (every replica's Raft rounds and
//! client requests) come first, and their scans skip the block cache
//! (`EngineSnapshot::scan`), so the hot working set stays cached. A key
//! count only delays a number in a status, so it runs at the lowest
//! priority; a follower snapshot holds up a replica, so it runs above.

use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

/// `nice` of the thread building a follower snapshot (0 is the storage
/// threads').
pub const SNAPSHOT_NICE: i32 = 10;
/// `nice` of a key count.
pub const COUNT_NICE: i32 = 19;

/// Read rate of a key count. A lower priority is not enough on its own:
/// six counts at full speed after a split (two shards, three replicas)
/// held up every node's requests for ~40 ms as they ended, on a machine
/// whose replicas share one disk and two cores. At this rate a 128 MiB
/// side counts in 4 s, which delays only the Rebalancer's next split.
pub const COUNT_BYTES_PER_SEC: u64 = 32 << 20;

/// How long a scan that has read `done` bytes after `elapsed` sleeps to
/// keep to `per_sec` (zero when it is behind).
pub fn pause(done: u64, per_sec: u64, elapsed: Duration) -> Duration {
    let due = Duration::from_secs_f64(done as f64 / per_sec.max(1) as f64);
    due.saturating_sub(elapsed)
}

/// Spawns `f` on a named thread at `nice`.
pub fn spawn<T: Send + 'static>(
    name: String,
    nice: i32,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name).spawn(move || {
        lower_priority(nice);
        f()
    })
}

/// Lowers this thread's priority (Linux schedules threads one by one, so
/// `setpriority` on the thread id touches only this thread). Best effort:
/// a refusal leaves it at the normal priority.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take no pointers and only read their
    // integer arguments.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_paced_scan_sleeps_only_when_ahead_of_its_rate() {
        let mib = 1 << 20;
        assert_eq!(super::pause(32 * mib, 32 * mib, Duration::ZERO), Duration::from_secs(1));
        assert_eq!(super::pause(16 * mib, 32 * mib, Duration::from_millis(200)), Duration::from_millis(300));
        assert_eq!(super::pause(16 * mib, 32 * mib, Duration::from_secs(2)), Duration::ZERO, "behind: no sleep");
        assert_eq!(super::pause(1, 0, Duration::ZERO), Duration::from_secs(1), "a zero rate is one byte a second");
    }

    #[test]
    fn a_background_thread_runs_at_the_lower_priority() {
        let nice = super::spawn("nice-test".into(), super::COUNT_NICE, || {
            // SAFETY: as in `lower_priority`.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) }
        })
        .expect("spawn")
        .join()
        .expect("join");
        assert_eq!(nice, super::COUNT_NICE);
    }
}
