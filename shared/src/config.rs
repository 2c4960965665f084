//! Limits and timing. Every bound is named with its unit, and every one is
//! enforced and tested somewhere.

/// Data shards a new cluster gets unless told otherwise.
pub const DEFAULT_SHARDS: u64 = 16;
/// Most data shards a cluster may be bootstrapped with: every node may run
/// a replica of all of them. A quiet one hibernates (no heartbeats) and
/// costs little memory, but the ring holds 1,024 points per shard and a
/// node starts every replica at once (`loadtest/bench-idle.sh`).
pub const SHARDS_MAX: u64 = 1024;

/// Request limits enforced at the edge (API) and again at the storage actor.
#[derive(Debug, Clone)]
pub struct Limits {
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    /// Deadline of a request that does not set `X-Request-Timeout`.
    pub request_timeout_ms_default: u64,
    /// Smallest deadline a client may ask for: less cannot cover a
    /// replication round and an fsync, so it could only end in a timeout.
    pub request_timeout_ms_min: u64,
    /// Largest deadline a client may ask for.
    pub request_timeout_ms_max: u64,
    /// Longest TTL a value may carry (100 years).
    pub ttl_ms_max: u64,
    /// Proposals plus reads waiting at one replica before it answers 503.
    pub pending_requests_max: usize,
    /// Longest lock lease a client may ask for (1 hour).
    pub lock_ttl_ms_max: u64,
    /// Longest lock owner id.
    pub lock_owner_bytes_max: usize,
    /// Waiters one lock's queue may hold (at most `lock::QUEUE_MAX`).
    pub lock_waiters_max: usize,
    /// Watch streams one node serves at once (503 beyond).
    pub watchers_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 4 * 1024,
            value_bytes_max: 1024 * 1024,
            request_timeout_ms_default: 5_000,
            request_timeout_ms_min: 100,
            request_timeout_ms_max: 60_000,
            ttl_ms_max: 100 * 365 * 24 * 3600 * 1000,
            pending_requests_max: 16 * 1024,
            lock_ttl_ms_max: 3_600_000,
            lock_owner_bytes_max: 256,
            lock_waiters_max: crate::lock::QUEUE_MAX,
            watchers_max: 4096,
        }
    }
}

/// Raft timing and log maintenance for every shard replica.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub tick_interval_ms: u64,
    /// Election timeout in ticks; randomized in `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Compact the log once it holds this many applied entries.
    pub log_gc_threshold_entries: u64,
    /// Applied entries kept after compaction so a briefly lagging follower
    /// catches up from the log instead of a snapshot.
    pub log_gc_keep_entries: u64,
    /// `false` only for benchmarks: acknowledged writes can be lost on a crash.
    pub sync_wal: bool,
    pub ttl_sweep_interval_ms: u64,
    pub ttl_sweep_keys_max: usize,
    pub max_size_per_msg_bytes: u64,
    pub max_inflight_msgs: usize,
    /// Leaders answer linearizable reads from a lease when they hold one
    /// ([`crate::lease`]); `false`: every read takes a ReadIndex round.
    pub lease_reads: bool,
    /// How much faster than real time any node's clock may run over one
    /// election timeout; subtracted from the lease.
    pub max_clock_drift_ms: u64,
    /// A follower whose link to its leader is down campaigns once this many
    /// ticks have passed since it last heard from the leader, instead of a
    /// whole election timeout; 0: off ([`crate::lease::failover_wait`]).
    pub fast_failover_ticks: usize,
    /// A leader whose group has had nothing to do for this many ticks puts
    /// it to sleep: no ticks, no heartbeats until a request, a message or a
    /// dead leader's link wakes it; 0: never (see
    /// `ringstore_storage::hibernate`).
    pub hibernate_after_ticks: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            tick_interval_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            log_gc_threshold_entries: 10_000,
            log_gc_keep_entries: 1_000,
            sync_wal: true,
            ttl_sweep_interval_ms: 1_000,
            ttl_sweep_keys_max: 1_024,
            max_size_per_msg_bytes: 1024 * 1024,
            max_inflight_msgs: 256,
            lease_reads: true,
            max_clock_drift_ms: 100,
            fast_failover_ticks: 5,
            hibernate_after_ticks: 10,
        }
    }
}

impl RaftConfig {
    pub fn election_timeout_ms(&self) -> u64 {
        self.tick_interval_ms * self.election_ticks as u64
    }
}
