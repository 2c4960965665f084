//! Messages a storage actor receives, and what it answers.

use std::sync::Arc;

use actix::Message;
use raft::eraftpb::Message as RaftMessage;
use ringstore_shared::apply::Outcome;
use ringstore_shared::command::{Command, Request, RequestId};
use ringstore_shared::lock::LockRecord;
use ringstore_shared::value::StoredValue;
use ringstore_shared::{NodeId, ShardId, StoreError};
use serde::Serialize;

use crate::events::{Event, KeyFilter};

/// One client operation on one shard.
#[derive(Debug, Clone)]
pub enum ShardOp {
    /// Replicate and apply; answered after apply. `Arc` so the router can
    /// retry without copying a value of up to the value limit.
    /// `request` names this write across the router's retries: the state
    /// machine applies it at most once (see `apply::decide`).
    Write {
        cmd: Arc<Command>,
        request: Request,
    },
    /// `stale = false`: linearizable (ReadIndex on the leader).
    /// `stale = true`: this replica's applied state, no leader involved.
    Read {
        key: Vec<u8>,
        stale: bool,
    },
    Status,
    /// Acquire a lock; with `wait_ms > 0` wait in the lock's FIFO queue (on
    /// the leader) until granted or the wait ends.
    /// `session`: the caller's, to re-enter a lock it holds; `None` for
    /// a new hold (the leader issues a session).
    Acquire {
        name: String,
        owner: String,
        ttl_ms: u64,
        wait_ms: u64,
        session: Option<ringstore_shared::lock::SessionId>,
        request: Request,
    },
    /// The lock's record and waiters, linearizable (leader, ReadIndex).
    LockStatus {
        name: String,
    },
    /// Live keys of this shard starting with `prefix`, after `after`, in
    /// key order, at most `limit` (linearizable: leader, ReadIndex).
    Scan {
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
        keys_only: bool,
    },
    /// Lock records of this shard whose names start with `prefix`,
    /// after `after`, in name order, at most `limit` (linearizable:
    /// leader, ReadIndex).
    ScanLocks {
        prefix: String,
        after: Option<String>,
        limit: usize,
    },
    /// Meta shard: the cluster map (encoded), linearizable (leader, ReadIndex).
    ReadMap,
    /// Meta shard, leader: the cluster map once its epoch is above
    /// `after`, or as it is after `wait_ms` (at most
    /// [`MAP_WATCH_WAIT_MAX_MS`]): a long poll, so map keepers learn a
    /// change when it applies. Served from the leader's applied map, not
    /// a ReadIndex: a keeper only ever installs a newer map, and a node
    /// routing by an old one is corrected by `WrongShard`.
    WatchMap {
        after: u64,
        wait_ms: u64,
    },
    /// Leader: the changes to keys matching `filter` after position
    /// `after` (`None`: from now), at most `max` (see [`EventLog::read`]);
    /// with none yet, waits up to `wait_ms` (at most
    /// [`EVENT_WAIT_MAX_MS`]) for some. Served from the replica's event
    /// log; a position older than it keeps is `StoreError::Compacted`.
    ///
    /// [`EventLog::read`]: crate::events::EventLog::read
    Events {
        filter: KeyFilter,
        after: Option<u64>,
        max: usize,
        wait_ms: u64,
    },
    /// Leader only: change the shard's Raft membership; answered with the
    /// leader's status once the change is applied.
    ChangePeers(PeerChange),
    /// Leader only: hand leadership to voter `to` (answered at once; the
    /// caller watches the status to see it move).
    TransferLeader {
        to: NodeId,
    },
}

/// One step of a replica move, as a Raft membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerChange {
    /// A learner on `0`: it gets a snapshot and the log but does not vote.
    AddLearner(NodeId),
    /// One joint change: learner `add` becomes a voter and `remove` (if
    /// any) leaves; raft-rs leaves the joint configuration by itself.
    Promote { add: NodeId, remove: Option<NodeId> },
    /// Remove a voter or learner.
    Remove(NodeId),
    /// Leave a joint configuration (if the automatic leave was lost with
    /// a leader change).
    LeaveJoint,
}

impl ShardOp {
    /// Whether sending this twice is harmless (it changes no state), so a
    /// router may ask another replica when one does not answer in time.
    pub fn changes_nothing(&self) -> bool {
        match self {
            ShardOp::Read { .. } | ShardOp::Status | ShardOp::LockStatus { .. } | ShardOp::Scan { .. } => true,
            ShardOp::ScanLocks { .. } | ShardOp::Events { .. } => true,
            ShardOp::ReadMap | ShardOp::WatchMap { .. } | ShardOp::TransferLeader { .. } => true,
            ShardOp::Write { .. } | ShardOp::Acquire { .. } | ShardOp::ChangePeers(_) => false,
        }
    }

    /// A write of `cmd` under a fresh request id.
    pub fn write(cmd: Command) -> ShardOp {
        ShardOp::write_as(cmd, Request::first(new_request_id()))
    }

    /// A write of `cmd` under `request` (a client's idempotency key).
    pub fn write_as(cmd: Command, request: Request) -> ShardOp {
        ShardOp::Write { cmd: Arc::new(cmd), request }
    }

    /// The request of a write or acquire, which a router may retry.
    pub fn request(&self) -> Option<Request> {
        match self {
            ShardOp::Write { request, .. } | ShardOp::Acquire { request, .. } => Some(*request),
            _ => None,
        }
    }

    /// This write is sent again after its answer was lost (marked in its
    /// entry; the state machine looks every request id up either way).
    pub fn mark_retry(&mut self) {
        if let ShardOp::Write { request, .. } | ShardOp::Acquire { request, .. } = self {
            request.retry = true;
        }
    }
}

/// 128 random bits: unique without coordination.
pub fn new_request_id() -> RequestId {
    rand::random()
}

#[derive(Debug, Clone)]
pub enum ShardReply {
    Outcome(Outcome),
    Value {
        value: Option<StoredValue>,
        /// Applied index of the replica that served the read.
        applied_index: u64,
    },
    Status(ReplicaStatus),
    /// A scan's page; `more`: the shard has further matching keys.
    /// `epoch`: of the split that last changed the ranges scanned, so a
    /// caller whose map is older knows its pages may miss keys.
    Items {
        items: Vec<(Vec<u8>, StoredValue)>,
        more: bool,
        epoch: u64,
    },
    Lock {
        record: Option<LockRecord>,
        /// Owners waiting, in order (known to the leader only).
        waiters: Vec<String>,
        /// The leader's clock when it answered.
        now_ms: u64,
    },
    /// A watch poll's page: events in log order and the position they
    /// reach (see [`EventPage`](crate::events::EventPage)).
    Events {
        events: Vec<Event>,
        position: u64,
    },
    /// The meta shard's cluster map, encoded; `None` before bootstrap.
    Map(Option<Vec<u8>>),
    /// A page of lock records (`ScanLocks`); `more` and `epoch` as for
    /// `Items`, `now_ms` the leader's clock when it answered.
    Locks {
        locks: Vec<(String, LockRecord)>,
        more: bool,
        epoch: u64,
        now_ms: u64,
    },
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub node: NodeId,
    pub shard: ShardId,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The previous voters while the shard is in a joint configuration.
    pub voters_outgoing: Vec<NodeId>,
    /// Leader only: each peer's matched log index.
    pub progress: Vec<(NodeId, u64)>,
    /// User keys in the shard as of `applied_index` (exact, kept by apply);
    /// `None` while they are being counted (just after a split).
    pub key_count: Option<u64>,
    /// Their key and value bytes (`None` likewise).
    pub bytes: Option<u64>,
    /// The map epoch of the split that last changed the shard's ranges
    /// (0: none has): how the Rebalancer sees a split applied.
    pub ranges_epoch: u64,
    /// Ring intervals the shard owns.
    pub range_count: u64,
    /// Leader only: requests per second, where to cut the shard to halve
    /// its load, or the key that carries most of it (see `load`). Not in
    /// the JSON of a status: `GET /v1/rebalance` shows hot keys.
    #[serde(skip)]
    pub load: crate::load::LoadReport,
}

pub type ShardResult = Result<ShardReply, StoreError>;

/// The longest an `Events` poll waits.
pub const EVENT_WAIT_MAX_MS: u64 = 59_000;
/// Watch polls one replica holds at once; more are answered at once, empty.
pub const EVENT_POLLERS_MAX: usize = 10_000;
/// The longest a `WatchMap` waits.
pub const MAP_WATCH_WAIT_MAX_MS: u64 = 30_000;
/// Watches one meta replica holds at once; more are answered at once.
pub const MAP_WATCHERS_MAX: usize = 1024;

#[derive(Message)]
#[rtype(result = "ShardResult")]
pub struct ShardRequest(pub ShardOp);

/// Raft messages for one shard, batched per destination by the transport.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RaftBatch(pub Vec<RaftMessage>);

/// The transport lost messages to `to` after accepting them (the
/// connection broke). Raft is told, as for a drop at send time.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerUnreachable {
    pub to: NodeId,
    pub snapshot: bool,
}

/// Asks a leader to hand leadership to its most up-to-date follower
/// (graceful shutdown). Answers the chosen node, or `None` when this
/// replica is not the leader or has no follower to hand to.
#[derive(Message)]
#[rtype(result = "Option<NodeId>")]
pub struct TransferLeadership;

/// This replica was removed from its shard for good: it fails what it
/// holds, deletes its log and its ranges' data, and stops. Sent by the
/// node once the cluster map no longer places the shard here.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct DestroyReplica;
