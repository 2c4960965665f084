//! A node's shard replicas: started on a fixed number of storage threads,
//! added and destroyed as the cluster map moves replicas, handed over on
//! shutdown, stopped together. Shared by `ringstore node` and
//! `LocalCluster`, so both run shards the same way.
//!
//! Which replicas a node runs is recorded in its `meta` column family
//! (`replicas`), so a restart brings back exactly the replicas it held,
//! whatever map it last saw. The map then says what to add (a replica
//! moving here starts empty and waits for its leader's snapshot) and what
//! to delete (a replica moved away, once the map no longer lists it).
//!
//! A split starts the new shard's replica here when the source replica has
//! applied it ([`ringstore_storage::actor::SplitHook`]); the map only adds
//! an empty replica of a shard when no replica of this node still owns any
//! of its points (else that replica's split will create it, with data).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use actix::{Addr, Arbiter};
use anyhow::Context as _;
use ringstore_shared::cluster_map::{ClusterMap, META_SHARD};
use ringstore_shared::codec::{Reader, Writer};
use ringstore_shared::config::{Limits, RaftConfig};
use ringstore_shared::{NodeId, ShardId};
use ringstore_storage::actor::{Campaign, SplitHook, SplitOff};
use ringstore_storage::clock::SystemClock;
use ringstore_storage::messages::{DestroyReplica, TransferLeadership};
use ringstore_storage::snapshot::PointRange;
use ringstore_storage::{
    Engine, LeaderHints, RangeRegistry, ReplicaConfig, ShardOp, ShardReply, ShardRequest, StorageActor, Transport,
};
use tokio::time::Instant;
use tracing::{info, warn};

/// Most storage threads a node may run.
pub const STORAGE_THREADS_MAX: usize = 64;

/// Storage threads per node unless configured: every shard replica of the
/// node runs on one of these, so threads do not grow with shards. Half the
/// cores this process may use (cgroup quota included), at least one and at
/// most eight: a Ready round does not wait for its fsync (the node's WAL
/// syncer does), so a thread is busy only while it computes and writes,
/// and the replicas of one thread share its write rounds, so fewer threads
/// batch better. On two cores that is one thread, which beat two by 1.25x
/// on writes (docs/BENCHMARKS.md); more cores get more.
pub fn default_storage_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get() / 2).clamp(1, 8)
}

/// The `meta` family record listing this node's replicas.
const REPLICAS_KEY: &[u8] = b"replicas";

/// Makes a replica reachable through the node's transport (`Some`) or
/// withdraws it (`None`).
pub type Register = Box<dyn Fn(ShardId, Option<Addr<StorageActor>>) + Send + Sync>;

pub struct LocalReplicas {
    node: NodeId,
    engine: Arc<Engine>,
    transport: Arc<dyn Transport>,
    leaders: Arc<LeaderHints>,
    raft: RaftConfig,
    limits: Limits,
    register: Register,
    arbiters: Mutex<Vec<Arbiter>>,
    next_thread: AtomicUsize,
    /// This node's replicas (the meta shard's too, if it has one). A
    /// `std` mutex: held for map edits only, never across an await.
    running: Mutex<BTreeMap<ShardId, Addr<StorageActor>>>,
    /// Which points each of them owns.
    registry: Arc<RangeRegistry>,
    /// Itself, for the split hook its replicas call.
    me: Weak<LocalReplicas>,
}

/// Starts the replicas this node holds: those its `meta` record lists, or
/// on a node's first start, those `map` places on it (bootstrapping them
/// with the map's voters). Data shards own their ring intervals; the meta
/// shard owns no keys, only the map. Each publishes its view of its
/// shard's leader in `leaders`, which the node's routers read.
#[allow(clippy::too_many_arguments)]
pub fn start(
    node: NodeId,
    map: &ClusterMap,
    engine: &Arc<Engine>,
    transport: Arc<dyn Transport>,
    leaders: &Arc<LeaderHints>,
    raft: &RaftConfig,
    limits: &Limits,
    register: Register,
    threads: usize,
) -> anyhow::Result<Arc<LocalReplicas>> {
    let threads = threads.clamp(1, STORAGE_THREADS_MAX);
    let arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
    let replicas = Arc::new_cyclic(|me| LocalReplicas {
        node,
        engine: engine.clone(),
        transport,
        leaders: leaders.clone(),
        raft: raft.clone(),
        limits: limits.clone(),
        register,
        arbiters: Mutex::new(arbiters),
        next_thread: AtomicUsize::new(0),
        running: Mutex::default(),
        registry: Arc::default(),
        me: me.clone(),
    });
    let stored = replicas.stored_list()?;
    let shards = stored.clone().unwrap_or_else(|| map.hosted_on(node));
    let ranges = map.ring().ranges_by_shard();
    for shard in shards {
        // Bootstrap voters only for a shard this node is a voter of in the
        // map; a move's target (crashed before its state was written)
        // starts empty again and waits for the snapshot.
        let voters = map.shards.get(&shard).filter(|v| v.contains(&node)).cloned().unwrap_or_default();
        replicas.start_one(shard, map_ranges(&ranges, shard), map.epoch, &voters, None)?;
    }
    if stored.is_none() {
        replicas.save_list()?;
    }
    info!(node, replicas = replicas.shards().len(), threads, "shard replicas started");
    Ok(replicas)
}

impl LocalReplicas {
    pub fn shards(&self) -> Vec<ShardId> {
        self.lock().keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ShardId, Addr<StorageActor>>> {
        // The map stays consistent across a panic elsewhere.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stored_list(&self) -> anyhow::Result<Option<Vec<ShardId>>> {
        let Some(b) = self.engine.meta_get(REPLICAS_KEY)? else { return Ok(None) };
        let mut r = Reader::new(&b);
        let n = r.u32("replica count").context("the local replica list")?;
        let mut v = Vec::with_capacity((n as usize).min(4096));
        for _ in 0..n {
            v.push(r.u64("shard").context("the local replica list")?);
        }
        r.finish().context("the local replica list")?;
        Ok(Some(v))
    }

    /// `sync: false` where losing the write in a crash is harmless: the
    /// replica's own state is on disk and the map brings it back.
    fn save_list_with(&self, sync: bool) -> anyhow::Result<()> {
        let shards = self.shards();
        let mut w = Writer::with_capacity(4 + 8 * shards.len());
        w.u32(shards.len() as u32);
        for s in &shards {
            w.u64(*s);
        }
        match sync {
            true => self.engine.meta_put(REPLICAS_KEY, &w.buf)?,
            false => self.engine.meta_put_unsynced(REPLICAS_KEY, &w.buf)?,
        }
        Ok(())
    }

    fn save_list(&self) -> anyhow::Result<()> {
        self.save_list_with(true)
    }

    /// Starts a replica of `shard`, bootstrapped with `voters` and `ranges`
    /// if this node has no state for it (no voters: it waits for its
    /// leader's snapshot).
    fn start_one(
        &self,
        shard: ShardId,
        ranges: Vec<PointRange>,
        epoch: u64,
        voters: &[NodeId],
        split_off: Option<SplitOff>,
    ) -> anyhow::Result<()> {
        let i = self.next_thread.fetch_add(1, Ordering::Relaxed);
        let arbiter = {
            let arbiters = self.arbiters.lock().unwrap_or_else(|e| e.into_inner());
            arbiters[i % arbiters.len()].handle()
        };
        let addr = StorageActor::start(
            ReplicaConfig {
                node: self.node,
                shard,
                ranges,
                epoch,
                initial_voters: voters.to_vec(),
                raft: self.raft.clone(),
                limits: self.limits.clone(),
                leaders: self.leaders.clone(),
                registry: self.registry.clone(),
                on_split: self.split_hook(),
                split_off,
            },
            self.engine.clone(),
            self.transport.clone(),
            Arc::new(SystemClock),
            &arbiter,
        )
        .with_context(|| format!("starting shard {shard} on node {}", self.node))?;
        (self.register)(shard, Some(addr.clone()));
        self.lock().insert(shard, addr);
        Ok(())
    }

    fn split_hook(&self) -> SplitHook {
        let me = self.me.clone();
        Arc::new(move |target, campaign, split_off| {
            if let Some(replicas) = me.upgrade() {
                replicas.start_split_off(target, campaign, split_off);
            }
        })
    }

    /// A replica of this node applied a split: start the new shard's
    /// replica from the state the split wrote, with the held locks and
    /// the count of its keys the source hands over.
    fn start_split_off(&self, shard: ShardId, campaign: bool, split_off: SplitOff) {
        if self.lock().contains_key(&shard) {
            warn!(node = self.node, shard, "a split's new shard already runs here");
            return;
        }
        info!(node = self.node, shard, campaign, "starting a shard split off here");
        // This runs on the storage thread that applied the split: no fsync
        // here (every replica of the thread would wait for it), and the
        // vote starts before the list is written.
        let started = self.start_one(shard, Vec::new(), 0, &[], Some(split_off));
        if started.is_ok() && campaign {
            if let Some(addr) = self.lock().get(&shard) {
                addr.do_send(Campaign);
            }
        }
        // The state is on disk: if this is lost, the map brings the replica back.
        if let Err(e) = started.and_then(|()| self.save_list_with(false)) {
            warn!(node = self.node, shard, "starting a split's new shard: {e:#}");
        }
    }

    /// Brings the running replicas in line with `map`: starts (empty) the
    /// replicas moving here, destroys those moved away. Returns what
    /// changed.
    pub async fn reconcile(&self, map: &ClusterMap) -> anyhow::Result<(Vec<ShardId>, Vec<ShardId>)> {
        let wanted = map.hosted_on(self.node);
        let running = self.shards();
        let new: Vec<ShardId> = wanted.iter().copied().filter(|s| !running.contains(s)).collect();
        // Most maps start nothing here: the ring is walked only when one does.
        let ranges = if new.is_empty() { HashMap::new() } else { map.ring().ranges_by_shard() };
        let added: Vec<ShardId> = new
            .into_iter()
            .filter(|s| match self.registry.owner_of_any(&map_ranges(&ranges, *s)) {
                // That replica has yet to apply the split that creates this one.
                Some(owner) => {
                    info!(node = self.node, shard = *s, owner, "waiting for a local split before starting a replica");
                    false
                }
                None => true,
            })
            .collect();
        // Only shards the map knows: a replica of a shard missing from the
        // map is kept (a newer map may be on its way).
        let gone: Vec<ShardId> =
            running.iter().copied().filter(|s| !wanted.contains(s) && map.shards.contains_key(s)).collect();
        for &shard in &added {
            info!(node = self.node, shard, epoch = map.epoch, "starting a replica moving here");
            self.start_one(shard, map_ranges(&ranges, shard), map.epoch, &[], None)?;
        }
        if !added.is_empty() {
            self.save_list()?;
        }
        for &shard in &gone {
            info!(node = self.node, shard, epoch = map.epoch, "destroying a replica moved away");
            (self.register)(shard, None);
            let addr = self.lock().remove(&shard);
            // Off the list first: a crash in between leaves data nobody
            // lists, never a listed replica without data.
            self.save_list()?;
            if let Some(addr) = addr {
                match addr.send(DestroyReplica).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => anyhow::bail!(e),
                    Err(_) => warn!(node = self.node, shard, "replica stopped before it could be destroyed"),
                }
            }
        }
        Ok((added, gone))
    }

    /// Hands over every shard this node leads, all at once, and waits
    /// (bounded by `within`) until each has moved, so clients see a
    /// handover, not an election timeout, when the node stops.
    pub async fn hand_over_leadership(&self, within: Duration) {
        let running: Vec<(ShardId, Addr<StorageActor>)> = self.lock().iter().map(|(s, a)| (*s, a.clone())).collect();
        let handovers = running.iter().map(|(shard, addr)| hand_over(addr, self.node, *shard, within));
        futures::future::join_all(handovers).await;
    }

    /// [`Self::hand_over_leadership`] as the API's `POST /v1/node/handover`
    /// calls it.
    pub fn handover(self: &Arc<Self>, within: Duration) -> ringstore_api::Handover {
        let replicas = self.clone();
        Arc::new(move || {
            let r = replicas.clone();
            Box::pin(async move { r.hand_over_leadership(within).await })
        })
    }

    /// Stops every storage thread and waits for them to end.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let arbiters = std::mem::take(&mut *self.arbiters.lock().unwrap_or_else(|e| e.into_inner()));
        for a in &arbiters {
            a.stop();
        }
        actix_rt::task::spawn_blocking(move || arbiters.into_iter().for_each(|a| drop(a.join())))
            .await
            .context("joining the storage threads")?;
        self.lock().clear();
        Ok(())
    }
}

/// The points the map's ring gives `shard` (none for the meta shard),
/// from [`ringstore_shared::ring::Ring::ranges_by_shard`].
fn map_ranges(ranges: &HashMap<ShardId, Vec<PointRange>>, shard: ShardId) -> Vec<PointRange> {
    if shard == META_SHARD {
        Vec::new()
    } else {
        ranges.get(&shard).cloned().unwrap_or_default()
    }
}

async fn hand_over(storage: &Addr<StorageActor>, node: NodeId, shard: ShardId, within: Duration) {
    let Ok(Some(target)) = storage.send(TransferLeadership).await else { return };
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(Ok(ShardReply::Status(s))) = storage.send(ShardRequest(ShardOp::Status)).await {
            if s.role != "leader" {
                info!(node, shard, target, leader = ?s.leader, "leadership handed over");
                return;
            }
        }
    }
    warn!(node, shard, target, "leadership did not move within {within:?}; stopping anyway");
}
