//! The one crate that owns RocksDB. It stores each shard replica's Raft
//! log and state machine, and runs the storage actor that drives
//! tikv/raft-rs over them.
//!
//! # Layout
//! - [`engine`]: the node's RocksDB and its `raft`/`data`/`meta` column families.
//! - [`log_store`]: raft-rs's `Storage` trait on the `raft` column family.
//! - [`snapshot`]: the snapshot payload codec.
//! - [`actor`]: `StorageActor`, one shard replica: tick, step, Ready, apply, reads.
//! - [`round`]: a storage thread's shared write round: one RocksDB write for
//!   every replica with a Ready in the same turn of the thread's loop.
//! - [`hibernate`]: when a quiet shard's group stops ticking and heartbeating,
//!   and what wakes it.
//! - [`events`]: the replica's recent key changes, which watchers read.
//! - [`locks`]: the replica's lease index and the leader's lock wait queues.
//! - [`leaders`]: what the node's replicas know of their shards' leaders, for routers.
//! - [`messages`]: what the actor receives and answers.
//! - [`transport`]: the `Transport` trait and the in-process `LocalTransport`.
//! - [`clock`], [`raft_log`], [`metrics`]: time, raft's logger, Prometheus.

pub mod actor;
pub mod background;
pub mod clock;
pub mod engine;
pub mod events;
pub mod hibernate;
pub mod leaders;
pub mod load;
pub mod locks;
pub mod log_store;
pub mod messages;
pub mod metrics;
pub mod raft_log;
pub mod registry;
mod round;
pub mod snapshot;
pub mod transport;

pub use actor::{ReplicaConfig, StorageActor};

/// Arms the failpoints named in the `FAILPOINTS` environment variable
/// (`name=1*return;...`, the `fail` crate's syntax). Only builds with the
/// `failpoints` feature (the tests') have any; elsewhere this does nothing.
/// Every failpoint of ringstore's aborts the process where it sits: a
/// `kill -9` at a chosen step.
pub fn arm_failpoints() {
    std::mem::forget(fail::FailScenario::setup());
}
pub use engine::Engine;
pub use leaders::LeaderHints;
pub use messages::{ReplicaStatus, ShardOp, ShardReply, ShardRequest, ShardResult};
pub use registry::RangeRegistry;
pub use transport::{LocalTransport, NetFilter, Transport};
