//! The deterministic rules that turn one committed command into writes.
//!
//! `decide` sees the current stored value of each key it touches (through
//! a lookup the caller provides, so it needs no storage engine), the Raft
//! index of the entry and the leader's stamp. Every replica calls it with
//! the same inputs and so writes the same bytes.

use crate::command::{Command, Precondition, Proposal};
use crate::value::StoredValue;

/// What the client is told about an applied command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Written { version: u64 },
    Deleted { version: u64 },
    NotFound,
    PreconditionFailed { current: Option<u64> },
    Expired { count: usize },
}

/// A change to one user key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Put { key: Vec<u8>, value: StoredValue },
    Delete { key: Vec<u8> },
}

fn live(v: Option<StoredValue>, now_ms: u64) -> Option<StoredValue> {
    v.filter(|v| !v.is_expired_at(now_ms))
}

fn check(cond: Precondition, current: Option<&StoredValue>) -> Result<(), Outcome> {
    let ok = match cond {
        Precondition::Always => true,
        Precondition::IfVersion(v) => current.is_some_and(|c| c.version == v),
        Precondition::IfAbsent => current.is_none(),
    };
    if ok {
        Ok(())
    } else {
        Err(Outcome::PreconditionFailed { current: current.map(|c| c.version) })
    }
}

/// Applies `proposal`, committed at Raft `index`, to the state that
/// `lookup` shows. Consumes the proposal so values move without copying.
pub fn decide(
    proposal: Proposal,
    index: u64,
    mut lookup: impl FnMut(&[u8]) -> Option<StoredValue>,
) -> (Vec<Effect>, Outcome) {
    let now = proposal.stamp_ms;
    match proposal.cmd {
        Command::Put { key, value, ttl_ms, cond } => {
            let current = live(lookup(&key), now);
            if let Err(o) = check(cond, current.as_ref()) {
                return (vec![], o);
            }
            let value =
                StoredValue { version: index, expires_at_ms: ttl_ms.map(|t| now.saturating_add(t)), data: value };
            (vec![Effect::Put { key, value }], Outcome::Written { version: index })
        }
        Command::Delete { key, cond } => {
            let stored = lookup(&key);
            let had_record = stored.is_some();
            let current = live(stored, now);
            if let Err(o) = check(cond, current.as_ref()) {
                return (vec![], o);
            }
            match current {
                Some(c) => (vec![Effect::Delete { key }], Outcome::Deleted { version: c.version }),
                // An expired record is removed even though the client is
                // told the key was not there.
                None if had_record => (vec![Effect::Delete { key }], Outcome::NotFound),
                None => (vec![], Outcome::NotFound),
            }
        }
        Command::Expire { keys } => {
            let mut effects = Vec::new();
            for (key, version) in keys {
                if let Some(v) = lookup(&key) {
                    if v.version == version && v.is_expired_at(now) {
                        effects.push(Effect::Delete { key });
                    }
                }
            }
            let count = effects.len();
            (effects, Outcome::Expired { count })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn put(key: &str, cond: Precondition, ttl: Option<u64>, stamp: u64) -> Proposal {
        Proposal { stamp_ms: stamp, cmd: Command::Put { key: key.into(), value: b"v".to_vec(), ttl_ms: ttl, cond } }
    }

    fn del(key: &str, cond: Precondition, stamp: u64) -> Proposal {
        Proposal { stamp_ms: stamp, cmd: Command::Delete { key: key.into(), cond } }
    }

    /// A tiny state machine over a HashMap, to run sequences of commands.
    #[derive(Default)]
    struct Sm(HashMap<Vec<u8>, StoredValue>);
    impl Sm {
        fn run(&mut self, p: Proposal, index: u64) -> Outcome {
            let (effects, outcome) = decide(p, index, |k| self.0.get(k).cloned());
            for e in effects {
                match e {
                    Effect::Put { key, value } => {
                        self.0.insert(key, value);
                    }
                    Effect::Delete { key } => {
                        self.0.remove(&key);
                    }
                }
            }
            outcome
        }
    }

    #[test]
    fn put_versions_are_raft_indexes() {
        let mut sm = Sm::default();
        assert_eq!(sm.run(put("a", Precondition::Always, None, 0), 5), Outcome::Written { version: 5 });
        assert_eq!(sm.0[&b"a".to_vec()].version, 5);
    }

    #[test]
    fn if_version_and_if_absent() {
        let mut sm = Sm::default();
        assert_eq!(
            sm.run(put("a", Precondition::IfVersion(1), None, 0), 1),
            Outcome::PreconditionFailed { current: None }
        );
        assert_eq!(sm.run(put("a", Precondition::IfAbsent, None, 0), 2), Outcome::Written { version: 2 });
        assert_eq!(
            sm.run(put("a", Precondition::IfAbsent, None, 0), 3),
            Outcome::PreconditionFailed { current: Some(2) }
        );
        assert_eq!(
            sm.run(put("a", Precondition::IfVersion(9), None, 0), 4),
            Outcome::PreconditionFailed { current: Some(2) }
        );
        assert_eq!(sm.run(put("a", Precondition::IfVersion(2), None, 0), 5), Outcome::Written { version: 5 });
        assert_eq!(
            sm.run(del("a", Precondition::IfVersion(2), 0), 6),
            Outcome::PreconditionFailed { current: Some(5) }
        );
        assert_eq!(sm.run(del("a", Precondition::IfVersion(5), 0), 7), Outcome::Deleted { version: 5 });
        assert_eq!(sm.run(del("a", Precondition::Always, 0), 8), Outcome::NotFound);
    }

    #[test]
    fn ttl_uses_the_leader_stamp() {
        let mut sm = Sm::default();
        sm.run(put("t", Precondition::Always, Some(100), 1_000), 1);
        assert_eq!(sm.0[&b"t".to_vec()].expires_at_ms, Some(1_100));
        // Still live at 1_099: create-only fails.
        assert_eq!(
            sm.run(put("t", Precondition::IfAbsent, None, 1_099), 2),
            Outcome::PreconditionFailed { current: Some(1) }
        );
        // Expired at 1_100: create-only succeeds.
        assert_eq!(sm.run(put("t", Precondition::IfAbsent, None, 1_100), 3), Outcome::Written { version: 3 });
    }

    #[test]
    fn delete_of_expired_record_removes_it_and_says_not_found() {
        let mut sm = Sm::default();
        sm.run(put("t", Precondition::Always, Some(10), 0), 1);
        assert_eq!(sm.run(del("t", Precondition::Always, 10), 2), Outcome::NotFound);
        assert!(sm.0.is_empty());
    }

    #[test]
    fn expire_only_removes_the_named_expired_version() {
        let mut sm = Sm::default();
        sm.run(put("a", Precondition::Always, Some(10), 0), 1);
        sm.run(put("b", Precondition::Always, Some(10), 0), 2);
        sm.run(put("b", Precondition::Always, None, 5), 3); // rewritten, no TTL
        let p = Proposal {
            stamp_ms: 20,
            cmd: Command::Expire { keys: vec![(b"a".to_vec(), 1), (b"b".to_vec(), 2), (b"c".to_vec(), 1)] },
        };
        assert_eq!(sm.run(p, 4), Outcome::Expired { count: 1 });
        assert!(!sm.0.contains_key(b"a".as_slice()));
        assert_eq!(sm.0[&b"b".to_vec()].version, 3);
    }
}
