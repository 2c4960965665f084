//! The nemesis schedule: which fault fires when, for how long, from a seed.
//!
//! Pure planning, so a run is reproducible from its seed: the same seed,
//! kinds and durations give the same steps. Which node a step hits is
//! decided when it fires (leaders move), from the step's `pick`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
