//! What `GET /v1/rebalance` shows, and what a dry run of a join or drain
//! would do. Computed on whichever node is asked, from the map (read from
//! the meta shard) and the moving shards' statuses, with the same pure
//! rules the active Rebalancer follows, so every node tells the same story.

use std::collections::BTreeMap;
use std::sync::Arc;

use ringstore_router::map::read_map;
use ringstore_router::MapCell;
use ringstore_shared::cluster_map::ClusterMap;
use ringstore_shared::planner::{Load, Move};
use ringstore_shared::rebalance::{self, Step};
use ringstore_shared::{NodeId, ShardId, StoreError};
use ringstore_storage::Transport;
use serde::Serialize;
use tokio::time::Instant;

use crate::now_ms;
use crate::shards::{conf_view, leader_statuses};

#[derive(Debug, Clone, Serialize)]
pub struct MoveView {
    pub shard: ShardId,
    pub from: Option<NodeId>,
    pub to: NodeId,
    /// learner_pending | snapshot | catching_up | promoting | finishing | rolling_back | unknown
    pub state: &'static str,
    /// Why the move is not advancing, if it waits.
    pub blocker: Option<String>,
    pub bytes: u64,
    /// The shard's bytes once its snapshot arrived, else 0.
    pub bytes_moved: u64,
    pub started_ms: u64,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedMove {
    pub kind: &'static str,
    pub shard: ShardId,
    pub from: Option<NodeId>,
    pub to: NodeId,
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitView {
    pub source: ShardId,
    pub target: ShardId,
    /// The first ring point the new shard owns, in hex.
    pub at: String,
    /// recorded (the source has not applied it yet) | routing (applied,
    /// the map lists the new shard next) | unknown
    pub state: &'static str,
    pub started_ms: u64,
    pub elapsed_s: f64,
}

/// A shard whose load one key carries (so no split can spread it).
#[derive(Debug, Clone, Serialize)]
pub struct HotKey {
    pub shard: ShardId,
    /// The key (the first 128 bytes), lossily as UTF-8.
    pub key: String,
    /// Its share of the leader's sampled requests, in percent.
    pub share_pct: u8,
    pub qps: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeBalance {
    pub id: NodeId,
    pub state: &'static str,
    pub replicas: usize,
    pub leaders: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub epoch: u64,
    pub paused: bool,
    pub max_bytes_per_sec: u64,
    pub max_concurrent_moves: u32,
    pub down_after_s: u64,
    /// running | idle | paused | waiting
    pub state: &'static str,
    /// Data shards now, and how many the map wants (target, or per node).
    pub shards: u64,
    pub wanted_shards: u64,
    pub shards_per_node: u32,
    pub splits: Vec<SplitView>,
    /// Splits still to come after those in progress.
    pub planned_splits: Vec<SplitView>,
    pub split_max_bytes: u64,
    pub split_load_qps: u64,
    /// Shards with a hot key: reported, never split.
    pub hot_keys: Vec<HotKey>,
    pub moves: Vec<MoveView>,
    /// Moves the plan still calls for, not started yet.
    pub planned: Vec<PlannedMove>,
    pub job_started_ms: u64,
    pub job_finished_ms: u64,
    pub moves_done: u64,
    pub moves_rolled_back: u64,
    pub bytes_done: u64,
    /// Bytes of the moves in progress not copied yet.
    pub bytes_left: u64,
    /// Bytes per second over the job so far.
    pub rate_bytes_per_sec: f64,
    /// Seconds until the moves in progress and planned are done, at the
    /// job's rate (`None` before any move finished).
    pub eta_s: Option<f64>,
    /// Cluster-wide reasons nothing moves (a node down and being waited for).
    pub blockers: Vec<String>,
    pub nodes: Vec<NodeBalance>,
}

pub fn planned(plan: &[Move]) -> Vec<PlannedMove> {
    plan.iter()
        .map(|m| match *m {
            Move::Replica { shard, from, to } => PlannedMove { kind: "replica", shard, from, to },
            Move::Leader { shard, from, to } => PlannedMove { kind: "leader", shard, from: Some(from), to },
        })
        .collect()
}

pub fn balance(map: &ClusterMap) -> Vec<NodeBalance> {
    rebalance::balance(map)
        .into_iter()
        .map(|(id, (replicas, leaders))| NodeBalance {
            id,
            state: map.nodes.get(&id).map_or("unknown", |n| n.state.label()),
            replicas,
            leaders,
        })
        .collect()
}

/// The current job, moves and plan.
pub async fn job_view(
    cell: &MapCell,
    transport: &Arc<dyn Transport>,
    replication: usize,
    deadline: Instant,
) -> Result<JobView, StoreError> {
    let map = read_map(cell, transport, deadline).await?;
    let now = now_ms();
    let me = cell.node();
    let live = |n: NodeId| n == me || transport.reachable(me, n);
    // One status per shard serves the moves, the splits and the hot keys.
    let statuses = leader_statuses(cell, transport, map.shards.keys().copied(), deadline).await;
    let unknown = Err(StoreError::Unavailable { reason: "not in the map read".into() });
    let status_of = |s: ShardId| statuses.get(&s).unwrap_or(&unknown);
    let mut moves = Vec::new();
    for mv in &map.moves {
        let (state, blocker, moved) = match status_of(mv.shard) {
            Err(e) => ("unknown", Some(format!("shard {} status: {e}", mv.shard)), 0),
            Ok(s) => {
                let conf = conf_view(s);
                let copied = conf.voters.contains(&mv.to) || conf.matched.get(&mv.to).is_some_and(|m| *m > 0);
                let moved = if copied { mv.bytes } else { 0 };
                match rebalance::next_step(mv, &conf, &live) {
                    Step::AddLearner => ("learner_pending", None, moved),
                    Step::Wait(r) if r.contains("snapshot") => ("snapshot", None, moved),
                    Step::Wait(r) if r.contains("catching up") => ("catching_up", None, moved),
                    Step::Wait(r) => ("promoting", Some(r), moved),
                    Step::TransferLeader { .. } | Step::Promote | Step::LeaveJoint | Step::RemoveOld => {
                        ("promoting", None, moved)
                    }
                    Step::Finish => ("finishing", None, moved),
                    Step::Abort { .. } => ("rolling_back", Some(format!("node {} is unreachable", mv.to)), 0),
                }
            }
        };
        moves.push(MoveView {
            shard: mv.shard,
            from: mv.from,
            to: mv.to,
            state,
            blocker,
            bytes: mv.bytes,
            bytes_moved: moved,
            started_ms: mv.started_ms,
            elapsed_s: now.saturating_sub(mv.started_ms) as f64 / 1000.0,
        });
    }
    let mut splits = Vec::new();
    for sp in &map.splits {
        let state = match status_of(sp.source) {
            Ok(s) if s.ranges_epoch >= sp.epoch => "routing",
            Ok(_) => "recorded",
            Err(_) => "unknown",
        };
        splits.push(split_view(sp, state, now));
    }
    let hot_keys: Vec<HotKey> = statuses
        .iter()
        .filter_map(|(shard, st)| {
            let st = st.as_ref().ok()?;
            let (key, share_pct) = st.load.hot_key.as_ref()?;
            let key = String::from_utf8_lossy(key).into_owned();
            Some(HotKey { shard: *shard, key, share_pct: *share_pct, qps: st.load.qps })
        })
        .collect();
    let planned_splits: Vec<SplitView> = ringstore_shared::split::plan_splits(&map, &BTreeMap::new(), now)
        .iter()
        .map(|sp| split_view(sp, "planned", now))
        .collect();
    let plan = rebalance::plan_now(&map, &Load::default(), replication, now);
    let started: Vec<(ShardId, NodeId)> = map.moves.iter().map(|m| (m.shard, m.to)).collect();
    let planned: Vec<PlannedMove> =
        planned(&plan).into_iter().filter(|p| !(p.kind == "replica" && started.contains(&(p.shard, p.to)))).collect();
    let blockers: Vec<String> = rebalance::waiting_for_down_nodes(&map, now)
        .into_iter()
        .map(|(n, left_ms)| {
            format!("node {n} is down; its replicas are re-created in {}s unless it returns", left_ms.div_ceil(1000))
        })
        .collect();
    let bytes_left: u64 = moves.iter().map(|m| m.bytes - m.bytes_moved).sum();
    let job = map.job;
    let elapsed_s = if job.started_ms == 0 {
        0.0
    } else {
        let end = if job.finished_ms != 0 { job.finished_ms } else { now };
        end.saturating_sub(job.started_ms) as f64 / 1000.0
    };
    let rate = if elapsed_s > 0.0 { job.bytes_done as f64 / elapsed_s } else { 0.0 };
    let left_moves = (moves.len() + planned.iter().filter(|p| p.kind == "replica").count()) as f64;
    let eta_s = (job.moves_done > 0 && elapsed_s > 0.0 && job.finished_ms == 0)
        .then(|| left_moves * elapsed_s / job.moves_done as f64);
    let state = if map.rebalance.paused {
        "paused"
    } else if !moves.is_empty()
        || planned.iter().any(|p| p.kind == "replica")
        || !splits.is_empty()
        || !planned_splits.is_empty()
    {
        "running"
    } else if !blockers.is_empty() {
        "waiting"
    } else {
        "idle"
    };
    Ok(JobView {
        epoch: map.epoch,
        paused: map.rebalance.paused,
        max_bytes_per_sec: map.rebalance.max_bytes_per_sec,
        max_concurrent_moves: map.rebalance.max_concurrent_moves,
        down_after_s: map.rebalance.down_after_s,
        state,
        shards: map.data_shards().count() as u64,
        wanted_shards: ringstore_shared::split::wanted_shards(&map),
        shards_per_node: map.rebalance.shards_per_node,
        splits,
        planned_splits,
        split_max_bytes: map.rebalance.split_max_bytes,
        split_load_qps: map.rebalance.split_load_qps,
        hot_keys,
        moves,
        planned,
        job_started_ms: job.started_ms,
        job_finished_ms: job.finished_ms,
        moves_done: job.moves_done,
        moves_rolled_back: job.moves_rolled_back,
        bytes_done: job.bytes_done,
        bytes_left,
        rate_bytes_per_sec: rate,
        eta_s,
        blockers,
        nodes: balance(&rebalance::projected(&map)),
    })
}

fn split_view(sp: &ringstore_shared::cluster_map::ShardSplit, state: &'static str, now: u64) -> SplitView {
    SplitView {
        source: sp.source,
        target: sp.target,
        at: format!("{:016x}", sp.at),
        state,
        started_ms: sp.started_ms,
        elapsed_s: now.saturating_sub(sp.started_ms) as f64 / 1000.0,
    }
}

/// A dry run: the moves a changed map calls for and the balance after them.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub moves: Vec<PlannedMove>,
    pub before: Vec<NodeBalance>,
    pub after: Vec<NodeBalance>,
}

pub fn preview(current: &ClusterMap, changed: &ClusterMap, replication: usize) -> Preview {
    let plan = ringstore_shared::planner::plan(&rebalance::projected(changed), &Load::default(), replication);
    let after = rebalance::after_plan(changed, &plan);
    Preview { moves: planned(&plan), before: balance(&rebalance::projected(current)), after: balance(&after) }
}

/// Replicas and leaders per node as a map, for tests and status output.
pub fn counts(b: &[NodeBalance]) -> BTreeMap<NodeId, (usize, usize)> {
    b.iter().map(|n| (n.id, (n.replicas, n.leaders))).collect()
}
