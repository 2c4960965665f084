//! The [`Rebalancer`] actor. Every tick it checks whether this node leads
//! the meta shard; if so it notes which nodes it can reach and runs one
//! round, unless the previous one is still running:
//! 1. node states follow liveness (joining → up, up → down, down → up,
//!    drained → removed); a round that changes them ends there;
//! 2. splits in progress end, and when the map wants more shards than it
//!    has ([`split::wanted_shards`]) the next one is recorded, applied by
//!    its source and ended, in the same round ([`split`]);
//! 3. each move in the map takes its next step ([`rebalance::next_step`]);
//! 4. planned replica moves start, up to the configured number in flight;
//! 5. once no replica moves remain: preferred leaders are evened out
//!    (map), then actual leaders follow them (leader transfers).
//!
//! A round only reads the map and shard statuses and sends a handful of
//! requests, so it is bounded by [`ROUND_TIMEOUT`].

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use ringstore_router::map::{read_map, update_map};
use ringstore_router::MapCell;
use ringstore_shared::apply::Outcome;
use ringstore_shared::cluster_map::{ClusterMap, JobProgress, NodeState, ReplicaMove, ShardSplit, META_SHARD};
use ringstore_shared::command::Command;
use ringstore_shared::planner::{Load, Move};
use ringstore_shared::rebalance::{self, Liveness, Step};
use ringstore_shared::split;
use ringstore_shared::{NodeId, ShardId, StoreError};
use ringstore_storage::messages::PeerChange;
use ringstore_storage::{ReplicaStatus, ShardOp, ShardReply, Transport};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::METRICS;
use crate::now_ms;
use crate::shards::{change_peers, conf_view, leader_status, leader_statuses, to_leader, transfer_leader};

/// How often the Rebalancer looks.
pub const TICK: Duration = Duration::from_millis(500);
/// The longest one round may take.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(10);
/// Leader transfers per round: leadership moves a few shards at a time, so
/// clients see a handful of retried requests, not a storm.
const LEADER_TRANSFERS_PER_ROUND: usize = 4;
/// Rounds in a row a shard's load must stay over `split_load_qps` before
/// it splits (at [`TICK`]: 5 s), so a burst does not split anything.
pub const LOAD_SPLIT_ROUNDS: u32 = 10;

pub struct Rebalancer {
    cell: Arc<MapCell>,
    transport: Arc<dyn Transport>,
    replication: usize,
    /// When this node first failed to reach each node it cannot reach now.
    unreachable_since: HashMap<NodeId, Instant>,
    /// Rounds in a row each shard's load was over the split threshold.
    hot_rounds: Arc<std::sync::Mutex<HashMap<ShardId, u32>>>,
    busy: bool,
}

impl Rebalancer {
    pub fn new(cell: Arc<MapCell>, transport: Arc<dyn Transport>, replication: usize) -> Self {
        crate::metrics::init(cell.node());
        Rebalancer {
            cell,
            transport,
            replication,
            unreachable_since: HashMap::new(),
            hot_rounds: Arc::default(),
            busy: false,
        }
    }

    fn leads_meta(&self) -> bool {
        let me = self.cell.node();
        self.cell.leaders().get(META_SHARD).is_some_and(|h| h.leader == Some(me))
    }

    fn liveness(&mut self, map: &ClusterMap) -> BTreeMap<NodeId, Liveness> {
        let me = self.cell.node();
        let now = Instant::now();
        map.nodes
            .keys()
            .map(|&id| {
                let live = id == me || self.transport.reachable(me, id);
                let unreachable_ms = if live {
                    self.unreachable_since.remove(&id);
                    0
                } else {
                    now.duration_since(*self.unreachable_since.entry(id).or_insert(now)).as_millis() as u64
                };
                (id, Liveness { live, unreachable_ms })
            })
            .collect()
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let node = self.cell.node().to_string();
        let active = self.leads_meta();
        METRICS.active.with_label_values(&[&node]).set(active as i64);
        if !active {
            self.unreachable_since.clear();
            return;
        }
        let seen = self.liveness(&self.cell.load().map);
        if self.busy {
            return;
        }
        self.busy = true;
        let round = Round {
            cell: self.cell.clone(),
            transport: self.transport.clone(),
            replication: self.replication,
            hot_rounds: self.hot_rounds.clone(),
        };
        let fut = async move { round.run(seen).await };
        ctx.spawn(fut.into_actor(self).map(move |result, act, _| {
            act.busy = false;
            let label = if result.is_ok() { "ok" } else { "failed" };
            METRICS.rounds.with_label_values(&[&node, label]).inc();
            if let Err(e) = result {
                debug!(node = %node, "rebalance round ended early: {e}");
            }
        }));
    }
}

impl Actor for Rebalancer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        info!(node = self.cell.node(), "rebalancer started (active only next to the meta leader)");
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
    }
}

/// One round's inputs; the round itself is async and runs off the actor.
struct Round {
    cell: Arc<MapCell>,
    transport: Arc<dyn Transport>,
    replication: usize,
    hot_rounds: Arc<std::sync::Mutex<HashMap<ShardId, u32>>>,
}

impl Round {
    async fn run(&self, seen: BTreeMap<NodeId, Liveness>) -> Result<(), StoreError> {
        let deadline = Instant::now() + ROUND_TIMEOUT;
        let map = read_map(&self.cell, &self.transport, deadline).await?;
        self.export(&map);

        // 1. Node states.
        if !rebalance::node_transitions(&map, &seen).is_empty() {
            let now = now_ms();
            update_map(&self.cell, &self.transport, deadline, |m| {
                let changes = rebalance::node_transitions(m, &seen);
                if changes.is_empty() {
                    return Ok::<_, Infallible>(None);
                }
                let mut next = m.next();
                for (id, state) in changes {
                    info!(node = id, from = m.nodes[&id].state.label(), to = state.label(), "node state changed");
                    if let Some(n) = next.nodes.get_mut(&id) {
                        n.state = state;
                        n.since_ms = now;
                    }
                }
                Ok(Some(next))
            })
            .await?
            .ok();
            return Ok(());
        }
        let live = |n: NodeId| seen.get(&n).is_some_and(|l| l.live);

        // 2. Splits: end those recorded, then record and carry out the next.
        for sp in &map.splits {
            if let Err(e) = self.drive_split(&map, sp, deadline).await {
                debug!(source = sp.source, target = sp.target, "split step failed, retrying next round: {e}");
            }
        }
        let c = &map.rebalance;
        let by_count = split::planned_shards(&map) < split::wanted_shards(&map);
        if map.splits.is_empty() && (by_count || c.split_max_bytes > 0 || c.split_load_qps > 0) {
            let statuses = self.data_statuses(&map, deadline).await;
            let sizes: BTreeMap<ShardId, u64> = statuses.iter().filter_map(|(s, st)| Some((*s, st.bytes?))).collect();
            let hot = self.sustained_load(&map, &statuses);
            // A shard just split counts its keys for a moment; the next
            // choice waits for every size, or it might cut the same data
            // again, or a smaller shard than the largest.
            let counting = sizes.len() < statuses.len();
            if !counting && split::choose_split(&map, &sizes, &hot, now_ms()).is_some() {
                self.start_split(&sizes, &hot, deadline).await?;
                return Ok(());
            }
        }

        // 3. Moves in progress.
        for mv in &map.moves {
            if let Err(e) = self.drive(mv, &live, deadline).await {
                debug!(shard = mv.shard, to = mv.to, "move step failed, retrying next round: {e}");
            }
        }

        // 4. New replica moves.
        let now = now_ms();
        let plan = rebalance::plan_now(&map, &Load::default(), self.replication, now);
        if plan.iter().any(|m| matches!(m, Move::Replica { .. })) {
            let starting = rebalance::moves_to_start(&map, &plan, now, &|_| 0);
            if starting.is_empty() {
                return Ok(());
            }
            let mut sizes = HashMap::new();
            for mv in &starting {
                if let Some(bytes) =
                    leader_status(&self.cell, &self.transport, mv.shard, deadline).await.ok().and_then(|s| s.bytes)
                {
                    sizes.insert(mv.shard, bytes);
                }
            }
            // A move starts only once its shard's size is known: the job's
            // bytes moved and left are counted from it.
            let plan: Vec<Move> = plan
                .into_iter()
                .filter(|m| !matches!(m, Move::Replica { shard, .. } if !sizes.contains_key(shard)))
                .collect();
            update_map(&self.cell, &self.transport, deadline, |m| {
                let starts = rebalance::moves_to_start(m, &plan, now, &|s| sizes.get(&s).copied().unwrap_or(0));
                if starts.is_empty() {
                    return Ok::<_, Infallible>(None);
                }
                let mut next = m.next();
                if m.job.started_ms == 0 || m.job.finished_ms != 0 {
                    next.job = JobProgress { started_ms: now, ..JobProgress::default() };
                }
                for s in &starts {
                    info!(shard = s.shard, from = ?s.from, to = s.to, bytes = s.bytes, "replica move started");
                }
                next.moves.extend(starts);
                Ok(Some(next))
            })
            .await?
            .ok();
            return Ok(());
        }
        if !map.moves.is_empty() {
            return Ok(());
        }

        // 5. Leaders: first the preferred ones (map), then the actual ones.
        let leader_moves: Vec<(ShardId, NodeId)> = plan
            .iter()
            .filter_map(|m| match *m {
                Move::Leader { shard, to, .. } => Some((shard, to)),
                Move::Replica { .. } => None,
            })
            .collect();
        if !leader_moves.is_empty() || (map.job.started_ms != 0 && map.job.finished_ms == 0) {
            update_map(&self.cell, &self.transport, deadline, |m| {
                let mut next = m.next();
                for (shard, to) in &leader_moves {
                    rebalance::prefer_leader(&mut next, *shard, *to);
                }
                if next.job.started_ms != 0 && next.job.finished_ms == 0 {
                    next.job.finished_ms = now;
                    info!(moves = next.job.moves_done, bytes = next.job.bytes_done, "rebalance job finished");
                }
                Ok::<_, Infallible>((next.shards != m.shards || next.job != m.job).then_some(next))
            })
            .await?
            .ok();
            return Ok(());
        }
        self.follow_preferred_leaders(&map, &live, deadline).await;
        Ok(())
    }

    /// Moves actual leadership to each shard's preferred (first) replica
    /// where that node is up and reachable, a few shards per round.
    async fn follow_preferred_leaders(&self, map: &ClusterMap, live: &dyn Fn(NodeId) -> bool, deadline: Instant) {
        let node = self.cell.node().to_string();
        let mut transfers = 0;
        for (&shard, replicas) in &map.shards {
            let Some(&preferred) = replicas.first() else { continue };
            let up = map.nodes.get(&preferred).is_some_and(|n| n.state == NodeState::Up);
            if !up || !live(preferred) {
                continue;
            }
            let Ok(status) = leader_status(&self.cell, &self.transport, shard, deadline).await else { continue };
            if status.node == preferred || !status.voters.contains(&preferred) {
                continue;
            }
            info!(shard, from = status.node, to = preferred, "moving leadership to the preferred replica");
            let result = transfer_leader(&self.cell, &self.transport, shard, preferred, deadline).await;
            let label = if result.is_ok() { "done" } else { "failed" };
            METRICS.moves.with_label_values(&[&node, "leader", label]).inc();
            transfers += 1;
            if transfers >= LEADER_TRANSFERS_PER_ROUND {
                break;
            }
        }
    }

    /// Takes the next step of one move.
    async fn drive(
        &self,
        mv: &ReplicaMove,
        live: &dyn Fn(NodeId) -> bool,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        let (cell, transport) = (&self.cell, &self.transport);
        let status = leader_status(cell, transport, mv.shard, deadline).await?;
        let step = rebalance::next_step(mv, &conf_view(&status), live);
        let shard = mv.shard;
        match step {
            Step::Wait(reason) => {
                debug!(shard, to = mv.to, "move waits: {reason}");
                Ok(())
            }
            Step::AddLearner => {
                info!(shard, to = mv.to, "adding a learner");
                change_peers(cell, transport, shard, PeerChange::AddLearner(mv.to), deadline).await.map(drop)
            }
            Step::TransferLeader { to } => {
                info!(shard, from = status.node, to, "moving leadership off the replica being removed");
                transfer_leader(cell, transport, shard, to, deadline).await
            }
            Step::Promote => {
                info!(shard, add = mv.to, remove = ?mv.from, "promoting the learner");
                let change = PeerChange::Promote { add: mv.to, remove: mv.from };
                change_peers(cell, transport, shard, change, deadline).await.map(drop)
            }
            Step::LeaveJoint => change_peers(cell, transport, shard, PeerChange::LeaveJoint, deadline).await.map(drop),
            Step::RemoveOld => match mv.from {
                Some(from) => change_peers(cell, transport, shard, PeerChange::Remove(from), deadline).await.map(drop),
                None => Ok(()),
            },
            Step::Abort { remove_learner: true } => {
                warn!(shard, to = mv.to, "move target unreachable: removing its learner");
                change_peers(cell, transport, shard, PeerChange::Remove(mv.to), deadline).await.map(drop)
            }
            Step::Finish | Step::Abort { remove_learner: false } => {
                let done = step == Step::Finish;
                let ended = update_map(cell, transport, deadline, |m| {
                    if m.move_of(shard) != Some(mv) {
                        return Ok::<_, Infallible>(None);
                    }
                    let mut next = m.next();
                    if done {
                        rebalance::finish(&mut next, shard);
                        next.job.moves_done += 1;
                        next.job.bytes_done += mv.bytes;
                    } else {
                        next.moves.retain(|x| x.shard != shard);
                        next.job.moves_rolled_back += 1;
                    }
                    Ok(Some(next))
                })
                .await?;
                if ended.is_ok() {
                    let node = cell.node().to_string();
                    let result = if done { "done" } else { "rolled_back" };
                    let secs = now_ms().saturating_sub(mv.started_ms) as f64 / 1000.0;
                    METRICS.moves.with_label_values(&[&node, "replica", result]).inc();
                    METRICS.move_seconds.with_label_values(&[&node, result]).observe(secs);
                    if done {
                        METRICS.bytes_moved.with_label_values(&[&node]).inc_by(mv.bytes);
                    }
                    info!(shard, from = ?mv.from, to = mv.to, result, secs, "replica move ended");
                }
                Ok(())
            }
        }
    }

    /// Every data shard's leader status; shards that do not answer are
    /// left out.
    async fn data_statuses(&self, map: &ClusterMap, deadline: Instant) -> BTreeMap<ShardId, ReplicaStatus> {
        let all = leader_statuses(&self.cell, &self.transport, map.data_shards(), deadline).await;
        all.into_iter().filter_map(|(s, r)| r.ok().map(|st| (s, st))).collect()
    }

    /// Shards whose load stayed over `split_load_qps` for
    /// [`LOAD_SPLIT_ROUNDS`] rounds, with the point that halves it. A
    /// shard whose load one key carries is logged, not split.
    fn sustained_load(&self, map: &ClusterMap, statuses: &BTreeMap<ShardId, ReplicaStatus>) -> BTreeMap<ShardId, u64> {
        let limit = map.rebalance.split_load_qps;
        let mut rounds = self.hot_rounds.lock().unwrap_or_else(|e| e.into_inner());
        if limit == 0 {
            rounds.clear();
            return BTreeMap::new();
        }
        let mut hot = BTreeMap::new();
        for (shard, st) in statuses {
            if st.load.qps < limit {
                rounds.remove(shard);
                continue;
            }
            let n = rounds.entry(*shard).or_insert(0);
            *n += 1;
            match (&st.load.split_at, &st.load.hot_key) {
                (Some(at), _) if *n >= LOAD_SPLIT_ROUNDS => {
                    hot.insert(*shard, *at);
                }
                (None, Some((key, share))) if *n == LOAD_SPLIT_ROUNDS => warn!(
                    shard,
                    qps = st.load.qps,
                    share,
                    key = %String::from_utf8_lossy(key),
                    "a hot key carries most of this shard's load: no split can spread it"
                ),
                _ => {}
            }
        }
        rounds.retain(|s, _| statuses.contains_key(s));
        hot
    }

    /// Records the next split ([`split::choose_split`]) and carries it out
    /// at once: the keys it gives away are refused from the source's apply
    /// until the map lists the new shard, so the steps follow each other
    /// without waiting for the next round.
    async fn start_split(
        &self,
        sizes: &BTreeMap<ShardId, u64>,
        hot: &BTreeMap<ShardId, u64>,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut reason = None;
        let recorded = update_map(&self.cell, &self.transport, deadline, |m| {
            if !m.splits.is_empty() {
                return Ok::<_, Infallible>(None);
            }
            let Some((sp, why)) = split::choose_split(m, sizes, hot, now) else { return Ok(None) };
            let mut next = m.next();
            if m.job.started_ms == 0 || m.job.finished_ms != 0 {
                next.job = JobProgress { started_ms: now, ..JobProgress::default() };
            }
            next.splits.push(sp);
            reason = Some(why);
            Ok(Some(next))
        })
        .await?;
        let Ok(map) = recorded;
        if !map.splits.is_empty() {
            // Recorded; the source has not been asked.
            fail::fail_point!("split_recorded", |_| -> Result<(), StoreError> { std::process::abort() });
        }
        for sp in map.splits.clone() {
            if let Some(why) = reason {
                self.hot_rounds.lock().unwrap_or_else(|e| e.into_inner()).remove(&sp.source);
                let node = self.cell.node().to_string();
                METRICS.splits.with_label_values(&[&node, why.label()]).inc();
                info!(
                    source = sp.source,
                    target = sp.target,
                    at = sp.at,
                    epoch = sp.epoch,
                    reason = why.label(),
                    bytes = sizes.get(&sp.source).copied().unwrap_or(0),
                    "split recorded"
                );
            }
            self.drive_split(&map, &sp, deadline).await?;
        }
        Ok(())
    }

    /// Takes a split as far as it can go: asks the source to apply it
    /// unless its ranges say it has, then lists the new shard in the map.
    /// Every step may repeat: the source applies a split once (its ranges'
    /// epoch), and the map edit checks the split is still recorded.
    async fn drive_split(&self, map: &ClusterMap, sp: &ShardSplit, deadline: Instant) -> Result<(), StoreError> {
        let (cell, transport) = (&self.cell, &self.transport);
        let status = leader_status(cell, transport, sp.source, deadline).await?;
        // From the source's apply (just before its answer) to the map
        // listing the new shard, the keys given away are refused: the fence.
        let mut applied_at = None;
        if status.ranges_epoch < sp.epoch {
            let ranges = split::given_ranges(map, sp);
            let cmd = Command::Split { target: sp.target, ranges, epoch: sp.epoch };
            let proposed = Instant::now();
            match to_leader(cell, transport, sp.source, ShardOp::write(cmd), deadline).await? {
                ShardReply::Outcome(Outcome::Split { epoch }) if epoch >= sp.epoch => {}
                other => return Err(StoreError::Internal(format!("split answered with {other:?}"))),
            }
            applied_at = Some((proposed, Instant::now()));
        }
        // Applied by the source; the map does not list the new shard yet.
        fail::fail_point!("split_before_finish", |_| -> Result<(), StoreError> { std::process::abort() });
        // No membership change runs on a shard being split: these are the
        // voters the split copied.
        let voters = status.voters.clone();
        let mut ended_here = false;
        let ended = update_map(cell, transport, deadline, |m| {
            if !m.splits.contains(sp) {
                return Ok::<_, Infallible>(None);
            }
            let mut next = m.next();
            split::finish_split(&mut next, sp, &voters);
            ended_here = true;
            Ok(Some(next))
        })
        .await?;
        let Ok(m) = ended;
        if ended_here {
            let node = cell.node().to_string();
            let secs = now_ms().saturating_sub(sp.started_ms) as f64 / 1000.0;
            METRICS.split_seconds.with_label_values(&[&node]).observe(secs);
            let listed = Instant::now();
            let fence_ms = applied_at.map(|(_, a)| listed.duration_since(a).as_secs_f64() * 1000.0);
            let upper_ms = applied_at.map(|(p, _)| listed.duration_since(p).as_secs_f64() * 1000.0);
            if let Some(f) = upper_ms {
                METRICS.split_fence_seconds.with_label_values(&[&node]).observe(f / 1000.0);
            }
            info!(
                source = sp.source,
                target = sp.target,
                epoch = m.epoch,
                shards = m.data_shards().count(),
                secs,
                fence_ms = fence_ms.map(|f| format!("{f:.1}")).unwrap_or_else(|| "-".into()),
                fence_upper_ms = upper_ms.map(|f| format!("{f:.1}")).unwrap_or_else(|| "-".into()),
                "split done: the new shard is routed"
            );
        }
        Ok(())
    }

    fn export(&self, map: &ClusterMap) {
        let node = self.cell.node().to_string();
        METRICS.moves_in_progress.with_label_values(&[&node]).set(map.moves.len() as i64);
        for state in [NodeState::Joining, NodeState::Up, NodeState::Draining, NodeState::Down, NodeState::Removed] {
            let n = map.nodes.values().filter(|n| n.state == state).count();
            METRICS.nodes.with_label_values(&[&node, state.label()]).set(n as i64);
        }
    }
}

/// Stops the Rebalancer (node shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for Rebalancer {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
