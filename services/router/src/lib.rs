//! Router actors: take a client operation, find the shard that owns its
//! key and the replica that leads that shard, send it there through the
//! [`Transport`], and retry within the request deadline when the answer
//! says the leader moved. Clients never see `NotLeader`.
//!
//! The [`RoutingTable`] comes from the cluster map: key → ring point →
//! shard (the hash ring) → cached leader of that shard.
//!
//! # Layout
//! - [`Router`]: the actor; its handler returns the retry loop as a future.
//! - [`retry`]: the pure decision of where to go next after an answer.
//! - [`map`]: the node's current table ([`MapCell`]) and how it follows the
//!   meta shard: refreshed on `WrongShard` and by the node's map keeper.

pub mod map;
pub mod retry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use actix::prelude::*;
use prometheus::{register_int_counter_vec, IntCounterVec};
use ringstore_shared::cluster_map::ClusterMap;
use ringstore_shared::ring::Ring;
use ringstore_shared::{NodeId, ShardId, StoreError};
use ringstore_storage::{ShardOp, ShardResult, Transport};
use tokio::time::Instant;

pub use crate::map::MapCell;
use crate::retry::{next_step, Step};

/// Every `reason` label of `ringstore_router_retries_total`.
pub(crate) const RETRY_REASONS: [&str; 5] = ["not_leader", "dropped", "unreachable", "wrong_shard", "outcome_unknown"];

pub(crate) static FAST_FAILS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ringstore_router_leaderless_fast_fails_total",
        "Requests answered 503 at once: this node reaches no majority of the shard's replicas and no leader of it",
        &["node"]
    )
    .expect("registers once")
});

pub(crate) static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ringstore_router_retries_total",
        "Requests the router sent again (reason=not_leader, dropped, unreachable, wrong_shard, outcome_unknown)",
        &["node", "reason"]
    )
    .expect("registers once")
});

/// Route one operation; answered with the shard's reply or the error that
/// ended the retries.
#[derive(Message)]
#[rtype(result = "ShardResult")]
pub struct Route {
    pub key: Vec<u8>,
    pub op: ShardOp,
    pub timeout: Duration,
    /// Send to this shard instead of the key's (status of a local replica).
    pub shard: Option<ShardId>,
}

/// What routers need from the cluster map: the ring, each shard's
/// replicas, and the last known leader of each shard (0 = unknown). One
/// per node, shared by every Router and their in-flight retry loops;
/// atomics keep the hot path free of locks.
pub struct RoutingTable {
    pub epoch: u64,
    /// The map this table was built from.
    pub map: ClusterMap,
    ring: Ring,
    shards: HashMap<ShardId, (Arc<Vec<NodeId>>, AtomicU64)>,
}

impl RoutingTable {
    pub fn from_map(map: &ClusterMap) -> Self {
        let shards = map.shards.iter().map(|(s, r)| (*s, (Arc::new(r.clone()), AtomicU64::new(0)))).collect();
        RoutingTable { epoch: map.epoch, map: map.clone(), ring: map.ring(), shards }
    }

    /// The shard owning `key`.
    pub fn shard_for(&self, key: &[u8]) -> Option<ShardId> {
        self.ring.owner_of_key(key)
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Whether this table routes `shard`'s keys as the shard itself does
    /// when its ranges are at `ranges_epoch` (of the split that last
    /// changed them): not when the table is older, nor while the table
    /// still shows that split in progress (the new shard not yet routed).
    pub fn reflects(&self, shard: ShardId, ranges_epoch: u64) -> bool {
        ranges_epoch <= self.epoch && !self.map.splits.iter().any(|s| s.source == shard && s.epoch <= ranges_epoch)
    }

    /// Every shard that owns keys (all but the meta shard), in id order.
    pub fn data_shards(&self) -> Vec<ShardId> {
        let mut v: Vec<ShardId> =
            self.shards.keys().copied().filter(|s| *s != ringstore_shared::cluster_map::META_SHARD).collect();
        v.sort_unstable();
        v
    }

    pub fn replicas(&self, shard: ShardId) -> Option<Arc<Vec<NodeId>>> {
        self.shards.get(&shard).map(|(r, _)| r.clone())
    }

    fn leader(&self, shard: ShardId) -> Option<&AtomicU64> {
        self.shards.get(&shard).map(|(_, l)| l)
    }

    /// Takes the known leaders of shards whose replicas did not change.
    fn inherit_leaders(&self, old: &RoutingTable) {
        for (shard, (replicas, leader)) in &self.shards {
            if let Some((r, l)) = old.shards.get(shard) {
                if r == replicas {
                    leader.store(l.load(Ordering::Relaxed), Ordering::Relaxed);
                }
            }
        }
    }
}

/// One per HTTP worker thread, so routing never funnels through one thread.
pub struct Router {
    node: NodeId,
    map: Arc<MapCell>,
    transport: Arc<dyn Transport>,
}

impl Router {
    pub fn new(node: NodeId, map: Arc<MapCell>, transport: Arc<dyn Transport>) -> Self {
        Router { node, map, transport }
    }
}

impl Actor for Router {
    type Context = Context<Self>;
}

/// Map refreshes one request may trigger. A shard that has split answers
/// `WrongShard` for the keys it gave away until the map routes them to
/// the new shard (one meta-shard commit after the split), so the router
/// polls the map with a growing pause ([`map::catch_up`]), within the
/// request's deadline.
pub const WRONG_SHARD_REFRESHES_MAX: u32 = 64;

impl Handler<Route> for Router {
    type Result = ResponseFuture<ShardResult>;

    fn handle(&mut self, msg: Route, _ctx: &mut Context<Self>) -> Self::Result {
        let node = self.node;
        let cell = self.map.clone();
        let transport = self.transport.clone();
        Box::pin(async move {
            let deadline = Instant::now() + msg.timeout;
            for refresh in 0.. {
                let table = cell.load();
                let Some(shard) = msg.shard.or_else(|| table.shard_for(&msg.key)) else {
                    return Err(StoreError::Unavailable { reason: "the cluster map has no data shards".into() });
                };
                let result = send_to_shard(&cell, &table, &transport, shard, msg.op.clone(), deadline).await;
                match result {
                    // The replica's map says the key is elsewhere: nothing
                    // was applied. Learn the current map and route again.
                    Err(StoreError::WrongShard { shard, epoch })
                        if msg.shard.is_none() && refresh < WRONG_SHARD_REFRESHES_MAX && Instant::now() < deadline =>
                    {
                        RETRIES.with_label_values(&[&node.to_string(), "wrong_shard"]).inc();
                        tracing::debug!(node, shard, epoch, routed_by = table.epoch, "wrong shard: reading the map");
                        // Behind while the map still sends the key to the shard that refused it.
                        let behind = |t: &RoutingTable| t.shard_for(&msg.key) == Some(shard);
                        if !map::catch_up(&cell, &transport, refresh, deadline, behind).await {
                            return Err(StoreError::Unavailable {
                                reason: format!(
                                    "shard {shard} gave the key away at map epoch {epoch} and the map has not caught up"
                                ),
                            });
                        }
                    }
                    // A watch poll on a shard that gave its key away: the
                    // watcher moves to the key's new shard itself, since
                    // its position belongs to this one.
                    Err(e @ StoreError::WrongShard { .. }) if matches!(msg.op, ShardOp::Events { .. }) => {
                        return Err(e)
                    }
                    Err(StoreError::WrongShard { shard, epoch }) => {
                        return Err(StoreError::Unavailable {
                            reason: format!(
                                "shard {shard} (map epoch {epoch}) does not own the key and node {node}'s map \
                                 (epoch {}) says it does",
                                cell.epoch()
                            ),
                        })
                    }
                    r => return r,
                }
            }
            unreachable!("the refresh loop ends by returning")
        })
    }
}

/// A forwarded operation that changes nothing (a read, a status) with no
/// answer after this long is asked elsewhere: the target may be cut off
/// in a way its link has not noticed yet. Writes have no such timeout: one
/// that was delivered may still apply, so it is never sent twice; the
/// link's liveness check or the replica's step-down answers it instead.
pub const SAFE_HOP_TIMEOUT: Duration = Duration::from_millis(1_000);

/// How long this node's replica may know no leader before a request gives
/// up with 503 (when the node also reaches no majority), as a fraction of
/// the election timeout: a healthy election ends well within it.
const LEADERLESS_GRACE_DIVISOR: u32 = 2;

/// Sends `op` to `shard`'s leader, following `NotLeader` hints and
/// retrying what is safe to retry until `deadline`. Where it goes first:
/// the leader this node's own replica knows (updated the moment Raft says
/// so), else the last leader that answered, else this node.
pub async fn send_to_shard(
    cell: &MapCell,
    table: &RoutingTable,
    transport: &Arc<dyn Transport>,
    shard: ShardId,
    mut op: ShardOp,
    deadline: Instant,
) -> ShardResult {
    let node = cell.node();
    let hints = cell.leaders();
    let (Some(members), Some(leader)) = (table.replicas(shard), table.leader(shard)) else {
        return Err(StoreError::Unavailable { reason: format!("shard {shard} is not in the cluster map") });
    };
    let timeout_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
    // Stale reads and status are answered by this node's own replica
    // (status by any replica if this node has none).
    let status = matches!(op, ShardOp::Status);
    let local_only = matches!(op, ShardOp::Read { stale: true, .. }) || (status && members.contains(&node));
    let changes_nothing = op.changes_nothing();
    // Writes carry a request id the state machine deduplicates.
    let idempotent = changes_nothing || op.request().is_some();
    let local_leader = || hints.get(shard).and_then(|h| h.leader);
    let grace = hints.election_timeout() / LEADERLESS_GRACE_DIVISOR;
    let mut target = if local_only {
        node
    } else if status {
        members.first().copied().unwrap_or(node)
    } else {
        match (local_leader(), leader.load(Ordering::Relaxed)) {
            (Some(l), _) => l,
            (None, 0) if members.contains(&node) => node,
            (None, 0) => members.first().copied().unwrap_or(node),
            (None, l) => l,
        }
    };
    for attempt in 0u32.. {
        if !local_only && !status {
            if let Some(e) = leaderless_here(node, hints, transport.as_ref(), shard, &members, grace) {
                FAST_FAILS.with_label_values(&[&node.to_string()]).inc();
                return Err(e);
            }
        }
        // What this node's replica knew when the attempt went out: news
        // after it ends a wait for a leader early.
        let seen = hints.get(shard);
        let sent = transport.request(node, target, shard, op.clone());
        // A long poll waits by design; only other reads are cut short.
        let long_poll = matches!(op, ShardOp::WatchMap { .. } | ShardOp::Events { wait_ms: 1.., .. });
        let hop_deadline = match changes_nothing && !long_poll && !local_only && target != node {
            true => deadline.min(Instant::now() + SAFE_HOP_TIMEOUT),
            false => deadline,
        };
        let result = match tokio::time::timeout_at(hop_deadline, sent).await {
            Ok(r) => r,
            // Nothing changes by asking again elsewhere.
            Err(_) if hop_deadline < deadline => {
                tracing::debug!(node, shard, target, "no answer within the hop timeout; asking elsewhere");
                Err(StoreError::Unreachable { node: target })
            }
            Err(_) => return Err(StoreError::Timeout { timeout_ms }),
        };
        match next_step(&result, target, &members, attempt, local_only, local_leader(), idempotent) {
            Step::Done => {
                if result.is_ok() && !local_only && !status {
                    leader.store(target, Ordering::Relaxed);
                }
                return result;
            }
            Step::Retry { to, backoff, reason } => {
                RETRIES.with_label_values(&[&node.to_string(), reason]).inc();
                tracing::debug!(node, shard, target, to, attempt, ?backoff, reason, "retrying");
                if matches!(result, Err(StoreError::OutcomeUnknown { .. })) {
                    // The first try may have applied: the shard must look.
                    op.mark_retry();
                }
                if to != target && !status {
                    leader.store(0, Ordering::Relaxed);
                }
                target = to;
                if Instant::now() + backoff >= deadline {
                    // Out of time: say why the last attempt failed.
                    return match result {
                        Err(e) if e.is_retryable() => Err(StoreError::Unavailable {
                            reason: format!("shard {shard} has no leader reachable from node {node}"),
                        }),
                        Err(e) => Err(e),
                        Ok(_) => unreachable!("a success is never retried"),
                    };
                }
                if backoff.is_zero() {
                    tokio::task::yield_now().await;
                    continue;
                }
                // No leader known: wait out the backoff, unless this node's
                // replica learns a new leader first (an election ending).
                if let Some(l) = hints.changed_within(shard, seen, backoff).await {
                    tracing::debug!(node, shard, leader = l, "a leader appeared while backing off");
                    target = l;
                }
            }
        }
    }
    unreachable!("the retry loop ends by returning")
}

/// `Some(503)` when this node can reach no leader of `shard` and no
/// majority of its replicas: answering at once beats waiting for the
/// deadline ([`retry::give_up_leaderless`] decides).
fn leaderless_here(
    node: NodeId,
    hints: &ringstore_storage::LeaderHints,
    transport: &dyn Transport,
    shard: ShardId,
    members: &[NodeId],
    grace: Duration,
) -> Option<StoreError> {
    let reachable = members.iter().filter(|m| transport.reachable(node, **m)).count();
    if reachable * 2 > members.len() {
        return None; // the common case: nothing more to look at
    }
    let local = match hints.get(shard) {
        None => retry::LocalLeader::Fine,
        Some(h) => match (h.leaderless_for(Instant::now().into_std()), h.leader) {
            (Some(d), _) => retry::LocalLeader::None(d),
            // A cut-off leader (this node) commits nothing either.
            (None, Some(l)) if l == node || !transport.reachable(node, l) => retry::LocalLeader::CutOff,
            _ => retry::LocalLeader::Fine,
        },
    };
    retry::give_up_leaderless(local, grace, reachable, members.len()).then(|| StoreError::Unavailable {
        reason: format!(
            "shard {shard} has no leader that node {node} can reach ({reachable} of {} replicas reachable)",
            members.len()
        ),
    })
}
