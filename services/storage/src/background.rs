//! Threads for bulk scans off the storage threads: follower snapshots and
//! key counts after a split. They run at a lower CPU priority, so on a
//! small machine the storage threads (every replica's Raft rounds and
//! client requests) come first, and their scans skip the block cache
//! (`EngineSnapshot::scan`), so the hot working set stays cached.

use std::io;
use std::thread::JoinHandle;

/// `nice` value of the background threads (0 is the storage threads').
pub const BACKGROUND_NICE: i32 = 10;

/// Spawns `f` on a named thread of lower priority.
pub fn spawn<T: Send + 'static>(name: String, f: impl FnOnce() -> T + Send + 'static) -> io::Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name).spawn(move || {
        lower_priority();
        f()
    })
}

/// Lowers this thread's priority (Linux schedules threads one by one, so
/// `setpriority` on the thread id touches only this thread). Best effort:
/// a refusal leaves it at the normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take no pointers and only read their
    // integer arguments.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn a_background_thread_runs_at_the_lower_priority() {
        let nice = super::spawn("nice-test".into(), || {
            // SAFETY: as in `lower_priority`.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) }
        })
        .expect("spawn")
        .join()
        .expect("join");
        assert_eq!(nice, super::BACKGROUND_NICE);
    }
}
