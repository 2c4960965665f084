//! Membership of a shard: the leader's side of a replica move (learner,
//! joint promote, remove, leadership transfer to a chosen voter) and the
//! end of a replica that was moved away. The Rebalancer decides the steps
//! (`ringstore_shared::rebalance`); this only proposes them through raft-rs.

use actix::prelude::*;
use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
use ringstore_shared::{NodeId, StoreError};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{replica_gone, waiter_moved, PendingWrite, Replica, StorageActor};
use crate::messages::{PeerChange, ShardReply, ShardResult};

fn single(change_type: ConfChangeType, node: NodeId) -> ConfChangeSingle {
    let mut c = ConfChangeSingle::default();
    c.set_change_type(change_type);
    c.node_id = node;
    c
}

/// The raft-rs change for one step. A promote with a removal is joint
/// (both majorities must agree while it is in effect), left automatically.
fn conf_change(change: PeerChange) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    let changes = match change {
        PeerChange::AddLearner(n) => vec![single(ConfChangeType::AddLearnerNode, n)],
        PeerChange::Promote { add, remove } => {
            let mut v = vec![single(ConfChangeType::AddNode, add)];
            v.extend(remove.map(|r| single(ConfChangeType::RemoveNode, r)));
            cc.set_transition(ConfChangeTransition::Auto);
            v
        }
        PeerChange::Remove(n) => vec![single(ConfChangeType::RemoveNode, n)],
        PeerChange::LeaveJoint => vec![],
    };
    cc.set_changes(changes.into());
    cc
}

impl Replica {
    pub(super) fn change_peers(
        &mut self,
        change: PeerChange,
        _: &mut Context<StorageActor>,
    ) -> ResponseFuture<ShardResult> {
        let immediate = |r: ShardResult| -> ResponseFuture<ShardResult> { Box::pin(async move { r }) };
        if !self.is_leader() {
            return immediate(Err(self.not_leader()));
        }
        // raft-rs turns a second change into a no-op entry while one is
        // pending; refuse it here so the caller learns why.
        if self.raw.raft.has_pending_conf() {
            return immediate(Err(StoreError::Unavailable {
                reason: format!("shard {}: a membership change is still being applied", self.shard),
            }));
        }
        let joint = !self.raw.store().conf_state().voters_outgoing.is_empty();
        if joint != matches!(change, PeerChange::LeaveJoint) {
            let why = if joint { "is in a joint configuration" } else { "is not in a joint configuration" };
            return immediate(Err(StoreError::BadRequest(format!("shard {} {why}", self.shard))));
        }
        if let PeerChange::Promote { remove: Some(r), .. } | PeerChange::Remove(r) = change {
            if r == self.node {
                return immediate(Err(StoreError::BadRequest(format!(
                    "node {r} leads shard {}: transfer leadership before removing it",
                    self.shard
                ))));
            }
        }
        if let PeerChange::AddLearner(_) = change {
            self.compact_for_new_replica();
        }
        let before = self.raw.raft.raft_log.last_index();
        if let Err(e) = self.raw.propose_conf_change(vec![], conf_change(change)) {
            return immediate(Err(StoreError::BadRequest(format!("membership change refused: {e}"))));
        }
        let index = self.raw.raft.raft_log.last_index();
        if index != before + 1 {
            return immediate(Err(StoreError::Dropped { reason: "membership change not appended" }));
        }
        info!(node = self.node, shard = self.shard, ?change, index, "proposed membership change");
        let (tx, rx) = oneshot::channel();
        self.writes.insert(index, PendingWrite { term: self.raw.raft.term, tx, wait: None });
        self.schedule_flush();
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(replica_gone())) })
    }

    /// A new replica starts with no configuration: it must get a snapshot
    /// (which carries the configuration), never the log from index 1 (whose
    /// bootstrap configuration is not in any entry). A log compacted past 0
    /// guarantees that.
    pub(super) fn compact_for_new_replica(&mut self) {
        let a = *self.raw.store().apply_state();
        if a.truncated_index > 0 || a.applied_index == 0 {
            return;
        }
        let mut batch = self.engine.batch();
        match self.raw.store().stage_compact(&mut batch, a.applied_index) {
            Ok(Some(next)) => {
                if let Err(e) = self.engine.write(batch, false) {
                    self.fatal("compacting the log for a new replica", e);
                }
                self.raw.mut_store().commit_apply_state(next);
                self.metrics.log_compactions.inc();
            }
            Ok(None) => {}
            Err(e) => self.fatal("staging log compaction", e),
        }
    }

    pub(super) fn transfer_to(&mut self, to: NodeId) -> ShardResult {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        if to == self.node {
            return Ok(ShardReply::Status(self.status()));
        }
        if !self.raw.store().conf_state().voters.contains(&to) {
            return Err(StoreError::BadRequest(format!("node {to} is not a voter of shard {}", self.shard)));
        }
        self.begin_transfer(to);
        self.schedule_flush();
        Ok(ShardReply::Status(self.status()))
    }

    /// Deletes this replica's state and stops it. Everything waiting on
    /// it is told the outcome is unknown (a write may have committed
    /// elsewhere); the router retries at the shard's current replicas.
    pub(super) fn destroy(&mut self, ctx: &mut Context<StorageActor>) -> Result<(), String> {
        if self.destroyed {
            return Ok(());
        }
        self.leave_hibernation();
        let members = self.raw.store().conf_state();
        if members.voters.contains(&self.node) && self.is_leader() {
            warn!(node = self.node, shard = self.shard, "destroying a replica that still leads its shard");
        }
        for (_, p) in std::mem::take(&mut self.writes) {
            let _ = p.tx.send(Err(replica_gone()));
        }
        for w in self.waiters.drain_all() {
            let _ = w.reply.send(Err(waiter_moved()));
        }
        self.on_role_change(0, raft::StateRole::Follower);
        let mut batch = self.engine.batch();
        self.raw.store().stage_destroy(&mut batch);
        self.engine.write(batch, true).map_err(|e| format!("deleting replica of shard {}: {e}", self.shard))?;
        self.destroyed = true;
        self.registry.remove(self.shard);
        self.metrics.replicas_destroyed.inc();
        info!(node = self.node, shard = self.shard, "replica destroyed: its data and log are deleted");
        ctx.stop();
        Ok(())
    }
}
