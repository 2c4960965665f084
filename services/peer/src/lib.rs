//! How `ringstore node` processes talk: the peer protocol over TCP.
//!
//! # Layout
//! - [`wire`]: frames and their codec, the hello check and snapshot
//!   reassembly. Pure, unit-tested byte by byte.
//! - [`transport`]: [`PeerTransport`], the `Transport` between processes:
//!   one link task per peer with a bounded queue, reconnect with backoff,
//!   and the inbound side that hands frames to local replicas.
//! - [`metrics`]: queue depth, connects, bytes, drops, refusals.

pub mod metrics;
pub mod transport;
pub mod wire;

pub use transport::{PeerConfig, PeerTransport};
