//! Router actors: take a client operation, find the shard that owns its
//! key and the replica that leads that shard, send it there through the
//! [`Transport`], and retry within the request deadline when the answer
//! says the leader moved. Clients never see `NotLeader`.
//!
//! With one shard the ring lookup is trivial; the sharding work replaces
//! [`Router::shard_for`] with the hash ring and the cluster map.
//!
//! # Layout
//! - [`Router`]: the actor; its handler returns the retry loop as a future.
//! - [`retry`]: the pure decision of where to go next after an answer.

pub mod retry;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use actix::prelude::*;
use prometheus::{register_int_counter_vec, IntCounterVec};
use ringstore_shared::{NodeId, ShardId, StoreError};
use ringstore_storage::{ShardOp, ShardResult, Transport};
use tokio::time::Instant;

use crate::retry::{next_step, Step};

static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ringstore_router_retries_total",
        "Requests the router sent again (reason=not_leader, dropped, unreachable)",
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
}

/// The last known leader of the shard (0 = unknown), shared by every
/// Router of a node and by their in-flight retry loops. An atomic keeps the
/// hot path free of locks.
#[derive(Clone, Default)]
pub struct LeaderCache(Arc<AtomicU64>);

/// One per HTTP worker thread, so routing never funnels through one thread.
pub struct Router {
    node: NodeId,
    shard: ShardId,
    members: Arc<Vec<NodeId>>,
    transport: Arc<dyn Transport>,
    leader: Arc<AtomicU64>,
}

impl Router {
    pub fn new(
        node: NodeId,
        shard: ShardId,
        members: Vec<NodeId>,
        transport: Arc<dyn Transport>,
        leader: LeaderCache,
    ) -> Self {
        Router { node, shard, members: Arc::new(members), transport, leader: leader.0 }
    }

    fn shard_for(&self, _key: &[u8]) -> ShardId {
        self.shard
    }
}

impl Actor for Router {
    type Context = Context<Self>;
}

impl Handler<Route> for Router {
    type Result = ResponseFuture<ShardResult>;

    fn handle(&mut self, msg: Route, _ctx: &mut Context<Self>) -> Self::Result {
        let shard = self.shard_for(&msg.key);
        let node = self.node;
        let members = self.members.clone();
        let transport = self.transport.clone();
        let leader = self.leader.clone();
        Box::pin(async move {
            let deadline = Instant::now() + msg.timeout;
            let timeout_ms = msg.timeout.as_millis() as u64;
            // Stale reads and status are answered by this node's own replica.
            let local_only = matches!(msg.op, ShardOp::Read { stale: true, .. } | ShardOp::Status);
            let mut target = if local_only {
                node
            } else {
                match leader.load(Ordering::Relaxed) {
                    0 => node,
                    l => l,
                }
            };
            for attempt in 0u32.. {
                let sent = transport.request(node, target, shard, msg.op.clone());
                let result = match tokio::time::timeout_at(deadline, sent).await {
                    Ok(r) => r,
                    Err(_) => return Err(StoreError::Timeout { timeout_ms }),
                };
                match next_step(&result, target, &members, attempt, local_only) {
                    Step::Done => {
                        if result.is_ok() && !local_only {
                            leader.store(target, Ordering::Relaxed);
                        }
                        return result;
                    }
                    Step::Retry { to, backoff, reason } => {
                        RETRIES.with_label_values(&[&node.to_string(), reason]).inc();
                        if to != target {
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
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
            unreachable!("the retry loop ends by returning")
        })
    }
}
