//! Lock safety from a history of acquires and fenced writes.
//!
//! Leases alone cannot give mutual exclusion (a paused holder wakes after
//! its lease ended and still believes it holds the lock); fencing tokens
//! do, and that is what ringstore promises: a write sent with
//! `Fencing-Token: <lock>:<token>` is accepted only if no larger token of
//! that lock was accepted on the key before. Each lock's fenced writes go to
//! one key, whose version (the Raft index of the write) orders them as the
//! server accepted them. The checker asks:
//! - grants: each token is granted to one session only, and a grant that
//!   began after another had returned carries a larger token;
//! - sections: in acceptance order, tokens never go down (a fenced section
//!   of one holder never interleaves with another's, and no stale token is
//!   accepted);
//! - acceptance follows real time: a write acknowledged before another
//!   was sent has the smaller version;
//! - refusals are honest: a `fenced` (409) answer names a write whose
//!   token some larger token's write had been sent before the refusal.

use serde::{Deserialize, Serialize};

use crate::history::{Micros, Outcome, ProcessId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub process: ProcessId,
    pub lock: String,
    pub session: String,
    pub token: u64,
    pub invoke_us: Micros,
    pub complete_us: Micros,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteResult {
    /// Accepted at this version.
    Accepted { version: u64 },
    /// 409 `fenced`: a larger token was accepted first.
    Fenced,
    /// Refused for another definite reason (not checked further).
    Refused,
    /// Unknown.
    Info,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedWrite {
    pub process: ProcessId,
    pub lock: String,
    pub token: u64,
    pub value: u64,
    pub result: WriteResult,
    pub invoke_us: Micros,
    pub complete_us: Micros,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockAnomaly {
    TokenGrantedTwice { lock: String, token: u64, sessions: [String; 2] },
    TokenWentBack { lock: String, earlier: u64, later: u64 },
    StaleTokenAccepted { lock: String, accepted: u64, after: u64, version: u64 },
    AcceptedOutOfOrder { lock: String, first_version: u64, then_version: u64 },
    DishonestFence { lock: String, token: u64 },
}

impl std::fmt::Display for LockAnomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockAnomaly::TokenGrantedTwice { lock, token, sessions } => {
                write!(f, "{lock}: token {token} granted to two sessions {} and {}", sessions[0], sessions[1])
            }
            LockAnomaly::TokenWentBack { lock, earlier, later } => {
                write!(f, "{lock}: a grant after the one of token {earlier} got the smaller token {later}")
            }
            LockAnomaly::StaleTokenAccepted { lock, accepted, after, version } => write!(
                f,
                "{lock}: a write under token {accepted} was accepted (version {version}) after one under token {after}"
            ),
            LockAnomaly::AcceptedOutOfOrder { lock, first_version, then_version } => write!(
                f,
                "{lock}: a write acknowledged at version {first_version} before another was sent, which got the smaller version {then_version}"
            ),
            LockAnomaly::DishonestFence { lock, token } => {
                write!(f, "{lock}: a write under token {token} was refused as fenced with no larger token sent before")
            }
        }
    }
}

/// Every anomaly in the history (empty: safe).
pub fn check(grants: &[Grant], writes: &[FencedWrite]) -> Vec<LockAnomaly> {
    let mut out = Vec::new();
    let mut locks: Vec<&str> =
        grants.iter().map(|g| g.lock.as_str()).chain(writes.iter().map(|w| w.lock.as_str())).collect();
    locks.sort_unstable();
    locks.dedup();
    for lock in locks {
        let mut gs: Vec<&Grant> = grants.iter().filter(|g| g.lock == lock).collect();
        gs.sort_by_key(|g| (g.token, g.invoke_us));
        for pair in gs.windows(2) {
            if pair[0].token == pair[1].token && pair[0].session != pair[1].session {
                out.push(LockAnomaly::TokenGrantedTwice {
                    lock: lock.into(),
                    token: pair[0].token,
                    sessions: [pair[0].session.clone(), pair[1].session.clone()],
                });
            }
        }
        // Real-time order of grants: any grant that returned before another
        // was invoked has the smaller token. Sorted by completion, the
        // largest token among those done before each invocation suffices.
        let mut by_end = gs.clone();
        by_end.sort_by_key(|g| g.complete_us);
        let mut by_start = gs.clone();
        by_start.sort_by_key(|g| g.invoke_us);
        let (mut k, mut max_done): (usize, Option<u64>) = (0, None);
        for g in by_start {
            while k < by_end.len() && by_end[k].complete_us < g.invoke_us {
                max_done = max_done.max(Some(by_end[k].token));
                k += 1;
            }
            if let Some(m) = max_done.filter(|m| g.token <= *m) {
                out.push(LockAnomaly::TokenWentBack { lock: lock.into(), earlier: m, later: g.token });
            }
        }

        let ws: Vec<&FencedWrite> = writes.iter().filter(|w| w.lock == lock).collect();
        let mut accepted: Vec<(u64, &FencedWrite)> = ws
            .iter()
            .filter_map(|w| match w.result {
                WriteResult::Accepted { version } => Some((version, *w)),
                _ => None,
            })
            .collect();
        accepted.sort_by_key(|(v, _)| *v);
        let mut highest: Option<u64> = None;
        for (version, w) in &accepted {
            if let Some(h) = highest.filter(|h| w.token < *h) {
                out.push(LockAnomaly::StaleTokenAccepted {
                    lock: lock.into(),
                    accepted: w.token,
                    after: h,
                    version: *version,
                });
            }
            highest = highest.max(Some(w.token));
        }
        for (va, a) in &accepted {
            for (vb, b) in &accepted {
                if a.complete_us < b.invoke_us && va > vb {
                    out.push(LockAnomaly::AcceptedOutOfOrder {
                        lock: lock.into(),
                        first_version: *va,
                        then_version: *vb,
                    });
                }
            }
        }
        for w in ws.iter().filter(|w| w.result == WriteResult::Fenced) {
            let justified = ws.iter().any(|o| {
                o.token > w.token
                    && o.invoke_us < w.complete_us
                    && !matches!(o.result, WriteResult::Refused | WriteResult::Fenced)
            });
            if !justified {
                out.push(LockAnomaly::DishonestFence { lock: lock.into(), token: w.token });
            }
        }
    }
    out
}

/// Counts by outcome, for the report.
pub fn outcome_of(w: &FencedWrite) -> Outcome {
    match w.result {
        WriteResult::Accepted { .. } => Outcome::Ok,
        WriteResult::Fenced | WriteResult::Refused => Outcome::Fail,
        WriteResult::Info => Outcome::Info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(p: u32, session: &str, token: u64, a: u64, b: u64) -> Grant {
        Grant { process: p, lock: "l".into(), session: session.into(), token, invoke_us: a, complete_us: b }
    }
    fn write(p: u32, token: u64, result: WriteResult, a: u64, b: u64) -> FencedWrite {
        FencedWrite { process: p, lock: "l".into(), token, value: a, result, invoke_us: a, complete_us: b }
    }
    fn at(version: u64) -> WriteResult {
        WriteResult::Accepted { version }
    }

    #[test]
    fn a_safe_history_with_a_paused_holder_passes() {
        // p1 holds token 1, pauses; its lease ends, p2 gets token 2 and
        // writes; p1 wakes and its write is refused.
        let grants = vec![grant(1, "s1", 1, 0, 1), grant(2, "s2", 2, 10, 11)];
        let writes = vec![
            write(1, 1, at(5), 2, 3),
            write(2, 2, at(12), 12, 13),
            write(1, 1, WriteResult::Fenced, 14, 15),
            write(2, 2, at(20), 16, 17),
        ];
        assert_eq!(check(&grants, &writes), vec![]);
    }

    #[test]
    fn overlapping_holders_and_a_stale_token_accepted_are_caught() {
        let writes = vec![write(1, 1, at(5), 0, 1), write(2, 2, at(6), 2, 3), write(1, 1, at(7), 4, 5)];
        let found = check(&[], &writes);
        assert!(
            found.contains(&LockAnomaly::StaleTokenAccepted { lock: "l".into(), accepted: 1, after: 2, version: 7 }),
            "{found:?}"
        );
    }

    #[test]
    fn tokens_that_go_back_or_repeat_are_caught() {
        let grants = vec![grant(1, "s1", 5, 0, 1), grant(2, "s2", 4, 2, 3)];
        assert_eq!(check(&grants, &[]), vec![LockAnomaly::TokenWentBack { lock: "l".into(), earlier: 5, later: 4 }]);
        let grants = vec![grant(1, "s1", 5, 0, 10), grant(2, "s2", 5, 2, 3)];
        assert!(matches!(check(&grants, &[])[0], LockAnomaly::TokenGrantedTwice { token: 5, .. }));
        // Overlapping grants may come in either order.
        let grants = vec![grant(1, "s1", 5, 0, 10), grant(2, "s2", 4, 2, 3)];
        assert_eq!(check(&grants, &[]), vec![]);
    }

    #[test]
    fn acceptance_must_follow_real_time() {
        let writes = vec![write(1, 1, at(9), 0, 1), write(1, 1, at(8), 2, 3)];
        assert_eq!(
            check(&[], &writes),
            vec![LockAnomaly::AcceptedOutOfOrder { lock: "l".into(), first_version: 9, then_version: 8 }]
        );
    }

    #[test]
    fn a_fence_with_no_larger_token_in_sight_is_caught() {
        let writes = vec![write(1, 3, WriteResult::Fenced, 0, 1), write(2, 4, at(5), 2, 3)];
        assert_eq!(check(&[], &writes), vec![LockAnomaly::DishonestFence { lock: "l".into(), token: 3 }]);
        // An unknown write of a larger token sent before justifies it.
        let writes = vec![write(2, 4, WriteResult::Info, 0, 9), write(1, 3, WriteResult::Fenced, 1, 2)];
        assert_eq!(check(&[], &writes), vec![]);
    }
}
