//! Keeps a node in step with the cluster map its map keeper installs:
//! new peers get links, the snapshot rate follows the rebalance settings,
//! replicas moving here start and replicas moved away are destroyed, and
//! the map is stored so a restart starts from it.

use std::sync::Arc;
use std::time::Duration;

use ringstore_router::MapCell;
use ringstore_shared::cluster_map::ClusterMap;
use ringstore_storage::Engine;
use tracing::{info, warn};

use crate::replicas::LocalReplicas;

/// How often the follower looks for a newer map (the keeper reads the meta
/// shard every second; this only compares epochs).
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);
/// The `meta` family record of the last map this node followed.
pub const MAP_KEY: &[u8] = b"cluster_map";

/// The map this node last followed, if any.
pub fn stored_map(engine: &Engine) -> anyhow::Result<Option<ClusterMap>> {
    use anyhow::Context as _;
    engine.meta_get(MAP_KEY)?.map(|b| ClusterMap::decode(&b)).transpose().context("the stored cluster map")
}

/// Not synced: a synced write holds every other RocksDB write of the node
/// (its replicas' Raft rounds) behind its fsync, and a split changes the
/// map twice. Nothing needs it durable on its own: the replica list and
/// the identity that must not be older than it are written (synced) after
/// it, and the WAL keeps order; a lost map is read again from the meta
/// shard.
pub fn store_map(engine: &Engine, map: &ClusterMap) -> anyhow::Result<()> {
    engine.meta_put_unsynced(MAP_KEY, &map.encode())?;
    Ok(())
}

/// Runs until aborted with the node. `on_map` sees every new map first
/// (links to new peers, settings).
pub async fn follow_map(
    cell: Arc<MapCell>,
    replicas: Arc<LocalReplicas>,
    engine: Arc<Engine>,
    on_map: Box<dyn Fn(&ClusterMap) + Send>,
) {
    let node = cell.node();
    let mut followed = 0;
    loop {
        let table = cell.load();
        if table.epoch != followed {
            on_map(&table.map);
            // The map is stored before the replica list changes, so the
            // stored map is never older than the list: a restart then never
            // deletes a replica the list has because its map is stale.
            if let Err(e) = store_map(&engine, &table.map) {
                warn!(node, "storing the cluster map: {e:#}; retrying");
                tokio::time::sleep(FOLLOW_INTERVAL).await;
                continue;
            }
            match replicas.reconcile(&table.map).await {
                Ok((added, gone)) => {
                    if !added.is_empty() || !gone.is_empty() {
                        info!(node, epoch = table.epoch, ?added, ?gone, "replicas follow the cluster map");
                    }
                    followed = table.epoch;
                }
                Err(e) => warn!(node, epoch = table.epoch, "following the cluster map: {e:#}; retrying"),
            }
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}
