//! The node's current routing table and how it follows the cluster map in
//! the meta shard.
//!
//! Every Router of a node reads one [`MapCell`]. A new table replaces the
//! old one only at a higher epoch, so a slow refresh never undoes a newer
//! one. The map is read from the meta shard's leader (ReadIndex, so never
//! older than the last committed change) when a storage replica answers
//! `WrongShard` and periodically by the node's map keeper
//! ([`sync_with_meta`]), which also writes the bootstrap map into an empty
//! meta shard.

use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use prometheus::{register_int_counter_vec, register_int_gauge_vec, IntCounterVec, IntGaugeVec};
use ringstore_shared::apply::Outcome;
use ringstore_shared::cluster_map::{ClusterMap, META_SHARD};
use ringstore_shared::command::Command;
use ringstore_shared::{NodeId, StoreError};
use ringstore_storage::{LeaderHints, ShardOp, ShardReply, Transport};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::{send_to_shard, RoutingTable};

static MAP_EPOCH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("ringstore_router_map_epoch", "Epoch of the cluster map this node routes by", &["node"])
        .expect("registers once")
});

static MAP_REFRESHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ringstore_router_map_refreshes_total",
        "Reads of the cluster map from the meta shard (result=updated, unchanged, bootstrapped, failed), and watches answered (result=watched)",
        &["node", "result"]
    )
    .expect("registers once")
});

pub struct MapCell {
    node: NodeId,
    table: RwLock<Arc<RoutingTable>>,
    /// What the node's own replicas know of their shards' leaders.
    leaders: Arc<LeaderHints>,
}

impl MapCell {
    pub fn new(node: NodeId, table: RoutingTable, leaders: Arc<LeaderHints>) -> Arc<Self> {
        let n = node.to_string();
        MAP_EPOCH.with_label_values(&[&n]).set(table.epoch as i64);
        // Every series exists from the start, so rate() and alerts see 0,
        // not absence, until the first retry or refresh.
        for reason in crate::RETRY_REASONS {
            crate::RETRIES.with_label_values(&[&n, reason]);
        }
        crate::FAST_FAILS.with_label_values(&[&n]);
        for result in ["updated", "unchanged", "bootstrapped", "failed", "watched"] {
            MAP_REFRESHES.with_label_values(&[&n, result]);
        }
        Arc::new(MapCell { node, table: RwLock::new(Arc::new(table)), leaders })
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn leaders(&self) -> &LeaderHints {
        &self.leaders
    }

    /// The table to route by now. A read lock held for one `Arc` clone:
    /// writers come once per map change, so readers do not wait.
    pub fn load(&self) -> Arc<RoutingTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn epoch(&self) -> u64 {
        self.load().epoch
    }

    /// Routes by `map` from now on if it is newer than the current table;
    /// known leaders of shards with the same replicas carry over.
    pub fn install(&self, map: &ClusterMap) -> bool {
        let mut cur = self.table.write().unwrap_or_else(|e| e.into_inner());
        if map.epoch <= cur.epoch {
            return false;
        }
        let next = RoutingTable::from_map(map);
        next.inherit_leaders(&cur);
        info!(node = self.node, from = cur.epoch, to = map.epoch, "routing by a new cluster map");
        MAP_EPOCH.with_label_values(&[&self.node.to_string()]).set(map.epoch as i64);
        *cur = Arc::new(next);
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// A newer map was installed.
    Updated,
    /// The meta shard holds the map already routed by.
    Unchanged,
    /// The meta shard was empty and now holds the bootstrap map.
    Bootstrapped,
}

impl Refresh {
    fn label(self) -> &'static str {
        match self {
            Refresh::Updated => "updated",
            Refresh::Unchanged => "unchanged",
            Refresh::Bootstrapped => "bootstrapped",
        }
    }
}

/// Reads the map from the meta shard and installs it if newer. With
/// `bootstrap`, an empty meta shard is given that map (epoch 1) first: every
/// node proposes the same one, and the epoch check lets exactly one apply.
pub async fn sync_with_meta(
    cell: &MapCell,
    transport: &Arc<dyn Transport>,
    bootstrap: Option<&ClusterMap>,
    timeout: Duration,
) -> Result<Refresh, StoreError> {
    let result = sync_inner(cell, transport, bootstrap, timeout).await;
    let label = match &result {
        Ok(r) => r.label(),
        Err(_) => "failed",
    };
    MAP_REFRESHES.with_label_values(&[&cell.node.to_string(), label]).inc();
    result
}

async fn sync_inner(
    cell: &MapCell,
    transport: &Arc<dyn Transport>,
    bootstrap: Option<&ClusterMap>,
    timeout: Duration,
) -> Result<Refresh, StoreError> {
    let deadline = Instant::now() + timeout;
    let table = cell.load();
    let read = send_to_shard(cell, &table, transport, META_SHARD, ShardOp::ReadMap, deadline).await?;
    let stored = match read {
        ShardReply::Map(m) => m,
        other => return Err(StoreError::Internal(format!("meta shard answered a map read with {other:?}"))),
    };
    match (stored, bootstrap) {
        (Some(bytes), _) => {
            let map = ClusterMap::decode(&bytes)
                .map_err(|e| StoreError::Internal(format!("the meta shard's cluster map: {e}")))?;
            Ok(if cell.install(&map) { Refresh::Updated } else { Refresh::Unchanged })
        }
        (None, Some(boot)) => {
            let cmd = Command::SetMap { expected_epoch: 0, map: boot.encode() };
            let op = ShardOp::write(cmd);
            match send_to_shard(cell, &table, transport, META_SHARD, op, deadline).await? {
                ShardReply::Outcome(Outcome::MapSet { epoch }) => {
                    info!(node = cell.node, epoch, "wrote the bootstrap cluster map to the meta shard");
                    cell.install(boot);
                    Ok(Refresh::Bootstrapped)
                }
                // Another node's bootstrap won; the next read installs it.
                ShardReply::Outcome(Outcome::MapConflict { current }) => {
                    warn!(node = cell.node, current, "bootstrap map raced another node's");
                    Ok(Refresh::Unchanged)
                }
                other => Err(StoreError::Internal(format!("meta shard answered SetMap with {other:?}"))),
            }
        }
        (None, None) => Ok(Refresh::Unchanged),
    }
}

/// Longest pause of [`catch_up`] between two map reads.
const CATCH_UP_PAUSE_MAX: Duration = Duration::from_millis(50);

/// For a caller that saw a shard act on a newer map than this node routes
/// by (a split whose new shard the map lists one meta commit later): reads
/// the map from the meta shard and, while `behind` still holds for the
/// node's table, pauses before the caller asks again (2 ms, doubling with
/// `attempt`, at most 50 ms). `false` when `deadline` leaves no room for
/// the pause: the caller gives up.
pub async fn catch_up(
    cell: &MapCell,
    transport: &Arc<dyn Transport>,
    attempt: u32,
    deadline: Instant,
    behind: impl Fn(&crate::RoutingTable) -> bool,
) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    let r = sync_with_meta(cell, transport, None, left).await;
    let table = cell.load();
    if !behind(&table) {
        return true;
    }
    debug!(node = cell.node, epoch = table.epoch, ?r, attempt, "the map is behind a shard; waiting for it");
    let pause = Duration::from_millis(2u64 << attempt.min(5)).min(CATCH_UP_PAUSE_MAX);
    if Instant::now() + pause >= deadline {
        return false;
    }
    tokio::time::sleep(pause).await;
    true
}

/// How often a node's map keeper reads the meta shard once it has synced:
/// a node learns within this that it should start (or drop) a replica.
pub const MAP_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Pause between attempts while the meta shard cannot answer yet (startup,
/// election).
const MAP_SYNC_RETRY: Duration = Duration::from_millis(250);

/// How long a keeper's watch of the meta shard waits for a newer map
/// before it reads the map again anyway.
pub const MAP_WATCH_WAIT: Duration = Duration::from_secs(5);

/// The node's map keeper: writes the bootstrap map into an empty meta shard
/// (a node that joined has none to write) and keeps `cell` following the
/// meta shard's map, until the task is aborted with the node. After each
/// read it watches the meta leader (a long poll answered when a newer map
/// applies), so a change reaches every node in about one round trip, not
/// at its next read.
pub async fn keep_in_sync(cell: Arc<MapCell>, transport: Arc<dyn Transport>, bootstrap: Option<ClusterMap>) {
    loop {
        match sync_with_meta(&cell, &transport, bootstrap.as_ref(), MAP_SYNC_INTERVAL).await {
            Ok(_) => {
                if let Err(e) = watch_map(&cell, &transport, MAP_WATCH_WAIT).await {
                    tracing::debug!(node = cell.node, "watching the cluster map: {e}");
                    tokio::time::sleep(MAP_SYNC_INTERVAL).await;
                }
            }
            Err(e) => {
                tracing::debug!(node = cell.node, "cluster map not read from the meta shard yet: {e}");
                tokio::time::sleep(MAP_SYNC_RETRY).await;
            }
        }
    }
}

/// Waits (up to `wait`) for the meta leader to apply a map newer than the
/// one `cell` routes by, and installs it.
pub async fn watch_map(cell: &MapCell, transport: &Arc<dyn Transport>, wait: Duration) -> Result<Refresh, StoreError> {
    let deadline = Instant::now() + wait + MAP_SYNC_INTERVAL;
    let op = ShardOp::WatchMap { after: cell.epoch(), wait_ms: wait.as_millis() as u64 };
    let table = cell.load();
    match send_to_shard(cell, &table, transport, META_SHARD, op, deadline).await? {
        ShardReply::Map(Some(bytes)) => {
            let map = ClusterMap::decode(&bytes)
                .map_err(|e| StoreError::Internal(format!("the meta shard's cluster map: {e}")))?;
            let refresh = if cell.install(&map) { Refresh::Updated } else { Refresh::Unchanged };
            MAP_REFRESHES.with_label_values(&[&cell.node.to_string(), "watched"]).inc();
            Ok(refresh)
        }
        ShardReply::Map(None) => Ok(Refresh::Unchanged),
        other => Err(StoreError::Internal(format!("meta shard answered a map watch with {other:?}"))),
    }
}

/// Reads the cluster map from the meta shard (linearizable) and installs
/// it if newer.
pub async fn read_map(
    cell: &MapCell,
    transport: &Arc<dyn Transport>,
    deadline: Instant,
) -> Result<ClusterMap, StoreError> {
    let table = cell.load();
    match send_to_shard(cell, &table, transport, META_SHARD, ShardOp::ReadMap, deadline).await? {
        ShardReply::Map(Some(bytes)) => {
            let map = ClusterMap::decode(&bytes)
                .map_err(|e| StoreError::Internal(format!("the meta shard's cluster map: {e}")))?;
            cell.install(&map);
            Ok(map)
        }
        ShardReply::Map(None) => {
            Err(StoreError::Unavailable { reason: "the cluster map is not bootstrapped yet".into() })
        }
        other => Err(StoreError::Internal(format!("meta shard answered a map read with {other:?}"))),
    }
}

/// Attempts of [`update_map`] when other edits keep winning the race.
const MAP_UPDATE_ATTEMPTS: usize = 8;

/// Changes the cluster map: reads it, lets `edit` make the next epoch
/// from it (`Ok(None)`: nothing to change), and commits that with the
/// epoch check, again from a fresh read if another edit won. Returns the
/// map in force afterwards.
pub async fn update_map<E>(
    cell: &MapCell,
    transport: &Arc<dyn Transport>,
    deadline: Instant,
    mut edit: impl FnMut(&ClusterMap) -> Result<Option<ClusterMap>, E>,
) -> Result<Result<ClusterMap, E>, StoreError> {
    for _ in 0..MAP_UPDATE_ATTEMPTS {
        let current = read_map(cell, transport, deadline).await?;
        let next = match edit(&current) {
            Ok(Some(next)) => next,
            Ok(None) => return Ok(Ok(current)),
            Err(e) => return Ok(Err(e)),
        };
        debug_assert_eq!(next.epoch, current.epoch + 1, "an edit makes the next epoch");
        let cmd = Command::SetMap { expected_epoch: current.epoch, map: next.encode() };
        let table = cell.load();
        match send_to_shard(cell, &table, transport, META_SHARD, ShardOp::write(cmd), deadline).await? {
            ShardReply::Outcome(Outcome::MapSet { epoch }) => {
                info!(node = cell.node, epoch, "cluster map changed");
                cell.install(&next);
                return Ok(Ok(next));
            }
            ShardReply::Outcome(Outcome::MapConflict { current }) => {
                debug!(node = cell.node, current, "cluster map edit raced another; reading again");
            }
            other => return Err(StoreError::Internal(format!("meta shard answered SetMap with {other:?}"))),
        }
    }
    Err(StoreError::Unavailable { reason: "the cluster map kept changing under this edit; try again".into() })
}
