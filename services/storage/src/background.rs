//! Threads for bulk scans off the storage threads: follower snapshots and
//! key counts after a split. They run at a lower CPU priority, so on a
//! small machine the storage threads (every replica's Raft rounds and
//! client requests) come first, and their scans skip the block cache
//! (`EngineSnapshot::scan`), so the hot working set stays cached. A key
//! count only delays a number in a status, so it runs at the lowest
//! priority; a follower snapshot holds up a replica, so it runs above.

use std::io;
use std::thread::JoinHandle;

/// `nice` of the thread building a follower snapshot (0 is the storage
/// threads').
pub const SNAPSHOT_NICE: i32 = 10;
/// `nice` of a key count.
pub const COUNT_NICE: i32 = 19;

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
