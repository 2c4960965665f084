//! `LocalCluster`: several ringstore nodes in one process.
//!
//! Each node has its own data directory and RocksDB, one storage actor per
//! shard replica on the node's storage threads (`replicas`), a Router actor and an HTTP
//! server on its own port. Nodes talk through a shared [`LocalTransport`],
//! whose filter lets tests drop, delay and partition traffic. Stopping a
//! node stops its actor and closes its RocksDB, as a crash would (nothing
//! is flushed beyond what the WAL already holds).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::dev::ServerHandle;
use anyhow::{bail, Context as _};
use ringstore_router::{map as routing_map, MapCell, Route, Router, RoutingTable};
use ringstore_shared::cluster_map::{ClusterMap, NodeInfo, NodeState};
use ringstore_shared::config::{Limits, RaftConfig};
use ringstore_shared::{NodeId, ShardId, FIRST_DATA_SHARD};
use ringstore_storage::{Engine, LeaderHints, LocalTransport, ReplicaStatus, ShardOp, ShardReply, Transport};
use tracing::info;

use crate::replicas::{self, LocalReplicas};
pub use crate::replicas::{default_storage_threads, STORAGE_THREADS_MAX};
use ringstore_rebalancer::{Rebalancer, REPLICATION};

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub data_dir: PathBuf,
    pub nodes: Vec<NodeId>,
    /// Node `nodes[i]` serves HTTP on this address with port `+ i`; port 0
    /// gives every node an ephemeral port (tests).
    pub http: SocketAddr,
    pub http_workers: usize,
    /// Storage threads per node (see [`default_storage_threads`]).
    pub storage_threads: usize,
    /// Data shards (1..=shards), three replicas each, placed by `placement`.
    pub shards: u64,
    pub raft: RaftConfig,
    pub limits: Limits,
    /// Bearer tokens every node checks (off by default, as in `ringstore dev`).
    pub auth: Arc<ringstore_api::auth::Auth>,
    /// Each node's per-client rate limit (none by default).
    pub rate_limit: Option<ringstore_api::limit::RateLimit>,
}

impl ClusterConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ClusterConfig {
            data_dir: data_dir.into(),
            nodes: vec![1, 2, 3],
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_workers: 1,
            storage_threads: default_storage_threads(),
            shards: 1,
            raft: RaftConfig::default(),
            limits: Limits::default(),
            auth: Arc::new(ringstore_api::auth::Auth::off()),
            rate_limit: None,
        }
    }
}

struct RunningNode {
    replicas: Arc<LocalReplicas>,
    keeper: actix_rt::task::JoinHandle<()>,
    follower: actix_rt::task::JoinHandle<()>,
    rebalancer: Addr<Rebalancer>,
    engine: Weak<Engine>,
    router: Addr<Router>,
    server: ServerHandle,
    http: SocketAddr,
}

pub struct LocalCluster {
    cfg: ClusterConfig,
    transport: LocalTransport,
    nodes: BTreeMap<NodeId, RunningNode>,
    map: ClusterMap,
}

/// The shard count is fixed when the data dir is created: the ring (and
/// so which replica holds which key) depends on it. A later, different
/// request is ignored with a warning rather than misplacing data.
fn settle_shard_count(data_dir: &std::path::Path, wanted: u64) -> anyhow::Result<u64> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("shards");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored: u64 = text.trim().parse().with_context(|| format!("reading {}", path.display()))?;
            if stored != wanted {
                tracing::warn!(stored, wanted, "the data dir was created with {stored} shard(s); keeping {stored}");
            }
            Ok(stored)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, format!("{wanted}\n")).with_context(|| format!("writing {}", path.display()))?;
            Ok(wanted)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// How long a stopped node may take to release its RocksDB.
const ENGINE_CLOSE_WAIT: Duration = Duration::from_secs(10);

impl LocalCluster {
    /// Starts every node. Must run inside an actix system.
    pub async fn start(cfg: ClusterConfig) -> anyhow::Result<Self> {
        let infos = cfg.nodes.iter().map(|id| (*id, NodeInfo::new("", "", NodeState::Up))).collect();
        let shards = settle_shard_count(&cfg.data_dir, cfg.shards.max(1))?;
        let map = ClusterMap::bootstrap(infos, shards, 3)?;
        let mut c = LocalCluster { cfg, transport: LocalTransport::new(), nodes: BTreeMap::new(), map };
        for id in c.cfg.nodes.clone() {
            c.start_node(id).await?;
        }
        Ok(c)
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.cfg.nodes.clone()
    }

    pub fn transport(&self) -> &LocalTransport {
        &self.transport
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.cfg.data_dir.join(format!("node-{id}"))
    }

    /// HTTP base URL of a running node.
    pub fn url(&self, id: NodeId) -> Option<String> {
        self.nodes.get(&id).map(|n| format!("http://{}", n.http))
    }

    pub fn is_running(&self, id: NodeId) -> bool {
        self.nodes.contains_key(&id)
    }

    pub async fn start_node(&mut self, id: NodeId) -> anyhow::Result<()> {
        if self.nodes.contains_key(&id) {
            bail!("node {id} is already running");
        }
        let idx = self
            .cfg
            .nodes
            .iter()
            .position(|n| *n == id)
            .with_context(|| format!("node {id} is not a member of this cluster"))?;
        let dir = self.data_dir(id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let engine = Engine::open(&dir, &id.to_string())?;
        engine.check_or_set_identity(id).with_context(|| format!("data dir {}", dir.display()))?;
        let transport: Arc<dyn Transport> = Arc::new(self.transport.clone());
        let local = self.transport.clone();
        let leaders = Arc::new(LeaderHints::new(Duration::from_millis(self.cfg.raft.election_timeout_ms())));
        // A restarted node starts from the last map it followed.
        let start_map = crate::follow::stored_map(&engine)?.unwrap_or_else(|| self.map.clone());
        let replicas = replicas::start(
            id,
            &start_map,
            &engine,
            transport.clone(),
            &leaders,
            &self.cfg.raft,
            &self.cfg.limits,
            Box::new(move |shard, addr| match addr {
                Some(addr) => local.register(id, shard, addr),
                None => local.unregister(id, shard),
            }),
            self.cfg.storage_threads,
        )?;
        let shards_here = replicas.clone();
        let handover = replicas.handover(Duration::from_millis(self.cfg.raft.election_timeout_ms() * 3));
        let weak = Arc::downgrade(&engine);
        // Each node routes by its own copy of the map, kept in step with the
        // meta shard by its map keeper. The admin router (status, tests)
        // lives on the system arbiter; each HTTP worker starts its own below,
        // all reading this node's map.
        let map = MapCell::new(id, RoutingTable::from_map(&start_map), leaders);
        let keeper = actix_rt::spawn(routing_map::keep_in_sync(map.clone(), transport.clone(), Some(self.map.clone())));
        let follower = actix_rt::spawn(crate::follow::follow_map(
            map.clone(),
            replicas.clone(),
            engine,
            Box::new(|_: &ClusterMap| {}),
        ));
        let rebalancer = actix::Actor::start(Rebalancer::new(map.clone(), transport.clone(), REPLICATION));
        let router = actix::Actor::start(Router::new(id, map.clone(), transport.clone()));
        let mut addr = self.cfg.http;
        if addr.port() != 0 {
            addr.set_port(addr.port() + idx as u16);
        }
        let (server, http) = crate::http::start(crate::http::HttpOptions {
            node: id,
            addr,
            workers: self.cfg.http_workers,
            map,
            local_shards: Arc::new(move || shards_here.shards()),
            transport,
            cluster_id: 0,
            handover,
            limits: self.cfg.limits.clone(),
            draining: Arc::default(),
            shutdown_timeout_s: 5,
            auth: self.cfg.auth.clone(),
            rate_limit: self.cfg.rate_limit,
            tls: None,
        })?;
        info!(node = id, %http, data_dir = %dir.display(), "node started");
        self.nodes
            .insert(id, RunningNode { replicas, engine: weak, router, server, http, keeper, follower, rebalancer });
        Ok(())
    }

    /// Stops a node as a crash would: its HTTP server, its storage actor and
    /// thread, and its RocksDB are closed. Waits until RocksDB is released.
    pub async fn stop_node(&mut self, id: NodeId) -> anyhow::Result<()> {
        let node = self.nodes.remove(&id).with_context(|| format!("node {id} is not running"))?;
        self.transport.unregister_node(id);
        node.keeper.abort();
        node.follower.abort();
        node.rebalancer.do_send(ringstore_rebalancer::actor::Stop);
        node.server.stop(false).await;
        node.replicas.stop().await?;
        drop(node.router);
        drop(node.replicas);
        let _ = node.follower.await;
        let start = Instant::now();
        while node.engine.strong_count() > 0 {
            if start.elapsed() > ENGINE_CLOSE_WAIT {
                bail!("node {id}: RocksDB still open {ENGINE_CLOSE_WAIT:?} after stop");
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        info!(node = id, "node stopped");
        Ok(())
    }

    /// Stops every running node and waits until each one's RocksDB is
    /// closed. Call it before the process exits: a RocksDB still closing
    /// on a storage thread while the process tears down its statics can
    /// crash the exit.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.stop_node(id).await?;
        }
        Ok(())
    }

    /// The map the cluster was bootstrapped with.
    pub fn map(&self) -> &ClusterMap {
        &self.map
    }

    /// The status of shard 1's replica on node `id`.
    pub async fn status(&self, id: NodeId) -> anyhow::Result<ReplicaStatus> {
        self.shard_status(id, FIRST_DATA_SHARD).await
    }

    /// The status of `shard`'s replica on node `id`.
    pub async fn shard_status(&self, id: NodeId, shard: ShardId) -> anyhow::Result<ReplicaStatus> {
        let node = self.nodes.get(&id).with_context(|| format!("node {id} is not running"))?;
        let route = Route { key: vec![], op: ShardOp::Status, timeout: Duration::from_secs(2), shard: Some(shard) };
        let r = node.router.send(route).await??;
        match r {
            ShardReply::Status(s) => Ok(s),
            other => bail!("unexpected reply {other:?}"),
        }
    }

    /// The leader that running nodes agree on, waiting up to `within`.
    pub async fn wait_leader(&self, within: Duration) -> anyhow::Result<NodeId> {
        let start = Instant::now();
        loop {
            let mut leaders = Vec::new();
            for id in self.nodes.keys() {
                if let Ok(s) = self.status(*id).await {
                    if s.role == "leader" {
                        leaders.push((s.term, *id));
                    }
                }
            }
            leaders.sort();
            if let Some((_, id)) = leaders.last() {
                return Ok(*id);
            }
            if start.elapsed() > within {
                bail!("no leader within {within:?}");
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
