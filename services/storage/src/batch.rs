//! The storage thread's poll loop: TiKV's batch system on actix.
//!
//! A replica with work (a message stepped, a proposal, a tick, a sync that
//! finished) enters its thread's next round ([`mark`]). The round runs once
//! the thread has handled what was queued for it (after
//! [`ROUND_GATHER_YIELDS`] scheduler turns), and takes every replica
//! entered in it in one pass, per node (engine):
//! 1. each replica's Ready is staged into one shared `WriteBatch`;
//! 2. the batch is written once, and one WAL sync is asked for, on behalf
//!    of every Ready that Raft may count only once it is durable;
//! 3. each replica finishes its Ready: in-memory views, replies, advance;
//! 4. the Raft messages of every replica go out together, one batch per
//!    peer node ([`Transport::send_raft_many`]).
//!
//! The sync's answer comes back to the thread as one task that tells each
//! replica, not as one message per replica. N replicas' rounds cost one
//! RocksDB write, one sync request and one send per peer instead of N of
//! each, so a node with 16 shards pays for a round about what a node with
//! one does.
//!
//! A replica processes nothing between phases 1 and 3: raft-rs wants no
//! entry appended between `ready()` and its advance, and the replica's
//! in-memory views must not run ahead of its disk. The round is one
//! synchronous pass, so nothing can.
//!
//! Replicas live on their thread as `Rc<RefCell<Replica>>`, shared by the
//! actor that receives their messages and by this loop. Neither holds a
//! borrow across an await, and a round never runs inside a handler, so the
//! two never borrow one replica at once. How a round's members are grouped
//! ([`group_by_engine`]) is plain code, unit-tested without a runtime.
//!
//! [`Transport::send_raft_many`]: crate::transport::Transport::send_raft_many

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::error;

use crate::actor::Replica;
use crate::engine::Engine;

/// Scheduler turns a round waits for more members before it runs:
/// replicas whose messages arrived from other threads meanwhile join it
/// (6.6 replicas per write instead of 1.05 at 16 shards under load;
/// docs/BENCHMARKS.md). Idle, it costs microseconds.
const ROUND_GATHER_YIELDS: usize = 2;

/// The replicas of this thread, and those with work for the next round.
#[derive(Default)]
struct Thread {
    replicas: HashMap<u64, Weak<RefCell<Replica>>>,
    dirty: Vec<u64>,
    scheduled: bool,
}

thread_local! {
    static THREAD: RefCell<Thread> = RefCell::new(Thread::default());
}

static NEXT_SLOT: AtomicU64 = AtomicU64::new(1);

/// A key for a new replica in its thread's registry (unique per process).
pub(crate) fn new_slot() -> u64 {
    NEXT_SLOT.fetch_add(1, Ordering::Relaxed)
}

/// Called on the replica's thread as its actor starts.
pub(crate) fn register(slot: u64, replica: Weak<RefCell<Replica>>) {
    THREAD.with(|t| t.borrow_mut().replicas.insert(slot, replica));
}

/// Called on the replica's thread as its actor stops.
pub(crate) fn unregister(slot: u64) {
    THREAD.with(|t| t.borrow_mut().replicas.remove(&slot));
}

fn lookup(slot: u64) -> Option<Rc<RefCell<Replica>>> {
    THREAD.with(|t| t.borrow().replicas.get(&slot).and_then(Weak::upgrade))
}

/// Enters replica `slot` into this thread's next round; the first entry
/// schedules the round. The caller (the replica) guards against entering
/// twice per round.
pub(crate) fn mark(slot: u64) {
    let first = THREAD.with(|t| {
        let mut t = t.borrow_mut();
        t.dirty.push(slot);
        !std::mem::replace(&mut t.scheduled, true)
    });
    if first {
        actix::spawn(async {
            for _ in 0..ROUND_GATHER_YIELDS {
                tokio::task::yield_now().await;
            }
            run_round();
        });
    }
}

/// Groups `items` by engine, in order of first appearance (a test's
/// runtime may host replicas of several in-process nodes on one thread).
pub(crate) fn group_by_engine<T>(items: impl IntoIterator<Item = (Arc<Engine>, T)>) -> Vec<(Arc<Engine>, Vec<T>)> {
    let mut groups: Vec<(Arc<Engine>, Vec<T>)> = Vec::new();
    for (engine, item) in items {
        match groups.iter_mut().find(|(e, _)| Arc::ptr_eq(e, &engine)) {
            Some((_, members)) => members.push(item),
            None => groups.push((engine, vec![item])),
        }
    }
    groups
}

fn run_round() {
    // The registry is released before any replica runs: replicas mark
    // themselves for the next round while this one runs.
    let mut members: Vec<Rc<RefCell<Replica>>> = THREAD.with(|t| {
        let mut t = t.borrow_mut();
        t.scheduled = false;
        let dirty = std::mem::take(&mut t.dirty);
        dirty.into_iter().filter_map(|s| t.replicas.get(&s).and_then(Weak::upgrade)).collect()
    });
    // In shard order, so the round's log writes land in the memtable in
    // key order (each shard's keys follow the last one's): fewer skiplist
    // searches per insert than in arrival order.
    members.sort_by_key(|rc| rc.borrow().shard());
    let groups = group_by_engine(members.into_iter().map(|rc| {
        let engine = rc.borrow().engine().clone();
        (engine, rc)
    }));
    for (engine, members) in groups {
        round(&engine, &members);
    }
}

/// One round of one node's replicas on this thread.
fn round(engine: &Arc<Engine>, members: &[Rc<RefCell<Replica>>]) {
    let mut batch = engine.batch();
    let mut staged = Vec::new();
    for rc in members {
        let mut r = rc.borrow_mut();
        r.set_in_round(true);
        if let Some(s) = r.begin_round(&mut batch) {
            staged.push((rc, s));
        }
    }
    if !staged.is_empty() {
        engine.write_metrics().round_replicas.observe(staged.len() as f64);
        if let Err(e) = engine.write(batch, false) {
            // Raft's durability promise is unknowable after a failed write.
            error!("fatal storage error while writing a thread round: {e}");
            std::process::abort();
        }
    }
    let mut persist = Vec::new();
    for (rc, s) in staged {
        let mut r = rc.borrow_mut();
        if let Some(number) = r.finish_round(s) {
            persist.push((r.slot(), number));
        }
    }
    // The answer runs on this thread after this pass, so every member has
    // advanced its Ready before it hears that Ready is persisted.
    if !persist.is_empty() {
        let thread = actix::Arbiter::current();
        engine.sync_wal_async(Box::new(move |result| {
            // A stopped thread has no replicas left to tell.
            let _ = thread.spawn(async move { persisted(result, persist) });
        }));
    }
    send(members);
}

/// Sends the messages every member queued in this round, one batch per
/// peer node, and reports back what the transport knows it lost.
fn send(members: &[Rc<RefCell<Replica>>]) {
    let mut transport = None;
    let mut from = 0;
    let mut out = Vec::new();
    for rc in members {
        let mut r = rc.borrow_mut();
        r.set_in_round(false);
        if let Some(o) = r.take_outbox() {
            // One engine is one node: its replicas share one transport.
            transport.get_or_insert(o.transport);
            from = o.node;
            out.push((o.shard, o.msgs));
        }
    }
    let Some(transport) = transport else { return };
    for (shard, lost) in transport.send_raft_many(from, out) {
        if let Some(rc) = members.iter().find(|rc| rc.borrow().shard() == shard) {
            rc.borrow_mut().undelivered(lost);
        }
    }
}

/// The WAL syncer made these replicas' Readys durable (or failed to: then
/// nothing may be acknowledged any more).
fn persisted(result: Result<(), String>, persist: Vec<(u64, u64)>) {
    for (slot, number) in persist {
        let Some(rc) = lookup(slot) else { continue };
        let mut r = rc.borrow_mut();
        if let Err(e) = &result {
            r.fatal("syncing the WAL", e);
        }
        r.on_persisted(number);
        r.schedule_flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_group_by_engine_in_order_of_first_appearance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Engine::open(&dir.path().join("a"), "a").expect("open a");
        let b = Engine::open(&dir.path().join("b"), "b").expect("open b");
        let groups = group_by_engine([(b.clone(), 1), (a.clone(), 2), (b.clone(), 3), (a.clone(), 4), (b.clone(), 5)]);
        assert_eq!(groups.len(), 2);
        assert!(Arc::ptr_eq(&groups[0].0, &b));
        assert_eq!(groups[0].1, vec![1, 3, 5]);
        assert!(Arc::ptr_eq(&groups[1].0, &a));
        assert_eq!(groups[1].1, vec![2, 4]);
        assert!(group_by_engine(Vec::<(Arc<Engine>, u8)>::new()).is_empty());
    }
}
