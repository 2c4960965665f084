//! One replica of one shard: [`Replica`] owns the shard's
//! `raft::RawNode`, ticks it, steps incoming messages and batches the
//! proposals and reads that arrive between two Ready rounds.
//! [`StorageActor`] is its mailbox: a thin actor that lends the state to
//! each message's handler. The Ready rounds themselves are driven by the
//! storage thread's poll loop ([`crate::batch`]), which takes the Readys
//! of every replica of the thread with work in one pass: one RocksDB write,
//! one WAL sync request and one send per peer node for all of them.
//!
//! A client write is answered only after its entry is committed by a
//! majority, durable (WAL fsync) and applied. A linearizable read is
//! answered after a ReadIndex round confirms leadership and the replica has
//! applied up to the read index.
//!
//! A node's replicas share a few storage threads (arbiters), never an HTTP
//! worker's. A thread's round writes without fsync and hands durability to
//! the node's WAL syncer ([`Engine::sync_wal_async`]): one fsync covers the
//! rounds of every shard written meanwhile, and the thread goes on driving
//! other shards while the disk syncs (raft-rs's async Ready:
//! `advance_append_async`, then `on_persist_ready`).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use protobuf::Message as PbMessage;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message as RaftMessage, MessageType,
};
use raft::{RawNode, StateRole};
use ringstore_shared::apply::{self, Effect, Outcome, RequestRecord};
use ringstore_shared::cluster_map::META_SHARD;
use ringstore_shared::codec::CodecError;
use ringstore_shared::command::{Command, Proposal, Request};
use ringstore_shared::config::{Limits, RaftConfig};
use ringstore_shared::keys::{self, data_key};
use ringstore_shared::lease::{failover_wait, lease_span, presume_leader_down, Lease};
use ringstore_shared::lock::{FenceRecord, LockOutcome, LockRecord, SessionId};
use ringstore_shared::value::StoredValue;
use ringstore_shared::{NodeId, ShardId, StoreError};
use rocksdb::WriteBatch;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::clock::Clock;
use crate::engine::{Cf, Engine, EngineError};
use crate::events::{Compacted, Event, EventKind, EventLog, EventPage, KeyFilter};
use crate::hibernate::{self as hib, Hibernation, Wake};
use crate::leaders::LeaderHints;
use crate::load::LoadSampler;
use crate::locks::{LockIndex, Waiter, Waiters};
use crate::log_store::{ApplyState, KeyStats, LogStore};
use crate::messages::{
    DestroyReplica, PeerUnreachable, RaftBatch, ReplicaStatus, ShardOp, ShardReply, ShardRequest, ShardResult,
    TransferLeadership, EVENT_POLLERS_MAX, EVENT_WAIT_MAX_MS, MAP_WATCHERS_MAX, MAP_WATCH_WAIT_MAX_MS,
};
use crate::metrics::ReplicaMetrics;
use crate::registry::RangeRegistry;
use crate::snapshot::{contains_point, data_bounds, OwnedRanges, PointRange};
use crate::transport::{Transport, Undelivered, RAFT_MAILBOX_CAPACITY};

mod hibernate;
mod membership;
mod split;

pub use split::Campaign;

/// Reads that waited this long for a ReadIndex answer are re-issued.
const READ_INDEX_RETRY: Duration = Duration::from_millis(300);

/// Called on the storage thread once a split is durable: the new shard's
/// state is on this node's disk and its replica should start; `true` if
/// this replica led the source (the new replica campaigns at once, so the
/// new shard has a leader within a round trip, not an election timeout).
pub type SplitHook = Arc<dyn Fn(ShardId, bool, SplitOff) + Send + Sync>;

/// What a split's source hands the replica of the new shard on its node.
pub struct SplitOff {
    /// The held locks of the given ranges, from the source's index: taken
    /// instead of scanning the data for lock records.
    pub locks: LockIndex,
    /// The key statistics of the given ranges, which the source counts
    /// (and subtracts from its own, so each key is read once); `None`, or
    /// a count that stops, and the new replica counts them itself.
    pub stats: Option<oneshot::Receiver<KeyStats>>,
}

pub struct ReplicaConfig {
    pub node: NodeId,
    pub shard: ShardId,
    /// The ring points the node's map says this shard owns: used at its
    /// bootstrap (and for data dirs from before shards kept their own).
    /// After that the shard's replicated ranges record decides; keys
    /// elsewhere get `WrongShard`.
    pub ranges: Vec<PointRange>,
    /// The node's map epoch at start, told to a router that sent a key
    /// elsewhere when no split has changed the ranges yet.
    pub epoch: u64,
    /// Voters to bootstrap with if this node has no state for the shard.
    pub initial_voters: Vec<NodeId>,
    pub raft: RaftConfig,
    pub limits: Limits,
    /// Where this replica publishes who leads its shard, for the node's routers.
    pub leaders: Arc<LeaderHints>,
    /// Which points each replica of the node owns.
    pub registry: Arc<RangeRegistry>,
    pub on_split: SplitHook,
    /// A shard just split off: what its source handed over.
    pub split_off: Option<SplitOff>,
}

type Reply = oneshot::Sender<ShardResult>;

/// A watch poll waiting on the leader for a matching event.
struct EventPoller {
    filter: KeyFilter,
    after: u64,
    max: usize,
    until: Instant,
    tx: Reply,
}

/// Client writes that arrive while this leader hands its leadership over
/// wait here rather than being dropped (raft-rs refuses proposals then):
/// once the new leader is known they are sent there at once, and if the
/// transfer is abandoned they are proposed here. Dropped, the router would
/// retry them with a backoff that outlasts the transfer several times.
struct ParkedWrite {
    cmd: Command,
    reply: Reply,
    wait: Option<WaitSpec>,
    request: Option<Request>,
    since: Instant,
}

/// Election timeouts a queued waiter with no reply on the leader (its
/// client did not retry after a leader change) keeps its place before it
/// is dequeued: a retry re-attaches well within it.
const ORPHAN_GRACE_ELECTION_TIMEOUTS: u64 = 3;

/// Writes parked during one leader transfer, at most.
const PARKED_MAX: usize = 4096;

struct PendingWrite {
    term: u64,
    tx: Reply,
    /// An acquire that waits in the lock's queue if it finds the lock held.
    wait: Option<WaitSpec>,
}

/// Names the lock whose queue a waiting acquire may join; the leader keeps
/// its reply until the queue grants the lock or the wait ends.
struct WaitSpec {
    name: String,
}

struct PendingRead {
    key: Vec<u8>,
    kind: ReadKind,
    tx: Reply,
}

enum ReadKind {
    Value,
    /// `key` names a lock: answer with its record and waiters.
    Lock,
    /// The meta shard's cluster map.
    Map,
    /// `key` is a prefix: answer with the matching items.
    Scan {
        after: Option<Vec<u8>>,
        limit: usize,
        keys_only: bool,
    },
    /// `key` is a lock name prefix: answer with the matching lock records.
    Locks {
        after: Option<String>,
        limit: usize,
    },
}

#[derive(Default)]
struct ReadQueue {
    next_ctx: u64,
    /// Arrived since the last Ready round; go out as one ReadIndex.
    unsent: Vec<PendingRead>,
    /// ReadIndex issued, waiting for the leader's confirmation.
    in_flight: HashMap<u64, (Instant, Vec<PendingRead>)>,
    /// Confirmed at a read index; served once applied reaches it.
    confirmed: VecDeque<(u64, Vec<PendingRead>)>,
}

impl ReadQueue {
    fn len(&self) -> usize {
        self.unsent.len()
            + self.in_flight.values().map(|(_, v)| v.len()).sum::<usize>()
            + self.confirmed.iter().map(|(_, v)| v.len()).sum::<usize>()
    }
}

/// The mailbox of one replica. Its handlers borrow the replica's state for
/// the length of one message; the storage thread's round borrows it
/// between messages (see [`crate::batch`]).
pub struct StorageActor {
    r: Rc<RefCell<Replica>>,
}

/// A message the replica's state handles, lent to it by its actor.
pub(crate) trait On<M> {
    type Result;
    fn on(&mut self, msg: M, ctx: &mut Context<StorageActor>) -> Self::Result;
}

/// Handlers that lend the replica's state to [`On`].
macro_rules! lend {
    ($($m:ty => $r:ty),* $(,)?) => {$(
        impl Handler<$m> for StorageActor {
            type Result = $r;
            fn handle(&mut self, m: $m, ctx: &mut Context<Self>) -> $r {
                self.r.borrow_mut().on(m, ctx)
            }
        }
    )*};
}

lend!(
    RaftBatch => (),
    DestroyReplica => Result<(), String>,
    PeerUnreachable => (),
    TransferLeadership => Option<NodeId>,
    ShardRequest => ResponseFuture<ShardResult>,
    split::StatsCounted => (),
    Campaign => (),
);

pub(crate) struct Replica {
    node: NodeId,
    shard: ShardId,
    raw: RawNode<LogStore>,
    engine: Arc<Engine>,
    cfg: RaftConfig,
    limits: Limits,
    transport: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    /// Proposed writes by log index, answered when that index is applied.
    writes: BTreeMap<u64, PendingWrite>,
    reads: ReadQueue,
    flush_scheduled: bool,
    leader: u64,
    sweep_cursor: Vec<u8>,
    /// Which of `ranges` the TTL sweep is in.
    sweep_range: usize,
    /// What the shard owns now (the store's applied ranges record).
    ranges: Arc<Vec<PointRange>>,
    /// The epoch a `WrongShard` names: the split that last changed
    /// `ranges`, or the map's at start if none has.
    epoch: u64,
    registry: Arc<RangeRegistry>,
    on_split: SplitHook,
    /// Splits applied in the round being written: new shards to start
    /// once the write is done.
    splits_done: Vec<(ShardId, LockIndex, Arc<Vec<PointRange>>)>,
    /// Whether this round's split found the key statistics counted (then
    /// its source counts only the given side and derives its own). A second
    /// split in the same round finds them pending (the first's doing).
    split_stats_known: bool,
    /// A split's count of this replica's keys, run by the source.
    stats_from: Option<oneshot::Receiver<KeyStats>>,
    /// Campaigning for a shard just split off (see [`SplitHook`]) until
    /// this instant, or until it leads.
    campaign_until: Option<Instant>,
    /// Leader only: the requests it serves, for splits by load.
    load: LoadSampler,
    /// Meta shard leader: map keepers waiting for an epoch above theirs.
    map_watchers: Vec<(u64, Instant, Reply)>,
    /// Recent changes to user keys, for watch polls.
    events: EventLog,
    /// Leader: watch polls waiting for events.
    event_pollers: Vec<EventPoller>,
    /// Epoch of the cluster map this shard's state machine holds (meta
    /// shard; 0 elsewhere), which `SetMap` must name to replace it.
    map_epoch: u64,
    metrics: ReplicaMetrics,
    leaders: Arc<LeaderHints>,
    /// When this replica last stopped leading, while writes it proposed as
    /// leader are still unresolved.
    stepped_down_at: Option<Instant>,
    locks: LockIndex,
    waiters: Waiters<Reply>,
    /// Answers to waiters that this round's applies settled (granted, or
    /// wait over), sent with the round's other replies.
    settled: Vec<(Reply, ShardResult)>,
    /// Ready rounds written but not yet fsynced, in order, with the
    /// messages that may leave only once they are durable.
    unpersisted: VecDeque<(u64, Vec<RaftMessage>)>,
    parked: Vec<ParkedWrite>,
    /// Reads this replica could not confirm before it handed leadership
    /// over: answered with the new leader's hint once it is known.
    parked_reads: Vec<(Reply, Instant)>,
    /// When this leader last began a leadership transfer.
    transfer_started: Option<Instant>,
    /// Set by [`DestroyReplica`]: its data is gone, nothing more may be
    /// written or answered.
    destroyed: bool,
    /// A learner was added: compact a log that still starts at index 1.
    compact_for_learner: bool,
    /// Its key in the storage thread's registry ([`crate::batch`]).
    slot: u64,
    /// Its own mailbox, once started: where background work reports.
    addr: Option<Addr<StorageActor>>,
    /// Raft messages to send: the thread's round sends every replica's at
    /// its end, one batch per peer node.
    outbox: Vec<RaftMessage>,
    /// Set while the thread's round drives this replica.
    in_round: bool,
    /// Leader only: the read lease its confirmed ReadIndexes bought.
    lease: Lease,
    /// What one confirmed ReadIndex buys; `None`: leases are off.
    lease_span: Option<Duration>,
    /// A replica restarted with state refuses (pre-)votes until then: it
    /// may have confirmed a leader's lease before the crash, which its
    /// fresh election timer no longer honours.
    votes_from: Option<Instant>,
    /// Follower: when a message from its leader last arrived.
    last_heard: Instant,
    /// See [`ringstore_shared::lease::failover_wait`].
    failover_wait: Option<Duration>,
    /// Whether the group sleeps (see [`crate::hibernate`]).
    hibernation: Hibernation,
}

/// One replica's Raft messages of a round, and how they leave.
pub(crate) struct Outbox {
    pub transport: Arc<dyn Transport>,
    pub node: NodeId,
    pub shard: ShardId,
    pub msgs: Vec<RaftMessage>,
}

/// A Ready whose changes are staged into the thread's round and wait for
/// its write (phase 1 done, phase 2 to come: see [`crate::batch`]).
pub(crate) struct StagedReady {
    ready: raft::Ready,
    snapshot: Option<(ApplyState, ConfState, OwnedRanges)>,
    apply: ApplyState,
    replies: Vec<(Reply, ShardResult)>,
    appended: Option<(u64, u64)>,
    hs: Option<HardState>,
    /// Written with an fsync of its own (a snapshot).
    synced: bool,
    /// Raft may count it only once the WAL syncer has synced it.
    durable_later: bool,
}

impl StorageActor {
    /// Opens the replica's Raft state on `engine` and starts it on `arbiter`.
    pub fn start(
        cfg: ReplicaConfig,
        engine: Arc<Engine>,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
        arbiter: &ArbiterHandle,
    ) -> Result<Addr<StorageActor>, StartError> {
        let mut ranges = cfg.ranges;
        // Sorted, so `owns` is a binary search; they must not overlap.
        ranges.sort_unstable_by_key(|r| *r.start());
        assert!(ranges.windows(2).all(|w| w[0].end() < w[1].start()), "shard {} ranges overlap", cfg.shard);
        let (store, fresh) = LogStore::open(engine.clone(), cfg.shard, &cfg.initial_voters, Arc::new(ranges))?;
        let ranges = store.ranges().clone();
        let epoch = match store.ranges_epoch() {
            0 => cfg.epoch,
            e => e,
        };
        cfg.registry.set(cfg.shard, ranges.clone());
        let applied = store.apply_state().applied_index;
        let rc = raft::Config {
            id: cfg.node,
            election_tick: cfg.raft.election_ticks,
            heartbeat_tick: cfg.raft.heartbeat_ticks,
            applied,
            max_size_per_msg: cfg.raft.max_size_per_msg_bytes,
            max_inflight_msgs: cfg.raft.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            // Followers learn a new commit index from the next append or
            // heartbeat instead of an empty append of its own: two messages
            // and two follower rounds fewer per write. Clients are answered
            // by the leader; followers apply a little later.
            skip_bcast_commit: true,
            // Appends to one follower queued in one Ready go as one message.
            batch_append: true,
            ..Default::default()
        };
        rc.validate()?;
        let raw = RawNode::new(&rc, store, &crate::raft_log::logger(cfg.node, cfg.shard))?;
        info!(node = cfg.node, shard = cfg.shard, fresh, applied, "starting shard replica");
        let actor = Replica {
            node: cfg.node,
            shard: cfg.shard,
            raw,
            engine,
            limits: cfg.limits,
            transport,
            clock,
            writes: BTreeMap::new(),
            reads: ReadQueue::default(),
            flush_scheduled: false,
            leader: 0,
            sweep_cursor: Vec::new(),
            sweep_range: 0,
            ranges,
            epoch,
            registry: cfg.registry,
            on_split: cfg.on_split,
            splits_done: Vec::new(),
            split_stats_known: false,
            stats_from: None,
            campaign_until: None,
            load: LoadSampler::default(),
            map_watchers: Vec::new(),
            // Created with the shard (bootstrap, or handed over by a split
            // on this node): the replica's history is the shard's.
            events: EventLog::new(applied, fresh || cfg.split_off.is_some()),
            event_pollers: Vec::new(),
            map_epoch: 0,
            metrics: ReplicaMetrics::new(cfg.node, cfg.shard),
            leaders: cfg.leaders,
            stepped_down_at: None,
            lease_span: lease_span(&cfg.raft),
            failover_wait: failover_wait(&cfg.raft),
            cfg: cfg.raft,
            locks: LockIndex::default(),
            waiters: Waiters::default(),
            settled: Vec::new(),
            unpersisted: VecDeque::new(),
            parked: Vec::new(),
            parked_reads: Vec::new(),
            transfer_started: None,
            destroyed: false,
            compact_for_learner: false,
            slot: crate::batch::new_slot(),
            addr: None,
            outbox: Vec::new(),
            in_round: false,
            lease: Lease::default(),
            votes_from: None,
            last_heard: Instant::now(),
            hibernation: Hibernation::default(),
        };
        let mut actor = actor;
        // A replica new to this node (bootstrapped now, or started by a
        // split on this node) confirmed no one's lease.
        if !fresh && cfg.split_off.is_none() && actor.lease_span.is_some() {
            actor.votes_from = Some(Instant::now() + Duration::from_millis(actor.cfg.election_timeout_ms()));
        }
        match cfg.split_off {
            Some(SplitOff { locks, stats }) => {
                actor.stats_from = stats;
                actor.locks = locks;
                actor.metrics.locks_held.set(actor.locks.held() as i64);
            }
            None => actor.rebuild_lock_index(),
        }
        actor.reload_map_epoch();
        Ok(StorageActor::start_in_arbiter(arbiter, move |_| StorageActor { r: Rc::new(RefCell::new(actor)) }))
    }
}

impl Replica {
    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn not_leader(&self) -> StoreError {
        let l = self.raw.raft.leader_id;
        StoreError::NotLeader { shard: self.shard, hint: (l != 0 && l != self.node).then_some(l) }
    }

    /// Whether `key` (a user key or lock name) is in this shard's ranges
    /// (sorted: a binary search over ~1,024 intervals).
    fn owns(&self, key: &[u8]) -> bool {
        self.owns_point(ringstore_shared::hash::key_point(key))
    }

    /// A multi-key write (transaction, delete page) whose first key is
    /// here but some other key is not: those keys are on another shard now
    /// (a split parted keys with no common hash tag), so no retry helps.
    fn foreign_keys(&self, cmd: &Command) -> Option<StoreError> {
        let mut keys: Box<dyn Iterator<Item = &[u8]>> = match cmd {
            Command::Txn(txn) => Box::new(txn.keys()),
            Command::DeleteKeys { keys } => Box::new(keys.iter().map(|(k, _)| k.as_slice())),
            _ => return None,
        };
        let foreign = keys.find(|k| !self.owns(k))?;
        Some(StoreError::BadRequest(format!(
            "the keys are not all on one shard: {:?} is not on shard {} (map epoch {}); keys that must share a \
             shard share a hash tag, such as {{user42}}/a and {{user42}}/b",
            String::from_utf8_lossy(foreign),
            self.shard,
            self.epoch
        )))
    }

    fn owns_point(&self, p: u64) -> bool {
        contains_point(&self.ranges, p)
    }

    /// A `data` family key (ring point first) in this shard's ranges.
    fn owns_data_key(&self, k: &[u8]) -> bool {
        keys::split_data_key(k).is_some_and(|(p, _)| self.owns_point(p))
    }

    fn pending(&self) -> usize {
        self.writes.len() + self.reads.len() + self.waiters.len()
    }

    /// Enters this replica into its thread's next round, which runs once
    /// the messages already queued on the thread are handled: every
    /// proposal and read they bring joins it.
    pub(crate) fn schedule_flush(&mut self) {
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            crate::batch::mark(self.slot);
        }
    }

    /// Storage failures leave Raft's durability promise unknowable: stop
    /// the process rather than answer from a state we cannot trust.
    pub(crate) fn fatal(&self, what: &str, e: impl std::fmt::Display) -> ! {
        error!(node = self.node, shard = self.shard, "fatal storage error while {what}: {e}");
        std::process::abort();
    }

    /// Queues Raft messages for the thread's round, which sends those of
    /// every replica together (one batch per peer node).
    fn send(&mut self, msgs: Vec<RaftMessage>) {
        if msgs.is_empty() {
            return;
        }
        self.metrics.messages_sent.inc_by(msgs.len() as u64);
        self.outbox.extend(msgs);
        if !self.in_round {
            self.schedule_flush();
        }
    }

    /// The messages queued for the round's send.
    pub(crate) fn take_outbox(&mut self) -> Option<Outbox> {
        if self.outbox.is_empty() {
            return None;
        }
        let msgs = std::mem::take(&mut self.outbox);
        // A destroyed replica is no longer a member of its group.
        if self.destroyed {
            return None;
        }
        Some(Outbox { transport: self.transport.clone(), node: self.node, shard: self.shard, msgs })
    }

    /// A message the transport knows it did not deliver.
    pub(crate) fn undelivered(&mut self, lost: Undelivered) {
        // Move the peer's progress back to probing; a snapshot it never
        // got must be reported or the leader waits for it forever.
        self.raw.report_unreachable(lost.to);
        if lost.snapshot {
            self.raw.report_snapshot(lost.to, raft::SnapshotStatus::Failure);
        }
        self.schedule_flush();
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub(crate) fn slot(&self) -> u64 {
        self.slot
    }

    pub(crate) fn shard(&self) -> ShardId {
        self.shard
    }

    pub(crate) fn set_in_round(&mut self, on: bool) {
        self.in_round = on;
    }

    /// Proposes one of the leader's own commands (sweeps, expiry, handoffs).
    fn propose(&mut self, cmd: &Command, reply: Option<Reply>) -> Result<(), StoreError> {
        self.propose_waiting(cmd, reply, None, None)
    }

    /// `request`: the client write's id, so a retry of it applies once.
    fn propose_waiting(
        &mut self,
        cmd: &Command,
        reply: Option<Reply>,
        wait: Option<WaitSpec>,
        request: Option<Request>,
    ) -> Result<(), StoreError> {
        self.wake(Wake::Request);
        if let Some(reply) = reply {
            if self.raw.raft.lead_transferee.is_some() && self.parked.len() < PARKED_MAX {
                self.metrics.proposals_parked.inc();
                self.parked.push(ParkedWrite { cmd: cmd.clone(), reply, wait, request, since: Instant::now() });
                return Ok(());
            }
            let index = self.append_proposal(cmd, request)?;
            self.writes.insert(index, PendingWrite { term: self.raw.raft.term, tx: reply, wait });
            return Ok(());
        }
        self.append_proposal(cmd, request).map(drop)
    }

    /// Appends `cmd` to the leader's log; returns its index.
    fn append_proposal(&mut self, cmd: &Command, request: Option<Request>) -> Result<u64, StoreError> {
        // Stamps never go back, even if this leader's clock is behind the
        // previous one's: TTL decisions stay monotonic.
        let stamp_ms = self.clock.now_ms().max(self.raw.store().apply_state().applied_stamp_ms);
        let data = Proposal::encode_parts(stamp_ms, request, cmd);
        let before = self.raw.raft.raft_log.last_index();
        if self.raw.propose(vec![], data).is_err() {
            self.metrics.proposals_dropped.inc();
            return Err(StoreError::Dropped { reason: "replica is not an active leader" });
        }
        let index = self.raw.raft.raft_log.last_index();
        // A leader appends a proposal at once; anything else is a raft bug.
        assert_eq!(index, before + 1, "proposal was not appended at last_index + 1");
        self.metrics.proposals_accepted.inc();
        Ok(index)
    }

    // ---------------------------------------------------------------
    // The Ready round, in two phases around the thread's one write (see
    // [`crate::batch`]). Order matters; each step says why it is where it is.
    // ---------------------------------------------------------------

    /// Phase 1: batched reads go out, and the Ready, if any, is staged
    /// into `batch`, the thread's one write of this round.
    pub(crate) fn begin_round(&mut self, batch: &mut WriteBatch) -> Option<StagedReady> {
        self.flush_scheduled = false;
        if self.destroyed {
            return None;
        }
        self.issue_reads();
        if !self.raw.has_ready() {
            // Lease reads of an applied index need no Ready.
            self.serve_confirmed_reads();
            return None;
        }
        let mut ready = self.raw.ready();
        self.metrics.ready_rounds.inc();

        // 1. Role changes first: reads in flight under an old leadership
        //    cannot be confirmed any more and are safe to retry elsewhere.
        if let Some(ss) = ready.ss() {
            self.on_role_change(ss.leader_id, ss.raft_state);
        }

        // 2. A leader may send its messages before persisting its own
        //    entries (Raft thesis 10.2.1): the disk write and the network
        //    round trip overlap.
        self.send(ready.take_messages());

        // 3. Everything this round changes goes into one WriteBatch: a
        //    snapshot from the leader, committed entries (raft-rs hands out
        //    only entries already durable here), new entries, hard state.
        //    A snapshot is written and synced on its own, at once: raft-rs
        //    applies it at once (applied jumps to its index), which it
        //    allows only once it is persisted. That fsync covers every
        //    earlier round of this replica as well, all written by now.
        if !ready.snapshot().is_empty() {
            let mut own = self.engine.batch();
            let staged = self.stage_ready(&mut own, ready);
            if let Err(e) = self.engine.write(own, self.cfg.sync_wal) {
                self.fatal("persisting a snapshot", e);
            }
            self.finish_ready(staged);
            self.more_work();
            return None;
        }

        // 4. Otherwise the Ready joins the thread's shared batch: one write
        //    for every replica of this thread with a Ready now. What Raft
        //    needs durable (entries, vote, term) is made so by the node's WAL
        //    syncer, asked once for the whole batch; a round behind an
        //    unsynced one waits too, since rounds persist in order.
        Some(self.stage_ready(batch, ready))
    }

    /// Phase 2, once the round's batch is written. Returns the Ready's
    /// number if it waits for the WAL sync.
    pub(crate) fn finish_round(&mut self, staged: StagedReady) -> Option<u64> {
        let persist = staged.durable_later.then(|| staged.ready.number());
        self.finish_ready(staged);
        self.more_work();
        persist
    }

    /// Another round if raft-rs has more, or reads wait to go out.
    fn more_work(&mut self) {
        if self.raw.has_ready() || !self.reads.unsent.is_empty() {
            self.schedule_flush();
        }
    }

    /// Everything the Ready changes, staged into `batch`.
    fn stage_ready(&mut self, batch: &mut WriteBatch, mut ready: raft::Ready) -> StagedReady {
        let mut snapshot = None;
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot();
            match self.raw.store().stage_snapshot(batch, snap) {
                Ok((a, owned)) => snapshot = Some((a, snap.get_metadata().get_conf_state().clone(), owned)),
                Err(e) => self.fatal("staging a snapshot", e),
            }
        }
        let mut apply = match &snapshot {
            Some((a, _, _)) => *a,
            None => *self.raw.store().apply_state(),
        };
        let mut replies = Vec::new();
        self.stage_apply(batch, ready.take_committed_entries(), &mut apply, &mut replies);
        let appended = self.raw.store().stage_append(batch, ready.entries());
        self.metrics.ready_entries.observe(ready.entries().len() as f64);
        let hs = ready.hs().cloned();
        if let Some(hs) = &hs {
            self.raw.store().stage_hard_state(batch, hs);
        }
        let synced = snapshot.is_some() && self.cfg.sync_wal;
        let durable_later = !synced && ((ready.must_sync() && self.cfg.sync_wal) || !self.unpersisted.is_empty());
        StagedReady { ready, snapshot, apply, replies, appended, hs, synced, durable_later }
    }

    /// Once the Ready's batch is written: in-memory views, replies, advance.
    fn finish_ready(&mut self, staged: StagedReady) {
        let StagedReady { mut ready, snapshot, apply, replies, appended, hs, synced, durable_later } = staged;
        if synced {
            for (_, msgs) in std::mem::take(&mut self.unpersisted) {
                self.send(msgs);
            }
        }

        // 5. The write is readable now, so the in-memory views may follow
        //    (raft-rs reads entries back through `Storage` before they are
        //    durable; it counts them only once told they are). Replies are
        //    for committed entries, which were durable before this round.
        let store = self.raw.mut_store();
        if let Some((a, cs, owned)) = snapshot {
            store.commit_snapshot(a, cs, owned);
            self.adopt_ranges();
            self.metrics.snapshots_applied.inc();
            self.rebuild_lock_index();
            self.reload_map_epoch();
            info!(node = self.node, shard = self.shard, index = a.applied_index, "applied snapshot");
            self.on_snapshot_applied(a.applied_index);
        }
        let store = self.raw.mut_store();
        if let Some(last) = appended {
            store.commit_append(last, ready.entries());
        }
        if let Some(hs) = hs {
            store.commit_hard_state(hs);
        }
        store.commit_apply_state(apply);
        self.answer(replies);
        self.start_split_shards();

        // 6. Leadership confirmations for batched reads.
        self.on_read_states(ready.take_read_states());

        // 7. Messages that must follow persistence (votes, append acks) wait
        //    for the fsync (asked for by the round); raft-rs learns of it in
        //    `on_persisted`, and the entries it then commits come in a later
        //    round.
        if durable_later {
            let number = ready.number();
            self.unpersisted.push_back((number, ready.take_persisted_messages()));
            self.raw.advance_append_async(ready);
        } else {
            // 8. Nothing to make durable: advance at once. The light ready
            //    carries what this round made committed.
            self.send(ready.take_persisted_messages());
            let mut light = self.raw.advance_append(ready);
            self.send(light.take_messages());
            let committed = light.take_committed_entries();
            let commit = light.commit_index();
            if !committed.is_empty() || commit.is_some() {
                let mut batch = self.engine.batch();
                let mut apply = *self.raw.store().apply_state();
                let mut replies = Vec::new();
                self.stage_apply(&mut batch, committed, &mut apply, &mut replies);
                let hs = commit.map(|c| {
                    let mut hs = self.raw.store().hard_state().clone();
                    hs.commit = c;
                    hs
                });
                if let Some(hs) = &hs {
                    self.raw.store().stage_hard_state(&mut batch, hs);
                }
                // No fsync: applied entries are durable in the log; a crash
                // replays them from the last persisted apply state.
                if let Err(e) = self.engine.write(batch, false) {
                    self.fatal("applying committed entries", e);
                }
                let store = self.raw.mut_store();
                if let Some(hs) = hs {
                    store.commit_hard_state(hs);
                }
                store.commit_apply_state(apply);
                self.answer(replies);
                self.start_split_shards();
            }
        }
        let applied = self.raw.store().apply_state().applied_index;
        self.raw.advance_apply_to(applied);
        self.events.advance(applied);

        // 9. Reads whose read index is now applied (waiters the round's
        //    lock changes settled were answered with its replies).
        self.serve_confirmed_reads();
        self.serve_map_watchers();
        self.serve_event_pollers();
        if std::mem::take(&mut self.compact_for_learner) {
            self.compact_for_new_replica();
        }
        self.maybe_compact_log();
        self.update_gauges();
    }

    /// The WAL is durable up to Ready `number`: tell raft-rs (which may now
    /// count this replica's entries toward commit), then send what had to
    /// wait for the disk.
    pub(crate) fn on_persisted(&mut self, number: u64) {
        self.raw.on_persist_ready(number);
        while self.unpersisted.front().is_some_and(|(n, _)| *n <= number) {
            if let Some((_, msgs)) = self.unpersisted.pop_front() {
                self.send(msgs);
            }
        }
    }

    /// Applies committed entries into `batch`. Later entries of the same
    /// batch see earlier ones through `overlay`, so two conditional writes
    /// to one key in one round decide correctly.
    fn stage_apply(
        &mut self,
        batch: &mut WriteBatch,
        entries: Vec<Entry>,
        apply: &mut ApplyState,
        replies: &mut Vec<(Reply, ShardResult)>,
    ) {
        if entries.is_empty() {
            return;
        }
        let mut overlay: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let n = entries.len();
        for entry in entries {
            let index = entry.index;
            if index <= apply.applied_index {
                continue; // covered by a snapshot applied this round
            }
            debug_assert_eq!(index, apply.applied_index + 1, "entries applied out of order");
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => None, // new leader's no-op
                EntryType::EntryNormal => Some(self.apply_normal(batch, &entry, apply, &mut overlay)),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    Some(self.apply_conf_change(batch, &entry))
                }
            };
            apply.applied_index = index;
            if let Some(p) = self.writes.remove(&index) {
                let answer = if p.term == entry.term {
                    result.unwrap_or(Err(StoreError::Internal("entry carried no command".into())))
                } else {
                    // Another leader's entry took this index: ours was never
                    // applied, so the router may retry it.
                    Err(StoreError::Dropped { reason: "entry replaced by a new leader" })
                };
                let queued = match &answer {
                    Ok(ShardReply::Outcome(Outcome::Lock {
                        outcome: LockOutcome::Queued { session, wait_until_ms, .. },
                        now_ms,
                    })) => Some((*session, wait_until_ms.saturating_sub(*now_ms))),
                    _ => None,
                };
                match (p.wait, queued) {
                    // Queued: the leader answers once the queue grants the
                    // lock or the wait ends.
                    (Some(w), Some((session, left_ms))) => {
                        let deadline = Instant::now() + Duration::from_millis(left_ms);
                        let waiter = Waiter { session, deadline, leaving: false, reply: p.tx };
                        if let Some(old) = self.waiters.insert(&w.name, waiter) {
                            let _ =
                                old.reply.send(Err(StoreError::Dropped { reason: "a retry of this acquire waits" }));
                        }
                    }
                    _ => replies.push((p.tx, answer)),
                }
            }
            replies.append(&mut self.settled);
        }
        self.raw.store().stage_apply_state(batch, apply);
        self.metrics.applied_entries.inc_by(n as u64);
    }

    fn apply_normal(
        &mut self,
        batch: &mut WriteBatch,
        entry: &Entry,
        apply: &mut ApplyState,
        overlay: &mut HashMap<Vec<u8>, Option<Vec<u8>>>,
    ) -> ShardResult {
        let proposal = match Proposal::decode(&entry.data) {
            Ok(p) => p,
            Err(e) => {
                // Deterministic on every replica: all skip the same entry.
                error!(node = self.node, shard = self.shard, index = entry.index, "undecodable entry skipped: {e}");
                return Err(StoreError::Internal(format!("undecodable entry: {e}")));
            }
        };
        apply.applied_stamp_ms = apply.applied_stamp_ms.max(proposal.stamp_ms);
        let stamp_ms = proposal.stamp_ms;
        // Ownership is checked again at apply: a command accepted before a
        // split but ordered after it in the log must not touch points the
        // new shard owns now. Every replica decides the same here.
        if proposal.cmd.routing_key().is_some_and(|k| !self.owns(k)) || self.foreign_keys(&proposal.cmd).is_some() {
            return Err(StoreError::WrongShard { shard: self.shard, epoch: self.epoch });
        }
        let mut proposal = proposal;
        match &mut proposal.cmd {
            Command::Split { target, ranges, epoch } => {
                let (target, epoch, give) = (*target, *epoch, std::mem::take(ranges));
                return self.apply_split(batch, entry.index, apply, target, give, epoch);
            }
            Command::Expire { keys } => keys.retain(|(k, _)| self.owns(k)),
            Command::ForgetRequests { keys } => keys.retain(|k| self.owns_data_key(k)),
            _ => {}
        }
        let dequeue = match &proposal.cmd {
            Command::LockDequeue { name, .. } => Some(name.clone()),
            _ => None,
        };
        let waiting_acquire = matches!(proposal.cmd, Command::LockAcquire { wait_ms: 1.., .. });
        let sent_again = proposal.request.is_some_and(|r| r.retry);
        let mut view =
            ApplyView { engine: &self.engine, overlay, map_epoch: self.map_epoch, err: None, retries_found: 0 };
        let (effects, outcome) = apply::decide(proposal, entry.index, entry.term, &mut view);
        if let Some(e) = view.err {
            self.fatal("reading state during apply", e);
        }
        if view.retries_found > 0 {
            // A first try found already applied committed after its retry:
            // rare (a forwarded request delayed in the network), counted
            // apart since without the lookup it would undo later writes.
            match sent_again {
                true => self.metrics.retries_deduplicated.inc(),
                false => self.metrics.late_first_tries_deduplicated.inc(),
            }
        }
        let reattached = waiting_acquire && view.retries_found > 0;
        if let Outcome::Expired { count } = outcome {
            self.metrics.ttl_expired_keys.inc_by(count as u64);
        }
        if let (Outcome::Lock { outcome: o, .. }, true) = (&outcome, self.is_leader()) {
            match o {
                LockOutcome::Granted { .. } => self.metrics.lock_granted.inc(),
                LockOutcome::Conflict { .. } => self.metrics.lock_conflicts.inc(),
                LockOutcome::Released { hold_count: 0 } => self.metrics.lock_released.inc(),
                LockOutcome::Queued { .. } => self.metrics.lock_queued.inc(),
                LockOutcome::QueueFull { .. } => self.metrics.lock_queue_full.inc(),
                _ => {}
            }
            if reattached && matches!(o, LockOutcome::Queued { .. } | LockOutcome::Granted { .. }) {
                // A waiter found its place (or its grant) again after its
                // answer was lost, most often with a leader change.
                self.metrics.lock_waiters_reattached.inc();
            }
        }
        for effect in effects {
            let (k, v) = match effect {
                Effect::PutMap { map } => {
                    if let Outcome::MapSet { epoch } = outcome {
                        self.map_epoch = epoch;
                        info!(node = self.node, shard = self.shard, epoch, "cluster map replaced");
                    }
                    self.raw.store().stage_map(batch, &map);
                    continue;
                }
                Effect::Put { key, value, replaced } => {
                    apply.on_put(replaced, apply::footprint(&key, &value));
                    let encoded = value.encode();
                    let event = Event { index: entry.index, kind: EventKind::Put, value: Some(value), key };
                    let k = data_key(&event.key);
                    self.events.push(event);
                    (k, Some(encoded))
                }
                Effect::Delete { key, removed, expired } => {
                    apply.on_delete(removed);
                    let k = data_key(&key);
                    // A delete that found the key already expired removes
                    // what the sweep would have: watchers see an expiry, as
                    // the client saw no key.
                    let kind = if expired { EventKind::Expire } else { EventKind::Delete };
                    self.events.push(Event { index: entry.index, kind, value: None, key });
                    (k, None)
                }
                Effect::PutLock { name, record } => {
                    self.locks.on_record(&name, &record);
                    self.settle_waiters(&name, &record, stamp_ms);
                    (keys::lock_key(name.as_bytes()), Some(record.encode()))
                }
                Effect::PutFences { key, record } => (keys::fence_key(&key), Some(record.encode())),
                Effect::PutRequest { key, record } => (key, Some(record.encode())),
                Effect::DeleteRequest { key } => (key, None),
            };
            match &v {
                Some(v) => self.engine.put(batch, Cf::Data, &k, v),
                None => self.engine.delete(batch, Cf::Data, &k),
            }
            overlay.insert(k, v);
        }
        if let (Some(name), Outcome::Lock { outcome: LockOutcome::Dequeued { removed: false }, .. }) =
            (dequeue, &outcome)
        {
            // A dequeue that removed nothing wrote no record, so nothing
            // was settled: a reply still here for a session no longer
            // queued is settled against the record as it stands.
            let record = view_lock(&self.engine, overlay, &name).unwrap_or_default();
            self.settle_waiters(&name, &record, stamp_ms);
        }
        match outcome {
            Outcome::PreconditionFailed { current } => Err(StoreError::PreconditionFailed { current }),
            Outcome::NotFound => Err(StoreError::NotFound),
            Outcome::Fenced { lock, highest } => Err(StoreError::Fenced { lock, highest }),
            o => Ok(ShardReply::Outcome(o)),
        }
    }

    /// Applies a membership change; the answer (to the leader that
    /// proposed it) is the status with the new configuration.
    fn apply_conf_change(&mut self, batch: &mut WriteBatch, entry: &Entry) -> ShardResult {
        let cs = if entry.get_entry_type() == EntryType::EntryConfChange {
            ConfChange::parse_from_bytes(&entry.data).map(|cc| self.raw.apply_conf_change(&cc))
        } else {
            ConfChangeV2::parse_from_bytes(&entry.data).map(|cc| self.raw.apply_conf_change(&cc))
        };
        match cs {
            Ok(Ok(cs)) => {
                self.raw.store().stage_conf_state(batch, &cs);
                info!(
                    node = self.node,
                    shard = self.shard,
                    index = entry.index,
                    voters = ?cs.voters,
                    learners = ?cs.learners,
                    outgoing = ?cs.voters_outgoing,
                    "membership changed"
                );
                if cs.learners.len() > self.raw.store().conf_state().learners.len() {
                    // Every replica, not only the leader of the moment, makes
                    // sure the learner gets a snapshot (data dirs bootstrapped
                    // before INIT_LOG_INDEX still have a log from index 1).
                    self.compact_for_learner = true;
                }
                let member = cs.voters.contains(&self.node)
                    || cs.learners.contains(&self.node)
                    || cs.voters_outgoing.contains(&self.node);
                if !member {
                    warn!(node = self.node, shard = self.shard, "this replica was removed from its shard");
                }
                self.raw.mut_store().commit_conf_state(cs);
                self.metrics.conf_changes.inc();
                Ok(ShardReply::Status(self.status()))
            }
            Ok(Err(e)) => {
                warn!(node = self.node, shard = self.shard, "conf change refused: {e}");
                Err(StoreError::BadRequest(format!("membership change refused: {e}")))
            }
            Err(e) => {
                error!(node = self.node, shard = self.shard, "undecodable conf change: {e}");
                Err(StoreError::Internal(format!("undecodable conf change: {e}")))
            }
        }
    }

    fn answer(&self, replies: Vec<(Reply, ShardResult)>) {
        for (tx, r) in replies {
            let _ = tx.send(r); // the client may have given up; nothing to do
        }
    }

    fn on_role_change(&mut self, leader: u64, role: StateRole) {
        // Messages woke a sleeper before its role could change.
        self.hibernation.touch();
        if leader != self.leader {
            info!(node = self.node, shard = self.shard, leader, ?role, term = self.raw.raft.term, "leader changed");
            self.leader = leader;
        }
        self.leaders.observe(self.shard, (leader != 0).then_some(leader), self.raw.raft.term);
        // A lease belongs to one leadership; a new one earns its own.
        self.lease.revoke();
        if role == StateRole::Leader {
            self.locks.forget_proposals();
            self.stepped_down_at = None;
            self.transfer_started = None;
        }
        if role != StateRole::Leader {
            // Stepping down to a transfer this leader began, before it
            // knows the new leader: its reads wait for the hint rather
            // than go into the router's backoff.
            let window = Duration::from_millis(self.cfg.election_timeout_ms());
            let handing_over = leader == 0 && self.transfer_started.is_some_and(|t| t.elapsed() < window);
            self.load.reset();
            if !self.writes.is_empty() && self.stepped_down_at.is_none() {
                self.stepped_down_at = Some(Instant::now());
            }
            // A waiter's place is in the replicated queue: the router's
            // retry (same request id) finds it again at the new leader.
            for w in self.waiters.drain_all() {
                let _ = w.reply.send(Err(waiter_moved()));
            }
            let err = self.not_leader();
            let unsent = self.reads.unsent.drain(..);
            let in_flight = self.reads.in_flight.drain().flat_map(|(_, (_, rs))| rs);
            let now = Instant::now();
            for r in unsent.chain(in_flight) {
                if handing_over && self.parked_reads.len() < PARKED_MAX {
                    self.parked_reads.push((r.tx, now));
                } else {
                    let _ = r.tx.send(Err(err.clone()));
                }
            }
        }
        self.release_parked();
    }

    /// Writes and reads parked during a leader transfer go on once it has
    /// ended: to the new leader (the router follows the hint at once), or,
    /// writes, into this leader's log if the transfer was abandoned. Past
    /// an election timeout with no leader known they are dropped (the
    /// router retries).
    fn release_parked(&mut self) {
        if self.parked.is_empty() && self.parked_reads.is_empty() {
            return;
        }
        let leading = self.is_leader();
        let known = self.raw.raft.leader_id;
        let timeout = Duration::from_millis(self.cfg.election_timeout_ms());
        let expired = self.parked_reads.iter().any(|(_, since)| since.elapsed() >= timeout);
        if leading || known != 0 || expired {
            let err = match known {
                0 => StoreError::Dropped { reason: "leader transfer ended with no leader known" },
                _ => self.not_leader(),
            };
            for (tx, _) in self.parked_reads.drain(..) {
                let _ = tx.send(Err(err.clone()));
            }
        }
        if leading && self.raw.raft.lead_transferee.is_some() {
            return;
        }
        for p in std::mem::take(&mut self.parked) {
            if leading {
                match self.append_proposal(&p.cmd, p.request) {
                    Ok(index) => {
                        self.writes.insert(index, PendingWrite { term: self.raw.raft.term, tx: p.reply, wait: p.wait });
                    }
                    Err(e) => {
                        let _ = p.reply.send(Err(e));
                    }
                }
            } else if known != 0 && known != self.node {
                let _ = p.reply.send(Err(StoreError::NotLeader { shard: self.shard, hint: Some(known) }));
            } else if p.since.elapsed() >= timeout {
                let _ = p.reply.send(Err(StoreError::Dropped { reason: "leader transfer ended with no leader known" }));
            } else {
                self.parked.push(p);
            }
        }
    }

    /// Writes this replica proposed as leader stay pending after it steps
    /// down: the new leader may still commit them (a handover usually
    /// does, within a heartbeat or two), and then they are answered as
    /// usual. A replica that learns nothing for an election timeout after
    /// stepping down is cut off; its writes may or may not commit later, so
    /// they are answered "outcome unknown" now rather than at the client's
    /// deadline. The router retries them elsewhere under the same request
    /// id, which the state machine applies at most once.
    fn fail_orphaned_writes(&mut self) {
        let Some(at) = self.stepped_down_at else { return };
        if self.writes.is_empty() || self.is_leader() {
            self.stepped_down_at = None;
            return;
        }
        if at.elapsed() < Duration::from_millis(self.cfg.election_timeout_ms()) {
            return;
        }
        warn!(
            node = self.node,
            shard = self.shard,
            writes = self.writes.len(),
            "leadership lost: answering its writes outcome-unknown"
        );
        for (_, p) in std::mem::take(&mut self.writes) {
            let _ = p.tx.send(Err(StoreError::OutcomeUnknown {
                reason: format!("shard {} lost its leader on this node", self.shard),
            }));
        }
        self.stepped_down_at = None;
    }

    fn on_snapshot_applied(&mut self, index: u64) {
        self.events.restored(index);
        // Writes at or below the snapshot were applied (or replaced) on the
        // leader; this replica cannot tell which.
        let covered: Vec<u64> = self.writes.range(..=index).map(|(i, _)| *i).collect();
        for i in covered {
            if let Some(p) = self.writes.remove(&i) {
                let _ =
                    p.tx.send(Err(StoreError::OutcomeUnknown { reason: "replica restored from a snapshot".into() }));
            }
        }
    }

    fn on_read_states(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            let Ok(ctx) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else { continue };
            if let Some((issued, reads)) = self.reads.in_flight.remove(&u64::from_be_bytes(ctx)) {
                if let Some(span) = self.lease_span {
                    self.lease.confirmed(issued, span);
                }
                self.reads.confirmed.push_back((rs.index, reads));
            }
        }
    }

    /// A follower whose leader's node looks down (the transport's link to
    /// it is) gives the leader up once any lease it confirmed has run out
    /// (see [`ringstore_shared::lease`]), rather than waiting out a whole
    /// election timeout, and campaigns after a random pause of up to two
    /// ticks so that two such followers rarely split the vote.
    fn fast_failover(&mut self, ctx: &mut Context<StorageActor>) {
        let leader = self.raw.raft.leader_id;
        // Only a voter may stand. raft-rs checks that on its own timer but
        // not in `campaign()`: a replica still waiting for its first
        // snapshot (no configuration) would elect itself and panic.
        let voter = self.raw.raft.promotable();
        if !voter || self.raw.raft.state != StateRole::Follower || leader == 0 || leader == self.node {
            return;
        }
        let (transport, node) = (&self.transport, self.node);
        if !presume_leader_down(self.last_heard.elapsed(), self.failover_wait, || !transport.reachable(node, leader)) {
            return;
        }
        warn!(node = self.node, shard = self.shard, leader, "leader's node is unreachable: campaigning early");
        self.metrics.fast_failovers.inc();
        let term = self.raw.raft.term;
        self.raw.raft.become_follower(term, raft::INVALID_ID);
        let pause = Duration::from_millis(rand::random::<u64>() % (2 * self.cfg.tick_interval_ms).max(1));
        ctx.run_later(pause, |act, _| {
            let mut act = act.r.borrow_mut();
            let r = &act.raw.raft;
            if !act.destroyed && r.promotable() && r.leader_id == 0 && r.state == StateRole::Follower {
                if let Err(e) = act.raw.campaign() {
                    debug!(node = act.node, shard = act.shard, "early campaign refused: {e}");
                }
                act.schedule_flush();
            }
        });
        self.schedule_flush();
    }

    /// Hands leadership to `target`. The transferee campaigns past the
    /// followers' refusal, so this leader's lease means nothing from here
    /// until the transfer has surely ended (two election timeouts).
    fn begin_transfer(&mut self, target: NodeId) {
        info!(node = self.node, shard = self.shard, target, "transferring leadership");
        self.wake(Wake::Request);
        let now = Instant::now();
        self.transfer_started = Some(now);
        self.lease.suspend(now, Duration::from_millis(2 * self.cfg.election_timeout_ms()));
        self.raw.transfer_leader(target);
    }

    fn issue_reads(&mut self) {
        if self.reads.unsent.is_empty() {
            return;
        }
        if !self.is_leader() {
            let err = self.not_leader();
            for r in self.reads.unsent.drain(..) {
                let _ = r.tx.send(Err(err.clone()));
            }
            return;
        }
        // raft-rs ignores a ReadIndex until the leader has committed an
        // entry of its term (its no-op, one round trip after the election):
        // hold the reads until then rather than lose them to the 300 ms
        // retry. A new shard's leader meets its first reads just so.
        if !self.raw.raft.commit_to_current_term() {
            return;
        }
        // Under a lease this leader's commit index is the newest: reads are
        // served once it is applied, with no round to the followers. A
        // ReadIndex (with no reads of its own) renews the lease before it
        // runs out, so steady traffic keeps it.
        let now = Instant::now();
        if self.raw.raft.lead_transferee.is_none() && self.lease_valid(now) {
            let reads = std::mem::take(&mut self.reads.unsent);
            self.metrics.lease_reads.inc_by(reads.len() as u64);
            self.reads.confirmed.push_back((self.raw.raft.raft_log.committed, reads));
            let margin = self.lease_span.unwrap_or_default() / 4;
            if self.lease.expiring(now, margin) && self.reads.in_flight.is_empty() {
                self.issue_read_index(Vec::new());
            }
            return;
        }
        let reads = std::mem::take(&mut self.reads.unsent);
        self.issue_read_index(reads);
    }

    fn lease_valid(&self, now: Instant) -> bool {
        // A planted bug for the fault suite to find (test builds only): a
        // lease that never ends serves stale reads from a deposed leader.
        fail::fail_point!("bug_read_lease_never_expires", |_| self.lease_span.is_some());
        self.lease.valid(now)
    }

    fn issue_read_index(&mut self, reads: Vec<PendingRead>) {
        let ctx = self.reads.next_ctx;
        self.reads.next_ctx += 1;
        self.raw.read_index(ctx.to_be_bytes().to_vec());
        self.metrics.read_index.inc();
        self.reads.in_flight.insert(ctx, (Instant::now(), reads));
    }

    fn serve_confirmed_reads(&mut self) {
        let applied = self.raw.store().apply_state().applied_index;
        let now = self.read_now_ms(false);
        while self.reads.confirmed.front().is_some_and(|(i, _)| *i <= applied) {
            let Some((_, reads)) = self.reads.confirmed.pop_front() else { break };
            for r in reads {
                let answer = match &r.kind {
                    // A split applied since the read arrived gave the key away.
                    ReadKind::Value | ReadKind::Lock if !self.owns(&r.key) => {
                        Err(StoreError::WrongShard { shard: self.shard, epoch: self.epoch })
                    }
                    ReadKind::Value => self.read_local(&r.key, now),
                    ReadKind::Lock => self.read_lock(&r.key, now),
                    ReadKind::Map => {
                        self.raw.store().read_map().map(ShardReply::Map).map_err(|e| StoreError::Engine(e.to_string()))
                    }
                    ReadKind::Scan { after, limit, keys_only } => {
                        self.scan_local(&r.key, after.as_deref(), *limit, *keys_only, now)
                    }
                    ReadKind::Locks { after, limit } => self.scan_locks_local(&r.key, after.as_deref(), *limit, now),
                };
                let _ = r.tx.send(answer);
            }
        }
    }

    /// The "now" that decides TTL expiry on a read. The leader uses its
    /// own clock (it stamps writes with it); a stale read on any replica
    /// uses the newest leader stamp it has applied, never its own clock.
    fn read_now_ms(&self, stale: bool) -> u64 {
        let applied = self.raw.store().apply_state().applied_stamp_ms;
        if stale {
            applied
        } else {
            self.clock.now_ms().max(applied)
        }
    }

    fn read_local(&self, key: &[u8], now_ms: u64) -> ShardResult {
        let value = read_value(&self.engine, key)
            .map_err(|e| StoreError::Engine(e.to_string()))?
            .filter(|v| !v.is_expired_at(now_ms));
        Ok(ShardReply::Value { value, applied_index: self.raw.store().apply_state().applied_index })
    }

    fn retry_stuck_reads(&mut self) {
        let now = Instant::now();
        let stuck: Vec<u64> = self
            .reads
            .in_flight
            .iter()
            .filter(|(_, (t, _))| now.duration_since(*t) > READ_INDEX_RETRY)
            .map(|(c, _)| *c)
            .collect();
        for ctx in stuck {
            if let Some((_, reads)) = self.reads.in_flight.remove(&ctx) {
                // raft-rs ignores ReadIndex until the leader has committed an
                // entry in its term, and heartbeats can be lost: ask again,
                // for the clients still waiting.
                self.reads.unsent.extend(reads.into_iter().filter(|r| !r.tx.is_closed()));
            }
        }
        self.issue_reads();
    }

    fn maybe_compact_log(&mut self) {
        let a = *self.raw.store().apply_state();
        if a.applied_index - a.truncated_index < self.cfg.log_gc_threshold_entries {
            return;
        }
        let to = a.applied_index.saturating_sub(self.cfg.log_gc_keep_entries);
        let mut batch = self.engine.batch();
        match self.raw.store().stage_compact(&mut batch, to) {
            Ok(Some(next)) => {
                if let Err(e) = self.engine.write(batch, false) {
                    self.fatal("compacting the log", e);
                }
                self.raw.mut_store().commit_apply_state(next);
                self.metrics.log_compactions.inc();
                debug!(node = self.node, shard = self.shard, to, "compacted raft log");
            }
            Ok(None) => {}
            Err(e) => self.fatal("staging log compaction", e),
        }
    }

    /// Leader only: finds expired keys (bounded per round) and proposes
    /// their deletion, so expiry is a replicated decision.
    fn sweep_expired(&mut self) {
        if !self.is_leader() {
            return;
        }
        let now = self.read_now_ms(false);
        if self.ranges.is_empty() {
            return;
        }
        let (from, to) = data_bounds(&self.ranges[self.sweep_range % self.ranges.len()]);
        let start = if self.sweep_cursor.is_empty() { from } else { self.sweep_cursor.clone() };
        let max = self.cfg.ttl_sweep_keys_max;
        let mut seen = 0usize;
        let mut last = None;
        let mut expired = Vec::new();
        let mut forget = Vec::new();
        let res = self.engine.scan(Cf::Data, &start, &to, |k, v| {
            seen += 1;
            last = Some(k.to_vec());
            let user = keys::split_data_key(k).map(|(_, u)| u).filter(|u| keys::is_user_key(u));
            if let (Some(user), Ok(h)) = (user, StoredValue::decode_header(v)) {
                if h.1.is_some_and(|e| now >= e) {
                    expired.push((user.to_vec(), h.0));
                }
            } else if keys::is_request_key(k) && RequestRecord::decode_expiry(v).is_some_and(|e| now >= e) {
                forget.push(k.to_vec());
            }
            seen < max
        });
        if let Err(e) = res {
            warn!(node = self.node, shard = self.shard, "ttl sweep scan failed: {e}");
            return;
        }
        self.sweep_cursor = match last {
            Some(mut k) if seen >= max => {
                k.push(0);
                k
            }
            _ => {
                // This range is done: the next round starts the next one.
                self.sweep_range = (self.sweep_range + 1) % self.ranges.len();
                Vec::new()
            }
        };
        if !expired.is_empty() {
            let n = expired.len();
            if self.propose(&Command::Expire { keys: expired }, None).is_ok() {
                debug!(node = self.node, shard = self.shard, n, "proposed expiry");
            }
        }
        // Request records past their retention: no retry can come any more.
        if !forget.is_empty() {
            let n = forget.len();
            if self.propose(&Command::ForgetRequests { keys: forget }, None).is_ok() {
                debug!(node = self.node, shard = self.shard, n, "proposed forgetting request records");
            }
        }
    }

    /// Live user keys starting with `prefix` and after `after`, in key
    /// order, at most `limit`. Keys are stored in ring-point order, so this
    /// walks the shard's whole ranges: the cost grows with the shard.
    fn scan_local(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        keys_only: bool,
        now_ms: u64,
    ) -> ShardResult {
        let mut items: Vec<(Vec<u8>, StoredValue)> = Vec::new();
        for r in self.ranges.iter() {
            let (from, to) = data_bounds(r);
            let res = self.engine.scan(Cf::Data, &from, &to, |k, v| {
                let Some((_, user)) = keys::split_data_key(k) else { return true };
                if !keys::is_user_key(user) || !user.starts_with(prefix) || after.is_some_and(|a| user <= a) {
                    return true;
                }
                if let Ok(mut value) = StoredValue::decode(v) {
                    if !value.is_expired_at(now_ms) {
                        if keys_only {
                            value.data = Vec::new();
                        }
                        items.push((user.to_vec(), value));
                    }
                }
                true
            });
            res.map_err(|e| StoreError::Engine(e.to_string()))?;
        }
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let more = items.len() > limit;
        items.truncate(limit);
        Ok(ShardReply::Items { items, more, epoch: self.raw.store().ranges_epoch() })
    }

    /// Lock records of the shard's ranges whose names start with
    /// `prefix`: one pass over the ranges, as [`Self::scan_local`].
    fn scan_locks_local(&self, prefix: &[u8], after: Option<&str>, limit: usize, now_ms: u64) -> ShardResult {
        let mut locks: Vec<(String, LockRecord)> = Vec::new();
        let mut err = None;
        for r in self.ranges.iter() {
            let (from, to) = data_bounds(r);
            let res = self.engine.scan(Cf::Data, &from, &to, |k, v| {
                let Some(name) = keys::lock_name_of(k) else { return true };
                if !name.starts_with(prefix) || after.is_some_and(|a| name <= a.as_bytes()) {
                    return true;
                }
                match (std::str::from_utf8(name), LockRecord::decode(v)) {
                    (Ok(name), Ok(record)) => locks.push((name.to_string(), record)),
                    (_, Err(e)) => {
                        err = Some(StoreError::Engine(format!("lock record {name:?}: {e}")));
                        return false;
                    }
                    // Lock names are UTF-8 when written; skip, never fail a listing.
                    (Err(_), Ok(_)) => {}
                }
                true
            });
            res.map_err(|e| StoreError::Engine(e.to_string()))?;
            if let Some(e) = err.take() {
                return Err(e);
            }
        }
        locks.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let more = locks.len() > limit;
        locks.truncate(limit);
        Ok(ShardReply::Locks { locks, more, epoch: self.raw.store().ranges_epoch(), now_ms })
    }

    fn read_lock(&self, name: &[u8], now_ms: u64) -> ShardResult {
        let record = self.lock_record(name).map_err(|e| StoreError::Engine(e.to_string()))?;
        // Those still waiting at `now_ms`, in line order.
        let waiters = record
            .iter()
            .flat_map(|r| &r.queue)
            .filter(|q| q.wait_until_ms > now_ms)
            .map(|q| q.owner.clone())
            .collect();
        Ok(ShardReply::Lock { record, waiters, now_ms })
    }

    fn lock_record(&self, name: &[u8]) -> Result<Option<LockRecord>, EngineError> {
        match self.engine.get(Cf::Data, &keys::lock_key(name))? {
            None => Ok(None),
            Some(raw) => LockRecord::decode(&raw)
                .map(Some)
                .map_err(|e| EngineError::Corrupt { cf: "data", detail: format!("lock record: {e}") }),
        }
    }

    fn current_map(&self) -> ShardResult {
        self.raw.store().read_map().map(ShardReply::Map).map_err(|e| StoreError::Engine(e.to_string()))
    }

    /// Answers the map watches the applied map satisfies, those whose wait
    /// ended (with the map as it is), and all of them when this replica
    /// no longer leads.
    fn serve_map_watchers(&mut self) {
        if self.map_watchers.is_empty() {
            return;
        }
        let (now, epoch, leader) = (Instant::now(), self.map_epoch, self.is_leader());
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.map_watchers)
            .into_iter()
            .partition(|(after, until, tx)| !leader || epoch > *after || *until <= now || tx.is_closed());
        self.map_watchers = waiting;
        let answer = if leader { self.current_map() } else { Err(self.not_leader()) };
        for (_, _, tx) in done {
            let _ = tx.send(answer.clone());
        }
    }

    /// Answers the watch polls that this round's events match, whose
    /// wait ended or whose client left, and all of them when this replica
    /// no longer leads (the router asks the new leader, position intact).
    fn serve_event_pollers(&mut self) {
        let m = &self.metrics;
        m.event_log_events.set(self.events.len() as i64);
        m.event_log_bytes.set(self.events.bytes() as i64);
        if self.event_pollers.is_empty() {
            return;
        }
        let (now, leader) = (Instant::now(), self.is_leader());
        let applied = self.events.applied();
        let mut waiting = Vec::with_capacity(self.event_pollers.len());
        for p in std::mem::take(&mut self.event_pollers) {
            let found = p.after < applied && self.events.has_after(p.after, &p.filter);
            let answer = if !leader {
                Some(("leader", Err(self.not_leader())))
            } else if !found && self.moved_away(&p.filter) {
                Some(("leader", Err(StoreError::WrongShard { shard: self.shard, epoch: self.epoch })))
            } else if found || p.after < self.events.floor() || p.until <= now || p.tx.is_closed() {
                Some(Self::event_answer(self.events.read(Some(p.after), &p.filter, p.max)))
            } else {
                None
            };
            match answer {
                Some((result, answer)) => {
                    self.metrics.event_poll(result);
                    let _ = p.tx.send(answer);
                }
                None => waiting.push(p),
            }
        }
        self.event_pollers = waiting;
        self.metrics.event_pollers.set(self.event_pollers.len() as i64);
    }

    /// A watched key given away in a split: once its events here are all
    /// delivered, the watcher goes on at its new shard (`WrongShard`).
    fn moved_away(&self, filter: &KeyFilter) -> bool {
        matches!(filter, KeyFilter::Exact(k) if !self.owns(k))
    }

    fn event_answer(page: Result<EventPage, Compacted>) -> (&'static str, ShardResult) {
        match page {
            Ok(EventPage { events, position }) => {
                let result = if events.is_empty() { "empty" } else { "events" };
                (result, Ok(ShardReply::Events { events, position }))
            }
            Err(Compacted { asked, oldest }) => ("compacted", Err(StoreError::Compacted { asked, oldest })),
        }
    }

    fn reload_map_epoch(&mut self) {
        self.map_epoch = match self.raw.store().read_map() {
            Ok(None) => 0,
            Ok(Some(b)) => match ringstore_shared::cluster_map::ClusterMap::decode(&b) {
                Ok(m) => m.epoch,
                Err(e) => self.fatal("decoding the stored cluster map", e),
            },
            Err(e) => self.fatal("reading the stored cluster map", e),
        };
    }

    fn rebuild_lock_index(&mut self) {
        self.locks.clear();
        let mut found = Vec::new();
        for r in self.ranges.clone().iter() {
            let (from, to) = data_bounds(r);
            let res = self.engine.scan(Cf::Data, &from, &to, |k, v| {
                if let Some(name) = keys::lock_name_of(k) {
                    found.push((String::from_utf8_lossy(name).into_owned(), LockRecord::decode(v)));
                }
                true
            });
            if let Err(e) = res {
                self.fatal("scanning lock records", e);
            }
        }
        for (name, rec) in found {
            match rec {
                Ok(r) => self.locks.on_record(&name, &r),
                Err(e) => self.fatal("decoding a lock record", e),
            }
        }
        self.metrics.locks_held.set(self.locks.held() as i64);
    }

    /// Answers the local waiters of `name` that its new record settles:
    /// granted the lock (a handoff, decided in the entry that freed it), or
    /// no longer queued (their wait ended). Sent with the round's replies.
    fn settle_waiters(&mut self, name: &str, record: &LockRecord, now_ms: u64) {
        for (w, outcome) in self.waiters.settle(name, record) {
            match outcome {
                LockOutcome::Granted { .. } => self.metrics.lock_handoffs.inc(),
                _ => self.metrics.lock_wait_timeouts.inc(),
            }
            self.settled.push((w.reply, Ok(ShardReply::Outcome(Outcome::Lock { outcome, now_ms }))));
        }
    }

    /// Proposes the dequeue of waiters whose wait ended by this leader's
    /// clock or whose client went away; the dequeue's apply answers them
    /// (unless the lock reached them first: then they are granted).
    fn end_waits(&mut self) {
        if !self.is_leader() || (self.waiters.is_empty() && !self.locks.has_queues()) {
            return;
        }
        let now = Instant::now();
        for (name, session, timed_out) in self.waiters.due(now, |tx| !tx.is_closed()) {
            debug!(node = self.node, shard = self.shard, name, timed_out, "wait over: proposing dequeue");
            let cmd = Command::LockDequeue { name: name.clone(), session };
            if let Err(e) = self.propose(&cmd, None) {
                debug!(node = self.node, shard = self.shard, name, "dequeue not proposed, tried next tick: {e}");
                self.waiters.stay(&name, session);
            }
        }
        // Queued sessions nobody came back for: out of line, so the lock
        // is not handed to a client that is gone.
        let grace = Duration::from_millis(ORPHAN_GRACE_ELECTION_TIMEOUTS * self.cfg.election_timeout_ms());
        for (name, session) in self.waiters.orphans(self.locks.queues(), now, grace) {
            info!(
                node = self.node,
                shard = self.shard,
                name,
                "a queued waiter has nobody to answer: proposing dequeue"
            );
            if self.propose(&Command::LockDequeue { name, session }, None).is_ok() {
                self.metrics.lock_orphans_dequeued.inc();
            }
        }
    }

    /// Leader only: proposes the expiry of leases its clock says are over
    /// (plus the election timeout for leases an earlier leader granted).
    fn sweep_leases(&mut self) {
        if !self.is_leader() {
            return;
        }
        let now = self.read_now_ms(false);
        let grace = self.cfg.election_timeout_ms();
        for (name, token) in self.locks.due(now, self.raw.raft.term, grace, 256) {
            debug!(node = self.node, shard = self.shard, name, token, "lease over: proposing expiry");
            if self.propose(&Command::LockExpire { name, token }, None).is_ok() {
                self.metrics.lock_expiries.inc();
            }
        }
    }

    fn update_gauges(&self) {
        let m = &self.metrics;
        m.term.set(self.raw.raft.term as i64);
        m.is_leader.set(self.is_leader() as i64);
        m.commit_index.set(self.raw.raft.raft_log.committed as i64);
        m.applied_index.set(self.raw.store().apply_state().applied_index as i64);
        m.pending_requests.set(self.pending() as i64);
        m.locks_held.set(self.locks.held() as i64);
        m.lock_waiters.set(self.waiters.len() as i64);
    }

    fn engine_gauges(&self) {
        let load = if self.is_leader() { self.load.report(Instant::now()) } else { Default::default() };
        self.metrics.requests_per_second.set(load.qps as i64);
        self.metrics.hot_key.set(load.hot_key.is_some() as i64);
        self.metrics.sst_bytes.set(self.engine.sst_bytes() as i64);
        self.metrics.pending_compaction_bytes.set(self.engine.pending_compaction_bytes() as i64);
    }

    fn status(&self) -> ReplicaStatus {
        let s = self.raw.store();
        ReplicaStatus {
            node: self.node,
            shard: self.shard,
            role: match self.raw.raft.state {
                StateRole::Leader => "leader",
                StateRole::Follower => "follower",
                StateRole::Candidate => "candidate",
                StateRole::PreCandidate => "pre_candidate",
            },
            term: self.raw.raft.term,
            leader: (self.raw.raft.leader_id != 0).then_some(self.raw.raft.leader_id),
            commit_index: self.raw.raft.raft_log.committed,
            applied_index: s.apply_state().applied_index,
            first_index: s.apply_state().truncated_index + 1,
            last_index: s.last_index_cached(),
            voters: s.conf_state().voters.clone(),
            learners: s.conf_state().learners.clone(),
            voters_outgoing: s.conf_state().voters_outgoing.clone(),
            progress: if self.is_leader() {
                self.raw.raft.prs().iter().map(|(id, pr)| (*id, pr.matched)).collect()
            } else {
                Vec::new()
            },
            key_count: s.apply_state().stats().map(|k| k.keys),
            bytes: s.apply_state().stats().map(|k| k.bytes),
            ranges_epoch: s.ranges_epoch(),
            range_count: s.ranges().len() as u64,
            load: if self.is_leader() { self.load.report(Instant::now()) } else { Default::default() },
        }
    }
}

/// The record of lock `name` as the apply in progress sees it (its
/// overlay first).
fn view_lock(engine: &Engine, overlay: &mut HashMap<Vec<u8>, Option<Vec<u8>>>, name: &str) -> Option<LockRecord> {
    let mut view = ApplyView { engine, overlay, map_epoch: 0, err: None, retries_found: 0 };
    apply::State::lock(&mut view, name)
}

fn read_value(engine: &Engine, key: &[u8]) -> Result<Option<StoredValue>, EngineError> {
    match engine.get(Cf::Data, &data_key(key))? {
        None => Ok(None),
        Some(raw) => {
            StoredValue::decode(&raw).map(Some).map_err(|e| EngineError::Corrupt { cf: "data", detail: e.to_string() })
        }
    }
}

/// The state `apply::decide` reads: this round's earlier writes first
/// (`overlay`, by `data` family key), then RocksDB.
struct ApplyView<'a> {
    engine: &'a Engine,
    overlay: &'a HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Entries apply one at a time and the actor updates its copy after
    /// each, so this is current for every entry of a round.
    map_epoch: u64,
    err: Option<EngineError>,
    retries_found: u64,
}

impl ApplyView<'_> {
    fn raw(&mut self, k: &[u8]) -> Option<Vec<u8>> {
        if let Some(v) = self.overlay.get(k) {
            return v.clone();
        }
        match self.engine.get(Cf::Data, k) {
            Ok(v) => v,
            Err(e) => {
                self.err = Some(e);
                None
            }
        }
    }
    fn decoded<T>(
        &mut self,
        k: &[u8],
        what: &'static str,
        f: impl FnOnce(&[u8]) -> Result<T, CodecError>,
    ) -> Option<T> {
        let raw = self.raw(k)?;
        match f(&raw) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err = Some(EngineError::Corrupt { cf: "data", detail: format!("{what}: {e}") });
                None
            }
        }
    }
}

impl apply::State for ApplyView<'_> {
    fn value(&mut self, key: &[u8]) -> Option<StoredValue> {
        self.decoded(&data_key(key), "value", StoredValue::decode)
    }
    fn lock(&mut self, name: &str) -> Option<LockRecord> {
        self.decoded(&keys::lock_key(name.as_bytes()), "lock record", LockRecord::decode)
    }
    fn fences(&mut self, key: &[u8]) -> Option<FenceRecord> {
        self.decoded(&keys::fence_key(key), "fence record", FenceRecord::decode)
    }
    fn map_epoch(&mut self) -> u64 {
        self.map_epoch
    }
    fn request(&mut self, key: &[u8]) -> Option<RequestRecord> {
        let r = self.decoded(key, "request record", RequestRecord::decode);
        // decide() asks once per write that carries a request id: a record
        // found is a retry that found the first try's answer.
        self.retries_found += r.is_some() as u64;
        r
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

impl Actor for StorageActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let mut r = self.r.borrow_mut();
        r.addr = Some(ctx.address());
        crate::batch::register(r.slot, Rc::downgrade(&self.r));
        r.started(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        let mut r = self.r.borrow_mut();
        crate::batch::unregister(r.slot);
        r.stopped();
    }
}

impl Replica {
    fn started(&mut self, ctx: &mut Context<StorageActor>) {
        ctx.set_mailbox_capacity(RAFT_MAILBOX_CAPACITY);
        // Nothing is applied yet, so the engine holds exactly the applied
        // state the count starts from.
        if self.raw.store().apply_state().stats_pending {
            match self.stats_from.take() {
                Some(counted) => self.await_split_count(counted, ctx),
                None => self.recount_stats(),
            }
        }
        ctx.run_interval(Duration::from_millis(self.cfg.tick_interval_ms), |act, ctx| {
            let mut act = act.r.borrow_mut();
            if act.destroyed {
                return;
            }
            if act.sleeps_through_tick() {
                // Leases still run out on the leader's clock.
                act.sweep_leases();
                if !act.hibernation.asleep() {
                    act.schedule_flush();
                }
                return;
            }
            act.raw.tick();
            act.campaign_tick();
            act.fast_failover(ctx);
            act.fail_orphaned_writes();
            act.release_parked();
            act.retry_stuck_reads();
            act.end_waits();
            act.serve_map_watchers();
            act.serve_event_pollers();
            act.sweep_leases();
            // Drop waiters whose client gave up, so the map stays bounded.
            act.writes.retain(|_, p| !p.tx.is_closed());
            act.maybe_sleep();
            act.schedule_flush();
        });
        ctx.run_interval(Duration::from_millis(self.cfg.ttl_sweep_interval_ms), |act, _| {
            let mut act = act.r.borrow_mut();
            if act.destroyed {
                return;
            }
            act.sweep_expired();
            act.engine_gauges();
            act.schedule_flush();
        });
    }

    fn stopped(&mut self) {
        self.leave_hibernation();
        self.leaders.forget(self.shard);
        info!(node = self.node, shard = self.shard, "shard replica stopped");
    }
}

impl On<RaftBatch> for Replica {
    type Result = ();
    fn on(&mut self, RaftBatch(msgs): RaftBatch, _: &mut Context<StorageActor>) {
        if self.destroyed {
            return;
        }
        let now = Instant::now();
        let refuse_votes = self.votes_from.is_some_and(|t| now < t);
        let mut heard_leader = false;
        for m in msgs {
            if refuse_votes && matches!(m.get_msg_type(), MessageType::MsgRequestVote | MessageType::MsgRequestPreVote)
            {
                self.metrics.votes_refused_after_restart.inc();
                continue;
            }
            if let Some(owner) = self.snapshot_conflict(&m) {
                warn!(
                    node = self.node,
                    shard = self.shard,
                    owner,
                    "snapshot refused: shard {owner} on this node still owns its ranges (a split it has not applied)"
                );
                self.metrics.snapshots_refused.inc();
                continue;
            }
            let from = m.from;
            let quiesce = hib::is_quiesce(&m).then(|| m.clone());
            // Heartbeats and their answers are no activity: only a sleeper
            // wakes for a message (a leader's quiet count runs through them).
            if self.hibernation.asleep() && hib::wakes(&m) {
                self.wake(Wake::Message);
            }
            if let Err(e) = self.raw.step(m) {
                debug!(node = self.node, shard = self.shard, "step refused a message: {e}");
            }
            heard_leader |= from == self.raw.raft.leader_id;
            if let Some(q) = quiesce {
                self.on_quiesce(&q);
            }
        }
        if heard_leader {
            self.last_heard = now;
        }
        self.schedule_flush();
    }
}

impl On<DestroyReplica> for Replica {
    type Result = Result<(), String>;
    fn on(&mut self, _: DestroyReplica, ctx: &mut Context<StorageActor>) -> Self::Result {
        self.destroy(ctx)
    }
}

impl On<PeerUnreachable> for Replica {
    type Result = ();
    fn on(&mut self, m: PeerUnreachable, _: &mut Context<StorageActor>) {
        self.raw.report_unreachable(m.to);
        if m.snapshot {
            self.raw.report_snapshot(m.to, raft::SnapshotStatus::Failure);
        }
        self.schedule_flush();
    }
}

impl On<TransferLeadership> for Replica {
    type Result = Option<NodeId>;
    fn on(&mut self, _: TransferLeadership, _: &mut Context<StorageActor>) -> Option<NodeId> {
        if !self.is_leader() {
            return None;
        }
        // The follower with the longest log can take over without catching up.
        let target = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != self.node && self.raw.store().conf_state().voters.contains(id))
            .max_by_key(|(id, pr)| (pr.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)?;
        self.begin_transfer(target);
        self.schedule_flush();
        Some(target)
    }
}

impl On<ShardRequest> for Replica {
    type Result = ResponseFuture<ShardResult>;

    fn on(&mut self, ShardRequest(op): ShardRequest, ctx: &mut Context<StorageActor>) -> Self::Result {
        let immediate = |r: ShardResult| -> ResponseFuture<ShardResult> { Box::pin(async move { r }) };
        if self.destroyed {
            return immediate(Err(StoreError::Unreachable { node: self.node }));
        }
        // A follower's requests need nothing of its group (a write it
        // forwards wakes the leader); a sleeping follower stays asleep.
        if self.is_leader() && !matches!(op, ShardOp::Status) {
            self.wake(Wake::Request);
        }
        if !matches!(op, ShardOp::Status) && self.pending() >= self.limits.pending_requests_max {
            self.metrics.proposals_overloaded.inc();
            return immediate(Err(StoreError::Overloaded {
                queued: self.pending(),
                limit: self.limits.pending_requests_max,
            }));
        }
        let key: Option<&[u8]> = match &op {
            ShardOp::Read { key, .. } => Some(key),
            ShardOp::Write { cmd, .. } => cmd.routing_key(),
            ShardOp::Acquire { name, .. } | ShardOp::LockStatus { name } => Some(name.as_bytes()),
            ShardOp::Status
            | ShardOp::Scan { .. }
            | ShardOp::ScanLocks { .. }
            | ShardOp::Events { .. }
            | ShardOp::ReadMap
            | ShardOp::WatchMap { .. }
            | ShardOp::ChangePeers(_)
            | ShardOp::TransferLeader { .. } => None,
        };
        if let Some(k) = key {
            let point = ringstore_shared::hash::key_point(k);
            if !self.owns_point(point) {
                return immediate(Err(StoreError::WrongShard { shard: self.shard, epoch: self.epoch }));
            }
            if self.is_leader() {
                self.load.record(point, k, Instant::now());
            }
        }
        if let ShardOp::Write { cmd, .. } = &op {
            if let Some(err) = self.foreign_keys(cmd) {
                return immediate(Err(err));
            }
        }
        let map_op = matches!(&op, ShardOp::ReadMap | ShardOp::WatchMap { .. })
            || matches!(&op, ShardOp::Write { cmd, .. } if matches!(**cmd, Command::SetMap { .. }));
        let any_shard = matches!(op, ShardOp::Status | ShardOp::ChangePeers(_) | ShardOp::TransferLeader { .. });
        if map_op != (self.shard == META_SHARD) && !any_shard {
            // The map lives in the meta shard only, and the meta shard holds
            // nothing else.
            return immediate(Err(StoreError::BadRequest(format!(
                "shard {} does not serve this operation",
                self.shard
            ))));
        }
        match op {
            ShardOp::Status => immediate(Ok(ShardReply::Status(self.status()))),
            ShardOp::ChangePeers(change) => self.change_peers(change, ctx),
            ShardOp::TransferLeader { to } => immediate(self.transfer_to(to)),
            ShardOp::Read { key, stale: true } => {
                let now = self.read_now_ms(true);
                immediate(self.read_local(&key, now))
            }
            ShardOp::Read { key, stale: false } => {
                if !self.is_leader() {
                    return immediate(Err(self.not_leader()));
                }
                let (tx, rx) = oneshot::channel();
                self.reads.unsent.push(PendingRead { key, kind: ReadKind::Value, tx });
                self.schedule_flush();
                Box::pin(async move { rx.await.unwrap_or_else(|_| Err(replica_gone())) })
            }
            ShardOp::Scan { prefix, after, limit, keys_only } => {
                if !self.is_leader() {
                    return immediate(Err(self.not_leader()));
                }
                let (tx, rx) = oneshot::channel();
                self.reads.unsent.push(PendingRead {
                    key: prefix,
                    kind: ReadKind::Scan { after, limit, keys_only },
                    tx,
                });
                self.schedule_flush();
                Box::pin(async move { rx.await.unwrap_or_else(|_| Err(replica_gone())) })
            }
            ShardOp::ScanLocks { prefix, after, limit } => {
                if !self.is_leader() {
                    return immediate(Err(self.not_leader()));
                }
                let (tx, rx) = oneshot::channel();
                let kind = ReadKind::Locks { after, limit };
                self.reads.unsent.push(PendingRead { key: prefix.into_bytes(), kind, tx });
                self.schedule_flush();
                Box::pin(async move { rx.await.unwrap_or_else(|_| Err(replica_gone())) })
            }
            ShardOp::Events { filter, after, max, wait_ms } => {
                if !self.is_leader() {
                    return immediate(Err(self.not_leader()));
                }
                let page = self.events.read(after, &filter, max);
                if matches!(&page, Ok(p) if p.events.is_empty()) && self.moved_away(&filter) {
                    return immediate(Err(StoreError::WrongShard { shard: self.shard, epoch: self.epoch }));
                }
                let waits = matches!(&page, Ok(p) if p.events.is_empty())
                    && wait_ms > 0
                    && self.event_pollers.len() < EVENT_POLLERS_MAX;
                if !waits {
                    let (result, answer) = Self::event_answer(page);
                    self.metrics.event_poll(result);
                    return immediate(answer);
                }
                let after = page.map_or(0, |p| p.position);
                let (tx, rx) = oneshot::channel();
                let until = Instant::now() + Duration::from_millis(wait_ms.min(EVENT_WAIT_MAX_MS));
                self.event_pollers.push(EventPoller { filter, after, max, until, tx });
                self.metrics.event_pollers.set(self.event_pollers.len() as i64);
                Box::pin(async move { rx.await.unwrap_or_else(|_| Err(replica_gone())) })
            }
            ShardOp::WatchMap { after, wait_ms } => {
                if !self.is_leader() {
                    return immediate(Err(self.not_leader()));
                }
                if self.map_epoch > after || wait_ms == 0 || self.map_watchers.len() >= MAP_WATCHERS_MAX {
                    return immediate(self.current_map());
                }
                let (tx, rx) = oneshot::channel();
                let wait = Duration::from_millis(wait_ms.min(MAP_WATCH_WAIT_MAX_MS));
                self.map_watchers.push((after, Instant::now() + wait, tx));
                Box::pin(async move { rx.await.unwrap_or_else(|_| Err(replica_gone())) })
            }
            ShardOp::ReadMap => {
                if !self.is_leader() {
                    return immediate(Err(self.not_leader()));
                }
                let (tx, rx) = oneshot::channel();
                self.reads.unsent.push(PendingRead { key: Vec::new(), kind: ReadKind::Map, tx });
                self.schedule_flush();
                Box::pin(async move { rx.await.unwrap_or_else(|_| Err(replica_gone())) })
            }
            ShardOp::LockStatus { name } => {
                if !self.is_leader() {
                    return immediate(Err(self.not_leader()));
                }
                let (tx, rx) = oneshot::channel();
                self.reads.unsent.push(PendingRead { key: name.into_bytes(), kind: ReadKind::Lock, tx });
                self.schedule_flush();
                Box::pin(async move { rx.await.unwrap_or_else(|_| Err(replica_gone())) })
            }
            ShardOp::Acquire { name, owner, ttl_ms, wait_ms, session, request } => {
                if !self.is_leader() {
                    self.metrics.proposals_not_leader.inc();
                    return immediate(Err(self.not_leader()));
                }
                // A caller without a session gets a fresh one: it is a
                // contender, whatever owner label it gives.
                let (session, reentry) = match session {
                    Some(s) => (s, true),
                    None => (new_session(), false),
                };
                // A re-entry never waits: its session holds the lock or not.
                let wait_ms = if reentry { 0 } else { wait_ms };
                let queue_max = self.limits.lock_waiters_max.min(ringstore_shared::lock::QUEUE_MAX) as u32;
                let cmd =
                    Command::LockAcquire { name: name.clone(), owner, session, reentry, ttl_ms, wait_ms, queue_max };
                let wait = (wait_ms > 0).then_some(WaitSpec { name });
                let (tx, rx) = oneshot::channel();
                if let Err(e) = self.propose_waiting(&cmd, Some(tx), wait, Some(request)) {
                    return immediate(Err(e));
                }
                self.schedule_flush();
                Box::pin(async move { rx.await.unwrap_or_else(|_| Err(replica_gone())) })
            }
            ShardOp::Write { cmd, request } => {
                if !self.is_leader() {
                    self.metrics.proposals_not_leader.inc();
                    return immediate(Err(self.not_leader()));
                }
                let (tx, rx) = oneshot::channel();
                if let Err(e) = self.propose_waiting(&cmd, Some(tx), None, Some(request)) {
                    return immediate(Err(e));
                }
                self.schedule_flush();
                Box::pin(async move { rx.await.unwrap_or_else(|_| Err(replica_gone())) })
            }
        }
    }
}

/// A fresh lock session: 128 random bits (never 0, which names nobody).
fn new_session() -> SessionId {
    rand::random::<SessionId>().max(1)
}

/// To a waiter whose leader stepped down or whose lock moved: its place
/// is in the replicated queue, and a retry of the same request finds it.
fn waiter_moved() -> StoreError {
    StoreError::OutcomeUnknown {
        reason: "the lock's leader changed while this acquire waited; a retry keeps its place".into(),
    }
}

fn replica_gone() -> StoreError {
    StoreError::OutcomeUnknown { reason: "replica stopped before answering".into() }
}
