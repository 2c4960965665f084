//! How `ringstore node` processes talk: the peer protocol over TCP, or
//! over mutual TLS with a cluster CA.
//!
//! # Layout
//! - [`wire`]: frames and their codec, the hello check and snapshot
//!   reassembly. Pure, unit-tested byte by byte.
//! - [`transport`]: [`PeerTransport`], the `Transport` between processes:
//!   one link task per peer with a bounded queue, reconnect with backoff,
//!   and the inbound side that hands frames to local replicas.
//! - [`protoscan`]: a bounded walk of every Raft message's protobuf bytes
//!   before protobuf 2 decodes them (no groups, bounded nesting; see
//!   RUSTSEC-2024-0437).
//! - [`tls`]: [`NodeTls`], the node's certificate, key and cluster CA,
//!   reloadable; the HTTPS and peer mTLS configurations made from them.
//! - [`certs`]: a cluster CA and node certificates (`ringstore certs`).
//! - [`metrics`]: queue depth, connects, bytes, drops, refusals.

pub mod certs;
pub mod metrics;
pub mod protoscan;
pub mod tls;
pub mod transport;
pub mod wire;

pub use tls::{NodeTls, TlsFiles};
pub use transport::{PeerConfig, PeerTransport};
