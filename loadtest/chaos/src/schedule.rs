//! The nemesis schedule: which fault fires when, for how long, from a seed.
//!
//! Pure planning, so a run is reproducible from its seed: the same seed,
//! kinds and durations give the same steps. Which node a step hits is
//! decided when it fires (leaders move), from the step's `pick`.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9` of one node (the busiest leader or any), restarted when healed.
    Kill,
    /// `SIGSTOP` of one node, `SIGCONT` when healed.
    Pause,
    /// The busiest leader cut off with a minority of the nodes.
    PartitionLeaderMinority,
    /// The nodes that lead least cut off as a minority; leaders stay with the majority.
    PartitionLeaderMajority,
    /// Two halves that only one node (the bridge) reaches both of.
    Bridge,
    /// Each node reaches only its two neighbours on a ring (4 nodes or more).
    Ring,
    /// A share of the packets between every pair of nodes dropped.
    Loss,
    /// Raft messages into every node delayed.
    Delay,
    /// One node's wall clock moved by seconds.
    ClockSkew,
    /// The busiest leader hands its leaderships over, stops gracefully
    /// (SIGTERM) and is restarted when healed.
    LeaderTransfer,
    /// Two more shards: the largest split in place and their ranges move
    /// to new Raft groups (skipped past 32 shards).
    Split,
    /// A new node joins (the Rebalancer moves replicas and leaders to it),
    /// then is drained until removed, and stopped.
    JoinDrain,
}

impl FaultKind {
    pub const ALL: [FaultKind; 12] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::PartitionLeaderMinority,
        FaultKind::PartitionLeaderMajority,
        FaultKind::Bridge,
        FaultKind::Ring,
        FaultKind::Loss,
        FaultKind::Delay,
        FaultKind::ClockSkew,
        FaultKind::LeaderTransfer,
        FaultKind::Split,
        FaultKind::JoinDrain,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::PartitionLeaderMinority => "partition-leader-minority",
            FaultKind::PartitionLeaderMajority => "partition-leader-majority",
            FaultKind::Bridge => "bridge",
            FaultKind::Ring => "ring",
            FaultKind::Loss => "loss",
            FaultKind::Delay => "delay",
            FaultKind::ClockSkew => "clock-skew",
            FaultKind::LeaderTransfer => "leader-transfer",
            FaultKind::Split => "split",
            FaultKind::JoinDrain => "join-drain",
        }
    }

    /// The fewest nodes the fault means something on.
    pub fn min_nodes(self) -> u64 {
        match self {
            FaultKind::Ring => 4,
            _ => 3,
        }
    }

    /// Whether it needs the node's run-time failpoints (a test build).
    pub fn needs_failpoints(self) -> bool {
        matches!(self, FaultKind::Delay | FaultKind::ClockSkew)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// From the start of the schedule.
    pub at: Duration,
    pub kind: FaultKind,
    pub hold: Duration,
    /// Chooses the target when the step fires.
    pub pick: u64,
    /// Loss in percent, delay in ms, clock offset in ms (signed); 0 otherwise.
    pub param: i64,
}

/// Steps for `duration`: rounds in which every kind fires once, in an
/// order shuffled by the seed; each fault is held about `hold` (±25%) and
/// followed by `quiet` of calm. The first round is complete whenever
/// `duration` ≥ kinds × (hold × 1.25 + quiet).
pub fn plan(seed: u64, kinds: &[FaultKind], duration: Duration, hold: Duration, quiet: Duration) -> Vec<Step> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut steps = Vec::new();
    let mut at = Duration::ZERO;
    if kinds.is_empty() {
        return steps;
    }
    'rounds: loop {
        let mut round = kinds.to_vec();
        round.shuffle(&mut rng);
        for kind in round {
            let hold = hold.mul_f64(rng.gen_range(0.75..=1.25));
            if at + hold > duration {
                break 'rounds;
            }
            let param = match kind {
                FaultKind::Loss => rng.gen_range(20..=40),
                FaultKind::Delay => rng.gen_range(20..=80),
                FaultKind::ClockSkew => {
                    let ms = rng.gen_range(2_000..=15_000);
                    if rng.gen_bool(0.5) {
                        ms
                    } else {
                        -ms
                    }
                }
                _ => 0,
            };
            steps.push(Step { at, kind, hold, pick: rng.gen(), param });
            at += hold + quiet;
        }
    }
    steps
}

pub type NodeId = u64;

/// What a step does to which nodes, decided when it fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Aim {
    Kill(NodeId),
    Pause(NodeId),
    /// Drop every packet between each pair, both ways.
    Cut {
        pairs: Vec<(NodeId, NodeId)>,
        shape: String,
    },
    Lose {
        pairs: Vec<(NodeId, NodeId)>,
        percent: u8,
    },
    /// Raft latency into every node.
    Delay {
        ms: u64,
    },
    Skew {
        node: NodeId,
        ms: i64,
    },
    Transfer(NodeId),
    Split,
    Join {
        via: NodeId,
    },
}

fn across(a: &[NodeId], b: &[NodeId]) -> Vec<(NodeId, NodeId)> {
    a.iter().flat_map(|x| b.iter().map(move |y| (*x, *y))).collect()
}

/// Aims `step` at `ids` (at least one), given how many shards each node
/// leads now: even picks hit the busiest leader, odd ones any node; the
/// shapes of the partitions rotate with the pick.
pub fn aim(step: &Step, ids: &[NodeId], leaders: &BTreeMap<NodeId, usize>) -> Aim {
    let n = ids.len().max(1);
    let led = |i: &NodeId| leaders.get(i).copied().unwrap_or(0);
    let busiest = ids.iter().copied().max_by_key(|i| (led(i), u64::MAX - i)).unwrap_or(1);
    let mut by_fewest = ids.to_vec();
    by_fewest.sort_by_key(|i| (led(i), *i));
    let target = if step.pick.is_multiple_of(2) { busiest } else { ids[(step.pick / 2) as usize % n] };
    let mut order = ids.to_vec();
    order.rotate_left((step.pick % n as u64) as usize);
    let minority_len = (n - 1) / 2;
    match step.kind {
        FaultKind::Kill => Aim::Kill(target),
        FaultKind::Pause => Aim::Pause(target),
        FaultKind::PartitionLeaderMinority | FaultKind::PartitionLeaderMajority => {
            let minority: Vec<NodeId> = if step.kind == FaultKind::PartitionLeaderMinority {
                std::iter::once(busiest)
                    .chain(by_fewest.iter().copied().filter(|i| *i != busiest))
                    .take(minority_len)
                    .collect()
            } else {
                by_fewest.iter().copied().take(minority_len).collect()
            };
            let majority: Vec<NodeId> = ids.iter().copied().filter(|i| !minority.contains(i)).collect();
            Aim::Cut { pairs: across(&minority, &majority), shape: format!("cut {minority:?} | {majority:?}") }
        }
        FaultKind::Bridge => {
            // order[0] reaches both halves of the rest, which cannot reach each other.
            let (a, b) = order[1..].split_at((n - 1) / 2);
            Aim::Cut { pairs: across(a, b), shape: format!("bridge n{} between {a:?} and {b:?}", order[0]) }
        }
        FaultKind::Ring => {
            let mut pairs = Vec::new();
            for i in 0..n {
                for j in (i + 1)..n {
                    let neighbours = j == i + 1 || (i == 0 && j == n - 1);
                    if !neighbours {
                        pairs.push((order[i], order[j]));
                    }
                }
            }
            Aim::Cut { pairs, shape: format!("ring {order:?}") }
        }
        FaultKind::Loss => {
            let mut pairs = Vec::new();
            for i in 0..n {
                for j in (i + 1)..n {
                    pairs.push((ids[i], ids[j]));
                }
            }
            Aim::Lose { pairs, percent: step.param.clamp(0, 100) as u8 }
        }
        FaultKind::Delay => Aim::Delay { ms: step.param.max(0) as u64 },
        FaultKind::ClockSkew => Aim::Skew { node: target, ms: step.param },
        FaultKind::LeaderTransfer => Aim::Transfer(busiest),
        FaultKind::Split => Aim::Split,
        FaultKind::JoinDrain => Aim::Join { via: ids[(step.pick % n as u64) as usize] },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(kind: FaultKind, pick: u64) -> Step {
        Step { at: Duration::ZERO, kind, hold: Duration::from_secs(1), pick, param: 30 }
    }

    /// Who can reach whom once `pairs` are cut.
    fn reaches(ids: &[NodeId], pairs: &[(NodeId, NodeId)], a: NodeId, b: NodeId) -> bool {
        a != b && ids.contains(&a) && !pairs.iter().any(|(x, y)| (*x, *y) == (a, b) || (*x, *y) == (b, a))
    }

    #[test]
    fn partitions_put_the_busiest_leader_on_the_side_asked_for() {
        let ids = [1, 2, 3, 4, 5];
        let leaders = BTreeMap::from([(3, 9), (1, 4), (2, 2), (4, 1)]);
        for pick in 0..10 {
            let Aim::Cut { pairs, .. } = aim(&step(FaultKind::PartitionLeaderMinority, pick), &ids, &leaders) else {
                panic!("a cut")
            };
            // {3, 5}: the busiest leader with the node that leads least.
            assert_eq!(pairs.len(), 2 * 3);
            assert!(!reaches(&ids, &pairs, 3, 1) && reaches(&ids, &pairs, 3, 5) && reaches(&ids, &pairs, 1, 2));
            let Aim::Cut { pairs, .. } = aim(&step(FaultKind::PartitionLeaderMajority, pick), &ids, &leaders) else {
                panic!("a cut")
            };
            // {5, 4} cut off; 3 stays with the majority.
            assert!(!reaches(&ids, &pairs, 5, 3) && reaches(&ids, &pairs, 5, 4) && reaches(&ids, &pairs, 3, 1));
        }
        let Aim::Cut { pairs, .. } = aim(&step(FaultKind::PartitionLeaderMinority, 0), &[1, 2, 3], &leaders) else {
            panic!("a cut")
        };
        assert_eq!(pairs, vec![(3, 1), (3, 2)]);
    }

    #[test]
    fn a_bridge_reaches_both_halves_and_a_ring_only_neighbours() {
        let ids = [1, 2, 3, 4, 5];
        for pick in 0..10 {
            let Aim::Cut { pairs, .. } = aim(&step(FaultKind::Bridge, pick), &ids, &BTreeMap::new()) else {
                panic!("a cut")
            };
            let bridge = ids[(pick % 5) as usize];
            assert!(ids.iter().all(|i| *i == bridge || reaches(&ids, &pairs, bridge, *i)));
            assert_eq!(pairs.len(), 4, "two halves of two, fully cut");
            let Aim::Cut { pairs, .. } = aim(&step(FaultKind::Ring, pick), &ids, &BTreeMap::new()) else {
                panic!("a cut")
            };
            for a in ids {
                assert_eq!(ids.iter().filter(|b| reaches(&ids, &pairs, a, **b)).count(), 2, "{a} in {pairs:?}");
            }
        }
    }

    #[test]
    fn node_faults_alternate_between_the_busiest_leader_and_any_node() {
        let ids = [1, 2, 3];
        let leaders = BTreeMap::from([(2, 5)]);
        assert_eq!(aim(&step(FaultKind::Kill, 0), &ids, &leaders), Aim::Kill(2));
        assert_eq!(aim(&step(FaultKind::Pause, 2), &ids, &leaders), Aim::Pause(2));
        assert_eq!(aim(&step(FaultKind::Kill, 1), &ids, &leaders), Aim::Kill(1));
        assert_eq!(aim(&step(FaultKind::Kill, 3), &ids, &leaders), Aim::Kill(2));
        assert_eq!(aim(&step(FaultKind::LeaderTransfer, 1), &ids, &leaders), Aim::Transfer(2));
        let Aim::Lose { pairs, percent } = aim(&step(FaultKind::Loss, 0), &ids, &leaders) else { panic!("loss") };
        assert_eq!((pairs.len(), percent), (3, 30));
        // With no leader known, the lowest id stands in.
        assert_eq!(aim(&step(FaultKind::Kill, 0), &ids, &BTreeMap::new()), Aim::Kill(1));
    }

    #[test]
    fn a_seed_gives_one_schedule_and_every_kind_fires_in_the_first_round() {
        let (hold, quiet) = (Duration::from_secs(4), Duration::from_secs(2));
        let d = Duration::from_secs(12 * 7);
        let a = plan(7, &FaultKind::ALL, d, hold, quiet);
        assert_eq!(a, plan(7, &FaultKind::ALL, d, hold, quiet));
        assert_ne!(a, plan(8, &FaultKind::ALL, d, hold, quiet));
        let mut first: Vec<FaultKind> = a.iter().take(FaultKind::ALL.len()).map(|s| s.kind).collect();
        first.sort();
        assert_eq!(first, FaultKind::ALL.to_vec());
        for w in a.windows(2) {
            assert!(w[0].at + w[0].hold + quiet <= w[1].at, "steps overlap: {w:?}");
        }
        let last = a.last().unwrap();
        assert!(last.at + last.hold <= d);
        assert!(a.iter().all(|s| s.hold >= hold.mul_f64(0.75) && s.hold <= hold.mul_f64(1.25)));
    }

    #[test]
    fn parameters_stay_in_their_ranges() {
        let steps = plan(3, &FaultKind::ALL, Duration::from_secs(3600), Duration::from_secs(2), Duration::ZERO);
        assert!(steps.len() > 100);
        for s in steps {
            match s.kind {
                FaultKind::Loss => assert!((20..=40).contains(&s.param)),
                FaultKind::Delay => assert!((20..=80).contains(&s.param)),
                FaultKind::ClockSkew => assert!((2_000..=15_000).contains(&s.param.abs())),
                _ => assert_eq!(s.param, 0),
            }
        }
    }

    #[test]
    fn nothing_fits_in_too_short_a_run() {
        assert!(plan(1, &FaultKind::ALL, Duration::from_secs(1), Duration::from_secs(4), Duration::ZERO).is_empty());
        assert!(plan(1, &[], Duration::from_secs(100), Duration::from_secs(4), Duration::ZERO).is_empty());
    }
}
