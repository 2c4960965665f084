//! How replicas reach each other: Raft messages (best effort, Raft
//! retries) and forwarded client requests.
//!
//! [`LocalTransport`] connects replicas in one process, for `ringstore
//! dev` and in-process cluster tests. Its [`NetFilter`] drops, delays and
//! partitions traffic so tests can inject faults; the network transport
//! implements the same trait.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::Addr;
use futures::future::BoxFuture;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use rand::Rng;
use ringstore_shared::{NodeId, ShardId, StoreError};

use crate::actor::StorageActor;
use crate::messages::{RaftBatch, ShardOp, ShardRequest, ShardResult};
use crate::metrics;

pub trait Transport: Send + Sync + 'static {
    /// Sends Raft messages of `shard` from node `from`; each goes to the
    /// replica named by its `to`. May drop any of them; returns the ones it
    /// knows it dropped, so Raft can be told (a lost snapshot must be
    /// reported, or the leader waits for it forever).
    fn send_raft(&self, from: NodeId, shard: ShardId, msgs: Vec<RaftMessage>) -> Vec<Undelivered>;

    /// [`Transport::send_raft`] for the messages of many shards of node
    /// `from` at once (a storage thread's round): a transport that can
    /// should send each peer node's share as one batch.
    fn send_raft_many(&self, from: NodeId, batch: Vec<(ShardId, Vec<RaftMessage>)>) -> Vec<(ShardId, Undelivered)> {
        let mut lost = Vec::new();
        for (shard, msgs) in batch {
            lost.extend(self.send_raft(from, shard, msgs).into_iter().map(|u| (shard, u)));
        }
        lost
    }

    /// Sends a client operation to the replica of `shard` on node `to`.
    /// `Unreachable` means it was never delivered (safe to retry).
    fn request(&self, from: NodeId, to: NodeId, shard: ShardId, op: ShardOp) -> BoxFuture<'static, ShardResult>;

    /// Whether `to` looks reachable from `from` now (a live link). A hint
    /// for routing, never a promise: a request may still fail.
    fn reachable(&self, from: NodeId, to: NodeId) -> bool {
        let _ = (from, to);
        true
    }
}

/// One peer node's share of a batch of many shards' messages.
pub type PeerBatch = Vec<(ShardId, Vec<RaftMessage>)>;

/// Splits the messages of many shards by destination node, keeping each
/// shard's messages in order; snapshots come apart (they travel as chunk
/// streams of their own).
pub fn by_destination(
    batch: Vec<(ShardId, Vec<RaftMessage>)>,
) -> (BTreeMap<NodeId, PeerBatch>, Vec<(ShardId, RaftMessage)>) {
    let mut per_dest: BTreeMap<NodeId, PeerBatch> = BTreeMap::new();
    let mut snapshots = Vec::new();
    for (shard, msgs) in batch {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                snapshots.push((shard, m));
                continue;
            }
            let share = per_dest.entry(m.to).or_default();
            match share.last_mut() {
                Some((s, msgs)) if *s == shard => msgs.push(m),
                _ => share.push((shard, vec![m])),
            }
        }
    }
    (per_dest, snapshots)
}

/// A message the transport knows it did not deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undelivered {
    pub to: NodeId,
    pub snapshot: bool,
}

/// Faults injected into a [`LocalTransport`].
#[derive(Debug, Clone, Default)]
pub struct NetFilter {
    /// Directed links that carry nothing.
    pub blocked: HashSet<(NodeId, NodeId)>,
    /// Probability in `[0, 1]` that a Raft message is dropped.
    pub drop_rate: f64,
    /// Extra latency on every Raft message.
    pub delay: Option<Duration>,
}

impl NetFilter {
    fn allows(&self, from: NodeId, to: NodeId) -> bool {
        from == to || !self.blocked.contains(&(from, to))
    }
}

/// Raft messages a replica's mailbox may hold before new ones are dropped.
pub const RAFT_MAILBOX_CAPACITY: usize = 4096;

#[derive(Default)]
struct Inner {
    replicas: HashMap<(NodeId, ShardId), Addr<StorageActor>>,
    /// Replicas registered per node.
    live: HashMap<NodeId, usize>,
    filter: NetFilter,
}

/// In-process transport. The lock is a `std::sync::RwLock`: it is never
/// held across an await and the critical sections are a map lookup.
#[derive(Default, Clone)]
pub struct LocalTransport {
    inner: Arc<RwLock<Inner>>,
}

impl LocalTransport {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, node: NodeId, shard: ShardId, addr: Addr<StorageActor>) {
        let mut g = self.write();
        if g.replicas.insert((node, shard), addr).is_none() {
            *g.live.entry(node).or_default() += 1;
        }
    }

    pub fn unregister(&self, node: NodeId, shard: ShardId) {
        let mut g = self.write();
        if g.replicas.remove(&(node, shard)).is_some() {
            if let Some(n) = g.live.get_mut(&node) {
                *n -= 1;
                if *n == 0 {
                    g.live.remove(&node);
                }
            }
        }
    }

    pub fn unregister_node(&self, node: NodeId) {
        let mut g = self.write();
        g.replicas.retain(|(n, _), _| *n != node);
        g.live.remove(&node);
    }

    /// Cuts every link between `node` and every other node, both ways.
    pub fn isolate(&self, node: NodeId, all: &[NodeId]) {
        let others: Vec<NodeId> = all.iter().copied().filter(|o| *o != node).collect();
        self.partition(&[&[node], &others]);
    }

    /// Splits the nodes into groups that only reach their own group.
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let mut g = self.write();
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for &x in a.iter() {
                        for &y in b.iter() {
                            g.filter.blocked.insert((x, y));
                        }
                    }
                }
            }
        }
    }

    pub fn heal(&self) {
        self.write().filter = NetFilter::default();
    }

    pub fn set_filter(&self, f: NetFilter) {
        self.write().filter = f;
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        // A panic while holding this lock leaves only a map behind; keep going.
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl Transport for LocalTransport {
    fn send_raft(&self, from: NodeId, shard: ShardId, msgs: Vec<RaftMessage>) -> Vec<Undelivered> {
        let g = self.read();
        let mut undelivered = Vec::new();
        // Drops are the exception: format the label only when one happens.
        let dropped =
            |reason: &str| metrics::RAFT.messages_dropped.with_label_values(&[&from.to_string(), reason]).inc();
        let mut per_dest: HashMap<NodeId, Vec<RaftMessage>> = HashMap::new();
        let mut rng = rand::thread_rng();
        for m in msgs {
            let lost = Undelivered { to: m.to, snapshot: m.get_msg_type() == MessageType::MsgSnapshot };
            if !g.filter.allows(from, m.to) {
                dropped("partition");
                undelivered.push(lost);
                continue;
            }
            if g.filter.drop_rate > 0.0 && rng.gen::<f64>() < g.filter.drop_rate {
                dropped("random");
                undelivered.push(lost);
                continue;
            }
            per_dest.entry(m.to).or_default().push(m);
        }
        for (to, batch) in per_dest {
            let snapshot = batch.iter().any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
            let Some(addr) = g.replicas.get(&(to, shard)).cloned() else {
                dropped("unknown_peer");
                undelivered.push(Undelivered { to, snapshot });
                continue;
            };
            match g.filter.delay {
                Some(d) => {
                    actix::spawn(async move {
                        actix::clock::sleep(d).await;
                        let _ = addr.try_send(RaftBatch(batch));
                    });
                }
                None => {
                    if addr.try_send(RaftBatch(batch)).is_err() {
                        dropped("queue_full");
                        undelivered.push(Undelivered { to, snapshot });
                    }
                }
            }
        }
        undelivered
    }

    fn request(&self, from: NodeId, to: NodeId, shard: ShardId, op: ShardOp) -> BoxFuture<'static, ShardResult> {
        let target = {
            let g = self.read();
            if !g.filter.allows(from, to) {
                None
            } else {
                g.replicas.get(&(to, shard)).cloned()
            }
        };
        Box::pin(async move {
            let Some(addr) = target else {
                return Err(StoreError::Unreachable { node: to });
            };
            addr.send(ShardRequest(op)).await.unwrap_or_else(|_| {
                Err(StoreError::OutcomeUnknown { reason: format!("replica of shard {shard} on node {to} stopped") })
            })
        })
    }

    /// A node with no replica registered (stopped, or not started) is as
    /// unreachable as a cut-off one.
    fn reachable(&self, from: NodeId, to: NodeId) -> bool {
        let g = self.read();
        g.filter.allows(from, to) && g.filter.allows(to, from) && (from == to || g.live.contains_key(&to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(to: NodeId, kind: MessageType, index: u64) -> RaftMessage {
        let mut m = RaftMessage::default();
        m.set_msg_type(kind);
        m.to = to;
        m.index = index;
        m
    }

    #[test]
    fn a_batch_splits_by_destination_keeping_each_shards_order_and_sets_snapshots_apart() {
        let batch = vec![
            (
                1,
                vec![
                    msg(2, MessageType::MsgAppend, 10),
                    msg(3, MessageType::MsgAppend, 11),
                    msg(2, MessageType::MsgHeartbeat, 12),
                ],
            ),
            (5, vec![msg(3, MessageType::MsgSnapshot, 20), msg(2, MessageType::MsgAppendResponse, 21)]),
            (1, vec![msg(2, MessageType::MsgAppend, 13)]),
        ];
        let (per_dest, snapshots) = by_destination(batch);
        let share = |to: NodeId| -> Vec<(ShardId, Vec<u64>)> {
            per_dest[&to].iter().map(|(s, ms)| (*s, ms.iter().map(|m| m.index).collect())).collect()
        };
        assert_eq!(per_dest.len(), 2);
        assert_eq!(share(2), vec![(1, vec![10, 12]), (5, vec![21]), (1, vec![13])]);
        assert_eq!(share(3), vec![(1, vec![11])]);
        assert_eq!(snapshots.len(), 1);
        assert_eq!((snapshots[0].0, snapshots[0].1.index), (5, 20));
        let (none, no_snapshots) = by_destination(Vec::new());
        assert!(none.is_empty() && no_snapshots.is_empty());
    }
}
