//! Splits: a shard gives some of its ring points to a new shard on the same
//! nodes, in place. The Rebalancer proposes `Command::Split`; every replica
//! applies it at the same log index: it keeps the rest of its ranges,
//! writes the new shard's initial state (voters, a log after the split's
//! index so versions keep growing, ranges, key counts) in the same batch, and once that
//! is written asks the node to start the new replica, which on the source
//! leader's node campaigns at once. No data is copied: the `data` family is
//! shared by the node's replicas and keyed by ring point. Moving the new
//! shard's replicas elsewhere is then an ordinary replica move.
//!
//! Nothing is scanned on the storage thread, which every replica on it
//! shares: the source counts the keys it gave away off it, from a RocksDB
//! snapshot taken once the split is written, hands that count to the new
//! replica and keeps the rest of its statistics from before the split, so
//! each key is read once (if they were not known, both sides count their
//! own). The new replica takes its held locks from the source's index in
//! memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use raft::StateRole;
use ringstore_shared::apply::{self, Outcome, SplitDecision};
use ringstore_shared::{ShardId, StoreError};
use rocksdb::WriteBatch;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{waiter_moved, On, Replica, SplitOff, StorageActor};
use crate::engine::EngineError;
use crate::locks::LockIndex;
use crate::log_store::{self, ApplyState, KeyStats, StatsCount};
use crate::messages::{ShardReply, ShardResult};
use crate::snapshot::{contains_point, OwnedRanges, PointRange, SnapshotData};

/// Starts a shard split off just now campaigning: its leader is elected in
/// a round trip instead of an election timeout.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Campaign;

fn owns_in(ranges: &[PointRange], key: &[u8]) -> bool {
    contains_point(ranges, ringstore_shared::hash::key_point(key))
}

impl Replica {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply_split(
        &mut self,
        batch: &mut WriteBatch,
        index: u64,
        apply: &mut ApplyState,
        target: ShardId,
        give: Vec<PointRange>,
        epoch: u64,
    ) -> ShardResult {
        let current = self.raw.store().ranges_epoch();
        let left = match apply::decide_split(&self.ranges, current, &give, epoch) {
            SplitDecision::Done => return Ok(ShardReply::Outcome(Outcome::Split { epoch: current })),
            SplitDecision::Refused(why) => {
                warn!(node = self.node, shard = self.shard, target, index, "split refused: {why}");
                return Err(StoreError::BadRequest(format!("split of shard {} refused: {why}", self.shard)));
            }
            SplitDecision::Apply { left } => left,
        };
        // Followers learn of this commit at once rather than with the next
        // heartbeat (`skip_bcast_commit`): the new shard's replicas start
        // when they apply it.
        if self.is_leader() {
            self.raw.raft.bcast_append();
        }
        let started = Instant::now();
        // The key statistics are counted again once this batch is written
        // (`start_split_shards`); until then the apply state is stored
        // without them, so a crash counts them at the next start. Known
        // before the split, only the given side needs reading.
        self.split_stats_known = !apply.stats_pending;
        apply.stats_pending = true;
        let given = OwnedRanges { epoch, ranges: give };
        match log_store::is_initialized(&self.engine, target) {
            Ok(false) => {
                let voters = self.raw.store().conf_state().voters.clone();
                let stamp = apply.applied_stamp_ms;
                log_store::stage_split_bootstrap(&self.engine, batch, target, &voters, &given, index, stamp);
            }
            // Never expected: a replica of the new shard gets state here
            // only from this split. Keep what is there rather than wipe it.
            Ok(true) => warn!(node = self.node, shard = self.shard, target, "the new shard already has state here"),
            Err(e) => self.fatal("reading the new shard's state", e),
        }
        let kept = OwnedRanges { epoch, ranges: left };
        self.raw.store().stage_ranges(batch, &kept);
        // Ownership changes at this entry, for the entries after it in this
        // batch too. The registry learns both sides at once, before this
        // replica adopts its part, so the node never sees the given points
        // unowned (and never starts an empty replica of the new shard
        // beside this one).
        self.raw.mut_store().commit_ranges(kept);
        let locks = self.locks.split_off(|name| owns_in(&given.ranges, name.as_bytes()));
        let given = Arc::new(given.ranges);
        self.registry.split(self.shard, self.raw.store().ranges().clone(), target, given.clone());
        self.adopt_ranges();
        self.splits_done.push((target, locks, given));
        self.metrics.splits_applied.inc();
        self.metrics.split_apply_seconds.observe(started.elapsed().as_secs_f64());
        info!(
            node = self.node,
            shard = self.shard,
            target,
            index,
            epoch,
            ranges_left = self.ranges.len(),
            "split: ranges given to a new shard"
        );
        Ok(ShardReply::Outcome(Outcome::Split { epoch }))
    }

    /// Takes the store's ranges as the ones this replica serves (after a
    /// split or a snapshot): locks and waiters outside them are no longer
    /// this shard's; the waiters' retries find their places (the record and
    /// their request records moved with the range) where the map sends them.
    pub(super) fn adopt_ranges(&mut self) {
        let store = self.raw.store();
        self.ranges = store.ranges().clone();
        if store.ranges_epoch() > 0 {
            self.epoch = store.ranges_epoch();
        }
        self.registry.set(self.shard, self.ranges.clone());
        self.load.reset();
        self.sweep_range = 0;
        self.sweep_cursor.clear();
        let ranges = self.ranges.clone();
        self.locks.retain(|n| owns_in(&ranges, n.as_bytes()));
        for w in self.waiters.drain_where(|n| !owns_in(&ranges, n.as_bytes())) {
            let _ = w.reply.send(Err(waiter_moved()));
        }
    }

    /// After the round's write: the source counts its keys again, and the
    /// new shards split off in it start (and count theirs).
    pub(super) fn start_split_shards(&mut self) {
        if self.splits_done.is_empty() {
            return;
        }
        // The split is on disk; the new replica has not started.
        fail::fail_point!("split_applied", |_| std::process::abort());
        let lead = self.is_leader();
        let done = std::mem::take(&mut self.splits_done);
        let known = std::mem::take(&mut self.split_stats_known);
        match <[_; 1]>::try_from(done) {
            Ok([(target, locks, given)]) if known => {
                // Exact as of this write: the statistics before the split,
                // plus this round's changes to the ranges kept.
                let before = self.raw.store().apply_state().tally();
                let (tx, rx) = oneshot::channel();
                self.count_given(before, given, tx);
                (self.on_split)(target, lead, SplitOff { locks, stats: Some(rx) });
            }
            Ok(done) => self.split_and_count_each(done.into(), lead),
            Err(done) => self.split_and_count_each(done, lead),
        }
    }

    /// Statistics unknown before the split (or several splits in one
    /// round): every side counts its own keys.
    fn split_and_count_each(&mut self, done: Vec<(ShardId, LockIndex, Arc<Vec<PointRange>>)>, lead: bool) {
        self.recount_stats();
        for (target, locks, _) in done {
            (self.on_split)(target, lead, SplitOff { locks, stats: None });
        }
    }

    /// Counts the keys given to a new shard, off the storage thread, from
    /// a RocksDB snapshot taken now (before the new replica applies
    /// anything): the new replica gets that count (`tx`), and this replica
    /// the rest of `before`. Each key is read once, not once per side. A
    /// count that stops drops `tx`: the new replica counts its own.
    fn count_given(&mut self, before: KeyStats, given: Arc<Vec<PointRange>>, tx: oneshot::Sender<KeyStats>) {
        self.spawn_count("the keys a split gave away", move |count, pace| {
            Ok(count.run_on(&given, pace)?.map(|given| {
                let _ = tx.send(given);
                before.without(given)
            }))
        });
    }

    /// A replica split off waits for its source's count of its keys (see
    /// [`StorageActor::count_given`]); if that count stops, it counts them.
    pub(super) fn await_split_count(&mut self, counted: oneshot::Receiver<KeyStats>, ctx: &mut Context<StorageActor>) {
        let generation = self.raw.mut_store().expect_count();
        let started = Instant::now();
        ctx.spawn(actix::fut::wrap_future::<_, StorageActor>(counted).map(move |res, act, _| {
            let mut act = act.r.borrow_mut();
            if act.destroyed {
                return;
            }
            match res {
                Ok(stats) => act.on_counted(generation, Ok(stats), started.elapsed().as_secs_f64()),
                Err(_) => act.recount_stats(),
            }
        }));
    }

    /// Counts this replica's keys again off the storage thread, from a
    /// RocksDB snapshot taken now (see `LogStore::begin_recount`).
    pub(super) fn recount_stats(&mut self) {
        self.spawn_count("the shard's keys", |count, pace| count.run(pace));
    }

    /// Begins a count (`LogStore::begin_recount`) and runs `work` on it on a
    /// thread of its own (nice 19, paced at `COUNT_BYTES_PER_SEC`); its
    /// result comes back as [`StatsCounted`]. A count stops once its replica
    /// is gone and stays pending: the next start counts again.
    fn spawn_count<W>(&mut self, what: &'static str, work: W)
    where
        W: FnOnce(&StatsCount, &mut dyn FnMut(u64) -> bool) -> Result<Option<KeyStats>, EngineError> + Send + 'static,
    {
        // Set as the replica starts, before anything can count.
        let Some(addr) = self.addr.clone() else { return };
        let count = self.raw.mut_store().begin_recount();
        let (node, shard) = (self.node, self.shard);
        let spawned = crate::background::spawn(format!("count-{shard}"), crate::background::COUNT_NICE, move || {
            let started = Instant::now();
            let mut pace = |read: u64| {
                std::thread::sleep(crate::background::pause(
                    read,
                    crate::background::COUNT_BYTES_PER_SEC,
                    started.elapsed(),
                ));
                addr.connected()
            };
            let result = match work(&count, &mut pace) {
                Ok(Some(stats)) => Ok(stats),
                Ok(None) => return,
                Err(e) => Err(e),
            };
            addr.do_send(StatsCounted {
                generation: count.generation(),
                result,
                seconds: started.elapsed().as_secs_f64(),
            });
        });
        if let Err(e) = spawned {
            warn!(node, shard, "could not start counting {what}: {e}");
        }
    }

    /// A snapshot whose ranges another replica of this node still owns
    /// (its source has not applied the split that gave them away) must
    /// wait: installing it would let that replica's later applies write
    /// over the new shard's data.
    pub(super) fn snapshot_conflict(&self, m: &RaftMessage) -> Option<ShardId> {
        if m.get_msg_type() != MessageType::MsgSnapshot {
            return None;
        }
        let ranges = match SnapshotData::peek_ranges(&m.get_snapshot().data) {
            Ok(Some(r)) => r.ranges,
            // Older senders: what this replica owns or will own by the map.
            Ok(None) => return None,
            Err(_) => return None, // refused by the install, with its reason
        };
        self.registry.conflict(self.shard, &ranges)
    }

    /// One campaign now and, until `until`, again each tick while no
    /// leader is known: a vote request sent before the other replicas
    /// started the new shard is lost.
    pub(super) fn campaign(&mut self, until: Instant) {
        self.campaign_until = Some(until);
        self.campaign_tick();
    }

    pub(super) fn campaign_tick(&mut self) {
        let Some(until) = self.campaign_until else { return };
        if self.raw.raft.state == StateRole::Leader || Instant::now() >= until {
            self.campaign_until = None;
            return;
        }
        if self.raw.raft.leader_id == 0 {
            if let Err(e) = self.raw.campaign() {
                warn!(node = self.node, shard = self.shard, "campaign refused: {e}");
            }
        }
    }
}

/// A key count begun by `recount_stats` ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StatsCounted {
    generation: u64,
    result: Result<KeyStats, EngineError>,
    seconds: f64,
}

impl On<StatsCounted> for Replica {
    type Result = ();
    fn on(&mut self, m: StatsCounted, _: &mut Context<StorageActor>) {
        if self.destroyed {
            return;
        }
        self.on_counted(m.generation, m.result, m.seconds);
    }
}

impl Replica {
    fn on_counted(&mut self, generation: u64, result: Result<KeyStats, EngineError>, seconds: f64) {
        let counted = match result {
            Ok(c) => c,
            Err(e) => self.fatal("counting the shard's keys", e),
        };
        match self.raw.mut_store().finish_recount(generation, counted) {
            Ok(true) => {
                self.metrics.stats_count_seconds.observe(seconds);
                let now = self.raw.store().apply_state().stats().unwrap_or_default();
                info!(
                    node = self.node,
                    shard = self.shard,
                    keys = now.keys,
                    bytes = now.bytes,
                    secs = seconds,
                    "key statistics counted"
                );
            }
            Ok(false) => {}
            Err(e) => self.fatal("writing the counted key statistics", e),
        }
    }
}

/// How soon a split-off shard's leader asks again for (pre-)votes that
/// found no replica: the other nodes start theirs a few ms after this
/// one, and a tick (100 ms) is what the new shard's first requests wait.
const CAMPAIGN_RETRY: Duration = Duration::from_millis(10);

impl Replica {
    /// Takes [`StorageActor::campaign_tick`] every [`CAMPAIGN_RETRY`]
    /// until the campaign window closes, except while a vote is under way
    /// (a candidate that started over would raise its term each time).
    fn campaign_soon(&mut self, ctx: &mut Context<StorageActor>) {
        ctx.run_later(CAMPAIGN_RETRY, |act, ctx| {
            let mut act = act.r.borrow_mut();
            if act.destroyed || act.campaign_until.is_none() {
                return;
            }
            if act.raw.raft.leader_id == 0 && act.raw.raft.state != StateRole::Candidate {
                act.campaign_tick();
                act.schedule_flush();
            }
            act.campaign_soon(ctx);
        });
    }
}

impl On<Campaign> for Replica {
    type Result = ();
    fn on(&mut self, _: Campaign, ctx: &mut Context<StorageActor>) {
        let window = Duration::from_millis(self.cfg.election_timeout_ms());
        self.wake(crate::hibernate::Wake::Request);
        self.campaign(Instant::now() + window);
        self.schedule_flush();
        self.campaign_soon(ctx);
    }
}
