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
    /// Woken on every change of a leader: requests waiting out an
    /// election ([`LeaderHints::changed_within`]) go the moment it ends.
    changed: tokio::sync::Notify,
}

impl LeaderHints {
    /// `election_timeout` is the replicas' (minimum) election timeout.
    pub fn new(election_timeout: Duration) -> Self {
        LeaderHints { election_timeout, shards: RwLock::default(), changed: tokio::sync::Notify::new() }
    }

    pub fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    /// Called by a replica of `shard` on this node when its view changes.
    pub fn observe(&self, shard: ShardId, leader: Option<NodeId>, term: u64) {
        let mut shards = self.shards.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let hint = shards.entry(shard).or_insert(Hint { leader: None, term, since: now });
        let changed = hint.leader != leader;
        if changed {
            hint.since = now;
        }
        hint.leader = leader;
        hint.term = hint.term.max(term);
        drop(shards);
        if changed && leader.is_some() {
            self.changed.notify_waiters();
        }
    }

    /// Waits up to `wait` for this node's replica of `shard` to know a
    /// leader other than `before` (the view a failed attempt was made
    /// with), and returns it; `None` when `wait` passes first. A request
    /// that found no leader waits here rather than a fixed backoff, so it
    /// goes on the moment an election (after a split, a crash) ends.
    pub async fn changed_within(&self, shard: ShardId, before: Option<Hint>, wait: Duration) -> Option<NodeId> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a change in between wakes it.
            notified.as_mut().enable();
            if let Some(h) = self.get(shard) {
                if h.leader.is_some() && Some(h) != before {
                    return h.leader;
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => return None,
            }
        }
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

    #[test]
    fn a_waiter_goes_on_when_a_leader_appears_and_not_before() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        rt.block_on(async {
            let h = std::sync::Arc::new(LeaderHints::new(Duration::from_secs(1)));
            h.observe(1, None, 3);
            let before = h.get(1);
            // Nothing changes: the wait runs out.
            assert_eq!(h.changed_within(1, before, Duration::from_millis(20)).await, None);
            let h2 = h.clone();
            let waiter = tokio::spawn(async move { h2.changed_within(1, before, Duration::from_secs(10)).await });
            tokio::task::yield_now().await;
            let start = Instant::now();
            h.observe(1, Some(2), 4);
            assert_eq!(waiter.await.expect("joined"), Some(2));
            assert!(start.elapsed() < Duration::from_secs(5), "woken by the change, not by the wait");
            // A view the failed attempt already had does not count as news.
            let seen = h.get(1);
            assert_eq!(h.changed_within(1, seen, Duration::from_millis(20)).await, None);
        });
    }
}
