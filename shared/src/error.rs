//! [`StoreError`]: what can go wrong with a request, with the facts a
//! caller needs to act on it. Errors become HTTP statuses only in the API
//! crate.

use thiserror::Error;

use crate::{NodeId, ShardId};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// This replica is not the leader; retry at `hint` (if known).
    #[error("replica is not the leader of shard {shard}; leader hint: {hint:?}")]
    NotLeader { shard: ShardId, hint: Option<NodeId> },
    /// The proposal is known NOT to have been applied (it was refused or
    /// its log entry was overwritten by a new leader); safe to retry.
    #[error("proposal dropped before commit: {reason}")]
    Dropped { reason: &'static str },
    /// No quorum, or no leader reachable; nothing was applied.
    #[error("unavailable: {reason}")]
    Unavailable { reason: String },
    /// A write was delivered but its answer was lost (connection broke,
    /// leader cut off, replica stopped): it may or may not have applied.
    /// Only a write carrying a request id may be sent again, since the
    /// state machine then applies it at most once.
    #[error("outcome unknown: {reason}")]
    OutcomeUnknown { reason: String },
    /// The key is outside the ranges this shard owns at map `epoch` (the
    /// router's map is stale, or the replica's); nothing was applied.
    #[error("shard {shard} does not own this key at map epoch {epoch}")]
    WrongShard { shard: ShardId, epoch: u64 },
    /// The request was never delivered to `node` (partition, peer down).
    #[error("node {node} is unreachable")]
    Unreachable { node: NodeId },
    /// The request deadline passed before the shard answered. A write may
    /// or may not have been applied.
    #[error("no answer within the request deadline of {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// Too many requests queued at one replica.
    #[error("overloaded: {queued} requests queued, limit {limit}")]
    Overloaded { queued: usize, limit: usize },
    #[error("key not found")]
    NotFound,
    /// A fenced write whose token is below one this key already accepted
    /// from the same lock: the writer lost the lock.
    #[error("fenced: key already written under lock {lock:?} with token {highest}")]
    Fenced { lock: String, highest: u64 },
    #[error("precondition failed: {}", match current {
        Some(v) => format!("the key's current version is {v}"),
        None => "the key does not exist".to_string(),
    })]
    PreconditionFailed { current: Option<u64> },
    /// A watch position older than the shard's event log keeps.
    #[error("position {asked} is compacted; the oldest available is {oldest}")]
    Compacted { asked: u64, oldest: u64 },
    #[error("{what} is {len} bytes; the limit is {max} bytes")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("{0}")]
    BadRequest(String),
    #[error("storage engine error: {0}")]
    Engine(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether the router may send the same request again (to another
    /// replica) without risking a double apply.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::NotLeader { .. } | StoreError::Dropped { .. } | StoreError::Unreachable { .. })
    }
}
