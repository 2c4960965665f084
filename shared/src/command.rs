//! Commands replicated through Raft, and their binary codec.
//!
//! Every proposal is a [`Proposal`]: the command plus the leader's wall
//! clock when it proposed it (`stamp_ms`). Replicas decide TTL expiry and
//! preconditions with that stamp, never with their own clock, so every
//! replica reaches the same state.
//!
//! Format: `[format=2][stamp_ms BE8][request: 0 none, 1 first try, 2 retry]
//! [request id BE16]?[command tag][fields...]` (format 1, still read, has
//! no request id),
//! byte strings length-prefixed (u32 BE). Committed entries are decoded on every
//! replica, so decoding returns errors instead of panicking.

use crate::codec::{CodecError, Reader, Writer};
use crate::lock::SessionId;
use crate::txn::Txn;

const FORMAT_V1: u8 = 1;
/// Adds the request id.
const FORMAT_V2: u8 = 2;

/// Names one client write across the router's retries (random, 128 bits),
/// so the state machine applies it at most once.
pub type RequestId = u128;

/// A client write's identity as its entry carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub id: RequestId,
    /// Sent again after an answer was lost. Apply does not read it: every
    /// write with an id is looked up, since a first try can commit after
    /// its retry (`apply::decide`). It tells the metrics which copy came
    /// late.
    pub retry: bool,
}

impl Request {
    pub fn first(id: RequestId) -> Self {
        Request { id, retry: false }
    }
}

const REQUEST_NONE: u8 = 0;
const REQUEST_FIRST: u8 = 1;
const REQUEST_RETRY: u8 = 2;

/// Writes an optional request (proposals and the peer protocol).
pub fn put_request(w: &mut Writer, r: Option<Request>) {
    match r {
        None => w.u8(REQUEST_NONE),
        Some(r) => {
            w.u8(if r.retry { REQUEST_RETRY } else { REQUEST_FIRST });
            w.u128(r.id);
        }
    }
}

pub fn get_request(r: &mut Reader<'_>) -> Result<Option<Request>, CodecError> {
    Ok(match r.u8("request")? {
        REQUEST_NONE => None,
        tag @ (REQUEST_FIRST | REQUEST_RETRY) => {
            Some(Request { id: r.u128("request id")?, retry: tag == REQUEST_RETRY })
        }
        tag => return Err(CodecError::UnknownTag { what: "request", tag }),
    })
}

/// When a write may happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    Always,
    /// Only if the key's live version is exactly this (HTTP `If-Match`).
    IfVersion(u64),
    /// Only if the key has no live value (HTTP `If-None-Match: *`).
    IfAbsent,
}

/// A write fenced by a lock: refused if the key already accepted a write
/// fenced by `lock` with a larger token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lock: String,
    pub token: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        cond: Precondition,
        fence: Option<Fence>,
    },
    Delete {
        key: Vec<u8>,
        cond: Precondition,
        fence: Option<Fence>,
    },
    /// `session`: the one the caller presented (`reentry`), or a fresh
    /// random one the leader drew for this acquire, in the entry so every
    /// replica records the same. `wait_ms` > 0: if another session holds
    /// the lock, join its replicated FIFO queue for that long (from the
    /// entry's stamp) instead of failing, if fewer than `queue_max` wait
    /// (the leader's configured limit, in the entry so replicas agree).
    LockAcquire {
        name: String,
        owner: String,
        session: SessionId,
        reentry: bool,
        ttl_ms: u64,
        wait_ms: u64,
        queue_max: u32,
    },
    LockRelease {
        name: String,
        session: SessionId,
        token: u64,
    },
    LockRefresh {
        name: String,
        session: SessionId,
        token: u64,
        ttl_ms: u64,
    },
    /// From the leader's lease sweeper: free `name` if `token` still holds
    /// it and its lease ended at the proposal's stamp.
    LockExpire {
        name: String,
        token: u64,
    },
    /// From the leader: take `session` out of `name`'s waiter queue (its
    /// wait ended, or its client went away). A no-op if it is not queued.
    LockDequeue {
        name: String,
        session: SessionId,
    },
    /// From the leader's TTL sweeper: delete each key if it still holds
    /// that version and is expired at the proposal's stamp.
    Expire {
        keys: Vec<(Vec<u8>, u64)>,
    },
    /// Meta shard only: replace the cluster map (encoded) if the stored
    /// one is at `expected_epoch` (0: none yet) and `map` is at the next
    /// epoch. Every change of the map is one of these.
    SetMap {
        expected_epoch: u64,
        map: Vec<u8>,
    },
    /// From the leader's sweep: forget these request records (`data` family
    /// keys) if they are expired at the proposal's stamp.
    ForgetRequests {
        keys: Vec<Vec<u8>>,
    },
    /// From the Rebalancer: hand `ranges` (sorted ring-point intervals, each
    /// inside one of this shard's) to the new shard `target`, which starts
    /// on this shard's nodes with the data in place. `epoch` is the map
    /// epoch that recorded the split; it becomes the epoch of both shards'
    /// ranges. Applied once: a shard whose ranges are already at `epoch` or
    /// later ignores it (see `apply::decide_split`).
    Split {
        target: u64,
        ranges: Vec<std::ops::RangeInclusive<u64>>,
        epoch: u64,
    },
    /// Compare and then/else on keys of this shard (see [`crate::txn`]).
    Txn(Txn),
    /// Delete each key whose live version is still the one given (a page
    /// of a delete by prefix: a key written since its scan stays).
    DeleteKeys {
        keys: Vec<(Vec<u8>, u64)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub stamp_ms: u64,
    /// The client write this is, if it may be retried (see `apply::decide`).
    pub request: Option<Request>,
    pub cmd: Command,
}

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_EXPIRE: u8 = 3;
const TAG_LOCK_ACQUIRE: u8 = 4;
const TAG_LOCK_RELEASE: u8 = 5;
const TAG_LOCK_REFRESH: u8 = 6;
const TAG_LOCK_EXPIRE: u8 = 7;
const TAG_PUT_FENCED: u8 = 8;
const TAG_DELETE_FENCED: u8 = 9;
const TAG_SET_MAP: u8 = 10;
// Lock commands with sessions. The tags before them (4-6, owner-based)
// are still read, as session 0, which holds nothing.
const TAG_LOCK_ACQUIRE_SESSION: u8 = 11;
const TAG_LOCK_RELEASE_SESSION: u8 = 12;
const TAG_LOCK_REFRESH_SESSION: u8 = 13;
const TAG_FORGET_REQUESTS: u8 = 14;
const TAG_SPLIT: u8 = 15;
/// An acquire that waits in the lock's queue (a non-waiting acquire keeps
/// tag 11, so its entries stay readable by older nodes).
const TAG_LOCK_ACQUIRE_WAIT: u8 = 16;
const TAG_LOCK_DEQUEUE: u8 = 17;
const TAG_TXN: u8 = 18;
const TAG_DELETE_KEYS: u8 = 19;

const COND_ALWAYS: u8 = 0;
const COND_IF_VERSION: u8 = 1;
const COND_IF_ABSENT: u8 = 2;

fn put_cond(w: &mut Writer, c: Precondition) {
    match c {
        Precondition::Always => w.u8(COND_ALWAYS),
        Precondition::IfVersion(v) => {
            w.u8(COND_IF_VERSION);
            w.u64(v);
        }
        Precondition::IfAbsent => w.u8(COND_IF_ABSENT),
    }
}

/// A fenced write has its own tag (the unfenced format is unchanged), and
/// the fence follows the original fields.
fn put_fence(w: &mut Writer, f: &Option<Fence>) {
    if let Some(f) = f {
        w.bytes(f.lock.as_bytes());
        w.u64(f.token);
    }
}

fn get_fence(r: &mut Reader<'_>, fenced: bool) -> Result<Option<Fence>, CodecError> {
    if !fenced {
        return Ok(None);
    }
    let lock = string(r, "fence lock")?;
    Ok(Some(Fence { lock, token: r.u64("fence token")? }))
}

fn string(r: &mut Reader<'_>, what: &'static str) -> Result<String, CodecError> {
    String::from_utf8(r.bytes(what)?.to_vec()).map_err(|e| CodecError::Invalid { what, detail: e.to_string() })
}

fn get_cond(r: &mut Reader<'_>) -> Result<Precondition, CodecError> {
    match r.u8("precondition")? {
        COND_ALWAYS => Ok(Precondition::Always),
        COND_IF_VERSION => Ok(Precondition::IfVersion(r.u64("precondition version")?)),
        COND_IF_ABSENT => Ok(Precondition::IfAbsent),
        tag => Err(CodecError::UnknownTag { what: "precondition", tag }),
    }
}

impl Command {
    /// The key (or lock name) whose ring point picks the owning shard;
    /// `None` for the leader's own sweeps, which stay inside one shard.
    pub fn routing_key(&self) -> Option<&[u8]> {
        match self {
            Command::Put { key, .. } | Command::Delete { key, .. } => Some(key),
            Command::LockAcquire { name, .. }
            | Command::LockRelease { name, .. }
            | Command::LockRefresh { name, .. }
            | Command::LockExpire { name, .. }
            | Command::LockDequeue { name, .. } => Some(name.as_bytes()),
            // Every key is checked too: the first places the transaction
            // and its request record.
            Command::Txn(txn) => txn.keys().next(),
            Command::DeleteKeys { keys } => keys.first().map(|(k, _)| k.as_slice()),
            Command::Expire { .. }
            | Command::SetMap { .. }
            | Command::ForgetRequests { .. }
            | Command::Split { .. } => None,
        }
    }
}

impl Proposal {
    pub fn encode(&self) -> Vec<u8> {
        Self::encode_parts(self.stamp_ms, self.request, &self.cmd)
    }

    /// Encodes without building a `Proposal`, so the caller keeps `cmd`.
    pub fn encode_parts(stamp_ms: u64, request: Option<Request>, cmd: &Command) -> Vec<u8> {
        let hint = match cmd {
            Command::Put { key, value, .. } => key.len() + value.len() + 64,
            Command::Delete { key, .. } => key.len() + 56,
            Command::LockAcquire { name, owner, .. } => name.len() + owner.len() + 64,
            Command::LockRelease { name, .. } | Command::LockRefresh { name, .. } => name.len() + 64,
            Command::LockExpire { name, .. } => name.len() + 32,
            Command::LockDequeue { name, .. } => name.len() + 32,
            Command::Expire { keys } => keys.iter().map(|(k, _)| k.len() + 12).sum::<usize>() + 24,
            Command::SetMap { map, .. } => map.len() + 32,
            Command::ForgetRequests { keys } => keys.iter().map(|k| k.len() + 4).sum::<usize>() + 24,
            Command::Split { ranges, .. } => ranges.len() * 16 + 24,
            Command::Txn(txn) => txn.size_hint() + 16,
            Command::DeleteKeys { keys } => keys.iter().map(|(k, _)| k.len() + 12).sum::<usize>() + 8,
        } + 17;
        let mut w = Writer::with_capacity(hint);
        w.u8(FORMAT_V2);
        w.u64(stamp_ms);
        put_request(&mut w, request);
        match cmd {
            Command::Put { key, value, ttl_ms, cond, fence } => {
                w.u8(if fence.is_some() { TAG_PUT_FENCED } else { TAG_PUT });
                w.bytes(key);
                w.bytes(value);
                w.u64(ttl_ms.unwrap_or(0));
                put_cond(&mut w, *cond);
                put_fence(&mut w, fence);
            }
            Command::Delete { key, cond, fence } => {
                w.u8(if fence.is_some() { TAG_DELETE_FENCED } else { TAG_DELETE });
                w.bytes(key);
                put_cond(&mut w, *cond);
                put_fence(&mut w, fence);
            }
            Command::LockAcquire { name, owner, session, reentry, ttl_ms, wait_ms, queue_max } => {
                w.u8(if *wait_ms > 0 { TAG_LOCK_ACQUIRE_WAIT } else { TAG_LOCK_ACQUIRE_SESSION });
                w.bytes(name.as_bytes());
                w.bytes(owner.as_bytes());
                w.u128(*session);
                w.u8(*reentry as u8);
                w.u64(*ttl_ms);
                if *wait_ms > 0 {
                    w.u64(*wait_ms);
                    w.u32(*queue_max);
                }
            }
            Command::LockRelease { name, session, token } => {
                w.u8(TAG_LOCK_RELEASE_SESSION);
                w.bytes(name.as_bytes());
                w.u128(*session);
                w.u64(*token);
            }
            Command::LockRefresh { name, session, token, ttl_ms } => {
                w.u8(TAG_LOCK_REFRESH_SESSION);
                w.bytes(name.as_bytes());
                w.u128(*session);
                w.u64(*token);
                w.u64(*ttl_ms);
            }
            Command::LockExpire { name, token } => {
                w.u8(TAG_LOCK_EXPIRE);
                w.bytes(name.as_bytes());
                w.u64(*token);
            }
            Command::LockDequeue { name, session } => {
                w.u8(TAG_LOCK_DEQUEUE);
                w.bytes(name.as_bytes());
                w.u128(*session);
            }
            Command::Expire { keys } => {
                w.u8(TAG_EXPIRE);
                w.u64(keys.len() as u64);
                for (k, version) in keys {
                    w.bytes(k);
                    w.u64(*version);
                }
            }
            Command::SetMap { expected_epoch, map } => {
                w.u8(TAG_SET_MAP);
                w.u64(*expected_epoch);
                w.bytes(map);
            }
            Command::ForgetRequests { keys } => {
                w.u8(TAG_FORGET_REQUESTS);
                w.u32(keys.len() as u32);
                for k in keys {
                    w.bytes(k);
                }
            }
            Command::Split { target, ranges, epoch } => {
                w.u8(TAG_SPLIT);
                w.u64(*target);
                w.u64(*epoch);
                w.u32(ranges.len() as u32);
                for r in ranges {
                    w.u64(*r.start());
                    w.u64(*r.end());
                }
            }
            Command::Txn(txn) => {
                w.u8(TAG_TXN);
                txn.put(&mut w);
            }
            Command::DeleteKeys { keys } => {
                w.u8(TAG_DELETE_KEYS);
                w.u32(keys.len() as u32);
                for (k, version) in keys {
                    w.bytes(k);
                    w.u64(*version);
                }
            }
        }
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes);
        let format = r.u8("proposal format")?;
        if format != FORMAT_V1 && format != FORMAT_V2 {
            return Err(CodecError::UnsupportedFormat(format));
        }
        let stamp_ms = r.u64("proposal stamp")?;
        let request = match format {
            FORMAT_V1 => None,
            _ => get_request(&mut r)?,
        };
        let cmd = match r.u8("command tag")? {
            tag @ (TAG_PUT | TAG_PUT_FENCED) => {
                let key = r.bytes("put key")?.to_vec();
                let value = r.bytes("put value")?.to_vec();
                let ttl = r.u64("put ttl")?;
                let cond = get_cond(&mut r)?;
                let fence = get_fence(&mut r, tag == TAG_PUT_FENCED)?;
                Command::Put { key, value, ttl_ms: (ttl != 0).then_some(ttl), cond, fence }
            }
            tag @ (TAG_DELETE | TAG_DELETE_FENCED) => {
                let key = r.bytes("delete key")?.to_vec();
                let cond = get_cond(&mut r)?;
                let fence = get_fence(&mut r, tag == TAG_DELETE_FENCED)?;
                Command::Delete { key, cond, fence }
            }
            TAG_LOCK_ACQUIRE => Command::LockAcquire {
                name: string(&mut r, "lock name")?,
                owner: string(&mut r, "lock owner")?,
                session: 0,
                reentry: false,
                ttl_ms: r.u64("lock ttl")?,
                wait_ms: 0,
                queue_max: 0,
            },
            TAG_LOCK_RELEASE => {
                let name = string(&mut r, "lock name")?;
                string(&mut r, "lock owner")?;
                Command::LockRelease { name, session: 0, token: r.u64("lock token")? }
            }
            TAG_LOCK_REFRESH => {
                let name = string(&mut r, "lock name")?;
                string(&mut r, "lock owner")?;
                Command::LockRefresh { name, session: 0, token: r.u64("lock token")?, ttl_ms: r.u64("lock ttl")? }
            }
            tag @ (TAG_LOCK_ACQUIRE_SESSION | TAG_LOCK_ACQUIRE_WAIT) => {
                let name = string(&mut r, "lock name")?;
                let owner = string(&mut r, "lock owner")?;
                let session = r.u128("lock session")?;
                let reentry = match r.u8("lock reentry")? {
                    0 => false,
                    1 => true,
                    tag => return Err(CodecError::UnknownTag { what: "lock reentry", tag }),
                };
                let ttl_ms = r.u64("lock ttl")?;
                let (wait_ms, queue_max) = match tag {
                    TAG_LOCK_ACQUIRE_WAIT => (r.u64("lock wait")?, r.u32("lock queue max")?),
                    _ => (0, 0),
                };
                // Only the encoding the encoder writes: a waiting acquire
                // waits (a wait of 0 would decode to a value that encodes
                // differently; found by the fuzzer's round-trip rule).
                if tag == TAG_LOCK_ACQUIRE_WAIT && wait_ms == 0 {
                    return Err(CodecError::Invalid {
                        what: "lock acquire",
                        detail: "a waiting acquire with no wait".into(),
                    });
                }
                Command::LockAcquire { name, owner, session, reentry, ttl_ms, wait_ms, queue_max }
            }
            TAG_LOCK_RELEASE_SESSION => Command::LockRelease {
                name: string(&mut r, "lock name")?,
                session: r.u128("lock session")?,
                token: r.u64("lock token")?,
            },
            TAG_LOCK_REFRESH_SESSION => Command::LockRefresh {
                name: string(&mut r, "lock name")?,
                session: r.u128("lock session")?,
                token: r.u64("lock token")?,
                ttl_ms: r.u64("lock ttl")?,
            },
            TAG_LOCK_EXPIRE => Command::LockExpire { name: string(&mut r, "lock name")?, token: r.u64("lock token")? },
            TAG_LOCK_DEQUEUE => {
                Command::LockDequeue { name: string(&mut r, "lock name")?, session: r.u128("lock session")? }
            }
            TAG_EXPIRE => {
                let n = r.u64("expire count")?;
                // Each entry is at least 12 bytes; refuse counts the input
                // cannot hold rather than pre-allocating for them.
                let mut keys = Vec::with_capacity((n as usize).min(bytes.len() / 12));
                for _ in 0..n {
                    let k = r.bytes("expire key")?.to_vec();
                    keys.push((k, r.u64("expire version")?));
                }
                Command::Expire { keys }
            }
            TAG_SET_MAP => {
                Command::SetMap { expected_epoch: r.u64("map epoch")?, map: r.bytes("cluster map")?.to_vec() }
            }
            TAG_FORGET_REQUESTS => {
                let n = r.u32("forget count")?;
                // Each key is at least 4 bytes of length prefix.
                let mut keys = Vec::with_capacity((n as usize).min(bytes.len() / 4));
                for _ in 0..n {
                    keys.push(r.bytes("request key")?.to_vec());
                }
                Command::ForgetRequests { keys }
            }
            TAG_SPLIT => {
                let target = r.u64("split target")?;
                let epoch = r.u64("split epoch")?;
                let n = r.u32("split range count")?;
                let mut ranges = Vec::with_capacity((n as usize).min(bytes.len() / 16));
                for _ in 0..n {
                    let (lo, hi) = (r.u64("split range start")?, r.u64("split range end")?);
                    if lo > hi {
                        return Err(CodecError::Invalid { what: "split range", detail: format!("{lo} > {hi}") });
                    }
                    ranges.push(lo..=hi);
                }
                Command::Split { target, ranges, epoch }
            }
            TAG_TXN => Command::Txn(Txn::get(&mut r, bytes.len())?),
            TAG_DELETE_KEYS => {
                let n = r.u32("delete count")?;
                let mut keys = Vec::with_capacity((n as usize).min(bytes.len() / 12));
                for _ in 0..n {
                    let k = r.bytes("delete key")?.to_vec();
                    keys.push((k, r.u64("delete version")?));
                }
                Command::DeleteKeys { keys }
            }
            tag => return Err(CodecError::UnknownTag { what: "command", tag }),
        };
        r.finish()?;
        Ok(Proposal { stamp_ms, request, cmd })
    }
}

/// A proposal of every command kind, edge values included: the codec
/// tests' cases and the fuzzer's seeds (loadtest/fuzz).
pub fn samples() -> Vec<Proposal> {
    vec![
        Proposal {
            stamp_ms: 1,
            request: None,
            cmd: Command::Put {
                key: "a/ключ".as_bytes().to_vec(),
                value: vec![],
                ttl_ms: None,
                cond: Precondition::Always,
                fence: None,
            },
        },
        Proposal {
            stamp_ms: u64::MAX,
            request: None,
            cmd: Command::Put {
                key: b"k".to_vec(),
                value: vec![0; 300],
                ttl_ms: Some(500),
                cond: Precondition::IfVersion(42),
                fence: Some(Fence { lock: "l".into(), token: 7 }),
            },
        },
        Proposal {
            stamp_ms: 9,
            request: None,
            cmd: Command::Delete { key: b"k".to_vec(), cond: Precondition::IfAbsent, fence: None },
        },
        Proposal {
            stamp_ms: 9,
            request: None,
            cmd: Command::Delete {
                key: b"k".to_vec(),
                cond: Precondition::Always,
                fence: Some(Fence { lock: "ü".into(), token: u64::MAX }),
            },
        },
        Proposal {
            stamp_ms: 1,
            request: None,
            cmd: Command::LockAcquire {
                name: "n".into(),
                owner: "o".into(),
                session: 3,
                reentry: true,
                ttl_ms: 5,
                wait_ms: 0,
                queue_max: 0,
            },
        },
        Proposal {
            stamp_ms: 1,
            request: None,
            cmd: Command::LockAcquire {
                name: "n".into(),
                owner: "o".into(),
                session: 4,
                reentry: false,
                ttl_ms: 5,
                wait_ms: 2_000,
                queue_max: 7,
            },
        },
        Proposal { stamp_ms: 1, request: None, cmd: Command::LockDequeue { name: "n".into(), session: 1 << 90 } },
        Proposal {
            stamp_ms: 1,
            request: None,
            cmd: Command::LockRelease { name: "n".into(), session: u128::MAX, token: 5 },
        },
        Proposal {
            stamp_ms: 1,
            request: None,
            cmd: Command::LockRefresh { name: "n".into(), session: 1 << 70, token: 5, ttl_ms: 9 },
        },
        Proposal { stamp_ms: 1, request: None, cmd: Command::LockExpire { name: "n".into(), token: 5 } },
        Proposal { stamp_ms: 10, request: None, cmd: Command::Expire { keys: vec![(b"x".to_vec(), 3), (vec![], 4)] } },
        Proposal { stamp_ms: 11, request: None, cmd: Command::SetMap { expected_epoch: 7, map: vec![1, 2, 3] } },
        Proposal {
            stamp_ms: 12,
            request: Some(Request { id: u128::MAX - 5, retry: true }),
            cmd: Command::Delete { key: b"k".to_vec(), cond: Precondition::Always, fence: None },
        },
        Proposal {
            stamp_ms: 13,
            request: Some(Request::first(1)),
            cmd: Command::ForgetRequests { keys: vec![b"q".to_vec(), vec![]] },
        },
        Proposal {
            stamp_ms: 14,
            request: None,
            cmd: Command::Split { target: 17, ranges: vec![0..=5, 9..=u64::MAX], epoch: 12 },
        },
        Proposal {
            stamp_ms: 15,
            request: Some(Request::first(9)),
            cmd: Command::Txn(Txn {
                compares: vec![crate::txn::Compare {
                    key: b"{t}a".to_vec(),
                    op: crate::txn::CmpOp::Equal,
                    target: crate::txn::Target::Version(0),
                }],
                then: vec![crate::txn::TxnOp::Put { key: b"{t}a".to_vec(), value: b"v".to_vec(), ttl_ms: None }],
                otherwise: vec![crate::txn::TxnOp::Get { key: b"{t}b".to_vec() }],
            }),
        },
        Proposal {
            stamp_ms: 16,
            request: Some(Request::first(10)),
            cmd: Command::DeleteKeys { keys: vec![(b"a".to_vec(), 3), (vec![], 9)] },
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_acquire_without_a_wait_is_refused() {
        let cmd = Command::LockAcquire {
            name: "n".into(),
            owner: "o".into(),
            session: 4,
            reentry: false,
            ttl_ms: 1,
            wait_ms: 1,
            queue_max: 9,
        };
        let mut bytes = Proposal { stamp_ms: 1, request: None, cmd }.encode();
        // The wait (u64) and queue bound (u32) end the entry: zero the wait.
        let at = bytes.len() - 12;
        bytes[at..at + 8].copy_from_slice(&0u64.to_be_bytes());
        assert!(matches!(Proposal::decode(&bytes), Err(CodecError::Invalid { what: "lock acquire", .. })));
    }

    #[test]
    fn format_1_entries_still_decode_without_a_request_id() {
        let mut bytes = vec![FORMAT_V1];
        bytes.extend_from_slice(&7u64.to_be_bytes());
        bytes.push(TAG_DELETE);
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.push(b'k');
        bytes.push(COND_ALWAYS);
        let p = Proposal::decode(&bytes).unwrap();
        assert_eq!(p.request, None);
        assert_eq!(p.cmd, Command::Delete { key: b"k".to_vec(), cond: Precondition::Always, fence: None });
    }

    #[test]
    fn round_trip() {
        for p in samples() {
            assert_eq!(Proposal::decode(&p.encode()).unwrap(), p);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for p in samples() {
            let bytes = p.encode();
            for cut in 0..bytes.len() {
                assert!(Proposal::decode(&bytes[..cut]).is_err(), "{p:?} cut at {cut}");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(Proposal::decode(&long), Err(CodecError::TrailingBytes(1)));
        }
    }

    #[test]
    fn huge_expire_count_does_not_allocate() {
        let mut bytes = vec![FORMAT_V1];
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.push(TAG_EXPIRE);
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(Proposal::decode(&bytes).is_err());
    }
}
