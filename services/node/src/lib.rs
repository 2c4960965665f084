//! Wires the services into nodes.
//!
//! # Layout
//! - [`cluster`]: `LocalCluster`, N nodes in one process on the in-process
//!   transport, each with its own RocksDB, storage actor (own thread),
//!   router and HTTP server. `ringstore dev` and the cluster tests use it.

pub mod cluster;
