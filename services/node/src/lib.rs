//! Wires the services into nodes.
//!
//! # Layout
//! - [`process`]: `ringstore node`, one member of a cluster of processes
//!   on the TCP peer transport; bootstrap, rejoin, graceful shutdown.
//! - [`identity`]: node id, cluster id and members of a data dir; the pure
//!   bootstrap/rejoin/refuse decision.
//! - [`config`]: flags, environment and TOML merged into `NodeOptions`.
//! - [`cluster`]: `LocalCluster`, N nodes in one process on the in-process
//!   transport (`ringstore dev` and the in-process cluster tests).
//! - [`replicas`]: a node's shard replicas on its storage threads: start
//!   from the map, add and destroy as replicas move, hand leadership over, stop.
//! - [`follow`]: keeps replicas, peer links and the stored map in step with
//!   the cluster map.
//! - [`join`]: `--join`, asking a member to admit this node.
//! - [`http`]: the HTTP server and its per-worker Router actors.
//! - [`lock_cmd`]: `ringstore lock NAME -- COMMAND`.
//! - [`status`]: `ringstore status`, the cluster map as a table.

pub mod cluster;
pub mod config;
pub mod follow;
pub mod http;
pub mod identity;
pub mod join;
pub mod lock_cmd;
pub mod process;
pub mod replicas;
pub mod status;

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
