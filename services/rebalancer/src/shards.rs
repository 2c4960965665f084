//! Talking to a shard's leader on the Rebalancer's behalf: its status (the
//! Raft configuration and progress the move rules read), membership
//! changes and leader transfers. Requests go through the router's
//! `send_to_shard`, then straight to the leader it names.

use std::sync::Arc;

use ringstore_router::{send_to_shard, MapCell};
use ringstore_shared::rebalance::ConfView;
use ringstore_shared::{ShardId, StoreError};
use ringstore_storage::messages::PeerChange;
use ringstore_storage::{ReplicaStatus, ShardOp, ShardReply, ShardResult, Transport};
use tokio::time::Instant;

/// Sends `op` to the leader of `shard` through the router, which follows
/// leader hints and retries within `deadline`.
pub async fn to_leader(
    cell: &MapCell,
    transport: &Arc<dyn Transport>,
    shard: ShardId,
    op: ShardOp,
    deadline: Instant,
) -> ShardResult {
    let table = cell.load();
    send_to_shard(cell, &table, transport, shard, op, deadline).await
}

/// Replicas a status request follows leader hints through: a replica
/// removed from its shard (the source of a finished move, still in the
/// map until the move is recorded) hears from no leader again and names
/// an old one, which may itself name the current one.
const STATUS_HOPS: usize = 4;

/// The status of `shard` as its leader sees it (with every peer's progress).
pub async fn leader_status(
    cell: &MapCell,
    transport: &Arc<dyn Transport>,
    shard: ShardId,
    deadline: Instant,
) -> Result<ReplicaStatus, StoreError> {
    let mut status = match to_leader(cell, transport, shard, ShardOp::Status, deadline).await? {
        ShardReply::Status(s) => s,
        other => return Err(StoreError::Internal(format!("status answered with {other:?}"))),
    };
    let mut asked = vec![status.node];
    for _ in 0..STATUS_HOPS {
        if status.role == "leader" {
            return Ok(status);
        }
        let Some(leader) = status.leader.filter(|l| !asked.contains(l)) else { break };
        asked.push(leader);
        let ask = transport.request(cell.node(), leader, shard, ShardOp::Status);
        status = match tokio::time::timeout_at(deadline, ask).await {
            Ok(Ok(ShardReply::Status(s))) => s,
            Ok(Ok(other)) => return Err(StoreError::Internal(format!("status answered with {other:?}"))),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(StoreError::Timeout { timeout_ms: 0 }),
        };
    }
    match status.role {
        "leader" => Ok(status),
        _ => Err(StoreError::Unavailable { reason: format!("shard {shard}: no leader found (asked {asked:?})") }),
    }
}

/// The leader status of each of `shards`, asked all at once.
pub async fn leader_statuses(
    cell: &MapCell,
    transport: &Arc<dyn Transport>,
    shards: impl Iterator<Item = ShardId>,
    deadline: Instant,
) -> std::collections::BTreeMap<ShardId, Result<ReplicaStatus, StoreError>> {
    let asks = shards.map(|s| async move { (s, leader_status(cell, transport, s, deadline).await) });
    futures::future::join_all(asks).await.into_iter().collect()
}

/// The move rules' view of a leader's status.
pub fn conf_view(s: &ReplicaStatus) -> ConfView {
    ConfView {
        leader: s.node,
        voters: s.voters.clone(),
        learners: s.learners.clone(),
        voters_outgoing: s.voters_outgoing.clone(),
        matched: s.progress.iter().copied().collect(),
        last_index: s.last_index,
    }
}

/// Proposes a membership change at the shard's leader; answers once applied.
pub async fn change_peers(
    cell: &MapCell,
    transport: &Arc<dyn Transport>,
    shard: ShardId,
    change: PeerChange,
    deadline: Instant,
) -> Result<ReplicaStatus, StoreError> {
    match to_leader(cell, transport, shard, ShardOp::ChangePeers(change), deadline).await? {
        ShardReply::Status(s) => Ok(s),
        other => Err(StoreError::Internal(format!("membership change answered with {other:?}"))),
    }
}

/// Asks the shard's leader to hand leadership to `to`.
pub async fn transfer_leader(
    cell: &MapCell,
    transport: &Arc<dyn Transport>,
    shard: ShardId,
    to: u64,
    deadline: Instant,
) -> Result<(), StoreError> {
    to_leader(cell, transport, shard, ShardOp::TransferLeader { to }, deadline).await.map(|_| ())
}
