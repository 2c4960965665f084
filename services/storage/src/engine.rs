//! The node's one RocksDB instance and its column families.
//!
//! - `raft`: per-shard log entries, hard state, conf state, apply state
//!   (layout in [`crate::log_store`]).
//! - `data`: user values keyed `ring_point BE ++ user_key`.
//! - `meta`: this node's identity.
//!
//! Only this crate touches RocksDB; everything above it sees [`Engine`].

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Options, WriteBatch,
    WriteOptions, DB,
};
use thiserror::Error;

use crate::metrics;

/// Calls `f` for each pair from `from` until the iterator's upper bound or
/// until `f` returns `false`: the one loop behind both scans.
fn walk<D: rocksdb::DBAccess>(
    mut it: rocksdb::DBRawIteratorWithThreadMode<'_, D>,
    from: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), EngineError> {
    it.seek(from);
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
        if !f(k, v) {
            return Ok(());
        }
        it.next();
    }
    it.status()?;
    Ok(())
}

/// See [`Engine::snapshot`].
pub struct EngineSnapshot {
    // Dropped before `engine`, whose RocksDB it reads.
    snap: rocksdb::SnapshotWithThreadMode<'static, DB>,
    engine: Arc<Engine>,
}

impl EngineSnapshot {
    /// Like [`Engine::scan`], as of the snapshot. Snapshot scans are bulk
    /// reads (a follower snapshot, a key count): they leave the block cache
    /// to the hot keys.
    pub fn scan(&self, cf: Cf, from: &[u8], to: &[u8], f: impl FnMut(&[u8], &[u8]) -> bool) -> Result<(), EngineError> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.fill_cache(false);
        ro.set_iterate_upper_bound(to.to_vec());
        walk(self.snap.raw_iterator_cf_opt(self.engine.cf(cf), ro), from, f)
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.snap.get_cf(self.engine.cf(cf), key)?)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("opening RocksDB at {path}: {source}")]
    Open { path: PathBuf, source: rocksdb::Error },
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("data dir belongs to another node: expected node {expected}, found {found}")]
    Identity { expected: u64, found: String },
    #[error("corrupt record in column family {cf}: {detail}")]
    Corrupt { cf: &'static str, detail: String },
    #[error(
        "data dir holds {count} records at the ring points of an older placement ({found}); \
         hash tags ({{tag}} in a key) moved them: export them with the version that wrote them \
         (GET /v1/kv?prefix=), and import them after the upgrade"
    )]
    Placement { found: String, count: u64 },
    #[error("background scan abandoned: its replica stopped")]
    Abandoned,
}

/// Memtable size of the `raft` and `data` families.
pub const MEMTABLE_BYTES: usize = 32 * 1024 * 1024;
/// All memtables of one RocksDB together.
pub const MEMTABLES_BYTES_MAX: usize = 96 * 1024 * 1024;
/// The block cache shared by the families of one RocksDB.
pub const BLOCK_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Share of a data memtable spent on its whole-key bloom filter (RocksDB
/// caps the ratio at 0.25): 2% of 32 MiB is 640 KiB, about 10 bits per key
/// of 256-byte values.
const MEMTABLE_BLOOM_RATIO: f64 = 0.02;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    Raft,
    Data,
    Meta,
}

impl Cf {
    pub const ALL: [Cf; 3] = [Cf::Raft, Cf::Data, Cf::Meta];
    pub fn name(self) -> &'static str {
        match self {
            Cf::Raft => "raft",
            Cf::Data => "data",
            Cf::Meta => "meta",
        }
    }
}

/// Called by the WAL syncer once the WAL is durable up to (at least) every
/// write that returned before the request was made; `Err` carries why not.
pub type SyncDone = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Sync requests queued for the syncer thread before a requester waits:
/// bounds memory if the disk stalls (storage threads then block, which is
/// the backpressure we want).
pub const WAL_SYNC_QUEUE_MAX: usize = 4096;

pub struct Engine {
    db: DB,
    path: PathBuf,
    node_label: String,
    write_metrics: metrics::EngineWriteMetrics,
    /// The node's one WAL syncer, started on first use (see [`Engine::sync_wal_async`]).
    syncer: OnceLock<SyncSender<SyncDone>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("path", &self.path).finish()
    }
}

impl Engine {
    /// Opens (creating if needed) the RocksDB at `path`. `node_label`
    /// labels this engine's metrics.
    pub fn open(path: &Path, node_label: &str) -> Result<Arc<Engine>, EngineError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        // Memtables of all families together; RocksDB flushes the largest
        // when the sum passes it. The default (64 MiB per family, unbounded
        // in sum) made memtables most of a node's memory.
        opts.set_db_write_buffer_size(MEMTABLES_BYTES_MAX);
        // One block cache for all families, as TiKV does, instead of one
        // default cache per family.
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = Options::default();
            let mut t = BlockBasedOptions::default();
            t.set_block_cache(&cache);
            o.set_block_based_table_factory(&t);
            o.set_write_buffer_size(match cf {
                Cf::Raft | Cf::Data => MEMTABLE_BYTES,
                Cf::Meta => 4 * 1024 * 1024,
            });
            if *cf == Cf::Data {
                o.set_compression_type(DBCompressionType::Lz4);
                // Most point reads of an apply look for what is not there
                // (a new request id, a key with no fence): bloom filters
                // answer those without walking the memtable's skiplist or
                // reading SST blocks. That walk was 6.5% of a node's CPU
                // under writes (perf, docs/BENCHMARKS.md).
                o.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
                o.set_memtable_whole_key_filtering(true);
                t.set_bloom_filter(10.0, false);
                t.set_whole_key_filtering(true);
                o.set_block_based_table_factory(&t);
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)
            .map_err(|source| EngineError::Open { path: path.to_path_buf(), source })?;
        Ok(Arc::new(Engine {
            db,
            path: path.to_path_buf(),
            node_label: node_label.to_string(),
            write_metrics: metrics::EngineWriteMetrics::new(node_label),
            syncer: OnceLock::new(),
        }))
    }

    /// Makes every write that has returned so far durable, then calls
    /// `done` on the syncer thread.
    ///
    /// This is how a node batches fsyncs across its shards (group commit,
    /// as TiKV's async-io writers do): each shard replica writes its Ready
    /// without sync and asks here; one thread per node fsyncs the WAL once
    /// for every request queued meanwhile, so N shards' Ready rounds cost
    /// one fsync, and storage threads keep working while the disk syncs.
    pub fn sync_wal_async(self: &Arc<Self>, done: SyncDone) {
        let tx = self.syncer.get_or_init(|| {
            let (tx, rx) = sync_channel(WAL_SYNC_QUEUE_MAX);
            let weak = Arc::downgrade(self);
            let name = format!("wal-sync-{}", self.node_label);
            if let Err(e) = std::thread::Builder::new().name(name).spawn(move || run_syncer(weak, rx)) {
                // Without a thread no write could ever be acknowledged.
                tracing::error!("cannot start the WAL syncer thread: {e}");
                std::process::abort();
            }
            tx
        });
        if let Err(e) = tx.send(done) {
            // The receiver lives as long as this engine; a dead one means the
            // thread panicked, and no durability promise can be kept.
            tracing::error!("WAL syncer is gone: {e}");
            std::process::abort();
        }
    }

    /// Fsyncs the WAL: every write that returned before is durable after.
    pub fn sync_wal(&self) -> Result<(), EngineError> {
        let start = Instant::now();
        self.db.flush_wal(true)?;
        self.write_metrics.wal_sync_seconds.observe(start.elapsed().as_secs_f64());
        Ok(())
    }

    pub(crate) fn write_metrics(&self) -> &metrics::EngineWriteMetrics {
        &self.write_metrics
    }

    pub fn node_label(&self) -> &str {
        &self.node_label
    }

    pub(crate) fn cf(&self, cf: Cf) -> &ColumnFamily {
        // The families are created at open; a missing one is a bug, not input.
        self.db.cf_handle(cf.name()).expect("column family created at open")
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// Writes `batch` atomically; `sync` waits for the WAL fsync.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), EngineError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        let start = Instant::now();
        let bytes = batch.size_in_bytes();
        self.db.write_opt(batch, &wo)?;
        let m = &self.write_metrics;
        let latency = if sync { &m.synced_seconds } else { &m.unsynced_seconds };
        latency.observe(start.elapsed().as_secs_f64());
        m.bytes.inc_by(bytes as u64);
        Ok(())
    }

    /// Calls `f` for each `(key, value)` of `cf` in `[from, to)`, in key
    /// order, until it returns `false`.
    pub fn scan(&self, cf: Cf, from: &[u8], to: &[u8], f: impl FnMut(&[u8], &[u8]) -> bool) -> Result<(), EngineError> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(to.to_vec());
        walk(self.db.raw_iterator_cf_opt(self.cf(cf), ro), from, f)
    }

    /// A point-in-time view of the whole DB that may go to another thread
    /// (a snapshot for a follower is built off the storage thread).
    pub fn snapshot(self: &Arc<Self>) -> EngineSnapshot {
        let snap = self.db.snapshot();
        // SAFETY: `snap` borrows `self.db`, which lives in the `Arc`'s
        // allocation (it never moves) and is kept alive by the `engine`
        // field of `EngineSnapshot`, declared after `snap` and so dropped
        // after it. The lifetime is only widened to carry both together.
        let snap = unsafe {
            std::mem::transmute::<rocksdb::SnapshotWithThreadMode<'_, DB>, rocksdb::SnapshotWithThreadMode<'static, DB>>(
                snap,
            )
        };
        EngineSnapshot { snap, engine: self.clone() }
    }

    /// The last key in `[from, to)` of `cf`, if any.
    pub fn last_key_in(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_lower_bound(from.to_vec());
        ro.set_iterate_upper_bound(to.to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), ro);
        it.seek_to_last();
        let key = if it.valid() { it.key().map(<[u8]>::to_vec) } else { None };
        it.status()?;
        Ok(key)
    }

    /// Approximate live bytes of SST files, for metrics.
    pub fn sst_bytes(&self) -> u64 {
        Cf::ALL
            .iter()
            .filter_map(|cf| self.db.property_int_value_cf(self.cf(*cf), "rocksdb.total-sst-files-size").ok().flatten())
            .sum()
    }

    /// Records `node` as this data dir's owner on first use; refuses a dir
    /// that belongs to another node. Checks the dir's placement too (see
    /// [`check_or_set_placement`](Self::check_or_set_placement)).
    pub fn check_or_set_identity(&self, node: u64) -> Result<(), EngineError> {
        const KEY: &[u8] = b"node_id";
        match self.get(Cf::Meta, KEY)? {
            Some(v) if v.as_slice() == node.to_be_bytes() => {}
            Some(v) => return Err(EngineError::Identity { expected: node, found: format!("{v:?}") }),
            None => {
                let mut b = WriteBatch::default();
                b.put_cf(self.cf(Cf::Meta), KEY, node.to_be_bytes());
                self.write(b, true)?;
            }
        }
        self.check_or_set_placement()
    }

    /// Hash tags (`{tag}` in a key, see `hash::key_point`) changed where
    /// keys with braces live. A data dir written before them may hold such
    /// keys at their old points, where no read would find them: refuse to
    /// serve it rather than lose them silently. A dir is checked once
    /// (a full pass over the `data` family) and then marked.
    pub fn check_or_set_placement(&self) -> Result<(), EngineError> {
        const KEY: &[u8] = b"placement";
        const HASH_TAGS: &[u8] = b"hash-tags-1";
        match self.get(Cf::Meta, KEY)? {
            Some(v) if v == HASH_TAGS => return Ok(()),
            Some(v) => {
                return Err(EngineError::Placement { found: String::from_utf8_lossy(&v).into_owned(), count: 0 })
            }
            None => {}
        }
        let (mut count, mut example) = (0u64, None);
        self.scan(Cf::Data, &[], &[0xff; 9], |k, _| {
            if ringstore_shared::keys::misplaced(k) {
                count += 1;
                example.get_or_insert_with(|| {
                    String::from_utf8_lossy(&k[ringstore_shared::keys::RING_POINT_LEN..]).into_owned()
                });
            }
            true
        })?;
        if let Some(example) = example {
            return Err(EngineError::Placement {
                found: format!("keys with braces placed before hash tags, e.g. {example:?}"),
                count,
            });
        }
        self.meta_put(KEY, HASH_TAGS)
    }

    /// A node-level record in the `meta` column family (identity and the like).
    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.get(Cf::Meta, key)
    }

    /// Writes a node-level record, synced: it is written rarely and must survive.
    pub fn meta_put(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        self.meta_write(key, value, true)
    }

    /// `meta_put` without waiting for the fsync: for records a crash may
    /// lose because they are rebuilt from replicated state (the WAL keeps
    /// order, so the next synced write makes it durable too).
    pub fn meta_put_unsynced(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        self.meta_write(key, value, false)
    }

    fn meta_write(&self, key: &[u8], value: &[u8], sync: bool) -> Result<(), EngineError> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(Cf::Meta), key, value);
        self.write(b, sync)
    }

    /// Flushes memtables to SST files, so the next open replays no WAL
    /// (graceful shutdown).
    pub fn flush(&self) -> Result<(), EngineError> {
        let cfs: Vec<&ColumnFamily> = Cf::ALL.iter().map(|cf| self.cf(*cf)).collect();
        self.db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }

    /// Bytes compaction still has to rewrite (RocksDB's estimate), for metrics.
    pub fn pending_compaction_bytes(&self) -> u64 {
        Cf::ALL
            .iter()
            .filter_map(|cf| {
                self.db.property_int_value_cf(self.cf(*cf), "rocksdb.estimate-pending-compaction-bytes").ok().flatten()
            })
            .sum()
    }

    /// A new empty batch.
    pub fn batch(&self) -> WriteBatch {
        WriteBatch::default()
    }

    pub(crate) fn put(&self, b: &mut WriteBatch, cf: Cf, k: &[u8], v: &[u8]) {
        b.put_cf(self.cf(cf), k, v);
    }
    pub(crate) fn delete(&self, b: &mut WriteBatch, cf: Cf, k: &[u8]) {
        b.delete_cf(self.cf(cf), k);
    }
    pub(crate) fn delete_range(&self, b: &mut WriteBatch, cf: Cf, from: &[u8], to: &[u8]) {
        b.delete_range_cf(self.cf(cf), from, to);
    }

    /// Raw single-key writes to the `meta` column family, bypassing Raft:
    /// the physical limit that `ringstore-loadtest raw-rocksdb` measures.
    /// `batch` keys go in one write.
    pub fn raw_put_batch(&self, keys: &[Vec<u8>], value: &[u8], sync: bool) -> Result<(), EngineError> {
        let mut b = WriteBatch::default();
        for k in keys {
            let mut key = b"bench/".to_vec();
            key.extend_from_slice(k);
            b.put_cf(self.cf(Cf::Meta), key, value);
        }
        self.write(b, sync)
    }
}

/// The syncer thread: waits for one request, takes every other one queued
/// behind it, fsyncs once and answers them all. It holds only a weak
/// reference, so closing the engine is not delayed by an idle syncer; it
/// ends when the engine (and so the sender) is dropped.
fn run_syncer(engine: Weak<Engine>, rx: Receiver<SyncDone>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter().take(WAL_SYNC_QUEUE_MAX));
        let result = match engine.upgrade() {
            Some(e) => {
                e.write_metrics.wal_sync_readies.observe(group.len() as f64);
                e.sync_wal().map_err(|err| err.to_string())
            }
            None => Err("engine closed before the WAL was synced".to_string()),
        };
        for done in group {
            done(result.clone());
        }
    }
}
