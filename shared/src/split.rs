//! Splits, decided purely: how many data shards the cluster wants, which
//! shard splits next and where, which ring points the new shard gets, and
//! how the map records a finished split. The Rebalancer carries these out
//! (record the split, have the source apply `Command::Split`, then list the
//! new shard); nothing here does I/O.
//!
//! A split is in place: the new shard starts on its source's nodes with
//! the data already there, and the planner then moves replicas as it does
//! for any shard. So a split is cheap (a count of the keys given away) and
//! the bytes that cross the network are those of ordinary replica moves,
//! throttled by the same setting.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use crate::cluster_map::{ClusterMap, NodeState, ShardSplit};
use crate::{NodeId, ShardId};

/// Data shards a cluster may grow to: the map lists each, and splits by
/// size or load stop here.
pub const SHARDS_MAX: u64 = 4096;

/// Why a split is made (a metric label and a log field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitReason {
    /// The map wants more shards (`target_shards`, `shards_per_node`).
    Count,
    /// The shard is larger than `split_max_bytes`.
    Size,
    /// The shard's leader has served more than `split_load_qps`.
    Load,
}

impl SplitReason {
    pub fn label(self) -> &'static str {
        match self {
            SplitReason::Count => "count",
            SplitReason::Size => "size",
            SplitReason::Load => "load",
        }
    }
}

fn free(map: &ClusterMap, shard: ShardId) -> bool {
    map.split_of(shard).is_none() && map.move_of(shard).is_none()
}

/// The next split, if any, and why: more shards wanted first (see
/// [`next_split`]), then the largest shard over `split_max_bytes` (cut in
/// the middle of its window), then a shard `hot` names (sustained load
/// over `split_load_qps`, with the point that halves it). Never while
/// paused, and never beyond [`SHARDS_MAX`].
pub fn choose_split(
    map: &ClusterMap,
    sizes: &BTreeMap<ShardId, u64>,
    hot: &BTreeMap<ShardId, u64>,
    now_ms: u64,
) -> Option<(ShardSplit, SplitReason)> {
    if map.rebalance.paused || planned_shards(map) >= SHARDS_MAX {
        return None;
    }
    if let Some(s) = next_split(map, sizes, now_ms) {
        return Some((s, SplitReason::Count));
    }
    let record = |source: ShardId, at: u64| ShardSplit {
        source,
        target: map.next_shard_id(),
        at,
        epoch: map.epoch + 1,
        started_ms: now_ms,
    };
    let max = map.rebalance.split_max_bytes;
    let too_big = sizes
        .iter()
        .filter(|(s, b)| max > 0 && **b > max && free(map, **s))
        .filter_map(|(s, b)| map.ring.get(s).filter(|r| r.hi > r.lo).map(|r| (*b, *s, r.lo + (r.hi - r.lo) / 2 + 1)))
        .max();
    if let Some((_, source, at)) = too_big {
        return Some((record(source, at), SplitReason::Size));
    }
    if map.rebalance.split_load_qps == 0 {
        return None;
    }
    hot.iter()
        .filter(|(s, at)| free(map, **s) && map.ring.get(s).is_some_and(|r| r.split_at(**at).is_some()))
        .map(|(s, at)| (record(*s, *at), SplitReason::Load))
        .next()
}

/// How many data shards the map asks for: the explicit target, or enough
/// for `shards_per_node` on every up node, whichever is more.
pub fn wanted_shards(map: &ClusterMap) -> u64 {
    let c = &map.rebalance;
    let up = map.nodes.values().filter(|n| n.state == NodeState::Up).count() as u64;
    c.target_shards.max(u64::from(c.shards_per_node) * up)
}

/// The data shards there will be once the splits in progress end.
pub fn planned_shards(map: &ClusterMap) -> u64 {
    map.data_shards().count() as u64 + map.splits.len() as u64
}

/// The next split to record, if the map wants more shards than it has and
/// planned: the largest shard (by `sizes`, bytes; unknown counts as 0; then
/// by the widest window; then the lower id) that no move or split involves and whose window can be
/// cut, halved at the middle of its window. A window's points hold an even
/// share of its intervals (vnodes are placed by hash), so the halves hold
/// about half the keys each. Recorded at the map's next epoch.
pub fn next_split(map: &ClusterMap, sizes: &BTreeMap<ShardId, u64>, now_ms: u64) -> Option<ShardSplit> {
    if map.rebalance.paused || planned_shards(map) >= wanted_shards(map) {
        return None;
    }
    let (source, window) = map
        .ring
        .iter()
        .filter(|(s, r)| r.hi > r.lo && map.split_of(**s).is_none() && map.move_of(**s).is_none())
        .max_by_key(|(s, r)| (sizes.get(s).copied().unwrap_or(0), r.hi - r.lo, std::cmp::Reverse(**s)))?;
    let at = window.lo + (window.hi - window.lo) / 2 + 1;
    Some(ShardSplit { source: *source, target: map.next_shard_id(), at, epoch: map.epoch + 1, started_ms: now_ms })
}

/// The ring points `split` gives its target: the source's points from `at`
/// up, as the map's ring computes them (the same computation gave the
/// source its ranges, so these are a part of them).
pub fn given_ranges(map: &ClusterMap, split: &ShardSplit) -> Vec<RangeInclusive<u64>> {
    let Some((keep, give)) = map.ring.get(&split.source).and_then(|w| w.split_at(split.at)) else {
        return Vec::new();
    };
    // The whole layout: every origin places vnodes, so every origin cuts
    // the intervals of the others.
    let mut layout = map.ring.clone();
    layout.insert(split.source, keep);
    layout.insert(split.target, give);
    crate::ring::Ring::with_layout(&layout).ranges_of(split.target)
}

/// Records that the source applied `split`: the new shard is listed on the
/// source's `voters` (as the source's status reports them, in the map's
/// order, so its preferred leader is the source's), owns its half of the
/// window, and the split is no longer in progress.
pub fn finish_split(map: &mut ClusterMap, split: &ShardSplit, voters: &[NodeId]) {
    map.splits.retain(|s| s.source != split.source);
    let Some(window) = map.ring.get(&split.source).copied() else { return };
    let Some((keep, give)) = window.split_at(split.at) else { return };
    map.ring.insert(split.source, keep);
    map.ring.insert(split.target, give);
    let mut replicas: Vec<NodeId> = map
        .shards
        .get(&split.source)
        .map(|r| r.iter().copied().filter(|n| voters.contains(n)).collect())
        .unwrap_or_default();
    let others: Vec<NodeId> = voters.iter().copied().filter(|n| !replicas.contains(n)).collect();
    replicas.extend(others);
    map.shards.insert(split.target, replicas);
}

/// Every split still to come, in order, as the Rebalancer will make them
/// (each on the map the previous one leaves; sizes as given, a split
/// halving its source's): what a dry run shows.
pub fn plan_splits(map: &ClusterMap, sizes: &BTreeMap<ShardId, u64>, now_ms: u64) -> Vec<ShardSplit> {
    let mut m = map.clone();
    let mut sizes = sizes.clone();
    let mut out = Vec::new();
    // Splits in progress end first.
    for sp in map.splits.clone() {
        let voters = m.shards.get(&sp.source).cloned().unwrap_or_default();
        finish_split(&mut m, &sp, &voters);
    }
    // Bounded by the shards wanted: each round adds one.
    while let Some(sp) = next_split(&m, &sizes, now_ms) {
        let half = sizes.get(&sp.source).copied().unwrap_or(0) / 2;
        sizes.insert(sp.source, half);
        sizes.insert(sp.target, half);
        let voters = m.shards.get(&sp.source).cloned().unwrap_or_default();
        m = m.next();
        finish_split(&mut m, &sp, &voters);
        out.push(sp);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_map::NodeInfo;

    fn map(nodes: u64, shards: u64) -> ClusterMap {
        let nodes = (1..=nodes).map(|i| (i, NodeInfo::new(format!("h{i}"), format!("p{i}"), NodeState::Up))).collect();
        ClusterMap::bootstrap(nodes, shards, 3).unwrap()
    }

    #[test]
    fn the_map_wants_the_larger_of_its_target_and_its_per_node_share() {
        let mut m = map(3, 4);
        assert_eq!(wanted_shards(&m), 0);
        assert_eq!(next_split(&m, &BTreeMap::new(), 1), None, "no target: no split");
        m.rebalance.target_shards = 6;
        assert_eq!(wanted_shards(&m), 6);
        m.rebalance.shards_per_node = 3;
        assert_eq!(wanted_shards(&m), 9);
        m.nodes.get_mut(&3).unwrap().state = NodeState::Down;
        assert_eq!(wanted_shards(&m), 6, "only up nodes count");
    }

    #[test]
    fn the_largest_free_shard_splits_at_the_middle_of_its_window() {
        let mut m = map(3, 4);
        m.rebalance.target_shards = 6;
        let sizes = BTreeMap::from([(1, 10), (2, 50), (3, 50), (4, 5)]);
        let s = next_split(&m, &sizes, 7).unwrap();
        assert_eq!((s.source, s.target, s.epoch, s.started_ms), (2, 5, m.epoch + 1, 7), "ties go to the lower id");
        assert_eq!(s.at, (u64::MAX / 2) + 1);
        m.splits.push(s);
        let s2 = next_split(&m, &sizes, 8).unwrap();
        assert_eq!((s2.source, s2.target), (3, 6), "a shard splitting already is not picked again");
        m.splits.push(s2);
        assert_eq!(next_split(&m, &sizes, 9), None, "6 planned: enough");
        m.rebalance.target_shards = 9;
        m.rebalance.paused = true;
        assert_eq!(next_split(&m, &sizes, 9), None, "paused");
    }

    #[test]
    fn a_plan_doubles_four_shards_into_eight_halving_each_once() {
        let mut m = map(3, 4);
        m.rebalance.target_shards = 8;
        let sizes = BTreeMap::from([(1, 100), (2, 100), (3, 100), (4, 100)]);
        let plan = plan_splits(&m, &sizes, 0);
        assert_eq!(plan.len(), 4);
        let mut sources: Vec<ShardId> = plan.iter().map(|s| s.source).collect();
        sources.sort_unstable();
        assert_eq!(sources, vec![1, 2, 3, 4], "each shard halves once, not one shard four times");
        assert_eq!(plan.iter().map(|s| s.target).collect::<Vec<_>>(), vec![5, 6, 7, 8]);
        m.rebalance.target_shards = 4;
        assert!(plan_splits(&m, &sizes, 0).is_empty());
        m.rebalance.target_shards = 8;
        let blind: Vec<ShardId> = plan_splits(&m, &BTreeMap::new(), 0).iter().map(|s| s.source).collect();
        assert_eq!(blind, vec![1, 2, 3, 4], "sizes unknown: the widest windows split first");
    }

    #[test]
    fn size_then_load_split_a_shard_once_no_more_are_wanted_by_count() {
        let mut m = map(3, 4);
        let none = BTreeMap::new();
        m.rebalance.split_max_bytes = 1000;
        let sizes = BTreeMap::from([(1, 10), (2, 5000), (3, 3000), (4, 10)]);
        let (s, why) = choose_split(&m, &sizes, &none, 1).unwrap();
        assert_eq!((s.source, s.target, why), (2, 5, SplitReason::Size), "the largest one over the limit");
        assert_eq!(s.at, u64::MAX / 2 + 1);
        m.splits.push(s);
        assert_eq!(choose_split(&m, &sizes, &none, 1).map(|(s, _)| s.source), Some(3), "2 is splitting");
        m.splits.clear();
        m.rebalance.split_max_bytes = 0;
        let hot = BTreeMap::from([(4, 12_345)]);
        assert_eq!(choose_split(&m, &sizes, &hot, 1), None, "load splits are off");
        m.rebalance.split_load_qps = 100;
        let (s, why) = choose_split(&m, &sizes, &hot, 1).unwrap();
        assert_eq!((s.source, s.at, why), (4, 12_345, SplitReason::Load));
        let outside = BTreeMap::from([(4, 0)]);
        assert_eq!(choose_split(&m, &sizes, &outside, 1), None, "a cut outside the window is no split");
        m.rebalance.target_shards = 5;
        assert_eq!(choose_split(&m, &sizes, &hot, 1).map(|(_, w)| w), Some(SplitReason::Count), "count first");
    }

    #[test]
    fn a_finished_split_lists_the_new_shard_on_the_sources_voters() {
        let mut m = map(4, 4);
        m.rebalance.target_shards = 5;
        let split = next_split(&m, &BTreeMap::new(), 1).unwrap();
        let before = m.ring();
        let given = given_ranges(&m, &split);
        assert!(!given.is_empty());
        assert_eq!(
            crate::ring::subtract(&before.ranges_of(split.source), &given).map(|l| !l.is_empty()),
            Some(true),
            "the given ranges are a strict part of the source's"
        );
        m.splits.push(split);
        let voters: Vec<NodeId> = m.shards[&split.source].iter().rev().copied().collect();
        let mut next = m.next();
        finish_split(&mut next, &split, &voters);
        assert!(next.splits.is_empty());
        assert_eq!(next.shards[&split.target], m.shards[&split.source], "same nodes, same preferred leader");
        let after = next.ring();
        assert_eq!(after.ranges_of(split.target), given, "the map routes to the new shard what it was given");
        let left = crate::ring::subtract(&before.ranges_of(split.source), &given).unwrap();
        assert_eq!(after.ranges_of(split.source), left);
        assert_eq!(after.shards(), 5);
        let keys_moved = (0..10_000u32)
            .filter(|i| {
                let k = format!("k{i}");
                before.owner_of_key(k.as_bytes()) != after.owner_of_key(k.as_bytes())
            })
            .count();
        assert!((800..1_800).contains(&keys_moved), "about an eighth of the keys: {keys_moved}");
    }
}
