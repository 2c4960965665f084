//! `LocalCluster`: several ringstore nodes in one process.
//!
//! Each node has its own data directory and RocksDB, one storage actor per
//! shard on a dedicated arbiter (thread), a Router actor and an HTTP
//! server on its own port. Nodes talk through a shared [`LocalTransport`],
//! whose filter lets tests drop, delay and partition traffic. Stopping a
//! node stops its actor and closes its RocksDB, as a crash would (nothing
//! is flushed beyond what the WAL already holds).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actix::{Addr, Arbiter};
use actix_web::dev::ServerHandle;
use anyhow::{bail, Context as _};
use ringstore_router::{LeaderCache, Route, Router};
use ringstore_shared::config::{Limits, RaftConfig};
use ringstore_shared::{NodeId, ShardId, FIRST_DATA_SHARD};
use ringstore_storage::clock::SystemClock;
use ringstore_storage::{
    Engine, LocalTransport, ReplicaConfig, ReplicaStatus, ShardOp, ShardReply, StorageActor, Transport,
};
use tracing::info;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub data_dir: PathBuf,
    pub nodes: Vec<NodeId>,
    /// Node `nodes[i]` serves HTTP on this address with port `+ i`; port 0
    /// gives every node an ephemeral port (tests).
    pub http: SocketAddr,
    pub http_workers: usize,
    pub raft: RaftConfig,
    pub limits: Limits,
}

impl ClusterConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ClusterConfig {
            data_dir: data_dir.into(),
            nodes: vec![1, 2, 3],
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_workers: 1,
            raft: RaftConfig::default(),
            limits: Limits::default(),
        }
    }
}

struct RunningNode {
    arbiter: Arbiter,
    storage: Addr<StorageActor>,
    engine: Weak<Engine>,
    router: Addr<Router>,
    server: ServerHandle,
    http: SocketAddr,
}

pub struct LocalCluster {
    cfg: ClusterConfig,
    transport: LocalTransport,
    nodes: BTreeMap<NodeId, RunningNode>,
    shard: ShardId,
}

/// How long a stopped node may take to release its RocksDB.
const ENGINE_CLOSE_WAIT: Duration = Duration::from_secs(10);

impl LocalCluster {
    /// Starts every node. Must run inside an actix system.
    pub async fn start(cfg: ClusterConfig) -> anyhow::Result<Self> {
        let mut c =
            LocalCluster { cfg, transport: LocalTransport::new(), nodes: BTreeMap::new(), shard: FIRST_DATA_SHARD };
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
        let arbiter = Arbiter::new();
        let storage = StorageActor::start(
            ReplicaConfig {
                node: id,
                shard: self.shard,
                ranges: ringstore_storage::snapshot::whole_ring(),
                initial_voters: self.cfg.nodes.clone(),
                raft: self.cfg.raft.clone(),
                limits: self.cfg.limits.clone(),
            },
            engine.clone(),
            Arc::new(self.transport.clone()),
            Arc::new(SystemClock),
            &arbiter.handle(),
        )?;
        let weak = Arc::downgrade(&engine);
        drop(engine);
        self.transport.register(id, self.shard, storage.clone());
        let leader = LeaderCache::default();
        let transport: Arc<dyn Transport> = Arc::new(self.transport.clone());
        let members = self.cfg.nodes.clone();
        let shard = self.shard;
        // The admin router (status, tests) lives on the system arbiter; each
        // HTTP worker starts its own below. All share the leader cache.
        let router = actix::Actor::start(Router::new(id, shard, members.clone(), transport.clone(), leader.clone()));
        let mut addr = self.cfg.http;
        if addr.port() != 0 {
            addr.set_port(addr.port() + idx as u16);
        }
        let (server, http) = crate::http::start(crate::http::HttpOptions {
            node: id,
            addr,
            workers: self.cfg.http_workers,
            shard,
            members,
            transport,
            leader,
            limits: self.cfg.limits.clone(),
            draining: Arc::default(),
            shutdown_timeout_s: 5,
        })?;
        info!(node = id, %http, data_dir = %dir.display(), "node started");
        self.nodes.insert(id, RunningNode { arbiter, storage, engine: weak, router, server, http });
        Ok(())
    }

    /// Stops a node as a crash would: its HTTP server, its storage actor and
    /// thread, and its RocksDB are closed. Waits until RocksDB is released.
    pub async fn stop_node(&mut self, id: NodeId) -> anyhow::Result<()> {
        let node = self.nodes.remove(&id).with_context(|| format!("node {id} is not running"))?;
        self.transport.unregister_node(id);
        node.server.stop(false).await;
        node.arbiter.stop();
        let arbiter = node.arbiter;
        actix_rt::task::spawn_blocking(move || arbiter.join()).await.context("joining the storage thread")?.ok();
        drop(node.storage);
        drop(node.router);
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

    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.stop_node(id).await?;
        }
        Ok(())
    }

    /// The status of the replica on node `id`.
    pub async fn status(&self, id: NodeId) -> anyhow::Result<ReplicaStatus> {
        let node = self.nodes.get(&id).with_context(|| format!("node {id} is not running"))?;
        let r = node.router.send(Route { key: vec![], op: ShardOp::Status, timeout: Duration::from_secs(2) }).await??;
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
