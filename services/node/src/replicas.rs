//! A node's shard replicas: started from the cluster map on a fixed number
//! of storage threads, handed over on shutdown, stopped together. Shared by
//! `ringstore node` and `LocalCluster`, so both run shards the same way.

use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Arbiter};
use anyhow::Context as _;
use ringstore_shared::cluster_map::{ClusterMap, META_SHARD};
use ringstore_shared::config::{Limits, RaftConfig};
use ringstore_shared::{NodeId, ShardId};
use ringstore_storage::clock::SystemClock;
use ringstore_storage::messages::TransferLeadership;
use ringstore_storage::{
    Engine, LeaderHints, ReplicaConfig, ShardOp, ShardReply, ShardRequest, StorageActor, Transport,
};
use tokio::time::Instant;
use tracing::{info, warn};

/// Storage threads per node: every shard replica of the node runs on one
/// of these, so threads do not grow with shards. Two, because a Ready round
/// no longer waits for its fsync (the node's WAL syncer does), so a thread
/// is busy only while it computes and writes.
pub const STORAGE_THREADS_PER_NODE: usize = 2;

pub struct LocalReplicas {
    pub arbiters: Vec<Arbiter>,
    /// This node's replicas (the meta shard's too, if it has one), by shard id.
    pub replicas: Vec<(ShardId, Addr<StorageActor>)>,
}

/// Starts a replica of every shard the map places on `node`: data shards
/// owning their ring intervals, and the meta shard (which owns no keys, only
/// the map), spread round robin over the storage threads. `register` makes
/// each reachable (the transport's table); each publishes its view of its
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
    mut register: impl FnMut(ShardId, Addr<StorageActor>),
) -> anyhow::Result<LocalReplicas> {
    let arbiters: Vec<Arbiter> = (0..STORAGE_THREADS_PER_NODE).map(|_| Arbiter::new()).collect();
    let ring = map.ring();
    let mut replicas = Vec::new();
    for (i, shard) in map.shards_on(node).into_iter().enumerate() {
        let addr = StorageActor::start(
            ReplicaConfig {
                node,
                shard,
                ranges: if shard == META_SHARD { Vec::new() } else { ring.ranges_of(shard) },
                epoch: map.epoch,
                initial_voters: map.shards[&shard].clone(),
                raft: raft.clone(),
                limits: limits.clone(),
                leaders: leaders.clone(),
            },
            engine.clone(),
            transport.clone(),
            Arc::new(SystemClock),
            &arbiters[i % arbiters.len()].handle(),
        )
        .with_context(|| format!("starting shard {shard} on node {node}"))?;
        register(shard, addr.clone());
        replicas.push((shard, addr));
    }
    info!(node, replicas = replicas.len(), threads = arbiters.len(), "shard replicas started");
    Ok(LocalReplicas { arbiters, replicas })
}

impl LocalReplicas {
    pub fn shards(&self) -> Vec<ShardId> {
        self.replicas.iter().map(|(s, _)| *s).collect()
    }

    /// Hands over every shard this node leads, all at once, and waits
    /// (bounded by `within`) until each has moved, so clients see a
    /// handover, not an election timeout, when the node stops.
    pub async fn hand_over_leadership(&self, node: NodeId, within: Duration) {
        let handovers = self.replicas.iter().map(|(shard, addr)| hand_over(addr, node, *shard, within));
        futures::future::join_all(handovers).await;
    }

    /// Stops every storage thread and waits for them to end.
    pub async fn stop(self) -> anyhow::Result<()> {
        for a in &self.arbiters {
            a.stop();
        }
        let arbiters = self.arbiters;
        actix_rt::task::spawn_blocking(move || arbiters.into_iter().for_each(|a| drop(a.join())))
            .await
            .context("joining the storage threads")?;
        drop(self.replicas);
        Ok(())
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
