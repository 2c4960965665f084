//! `ringstore node`: one member of a cluster of processes.
//!
//! Startup: open RocksDB, settle the identity (bootstrap an empty data dir
//! from `--initial-cluster`, or rejoin with the stored one, refusing a data
//! dir of another node or cluster), start the peer transport on its own
//! thread, the shard replica on another, then the HTTP server.
//!
//! Shutdown on SIGTERM or Ctrl-C: report not-ready, hand leadership to the
//! most up-to-date follower, let in-flight requests finish, stop the
//! replica, flush RocksDB, exit 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Arbiter;
use anyhow::Context as _;
use ringstore_peer::{PeerConfig, PeerTransport};
use ringstore_router::RoutingTable;
use ringstore_shared::cluster_map::{ClusterMap, NodeInfo, NodeState};
use ringstore_shared::{NodeId, FIRST_DATA_SHARD};
use ringstore_storage::clock::SystemClock;
use ringstore_storage::messages::TransferLeadership;
use ringstore_storage::{Engine, ReplicaConfig, ShardOp, ShardReply, ShardRequest, StorageActor};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::NodeOptions;
use crate::identity::{self, Identity, IDENTITY_KEY};

pub async fn run(o: NodeOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&o.data_dir).with_context(|| format!("creating {}", o.data_dir.display()))?;
    let dir = o.data_dir.canonicalize().unwrap_or_else(|_| o.data_dir.clone());
    let (engine, ident) = open_with_identity(&o)?;
    let node = ident.node;
    let voters: Vec<NodeId> = ident.members.keys().copied().collect();

    let peer_thread = Arbiter::new();
    let (transport, peer_bound) = PeerTransport::start(
        PeerConfig { node, cluster_id: ident.cluster_id, listen: o.peer_addr, peers: ident.peers() },
        &peer_thread.handle(),
    )?;
    let storage_thread = Arbiter::new();
    let storage = StorageActor::start(
        ReplicaConfig {
            node,
            shard: FIRST_DATA_SHARD,
            ranges: ringstore_storage::snapshot::whole_ring(),
            initial_voters: voters.clone(),
            raft: o.raft.clone(),
            limits: o.limits.clone(),
        },
        engine.clone(),
        Arc::new(transport.clone()),
        Arc::new(SystemClock),
        &storage_thread.handle(),
    )?;
    transport.register(FIRST_DATA_SHARD, storage.clone());

    let draining = Arc::new(AtomicBool::new(false));
    let (server, http_bound) = crate::http::start(crate::http::HttpOptions {
        node,
        addr: o.http,
        workers: o.http_workers,
        table: Arc::new(RoutingTable::from_map(&single_shard_map(&ident))),
        local_shards: vec![FIRST_DATA_SHARD],
        transport: Arc::new(transport.clone()),
        limits: o.limits.clone(),
        draining: draining.clone(),
        shutdown_timeout_s: o.shutdown_timeout_s,
    })?;
    if !o.raft.sync_wal {
        warn!("--unsafe-no-fsync: the Raft log is not fsynced; a crash can lose acknowledged writes");
    }
    println!(
        "ringstore node {node}: cluster {:016x}, http http://{http_bound}, peers on {peer_bound}, data in {}",
        ident.cluster_id,
        dir.display()
    );

    crate::shutdown_signal().await;
    info!(node, "shutting down: draining");
    draining.store(true, Ordering::Relaxed);
    hand_over_leadership(&storage, node, Duration::from_millis(o.raft.election_timeout_ms() * 3)).await;
    // Waits for in-flight requests (up to the shutdown timeout); the peer
    // transport still runs, so forwarded work can complete.
    server.stop(true).await;
    storage_thread.stop();
    actix_rt::task::spawn_blocking(move || storage_thread.join()).await.context("joining the storage thread")?.ok();
    drop(storage);
    engine.flush().context("flushing RocksDB")?;
    peer_thread.stop();
    info!(node, "stopped cleanly");
    println!("ringstore node {node}: stopped cleanly");
    Ok(())
}

/// One data shard on every member, owning the whole ring. Multi-shard
/// process clusters come with the meta shard, which will hold the map.
fn single_shard_map(ident: &Identity) -> ClusterMap {
    let nodes = ident
        .members
        .iter()
        .map(|(id, peer)| (*id, NodeInfo { http: String::new(), peer: peer.clone(), state: NodeState::Up }))
        .collect();
    let shards = [(FIRST_DATA_SHARD, ident.members.keys().copied().collect())].into_iter().collect();
    ClusterMap { epoch: 1, nodes, shards }
}

/// Opens RocksDB and settles who this data dir belongs to.
fn open_with_identity(o: &NodeOptions) -> anyhow::Result<(Arc<Engine>, Identity)> {
    let label = o.id.map(|i| i.to_string()).unwrap_or_else(|| "0".into());
    let engine = Engine::open(&o.data_dir, &label)?;
    let stored = engine
        .meta_get(IDENTITY_KEY)?
        .map(|b| Identity::decode(&b))
        .transpose()
        .with_context(|| format!("reading the identity in {}", o.data_dir.display()))?;
    let initial = o
        .initial_cluster
        .as_deref()
        .map(identity::parse_initial_cluster)
        .transpose()?
        .map(|m| (o.cluster_token.as_str(), m));
    let (ident, fresh) =
        identity::resolve(stored, o.id, initial).with_context(|| format!("data dir {}", o.data_dir.display()))?;
    if fresh {
        engine.meta_put(IDENTITY_KEY, &ident.encode())?;
        info!(node = ident.node, cluster = format!("{:016x}", ident.cluster_id), "bootstrapped a new data dir");
    } else {
        info!(node = ident.node, cluster = format!("{:016x}", ident.cluster_id), "rejoining with the stored identity");
    }
    engine.check_or_set_identity(ident.node).with_context(|| format!("data dir {}", o.data_dir.display()))?;
    if o.id.is_none() {
        // Metrics carry the node id: reopen under the right label.
        drop(engine);
        let engine = Engine::open(&o.data_dir, &ident.node.to_string())?;
        return Ok((engine, ident));
    }
    Ok((engine, ident))
}

/// If this node leads, hands leadership over and waits (bounded) until it
/// has moved, so clients see no election timeout when the node stops.
async fn hand_over_leadership(storage: &actix::Addr<StorageActor>, node: NodeId, within: Duration) {
    let Ok(Some(target)) = storage.send(TransferLeadership).await else { return };
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(Ok(ShardReply::Status(s))) = storage.send(ShardRequest(ShardOp::Status)).await {
            if s.role != "leader" {
                info!(node, target, leader = ?s.leader, "leadership handed over");
                return;
            }
        }
    }
    warn!(node, target, "leadership did not move within {within:?}; stopping anyway");
}
