//! A replica's in-memory lock bookkeeping, beside the replicated records:
//!
//! - [`LockIndex`]: every held lock, its lease and its queued sessions,
//!   kept in step with the applied records (and rebuilt from RocksDB at start and after a
//!   snapshot), so the leader's lease sweep never scans the data.
//! - [`Waiters`]: the leader's replies to acquirers that wait in a lock's
//!   queue. Their places in line are in the replicated record; only the
//!   reply channels are local. When a record changes, [`Waiters::settle`]
//!   says who was granted the lock and whose wait is over. A waiter whose
//!   leader steps down is told its outcome is unknown: the router's retry
//!   (same request id) finds its place again at the new leader.
//!
//! Both are plain data structures, tested without a runtime.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ringstore_shared::lock::{expiry_due, reattach, Holder, LockOutcome, LockRecord, SessionId};

#[derive(Default)]
pub struct LockIndex {
    held: HashMap<String, Holder>,
    /// Expiries proposed and not yet applied, so a slow commit is not
    /// proposed again every tick.
    proposed: HashSet<(String, u64)>,
    /// Sessions queued per lock (only held locks have a queue).
    queued: HashMap<String, Vec<SessionId>>,
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
        if rec.queue.is_empty() {
            self.queued.remove(name);
        } else {
            self.queued.insert(name.to_string(), rec.queue.iter().map(|q| q.session).collect());
        }
        self.proposed.retain(|(n, _)| n != name);
    }

    pub fn clear(&mut self) {
        self.held.clear();
        self.proposed.clear();
        self.queued.clear();
    }

    /// Whether any lock has waiters queued.
    pub fn has_queues(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Every lock with waiters, and their sessions in line order.
    pub fn queues(&self) -> impl Iterator<Item = (&str, &[SessionId])> {
        self.queued.iter().map(|(n, q)| (n.as_str(), q.as_slice()))
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
        self.queued.retain(|n, _| keep(n));
    }

    /// Takes out the locks `give` names (those a split hands to a new
    /// shard), as the new shard's index; expiries proposed here for them
    /// are forgotten (the new shard's leader decides its own).
    pub fn split_off(&mut self, give: impl Fn(&str) -> bool) -> LockIndex {
        let (gone, kept): (HashMap<_, _>, HashMap<_, _>) =
            std::mem::take(&mut self.held).into_iter().partition(|(n, _)| give(n));
        self.held = kept;
        self.proposed.retain(|(n, _)| !give(n));
        let (queued, kept): (HashMap<_, _>, HashMap<_, _>) =
            std::mem::take(&mut self.queued).into_iter().partition(|(n, _)| give(n));
        self.queued = kept;
        LockIndex { held: gone, proposed: HashSet::new(), queued }
    }

    /// A new leader re-decides every lease.
    pub fn forget_proposals(&mut self) {
        self.proposed.clear();
    }
}

/// A waiting acquirer's reply on the leader.
pub struct Waiter<T> {
    pub session: SessionId,
    /// When its wait ends by this leader's clock: then the leader proposes
    /// its dequeue, and the dequeue's apply answers it.
    pub deadline: Instant,
    /// A dequeue was proposed for it and has not applied yet.
    pub leaving: bool,
    pub reply: T,
}

pub struct Waiters<T> {
    by_name: HashMap<String, Vec<Waiter<T>>>,
    /// Queued sessions no reply here answers for, since when (see
    /// [`Waiters::orphans`]).
    orphans: HashMap<(String, SessionId), Instant>,
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Waiters { by_name: HashMap::new(), orphans: HashMap::new() }
    }
}

impl<T> Waiters<T> {
    /// Registers a reply; one of the same session (an earlier try of the
    /// same acquire on this leader) is returned to be dropped.
    pub fn insert(&mut self, name: &str, w: Waiter<T>) -> Option<Waiter<T>> {
        let list = self.by_name.entry(name.to_string()).or_default();
        match list.iter().position(|x| x.session == w.session) {
            Some(i) => Some(std::mem::replace(&mut list[i], w)),
            None => {
                list.push(w);
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// After `name`'s record became `rec`: removes and returns the waiters
    /// it settles, each with its answer as [`reattach`] decides it from the
    /// record (the retry of a waiter after a leader change is decided the
    /// same way): granted the lock, or no longer queued (409 naming the
    /// holder). Those still queued stay.
    pub fn settle(&mut self, name: &str, rec: &LockRecord) -> Vec<(Waiter<T>, LockOutcome)> {
        let Some(list) = self.by_name.get_mut(name) else { return Vec::new() };
        let mut out = Vec::new();
        let mut i = 0;
        while i < list.len() {
            match reattach(Some(rec), list[i].session) {
                LockOutcome::Queued { .. } => i += 1,
                answer => out.push((list.swap_remove(i), answer)),
            }
        }
        if list.is_empty() {
            self.by_name.remove(name);
        }
        out
    }

    /// Waiters to dequeue now: their wait ended at `now` or `alive` says
    /// their client is gone; each is marked leaving so it is proposed once.
    /// The flag says whether the wait ran out (rather than the client left).
    pub fn due(&mut self, now: Instant, alive: impl Fn(&T) -> bool) -> Vec<(String, SessionId, bool)> {
        let mut out = Vec::new();
        for (name, list) in &mut self.by_name {
            for w in list.iter_mut().filter(|w| !w.leaving) {
                let timed_out = w.deadline <= now;
                if timed_out || !alive(&w.reply) {
                    w.leaving = true;
                    out.push((name.clone(), w.session, timed_out));
                }
            }
        }
        out
    }

    /// A dequeue that could not be proposed is tried again next tick.
    pub fn stay(&mut self, name: &str, session: SessionId) {
        if let Some(w) = self.by_name.get_mut(name).and_then(|l| l.iter_mut().find(|w| w.session == session)) {
            w.leaving = false;
        }
    }

    /// Removes and returns the waiters of every lock `leave` picks.
    pub fn drain_where(&mut self, leave: impl Fn(&str) -> bool) -> Vec<Waiter<T>> {
        let names: Vec<String> = self.by_name.keys().filter(|n| leave(n)).cloned().collect();
        names.into_iter().filter_map(|n| self.by_name.remove(&n)).flatten().collect()
    }

    pub fn drain_all(&mut self) -> Vec<Waiter<T>> {
        self.orphans.clear();
        self.by_name.drain().flat_map(|(_, l)| l).collect()
    }

    fn has(&self, name: &str, session: SessionId) -> bool {
        self.by_name.get(name).is_some_and(|l| l.iter().any(|w| w.session == session))
    }

    /// Queued sessions (from `queues`) that no reply on this leader has
    /// answered for during `grace`: waiters whose client never came back
    /// after a leader change, or left before its acquire applied. Each is
    /// returned once per `grace`, to be dequeued, so the lock is not handed
    /// to nobody. `grace` leaves a retry time to re-attach.
    pub fn orphans<'a>(
        &mut self,
        queues: impl Iterator<Item = (&'a str, &'a [SessionId])>,
        now: Instant,
        grace: Duration,
    ) -> Vec<(String, SessionId)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (name, sessions) in queues {
            for &session in sessions {
                if self.has(name, session) {
                    continue;
                }
                let key = (name.to_string(), session);
                let since = self.orphans.entry(key.clone()).or_insert(now);
                if now.saturating_duration_since(*since) >= grace {
                    *since = now;
                    out.push(key.clone());
                }
                seen.insert(key);
            }
        }
        self.orphans.retain(|k, _| seen.contains(k));
        out
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
            queue: Vec::new(),
        }
    }

    fn waiter(session: SessionId, deadline: Instant, reply: u32) -> Waiter<u32> {
        Waiter { session, deadline, leaving: false, reply }
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
        ix.on_record("a", &LockRecord { holder: None, last_token: 1, queue: Vec::new() });
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
            w.insert(name, waiter(reply as u128, later, reply));
        }
        let gone: Vec<u32> = w.drain_where(|n| n == "go").into_iter().map(|w| w.reply).collect();
        assert_eq!(gone, vec![2, 3]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.drain_where(|n| n == "stay").len(), 1);
        assert!(w.is_empty());
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
    fn a_record_change_settles_the_granted_and_the_dequeued_waiters_only() {
        use ringstore_shared::lock::Queued;
        let later = Instant::now() + Duration::from_secs(10);
        let mut w: Waiters<u32> = Waiters::default();
        for s in [2, 3, 4] {
            assert!(w.insert("l", waiter(s, later, s as u32)).is_none());
        }
        assert_eq!(w.insert("l", waiter(3, later, 33)).map(|old| old.reply), Some(3), "a re-attach replaces");
        let q = |session| Queued { owner: "o".into(), session, ttl_ms: 1, wait_until_ms: 1 };
        // 2 got the lock; 3 still waits; 4's wait ended (skipped).
        let mut rec = holder(7, 100, 1);
        rec.holder.as_mut().unwrap().session = 2;
        rec.queue = vec![q(3)];
        let mut settled: Vec<(u32, LockOutcome)> = w.settle("l", &rec).into_iter().map(|(w, s)| (w.reply, s)).collect();
        settled.sort_by_key(|(r, _)| *r);
        assert!(matches!(&settled[0], (2, LockOutcome::Granted { token: 7, session: 2, .. })));
        assert!(matches!(&settled[1], (4, LockOutcome::Conflict { holder: Some(h) }) if h.session == 2));
        assert_eq!(settled.len(), 2);
        assert_eq!(w.len(), 1);
        assert!(w.settle("other", &rec).is_empty());
    }

    #[test]
    fn a_queued_session_nobody_answers_for_is_an_orphan_after_the_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(3);
        let mut w: Waiters<u32> = Waiters::default();
        w.insert("l", waiter(1, t0 + Duration::from_secs(60), 1));
        let queue = [1u128, 2, 3];
        let queues = || [("l", &queue[..])].into_iter();
        assert_eq!(w.orphans(queues(), t0, grace), vec![], "2 and 3 get time to re-attach");
        // 3 re-attaches in time.
        w.insert("l", waiter(3, t0 + Duration::from_secs(60), 3));
        assert_eq!(w.orphans(queues(), t0 + grace, grace), vec![("l".to_string(), 2)]);
        assert_eq!(w.orphans(queues(), t0 + grace, grace), vec![], "once per grace");
        assert_eq!(w.orphans(queues(), t0 + grace * 2, grace), vec![("l".to_string(), 2)], "unless still queued");
        // Gone from the queue: forgotten.
        let rest = [1u128, 3];
        assert_eq!(w.orphans([("l", &rest[..])].into_iter(), t0 + grace * 5, grace), vec![]);
        assert!(w.orphans.is_empty());
        let mut ix = LockIndex::default();
        let mut rec = holder(1, 100, 1);
        rec.queue = vec![ringstore_shared::lock::Queued { owner: "q".into(), session: 2, ttl_ms: 1, wait_until_ms: 9 }];
        ix.on_record("l", &rec);
        assert!(ix.has_queues());
        assert_eq!(ix.queues().collect::<Vec<_>>(), vec![("l", &[2u128][..])]);
        let given = ix.split_off(|n| n == "l");
        assert!(!ix.has_queues() && given.has_queues(), "a split hands the queue over");
    }

    #[test]
    fn a_wait_that_ran_out_or_lost_its_client_is_dequeued_once() {
        let now = Instant::now();
        let mut w: Waiters<u32> = Waiters::default();
        w.insert("l", waiter(1, now, 1));
        w.insert("l", waiter(2, now + Duration::from_secs(10), 2));
        w.insert("m", waiter(3, now + Duration::from_secs(10), 3));
        let mut due = w.due(now, |r| *r != 3);
        due.sort();
        assert_eq!(due, vec![("l".to_string(), 1, true), ("m".to_string(), 3, false)]);
        assert_eq!(w.due(now, |r| *r != 3), vec![], "proposed once");
        w.stay("m", 3);
        assert_eq!(w.due(now, |r| *r != 3), vec![("m".to_string(), 3, false)], "unless the proposal failed");
        assert_eq!(w.len(), 3, "a dequeue's apply removes them, not due()");
    }
}
