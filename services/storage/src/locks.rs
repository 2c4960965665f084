//! A replica's in-memory lock bookkeeping, beside the replicated records:
//!
//! - [`LockIndex`]: every held lock and its lease, kept in step with the
//!   applied records (and rebuilt from RocksDB at start and after a
//!   snapshot), so the leader's lease sweep never scans the data.
//! - [`Waiters`]: acquirers waiting for a lock, FIFO per name. Leader-local:
//!   a waiter whose leader steps down is told to retry at the new leader
//!   (nothing was applied on its behalf).
//!
//! Both are plain data structures, tested without a runtime.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use ringstore_shared::lock::{expiry_due, Holder, LockRecord};

#[derive(Default)]
pub struct LockIndex {
    held: HashMap<String, Holder>,
    /// Expiries proposed and not yet applied, so a slow commit is not
    /// proposed again every tick.
    proposed: HashSet<(String, u64)>,
}

impl LockIndex {
    pub fn on_record(&mut self, name: &str, rec: &LockRecord) {
        match &rec.holder {
            Some(h) => {
                self.held.insert(name.to_string(), h.clone());
            }
            None => {
                self.held.remove(name);
            }
        }
        self.proposed.retain(|(n, _)| n != name);
    }

    pub fn clear(&mut self) {
        self.held.clear();
        self.proposed.clear();
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Leases the leader (at `now_ms` in `term`) may expire now, at most
    /// `max`, each proposed once.
    pub fn due(&mut self, now_ms: u64, term: u64, grace_ms: u64, max: usize) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (name, h) in &self.held {
            if out.len() >= max {
                break;
            }
            let key = (name.clone(), h.token);
            if expiry_due(h, now_ms, term, grace_ms) && !self.proposed.contains(&key) {
                out.push(key);
            }
        }
        self.proposed.extend(out.iter().cloned());
        out
    }

    /// Keeps only the locks `keep` says are still this shard's (after a
    /// split gave some names' ranges away).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.held.retain(|n, _| keep(n));
        self.proposed.retain(|(n, _)| keep(n));
    }

    /// Takes out the locks `give` names (those a split hands to a new
    /// shard), as the new shard's index; expiries proposed here for them
    /// are forgotten (the new shard's leader decides its own).
    pub fn split_off(&mut self, give: impl Fn(&str) -> bool) -> LockIndex {
        let (gone, kept): (HashMap<_, _>, HashMap<_, _>) =
            std::mem::take(&mut self.held).into_iter().partition(|(n, _)| give(n));
        self.held = kept;
        self.proposed.retain(|(n, _)| !give(n));
        LockIndex { held: gone, proposed: HashSet::new() }
    }

    /// A new leader re-decides every lease.
    pub fn forget_proposals(&mut self) {
        self.proposed.clear();
    }
}

pub struct Waiter<T> {
    pub owner: String,
    /// Drawn for this acquire; the holder's session if it is granted.
    pub session: ringstore_shared::lock::SessionId,
    pub ttl_ms: u64,
    pub deadline: Instant,
    pub reply: T,
}

pub struct Waiters<T> {
    queues: HashMap<String, VecDeque<Waiter<T>>>,
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Waiters { queues: HashMap::new() }
    }
}

impl<T> Waiters<T> {
    pub fn push_back(&mut self, name: &str, w: Waiter<T>) {
        self.queues.entry(name.to_string()).or_default().push_back(w);
    }

    /// For a waiter that lost a race for a lock it was handed: it keeps its place.
    pub fn push_front(&mut self, name: &str, w: Waiter<T>) {
        self.queues.entry(name.to_string()).or_default().push_front(w);
    }

    pub fn has_waiters(&self, name: &str) -> bool {
        self.queues.get(name).is_some_and(|q| !q.is_empty())
    }

    pub fn owners(&self, name: &str) -> Vec<String> {
        self.queues.get(name).map(|q| q.iter().map(|w| w.owner.clone()).collect()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first waiter for `name` still worth handing the lock to.
    pub fn pop_front(&mut self, name: &str, now: Instant, alive: impl Fn(&T) -> bool) -> Option<Waiter<T>> {
        let q = self.queues.get_mut(name)?;
        let mut found = None;
        let mut ended = Vec::new();
        while let Some(w) = q.pop_front() {
            if !alive(&w.reply) {
                continue; // the client gave up: nobody to answer
            }
            if w.deadline <= now {
                ended.push(w); // answered (409) by `take_expired`
                continue;
            }
            found = Some(w);
            break;
        }
        for w in ended.into_iter().rev() {
            q.push_front(w);
        }
        if q.is_empty() {
            self.queues.remove(name);
        }
        found
    }

    /// Removes and returns every waiter whose wait ended, with its lock name.
    pub fn take_expired(&mut self, now: Instant) -> Vec<(String, Waiter<T>)> {
        let mut out = Vec::new();
        for (name, q) in self.queues.iter_mut() {
            let (keep, gone): (VecDeque<_>, VecDeque<_>) = q.drain(..).partition(|w| w.deadline > now);
            *q = keep;
            out.extend(gone.into_iter().map(|w| (name.clone(), w)));
        }
        self.queues.retain(|_, q| !q.is_empty());
        out
    }

    /// Removes and returns the waiters of every lock `leave` picks.
    pub fn drain_where(&mut self, leave: impl Fn(&str) -> bool) -> Vec<Waiter<T>> {
        let names: Vec<String> = self.queues.keys().filter(|n| leave(n)).cloned().collect();
        names.into_iter().filter_map(|n| self.queues.remove(&n)).flatten().collect()
    }

    pub fn drain_all(&mut self) -> Vec<Waiter<T>> {
        self.queues.drain().flat_map(|(_, q)| q).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn holder(token: u64, expires: u64, term: u64) -> LockRecord {
        LockRecord {
            holder: Some(Holder {
                owner: "o".into(),
                session: 1,
                token,
                hold_count: 1,
                expires_at_ms: expires,
                granted_term: term,
            }),
            last_token: token,
        }
    }

    #[test]
    fn index_proposes_each_due_lease_once() {
        let mut ix = LockIndex::default();
        ix.on_record("a", &holder(1, 100, 2));
        ix.on_record("b", &holder(2, 500, 2));
        assert_eq!(ix.due(99, 2, 50, 10), vec![]);
        assert_eq!(ix.due(100, 2, 50, 10), vec![("a".to_string(), 1)]);
        assert_eq!(ix.due(100, 2, 50, 10), vec![], "already proposed");
        // A new leader (term 3) waits out the grace on leases of term 2.
        ix.forget_proposals();
        assert_eq!(ix.due(120, 3, 50, 10), vec![]);
        assert_eq!(ix.due(150, 3, 50, 10), vec![("a".to_string(), 1)]);
        ix.on_record("a", &LockRecord { holder: None, last_token: 1 });
        assert_eq!(ix.held(), 1);
    }

    #[test]
    fn a_split_keeps_only_the_locks_and_waiters_left_here() {
        let mut ix = LockIndex::default();
        ix.on_record("stay", &holder(1, 100, 2));
        ix.on_record("go", &holder(2, 100, 2));
        ix.retain(|n| n == "stay");
        assert_eq!(ix.held(), 1);
        assert_eq!(ix.due(1_000, 2, 0, 10), vec![("stay".to_string(), 1)], "the given-away lease is not swept here");
        let later = Instant::now() + Duration::from_secs(10);
        let mut w: Waiters<u32> = Waiters::default();
        for (name, reply) in [("stay", 1), ("go", 2), ("go", 3)] {
            w.push_back(name, Waiter { owner: "o".into(), session: 0, ttl_ms: 1, deadline: later, reply });
        }
        let gone: Vec<u32> = w.drain_where(|n| n == "go").into_iter().map(|w| w.reply).collect();
        assert_eq!(gone, vec![2, 3], "in queue order");
        assert_eq!(w.len(), 1);
        assert!(w.has_waiters("stay"));
    }

    #[test]
    fn a_split_hands_its_given_locks_to_the_new_shard() {
        let mut ix = LockIndex::default();
        ix.on_record("stay", &holder(1, 100, 2));
        ix.on_record("go", &holder(2, 100, 2));
        assert_eq!(ix.due(1_000, 2, 0, 10).len(), 2, "both proposed here");
        let mut given = ix.split_off(|n| n == "go");
        assert_eq!((ix.held(), given.held()), (1, 1));
        assert_eq!(given.due(1_000, 2, 0, 10), vec![("go".to_string(), 2)], "the new shard decides its own expiry");
        assert_eq!(ix.due(1_000, 2, 0, 10), vec![], "stay's expiry is still proposed here");
    }

    #[test]
    fn waiters_are_fifo_and_expire() {
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let mut w: Waiters<u32> = Waiters::default();
        for (i, owner) in ["x", "y", "z"].iter().enumerate() {
            w.push_back(
                "l",
                Waiter {
                    owner: owner.to_string(),
                    session: i as u128 + 1,
                    ttl_ms: 1,
                    deadline: later,
                    reply: i as u32,
                },
            );
        }
        w.push_back("m", Waiter { owner: "old".into(), session: 9, ttl_ms: 1, deadline: now, reply: 9 });
        assert_eq!(w.owners("l"), vec!["x", "y", "z"]);
        // `y` gave up (its reply channel is gone): skipped.
        assert_eq!(w.pop_front("l", now, |_| true).unwrap().owner, "x");
        assert_eq!(w.pop_front("l", now, |r| *r != 1).unwrap().owner, "z");
        assert!(!w.has_waiters("l"));
        let gone = w.take_expired(now);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, "m");
        assert!(w.is_empty());
    }
}
