//! The Rebalancer's decisions, pure: from the
//! cluster map and what the nodes report, which replica and leader moves
//! bring the cluster to its balanced shape. Every node would compute the
//! same plan from the same inputs; the actor that carries the moves out
//! (learner, snapshot, promote, remove) only acts.
//!
//! Rules, in the order they are applied:
//! 1. A replica on a `Draining` or `Down` node is replaced: a new replica
//!    goes to the eligible node with the most room, then the old one is
//!    removed (add before remove, so a shard never has fewer live voters
//!    than before the move). A shard below the replication factor gets
//!    replicas added.
//! 2. Replica counts even out: a node's target is its share of all
//!    replicas, weighted by its disk capacity (equal weights when nodes
//!    report none), within one replica. Replicas move from the node most
//!    over its target to the one most under, never onto a node that holds
//!    the shard already.
//! 3. Leaders even out within one per node over the final replica sets, by
//!    leader transfers (no data moves).
//!
//! `Joining` and `Up` nodes take replicas; `Draining` and `Down` nodes only
//! give them away. The meta shard is planned like any other shard.

use std::collections::BTreeMap;

use crate::cluster_map::{ClusterMap, NodeState};
use crate::{NodeId, ShardId};

/// What nodes report that the plan weighs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Load {
    /// Usable disk bytes per node; a node that reports none weighs the
    /// same as the average of those that do (or 1 when none do).
    pub capacity_bytes: BTreeMap<NodeId, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Move {
    /// Add a replica of `shard` on `to` (learner, catch up, promote), then
    /// remove the one on `from` (none: the shard was under-replicated).
    Replica { shard: ShardId, from: Option<NodeId>, to: NodeId },
    /// Transfer the leadership of `shard` (its preferred leader).
    Leader { shard: ShardId, from: NodeId, to: NodeId },
}

/// The moves that bring `map` to its balanced shape with `replication`
/// replicas per shard, replica moves first (in the order to carry them
/// out), then leader moves.
pub fn plan(map: &ClusterMap, load: &Load, replication: usize) -> Vec<Move> {
    let eligible: Vec<NodeId> = map
        .nodes
        .iter()
        .filter(|(_, n)| matches!(n.state, NodeState::Up | NodeState::Joining))
        .map(|(id, _)| *id)
        .collect();
    if eligible.is_empty() {
        return Vec::new();
    }
    let r = replication.min(eligible.len()).max(1);
    let weights = weights(&eligible, load);
    let mut shards: BTreeMap<ShardId, Vec<NodeId>> = map.shards.clone();
    let mut load_of = replica_counts(&eligible, &shards);
    let mut moves = Vec::new();

    // 1. Replace replicas on nodes that are leaving or gone, and fill
    //    shards that are short. A replica with nowhere to go stays.
    for (shard, replicas) in shards.iter_mut() {
        let leaving: Vec<NodeId> = replicas.iter().copied().filter(|n| !eligible.contains(n)).collect();
        for from in leaving {
            let Some(to) = roomiest(&eligible, &weights, &load_of, replicas) else { break };
            replace(replicas, from, to);
            *load_of.get_mut(&to).expect("eligible") += 1;
            moves.push(Move::Replica { shard: *shard, from: Some(from), to });
        }
        while replicas.iter().filter(|n| eligible.contains(n)).count() < r {
            let Some(to) = roomiest(&eligible, &weights, &load_of, replicas) else { break };
            replicas.push(to);
            *load_of.get_mut(&to).expect("eligible") += 1;
            moves.push(Move::Replica { shard: *shard, from: None, to });
        }
    }

    // 2. Even out replica counts: from the node furthest above its
    //    weighted share to the one furthest below that can take one of its
    //    shards, while someone is outside [floor, ceil] of its share and
    //    the move keeps both inside.
    let total: usize = load_of.values().sum();
    let targets = targets(&eligible, &weights, total);
    let sum_w: i128 = weights.values().map(|w| *w as i128).sum();
    let deviation = |load_of: &BTreeMap<NodeId, usize>, n: NodeId| {
        load_of[&n] as i128 * sum_w - total as i128 * weights[&n] as i128
    };
    for _ in 0..total {
        let from =
            *eligible.iter().max_by_key(|n| (deviation(&load_of, **n), std::cmp::Reverse(**n))).expect("eligible");
        // The shard to move: held by `from`, not by `to`; prefer one that
        // `from` does not lead (a follower moves without a leader transfer).
        let pick = |to: NodeId| {
            shards
                .iter()
                .filter(|(_, rs)| rs.contains(&from) && !rs.contains(&to))
                .min_by_key(|(s, rs)| (rs.first() == Some(&from), **s))
                .map(|(s, _)| *s)
        };
        let to = eligible
            .iter()
            .copied()
            .filter(|n| *n != from && pick(*n).is_some())
            .min_by_key(|n| (deviation(&load_of, *n), *n));
        let Some(to) = to else { break };
        let (lf, lt) = (load_of[&from], load_of[&to]);
        let must = lf > targets[&from].1 || lt < targets[&to].0;
        let keeps_inside = lt < targets[&to].1 && lf > targets[&from].0;
        if !(must && keeps_inside) {
            break;
        }
        let shard = pick(to).expect("checked above");
        if let Some(rs) = shards.get_mut(&shard) {
            replace(rs, from, to);
        }
        *load_of.get_mut(&from).expect("eligible") -= 1;
        *load_of.get_mut(&to).expect("eligible") += 1;
        moves.push(Move::Replica { shard, from: Some(from), to });
    }

    // 3. Even out leaders (the first replica of each set) within one.
    moves.extend(balance_leaders(&eligible, &mut shards));
    moves
}

/// Weight per eligible node from reported capacities.
fn weights(eligible: &[NodeId], load: &Load) -> BTreeMap<NodeId, u64> {
    let known: Vec<u64> = eligible.iter().filter_map(|n| load.capacity_bytes.get(n).copied()).collect();
    let fallback = if known.is_empty() { 1 } else { (known.iter().sum::<u64>() / known.len() as u64).max(1) };
    eligible.iter().map(|n| (*n, load.capacity_bytes.get(n).copied().unwrap_or(fallback).max(1))).collect()
}

/// (floor, ceil) replica targets per node: `total` split by weight.
fn targets(eligible: &[NodeId], weights: &BTreeMap<NodeId, u64>, total: usize) -> BTreeMap<NodeId, (usize, usize)> {
    let sum: u128 = weights.values().map(|w| *w as u128).sum::<u128>().max(1);
    eligible
        .iter()
        .map(|n| {
            let exact = total as u128 * weights[n] as u128;
            let floor = (exact / sum) as usize;
            let ceil = floor + !exact.is_multiple_of(sum) as usize;
            (*n, (floor, ceil.max(floor)))
        })
        .collect()
}

fn replica_counts(eligible: &[NodeId], shards: &BTreeMap<ShardId, Vec<NodeId>>) -> BTreeMap<NodeId, usize> {
    let mut c: BTreeMap<NodeId, usize> = eligible.iter().map(|n| (*n, 0)).collect();
    for rs in shards.values() {
        for n in rs {
            if let Some(v) = c.get_mut(n) {
                *v += 1;
            }
        }
    }
    c
}

/// The eligible node, not holding the shard, with the fewest replicas per
/// unit of weight (ties: lowest id).
fn roomiest(
    eligible: &[NodeId],
    weights: &BTreeMap<NodeId, u64>,
    counts: &BTreeMap<NodeId, usize>,
    holding: &[NodeId],
) -> Option<NodeId> {
    eligible.iter().copied().filter(|n| !holding.contains(n)).min_by(|a, b| {
        // counts[a] / w[a] < counts[b] / w[b]  <=>  counts[a] * w[b] < counts[b] * w[a]
        let (ca, cb) = (counts[a] as u128 * weights[b] as u128, counts[b] as u128 * weights[a] as u128);
        ca.cmp(&cb).then(a.cmp(b))
    })
}

/// Puts `to` where `from` was (keeping a preferred leader's slot).
fn replace(replicas: &mut [NodeId], from: NodeId, to: NodeId) {
    if let Some(slot) = replicas.iter_mut().find(|n| **n == from) {
        *slot = to;
    }
}

/// Leader transfers that bring every eligible node within one of its share
/// of leaderships: repeatedly from the node leading the most to a replica
/// of one of its shards leading the fewest.
fn balance_leaders(eligible: &[NodeId], shards: &mut BTreeMap<ShardId, Vec<NodeId>>) -> Vec<Move> {
    let mut moves = Vec::new();
    let count = |shards: &BTreeMap<ShardId, Vec<NodeId>>| {
        let mut c: BTreeMap<NodeId, usize> = eligible.iter().map(|n| (*n, 0)).collect();
        for rs in shards.values() {
            if let Some(l) = rs.first().and_then(|l| c.get_mut(l)) {
                *l += 1;
            }
        }
        c
    };
    for _ in 0..shards.len() {
        let c = count(shards);
        let Some((&most, &hi)) = c.iter().max_by_key(|(n, k)| (**k, std::cmp::Reverse(**n))) else { break };
        // The best transfer: a shard `most` leads, to its replica that leads fewest.
        let best = shards
            .iter()
            .filter(|(_, rs)| rs.first() == Some(&most))
            .flat_map(|(s, rs)| rs.iter().skip(1).filter(|n| c.contains_key(n)).map(move |n| (*s, *n)))
            .min_by_key(|(s, n)| (c[n], *n, *s));
        match best {
            Some((shard, to)) if c[&to] + 1 < hi => {
                let rs = shards.get_mut(&shard).expect("planned shard");
                let at = rs.iter().position(|n| *n == to).expect("a replica");
                rs.swap(0, at);
                moves.push(Move::Leader { shard, from: most, to });
            }
            _ => break,
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_map::NodeInfo;

    fn info(state: NodeState) -> NodeInfo {
        NodeInfo::new("", "", state)
    }

    /// A cluster bootstrapped on `boot` nodes with 16 data shards, then
    /// nodes `extra` joining.
    fn cluster(boot: u64, extra: &[u64]) -> ClusterMap {
        let nodes = (1..=boot).map(|i| (i, info(NodeState::Up))).collect();
        let mut m = ClusterMap::bootstrap(nodes, 16, 3).unwrap();
        for e in extra {
            m.nodes.insert(*e, info(NodeState::Joining));
        }
        m
    }

    /// Applies a plan to a map (what the actor would do, instantly).
    fn apply(m: &ClusterMap, moves: &[Move]) -> BTreeMap<ShardId, Vec<NodeId>> {
        let mut s = m.shards.clone();
        for mv in moves {
            match *mv {
                Move::Replica { shard, from, to } => {
                    let rs = s.get_mut(&shard).unwrap();
                    assert!(!rs.contains(&to), "{mv:?} onto a node that holds the shard");
                    match from {
                        Some(f) => {
                            let i = rs
                                .iter()
                                .position(|n| *n == f)
                                .unwrap_or_else(|| panic!("{mv:?}: {f} holds no replica"));
                            rs[i] = to;
                        }
                        None => rs.push(to),
                    }
                }
                Move::Leader { shard, from, to } => {
                    let rs = s.get_mut(&shard).unwrap();
                    assert_eq!(rs[0], from, "{mv:?}: not the leader");
                    let i = rs.iter().position(|n| *n == to).unwrap();
                    rs.swap(0, i);
                }
            }
        }
        s
    }

    fn per_node(s: &BTreeMap<ShardId, Vec<NodeId>>, nodes: &[NodeId]) -> (Vec<usize>, Vec<usize>) {
        let replicas = nodes.iter().map(|n| s.values().filter(|rs| rs.contains(n)).count()).collect();
        let leaders = nodes.iter().map(|n| s.values().filter(|rs| rs[0] == *n).count()).collect();
        (replicas, leaders)
    }

    fn spread(v: &[usize]) -> usize {
        v.iter().max().unwrap() - v.iter().min().unwrap()
    }

    fn check_balanced(m: &ClusterMap, moves: &[Move], live: &[NodeId]) -> (Vec<usize>, Vec<usize>) {
        let s = apply(m, moves);
        for (shard, rs) in &s {
            assert_eq!(rs.len(), 3, "shard {shard} has 3 replicas: {rs:?}");
            assert!(rs.iter().all(|n| live.contains(n)), "shard {shard} only on live nodes: {rs:?}");
            let mut d = rs.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 3, "shard {shard} on distinct nodes: {rs:?}");
        }
        let (r, l) = per_node(&s, live);
        assert!(spread(&r) <= 1, "replicas within one: {r:?}");
        assert!(spread(&l) <= 1, "leaders within one: {l:?}");
        // Planning again from the result moves nothing.
        let mut after = m.clone();
        after.shards = s;
        assert_eq!(plan(&after, &Load::default(), 3), vec![], "a balanced map needs no moves");
        (r, l)
    }

    #[test]
    fn a_bootstrapped_cluster_needs_no_replica_moves() {
        let m = cluster(3, &[]);
        // Bootstrap balances the data shards' leaders (6, 5, 5) and puts
        // the meta shard's on node 1 too; counting it, one transfer evens
        // them out.
        assert_eq!(plan(&m, &Load::default(), 3), vec![Move::Leader { shard: 0, from: 1, to: 2 }]);
    }

    #[test]
    fn three_to_four_moves_a_quarter_of_the_replicas_to_the_new_node() {
        let m = cluster(3, &[4]);
        let moves = plan(&m, &Load::default(), 3);
        let (r, _) = check_balanced(&m, &moves, &[1, 2, 3, 4]);
        // 17 shards x 3 = 51 replicas: 13, 13, 13, 12.
        assert_eq!(r.iter().sum::<usize>(), 51);
        let replica_moves = moves.iter().filter(|m| matches!(m, Move::Replica { .. })).count();
        assert_eq!(replica_moves, r[3], "only what the new node needs moves");
        assert!(moves.iter().all(|m| !matches!(m, Move::Replica { to, .. } if *to != 4)), "{moves:?}");
    }

    #[test]
    fn three_to_five() {
        let m = cluster(3, &[4, 5]);
        let moves = plan(&m, &Load::default(), 3);
        let (r, _) = check_balanced(&m, &moves, &[1, 2, 3, 4, 5]);
        assert!(r.iter().all(|x| (10..=11).contains(x)), "51 replicas over 5 nodes: {r:?}");
    }

    #[test]
    fn five_to_three_by_draining_two() {
        let mut m = cluster(5, &[]);
        m.nodes.get_mut(&4).unwrap().state = NodeState::Draining;
        m.nodes.get_mut(&5).unwrap().state = NodeState::Draining;
        let moves = plan(&m, &Load::default(), 3);
        let (r, l) = check_balanced(&m, &moves, &[1, 2, 3]);
        assert_eq!(r, vec![17, 17, 17]);
        assert!(l.iter().all(|x| (5..=6).contains(x)), "{l:?}");
        // Every replica leaving is replaced before anything else moves.
        let first_balance = moves.iter().position(|m| matches!(m, Move::Replica { from: Some(f), .. } if *f <= 3));
        let last_drain = moves.iter().rposition(|m| matches!(m, Move::Replica { from: Some(f), .. } if *f >= 4));
        if let (Some(b), Some(d)) = (first_balance, last_drain) {
            assert!(d < b, "drains first: {moves:?}");
        }
    }

    #[test]
    fn a_down_node_has_its_replicas_recreated_on_the_others() {
        let mut m = cluster(4, &[]);
        m.nodes.get_mut(&2).unwrap().state = NodeState::Down;
        let moves = plan(&m, &Load::default(), 3);
        let lost = m.shards.values().filter(|rs| rs.contains(&2)).count();
        assert_eq!(moves.iter().filter(|m| matches!(m, Move::Replica { from: Some(2), .. })).count(), lost);
        check_balanced(&m, &moves, &[1, 3, 4]);
    }

    #[test]
    fn uneven_disks_get_replicas_in_proportion() {
        let m = cluster(3, &[4]);
        // Node 4 has twice the disk of each other node.
        let load = Load { capacity_bytes: [(1, 100), (2, 100), (3, 100), (4, 200)].into_iter().collect() };
        let moves = plan(&m, &load, 3);
        let s = apply(&m, &moves);
        let (r, _) = per_node(&s, &[1, 2, 3, 4]);
        // 51 replicas over weights 1:1:1:2 -> 10.2 each and 20.4, but a node
        // holds at most one replica of each of the 17 shards.
        assert!(r[3] >= 17, "the big disk takes the most it can: {r:?}");
        assert!(r[..3].iter().all(|x| (11..=12).contains(x)), "{r:?}");
        let mut again = m.clone();
        again.shards = s;
        let second = plan(&again, &load, 3);
        assert!(second.iter().all(|m| matches!(m, Move::Leader { .. })), "stable after one plan: {second:?}");
    }

    #[test]
    fn nothing_to_plan_without_eligible_nodes() {
        let mut m = cluster(3, &[]);
        for n in m.nodes.values_mut() {
            n.state = NodeState::Down;
        }
        assert_eq!(plan(&m, &Load::default(), 3), vec![]);
    }
}
