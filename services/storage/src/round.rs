//! The storage thread's write round: TiKV's batch-system idea on actix.
//!
//! Every replica on a storage thread that has a Ready in the same turn of
//! the thread's event loop stages it into one shared `WriteBatch` (phase 1,
//! [`stage`]) and then pauses its mailbox. Once those replicas have run,
//! the thread writes the batch once, asks the node's WAL syncer once for
//! all of them, and wakes each replica, which finishes its Ready (phase 2:
//! in-memory views, replies, advance). N replicas' rounds cost one RocksDB
//! write and one sync request instead of N, so a node with 16 shards pays
//! for a round about what a node with one does.
//!
//! A replica processes nothing between its two phases: raft-rs wants no
//! entry appended between `ready()` and the advance that follows, and the
//! replica's in-memory views must not run ahead of its disk.
//!
//! Replicas of one thread share its event loop and so this module's
//! thread-local state; no lock is taken. The bookkeeping ([`Round`]) is
//! plain data, unit-tested without a runtime.

use std::cell::RefCell;
use std::sync::Arc;

use actix::Addr;
use rocksdb::WriteBatch;
use tokio::sync::oneshot;

use crate::actor::StorageActor;
use crate::engine::Engine;
use crate::messages::Persisted;

/// Who is in one round: the wake-ups of its members (`D`), and the
/// members that wait for the fsync with their Ready numbers (`P`).
#[derive(Debug)]
pub(crate) struct Round<D, P> {
    done: Vec<D>,
    persist: Vec<P>,
}

impl<D, P> Default for Round<D, P> {
    fn default() -> Self {
        Round { done: Vec::new(), persist: Vec::new() }
    }
}

impl<D, P> Round<D, P> {
    /// Adds a member; `persist` if the round must be made durable for it.
    /// Returns whether it is the round's first member (then the caller
    /// schedules the write).
    pub(crate) fn join(&mut self, done: D, persist: Option<P>) -> bool {
        let first = self.done.is_empty();
        self.done.push(done);
        self.persist.extend(persist);
        first
    }

    pub(crate) fn len(&self) -> usize {
        self.done.len()
    }

    /// Everyone to wake once the round is written, and who of them then
    /// waits for the fsync.
    pub(crate) fn finish(self) -> (Vec<D>, Vec<P>) {
        (self.done, self.persist)
    }
}

type Members = Round<oneshot::Sender<()>, (Addr<StorageActor>, u64)>;

/// Scheduler turns a round waits for more members before it is written.
const ROUND_GATHER_YIELDS: usize = 2;

/// A round on this thread, for one node's engine (a test's runtime may
/// host replicas of several in-process nodes).
struct Pending {
    engine: Arc<Engine>,
    batch: WriteBatch,
    round: Members,
}

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's shared batch for `engine`: phase 1 of a
/// replica's Ready. Nothing else may touch the round inside `f`.
pub(crate) fn stage<R>(engine: &Arc<Engine>, f: impl FnOnce(&mut WriteBatch) -> R) -> R {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let i = match p.iter().position(|x| Arc::ptr_eq(&x.engine, engine)) {
            Some(i) => i,
            None => {
                p.push(Pending { engine: engine.clone(), batch: engine.batch(), round: Round::default() });
                p.len() - 1
            }
        };
        f(&mut p[i].batch)
    })
}

/// Enters a replica into the round it staged into: `done` fires once the
/// round is written; `persist` (its address and Ready number) if it waits
/// for the fsync too. The first member schedules the write, which runs
/// [`ROUND_GATHER_YIELDS`] scheduler turns later, after the replicas woken
/// on this thread meanwhile have had their turn (they join the same round).
pub(crate) fn join(engine: &Arc<Engine>, done: oneshot::Sender<()>, persist: Option<(Addr<StorageActor>, u64)>) {
    let first = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let Some(x) = p.iter_mut().find(|x| Arc::ptr_eq(&x.engine, engine)) else {
            // stage() always precedes join(): a missing round is a bug.
            unreachable!("a replica joined a round it did not stage into");
        };
        x.round.join(done, persist)
    });
    if first {
        let engine = engine.clone();
        actix::spawn(async move {
            // Two turns of the thread's scheduler first: replicas whose
            // messages arrived from other threads meanwhile stage into this
            // round too (6.6 replicas per write instead of 1.05 at 16
            // shards under load; docs/BENCHMARKS.md). Idle, it costs
            // microseconds.
            for _ in 0..ROUND_GATHER_YIELDS {
                tokio::task::yield_now().await;
            }
            write(&engine)
        });
    }
}

/// Writes this thread's round for `engine`, wakes its members, and asks
/// for one fsync on behalf of those that need it.
fn write(engine: &Arc<Engine>) {
    let taken = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(|x| Arc::ptr_eq(&x.engine, engine))?;
        Some(p.swap_remove(i))
    });
    let Some(Pending { engine, batch, round }) = taken else { return };
    engine.write_metrics().round_replicas.observe(round.len() as f64);
    let (done, persist) = round.finish();
    if let Err(e) = engine.write(batch, false) {
        // Raft's durability promise is unknowable after a failed write.
        tracing::error!("fatal storage error while writing a thread round: {e}");
        std::process::abort();
    }
    // Members are woken before the sync is asked for: a replica finishes
    // (advances) its Ready before it may hear that Ready is persisted.
    for d in done {
        let _ = d.send(()); // a replica that stopped meanwhile needs nothing
    }
    if !persist.is_empty() {
        engine.sync_wal_async(Box::new(move |result| {
            for (addr, number) in persist {
                addr.do_send(Persisted { number, result: result.clone() });
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_member_schedules_and_only_persisting_members_wait_for_the_sync() {
        let mut r: Round<&str, (&str, u64)> = Round::default();
        assert_eq!(r.len(), 0);
        assert!(r.join("a", Some(("a", 7))));
        assert!(!r.join("b", None));
        assert!(!r.join("c", Some(("c", 3))));
        assert_eq!(r.len(), 3);
        let (done, persist) = r.finish();
        assert_eq!(done, vec!["a", "b", "c"]);
        assert_eq!(persist, vec![("a", 7), ("c", 3)]);
    }

    #[test]
    fn a_round_without_persisting_members_asks_for_no_sync() {
        let mut r: Round<u32, (u32, u64)> = Round::default();
        r.join(1, None);
        r.join(2, None);
        let (done, persist) = r.finish();
        assert_eq!(done, vec![1, 2]);
        assert!(persist.is_empty());
    }
}
