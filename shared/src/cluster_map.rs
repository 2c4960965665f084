//! The cluster map: epoch, nodes, shards and their replicas, which ring
//! points each shard owns, the replica moves and splits in progress and
//! the Rebalancer's settings. The meta shard (shard
//! 0) replicates it; routers cache it and build the ring from its data
//! shards; the Rebalancer changes it one epoch at a time. Pure: bootstrap,
//! lookup, edits and the binary codec.

use std::collections::BTreeMap;

use crate::codec::{CodecError, Reader, Writer};
use crate::placement::{self, PlacementError};
use crate::ring::{Ring, ShardRange};
use crate::{NodeId, ShardId};

/// The shard that stores the cluster map.
pub const META_SHARD: ShardId = 0;
const FORMAT_V1: u8 = 1;
/// V2 adds when each node entered its state, the moves in progress and the
/// Rebalancer's settings.
const FORMAT_V2: u8 = 2;
/// V3 adds each shard's ring window and the splits in progress.
const FORMAT_V3: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Joining,
    Up,
    Draining,
    Down,
    /// Drained and retired: holds nothing, may be stopped or forgotten.
    Removed,
}

impl NodeState {
    fn code(self) -> u8 {
        match self {
            NodeState::Joining => 1,
            NodeState::Up => 2,
            NodeState::Draining => 3,
            NodeState::Down => 4,
            NodeState::Removed => 5,
        }
    }
    fn from_code(c: u8) -> Result<Self, CodecError> {
        Ok(match c {
            1 => NodeState::Joining,
            2 => NodeState::Up,
            3 => NodeState::Draining,
            4 => NodeState::Down,
            5 => NodeState::Removed,
            tag => return Err(CodecError::UnknownTag { what: "node state", tag }),
        })
    }
}

impl NodeState {
    pub fn label(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Up => "up",
            NodeState::Draining => "draining",
            NodeState::Down => "down",
            NodeState::Removed => "removed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub http: String,
    pub peer: String,
    pub state: NodeState,
    /// Wall-clock ms (the meta leader's) when the node entered `state`; 0
    /// when unknown. Lets a new meta leader keep counting a node's downtime.
    pub since_ms: u64,
}

impl NodeInfo {
    pub fn new(http: impl Into<String>, peer: impl Into<String>, state: NodeState) -> Self {
        NodeInfo { http: http.into(), peer: peer.into(), state, since_ms: 0 }
    }
}

/// A replica of `shard` being added on `to` (as a learner, then promoted)
/// and, if `from` is set, the one on `from` removed. Recorded in the map
/// before the first step, removed after the last, so a new meta leader
/// finds it and carries on; the shard's Raft configuration says which
/// step it is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaMove {
    pub shard: ShardId,
    pub from: Option<NodeId>,
    pub to: NodeId,
    /// Wall-clock ms when the move was started.
    pub started_ms: u64,
    /// The shard's size when the move started: what the snapshot carries.
    pub bytes: u64,
}

/// Shard `source` giving the points of its window from `at` up to a new
/// shard `target`, in place: the new shard starts on the source's nodes
/// with the data already there. Recorded at `epoch` before the source is
/// asked to split; the source's ranges say whether it has (they carry the
/// epoch of the split that last changed them); the map then lists
/// `target` and drops this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSplit {
    pub source: ShardId,
    pub target: ShardId,
    pub at: u64,
    /// The map epoch that recorded this split.
    pub epoch: u64,
    pub started_ms: u64,
}

/// The current rebalance job: from the first move started after the map
/// was balanced to the last one done. What `GET /v1/rebalance` derives
/// progress, rate and ETA from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobProgress {
    /// Wall-clock ms when the job's first move started; 0: no job yet.
    pub started_ms: u64,
    /// When the map was next found balanced; 0 while the job runs.
    pub finished_ms: u64,
    pub moves_done: u64,
    pub moves_rolled_back: u64,
    pub bytes_done: u64,
}

/// How the Rebalancer moves, changed at run time (`PUT /v1/rebalance/config`,
/// `POST /v1/rebalance/pause|resume`), kept in the map so every meta
/// leader uses the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebalanceConfig {
    /// No new moves start; running ones finish their current step.
    pub paused: bool,
    /// Snapshot bytes per second each node sends for moves.
    pub max_bytes_per_sec: u64,
    /// Replica moves in flight at once, cluster-wide.
    pub max_concurrent_moves: u32,
    /// A node down this long has its replicas re-created elsewhere.
    pub down_after_s: u64,
    /// Data shards the ring should have at least (`POST /v1/cluster/shards`
    /// raises it); 0: no such target.
    pub target_shards: u64,
    /// Data shards per up node the ring should have at least, so it grows
    /// as nodes join; 0: off.
    pub shards_per_node: u32,
    /// A shard larger than this (key and value bytes) is split; 0: off.
    /// Below the 1 GiB a snapshot may carry, so every shard stays movable.
    pub split_max_bytes: u64,
    /// A shard whose leader serves more requests per second than this,
    /// round after round, is split where its load halves; 0: off.
    pub split_load_qps: u64,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            paused: false,
            max_bytes_per_sec: 64 * 1024 * 1024,
            max_concurrent_moves: 2,
            down_after_s: 300,
            target_shards: 0,
            shards_per_node: 0,
            split_max_bytes: 512 * 1024 * 1024,
            split_load_qps: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMap {
    /// Increases with every change.
    pub epoch: u64,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Voters per shard, preferred leader first. Shard 0 is the meta shard.
    pub shards: BTreeMap<ShardId, Vec<NodeId>>,
    /// Replica moves in progress, at most one per shard.
    pub moves: Vec<ReplicaMove>,
    /// Which points each data shard owns (see [`crate::ring`]).
    pub ring: BTreeMap<ShardId, ShardRange>,
    /// Splits recorded and not yet finished, at most one per source.
    pub splits: Vec<ShardSplit>,
    pub rebalance: RebalanceConfig,
    pub job: JobProgress,
}

impl ClusterMap {
    /// The first map of a new cluster: the meta shard on three nodes (or all
    /// if fewer) and `data_shards` shards of `replication` replicas.
    pub fn bootstrap(
        nodes: BTreeMap<NodeId, NodeInfo>,
        data_shards: u64,
        replication: usize,
    ) -> Result<Self, PlacementError> {
        let ids: Vec<NodeId> = nodes.keys().copied().collect();
        let data: Vec<ShardId> = (1..=data_shards).collect();
        let mut shards = placement::place(&ids, &data, replication)?;
        shards.insert(META_SHARD, placement::meta_voters(&ids));
        Ok(ClusterMap {
            epoch: 1,
            nodes,
            shards,
            moves: Vec::new(),
            ring: data.iter().map(|s| (*s, ShardRange::whole(*s))).collect(),
            splits: Vec::new(),
            rebalance: RebalanceConfig::default(),
            job: JobProgress::default(),
        })
    }

    /// The id a joining node gets: one above every id ever used (removed
    /// nodes stay in the map, so ids are never reused).
    pub fn next_node_id(&self) -> NodeId {
        self.nodes.keys().next_back().map_or(1, |m| m + 1)
    }

    /// The move of `shard` in progress, if any.
    pub fn move_of(&self, shard: ShardId) -> Option<&ReplicaMove> {
        self.moves.iter().find(|m| m.shard == shard)
    }

    /// Whether `node` should run a replica of `shard`: a voter, or the
    /// target of a move in progress.
    pub fn hosts(&self, node: NodeId, shard: ShardId) -> bool {
        self.shards.get(&shard).is_some_and(|r| r.contains(&node))
            || self.moves.iter().any(|m| m.shard == shard && m.to == node)
    }

    /// Every shard `node` should run a replica of (see [`Self::hosts`]).
    pub fn hosted_on(&self, node: NodeId) -> Vec<ShardId> {
        self.shards.keys().copied().filter(|s| self.hosts(node, *s)).collect()
    }

    /// The same map at the next epoch, for an edit.
    pub fn next(&self) -> ClusterMap {
        ClusterMap { epoch: self.epoch + 1, ..self.clone() }
    }

    /// The ring over the data shards (the meta shard owns no keys).
    pub fn ring(&self) -> Ring {
        Ring::with_layout(&self.ring)
    }

    /// The id a new shard gets: one above every shard id in use or planned.
    pub fn next_shard_id(&self) -> ShardId {
        let planned = self.splits.iter().map(|s| s.target).max().unwrap_or(0);
        self.shards.keys().next_back().copied().unwrap_or(0).max(planned) + 1
    }

    /// The split `shard` is the source or target of, if any.
    pub fn split_of(&self, shard: ShardId) -> Option<&ShardSplit> {
        self.splits.iter().find(|s| s.source == shard || s.target == shard)
    }

    /// The data shards (every shard but the meta shard).
    pub fn data_shards(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.shards.keys().copied().filter(|s| *s != META_SHARD)
    }

    /// Shards with a replica on `node`.
    pub fn shards_on(&self, node: NodeId) -> Vec<ShardId> {
        self.shards.iter().filter(|(_, r)| r.contains(&node)).map(|(s, _)| *s).collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.nodes.len() * 48 + self.shards.len() * 40);
        w.u8(FORMAT_V3);
        w.u64(self.epoch);
        w.u32(self.nodes.len() as u32);
        for (id, n) in &self.nodes {
            w.u64(*id);
            w.bytes(n.http.as_bytes());
            w.bytes(n.peer.as_bytes());
            w.u8(n.state.code());
            w.u64(n.since_ms);
        }
        w.u32(self.shards.len() as u32);
        for (id, replicas) in &self.shards {
            w.u64(*id);
            w.u32(replicas.len() as u32);
            for r in replicas {
                w.u64(*r);
            }
        }
        w.u32(self.moves.len() as u32);
        for m in &self.moves {
            w.u64(m.shard);
            w.u64(m.from.unwrap_or(0));
            w.u64(m.to);
            w.u64(m.started_ms);
            w.u64(m.bytes);
        }
        let c = &self.rebalance;
        w.u8(c.paused as u8);
        w.u64(c.max_bytes_per_sec);
        w.u32(c.max_concurrent_moves);
        w.u64(c.down_after_s);
        let j = &self.job;
        w.u64(j.started_ms);
        w.u64(j.finished_ms);
        w.u64(j.moves_done);
        w.u64(j.moves_rolled_back);
        w.u64(j.bytes_done);
        w.u32(self.ring.len() as u32);
        for (shard, r) in &self.ring {
            w.u64(*shard);
            w.u64(r.origin);
            w.u64(r.lo);
            w.u64(r.hi);
        }
        w.u32(self.splits.len() as u32);
        for sp in &self.splits {
            w.u64(sp.source);
            w.u64(sp.target);
            w.u64(sp.at);
            w.u64(sp.epoch);
            w.u64(sp.started_ms);
        }
        w.u64(c.target_shards);
        w.u32(c.shards_per_node);
        w.u64(c.split_max_bytes);
        w.u64(c.split_load_qps);
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(b);
        let f = r.u8("map format")?;
        if !(FORMAT_V1..=FORMAT_V3).contains(&f) {
            return Err(CodecError::UnsupportedFormat(f));
        }
        let v2 = f >= FORMAT_V2;
        let epoch = r.u64("epoch")?;
        let string = |r: &mut Reader<'_>, what| {
            String::from_utf8(r.bytes(what)?.to_vec()).map_err(|e| CodecError::Invalid { what, detail: e.to_string() })
        };
        let mut nodes = BTreeMap::new();
        for _ in 0..r.u32("node count")? {
            let id = r.u64("node id")?;
            let http = string(&mut r, "http address")?;
            let peer = string(&mut r, "peer address")?;
            let state = NodeState::from_code(r.u8("node state")?)?;
            let since_ms = if v2 { r.u64("node state since")? } else { 0 };
            nodes.insert(id, NodeInfo { http, peer, state, since_ms });
        }
        let mut shards = BTreeMap::new();
        for _ in 0..r.u32("shard count")? {
            let id = r.u64("shard id")?;
            let n = r.u32("replica count")?;
            let mut replicas = Vec::with_capacity((n as usize).min(16));
            for _ in 0..n {
                replicas.push(r.u64("replica")?);
            }
            shards.insert(id, replicas);
        }
        let mut moves = Vec::new();
        let mut rebalance = RebalanceConfig::default();
        let mut job = JobProgress::default();
        if v2 {
            for _ in 0..r.u32("move count")? {
                let shard = r.u64("move shard")?;
                let from = Some(r.u64("move source")?).filter(|n| *n != 0);
                let to = r.u64("move target")?;
                let started_ms = r.u64("move start")?;
                let bytes = r.u64("move bytes")?;
                moves.push(ReplicaMove { shard, from, to, started_ms, bytes });
            }
            rebalance.paused = match r.u8("paused")? {
                0 => false,
                1 => true,
                tag => return Err(CodecError::UnknownTag { what: "paused", tag }),
            };
            rebalance.max_bytes_per_sec = r.u64("max bytes per second")?;
            rebalance.max_concurrent_moves = r.u32("max concurrent moves")?;
            rebalance.down_after_s = r.u64("down after")?;
            job.started_ms = r.u64("job start")?;
            job.finished_ms = r.u64("job end")?;
            job.moves_done = r.u64("moves done")?;
            job.moves_rolled_back = r.u64("moves rolled back")?;
            job.bytes_done = r.u64("bytes done")?;
        }
        let mut ring = BTreeMap::new();
        let mut splits = Vec::new();
        if f >= FORMAT_V3 {
            for _ in 0..r.u32("ring count")? {
                let shard = r.u64("ring shard")?;
                let range =
                    ShardRange { origin: r.u64("ring origin")?, lo: r.u64("ring low")?, hi: r.u64("ring high")? };
                ring.insert(shard, range);
            }
            for _ in 0..r.u32("split count")? {
                splits.push(ShardSplit {
                    source: r.u64("split source")?,
                    target: r.u64("split target")?,
                    at: r.u64("split point")?,
                    epoch: r.u64("split epoch")?,
                    started_ms: r.u64("split start")?,
                });
            }
            rebalance.target_shards = r.u64("target shards")?;
            rebalance.shards_per_node = r.u32("shards per node")?;
            rebalance.split_max_bytes = r.u64("split max bytes")?;
            rebalance.split_load_qps = r.u64("split load qps")?;
        } else {
            // Before splits every data shard was an origin owning its all.
            ring = shards.keys().filter(|s| **s != META_SHARD).map(|s| (*s, ShardRange::whole(*s))).collect();
        }
        r.finish()?;
        Ok(ClusterMap { epoch, nodes, shards, moves, ring, splits, rebalance, job })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> BTreeMap<NodeId, NodeInfo> {
        (1..=n)
            .map(|i| (i, NodeInfo::new(format!("10.0.0.{i}:8080"), format!("10.0.0.{i}:7080"), NodeState::Up)))
            .collect()
    }

    #[test]
    fn bootstrap_places_meta_and_data_shards() {
        let m = ClusterMap::bootstrap(nodes(5), 16, 3).unwrap();
        assert_eq!(m.epoch, 1);
        assert_eq!(m.shards.len(), 17);
        assert_eq!(m.shards[&META_SHARD], vec![1, 2, 3]);
        assert!(m.shards.values().all(|r| r.len() == 3));
        let ring = m.ring();
        assert_eq!(ring.shards(), 16);
        assert_ne!(ring.owner_of_key(b"k"), Some(META_SHARD));
        let small = ClusterMap::bootstrap(nodes(1), 4, 3).unwrap();
        assert_eq!(small.shards[&META_SHARD], vec![1]);
        assert_eq!(small.shards_on(1).len(), 5);
    }

    #[test]
    fn codec_round_trips_and_refuses_truncation() {
        let mut m = ClusterMap::bootstrap(nodes(3), 4, 3).unwrap();
        m.nodes.get_mut(&2).unwrap().since_ms = 1234;
        m.moves.push(ReplicaMove { shard: 3, from: Some(1), to: 4, started_ms: 99, bytes: 1 << 20 });
        m.moves.push(ReplicaMove { shard: 4, from: None, to: 2, started_ms: 98, bytes: 0 });
        m.rebalance = RebalanceConfig {
            paused: true,
            max_bytes_per_sec: 5,
            max_concurrent_moves: 3,
            down_after_s: 7,
            target_shards: 20,
            shards_per_node: 4,
            split_max_bytes: 1 << 30,
            split_load_qps: 2000,
        };
        m.job = JobProgress { started_ms: 1, finished_ms: 5, moves_done: 2, moves_rolled_back: 3, bytes_done: 4 };
        let (a, b) = m.ring[&3].split_at(77).unwrap();
        m.ring.insert(3, a);
        m.ring.insert(5, b);
        m.splits.push(ShardSplit { source: 1, target: 6, at: 1 << 60, epoch: 4, started_ms: 3 });
        let b = m.encode();
        assert_eq!(ClusterMap::decode(&b).unwrap(), m);
        for cut in 0..b.len() {
            assert!(ClusterMap::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[0] = 9;
        assert_eq!(ClusterMap::decode(&bad), Err(CodecError::UnsupportedFormat(9)));
    }

    #[test]
    fn a_v1_map_reads_with_no_moves_default_settings_and_whole_shards() {
        let m = ClusterMap::bootstrap(nodes(3), 2, 3).unwrap();
        let mut w = Writer::with_capacity(256);
        w.u8(FORMAT_V1);
        w.u64(m.epoch);
        w.u32(3);
        for (id, n) in &m.nodes {
            w.u64(*id);
            w.bytes(n.http.as_bytes());
            w.bytes(n.peer.as_bytes());
            w.u8(n.state.code());
        }
        w.u32(m.shards.len() as u32);
        for (id, rs) in &m.shards {
            w.u64(*id);
            w.u32(rs.len() as u32);
            for r in rs {
                w.u64(*r);
            }
        }
        assert_eq!(ClusterMap::decode(&w.buf).unwrap(), m);
    }

    #[test]
    fn move_targets_host_replicas_and_ids_are_never_reused() {
        let mut m = ClusterMap::bootstrap(nodes(3), 4, 3).unwrap();
        assert_eq!(m.next_node_id(), 4);
        m.nodes.insert(4, NodeInfo::new("", "", NodeState::Removed));
        assert_eq!(m.next_node_id(), 5, "a removed node keeps its id");
        assert!(!m.hosts(4, 2));
        m.moves.push(ReplicaMove { shard: 2, from: Some(1), to: 4, started_ms: 0, bytes: 0 });
        assert!(m.hosts(4, 2) && m.hosts(1, 2), "source and target both run it while it moves");
        assert_eq!(m.hosted_on(4), vec![2]);
        assert_eq!(m.next().epoch, m.epoch + 1);
    }

    #[test]
    fn new_shard_ids_follow_every_shard_and_planned_split() {
        let mut m = ClusterMap::bootstrap(nodes(3), 4, 3).unwrap();
        assert_eq!(m.next_shard_id(), 5);
        m.splits.push(ShardSplit { source: 2, target: 5, at: 9, epoch: 2, started_ms: 0 });
        assert_eq!(m.next_shard_id(), 6);
        assert_eq!(m.split_of(2).map(|s| s.target), Some(5));
        assert_eq!(m.split_of(5).map(|s| s.source), Some(2));
        assert!(m.split_of(3).is_none());
        assert_eq!(m.data_shards().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    }
}
