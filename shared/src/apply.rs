//! The deterministic rules that turn one committed command into writes.
//!
//! `decide` sees the current stored value of each key it touches (through
//! a lookup the caller provides, so it needs no storage engine), the Raft
//! index of the entry and the leader's stamp. Every replica calls it with
//! the same inputs and so writes the same bytes.

use crate::cluster_map::ClusterMap;
use crate::codec::{CodecError, Reader, Writer};
use crate::command::{Command, Fence, Precondition, Proposal};
use crate::keys;
use crate::lock::{self, FenceRecord, LockOutcome, LockRecord};
use crate::txn::TxnResult;
use crate::value::StoredValue;
use std::ops::RangeInclusive;

/// How long (by entry stamps, leader clock) a shard remembers what a
/// request id's write did: longer than any client deadline (60 s at most)
/// plus a leader change, so a router retrying a write whose outcome it
/// lost always finds the first try's answer instead of applying it twice.
pub const REQUEST_RETENTION_MS: u64 = 120_000;

/// What a request id's write did, kept for [`REQUEST_RETENTION_MS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub expires_at_ms: u64,
    pub outcome: Outcome,
}

const REQUEST_RECORD_V1: u8 = 1;

impl RequestRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(32);
        w.u8(REQUEST_RECORD_V1);
        w.u64(self.expires_at_ms);
        self.outcome.put(&mut w);
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(b);
        let f = r.u8("request record format")?;
        if f != REQUEST_RECORD_V1 {
            return Err(CodecError::UnsupportedFormat(f));
        }
        let expires_at_ms = r.u64("request expiry")?;
        let outcome = Outcome::get(&mut r)?;
        r.finish()?;
        Ok(RequestRecord { expires_at_ms, outcome })
    }

    /// Only the expiry, without decoding the outcome (the sweep's check).
    pub fn decode_expiry(b: &[u8]) -> Option<u64> {
        let bytes = b.get(1..9)?;
        (b[0] == REQUEST_RECORD_V1).then(|| u64::from_be_bytes(bytes.try_into().unwrap_or_default()))
    }
}

/// The replica state `decide` reads: values, lock records and fences, and
/// (meta shard) the cluster map.
pub trait State {
    fn value(&mut self, key: &[u8]) -> Option<StoredValue>;
    fn lock(&mut self, name: &str) -> Option<LockRecord>;
    fn fences(&mut self, key: &[u8]) -> Option<FenceRecord>;
    /// The epoch of the stored cluster map; 0 when there is none.
    fn map_epoch(&mut self) -> u64 {
        0
    }
    /// The record of a request id at `key` (a `keys::request_key`).
    fn request(&mut self, _key: &[u8]) -> Option<RequestRecord> {
        None
    }
}

/// A value lookup alone is a state without locks or fences (tests).
impl<F: FnMut(&[u8]) -> Option<StoredValue>> State for F {
    fn value(&mut self, key: &[u8]) -> Option<StoredValue> {
        self(key)
    }
    fn lock(&mut self, _: &str) -> Option<LockRecord> {
        None
    }
    fn fences(&mut self, _: &[u8]) -> Option<FenceRecord> {
        None
    }
}

/// What the client is told about an applied command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Written {
        version: u64,
    },
    Deleted {
        version: u64,
    },
    NotFound,
    PreconditionFailed {
        current: Option<u64>,
    },
    Expired {
        count: usize,
    },
    /// A lock command's result, with the stamp it was decided at (so the
    /// reply can say how much of the lease is left).
    Lock {
        outcome: LockOutcome,
        now_ms: u64,
    },
    /// A fenced write refused: the key saw `highest` from this lock.
    Fenced {
        lock: String,
        highest: u64,
    },
    /// The cluster map is now at `epoch`.
    MapSet {
        epoch: u64,
    },
    /// A map change refused: the stored map is at `current` (0: none), or
    /// the new map is not at the next epoch or does not decode.
    MapConflict {
        current: u64,
    },
    /// The shard's ranges are at `epoch`: the split asked for is done.
    Split {
        epoch: u64,
    },
    /// A transaction ran its `then` branch (`succeeded`) or its `else`;
    /// one result per operation of that branch.
    Txn {
        succeeded: bool,
        results: Vec<TxnResult>,
    },
    /// `DeleteKeys`: how many keys still held the version asked for.
    DeletedKeys {
        count: u64,
    },
}

/// What a replica does with a `Split` (see [`decide_split`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitDecision {
    /// Keep `left`; the new shard starts with the ranges in the command.
    Apply { left: Vec<RangeInclusive<u64>> },
    /// The ranges are already at this split's epoch or a later one.
    Done,
    /// The command does not fit this shard's ranges: change nothing.
    Refused(String),
}

/// Whether a shard whose ranges are `ranges` (at `epoch`) splits off
/// `give` at `split_epoch`. Decided from replicated state alone, so every
/// replica decides the same at the same entry; a repeat (a Rebalancer that
/// proposed again after a crash) is `Done`.
pub fn decide_split(
    ranges: &[RangeInclusive<u64>],
    epoch: u64,
    give: &[RangeInclusive<u64>],
    split_epoch: u64,
) -> SplitDecision {
    if epoch >= split_epoch {
        return SplitDecision::Done;
    }
    if give.is_empty() {
        return SplitDecision::Refused("a split must give some ranges away".into());
    }
    match crate::ring::subtract(ranges, give) {
        None => SplitDecision::Refused("the ranges to give away are not all this shard's".into()),
        Some(left) if left.is_empty() => SplitDecision::Refused("a split must leave the source some ranges".into()),
        Some(left) => SplitDecision::Apply { left },
    }
}

/// The bytes a stored user key accounts for in shard statistics: its key
/// and its value (headers and RocksDB overhead not included).
pub fn footprint(key: &[u8], value: &StoredValue) -> u64 {
    (key.len() + value.data.len()) as u64
}

/// A change to one user key. Puts and deletes say what they replace or
/// remove, so a replica keeps its key count and bytes exact without
/// reading the key again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `replaced`: the footprint of the record this overwrites, if any.
    Put {
        key: Vec<u8>,
        value: StoredValue,
        replaced: Option<u64>,
    },
    /// `removed`: the footprint of the deleted record; `expired`: it had
    /// expired (the client saw no key; watchers see an expiry).
    Delete {
        key: Vec<u8>,
        removed: u64,
        expired: bool,
    },
    PutLock {
        name: String,
        record: LockRecord,
    },
    PutFences {
        key: Vec<u8>,
        record: FenceRecord,
    },
    /// Replace the cluster map (encoded; meta shard only).
    PutMap {
        map: Vec<u8>,
    },
    /// Remember what a request id's write did (`key`: a `data` family key).
    PutRequest {
        key: Vec<u8>,
        record: RequestRecord,
    },
    /// Forget a request id whose record expired.
    DeleteRequest {
        key: Vec<u8>,
    },
}

impl Outcome {
    /// Writes the outcome (request records and the peer protocol).
    pub fn put(&self, w: &mut Writer) {
        match self {
            Outcome::Written { version } => {
                w.u8(1);
                w.u64(*version);
            }
            Outcome::Deleted { version } => {
                w.u8(2);
                w.u64(*version);
            }
            Outcome::NotFound => w.u8(3),
            Outcome::PreconditionFailed { current } => {
                w.u8(4);
                match current {
                    None => w.u8(0),
                    Some(v) => {
                        w.u8(1);
                        w.u64(*v);
                    }
                }
            }
            Outcome::Expired { count } => {
                w.u8(5);
                w.u64(*count as u64);
            }
            Outcome::Lock { outcome, now_ms } => {
                w.u8(6);
                lock::put_lock_outcome(w, outcome);
                w.u64(*now_ms);
            }
            Outcome::Fenced { lock, highest } => {
                w.u8(7);
                w.bytes(lock.as_bytes());
                w.u64(*highest);
            }
            Outcome::MapSet { epoch } => {
                w.u8(8);
                w.u64(*epoch);
            }
            Outcome::MapConflict { current } => {
                w.u8(9);
                w.u64(*current);
            }
            Outcome::Split { epoch } => {
                w.u8(10);
                w.u64(*epoch);
            }
            Outcome::Txn { succeeded, results } => {
                w.u8(11);
                crate::txn::put_results(w, *succeeded, results);
            }
            Outcome::DeletedKeys { count } => {
                w.u8(12);
                w.u64(*count);
            }
        }
    }

    pub fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(match r.u8("outcome")? {
            1 => Outcome::Written { version: r.u64("version")? },
            2 => Outcome::Deleted { version: r.u64("version")? },
            3 => Outcome::NotFound,
            4 => Outcome::PreconditionFailed {
                current: match r.u8("current present")? {
                    0 => None,
                    1 => Some(r.u64("current version")?),
                    tag => return Err(CodecError::UnknownTag { what: "current present", tag }),
                },
            },
            5 => Outcome::Expired { count: r.u64("count")? as usize },
            6 => Outcome::Lock { outcome: lock::get_lock_outcome(r)?, now_ms: r.u64("now")? },
            7 => Outcome::Fenced {
                lock: String::from_utf8(r.bytes("lock")?.to_vec())
                    .map_err(|e| CodecError::Invalid { what: "lock", detail: e.to_string() })?,
                highest: r.u64("highest")?,
            },
            8 => Outcome::MapSet { epoch: r.u64("epoch")? },
            9 => Outcome::MapConflict { current: r.u64("epoch")? },
            10 => Outcome::Split { epoch: r.u64("epoch")? },
            11 => {
                let (succeeded, results) = crate::txn::get_results(r)?;
                Outcome::Txn { succeeded, results }
            }
            12 => Outcome::DeletedKeys { count: r.u64("deleted count")? },
            tag => return Err(CodecError::UnknownTag { what: "outcome", tag }),
        })
    }
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

/// Checks a fence; `Ok(Some(effect))` records it if the write goes ahead.
fn fence_check(state: &mut impl State, key: &[u8], fence: &Option<Fence>) -> Result<Option<Effect>, Outcome> {
    let Some(f) = fence else { return Ok(None) };
    let mut record = state.fences(key).unwrap_or_default();
    if let Err(highest) = record.check(&f.lock, f.token) {
        return Err(Outcome::Fenced { lock: f.lock.clone(), highest });
    }
    record.record(&f.lock, f.token);
    Ok(Some(Effect::PutFences { key: key.to_vec(), record }))
}

/// Applies `proposal`, committed at Raft `index` in `term`, to `state`.
/// Consumes the proposal so values move without copying.
///
/// A write carrying a request id that this shard has applied already (a
/// router re-sent a write whose first answer it lost, at a new leader)
/// changes nothing and answers what the first did. Every write with an id
/// is applied otherwise and its outcome remembered beside its key, so it
/// moves with the key's range and rides in snapshots.
///
/// The first try is looked up too, not only retries: it can commit after
/// its retry (its forwarded request arrived late at a leader, under packet
/// loss), and applied then it would overwrite the writes acknowledged in
/// between. The fault suite caught exactly that (seed 4242, 38% loss: a
/// value came back after six later acknowledged writes).
pub fn decide(proposal: Proposal, index: u64, term: u64, state: &mut impl State) -> (Vec<Effect>, Outcome) {
    let remembered =
        proposal.request.zip(proposal.cmd.routing_key()).map(|(r, routing_key)| keys::request_key(routing_key, r.id));
    let Some(key) = remembered else {
        return decide_command(proposal, index, term, state);
    };
    if let Some(first) = state.request(&key) {
        // A waiter's first try only queued it: what it is owed is what
        // the queue says now (granted, still waiting, or wait over).
        if let (
            Outcome::Lock { outcome: lock::LockOutcome::Queued { session, .. }, .. },
            Command::LockAcquire { name, .. },
        ) = (&first.outcome, &proposal.cmd)
        {
            let now_ms = proposal.stamp_ms;
            let outcome = lock::reattach(state.lock(name).as_ref(), *session);
            return (Vec::new(), Outcome::Lock { outcome, now_ms });
        }
        return (Vec::new(), first.outcome);
    }
    let expires_at_ms = proposal.stamp_ms.saturating_add(REQUEST_RETENTION_MS);
    let (mut effects, outcome) = decide_command(proposal, index, term, state);
    effects.push(Effect::PutRequest { key, record: RequestRecord { expires_at_ms, outcome: outcome.clone() } });
    (effects, outcome)
}

fn decide_command(proposal: Proposal, index: u64, term: u64, state: &mut impl State) -> (Vec<Effect>, Outcome) {
    let now = proposal.stamp_ms;
    let lock_effect = |name: String, rec: Option<LockRecord>| rec.map(|record| Effect::PutLock { name, record });
    match proposal.cmd {
        Command::Put { key, value, ttl_ms, cond, fence } => {
            let fenced = match fence_check(state, &key, &fence) {
                Ok(f) => f,
                Err(o) => return (vec![], o),
            };
            let stored = state.value(&key);
            let replaced = stored.as_ref().map(|v| footprint(&key, v));
            let current = live(stored, now);
            if let Err(o) = check(cond, current.as_ref()) {
                return (vec![], o);
            }
            let value =
                StoredValue { version: index, expires_at_ms: ttl_ms.map(|t| now.saturating_add(t)), data: value };
            let mut effects = vec![Effect::Put { key, value, replaced }];
            effects.extend(fenced);
            (effects, Outcome::Written { version: index })
        }
        Command::Delete { key, cond, fence } => {
            let fenced = match fence_check(state, &key, &fence) {
                Ok(f) => f,
                Err(o) => return (vec![], o),
            };
            let stored = state.value(&key);
            let removed = stored.as_ref().map(|v| footprint(&key, v));
            let current = live(stored, now);
            if let Err(o) = check(cond, current.as_ref()) {
                return (vec![], o);
            }
            let mut effects: Vec<Effect> = fenced.into_iter().collect();
            match (current, removed) {
                (Some(c), Some(removed)) => {
                    effects.push(Effect::Delete { key, removed, expired: false });
                    (effects, Outcome::Deleted { version: c.version })
                }
                // An expired record is removed even though the client is
                // told the key was not there.
                (None, Some(removed)) => {
                    effects.push(Effect::Delete { key, removed, expired: true });
                    (effects, Outcome::NotFound)
                }
                _ => (effects, Outcome::NotFound),
            }
        }
        Command::Expire { keys } => {
            let mut effects = Vec::new();
            for (key, version) in keys {
                if let Some(v) = state.value(&key) {
                    if v.version == version && v.is_expired_at(now) {
                        let removed = footprint(&key, &v);
                        effects.push(Effect::Delete { key, removed, expired: true });
                    }
                }
            }
            let count = effects.len();
            (effects, Outcome::Expired { count })
        }
        Command::ForgetRequests { keys } => {
            let effects: Vec<Effect> = keys
                .into_iter()
                .filter(|k| keys::is_request_key(k))
                .filter(|k| state.request(k).is_some_and(|r| now >= r.expires_at_ms))
                .map(|key| Effect::DeleteRequest { key })
                .collect();
            let count = effects.len();
            (effects, Outcome::Expired { count })
        }
        Command::LockAcquire { name, owner, session, reentry, ttl_ms, wait_ms, queue_max } => {
            let by =
                lock::AcquireBy { owner: &owner, session, reentry, ttl_ms, wait_ms, queue_max: queue_max as usize };
            let (rec, outcome) = lock::acquire(state.lock(&name), by, now, index, term);
            (lock_effect(name, rec).into_iter().collect(), Outcome::Lock { outcome, now_ms: now })
        }
        Command::LockRelease { name, session, token } => {
            let (rec, outcome) = lock::release(state.lock(&name), session, token, now, index, term);
            (lock_effect(name, rec).into_iter().collect(), Outcome::Lock { outcome, now_ms: now })
        }
        Command::LockRefresh { name, session, token, ttl_ms } => {
            let (rec, outcome) = lock::refresh(state.lock(&name), session, token, ttl_ms, now, term);
            (lock_effect(name, rec).into_iter().collect(), Outcome::Lock { outcome, now_ms: now })
        }
        Command::LockExpire { name, token } => {
            let (rec, outcome) = lock::expire(state.lock(&name), token, now, index, term);
            (lock_effect(name, rec).into_iter().collect(), Outcome::Lock { outcome, now_ms: now })
        }
        Command::LockDequeue { name, session } => {
            let (rec, outcome) = lock::dequeue(state.lock(&name), session);
            (lock_effect(name, rec).into_iter().collect(), Outcome::Lock { outcome, now_ms: now })
        }
        Command::SetMap { expected_epoch, map } => {
            let current = state.map_epoch();
            // Epochs only grow, one change at a time: a proposer working
            // from an old map loses, and must re-read and try again.
            let next = ClusterMap::decode(&map).map(|m| m.epoch);
            match next {
                Ok(e) if current == expected_epoch && e == expected_epoch + 1 => {
                    (vec![Effect::PutMap { map }], Outcome::MapSet { epoch: e })
                }
                _ => (vec![], Outcome::MapConflict { current }),
            }
        }
        Command::Txn(txn) => crate::txn::decide(txn, index, now, state),
        Command::DeleteKeys { keys } => {
            let mut effects = Vec::new();
            for (key, version) in keys {
                let Some(v) = state.value(&key) else { continue };
                if v.version == version && !v.is_expired_at(now) {
                    effects.push(Effect::Delete { removed: footprint(&key, &v), key, expired: false });
                }
            }
            let count = effects.len() as u64;
            (effects, Outcome::DeletedKeys { count })
        }
        // Changes the shard's ranges, not its data: the storage actor
        // applies it with `decide_split` before it gets here.
        Command::Split { epoch, .. } => (vec![], Outcome::Split { epoch }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Request;
    use std::collections::HashMap;

    fn put(key: &str, cond: Precondition, ttl: Option<u64>, stamp: u64) -> Proposal {
        Proposal {
            stamp_ms: stamp,
            request: None,
            cmd: Command::Put { key: key.into(), value: b"v".to_vec(), ttl_ms: ttl, cond, fence: None },
        }
    }

    fn del(key: &str, cond: Precondition, stamp: u64) -> Proposal {
        Proposal { stamp_ms: stamp, request: None, cmd: Command::Delete { key: key.into(), cond, fence: None } }
    }

    /// A tiny state machine over HashMaps, to run sequences of commands.
    #[derive(Default)]
    struct Sm(
        HashMap<Vec<u8>, StoredValue>,
        HashMap<String, LockRecord>,
        HashMap<Vec<u8>, FenceRecord>,
        Option<ClusterMap>,
        HashMap<Vec<u8>, RequestRecord>,
    );
    impl State for Sm {
        fn request(&mut self, key: &[u8]) -> Option<RequestRecord> {
            self.4.get(key).cloned()
        }
        fn map_epoch(&mut self) -> u64 {
            self.3.as_ref().map_or(0, |m| m.epoch)
        }
        fn value(&mut self, key: &[u8]) -> Option<StoredValue> {
            self.0.get(key).cloned()
        }
        fn lock(&mut self, name: &str) -> Option<LockRecord> {
            self.1.get(name).cloned()
        }
        fn fences(&mut self, key: &[u8]) -> Option<FenceRecord> {
            self.2.get(key).cloned()
        }
    }
    impl Sm {
        fn run(&mut self, p: Proposal, index: u64) -> Outcome {
            let (effects, outcome) = decide(p, index, 1, self);
            for e in effects {
                match e {
                    Effect::Put { key, value, replaced } => {
                        let old = self.0.insert(key.clone(), value);
                        assert_eq!(replaced, old.map(|o| footprint(&key, &o)), "put says what it replaced");
                    }
                    Effect::Delete { key, removed, .. } => {
                        let old = self.0.remove(&key);
                        assert_eq!(Some(removed), old.map(|o| footprint(&key, &o)), "delete says what it removed");
                    }
                    Effect::PutLock { name, record } => {
                        self.1.insert(name, record);
                    }
                    Effect::PutFences { key, record } => {
                        self.2.insert(key, record);
                    }
                    Effect::PutMap { map } => self.3 = Some(ClusterMap::decode(&map).unwrap()),
                    Effect::PutRequest { key, record } => {
                        self.4.insert(key, record);
                    }
                    Effect::DeleteRequest { key } => {
                        self.4.remove(&key);
                    }
                }
            }
            outcome
        }
    }

    fn fenced_put(key: &str, lock: &str, token: u64) -> Proposal {
        Proposal {
            stamp_ms: 0,
            request: None,
            cmd: Command::Put {
                key: key.into(),
                value: token.to_string().into_bytes(),
                ttl_ms: None,
                cond: Precondition::Always,
                fence: Some(Fence { lock: lock.into(), token }),
            },
        }
    }

    #[test]
    fn a_stale_holder_cannot_overwrite_its_successor() {
        let mut sm = Sm::default();
        assert_eq!(sm.run(fenced_put("k", "l", 5), 10), Outcome::Written { version: 10 });
        assert_eq!(sm.run(fenced_put("k", "l", 9), 11), Outcome::Written { version: 11 });
        assert_eq!(sm.run(fenced_put("k", "l", 5), 12), Outcome::Fenced { lock: "l".into(), highest: 9 });
        assert_eq!(sm.0[b"k".as_slice()].data, b"9", "the successor's value stays");
        let stale_delete = Proposal {
            stamp_ms: 0,
            request: None,
            cmd: Command::Delete {
                key: b"k".to_vec(),
                cond: Precondition::Always,
                fence: Some(Fence { lock: "l".into(), token: 5 }),
            },
        };
        assert_eq!(sm.run(stale_delete, 13), Outcome::Fenced { lock: "l".into(), highest: 9 });
        // Unfenced writes and other locks are not affected.
        assert_eq!(sm.run(fenced_put("k", "other", 1), 14), Outcome::Written { version: 14 });
        assert_eq!(sm.run(put("k", Precondition::Always, None, 0), 15), Outcome::Written { version: 15 });
    }

    #[test]
    fn lock_commands_through_decide() {
        let mut sm = Sm::default();
        let acq = |owner: &str| Proposal {
            stamp_ms: 100,
            request: None,
            cmd: Command::LockAcquire {
                name: "n".into(),
                owner: owner.into(),
                session: owner.as_bytes()[0] as u128,
                reentry: false,
                ttl_ms: 50,
                wait_ms: 0,
                queue_max: 0,
            },
        };
        let Outcome::Lock { outcome: LockOutcome::Granted { token, .. }, now_ms: 100 } = sm.run(acq("a"), 7) else {
            panic!("not granted")
        };
        assert_eq!(token, 7);
        match sm.run(acq("b"), 8) {
            Outcome::Lock { outcome: LockOutcome::Conflict { holder: Some(h) }, .. } => assert_eq!(h.owner, "a"),
            o => panic!("{o:?}"),
        }
        let rel = Proposal {
            stamp_ms: 100,
            request: None,
            cmd: Command::LockRelease { name: "n".into(), session: b'b' as u128, token },
        };
        match sm.run(rel, 9) {
            Outcome::Lock { outcome: LockOutcome::Conflict { holder: Some(h) }, .. } => assert_eq!(h.owner, "a"),
            o => panic!("wrong owner must conflict and name the holder: {o:?}"),
        }
        let exp = Proposal { stamp_ms: 149, request: None, cmd: Command::LockExpire { name: "n".into(), token } };
        assert_eq!(
            sm.run(exp.clone(), 10),
            Outcome::Lock { outcome: LockOutcome::Expired { freed: false }, now_ms: 149 }
        );
        let exp = Proposal { stamp_ms: 150, request: None, ..exp };
        assert_eq!(sm.run(exp, 11), Outcome::Lock { outcome: LockOutcome::Expired { freed: true }, now_ms: 150 });
        let Outcome::Lock { outcome: LockOutcome::Granted { token: t2, .. }, .. } = sm.run(acq("b"), 12) else {
            panic!("free after expiry")
        };
        assert!(t2 > token);
    }

    #[test]
    fn a_retried_request_applies_once_and_answers_what_the_first_did() {
        let mut st = Sm::default();
        let cas = |id: u128, stamp: u64| Proposal {
            stamp_ms: stamp,
            request: Some(Request { id, retry: stamp > 100 }),
            cmd: Command::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ttl_ms: None,
                cond: Precondition::IfAbsent,
                fence: None,
            },
        };
        assert_eq!(st.run(cas(7, 100), 5), Outcome::Written { version: 5 });
        // The same request again (the router lost the answer): no second
        // write, and not a precondition failure either.
        assert_eq!(st.run(cas(7, 200), 9), Outcome::Written { version: 5 });
        assert_eq!(st.0[&b"k".to_vec()].version, 5);
        // Another request with the same command is a new write.
        assert_eq!(st.run(cas(8, 300), 10), Outcome::PreconditionFailed { current: Some(5) });
        // A first try that commits after its retry (its forwarded request
        // came late) changes nothing either: it would undo later writes.
        let put = |id: u128, value: &[u8], retry: bool| Proposal {
            stamp_ms: 400,
            request: Some(Request { id, retry }),
            cmd: Command::Put {
                key: b"late".to_vec(),
                value: value.to_vec(),
                ttl_ms: None,
                cond: Precondition::Always,
                fence: None,
            },
        };
        assert_eq!(st.run(put(20, b"a", true), 20), Outcome::Written { version: 20 });
        assert_eq!(st.run(put(21, b"b", false), 21), Outcome::Written { version: 21 });
        assert_eq!(st.run(put(20, b"a", false), 22), Outcome::Written { version: 20 });
        assert_eq!(st.0[&b"late".to_vec()].data, b"b".to_vec(), "the later write stands");
        let key = keys::request_key(b"k", 7);
        assert_eq!(st.4[&key].expires_at_ms, 100 + REQUEST_RETENTION_MS);
        assert_eq!(RequestRecord::decode(&st.4[&key].encode()).unwrap(), st.4[&key]);
        assert_eq!(RequestRecord::decode_expiry(&st.4[&key].encode()), Some(100 + REQUEST_RETENTION_MS));

        // Forgotten only once expired, and only request records.
        let forget = |stamp: u64| Proposal {
            stamp_ms: stamp,
            request: None,
            cmd: Command::ForgetRequests { keys: vec![key.clone(), keys::data_key(b"k")] },
        };
        assert_eq!(st.run(forget(100 + REQUEST_RETENTION_MS - 1), 11), Outcome::Expired { count: 0 });
        assert_eq!(st.run(forget(100 + REQUEST_RETENTION_MS), 12), Outcome::Expired { count: 1 });
        assert!(!st.4.contains_key(&key));
        assert!(st.0.contains_key(b"k".as_slice()), "user data untouched");
    }

    #[test]
    fn a_resent_transaction_runs_once_and_its_record_keeps_its_reads() {
        use crate::txn::{CmpOp, Compare, Target, Txn, TxnOp};
        let mut st = Sm::default();
        let txn = |stamp: u64| Proposal {
            stamp_ms: stamp,
            request: Some(Request::first(42)),
            cmd: Command::Txn(Txn {
                compares: vec![Compare { key: b"{t}a".to_vec(), op: CmpOp::Equal, target: Target::Exists(false) }],
                then: vec![
                    TxnOp::Put { key: b"{t}a".to_vec(), value: b"1".to_vec(), ttl_ms: None },
                    TxnOp::Get { key: b"{t}a".to_vec() },
                ],
                otherwise: vec![],
            }),
        };
        let first = st.run(txn(1), 5);
        let Outcome::Txn { succeeded: true, ref results } = first else { panic!("{first:?}") };
        assert_eq!(results.len(), 2);
        // Sent again: its compare would fail now, but it is the same request.
        assert_eq!(st.run(txn(2), 6), first);
        let record = &st.4[&keys::request_key(b"{t}a", 42)];
        assert_eq!(RequestRecord::decode(&record.encode()).unwrap().outcome, first);
        assert_eq!(st.0[b"{t}a".as_slice()].version, 5);
    }

    #[test]
    fn a_delete_page_spares_keys_written_since_its_scan() {
        let mut st = Sm::default();
        st.run(put("a", Precondition::Always, None, 0), 3);
        st.run(put("b", Precondition::Always, None, 0), 4);
        st.run(put("b", Precondition::Always, None, 0), 5);
        st.run(put("c", Precondition::Always, Some(10), 0), 6);
        let keys = vec![(b"a".to_vec(), 3), (b"b".to_vec(), 4), (b"c".to_vec(), 6), (b"gone".to_vec(), 1)];
        let page = Proposal { stamp_ms: 20, request: None, cmd: Command::DeleteKeys { keys } };
        assert_eq!(st.run(page, 7), Outcome::DeletedKeys { count: 1 });
        assert!(!st.0.contains_key(b"a".as_slice()));
        assert!(st.0.contains_key(b"b".as_slice()), "rewritten after the scan");
        assert!(st.0.contains_key(b"c".as_slice()), "expired: the sweep's, and no live key was deleted");
    }

    #[test]
    fn a_retried_lock_acquire_gets_the_first_session_not_a_second_hold() {
        let mut st = Sm::default();
        let acq = |session: u128| Proposal {
            stamp_ms: 10,
            request: Some(Request { id: 42, retry: session != 1 }),
            cmd: Command::LockAcquire {
                name: "n".into(),
                owner: "o".into(),
                session,
                reentry: false,
                ttl_ms: 100,
                wait_ms: 0,
                queue_max: 0,
            },
        };
        let first = st.run(acq(1), 3);
        // The retry reached another leader, which drew another session.
        assert_eq!(st.run(acq(2), 4), first);
        let Outcome::Lock { outcome: LockOutcome::Granted { session, hold_count, .. }, .. } = first else { panic!() };
        assert_eq!((session, hold_count), (1, 1));
    }

    #[test]
    fn a_retried_waiter_reattaches_to_its_place_or_finds_its_grant() {
        let mut st = Sm::default();
        let acq = |id: u128, session: u128, retry: bool, stamp_ms: u64| Proposal {
            stamp_ms,
            request: Some(Request { id, retry }),
            cmd: Command::LockAcquire {
                name: "n".into(),
                owner: "o".into(),
                session,
                reentry: false,
                ttl_ms: 100,
                wait_ms: 5_000,
                queue_max: 256,
            },
        };
        let Outcome::Lock { outcome: LockOutcome::Granted { token, .. }, .. } = st.run(acq(1, 1, false, 10), 3) else {
            panic!("a free lock is granted")
        };
        let queued = st.run(acq(2, 2, false, 10), 4);
        assert!(matches!(queued, Outcome::Lock { outcome: LockOutcome::Queued { session: 2, position: 1, .. }, .. }));
        // The leader changed; the retry (another session drawn) finds the
        // first try's place, not a second one.
        let again = st.run(acq(2, 99, true, 20), 5);
        assert!(matches!(again, Outcome::Lock { outcome: LockOutcome::Queued { session: 2, position: 1, .. }, .. }));
        assert_eq!(st.1["n"].queue.len(), 1);
        let rel =
            Proposal { stamp_ms: 30, request: None, cmd: Command::LockRelease { name: "n".into(), session: 1, token } };
        st.run(rel, 6);
        let Outcome::Lock { outcome: LockOutcome::Granted { session, token: t2, .. }, now_ms: 40 } =
            st.run(acq(2, 98, true, 40), 7)
        else {
            panic!("the release granted the waiter; its retry learns so")
        };
        assert_eq!((session, t2), (2, 6));
    }

    #[test]
    fn a_split_applies_once_and_only_inside_the_shard() {
        let ranges = vec![0..=99, 200..=299];
        assert_eq!(
            decide_split(&ranges, 3, &[50..=99, 250..=260], 4),
            SplitDecision::Apply { left: vec![0..=49, 200..=249, 261..=299] }
        );
        assert_eq!(decide_split(&ranges, 4, &[50..=99], 4), SplitDecision::Done, "a repeat changes nothing");
        assert_eq!(decide_split(&ranges, 5, &[50..=99], 4), SplitDecision::Done, "an older split changes nothing");
        assert!(matches!(decide_split(&ranges, 3, &[90..=210], 4), SplitDecision::Refused(_)));
        assert!(matches!(decide_split(&ranges, 3, &[], 4), SplitDecision::Refused(_)));
        assert!(matches!(decide_split(&ranges, 3, &ranges, 4), SplitDecision::Refused(_)), "nothing left");
    }

    #[test]
    fn outcomes_round_trip() {
        for o in [
            Outcome::Written { version: 1 },
            Outcome::Deleted { version: 2 },
            Outcome::NotFound,
            Outcome::PreconditionFailed { current: None },
            Outcome::PreconditionFailed { current: Some(3) },
            Outcome::Expired { count: 4 },
            Outcome::Lock { outcome: LockOutcome::Released { hold_count: 1 }, now_ms: 5 },
            Outcome::Fenced { lock: "l".into(), highest: 6 },
            Outcome::MapSet { epoch: 7 },
            Outcome::MapConflict { current: 8 },
            Outcome::Split { epoch: 9 },
        ] {
            let mut w = Writer::with_capacity(16);
            o.put(&mut w);
            let mut r = Reader::new(&w.buf);
            assert_eq!(Outcome::get(&mut r).unwrap(), o);
            assert!(r.is_empty());
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
            request: None,
            cmd: Command::Expire { keys: vec![(b"a".to_vec(), 1), (b"b".to_vec(), 2), (b"c".to_vec(), 1)] },
        };
        assert_eq!(sm.run(p, 4), Outcome::Expired { count: 1 });
        assert!(!sm.0.contains_key(b"a".as_slice()));
        assert_eq!(sm.0[&b"b".to_vec()].version, 3);
    }

    #[test]
    fn the_map_changes_one_epoch_at_a_time_and_stale_proposers_lose() {
        use crate::cluster_map::{NodeInfo, NodeState};
        let nodes = (1..=3).map(|id| (id, NodeInfo::new("", format!("n{id}:1"), NodeState::Up))).collect();
        let boot = ClusterMap::bootstrap(nodes, 4, 3).unwrap();
        let set = |expected_epoch: u64, map: &ClusterMap| Proposal {
            stamp_ms: 0,
            request: None,
            cmd: Command::SetMap { expected_epoch, map: map.encode() },
        };
        let mut sm = Sm::default();
        // The first map, then a racing second bootstrap that lost.
        assert_eq!(sm.run(set(0, &boot), 1), Outcome::MapSet { epoch: 1 });
        assert_eq!(sm.run(set(0, &boot), 2), Outcome::MapConflict { current: 1 });
        let mut next = boot.clone();
        next.epoch = 2;
        next.nodes.get_mut(&3).unwrap().state = NodeState::Draining;
        // A jump of two epochs, or a proposer that read an old map, loses.
        let mut jump = next.clone();
        jump.epoch = 3;
        assert_eq!(sm.run(set(1, &jump), 3), Outcome::MapConflict { current: 1 });
        assert_eq!(sm.run(set(1, &next), 4), Outcome::MapSet { epoch: 2 });
        assert_eq!(sm.run(set(1, &next), 5), Outcome::MapConflict { current: 2 });
        assert_eq!(sm.3.as_ref(), Some(&next));
        // Bytes that are not a map change nothing.
        let junk = Proposal { stamp_ms: 0, request: None, cmd: Command::SetMap { expected_epoch: 2, map: vec![9, 9] } };
        assert_eq!(sm.run(junk, 6), Outcome::MapConflict { current: 2 });
        assert_eq!(sm.map_epoch(), 2);
    }
}
