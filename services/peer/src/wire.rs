//! The peer protocol: frames, their binary codec and snapshot reassembly.
//! Pure code, no I/O, so every byte a peer can send is tested here.
//!
//! A frame is `[len u32 BE][kind u8][body]`, `len` counting kind and body.
//! Frames longer than [`FRAME_BYTES_MAX`] are refused before their body is
//! read. Every connection starts with a [`Hello`] from the dialer, which
//! the acceptor answers with `Welcome` or `Reject` (then closes).
//!
//! A dialer pings on every link at a fixed interval and the acceptor
//! answers each ping with a pong carrying the same sequence number, so
//! both ends can tell a silent link (a partition, a paused process) from a
//! quiet one within about an election timeout.
//!
//! Raft messages are rust-protobuf bytes inside our frame. A snapshot
//! message is encoded once and sent as [`SNAPSHOT_CHUNK_BYTES`] chunks, so
//! no frame grows with the shard.

use raft::eraftpb::Message as RaftMessage;
use ringstore_shared::apply::Outcome;
use ringstore_shared::codec::{CodecError, Reader, Writer};
use ringstore_shared::command::{get_request, put_request, Proposal};
use ringstore_shared::lock::LockRecord;
use ringstore_shared::value::StoredValue;
use ringstore_shared::{NodeId, ShardId, StoreError};
use ringstore_storage::events::{Event, EventKind, KeyFilter};
use ringstore_storage::messages::PeerChange;
use ringstore_storage::{ReplicaStatus, ShardOp, ShardReply, ShardResult};
use sha2::{Digest, Sha256};

pub const MAGIC: u64 = u64::from_be_bytes(*b"RINGSTOR");
/// 2: ping and pong frames (link liveness). 4: status carries the shard's
/// ranges epoch and count, scan pages their epoch (splits). 5: a status's
/// key count and bytes are optional (being counted after a split). 6: lock
/// waiters queue in the record (lock record format 2, the waiting-acquire
/// and dequeue commands, queue outcomes): a node of 5 would skip those
/// entries where this one applies them, so the two must not replicate.
/// 7: a shard split off starts its log after the split's index, not at
/// `INIT_LOG_INDEX` (versions keep growing per key): replicas of one new
/// shard on nodes of 6 and 7 would start different logs. 8: lock listing
/// (`ScanLocks`, a `Locks` reply) and key long polls (`WatchKey`), which a
/// node of 7 cannot decode. 9: watch polls (`Events`, an `Events` reply,
/// the `Compacted` error). 10: transactions and delete pages (commands
/// `Txn` and `DeleteKeys`, their outcomes) and hash-tag placement, which
/// moves keys with braces: nodes of 9 and 10 must not share a cluster.
/// Key long polls read the node's watch feeds: `WatchKey` (12) is gone.
/// Snapshot chunks carry the SHA-256 of the whole snapshot.
pub const PROTOCOL_VERSION: u8 = 10;
pub const FRAME_HEADER_BYTES: usize = 4;
/// Largest frame a peer may send: a value at the value limit plus room.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Raft frames are cut here so one frame never nears the maximum.
pub const RAFT_FRAME_BYTES_TARGET: usize = 4 * 1024 * 1024;
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest snapshot a node will reassemble (it is held in memory).
pub const SNAPSHOT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

const KIND_HELLO: u8 = 1;
const KIND_WELCOME: u8 = 2;
const KIND_REJECT: u8 = 3;
const KIND_RAFT: u8 = 4;
const KIND_SNAPSHOT_CHUNK: u8 = 5;
const KIND_REQUEST: u8 = 6;
const KIND_RESPONSE: u8 = 7;
const KIND_PING: u8 = 8;
const KIND_PONG: u8 = 9;
/// A request a node passes on for a peer that cannot reach the leader
/// itself; never passed on again.
const KIND_RELAYED_REQUEST: u8 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub cluster_id: u64,
    pub from: NodeId,
    pub to: NodeId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The dialer belongs to another cluster (or this node does).
    ClusterMismatch,
    /// The dialer meant another node id at this address.
    WrongNode,
    /// The dialer's node id is not a member of this cluster.
    UnknownPeer,
    /// The first frame was not a valid hello.
    BadHello,
}

impl RejectReason {
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::ClusterMismatch => "cluster_mismatch",
            RejectReason::WrongNode => "wrong_node",
            RejectReason::UnknownPeer => "unknown_peer",
            RejectReason::BadHello => "bad_hello",
        }
    }
    fn code(self) -> u8 {
        match self {
            RejectReason::ClusterMismatch => 1,
            RejectReason::WrongNode => 2,
            RejectReason::UnknownPeer => 3,
            RejectReason::BadHello => 4,
        }
    }
    fn from_code(c: u8) -> Result<Self, CodecError> {
        Ok(match c {
            1 => RejectReason::ClusterMismatch,
            2 => RejectReason::WrongNode,
            3 => RejectReason::UnknownPeer,
            4 => RejectReason::BadHello,
            tag => return Err(CodecError::UnknownTag { what: "reject reason", tag }),
        })
    }
}

/// The acceptor's decision on a hello: pure, so it is tested without sockets.
pub fn check_hello(h: &Hello, cluster_id: u64, me: NodeId, members: &[NodeId]) -> Result<(), RejectReason> {
    if h.cluster_id != cluster_id {
        return Err(RejectReason::ClusterMismatch);
    }
    if h.to != me {
        return Err(RejectReason::WrongNode);
    }
    if h.from == me || !members.contains(&h.from) {
        return Err(RejectReason::UnknownPeer);
    }
    Ok(())
}

#[derive(Debug)]
pub enum Frame {
    Hello(Hello),
    Welcome {
        cluster_id: u64,
        node: NodeId,
    },
    Reject {
        reason: RejectReason,
        detail: String,
    },
    Raft {
        shard: ShardId,
        msgs: Vec<RaftMessage>,
    },
    SnapshotChunk(SnapshotChunk),
    /// `relayed`: sent on by a node for a peer; answered, never relayed again.
    Request {
        id: u64,
        shard: ShardId,
        op: ShardOp,
        relayed: bool,
    },
    Response {
        id: u64,
        result: ShardResult,
    },
    /// Dialer to acceptor: are you there?
    Ping {
        seq: u64,
    },
    /// Acceptor to dialer: the answer to `Ping { seq }`.
    Pong {
        seq: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub shard: ShardId,
    /// Distinguishes transfers on one connection; a new id abandons the old.
    pub transfer: u64,
    pub total: u64,
    /// SHA-256 of the whole snapshot message, in every chunk: the
    /// receiver checks the reassembled bytes against it before decoding.
    pub digest: [u8; 32],
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Appends one frame of `kind` to `out`, `body` writing its fields.
fn frame(out: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Writer)) {
    let start = out.len();
    let mut w = Writer { buf: std::mem::take(out) };
    w.u32(0);
    w.u8(kind);
    body(&mut w);
    let len = (w.buf.len() - start - FRAME_HEADER_BYTES) as u32;
    w.buf[start..start + FRAME_HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
    *out = w.buf;
}

pub fn encode_hello(out: &mut Vec<u8>, h: &Hello) {
    frame(out, KIND_HELLO, |w| {
        w.u64(MAGIC);
        w.u8(PROTOCOL_VERSION);
        w.u64(h.cluster_id);
        w.u64(h.from);
        w.u64(h.to);
    });
}

pub fn encode_welcome(out: &mut Vec<u8>, cluster_id: u64, node: NodeId) {
    frame(out, KIND_WELCOME, |w| {
        w.u64(cluster_id);
        w.u64(node);
    });
}

pub fn encode_reject(out: &mut Vec<u8>, reason: RejectReason, detail: &str) {
    frame(out, KIND_REJECT, |w| {
        w.u8(reason.code());
        w.bytes(detail.as_bytes());
    });
}

/// Encodes Raft messages of one shard into as many frames as
/// [`RAFT_FRAME_BYTES_TARGET`] needs. Snapshot messages do not belong here
/// (see [`encode_snapshot`]).
pub fn encode_raft(out: &mut Vec<u8>, shard: ShardId, msgs: &[RaftMessage]) -> Result<(), CodecError> {
    use protobuf::Message as _;
    let mut encoded = Vec::with_capacity(msgs.len());
    for m in msgs {
        let b = m.write_to_bytes().map_err(|e| CodecError::Invalid { what: "raft message", detail: e.to_string() })?;
        encoded.push(b);
    }
    let mut rest = encoded.as_slice();
    while !rest.is_empty() {
        let mut n = 0;
        let mut size = 0;
        while n < rest.len() && (n == 0 || size + rest[n].len() <= RAFT_FRAME_BYTES_TARGET) {
            size += rest[n].len() + 4;
            n += 1;
        }
        let (group, tail) = rest.split_at(n);
        frame(out, KIND_RAFT, |w| {
            w.u64(shard);
            w.u32(group.len() as u32);
            for b in group {
                w.bytes(b);
            }
        });
        rest = tail;
    }
    Ok(())
}

/// Encodes a snapshot message as chunk frames.
pub fn encode_snapshot(out: &mut Vec<u8>, shard: ShardId, transfer: u64, msg: &RaftMessage) -> Result<(), CodecError> {
    encode_snapshot_in(out, shard, transfer, msg, SNAPSHOT_CHUNK_BYTES)
}

/// [`encode_snapshot`] with chunks of `chunk_bytes` (small ones let the
/// fuzzer's seeds hold several chunks).
pub fn encode_snapshot_in(
    out: &mut Vec<u8>,
    shard: ShardId,
    transfer: u64,
    msg: &RaftMessage,
    chunk_bytes: usize,
) -> Result<(), CodecError> {
    use protobuf::Message as _;
    let b =
        msg.write_to_bytes().map_err(|e| CodecError::Invalid { what: "snapshot message", detail: e.to_string() })?;
    let total = b.len() as u64;
    if total > SNAPSHOT_BYTES_MAX {
        return Err(CodecError::Invalid {
            what: "snapshot",
            detail: format!("{total} bytes exceeds the {SNAPSHOT_BYTES_MAX} byte limit"),
        });
    }
    let digest: [u8; 32] = Sha256::digest(&b).into();
    let step = chunk_bytes.max(1);
    for (i, chunk) in b.chunks(step).enumerate() {
        frame(out, KIND_SNAPSHOT_CHUNK, |w| {
            w.u64(shard);
            w.u64(transfer);
            w.u64(total);
            w.buf.extend_from_slice(&digest);
            w.u64((i * step) as u64);
            w.bytes(chunk);
        });
    }
    Ok(())
}

pub fn encode_request(out: &mut Vec<u8>, id: u64, shard: ShardId, op: &ShardOp, relayed: bool) {
    frame(out, if relayed { KIND_RELAYED_REQUEST } else { KIND_REQUEST }, |w| {
        w.u64(id);
        w.u64(shard);
        put_op(w, op);
    });
}

pub fn encode_response(out: &mut Vec<u8>, id: u64, result: &ShardResult) {
    frame(out, KIND_RESPONSE, |w| {
        w.u64(id);
        match result {
            Ok(reply) => {
                w.u8(0);
                put_reply(w, reply);
            }
            Err(e) => {
                w.u8(1);
                put_error(w, e);
            }
        }
    });
}

pub fn encode_ping(out: &mut Vec<u8>, seq: u64) {
    frame(out, KIND_PING, |w| w.u64(seq));
}

pub fn encode_pong(out: &mut Vec<u8>, seq: u64) {
    frame(out, KIND_PONG, |w| w.u64(seq));
}

/// Checks a frame header; the body is read only if this accepts it.
pub fn frame_len(header: [u8; FRAME_HEADER_BYTES]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(CodecError::Invalid { what: "frame", detail: "empty frame".into() });
    }
    if len > FRAME_BYTES_MAX {
        return Err(CodecError::Invalid {
            what: "frame",
            detail: format!("{len} bytes exceeds the {FRAME_BYTES_MAX} byte limit"),
        });
    }
    Ok(len)
}

/// Decodes a frame body (kind byte first), as read after [`frame_len`].
pub fn decode(body: &[u8]) -> Result<Frame, CodecError> {
    let mut r = Reader::new(body);
    let frame = match r.u8("frame kind")? {
        KIND_HELLO => {
            if r.u64("magic")? != MAGIC {
                return Err(CodecError::Invalid { what: "hello", detail: "not a ringstore peer".into() });
            }
            let version = r.u8("protocol version")?;
            if version != PROTOCOL_VERSION {
                return Err(CodecError::UnsupportedFormat(version));
            }
            Frame::Hello(Hello { cluster_id: r.u64("cluster id")?, from: r.u64("from")?, to: r.u64("to")? })
        }
        KIND_WELCOME => Frame::Welcome { cluster_id: r.u64("cluster id")?, node: r.u64("node")? },
        KIND_REJECT => {
            let reason = RejectReason::from_code(r.u8("reject reason")?)?;
            Frame::Reject { reason, detail: string(&mut r, "reject detail")? }
        }
        KIND_RAFT => {
            use protobuf::Message as _;
            let shard = r.u64("shard")?;
            let n = r.u32("message count")?;
            let mut msgs = Vec::with_capacity((n as usize).min(body.len() / 4));
            for _ in 0..n {
                let b = r.bytes("raft message")?;
                crate::protoscan::check_raft_message(b)
                    .map_err(|detail| CodecError::Invalid { what: "raft message", detail })?;
                let m = RaftMessage::parse_from_bytes(b)
                    .map_err(|e| CodecError::Invalid { what: "raft message", detail: e.to_string() })?;
                msgs.push(m);
            }
            Frame::Raft { shard, msgs }
        }
        KIND_SNAPSHOT_CHUNK => Frame::SnapshotChunk(SnapshotChunk {
            shard: r.u64("shard")?,
            transfer: r.u64("transfer")?,
            total: r.u64("snapshot size")?,
            digest: {
                let mut d = [0u8; 32];
                d.copy_from_slice(r.take(32, "snapshot digest")?);
                d
            },
            offset: r.u64("chunk offset")?,
            data: r.bytes("chunk")?.to_vec(),
        }),
        kind @ (KIND_REQUEST | KIND_RELAYED_REQUEST) => Frame::Request {
            id: r.u64("request id")?,
            shard: r.u64("shard")?,
            op: get_op(&mut r)?,
            relayed: kind == KIND_RELAYED_REQUEST,
        },
        KIND_RESPONSE => {
            let id = r.u64("request id")?;
            let result = match r.u8("result tag")? {
                0 => Ok(get_reply(&mut r)?),
                1 => Err(get_error(&mut r)?),
                tag => return Err(CodecError::UnknownTag { what: "result", tag }),
            };
            Frame::Response { id, result }
        }
        KIND_PING => Frame::Ping { seq: r.u64("ping sequence")? },
        KIND_PONG => Frame::Pong { seq: r.u64("pong sequence")? },
        tag => return Err(CodecError::UnknownTag { what: "frame kind", tag }),
    };
    r.finish()?;
    Ok(frame)
}

/// Rebuilds a snapshot message from its chunks. One transfer at a time per
/// connection; chunks must arrive in order (TCP keeps them so).
#[derive(Default)]
pub struct Reassembly {
    /// Transfer id, size and digest of the snapshot being reassembled.
    transfer: Option<(u64, u64, [u8; 32])>,
    buf: Vec<u8>,
    hasher: Sha256,
}

impl Reassembly {
    /// Takes a chunk; returns the complete message once the last arrives.
    pub fn accept(&mut self, c: SnapshotChunk) -> Result<Option<(ShardId, RaftMessage)>, CodecError> {
        use protobuf::Message as _;
        if c.total > SNAPSHOT_BYTES_MAX {
            return Err(CodecError::Invalid {
                what: "snapshot",
                detail: format!("{} bytes exceeds the {SNAPSHOT_BYTES_MAX} byte limit", c.total),
            });
        }
        if c.offset == 0 {
            self.transfer = Some((c.transfer, c.total, c.digest));
            self.buf = Vec::with_capacity(c.total.min(SNAPSHOT_CHUNK_BYTES as u64 * 64) as usize);
            self.hasher = Sha256::new();
        }
        if self.transfer != Some((c.transfer, c.total, c.digest)) || c.offset != self.buf.len() as u64 {
            self.transfer = None;
            self.buf = Vec::new();
            return Err(CodecError::Invalid { what: "snapshot chunk", detail: "out of order".into() });
        }
        if self.buf.len() as u64 + c.data.len() as u64 > c.total {
            return Err(CodecError::Invalid { what: "snapshot chunk", detail: "longer than announced".into() });
        }
        self.hasher.update(&c.data);
        self.buf.extend_from_slice(&c.data);
        if (self.buf.len() as u64) < c.total {
            return Ok(None);
        }
        self.transfer = None;
        let bytes = std::mem::take(&mut self.buf);
        let digest: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if digest != c.digest {
            return Err(CodecError::Invalid {
                what: "snapshot",
                detail: "its SHA-256 is not the one announced".into(),
            });
        }
        crate::protoscan::check_raft_message(&bytes)
            .map_err(|detail| CodecError::Invalid { what: "snapshot message", detail })?;
        let m = RaftMessage::parse_from_bytes(&bytes)
            .map_err(|e| CodecError::Invalid { what: "snapshot message", detail: e.to_string() })?;
        Ok(Some((c.shard, m)))
    }
}

fn string(r: &mut Reader<'_>, what: &'static str) -> Result<String, CodecError> {
    let b = r.bytes(what)?;
    String::from_utf8(b.to_vec()).map_err(|e| CodecError::Invalid { what, detail: e.to_string() })
}

fn put_opt(w: &mut Writer, v: Option<u64>) {
    match v {
        None => w.u8(0),
        Some(v) => {
            w.u8(1);
            w.u64(v);
        }
    }
}

fn get_opt(r: &mut Reader<'_>, what: &'static str) -> Result<Option<u64>, CodecError> {
    match r.u8(what)? {
        0 => Ok(None),
        1 => Ok(Some(r.u64(what)?)),
        tag => Err(CodecError::UnknownTag { what, tag }),
    }
}

fn put_op(w: &mut Writer, op: &ShardOp) {
    match op {
        ShardOp::Write { cmd, request } => {
            w.u8(1);
            w.bytes(&Proposal::encode_parts(0, Some(*request), cmd));
        }
        ShardOp::Read { key, stale } => {
            w.u8(2);
            w.bytes(key);
            w.u8(*stale as u8);
        }
        ShardOp::Status => w.u8(3),
        ShardOp::Acquire { name, owner, ttl_ms, wait_ms, session, request } => {
            w.u8(4);
            put_request(w, Some(*request));
            w.bytes(name.as_bytes());
            w.bytes(owner.as_bytes());
            w.u64(*ttl_ms);
            w.u64(*wait_ms);
            match session {
                None => w.u8(0),
                Some(s) => {
                    w.u8(1);
                    w.u128(*s);
                }
            }
        }
        ShardOp::LockStatus { name } => {
            w.u8(5);
            w.bytes(name.as_bytes());
        }
        ShardOp::Scan { prefix, after, limit, keys_only } => {
            w.u8(6);
            w.bytes(prefix);
            match after {
                None => w.u8(0),
                Some(a) => {
                    w.u8(1);
                    w.bytes(a);
                }
            }
            w.u64(*limit as u64);
            w.u8(*keys_only as u8);
        }
        ShardOp::ReadMap => w.u8(7),
        ShardOp::ChangePeers(c) => {
            w.u8(8);
            match *c {
                PeerChange::AddLearner(n) => {
                    w.u8(1);
                    w.u64(n);
                }
                PeerChange::Promote { add, remove } => {
                    w.u8(2);
                    w.u64(add);
                    put_opt(w, remove);
                }
                PeerChange::Remove(n) => {
                    w.u8(3);
                    w.u64(n);
                }
                PeerChange::LeaveJoint => w.u8(4),
            }
        }
        ShardOp::WatchMap { after, wait_ms } => {
            w.u8(10);
            w.u64(*after);
            w.u64(*wait_ms);
        }
        ShardOp::TransferLeader { to } => {
            w.u8(9);
            w.u64(*to);
        }
        ShardOp::ScanLocks { prefix, after, limit } => {
            w.u8(11);
            w.bytes(prefix.as_bytes());
            match after {
                None => w.u8(0),
                Some(a) => {
                    w.u8(1);
                    w.bytes(a.as_bytes());
                }
            }
            w.u64(*limit as u64);
        }
        ShardOp::Events { filter, after, max, wait_ms } => {
            w.u8(13);
            match filter {
                KeyFilter::Exact(k) => {
                    w.u8(0);
                    w.bytes(k);
                }
                KeyFilter::Prefix(p) => {
                    w.u8(1);
                    w.bytes(p);
                }
            }
            put_opt(w, *after);
            w.u64(*max as u64);
            w.u64(*wait_ms);
        }
    }
}

fn put_ids(w: &mut Writer, ids: &[u64]) {
    w.u32(ids.len() as u32);
    for v in ids {
        w.u64(*v);
    }
}

fn get_ids(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<u64>, CodecError> {
    let n = r.u32(what)?;
    let mut v = Vec::with_capacity((n as usize).min(64));
    for _ in 0..n {
        v.push(r.u64(what)?);
    }
    Ok(v)
}

fn get_op(r: &mut Reader<'_>) -> Result<ShardOp, CodecError> {
    Ok(match r.u8("op")? {
        1 => {
            let p = Proposal::decode(r.bytes("command")?)?;
            let request =
                p.request.ok_or(CodecError::Invalid { what: "forwarded write", detail: "no request id".into() })?;
            ShardOp::Write { cmd: std::sync::Arc::new(p.cmd), request }
        }
        2 => ShardOp::Read { key: r.bytes("key")?.to_vec(), stale: r.u8("stale")? != 0 },
        3 => ShardOp::Status,
        4 => ShardOp::Acquire {
            request: get_request(r)?
                .ok_or(CodecError::Invalid { what: "forwarded acquire", detail: "no request id".into() })?,
            name: string(r, "lock name")?,
            owner: string(r, "owner")?,
            ttl_ms: r.u64("ttl")?,
            wait_ms: r.u64("wait")?,
            session: match r.u8("session present")? {
                0 => None,
                1 => Some(r.u128("session")?),
                tag => return Err(CodecError::UnknownTag { what: "session present", tag }),
            },
        },
        5 => ShardOp::LockStatus { name: string(r, "lock name")? },
        6 => ShardOp::Scan {
            prefix: r.bytes("prefix")?.to_vec(),
            after: match r.u8("after present")? {
                0 => None,
                1 => Some(r.bytes("after")?.to_vec()),
                tag => return Err(CodecError::UnknownTag { what: "after present", tag }),
            },
            limit: r.u64("limit")?.min(1 << 20) as usize,
            keys_only: r.u8("keys only")? != 0,
        },
        7 => ShardOp::ReadMap,
        8 => ShardOp::ChangePeers(match r.u8("peer change")? {
            1 => PeerChange::AddLearner(r.u64("node")?),
            2 => PeerChange::Promote { add: r.u64("node")?, remove: get_opt(r, "removed node")? },
            3 => PeerChange::Remove(r.u64("node")?),
            4 => PeerChange::LeaveJoint,
            tag => return Err(CodecError::UnknownTag { what: "peer change", tag }),
        }),
        9 => ShardOp::TransferLeader { to: r.u64("node")? },
        10 => ShardOp::WatchMap { after: r.u64("map epoch")?, wait_ms: r.u64("wait")? },
        11 => ShardOp::ScanLocks {
            prefix: string(r, "lock prefix")?,
            after: match r.u8("after present")? {
                0 => None,
                1 => Some(string(r, "after")?),
                tag => return Err(CodecError::UnknownTag { what: "after present", tag }),
            },
            limit: r.u64("limit")?.min(1 << 20) as usize,
        },
        13 => ShardOp::Events {
            filter: match r.u8("filter")? {
                0 => KeyFilter::Exact(r.bytes("watched key")?.to_vec()),
                1 => KeyFilter::Prefix(r.bytes("watched prefix")?.to_vec()),
                tag => return Err(CodecError::UnknownTag { what: "filter", tag }),
            },
            after: get_opt(r, "position")?,
            max: r.u64("max events")?.min(1 << 20) as usize,
            wait_ms: r.u64("wait")?,
        },
        tag => return Err(CodecError::UnknownTag { what: "op", tag }),
    })
}

const ROLES: [&str; 4] = ["leader", "follower", "candidate", "pre_candidate"];

fn put_reply(w: &mut Writer, reply: &ShardReply) {
    match reply {
        ShardReply::Outcome(o) => {
            w.u8(1);
            o.put(w);
        }
        ShardReply::Value { value, applied_index } => {
            w.u8(2);
            match value {
                None => w.u8(0),
                Some(v) => {
                    w.u8(1);
                    w.bytes(&v.encode());
                }
            }
            w.u64(*applied_index);
        }
        ShardReply::Status(s) => {
            w.u8(3);
            w.u64(s.node);
            w.u64(s.shard);
            w.u8(ROLES.iter().position(|r| *r == s.role).unwrap_or(1) as u8);
            w.u64(s.term);
            put_opt(w, s.leader);
            w.u64(s.commit_index);
            w.u64(s.applied_index);
            w.u64(s.first_index);
            w.u64(s.last_index);
            put_ids(w, &s.voters);
            put_opt(w, s.key_count);
            put_opt(w, s.bytes);
            put_ids(w, &s.learners);
            put_ids(w, &s.voters_outgoing);
            w.u32(s.progress.len() as u32);
            for (n, m) in &s.progress {
                w.u64(*n);
                w.u64(*m);
            }
            w.u64(s.ranges_epoch);
            w.u64(s.range_count);
            w.u64(s.load.qps);
            put_opt(w, s.load.split_at);
            match &s.load.hot_key {
                None => w.u8(0),
                Some((k, share)) => {
                    w.u8(1);
                    w.bytes(k);
                    w.u8(*share);
                }
            }
        }
        ShardReply::Items { items, more, epoch } => {
            w.u8(5);
            w.u32(items.len() as u32);
            for (k, v) in items {
                w.bytes(k);
                w.bytes(&v.encode());
            }
            w.u8(*more as u8);
            w.u64(*epoch);
        }
        ShardReply::Lock { record, waiters, now_ms } => {
            w.u8(4);
            match record {
                None => w.u8(0),
                Some(r) => {
                    w.u8(1);
                    w.bytes(&r.encode());
                }
            }
            w.u32(waiters.len() as u32);
            for o in waiters {
                w.bytes(o.as_bytes());
            }
            w.u64(*now_ms);
        }
        ShardReply::Map(map) => {
            w.u8(6);
            match map {
                None => w.u8(0),
                Some(m) => {
                    w.u8(1);
                    w.bytes(m);
                }
            }
        }
        ShardReply::Locks { locks, more, epoch, now_ms } => {
            w.u8(7);
            w.u32(locks.len() as u32);
            for (name, record) in locks {
                w.bytes(name.as_bytes());
                w.bytes(&record.encode());
            }
            w.u8(*more as u8);
            w.u64(*epoch);
            w.u64(*now_ms);
        }
        ShardReply::Events { events, position } => {
            w.u8(8);
            w.u32(events.len() as u32);
            for e in events {
                w.u64(e.index);
                w.u8(match e.kind {
                    EventKind::Put => 0,
                    EventKind::Delete => 1,
                    EventKind::Expire => 2,
                });
                w.bytes(&e.key);
                if let Some(v) = &e.value {
                    w.bytes(&v.encode());
                }
            }
            w.u64(*position);
        }
    }
}

fn get_reply(r: &mut Reader<'_>) -> Result<ShardReply, CodecError> {
    Ok(match r.u8("reply")? {
        1 => ShardReply::Outcome(Outcome::get(r)?),
        2 => {
            let value = match r.u8("value present")? {
                0 => None,
                1 => Some(StoredValue::decode(r.bytes("value")?)?),
                tag => return Err(CodecError::UnknownTag { what: "value present", tag }),
            };
            ShardReply::Value { value, applied_index: r.u64("applied index")? }
        }
        3 => {
            let node = r.u64("node")?;
            let shard = r.u64("shard")?;
            let role = r.u8("role")?;
            let role = *ROLES.get(role as usize).ok_or(CodecError::UnknownTag { what: "role", tag: role })?;
            let term = r.u64("term")?;
            let leader = get_opt(r, "leader")?;
            let commit_index = r.u64("commit")?;
            let applied_index = r.u64("applied")?;
            let first_index = r.u64("first")?;
            let last_index = r.u64("last")?;
            let voters = get_ids(r, "voter")?;
            let key_count = get_opt(r, "key count")?;
            let bytes = get_opt(r, "bytes")?;
            let learners = get_ids(r, "learner")?;
            let voters_outgoing = get_ids(r, "outgoing voter")?;
            let n = r.u32("progress count")?;
            let mut progress = Vec::with_capacity((n as usize).min(64));
            for _ in 0..n {
                progress.push((r.u64("peer")?, r.u64("matched")?));
            }
            let ranges_epoch = r.u64("ranges epoch")?;
            let range_count = r.u64("range count")?;
            let qps = r.u64("qps")?;
            let split_at = get_opt(r, "load split point")?;
            let hot_key = match r.u8("hot key present")? {
                0 => None,
                1 => {
                    let k = r.bytes("hot key")?;
                    if k.len() > ringstore_storage::load::SAMPLE_KEY_BYTES {
                        return Err(CodecError::Invalid { what: "hot key", detail: "too long".into() });
                    }
                    Some((k.to_vec(), r.u8("hot key share")?))
                }
                tag => return Err(CodecError::UnknownTag { what: "hot key present", tag }),
            };
            let load = ringstore_storage::load::LoadReport { qps, split_at, hot_key };
            ShardReply::Status(ReplicaStatus {
                node,
                shard,
                role,
                term,
                leader,
                commit_index,
                applied_index,
                first_index,
                last_index,
                voters,
                learners,
                voters_outgoing,
                progress,
                key_count,
                bytes,
                ranges_epoch,
                range_count,
                load,
            })
        }
        4 => {
            let record = match r.u8("record present")? {
                0 => None,
                1 => Some(LockRecord::decode(r.bytes("lock record")?)?),
                tag => return Err(CodecError::UnknownTag { what: "record present", tag }),
            };
            let n = r.u32("waiter count")?;
            let mut waiters = Vec::with_capacity((n as usize).min(1024));
            for _ in 0..n {
                waiters.push(string(r, "waiter")?);
            }
            ShardReply::Lock { record, waiters, now_ms: r.u64("now")? }
        }
        5 => {
            let n = r.u32("item count")?;
            let mut items = Vec::with_capacity((n as usize).min(4096));
            for _ in 0..n {
                let k = r.bytes("item key")?.to_vec();
                items.push((k, StoredValue::decode(r.bytes("item value")?)?));
            }
            let more = r.u8("more")? != 0;
            ShardReply::Items { items, more, epoch: r.u64("scan epoch")? }
        }
        6 => ShardReply::Map(match r.u8("map present")? {
            0 => None,
            1 => Some(r.bytes("map")?.to_vec()),
            tag => return Err(CodecError::UnknownTag { what: "map present", tag }),
        }),
        7 => {
            let n = r.u32("lock count")?;
            let mut locks = Vec::with_capacity((n as usize).min(4096));
            for _ in 0..n {
                let name = string(r, "lock name")?;
                locks.push((name, LockRecord::decode(r.bytes("lock record")?)?));
            }
            let more = r.u8("more")? != 0;
            ShardReply::Locks { locks, more, epoch: r.u64("scan epoch")?, now_ms: r.u64("now")? }
        }
        8 => {
            let n = r.u32("event count")?;
            let mut events = Vec::with_capacity((n as usize).min(4096));
            for _ in 0..n {
                let index = r.u64("event index")?;
                let kind = match r.u8("event kind")? {
                    0 => EventKind::Put,
                    1 => EventKind::Delete,
                    2 => EventKind::Expire,
                    tag => return Err(CodecError::UnknownTag { what: "event kind", tag }),
                };
                let key = r.bytes("event key")?.to_vec();
                let value = match kind {
                    EventKind::Put => Some(StoredValue::decode(r.bytes("event value")?)?),
                    _ => None,
                };
                events.push(Event { index, kind, key, value });
            }
            ShardReply::Events { events, position: r.u64("position")? }
        }
        tag => return Err(CodecError::UnknownTag { what: "reply", tag }),
    })
}

fn put_error(w: &mut Writer, e: &StoreError) {
    match e {
        StoreError::NotLeader { shard, hint } => {
            w.u8(1);
            w.u64(*shard);
            put_opt(w, *hint);
        }
        StoreError::Dropped { reason } => {
            w.u8(2);
            w.bytes(reason.as_bytes());
        }
        StoreError::Unavailable { reason } => {
            w.u8(3);
            w.bytes(reason.as_bytes());
        }
        StoreError::OutcomeUnknown { reason } => {
            w.u8(15);
            w.bytes(reason.as_bytes());
        }
        StoreError::Compacted { asked, oldest } => {
            w.u8(16);
            w.u64(*asked);
            w.u64(*oldest);
        }
        StoreError::Unreachable { node } => {
            w.u8(4);
            w.u64(*node);
        }
        StoreError::Timeout { timeout_ms } => {
            w.u8(5);
            w.u64(*timeout_ms);
        }
        StoreError::Overloaded { queued, limit } => {
            w.u8(6);
            w.u64(*queued as u64);
            w.u64(*limit as u64);
        }
        StoreError::NotFound => w.u8(7),
        StoreError::PreconditionFailed { current } => {
            w.u8(8);
            put_opt(w, *current);
        }
        StoreError::TooLarge { what, len, max } => {
            w.u8(9);
            w.bytes(what.as_bytes());
            w.u64(*len as u64);
            w.u64(*max as u64);
        }
        StoreError::BadRequest(s) => {
            w.u8(10);
            w.bytes(s.as_bytes());
        }
        StoreError::Engine(s) => {
            w.u8(11);
            w.bytes(s.as_bytes());
        }
        StoreError::Internal(s) => {
            w.u8(12);
            w.bytes(s.as_bytes());
        }
        StoreError::WrongShard { shard, epoch } => {
            w.u8(14);
            w.u64(*shard);
            w.u64(*epoch);
        }
        StoreError::Fenced { lock, highest } => {
            w.u8(13);
            w.bytes(lock.as_bytes());
            w.u64(*highest);
        }
    }
}

/// `&'static str` fields cannot come off the wire: map them back onto the
/// strings this build uses, with a generic fallback.
fn static_str(s: &str, known: &[&'static str], fallback: &'static str) -> &'static str {
    known.iter().copied().find(|k| *k == s).unwrap_or(fallback)
}

const DROP_REASONS: [&str; 3] =
    ["replica is not an active leader", "entry replaced by a new leader", "lock waiter moved to a new leader"];
const TOO_LARGE_WHATS: [&str; 3] = ["key", "value", "request body"];

fn get_error(r: &mut Reader<'_>) -> Result<StoreError, CodecError> {
    Ok(match r.u8("error")? {
        1 => StoreError::NotLeader { shard: r.u64("shard")?, hint: get_opt(r, "hint")? },
        2 => StoreError::Dropped {
            reason: static_str(&string(r, "reason")?, &DROP_REASONS, "dropped by the remote replica"),
        },
        3 => StoreError::Unavailable { reason: string(r, "reason")? },
        4 => StoreError::Unreachable { node: r.u64("node")? },
        5 => StoreError::Timeout { timeout_ms: r.u64("timeout")? },
        6 => StoreError::Overloaded { queued: r.u64("queued")? as usize, limit: r.u64("limit")? as usize },
        7 => StoreError::NotFound,
        8 => StoreError::PreconditionFailed { current: get_opt(r, "current")? },
        9 => StoreError::TooLarge {
            what: static_str(&string(r, "what")?, &TOO_LARGE_WHATS, "input"),
            len: r.u64("len")? as usize,
            max: r.u64("max")? as usize,
        },
        10 => StoreError::BadRequest(string(r, "message")?),
        11 => StoreError::Engine(string(r, "message")?),
        12 => StoreError::Internal(string(r, "message")?),
        13 => StoreError::Fenced { lock: string(r, "lock")?, highest: r.u64("highest")? },
        14 => StoreError::WrongShard { shard: r.u64("shard")?, epoch: r.u64("epoch")? },
        15 => StoreError::OutcomeUnknown { reason: string(r, "reason")? },
        16 => StoreError::Compacted { asked: r.u64("asked")?, oldest: r.u64("oldest")? },
        tag => return Err(CodecError::UnknownTag { what: "error", tag }),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use raft::eraftpb::{Entry, MessageType, Snapshot};
    use ringstore_shared::command::{Command, Precondition, Request};
    use ringstore_shared::lock::{Holder, LockOutcome, Queued};

    use super::*;

    /// Splits a buffer of frames back into bodies, checking each header.
    fn bodies(mut buf: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let len = frame_len(buf[..4].try_into().unwrap()).unwrap();
            out.push(buf[4..4 + len].to_vec());
            buf = &buf[4 + len..];
        }
        out
    }

    fn one(buf: &[u8]) -> Frame {
        let b = bodies(buf);
        assert_eq!(b.len(), 1);
        decode(&b[0]).unwrap()
    }

    #[test]
    fn ping_and_pong_round_trip_and_refuse_truncation() {
        let mut buf = Vec::new();
        encode_ping(&mut buf, 41);
        encode_pong(&mut buf, u64::MAX);
        let b = bodies(&buf);
        assert!(matches!(decode(&b[0]).unwrap(), Frame::Ping { seq: 41 }));
        assert!(matches!(decode(&b[1]).unwrap(), Frame::Pong { seq: u64::MAX }));
        for body in &b {
            for cut in 1..body.len() {
                assert!(decode(&body[..cut]).is_err(), "a ping/pong cut at {cut} decoded");
            }
        }
    }

    #[test]
    fn hello_round_trip_and_checks() {
        let h = Hello { cluster_id: 7, from: 2, to: 1 };
        let mut buf = Vec::new();
        encode_hello(&mut buf, &h);
        let Frame::Hello(back) = one(&buf) else { panic!("not a hello") };
        assert_eq!(back, h);
        assert_eq!(check_hello(&h, 7, 1, &[1, 2, 3]), Ok(()));
        assert_eq!(check_hello(&h, 8, 1, &[1, 2, 3]), Err(RejectReason::ClusterMismatch));
        assert_eq!(check_hello(&h, 7, 3, &[1, 2, 3]), Err(RejectReason::WrongNode));
        assert_eq!(check_hello(&h, 7, 1, &[1, 3]), Err(RejectReason::UnknownPeer));
        let mut buf = Vec::new();
        encode_reject(&mut buf, RejectReason::ClusterMismatch, "cluster 8");
        match one(&buf) {
            Frame::Reject { reason, detail } => {
                assert_eq!(reason, RejectReason::ClusterMismatch);
                assert_eq!(detail, "cluster 8");
            }
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn raft_frames_split_large_batches() {
        let msgs: Vec<RaftMessage> = (0..6)
            .map(|i| {
                let mut m = RaftMessage::default();
                m.set_msg_type(MessageType::MsgAppend);
                m.to = 2;
                m.index = i;
                let e = Entry { data: vec![i as u8; 1024 * 1024].into(), ..Default::default() };
                m.entries = vec![e].into();
                m
            })
            .collect();
        let mut buf = Vec::new();
        encode_raft(&mut buf, 5, &msgs).unwrap();
        let frames = bodies(&buf);
        assert!(frames.len() >= 2, "6 MiB must not go in one frame");
        let mut back = Vec::new();
        for b in frames {
            assert!(b.len() <= FRAME_BYTES_MAX);
            match decode(&b).unwrap() {
                Frame::Raft { shard, msgs } => {
                    assert_eq!(shard, 5);
                    back.extend(msgs);
                }
                f => panic!("{f:?}"),
            }
        }
        assert_eq!(back, msgs);
    }

    #[test]
    fn snapshot_chunks_reassemble() {
        let mut m = RaftMessage::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.to = 3;
        let mut s = Snapshot {
            data: (0..3 * SNAPSHOT_CHUNK_BYTES + 17).map(|i| i as u8).collect::<Vec<u8>>().into(),
            ..Default::default()
        };
        s.mut_metadata().index = 99;
        m.set_snapshot(s);
        let mut buf = Vec::new();
        encode_snapshot(&mut buf, 1, 42, &m).unwrap();
        let frames = bodies(&buf);
        assert_eq!(frames.len(), 4);
        let mut r = Reassembly::default();
        let mut done = None;
        for (i, b) in frames.iter().enumerate() {
            let Frame::SnapshotChunk(c) = decode(b).unwrap() else { panic!("not a chunk") };
            let got = r.accept(c).unwrap();
            assert_eq!(got.is_some(), i == 3);
            done = done.or(got);
        }
        let (shard, back) = done.unwrap();
        assert_eq!(shard, 1);
        assert_eq!(back, m);

        // One flipped byte in the middle chunk: the digest refuses the
        // snapshot before protobuf decodes it or RocksDB sees it.
        let mut r = Reassembly::default();
        let mut last = None;
        for (i, b) in frames.iter().enumerate() {
            let Frame::SnapshotChunk(mut c) = decode(b).unwrap() else { panic!("not a chunk") };
            if i == 1 {
                c.data[100] ^= 1;
            }
            last = Some(r.accept(c));
        }
        let err = last.unwrap().unwrap_err();
        assert!(err.to_string().contains("SHA-256"), "{err}");
        // A chunk announcing another digest mid-transfer is out of order.
        let mut r = Reassembly::default();
        let Frame::SnapshotChunk(first) = decode(&frames[0]).unwrap() else { panic!() };
        let Frame::SnapshotChunk(mut second) = decode(&frames[1]).unwrap() else { panic!() };
        r.accept(first).unwrap();
        second.digest[0] ^= 1;
        assert!(r.accept(second).is_err());
    }

    #[test]
    fn snapshot_chunks_out_of_order_or_oversized_are_refused() {
        let mut r = Reassembly::default();
        let c = |offset, total, len| SnapshotChunk {
            shard: 1,
            transfer: 1,
            total,
            digest: [0; 32],
            offset,
            data: vec![0; len],
        };
        assert!(r.accept(c(5, 10, 5)).is_err(), "must start at offset 0");
        assert_eq!(r.accept(c(0, 10, 4)).unwrap(), None);
        assert!(r.accept(c(5, 10, 5)).is_err(), "gap");
        assert!(r.accept(c(0, SNAPSHOT_BYTES_MAX + 1, 1)).is_err());
        assert!(r.accept(c(0, 10, 11)).is_err(), "longer than announced");
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let ops = [
            ShardOp::Write {
                cmd: Arc::new(Command::Put {
                    key: b"k".to_vec(),
                    value: vec![1, 2, 3],
                    ttl_ms: Some(5),
                    cond: Precondition::IfVersion(9),
                    fence: None,
                }),
                request: Request { id: 17, retry: true },
            },
            ShardOp::Read { key: "ключ".as_bytes().to_vec(), stale: true },
            ShardOp::Status,
            ShardOp::Acquire {
                name: "n".into(),
                owner: "o".into(),
                ttl_ms: 5,
                wait_ms: 6,
                session: None,
                request: Request::first(1),
            },
            ShardOp::Acquire {
                name: "n".into(),
                owner: "o".into(),
                ttl_ms: 5,
                wait_ms: 6,
                session: Some(u128::MAX),
                request: Request { id: u128::MAX, retry: true },
            },
            ShardOp::LockStatus { name: "n".into() },
            ShardOp::Scan { prefix: b"p/".to_vec(), after: Some(b"p/a".to_vec()), limit: 10, keys_only: true },
            ShardOp::ScanLocks { prefix: "jobs/".into(), after: Some("jobs/a".into()), limit: 10 },
            ShardOp::ScanLocks { prefix: String::new(), after: None, limit: 1 },
            ShardOp::Events { filter: KeyFilter::Exact(b"k".to_vec()), after: Some(9), max: 100, wait_ms: 25_000 },
            ShardOp::Events { filter: KeyFilter::Prefix(Vec::new()), after: None, max: 1, wait_ms: 0 },
            ShardOp::ReadMap,
            ShardOp::WatchMap { after: 3, wait_ms: 5000 },
            ShardOp::ChangePeers(PeerChange::AddLearner(4)),
            ShardOp::ChangePeers(PeerChange::Promote { add: 4, remove: Some(1) }),
            ShardOp::ChangePeers(PeerChange::Promote { add: 4, remove: None }),
            ShardOp::ChangePeers(PeerChange::Remove(2)),
            ShardOp::ChangePeers(PeerChange::LeaveJoint),
            ShardOp::TransferLeader { to: 3 },
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let mut buf = Vec::new();
            let relay = i % 2 == 1;
            encode_request(&mut buf, 11, 1, &op, relay);
            match one(&buf) {
                Frame::Request { id, shard, op: back, relayed } => {
                    assert_eq!((id, shard, relayed), (11, 1, relay));
                    assert_eq!(format!("{back:?}"), format!("{op:?}"));
                }
                f => panic!("{f:?}"),
            }
        }
        let results: Vec<ShardResult> = vec![
            Ok(ShardReply::Outcome(Outcome::Written { version: 3 })),
            Ok(ShardReply::Outcome(Outcome::PreconditionFailed { current: None })),
            Ok(ShardReply::Value {
                value: Some(StoredValue { version: 4, expires_at_ms: Some(9), data: b"v".to_vec() }),
                applied_index: 8,
            }),
            Ok(ShardReply::Value { value: None, applied_index: 1 }),
            Ok(ShardReply::Status(ReplicaStatus {
                node: 1,
                shard: 1,
                role: "candidate",
                term: 4,
                leader: None,
                commit_index: 5,
                applied_index: 5,
                first_index: 1,
                last_index: 6,
                voters: vec![1, 2, 3],
                learners: vec![4],
                voters_outgoing: vec![1, 2, 5],
                progress: vec![(1, 6), (4, 0)],
                key_count: Some(7),
                bytes: None,
                ranges_epoch: 9,
                range_count: 10,
                load: ringstore_storage::load::LoadReport {
                    qps: 11,
                    split_at: Some(12),
                    hot_key: Some((b"hot".to_vec(), 95)),
                },
            })),
            Err(StoreError::NotLeader { shard: 1, hint: Some(3) }),
            Err(StoreError::Dropped { reason: "entry replaced by a new leader" }),
            Err(StoreError::Unavailable { reason: "x".into() }),
            Err(StoreError::OutcomeUnknown { reason: "y".into() }),
            Err(StoreError::Overloaded { queued: 5, limit: 4 }),
            Err(StoreError::PreconditionFailed { current: Some(2) }),
            Err(StoreError::TooLarge { what: "value", len: 2, max: 1 }),
            Err(StoreError::NotFound),
            Err(StoreError::Fenced { lock: "l".into(), highest: 4 }),
            Err(StoreError::WrongShard { shard: 3, epoch: 9 }),
            Ok(ShardReply::Map(None)),
            Ok(ShardReply::Map(Some(vec![1, 2, 3]))),
            Ok(ShardReply::Outcome(Outcome::MapSet { epoch: 4 })),
            Ok(ShardReply::Outcome(Outcome::MapConflict { current: 5 })),
            Ok(ShardReply::Outcome(Outcome::Lock {
                outcome: LockOutcome::Conflict {
                    holder: Some(Holder {
                        owner: "a".into(),
                        session: 77,
                        token: 3,
                        hold_count: 2,
                        expires_at_ms: 9,
                        granted_term: 1,
                    }),
                },
                now_ms: 5,
            })),
            Ok(ShardReply::Outcome(Outcome::Lock {
                outcome: LockOutcome::Granted { token: 1, hold_count: 1, expires_at_ms: 2, session: 1 << 100 },
                now_ms: 1,
            })),
            Ok(ShardReply::Outcome(Outcome::Fenced { lock: "l".into(), highest: 2 })),
            Ok(ShardReply::Items {
                items: vec![(b"k".to_vec(), StoredValue { version: 1, expires_at_ms: None, data: b"v".to_vec() })],
                more: true,
                epoch: 11,
            }),
            Ok(ShardReply::Outcome(Outcome::Split { epoch: 12 })),
            Ok(ShardReply::Outcome(Outcome::DeletedKeys { count: 3 })),
            Ok(ShardReply::Outcome(Outcome::Txn {
                succeeded: false,
                results: vec![
                    ringstore_shared::txn::TxnResult::Put { version: 4 },
                    ringstore_shared::txn::TxnResult::Get {
                        value: Some(StoredValue { version: 2, expires_at_ms: None, data: b"v".to_vec() }),
                    },
                ],
            })),
            Ok(ShardReply::Lock {
                record: Some(LockRecord {
                    holder: None,
                    last_token: 7,
                    queue: vec![Queued { owner: "w1".into(), session: 5, ttl_ms: 9, wait_until_ms: 10 }],
                }),
                waiters: vec!["w1".into()],
                now_ms: 3,
            }),
            Ok(ShardReply::Locks {
                locks: vec![("jobs/a".into(), LockRecord { holder: None, last_token: 3, queue: vec![] })],
                more: false,
                epoch: 4,
                now_ms: 8,
            }),
            Ok(ShardReply::Events {
                events: vec![
                    Event {
                        index: 5,
                        kind: EventKind::Put,
                        key: b"a".to_vec(),
                        value: Some(StoredValue { version: 5, expires_at_ms: Some(9), data: b"x".to_vec() }),
                    },
                    Event { index: 6, kind: EventKind::Delete, key: b"a".to_vec(), value: None },
                    Event { index: 7, kind: EventKind::Expire, key: b"b".to_vec(), value: None },
                ],
                position: 9,
            }),
            Err(StoreError::Compacted { asked: 3, oldest: 40 }),
        ];
        for res in results {
            let mut buf = Vec::new();
            encode_response(&mut buf, 77, &res);
            match one(&buf) {
                Frame::Response { id, result } => {
                    assert_eq!(id, 77);
                    assert_eq!(format!("{result:?}"), format!("{res:?}"));
                }
                f => panic!("{f:?}"),
            }
        }
    }

    #[test]
    fn bad_headers_and_garbage_are_errors_not_panics() {
        assert!(frame_len(0u32.to_be_bytes()).is_err());
        assert!(frame_len(((FRAME_BYTES_MAX + 1) as u32).to_be_bytes()).is_err());
        assert!(frame_len(u32::MAX.to_be_bytes()).is_err());
        // Every truncation of every valid frame, and deterministic junk.
        let mut buf = Vec::new();
        encode_hello(&mut buf, &Hello { cluster_id: 1, from: 2, to: 3 });
        encode_request(&mut buf, 1, 1, &ShardOp::Read { key: b"abc".to_vec(), stale: false }, false);
        encode_request(&mut buf, 1, 1, &ShardOp::Status, true);
        encode_response(&mut buf, 1, &Err(StoreError::Internal("x".into())));
        for body in bodies(&buf) {
            for cut in 0..body.len() {
                assert!(decode(&body[..cut]).is_err());
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let junk: Vec<u8> = x.to_le_bytes().iter().cycle().take((x % 64) as usize).copied().collect();
            let _ = decode(&junk);
        }
    }
}
