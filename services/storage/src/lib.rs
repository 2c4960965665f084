//! The one crate that owns RocksDB. It stores each shard replica's Raft
//! log and state machine, and runs the storage actor that drives
//! tikv/raft-rs over them.
//!
//! # Layout
//! - [`engine`]: the node's RocksDB and its `raft`/`data`/`meta` column families.
//! - [`log_store`]: raft-rs's `Storage` trait on the `raft` column family.
//! - [`snapshot`]: the snapshot payload codec.
//! - [`actor`]: `Replica`, one shard replica (tick, step, Ready, apply,
//!   reads), and `StorageActor`, its mailbox.
//! - [`batch`]: a storage thread's poll loop: one pass over every replica
//!   with work, one RocksDB write, one sync request and one send per peer.
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
mod batch;
pub mod clock;
pub mod engine;
pub mod entry_cache;
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
