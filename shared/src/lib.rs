//! What every ringstore service speaks: identifiers, the key hash, the
//! on-disk key and value codecs, the replicated command codec, the pure
//! rules that apply a command to a key, limits and the error type that
//! travels between layers.
//!
//! Nothing here does I/O or depends on actix or RocksDB, so all of it is
//! unit-tested without a runtime.
//!
//! # Layout
//! - [`hash`]: `key_point`, the one function that places a key on the ring (hash tags).
//! - [`keys`]: `data` column family keys (`ring_point BE ++ user_key`).
//! - [`value`]: the stored value record (version, expiry, bytes).
//! - [`command`]: commands replicated through Raft and their binary codec.
//! - [`apply`]: the deterministic rules that turn a command into writes.
//! - [`txn`]: one-shard transactions (compare, then/else) and their rule.
//! - [`lock`]: lock and fence records and the lock rules (pure).
//! - [`ring`]: which shard owns a ring point (`consistent_hash_ring`, vnodes per shard).
//! - [`placement`]: which nodes hold each shard's replicas (pure, balanced).
//! - [`cluster_map`]: epoch, nodes and shards; bootstrap and codec.
//! - [`planner`]: the Rebalancer's replica and leader moves (pure).
//! - [`rebalance`]: a move's next step, which moves start, node states, drain checks (pure).
//! - [`split`]: how many shards the ring wants, which splits next and where (pure).
//! - [`error`]: [`StoreError`], the typed error every layer returns.
//! - [`config`]: limits and timing, each with its unit in its name.

pub mod apply;
pub mod cluster_map;
pub mod codec;
pub mod command;
pub mod config;
pub mod error;
pub mod hash;
pub mod keys;
pub mod lease;
pub mod lock;
pub mod placement;
pub mod planner;
pub mod rebalance;
pub mod ring;
pub mod split;
pub mod txn;
pub mod value;

pub use error::StoreError;

/// Identity of one `ringstore` process.
pub type NodeId = u64;
/// Identity of one Raft group.
pub type ShardId = u64;

/// The shard that holds user data until the sharding work splits the ring.
pub const FIRST_DATA_SHARD: ShardId = 1;
