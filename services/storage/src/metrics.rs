//! Prometheus metrics of the storage layer, registered once in the default
//! registry. Labels are node and shard ids only, so cardinality is bounded
//! by cluster size.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, Histogram, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec,
};

pub struct EngineMetrics {
    pub write_seconds: HistogramVec,
    pub write_bytes: IntCounterVec,
    pub sst_bytes: IntGaugeVec,
    pub pending_compaction_bytes: IntGaugeVec,
    pub wal_sync_seconds: HistogramVec,
    pub wal_sync_readies: HistogramVec,
    pub round_replicas: HistogramVec,
    pub entry_cache_reads: IntCounterVec,
}

pub struct RaftMetrics {
    pub term: IntGaugeVec,
    pub is_leader: IntGaugeVec,
    pub commit_index: IntGaugeVec,
    pub applied_index: IntGaugeVec,
    pub proposals: IntCounterVec,
    pub ready_rounds: IntCounterVec,
    pub ready_entries: HistogramVec,
    pub applied_entries: IntCounterVec,
    pub read_index: IntCounterVec,
    pub lease_reads: IntCounterVec,
    pub votes_refused: IntCounterVec,
    pub fast_failovers: IntCounterVec,
    pub hibernating: IntGaugeVec,
    pub hibernation_wakes: IntCounterVec,
    pub event_log_events: IntGaugeVec,
    pub event_log_bytes: IntGaugeVec,
    pub event_pollers: IntGaugeVec,
    pub event_polls: IntCounterVec,
    pub pending_requests: IntGaugeVec,
    pub snapshots: IntCounterVec,
    pub log_compactions: IntCounterVec,
    pub conf_changes: IntCounterVec,
    pub replicas_destroyed: IntCounterVec,
    pub splits: IntCounterVec,
    pub split_count_seconds: HistogramVec,
    pub stats_count_seconds: HistogramVec,
    pub requests_per_second: IntGaugeVec,
    pub hot_key: IntGaugeVec,
    pub ttl_expired_keys: IntCounterVec,
    pub retries_deduplicated: IntCounterVec,
    pub messages_sent: IntCounterVec,
    pub messages_dropped: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

pub static ENGINE: LazyLock<EngineMetrics> = LazyLock::new(|| EngineMetrics {
    write_seconds: register_histogram_vec!(
        "ringstore_rocksdb_write_seconds",
        "RocksDB batch write latency; sync=true includes the WAL fsync",
        &["node", "sync"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once"),
    write_bytes: register_int_counter_vec!(
        "ringstore_rocksdb_write_bytes_total",
        "Bytes written to RocksDB in batches",
        &["node"]
    )
    .expect("metric registers once"),
    sst_bytes: register_int_gauge_vec!("ringstore_rocksdb_sst_bytes", "Total size of live SST files", &["node"])
        .expect("metric registers once"),
    pending_compaction_bytes: register_int_gauge_vec!(
        "ringstore_rocksdb_pending_compaction_bytes",
        "Bytes RocksDB estimates compaction must rewrite; growth means writes outrun compaction",
        &["node"]
    )
    .expect("metric registers once"),
    wal_sync_seconds: register_histogram_vec!(
        "ringstore_rocksdb_wal_sync_seconds",
        "One WAL fsync by the node's syncer, covering the Ready rounds of every shard written since the last",
        &["node"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once"),
    wal_sync_readies: register_histogram_vec!(
        "ringstore_rocksdb_wal_sync_readies",
        "Ready rounds (of any shard on the node) made durable by one WAL fsync",
        &["node"],
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
    )
    .expect("metric registers once"),
    round_replicas: register_histogram_vec!(
        "ringstore_storage_round_replicas",
        "Replicas whose Ready rounds one storage-thread round carried (one RocksDB write, one sync request)",
        &["node"],
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
    )
    .expect("metric registers once"),
    entry_cache_reads: register_int_counter_vec!(
        "ringstore_raft_entry_cache_reads_total",
        "Raft log reads (entries for apply or for followers) served from the in-memory tail (hit) or RocksDB (miss)",
        &["node", "result"]
    )
    .expect("metric registers once"),
});

pub static RAFT: LazyLock<RaftMetrics> = LazyLock::new(|| {
    let ns = &["node", "shard"];
    RaftMetrics {
        term: register_int_gauge_vec!("ringstore_raft_term", "Current Raft term", ns).expect("registers once"),
        is_leader: register_int_gauge_vec!("ringstore_raft_is_leader", "1 if this replica leads its shard", ns)
            .expect("registers once"),
        commit_index: register_int_gauge_vec!("ringstore_raft_commit_index", "Raft commit index", ns)
            .expect("registers once"),
        applied_index: register_int_gauge_vec!("ringstore_raft_applied_index", "Raft applied index", ns)
            .expect("registers once"),
        proposals: register_int_counter_vec!(
            "ringstore_raft_proposals_total",
            "Client proposals by result (accepted, not_leader, dropped, overloaded, parked_for_transfer: held while the leader hands over, then sent on)",
            &["node", "shard", "result"]
        )
        .expect("registers once"),
        ready_rounds: register_int_counter_vec!("ringstore_raft_ready_rounds_total", "Ready rounds handled", ns)
            .expect("registers once"),
        ready_entries: register_histogram_vec!(
            "ringstore_raft_ready_entries",
            "Log entries persisted per Ready round (one fsync each)",
            ns,
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
        )
        .expect("registers once"),
        applied_entries: register_int_counter_vec!("ringstore_raft_applied_entries_total", "Entries applied", ns)
            .expect("registers once"),
        read_index: register_int_counter_vec!(
            "ringstore_raft_read_index_total",
            "ReadIndex rounds issued (each serves a batch of reads, or renews the leader's read lease)",
            ns
        )
        .expect("registers once"),
        lease_reads: register_int_counter_vec!(
            "ringstore_raft_lease_reads_total",
            "Linearizable reads a leader served under its read lease, without a ReadIndex round",
            ns
        )
        .expect("registers once"),
        fast_failovers: register_int_counter_vec!(
            "ringstore_raft_fast_failovers_total",
            "Times a follower gave up a leader whose node's link was down and campaigned early",
            ns
        )
        .expect("registers once"),
        hibernating: register_int_gauge_vec!(
            "ringstore_raft_hibernating_replicas",
            "Shard replicas of this node whose quiet group sleeps: no ticks, no heartbeats",
            &["node"]
        )
        .expect("registers once"),
        event_log_events: register_int_gauge_vec!(
            "ringstore_watch_event_log_events",
            "Recent key changes a replica keeps for watchers (bounded by count and bytes)",
            ns
        )
        .expect("registers once"),
        event_log_bytes: register_int_gauge_vec!(
            "ringstore_watch_event_log_bytes",
            "Key and value bytes of the changes a replica keeps for watchers",
            ns
        )
        .expect("registers once"),
        event_pollers: register_int_gauge_vec!(
            "ringstore_watch_event_pollers",
            "Watch long polls (one per watched shard per node) a leader replica holds",
            ns
        )
        .expect("registers once"),
        event_polls: register_int_counter_vec!(
            "ringstore_watch_event_polls_total",
            "Watch polls a leader answered, by result: events, empty (the wait ended), compacted (the position was older than the log), leader (this replica stopped leading)",
            &["node", "result"]
        )
        .expect("registers once"),
        hibernation_wakes: register_int_counter_vec!(
            "ringstore_raft_hibernation_wakes_total",
            "Sleeping replicas woken, by reason: request (a client or the leader's own proposal), message (Raft traffic), leader_unreachable (the leader's node's link is down)",
            &["node", "reason"]
        )
        .expect("registers once"),
        votes_refused: register_int_counter_vec!(
            "ringstore_raft_votes_refused_after_restart_total",
            "(Pre-)vote requests a restarted replica refused during its first election timeout (it may have confirmed a lease before the crash)",
            ns
        )
        .expect("registers once"),
        pending_requests: register_int_gauge_vec!(
            "ringstore_raft_pending_requests",
            "Proposals and reads waiting at this replica",
            ns
        )
        .expect("registers once"),
        snapshots: register_int_counter_vec!(
            "ringstore_raft_snapshots_total",
            "Snapshots built for followers (kind=built), applied from a leader (kind=applied), or refused because another replica of this node still owns their ranges (kind=refused_overlap)",
            &["node", "shard", "kind"]
        )
        .expect("registers once"),
        log_compactions: register_int_counter_vec!("ringstore_raft_log_compactions_total", "Raft log compactions", ns)
            .expect("registers once"),
        conf_changes: register_int_counter_vec!(
            "ringstore_raft_conf_changes_total",
            "Membership changes applied by this replica (learner added, promoted, removed, joint left)",
            ns
        )
        .expect("registers once"),
        replicas_destroyed: register_int_counter_vec!(
            "ringstore_replicas_destroyed_total",
            "Replicas removed from this node with their data (moved away or rolled back)",
            &["node"]
        )
        .expect("registers once"),
        splits: register_int_counter_vec!(
            "ringstore_shard_splits_total",
            "Splits applied by this replica, by its shard's side (source: gave ranges away; target: started with them)",
            &["node", "side"]
        )
        .expect("registers once"),
        requests_per_second: register_int_gauge_vec!(
            "ringstore_shard_requests_per_second",
            "Leader only: requests with a key this replica served in the last full second (what splits by load read)",
            ns
        )
        .expect("registers once"),
        hot_key: register_int_gauge_vec!(
            "ringstore_shard_hot_key",
            "Leader only: 1 when one key carries most of the shard's load, so no split can spread it (GET /v1/rebalance names it)",
            ns
        )
        .expect("registers once"),
        split_count_seconds: register_histogram_vec!(
            "ringstore_shard_split_apply_seconds",
            "Time a replica's apply spent on a split; the source's writes wait for it (no keys are counted in it)",
            &["node"],
            vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
        )
        .expect("registers once"),
        stats_count_seconds: register_histogram_vec!(
            "ringstore_shard_stats_count_seconds",
            "Time a replica took to count its keys off the storage thread (after a split, or at a start that found no counts); key_count is unknown meanwhile",
            &["node"],
            vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
        )
        .expect("registers once"),
        ttl_expired_keys: register_int_counter_vec!(
            "ringstore_ttl_expired_keys_total",
            "Expired keys removed by the replicated TTL sweep",
            ns
        )
        .expect("registers once"),
        retries_deduplicated: register_int_counter_vec!(
            "ringstore_requests_deduplicated_total",
            "Writes applied once although sent again: a copy found its request id's answer \
             (attempt=retry: the usual case; attempt=first: a first try that committed after its retry)",
            &["node", "shard", "attempt"]
        )
        .expect("registers once"),
        messages_sent: register_int_counter_vec!(
            "ringstore_raft_messages_sent_total",
            "Raft messages handed to the transport",
            ns
        )
        .expect("registers once"),
        messages_dropped: register_int_counter_vec!(
            "ringstore_raft_messages_dropped_total",
            "Raft messages dropped (reason=partition, random, queue_full, unknown_peer)",
            &["node", "reason"]
        )
        .expect("registers once"),
    }
});

pub struct LockMetrics {
    pub held: IntGaugeVec,
    pub waiters: IntGaugeVec,
    pub events: IntCounterVec,
}

pub static LOCKS: LazyLock<LockMetrics> = LazyLock::new(|| {
    LockMetrics {
    held: register_int_gauge_vec!("ringstore_locks_held", "Locks held in this shard replica", &["node", "shard"])
        .expect("registers once"),
    waiters: register_int_gauge_vec!(
        "ringstore_lock_waiters",
        "Acquirers whose replies this leader holds while they wait in a lock's replicated queue",
        &["node", "shard"]
    )
    .expect("registers once"),
    events: register_int_counter_vec!(
        "ringstore_lock_events_total",
        "Lock events on the leader: granted, conflict, released, expired (lease ran out), queued (an acquire joined the replicated waiter queue), queue_full, handoff (a waiter granted the lock in the entry that freed it: one Raft round), wait_timeout (a waiter's wait ended without the lock), waiter_reattached (a retried waiter found its place or grant again, as after a leader change), orphan_dequeued (a queued waiter nobody came back for, taken out of line)",
        &["node", "shard", "event"]
    )
    .expect("registers once"),
}
});

/// One replica's series, resolved once when the replica starts so the Ready
/// round and the request path never hash label values.
pub struct ReplicaMetrics {
    pub term: IntGauge,
    pub is_leader: IntGauge,
    pub commit_index: IntGauge,
    pub applied_index: IntGauge,
    pub pending_requests: IntGauge,
    pub proposals_accepted: IntCounter,
    pub proposals_dropped: IntCounter,
    pub proposals_not_leader: IntCounter,
    pub proposals_overloaded: IntCounter,
    pub proposals_parked: IntCounter,
    pub ready_rounds: IntCounter,
    pub ready_entries: Histogram,
    pub applied_entries: IntCounter,
    pub read_index: IntCounter,
    pub lease_reads: IntCounter,
    pub votes_refused_after_restart: IntCounter,
    pub fast_failovers: IntCounter,
    pub hibernating: IntGauge,
    pub event_log_events: IntGauge,
    pub event_log_bytes: IntGauge,
    pub event_pollers: IntGauge,
    event_polls_events: IntCounter,
    event_polls_empty: IntCounter,
    event_polls_compacted: IntCounter,
    event_polls_leader: IntCounter,
    pub wakes_request: IntCounter,
    pub wakes_message: IntCounter,
    pub wakes_leader_unreachable: IntCounter,
    pub snapshots_applied: IntCounter,
    pub snapshots_refused: IntCounter,
    pub requests_per_second: IntGauge,
    pub hot_key: IntGauge,
    pub splits_applied: IntCounter,
    pub split_apply_seconds: Histogram,
    pub stats_count_seconds: Histogram,
    pub log_compactions: IntCounter,
    pub conf_changes: IntCounter,
    pub replicas_destroyed: IntCounter,
    pub ttl_expired_keys: IntCounter,
    pub retries_deduplicated: IntCounter,
    pub late_first_tries_deduplicated: IntCounter,
    pub messages_sent: IntCounter,
    pub sst_bytes: IntGauge,
    pub pending_compaction_bytes: IntGauge,
    pub locks_held: IntGauge,
    pub lock_waiters: IntGauge,
    pub lock_granted: IntCounter,
    pub lock_conflicts: IntCounter,
    pub lock_released: IntCounter,
    pub lock_expiries: IntCounter,
    pub lock_wait_timeouts: IntCounter,
    pub lock_handoffs: IntCounter,
    pub lock_queued: IntCounter,
    pub lock_queue_full: IntCounter,
    pub lock_waiters_reattached: IntCounter,
    pub lock_orphans_dequeued: IntCounter,
}

impl ReplicaMetrics {
    /// A watch poll answered, with `result` (`events`, `empty`,
    /// `compacted`, `leader`).
    pub fn event_poll(&self, result: &str) {
        match result {
            "events" => self.event_polls_events.inc(),
            "compacted" => self.event_polls_compacted.inc(),
            "leader" => self.event_polls_leader.inc(),
            _ => self.event_polls_empty.inc(),
        }
    }

    pub fn new(node: u64, shard: u64) -> Self {
        let (n, s) = (node.to_string(), shard.to_string());
        let ns = [n.as_str(), s.as_str()];
        let r = &*RAFT;
        let proposals = |result: &str| r.proposals.with_label_values(&[&n, &s, result]);
        ReplicaMetrics {
            term: r.term.with_label_values(&ns),
            is_leader: r.is_leader.with_label_values(&ns),
            commit_index: r.commit_index.with_label_values(&ns),
            applied_index: r.applied_index.with_label_values(&ns),
            pending_requests: r.pending_requests.with_label_values(&ns),
            proposals_accepted: proposals("accepted"),
            proposals_dropped: proposals("dropped"),
            proposals_not_leader: proposals("not_leader"),
            proposals_overloaded: proposals("overloaded"),
            proposals_parked: proposals("parked_for_transfer"),
            ready_rounds: r.ready_rounds.with_label_values(&ns),
            ready_entries: r.ready_entries.with_label_values(&ns),
            applied_entries: r.applied_entries.with_label_values(&ns),
            read_index: r.read_index.with_label_values(&ns),
            lease_reads: r.lease_reads.with_label_values(&ns),
            votes_refused_after_restart: r.votes_refused.with_label_values(&ns),
            fast_failovers: r.fast_failovers.with_label_values(&ns),
            hibernating: r.hibernating.with_label_values(&[&n]),
            event_log_events: r.event_log_events.with_label_values(&ns),
            event_log_bytes: r.event_log_bytes.with_label_values(&ns),
            event_pollers: r.event_pollers.with_label_values(&ns),
            event_polls_events: r.event_polls.with_label_values(&[&n, "events"]),
            event_polls_empty: r.event_polls.with_label_values(&[&n, "empty"]),
            event_polls_compacted: r.event_polls.with_label_values(&[&n, "compacted"]),
            event_polls_leader: r.event_polls.with_label_values(&[&n, "leader"]),
            wakes_request: r.hibernation_wakes.with_label_values(&[&n, "request"]),
            wakes_message: r.hibernation_wakes.with_label_values(&[&n, "message"]),
            wakes_leader_unreachable: r.hibernation_wakes.with_label_values(&[&n, "leader_unreachable"]),
            snapshots_applied: r.snapshots.with_label_values(&[&n, &s, "applied"]),
            snapshots_refused: r.snapshots.with_label_values(&[&n, &s, "refused_overlap"]),
            requests_per_second: r.requests_per_second.with_label_values(&ns),
            hot_key: r.hot_key.with_label_values(&ns),
            splits_applied: r.splits.with_label_values(&[&n, "source"]),
            split_apply_seconds: r.split_count_seconds.with_label_values(&[&n]),
            stats_count_seconds: r.stats_count_seconds.with_label_values(&[&n]),
            log_compactions: r.log_compactions.with_label_values(&ns),
            conf_changes: r.conf_changes.with_label_values(&ns),
            replicas_destroyed: r.replicas_destroyed.with_label_values(&[&n]),
            ttl_expired_keys: r.ttl_expired_keys.with_label_values(&ns),
            retries_deduplicated: r.retries_deduplicated.with_label_values(&[&n, &s, "retry"]),
            late_first_tries_deduplicated: r.retries_deduplicated.with_label_values(&[&n, &s, "first"]),
            messages_sent: r.messages_sent.with_label_values(&ns),
            sst_bytes: ENGINE.sst_bytes.with_label_values(&[&n]),
            pending_compaction_bytes: ENGINE.pending_compaction_bytes.with_label_values(&[&n]),
            locks_held: LOCKS.held.with_label_values(&ns),
            lock_waiters: LOCKS.waiters.with_label_values(&ns),
            lock_granted: LOCKS.events.with_label_values(&[&n, &s, "granted"]),
            lock_conflicts: LOCKS.events.with_label_values(&[&n, &s, "conflict"]),
            lock_released: LOCKS.events.with_label_values(&[&n, &s, "released"]),
            lock_expiries: LOCKS.events.with_label_values(&[&n, &s, "expired"]),
            lock_wait_timeouts: LOCKS.events.with_label_values(&[&n, &s, "wait_timeout"]),
            lock_handoffs: LOCKS.events.with_label_values(&[&n, &s, "handoff"]),
            lock_queued: LOCKS.events.with_label_values(&[&n, &s, "queued"]),
            lock_queue_full: LOCKS.events.with_label_values(&[&n, &s, "queue_full"]),
            lock_waiters_reattached: LOCKS.events.with_label_values(&[&n, &s, "waiter_reattached"]),
            lock_orphans_dequeued: LOCKS.events.with_label_values(&[&n, &s, "orphan_dequeued"]),
        }
    }
}

/// One engine's write series, resolved once at open.
pub struct EngineWriteMetrics {
    pub synced_seconds: Histogram,
    pub unsynced_seconds: Histogram,
    pub bytes: IntCounter,
    pub wal_sync_seconds: Histogram,
    pub wal_sync_readies: Histogram,
    pub round_replicas: Histogram,
    pub entry_cache_hits: IntCounter,
    pub entry_cache_misses: IntCounter,
}

impl EngineWriteMetrics {
    pub fn new(node_label: &str) -> Self {
        let e = &*ENGINE;
        EngineWriteMetrics {
            synced_seconds: e.write_seconds.with_label_values(&[node_label, "true"]),
            unsynced_seconds: e.write_seconds.with_label_values(&[node_label, "false"]),
            bytes: e.write_bytes.with_label_values(&[node_label]),
            wal_sync_seconds: e.wal_sync_seconds.with_label_values(&[node_label]),
            wal_sync_readies: e.wal_sync_readies.with_label_values(&[node_label]),
            round_replicas: e.round_replicas.with_label_values(&[node_label]),
            entry_cache_hits: e.entry_cache_reads.with_label_values(&[node_label, "hit"]),
            entry_cache_misses: e.entry_cache_reads.with_label_values(&[node_label, "miss"]),
        }
    }
}
