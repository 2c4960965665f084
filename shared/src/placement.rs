//! Where each shard's replicas live at bootstrap. Pure and deterministic:
//! every node computes the same answer from the same inputs.
//!
//! Replicas: the shards, in id order, fill the sorted node list round
//! robin, `r` consecutive slots each, so replicas per node differ by at
//! most one and one shard's replicas are distinct nodes (`r <= n`).
//! Preferred leaders (the first replica): one per shard among its
//! replicas, balanced to within one per node by augmenting paths (see
//! [`balance_leaders`]); the test checks every shape up to 9 nodes and
//! 100 shards.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::{NodeId, ShardId};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlacementError {
    #[error("no nodes to place replicas on")]
    NoNodes,
    #[error("node {0} is listed twice")]
    DuplicateNode(NodeId),
    #[error("the replication factor must be at least 1")]
    ZeroReplicas,
}

/// Replicas of one shard; the first is its preferred leader.
pub type Replicas = Vec<NodeId>;

/// Places `shards` on `nodes` with `replication` replicas each (fewer if
/// there are fewer nodes).
pub fn place(
    nodes: &[NodeId],
    shards: &[ShardId],
    replication: usize,
) -> Result<BTreeMap<ShardId, Replicas>, PlacementError> {
    if replication == 0 {
        return Err(PlacementError::ZeroReplicas);
    }
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(PlacementError::DuplicateNode(w[0]));
    }
    if sorted.is_empty() {
        return Err(PlacementError::NoNodes);
    }
    let n = sorted.len();
    let r = replication.min(n);
    let mut ids = shards.to_vec();
    ids.sort_unstable();
    // Replicas: shard i takes the r consecutive slots from i * r, so the
    // slots go round the node list evenly and one shard's r slots are
    // distinct nodes.
    let sets: Vec<Vec<usize>> = (0..ids.len()).map(|i| (0..r).map(|j| (i * r + j) % n).collect()).collect();
    let leaders = balance_leaders(&sets, n);
    Ok(ids
        .iter()
        .zip(sets)
        .zip(leaders)
        .map(|((s, mut set), lead)| {
            let at = set.iter().position(|k| *k == lead).unwrap_or(0);
            set.swap(0, at);
            (*s, set.into_iter().map(|k| sorted[k]).collect())
        })
        .collect())
}

/// Picks one leader per shard among its replicas so that every node leads
/// `floor(S/n)` or `ceil(S/n)` shards where the replica sets allow it:
/// start greedy, then move leaderships along augmenting paths (node x takes
/// shard s from its leader y when x is a replica of s) from overloaded to
/// underloaded nodes.
fn balance_leaders(sets: &[Vec<usize>], n: usize) -> Vec<usize> {
    let mut count = vec![0usize; n];
    let mut leader: Vec<usize> = sets
        .iter()
        .map(|set| {
            let l = *set.iter().min_by_key(|k| count[**k]).expect("r >= 1");
            count[l] += 1;
            l
        })
        .collect();
    let (floor, ceil) = (sets.len() / n, sets.len().div_ceil(n));
    // Each augmentation moves one unit of imbalance; bounded by S * n.
    for _ in 0..sets.len() * n + 1 {
        let need = (0..n).find(|&u| count[u] < floor).map(|u| (u, floor)).or_else(|| {
            (0..n).any(|b| count[b] > ceil).then(|| (0..n).find(|&u| count[u] < ceil)).flatten().map(|u| (u, ceil))
        });
        let Some((u, limit)) = need else { break };
        // BFS from u over "x can take shard s from leader(s)".
        let mut parent: Vec<Option<(usize, usize)>> = vec![None; n];
        let mut seen = vec![false; n];
        seen[u] = true;
        let mut queue = std::collections::VecDeque::from([u]);
        let mut found = None;
        while let Some(x) = queue.pop_front() {
            for (s, set) in sets.iter().enumerate() {
                let y = leader[s];
                if seen[y] || !set.contains(&x) {
                    continue;
                }
                seen[y] = true;
                parent[y] = Some((x, s));
                if count[y] > limit {
                    found = Some(y);
                    break;
                }
                queue.push_back(y);
            }
            if found.is_some() {
                break;
            }
        }
        let Some(mut y) = found else { break };
        count[y] -= 1;
        count[u] += 1;
        while let Some((x, s)) = parent[y] {
            leader[s] = x;
            y = x;
        }
    }
    leader
}

/// The meta shard's voters: three nodes, or all of them if fewer.
pub fn meta_voters(nodes: &[NodeId]) -> Vec<NodeId> {
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.truncate(3);
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(p: &BTreeMap<ShardId, Replicas>, first_only: bool) -> BTreeMap<NodeId, usize> {
        let mut c = BTreeMap::new();
        for r in p.values() {
            for n in if first_only { &r[..1] } else { &r[..] } {
                *c.entry(*n).or_default() += 1;
            }
        }
        c
    }

    #[test]
    fn balanced_and_never_two_replicas_of_a_shard_on_one_node() {
        for n in 1..=9u64 {
            for shards in [1u64, 2, 3, 4, 5, 6, 7, 8, 16, 17, 64, 100] {
                let nodes: Vec<NodeId> = (1..=n).rev().collect();
                let ids: Vec<ShardId> = (1..=shards).collect();
                let p = place(&nodes, &ids, 3).unwrap();
                assert_eq!(p.len(), shards as usize);
                for (s, r) in &p {
                    let mut d = r.clone();
                    d.sort_unstable();
                    d.dedup();
                    assert_eq!(d.len(), r.len(), "shard {s} has two replicas on one node: {r:?}");
                    assert_eq!(r.len(), 3.min(n as usize));
                }
                for first_only in [false, true] {
                    let c = counts(&p, first_only);
                    let (min, max) = (
                        (1..=n).map(|x| c.get(&x).copied().unwrap_or(0)).min().unwrap(),
                        c.values().max().copied().unwrap_or(0),
                    );
                    assert!(max - min <= 1, "n={n} shards={shards} leaders_only={first_only}: {c:?}");
                }
            }
        }
    }

    #[test]
    fn deterministic_whatever_the_input_order() {
        let a = place(&[3, 1, 2], &[2, 1, 3], 3).unwrap();
        let b = place(&[1, 2, 3], &[1, 2, 3], 3).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[&1][0], 1);
        assert_eq!(a[&2][0], 2, "the next shard leads elsewhere");
    }

    #[test]
    fn refusals_and_meta_voters() {
        assert_eq!(place(&[], &[1], 3), Err(PlacementError::NoNodes));
        assert_eq!(place(&[1, 1], &[1], 3), Err(PlacementError::DuplicateNode(1)));
        assert_eq!(place(&[1], &[1], 0), Err(PlacementError::ZeroReplicas));
        assert_eq!(meta_voters(&[5, 4, 3, 2, 1]), vec![1, 2, 3]);
        assert_eq!(meta_voters(&[2, 1]), vec![1, 2]);
    }
}
