//! `LogStore`: the `raft` crate's [`Storage`] trait for one shard replica,
//! on the node's `raft` column family.
//!
//! Layout (`shard` is the shard id, big-endian, so a shard's records are
//! one contiguous range):
//! - `shard ++ 0x01 ++ index BE`: a log entry (protobuf `Entry`);
//! - `shard ++ 0x02`: the hard state (protobuf `HardState`);
//! - `shard ++ 0x03`: the apply state ([`ApplyState`]);
//! - `shard ++ 0x04`: the conf state (protobuf `ConfState`);
//! - `shard ++ 0x05`: the cluster map (meta shard only; its state machine,
//!   kept here because the meta shard owns no ring points in `data`);
//! - `shard ++ 0x06`: the ring points the shard owns ([`OwnedRanges`]),
//!   replicated state that a split changes and a snapshot carries.
//!
//! Raft reads through `&self`; the storage actor stages every change into
//! a RocksDB `WriteBatch` with the `stage_*` methods, writes it, and only
//! then calls `commit_*` so the in-memory view never runs ahead of disk.

use std::sync::Arc;

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use ringstore_shared::ShardId;
use rocksdb::WriteBatch;

use ringstore_shared::apply::footprint;
use ringstore_shared::keys::{is_user_key, split_data_key};
use ringstore_shared::value::StoredValue;

use crate::engine::{Cf, Engine, EngineError, EngineSnapshot};
use crate::entry_cache::{EntryCache, ENTRY_CACHE_KEEP_APPLIED};
use crate::snapshot::{OwnedRanges, PointRange, SnapshotData};

const KIND_ENTRY: u8 = 0x01;
const KIND_HARD_STATE: u8 = 0x02;
const KIND_APPLY_STATE: u8 = 0x03;
const KIND_CONF_STATE: u8 = 0x04;
const KIND_MAP: u8 = 0x05;
const KIND_RANGES: u8 = 0x06;

/// Where a bootstrapped replica's log starts (exclusive), and its term.
pub const INIT_LOG_INDEX: u64 = 5;
pub const INIT_LOG_TERM: u64 = 5;

fn shard_key(shard: ShardId, kind: u8) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&shard.to_be_bytes());
    k[8] = kind;
    k
}

fn entry_key(shard: ShardId, index: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..9].copy_from_slice(&shard_key(shard, KIND_ENTRY));
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
}

/// How far the state machine has got, and where the log starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyState {
    pub applied_index: u64,
    /// Last index removed from the log (0 = nothing removed).
    pub truncated_index: u64,
    pub truncated_term: u64,
    /// Largest leader stamp applied: the "now" of stale reads.
    pub applied_stamp_ms: u64,
    /// User keys stored in the shard (expired ones count until removed).
    pub keys: u64,
    /// Their footprint (`apply::footprint`: key and value bytes).
    pub bytes: u64,
    /// The statistics are being counted again (after a split, or at the
    /// start of a replica whose stored state has none): `keys` and `bytes`
    /// hold only what applies changed since the count's RocksDB snapshot,
    /// wrapping, and the count is added when it lands. Stored as the
    /// 32-byte form without statistics, so a crash meanwhile counts again.
    pub stats_pending: bool,
}

impl ApplyState {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(48);
        b.extend_from_slice(&self.applied_index.to_be_bytes());
        b.extend_from_slice(&self.truncated_index.to_be_bytes());
        b.extend_from_slice(&self.truncated_term.to_be_bytes());
        b.extend_from_slice(&self.applied_stamp_ms.to_be_bytes());
        if !self.stats_pending {
            b.extend_from_slice(&self.keys.to_be_bytes());
            b.extend_from_slice(&self.bytes.to_be_bytes());
        }
        b
    }

    /// An applied put of a user key: `replaced` is the footprint of the
    /// record it overwrites, if any.
    pub fn on_put(&mut self, replaced: Option<u64>, added: u64) {
        if self.stats_pending {
            // Deltas against an unknown base: they may go below zero
            // until the count is added.
            self.keys = self.keys.wrapping_add(replaced.is_none() as u64);
            self.bytes = self.bytes.wrapping_sub(replaced.unwrap_or(0)).wrapping_add(added);
        } else {
            self.keys += replaced.is_none() as u64;
            self.bytes = self.bytes.saturating_sub(replaced.unwrap_or(0)).saturating_add(added);
        }
    }

    /// An applied delete of a user key whose footprint was `removed`.
    pub fn on_delete(&mut self, removed: u64) {
        if self.stats_pending {
            self.keys = self.keys.wrapping_sub(1);
            self.bytes = self.bytes.wrapping_sub(removed);
        } else {
            self.keys = self.keys.saturating_sub(1);
            self.bytes = self.bytes.saturating_sub(removed);
        }
    }

    /// The statistics, unless they are being counted.
    pub fn stats(&self) -> Option<KeyStats> {
        (!self.stats_pending).then_some(self.tally())
    }

    /// The statistics as they stand, counted or not: while a count runs,
    /// the changes applied since it began (wrapping below zero).
    pub fn tally(&self) -> KeyStats {
        KeyStats { keys: self.keys, bytes: self.bytes }
    }

    /// A bootstrapped replica's: its log starts after `base`, which is
    /// [`INIT_LOG_INDEX`] (as TiKV's) for a new cluster and the split's
    /// index for a shard split off. Its configuration is in no entry, so a
    /// replica added later must get a snapshot, never the log from index
    /// 1, and with this no leader has index 1 to send.
    fn bootstrapped(base: u64, applied_stamp_ms: u64, stats: Option<KeyStats>) -> Self {
        let known = stats.unwrap_or_default();
        ApplyState {
            applied_index: base,
            truncated_index: base,
            truncated_term: INIT_LOG_TERM,
            applied_stamp_ms,
            keys: known.keys,
            bytes: known.bytes,
            stats_pending: stats.is_none(),
        }
    }

    /// Whether an encoded apply state shows anything applied (a replica
    /// bootstrapped, split off or restored, not one awaiting its first
    /// snapshot).
    fn applied_any(b: Option<&[u8]>) -> bool {
        b.and_then(ApplyState::decode).is_some_and(|a| a.applied_index > 0)
    }

    /// The 32-byte form carries no key statistics (written while they are
    /// counted, or before they existed): they are counted again.
    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 32 && b.len() != 48 {
            return None;
        }
        let u = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        let with_stats = b.len() == 48;
        let (keys, bytes) = if with_stats { (u(32), u(40)) } else { (0, 0) };
        Some(ApplyState {
            applied_index: u(0),
            truncated_index: u(8),
            truncated_term: u(16),
            applied_stamp_ms: u(24),
            keys,
            bytes,
            stats_pending: !with_stats,
        })
    }
}

/// Counts the user keys (and their footprint) among `data` family pairs.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyStats {
    pub keys: u64,
    pub bytes: u64,
}

impl KeyStats {
    /// What is left of `self` without `part` (a split's given side).
    /// Wrapping, like the deltas gathered while a count runs.
    pub fn without(self, part: KeyStats) -> KeyStats {
        KeyStats { keys: self.keys.wrapping_sub(part.keys), bytes: self.bytes.wrapping_sub(part.bytes) }
    }

    fn add(&mut self, k: &[u8], v: &[u8]) -> Result<(), EngineError> {
        let Some((_, user)) = split_data_key(k) else { return Ok(()) };
        if !is_user_key(user) {
            return Ok(());
        }
        let value = StoredValue::decode(v).map_err(|e| EngineError::Corrupt { cf: "data", detail: e.to_string() })?;
        self.keys += 1;
        self.bytes += footprint(user, &value);
        Ok(())
    }
}

/// A snapshot for followers, built on a thread of its own: a 64 MiB shard
/// takes a few hundred ms to read and encode, which the storage thread
/// (shared by many replicas) must not spend.
#[derive(Default)]
enum SnapshotJob {
    #[default]
    Idle,
    /// Being built as of this applied index.
    Building(u64),
    Ready(Snapshot),
    Failed(String),
}

pub struct LogStore {
    engine: Arc<Engine>,
    snapshot_job: Arc<std::sync::Mutex<SnapshotJob>>,
    shard: ShardId,
    /// The ring points whose data this shard owns (snapshots cover these).
    ranges: Arc<Vec<PointRange>>,
    /// The map epoch of the split that last changed `ranges` (0: none).
    ranges_epoch: u64,
    /// The ranges the node's map gave at start: used when a snapshot
    /// carries none (sent by a node from before format 3).
    fallback: Arc<Vec<PointRange>>,
    hard_state: HardState,
    conf_state: ConfState,
    apply: ApplyState,
    last_index: u64,
    last_term: u64,
    /// The log's tail in memory, which raft-rs reads back (apply, appends).
    cache: EntryCache,
    /// Which statistics count is current: one started earlier and landing
    /// after a newer one began is ignored.
    recount_generation: u64,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Corrupt { cf: "raft", detail: format!("{what}: {e}") }
}

fn to_raft(e: EngineError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl LogStore {
    /// Loads the shard's Raft state, or bootstraps it with `voters` if the
    /// shard has never been created on this node. Returns whether it was
    /// newly bootstrapped. `ranges` (from the node's map) are what the
    /// shard owns unless its own record says otherwise; a replica started
    /// without voters owns nothing until its first snapshot says what.
    pub fn open(
        engine: Arc<Engine>,
        shard: ShardId,
        voters: &[u64],
        ranges: Arc<Vec<PointRange>>,
    ) -> Result<(LogStore, bool), EngineError> {
        let hs = engine.get(Cf::Raft, &shard_key(shard, KIND_HARD_STATE))?;
        let cs = engine.get(Cf::Raft, &shard_key(shard, KIND_CONF_STATE))?;
        let ap = engine.get(Cf::Raft, &shard_key(shard, KIND_APPLY_STATE))?;
        let rg = engine.get(Cf::Raft, &shard_key(shard, KIND_RANGES))?;
        let mut store = LogStore {
            engine,
            snapshot_job: Arc::default(),
            shard,
            ranges: Arc::default(),
            ranges_epoch: 0,
            fallback: ranges,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            apply: ApplyState::default(),
            last_index: 0,
            last_term: 0,
            cache: EntryCache::default(),
            recount_generation: 0,
        };
        let fresh = cs.is_none();
        if fresh {
            store.conf_state.set_voters(voters.to_vec());
            if !voters.is_empty() {
                store.ranges = store.fallback.clone();
                store.apply = ApplyState::bootstrapped(INIT_LOG_INDEX, 0, Some(KeyStats::default()));
                store.hard_state = bootstrap_hard_state(INIT_LOG_INDEX);
                store.last_index = INIT_LOG_INDEX;
                store.last_term = INIT_LOG_TERM;
            }
            let mut b = store.engine.batch();
            store.stage_conf_state(&mut b, &store.conf_state.clone());
            store.stage_apply_state(&mut b, &store.apply);
            store.put_hard_state(&mut b, &store.hard_state.clone());
            if !voters.is_empty() {
                store.stage_ranges(&mut b, &store.owned());
            }
            store.engine.write(b, true)?;
            return Ok((store, true));
        }
        match rg {
            Some(b) => {
                let owned = OwnedRanges::decode(&b).map_err(|e| corrupt("ranges", e))?;
                store.ranges = Arc::new(owned.ranges);
                store.ranges_epoch = owned.epoch;
            }
            // Written before shards kept their ranges: as the map says,
            // unless the replica never got its first snapshot.
            None if ApplyState::applied_any(ap.as_deref()) => {
                store.ranges = store.fallback.clone();
                let mut b = store.engine.batch();
                store.stage_ranges(&mut b, &store.owned());
                store.engine.write(b, true)?;
            }
            None => {}
        }
        if let Some(hs) = hs {
            store.hard_state = HardState::parse_from_bytes(&hs).map_err(|e| corrupt("hard state", e))?;
        }
        if let Some(cs) = cs {
            store.conf_state = ConfState::parse_from_bytes(&cs).map_err(|e| corrupt("conf state", e))?;
        }
        if let Some(ap) = ap {
            // Statistics still to count are counted off the storage thread
            // once the replica runs (`begin_recount`).
            store.apply = ApplyState::decode(&ap).ok_or_else(|| corrupt("apply state", "bad length"))?;
        }
        // The commit index is persisted lazily (without fsync); anything
        // applied was committed, so the commit index is at least that.
        if store.hard_state.commit < store.apply.applied_index {
            store.hard_state.commit = store.apply.applied_index;
        }
        store.last_index = store.apply.truncated_index;
        store.last_term = store.apply.truncated_term;
        let from = entry_key(shard, 0);
        let to = entry_key(shard, u64::MAX);
        if let Some(k) = store.engine.last_key_in(Cf::Raft, &from, &to)? {
            let mut idx = [0u8; 8];
            idx.copy_from_slice(&k[9..17]);
            let index = u64::from_be_bytes(idx);
            if index > store.last_index {
                let e = store.read_entry(index)?;
                store.last_index = index;
                store.last_term = e.term;
            }
        }
        Ok((store, false))
    }

    pub fn apply_state(&self) -> &ApplyState {
        &self.apply
    }
    pub fn ranges(&self) -> &Arc<Vec<PointRange>> {
        &self.ranges
    }
    pub fn ranges_epoch(&self) -> u64 {
        self.ranges_epoch
    }
    pub fn owned(&self) -> OwnedRanges {
        OwnedRanges { epoch: self.ranges_epoch, ranges: self.ranges.to_vec() }
    }
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }
    pub fn last_index_cached(&self) -> u64 {
        self.last_index
    }

    fn read_entry(&self, index: u64) -> Result<Entry, EngineError> {
        let raw = self
            .engine
            .get(Cf::Raft, &entry_key(self.shard, index))?
            .ok_or_else(|| corrupt("entry", format!("missing entry {index} of shard {}", self.shard)))?;
        Entry::parse_from_bytes(&raw).map_err(|e| corrupt("entry", e))
    }

    // ----- staging (into a batch) and committing (after the write) -----

    /// Appends `entries`, removing any conflicting tail they replace.
    pub fn stage_append(&self, b: &mut WriteBatch, entries: &[Entry]) -> Option<(u64, u64)> {
        let (first, last) = (entries.first()?, entries.last()?);
        for e in entries {
            // Entries were built by raft from our own types; encoding cannot fail.
            let bytes = e.write_to_bytes().expect("protobuf encode of an Entry");
            self.engine.put(b, Cf::Raft, &entry_key(self.shard, e.index), &bytes);
        }
        if last.index < self.last_index {
            self.engine.delete_range(
                b,
                Cf::Raft,
                &entry_key(self.shard, last.index + 1),
                &entry_key(self.shard, self.last_index + 1),
            );
        }
        debug_assert!(first.index > self.apply.truncated_index);
        Some((last.index, last.term))
    }

    /// After the write of [`LogStore::stage_append`] of `entries`.
    pub fn commit_append(&mut self, last: (u64, u64), entries: &[Entry]) {
        self.last_index = last.0;
        self.last_term = last.1;
        self.cache.append(entries);
    }

    /// Stages `hs` if Raft needs it durable: a new term or vote. A new
    /// commit index alone is not written: Raft does not need it across a
    /// restart (the leader tells it again, and `open` takes at least the
    /// applied index, written with the applied data). At 16 shards that
    /// write was one more memtable insert per replica per round.
    pub fn stage_hard_state(&self, b: &mut WriteBatch, hs: &HardState) {
        if hs.term == self.hard_state.term && hs.vote == self.hard_state.vote {
            return;
        }
        self.put_hard_state(b, hs);
    }

    fn put_hard_state(&self, b: &mut WriteBatch, hs: &HardState) {
        let bytes = hs.write_to_bytes().expect("protobuf encode of a HardState");
        self.engine.put(b, Cf::Raft, &shard_key(self.shard, KIND_HARD_STATE), &bytes);
    }

    pub fn commit_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub fn stage_conf_state(&self, b: &mut WriteBatch, cs: &ConfState) {
        let bytes = cs.write_to_bytes().expect("protobuf encode of a ConfState");
        self.engine.put(b, Cf::Raft, &shard_key(self.shard, KIND_CONF_STATE), &bytes);
    }

    pub fn commit_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    pub fn stage_ranges(&self, b: &mut WriteBatch, owned: &OwnedRanges) {
        self.engine.put(b, Cf::Raft, &shard_key(self.shard, KIND_RANGES), &owned.encode());
    }

    pub fn commit_ranges(&mut self, owned: OwnedRanges) {
        self.ranges = Arc::new(owned.ranges);
        self.ranges_epoch = owned.epoch;
    }

    /// The cluster map this shard's state machine holds (meta shard).
    pub fn read_map(&self) -> Result<Option<Vec<u8>>, EngineError> {
        self.engine.get(Cf::Raft, &shard_key(self.shard, KIND_MAP))
    }

    pub fn stage_map(&self, b: &mut WriteBatch, map: &[u8]) {
        self.engine.put(b, Cf::Raft, &shard_key(self.shard, KIND_MAP), map);
    }

    pub fn stage_apply_state(&self, b: &mut WriteBatch, a: &ApplyState) {
        self.engine.put(b, Cf::Raft, &shard_key(self.shard, KIND_APPLY_STATE), &a.encode());
    }

    pub fn commit_apply_state(&mut self, a: ApplyState) {
        assert!(a.applied_index >= self.apply.applied_index, "applied index went backwards");
        self.apply = a;
        self.cache.trim_to(a.truncated_index.max(a.applied_index.saturating_sub(ENTRY_CACHE_KEEP_APPLIED)));
    }

    /// Starts counting the replica's key statistics again, as of a RocksDB
    /// snapshot taken now (the storage thread writes the engine and the
    /// in-memory apply state together, so now they agree). From here the
    /// apply state gathers only the changes applied after the snapshot;
    /// [`LogStore::finish_recount`] adds the count. Returns the count to
    /// run off the storage thread: a split's half of a 1 GiB shard takes
    /// most of a second to scan.
    pub fn begin_recount(&mut self) -> StatsCount {
        let generation = self.expect_count();
        StatsCount { generation, view: self.engine.snapshot(), ranges: self.ranges.clone() }
    }

    /// Like [`LogStore::begin_recount`] for a count that runs elsewhere,
    /// as of a snapshot taken before anything was applied here: a split's
    /// source counts the keys it gave a new shard. Returns the generation
    /// to finish.
    pub fn expect_count(&mut self) -> u64 {
        self.recount_generation += 1;
        self.apply.stats_pending = true;
        self.apply.keys = 0;
        self.apply.bytes = 0;
        self.recount_generation
    }

    /// Adds the count `generation` found, unless a newer count began or a
    /// snapshot replaced the statistics meanwhile; then writes the apply
    /// state with them (unsynced: if lost, the next start counts again).
    /// Returns whether the count was taken.
    pub fn finish_recount(&mut self, generation: u64, counted: KeyStats) -> Result<bool, EngineError> {
        if generation != self.recount_generation || !self.apply.stats_pending {
            return Ok(false);
        }
        self.apply.keys = self.apply.keys.wrapping_add(counted.keys);
        self.apply.bytes = self.apply.bytes.wrapping_add(counted.bytes);
        self.apply.stats_pending = false;
        let mut b = self.engine.batch();
        self.stage_apply_state(&mut b, &self.apply);
        self.engine.write(b, false)?;
        Ok(true)
    }

    /// Removes log entries up to and including `index` (which must be
    /// applied). Returns the new apply state to commit after the write.
    pub fn stage_compact(&self, b: &mut WriteBatch, index: u64) -> Result<Option<ApplyState>, EngineError> {
        if index <= self.apply.truncated_index {
            return Ok(None);
        }
        assert!(index <= self.apply.applied_index, "compacting unapplied entries");
        let term = self.read_entry(index)?.term;
        self.engine.delete_range(
            b,
            Cf::Raft,
            &entry_key(self.shard, self.apply.truncated_index + 1),
            &entry_key(self.shard, index + 1),
        );
        let next = ApplyState { truncated_index: index, truncated_term: term, ..self.apply };
        self.stage_apply_state(b, &next);
        Ok(Some(next))
    }

    /// Replaces the shard's data and log with a snapshot from the leader.
    /// Returns the apply state and ranges to commit after the write. The
    /// data of the ranges it had and of those it gets is replaced: what it
    /// had and no longer owns (a split it missed) belongs to no replica of
    /// this node, since a snapshot overlapping another replica's ranges is
    /// refused before it gets here.
    pub fn stage_snapshot(
        &self,
        b: &mut WriteBatch,
        snap: &Snapshot,
    ) -> Result<(ApplyState, OwnedRanges), EngineError> {
        let meta = snap.get_metadata();
        let data = SnapshotData::decode(&snap.data).map_err(|e| corrupt("snapshot", e))?;
        let owned = data.ranges.clone().unwrap_or_else(|| match self.ranges.is_empty() {
            true => OwnedRanges { epoch: 0, ranges: self.fallback.to_vec() },
            false => self.owned(),
        });
        for r in self.ranges.iter().chain(owned.ranges.iter()) {
            let (from, to) = crate::snapshot::data_bounds(r);
            self.engine.delete_range(b, Cf::Data, &from, &to);
        }
        let mut stats = KeyStats::default();
        for (k, v) in &data.kvs {
            stats.add(k, v)?;
            self.engine.put(b, Cf::Data, k, v);
        }
        match &data.map {
            Some(m) => self.stage_map(b, m),
            None => self.engine.delete(b, Cf::Raft, &shard_key(self.shard, KIND_MAP)),
        }
        // Every entry the snapshot covers, and any tail after it, is obsolete.
        self.engine.delete_range(b, Cf::Raft, &entry_key(self.shard, 0), &entry_key(self.shard, u64::MAX));
        self.stage_conf_state(b, meta.get_conf_state());
        self.stage_ranges(b, &owned);
        let apply = ApplyState {
            applied_index: meta.index,
            truncated_index: meta.index,
            truncated_term: meta.term,
            applied_stamp_ms: data.applied_stamp_ms,
            keys: stats.keys,
            bytes: stats.bytes,
            stats_pending: false,
        };
        self.stage_apply_state(b, &apply);
        Ok((apply, owned))
    }

    pub fn commit_snapshot(&mut self, apply: ApplyState, cs: ConfState, owned: OwnedRanges) {
        self.cache.clear();
        self.commit_ranges(owned);
        self.apply = apply;
        self.last_index = apply.truncated_index;
        self.last_term = apply.truncated_term;
        self.conf_state = cs;
        if self.hard_state.commit < apply.applied_index {
            self.hard_state.commit = apply.applied_index;
        }
    }

    /// Deletes everything this replica stored: its ranges' data and its
    /// whole `raft` family prefix (log, hard, apply and conf state, map).
    /// A later replica of the shard on this node starts empty.
    pub fn stage_destroy(&self, b: &mut WriteBatch) {
        for r in self.ranges.iter() {
            let (from, to) = crate::snapshot::data_bounds(r);
            self.engine.delete_range(b, Cf::Data, &from, &to);
        }
        stage_delete_raft_state(&self.engine, b, self.shard);
    }

    /// Starts building a snapshot of the applied state (every data key of
    /// the shard, the stamp, the map) on a thread of its own, from a
    /// RocksDB snapshot taken now: the storage thread writes the engine and
    /// the in-memory apply state together, so now they agree.
    fn start_snapshot(&self) -> Result<(), EngineError> {
        let index = self.apply.applied_index;
        let term =
            if index == self.apply.truncated_index { self.apply.truncated_term } else { self.read_entry(index)?.term };
        let mut meta = SnapshotMetadata { index, term, ..Default::default() };
        meta.set_conf_state(self.conf_state.clone());
        let (stamp, shard, owned) = (self.apply.applied_stamp_ms, self.shard, self.owned());
        let view = self.engine.snapshot();
        let job = self.snapshot_job.clone();
        *job.lock().unwrap_or_else(|e| e.into_inner()) = SnapshotJob::Building(index);
        let spawned =
            crate::background::spawn(format!("snapshot-{shard}"), crate::background::SNAPSHOT_NICE, move || {
                // Wanted while the store that started it holds the job.
                let wanted = || Arc::strong_count(&job) > 1;
                let built = build_snapshot(&view, shard, owned, stamp, meta, wanted);
                *job.lock().unwrap_or_else(|e| e.into_inner()) = match built {
                    Ok(s) => SnapshotJob::Ready(s),
                    Err(e) => SnapshotJob::Failed(e.to_string()),
                };
            });
        if let Err(e) = spawned {
            *self.snapshot_job.lock().unwrap_or_else(|e| e.into_inner()) = SnapshotJob::Failed(e.to_string());
        }
        Ok(())
    }
}

/// Every data key of the shard's ranges, the ranges and the map, as of `view`.
fn build_snapshot(
    view: &EngineSnapshot,
    shard: ShardId,
    owned: OwnedRanges,
    applied_stamp_ms: u64,
    meta: SnapshotMetadata,
    wanted: impl Fn() -> bool,
) -> Result<Snapshot, EngineError> {
    let mut kvs = Vec::new();
    let finished = scan_while_wanted(
        view,
        &owned.ranges,
        |_| wanted(),
        |k, v| {
            kvs.push((k.to_vec(), v.to_vec()));
            true
        },
    )?;
    if !finished {
        return Err(EngineError::Abandoned);
    }
    let map = view.get(Cf::Raft, &shard_key(shard, KIND_MAP))?;
    let data = SnapshotData { applied_stamp_ms, kvs, map, ranges: Some(owned) };
    let mut snap = Snapshot { data: data.encode().into(), ..Default::default() };
    snap.set_metadata(meta);
    crate::metrics::RAFT.snapshots.with_label_values(&[view.engine().node_label(), &shard.to_string(), "built"]).inc();
    Ok(snap)
}

/// How many keys a background scan reads between checks that it is still
/// wanted.
const BACKGROUND_CHECK_EVERY: u64 = 1024;

/// Hands each data record of `ranges` as of `view` to `f` (false stops the
/// scan), asking `wanted` every [`BACKGROUND_CHECK_EVERY`] keys, with the
/// bytes read so far, whether the scan is still wanted (it may also pace
/// it). `Ok(false)` when it was abandoned.
fn scan_while_wanted(
    view: &EngineSnapshot,
    ranges: &[PointRange],
    mut wanted: impl FnMut(u64) -> bool,
    mut f: impl FnMut(&[u8], &[u8]) -> bool,
) -> Result<bool, EngineError> {
    let (mut seen, mut read) = (0u64, 0u64);
    let (mut abandoned, mut stopped) = (false, false);
    for r in ranges {
        let (from, to) = crate::snapshot::data_bounds(r);
        view.scan(Cf::Data, &from, &to, |k, v| {
            seen += 1;
            read += (k.len() + v.len()) as u64;
            if seen.is_multiple_of(BACKGROUND_CHECK_EVERY) && !wanted(read) {
                abandoned = true;
                return false;
            }
            stopped = !f(k, v);
            !stopped
        })?;
        if abandoned {
            return Ok(false);
        }
        if stopped {
            break;
        }
    }
    Ok(true)
}

/// A count of a replica's key statistics, run off the storage thread on a
/// RocksDB snapshot (see [`LogStore::begin_recount`]).
pub struct StatsCount {
    generation: u64,
    view: EngineSnapshot,
    ranges: Arc<Vec<PointRange>>,
}

impl StatsCount {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Counts the user keys of the ranges as of the snapshot; `None` once
    /// `wanted` says the count is no longer wanted (its replica stopped:
    /// a count of a large shard must not hold its node's RocksDB open).
    /// `wanted` is told the bytes read so far, so it can also pace the scan.
    pub fn run(&self, wanted: impl FnMut(u64) -> bool) -> Result<Option<KeyStats>, EngineError> {
        self.run_on(&self.ranges, wanted)
    }

    /// Like [`StatsCount::run`], over `ranges` instead of the replica's
    /// own, as of the same snapshot.
    pub fn run_on(
        &self,
        ranges: &[PointRange],
        wanted: impl FnMut(u64) -> bool,
    ) -> Result<Option<KeyStats>, EngineError> {
        let mut stats = KeyStats::default();
        let mut err = None;
        let finished = scan_while_wanted(&self.view, ranges, wanted, |k, v| match stats.add(k, v) {
            Ok(()) => true,
            Err(e) => {
                err = Some(e);
                false
            }
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(finished.then_some(stats)),
        }
    }
}

/// Whether `shard` has applied state on this node (bootstrapped, split
/// off, or restored from a snapshot), as opposed to none or an empty
/// replica still waiting for its first snapshot.
pub fn is_initialized(engine: &Engine, shard: ShardId) -> Result<bool, EngineError> {
    Ok(ApplyState::applied_any(engine.get(Cf::Raft, &shard_key(shard, KIND_APPLY_STATE))?.as_deref()))
}

/// Deletes `shard`'s whole `raft` family prefix (log, hard, apply, conf
/// state, ranges, map).
fn stage_delete_raft_state(engine: &Engine, b: &mut WriteBatch, shard: ShardId) {
    let from = shard.to_be_bytes();
    match shard.checked_add(1) {
        Some(next) => engine.delete_range(b, Cf::Raft, &from, &next.to_be_bytes()),
        None => engine.delete_range(b, Cf::Raft, &from, &[0xff; 9]),
    }
}

/// A bootstrapped replica's hard state: at the term and commit of the
/// index its log starts after.
fn bootstrap_hard_state(base: u64) -> HardState {
    HardState { term: INIT_LOG_TERM, commit: base, ..Default::default() }
}

/// Stages, in a split's batch, the state of the new shard `shard` on this
/// node: its voters, a log that starts after `split_index` (the split's
/// own entry in the source), and its ranges (its key statistics are
/// counted once it runs); any earlier state of it here is removed first
/// (none is expected: a replica of the new shard is started only after
/// the split, see `LocalReplicas`).
///
/// Starting after the split's index, not at [`INIT_LOG_INDEX`], keeps each
/// key's version (the index of its last write) growing across the move:
/// every version the key had is below the split's index, so an `If-Match`
/// taken before the split can never name a later value (the fault suite's
/// register checker found versions going back to single digits).
pub fn stage_split_bootstrap(
    engine: &Engine,
    b: &mut WriteBatch,
    shard: ShardId,
    voters: &[u64],
    owned: &OwnedRanges,
    split_index: u64,
    applied_stamp_ms: u64,
) {
    stage_delete_raft_state(engine, b, shard);
    let mut cs = ConfState::default();
    cs.set_voters(voters.to_vec());
    let base = split_index.max(INIT_LOG_INDEX);
    let hs = bootstrap_hard_state(base);
    // Counted off the storage thread once the replica starts.
    let apply = ApplyState::bootstrapped(base, applied_stamp_ms, None);
    let put = |b: &mut WriteBatch, kind, v: &[u8]| engine.put(b, Cf::Raft, &shard_key(shard, kind), v);
    put(b, KIND_CONF_STATE, &cs.write_to_bytes().expect("protobuf encode of a ConfState"));
    put(b, KIND_HARD_STATE, &hs.write_to_bytes().expect("protobuf encode of a HardState"));
    put(b, KIND_APPLY_STATE, &apply.encode());
    put(b, KIND_RANGES, &owned.encode());
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.apply.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let m = self.engine.write_metrics();
        if let Some(cached) = self.cache.range(low, high, max_size) {
            m.entry_cache_hits.inc();
            return Ok(cached);
        }
        m.entry_cache_misses.inc();
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let mut err = None;
        self.engine
            .scan(Cf::Raft, &entry_key(self.shard, low), &entry_key(self.shard, high), |_, v| {
                match Entry::parse_from_bytes(v) {
                    Ok(e) => {
                        size += v.len() as u64;
                        out.push(e);
                        // Always return at least one entry, then stop at the size limit.
                        max_size.is_none_or(|m| size <= m)
                    }
                    Err(e) => {
                        err = Some(corrupt("entry", e));
                        false
                    }
                }
            })
            .map_err(to_raft)?;
        if let Some(e) = err {
            return Err(to_raft(e));
        }
        if out.is_empty() || out[0].index != low {
            return Err(to_raft(corrupt("entries", format!("gap in log at {low}"))));
        }
        if let Some(m) = max_size {
            if out.len() > 1 && size > m {
                out.pop();
            }
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.apply.truncated_index {
            return Ok(self.apply.truncated_term);
        }
        if idx < self.apply.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if idx == self.last_index {
            return Ok(self.last_term);
        }
        if let Some(term) = self.cache.term(idx) {
            return Ok(term);
        }
        Ok(self.read_entry(idx).map_err(to_raft)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.apply.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    /// A snapshot built off the storage thread: the first call starts it
    /// and says "temporarily unavailable"; raft-rs asks again at the next
    /// heartbeat response and gets it once built. Each one is handed out
    /// once (held no longer than needed: it is the shard's whole data).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        if self.apply.applied_index < request_index {
            return Err(unavailable());
        }
        let mut job = self.snapshot_job.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::take(&mut *job) {
            SnapshotJob::Ready(s) if s.get_metadata().index >= request_index => return Ok(s),
            SnapshotJob::Building(at) => {
                *job = SnapshotJob::Building(at);
                return Err(unavailable());
            }
            SnapshotJob::Failed(e) => tracing::warn!(shard = self.shard, "building a snapshot failed: {e}; again"),
            SnapshotJob::Ready(_) | SnapshotJob::Idle => {}
        }
        drop(job);
        self.start_snapshot().map_err(to_raft)?;
        Err(unavailable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(keys: u64, bytes: u64, stats_pending: bool) -> ApplyState {
        ApplyState {
            applied_index: 9,
            truncated_index: 5,
            truncated_term: 5,
            applied_stamp_ms: 7,
            keys,
            bytes,
            stats_pending,
        }
    }

    #[test]
    fn a_new_term_or_vote_is_written_and_a_commit_alone_is_not_and_reopening_commits_what_was_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path(), "t").expect("open");
        let (mut store, fresh) = LogStore::open(engine.clone(), 7, &[1, 2, 3], Arc::new(Vec::new())).expect("store");
        assert!(fresh);
        let base = store.hard_state().clone();
        let write = |store: &mut LogStore, hs: HardState| {
            let mut b = engine.batch();
            store.stage_hard_state(&mut b, &hs);
            let puts = b.len();
            engine.write(b, true).expect("write");
            store.commit_hard_state(hs);
            puts
        };
        let mut voted = base.clone();
        voted.term += 1;
        voted.vote = 2;
        assert_eq!(write(&mut store, voted.clone()), 1, "a new term and vote are written");
        let mut committed = voted.clone();
        committed.commit += 5;
        assert_eq!(write(&mut store, committed.clone()), 0, "a commit alone is not");
        assert_eq!(store.hard_state(), &committed, "but it is the store's in memory");
        drop(store);
        let (store, fresh) = LogStore::open(engine.clone(), 7, &[1, 2, 3], Arc::new(Vec::new())).expect("reopen");
        assert!(!fresh);
        assert_eq!((store.hard_state().term, store.hard_state().vote), (voted.term, 2));
        assert_eq!(store.hard_state().commit, store.apply_state().applied_index.max(voted.commit));
    }

    #[test]
    fn statistics_being_counted_are_stored_without_them_and_read_back_as_pending() {
        let known = state(3, 30, false);
        assert_eq!(known.encode().len(), 48);
        assert_eq!(ApplyState::decode(&known.encode()), Some(known));
        let pending = state(3, 30, true);
        assert_eq!(pending.encode().len(), 32, "a crash while counting counts again at start");
        assert_eq!(ApplyState::decode(&pending.encode()), Some(state(0, 0, true)));
        assert_eq!(pending.stats(), None);
        assert_eq!(ApplyState::decode(&[0; 40]), None);
    }

    #[test]
    fn changes_applied_while_counting_wrap_below_zero_and_the_count_makes_them_exact() {
        // The count's snapshot holds 10 keys of 100 bytes; after it, two
        // deletes and a put of a new key apply before the count lands.
        let mut a = state(0, 0, true);
        a.on_delete(10);
        a.on_delete(10);
        a.on_put(None, 25);
        a.on_put(Some(10), 4);
        let counted = KeyStats { keys: 10, bytes: 100 };
        let exact = KeyStats { keys: a.keys.wrapping_add(counted.keys), bytes: a.bytes.wrapping_add(counted.bytes) };
        assert_eq!(exact, KeyStats { keys: 9, bytes: 100 - 20 + 25 - 10 + 4 });
        // Known statistics never wrap.
        let mut b = state(0, 0, false);
        b.on_delete(5);
        assert_eq!(b.stats(), Some(KeyStats::default()));
    }
    #[test]
    fn a_split_source_keeps_what_it_had_less_the_side_it_gave_away() {
        // 10 keys of 100 bytes known before the split; the given side
        // holds 4 keys of 30 bytes; a put of a kept key applies in the
        // split's round (before the snapshot): the round's tally has it.
        let mut a = state(10, 100, false);
        a.stats_pending = true; // the split's apply
        a.on_put(None, 7);
        let before = a.tally();
        assert_eq!(before, KeyStats { keys: 11, bytes: 107 });
        let given = KeyStats { keys: 4, bytes: 30 };
        assert_eq!(before.without(given), KeyStats { keys: 7, bytes: 77 });
        // A given side larger than the tally (impossible unless counts
        // drifted) wraps like the deltas do, never panics.
        let odd = KeyStats { keys: 1, bytes: 1 }.without(given);
        assert_eq!(odd.keys.wrapping_add(given.keys), 1);
    }

    #[test]
    fn a_background_scan_stops_once_its_replica_no_longer_wants_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::open(dir.path(), "1").expect("open");
        let keys = 3 * BACKGROUND_CHECK_EVERY;
        let mut b = engine.batch();
        for i in 0..keys {
            let value = StoredValue { version: 1, expires_at_ms: None, data: b"v".to_vec() };
            engine.put(
                &mut b,
                Cf::Data,
                &ringstore_shared::keys::data_key(format!("k{i}").as_bytes()),
                &value.encode(),
            );
        }
        engine.write(b, false).expect("write");
        let count = StatsCount { generation: 1, view: engine.snapshot(), ranges: Arc::new(vec![0..=u64::MAX]) };
        let all = count.run(|_| true).expect("count").expect("wanted");
        assert_eq!(all.keys, keys);
        assert_eq!(count.run(|_| false).expect("count"), None, "stopped at the first check");
        let owned = OwnedRanges { ranges: vec![0..=u64::MAX], ..Default::default() };
        let snap = build_snapshot(&engine.snapshot(), 1, owned.clone(), 0, SnapshotMetadata::default(), || true);
        assert!(snap.is_ok());
        let abandoned = build_snapshot(&engine.snapshot(), 1, owned, 0, SnapshotMetadata::default(), || false);
        assert!(matches!(abandoned, Err(EngineError::Abandoned)), "{abandoned:?}");
    }
}
