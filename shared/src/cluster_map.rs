//! The cluster map: epoch, nodes, shards and their replicas. The meta
//! shard (shard 0) will replicate it; routers cache it and build the ring
//! from its data shards. Pure: bootstrap, lookup and the binary codec.

use std::collections::BTreeMap;

use crate::codec::{CodecError, Reader, Writer};
use crate::placement::{self, PlacementError};
use crate::ring::Ring;
use crate::{NodeId, ShardId};

/// The shard that stores the cluster map.
pub const META_SHARD: ShardId = 0;
const FORMAT_V1: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Joining,
    Up,
    Draining,
    Down,
}

impl NodeState {
    fn code(self) -> u8 {
        match self {
            NodeState::Joining => 1,
            NodeState::Up => 2,
            NodeState::Draining => 3,
            NodeState::Down => 4,
        }
    }
    fn from_code(c: u8) -> Result<Self, CodecError> {
        Ok(match c {
            1 => NodeState::Joining,
            2 => NodeState::Up,
            3 => NodeState::Draining,
            4 => NodeState::Down,
            tag => return Err(CodecError::UnknownTag { what: "node state", tag }),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub http: String,
    pub peer: String,
    pub state: NodeState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMap {
    /// Increases with every change.
    pub epoch: u64,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Replicas per shard, preferred leader first. Shard 0 is the meta shard.
    pub shards: BTreeMap<ShardId, Vec<NodeId>>,
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
        Ok(ClusterMap { epoch: 1, nodes, shards })
    }

    /// The ring over the data shards (the meta shard owns no keys).
    pub fn ring(&self) -> Ring {
        Ring::new(self.shards.keys().copied().filter(|s| *s != META_SHARD))
    }

    /// Shards with a replica on `node`.
    pub fn shards_on(&self, node: NodeId) -> Vec<ShardId> {
        self.shards.iter().filter(|(_, r)| r.contains(&node)).map(|(s, _)| *s).collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.nodes.len() * 48 + self.shards.len() * 40);
        w.u8(FORMAT_V1);
        w.u64(self.epoch);
        w.u32(self.nodes.len() as u32);
        for (id, n) in &self.nodes {
            w.u64(*id);
            w.bytes(n.http.as_bytes());
            w.bytes(n.peer.as_bytes());
            w.u8(n.state.code());
        }
        w.u32(self.shards.len() as u32);
        for (id, replicas) in &self.shards {
            w.u64(*id);
            w.u32(replicas.len() as u32);
            for r in replicas {
                w.u64(*r);
            }
        }
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(b);
        let f = r.u8("map format")?;
        if f != FORMAT_V1 {
            return Err(CodecError::UnsupportedFormat(f));
        }
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
            nodes.insert(id, NodeInfo { http, peer, state });
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
        r.finish()?;
        Ok(ClusterMap { epoch, nodes, shards })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> BTreeMap<NodeId, NodeInfo> {
        (1..=n)
            .map(|i| {
                (
                    i,
                    NodeInfo {
                        http: format!("10.0.0.{i}:8080"),
                        peer: format!("10.0.0.{i}:7080"),
                        state: NodeState::Up,
                    },
                )
            })
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
        let m = ClusterMap::bootstrap(nodes(3), 4, 3).unwrap();
        let b = m.encode();
        assert_eq!(ClusterMap::decode(&b).unwrap(), m);
        for cut in 0..b.len() {
            assert!(ClusterMap::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[0] = 9;
        assert_eq!(ClusterMap::decode(&bad), Err(CodecError::UnsupportedFormat(9)));
    }
}
