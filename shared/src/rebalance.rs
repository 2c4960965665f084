//! The Rebalancer's rules besides the plan itself, pure: which step a
//! replica move is at given its shard's Raft configuration, which planned
//! moves start now, how node states follow liveness, and whether a drain
//! is allowed. The actor (services/rebalancer) only gathers the inputs and
//! carries out what these return.
//!
//! A replica move of shard S from A to D goes:
//! 1. the map records the move (D then starts an empty replica of S);
//! 2. `AddLearner(D)`: the leader sends D a snapshot, then the log;
//! 3. once D's matched index is within [`CATCH_UP_LAG_ENTRIES`] of the
//!    leader's last index: leadership leaves A if A leads, then one joint
//!    change `AddNode(D), RemoveNode(A)`, which raft-rs leaves by itself;
//! 4. the map replaces A by D and drops the move; A's node deletes its
//!    replica.
//!
//! The Raft configuration, not the map, says which step is done, so a new
//! meta leader that finds the move in the map resumes it from any point.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::cluster_map::{ClusterMap, NodeState, ReplicaMove};
use crate::planner::{self, Load, Move};
use crate::{NodeId, ShardId};

/// A learner this close to the leader's log is promoted: the rest arrives
/// in the next heartbeat or two.
pub const CATCH_UP_LAG_ENTRIES: u64 = 64;
/// A node unreachable from the meta leader this long is marked `Down` (its
/// replicas are replaced only after the configured `down_after_s`).
pub const MARK_DOWN_AFTER_MS: u64 = 5_000;

/// A shard's Raft configuration and progress, as its leader reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfView {
    pub leader: NodeId,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The old voters while the shard is in a joint configuration.
    pub voters_outgoing: Vec<NodeId>,
    /// Matched log index per peer (the leader's view).
    pub matched: BTreeMap<NodeId, u64>,
    pub last_index: u64,
}

/// What to do next for one move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Propose `AddLearnerNode(to)`.
    AddLearner,
    /// Nothing to do yet; the reason is shown as the move's blocker.
    Wait(String),
    /// The leader is the replica being removed: move leadership to `to` first.
    TransferLeader { to: NodeId },
    /// Propose the joint change `AddNode(to)` (+ `RemoveNode(from)`).
    Promote,
    /// The shard is still joint: propose leaving it.
    LeaveJoint,
    /// `to` votes and `from` still does: propose `RemoveNode(from)`.
    RemoveOld,
    /// Done in Raft: record it in the map.
    Finish,
    /// The target is gone: remove its learner (if added) and drop the move.
    Abort { remove_learner: bool },
}

/// The next step of `mv` from its shard's configuration. `live` says which
/// nodes the meta leader can reach.
pub fn next_step(mv: &ReplicaMove, conf: &ConfView, live: &dyn Fn(NodeId) -> bool) -> Step {
    if !conf.voters_outgoing.is_empty() {
        return Step::LeaveJoint;
    }
    let to_voter = conf.voters.contains(&mv.to);
    let to_learner = conf.learners.contains(&mv.to);
    let from_voter = mv.from.is_some_and(|f| conf.voters.contains(&f));
    if !to_voter && !to_learner {
        return if live(mv.to) { Step::AddLearner } else { Step::Abort { remove_learner: false } };
    }
    if to_learner {
        if !live(mv.to) {
            return Step::Abort { remove_learner: true };
        }
        let matched = conf.matched.get(&mv.to).copied().unwrap_or(0);
        if matched == 0 {
            return Step::Wait(format!("node {} is receiving the snapshot", mv.to));
        }
        if matched + CATCH_UP_LAG_ENTRIES < conf.last_index {
            return Step::Wait(format!("node {} is catching up ({} entries behind)", mv.to, conf.last_index - matched));
        }
    }
    if from_voter || to_learner {
        if let Some(from) = mv.from.filter(|f| *f == conf.leader && from_voter) {
            // raft-rs would let a leader remove itself, but then the shard
            // waits an election timeout for a new one; hand over first.
            return match conf.voters.iter().copied().find(|v| *v != from && live(*v)) {
                Some(to) => Step::TransferLeader { to },
                None => Step::Wait(format!("no live voter to take leadership from node {from}")),
            };
        }
        // The joint configuration needs a live majority of the new voters too.
        let mut new_voters: Vec<NodeId> = conf.voters.iter().copied().filter(|v| Some(*v) != mv.from).collect();
        if !new_voters.contains(&mv.to) {
            new_voters.push(mv.to);
        }
        let live_new = new_voters.iter().filter(|v| live(**v)).count();
        if live_new <= new_voters.len() / 2 {
            return Step::Wait(format!(
                "only {live_new} of the {} voters after the move are live; waiting for a majority",
                new_voters.len()
            ));
        }
        return if to_learner { Step::Promote } else { Step::RemoveOld };
    }
    Step::Finish
}

/// The map as it will be once every move in progress is done: what the
/// planner plans from, so it does not plan the same move twice.
pub fn projected(map: &ClusterMap) -> ClusterMap {
    let mut m = map.clone();
    for mv in &map.moves {
        if let Some(rs) = m.shards.get_mut(&mv.shard) {
            match mv.from.and_then(|f| rs.iter().position(|n| *n == f)) {
                Some(i) => rs[i] = mv.to,
                None if !rs.contains(&mv.to) => rs.push(mv.to),
                None => {}
            }
        }
    }
    m.moves.clear();
    m
}

/// Records a finished move: `to` takes `from`'s place among the voters.
pub fn finish(map: &mut ClusterMap, shard: ShardId) {
    let Some(i) = map.moves.iter().position(|m| m.shard == shard) else { return };
    let mv = map.moves.remove(i);
    if let Some(rs) = map.shards.get_mut(&shard) {
        match mv.from.and_then(|f| rs.iter().position(|n| *n == f)) {
            Some(i) if !rs.contains(&mv.to) => rs[i] = mv.to,
            Some(i) => {
                rs.remove(i);
            }
            None if !rs.contains(&mv.to) => rs.push(mv.to),
            None => {}
        }
    }
}

/// The planned replica moves to start now: in plan order, one per shard,
/// up to the configured number in flight. `bytes_of` is a shard's size.
pub fn moves_to_start(
    map: &ClusterMap,
    plan: &[Move],
    now_ms: u64,
    bytes_of: &dyn Fn(ShardId) -> u64,
) -> Vec<ReplicaMove> {
    if map.rebalance.paused {
        return Vec::new();
    }
    let room = (map.rebalance.max_concurrent_moves as usize).saturating_sub(map.moves.len());
    let mut out: Vec<ReplicaMove> = Vec::new();
    for m in plan {
        if out.len() >= room {
            break;
        }
        if let Move::Replica { shard, from, to } = *m {
            // A shard being split keeps its replicas until the split ends:
            // the new shard starts on exactly the source's voters.
            if map.move_of(shard).is_some() || map.split_of(shard).is_some() || out.iter().any(|o| o.shard == shard) {
                continue;
            }
            out.push(ReplicaMove { shard, from, to, started_ms: now_ms, bytes: bytes_of(shard) });
        }
    }
    out
}

/// What the meta leader sees of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Reachable now.
    pub live: bool,
    /// How long it has been unreachable (0 when live).
    pub unreachable_ms: u64,
}

/// Node state changes liveness calls for: a joining node that answers is
/// up; an up node unreachable for [`MARK_DOWN_AFTER_MS`] is down; a down
/// node that answers is up again; a draining node that holds nothing any
/// more is removed. Returns `(node, new state)` pairs.
pub fn node_transitions(map: &ClusterMap, seen: &BTreeMap<NodeId, Liveness>) -> Vec<(NodeId, NodeState)> {
    let mut out = Vec::new();
    for (id, n) in &map.nodes {
        let Some(l) = seen.get(id) else { continue };
        let next = match n.state {
            NodeState::Joining if l.live => Some(NodeState::Up),
            NodeState::Up if !l.live && l.unreachable_ms >= MARK_DOWN_AFTER_MS => Some(NodeState::Down),
            NodeState::Down if l.live => Some(NodeState::Up),
            NodeState::Draining if map.hosted_on(*id).is_empty() => Some(NodeState::Removed),
            _ => None,
        };
        if let Some(s) = next {
            out.push((*id, s));
        }
    }
    out
}

/// Nodes down for less than the configured time: their replicas are not
/// replaced yet, so no new replica moves are planned meanwhile (the node
/// may come back, and a move planned around it would be wasted).
pub fn waiting_for_down_nodes(map: &ClusterMap, now_ms: u64) -> Vec<(NodeId, u64)> {
    let limit_ms = map.rebalance.down_after_s.saturating_mul(1000);
    map.nodes
        .iter()
        .filter(|(id, n)| n.state == NodeState::Down && !map.hosted_on(**id).is_empty())
        .filter_map(|(id, n)| {
            let down_ms = now_ms.saturating_sub(n.since_ms);
            (down_ms < limit_ms).then(|| (*id, limit_ms - down_ms))
        })
        .collect()
}

/// The planner's input: nodes down for less than `down_after_s` still
/// count as holding their replicas (see [`waiting_for_down_nodes`]).
pub fn plan_now(map: &ClusterMap, load: &Load, replication: usize, now_ms: u64) -> Vec<Move> {
    if !waiting_for_down_nodes(map, now_ms).is_empty() {
        return Vec::new();
    }
    planner::plan(&projected(map), load, replication)
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChangeError {
    #[error("node {0} is not in the cluster")]
    UnknownNode(NodeId),
    #[error("node {0} is removed")]
    Removed(NodeId),
    #[error(
        "draining node {node} would leave {left} node(s) up to hold {replication} replicas of every shard: add a node \
         first"
    )]
    NoRoom { node: NodeId, left: usize, replication: usize },
}

/// Whether `node` may drain: the nodes left up must be able to hold every
/// shard's replicas, or some shard would stay short (and a drain that
/// cannot finish would hold its replicas hostage).
pub fn check_drain(map: &ClusterMap, node: NodeId, replication: usize) -> Result<(), ChangeError> {
    let n = map.nodes.get(&node).ok_or(ChangeError::UnknownNode(node))?;
    if n.state == NodeState::Removed {
        return Err(ChangeError::Removed(node));
    }
    let left = map
        .nodes
        .iter()
        .filter(|(id, n)| **id != node && matches!(n.state, NodeState::Up | NodeState::Joining))
        .count();
    let needed = map.shards.values().map(Vec::len).max().unwrap_or(0).min(replication);
    if left < needed {
        return Err(ChangeError::NoRoom { node, left, replication: needed });
    }
    Ok(())
}

/// Replicas and preferred leaderships per node in `map` (after `projected`).
pub fn balance(map: &ClusterMap) -> BTreeMap<NodeId, (usize, usize)> {
    let mut out: BTreeMap<NodeId, (usize, usize)> =
        map.nodes.iter().filter(|(_, n)| n.state != NodeState::Removed).map(|(id, _)| (*id, (0, 0))).collect();
    for rs in map.shards.values() {
        for (i, n) in rs.iter().enumerate() {
            let e = out.entry(*n).or_default();
            e.0 += 1;
            e.1 += (i == 0) as usize;
        }
    }
    out
}

/// The map after every move of `plan`, for a dry run's "resulting balance".
pub fn after_plan(map: &ClusterMap, plan: &[Move]) -> ClusterMap {
    let mut m = projected(map);
    for mv in plan {
        match *mv {
            Move::Replica { shard, from, to } => {
                m.moves.push(ReplicaMove { shard, from, to, started_ms: 0, bytes: 0 });
                finish(&mut m, shard);
            }
            Move::Leader { shard, to, .. } => prefer_leader(&mut m, shard, to),
        }
    }
    m
}

/// Makes `to` the preferred (first) replica of `shard`.
pub fn prefer_leader(map: &mut ClusterMap, shard: ShardId, to: NodeId) {
    if let Some(rs) = map.shards.get_mut(&shard) {
        if let Some(i) = rs.iter().position(|n| *n == to) {
            rs.swap(0, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_map::NodeInfo;

    fn mv(from: Option<NodeId>, to: NodeId) -> ReplicaMove {
        ReplicaMove { shard: 1, from, to, started_ms: 0, bytes: 0 }
    }

    fn conf(leader: NodeId, voters: &[NodeId], learners: &[NodeId]) -> ConfView {
        ConfView {
            leader,
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            matched: voters.iter().chain(learners).map(|n| (*n, 100)).collect(),
            last_index: 100,
            ..Default::default()
        }
    }

    fn all_live(_: NodeId) -> bool {
        true
    }

    #[test]
    fn a_move_walks_learner_catch_up_promote_finish() {
        let m = mv(Some(3), 4);
        assert_eq!(next_step(&m, &conf(1, &[1, 2, 3], &[]), &all_live), Step::AddLearner);
        let mut c = conf(1, &[1, 2, 3], &[4]);
        c.matched.insert(4, 0);
        assert!(matches!(next_step(&m, &c, &all_live), Step::Wait(r) if r.contains("snapshot")));
        c.matched.insert(4, 10);
        assert!(matches!(next_step(&m, &c, &all_live), Step::Wait(r) if r.contains("90 entries behind")));
        c.matched.insert(4, 99);
        assert_eq!(next_step(&m, &c, &all_live), Step::Promote);
        let mut joint = conf(1, &[1, 2, 4], &[]);
        joint.voters_outgoing = vec![1, 2, 3];
        assert_eq!(next_step(&m, &joint, &all_live), Step::LeaveJoint);
        assert_eq!(next_step(&m, &conf(1, &[1, 2, 4], &[]), &all_live), Step::Finish);
        // Promoted without the removal (e.g. an older step): remove now.
        assert_eq!(next_step(&m, &conf(1, &[1, 2, 3, 4], &[]), &all_live), Step::RemoveOld);
    }

    #[test]
    fn leadership_leaves_the_replica_being_removed_first() {
        let m = mv(Some(1), 4);
        assert_eq!(next_step(&m, &conf(1, &[1, 2, 3], &[4]), &all_live), Step::TransferLeader { to: 2 });
        let only_3 = |n: NodeId| n != 2;
        assert_eq!(next_step(&m, &conf(1, &[1, 2, 3], &[4]), &only_3), Step::TransferLeader { to: 3 });
        assert_eq!(next_step(&m, &conf(2, &[1, 2, 3], &[4]), &all_live), Step::Promote);
    }

    #[test]
    fn a_dead_target_rolls_back_and_a_lost_majority_waits() {
        let m = mv(Some(3), 4);
        let dead4 = |n: NodeId| n != 4;
        assert_eq!(next_step(&m, &conf(1, &[1, 2, 3], &[]), &dead4), Step::Abort { remove_learner: false });
        assert_eq!(next_step(&m, &conf(1, &[1, 2, 3], &[4]), &dead4), Step::Abort { remove_learner: true });
        // Replacing 3 while 2 is down too: new voters {1, 2, 4} with only 1 and 4 live is a
        // majority; with 1 also down it is not.
        let dead2 = |n: NodeId| n != 2;
        assert_eq!(next_step(&m, &conf(1, &[1, 2, 3], &[4]), &dead2), Step::Promote);
        let m2 = mv(Some(1), 4);
        let dead23 = |n: NodeId| n == 1 || n == 4;
        let s = next_step(&m2, &conf(2, &[1, 2, 3], &[4]), &dead23);
        assert!(matches!(&s, Step::Wait(r) if r.contains("majority")), "{s:?}");
    }

    fn map3() -> ClusterMap {
        let nodes = (1..=3).map(|i| (i, NodeInfo::new("", "", NodeState::Up))).collect();
        ClusterMap::bootstrap(nodes, 4, 3).unwrap()
    }

    #[test]
    fn projected_and_finish_agree() {
        let mut m = map3();
        m.nodes.insert(4, NodeInfo::new("", "", NodeState::Up));
        let old = m.shards[&2].clone();
        m.moves.push(ReplicaMove { shard: 2, from: Some(old[1]), to: 4, started_ms: 1, bytes: 2 });
        let p = projected(&m);
        finish(&mut m, 2);
        assert_eq!(m.shards, p.shards);
        assert_eq!(m.shards[&2][0], old[0], "the preferred leader keeps its slot");
        assert!(m.moves.is_empty());
    }

    #[test]
    fn moves_start_within_the_limit_one_per_shard_and_not_when_paused() {
        let mut m = map3();
        m.rebalance.max_concurrent_moves = 2;
        let plan = vec![
            Move::Replica { shard: 1, from: Some(1), to: 4 },
            Move::Replica { shard: 1, from: Some(2), to: 5 },
            Move::Leader { shard: 3, from: 1, to: 2 },
            Move::Replica { shard: 2, from: Some(1), to: 4 },
            Move::Replica { shard: 3, from: Some(1), to: 4 },
        ];
        let started = moves_to_start(&m, &plan, 7, &|s| s * 10);
        assert_eq!(started.iter().map(|m| (m.shard, m.to, m.bytes)).collect::<Vec<_>>(), vec![(1, 4, 10), (2, 4, 20)]);
        m.moves = started;
        assert!(moves_to_start(&m, &plan, 7, &|_| 0).is_empty(), "the limit is reached");
        m.moves.clear();
        m.rebalance.paused = true;
        assert!(moves_to_start(&m, &plan, 7, &|_| 0).is_empty());
    }

    #[test]
    fn node_states_follow_liveness() {
        let mut m = map3();
        m.nodes.insert(4, NodeInfo::new("", "", NodeState::Joining));
        m.nodes.insert(5, NodeInfo::new("", "", NodeState::Draining));
        let seen: BTreeMap<NodeId, Liveness> = [
            (1, Liveness { live: true, unreachable_ms: 0 }),
            (2, Liveness { live: false, unreachable_ms: MARK_DOWN_AFTER_MS }),
            (3, Liveness { live: false, unreachable_ms: 10 }),
            (4, Liveness { live: true, unreachable_ms: 0 }),
            (5, Liveness { live: true, unreachable_ms: 0 }),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            node_transitions(&m, &seen),
            vec![(2, NodeState::Down), (4, NodeState::Up), (5, NodeState::Removed)]
        );
    }

    #[test]
    fn a_down_node_is_waited_for_before_its_replicas_move() {
        let mut m = map3();
        m.nodes.insert(4, NodeInfo::new("", "", NodeState::Up));
        let n2 = m.nodes.get_mut(&2).unwrap();
        n2.state = NodeState::Down;
        n2.since_ms = 1_000;
        m.rebalance.down_after_s = 60;
        assert_eq!(waiting_for_down_nodes(&m, 31_000), vec![(2, 30_000)]);
        assert_eq!(waiting_for_down_nodes(&m, 61_000), vec![], "past the limit: no longer waited for");
        assert!(plan_now(&m, &Load::default(), 3, 31_000).is_empty());
        let plan = plan_now(&m, &Load::default(), 3, 61_000);
        let from_2 = plan.iter().filter(|mv| matches!(mv, Move::Replica { from: Some(2), .. })).count();
        assert_eq!(from_2, m.hosted_on(2).len(), "every replica on the dead node is replaced");
    }

    #[test]
    fn drain_refusals() {
        let mut m = map3();
        assert_eq!(check_drain(&m, 9, 3), Err(ChangeError::UnknownNode(9)));
        assert_eq!(check_drain(&m, 1, 3), Err(ChangeError::NoRoom { node: 1, left: 2, replication: 3 }));
        m.nodes.insert(4, NodeInfo::new("", "", NodeState::Up));
        assert_eq!(check_drain(&m, 1, 3), Ok(()));
        m.nodes.get_mut(&2).unwrap().state = NodeState::Down;
        assert!(matches!(check_drain(&m, 1, 3), Err(ChangeError::NoRoom { left: 2, .. })));
        m.nodes.get_mut(&3).unwrap().state = NodeState::Removed;
        assert_eq!(check_drain(&m, 3, 3), Err(ChangeError::Removed(3)));
    }

    #[test]
    fn a_dry_run_shows_the_balance_after_the_plan() {
        let mut m = map3();
        m.nodes.insert(4, NodeInfo::new("", "", NodeState::Joining));
        let plan = planner::plan(&m, &Load::default(), 3);
        let b = balance(&after_plan(&m, &plan));
        let replicas: Vec<usize> = b.values().map(|(r, _)| *r).collect();
        assert_eq!(replicas.iter().sum::<usize>(), 15, "5 shards x 3");
        assert!(replicas.iter().max().unwrap() - replicas.iter().min().unwrap() <= 1, "{b:?}");
    }
}
