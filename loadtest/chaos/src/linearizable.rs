//! Linearizability of one register's history: the Wing–Gong–Lowe search
//! with Lowe's memoisation, as Porcupine does it, checked key by key (a
//! history of independent keys is linearizable iff each key's is:
//! P-compositionality).
//!
//! Calls are laid out as invoke and return entries in time order. The
//! search linearizes, one at a time, a call whose invocation comes before
//! every pending return, backtracking when it meets a return whose call it
//! could not place; a (set of linearized calls, register state) pair seen
//! before is not explored twice. An `Info` call returns at the end of time,
//! so it may take effect anywhere after its invocation, or (placed last)
//! never.
//!
//! On a violation, [`explain`] finds a small window that proves it: the
//! shortest prefix of the history that is already not linearizable, less
//! every read that is not needed for that (dropping reads cannot make a
//! linearizable history non-linearizable, so what remains is still proof).

use std::collections::HashSet;

use crate::history::{Call, Micros, Outcome, RegisterOp};

/// The register's state: its value, None while the key has none.
pub type State = Option<u64>;

/// The register after `call`, if `call` can take effect on `state`.
pub fn step(state: State, call: &Call<RegisterOp>) -> Option<State> {
    match (call.op, call.outcome) {
        (RegisterOp::Read { value }, _) => (value == state).then_some(state),
        (RegisterOp::Write { value }, _) => Some(Some(value)),
        (RegisterOp::Cas { from, to }, Outcome::Ok) => (state == from).then_some(Some(to)),
        // 412: the version it named was not the current one.
        (RegisterOp::Cas { from, .. }, Outcome::Fail) => (state != from).then_some(state),
        // Unknown: it applied exactly when it could have.
        (RegisterOp::Cas { from, to }, Outcome::Info) => Some(if state == from { Some(to) } else { state }),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Linearizable,
    Violation,
    /// The search took more than its step budget.
    Unknown,
}

/// What the checker keeps of a history: reads that did not answer say
/// nothing, and a write known not to have happened changes nothing.
pub fn relevant(call: &Call<RegisterOp>) -> bool {
    match (call.op, call.outcome) {
        (RegisterOp::Read { .. }, Outcome::Ok) => true,
        (RegisterOp::Read { .. }, _) => false,
        (RegisterOp::Write { .. }, Outcome::Fail) => false,
        _ => true,
    }
}

const NIL: usize = usize::MAX;

/// Checks `calls` (of one register, starting empty) within `budget` search steps.
pub fn check(calls: &[Call<RegisterOp>], budget: u64) -> Check {
    let calls: Vec<&Call<RegisterOp>> = calls.iter().filter(|c| relevant(c)).collect();
    let n = calls.len();
    // Entries 1..=2n in time order; 0 is the list's head. Invocations sort
    // before returns at the same instant (then the calls overlap).
    let mut events: Vec<(Micros, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, c) in calls.iter().enumerate() {
        events.push((c.invoke_us, 0, i));
        events.push((c.end_us(), 1, i));
    }
    events.sort_unstable();
    let len = 2 * n + 1;
    let (mut next, mut prev) = (vec![NIL; len], vec![NIL; len]);
    let mut call_of = vec![0usize; len];
    let mut is_invoke = vec![false; len];
    let mut partner = vec![NIL; len];
    let mut invoke_entry = vec![NIL; n];
    for (k, &(_, kind, i)) in events.iter().enumerate() {
        let e = k + 1;
        prev[e] = k;
        next[k] = e;
        call_of[e] = i;
        is_invoke[e] = kind == 0;
        if kind == 0 {
            invoke_entry[i] = e;
        } else {
            partner[invoke_entry[i]] = e;
            partner[e] = invoke_entry[i];
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        next[prev[e]] = next[e];
        if next[e] != NIL {
            prev[next[e]] = prev[e];
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        next[prev[e]] = e;
        if next[e] != NIL {
            prev[next[e]] = e;
        }
    };

    let mut linearized = vec![0u64; n.div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut e = next[0];
    let mut steps = 0u64;
    while e != NIL {
        steps += 1;
        if steps > budget {
            return Check::Unknown;
        }
        let i = call_of[e];
        if is_invoke[e] {
            if let Some(after) = step(state, calls[i]) {
                linearized[i / 64] |= 1 << (i % 64);
                if seen.insert((linearized.clone(), after)) {
                    stack.push((e, state));
                    state = after;
                    // Lift the call: its invocation and its return.
                    unlink(&mut next, &mut prev, e);
                    unlink(&mut next, &mut prev, partner[e]);
                    e = next[0];
                    continue;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            e = next[e];
        } else {
            // A return whose call is not linearized yet: undo the last choice.
            let Some((last, before)) = stack.pop() else { return Check::Violation };
            state = before;
            let j = call_of[last];
            linearized[j / 64] &= !(1 << (j % 64));
            relink(&mut next, &mut prev, partner[last]);
            relink(&mut next, &mut prev, last);
            e = next[last];
        }
    }
    Check::Linearizable
}

/// The history as it stood at time `t`: calls invoked before `t`; those
/// still running then become `Info` (their reads are dropped).
fn prefix(calls: &[Call<RegisterOp>], t: Micros) -> Vec<(usize, Call<RegisterOp>)> {
    calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.invoke_us < t)
        .filter_map(|(i, c)| {
            if c.end_us() <= t {
                return Some((i, c.clone()));
            }
            match c.op {
                RegisterOp::Read { .. } => None,
                _ => Some((i, Call { outcome: Outcome::Info, ..c.clone() })),
            }
        })
        .collect()
}

fn violates(calls: &[(usize, Call<RegisterOp>)], budget: u64) -> bool {
    let only: Vec<Call<RegisterOp>> = calls.iter().map(|(_, c)| c.clone()).collect();
    check(&only, budget) == Check::Violation
}

/// A small window of `calls` (a history with a violation) that is itself
/// not linearizable: indexes into `calls`, in invocation order, and the
/// instant the window ends (calls running then count as `Info`).
pub fn explain(calls: &[Call<RegisterOp>], budget: u64) -> Option<(Vec<usize>, Micros)> {
    let mut ends: Vec<Micros> = calls.iter().map(|c| c.end_us()).filter(|t| *t != Micros::MAX).collect();
    ends.push(Micros::MAX);
    ends.sort_unstable();
    ends.dedup();
    // Prefixes only grow more constrained: the first violating end is found by bisection.
    let (mut lo, mut hi) = (0usize, ends.len() - 1);
    if !violates(&prefix(calls, ends[hi]), budget) {
        return None;
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if violates(&prefix(calls, ends[mid].saturating_add(1)), budget) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let cut = ends[lo].saturating_add(1);
    let mut window = prefix(calls, cut);
    // Drop what the proof does not need, latest first, in passes until a
    // pass drops nothing. Each drop keeps the proof sound (see
    // `removable`) and is kept only if the rest still violates.
    const TRIES_MAX: usize = 2_000;
    let mut tries = 0;
    loop {
        let mut dropped = false;
        let mut k = window.len();
        while k > 0 && tries < TRIES_MAX {
            k -= 1;
            if !removable(&window, k) {
                continue;
            }
            tries += 1;
            let mut without = window.clone();
            without.remove(k);
            if violates(&without, budget) {
                window = without;
                dropped = true;
            }
        }
        if !dropped || tries >= TRIES_MAX {
            break;
        }
    }
    let mut idx: Vec<usize> = window.into_iter().map(|(i, _)| i).collect();
    idx.sort_by_key(|i| (calls[*i].invoke_us, *i));
    Some((idx, cut))
}

/// Whether dropping `window[k]` from a history keeps every linearizable
/// history linearizable (so a violation without it proves one with it):
/// - a read or a refused CAS only observes;
/// - a write or CAS whose value nobody in the window observes can go once
///   no refused CAS is left: in any order of the history, nothing between
///   it and the next change of the register looks at the register then
///   (a read would return its value, a CAS from it would name it, and an
///   unknown CAS that did not apply can be placed last instead), so the
///   same order without it is still legal. A refused CAS could have been
///   refused only because of it.
fn removable(window: &[(usize, Call<RegisterOp>)], k: usize) -> bool {
    let c = &window[k].1;
    let produced = match (c.op, c.outcome) {
        (RegisterOp::Read { .. }, _) | (RegisterOp::Cas { .. }, Outcome::Fail) => return true,
        (RegisterOp::Write { value }, _) => value,
        (RegisterOp::Cas { to, .. }, _) => to,
    };
    let refused_cas = window.iter().any(|(_, o)| matches!(o.op, RegisterOp::Cas { .. }) && o.outcome == Outcome::Fail);
    let observed = window.iter().any(|(_, o)| match o.op {
        RegisterOp::Read { value } => value == Some(produced),
        RegisterOp::Cas { from, .. } => from == Some(produced),
        RegisterOp::Write { .. } => false,
    });
    !refused_cas && !observed
}

/// Stale reads promise a value some write really wrote (or none): the
/// ones that returned a value no write or CAS that may have happened had
/// invoked by the time the read returned.
pub fn phantom_stale_reads(calls: &[Call<RegisterOp>], stale: &[Call<RegisterOp>]) -> Vec<usize> {
    stale
        .iter()
        .enumerate()
        .filter(|(_, r)| r.outcome == Outcome::Ok)
        .filter_map(|(i, r)| {
            let RegisterOp::Read { value: Some(v) } = r.op else { return None };
            let written = calls.iter().any(|w| {
                let writes_v = match (w.op, w.outcome) {
                    (RegisterOp::Write { value }, Outcome::Ok | Outcome::Info) => value == v,
                    (RegisterOp::Cas { to, .. }, Outcome::Ok | Outcome::Info) => to == v,
                    _ => false,
                };
                writes_v && w.invoke_us < r.complete_us
            });
            (!written).then_some(i)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(process: u32, op: RegisterOp, outcome: Outcome, invoke_us: u64, complete_us: u64) -> Call<RegisterOp> {
        Call { process, op, outcome, invoke_us, complete_us, node: 1 }
    }
    fn w(p: u32, v: u64, a: u64, b: u64) -> Call<RegisterOp> {
        call(p, RegisterOp::Write { value: v }, Outcome::Ok, a, b)
    }
    fn r(p: u32, v: Option<u64>, a: u64, b: u64) -> Call<RegisterOp> {
        call(p, RegisterOp::Read { value: v }, Outcome::Ok, a, b)
    }
    fn cas(p: u32, from: Option<u64>, to: u64, o: Outcome, a: u64, b: u64) -> Call<RegisterOp> {
        call(p, RegisterOp::Cas { from, to }, o, a, b)
    }
    const B: u64 = 1_000_000;

    #[test]
    fn sequential_and_overlapping_histories_that_have_an_order_pass() {
        let h = vec![r(1, None, 0, 1), w(1, 1, 2, 3), r(2, Some(1), 4, 5), w(2, 2, 6, 9), r(1, Some(1), 7, 8)];
        // The last read overlaps the write of 2, so it may see 1.
        assert_eq!(check(&h, B), Check::Linearizable);
        let h = vec![w(1, 1, 0, 10), w(2, 2, 0, 10), r(3, Some(2), 1, 2), r(4, Some(1), 3, 4)];
        // Overlapping writes may apply in either order but not both ways
        // for readers that follow each other: 2 then 1 is one order.
        assert_eq!(check(&h, B), Check::Linearizable);
        assert_eq!(check(&[], B), Check::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h = vec![w(1, 1, 0, 1), w(1, 2, 2, 3), r(2, Some(1), 4, 5)];
        assert_eq!(check(&h, B), Check::Violation);
        let (window, _) = explain(&h, B).unwrap();
        assert_eq!(window, vec![0, 1, 2]);
    }

    #[test]
    fn readers_that_disagree_on_the_order_of_two_writes_are_caught() {
        let h =
            vec![w(1, 1, 0, 10), w(2, 2, 0, 10), r(3, Some(1), 11, 12), r(3, Some(2), 13, 14), r(4, Some(1), 15, 16)];
        assert_eq!(check(&h, B), Check::Violation);
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        // Written, acknowledged, then the key reads as never written.
        let h = vec![w(1, 7, 0, 1), r(2, None, 5, 6)];
        assert_eq!(check(&h, B), Check::Violation);
    }

    #[test]
    fn two_cas_from_the_same_version_cannot_both_succeed() {
        let h = vec![w(1, 1, 0, 1), cas(2, Some(1), 2, Outcome::Ok, 2, 10), cas(3, Some(1), 3, Outcome::Ok, 2, 10)];
        assert_eq!(check(&h, B), Check::Violation);
        // One of them refused is fine.
        let h = vec![
            w(1, 1, 0, 1),
            cas(2, Some(1), 2, Outcome::Ok, 2, 10),
            cas(3, Some(1), 3, Outcome::Fail, 2, 10),
            r(1, Some(2), 11, 12),
        ];
        assert_eq!(check(&h, B), Check::Linearizable);
        // A refusal when the version did match is a violation.
        let h = vec![w(1, 1, 0, 1), cas(2, Some(1), 2, Outcome::Fail, 2, 3)];
        assert_eq!(check(&h, B), Check::Violation);
    }

    #[test]
    fn an_unknown_write_may_apply_late_or_never() {
        let info = call(1, RegisterOp::Write { value: 5 }, Outcome::Info, 0, 2);
        // Seen long after its client gave up: fine.
        assert_eq!(check(&[info.clone(), r(2, None, 3, 4), r(2, Some(5), 100, 101)], B), Check::Linearizable);
        // Never seen: fine.
        assert_eq!(check(&[info.clone(), r(2, None, 3, 4)], B), Check::Linearizable);
        // But not before it was invoked.
        let late = Call { invoke_us: 50, complete_us: 60, ..info };
        assert_eq!(check(&[r(2, Some(5), 3, 4), late], B), Check::Violation);
        // An unknown CAS applies only if it could.
        let h = vec![w(1, 1, 0, 1), cas(2, Some(9), 2, Outcome::Info, 2, 3), r(3, Some(2), 4, 5)];
        assert_eq!(check(&h, B), Check::Violation);
    }

    #[test]
    fn failed_reads_and_writes_say_nothing() {
        let h = vec![
            call(1, RegisterOp::Write { value: 3 }, Outcome::Fail, 0, 1),
            call(2, RegisterOp::Read { value: Some(99) }, Outcome::Info, 0, 1),
            r(3, None, 2, 3),
        ];
        assert_eq!(check(&h, B), Check::Linearizable);
    }

    #[test]
    fn the_window_keeps_only_the_reads_the_proof_needs() {
        let mut h = vec![w(1, 1, 0, 1)];
        for k in 0..20 {
            h.push(r(2, Some(1), 2 + 2 * k, 3 + 2 * k));
        }
        h.push(w(1, 2, 50, 51));
        h.push(r(3, Some(2), 52, 53));
        h.push(r(3, Some(1), 54, 55)); // the stale one
        h.push(r(3, Some(2), 56, 57));
        assert_eq!(check(&h, B), Check::Violation);
        let (window, cut) = explain(&h, B).unwrap();
        let ops: Vec<RegisterOp> = window.iter().map(|i| h[*i].op).collect();
        assert_eq!(
            ops,
            vec![RegisterOp::Write { value: 1 }, RegisterOp::Write { value: 2 }, RegisterOp::Read { value: Some(1) }]
        );
        assert_eq!(cut, 56);
    }

    #[test]
    fn the_window_drops_the_writes_nobody_saw() {
        let mut h: Vec<_> = (0..30).map(|k| w(1, k, 10 * k, 10 * k + 5)).collect();
        h.push(r(2, Some(29), 301, 302));
        h.push(cas(3, Some(29), 100, Outcome::Ok, 303, 304));
        h.push(r(2, Some(29), 305, 306)); // stale: 100 replaced 29
        assert_eq!(check(&h, B), Check::Violation);
        let (window, _) = explain(&h, B).unwrap();
        let ops: Vec<RegisterOp> = window.iter().map(|i| h[*i].op).collect();
        assert_eq!(
            ops,
            vec![
                RegisterOp::Write { value: 29 },
                RegisterOp::Cas { from: Some(29), to: 100 },
                RegisterOp::Read { value: Some(29) }
            ]
        );
        // A refused CAS keeps the writes it might have been refused for.
        let h = vec![w(1, 1, 0, 1), w(1, 2, 2, 3), cas(2, Some(2), 3, Outcome::Fail, 4, 5)];
        let (window, _) = explain(&h, B).unwrap();
        assert_eq!(window, vec![0, 1, 2]);
    }

    #[test]
    fn a_long_concurrent_history_is_checked_within_budget() {
        // 8 clients, 400 calls, each read sees the last write before it.
        let mut h = Vec::new();
        let mut last = None;
        for k in 0..400u64 {
            let t = k * 10;
            if k % 3 == 0 {
                h.push(w((k % 8) as u32, k, t, t + 5));
                last = Some(k);
            } else {
                h.push(r((k % 8) as u32, last, t, t + 5));
            }
        }
        assert_eq!(check(&h, 5_000_000), Check::Linearizable);
    }

    #[test]
    fn the_budget_bounds_the_search() {
        let h: Vec<_> = (0..30).map(|k| w(k, k as u64, 0, 100)).chain([r(99, Some(1000), 101, 102)]).collect();
        assert_eq!(check(&h, 50), Check::Unknown);
    }

    #[test]
    fn stale_reads_must_return_something_written() {
        let h = vec![w(1, 1, 10, 20), call(2, RegisterOp::Write { value: 2 }, Outcome::Info, 30, 40)];
        let stale = vec![
            r(3, Some(1), 15, 16), // invoked-before write: may be visible
            r(3, Some(2), 35, 36), // an unknown write: may be visible
            r(3, None, 50, 51),    // nothing yet on this replica: allowed
            r(3, Some(7), 50, 51), // never written
            r(3, Some(2), 5, 6),   // before its write was invoked
        ];
        assert_eq!(phantom_stale_reads(&h, &stale), vec![3, 4]);
    }
}
