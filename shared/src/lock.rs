//! Lock rules: the replicated lock record and fence record, their codecs,
//! and the deterministic decisions on acquire, release, refresh and
//! expire. Pure: replicas call these with the entry's index, term and
//! leader stamp and reach the same state.
//!
//! - A lock is held by one session with a hold count (reentrancy) and a
//!   lease (`expires_at_ms`, leader wall clock). The session is a random
//!   128-bit id the leader issues on an acquire that presents none;
//!   re-entering, refreshing and releasing must present it (and the
//!   token). The owner is only a label for people: two clients that pick
//!   the same owner string still exclude each other (etcd's lease ids and
//!   Consul's sessions do the same job). A session is never shown to
//!   anyone but the acquirer, unlike the owner and the token. Only an `Expire` command,
//!   proposed by the leader after checking its own clock, frees a lock
//!   whose owner stopped refreshing; apply re-checks the stamp.
//! - Fencing tokens strictly increase per lock name: a new holder gets
//!   `max(entry index, last_token + 1)`. The record keeps `last_token`
//!   after release, so tokens never repeat across holders, leader changes
//!   and restarts (and, by carrying the record, range moves).
//! - A fence record per data key remembers the highest token per lock that
//!   wrote it; a fenced write with a smaller token is refused.
//! - Waiters queue in the record itself (FIFO, at most the acquire's
//!   `queue_max`, itself at most [`QUEUE_MAX`]): an
//!   acquire that may wait joins the back; the apply that frees the lock
//!   (last release, or expiry) grants it to the first waiter whose wait has
//!   not ended at that entry's stamp, in the same entry: a handoff is one
//!   Raft round, and the queue, being replicated, keeps every waiter's
//!   place across a leader change. Invariant: a free lock has an empty
//!   queue.

use crate::codec::{CodecError, Reader, Writer};

const FORMAT_V1: u8 = 1;
/// Adds the waiter queue. A record with an empty queue is still written
/// as V1, readable by nodes that predate queues.
const FORMAT_V2: u8 = 2;

/// Most waiters one lock may queue, and the default of the configured
/// limit (`Limits::lock_waiters_max`, carried in each waiting acquire so
/// every replica decides alike); an acquire beyond it fails at once
/// (`QueueFull`), so a record stays small (it is rewritten on each change).
pub const QUEUE_MAX: usize = 256;

/// A lock session id. 0 never names a session: a holder recorded before
/// sessions existed carries 0, and only its lease can end it.
pub type SessionId = u128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// A label for people (logs, status); never used to decide.
    pub owner: String,
    pub session: SessionId,
    pub token: u64,
    pub hold_count: u32,
    pub expires_at_ms: u64,
    /// Raft term of the entry that granted or last refreshed the lease. A
    /// leader of a later term adds the election timeout before expiring it.
    pub granted_term: u64,
}

/// A session waiting for a lock, in the replicated queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub owner: String,
    pub session: SessionId,
    /// The lease it gets when granted.
    pub ttl_ms: u64,
    /// Leader stamp at which its wait ends: a grant at or after it skips
    /// the waiter.
    pub wait_until_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockRecord {
    pub holder: Option<Holder>,
    /// Highest token ever granted under this name.
    pub last_token: u64,
    /// Waiters, first in line first. Empty while the lock is free.
    pub queue: Vec<Queued>,
}

/// What a lock command did; the API turns it into a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    Granted {
        token: u64,
        hold_count: u32,
        expires_at_ms: u64,
        session: SessionId,
    },
    /// Held by another session (acquire), or the caller's session and
    /// token do not hold it (release, refresh, or a re-entry whose earlier
    /// hold ended). Nothing changed.
    Conflict {
        holder: Option<Holder>,
    },
    Released {
        hold_count: u32,
    },
    Refreshed {
        token: u64,
        hold_count: u32,
        expires_at_ms: u64,
    },
    /// Result of a leader's expiry: `freed` false if the holder changed or
    /// refreshed in between.
    Expired {
        freed: bool,
    },
    /// Held by another session: `session` waits in the queue at `position`
    /// (1: next) until the stamp `wait_until_ms`.
    Queued {
        session: SessionId,
        position: u32,
        wait_until_ms: u64,
    },
    /// Held, and `limit` waiters (the acquire's `queue_max`) already
    /// queue: nothing changed.
    QueueFull {
        limit: u32,
    },
    /// A dequeue: `removed` false if the session was no longer queued
    /// (granted, or skipped because its wait had ended).
    Dequeued {
        removed: bool,
    },
}

/// An acquire as the state machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcquireBy<'a> {
    pub owner: &'a str,
    /// The caller's session (`reentry`) or one the leader just issued.
    pub session: SessionId,
    /// The caller presented `session` to re-enter a lock it holds.
    pub reentry: bool,
    pub ttl_ms: u64,
    /// > 0: queue for this long if another session holds the lock.
    pub wait_ms: u64,
    /// Waiters the queue may hold (at most [`QUEUE_MAX`]).
    pub queue_max: usize,
}

/// Hands a free lock to the first waiter whose wait has not ended at
/// `now_ms`; those whose wait has ended are dropped on the way. Returns
/// whether someone got it.
fn grant_next(rec: &mut LockRecord, now_ms: u64, index: u64, term: u64) -> bool {
    debug_assert!(rec.holder.is_none());
    while !rec.queue.is_empty() {
        let w = rec.queue.remove(0);
        if now_ms >= w.wait_until_ms {
            continue;
        }
        let token = index.max(rec.last_token + 1);
        rec.last_token = token;
        rec.holder = Some(Holder {
            owner: w.owner,
            session: w.session,
            token,
            hold_count: 1,
            expires_at_ms: now_ms.saturating_add(w.ttl_ms),
            granted_term: term,
        });
        return true;
    }
    false
}

/// Applies an acquire at `now_ms` (the entry's stamp).
pub fn acquire(
    rec: Option<LockRecord>,
    by: AcquireBy<'_>,
    now_ms: u64,
    index: u64,
    term: u64,
) -> (Option<LockRecord>, LockOutcome) {
    let mut rec = rec.unwrap_or_default();
    // A free lock with waiters (only a record from before this rule can be
    // one): they go first, and the record changes even if none of them is
    // still waiting (they leave the queue).
    let mut dirty = rec.holder.is_none() && !rec.queue.is_empty();
    if dirty {
        grant_next(&mut rec, now_ms, index, term);
    }
    let expires_at_ms = now_ms.saturating_add(by.ttl_ms);
    let changed = |rec: LockRecord, dirty: bool| dirty.then_some(rec);
    match &mut rec.holder {
        Some(h) if h.session == by.session && by.session != 0 => {
            // Reentrant: same token, one more hold, and the lease renewed.
            h.hold_count = h.hold_count.saturating_add(1);
            h.expires_at_ms = h.expires_at_ms.max(expires_at_ms);
            h.granted_term = term;
            let out = LockOutcome::Granted {
                token: h.token,
                hold_count: h.hold_count,
                expires_at_ms: h.expires_at_ms,
                session: h.session,
            };
            (Some(rec), out)
        }
        Some(h) if by.wait_ms == 0 || by.reentry || by.session == 0 => {
            let out = LockOutcome::Conflict { holder: Some(h.clone()) };
            (changed(rec, dirty), out)
        }
        Some(_) => {
            if let Some(i) = rec.queue.iter().position(|q| q.session == by.session) {
                let q = &rec.queue[i];
                let out =
                    LockOutcome::Queued { session: q.session, position: i as u32 + 1, wait_until_ms: q.wait_until_ms };
                return (changed(rec, dirty), out);
            }
            let limit = by.queue_max.clamp(1, QUEUE_MAX);
            if rec.queue.len() >= limit {
                return (changed(rec, dirty), LockOutcome::QueueFull { limit: limit as u32 });
            }
            let wait_until_ms = now_ms.saturating_add(by.wait_ms);
            rec.queue.push(Queued {
                owner: by.owner.to_string(),
                session: by.session,
                ttl_ms: by.ttl_ms,
                wait_until_ms,
            });
            dirty = true;
            let out = LockOutcome::Queued { session: by.session, position: rec.queue.len() as u32, wait_until_ms };
            (changed(rec, dirty), out)
        }
        // A re-entry into a lock that is free: the caller's hold ended
        // (lease expired). Granting it would let it believe it still held
        // what it held before; it must acquire anew.
        None if by.reentry || by.session == 0 => (changed(rec, dirty), LockOutcome::Conflict { holder: None }),
        None => {
            let token = index.max(rec.last_token + 1);
            rec.last_token = token;
            rec.holder = Some(Holder {
                owner: by.owner.to_string(),
                session: by.session,
                token,
                hold_count: 1,
                expires_at_ms,
                granted_term: term,
            });
            (Some(rec), LockOutcome::Granted { token, hold_count: 1, expires_at_ms, session: by.session })
        }
    }
}

/// What a retried acquire whose first try queued (`session`) finds now:
/// the lock granted to it, its place in the queue, or neither (its wait
/// ended, or its grant's lease did). Changes nothing; a new leader uses it
/// to re-attach a waiter whose answer was lost with the old one.
pub fn reattach(rec: Option<&LockRecord>, session: SessionId) -> LockOutcome {
    let Some(rec) = rec else { return LockOutcome::Conflict { holder: None } };
    match &rec.holder {
        Some(h) if h.session == session => {
            LockOutcome::Granted { token: h.token, hold_count: h.hold_count, expires_at_ms: h.expires_at_ms, session }
        }
        holder => match rec.queue.iter().position(|q| q.session == session) {
            Some(i) => {
                LockOutcome::Queued { session, position: i as u32 + 1, wait_until_ms: rec.queue[i].wait_until_ms }
            }
            None => LockOutcome::Conflict { holder: holder.clone() },
        },
    }
}

/// Takes `session` out of the queue (its wait ended or its client left).
pub fn dequeue(rec: Option<LockRecord>, session: SessionId) -> (Option<LockRecord>, LockOutcome) {
    let Some(mut rec) = rec else { return (None, LockOutcome::Dequeued { removed: false }) };
    let before = rec.queue.len();
    rec.queue.retain(|q| q.session != session);
    if rec.queue.len() == before {
        return (None, LockOutcome::Dequeued { removed: false });
    }
    (Some(rec), LockOutcome::Dequeued { removed: true })
}

fn is_holder(rec: &LockRecord, session: SessionId, token: u64) -> bool {
    rec.holder.as_ref().is_some_and(|h| h.session == session && session != 0 && h.token == token)
}

/// The answer to a release or refresh by someone who does not hold the
/// lock: nothing changes, and the caller learns who does.
fn not_holder(rec: Option<LockRecord>) -> (Option<LockRecord>, LockOutcome) {
    (None, LockOutcome::Conflict { holder: rec.and_then(|r| r.holder) })
}

/// Release by `session` holding `token`: one hold less; at zero the lock
/// goes to the first live waiter, in this same entry.
pub fn release(
    rec: Option<LockRecord>,
    session: SessionId,
    token: u64,
    now_ms: u64,
    index: u64,
    term: u64,
) -> (Option<LockRecord>, LockOutcome) {
    let mut rec = match rec {
        Some(r) if is_holder(&r, session, token) => r,
        other => return not_holder(other),
    };
    let h = rec.holder.as_mut().expect("is_holder checked the holder");
    h.hold_count = h.hold_count.saturating_sub(1);
    let left = h.hold_count;
    if left == 0 {
        rec.holder = None;
        grant_next(&mut rec, now_ms, index, term);
    }
    (Some(rec), LockOutcome::Released { hold_count: left })
}

pub fn refresh(
    rec: Option<LockRecord>,
    session: SessionId,
    token: u64,
    ttl_ms: u64,
    now_ms: u64,
    term: u64,
) -> (Option<LockRecord>, LockOutcome) {
    let mut rec = match rec {
        Some(r) if is_holder(&r, session, token) => r,
        other => return not_holder(other),
    };
    let h = rec.holder.as_mut().expect("is_holder checked the holder");
    h.expires_at_ms = now_ms.saturating_add(ttl_ms);
    h.granted_term = term;
    let out = LockOutcome::Refreshed { token: h.token, hold_count: h.hold_count, expires_at_ms: h.expires_at_ms };
    (Some(rec), out)
}

/// The leader's expiry of the lease `token`, re-checked at the stamp; the
/// lock goes to the first live waiter, in this same entry.
pub fn expire(
    rec: Option<LockRecord>,
    token: u64,
    now_ms: u64,
    index: u64,
    term: u64,
) -> (Option<LockRecord>, LockOutcome) {
    match rec {
        Some(mut r) if r.holder.as_ref().is_some_and(|h| h.token == token && now_ms >= h.expires_at_ms) => {
            r.holder = None;
            grant_next(&mut r, now_ms, index, term);
            (Some(r), LockOutcome::Expired { freed: true })
        }
        _ => (None, LockOutcome::Expired { freed: false }),
    }
}

/// When the leader, at `now_ms` in `term`, may expire `h`: at its expiry,
/// plus `grace_ms` (the election timeout) if an earlier leader granted it,
/// so a leader change never shortens a lease even if the new leader's
/// clock runs ahead by less than the grace.
pub fn expiry_due(h: &Holder, now_ms: u64, term: u64, grace_ms: u64) -> bool {
    let deadline = if h.granted_term < term { h.expires_at_ms.saturating_add(grace_ms) } else { h.expires_at_ms };
    now_ms >= deadline
}

const HOLDER_NONE: u8 = 0;
/// A holder from before sessions (read only; its session is 0).
const HOLDER_V1: u8 = 1;
const HOLDER_V2: u8 = 2;

/// Writes an optional holder (also used by the peer protocol).
pub fn put_holder(w: &mut Writer, h: &Option<Holder>) {
    match h {
        None => w.u8(HOLDER_NONE),
        Some(h) => {
            w.u8(HOLDER_V2);
            w.bytes(h.owner.as_bytes());
            w.u128(h.session);
            w.u64(h.token);
            w.u32(h.hold_count);
            w.u64(h.expires_at_ms);
            w.u64(h.granted_term);
        }
    }
}

pub fn get_holder(r: &mut Reader<'_>) -> Result<Option<Holder>, CodecError> {
    Ok(match r.u8("holder present")? {
        HOLDER_NONE => None,
        tag @ (HOLDER_V1 | HOLDER_V2) => Some(Holder {
            owner: String::from_utf8(r.bytes("owner")?.to_vec())
                .map_err(|e| CodecError::Invalid { what: "owner", detail: e.to_string() })?,
            session: if tag == HOLDER_V2 { r.u128("session")? } else { 0 },
            token: r.u64("token")?,
            hold_count: r.u32("hold count")?,
            expires_at_ms: r.u64("expires at")?,
            granted_term: r.u64("granted term")?,
        }),
        tag => return Err(CodecError::UnknownTag { what: "holder present", tag }),
    })
}

/// Writes a lock outcome (the peer protocol and request records).
pub fn put_lock_outcome(w: &mut Writer, o: &LockOutcome) {
    match o {
        LockOutcome::Granted { token, hold_count, expires_at_ms, session } => {
            w.u8(1);
            w.u64(*token);
            w.u32(*hold_count);
            w.u64(*expires_at_ms);
            w.u128(*session);
        }
        LockOutcome::Conflict { holder } => {
            w.u8(2);
            put_holder(w, holder);
        }
        LockOutcome::Released { hold_count } => {
            w.u8(3);
            w.u32(*hold_count);
        }
        LockOutcome::Refreshed { token, hold_count, expires_at_ms } => {
            w.u8(4);
            w.u64(*token);
            w.u32(*hold_count);
            w.u64(*expires_at_ms);
        }
        LockOutcome::Expired { freed } => {
            w.u8(5);
            w.u8(*freed as u8);
        }
        LockOutcome::Queued { session, position, wait_until_ms } => {
            w.u8(6);
            w.u128(*session);
            w.u32(*position);
            w.u64(*wait_until_ms);
        }
        LockOutcome::QueueFull { limit } => {
            w.u8(7);
            w.u32(*limit);
        }
        LockOutcome::Dequeued { removed } => {
            w.u8(8);
            w.u8(*removed as u8);
        }
    }
}

pub fn get_lock_outcome(r: &mut Reader<'_>) -> Result<LockOutcome, CodecError> {
    Ok(match r.u8("lock outcome")? {
        1 => LockOutcome::Granted {
            token: r.u64("token")?,
            hold_count: r.u32("hold count")?,
            expires_at_ms: r.u64("expires at")?,
            session: r.u128("session")?,
        },
        2 => LockOutcome::Conflict { holder: get_holder(r)? },
        3 => LockOutcome::Released { hold_count: r.u32("hold count")? },
        4 => LockOutcome::Refreshed {
            token: r.u64("token")?,
            hold_count: r.u32("hold count")?,
            expires_at_ms: r.u64("expires at")?,
        },
        5 => LockOutcome::Expired { freed: r.u8("freed")? != 0 },
        6 => LockOutcome::Queued {
            session: r.u128("session")?,
            position: r.u32("queue position")?,
            wait_until_ms: r.u64("wait until")?,
        },
        7 => LockOutcome::QueueFull { limit: r.u32("queue limit")? },
        8 => LockOutcome::Dequeued { removed: r.u8("removed")? != 0 },
        tag => return Err(CodecError::UnknownTag { what: "lock outcome", tag }),
    })
}

impl LockRecord {
    pub fn encode(&self) -> Vec<u8> {
        let queued: usize = self.queue.iter().map(|q| q.owner.len() + 36).sum();
        let mut w = Writer::with_capacity(48 + queued);
        w.u8(if self.queue.is_empty() { FORMAT_V1 } else { FORMAT_V2 });
        w.u64(self.last_token);
        put_holder(&mut w, &self.holder);
        if !self.queue.is_empty() {
            w.u32(self.queue.len() as u32);
            for q in &self.queue {
                w.bytes(q.owner.as_bytes());
                w.u128(q.session);
                w.u64(q.ttl_ms);
                w.u64(q.wait_until_ms);
            }
        }
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(b);
        let f = r.u8("lock format")?;
        if f != FORMAT_V1 && f != FORMAT_V2 {
            return Err(CodecError::UnsupportedFormat(f));
        }
        let last_token = r.u64("last token")?;
        let holder = get_holder(&mut r)?;
        let mut queue = Vec::new();
        if f == FORMAT_V2 {
            let n = r.u32("queue length")? as usize;
            // Each waiter is at least 36 bytes: refuse counts the input
            // cannot hold rather than pre-allocating for them.
            queue.reserve(n.min(b.len() / 36));
            for _ in 0..n {
                let owner = String::from_utf8(r.bytes("waiter owner")?.to_vec())
                    .map_err(|e| CodecError::Invalid { what: "waiter owner", detail: e.to_string() })?;
                queue.push(Queued {
                    owner,
                    session: r.u128("waiter session")?,
                    ttl_ms: r.u64("waiter ttl")?,
                    wait_until_ms: r.u64("waiter wait until")?,
                });
            }
        }
        r.finish()?;
        Ok(LockRecord { holder, last_token, queue })
    }
}

/// Why a fencing token is refused before its write is even tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("lock {lock:?} has never been held, so it issued no token")]
    NoSuchLock { lock: String },
    #[error("lock {lock:?} never issued token {token}: the highest it issued is {last_token}")]
    NotIssued { lock: String, token: u64, last_token: u64 },
}

/// Whether `token` can have been issued by the lock whose record is `rec`
/// (read linearizably after the token was handed out, so a real token is
/// at most `last_token`; tokens only grow and records are never deleted).
/// A token above it, or for a lock that never existed, is forged or
/// mistaken, and would fence the key against the lock's real holder.
pub fn check_issued(lock: &str, rec: Option<&LockRecord>, token: u64) -> Result<(), TokenError> {
    match rec {
        None => Err(TokenError::NoSuchLock { lock: lock.to_string() }),
        Some(r) if token > r.last_token => {
            Err(TokenError::NotIssued { lock: lock.to_string(), token, last_token: r.last_token })
        }
        Some(_) => Ok(()),
    }
}

/// Highest fencing token per lock name that wrote one data key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FenceRecord {
    pub highest: Vec<(String, u64)>,
}

/// Fences one key remembers; the oldest-named beyond this are dropped.
pub const FENCES_PER_KEY_MAX: usize = 16;

impl FenceRecord {
    pub fn highest_for(&self, lock: &str) -> Option<u64> {
        self.highest.iter().find(|(l, _)| l == lock).map(|(_, t)| *t)
    }

    /// `Err(highest)` if a write fenced by `lock` at `token` must be refused.
    pub fn check(&self, lock: &str, token: u64) -> Result<(), u64> {
        match self.highest_for(lock) {
            Some(h) if h > token => Err(h),
            _ => Ok(()),
        }
    }

    /// Remembers `token` for `lock` (after a successful check).
    pub fn record(&mut self, lock: &str, token: u64) {
        match self.highest.iter_mut().find(|(l, _)| l == lock) {
            Some((_, t)) => *t = (*t).max(token),
            None => {
                self.highest.push((lock.to_string(), token));
                if self.highest.len() > FENCES_PER_KEY_MAX {
                    self.highest.remove(0);
                }
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(16 + self.highest.len() * 24);
        w.u8(FORMAT_V1);
        w.u32(self.highest.len() as u32);
        for (l, t) in &self.highest {
            w.bytes(l.as_bytes());
            w.u64(*t);
        }
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(b);
        let f = r.u8("fence format")?;
        if f != FORMAT_V1 {
            return Err(CodecError::UnsupportedFormat(f));
        }
        let n = r.u32("fence count")?;
        let mut highest = Vec::with_capacity((n as usize).min(FENCES_PER_KEY_MAX));
        for _ in 0..n {
            let l = String::from_utf8(r.bytes("fence lock")?.to_vec())
                .map_err(|e| CodecError::Invalid { what: "fence lock", detail: e.to_string() })?;
            highest.push((l, r.u64("fence token")?));
        }
        r.finish()?;
        Ok(FenceRecord { highest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(o: &LockOutcome) -> u64 {
        match o {
            LockOutcome::Granted { token, .. } => *token,
            o => panic!("not granted: {o:?}"),
        }
    }

    fn by(owner: &str, session: SessionId, ttl_ms: u64) -> AcquireBy<'_> {
        AcquireBy { owner, session, reentry: false, ttl_ms, wait_ms: 0, queue_max: QUEUE_MAX }
    }

    fn again(owner: &str, session: SessionId, ttl_ms: u64) -> AcquireBy<'_> {
        AcquireBy { owner, session, reentry: true, ttl_ms, wait_ms: 0, queue_max: QUEUE_MAX }
    }

    /// A release or expiry where no waiter is involved.
    fn rel(r: Option<LockRecord>, session: SessionId, token: u64) -> (Option<LockRecord>, LockOutcome) {
        release(r, session, token, 0, 0, 1)
    }

    fn exp(r: Option<LockRecord>, token: u64, now_ms: u64) -> (Option<LockRecord>, LockOutcome) {
        expire(r, token, now_ms, 0, 1)
    }

    fn waiting(owner: &str, session: SessionId, wait_ms: u64) -> AcquireBy<'_> {
        AcquireBy { owner, session, reentry: false, ttl_ms: 1000, wait_ms, queue_max: QUEUE_MAX }
    }

    fn queued(o: &LockOutcome) -> u32 {
        match o {
            LockOutcome::Queued { position, .. } => *position,
            o => panic!("not queued: {o:?}"),
        }
    }

    fn holder_session(r: &Option<LockRecord>) -> Option<SessionId> {
        r.as_ref().and_then(|r| r.holder.as_ref()).map(|h| h.session)
    }

    #[test]
    fn waiters_queue_in_order_and_each_release_grants_the_next_in_the_same_entry() {
        let (r, o) = acquire(None, by("a", 1, 1000), 0, 5, 1);
        let t1 = granted(&o);
        let (r, o) = acquire(r, waiting("b", 2, 5000), 10, 6, 1);
        assert_eq!(queued(&o), 1);
        let (r, o) = acquire(r, waiting("c", 3, 5000), 20, 7, 1);
        assert_eq!(queued(&o), 2);
        let (unchanged, o) = acquire(r.clone(), by("d", 4, 1000), 30, 8, 1);
        assert_eq!(unchanged, None, "an acquire that does not wait changes nothing");
        assert!(matches!(o, LockOutcome::Conflict { holder: Some(h) } if h.session == 1));
        let (r, o) = release(r, 1, t1, 100, 9, 1);
        assert_eq!(o, LockOutcome::Released { hold_count: 0 });
        assert_eq!(holder_session(&r), Some(2), "b was first");
        let h = r.as_ref().unwrap().holder.clone().unwrap();
        assert!(h.token > t1 && h.token == 9);
        assert_eq!(h.expires_at_ms, 1100, "its lease runs from the release's stamp");
        assert_eq!(r.as_ref().unwrap().queue.len(), 1);
        let (r, _) = release(r, 2, h.token, 200, 10, 2);
        assert_eq!(holder_session(&r), Some(3));
        let t3 = r.as_ref().unwrap().holder.as_ref().unwrap().token;
        let (r, _) = release(r, 3, t3, 300, 11, 2);
        let r = r.unwrap();
        assert_eq!((r.holder.clone(), r.queue.len()), (None, 0), "free, and nobody waits");
        assert_eq!(LockRecord::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn a_waiter_whose_wait_ended_is_skipped_and_an_expiry_grants_too() {
        let (r, o) = acquire(None, by("a", 1, 100), 0, 1, 1);
        let t = granted(&o);
        let (r, _) = acquire(r, waiting("b", 2, 50), 0, 2, 1);
        let (r, _) = acquire(r, waiting("c", 3, 500), 0, 3, 1);
        // At 100 the lease ends; b's wait ended at 50.
        let (r, o) = expire(r, t, 100, 4, 1);
        assert_eq!(o, LockOutcome::Expired { freed: true });
        assert_eq!(holder_session(&r), Some(3));
        assert!(r.as_ref().unwrap().queue.is_empty());
        // d's wait ends before c releases: the lock is then simply free.
        let (r, _) = acquire(r, waiting("d", 4, 10), 100, 5, 1);
        let t3 = r.as_ref().unwrap().holder.as_ref().unwrap().token;
        let (r, _) = release(r, 3, t3, 200, 6, 1);
        let r = r.unwrap();
        assert_eq!((r.holder, r.queue.len()), (None, 0));
    }

    #[test]
    fn a_queued_session_asking_again_keeps_its_place_and_the_queue_is_bounded() {
        let (mut r, _) = acquire(None, by("a", 1, 1000), 0, 1, 1);
        for s in 2..(QUEUE_MAX as u128 + 2) {
            let (next, o) = acquire(r.clone(), waiting("w", s, 5000), 0, 2, 1);
            assert_eq!(queued(&o), s as u32 - 1);
            r = next;
        }
        let (unchanged, o) = acquire(r.clone(), waiting("late", 9_999, 5000), 0, 3, 1);
        assert_eq!((unchanged, o), (None, LockOutcome::QueueFull { limit: QUEUE_MAX as u32 }));
        let small = AcquireBy { queue_max: 3, ..waiting("x", 9_998, 5000) };
        assert_eq!(acquire(r.clone(), small, 0, 3, 1).1, LockOutcome::QueueFull { limit: 3 }, "a smaller limit");
        let (unchanged, o) = acquire(r.clone(), waiting("w", 5, 5000), 0, 4, 1);
        assert_eq!(unchanged, None);
        assert_eq!(queued(&o), 4, "asking again does not move it to the back");
        let b = r.as_ref().unwrap().encode();
        assert_eq!(LockRecord::decode(&b).unwrap(), *r.as_ref().unwrap());
        for cut in 0..b.len() {
            assert!(LockRecord::decode(&b[..cut]).is_err());
        }
    }

    #[test]
    fn reattach_finds_the_grant_or_the_place_and_dequeue_removes() {
        let (r, o) = acquire(None, by("a", 1, 1000), 0, 1, 1);
        let t = granted(&o);
        let (r, _) = acquire(r, waiting("b", 2, 5000), 0, 2, 1);
        let (r, _) = acquire(r, waiting("c", 3, 5000), 0, 3, 1);
        assert_eq!(queued(&reattach(r.as_ref(), 3)), 2);
        assert!(matches!(reattach(r.as_ref(), 9), LockOutcome::Conflict { holder: Some(h) } if h.session == 1));
        let (r, _) = release(r, 1, t, 10, 4, 1);
        assert!(matches!(reattach(r.as_ref(), 2), LockOutcome::Granted { session: 2, hold_count: 1, .. }));
        assert_eq!(queued(&reattach(r.as_ref(), 3)), 1);
        let (r, o) = dequeue(r, 3);
        assert_eq!(o, LockOutcome::Dequeued { removed: true });
        assert!(r.as_ref().unwrap().queue.is_empty());
        let (unchanged, o) = dequeue(r.clone(), 3);
        assert_eq!((unchanged, o), (None, LockOutcome::Dequeued { removed: false }));
        assert_eq!(reattach(None, 3), LockOutcome::Conflict { holder: None });
    }

    #[test]
    fn a_free_record_from_before_the_rule_still_serves_its_queue_first() {
        let rec = LockRecord {
            holder: None,
            last_token: 4,
            queue: vec![Queued { owner: "q".into(), session: 7, ttl_ms: 100, wait_until_ms: 1000 }],
        };
        let (r, o) = acquire(Some(rec), by("new", 8, 100), 10, 20, 1);
        assert!(matches!(o, LockOutcome::Conflict { holder: Some(h) } if h.session == 7));
        assert_eq!(holder_session(&r), Some(7), "the change (the grant) is kept");
    }

    #[test]
    fn tokens_strictly_increase_across_holders() {
        let (r, o) = acquire(None, by("a", 1, 1000), 0, 5, 1);
        let t1 = granted(&o);
        assert_eq!(t1, 5);
        let (r, _) = rel(r, 1, t1);
        // A later entry with a smaller index (a range moved to a younger
        // group) still gets a larger token.
        let (r, o) = acquire(r, by("b", 2, 1000), 0, 3, 1);
        let t2 = granted(&o);
        assert!(t2 > t1);
        let (_, o) = acquire(r.clone(), by("c", 3, 1000), 0, 99, 1);
        assert!(matches!(o, LockOutcome::Conflict { holder: Some(h) } if h.owner == "b"));
        let (r, _) = rel(r, 2, t2);
        let (_, o) = acquire(r, by("c", 3, 1000), 0, 99, 1);
        assert_eq!(granted(&o), 99);
    }

    #[test]
    fn reentrancy_needs_the_session_and_release_needs_session_and_token() {
        let (r, o) = acquire(None, by("a", 7, 1000), 0, 1, 1);
        let t = granted(&o);
        let (r, o) = acquire(r, again("a", 7, 5000), 10, 2, 1);
        assert_eq!(o, LockOutcome::Granted { token: t, hold_count: 2, expires_at_ms: 5010, session: 7 });
        let (changed, o) = rel(r.clone(), 8, t);
        assert_eq!(changed, None, "another session changes nothing");
        assert!(matches!(o, LockOutcome::Conflict { holder: Some(h) } if h.owner == "a"), "and names the holder");
        assert_eq!(rel(r.clone(), 7, t + 1).0, None, "wrong token changes nothing");
        assert_eq!(rel(r.clone(), 0, t).0, None, "session 0 names nobody");
        let (r, o) = rel(r, 7, t);
        assert_eq!(o, LockOutcome::Released { hold_count: 1 });
        let (r, o) = rel(r, 7, t);
        assert_eq!(o, LockOutcome::Released { hold_count: 0 });
        assert_eq!(r.unwrap().holder, None);
    }

    #[test]
    fn two_clients_with_one_owner_label_but_no_shared_session_exclude_each_other() {
        let (r, o) = acquire(None, by("me", 11, 1000), 0, 1, 1);
        granted(&o);
        let (changed, o) = acquire(r.clone(), by("me", 12, 1000), 0, 2, 1);
        assert_eq!(changed, None);
        assert!(matches!(o, LockOutcome::Conflict { holder: Some(h) } if h.session == 11));
    }

    #[test]
    fn a_reentry_after_the_hold_ended_is_refused_not_granted_anew() {
        let (r, o) = acquire(None, by("a", 5, 100), 0, 1, 1);
        let t = granted(&o);
        let (r, _) = exp(r, t, 100);
        let (changed, o) = acquire(r, again("a", 5, 100), 200, 3, 1);
        assert_eq!((changed, o), (None, LockOutcome::Conflict { holder: None }));
    }

    #[test]
    fn refresh_and_expiry() {
        let (r, o) = acquire(None, by("a", 3, 100), 1000, 1, 1);
        let t = granted(&o);
        assert_eq!(refresh(r.clone(), 4, t, 500, 1050, 1).0, None, "another session cannot refresh");
        let (r, o) = refresh(r, 3, t, 500, 1050, 1);
        assert_eq!(o, LockOutcome::Refreshed { token: t, hold_count: 1, expires_at_ms: 1550 });
        assert_eq!(exp(r.clone(), t, 1549).1, LockOutcome::Expired { freed: false });
        assert_eq!(exp(r.clone(), t + 1, 2000).1, LockOutcome::Expired { freed: false });
        let (r, o) = exp(r, t, 1550);
        assert_eq!(o, LockOutcome::Expired { freed: true });
        assert_eq!(r.unwrap().last_token, t);
    }

    #[test]
    fn a_new_leader_adds_grace_to_older_leases() {
        let h = Holder { owner: "a".into(), session: 1, token: 1, hold_count: 1, expires_at_ms: 1000, granted_term: 3 };
        assert!(expiry_due(&h, 1000, 3, 500));
        assert!(!expiry_due(&h, 1400, 4, 500));
        assert!(expiry_due(&h, 1500, 4, 500));
    }

    #[test]
    fn only_issued_tokens_pass() {
        let (r, o) = acquire(None, by("a", 1, 100), 0, 13, 1);
        let r = r.unwrap();
        let t = granted(&o);
        assert_eq!(check_issued("n", Some(&r), t), Ok(()));
        assert_eq!(check_issued("n", Some(&r), t - 1), Ok(()), "older tokens were issued (and fences refuse them)");
        assert_eq!(
            check_issued("n", Some(&r), 999),
            Err(TokenError::NotIssued { lock: "n".into(), token: 999, last_token: 13 })
        );
        assert_eq!(check_issued("x", None, 5), Err(TokenError::NoSuchLock { lock: "x".into() }));
    }

    #[test]
    fn fences() {
        let mut f = FenceRecord::default();
        assert_eq!(f.check("l", 5), Ok(()));
        f.record("l", 5);
        assert_eq!(f.check("l", 5), Ok(()), "the same holder writes again");
        assert_eq!(f.check("l", 4), Err(5));
        assert_eq!(f.check("other", 1), Ok(()));
        for i in 0..20 {
            f.record(&format!("x{i}"), 1);
        }
        assert_eq!(f.highest.len(), FENCES_PER_KEY_MAX);
        assert_eq!(FenceRecord::decode(&f.encode()).unwrap(), f);
    }

    #[test]
    fn records_round_trip_and_truncations_fail() {
        let (r, _) = acquire(None, by("owner-ü", u128::MAX - 1, 10), 1, 7, 2);
        let r = r.unwrap();
        let b = r.encode();
        assert_eq!(LockRecord::decode(&b).unwrap(), r);
        // A record written before sessions reads with session 0.
        let mut v1 = vec![FORMAT_V1];
        v1.extend_from_slice(&9u64.to_be_bytes());
        v1.push(HOLDER_V1);
        v1.extend_from_slice(&1u32.to_be_bytes());
        v1.push(b'a');
        for n in [9u64, 1, 50, 2] {
            if n == 1 {
                v1.extend_from_slice(&1u32.to_be_bytes());
            } else {
                v1.extend_from_slice(&n.to_be_bytes());
            }
        }
        let old = LockRecord::decode(&v1).unwrap();
        let h = old.holder.unwrap();
        assert_eq!((h.session, h.token, h.hold_count, h.expires_at_ms, h.granted_term), (0, 9, 1, 50, 2));
        for cut in 0..b.len() {
            assert!(LockRecord::decode(&b[..cut]).is_err());
        }
        let free = LockRecord { holder: None, last_token: 9, queue: Vec::new() };
        assert_eq!(LockRecord::decode(&free.encode()).unwrap(), free);
    }
}
