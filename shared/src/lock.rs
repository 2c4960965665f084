//! Lock rules: the replicated lock record and fence record, their codecs,
//! and the deterministic decisions on acquire, release, refresh and
//! expire. Pure: replicas call these with the entry's index, term and
//! leader stamp and reach the same state.
//!
//! - A lock is held by one owner with a hold count (reentrancy) and a
//!   lease (`expires_at_ms`, leader wall clock). Only an `Expire` command,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
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
    },
    /// Held by someone else (acquire), or the caller is not the holder
    /// (release, refresh with a wrong owner or token). Nothing changed.
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

/// Applies an acquire at `now_ms` (the entry's stamp).
pub fn acquire(
    rec: Option<LockRecord>,
    owner: &str,
    ttl_ms: u64,
    now_ms: u64,
    index: u64,
    term: u64,
) -> (Option<LockRecord>, LockOutcome) {
    let mut rec = rec.unwrap_or_default();
    let expires_at_ms = now_ms.saturating_add(ttl_ms);
    match &mut rec.holder {
        Some(h) if h.owner == owner => {
            // Reentrant: same token, one more hold, and the lease renewed.
            h.hold_count = h.hold_count.saturating_add(1);
            h.expires_at_ms = h.expires_at_ms.max(expires_at_ms);
            h.granted_term = term;
            let out = LockOutcome::Granted { token: h.token, hold_count: h.hold_count, expires_at_ms: h.expires_at_ms };
            (Some(rec), out)
        }
        Some(h) => {
            let out = LockOutcome::Conflict { holder: Some(h.clone()) };
            (None, out)
        }
        None => {
            let token = index.max(rec.last_token + 1);
            rec.last_token = token;
            rec.holder =
                Some(Holder { owner: owner.to_string(), token, hold_count: 1, expires_at_ms, granted_term: term });
            (Some(rec), LockOutcome::Granted { token, hold_count: 1, expires_at_ms })
        }
    }
}

fn is_holder(rec: &LockRecord, owner: &str, token: u64) -> bool {
    rec.holder.as_ref().is_some_and(|h| h.owner == owner && h.token == token)
}

/// Release by `owner` holding `token`: one hold less; free at zero.
/// The answer to a release or refresh by someone who does not hold the
/// lock: nothing changes, and the caller learns who does.
fn not_holder(rec: Option<LockRecord>) -> (Option<LockRecord>, LockOutcome) {
    (None, LockOutcome::Conflict { holder: rec.and_then(|r| r.holder) })
}

pub fn release(rec: Option<LockRecord>, owner: &str, token: u64) -> (Option<LockRecord>, LockOutcome) {
    let mut rec = match rec {
        Some(r) if is_holder(&r, owner, token) => r,
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

pub fn refresh(
    rec: Option<LockRecord>,
    owner: &str,
    token: u64,
    ttl_ms: u64,
    now_ms: u64,
    term: u64,
) -> (Option<LockRecord>, LockOutcome) {
    let mut rec = match rec {
        Some(r) if is_holder(&r, owner, token) => r,
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

/// Writes an optional holder (also used by the peer protocol).
pub fn put_holder(w: &mut Writer, h: &Option<Holder>) {
    match h {
        None => w.u8(0),
        Some(h) => {
            w.u8(1);
            w.bytes(h.owner.as_bytes());
            w.u64(h.token);
            w.u32(h.hold_count);
            w.u64(h.expires_at_ms);
            w.u64(h.granted_term);
        }
    }
}

pub fn get_holder(r: &mut Reader<'_>) -> Result<Option<Holder>, CodecError> {
    Ok(match r.u8("holder present")? {
        0 => None,
        1 => Some(Holder {
            owner: String::from_utf8(r.bytes("owner")?.to_vec())
                .map_err(|e| CodecError::Invalid { what: "owner", detail: e.to_string() })?,
            token: r.u64("token")?,
            hold_count: r.u32("hold count")?,
            expires_at_ms: r.u64("expires at")?,
            granted_term: r.u64("granted term")?,
        }),
        tag => return Err(CodecError::UnknownTag { what: "holder present", tag }),
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

    #[test]
    fn tokens_strictly_increase_across_holders() {
        let (r, o) = acquire(None, "a", 1000, 0, 5, 1);
        let t1 = granted(&o);
        assert_eq!(t1, 5);
        let (r, _) = release(r, "a", t1);
        // A later entry with a smaller index (a range moved to a younger
        // group) still gets a larger token.
        let (r, o) = acquire(r, "b", 1000, 0, 3, 1);
        let t2 = granted(&o);
        assert!(t2 > t1);
        let (_, o) = acquire(r.clone(), "c", 1000, 0, 99, 1);
        assert!(matches!(o, LockOutcome::Conflict { holder: Some(h) } if h.owner == "b"));
        let (r, _) = release(r, "b", t2);
        let (_, o) = acquire(r, "c", 1000, 0, 99, 1);
        assert_eq!(granted(&o), 99);
    }

    #[test]
    fn reentrancy_and_wrong_owner_or_token() {
        let (r, o) = acquire(None, "a", 1000, 0, 1, 1);
        let t = granted(&o);
        let (r, o) = acquire(r, "a", 5000, 10, 2, 1);
        assert_eq!(o, LockOutcome::Granted { token: t, hold_count: 2, expires_at_ms: 5010 });
        let (changed, o) = release(r.clone(), "b", t);
        assert_eq!(changed, None, "wrong owner changes nothing");
        assert!(matches!(o, LockOutcome::Conflict { holder: Some(h) } if h.owner == "a"), "and names the holder");
        assert_eq!(release(r.clone(), "a", t + 1).0, None, "wrong token changes nothing");
        let (r, o) = release(r, "a", t);
        assert_eq!(o, LockOutcome::Released { hold_count: 1 });
        let (r, o) = release(r, "a", t);
        assert_eq!(o, LockOutcome::Released { hold_count: 0 });
        assert_eq!(r.unwrap().holder, None);
    }

    #[test]
    fn refresh_and_expiry() {
        let (r, o) = acquire(None, "a", 100, 1000, 1, 1);
        let t = granted(&o);
        let (r, o) = refresh(r, "a", t, 500, 1050, 1);
        assert_eq!(o, LockOutcome::Refreshed { token: t, hold_count: 1, expires_at_ms: 1550 });
        assert_eq!(expire(r.clone(), t, 1549).1, LockOutcome::Expired { freed: false });
        assert_eq!(expire(r.clone(), t + 1, 2000).1, LockOutcome::Expired { freed: false });
        let (r, o) = expire(r, t, 1550);
        assert_eq!(o, LockOutcome::Expired { freed: true });
        assert_eq!(r.unwrap().last_token, t);
    }

    #[test]
    fn a_new_leader_adds_grace_to_older_leases() {
        let h = Holder { owner: "a".into(), token: 1, hold_count: 1, expires_at_ms: 1000, granted_term: 3 };
        assert!(expiry_due(&h, 1000, 3, 500));
        assert!(!expiry_due(&h, 1400, 4, 500));
        assert!(expiry_due(&h, 1500, 4, 500));
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
        let (r, _) = acquire(None, "owner-ü", 10, 1, 7, 2);
        let r = r.unwrap();
        let b = r.encode();
        assert_eq!(LockRecord::decode(&b).unwrap(), r);
        for cut in 0..b.len() {
            assert!(LockRecord::decode(&b[..cut]).is_err());
        }
        let free = LockRecord { holder: None, last_token: 9 };
        assert_eq!(LockRecord::decode(&free.encode()).unwrap(), free);
    }
}
