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

use crate::codec::{CodecError, Reader, Writer};

const FORMAT_V1: u8 = 1;

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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockRecord {
    pub holder: Option<Holder>,
    /// Highest token ever granted under this name.
    pub last_token: u64,
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
    let expires_at_ms = now_ms.saturating_add(by.ttl_ms);
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
        Some(h) => {
            let out = LockOutcome::Conflict { holder: Some(h.clone()) };
            (None, out)
        }
        // A re-entry into a lock that is free: the caller's hold ended
        // (lease expired). Granting it would let it believe it still held
        // what it held before; it must acquire anew.
        None if by.reentry || by.session == 0 => (None, LockOutcome::Conflict { holder: None }),
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

fn is_holder(rec: &LockRecord, session: SessionId, token: u64) -> bool {
    rec.holder.as_ref().is_some_and(|h| h.session == session && session != 0 && h.token == token)
}

/// The answer to a release or refresh by someone who does not hold the
/// lock: nothing changes, and the caller learns who does.
fn not_holder(rec: Option<LockRecord>) -> (Option<LockRecord>, LockOutcome) {
    (None, LockOutcome::Conflict { holder: rec.and_then(|r| r.holder) })
}

/// Release by `session` holding `token`: one hold less; free at zero.
pub fn release(rec: Option<LockRecord>, session: SessionId, token: u64) -> (Option<LockRecord>, LockOutcome) {
    let mut rec = match rec {
        Some(r) if is_holder(&r, session, token) => r,
        other => return not_holder(other),
    };
    let h = rec.holder.as_mut().expect("is_holder checked the holder");
    h.hold_count = h.hold_count.saturating_sub(1);
    let left = h.hold_count;
    if left == 0 {
        rec.holder = None;
    }
    (Some(rec), LockOutcome::Released { hold_count: left })
}

/// Whether a release by `session` with `token` would free the lock as
/// `rec` stands: the holder's last hold. The leader asks before the release
/// applies, to propose the first waiter's acquire right behind it (a
/// handoff in one Raft round); a wrong guess costs that acquire a
/// conflict, never safety, since apply decides again.
pub fn release_frees(rec: Option<&LockRecord>, session: SessionId, token: u64) -> bool {
    rec.is_some_and(|r| is_holder(r, session, token) && r.holder.as_ref().is_some_and(|h| h.hold_count <= 1))
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

/// The leader's expiry of the lease `token`, re-checked at the stamp.
pub fn expire(rec: Option<LockRecord>, token: u64, now_ms: u64) -> (Option<LockRecord>, LockOutcome) {
    match rec {
        Some(mut r) if r.holder.as_ref().is_some_and(|h| h.token == token && now_ms >= h.expires_at_ms) => {
            r.holder = None;
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
        tag => return Err(CodecError::UnknownTag { what: "lock outcome", tag }),
    })
}

impl LockRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(48);
        w.u8(FORMAT_V1);
        w.u64(self.last_token);
        put_holder(&mut w, &self.holder);
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(b);
        let f = r.u8("lock format")?;
        if f != FORMAT_V1 {
            return Err(CodecError::UnsupportedFormat(f));
        }
        let last_token = r.u64("last token")?;
        let holder = get_holder(&mut r)?;
        r.finish()?;
        Ok(LockRecord { holder, last_token })
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
        AcquireBy { owner, session, reentry: false, ttl_ms }
    }

    fn again(owner: &str, session: SessionId, ttl_ms: u64) -> AcquireBy<'_> {
        AcquireBy { owner, session, reentry: true, ttl_ms }
    }

    #[test]
    fn a_release_frees_the_lock_only_on_the_holders_last_hold() {
        let (r, o) = acquire(None, by("a", 1, 1000), 0, 5, 1);
        let t = granted(&o);
        assert!(release_frees(r.as_ref(), 1, t));
        assert!(!release_frees(r.as_ref(), 2, t), "another session frees nothing");
        assert!(!release_frees(r.as_ref(), 1, t + 1), "a stale token frees nothing");
        assert!(!release_frees(None, 1, t));
        let (r2, _) = acquire(r, again("a", 1, 1000), 0, 6, 1);
        assert!(!release_frees(r2.as_ref(), 1, t), "a re-entered lock is still held after one release");
        let (r3, _) = release(r2, 1, t);
        assert!(release_frees(r3.as_ref(), 1, t));
        let (r4, _) = release(r3, 1, t);
        assert!(!release_frees(r4.as_ref(), 1, t), "a free lock has nobody to release it");
    }

    #[test]
    fn tokens_strictly_increase_across_holders() {
        let (r, o) = acquire(None, by("a", 1, 1000), 0, 5, 1);
        let t1 = granted(&o);
        assert_eq!(t1, 5);
        let (r, _) = release(r, 1, t1);
        // A later entry with a smaller index (a range moved to a younger
        // group) still gets a larger token.
        let (r, o) = acquire(r, by("b", 2, 1000), 0, 3, 1);
        let t2 = granted(&o);
        assert!(t2 > t1);
        let (_, o) = acquire(r.clone(), by("c", 3, 1000), 0, 99, 1);
        assert!(matches!(o, LockOutcome::Conflict { holder: Some(h) } if h.owner == "b"));
        let (r, _) = release(r, 2, t2);
        let (_, o) = acquire(r, by("c", 3, 1000), 0, 99, 1);
        assert_eq!(granted(&o), 99);
    }

    #[test]
    fn reentrancy_needs_the_session_and_release_needs_session_and_token() {
        let (r, o) = acquire(None, by("a", 7, 1000), 0, 1, 1);
        let t = granted(&o);
        let (r, o) = acquire(r, again("a", 7, 5000), 10, 2, 1);
        assert_eq!(o, LockOutcome::Granted { token: t, hold_count: 2, expires_at_ms: 5010, session: 7 });
        let (changed, o) = release(r.clone(), 8, t);
        assert_eq!(changed, None, "another session changes nothing");
        assert!(matches!(o, LockOutcome::Conflict { holder: Some(h) } if h.owner == "a"), "and names the holder");
        assert_eq!(release(r.clone(), 7, t + 1).0, None, "wrong token changes nothing");
        assert_eq!(release(r.clone(), 0, t).0, None, "session 0 names nobody");
        let (r, o) = release(r, 7, t);
        assert_eq!(o, LockOutcome::Released { hold_count: 1 });
        let (r, o) = release(r, 7, t);
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
        let (r, _) = expire(r, t, 100);
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
        assert_eq!(expire(r.clone(), t, 1549).1, LockOutcome::Expired { freed: false });
        assert_eq!(expire(r.clone(), t + 1, 2000).1, LockOutcome::Expired { freed: false });
        let (r, o) = expire(r, t, 1550);
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
        let free = LockRecord { holder: None, last_token: 9 };
        assert_eq!(LockRecord::decode(&free.encode()).unwrap(), free);
    }
}
