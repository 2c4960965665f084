//! [`LeaderHints`]: what this node's replicas know about who leads their
//! shards, published by each replica the moment its Raft state says the
//! leader changed. Routers on the node read it before every request, so a
//! leader change seen by any local replica redirects traffic at once,
//! instead of being discovered by a request that waits on the old leader.
//!
//! It also says how long a shard has had no known leader here: a node cut
//! off from its peers learns it from its own replicas (check-quorum makes
//! a cut-off leader step down, pre-vote keeps a cut-off follower leaderless)
//! and can answer 503 at once instead of at the request's deadline.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use ringstore_shared::{NodeId, ShardId};

/// One local replica's view of its shard's leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint {
    /// `None` while the replica knows no leader (election, cut off).
    pub leader: Option<NodeId>,
    pub term: u64,
    /// When the replica's view last changed.
    pub since: Instant,
}

/// One per node. Written on role changes only (rare), read on every
/// request: an uncontended `RwLock` read is a few nanoseconds and no
/// await happens while it is held.
#[derive(Debug)]
pub struct LeaderHints {
    election_timeout: Duration,
    shards: RwLock<HashMap<ShardId, Hint>>,
}

impl LeaderHints {
    /// `election_timeout` is the replicas' (minimum) election timeout.
    pub fn new(election_timeout: Duration) -> Self {
        LeaderHints { election_timeout, shards: RwLock::default() }
    }

    pub fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    /// Called by a replica of `shard` on this node when its view changes.
    pub fn observe(&self, shard: ShardId, leader: Option<NodeId>, term: u64) {
        let mut shards = self.shards.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let hint = shards.entry(shard).or_insert(Hint { leader, term, since: now });
        if hint.leader != leader {
            hint.since = now;
        }
        hint.leader = leader;
        hint.term = hint.term.max(term);
    }

    /// The replica of `shard` on this node stopped.
    pub fn forget(&self, shard: ShardId) {
        self.shards.write().unwrap_or_else(|e| e.into_inner()).remove(&shard);
    }

    /// The local replica's view of `shard`, if this node has one.
    pub fn get(&self, shard: ShardId) -> Option<Hint> {
        self.shards.read().unwrap_or_else(|e| e.into_inner()).get(&shard).copied()
    }
}

impl Hint {
    /// How long the replica has known no leader (`None`: it knows one).
    pub fn leaderless_for(&self, now: Instant) -> Option<Duration> {
        self.leader.is_none().then(|| now.saturating_duration_since(self.since))
    }
}

impl Default for LeaderHints {
    fn default() -> Self {
        LeaderHints::new(Duration::from_millis(ringstore_shared::config::RaftConfig::default().election_timeout_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_of_leader_restarts_the_clock_and_terms_only_grow() {
        let h = LeaderHints::new(Duration::from_secs(1));
        assert_eq!(h.get(1), None);
        h.observe(1, Some(2), 5);
        let first = h.get(1).unwrap();
        assert_eq!((first.leader, first.term), (Some(2), 5));
        h.observe(1, Some(2), 5);
        assert_eq!(h.get(1).unwrap().since, first.since, "same view: the clock keeps running");
        h.observe(1, None, 4);
        let none = h.get(1).unwrap();
        assert_eq!((none.leader, none.term), (None, 5));
        assert!(none.since >= first.since);
        let later = none.since + Duration::from_millis(700);
        assert_eq!(none.leaderless_for(later), Some(Duration::from_millis(700)));
        h.observe(1, Some(3), 6);
        assert_eq!(h.get(1).unwrap().leaderless_for(later), None);
        h.forget(1);
        assert_eq!(h.get(1), None);
    }
}
