//! Who a data dir belongs to: node id, cluster id and the members the
//! cluster was bootstrapped with. Pure: parsing, the cluster id and the
//! decision to bootstrap, rejoin or refuse are tested without a disk.
//!
//! The cluster id is derived, as etcd derives it, from a token and the
//! initial member list (`hash64` of `token\n1=addr\n2=addr...`), so three
//! nodes started with the same flags agree on it without talking first.
//! Two clusters started with identical flags get the same id; give each a
//! distinct `--cluster-token` to keep them apart. The data-shard count is
//! part of the id (except for one shard, so that single-shard data dirs
//! made before shards existed keep theirs): nodes bootstrapped with
//! different `--shards` refuse each other instead of placing keys apart.

use std::collections::BTreeMap;

use ringstore_shared::codec::{CodecError, Reader, Writer};
use ringstore_shared::hash::hash64;
use ringstore_shared::NodeId;
use thiserror::Error;

/// Where the identity record lives in the `meta` column family.
pub const IDENTITY_KEY: &[u8] = b"identity";
const FORMAT_V1: u8 = 1;
/// V2 adds the data-shard count; a v1 record means one shard.
const FORMAT_V2: u8 = 2;
/// V3 adds whether the node joined a running cluster (rather than
/// bootstrapping it): such a node never writes a bootstrap map.
const FORMAT_V3: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub node: NodeId,
    pub cluster_id: u64,
    /// Every member and its peer address, as bootstrapped.
    pub members: BTreeMap<NodeId, String>,
    /// Data shards the cluster was bootstrapped with (fixed: the ring and so
    /// every key's shard depend on it).
    pub shards: u64,
    /// Joined a running cluster (`--join`): `members` are the nodes it
    /// learned of then, and its map comes from the meta shard.
    pub joined: bool,
}

/// What the flags say a new cluster is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap<'a> {
    pub token: &'a str,
    pub members: BTreeMap<NodeId, String>,
    pub shards: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("--initial-cluster: {0}")]
    BadInitialCluster(String),
    #[error("this data dir is new: --id and --initial-cluster are needed to bootstrap it")]
    MissingBootstrap,
    #[error("--id {id} is not in --initial-cluster ({members})")]
    NotAMember { id: NodeId, members: String },
    #[error("this data dir belongs to node {stored}, but the node was started as --id {given}")]
    WrongNode { stored: NodeId, given: NodeId },
    #[error(
        "this data dir belongs to cluster {stored:016x} (members {stored_members}), but --initial-cluster and \
         --cluster-token describe cluster {given:016x}: refusing to start. Use an empty data dir to join this \
         cluster, or start without --initial-cluster to rejoin the cluster the data belongs to"
    )]
    ForeignCluster { stored: u64, stored_members: String, given: u64 },
    #[error("identity record: {0}")]
    Corrupt(#[from] CodecError),
}

/// Parses `1=host:port,2=host:port,...`.
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<NodeId, String>, IdentityError> {
    let bad = |m: String| IdentityError::BadInitialCluster(m);
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| bad(format!("`{part}` is not ID=HOST:PORT")))?;
        let id: NodeId = id.trim().parse().map_err(|_| bad(format!("`{id}` is not a node id")))?;
        if id == 0 {
            return Err(bad("node id 0 is reserved".into()));
        }
        let addr = addr.trim();
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {}
            _ => return Err(bad(format!("`{addr}` is not HOST:PORT"))),
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(bad(format!("node {id} is listed twice")));
        }
    }
    if out.is_empty() {
        return Err(bad("no members".into()));
    }
    Ok(out)
}

pub fn cluster_id(token: &str, members: &BTreeMap<NodeId, String>, shards: u64) -> u64 {
    let mut s = String::from(token);
    for (id, addr) in members {
        s.push_str(&format!("\n{id}={addr}"));
    }
    if shards != 1 {
        s.push_str(&format!("\nshards={shards}"));
    }
    hash64(s.as_bytes())
}

fn describe(members: &BTreeMap<NodeId, String>) -> String {
    members.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",")
}

/// What to start with: the stored identity (rejoin) or a new one
/// (bootstrap, `true`). Refuses a data dir that belongs to another node or
/// cluster than the flags describe.
pub fn resolve(
    stored: Option<Identity>,
    id: Option<NodeId>,
    initial: Option<Bootstrap<'_>>,
) -> Result<(Identity, bool), IdentityError> {
    match stored {
        Some(s) => {
            if let Some(given) = id.filter(|g| *g != s.node) {
                return Err(IdentityError::WrongNode { stored: s.node, given });
            }
            if let Some(b) = initial {
                // The shard count is fixed at bootstrap; the flags' count is
                // not compared (the caller warns), token and members are.
                let given = cluster_id(b.token, &b.members, s.shards);
                if given != s.cluster_id {
                    return Err(IdentityError::ForeignCluster {
                        stored: s.cluster_id,
                        stored_members: describe(&s.members),
                        given,
                    });
                }
            }
            Ok((s, false))
        }
        None => {
            let (Some(id), Some(b)) = (id, initial) else {
                return Err(IdentityError::MissingBootstrap);
            };
            if !b.members.contains_key(&id) {
                return Err(IdentityError::NotAMember { id, members: describe(&b.members) });
            }
            let cluster_id = cluster_id(b.token, &b.members, b.shards);
            Ok((Identity { node: id, cluster_id, members: b.members, shards: b.shards, joined: false }, true))
        }
    }
}

impl Identity {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        w.u8(FORMAT_V3);
        w.u64(self.node);
        w.u64(self.cluster_id);
        w.u32(self.members.len() as u32);
        for (id, addr) in &self.members {
            w.u64(*id);
            w.bytes(addr.as_bytes());
        }
        w.u64(self.shards);
        w.u8(self.joined as u8);
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(b);
        let f = r.u8("identity format")?;
        if f != FORMAT_V1 && f != FORMAT_V2 && f != FORMAT_V3 {
            return Err(CodecError::UnsupportedFormat(f));
        }
        let node = r.u64("node id")?;
        let cluster_id = r.u64("cluster id")?;
        let n = r.u32("member count")?;
        let mut members = BTreeMap::new();
        for _ in 0..n {
            let id = r.u64("member id")?;
            let addr = String::from_utf8(r.bytes("member address")?.to_vec())
                .map_err(|e| CodecError::Invalid { what: "member address", detail: e.to_string() })?;
            members.insert(id, addr);
        }
        let shards = if f == FORMAT_V1 { 1 } else { r.u64("shard count")? };
        if shards == 0 {
            return Err(CodecError::Invalid { what: "shard count", detail: "0".into() });
        }
        let joined = match f {
            FORMAT_V3 => match r.u8("joined")? {
                0 => false,
                1 => true,
                tag => return Err(CodecError::UnknownTag { what: "joined", tag }),
            },
            _ => false,
        };
        r.finish()?;
        Ok(Identity { node, cluster_id, members, shards, joined })
    }

    /// The other members and their peer addresses.
    pub fn peers(&self) -> BTreeMap<NodeId, String> {
        self.members.iter().filter(|(id, _)| **id != self.node).map(|(id, a)| (*id, a.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IC: &str = "1=127.0.0.1:7001, 2=127.0.0.1:7002,3=host-3.ringstore:7003";

    #[test]
    fn parses_initial_cluster() {
        let m = parse_initial_cluster(IC).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[&3], "host-3.ringstore:7003");
        for bad in ["", "1", "1=", "x=a:1", "0=a:1", "1=a:1,1=b:2", "1=a", "1=a:0", "1=a:99999", "1=:5"] {
            assert!(parse_initial_cluster(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn cluster_id_depends_on_token_and_members_only() {
        let m = parse_initial_cluster(IC).unwrap();
        let reordered = parse_initial_cluster("3=host-3.ringstore:7003,2=127.0.0.1:7002,1=127.0.0.1:7001").unwrap();
        assert_eq!(cluster_id("t", &m, 16), cluster_id("t", &reordered, 16));
        assert_ne!(cluster_id("t", &m, 16), cluster_id("u", &m, 16));
        assert_ne!(cluster_id("t", &m, 16), cluster_id("t", &m, 4));
        let other = parse_initial_cluster("1=127.0.0.1:7001,2=127.0.0.1:7002,3=host-3.ringstore:7004").unwrap();
        assert_ne!(cluster_id("t", &m, 16), cluster_id("t", &other, 16));
        // One shard derives the id as before shards existed (v1 data dirs).
        let v1 = "t\n1=127.0.0.1:7001\n2=127.0.0.1:7002\n3=host-3.ringstore:7003";
        assert_eq!(cluster_id("t", &m, 1), hash64(v1.as_bytes()));
    }

    fn boot<'a>(token: &'a str, members: &BTreeMap<NodeId, String>, shards: u64) -> Option<Bootstrap<'a>> {
        Some(Bootstrap { token, members: members.clone(), shards })
    }

    #[test]
    fn bootstrap_rejoin_and_refusals() {
        let m = parse_initial_cluster(IC).unwrap();
        let (fresh, new) = resolve(None, Some(2), boot("t", &m, 16)).unwrap();
        assert!(new);
        assert_eq!(fresh.node, 2);
        assert_eq!(fresh.shards, 16);
        assert_eq!(fresh.peers().keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(resolve(None, Some(2), None), Err(IdentityError::MissingBootstrap));
        assert!(matches!(resolve(None, Some(4), boot("t", &m, 16)), Err(IdentityError::NotAMember { .. })));
        // Restart: flags optional, and matching flags are accepted.
        assert_eq!(resolve(Some(fresh.clone()), None, None).unwrap(), (fresh.clone(), false));
        assert_eq!(resolve(Some(fresh.clone()), Some(2), boot("t", &m, 16)).unwrap(), (fresh.clone(), false));
        // Another --shards on restart keeps the stored count.
        assert_eq!(resolve(Some(fresh.clone()), Some(2), boot("t", &m, 4)).unwrap(), (fresh.clone(), false));
        assert_eq!(resolve(Some(fresh.clone()), Some(3), None), Err(IdentityError::WrongNode { stored: 2, given: 3 }));
        let err = resolve(Some(fresh.clone()), Some(2), boot("other-cluster", &m, 16)).unwrap_err();
        assert!(matches!(err, IdentityError::ForeignCluster { .. }));
        assert!(err.to_string().contains("belongs to cluster"));
    }

    #[test]
    fn record_round_trips_and_truncations_fail() {
        let (id, _) = resolve(None, Some(1), boot("t", &parse_initial_cluster(IC).unwrap(), 16)).unwrap();
        let b = id.encode();
        assert_eq!(Identity::decode(&b).unwrap(), id);
        for cut in 0..b.len() {
            assert!(Identity::decode(&b[..cut]).is_err());
        }
        // A v2 record (before joins) reads as bootstrapped, a v1 record
        // (before shards) as one shard.
        let mut v2 = b[..b.len() - 1].to_vec();
        v2[0] = FORMAT_V2;
        assert_eq!(Identity::decode(&v2).unwrap(), id);
        let mut v1 = b[..b.len() - 9].to_vec();
        v1[0] = FORMAT_V1;
        assert_eq!(Identity::decode(&v1).unwrap(), Identity { shards: 1, ..id.clone() });
        let joined = Identity { joined: true, ..id };
        assert_eq!(Identity::decode(&joined.encode()).unwrap(), joined);
    }
}
