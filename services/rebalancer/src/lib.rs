//! The Rebalancer: makes the set of nodes elastic by moving replicas and
//! leaders of the existing shards. One runs on every node; only the one
//! next to the meta shard's leader acts, so exactly one is active and it
//! moves with leadership. Every decision is a pure function in
//! `ringstore_shared::{planner, rebalance}`; this crate gathers their
//! inputs (the map, shard configurations, liveness) and carries out what
//! they return, through the shards' leaders.
//!
//! Everything a move needs to resume lives in the cluster map (the move
//! itself) and in the shard's Raft configuration (how far it got), so a
//! new meta leader picks up where the old one stopped.
//!
//! # Layout
//! - [`actor`]: the [`Rebalancer`] actor: a tick that checks liveness and
//!   runs one round (node states, move steps, new moves, leader balance).
//! - [`shards`]: talking to a shard's leader: status, membership changes,
//!   leader transfers.
//! - [`view`]: what `GET /v1/rebalance` and dry runs show, computed on any node.
//! - [`metrics`]: moves by kind and result, bytes moved, durations.

pub mod actor;
pub mod metrics;
pub mod shards;
pub mod view;

pub use actor::Rebalancer;

/// Replicas per data shard (fewer when the cluster has fewer nodes).
pub const REPLICATION: usize = 3;

/// Wall-clock milliseconds, the clock the map's timestamps use.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
