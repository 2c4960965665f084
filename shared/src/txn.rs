//! Transactions on one shard: compare keys, then run one of two lists of
//! puts, deletes and gets, all in one Raft entry.
//!
//! Every compare sees the keys as the entry that applies the transaction
//! finds them; the branch's writes all get that entry's index as their
//! version (one revision, as in etcd), and its gets see the writes before
//! them in the list. Nothing else is ordered between the compare and the
//! writes, so a transaction is atomic and linearizable on its shard.
//!
//! A transaction's keys must be on one shard. The API checks them with its
//! map, the storage actor when it accepts the write and again when it
//! applies it (a split between the two can part keys that share no hash
//! tag: see `hash::hash_tag`). Keys that must stay together share a tag.
//!
//! Pure: the codec and the rule ([`decide`]) need no engine.

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::apply::{footprint, Effect, Outcome, State};
use crate::codec::{CodecError, Reader, Writer};
use crate::value::StoredValue;

/// Compares and operations (both branches) in one transaction.
pub const TXN_ITEMS_MAX: usize = 128;

/// How a key's current state compares with the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl CmpOp {
    fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Equal => o == Ordering::Equal,
            CmpOp::NotEqual => o != Ordering::Equal,
            CmpOp::Less => o == Ordering::Less,
            CmpOp::Greater => o == Ordering::Greater,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Equal => "=",
            CmpOp::NotEqual => "!=",
            CmpOp::Less => "<",
            CmpOp::Greater => ">",
        }
    }
}

/// What a compare looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The live version; an absent key has version 0 (as in etcd).
    Version(u64),
    /// The live value, bytewise; an absent key fails every value compare.
    Value(Vec<u8>),
    /// Whether the key has a live value (`Equal` or `NotEqual` only).
    Exists(bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CmpOp,
    pub target: Target,
}

impl Compare {
    /// Whether the compare holds for the key's live value `current`.
    pub fn holds(&self, current: Option<&StoredValue>) -> bool {
        match &self.target {
            Target::Version(v) => self.op.holds(current.map_or(0, |c| c.version).cmp(v)),
            Target::Value(v) => current.is_some_and(|c| self.op.holds(c.data.as_slice().cmp(v))),
            Target::Exists(e) => match self.op {
                CmpOp::Equal => current.is_some() == *e,
                CmpOp::NotEqual => current.is_some() != *e,
                CmpOp::Less | CmpOp::Greater => false,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put { key: Vec<u8>, value: Vec<u8>, ttl_ms: Option<u64> },
    Delete { key: Vec<u8> },
    Get { key: Vec<u8> },
}

impl TxnOp {
    pub fn key(&self) -> &[u8] {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => key,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    pub compares: Vec<Compare>,
    /// Run when every compare holds (all of none).
    pub then: Vec<TxnOp>,
    /// Run otherwise.
    pub otherwise: Vec<TxnOp>,
}

/// One operation's answer, in the order of its branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnResult {
    Put {
        version: u64,
    },
    /// `deleted`: the version removed; `None` if the key had no live value.
    Delete {
        deleted: Option<u64>,
    },
    Get {
        value: Option<StoredValue>,
    },
}

impl Txn {
    /// Every key the transaction names, compares first.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        let compared = self.compares.iter().map(|c| c.key.as_slice());
        compared.chain(self.then.iter().chain(&self.otherwise).map(TxnOp::key))
    }

    pub fn items(&self) -> usize {
        self.compares.len() + self.then.len() + self.otherwise.len()
    }

    /// Bytes of keys and values, for sizing its entry.
    pub fn size_hint(&self) -> usize {
        let op = |o: &TxnOp| match o {
            TxnOp::Put { key, value, .. } => key.len() + value.len() + 17,
            TxnOp::Delete { key } | TxnOp::Get { key } => key.len() + 5,
        };
        let cmp = |c: &Compare| {
            c.key.len()
                + 14
                + match &c.target {
                    Target::Value(v) => v.len(),
                    _ => 8,
                }
        };
        self.compares.iter().map(cmp).sum::<usize>() + self.then.iter().chain(&self.otherwise).map(op).sum::<usize>()
    }

    pub fn put(&self, w: &mut Writer) {
        w.u32(self.compares.len() as u32);
        for c in &self.compares {
            w.bytes(&c.key);
            w.u8(match c.op {
                CmpOp::Equal => 0,
                CmpOp::NotEqual => 1,
                CmpOp::Less => 2,
                CmpOp::Greater => 3,
            });
            match &c.target {
                Target::Version(v) => {
                    w.u8(1);
                    w.u64(*v);
                }
                Target::Value(v) => {
                    w.u8(2);
                    w.bytes(v);
                }
                Target::Exists(e) => {
                    w.u8(3);
                    w.u8(*e as u8);
                }
            }
        }
        for branch in [&self.then, &self.otherwise] {
            w.u32(branch.len() as u32);
            for op in branch {
                match op {
                    TxnOp::Put { key, value, ttl_ms } => {
                        w.u8(1);
                        w.bytes(key);
                        w.bytes(value);
                        w.u64(ttl_ms.unwrap_or(0));
                    }
                    TxnOp::Delete { key } => {
                        w.u8(2);
                        w.bytes(key);
                    }
                    TxnOp::Get { key } => {
                        w.u8(3);
                        w.bytes(key);
                    }
                }
            }
        }
    }

    /// Counts are checked against the bytes left, so a corrupt count
    /// cannot make decoding allocate.
    pub fn get(r: &mut Reader<'_>, input_len: usize) -> Result<Txn, CodecError> {
        let n = r.u32("txn compare count")? as usize;
        // A compare is at least 4 + 1 + 2 bytes.
        let mut compares = Vec::with_capacity(n.min(input_len / 7));
        for _ in 0..n {
            let key = r.bytes("txn compare key")?.to_vec();
            let op = match r.u8("txn compare op")? {
                0 => CmpOp::Equal,
                1 => CmpOp::NotEqual,
                2 => CmpOp::Less,
                3 => CmpOp::Greater,
                tag => return Err(CodecError::UnknownTag { what: "txn compare op", tag }),
            };
            let target = match r.u8("txn compare target")? {
                1 => Target::Version(r.u64("txn compare version")?),
                2 => Target::Value(r.bytes("txn compare value")?.to_vec()),
                3 => Target::Exists(match r.u8("txn compare exists")? {
                    0 => false,
                    1 => true,
                    tag => return Err(CodecError::UnknownTag { what: "txn compare exists", tag }),
                }),
                tag => return Err(CodecError::UnknownTag { what: "txn compare target", tag }),
            };
            compares.push(Compare { key, op, target });
        }
        let mut branches = [Vec::new(), Vec::new()];
        for branch in &mut branches {
            let n = r.u32("txn op count")? as usize;
            // An op is at least 1 + 4 bytes.
            branch.reserve(n.min(input_len / 5));
            for _ in 0..n {
                branch.push(match r.u8("txn op")? {
                    1 => {
                        let key = r.bytes("txn put key")?.to_vec();
                        let value = r.bytes("txn put value")?.to_vec();
                        let ttl = r.u64("txn put ttl")?;
                        TxnOp::Put { key, value, ttl_ms: (ttl != 0).then_some(ttl) }
                    }
                    2 => TxnOp::Delete { key: r.bytes("txn delete key")?.to_vec() },
                    3 => TxnOp::Get { key: r.bytes("txn get key")?.to_vec() },
                    tag => return Err(CodecError::UnknownTag { what: "txn op", tag }),
                });
            }
        }
        let [then, otherwise] = branches;
        Ok(Txn { compares, then, otherwise })
    }
}

pub(crate) fn put_results(w: &mut Writer, succeeded: bool, results: &[TxnResult]) {
    w.u8(succeeded as u8);
    w.u32(results.len() as u32);
    for r in results {
        match r {
            TxnResult::Put { version } => {
                w.u8(1);
                w.u64(*version);
            }
            TxnResult::Delete { deleted } => {
                w.u8(2);
                w.u64(deleted.unwrap_or(0));
            }
            TxnResult::Get { value: None } => w.u8(3),
            TxnResult::Get { value: Some(v) } => {
                w.u8(4);
                w.bytes(&v.encode());
            }
        }
    }
}

pub(crate) fn get_results(r: &mut Reader<'_>) -> Result<(bool, Vec<TxnResult>), CodecError> {
    let succeeded = match r.u8("txn succeeded")? {
        0 => false,
        1 => true,
        tag => return Err(CodecError::UnknownTag { what: "txn succeeded", tag }),
    };
    let n = r.u32("txn result count")? as usize;
    let mut results = Vec::with_capacity(n.min(TXN_ITEMS_MAX));
    for _ in 0..n {
        results.push(match r.u8("txn result")? {
            1 => TxnResult::Put { version: r.u64("txn put version")? },
            // Versions are Raft indexes, never 0.
            2 => TxnResult::Delete { deleted: Some(r.u64("txn delete version")?).filter(|v| *v != 0) },
            3 => TxnResult::Get { value: None },
            4 => TxnResult::Get { value: Some(StoredValue::decode(r.bytes("txn get value")?)?) },
            tag => return Err(CodecError::UnknownTag { what: "txn result", tag }),
        });
    }
    Ok((succeeded, results))
}

/// Applies `txn` at Raft `index` and the leader's stamp `now`: the
/// compares against the live state, then the branch they pick, in order.
pub fn decide(txn: Txn, index: u64, now: u64, state: &mut impl State) -> (Vec<Effect>, Outcome) {
    let live = |v: Option<StoredValue>| v.filter(|v| !v.is_expired_at(now));
    let succeeded = txn.compares.iter().all(|c| c.holds(live(state.value(&c.key)).as_ref()));
    let branch = if succeeded { txn.then } else { txn.otherwise };
    // Records as this transaction left them, for its later ops on a key.
    let mut written: HashMap<Vec<u8>, Option<StoredValue>> = HashMap::new();
    let (mut effects, mut results) = (Vec::new(), Vec::with_capacity(branch.len()));
    for op in branch {
        match op {
            TxnOp::Put { key, value, ttl_ms } => {
                let replaced = stored(&written, state, &key).map(|v| footprint(&key, &v));
                let expires_at_ms = ttl_ms.map(|t| now.saturating_add(t));
                let value = StoredValue { version: index, expires_at_ms, data: value };
                written.insert(key.clone(), Some(value.clone()));
                effects.push(Effect::Put { key, value, replaced });
                results.push(TxnResult::Put { version: index });
            }
            TxnOp::Delete { key } => match stored(&written, state, &key) {
                None => results.push(TxnResult::Delete { deleted: None }),
                Some(v) => {
                    let expired = v.is_expired_at(now);
                    results.push(TxnResult::Delete { deleted: (!expired).then_some(v.version) });
                    effects.push(Effect::Delete { removed: footprint(&key, &v), key: key.clone(), expired });
                    written.insert(key, None);
                }
            },
            TxnOp::Get { key } => results.push(TxnResult::Get { value: live(stored(&written, state, &key)) }),
        }
    }
    (effects, Outcome::Txn { succeeded, results })
}

fn stored(written: &HashMap<Vec<u8>, Option<StoredValue>>, state: &mut impl State, key: &[u8]) -> Option<StoredValue> {
    match written.get(key) {
        Some(v) => v.clone(),
        None => state.value(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: u64, data: &str) -> StoredValue {
        StoredValue { version, expires_at_ms: None, data: data.as_bytes().to_vec() }
    }

    fn cmp(key: &str, op: CmpOp, target: Target) -> Compare {
        Compare { key: key.into(), op, target }
    }

    #[test]
    fn compares_follow_etcd() {
        let a = v(5, "m");
        for (c, present, absent) in [
            (cmp("a", CmpOp::Equal, Target::Version(5)), true, false),
            (cmp("a", CmpOp::Equal, Target::Version(0)), false, true),
            (cmp("a", CmpOp::Less, Target::Version(6)), true, true),
            (cmp("a", CmpOp::Greater, Target::Version(4)), true, false),
            (cmp("a", CmpOp::NotEqual, Target::Version(5)), false, true),
            (cmp("a", CmpOp::Equal, Target::Value(b"m".to_vec())), true, false),
            (cmp("a", CmpOp::Less, Target::Value(b"n".to_vec())), true, false),
            (cmp("a", CmpOp::Greater, Target::Value(b"".to_vec())), true, false),
            (cmp("a", CmpOp::NotEqual, Target::Value(b"m".to_vec())), false, false),
            (cmp("a", CmpOp::Equal, Target::Exists(true)), true, false),
            (cmp("a", CmpOp::Equal, Target::Exists(false)), false, true),
            (cmp("a", CmpOp::NotEqual, Target::Exists(true)), false, true),
            (cmp("a", CmpOp::Less, Target::Exists(true)), false, false),
        ] {
            assert_eq!((c.holds(Some(&a)), c.holds(None)), (present, absent), "{c:?}");
        }
    }

    fn state(keys: &[(&str, StoredValue)]) -> impl FnMut(&[u8]) -> Option<StoredValue> {
        let m: HashMap<Vec<u8>, StoredValue> = keys.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.clone())).collect();
        move |k: &[u8]| m.get(k).cloned()
    }

    #[test]
    fn the_compares_pick_the_branch_and_its_ops_run_in_order() {
        let txn = Txn {
            compares: vec![cmp("a", CmpOp::Equal, Target::Version(3))],
            then: vec![
                TxnOp::Get { key: b"a".to_vec() },
                TxnOp::Put { key: b"a".to_vec(), value: b"new".to_vec(), ttl_ms: Some(10) },
                TxnOp::Get { key: b"a".to_vec() },
                TxnOp::Delete { key: b"b".to_vec() },
                TxnOp::Get { key: b"b".to_vec() },
                TxnOp::Delete { key: b"missing".to_vec() },
            ],
            otherwise: vec![TxnOp::Get { key: b"a".to_vec() }],
        };
        let mut s = state(&[("a", v(3, "old")), ("b", v(2, "bee"))]);
        let (effects, outcome) = decide(txn.clone(), 9, 100, &mut s);
        let new = StoredValue { version: 9, expires_at_ms: Some(110), data: b"new".to_vec() };
        assert_eq!(
            outcome,
            Outcome::Txn {
                succeeded: true,
                results: vec![
                    TxnResult::Get { value: Some(v(3, "old")) },
                    TxnResult::Put { version: 9 },
                    TxnResult::Get { value: Some(new.clone()) },
                    TxnResult::Delete { deleted: Some(2) },
                    TxnResult::Get { value: None },
                    TxnResult::Delete { deleted: None },
                ],
            }
        );
        assert_eq!(
            effects,
            vec![
                Effect::Put { key: b"a".to_vec(), value: new, replaced: Some(4) },
                Effect::Delete { key: b"b".to_vec(), removed: 4, expired: false },
            ]
        );

        let mut s = state(&[("a", v(4, "other"))]);
        let (effects, outcome) = decide(txn, 9, 100, &mut s);
        assert!(effects.is_empty(), "the else branch only reads");
        assert_eq!(
            outcome,
            Outcome::Txn { succeeded: false, results: vec![TxnResult::Get { value: Some(v(4, "other")) }] }
        );
    }

    #[test]
    fn expired_keys_are_absent_and_their_records_are_removed() {
        let gone = StoredValue { version: 2, expires_at_ms: Some(50), data: b"x".to_vec() };
        let txn = Txn {
            compares: vec![cmp("k", CmpOp::Equal, Target::Exists(false))],
            then: vec![TxnOp::Get { key: b"k".to_vec() }, TxnOp::Delete { key: b"k".to_vec() }],
            otherwise: vec![],
        };
        let (effects, outcome) = decide(txn, 7, 60, &mut state(&[("k", gone)]));
        assert_eq!(
            outcome,
            Outcome::Txn {
                succeeded: true,
                results: vec![TxnResult::Get { value: None }, TxnResult::Delete { deleted: None }]
            }
        );
        assert_eq!(effects, vec![Effect::Delete { key: b"k".to_vec(), removed: 2, expired: true }]);
    }

    #[test]
    fn a_put_twice_accounts_for_its_own_first_write() {
        let txn = Txn {
            then: vec![
                TxnOp::Put { key: b"k".to_vec(), value: b"12".to_vec(), ttl_ms: None },
                TxnOp::Put { key: b"k".to_vec(), value: b"1".to_vec(), ttl_ms: None },
            ],
            ..Txn::default()
        };
        let (effects, _) = decide(txn, 3, 0, &mut state(&[]));
        let replaced: Vec<Option<u64>> = effects
            .iter()
            .map(|e| match e {
                Effect::Put { replaced, .. } => *replaced,
                _ => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(replaced, [None, Some(3)]);
    }

    #[test]
    fn codec_round_trips_and_refuses_truncation() {
        let txn = Txn {
            compares: vec![
                cmp("a", CmpOp::Equal, Target::Version(u64::MAX)),
                cmp("ключ", CmpOp::Greater, Target::Value(vec![0, 255])),
                cmp("", CmpOp::NotEqual, Target::Exists(false)),
                cmp("c", CmpOp::Less, Target::Exists(true)),
            ],
            then: vec![
                TxnOp::Put { key: b"a".to_vec(), value: vec![], ttl_ms: Some(5) },
                TxnOp::Put { key: b"b".to_vec(), value: vec![1; 300], ttl_ms: None },
            ],
            otherwise: vec![TxnOp::Delete { key: b"a".to_vec() }, TxnOp::Get { key: b"z".to_vec() }],
        };
        let mut w = Writer::with_capacity(txn.size_hint());
        txn.put(&mut w);
        let bytes = w.buf;
        let mut r = Reader::new(&bytes);
        assert_eq!(Txn::get(&mut r, bytes.len()).unwrap(), txn);
        assert!(r.is_empty());
        for cut in 0..bytes.len() {
            assert!(Txn::get(&mut Reader::new(&bytes[..cut]), cut).is_err(), "cut at {cut}");
        }
        let huge = [0xff, 0xff, 0xff, 0xff];
        assert!(Txn::get(&mut Reader::new(&huge), huge.len()).is_err());

        let results = vec![
            TxnResult::Put { version: 4 },
            TxnResult::Delete { deleted: None },
            TxnResult::Delete { deleted: Some(3) },
            TxnResult::Get { value: None },
            TxnResult::Get { value: Some(StoredValue { version: 2, expires_at_ms: Some(9), data: b"v".to_vec() }) },
        ];
        let mut w = Writer::with_capacity(64);
        put_results(&mut w, true, &results);
        let mut r = Reader::new(&w.buf);
        assert_eq!(get_results(&mut r).unwrap(), (true, results));
        assert!(r.is_empty());
    }

    #[test]
    fn keys_lists_every_key_compares_first() {
        let txn = Txn {
            compares: vec![cmp("c", CmpOp::Equal, Target::Exists(true))],
            then: vec![TxnOp::Get { key: b"t".to_vec() }],
            otherwise: vec![TxnOp::Delete { key: b"o".to_vec() }],
        };
        assert_eq!(txn.keys().collect::<Vec<_>>(), [&b"c"[..], b"t", b"o"]);
        assert_eq!(txn.items(), 3);
    }
}
